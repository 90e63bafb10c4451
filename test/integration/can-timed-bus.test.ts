// The timed bus end to end: the CAN daemon with --bitrate semantics (startCanDaemon timing), guests
// played by the CanTestDriver over real vhost-user sockets, memfd RAM and eventfds, the daemon's
// timerfd wake-ups. Rates are measured over many frames against wall-clock time, so a loaded
// machine (late wake-ups) does not make them fail: the bus catches up without losing time.
import assert from 'node:assert/strict';
import { describe, type TestContext, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { CanErr, type CanErrorFrame } from '../../src/core/bus/can-error.js';
import { type CanFrame, makeCanFrame } from '../../src/core/bus/can-frame.js';
import { frameBits } from '../../src/core/bus/frame-timing.js';
import type { CanHub, HubPort } from '../../src/core/bus/hub.js';
import type { CanTestDriver, CanTxFrame } from '../../src/node/frontend/can-driver.js';
import { startDriver, startTestDaemon, waitFor } from '../helpers/vhost-user.js';

/** A port that records every frame with its wall-clock arrival, and error frames. */
function tap(hub: CanHub, name = 'tap') {
  const frames: CanFrame[] = [];
  const arrivals: bigint[] = [];
  const errors: CanErrorFrame[] = [];
  const port: HubPort = hub.attach(
    {
      onFramesAvailable() {
        const now = process.hrtime.bigint();
        for (let f = port.take(); f !== undefined; f = port.take()) {
          frames.push(f);
          arrivals.push(now);
        }
      },
      onErrorFrame: (f) => errors.push(f),
    },
    { name, errorFrames: true },
  );
  return { port, frames, arrivals, errors };
}

/** Sends `frames` through the driver, keeping its ring full (posting as completions free slots). */
function flood(drv: CanTestDriver, frames: readonly CanTxFrame[]): Promise<number[]> {
  return drv.sendMany(frames);
}

function exactNs(f: CanFrame, bitrate: number): number {
  const b = frameBits(f, false, false, { nominal: 0, data: 0, stuff: 0 });
  return (b.nominal * 1e9) / bitrate;
}

describe('timed bus through real vhost-user guests', () => {
  /**
   * One measurement on a fresh daemon: asserts what does not depend on the machine's load (every
   * frame completed OK, none shortened, busy time = frames x exact length) and returns the
   * delivered/exact rate with a description.
   */
  async function measureRate(t: TestContext, bitrate: number): Promise<{ ratio: number; what: string }> {
    const { can, paths } = startTestDaemon(t, { sockets: 1, timing: { default: { bitrate } } });
    const hub = can.hubFor(0);
    const obs = tap(hub);
    // A deep ring (512 frames in flight) so the in-process driver, which shares the event loop
    // with the daemon, keeps the bus saturated through garbage-collection pauses.
    const tx = await startDriver(t, paths[0]!, { queueSize: 1024, timeoutMs: 20_000 });
    assert.equal(await tx.drv.startController(), 0);
    // Zero bytes: stuffing adds about 10 % (a bus that ignored stuffing would be 10 % fast).
    const seconds = 2.2;
    const one = makeCanFrame({ id: 0x100, data: new Uint8Array(8) });
    const perFrame = exactNs(one, bitrate);
    const n = Math.ceil((seconds * 1e9) / perFrame);
    const frames = Array.from({ length: n }, () => ({ id: 0x100, data: new Array<number>(8).fill(0) }));
    const results = await flood(tx.drv, frames);
    assert.ok(
      results.every((r) => r === 0),
      'every transmission completed OK',
    );
    await waitFor('all frames at the tap', () => (obs.frames.length === n ? true : undefined), 10_000);
    // Bus time: each frame its exact length (stuff bits included), back to back unless the
    // sender ran dry (idle time is counted, never negative: no frame is shortened).
    const first = Math.floor(n / 10);
    let idleNs = 0;
    let gaps = 0;
    for (let i = first + 1; i < n; i++) {
      const d = Number(obs.frames[i]!.timestampNs - obs.frames[i - 1]!.timestampNs) - perFrame;
      assert.ok(d > -1, `frame ${i} ends ${d} ns early`);
      if (d > 1) {
        idleNs += d;
        gaps++;
      }
    }
    const span = Number(obs.frames[n - 1]!.timestampNs - obs.frames[first]!.timestampNs);
    // Against wall-clock time: arrival = ideal end + lateness. Lateness comes and goes with the
    // machine's load; the bus keeps real time when the smallest lateness does not drift. Take
    // the least late frame of the first and of the last eighth of the window.
    const eighth = Math.floor((n - first) / 8);
    const least = (from: number): { at: number; late: number } => {
      let best = { at: 0, late: Number.POSITIVE_INFINITY };
      for (let i = from; i < from + eighth; i++) {
        const late = Number(obs.arrivals[i]! - obs.frames[i]!.timestampNs);
        if (late < best.late) best = { at: Number(obs.frames[i]!.timestampNs), late };
      }
      return best;
    };
    const a = least(first);
    const b = least(n - eighth);
    const drift = (b.late - a.late) / (b.at - a.at);
    // Delivered rate (frames per wall-clock second) over the exact rate: frames x their exact
    // length over the bus time they spanned, scaled by how bus time relates to wall time.
    const ratio = ((n - 1 - first) * perFrame) / (span * (1 + drift));
    const tm = hub.stats().timing!;
    const noStuffing = (47 + 64) / frameBits(one, false, false, { nominal: 0, data: 0, stuff: 0 }).nominal;
    const what = `${n} frames, delivered/exact ${ratio.toFixed(5)} (exact ${(1e9 / perFrame).toFixed(1)} frames/s); bus time drift ${drift.toExponential(2)}; idle ${gaps} gaps ${(idleNs / 1e6).toFixed(2)} ms; lateness p50 ${tm.lateP50Us} p99 ${tm.lateP99Us} max ${tm.lateMaxUs} us; pauses ${tm.pauses}`;
    assert.ok(noStuffing < 0.95, 'the frame really has stuff bits');
    // Busy time: exactly the frames' lengths (no error frames here).
    assert.ok(Math.abs(tm.busySeconds * 1e9 - n * perFrame) < 1e3, 'busy time = frames x exact length');
    assert.equal(tm.pending, 0);
    assert.equal(can.device(0)!.stats.txOk, n);
    return { ratio, what };
  }

  for (const bitrate of [125_000, 500_000, 1_000_000]) {
    test(`saturated at ${bitrate / 1000} kbit/s: delivers the exact rate within 1 %`, async (t) => {
      // Wall-clock rates need the host to keep up: a machine busy enough to starve this process for
      // the whole window makes the frames late (and later and later). Such a window is measured
      // once more on a fresh daemon; a daemon that is too slow fails both.
      let r = await measureRate(t, bitrate);
      t.diagnostic(r.what);
      if (Math.abs(r.ratio - 1) >= 0.01) {
        r = await measureRate(t, bitrate);
        t.diagnostic(`again: ${r.what}`);
      }
      assert.ok(Math.abs(r.ratio - 1) < 0.01, `delivered/exact rate ${r.ratio}`);
    });
  }

  test('two senders: the lower identifier wins every arbitration while both have frames', async (t) => {
    const bitrate = 125_000;
    const { can, paths } = startTestDaemon(t, { sockets: 2, timing: { default: { bitrate } } });
    const obs = tap(can.hubFor(0));
    const a = await startDriver(t, paths[0]!, { queueSize: 1024, timeoutMs: 20_000 });
    const b = await startDriver(t, paths[1]!, { queueSize: 1024, timeoutMs: 20_000 });
    assert.equal(await a.drv.startController(), 0);
    assert.equal(await b.drv.startController(), 0);
    const lo = Array.from({ length: 300 }, (_, i) => ({ id: 0x300, data: [i & 0xff] }));
    const hi = Array.from({ length: 300 }, (_, i) => ({ id: 0x100, data: [i & 0xff] }));
    await Promise.all([flood(a.drv, lo), flood(b.drv, hi)]);
    const ids = obs.frames.map((f) => f.id);
    assert.equal(ids.length, 600);
    const firstHi = ids.indexOf(0x100);
    const lastHi = ids.lastIndexOf(0x100);
    assert.ok(firstHi < 10, `0x100 starts at once (${firstHi} frames of 0x300 before it)`);
    assert.equal(lastHi - firstHi + 1, 300, '0x300 never got the bus while 0x100 had frames waiting');
    assert.ok(can.hubFor(0).stats().timing!.arbitrationLost >= 250);
  });

  test('a mismatched guest goes error-passive, then bus-off; the guest sees BUSOFF; a restart recovers', async (t) => {
    const { can, paths } = startTestDaemon(t, { sockets: 2, timing: { default: { bitrate: 500_000 } } });
    const hub = can.hubFor(0);
    const obs = tap(hub);
    const bad = await startDriver(t, paths[0]!);
    const good = await startDriver(t, paths[1]!);
    const fault = hub.injectFault('guest0', { kind: 'bitrate-mismatch' });
    assert.equal(await bad.drv.startController(), 0);
    assert.equal(await good.drv.startController(), 0);
    // The bad guest's frame is destroyed 32 times (TEC +8 each): bus-off, and its request fails.
    assert.equal(await bad.drv.send({ id: 0x10, data: [1] }), 1, 'NOT_OK at bus-off');
    assert.equal(await bad.drv.readStatus(), 1, 'VIRTIO_CAN_S_CTRL_BUSOFF');
    const dev = can.device(0)!;
    assert.deepEqual([dev.controllerState, dev.stats.busOff], ['stopped', 1]);
    const mine = obs.errors.filter((e) => e.origin === dev.port.id);
    const passive = mine.findIndex(
      (e) => (e.classBits & CanErr.CRTL) !== 0 && e.data[1] === CanErr.CRTL_TX_PASSIVE,
    );
    const off = mine.findIndex((e) => e.classBits === CanErr.BUSOFF);
    assert.ok(passive >= 0 && off > passive, 'error-passive reported, then bus-off');
    assert.equal(mine[passive]!.classBits & CanErr.CNT, CanErr.CNT);
    assert.equal(mine.filter((e) => (e.classBits & CanErr.BUSERROR) !== 0).length, 32);
    // Meanwhile the other guest carries on.
    assert.equal(await good.drv.send({ id: 0x20, data: [2] }), 0);
    // The fault goes away; the guest restarts its controller (ip link set down/up): back on the bus.
    assert.equal(hub.clearFault(fault), true);
    assert.equal(await bad.drv.stopController(), 0);
    assert.equal(await bad.drv.startController(), 0);
    assert.equal(await bad.drv.readStatus(), 0);
    assert.deepEqual([dev.port.busState, dev.port.tec, dev.port.rec], ['error-active', 0, 0]);
    assert.equal(await bad.drv.send({ id: 0x11, data: [3] }), 0);
    assert.deepEqual(
      obs.frames.map((f) => f.id),
      [0x20, 0x11],
    );
    assert.ok(
      mine.length > 0 &&
        obs.errors.some((e) => e.classBits === CanErr.RESTARTED || (e.classBits & CanErr.RESTARTED) !== 0),
    );
  });

  test('a lone guest gets no acknowledgement: error-passive, its frame waits; a second guest acks it', async (t) => {
    const { can, paths } = startTestDaemon(t, { sockets: 2, timing: { default: { bitrate: 1_000_000 } } });
    const a = await startDriver(t, paths[0]!, { timeoutMs: 10_000 });
    assert.equal(await a.drv.startController(), 0);
    const pending = a.drv.send({ id: 0x33, data: [1, 2] });
    const dev = can.device(0)!;
    await waitFor('error-passive', () => (dev.port.busState === 'error-passive' ? true : undefined));
    await sleep(50);
    assert.equal(dev.port.tec, 128, 'ACK errors no longer count once passive');
    const b = await startDriver(t, paths[1]!);
    assert.equal(await b.drv.startController(), 0);
    assert.equal(await pending, 0, 'acknowledged once another node is on the bus');
    assert.equal((await b.drv.waitFrames(1))[0]!.id, 0x33);
    assert.equal(dev.port.tec, 127);
  });

  test('delay and drop faults on a timed bus; stats lines carry the timing figures', async (t) => {
    const { can, paths } = startTestDaemon(t, {
      sockets: 1,
      timing: { default: { bitrate: 500_000, ack: 'always' } },
      faults: [{ bus: 'default', port: 'guest0', fault: { kind: 'delay', ms: 30 } }],
    });
    const obs = tap(can.hubFor(0));
    const a = await startDriver(t, paths[0]!);
    assert.equal(await a.drv.startController(), 0);
    const t0 = process.hrtime.bigint();
    assert.equal(await a.drv.send({ id: 0x44 }), 0);
    const ms = Number(obs.arrivals[0]! - t0) / 1e6;
    assert.ok(ms >= 30 && ms < 1000, `delayed ${ms} ms`);
    can.hubFor(0).injectFault('guest0', { kind: 'drop', ratio: 0.5 });
    can.hubFor(0).clearFaults('guest0');
    const b = can.hubFor(0).stats();
    assert.equal(b.faults, 0);
    assert.equal(b.timing!.bitrate, 500_000);
  });

  test('a bus-off fault from the start: the guest goes bus-off at its first frame, again after a restart, until cleared', async (t) => {
    const { can, paths } = startTestDaemon(t, {
      sockets: 1,
      faults: [{ bus: 'default', port: 'guest0', fault: { kind: 'bus-state', state: 'bus-off' } }],
    });
    const obs = tap(can.hubFor(0));
    const a = await startDriver(t, paths[0]!);
    assert.equal(await a.drv.startController(), 0);
    assert.equal(await a.drv.send({ id: 0x55 }), 1, 'refused: bus-off');
    assert.equal(await a.drv.readStatus(), 1);
    assert.equal(await a.drv.stopController(), 0);
    assert.equal(await a.drv.startController(), 0);
    assert.equal(await a.drv.readStatus(), 0, 'restarted');
    assert.equal(await a.drv.send({ id: 0x56 }), 1, 'bus-off again while the fault holds');
    const [f] = can.hubFor(0).faults();
    assert.equal(f!.hits, 2);
    assert.equal(can.hubFor(0).clearFaults(), 1);
    assert.equal(await a.drv.stopController(), 0);
    assert.equal(await a.drv.startController(), 0);
    assert.equal(await a.drv.send({ id: 0x57 }), 0);
    assert.deepEqual(
      obs.frames.map((x) => x.id),
      [0x57],
    );
  });
});
