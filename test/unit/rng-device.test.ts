/**
 * RngDevice against the real split ring in plain memory, with a fake DeviceHost, a fake clock and
 * a fake timer (the test decides when time passes and when the timer fires).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RngDevice, type RngDeviceOptions, VIRTIO_ID_RNG } from '../../src/core/devices/rng/rng-device.js';
import type { GuestMemory } from '../../src/core/memory/guest-memory.js';
import type { VhostError } from '../../src/core/util/errors.js';
import { nullLogger } from '../../src/core/util/log.js';
import type { DeviceHost } from '../../src/core/vhost-user/device.js';
import { featureBit, VirtioFeature } from '../../src/core/virtio/features.js';
import { SplitQueue } from '../../src/core/virtio/split-queue.js';
import { plainMemory } from './support/plain-memory.js';

const UVA = 0x7f00_0000_0000;
const SIZE = 16;
const RING = 0x10000;
const DATA = 0x100000;

class Harness implements DeviceHost {
  readonly log = nullLogger;
  readonly memory: GuestMemory = plainMemory({ gpa: 0, size: 0x400000, uva: UVA });
  readonly q: SplitQueue;
  readonly dv: DataView;
  broken: VhostError | null = null;
  ackedFeatures = 0n;
  enabled = true;
  private availIdx = 0;
  private nextDesc = 0;
  private nextBuf = DATA;
  readonly scheduled: (() => void)[] = [];

  constructor() {
    const b = this.memory.regions[0]!.bytes;
    this.dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
    this.q = new SplitQueue(
      0,
      SIZE,
      0,
      { desc: UVA + RING, avail: UVA + RING + 0x4000, used: UVA + RING + 0x8000 },
      this.memory,
      { eventIdx: false, indirect: false },
      () => {},
    );
  }
  queue(i: number): SplitQueue | null {
    return this.broken || !this.enabled || i !== 0 ? null : this.q;
  }
  disabledQueue(i: number): SplitQueue | null {
    return this.broken || this.enabled || i !== 0 ? null : this.q;
  }
  schedule(fn: () => void): void {
    this.scheduled.push(fn);
  }
  runScheduled(): void {
    for (let i = 0; i < 100 && this.scheduled.length > 0; i++) this.scheduled.shift()!();
  }
  notifyConfigChange(): boolean {
    return false;
  }
  markBroken(err: VhostError): void {
    this.broken = err;
  }

  /** Posts a chain of `segs` descriptors (true = writable) of `len` bytes each; returns the buffer addresses. */
  post(segs: readonly boolean[], len: number): number[] {
    const head = this.nextDesc % SIZE;
    let d = head;
    const addrs: number[] = [];
    segs.forEach((writable, k) => {
      const a = this.nextBuf;
      this.nextBuf += (len + 15) & ~15;
      addrs.push(a);
      this.memory.writeFrom(a, new Uint8Array(len), 0, len);
      const o = RING + 16 * d;
      this.dv.setBigUint64(o, BigInt(a), true);
      this.dv.setUint32(o + 8, len, true);
      this.dv.setUint16(o + 12, (writable ? 2 : 0) | (k < segs.length - 1 ? 1 : 0), true);
      this.dv.setUint16(o + 14, (d + 1) % SIZE, true);
      d = (d + 1) % SIZE;
    });
    this.nextDesc += segs.length;
    this.dv.setUint16(RING + 0x4000 + 4 + 2 * (this.availIdx % SIZE), head, true);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    this.dv.setUint16(RING + 0x4000 + 2, this.availIdx, true);
    return addrs;
  }

  used(): { id: number; len: number }[] {
    const base = RING + 0x8000;
    const n = this.dv.getUint16(base + 2, true);
    return Array.from({ length: n }, (_, i) => ({
      id: this.dv.getUint32(base + 4 + 8 * (i % SIZE), true),
      len: this.dv.getUint32(base + 8 + 8 * (i % SIZE), true),
    }));
  }

  bytes(addr: number, len: number): Uint8Array {
    const out = new Uint8Array(len);
    this.memory.readInto(addr, out, 0, len);
    return out;
  }
}

/** A counting source: byte i of the stream is (i % 251) + 1 (never 0, so written bytes show). */
function countingSource(): { source: (dst: Uint8Array) => number; total: () => number } {
  let n = 0;
  return {
    source: (dst) => {
      for (let i = 0; i < dst.byteLength; i++) dst[i] = (n++ % 251) + 1;
      return dst.byteLength;
    },
    total: () => n,
  };
}

class FakeTime {
  t = 0;
  timers: { at: number; fn: () => void; live: boolean }[] = [];
  now = (): number => this.t;
  setTimer = (ms: number, fn: () => void): (() => void) => {
    const e = { at: this.t + ms, fn, live: true };
    this.timers.push(e);
    return () => {
      e.live = false;
    };
  };
  get armed(): number {
    return this.timers.filter((e) => e.live).length;
  }
  /** Advances the clock to `t` and fires the timers due. */
  advance(to: number): void {
    this.t = to;
    for (const e of this.timers) {
      if (e.live && e.at <= to) {
        e.live = false;
        e.fn();
      }
    }
  }
}

function make(opts: Partial<RngDeviceOptions> = {}) {
  const h = new Harness();
  const time = new FakeTime();
  const src = countingSource();
  const dev = new RngDevice({ source: src.source, now: time.now, setTimer: time.setTimer, ...opts });
  dev.attach(h);
  return { h, time, src, dev };
}

test('identity: device 4, one queue, no config, ring features only', () => {
  const { dev } = make({ eventIdx: false });
  assert.equal(dev.deviceId, VIRTIO_ID_RNG);
  assert.equal(dev.numQueues, 1);
  assert.equal(dev.configSize, 0);
  assert.equal(
    dev.features,
    featureBit(VirtioFeature.VERSION_1) | featureBit(VirtioFeature.RING_INDIRECT_DESC),
  );
  assert.throws(() => make({ maxBytes: 0 }), RangeError);
  assert.throws(() => make({ periodMs: 0 }), RangeError);
  assert.throws(() => make({ maxBytes: 1.5 }), RangeError);
});

test('each writable buffer is filled from the source; used length = bytes written', () => {
  const { h, dev, src } = make();
  const [a] = h.post([true], 64);
  const [b, c] = h.post([true, true], 100);
  dev.queueNotified(0);
  assert.deepEqual(h.used(), [
    { id: 0, len: 64 },
    { id: 1, len: 200 },
  ]);
  assert.deepEqual(
    [...h.bytes(a!, 64)],
    Array.from({ length: 64 }, (_, i) => i + 1),
  );
  // The second chain continues the stream across its two segments.
  assert.equal(h.bytes(b!, 1)[0], 65);
  assert.equal(h.bytes(c!, 1)[0], ((64 + 100) % 251) + 1);
  assert.equal(src.total(), 264);
  assert.equal(dev.stats.bytes, 264);
  assert.equal(dev.stats.requests, 2);
  assert.equal(dev.stats.badChains, 0);
});

test('a buffer larger than the scratch area is filled completely', () => {
  const { h, dev } = make();
  h.post([true], 40_000);
  dev.queueNotified(0);
  assert.deepEqual(h.used(), [{ id: 0, len: 40_000 }]);
  assert.equal(dev.stats.bytes, 40_000);
});

test('a chain with no writable part is returned with used length 0 and counted', () => {
  const { h, dev, src } = make();
  h.post([false], 32);
  h.post([true], 8);
  dev.queueNotified(0);
  assert.deepEqual(h.used(), [
    { id: 0, len: 0 },
    { id: 1, len: 8 },
  ]);
  assert.equal(dev.stats.badChains, 1);
  assert.equal(src.total(), 8);
  assert.equal(dev.statsFields().badChains, 1);
});

test('rate limit: at most maxBytes per period, the rest waits for the timer', () => {
  const { h, dev, time } = make({ maxBytes: 100, periodMs: 1000 });
  for (let i = 0; i < 4; i++) h.post([true], 40);
  dev.queueNotified(0);
  // 40 + 40 + 20 (the rest of the budget), then the fourth chain waits.
  assert.deepEqual(
    h.used().map((u) => u.len),
    [40, 40, 20],
  );
  assert.equal(dev.stats.bytes, 100);
  assert.equal(dev.stats.throttledPeriods, 1);
  assert.equal(time.armed, 1);
  assert.equal(dev.throttled, true);
  // A kick while throttled does nothing.
  dev.queueNotified(0);
  assert.equal(h.used().length, 3);
  time.advance(999);
  h.runScheduled();
  assert.equal(h.used().length, 3, 'nothing before the period ends');
  time.advance(1000);
  assert.equal(h.used().length, 3, 'resumed through host.schedule, not from the timer callback');
  h.runScheduled();
  assert.deepEqual(
    h.used().map((u) => u.len),
    [40, 40, 20, 40],
  );
  assert.equal(dev.stats.bytes, 140);
  assert.equal(dev.throttled, false);
  assert.equal(dev.stats.throttledPeriods, 1);
});

test('rate limit: the period starts with the first request after an idle time', () => {
  const { h, dev, time } = make({ maxBytes: 10, periodMs: 100 });
  time.t = 5000;
  h.post([true], 10);
  dev.queueNotified(0);
  assert.deepEqual(
    h.used().map((u) => u.len),
    [10],
  );
  // Budget spent exactly, ring empty: the timer is armed (no kick armed) but no throttled period counted.
  assert.equal(dev.stats.throttledPeriods, 0);
  assert.equal(time.armed, 1);
  time.advance(5100);
  h.runScheduled();
  time.t = 9000;
  h.post([true], 4);
  dev.queueNotified(0);
  assert.deepEqual(
    h.used().map((u) => u.len),
    [10, 4],
  );
});

test('rate limit: the budget survives a device reset', () => {
  const { h, dev, time } = make({ maxBytes: 16, periodMs: 1000 });
  h.post([true], 16);
  h.post([true], 16);
  dev.queueNotified(0);
  assert.equal(h.used().length, 1);
  dev.reset();
  dev.queueStarted(0);
  assert.equal(h.used().length, 1, 'no new budget from a reset');
  time.advance(1000);
  h.runScheduled();
  assert.equal(h.used().length, 2);
});

test('a dry source: the chain returns short, the queue pauses until the next period', () => {
  const h = new Harness();
  const time = new FakeTime();
  let avail = 10;
  const dev = new RngDevice({
    source: (dst) => {
      const n = Math.min(avail, dst.byteLength);
      dst.fill(7, 0, n);
      avail -= n;
      return n;
    },
    now: time.now,
    setTimer: time.setTimer,
    periodMs: 50,
  });
  dev.attach(h);
  h.post([true], 32);
  h.post([true], 32);
  dev.queueNotified(0);
  assert.deepEqual(
    h.used().map((u) => u.len),
    [10],
  );
  assert.equal(dev.stats.sourceErrors, 1);
  assert.equal(time.armed, 1);
  avail = 100;
  time.advance(50);
  h.runScheduled();
  assert.deepEqual(
    h.used().map((u) => u.len),
    [10, 32],
  );
});

test('a throwing source is counted and does not break the device', () => {
  const h = new Harness();
  const time = new FakeTime();
  const dev = new RngDevice({
    source: () => {
      throw new Error('EIO');
    },
    now: time.now,
    setTimer: time.setTimer,
  });
  dev.attach(h);
  h.post([true], 8);
  dev.queueNotified(0);
  assert.equal(h.broken, null);
  assert.deepEqual(h.used(), [{ id: 0, len: 0 }]);
  assert.equal(dev.stats.sourceErrors, 1);
});

test('a disabled ring: chains returned with used length 0, no entropy spent', () => {
  const { h, dev, src } = make();
  h.enabled = false;
  h.post([true], 8);
  dev.queueNotified(0);
  assert.equal(h.used().length, 0, 'not processed as an enabled ring');
  dev.queueDiscard(0);
  assert.deepEqual(h.used(), [{ id: 0, len: 0 }]);
  assert.equal(dev.stats.discarded, 1);
  assert.equal(src.total(), 0);
});

test('more chains than the per-turn budget: the rest is done on the next turn', () => {
  const { h, dev } = make();
  // Queue size 16 bounds a batch below the budget; a full ring still completes in one call.
  for (let i = 0; i < SIZE; i++) h.post([true], 4);
  dev.queueNotified(0);
  assert.equal(h.used().length, SIZE);
  assert.equal(dev.stats.requests, SIZE);
});

test('destroy cancels the timer; a late timer does nothing', () => {
  const { h, dev, time } = make({ maxBytes: 4, periodMs: 10 });
  h.post([true], 4);
  h.post([true], 4);
  dev.queueNotified(0);
  assert.equal(time.armed, 1);
  dev.destroy();
  assert.equal(time.armed, 0);
  time.advance(100);
  h.runScheduled();
  assert.equal(h.used().length, 1);
});

test('a request posted without a kick while the budget is spent is served and counted when the period ends', () => {
  const { h, dev, time } = make({ maxBytes: 8, periodMs: 100 });
  h.post([true], 8);
  dev.queueNotified(0);
  assert.equal(dev.stats.throttledPeriods, 0);
  assert.equal(time.armed, 1, 'armed although the ring is empty: no kick was asked for');
  h.post([true], 8); // EVENT_IDX: the driver need not kick
  time.advance(100);
  h.runScheduled();
  assert.deepEqual(
    h.used().map((u) => u.len),
    [8, 8],
  );
  assert.equal(dev.stats.throttledPeriods, 1);
});
