/**
 * CanDevice against the real split ring in plain memory, with a fake DeviceHost and, where the
 * in-process hub cannot produce it, a fake asynchronous bus port ('pending' transmits).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type CanFrame, makeCanFrame } from '../../src/core/bus/can-frame.js';
import { type BusPortHandler, CanHub, type HubPort, type TxResult } from '../../src/core/bus/hub.js';
import { CanDevice, type CanDeviceOptions } from '../../src/core/devices/can/can-device.js';
import { CanFeature, CanMsgType, CanStatus } from '../../src/core/devices/can/constants.js';
import type { GuestMemory } from '../../src/core/memory/guest-memory.js';
import type { VhostError } from '../../src/core/util/errors.js';
import { nullLogger } from '../../src/core/util/log.js';
import type { DeviceHost } from '../../src/core/vhost-user/device.js';
import { featureBit } from '../../src/core/virtio/features.js';
import { SplitQueue } from '../../src/core/virtio/split-queue.js';
import { plainMemory } from './support/plain-memory.js';

const UVA = 0x7f00_0000_0000;
let SIZE = 16;
// desc at +0, avail at +0x40000, used at +0x80000 (room for queues of up to 1024)
const ringBase = (q: number) => 0x10000 + q * 0x10000;
const DATA = 0x100000;

class Harness implements DeviceHost {
  readonly log = nullLogger;
  readonly memory: GuestMemory = plainMemory({ gpa: 0, size: 0x1000000, uva: UVA });
  readonly queues: SplitQueue[];
  readonly dv: DataView;
  availIdx = [0, 0, 0];
  configChanges = 0;
  broken: VhostError | null = null;
  ackedFeatures = 0n;
  private nextBuf = DATA;
  private nextDesc = [0, 0, 0];

  constructor(size = 16) {
    SIZE = size;
    const b = this.memory.regions[0]!.bytes;
    this.dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
    this.queues = [0, 1, 2].map(
      (i) =>
        new SplitQueue(
          i,
          SIZE,
          0,
          { desc: UVA + ringBase(i), avail: UVA + ringBase(i) + 0x4000, used: UVA + ringBase(i) + 0x8000 },
          this.memory,
          { eventIdx: false, indirect: false },
          () => {},
        ),
    );
  }
  queue(i: number): SplitQueue | null {
    return this.broken ? null : (this.queues[i] ?? null);
  }
  disabledQueue(): SplitQueue | null {
    return null;
  }
  /** How deferred work runs (default: at once); tests replace it to hold turns. */
  scheduleFn: (fn: () => void) => void = (fn) => fn();
  schedule(fn: () => void): void {
    this.scheduleFn(fn);
  }
  notifyConfigChange(): boolean {
    this.configChanges++;
    return true;
  }
  markBroken(err: VhostError): void {
    this.broken = err;
  }

  private alloc(len: number): number {
    const a = this.nextBuf;
    this.nextBuf += (len + 15) & ~15;
    return a;
  }

  /** Posts a chain of one readable buffer (bytes) and `writable` writable bytes; returns the result address. */
  post(q: number, readable: Uint8Array | null, writable: number): number {
    const base = ringBase(q);
    const head = this.nextDesc[q]! % SIZE;
    let d = head;
    const segs: [number, number, number][] = [];
    if (readable) {
      const a = this.alloc(readable.byteLength);
      this.memory.writeFrom(a, readable, 0, readable.byteLength);
      segs.push([a, readable.byteLength, 0]);
    }
    let w = -1;
    if (writable > 0) {
      w = this.alloc(writable);
      this.memory.writeFrom(w, new Uint8Array(writable).fill(0xee), 0, writable);
      segs.push([w, writable, 2]);
    }
    segs.forEach(([a, l, f], k) => {
      const o = base + 16 * d;
      this.dv.setBigUint64(o, BigInt(a), true);
      this.dv.setUint32(o + 8, l, true);
      const more = k < segs.length - 1;
      this.dv.setUint16(o + 12, f | (more ? 1 : 0), true);
      this.dv.setUint16(o + 14, (d + 1) % SIZE, true);
      d = (d + 1) % SIZE;
    });
    this.nextDesc[q] = this.nextDesc[q]! + segs.length;
    const ai = this.availIdx[q]!;
    this.dv.setUint16(base + 0x4000 + 4 + 2 * (ai % SIZE), head, true);
    this.availIdx[q] = (ai + 1) & 0xffff;
    this.dv.setUint16(base + 0x4000 + 2, this.availIdx[q]!, true);
    return w;
  }

  used(q: number): { id: number; len: number }[] {
    const base = ringBase(q) + 0x8000;
    const n = this.dv.getUint16(base + 2, true);
    return Array.from({ length: n }, (_, i) => ({
      id: this.dv.getUint32(base + 4 + 8 * (i % SIZE), true),
      len: this.dv.getUint32(base + 8 + 8 * (i % SIZE), true),
    }));
  }

  byte(addr: number): number {
    return this.dv.getUint8(addr);
  }
}

function tx(o: { id?: number; len?: number; flags?: number; type?: number } = {}): Uint8Array {
  const len = o.len ?? 2;
  const b = new Uint8Array(16 + len);
  const dv = new DataView(b.buffer);
  dv.setUint16(0, o.type ?? CanMsgType.TX, true);
  dv.setUint16(2, len, true);
  dv.setUint32(8, o.flags ?? 0, true);
  dv.setUint32(12, o.id ?? 0x123, true);
  for (let i = 0; i < len; i++) b[16 + i] = i + 1;
  return b;
}

const ctrl = (t: number) => Uint8Array.of(t & 0xff, t >> 8);
const ALL =
  featureBit(CanFeature.CAN_CLASSIC) |
  featureBit(CanFeature.CAN_FD) |
  featureBit(CanFeature.RTR_FRAMES) |
  featureBit(CanFeature.LATE_TX_ACK);

/** A bus port whose transmits complete later (like a host interface waiting for its echo). */
class AsyncPort {
  handler!: BusPortHandler;
  sent: { frame: CanFrame; token: number }[] = [];
  receiving = true;
  readonly port = {
    transmit: (frame: CanFrame, token?: number): TxResult => {
      this.sent.push({ frame, token: token ?? -1 });
      return 'pending';
    },
    take: () => undefined,
    queued: 0,
    setReceiving: (on: boolean) => {
      this.receiving = on;
      return 0;
    },
    setAcceptPolicy: () => {},
    detach: () => {},
    stats: {},
  };
  readonly hub = {
    attach: (h: BusPortHandler) => {
      this.handler = h;
      return this.port as unknown as HubPort;
    },
    injectBusState: (_port: number, state: string) => {
      this.injected.push(state);
    },
  } as unknown as CanHub;
  readonly injected: string[] = [];
}

function setup(opts: Partial<CanDeviceOptions> = {}, features = ALL) {
  const h = new Harness();
  const hub = opts.hub ?? new CanHub({ name: 't' });
  const dev = new CanDevice({ hub, portName: 'g0', ...opts });
  dev.attach(h);
  dev.setFeatures(features);
  for (let i = 0; i < 3; i++) dev.queueStarted(i);
  return { h, dev, hub };
}

test('LATE_TX_ACK: completion waits for the bus, in submission order, also past immediate NOT_OKs', () => {
  const a = new AsyncPort();
  const { h, dev } = setup({ hub: a.hub });
  const r0 = h.post(2, ctrl(CanMsgType.SET_CTRL_MODE_START), 1);
  dev.queueNotified(2);
  assert.equal(h.byte(r0), 0);
  const res = [h.post(0, tx({ id: 1 }), 1), h.post(0, tx({ id: 0x800 }), 1), h.post(0, tx({ id: 3 }), 1)];
  dev.queueNotified(0);
  assert.equal(a.sent.length, 2, 'the invalid frame never reaches the bus');
  assert.equal(h.used(0).length, 0, 'nothing completes before the bus confirms the first frame');
  a.handler.onTxComplete!(a.sent[1]!.token, true); // the third request confirms first
  assert.equal(h.used(0).length, 0, 'order is kept');
  a.handler.onTxComplete!(a.sent[0]!.token, true);
  assert.deepEqual(
    h.used(0).map((u) => u.len),
    [1, 1, 1],
  );
  assert.deepEqual(
    res.map((r) => h.byte(r)),
    [0, 1, 0],
  );
  assert.equal(dev.pendingTx, 0);
  assert.equal(dev.stats.txOk, 2, 'confirmed transmits are counted when confirmed');
  assert.equal(dev.stats.txNotOk, 1);
  assert.equal(dev.stats.txRejected['id-range'], 1);
  assert.equal(dev.stats.txBytes, 4);
});

test('bus-off on a stopped controller is ignored: it is not on the bus', () => {
  const a = new AsyncPort();
  const { h, dev } = setup({ hub: a.hub });
  a.handler.onBusState!('bus-off');
  assert.equal(dev.configStatus, 0);
  assert.equal(h.configChanges, 0);
  assert.equal(dev.stats.busOff, 0);
});

test('without LATE_TX_ACK a pending transmit completes on acceptance', () => {
  const a = new AsyncPort();
  const { h, dev } = setup({ hub: a.hub }, ALL & ~featureBit(CanFeature.LATE_TX_ACK));
  h.post(2, ctrl(CanMsgType.SET_CTRL_MODE_START), 1);
  dev.queueNotified(2);
  const r = h.post(0, tx(), 1);
  dev.queueNotified(0);
  assert.equal(h.used(0).length, 1);
  assert.equal(h.byte(r), 0);
});

test('STOP completes pending TX with NOT_OK before the STOP itself; late confirmations are ignored', () => {
  const a = new AsyncPort();
  const { h, dev } = setup({ hub: a.hub });
  h.post(2, ctrl(CanMsgType.SET_CTRL_MODE_START), 1);
  dev.queueNotified(2);
  const r = h.post(0, tx(), 1);
  dev.queueNotified(0);
  assert.equal(h.used(0).length, 0);
  const rs = h.post(2, ctrl(CanMsgType.SET_CTRL_MODE_STOP), 1);
  dev.queueNotified(2);
  assert.equal(h.used(0).length, 1, 'TX completed by STOP');
  assert.equal(h.byte(r), 1);
  assert.equal(h.byte(rs), 0);
  assert.equal(a.receiving, false);
  a.handler.onTxComplete!(a.sent[0]!.token, true);
  assert.equal(h.used(0).length, 1, 'no second completion');
  assert.equal(dev.stats.txRejected.cancelled, 1);
});

test('bus-off: status bit 0 (value 1), pending TX NOT_OK, config change; START clears it', () => {
  const a = new AsyncPort();
  const { h, dev } = setup({ hub: a.hub });
  h.post(2, ctrl(CanMsgType.SET_CTRL_MODE_START), 1);
  dev.queueNotified(2);
  const r = h.post(0, tx(), 1);
  dev.queueNotified(0);
  a.handler.onBusState!('bus-off');
  assert.equal(dev.configStatus, CanStatus.CTRL_BUSOFF);
  assert.equal(dev.configStatus, 1);
  assert.equal(h.byte(r), 1);
  assert.equal(h.configChanges, 1);
  assert.equal(dev.controllerState, 'stopped');
  const cfg = new Uint8Array(2);
  dev.readConfig(cfg);
  assert.deepEqual([...cfg], [1, 0]);
  h.post(2, ctrl(CanMsgType.SET_CTRL_MODE_START), 1);
  dev.queueNotified(2);
  assert.equal(dev.configStatus, 0);
  assert.equal(dev.controllerState, 'started');
});

test('queueStopping (GET_VRING_BASE) fails every pending TX first', () => {
  const a = new AsyncPort();
  const { h, dev } = setup({ hub: a.hub });
  h.post(2, ctrl(CanMsgType.SET_CTRL_MODE_START), 1);
  dev.queueNotified(2);
  h.post(0, tx(), 1);
  h.post(0, tx(), 1);
  dev.queueNotified(0);
  dev.queueStopping(0);
  assert.equal(h.used(0).length, 2);
  assert.equal(dev.pendingTx, 0);
});

test('control: idempotent START/STOP, unknown and short requests NOT_OK, missing result byte used 0', () => {
  const { h, dev } = setup();
  const results = [
    h.post(2, ctrl(CanMsgType.SET_CTRL_MODE_STOP), 1),
    h.post(2, ctrl(CanMsgType.SET_CTRL_MODE_START), 1),
    h.post(2, ctrl(CanMsgType.SET_CTRL_MODE_START), 1),
    h.post(2, ctrl(0x0203), 1),
    h.post(2, Uint8Array.of(1), 1),
  ];
  h.post(2, ctrl(CanMsgType.SET_CTRL_MODE_STOP), 0);
  dev.queueNotified(2);
  assert.deepEqual(
    results.map((r) => h.byte(r)),
    [0, 0, 0, 1, 1],
  );
  assert.deepEqual(
    h.used(2).map((u) => u.len),
    [1, 1, 1, 1, 1, 0],
  );
  assert.equal(dev.controllerState, 'stopped', 'the STOP without result byte still took effect');
});

test('RX: a buffer shorter than the frame loses that frame (counted) and is returned empty', () => {
  const { h, dev, hub } = setup();
  h.post(2, ctrl(CanMsgType.SET_CTRL_MODE_START), 1);
  dev.queueNotified(2);
  const peer = hub.attach({ onFramesAvailable() {} }, { name: 'peer' });
  h.post(1, null, 20); // too short for 16 + 8
  h.post(1, null, 24);
  peer.transmit(makeCanFrame({ id: 1, data: new Uint8Array(8) }));
  peer.transmit(makeCanFrame({ id: 2, data: new Uint8Array(8) }));
  assert.deepEqual(
    h.used(1).map((u) => u.len),
    [0, 24],
  );
  assert.equal(dev.stats.rxShortBuffer, 1);
  // The lost frame was released too: the second one reused its bus copy.
  assert.equal(hub.stats().framePool.created, 1);
});

test('a corrupt ring marks the device broken instead of throwing', () => {
  const { h, dev } = setup();
  h.dv.setUint16(ringBase(0) + 0x4000 + 2, 200, true); // avail idx far ahead
  dev.queueNotified(0);
  assert.equal(h.broken?.code, 'ERR_VQ_AVAIL_IDX');
});

test('a full TX ring is processed in bounded turns (fairness), in order, all completed', () => {
  const turns: (() => void)[] = [];
  const h = new Harness(1024);
  const hub = new CanHub({ name: 'f' });
  const peer = hub.attach({ onFramesAvailable() {} }, { name: 'peer', queueLimit: 100_000 });
  const dev = new CanDevice({ hub, portName: 'g0' });
  h.scheduleFn = (fn) => turns.push(fn);
  dev.attach(h);
  dev.setFeatures(ALL);
  for (let i = 0; i < 3; i++) dev.queueStarted(i);
  h.post(2, ctrl(CanMsgType.SET_CTRL_MODE_START), 1);
  dev.queueNotified(2);
  const N = 600; // two descriptors per request: posted in two halves of 300 (600 of 1024 descriptors)
  for (let i = 0; i < N / 2; i++) h.post(0, tx({ id: i }), 1);
  dev.queueNotified(0);
  assert.equal(dev.stats.txOk, 256, 'one turn processes at most 256 chains');
  assert.equal(turns.length, 1, 'the rest is scheduled, not done inline');
  while (turns.length > 0) turns.shift()!();
  for (let i = N / 2; i < N; i++) h.post(0, tx({ id: i }), 1);
  dev.queueNotified(0);
  while (turns.length > 0) turns.shift()!();
  assert.equal(dev.stats.txOk, N);
  const ids: number[] = [];
  for (let f = peer.take(); f; f = peer.take()) ids.push(f.id);
  assert.deepEqual(
    ids,
    Array.from({ length: N }, (_, i) => i),
  );
  assert.equal(h.used(0).length, N);
});

test('guest to guest: every frame arrives intact while the TX frame and the bus copies are reused', () => {
  const hub = new CanHub({ name: 'reuse' });
  const a = setup({ hub, portName: 'a' });
  const b = setup({ hub, portName: 'b' });
  for (const g of [a, b]) {
    g.h.post(2, ctrl(CanMsgType.SET_CTRL_MODE_START), 1);
    g.dev.queueNotified(2);
  }
  const lens = [8, 1, 0, 5, 8, 2, 7, 3];
  let sent = 0;
  for (let round = 0; round < 12; round++) {
    // 8 RX buffers, then 8 frames of varying length and content from a to b.
    const bufs = Array.from({ length: 8 }, () => b.h.post(1, null, 16 + 8));
    const usedBefore = b.h.used(1).length;
    for (let k = 0; k < 8; k++) {
      const f = tx({ id: 0x100 + sent, len: lens[k]! });
      for (let i = 16; i < f.length; i++) f[i] = (sent * 7 + i) & 0xff;
      a.h.post(0, f, 1);
      sent++;
    }
    a.dev.queueNotified(0);
    const used = b.h.used(1);
    assert.equal(used.length - usedBefore, 8);
    for (let k = 0; k < 8; k++) {
      const n = sent - 8 + k;
      const len = lens[k]!;
      const base = bufs[k]!;
      assert.equal(b.h.dv.getUint32(base + 12, true), 0x100 + n, 'identifier');
      assert.equal(b.h.dv.getUint16(base + 2, true), len, 'length');
      for (let i = 0; i < len; i++) assert.equal(b.h.byte(base + 16 + i), (n * 7 + 16 + i) & 0xff);
    }
  }
  assert.equal(b.dev.stats.rxDelivered, sent);
  // The device releases every frame after copying it, so the bus recycles them: one per distinct
  // length in flight at a time, not one per frame.
  const pool = hub.stats().framePool;
  assert.ok(pool.created <= 8, `frames created: ${pool.created}`);
  assert.equal(pool.created + pool.reused, sent);
});
