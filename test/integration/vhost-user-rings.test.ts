// Rings and memory over a real socket: address translation, memory tables, ring stop/restart,
// EVENT_IDX, indirect descriptors, index wrap-around (docs/protocol-notes.md 1.3, 1.4, 2).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { CanFeature, CanMsgType, CanQueue } from '../../src/core/devices/can/constants.js';
import { Desc, featureMask, VirtioFeature } from '../../src/core/virtio/features.js';
import { CAN_DRIVER_FEATURES } from '../../src/node/frontend/can-driver.js';
import { UVA_BASE } from '../../src/node/frontend/guest-ram.js';
import {
  frame,
  hostPort,
  memfdMaps,
  settle,
  startDriver,
  startTestDaemon,
  waitFor,
} from '../helpers/vhost-user.js';

const NO_EVENT_IDX = CAN_DRIVER_FEATURES & ~featureMask(VirtioFeature.RING_EVENT_IDX);

describe('rings and guest memory', () => {
  test('ring addresses are user addresses, rings live in a region with mmap_offset != 0', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { ram, drv } = await startDriver(t, paths[0]!);
    const regions = ram.regions();
    assert.equal(regions.length, 2);
    assert.ok(regions[1]!.mmapOffset > 0, 'second region starts inside the memfd');
    for (const q of drv.queues) {
      const l = q.ring.layout;
      assert.ok(l.descGpa >= regions[1]!.guestPhysAddr, 'rings are in the second region');
      assert.notEqual(ram.uvaOf(l.descGpa), l.descGpa);
      assert.equal(ram.uvaOf(l.usedGpa), UVA_BASE + l.usedGpa);
    }
    const host = hostPort(t, can.hubFor(0));
    assert.equal(await drv.startController(), 0);
    // TX payload in the high region, result byte in the low one.
    const payload = ram.alloc(24, 8, 1);
    const result = ram.alloc(1, 1, 0);
    ram.write(payload, drv.encodeTx({ id: 0x321, data: [9, 8, 7, 6, 5, 4, 3, 2] }));
    const head = drv.tx.add([{ gpa: payload, len: 24 }], [{ gpa: result, len: 1 }]);
    const done = drv.tx.waitFor(head);
    drv.tx.kick();
    assert.equal(await done, 1);
    assert.equal(ram.read(result, 1)[0], 0);
    assert.deepEqual([...host.frames()[0]!.data], [9, 8, 7, 6, 5, 4, 3, 2]);
    host.transmit(frame(0x55, [1, 2]));
    const [rx] = await drv.waitFrames(1);
    assert.equal(rx!.id, 0x55);
    assert.deepEqual([...rx!.data], [1, 2]);
    assert.equal(rx!.usedLen, 18);
  });

  test('RX buffers posted before the ring starts are used without a kick', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { drv } = await startDriver(t, paths[0]!);
    assert.equal(drv.rx.stats.kicks, 0);
    assert.equal(drv.rx.ring.publishedAvailIdx, 64, 'all buffers were published before start');
    assert.equal(await drv.startController(), 0);
    hostPort(t, can.hubFor(0)).transmit(frame(0x10, [1]));
    await drv.rx.waitUsed();
    assert.equal(drv.rx.stats.kicks, 0, 'the frame arrived before any RX kick');
    assert.equal(drv.received().length, 1);
  });

  test('ADD_MEM_REG per region instead of SET_MEM_TABLE, across a pause/resume', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { fe, ram, drv } = await startDriver(t, paths[0]!, { useMemSlots: true });
    const session = can.daemon.connection(0)!.session;
    assert.equal(session.memory.regions.length, 2);
    assert.equal(await drv.startController(), 0);
    assert.equal(await drv.send({ id: 1, data: [1, 2, 3] }), 0);
    await drv.restart(await drv.stop()); // unchanged memory: no region is sent twice
    assert.equal(session.memory.regions.length, 2);
    assert.equal(await drv.send({ id: 2, data: [2] }), 0);
    // Removing the region that holds the rings breaks the device; adding one back is accepted.
    const [low, high] = ram.regions();
    assert.equal(await fe.remMemReg(low!, { needReply: true }), 0);
    assert.equal(await fe.addMemReg(low!, ram.fdFor(0), { needReply: true }), 0);
    assert.notEqual(await fe.addMemReg(low!, ram.fdFor(0), { needReply: true }), 0, 'overlapping region');
    assert.equal(await drv.send({ id: 3, data: [3] }), 0);
    assert.equal(await fe.remMemReg(high!, { needReply: true }), 0);
    assert.equal(session.broken?.code, 'ERR_VQ_RING_ADDR');
  });

  test('one ring stopped on its own: the others keep running', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { drv } = await startDriver(t, paths[0]!);
    const host = hostPort(t, can.hubFor(0));
    assert.equal(await drv.startController(), 0);
    assert.equal(await drv.ctrl.stop(), 1);
    assert.equal(await drv.send({ id: 1, data: [1] }), 0);
    host.transmit(frame(0x9, [9]));
    assert.equal((await drv.waitFrames(1))[0]!.id, 0x9);
    const d = can.daemon.connection(0)!.session.describe();
    assert.deepEqual(
      d.rings.map((r) => r.started),
      [true, true, false],
    );
  });

  test('a kick fd replaced by NOFD: the ring is polled, TX runs without any kick', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { fe, drv } = await startDriver(t, paths[0]!);
    const host = hostPort(t, can.hubFor(0));
    assert.equal(await drv.startController(), 0);
    assert.equal(await fe.setVringKick(CanQueue.TX, null, { needReply: true }), 0);
    const session = can.daemon.connection(0)!.session;
    const kicks = session.stats.kicks;
    // The driver still writes its kick eventfd, but the back-end no longer holds it.
    const results = await drv.sendMany(
      Array.from({ length: 20 }, (_, i) => ({ id: 0x100 + i, data: [i] })),
      { timeoutMs: 1000 },
    );
    assert.deepEqual(results, new Array(20).fill(0));
    assert.equal(host.frames().length, 20);
    assert.equal(session.stats.kicks, kicks, 'no kick reached the back-end');
  });

  test('a ring started with a NOFD kick is polled: TX requests complete without any kick', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { fe, drv } = await startDriver(t, paths[0]!);
    const host = hostPort(t, can.hubFor(0));
    assert.equal(await drv.startController(), 0);
    await drv.tx.stop();
    assert.equal(await fe.setVringKick(CanQueue.TX, null, { needReply: true }), 0);
    assert.equal(await fe.setVringEnable(CanQueue.TX, true, { needReply: true }), 0);
    const session = can.daemon.connection(0)!.session;
    assert.deepEqual(session.describe().rings[CanQueue.TX], { started: true, enabled: true });
    const kicks = session.stats.kicks;
    // Chains made visible with publish() only: nothing is ever written to a kick fd.
    const post = (id: number): { head: number; result: number } => {
      const bytes = drv.encodeTx({ id, data: [id & 0xff] });
      const gpa = drv.ram.alloc(bytes.byteLength, 8, 0);
      const result = drv.ram.alloc(1, 1, 0);
      drv.ram.write(gpa, bytes);
      drv.ram.write(result, Uint8Array.of(0xee));
      const head = drv.tx.add([{ gpa, len: bytes.byteLength }], [{ gpa: result, len: 1 }]);
      return { head, result };
    };
    const posted = [1, 2, 3, 4, 5].map(post);
    const done = posted.map((p) => drv.tx.waitFor(p.head, 1000));
    drv.tx.publish();
    for (const len of await Promise.all(done)) assert.equal(len, 1);
    for (const p of posted) assert.equal(drv.ram.read(p.result, 1)[0], 0, 'result OK');
    assert.deepEqual(
      host.frames().map((f) => f.id),
      [1, 2, 3, 4, 5],
    );
    assert.equal(session.stats.kicks, kicks);
    // Stopping the ring stops the polling: later chains stay in the ring.
    await drv.tx.stop();
    const { head } = post(6);
    drv.tx.publish();
    await assert.rejects(drv.tx.waitFor(head, 50), { code: 'ERR_FRONTEND_TIMEOUT' });
    assert.equal(host.frames().length, 5);
  });

  test('a started but disabled TX ring returns frames NOT_OK and never sends them, also after re-enable', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { fe, drv } = await startDriver(t, paths[0]!);
    const host = hostPort(t, can.hubFor(0));
    const dev = can.device(0)!;
    assert.equal(await drv.startController(), 0);
    assert.equal(await fe.setVringEnable(CanQueue.TX, false, { needReply: true }), 0);
    const session = can.daemon.connection(0)!.session;
    assert.deepEqual(session.describe().rings[CanQueue.TX], { started: true, enabled: false });
    // One kick per frame: with EVENT_IDX every kick after the first is sent only if the device
    // re-armed avail_event, so this also checks the arming.
    for (let i = 0; i < 3; i++) {
      assert.equal(await drv.send({ id: 0x200 + i, data: [i] }, { timeoutMs: 1000 }), 1, `frame ${i}`);
    }
    assert.deepEqual(await drv.sendMany([{ id: 0x210 }, { id: 0x211 }], { timeoutMs: 1000 }), [1, 1]);
    assert.equal(dev.stats.txRejected.disabled, 5);
    // Chains posted without a kick are returned when the ring is disabled.
    assert.equal(await fe.setVringEnable(CanQueue.TX, true, { needReply: true }), 0);
    const bytes = drv.encodeTx({ id: 0x220, data: [9] });
    const gpa = drv.ram.alloc(bytes.byteLength, 8, 0);
    drv.ram.write(gpa, bytes);
    const result = drv.ram.alloc(1, 1, 0);
    const head = drv.tx.add([{ gpa, len: bytes.byteLength }], [{ gpa: result, len: 1 }]);
    const done = drv.tx.waitFor(head, 1000);
    drv.tx.publish();
    assert.equal(await fe.setVringEnable(CanQueue.TX, false, { needReply: true }), 0);
    assert.equal(await done, 1);
    assert.equal(drv.ram.read(result, 1)[0], 1, 'NOT_OK');
    assert.equal(dev.stats.txRejected.disabled, 6);
    // Re-enabled: nothing stale goes out, new frames do.
    assert.equal(await fe.setVringEnable(CanQueue.TX, true, { needReply: true }), 0);
    assert.equal(await drv.send({ id: 0x230, data: [1] }), 0);
    await sleep(20);
    assert.deepEqual(
      host.frames().map((f) => f.id),
      [0x230],
    );
    assert.equal(dev.stats.txRejected.disabled, 6);
  });

  test('disabled control and RX rings: control requests NOT_OK and not acted on, RX buffers untouched', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { fe, drv } = await startDriver(t, paths[0]!);
    const host = hostPort(t, can.hubFor(0));
    const dev = can.device(0)!;
    assert.equal(await fe.setVringEnable(CanQueue.CTRL, false, { needReply: true }), 0);
    assert.equal(await drv.control(CanMsgType.SET_CTRL_MODE_START, { timeoutMs: 1000 }), 1);
    assert.equal(dev.controllerState, 'stopped', 'START on a disabled ring is not acted on');
    assert.equal(dev.stats.ctrlDisabled, 1);
    assert.equal(await fe.setVringEnable(CanQueue.CTRL, true, { needReply: true }), 0);
    assert.equal(await drv.startController(), 0);
    assert.equal(dev.controllerState, 'started');

    assert.equal(await fe.setVringEnable(CanQueue.RX, false, { needReply: true }), 0);
    const used = drv.rx.ring.usedIdx;
    host.transmit(frame(0x42, [1]));
    drv.rx.notify();
    await sleep(30);
    assert.equal(drv.rx.ring.usedIdx, used, 'no RX buffer was used');
    assert.equal(drv.received().length, 0);
  });

  test('SET_MEM_TABLE again while running re-translates and releases the old mappings', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { fe, ram, drv } = await startDriver(t, paths[0]!);
    const host = hostPort(t, can.hubFor(0));
    assert.equal(await drv.startController(), 0);
    await settle();
    const before = memfdMaps();
    for (let i = 0; i < 20; i++) {
      assert.equal(await fe.setMemTable(ram, { needReply: true }), 0);
      assert.equal(await drv.send({ id: i, data: [i] }), 0, `TX after table ${i}`);
      host.transmit(frame(0x100 + i, [i]));
      await drv.waitFrames(i + 1);
    }
    await settle();
    assert.equal(memfdMaps(), before, 'one mapping per region, old ones unmapped');
    assert.equal(host.frames().length, 20);
    assert.equal(can.daemon.connection(0)!.session.broken, null);
  });

  test('GET_VRING_BASE stops the ring: next avail index, no further used entries', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { ram, drv } = await startDriver(t, paths[0]!);
    const host = hostPort(t, can.hubFor(0));
    assert.equal(await drv.startController(), 0);
    assert.deepEqual(await drv.sendMany([0, 1, 2, 3, 4].map((i) => ({ id: i, data: [i] }))), [0, 0, 0, 0, 0]);
    const bases = await drv.stop();
    assert.equal(bases[CanQueue.TX], 5);
    assert.equal(bases[CanQueue.TX], drv.tx.ring.availIdx);
    assert.equal(bases[CanQueue.RX], 0, 'no RX buffer was consumed');
    assert.equal(bases[CanQueue.CTRL], 1);
    // While stopped: a TX chain and a kick, an RX frame from the bus. Nothing may touch the rings.
    const usedBefore = drv.queues.map((q) => q.ring.usedIdx);
    drv.queues.forEach((q) => {
      q.drainInterrupts();
    });
    const result = ram.alloc(1, 1, 0);
    ram.write(result, Uint8Array.of(0xee));
    const buf = ram.alloc(24, 8, 0);
    ram.write(buf, drv.encodeTx({ id: 0x42, data: [1] }));
    const head = drv.tx.add([{ gpa: buf, len: 17 }], [{ gpa: result, len: 1 }]);
    drv.tx.kick();
    drv.tx.notify();
    host.transmit(frame(0x77, [7]));
    await sleep(100);
    assert.deepEqual(
      drv.queues.map((q) => q.ring.usedIdx),
      usedBefore,
    );
    assert.equal(ram.read(result, 1)[0], 0xee, 'no guest memory write');
    assert.deepEqual(
      drv.queues.map((q) => q.drainInterrupts()),
      [0, 0, 0],
    );
    assert.equal(host.frames().length, 5, 'the chain posted while stopped was not transmitted');
    // Resume: the chain at index 5 is taken, but returned NOT_OK: rings restart disabled
    // (SET_VRING_KICK comes before SET_VRING_ENABLE), and a started but disabled TX ring discards
    // what it holds (vhost-user "Ring states"). The frame that waited on the bus is delivered.
    const completed = drv.tx.waitFor(head);
    await drv.restart(bases);
    assert.equal(await completed, 1);
    assert.equal(ram.read(result, 1)[0], 1);
    assert.equal(can.device(0)!.stats.txRejected.disabled, 1);
    assert.equal(host.frames().length, 5);
    assert.equal(await drv.send({ id: 0x43, data: [2] }), 0, 'the resumed ring transmits');
    assert.equal(host.frames().length, 6);
    const [rx] = await drv.waitFrames(1);
    assert.equal(rx!.id, 0x77, 'a frame that arrived during the pause is delivered after resume');
  });

  test('SET_VRING_BASE(n) on restart resumes exactly at n', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { ram, drv } = await startDriver(t, paths[0]!);
    const host = hostPort(t, can.hubFor(0));
    assert.equal(await drv.startController(), 0);
    const bases = await drv.stop();
    const mk = (id: number) => {
      const buf = ram.alloc(24, 8, 0);
      const result = ram.alloc(1, 1, 0);
      ram.write(buf, drv.encodeTx({ id, data: [id] }));
      ram.write(result, Uint8Array.of(0xee));
      return { head: drv.tx.add([{ gpa: buf, len: 17 }], [{ gpa: result, len: 1 }]), result };
    };
    const a = mk(0xa);
    drv.tx.publish();
    // Skip chain A: the device must start at avail index base + 1. (B is posted after the restart:
    // a chain waiting in the ring while it restarts disabled would be discarded.)
    await drv.restart([bases[0]! + 1, bases[1]!, bases[2]!]);
    const b = mk(0xb);
    const done = drv.tx.waitFor(b.head);
    drv.tx.kick();
    const len = await done;
    assert.equal(len, 1);
    assert.equal(ram.read(b.result, 1)[0], 0);
    assert.equal(ram.read(a.result, 1)[0], 0xee, 'chain A was skipped');
    assert.deepEqual(
      host.frames().map((f) => f.id),
      [0xb],
    );
    assert.equal(drv.tx.ring.usedIdx, 1);
    assert.equal(a.head !== b.head, true);
  });

  test('VM pause/resume keeps the controller STARTED and loses nothing', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { drv } = await startDriver(t, paths[0]!);
    const host = hostPort(t, can.hubFor(0));
    assert.equal(await drv.startController(), 0);
    for (let round = 0; round < 5; round++) {
      assert.equal(await drv.send({ id: round, data: [round] }), 0);
      const bases = await drv.stop();
      assert.equal(can.device(0)!.controllerState, 'started');
      await drv.restart(bases);
      host.transmit(frame(0x200 + round, [round]));
      await drv.waitFrames(round + 1);
    }
    assert.equal(await drv.send({ id: 9, data: [9] }), 0);
    assert.equal(host.frames().length, 6);
    assert.equal(drv.received().length, 5);
  });

  for (const eventIdx of [true, false]) {
    test(`interrupt and kick suppression end to end (EVENT_IDX ${eventIdx ? 'on' : 'off'})`, async (t) => {
      const { can, paths } = startTestDaemon(t);
      const { drv } = await startDriver(t, paths[0]!, eventIdx ? {} : { features: NO_EVENT_IDX });
      const host = hostPort(t, can.hubFor(0));
      assert.equal(await drv.startController(), 0);
      // A batch costs one kick.
      const kicks = drv.tx.stats.kicks;
      assert.deepEqual(
        await drv.sendMany([1, 2, 3, 4, 5, 6, 7, 8].map((id) => ({ id }))),
        new Array(8).fill(0),
      );
      assert.equal(drv.tx.stats.kicks - kicks, 1);
      if (eventIdx)
        assert.equal(drv.tx.ring.availEvent, drv.tx.ring.availIdx, 'the device asks for the next kick');
      // The driver turns RX interrupts off: entries arrive, no interrupt.
      drv.rx.drainInterrupts();
      assert.equal(drv.rx.ring.suppressInterrupts(true), false);
      for (let i = 0; i < 3; i++) host.transmit(frame(0x300 + i, [i]));
      await waitFor('RX used entries', () => (drv.rx.ring.usedIdx === 3 ? true : undefined));
      await sleep(20);
      assert.equal(drv.rx.drainInterrupts(), 0, 'suppressed');
      assert.equal(drv.rx.ring.suppressInterrupts(false), true, 'entries are waiting');
      assert.equal(drv.takeReceived().length, 3);
      host.transmit(frame(0x400, [4]));
      await drv.rx.waitUsed(); // no polling: only the call eventfd wakes it
      assert.ok(drv.rx.stats.interrupts >= 1);
      assert.equal(drv.takeReceived().length, 1);
    });
  }

  test('indirect descriptors on TX and control', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { drv } = await startDriver(t, paths[0]!);
    const host = hostPort(t, can.hubFor(0));
    assert.equal(await drv.control(0x0201, { indirect: true }), 0);
    assert.equal(await drv.send({ id: 0x1abcdef0, extended: true, data: [1, 2] }, { indirect: true }), 0);
    assert.equal(host.frames()[0]!.id, 0x1abcdef0);
    assert.equal(drv.tx.ring.readDesc(0).flags, Desc.F_INDIRECT);
  });

  test('indirect descriptors without INDIRECT_DESC negotiated are returned unused', async (t) => {
    const { paths } = startTestDaemon(t);
    const { drv } = await startDriver(t, paths[0]!, {
      features: CAN_DRIVER_FEATURES & ~featureMask(VirtioFeature.RING_INDIRECT_DESC),
    });
    assert.equal(await drv.startController(), 0);
    assert.equal(await drv.send({ id: 1, data: [1] }, { indirect: true }), -1);
    assert.equal(await drv.send({ id: 1, data: [1] }), 0, 'processing continues');
  });

  test('chains with unmapped buffers or loops are returned with used length 0', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { ram, drv } = await startDriver(t, paths[0]!);
    assert.equal(await drv.startController(), 0);
    const result = ram.alloc(1, 1, 0);
    const bad = drv.tx.add([{ gpa: 0x5000_0000, len: 24 }], [{ gpa: result, len: 1 }]);
    const p1 = drv.tx.waitFor(bad);
    const straddle = drv.tx.add([{ gpa: 16 * 1024 * 1024 - 8, len: 24 }], [{ gpa: result, len: 1 }]);
    const p2 = drv.tx.waitFor(straddle);
    drv.tx.kick();
    assert.equal(await p1, 0);
    assert.equal(await p2, 0, 'a buffer running past the end of a region');
    // A descriptor loop, built by hand.
    drv.tx.ring.writeDesc(10, { addr: result, len: 1, flags: Desc.F_NEXT, next: 11 });
    drv.tx.ring.writeDesc(11, { addr: result, len: 1, flags: Desc.F_NEXT, next: 10 });
    drv.tx.ring.claimRaw(10, [10, 11]);
    drv.tx.ring.pushAvailRaw(10);
    const p3 = drv.tx.waitFor(10);
    drv.tx.kick();
    assert.equal(await p3, 0);
    assert.equal(await drv.send({ id: 5, data: [5] }), 0, 'processing continues');
    assert.equal(can.daemon.connection(0)!.session.broken, null, 'a bad chain does not break the device');
    assert.ok(can.device(0)!.stats.badChains >= 3);
  });

  test('index wrap-around past 65535 end to end', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { drv } = await startDriver(t, paths[0]!, { bases: [65530, 65530, 65530], queueSize: 16 });
    const host = hostPort(t, can.hubFor(0));
    assert.equal(await drv.startController(), 0);
    for (let i = 0; i < 20; i++) {
      assert.equal(await drv.send({ id: i, data: [i] }), 0);
      host.transmit(frame(0x500 + i, [i]));
    }
    const got = await drv.waitFrames(20);
    assert.deepEqual(
      got.map((f) => f.id),
      Array.from({ length: 20 }, (_, i) => 0x500 + i),
    );
    assert.deepEqual(
      host.frames().map((f) => f.id),
      Array.from({ length: 20 }, (_, i) => i),
    );
    assert.equal(drv.tx.ring.availIdx, (65530 + 20) & 0xffff);
    const bases = await drv.stop();
    assert.equal(bases[CanQueue.TX], 14);
    assert.equal(bases[CanQueue.RX], 14);
    assert.equal(bases[CanQueue.CTRL], 65531);
  });

  test('classic-only negotiation uses 24-byte RX buffers and never overruns them', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const features = CAN_DRIVER_FEATURES & ~featureMask(CanFeature.CAN_FD);
    const { drv } = await startDriver(t, paths[0]!, { features });
    assert.equal(drv.rxBufferSize, 24);
    const host = hostPort(t, can.hubFor(0));
    assert.equal(await drv.startController(), 0);
    host.transmit(frame(0x1, [1, 2, 3, 4, 5, 6, 7, 8]));
    host.transmit(frame(0x2, new Array(64).fill(0x5a), { fd: true }));
    host.transmit(frame(0x3, [3]));
    const got = await drv.waitFrames(2);
    await sleep(30);
    assert.deepEqual(
      drv.received().map((f) => f.id),
      [0x1, 0x3],
      'the FD frame is not delivered',
    );
    assert.ok(got.every((f) => !f.overrun && f.usedLen <= 24));
    assert.equal(await drv.send({ id: 4, fd: true, data: new Array(12).fill(1) }), 1, 'FD TX is refused');
  });
});
