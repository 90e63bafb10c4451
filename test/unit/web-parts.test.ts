/**
 * The web monitor's pieces on a real hub, without HTTP: the frame tap (ring, overwrite, names,
 * sampling at the source), stream request parsing, the bus-state fault control, and --http parsing.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseHttpOptions } from '../../src/cli/http-args.js';
import { CanErr, stateErrorFrame } from '../../src/core/bus/can-error.js';
import { makeCanFrame } from '../../src/core/bus/can-frame.js';
import { type BusState, CanHub } from '../../src/core/bus/hub.js';
import { FaultError, HubFaultControl, parseFault } from '../../src/node/http/fault-control.js';
import { describeErrorEvent, parseStreamRequest } from '../../src/node/http/frame-streams.js';
import { FrameTap, type TapEntry, TapFlag } from '../../src/node/http/frame-tap.js';

function bus(): { hub: CanHub; send: (id: number, data?: number[], extra?: object) => void } {
  let t = 0n;
  const hub = new CanHub({ name: 'b', clock: () => (t += 1000n) });
  const p = hub.attach({ onFramesAvailable() {} }, { name: 'sender' });
  p.setReceiving(false);
  return { hub, send: (id, data = [], extra = {}) => void p.transmit(makeCanFrame({ id, data, ...extra })) };
}

test('the tap copies frames and error events into its ring, in order, and names the senders', () => {
  const { hub, send } = bus();
  const tap = new FrameTap(hub, 16);
  tap.attach('mon');
  send(0x123, [1, 2, 3]);
  send(0x1abcdef, [9], { extended: true });
  send(0x7, [], { rtr: true, len: 4 });
  send(
    0x100,
    Array.from({ length: 12 }, (_, i) => i),
    { fd: true, brs: true },
  );
  hub.emitErrorFrame(stateErrorFrame('bus-off', { timestampNs: 5n, origin: 1 }));
  const got: TapEntry[] = [];
  assert.equal(
    tap.forEach(0, (e) => got.push({ ...e })),
    5,
  );
  assert.deepEqual(
    got.map((e) => [e.seq, e.id, e.flags, e.len]),
    [
      [0, 0x123, 0, 3],
      [1, 0x1abcdef, TapFlag.EXTENDED, 1],
      [2, 0x7, TapFlag.RTR, 4],
      [3, 0x100, TapFlag.FD | TapFlag.BRS, 12],
      [4, CanErr.BUSOFF, TapFlag.ERROR, 8],
    ],
  );
  assert.deepEqual([...tap.at(0)!.data], [1, 2, 3]);
  assert.deepEqual(tap.at(2)!.data.length, 0, 'RTR has no payload');
  assert.deepEqual(
    [...tap.at(3)!.data],
    Array.from({ length: 12 }, (_, i) => i),
  );
  assert.equal(tap.portName(got[0]!.origin), 'sender');
  assert.equal(tap.portName(0), 'bus');
  assert.equal(tap.portName(999), '#999');
  assert.equal(tap.at(5), null);
  // A port that sends and leaves at once is still named.
  const brief = hub.attach({ onFramesAvailable() {} }, { name: 'brief' });
  brief.transmit(makeCanFrame({ id: 1 }));
  brief.detach();
  assert.equal(tap.portName(tap.at(5)!.origin), 'brief');
  tap.detach();
  assert.deepEqual(
    hub.ports().map((p) => p.name),
    ['sender'],
  );
});

test('the ring keeps the newest entries; older sequence numbers are gone', () => {
  const { hub, send } = bus();
  const tap = new FrameTap(hub, 16, 1000);
  assert.equal(tap.windowBudget, 16, 'no more than the ring holds per window');
  tap.attach('mon');
  // Four windows of ten frames, nobody reading.
  for (let w = 0; w < 4; w++) {
    for (let i = 0; i < 10; i++) send(w * 10 + i);
    tap.nextWindow();
  }
  assert.equal(tap.head, 40);
  assert.equal(tap.tail, 24);
  const ids: number[] = [];
  assert.equal(
    tap.forEach(0, (e) => ids.push(e.id)),
    40,
  );
  assert.deepEqual(
    ids,
    Array.from({ length: 16 }, (_, i) => 24 + i),
  );
  assert.equal(tap.at(23), null);
  assert.equal(tap.unseen, 0);
});

test('sampling at the source: past the window budget the tap leaves the bus and counts what it missed', () => {
  const { hub, send } = bus();
  const tap = new FrameTap(hub, 64, 10);
  tap.attach('mon');
  for (let i = 0; i < 25; i++) send(i);
  assert.equal(tap.head, 10, 'ten copied');
  assert.equal(tap.paused, true);
  assert.ok(!hub.ports().some((p) => p.name === 'mon'), 'off the bus while paused');
  assert.equal(tap.unseen, 0, 'counted when the window ends');
  tap.nextWindow();
  assert.equal(tap.unseen, 15);
  assert.equal(tap.paused, false);
  assert.ok(hub.ports().some((p) => p.name === 'mon'));
  for (let i = 0; i < 5; i++) send(100 + i);
  tap.nextWindow();
  assert.equal(tap.head, 15);
  assert.equal(tap.unseen, 15, 'below the budget every frame is seen');
  assert.equal(hub.stats().droppedOverflow, 0, 'the bus drops nothing for the tap');
  tap.detach();
  tap.nextWindow();
  assert.ok(!hub.ports().some((p) => p.name === 'mon'), 'a detached tap stays off');
});

test('stream requests: filters, rate bounds, clear errors', () => {
  const q = (s: string) => new URLSearchParams(s);
  const r = parseStreamRequest(
    q('bus=a,b&id=123&ext=0&port=guest0,web&errors=0&rate=50&decode=canopen'),
    ['a', 'b'],
    200,
    1000,
  );
  assert.deepEqual(r.filter.buses, ['a', 'b']);
  assert.equal(r.filter.id, 0x123);
  assert.equal(r.filter.mask, 0x1fffffff, 'an id alone matches exactly');
  assert.equal(r.filter.extended, false);
  assert.deepEqual([...r.filter.ports!], ['guest0', 'web']);
  assert.equal(r.filter.errors, false);
  assert.equal(r.rate, 50);
  assert.equal(r.canopen, true);
  const d = parseStreamRequest(q(''), ['a'], 200, 1000);
  assert.deepEqual(
    [d.filter.buses, d.filter.mask, d.filter.errors, d.rate, d.canopen],
    [null, 0, true, 200, false],
  );
  assert.equal(parseStreamRequest(q('id=0x700&mask=780'), ['a'], 200, 1000).filter.mask, 0x780);
  for (const bad of [
    'bus=c',
    'id=xyz',
    'mask=123456789',
    'rate=0',
    'rate=1001',
    'rate=1.5',
    'decode=x',
    'ext=yes',
    'errors=2',
  ]) {
    assert.throws(
      () => parseStreamRequest(q(bad), ['a'], 200, 1000),
      (e: { status: number; code: string }) => {
        assert.ok(e.status === 400 || e.status === 404, bad);
        return true;
      },
    );
  }
});

test('error events are named from their class bits', () => {
  const name = (s: BusState, restarted = false) => {
    const f = stateErrorFrame(s, { timestampNs: 0n, origin: 0, restarted });
    return describeErrorEvent(f.classBits, f.data);
  };
  assert.equal(name('bus-off'), 'bus-off');
  assert.equal(name('error-passive'), 'error-passive');
  assert.equal(name('error-warning'), 'error-warning');
  assert.equal(name('error-active'), 'error-active');
  assert.equal(name('error-active', true), 'restarted');
  assert.equal(describeErrorEvent(CanErr.ACK | CanErr.BUSERROR, new Uint8Array(8)), 'no-ack bus-error');
});

test('faults go to the fault model of their bus: states, durations, drops; timing kinds need a timed bus; one numbering', async () => {
  // The hub's clock and timer: real time, wake-ups through setTimeout (what the daemon does with a timerfd).
  const t0 = process.hrtime.bigint();
  const clock = (): bigint => process.hrtime.bigint() - t0;
  const timer = (wake: () => void) => {
    let h: ReturnType<typeof setTimeout> | null = null;
    return {
      arm(deadlineNs: number) {
        if (h !== null) clearTimeout(h);
        h = setTimeout(wake, Math.max(0, (deadlineNs - Number(clock())) / 1e6));
      },
      disarm() {
        if (h !== null) clearTimeout(h);
        h = null;
      },
      close() {
        this.disarm();
      },
    };
  };
  const hub = new CanHub({ name: 'b', clock, timer });
  const other = new CanHub({ name: 'c', clock, timer });
  const states: BusState[] = [];
  const victim = hub.attach(
    { onFramesAvailable() {}, onBusState: (s) => states.push(s) },
    { name: 'victim' },
  );
  other.attach({ onFramesAvailable() {} }, { name: 'victim' });
  const hubs: Record<string, CanHub> = { b: hub, c: other };
  const fc = new HubFaultControl(
    (name: string) => hubs[name],
    () => Object.keys(hubs),
  );
  const warn = fc.inject('b', 'victim', { kind: 'bus-state', state: 'error-warning' });
  assert.equal(victim.busState, 'error-warning');
  const inC = fc.inject('c', 'victim', { kind: 'drop', ratio: 0.5 });
  assert.notEqual(inC.id, warn.id, 'one numbering across buses');
  // A second fault of the same kind on a port replaces the first.
  const off = fc.inject('b', victim.id, { kind: 'bus-state', state: 'error-passive' }, { durationMs: 30 });
  assert.equal(victim.busState, 'error-passive');
  assert.ok(
    off.until !== null && Math.abs(off.until - off.since - 30) <= 2,
    `until ${off.until} since ${off.since}`,
  );
  assert.deepEqual(
    fc.list().map((f) => [f.bus, f.fault.kind]),
    [
      ['b', 'bus-state'],
      ['c', 'drop'],
    ],
  );
  await new Promise((r) => setTimeout(r, 80));
  assert.equal(victim.busState, 'error-active', 'the state fault ended by itself');
  assert.deepEqual(
    fc.list().map((f) => f.id),
    [inC.id],
  );
  assert.equal(fc.clear(inC.id), true);
  assert.equal(fc.clear(inC.id), false);
  assert.deepEqual(fc.list(), []);
  assert.deepEqual(states, ['error-warning', 'error-passive', 'error-active']);

  const code = (fn: () => unknown): string => {
    try {
      fn();
    } catch (e) {
      assert.ok(e instanceof FaultError);
      return e.code;
    }
    return 'none';
  };
  assert.equal(
    code(() => fc.inject('b', 'victim', { kind: 'no-ack' })),
    'ERR_FAULT_NOT_AVAILABLE',
    'an untimed bus has no acknowledgements to miss',
  );
  assert.equal(
    code(() => fc.inject('x', 'victim', { kind: 'bus-state', state: 'bus-off' })),
    'ERR_FAULT_UNKNOWN_BUS',
  );
  assert.equal(
    code(() => fc.inject('b', 'nobody', { kind: 'bus-state', state: 'bus-off' })),
    'ERR_FAULT_UNKNOWN_PORT',
  );
  assert.equal(
    code(() => fc.inject('b', 'victim', { kind: 'bus-state', state: 'bus-off' }, { durationMs: 0 })),
    'ERR_FAULT_INVALID',
  );
  assert.equal(
    code(() => fc.inject('b', 'victim', { kind: 'delay', ms: 0 })),
    'ERR_FAULT_INVALID',
  );
  assert.equal(fc.injected['bus-state'], 2);
  assert.equal(fc.clearAll(), 0);
  fc.close();

  assert.match(String(parseFault({ kind: 'drop', ratio: 2 })), /ratio/);
  assert.deepEqual(parseFault({ kind: 'drop', ratio: 0.25 }), { kind: 'drop', ratio: 0.25 });
  assert.deepEqual(parseFault({ kind: 'error-frames', perSecond: 10 }), {
    kind: 'error-frames',
    perSecond: 10,
  });
  assert.match(String(parseFault(null)), /object/);
});

test('--http and --http-token-file parsing', () => {
  const p = (v: Record<string, string>) => parseHttpOptions(v);
  assert.equal(p({}), null);
  assert.deepEqual(p({ http: '8080' }), { host: '127.0.0.1', port: 8080, tokenFile: null });
  assert.deepEqual(p({ http: 'localhost:0' }), { host: 'localhost', port: 0, tokenFile: null });
  assert.deepEqual(p({ http: '[::1]:9' }), { host: '::1', port: 9, tokenFile: null });
  assert.deepEqual(p({ http: '127.1.2.3:80' }), { host: '127.1.2.3', port: 80, tokenFile: null });
  assert.deepEqual(p({ http: '0.0.0.0:80', 'http-token-file': '/t' }), {
    host: '0.0.0.0',
    port: 80,
    tokenFile: '/t',
  });
  assert.match(String(p({ http: '0.0.0.0:80' })), /needs --http-token-file/);
  assert.match(String(p({ http: '[::]:80' })), /needs --http-token-file/);
  assert.match(String(p({ http: 'can-box:80' })), /needs --http-token-file/);
  assert.match(String(p({ http: ':80' })), /empty/);
  assert.match(String(p({ http: 'x:65536' })), /0\.\.65535/);
  assert.match(String(p({ http: 'x:http' })), /0\.\.65535/);
  assert.match(String(p({ 'http-token-file': '/t' })), /needs --http/);
});
