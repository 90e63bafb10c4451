/**
 * Phase lat: guest -> guest latency through the device and through the socketpair relay baseline,
 * one frame in flight and paced at a share of the best tp rate (the baseline at the same rate).
 */
import { sleep } from '../lib/children.js';
import { type Ctx, FRAMES, log, measured } from '../lib/context.js';
import type { DaemonProcess } from '../lib/daemon-process.js';
import { flow } from '../lib/flow.js';
import { cpuShares, snapshot } from '../lib/harness.js';
import type { LatencySummary, PacedResult } from '../lib/latency.js';
import { spawnWithSockets, startBaselineRelay } from '../lib/relay.js';
import type { LatencyResult, Results } from '../lib/results.js';
import { fixed, int, pct, table } from '../lib/table.js';
import type { WorkerClient } from '../lib/worker-client.js';

type LatPath = LatencyResult['path'];

/** The best classic-8 flood delivered rate with LATE_TX_ACK (measured now if tp did not run). */
async function latencyRate(ctx: Ctx, res: Results): Promise<number> {
  let best = Math.max(
    0,
    ...res.tp
      .filter((r) => r.mode === 'flood' && r.frame === 'classic8' && r.lateTxAck)
      .map((r) => r.deliveredPerS),
  );
  if (best === 0) {
    log('lat: no tp figures; calibrating with classic8 / 64 per kick');
    const r = await flow(ctx, {
      mode: 'flood',
      frame: 'classic8',
      batch: 64,
      lateTxAck: true,
      senderQueue: ctx.cfg.queueSize,
      receiverQueue: ctx.cfg.queueSize,
      measureMs: 1500,
      label: 'lat-calibrate',
    });
    best = r.deliveredPerS;
    res.notes.push(`latency rate calibrated separately: ${best} frames/s delivered (classic8, 64 per kick)`);
  }
  return best;
}

const perFrameLimit = (n: number, rate: number): number => Math.ceil((n / rate) * 1000) + 30_000;

export async function measureLat(ctx: Ctx, res: Results): Promise<void> {
  const { latCount } = ctx.cfg;
  log(`lat: device, one frame in flight, ${latCount} frames`);
  res.latency.push(await measured(ctx, 'lat device one-in-flight', () => ping(ctx, 'device')));
  log(`lat: baseline, one frame in flight, ${latCount} frames`);
  res.latency.push(await measured(ctx, 'lat baseline one-in-flight', () => ping(ctx, 'baseline')));

  const maxRate = await latencyRate(ctx, res);
  for (const fraction of ctx.cfg.pacedFractions) {
    const rate = Math.max(100, Math.round(maxRate * fraction));
    const counts = pacedCounts(ctx, rate);
    const what = `paced at ${rate} frames/s (${fraction * 100}% of max), ${counts.count} frames`;
    log(`lat: device, ${what}`);
    const dev = await measured(ctx, `lat device ${what}`, () => paced(ctx, 'device', rate, fraction, counts));
    if (dev.lost > 0) {
      res.notes.push(
        `latency paced ${fraction * 100}% (device): ${dev.lost} of ${dev.paced?.sent} frames never reached the receiver: its backlog overflowed (the receiving process did not re-post RX buffers in time)`,
      );
    }
    res.latency.push(dev);
    log(`lat: baseline, ${what}`);
    res.latency.push(
      await measured(ctx, `lat baseline ${what}`, () => paced(ctx, 'baseline', rate, fraction, counts)),
    );
  }
}

/**
 * What a latency measurement runs against: the device (a fresh daemon and two guests) or the
 * baseline (relay processes over socketpairs). `procs` are the processes whose CPU is measured;
 * `close()` ends everything the set-up started.
 */
interface LatTarget {
  daemon: DaemonProcess | null;
  procs: WorkerClient[];
  close(): Promise<void>;
}

interface PingTarget extends LatTarget {
  pingpong(
    p: { count: number; warmup: number; timeoutMs: number },
    callMs: number,
  ): Promise<LatencySummary & { seconds: number }>;
}

interface PacedTarget extends LatTarget {
  send(p: { rate: number; count: number; maxSeconds: number }, callMs: number): Promise<PacedResult>;
  /** Frames the receiver has got so far. */
  received(): Promise<number>;
  /** The receiver's latency summary (device: also stops the recording). */
  summary(): Promise<LatencySummary & { received: number }>;
}

/**
 * The device with its two guests connected, the sender in load process A, the receiver in `recv`
 * (A for one frame in flight, B for paced). On a set-up failure it cleans up itself.
 */
async function deviceTarget(ctx: Ctx, label: string, recv: WorkerClient): Promise<LatTarget> {
  const d = await ctx.daemon(2, label);
  const close = async (): Promise<void> => {
    await ctx.closeGuests();
    await ctx.stopDaemon(d);
  };
  try {
    await ctx.a.call('connect', {
      key: 's',
      path: d.path(0),
      queueSize: ctx.cfg.queueSize,
      lateTxAck: true,
      canId: 0x100,
    });
    await recv.call('connect', {
      key: 'r',
      path: d.path(1),
      queueSize: ctx.cfg.queueSize,
      lateTxAck: true,
      canId: 0x200,
    });
  } catch (err) {
    await close();
    throw err;
  }
  const procs = recv === ctx.a ? [ctx.a] : [ctx.a, recv];
  return { daemon: d, procs, close };
}

/** Device: both guests in one load process (the sender's TX interrupts off). */
async function pingDeviceTarget(ctx: Ctx): Promise<PingTarget> {
  const t = await deviceTarget(ctx, 'lat-pingpong', ctx.a);
  return {
    ...t,
    pingpong: (p, callMs) => ctx.a.call('pingpong', { sender: 's', receiver: 'r', ...p }, callMs),
  };
}

/** Baseline: pinger -> relay -> pinger over two socketpairs. */
async function pingBaselineTarget(ctx: Ctx): Promise<PingTarget> {
  const [a0, a1] = ctx.native.socketpair();
  const [b0, b1] = ctx.native.socketpair();
  const bp = await spawnWithSockets(ctx, [
    { name: 'blRelay', fds: [a1, b0] },
    { name: 'blPinger', fds: [a0, b1] },
  ]);
  const [rly, png] = bp.procs as [WorkerClient, WorkerClient];
  try {
    await rly.call('sock-relay-start', { inFd: 4, outFd: 5, ack: false });
  } catch (err) {
    await bp.stop();
    throw err;
  }
  return {
    daemon: null,
    procs: bp.procs,
    close: bp.stop,
    pingpong: (p, callMs) =>
      png.call('sock-pingpong', { outFd: 4, inFd: 5, frame: FRAMES.classic8, ...p }, callMs),
  };
}

/** One frame in flight, through the device or the baseline relay. */
async function ping(ctx: Ctx, path: LatPath): Promise<LatencyResult> {
  const { latCount, latWarmup } = ctx.cfg;
  const t = path === 'device' ? await pingDeviceTarget(ctx) : await pingBaselineTarget(ctx);
  try {
    const s0 = await snapshot(t.daemon, t.procs);
    const limit = perFrameLimit(latCount + latWarmup, 2000);
    const sum = await t.pingpong({ count: latCount, warmup: latWarmup, timeoutMs: limit }, limit + 5000);
    const s1 = await snapshot(t.daemon, t.procs);
    return {
      path,
      mode: 'one-in-flight',
      targetRate: null,
      achievedRate: Math.round((latCount + latWarmup) / sum.seconds),
      summary: sum,
      lost: 0,
      cpu: cpuShares(s0, s1, ctx.cores),
    };
  } finally {
    await t.close();
  }
}

interface PacedCounts {
  count: number;
  warmup: number;
  maxSeconds: number;
}

/**
 * At high rates 100 000 frames last a fraction of a second: run for a few seconds at least, and
 * drop the first 0.3 s (the daemon is a fresh process, its hot paths are not optimised yet).
 */
function pacedCounts(ctx: Ctx, rate: number): PacedCounts {
  const count = Math.max(ctx.cfg.latCount, Math.round(rate * ctx.cfg.pacedSeconds));
  const warmup = Math.max(ctx.cfg.latWarmup, Math.round(rate * 0.3));
  return { count, warmup, maxSeconds: Math.max(10, (3 * (count + warmup)) / rate) };
}

/** Device, paced: sender guest in load process A, receiver guest in B. */
async function pacedDeviceTarget(ctx: Ctx, c: PacedCounts): Promise<PacedTarget> {
  const t = await deviceTarget(ctx, 'lat-paced', ctx.b);
  try {
    await ctx.b.call('latency-recv-start', { key: 'r', capacity: c.count, warmup: c.warmup });
  } catch (err) {
    await t.close();
    throw err;
  }
  return {
    ...t,
    send: (p, callMs) => ctx.a.call('paced-send', { key: 's', ...p }, callMs),
    received: async () => (await ctx.b.call('counters', {})).guests.r?.received ?? 0,
    summary: () => ctx.b.call('latency-recv-stop', { key: 'r' }),
  };
}

/** Baseline, paced: sender -> relay -> receiver processes. */
async function pacedBaselineTarget(ctx: Ctx, c: PacedCounts): Promise<PacedTarget> {
  const bp = await startBaselineRelay(ctx, { latency: true, capacity: c.count, warmup: c.warmup }, false);
  const [snd, , rcv] = bp.procs as [WorkerClient, WorkerClient, WorkerClient];
  return {
    daemon: null,
    procs: bp.procs,
    close: bp.stop,
    send: (p, callMs) => snd.call('sock-paced-send', { fd: 4, frame: FRAMES.classic8, ...p }, callMs),
    received: async () => (await rcv.call('sock-latency', {})).received,
    summary: () => rcv.call('sock-latency', {}),
  };
}

/** Paced at `rate`, through the device or the baseline relay. */
async function paced(
  ctx: Ctx,
  path: LatPath,
  rate: number,
  fraction: number,
  c: PacedCounts,
): Promise<LatencyResult> {
  const t = path === 'device' ? await pacedDeviceTarget(ctx, c) : await pacedBaselineTarget(ctx, c);
  try {
    const s0 = await snapshot(t.daemon, t.procs);
    const sent = await t.send(
      { rate, count: c.count + c.warmup, maxSeconds: c.maxSeconds },
      c.maxSeconds * 1000 + 15_000,
    );
    await settle(t.received, sent.sent);
    const s1 = await snapshot(t.daemon, t.procs);
    const sum = await t.summary();
    return {
      path,
      mode: 'paced',
      loadFraction: fraction,
      targetRate: rate,
      achievedRate: Math.round(sent.achievedRate),
      summary: sum,
      paced: sent,
      received: sum.received,
      lost: sent.sent - sum.received,
      cpu: cpuShares(s0, s1, ctx.cores),
    };
  } finally {
    await t.close();
  }
}

/** Polls `count()` until it reaches `target` or stops moving for 200 ms (frames lost on the way). */
async function settle(count: () => Promise<number>, target: number): Promise<void> {
  let last = -1;
  let since = Date.now();
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const n = await count();
    if (n >= target) return;
    if (n !== last) {
      last = n;
      since = Date.now();
    } else if (Date.now() - since > 200) return;
    await sleep(10);
  }
}

/** Table 3 and the paced senders' burst line. */
export function reportLat(res: Results, out: string[]): void {
  if (res.latency.length > 0) {
    const baseOf = (l: LatencyResult): LatencyResult | undefined =>
      res.latency.find(
        (x) => x.path === 'baseline' && x.mode === l.mode && x.loadFraction === l.loadFraction,
      );
    out.push(
      table(
        '3. guest -> guest latency (classic 8-byte frames, hrtime stamp in the payload, us)',
        [
          'mode',
          'path',
          'rate',
          'achieved',
          'n',
          'lost',
          'median',
          'p90',
          'p99',
          'p99.9',
          'max',
          'med/base',
          'daemon',
        ],
        res.latency.map((l) => {
          const b = l.path === 'device' ? baseOf(l) : undefined;
          return [
            l.mode,
            l.path,
            l.targetRate === null ? '1 in flight' : `${int(l.targetRate)} (${(l.loadFraction ?? 0) * 100}%)`,
            int(l.achievedRate),
            int(l.summary.n),
            int(l.lost),
            fixed(l.summary.medianUs),
            fixed(l.summary.p90Us),
            fixed(l.summary.p99Us),
            fixed(l.summary.p999Us),
            fixed(l.summary.maxUs),
            b ? fixed(l.summary.medianUs / b.summary.medianUs, 2) : '-',
            pct(l.cpu.perRole.daemon ?? l.cpu.perRole.blRelay),
          ];
        }),
        [
          'device: sender guest -> daemon -> receiver guest; baseline: sender -> relay process -> receiver over',
          'socketpairs. one-in-flight: both guests in one process, the next frame is sent when the previous one',
          'arrived. paced: sender and receiver in separate processes (CLOCK_MONOTONIC is shared), target = the given',
          'share of the best classic8 flood delivered rate of phase 1; the baseline runs at the same rate. lost = sent',
          'but never received (receiver backlog overflow). daemon column: daemon (or relay) CPU.',
        ],
      ),
    );
    const paced = res.latency.filter((l) => l.paced);
    if (paced.length > 0) {
      out.push(
        `  paced sends: ${paced
          .map(
            (l) =>
              `${l.path} ${(l.loadFraction ?? 0) * 100}%: ${int(l.paced!.bursts)} bursts, mean ${fixed(l.paced!.meanBurst, 2)} / max ${l.paced!.maxBurst} frames per burst, ring/socket full ${l.paced!.fullEvents}x`,
          )
          .join('; ')}`,
      );
    }
  }
}
