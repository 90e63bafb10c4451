/**
 * Phase timed: the timed bus (--bitrate). Guests in pairs, each pair on its own bus: a sender that
 * floods (LATE_TX_ACK, so it waits for the bus) and a receiver that drains.
 *   - delivered/exact rate at 125k, 500k, 1M: the bus's busy share over the window (its busy time
 *     is the exact length of the frames it carried, so busy share = delivered rate / exact rate);
 *   - per-frame timing error: the daemon's delivery lateness against each frame's ideal end time
 *     (median, p99, max over the daemon's life);
 *   - idle CPU with guests connected on a timed bus, beside an untimed one;
 *   - 1 Mbit/s buses side by side (2, 4, 8, 16 guests): the most guests one daemon keeps on time
 *     (every bus within 1 % of its exact rate);
 *   - the untimed baseline of the same run: the same flow on an untimed bus.
 */
import { execFileSync } from 'node:child_process';
import { LATENESS_EDGES_US } from '../../src/core/bus/timed-bus.js';
import { sleep } from '../lib/children.js';
import { type Ctx, FRAMES, log, measured, perS, r1 } from '../lib/context.js';
import type { DaemonProcess } from '../lib/daemon-process.js';
import { type CpuShares, cpuShares, guestDelta, saturation, seconds, snapshot } from '../lib/harness.js';
import type { IdleResult, Results } from '../lib/results.js';
import { fixed, int, pct, table } from '../lib/table.js';

export interface TimedFlowResult {
  label: string;
  /** null: the untimed baseline. */
  bitrate: number | null;
  /** The daemon ran with --realtime=10 (its main thread under SCHED_FIFO 10). */
  realtime: boolean;
  /** The daemon held this CPU latency limit (--cpu-latency, us); null: it did not. */
  cpuLatency?: number | null;
  guests: number;
  seconds: number;
  busFramesPerS: number;
  /**
   * Per bus, over the window: busy time / bus time (saturation), bus time / the daemon's clock
   * (keeping real time) and their product, delivered rate / exact rate.
   */
  busyShare: number[];
  busOverClock: number[];
  deliveredOverExact: number[];
  guestReceivedPerS: number;
  lateP50Us: number | null;
  lateP99Us: number | null;
  lateMaxUs: number | null;
  /**
   * The same over the measured window only (after warm-up: from the daemon's cumulative lateness
   * buckets, interpolated within a bucket), and the share of the window's frames less than 100 us late.
   */
  winP50Us: number | null;
  winP99Us: number | null;
  winWithin100: number | null;
  /** Late wake-ups (more than 1 ms) and pauses for inputs, over the daemon's life. */
  behind: number | null;
  pauses: number | null;
  daemonCpuPercent: number;
  daemonUsPerBusFrame: number | null;
  cpu: CpuShares;
  saturated: string;
}

/** A bare timerfd in an otherwise idle Node process: this machine's own wake-up latency. */
export interface TimerProbeResult {
  periodUs: number;
  realtime: boolean;
  /** The probe held this CPU latency limit (/dev/cpu_dma_latency, us); null: it did not. */
  cpuLatency?: number | null;
  wakes: number;
  p50Us: number;
  p99Us: number;
  p999Us: number;
  maxUs: number;
}

export interface TimedResults {
  /** The platform's wake-up latency at the frame periods of 500 kbit/s and 125 kbit/s. */
  probes?: TimerProbeResult[];
  rates: TimedFlowResult[];
  baseline: TimedFlowResult | null;
  idle: { timed: IdleResult; untimed: IdleResult } | null;
  scale: TimedFlowResult[];
  /** Most guests (pairs on 1 Mbit/s buses) with every bus within 1 % of its exact rate. */
  mostOnTimeAt1M: number | null;
  /** Of those, the most whose delivery lateness p99 was also under 1 ms. */
  mostUnder1msAt1M: number | null;
}

const ON_TIME = 0.01;

/** The priority of the rt rows (--realtime=10, what `chrt -f -p 10 PID` gave before the option). */
const RT_PRIORITY = 10;

/** How the daemon of a row runs: normal; --realtime; --realtime and --cpu-latency=0. */
type Rt = 'none' | 'fifo' | 'fifo-lat0';
const RT_ARGS: Record<Rt, string[]> = {
  none: [],
  fifo: [`--realtime=${RT_PRIORITY}`],
  'fifo-lat0': [`--realtime=${RT_PRIORITY}`, '--cpu-latency=0'],
};

async function pairsDaemon(
  ctx: Ctx,
  pairs: number,
  bitrate: number | null,
  label: string,
  rt: Rt = 'none',
): Promise<DaemonProcess> {
  const buses = Array.from({ length: pairs }, (_, i) => `b${i}`);
  const args = ['-d', buses.flatMap((b) => [`virtual:${b}`, `virtual:${b}`]).join(' ')];
  if (bitrate !== null) for (const b of buses) args.push('--bitrate', `${b}=${bitrate}`);
  args.push(...RT_ARGS[rt]);
  return ctx.daemon(2 * pairs, label, [], { args, buses: pairs });
}

async function connectPairs(
  ctx: Ctx,
  d: DaemonProcess,
  pairs: number,
): Promise<{ s: string[]; r: string[] }> {
  const s: string[] = [];
  const r: string[] = [];
  for (let i = 0; i < pairs; i++) {
    const common = { queueSize: ctx.cfg.queueSize, lateTxAck: true };
    await ctx.a.call('connect', { key: `s${i}`, path: d.path(2 * i), canId: 0x100 + i, ...common });
    await ctx.b.call('connect', { key: `r${i}`, path: d.path(2 * i + 1), canId: 0x200 + i, ...common });
    s.push(`s${i}`);
    r.push(`r${i}`);
  }
  return { s, r };
}

async function timedFlow(
  ctx: Ctx,
  bitrate: number | null,
  pairs: number,
  label: string,
  rt: Rt = 'none',
): Promise<TimedFlowResult | null> {
  let d: DaemonProcess;
  try {
    d = await pairsDaemon(ctx, pairs, bitrate, label, rt);
  } catch (err) {
    // --realtime or --cpu-latency refused (no root, CAP_SYS_NICE or RLIMIT_RTPRIO; no
    // /dev/cpu_dma_latency; or a build without the option): the daemon exits at start-up naming
    // the cause. Anything else is a failure of the phase.
    const msg = (err as Error).message;
    const what = /cpu-latency/.test(msg) ? /cpu-latency/ : /realtime/;
    if (rt === 'none' || !what.test(msg)) throw err;
    const why = msg.split('\n').find((l) => what.test(l)) ?? msg;
    log(`timed: the daemon did not start with ${RT_ARGS[rt].join(' ')}: no such rows (${why.trim()})`);
    return null;
  }
  try {
    const keys = await connectPairs(ctx, d, pairs);
    await ctx.b.call('drain-start', { keys: keys.r });
    await ctx.a.call('flood-start', { keys: keys.s, frame: FRAMES.classic8, batch: 16 });
    await sleep(ctx.cfg.warmMs);
    const s0 = await snapshot(d, [ctx.a, ctx.b]);
    await sleep(ctx.cfg.measureMs);
    const s1 = await snapshot(d, [ctx.a, ctx.b]);
    await ctx.a.call('flood-stop', { keys: keys.s }, 20_000);
    const dt = seconds(s0, s1);
    const b0 = s0.daemon!.buses;
    const b1 = s1.daemon!.buses;
    let frames = 0;
    const shares: number[] = [];
    const clocks: number[] = [];
    const products: number[] = [];
    let p50 = 0;
    let p99 = 0;
    let max = 0;
    let behind = 0;
    let pauses = 0;
    let winP50: number | null = null;
    let winP99: number | null = null;
    let within100: number | null = null;
    b1.forEach((b, i) => {
      frames += b.frames - (b0[i]?.frames ?? 0);
      const t0 = b0[i]?.timing;
      if (b.timing === null || t0 === null || t0 === undefined) return;
      const busy = b.timing.busyS - t0.busyS;
      const bus = b.timing.busTimeS - t0.busTimeS;
      const clock = b.timing.clockS - t0.clockS;
      shares.push(busy / bus);
      clocks.push(bus / clock);
      products.push(busy / clock);
      p50 = Math.max(p50, b.timing.lateP50Us);
      p99 = Math.max(p99, b.timing.lateP99Us);
      max = Math.max(max, b.timing.lateMaxUs);
      behind += b.timing.behind;
      pauses += b.timing.pauses;
      const w = windowLateness(t0.lateCount, t0.lateBuckets, b.timing.lateCount, b.timing.lateBuckets);
      if (w !== null) {
        winP50 = Math.max(winP50 ?? 0, w.p50);
        winP99 = Math.max(winP99 ?? 0, w.p99);
        within100 = Math.min(within100 ?? 1, w.within100);
      }
    });
    const timed = bitrate !== null;
    const dCpu = (s1.cpu.daemon ?? 0) - (s0.cpu.daemon ?? 0);
    const cpu = cpuShares(s0, s1, ctx.cores);
    return {
      label,
      bitrate,
      realtime: rt !== 'none',
      cpuLatency: rt === 'fifo-lat0' ? 0 : null,
      guests: 2 * pairs,
      seconds: r1(dt * 1000) / 1000,
      busFramesPerS: perS(frames, dt),
      busyShare: shares.map((x) => Math.round(x * 1e5) / 1e5),
      busOverClock: clocks.map((x) => Math.round(x * 1e5) / 1e5),
      deliveredOverExact: products.map((x) => Math.round(x * 1e5) / 1e5),
      guestReceivedPerS: perS(guestDelta(s0, s1, keys.r, 'received'), dt),
      lateP50Us: timed ? p50 : null,
      lateP99Us: timed ? p99 : null,
      lateMaxUs: timed ? max : null,
      winP50Us: winP50,
      winP99Us: winP99,
      winWithin100: within100,
      behind: timed ? behind : null,
      pauses: timed ? pauses : null,
      daemonCpuPercent: cpu.perRole.daemon ?? Number.NaN,
      daemonUsPerBusFrame: frames > 0 ? r1((dCpu * 1e6) / frames) : null,
      cpu,
      saturated: saturation(cpu, ctx.cores, { daemon: 'daemon', loadA: 'senders', loadB: 'receivers' }),
    };
  } finally {
    await ctx.closeGuests();
    await ctx.stopDaemon(d);
  }
}

/**
 * Lateness quantiles (us) of the frames delivered between two readings of a bus's cumulative
 * buckets, interpolated linearly within a bucket (beyond the last edge: that edge); null when no
 * frame was delivered in between.
 */
export function windowLateness(
  count0: number,
  buckets0: readonly number[],
  count1: number,
  buckets1: readonly number[],
): { p50: number; p99: number; within100: number } | null {
  const total = count1 - count0;
  if (total <= 0 || buckets1.length !== LATENESS_EDGES_US.length) return null;
  const cum = LATENESS_EDGES_US.map((_, i) => (buckets1[i] ?? 0) - (buckets0[i] ?? 0));
  const q = (p: number): number => {
    const want = Math.max(1, Math.ceil(p * total));
    let prevEdge = 0;
    let prevCum = 0;
    for (let i = 0; i < cum.length; i++) {
      const c = cum[i]!;
      const edge = LATENESS_EDGES_US[i]!;
      if (c >= want) return Math.round(prevEdge + ((edge - prevEdge) * (want - prevCum)) / (c - prevCum));
      prevEdge = edge;
      prevCum = c;
    }
    return LATENESS_EDGES_US[LATENESS_EDGES_US.length - 1]!;
  };
  const at100 = cum[LATENESS_EDGES_US.indexOf(100)] ?? 0;
  return { p50: q(0.5), p99: q(0.99), within100: Math.round((at100 / total) * 1e4) / 1e4 };
}

async function idle(ctx: Ctx, bitrate: number | null, label: string): Promise<IdleResult> {
  const d = await pairsDaemon(ctx, 1, bitrate, label);
  try {
    const keys = await connectPairs(ctx, d, 1);
    await ctx.b.call('drain-start', { keys: keys.r });
    await sleep(1000);
    const i0 = await snapshot(d, [ctx.a, ctx.b]);
    await sleep(ctx.cfg.idleMs);
    const i1 = await snapshot(d, [ctx.a, ctx.b]);
    const c = cpuShares(i0, i1, ctx.cores);
    return {
      guests: 2,
      seconds: r1(seconds(i0, i1)),
      daemonCpuSeconds: (i1.cpu.daemon ?? 0) - (i0.cpu.daemon ?? 0),
      daemonCpuPercent: c.perRole.daemon ?? Number.NaN,
      loadCpuPercent: r1((c.perRole.loadA ?? 0) + (c.perRole.loadB ?? 0)),
    };
  } finally {
    await ctx.closeGuests();
    await ctx.stopDaemon(d);
  }
}

/**
 * Wakes `wakes` times, `periodUs` apart, from a timerfd armed at absolute deadlines (what the hub's
 * timer does), in a child Node process that does nothing else; lateness of each callback.
 */
function probeTimer(ctx: Ctx, periodUs: number, wakes: number, rt: Rt): TimerProbeResult | null {
  const script = `
    const { native } = await import(${JSON.stringify(ctx.build.addonModule)});
    if (${rt === 'fifo-lat0'}) {
      // Held while this process lives, as the daemon's --cpu-latency=0 does.
      const { openSync, writeSync } = await import('node:fs');
      globalThis.latencyFd = openSync('/dev/cpu_dma_latency', 'r+');
      writeSync(globalThis.latencyFd, new Uint8Array(new Int32Array([0]).buffer));
    }
    const fd = native.timerfdCreate();
    const period = ${periodUs * 1000}, n = ${wakes}, late = new Float64Array(n);
    const now = () => Number(process.hrtime.bigint());
    let i = 0, deadline = now() + period;
    const w = new native.Watcher(fd, () => {
      if (native.timerfdRead(fd) === null) return;
      late[i++] = now() - deadline;
      if (i === n) {
        w.close();
        native.close(fd);
        late.sort();
        const q = (p) => Math.round(late[Math.min(n - 1, Math.floor(p * n))] / 1000);
        console.log(JSON.stringify({ p50Us: q(0.5), p99Us: q(0.99), p999Us: q(0.999), maxUs: Math.round(late[n - 1] / 1000) }));
        return;
      }
      deadline += period;
      native.timerfdArm(fd, deadline);
    });
    native.timerfdArm(fd, deadline);
    w.start(native.READABLE);`;
  const argv = [process.execPath, '--input-type=module', '-e', script];
  try {
    const fifo = rt !== 'none';
    const out = execFileSync(fifo ? 'chrt' : argv[0]!, fifo ? ['-f', '10', ...argv] : argv.slice(1), {
      encoding: 'utf8',
      timeout: 60_000,
    });
    const r = JSON.parse(out.trim().split('\n').pop()!) as Omit<
      TimerProbeResult,
      'periodUs' | 'realtime' | 'wakes'
    >;
    return { periodUs, realtime: fifo, cpuLatency: rt === 'fifo-lat0' ? 0 : null, wakes, ...r };
  } catch (err) {
    log(`timed: timer probe (${periodUs} us, ${probeName(rt)}) failed: ${(err as Error).message}`);
    return null;
  }
}

export async function measureTimed(ctx: Ctx, res: Results): Promise<void> {
  const out: TimedResults = {
    probes: [],
    rates: [],
    baseline: null,
    idle: null,
    scale: [],
    mostOnTimeAt1M: null,
    mostUnder1msAt1M: null,
  };
  res.timed = out;
  for (const periodUs of [250, 1000]) {
    for (const rt of ['none', 'fifo', 'fifo-lat0'] as const) {
      log(`timed: bare timerfd wake-ups every ${periodUs} us, ${probeName(rt)}`);
      await ctx.quietGate(ctx.cfg.gateMs);
      const r = probeTimer(ctx, periodUs, ctx.cfg.quick ? 2000 : 10_000, rt);
      if (r !== null) out.probes!.push(r);
    }
  }
  log('timed: untimed baseline (one pair)');
  out.baseline = await measuredOrNull(ctx, 'timed baseline', () => timedFlow(ctx, null, 1, 'untimed'));
  for (const bitrate of [125_000, 500_000, 1_000_000]) {
    log(`timed: one pair at ${bitrate / 1000} kbit/s`);
    const r = await measuredOrNull(ctx, `timed ${bitrate}`, () =>
      timedFlow(ctx, bitrate, 1, `timed-${bitrate}`),
    );
    if (r !== null) out.rates.push(r);
  }
  // The same with the daemon under a real-time scheduling class: how much of the lateness is the
  // daemon waiting for a core the load processes (and the rest of the machine) hold; then also
  // with idle CPUs kept awake: how much is the wake-up of a sleeping CPU.
  for (const rt of ['fifo', 'fifo-lat0'] as const) {
    for (const bitrate of [500_000, 1_000_000]) {
      log(`timed: one pair at ${bitrate / 1000} kbit/s, daemon with ${RT_ARGS[rt].join(' ')}`);
      const r = await measuredOrNull(ctx, `timed ${bitrate} ${rt}`, () =>
        timedFlow(ctx, bitrate, 1, `timed-${bitrate}-${rt}`, rt),
      );
      if (r === null) break;
      out.rates.push(r);
    }
  }
  log(`timed: idle, ${ctx.cfg.idleMs / 1000} s each, timed (500k) and untimed`);
  out.idle = {
    timed: await idle(ctx, 500_000, 'timed-idle'),
    untimed: await idle(ctx, null, 'untimed-idle'),
  };
  for (const pairs of ctx.cfg.quick ? [1, 2, 4] : [1, 2, 4, 8, 16]) {
    log(`timed: ${2 * pairs} guests on ${pairs} bus(es) at 1 Mbit/s`);
    const r = await measuredOrNull(ctx, `timed scale ${pairs}`, () =>
      timedFlow(ctx, 1_000_000, pairs, `timed-1M-x${pairs}`),
    );
    if (r === null) break;
    out.scale.push(r);
    if (!r.deliveredOverExact.every((x) => Math.abs(x - 1) <= ON_TIME)) break; // more will not do better
    out.mostOnTimeAt1M = r.guests;
    if ((r.lateP99Us ?? Number.POSITIVE_INFINITY) < 1000) out.mostUnder1msAt1M = r.guests;
  }
}

function probeName(rt: Rt): string {
  return rt === 'none'
    ? 'normal priority'
    : rt === 'fifo'
      ? 'chrt -f 10'
      : 'chrt -f 10, CPU latency held at 0';
}

/** `measured` for flows that may be skipped (null). */
async function measuredOrNull(
  ctx: Ctx,
  label: string,
  fn: () => Promise<TimedFlowResult | null>,
): Promise<TimedFlowResult | null> {
  let skipped = false;
  const r = await measured(ctx, label, async () => {
    const x = await fn();
    if (x !== null) return x;
    skipped = true;
    return { cpu: { perRole: {}, machine: 0, other: 0 } } as unknown as TimedFlowResult;
  });
  return skipped ? null : r;
}

/** Tables 8, 9, 10. */
export function reportTimed(res: Results, out: string[]): void {
  const t = res.timed;
  if (t === null || t === undefined) return;
  const row = (r: TimedFlowResult) => [
    r.bitrate === null
      ? 'untimed'
      : `${r.bitrate / 1000}k${r.realtime ? ' rt' : ''}${r.cpuLatency === 0 ? '+lat0' : ''}`,
    r.guests,
    int(r.busFramesPerS),
    r.busyShare.length === 0 ? '-' : fixed(Math.min(...r.busyShare), 4),
    r.busOverClock.length === 0 ? '-' : fixed(Math.min(...r.busOverClock), 4),
    r.deliveredOverExact.length === 0 ? '-' : fixed(Math.min(...r.deliveredOverExact), 4),
    int(r.guestReceivedPerS),
    r.lateP50Us ?? '-',
    r.lateP99Us ?? '-',
    r.lateMaxUs ?? '-',
    r.winP50Us ?? '-',
    r.winP99Us ?? '-',
    r.winWithin100 === null || r.winWithin100 === undefined ? '-' : `${fixed(100 * r.winWithin100, 1)}%`,
    r.behind ?? '-',
    pct(r.daemonCpuPercent),
    fixed(r.daemonUsPerBusFrame, 1),
    pct(r.cpu.other),
    r.saturated,
  ];
  const head = [
    'bus',
    'guests',
    'bus fr/s',
    'busy',
    'bus/clock',
    'deliv/exact',
    'guest rx/s',
    'late p50 us',
    'p99 us',
    'max us',
    'win p50',
    'win p99',
    '<100us',
    'late wakes',
    'daemon',
    'us/frame',
    'other',
    'saturated',
  ];
  out.push(
    table(
      '8. timed bus (--bitrate): a flooding guest (LATE_TX_ACK) and a receiving guest per bus; the untimed baseline of this run first',
      head,
      [...(t.baseline === null ? [] : [row(t.baseline)]), ...t.rates.map(row)],
      [
        'busy = busy time / bus time (saturation); bus/clock = bus time / the daemon clock (keeping real time; the',
        'lateness at the two stats dumps moves it by (late1 - late0) / window); deliv/exact = their product =',
        'delivered rate / exact rate (goal within 1 %). Worst bus shown.',
        'late = delivery time - ideal end time of each frame, in the daemon, over its life (goal p99 < 100 us at 500k);',
        'win = the same over the measured window only (after warm-up); <100us = share of its frames less than 100 us late.',
        `rt: the daemon with --realtime=${RT_PRIORITY} (main thread under SCHED_FIFO ${RT_PRIORITY}, as chrt -f -p ${RT_PRIORITY} gives), so it does not`,
        'wait for a core the load processes hold. +lat0: also --cpu-latency=0 (idle CPUs poll instead of sleeping, so',
        'a wake-up does not wait for a halted vCPU).',
      ],
    ),
  );
  if (t.probes !== undefined && t.probes.length > 0) {
    out.push(
      table(
        "8a. this machine's own wake-up latency: a bare timerfd armed at absolute deadlines in an idle Node process",
        ['period', 'priority', 'wakes', 'p50 us', 'p99 us', 'p99.9 us', 'max us'],
        t.probes.map((p) => [
          `${p.periodUs} us`,
          p.cpuLatency === 0 ? 'chrt -f 10, latency 0' : p.realtime ? 'chrt -f 10' : 'normal',
          int(p.wakes),
          p.p50Us,
          p.p99Us,
          p.p999Us,
          p.maxUs,
        ]),
        [
          'The floor under the timed bus: 250 us is about one classic frame at 500 kbit/s, 1000 us at 125 kbit/s.',
          'In a VM an idle vCPU halts; waking it goes through the host, and the longer the gap the slower the wake-up.',
          'latency 0: the probe holds /dev/cpu_dma_latency at 0 (what --cpu-latency=0 does): idle CPUs poll.',
        ],
      ),
    );
  }
  if (t.idle !== null) {
    out.push(
      table(
        '9. idle CPU: 2 guests connected, nobody sends',
        ['bus', 'seconds', 'daemon CPU s', 'daemon', 'load procs'],
        [
          [
            'timed 500k',
            t.idle.timed.seconds,
            fixed(t.idle.timed.daemonCpuSeconds, 3),
            fixed(t.idle.timed.daemonCpuPercent, 2),
            fixed(t.idle.timed.loadCpuPercent, 1),
          ],
          [
            'untimed',
            t.idle.untimed.seconds,
            fixed(t.idle.untimed.daemonCpuSeconds, 3),
            fixed(t.idle.untimed.daemonCpuPercent, 2),
            fixed(t.idle.untimed.loadCpuPercent, 1),
          ],
        ],
      ),
    );
  }
  if (t.scale.length > 0) {
    out.push(
      table('10. 1 Mbit/s buses side by side (a sender and a receiver guest each)', head, t.scale.map(row), [
        `most guests kept at the exact rate (every bus within 1 %): ${t.mostOnTimeAt1M ?? 'none'};`,
        `of those, with delivery lateness p99 under 1 ms: ${t.mostUnder1msAt1M ?? 'none'}.`,
      ]),
    );
  }
}
