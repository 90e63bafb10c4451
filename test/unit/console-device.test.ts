/**
 * ConsoleDevice against the real split ring in plain memory, with a fake DeviceHost: the control
 * protocol, data in both directions with exact used lengths, flow control, the legacy single-port
 * mode, emergency writes and hostile rings.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  ConsoleDevice,
  type ConsoleDeviceOptions,
  type ConsoleHandler,
} from '../../src/core/devices/console/console-device.js';
import {
  CONSOLE_BAD_ID,
  ConsoleEvent,
  ConsoleFeature,
  ConsoleQueue,
  portRxQueue,
  portTxQueue,
} from '../../src/core/devices/console/constants.js';
import type { GuestMemory } from '../../src/core/memory/guest-memory.js';
import type { VhostError } from '../../src/core/util/errors.js';
import { nullLogger } from '../../src/core/util/log.js';
import type { DeviceHost } from '../../src/core/vhost-user/device.js';
import { featureBit, VirtioFeature } from '../../src/core/virtio/features.js';
import { SplitQueue } from '../../src/core/virtio/split-queue.js';
import { plainMemory } from './support/plain-memory.js';

const UVA = 0x7f00_0000_0000;
const SIZE = 256;
const ringBase = (q: number) => 0x10000 + q * 0x10000;
const DATA = 0x200000;
const enc = (s: string) => new TextEncoder().encode(s);

const SIZE_F = featureBit(ConsoleFeature.SIZE);
const MULTI = featureBit(ConsoleFeature.MULTIPORT);
const EMERG = featureBit(ConsoleFeature.EMERG_WRITE);
const ALL = SIZE_F | MULTI | EMERG | featureBit(VirtioFeature.VERSION_1);

interface Ctl {
  id: number;
  event: number;
  value: number;
  len: number;
  payload: number[];
}

class Harness implements DeviceHost {
  readonly log = nullLogger;
  readonly memory: GuestMemory = plainMemory({ gpa: 0, size: 0x1000000, uva: UVA });
  readonly queues: SplitQueue[];
  readonly dv: DataView;
  readonly availIdx: number[];
  readonly nextDesc: number[];
  /** queue -> head -> first writable address of the chain last posted with that head. */
  readonly bufs: Map<number, number>[];
  readonly seen: number[];
  notifications: number[];
  configChanges = 0;
  broken: VhostError | null = null;
  ackedFeatures = 0n;
  private nextBuf = DATA;

  constructor(nq: number) {
    const b = this.memory.regions[0]!.bytes;
    this.dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
    this.availIdx = new Array(nq).fill(0);
    this.nextDesc = new Array(nq).fill(0);
    this.seen = new Array(nq).fill(0);
    this.notifications = new Array(nq).fill(0);
    this.bufs = Array.from({ length: nq }, () => new Map());
    this.queues = Array.from(
      { length: nq },
      (_, i) =>
        new SplitQueue(
          i,
          SIZE,
          0,
          { desc: UVA + ringBase(i), avail: UVA + ringBase(i) + 0x4000, used: UVA + ringBase(i) + 0x8000 },
          this.memory,
          { eventIdx: false, indirect: true },
          () => {
            this.notifications[i]!++;
          },
        ),
    );
  }
  /** How deferred work runs (default: at once); tests replace it to hold turns. */
  scheduleFn: (fn: () => void) => void = (fn) => fn();
  schedule(fn: () => void): void {
    this.scheduleFn(fn);
  }
  disabledQueue(): SplitQueue | null {
    return null; // every ring of this harness is enabled
  }
  queue(i: number): SplitQueue | null {
    return this.broken ? null : (this.queues[i] ?? null);
  }
  notifyConfigChange(): boolean {
    this.configChanges++;
    return true;
  }
  markBroken(err: VhostError): void {
    this.broken = err;
  }

  alloc(len: number): number {
    const a = this.nextBuf;
    this.nextBuf += (len + 15) & ~15;
    return a;
  }

  /**
   * Posts a chain: one readable buffer with `readable` (if any), then writable buffers of the given
   * sizes (filled with 0xee). Returns the head and the writable addresses.
   */
  post(
    q: number,
    readable: Uint8Array | null,
    writable: number | number[] = [],
  ): { head: number; w: number[] } {
    const ws = typeof writable === 'number' ? (writable > 0 ? [writable] : []) : writable;
    const segs: [number, number, number][] = [];
    if (readable) {
      const a = this.alloc(readable.byteLength);
      this.memory.writeFrom(a, readable, 0, readable.byteLength);
      segs.push([a, readable.byteLength, 0]);
    }
    const w: number[] = [];
    for (const len of ws) {
      const a = this.alloc(len + 16);
      this.memory.writeFrom(a, new Uint8Array(len + 16).fill(0xee), 0, len + 16);
      segs.push([a, len, 2]);
      w.push(a);
    }
    return { head: this.postRaw(q, segs), w };
  }

  /** Posts raw descriptors [addr, len, flags] as one chain (NEXT added); returns the head. */
  postRaw(q: number, segs: [number, number, number][]): number {
    const base = ringBase(q);
    const head = this.nextDesc[q]! % SIZE;
    let d = head;
    segs.forEach(([a, l, f], k) => {
      const o = base + 16 * d;
      this.dv.setBigUint64(o, BigInt(a), true);
      this.dv.setUint32(o + 8, l, true);
      const more = k < segs.length - 1;
      this.dv.setUint16(o + 12, f | (more ? 1 : 0), true);
      this.dv.setUint16(o + 14, (d + 1) % SIZE, true);
      d = (d + 1) % SIZE;
    });
    this.nextDesc[q] = this.nextDesc[q]! + Math.max(1, segs.length);
    const firstW = segs.find((s) => s[2] & 2);
    this.bufs[q]!.set(head, firstW ? firstW[0] : -1);
    const ai = this.availIdx[q]!;
    this.dv.setUint16(base + 0x4000 + 4 + 2 * (ai % SIZE), head, true);
    this.availIdx[q] = (ai + 1) & 0xffff;
    this.dv.setUint16(base + 0x4000 + 2, this.availIdx[q]!, true);
    return head;
  }

  usedIdx(q: number): number {
    return this.dv.getUint16(ringBase(q) + 0x8000 + 2, true);
  }

  used(q: number): { id: number; len: number }[] {
    const base = ringBase(q) + 0x8000;
    const n = this.usedIdx(q);
    return Array.from({ length: n }, (_, i) => ({
      id: this.dv.getUint32(base + 4 + 8 * (i % SIZE), true),
      len: this.dv.getUint32(base + 8 + 8 * (i % SIZE), true),
    }));
  }

  /** Used entries not looked at yet, with the bytes written into their first writable buffer. */
  takeUsed(q: number): { id: number; len: number; data: Uint8Array }[] {
    const all = this.used(q);
    const fresh = all.slice(this.seen[q]);
    this.seen[q] = all.length;
    return fresh.map((u) => {
      const a = this.bufs[q]!.get(u.id) ?? -1;
      const data = new Uint8Array(a < 0 ? 0 : u.len);
      if (a >= 0) this.memory.readInto(a, data, 0, u.len);
      return { ...u, data };
    });
  }

  bytes(addr: number, len: number): number[] {
    const out = new Uint8Array(len);
    this.memory.readInto(addr, out, 0, len);
    return [...out];
  }
}

function ctlBytes(id: number, event: number, value: number, extra: number[] = []): Uint8Array {
  const m = new Uint8Array(8 + extra.length);
  const dv = new DataView(m.buffer);
  dv.setUint32(0, id, true);
  dv.setUint16(4, event, true);
  dv.setUint16(6, value, true);
  m.set(extra, 8);
  return m;
}

class Rec implements ConsoleHandler {
  readonly out = new Map<number, number[]>();
  readonly opens: [number, boolean][] = [];
  readonly spaces: number[] = [];
  onOutput: ((port: number, bytes: Uint8Array) => void) | null = null;
  output(port: number, bytes: Uint8Array): void {
    let a = this.out.get(port);
    if (a === undefined) {
      a = [];
      this.out.set(port, a);
    }
    for (const b of bytes) a.push(b);
    this.onOutput?.(port, bytes);
  }
  guestOpen(port: number, open: boolean): void {
    this.opens.push([port, open]);
  }
  inputSpace(port: number): void {
    this.spaces.push(port);
  }
  text(port: number): string {
    return new TextDecoder().decode(Uint8Array.from(this.out.get(port) ?? []));
  }
}

function setup(
  opts: Partial<ConsoleDeviceOptions> & { schedule?: (fn: () => void) => void } = {},
  features = ALL,
) {
  const rec = (opts.handler as Rec | undefined) ?? new Rec();
  const { schedule, ...devOpts } = opts;
  const dev = new ConsoleDevice({ portNames: ['one', 'two'], ...devOpts, handler: rec });
  const h = new Harness(dev.numQueues);
  if (schedule !== undefined) h.scheduleFn = schedule;
  h.ackedFeatures = features;
  dev.attach(h);
  dev.setFeatures(features);
  const started = (features & MULTI) !== 0n ? dev.numQueues : 2;
  for (let i = 0; i < started; i++) dev.queueStarted(i);
  const ctl = (id: number, event: number, value: number, extra: number[] = []) => {
    h.post(ConsoleQueue.CTRL_TX, ctlBytes(id, event, value, extra));
    dev.queueNotified(ConsoleQueue.CTRL_TX);
  };
  const ctlRx = (n: number, len = 4096) => {
    for (let i = 0; i < n; i++) h.post(ConsoleQueue.CTRL_RX, null, len);
    dev.queueNotified(ConsoleQueue.CTRL_RX);
  };
  const messages = (): Ctl[] =>
    h.takeUsed(ConsoleQueue.CTRL_RX).map((u) => {
      const dv = new DataView(u.data.buffer);
      return {
        id: u.len >= 8 ? dv.getUint32(0, true) : -1,
        event: u.len >= 8 ? dv.getUint16(4, true) : -1,
        value: u.len >= 8 ? dv.getUint16(6, true) : -1,
        len: u.len,
        payload: [...u.data.subarray(8)],
      };
    });
  return { h, dev, rec, ctl, ctlRx, messages };
}

/** DEVICE_READY, PORT_READY for every port, PORT_OPEN(0) (what Linux does). Returns the messages. */
function handshake(s: ReturnType<typeof setup>): Ctl[] {
  s.ctlRx(32);
  s.ctl(CONSOLE_BAD_ID, ConsoleEvent.DEVICE_READY, 1);
  for (let i = 0; i < s.dev.portCount; i++) s.ctl(i, ConsoleEvent.PORT_READY, 1);
  s.ctl(0, ConsoleEvent.PORT_OPEN, 1);
  return s.messages();
}

const brief = (ms: Ctl[]) => ms.map((m) => [m.id, m.event, m.value, m.len]);

test('features offered follow the switches; queue count is 2 * (max_nr_ports + 1)', () => {
  const dev = new ConsoleDevice({ handler: new Rec(), portNames: ['a', 'b', 'c'] });
  for (const b of [
    VirtioFeature.VERSION_1,
    ConsoleFeature.SIZE,
    ConsoleFeature.MULTIPORT,
    ConsoleFeature.EMERG_WRITE,
    VirtioFeature.RING_EVENT_IDX,
    VirtioFeature.RING_INDIRECT_DESC,
  ]) {
    assert.ok(dev.features & featureBit(b), `bit ${b}`);
  }
  assert.equal(dev.numQueues, 10);
  assert.equal(dev.portCount, 4);
  assert.equal(dev.deviceId, 3);
  assert.equal(dev.configSize, 12);
  const bare = new ConsoleDevice({
    handler: new Rec(),
    features: { size: false, multiport: false, emergWrite: false },
    eventIdx: false,
    indirectDesc: false,
  });
  assert.equal(bare.features, featureBit(VirtioFeature.VERSION_1));
  assert.equal(bare.numQueues, 2);
  assert.throws(
    () => new ConsoleDevice({ handler: new Rec(), portNames: ['x'], features: { multiport: false } }),
    RangeError,
  );
  assert.throws(() => new ConsoleDevice({ handler: new Rec(), portNames: [''] }), RangeError);
  assert.throws(() => new ConsoleDevice({ handler: new Rec(), portNames: ['x'.repeat(256)] }), RangeError);
});

test('config space: cols, rows, max_nr_ports, emerg_wr 0, little endian, in spec order', () => {
  const { dev } = setup({ cols: 0x1234, rows: 0x0506 });
  const c = new Uint8Array(12).fill(0xaa);
  dev.readConfig(c);
  assert.deepEqual([...c], [0x34, 0x12, 0x06, 0x05, 3, 0, 0, 0, 0, 0, 0, 0]);
  dev.resize(100, 50);
  dev.readConfig(c);
  assert.deepEqual([...c.subarray(0, 4)], [100, 0, 50, 0]);
});

test('DEVICE_READY(1) with any id: one PORT_ADD per port, in order, never twice', () => {
  const s = setup();
  s.ctlRx(8);
  s.ctl(12345, ConsoleEvent.DEVICE_READY, 1);
  assert.deepEqual(brief(s.messages()), [
    [0, ConsoleEvent.PORT_ADD, 1, 8],
    [1, ConsoleEvent.PORT_ADD, 1, 8],
    [2, ConsoleEvent.PORT_ADD, 1, 8],
  ]);
  s.ctl(CONSOLE_BAD_ID, ConsoleEvent.DEVICE_READY, 1);
  assert.deepEqual(s.messages(), [], 'a second DEVICE_READY adds nothing');
  assert.deepEqual(
    s.h.used(ConsoleQueue.CTRL_TX).map((u) => u.len),
    [0, 0],
    'control transmit chains come back with used length 0',
  );
});

test('DEVICE_READY(0): nothing sent, device not broken; a later DEVICE_READY(1) works', () => {
  const s = setup();
  s.ctlRx(8);
  s.ctl(CONSOLE_BAD_ID, ConsoleEvent.DEVICE_READY, 0);
  assert.deepEqual(s.messages(), []);
  assert.equal(s.h.broken, null);
  assert.equal(s.h.used(ConsoleQueue.CTRL_TX).length, 1);
  s.ctl(CONSOLE_BAD_ID, ConsoleEvent.DEVICE_READY, 1);
  assert.equal(s.messages().length, 3);
});

test('PORT_READY(0,1): CONSOLE_PORT, RESIZE, PORT_NAME, PORT_OPEN in that order, exact lengths', () => {
  const s = setup({ consoleName: 'cons', cols: 120, rows: 40 });
  s.dev.setHostConnected(0, true);
  s.ctlRx(16);
  s.ctl(CONSOLE_BAD_ID, ConsoleEvent.DEVICE_READY, 1);
  s.messages();
  s.ctl(0, ConsoleEvent.PORT_READY, 1);
  const ms = s.messages();
  assert.deepEqual(brief(ms), [
    [0, ConsoleEvent.CONSOLE_PORT, 1, 8],
    [0, ConsoleEvent.RESIZE, 0, 12],
    [0, ConsoleEvent.PORT_NAME, 1, 8 + 4],
    [0, ConsoleEvent.PORT_OPEN, 1, 8],
  ]);
  assert.deepEqual(ms[1]!.payload, [120, 0, 40, 0], 'RESIZE payload: cols, rows');
  assert.deepEqual(ms[2]!.payload, [...enc('cons')], 'the name without NUL');
  // A generic port: only its name (host not connected).
  s.ctl(2, ConsoleEvent.PORT_READY, 1);
  const g = s.messages();
  assert.deepEqual(brief(g), [[2, ConsoleEvent.PORT_NAME, 1, 8 + 3]]);
  assert.deepEqual(g[0]!.payload, [...enc('two')]);
  // A multi-byte UTF-8 name: the used length counts bytes.
  const u = setup({ portNames: ['gerät-ünïcödé'] });
  u.ctlRx(8);
  u.ctl(0, ConsoleEvent.DEVICE_READY, 1);
  u.messages();
  u.ctl(1, ConsoleEvent.PORT_READY, 1);
  const un = u.messages();
  assert.equal(un[0]!.len, 8 + enc('gerät-ünïcödé').byteLength);
  assert.equal(new TextDecoder().decode(Uint8Array.from(un[0]!.payload)), 'gerät-ünïcödé');
});

test('without SIZE no RESIZE is sent; legacyResizeOrder sends rows, cols', () => {
  const s = setup({ cols: 80, rows: 25 }, ALL & ~SIZE_F);
  s.ctlRx(8);
  s.ctl(0, ConsoleEvent.DEVICE_READY, 1);
  s.ctl(0, ConsoleEvent.PORT_READY, 1);
  assert.deepEqual(
    s.messages().map((m) => m.event),
    [ConsoleEvent.PORT_ADD, ConsoleEvent.PORT_ADD, ConsoleEvent.PORT_ADD, ConsoleEvent.CONSOLE_PORT],
  );
  const l = setup({ cols: 80, rows: 25, legacyResizeOrder: true });
  l.ctlRx(8);
  l.ctl(0, ConsoleEvent.DEVICE_READY, 1);
  l.ctl(0, ConsoleEvent.PORT_READY, 1);
  const r = l.messages().find((m) => m.event === ConsoleEvent.RESIZE);
  assert.deepEqual(r?.payload, [25, 0, 80, 0]);
  l.dev.resize(81, 26);
  assert.deepEqual(l.messages()[0]?.payload, [26, 0, 81, 0]);
});

test('repeated PORT_READY (guest resume) gets the same answers again; guest PORT_OPEN is tracked', () => {
  const s = setup({ consoleName: 'c' });
  s.dev.setHostConnected(0, true);
  handshake(s);
  assert.equal(s.dev.isGuestOpen(0), true);
  assert.deepEqual(s.rec.opens, [[0, true]]);
  s.ctl(0, ConsoleEvent.PORT_READY, 1);
  assert.deepEqual(
    s.messages().map((m) => m.event),
    [ConsoleEvent.CONSOLE_PORT, ConsoleEvent.RESIZE, ConsoleEvent.PORT_NAME, ConsoleEvent.PORT_OPEN],
  );
  s.ctl(1, ConsoleEvent.PORT_OPEN, 1);
  s.ctl(1, ConsoleEvent.PORT_OPEN, 1); // no second callback for the same state
  s.ctl(1, ConsoleEvent.PORT_OPEN, 0);
  assert.deepEqual(s.rec.opens, [
    [0, true],
    [1, true],
    [1, false],
  ]);
  assert.equal(s.dev.isGuestOpen(1), false);
  assert.equal(s.dev.stats.controlIgnored, 0);
});

test('unknown events, unknown ids, short and guest-only messages are counted and ignored', () => {
  const s = setup();
  handshake(s);
  const before = s.dev.stats.controlIgnored;
  s.ctl(0, 99, 1); // unknown event
  s.ctl(3, ConsoleEvent.PORT_OPEN, 1); // id >= max_nr_ports
  s.ctl(0xfffffffe, ConsoleEvent.PORT_READY, 1);
  s.ctl(1, ConsoleEvent.PORT_NAME, 1, [...enc('x'.repeat(3000))]); // a device-only event from the guest
  s.ctl(1, ConsoleEvent.PORT_ADD, 1);
  s.ctl(1, ConsoleEvent.RESIZE, 0, [1, 0, 1, 0]);
  s.h.post(ConsoleQueue.CTRL_TX, Uint8Array.of(0, 0, 0, 0, 6, 0, 1)); // 7 bytes: short
  s.dev.queueNotified(ConsoleQueue.CTRL_TX);
  assert.equal(s.dev.stats.controlIgnored - before, 7);
  assert.deepEqual(s.messages(), [], 'nothing answered');
  assert.equal(s.dev.isGuestOpen(1), false);
  assert.equal(s.h.broken, null);
  assert.ok(s.h.used(ConsoleQueue.CTRL_TX).every((u) => u.len === 0));
  // Still serving.
  s.ctl(1, ConsoleEvent.PORT_OPEN, 1);
  assert.equal(s.dev.isGuestOpen(1), true);
});

test('a port not yet added (no DEVICE_READY) ignores PORT_READY; PORT_ADD only for ids < max', () => {
  const s = setup();
  s.ctlRx(8);
  s.ctl(0, ConsoleEvent.PORT_READY, 1);
  assert.deepEqual(s.messages(), []);
  assert.equal(s.dev.stats.controlIgnored, 1);
  s.ctl(0, ConsoleEvent.DEVICE_READY, 1);
  const ids = s.messages().map((m) => m.id);
  assert.deepEqual(ids, [0, 1, 2]);
});

test('control messages wait for control receive buffers, in order, one buffer each', () => {
  const s = setup({ consoleName: 'c' });
  s.dev.setHostConnected(0, true);
  s.ctl(0, ConsoleEvent.DEVICE_READY, 1);
  s.ctl(0, ConsoleEvent.PORT_READY, 1);
  s.ctl(1, ConsoleEvent.PORT_READY, 1);
  assert.deepEqual(s.messages(), [], 'nothing without buffers');
  s.ctlRx(2);
  assert.deepEqual(
    s.messages().map((m) => [m.id, m.event]),
    [
      [0, ConsoleEvent.PORT_ADD],
      [1, ConsoleEvent.PORT_ADD],
    ],
  );
  s.ctlRx(100);
  assert.deepEqual(
    brief(s.messages()),
    [
      [2, ConsoleEvent.PORT_ADD, 1, 8],
      [0, ConsoleEvent.CONSOLE_PORT, 1, 8],
      [0, ConsoleEvent.RESIZE, 0, 12],
      [0, ConsoleEvent.PORT_NAME, 1, 9],
      [0, ConsoleEvent.PORT_OPEN, 1, 8],
      [1, ConsoleEvent.PORT_NAME, 1, 11],
    ],
    'every queued message, in order, one buffer each',
  );
  assert.equal(s.dev.stats.controlOut, 8);
  assert.equal(s.dev.stats.controlDropped, 0);
});

test('control backlog bound and buffers too short for a message are counted', () => {
  const s = setup({ controlBacklog: 2 });
  s.ctl(0, ConsoleEvent.DEVICE_READY, 1); // 3 PORT_ADDs, backlog 2
  assert.equal(s.dev.stats.controlDropped, 1);
  s.ctlRx(1, 4); // too short for an 8-byte message
  assert.deepEqual(s.h.used(ConsoleQueue.CTRL_RX), [{ id: 0, len: 0 }]);
  assert.equal(s.dev.stats.controlDropped, 2);
  s.ctlRx(4);
  assert.deepEqual(
    brief(s.messages()),
    [
      [-1, -1, -1, 0],
      [1, ConsoleEvent.PORT_ADD, 1, 8],
    ],
    'PORT_ADD 2 fell off the backlog, PORT_ADD 0 went with the short buffer',
  );
});

test('host connect/disconnect sends PORT_OPEN once the port is ready; resize sends RESIZE', () => {
  const s = setup();
  s.dev.setHostConnected(1, true); // not ready yet: remembered, not sent
  handshake(s);
  s.ctl(1, ConsoleEvent.PORT_READY, 1);
  assert.deepEqual(
    s.messages().map((m) => [m.id, m.event, m.value]),
    [
      [1, ConsoleEvent.PORT_NAME, 1],
      [1, ConsoleEvent.PORT_OPEN, 1],
    ],
  );
  s.dev.setHostConnected(1, false);
  s.dev.setHostConnected(1, false);
  s.dev.setHostConnected(2, true);
  assert.deepEqual(brief(s.messages()), [
    [1, ConsoleEvent.PORT_OPEN, 0, 8],
    [2, ConsoleEvent.PORT_OPEN, 1, 8],
  ]);
  s.dev.resize(200, 60);
  s.dev.resize(200, 60);
  const r = s.messages();
  assert.deepEqual(brief(r), [[0, ConsoleEvent.RESIZE, 0, 12]]);
  assert.deepEqual(r[0]!.payload, [200, 0, 60, 0]);
  assert.deepEqual(s.dev.size, { cols: 200, rows: 60 });
  assert.equal(s.h.configChanges, 0, 'MULTIPORT: no config change for a resize');
});

test('input: each RX chain gets exactly one used entry with length = bytes written', () => {
  const s = setup();
  handshake(s);
  const rx = portRxQueue(0);
  const bufs = [s.h.post(rx, null, 16), s.h.post(rx, null, 16), s.h.post(rx, null, [4, 4])];
  s.dev.queueNotified(rx);
  assert.equal(s.dev.input(0, enc('hello')), 5);
  assert.deepEqual(s.h.used(rx), [{ id: bufs[0]!.head, len: 5 }]);
  assert.equal(s.dev.input(0, enc('0123456789abcdefXYZ')), 19);
  assert.deepEqual(
    s.h.used(rx).map((u) => u.len),
    [5, 16, 3],
  );
  assert.deepEqual(s.h.bytes(bufs[1]!.w[0]!, 16), [...enc('0123456789abcdef')]);
  assert.deepEqual(
    s.h.bytes(bufs[2]!.w[0]!, 4),
    [...enc('XYZ'), 0xee],
    'nothing written past the used length',
  );
  assert.equal(s.dev.pendingInput(0), 0);
  assert.deepEqual(s.dev.stats.ports[0], {
    txBytes: 0,
    rxBytes: 24,
    rxBuffers: 3,
    inputRefused: 0,
    txPauses: 0,
  });
});

test('RX chains are taken only when input exists; 1500 bytes over 100-byte buffers, no loss or duplicate', () => {
  const s = setup();
  handshake(s);
  const rx = portRxQueue(0);
  const posted = Array.from({ length: 20 }, () => s.h.post(rx, null, 100));
  s.dev.queueNotified(rx);
  assert.equal(s.h.queues[rx]!.stats.chains, 0, 'no chain popped without input');
  const data = Uint8Array.from({ length: 1500 }, (_, i) => (i * 7 + (i >> 8)) & 0xff);
  assert.equal(s.dev.input(0, data), 1500);
  const used = s.h.used(rx);
  assert.equal(used.length, 15);
  assert.equal(s.h.queues[rx]!.stats.chains, 15, 'exactly the buffers needed were popped');
  const got: number[] = [];
  for (const u of used) {
    assert.equal(u.len, 100);
    const p = posted.find((b) => b.head === u.id)!;
    got.push(...s.h.bytes(p.w[0]!, u.len));
  }
  assert.deepEqual(got, [...data]);
});

test('generic ports receive input only once the guest opened them', () => {
  const s = setup();
  handshake(s);
  const rx = portRxQueue(1);
  s.h.post(rx, null, 64);
  s.dev.queueNotified(rx);
  assert.equal(s.dev.input(1, enc('early')), 5);
  assert.equal(s.h.used(rx).length, 0);
  assert.equal(s.dev.pendingInput(1), 5);
  s.ctl(1, ConsoleEvent.PORT_OPEN, 1);
  assert.deepEqual(s.h.used(rx), [{ id: 0, len: 5 }]);
  assert.equal(s.dev.input(9, enc('x')), 0, 'no such port');
});

test('output: TX chains complete at once with used length 0, with no consumer, bytes exact', () => {
  const s = setup();
  handshake(s);
  const tx = portTxQueue(2);
  s.h.post(tx, enc('abc'));
  s.h.post(tx, enc('defg'), 8); // a writable part is ignored and left untouched
  s.dev.queueNotified(tx);
  assert.deepEqual(
    s.h.used(tx).map((u) => u.len),
    [0, 0],
  );
  assert.equal(s.rec.text(2), 'abcdefg');
  assert.equal(s.dev.stats.ports[2]!.txBytes, 7);
  // 100 KiB in one chain of several segments arrives whole (through the 64 KiB scratch).
  const big = Uint8Array.from({ length: 100 * 1024 }, (_, i) => (i * 13) & 0xff);
  const tx0 = portTxQueue(0);
  const a = s.h.alloc(big.byteLength);
  s.h.memory.writeFrom(a, big, 0, big.byteLength);
  s.h.postRaw(tx0, [
    [a, 40000, 0],
    [a + 40000, big.byteLength - 40000, 0],
  ]);
  s.dev.queueNotified(tx0);
  assert.deepEqual(s.rec.out.get(0), [...big]);
});

test('output is processed in bounded turns (fairness) and completes in order', () => {
  const turns: (() => void)[] = [];
  const rec = new Rec();
  const s = setup({ handler: rec, schedule: (fn) => turns.push(fn) });
  handshake(s);
  const tx = portTxQueue(0);
  // A guest that keeps printing: every chain taken is replaced by a new one at once.
  let n = 0;
  let printing = true;
  rec.onOutput = () => {
    if (printing) s.h.post(tx, Uint8Array.of(n++ & 0xff));
  };
  s.h.post(tx, Uint8Array.of(n++));
  s.dev.queueNotified(tx);
  assert.equal(s.h.used(tx).length, 256, 'one turn takes at most 256 chains');
  assert.equal(turns.length, 1, 'the rest is scheduled, not done inline');
  turns.shift()!();
  assert.equal(s.h.used(tx).length, 512);
  printing = false;
  while (turns.length > 0) turns.shift()!();
  const used = s.h.used(tx).length;
  assert.equal(used, n, 'every chain completed');
  assert.deepEqual(
    rec.out.get(0),
    Array.from({ length: n }, (_, i) => i & 0xff),
    'in order',
  );
});

test("output flow control: canOutput false leaves a named port's chains in the ring until outputSpace, in order", () => {
  const turns: (() => void)[] = [];
  const rec = new (class extends Rec {
    room = 2; // chains the backend takes before it says no
    asked: number[] = [];
    canOutput(port: number): boolean {
      this.asked.push(port);
      return this.room > 0;
    }
  })();
  rec.onOutput = () => {
    rec.room--;
  };
  const s = setup({ handler: rec, schedule: (fn) => turns.push(fn) });
  handshake(s);
  const tx = portTxQueue(1);
  for (const w of ['ab', 'cd', 'ef', 'gh', 'ij']) s.h.post(tx, enc(w));
  s.dev.queueNotified(tx);
  assert.equal(rec.text(1), 'abcd', 'two chains out, then paused');
  assert.equal(s.h.used(tx).length, 2, 'the paused chains are not completed');
  assert.equal(s.dev.outputPaused(1), true);
  assert.equal(s.dev.stats.ports[1]!.txPauses, 1);
  // A kick while paused changes nothing (the backend still says no) and is not a second pause.
  s.dev.queueNotified(tx);
  assert.equal(s.h.used(tx).length, 2);
  assert.equal(s.dev.stats.ports[1]!.txPauses, 1);
  // The console port is never paced (the guest spins on it), even while the backend says no.
  rec.asked.length = 0;
  s.h.post(portTxQueue(0), enc('x'));
  s.h.post(portTxQueue(0), enc('y'));
  s.dev.queueNotified(portTxQueue(0));
  assert.equal(rec.text(0), 'xy');
  assert.equal(s.h.used(portTxQueue(0)).length, 2);
  assert.deepEqual(rec.asked, [], 'canOutput is not even asked for port 0');
  assert.equal(s.dev.outputPaused(0), false);
  rec.room = 100;
  s.dev.outputSpace(1);
  assert.equal(turns.length, 1, 'resumed on the next turn, not inside outputSpace()');
  turns.shift()!();
  assert.equal(rec.text(1), 'abcdefghij', 'all of it, in order');
  assert.equal(s.h.used(tx).length, 5);
  assert.equal(s.dev.outputPaused(1), false);
  // outputSpace for a port that is not paused does nothing.
  s.dev.outputSpace(1);
  assert.equal(turns.length, 0);
});

test('input flow control: input() says what it took, inputSpace when there is room again', () => {
  const s = setup({ inputLimit: 8 });
  handshake(s);
  const rx = portRxQueue(0);
  assert.equal(s.dev.input(0, enc('0123456789')), 8, 'only the limit is taken');
  assert.equal(s.dev.stats.ports[0]!.inputRefused, 2);
  assert.deepEqual(s.rec.spaces, []);
  s.h.post(rx, null, 3);
  s.dev.queueNotified(rx);
  assert.deepEqual(s.rec.spaces, [0], 'room again');
  assert.equal(s.dev.pendingInput(0), 5);
  assert.equal(s.dev.input(0, enc('89')), 2);
  s.h.post(rx, null, 64);
  s.dev.queueNotified(rx);
  const got = s.h.takeUsed(rx).map((u) => new TextDecoder().decode(u.data));
  assert.deepEqual(got, ['012', '3456789']);
  assert.deepEqual(s.rec.spaces, [0], 'no inputSpace without an earlier refusal');
});

test('input flow control: inputSpace never fires from inside the input() call that was refused', () => {
  const rec = new Rec();
  let inInput = false;
  const during: number[] = [];
  rec.inputSpace = (p) => {
    if (inInput) during.push(p);
    rec.spaces.push(p);
  };
  const s = setup({ inputLimit: 4, handler: rec });
  handshake(s);
  const rx = portRxQueue(0);
  for (let i = 0; i < 2; i++) s.h.post(rx, null, 3);
  s.dev.queueNotified(rx);
  inInput = true;
  const n = s.dev.input(0, enc('abcdefghijkl'));
  inInput = false;
  assert.deepEqual(during, [], 'the caller learns of the refusal from the return value first');
  // 4 taken, 3 + 1 delivered into the two buffers, 4 more taken, then no buffers: 8 taken.
  assert.equal(n, 8);
  assert.deepEqual(
    s.h.used(rx).map((u) => u.len),
    [3, 1],
  );
  assert.equal(s.dev.pendingInput(0), 4);
  assert.equal(s.dev.stats.ports[0]!.inputRefused, 4);
  // When buffers come, the refusal is answered with inputSpace.
  s.h.post(rx, null, 64);
  s.h.post(rx, null, 64);
  s.dev.queueNotified(rx);
  assert.deepEqual(rec.spaces, [0]);
  assert.equal(s.dev.input(0, enc('abcdefghijkl').subarray(n)), 12 - n);
  const all = s.h
    .takeUsed(rx)
    .map((u) => new TextDecoder().decode(u.data))
    .join('');
  assert.equal(all, 'abcdefghijkl', 'nothing lost or repeated');
});

test('re-entrancy: a backend that echoes output as input from inside output()', () => {
  const rec = new Rec();
  const s = setup({ handler: rec });
  rec.onOutput = (port, bytes) => {
    s.dev.input(port, bytes.slice().reverse());
  };
  handshake(s);
  const rx = portRxQueue(0);
  for (let i = 0; i < 4; i++) s.h.post(rx, null, 8);
  s.dev.queueNotified(rx);
  const tx = portTxQueue(0);
  s.h.post(tx, enc('abc'));
  s.h.post(tx, enc('defghij'));
  s.dev.queueNotified(tx);
  assert.equal(rec.text(0), 'abcdefghij');
  const got = s.h.takeUsed(rx).map((u) => new TextDecoder().decode(u.data));
  assert.deepEqual(got, ['cba', 'jihgfed']);
  assert.deepEqual(
    s.h.used(tx).map((u) => u.len),
    [0, 0],
  );
  // A guestOpen handler that sends input at once.
  const r2 = new Rec();
  const s2 = setup({ handler: r2 });
  r2.guestOpen = (p, open) => {
    if (open) s2.dev.input(p, enc(`hello ${p}`));
  };
  s2.h.post(portRxQueue(1), null, 64);
  handshake(s2);
  s2.ctl(1, ConsoleEvent.PORT_OPEN, 1);
  assert.deepEqual(
    s2.h.takeUsed(portRxQueue(1)).map((u) => new TextDecoder().decode(u.data)),
    ['hello 1'],
  );
});

test('non-MULTIPORT: queues 0/1 only, port 0 open at once, no control traffic, resize = config change', () => {
  const s = setup({ portNames: [], cols: 80, rows: 24 }, SIZE_F | featureBit(VirtioFeature.VERSION_1));
  assert.equal(s.dev.isGuestOpen(0), true);
  assert.deepEqual(s.rec.opens, [[0, true]]);
  s.dev.setHostConnected(0, true);
  s.dev.resize(100, 30);
  assert.equal(s.h.configChanges, 1);
  const c = new Uint8Array(12);
  s.dev.readConfig(c);
  assert.deepEqual([...c.subarray(0, 4)], [100, 0, 30, 0]);
  s.h.post(0, null, 64);
  s.dev.queueNotified(0);
  s.dev.input(0, enc('login: '));
  assert.deepEqual(s.h.used(0), [{ id: 0, len: 7 }]);
  s.h.post(1, enc('root\n'));
  s.dev.queueNotified(1);
  assert.equal(s.rec.text(0), 'root\n');
  // Queues 2/3 are not control queues here: kicks on them do nothing.
  s.dev.queueNotified(3);
  s.dev.queueNotified(2);
  assert.equal(s.h.usedIdx(2), 0);
  assert.equal(s.h.usedIdx(3), 0);
  assert.equal(s.dev.stats.controlOut, 0);
  // Without SIZE a resize changes nothing the guest sees.
  const n = setup({ portNames: [] }, featureBit(VirtioFeature.VERSION_1));
  n.dev.resize(1, 1);
  assert.equal(n.h.configChanges, 0);
});

test('emerg_wr: a write at offset 8 is console output, at any time; other fields are read-only', () => {
  const s = setup({}, 0n);
  assert.equal(s.dev.writeConfig(8, Uint8Array.of(0x41, 0, 0, 0)), true);
  assert.equal(s.dev.writeConfig(8, Uint8Array.of(0x42)), true);
  assert.equal(s.dev.writeConfig(0, Uint8Array.of(1, 0)), false, 'cols is read-only');
  assert.equal(s.dev.writeConfig(9, Uint8Array.of(1)), false);
  assert.equal(s.rec.text(0), 'AB');
  assert.equal(s.dev.stats.emergBytes, 2);
});

test('hostile rings: unwalkable chains come back with used length 0 and are counted', () => {
  const s = setup();
  handshake(s);
  const tx = portTxQueue(0);
  s.h.postRaw(tx, [[0x7000000, 16, 0]]); // outside guest memory
  s.h.post(tx, enc('ok'));
  s.dev.queueNotified(tx);
  assert.deepEqual(
    s.h.used(tx).map((u) => u.len),
    [0, 0],
  );
  assert.equal(s.rec.text(0), 'ok');
  assert.equal(s.dev.stats.badChains, 1);
  // Control transmitq: a chain with a readable descriptor after a writable one.
  const a = s.h.alloc(16);
  s.h.postRaw(ConsoleQueue.CTRL_TX, [
    [a, 8, 2],
    [a + 8, 8, 0],
  ]);
  s.dev.queueNotified(ConsoleQueue.CTRL_TX);
  assert.equal(s.dev.stats.badChains, 2);
  // Receive queue: a buffer outside memory, then a readable-only one, then a good one.
  const rx = portRxQueue(0);
  s.h.postRaw(rx, [[0x7000000, 16, 2]]);
  s.h.post(rx, enc('ro'));
  s.h.post(rx, null, 8);
  s.dev.input(0, enc('data'));
  assert.deepEqual(
    s.h.used(rx).map((u) => u.len),
    [0, 0, 4],
  );
  assert.equal(s.dev.stats.badChains, 4, 'a receive chain with nothing writable is malformed too');
  assert.equal(s.h.broken, null);
  // Control receiveq: a bad buffer is returned unused, the message goes into the next one.
  const c = setup();
  c.h.postRaw(ConsoleQueue.CTRL_RX, [[0x7000000, 16, 2]]);
  c.ctlRx(1);
  c.ctl(CONSOLE_BAD_ID, ConsoleEvent.DEVICE_READY, 1);
  assert.deepEqual(brief(c.messages()), [
    [-1, -1, -1, 0],
    [0, ConsoleEvent.PORT_ADD, 1, 8],
  ]);
  assert.equal(c.dev.stats.badChains, 1);
  assert.equal(c.dev.stats.controlDropped, 0);
  c.ctlRx(2);
  assert.deepEqual(
    c.messages().map((m) => m.id),
    [1, 2],
    'the other messages waited',
  );
  assert.equal(c.h.broken, null);
});

test('a corrupt ring marks the device broken instead of throwing', () => {
  const s = setup();
  handshake(s);
  s.h.dv.setUint16(ringBase(portTxQueue(1)) + 0x4000 + 2, 1000, true); // avail idx far ahead
  assert.doesNotThrow(() => s.dev.queueNotified(portTxQueue(1)));
  assert.equal(s.h.broken?.code, 'ERR_VQ_AVAIL_IDX');
  const t = setup();
  t.ctlRx(1);
  t.h.dv.setUint16(ringBase(ConsoleQueue.CTRL_TX) + 0x4000 + 4, 9999, true); // head >= size
  t.h.dv.setUint16(ringBase(ConsoleQueue.CTRL_TX) + 0x4000 + 2, 1, true);
  t.dev.queueNotified(ConsoleQueue.CTRL_TX);
  assert.equal(t.h.broken?.code, 'ERR_VQ_DESC_INDEX');
});

test('reset: every port closed, PORT_ADD again after the next DEVICE_READY, accepted input kept', () => {
  const s = setup();
  handshake(s);
  s.ctl(1, ConsoleEvent.PORT_OPEN, 1);
  s.dev.input(1, enc('kept'));
  s.dev.reset();
  assert.deepEqual(s.rec.opens, [
    [0, true],
    [1, true],
    [0, false],
    [1, false],
  ]);
  assert.equal(s.dev.isGuestOpen(0), false);
  assert.equal(s.dev.pendingInput(1), 4);
  // A fresh driver on fresh rings.
  const h2 = new Harness(s.dev.numQueues);
  s.dev.attach(h2);
  s.dev.setFeatures(ALL);
  for (let i = 0; i < s.dev.numQueues; i++) s.dev.queueStarted(i);
  for (let i = 0; i < 8; i++) h2.post(ConsoleQueue.CTRL_RX, null, 4096);
  s.dev.queueNotified(ConsoleQueue.CTRL_RX);
  h2.post(ConsoleQueue.CTRL_TX, ctlBytes(CONSOLE_BAD_ID, ConsoleEvent.DEVICE_READY, 1));
  s.dev.queueNotified(ConsoleQueue.CTRL_TX);
  assert.equal(h2.used(ConsoleQueue.CTRL_RX).length, 3);
  h2.post(portRxQueue(1), null, 16);
  h2.post(ConsoleQueue.CTRL_TX, ctlBytes(1, ConsoleEvent.PORT_READY, 1));
  h2.post(ConsoleQueue.CTRL_TX, ctlBytes(1, ConsoleEvent.PORT_OPEN, 1));
  s.dev.queueNotified(ConsoleQueue.CTRL_TX);
  assert.deepEqual(h2.used(portRxQueue(1)), [{ id: 0, len: 4 }]);
});
