// A real guest flooding a timed bus (cangen -g 0): every frame is tapped on the bus with its
// arrival time, and the delivered rate is set against the bus's exact rate. Shared by the timed-bus
// tests (normal priority) and the real-time test (the daemon's thread under SCHED_FIFO).
import type { TestContext } from 'node:test';
import type { CanFrame } from '../../../src/core/bus/can-frame.js';
import { frameBits } from '../../../src/core/bus/frame-timing.js';
import type { HubPort } from '../../../src/core/bus/hub.js';
import { type E2eRun, frameOf, parseGuestStats } from './can-scenarios.js';
import type { RunningGuest } from './guest.js';

export type FloodFigures = {
  bitrate: number;
  frameBits: number;
  exactFramesPerSecond: number;
  /** Bus time spanned by the frames against wall-clock time: 1 = the exact rate. */
  deliveredOverExact: number;
  busTimeDrift: number;
  idleNs: number;
  /** Idle periods between two frames of the measured span: how many, the longest (us). */
  idleGaps: number;
  longestIdleUs: number;
  lateP50Us: number;
  lateP99Us: number;
  guest: Record<string, number>;
};

/**
 * Starts a guest that sends `count` frames of 100#0000000000000000 back to back on the run's
 * daemon (started by the caller, socket 0 on a timed bus at `bitrate`), waits for it, checks
 * every frame reached the bus and returns the figures (saved with the run, and a diagnostic).
 * `started` is called with the guest once QEMU runs, before it floods.
 */
export async function floodTimedBus(
  run: E2eRun,
  t: TestContext,
  bitrate: number,
  count: number,
  started: (g: RunningGuest) => void = () => {},
): Promise<FloodFigures> {
  const hub = run.can.hubFor(0);
  const frames: CanFrame[] = [];
  const arrivals: bigint[] = [];
  const tap: HubPort = hub.attach(
    {
      onFramesAvailable() {
        const now = process.hrtime.bigint();
        for (let f = tap.take(); f !== undefined; f = tap.take()) {
          frames.push(f);
          arrivals.push(now);
        }
      },
    },
    { name: 'tap' },
  );
  const g = run.startGuest({
    name: 'flooder',
    scenario: `
ip link set can0 up || fail "ip link set can0 up"
signal ready
await_host go 120
cangen can0 -g 0 -p 10 -I 100 -L 8 -D 0000000000000000 -n ${count} || fail "cangen exit status $?"
wait_stat tx_packets ${count} 60
save_stats stats.txt
`,
  });
  await run.waitFor(g, 'ready', 120_000);
  started(g);
  run.tell(g, 'go');
  const r = await g.done;
  run.guestFinished(r);
  run.equal(frames.length, count, 'every frame reached the bus');
  const one = frameOf('100#0000000000000000');
  const b = frameBits(one, false, false, { nominal: 0, data: 0, stuff: 0 });
  const perFrame = (b.nominal * 1e9) / bitrate;
  // As in the integration test: bus time spanned by the frames (idle time included) against
  // wall-clock time (least-late frame of the first and last eighths), from 10 % in.
  const first = Math.floor(count / 10);
  const eighth = Math.floor((count - first) / 8);
  const least = (from: number) => {
    let best = { at: 0, late: Number.POSITIVE_INFINITY };
    for (let i = from; i < from + eighth; i++) {
      const late = Number(arrivals[i]! - frames[i]!.timestampNs);
      if (late < best.late) best = { at: Number(frames[i]!.timestampNs), late };
    }
    return best;
  };
  const a = least(first);
  const z = least(count - eighth);
  const drift = (z.late - a.late) / (z.at - a.at);
  const span = Number(frames[count - 1]!.timestampNs - frames[first]!.timestampNs);
  const ratio = ((count - 1 - first) * perFrame) / (span * (1 + drift));
  let idleGaps = 0;
  let longestIdle = 0;
  for (let i = first + 1; i < count; i++) {
    const idle = Number(frames[i]!.timestampNs - frames[i - 1]!.timestampNs) - perFrame;
    if (idle > 1000) {
      idleGaps++;
      longestIdle = Math.max(longestIdle, idle);
    }
  }
  const timing = hub.stats().timing!;
  const figures: FloodFigures = {
    bitrate,
    frameBits: b.nominal,
    exactFramesPerSecond: 1e9 / perFrame,
    deliveredOverExact: ratio,
    busTimeDrift: drift,
    idleNs: span - (count - 1 - first) * perFrame,
    idleGaps,
    longestIdleUs: Math.round(longestIdle / 1000),
    lateP50Us: timing.lateP50Us,
    lateP99Us: timing.lateP99Us,
    guest: parseGuestStats(r.files('stats.txt')),
  };
  run.saveResults(figures);
  t.diagnostic(JSON.stringify(figures));
  return figures;
}
