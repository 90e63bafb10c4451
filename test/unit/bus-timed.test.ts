// The timed bus with a hand-driven clock and timer: exact durations, arbitration, completions at
// the end of the frame, fault confinement, late wake-ups.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CanErr, type CanErrorFrame, errorFrameCanId } from '../../src/core/bus/can-error.js';
import { type CanFrame, makeCanFrame } from '../../src/core/bus/can-frame.js';
import type { AckMode } from '../../src/core/bus/faults.js';
import { frameBitCount } from '../../src/core/bus/frame-timing.js';
import { type BusState, CanHub, type HubPort } from '../../src/core/bus/hub.js';
import { FakeTime } from './support/fake-time.js';

interface Node {
  port: HubPort;
  got: CanFrame[];
  states: BusState[];
  done: [number, boolean, bigint][];
  errors: CanErrorFrame[];
}

function timedHub(t: FakeTime, bitrate = 500_000, ack: AckMode = 'nodes', dataBitrate?: number): CanHub {
  return new CanHub({
    name: 'timed',
    clock: t.clock,
    timer: t.timer,
    timing: { bitrate, ack, ...(dataBitrate === undefined ? {} : { dataBitrate }) },
  });
}

function node(hub: CanHub, t: FakeTime, name: string, errorFrames = false): Node {
  const n = { got: [], states: [], done: [], errors: [] } as unknown as Node;
  n.port = hub.attach(
    {
      onFramesAvailable() {
        for (let f = n.port.take(); f !== undefined; f = n.port.take()) n.got.push(f);
      },
      onBusState: (s) => n.states.push(s),
      onTxComplete: (tok, ok) => n.done.push([tok, ok, t.now]),
      onErrorFrame: (f) => n.errors.push(f),
    },
    { name, errorFrames },
  );
  return n;
}

const NS_500K = 2000; // ns per bit at 500 kbit/s
const fr = (id: number, data: number[] = [0x55]) => makeCanFrame({ id, data });

describe('timed bus: timing and arbitration', () => {
  it('a frame occupies the bus for its exact length; receivers and the sender learn at its end', () => {
    const t = new FakeTime();
    const hub = timedHub(t);
    const a = node(hub, t, 'a');
    const b = node(hub, t, 'b');
    const f = fr(0x123, [1, 2, 3, 4, 5, 6, 7, 8]);
    const ns = BigInt(frameBitCount(f) * NS_500K);
    assert.equal(a.port.transmit(f, 7), 'pending');
    assert.equal(b.got.length, 0, 'nothing before the bus carried it');
    t.run(ns - 1n);
    assert.equal(b.got.length, 0, 'still on the wire 1 ns before its end');
    t.run(1n);
    assert.equal(b.got.length, 1);
    assert.equal(b.got[0]!.timestampNs, ns, 'stamped with its end time');
    assert.deepEqual(a.done, [[7, true, ns]]);
    const s = hub.stats();
    assert.equal(s.frames, 1);
    assert.equal(s.timing!.busySeconds * 1e9, Number(ns));
    assert.equal(s.timing!.lateMaxUs, 0);
  });

  it('saturated by two senders: lower id wins every arbitration; back to back at the exact rate', () => {
    const t = new FakeTime();
    const hub = timedHub(t, 125_000);
    const hi = node(hub, t, 'hi'); // sends 0x300
    const lo = node(hub, t, 'lo'); // sends 0x100: higher priority
    const obs = node(hub, t, 'obs');
    for (let i = 0; i < 5; i++) {
      hi.port.transmit(fr(0x300, [i]), i);
      lo.port.transmit(fr(0x100, [i]), i);
    }
    t.run(1_000_000_000n);
    assert.deepEqual(
      obs.got.map((f) => f.id.toString(16)),
      ['100', '100', '100', '100', '100', '300', '300', '300', '300', '300'],
    );
    // Back to back: each frame ends exactly its own length after the previous one.
    let end = 0n;
    for (const f of obs.got) {
      end += BigInt(frameBitCount(f) * 8000);
      assert.equal(f.timestampNs, end);
    }
    assert.equal(hub.stats().timing!.arbitrationLost, 5, 'hi lost five arbitrations');
    assert.equal(hi.port.stats.arbitrationLost, 5);
    assert.equal(lo.port.stats.arbitrationLost, 0);
    assert.deepEqual(
      lo.done.map((d) => d[1]),
      [true, true, true, true, true],
    );
    assert.ok(Math.abs(hub.stats().busLoad - 1) < 1e-9 || hub.stats().busLoad <= 1);
  });

  it('a frame handed over while another is on the wire waits; it does not preempt', () => {
    const t = new FakeTime();
    const hub = timedHub(t);
    const a = node(hub, t, 'a');
    const b = node(hub, t, 'b');
    const c = node(hub, t, 'c');
    a.port.transmit(fr(0x700));
    t.run(10_000n); // 0x700 is on the wire
    b.port.transmit(fr(0x001));
    t.run(1_000_000n);
    assert.deepEqual(
      c.got.map((f) => f.id),
      [0x700, 0x001],
    );
  });

  it('a late wake-up delivers every due frame in order with ideal timestamps and counts the lag', () => {
    const t = new FakeTime();
    const hub = timedHub(t, 1_000_000);
    const a = node(hub, t, 'a');
    const b = node(hub, t, 'b');
    for (let i = 0; i < 50; i++) a.port.transmit(fr(0x10, [i]), i);
    t.runUntil(0n);
    // The host sleeps 2 ms, then wakes: about 20 frames are due at once.
    t.now = 2_000_000n;
    t.runUntil(2_000_000n, 0n);
    const n = b.got.length;
    let due = 0;
    for (let e = 0, i = 0; i < 50; i++) {
      e += frameBitCount(fr(0x10, [i])) * 1000;
      if (e <= 2_000_000) due++;
    }
    assert.equal(n, due, 'every frame due after 2 ms, in one wake-up');
    assert.ok(n > 20);
    assert.deepEqual(
      b.got.map((f) => f.data[0]),
      Array.from({ length: n }, (_, i) => i),
    );
    let end = 0n;
    for (const f of b.got) {
      end += BigInt(frameBitCount(f) * 1000);
      assert.equal(f.timestampNs, end, 'ideal end time, not the late delivery time');
    }
    const st = hub.stats().timing!;
    assert.equal(st.behind, 1);
    assert.ok(st.lateFrames >= 1 && st.lateMaxUs >= 1000);
    t.run(10_000_000n);
    assert.equal(b.got.length, 50);
  });

  it('FD frames take the data rate for their data phase when a data bit rate is set', () => {
    const t = new FakeTime();
    const hub = timedHub(t, 500_000, 'nodes', 2_000_000);
    const a = node(hub, t, 'a');
    const b = node(hub, t, 'b');
    const f = makeCanFrame({ id: 0x555, fd: true, data: new Uint8Array(64).fill(0x55) });
    a.port.transmit(f);
    t.run(10_000_000n);
    assert.equal(b.got[0]!.timestampNs, 334_500n, '30 bits at 500k + 549 bits at 2M');
  });
});

describe('timed bus: fault confinement', () => {
  it('a lone sender gets ACK errors: error-passive after 16 attempts, never bus-off; acked once a node joins', () => {
    const t = new FakeTime();
    const hub = timedHub(t);
    const obs = node(hub, t, 'obs', true);
    obs.port.setReceiving(false); // an observer that is not a node (its controller is stopped)
    const a = node(hub, t, 'a');
    a.port.transmit(fr(0x42), 1);
    t.run(50_000_000n);
    assert.equal(a.port.tec, 128);
    assert.equal(a.port.busState, 'error-passive');
    assert.deepEqual(a.states, ['error-warning', 'error-passive']);
    assert.deepEqual(a.done, [], 'never completed');
    assert.ok(a.port.stats.txBusErrors > 100, 'retransmitted over and over');
    const ack = obs.errors.find((e) => (e.classBits & CanErr.ACK) !== 0)!;
    assert.equal(
      errorFrameCanId(ack),
      (CanErr.FLAG | CanErr.ACK | CanErr.PROT | CanErr.BUSERROR | CanErr.CNT) >>> 0,
    );
    assert.equal(ack.data[3], 0x19, 'location: ACK slot');
    const passive = obs.errors.find(
      (e) => e.classBits === (CanErr.CRTL | CanErr.CNT) && e.data[1] === CanErr.CRTL_TX_PASSIVE,
    )!;
    assert.equal(passive.data[6], 128, 'TEC in the state change');
    // A node joins: the next attempt is acknowledged.
    const b = node(hub, t, 'b');
    t.run(5_000_000n);
    assert.equal(b.got.length, 1);
    assert.equal(a.done.length, 1);
    assert.equal(a.port.tec, 127);
    assert.equal(a.port.busState, 'error-warning', 'below 128 again');
  });

  it('a bit-rate mismatch: error-passive after 16 attempts, bus-off after 32; the others carry on; restart recovers', () => {
    const t = new FakeTime();
    const hub = timedHub(t);
    const obs = node(hub, t, 'obs', true);
    const good = node(hub, t, 'good');
    const bad = node(hub, t, 'bad');
    const id = hub.injectFault('bad', { kind: 'bitrate-mismatch' });
    bad.port.transmit(fr(0x010), 1); // higher priority than good's frames
    for (let i = 0; i < 10; i++) good.port.transmit(fr(0x300, [i]), i);
    t.run(100_000_000n);
    assert.deepEqual(bad.states, ['error-warning', 'error-passive', 'bus-off']);
    assert.equal(bad.port.busState, 'bus-off');
    assert.deepEqual(bad.done, [[1, false, bad.done[0]![2]]], 'its frame failed at bus-off');
    assert.equal(bad.port.stats.txBusErrors, 32);
    assert.equal(obs.got.filter((f) => f.id === 0x300).length, 10, 'the good node carried on');
    assert.equal(obs.got.filter((f) => f.id === 0x010).length, 0);
    assert.equal(good.done.length, 10);
    assert.ok(
      obs.errors.some((e) => e.classBits === CanErr.BUSOFF && e.origin === bad.port.id),
      'BUSOFF reported',
    );
    assert.equal(hub.faults()[0]!.hits, 32);
    // Frames from others cannot be decoded by the mismatched port: not delivered, REC rises.
    assert.equal(bad.got.length, 0);
    // Restart while still mismatched: it goes bus-off again; with the fault cleared it works.
    assert.equal(bad.port.transmit(fr(0x011)), 'dropped', 'bus-off: refused');
    hub.injectBusState('bad', 'error-active');
    assert.deepEqual([bad.port.tec, bad.port.rec], [0, 0], 'a restart resets the counters');
    assert.equal(hub.clearFault(id), true);
    assert.equal(hub.clearFault(id), false);
    bad.port.transmit(fr(0x012), 2);
    t.run(1_000_000n);
    assert.equal(obs.got.at(-1)!.id, 0x012);
    assert.deepEqual(bad.done.at(-1)!.slice(0, 2), [2, true]);
  });

  it('injected error flags destroy frames, which are sent again; counters move', () => {
    const t = new FakeTime();
    const hub = timedHub(t, 500_000);
    const a = node(hub, t, 'a');
    const b = node(hub, t, 'b');
    const noisy = node(hub, t, 'noisy');
    hub.injectFault('noisy', { kind: 'error-frames', perSecond: 1000 });
    for (let i = 0; i < 200; i++) a.port.transmit(fr(0x100, [i]), i);
    t.run(200_000_000n);
    assert.equal(b.got.length, 200, 'every frame arrived in the end');
    assert.deepEqual(
      b.got.map((f) => f.data[0]),
      Array.from({ length: 200 }, (_, i) => i),
    );
    const st = hub.stats().timing!;
    assert.ok(st.busErrors > 10, `${st.busErrors} frames destroyed`);
    assert.ok(st.idleErrorFrames > 10, 'flags on the idle bus too');
    assert.equal(a.port.stats.txBusErrors, st.busErrors);
    assert.ok(b.port.stats.rxBusErrors > 0 && noisy.port.stats.rxBusErrors > 0);
    assert.equal(hub.faults()[0]!.hits, 200, '1000/s for 200 ms');
  });

  it('stopping a port drops its waiting frames; their requests fail', () => {
    const t = new FakeTime();
    const hub = timedHub(t);
    const a = node(hub, t, 'a');
    const b = node(hub, t, 'b');
    for (let i = 0; i < 5; i++) a.port.transmit(fr(0x100, [i]), i);
    t.run(1000n); // the first is on the wire
    a.port.setReceiving(false);
    t.run(10_000_000n);
    assert.equal(b.got.length, 1, 'the frame on the wire finishes');
    assert.deepEqual(
      a.done.map((d) => [d[0], d[1]]),
      [
        [1, false],
        [2, false],
        [3, false],
        [4, false],
      ],
    );
    assert.equal(a.port.stats.txAborted, 4);
  });
});

describe('faults on any bus', () => {
  it('drop: exactly that share of a port frames never reaches the bus; the sender is told sent', () => {
    const hub = new CanHub({ name: 'plain' });
    const t = new FakeTime();
    const a = node(hub, t, 'a');
    const b = node(hub, t, 'b');
    hub.injectFault('a', { kind: 'drop', ratio: 0.25 });
    const results = Array.from({ length: 100 }, (_, i) => a.port.transmit(fr(0x100, [i])));
    assert.ok(results.every((r) => r === 'sent'));
    assert.equal(b.got.length, 75);
    assert.equal(a.port.stats.txFaultDropped, 25);
    assert.equal(hub.faults()[0]!.hits, 25);
  });

  it('delay: frames reach the bus later, in order; the sender completes then', () => {
    const t = new FakeTime();
    const hub = new CanHub({ name: 'plain', clock: t.clock, timer: t.timer });
    const a = node(hub, t, 'a');
    const b = node(hub, t, 'b');
    hub.injectFault('a', { kind: 'delay', ms: 5 });
    assert.equal(a.port.transmit(fr(0x100, [1]), 1), 'pending');
    t.run(1_000_000n);
    assert.equal(a.port.transmit(fr(0x100, [2]), 2), 'pending');
    t.run(3_999_999n);
    assert.equal(b.got.length, 0);
    t.run(1n);
    assert.equal(b.got.length, 1);
    t.run(1_000_000n);
    assert.deepEqual(
      b.got.map((f) => [f.data[0], f.timestampNs]),
      [
        [1, 5_000_000n],
        [2, 6_000_000n],
      ],
    );
    assert.deepEqual(a.done, [
      [1, true, 5_000_000n],
      [2, true, 6_000_000n],
    ]);
    assert.equal(a.port.transmit(fr(0x100, [3])), 'sent', 'no token: accepted at once, delivered later');
  });

  it('faults wait for their port by name, end after their duration, one per kind', () => {
    const t = new FakeTime();
    const hub = new CanHub({ name: 'plain', clock: t.clock, timer: t.timer });
    const id = hub.injectFault('later', { kind: 'drop', ratio: 1 }, { durationMs: 10 });
    assert.deepEqual(
      hub.faults().map((f) => [f.id, f.port, f.portId, f.sinceNs]),
      [[id, 'later', null, null]],
    );
    t.run(50_000_000n);
    assert.equal(hub.faults().length, 1, 'the duration starts when it takes effect');
    const p = node(hub, t, 'later');
    const b = node(hub, t, 'b');
    const f = hub.faults()[0]!;
    assert.deepEqual([f.portId, f.sinceNs, f.untilNs], [p.port.id, 50_000_000n, 60_000_000n]);
    p.port.transmit(fr(1));
    assert.equal(b.got.length, 0);
    const id2 = hub.injectFault(p.port.id, { kind: 'drop', ratio: 0.5 });
    assert.deepEqual(
      hub.faults().map((x) => x.id),
      [id2],
      'a second drop fault replaces the first',
    );
    hub.injectFault('later', { kind: 'delay', ms: 1 }, { durationMs: 10 });
    t.run(10_000_000n);
    assert.deepEqual(
      hub.faults().map((x) => x.fault.kind),
      ['drop'],
      'the delay ended',
    );
    assert.equal(hub.clearFaults('later'), 1);
    assert.equal(hub.faults().length, 0);
  });

  it('refuses what it cannot do, with codes', () => {
    const hub = new CanHub({ name: 'plain' });
    const code = (fn: () => unknown) => {
      try {
        fn();
      } catch (e) {
        return (e as { code: string }).code;
      }
      return 'no error';
    };
    assert.equal(
      code(() => hub.injectFault('a', { kind: 'no-ack' })),
      'ERR_BUS_NOT_TIMED',
    );
    assert.equal(
      code(() => hub.injectFault('a', { kind: 'bitrate-mismatch' })),
      'ERR_BUS_NOT_TIMED',
    );
    assert.equal(
      code(() => hub.injectFault('a', { kind: 'drop', ratio: 2 })),
      'ERR_BUS_INVALID_OPTION',
    );
    assert.equal(
      code(() => hub.injectFault('a', { kind: 'nope' } as never)),
      'ERR_BUS_INVALID_OPTION',
    );
    assert.equal(
      code(() => hub.injectFault('a', { kind: 'delay', ms: 5 })),
      'ERR_BUS_INVALID_OPTION',
      'no timer',
    );
    assert.equal(
      code(() => hub.injectFault('a', { kind: 'drop', ratio: 0.5 }, { durationMs: 5 })),
      'ERR_BUS_INVALID_OPTION',
    );
    assert.equal(
      code(() => hub.injectFault(99, { kind: 'drop', ratio: 0.5 })),
      'ERR_BUS_UNKNOWN_PORT',
    );
    assert.equal(
      code(() => new CanHub({ name: 'x', timing: { bitrate: 500_000 } })),
      'ERR_BUS_INVALID_OPTION',
      'a timed bus needs a clock and a timer',
    );
    const t = new FakeTime();
    assert.equal(
      code(() => new CanHub({ name: 'x', clock: t.clock, timer: t.timer, timing: { bitrate: 2_000_000 } })),
      'ERR_BUS_INVALID_OPTION',
    );
  });

  it('bus-state bus-off holds: a restarted port goes bus-off again at its first frame until cleared', () => {
    const hub = new CanHub({ name: 'plain' });
    const t = new FakeTime();
    const a = node(hub, t, 'a');
    const b = node(hub, t, 'b');
    const id = hub.injectFault('a', { kind: 'bus-state', state: 'bus-off' });
    assert.deepEqual(a.states, ['bus-off']);
    hub.injectBusState('a', 'error-active'); // the owner restarts
    assert.equal(a.port.transmit(fr(1)), 'dropped');
    assert.deepEqual(a.states, ['bus-off', 'error-active', 'bus-off']);
    hub.clearFault(id);
    assert.equal(a.port.busState, 'bus-off', 'clearing does not restart a bus-off controller');
    hub.injectBusState('a', 'error-active');
    assert.equal(a.port.transmit(fr(2)), 'sent');
    assert.equal(b.got.length, 1);
  });
});
