// The CanTestDriver (Linux virtio_can driver behaviour) end to end against the CAN daemon:
// TX/RX/control formats and results (docs/protocol-notes.md 3-4).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { makeCanFrame } from '../../src/core/bus/can-frame.js';
import { CanFlag, CanMsgType } from '../../src/core/devices/can/constants.js';
import { frame, hostPort, startDriver, startTestDaemon } from '../helpers/vhost-user.js';

describe('CanTestDriver against the CAN daemon', () => {
  test('valid frames: classic, extended, FD, RTR', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { drv } = await startDriver(t, paths[0]!);
    const host = hostPort(t, can.hubFor(0));
    assert.equal(await drv.startController(), 0);
    assert.equal(await drv.send({ id: 0x123, data: [1, 2, 3, 4, 5, 6, 7, 8] }), 0);
    assert.equal(await drv.send({ id: 0x1abcdef0, extended: true, data: [0xaa] }), 0);
    for (const len of [12, 16, 20, 24, 32, 48, 64]) {
      assert.equal(await drv.send({ id: 0x7ff, fd: true, data: new Array(len).fill(len) }), 0, `FD ${len}`);
    }
    assert.equal(await drv.send({ id: 0x42, rtr: true, len: 4 }), 0);
    const got = host.frames();
    assert.equal(got.length, 10);
    assert.deepEqual(
      { id: got[0]!.id, len: got[0]!.len, ext: got[0]!.extended },
      { id: 0x123, len: 8, ext: false },
    );
    assert.deepEqual({ id: got[1]!.id, ext: got[1]!.extended }, { id: 0x1abcdef0, ext: true });
    assert.ok(got.slice(2, 9).every((f) => f.fd));
    assert.deepEqual({ rtr: got[9]!.rtr, len: got[9]!.len }, { rtr: true, len: 4 });
  });

  test('malformed and refused TX requests complete NOT_OK or with used length 0', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { drv } = await startDriver(t, paths[0]!);
    const host = hostPort(t, can.hubFor(0));
    assert.equal(await drv.startController(), 0);
    const good = drv.encodeTx({ id: 0x10, data: [1, 2, 3, 4, 5, 6, 7, 8] });
    const patched = (off: number, v: number, size: 2 | 4) => {
      const b = good.slice();
      const dv = new DataView(b.buffer);
      if (size === 2) dv.setUint16(off, v, true);
      else dv.setUint32(off, v, true);
      return b;
    };
    assert.equal(await drv.send({ id: 0 }, { raw: patched(0, 0x0101, 2) }), 1, 'msg_type RX on the TX queue');
    assert.equal(await drv.send({ id: 0 }, { raw: patched(8, 0x0001, 4) }), 1, 'undefined flag bit');
    assert.equal(await drv.send({ id: 0 }, { raw: patched(12, 0x800, 4) }), 1, 'standard id 0x800');
    assert.equal(await drv.send({ id: 0x20000000, extended: true, data: [1] }), 1, 'extended id 0x20000000');
    assert.equal(await drv.send({ id: 0xe0000123, extended: true, data: [1] }), 1, 'top 3 bits set');
    assert.equal(await drv.send({ id: 0 }, { raw: patched(2, 9, 2) }), 1, 'classic length 9');
    assert.equal(await drv.send({ id: 0 }, { raw: good.subarray(0, 20) }), 1, 'shorter than 16 + length');
    assert.equal(await drv.send({ id: 0 }, { raw: good.subarray(0, 8) }), 1, 'shorter than the header');
    assert.equal(await drv.send({ id: 0x11, fd: true, data: new Array(13).fill(0) }), 1, 'FD length 13');
    assert.equal(await drv.send({ id: 0x12, rtr: true, fd: true, len: 4 }), 1, 'RTR + FD');
    assert.equal(await drv.send({ id: 0x13, data: [1] }, { noResultByte: true }), -1, 'no result byte');
    assert.equal(host.frames().length, 0, 'nothing reached the bus');
    assert.equal(await drv.send({ id: 0x14, data: [1] }), 0, 'processing continues');
    assert.equal(host.frames().length, 1);
  });

  test('control requests: idempotent START/STOP, unknown and short requests', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { drv } = await startDriver(t, paths[0]!);
    assert.equal(await drv.stopController(), 0, 'STOP while stopped');
    assert.equal(await drv.startController(), 0);
    assert.equal(await drv.startController(), 0, 'START while started');
    assert.equal(await drv.control(0x0203), 1, 'unknown type');
    assert.equal(await drv.control(0, { raw: Uint8Array.of(0x01) }), 1, 'one byte');
    assert.equal(await drv.control(CanMsgType.SET_CTRL_MODE_START, { noResultByte: true }), -1);
    assert.equal(can.device(0)!.controllerState, 'started');
    assert.equal(await drv.stopController(), 0);
    assert.equal(can.device(0)!.controllerState, 'stopped');
  });

  test('RX format: msg_type, flags, used length, reserved bytes', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { drv } = await startDriver(t, paths[0]!);
    const host = hostPort(t, can.hubFor(0));
    assert.equal(await drv.startController(), 0);
    host.transmit(frame(0x123, [1, 2, 3]));
    host.transmit(frame(0x1abcdef0, [4], { extended: true }));
    host.transmit(frame(0x456, new Array(64).fill(7), { fd: true }));
    host.transmit(makeCanFrame({ id: 0x55, rtr: true, len: 5 }));
    const [a, b, c, d] = await drv.waitFrames(4);
    for (const f of [a!, b!, c!, d!]) {
      assert.equal(f.msgType, CanMsgType.RX);
      assert.equal(f.flags & ~(CanFlag.EXTENDED | CanFlag.FD | CanFlag.RTR), 0);
      assert.equal(f.padding, 0);
      assert.equal(f.reservedXlPriority, 0);
      assert.equal(f.overrun, false);
    }
    assert.deepEqual([a!.id, a!.length, a!.usedLen, [...a!.data]], [0x123, 3, 19, [1, 2, 3]]);
    assert.deepEqual([b!.id, b!.extended, b!.usedLen], [0x1abcdef0, true, 17]);
    assert.deepEqual([c!.fd, c!.length, c!.usedLen], [true, 64, 80]);
    assert.deepEqual([d!.rtr, d!.length], [true, 5]);
    assert.ok(d!.usedLen >= 16 + 5, 'RTR used length covers the DLC');
  });

  test('guest TX is delivered to the other guest, never echoed back', async (t) => {
    const { paths } = startTestDaemon(t, { sockets: 2 });
    const g0 = await startDriver(t, paths[0]!);
    const g1 = await startDriver(t, paths[1]!);
    assert.equal(await g0.drv.startController(), 0);
    assert.equal(await g1.drv.startController(), 0);
    assert.equal(await g0.drv.send({ id: 0x100, data: [1] }), 0);
    assert.equal((await g1.drv.waitFrames(1))[0]!.id, 0x100);
    await sleep(30);
    assert.equal(g0.drv.received().length, 0);
  });

  test('frames arriving while STOPPED are discarded, not delivered after START', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { drv } = await startDriver(t, paths[0]!);
    const host = hostPort(t, can.hubFor(0));
    host.transmit(frame(0x1, [1]));
    await sleep(20);
    assert.equal(await drv.startController(), 0);
    host.transmit(frame(0x2, [2]));
    const got = await drv.waitFrames(1);
    await sleep(20);
    assert.deepEqual(
      drv.received().map((f) => f.id),
      [0x2],
    );
    assert.equal(got.length, 1);
  });

  test('order and buffer recycling: 2000 frames through 64 RX buffers, 300 TX through a small ring', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { drv } = await startDriver(t, paths[0]!, { queueSize: 32 });
    const host = hostPort(t, can.hubFor(0));
    assert.equal(await drv.startController(), 0);
    const results = await drv.sendMany(
      Array.from({ length: 300 }, (_, i) => ({ id: i & 0x7ff, data: [i & 0xff] })),
    );
    assert.ok(results.every((r) => r === 0));
    assert.deepEqual(
      host.frames().map((f) => f.data[0]),
      Array.from({ length: 300 }, (_, i) => i & 0xff),
    );
    let next = 0;
    for (let burst = 0; burst < 20; burst++) {
      for (let i = 0; i < 100; i++) host.transmit(frame((burst * 100 + i) & 0x7ff, [i]));
      const got = await drv.waitFrames(100);
      for (const f of drv.takeReceived()) {
        assert.equal(f.id, next & 0x7ff);
        next++;
      }
      assert.ok(got.length >= 100);
    }
    assert.equal(next, 2000);
    assert.equal(drv.rx.ring.freeCount, 0, 'every buffer is posted again');
    assert.equal(drv.rx.ring.inFlight, 32);
    assert.equal(can.device(0)!.stats.rxDelivered, 2000);
  });

  test('sendMany when the back-end goes away mid-send: one clear rejection, no unhandled ones', async (t) => {
    const { can, paths } = startTestDaemon(t, { sockets: 2 });
    const { drv } = await startDriver(t, paths[0]!, { queueSize: 8 });
    assert.equal(await drv.startController(), 0);
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown): void => {
      unhandled.push(reason);
    };
    process.on('unhandledRejection', onUnhandled);
    t.after(() => process.off('unhandledRejection', onUnhandled));
    // The back-end closes the connection once 20 frames reached the bus, while the driver still
    // has a full ring in flight and more frames to post.
    let seen = 0;
    const port = can.hubFor(0).attach(
      {
        onFramesAvailable() {
          while (port.take() !== undefined) {
            if (++seen === 20) setImmediate(() => can.daemon.connection(0)?.close('test: back-end gone'));
          }
        },
      },
      { name: 'watch' },
    );
    t.after(() => port.detach());
    const frames = Array.from({ length: 400 }, (_, i) => ({ id: i & 0x7ff, data: [i & 0xff] }));
    await assert.rejects(drv.sendMany(frames), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'ERR_FRONTEND_CLOSED');
      assert.match(err.message, /of 400 frames completed/);
      return true;
    });
    assert.ok(seen >= 20 && seen < 400, `${seen} frames reached the bus`);
    // The same once the connection is known to be gone, with the ring empty or full.
    await assert.rejects(drv.sendMany(frames.slice(0, 3)), { code: 'ERR_FRONTEND_CLOSED' });
    const g1 = await startDriver(t, paths[1]!, { queueSize: 8 });
    assert.equal(await g1.drv.startController(), 0);
    assert.equal(await g1.drv.send(frames[0]!), 0);
    can.daemon.connection(1)!.close('test: back-end gone');
    await g1.fe.closed;
    await assert.rejects(g1.drv.sendMany(frames.slice(0, 3)), { code: 'ERR_FRONTEND_CLOSED' });
    await assert.rejects(g1.drv.send(frames[0]!), { code: 'ERR_FRONTEND_CLOSED' });
    await sleep(100);
    assert.deepEqual(unhandled, []);
  });
});
