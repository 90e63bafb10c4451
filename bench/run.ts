/**
 * vhost-device-can and vhost-device-console benchmarks (not tests):
 * `npm run bench [-- --quick] [--only=LIST] [--tsx]`.
 *
 * The daemon runs in its own process (compiled dist/cli/vhost-device-can.js, rebuilt when src/ is
 * newer), driven over real vhost-user sockets, memfd guest RAM and eventfds by the TypeScript
 * front-end running in two load processes (bench/lib/worker.ts), so that neither side shares an
 * event loop with the other. Phases:
 *   tp     guest -> bus throughput: 8-byte classic / 64-byte FD, 1/16/64 frames per kick, with and
 *          without LATE_TX_ACK; a second guest drains its RX ring. Baseline: the same frames through
 *          a do-nothing relay process over socketpairs.
 *   rx     bus -> guest throughput against the receiver's RX ring size.
 *   lat    guest -> guest latency, one frame in flight and paced at 50% of the tp maximum, with the
 *          socket-relay baseline at the same rate.
 *   scale  1, 4, 16 guests on one bus, all sending and receiving; daemon CPU per frame; the 16-guest
 *          daemon also gives the idle CPU and the memory figures.
 *   prof   the tp 8-byte / 64-per-kick scenario with the daemon under --cpu-prof; top self time.
 *   con    vhost-device-console (bench/lib/console-bench.ts): guest -> TCP client and client -> guest
 *          throughput, keystroke echo round trip, each beside a Unix<->TCP relay process; idle CPU
 *          with 16 guests.
 * Results: a table on stdout, JSON in bench/results/<timestamp>.json and bench/results/latest.json.
 */
import { mkdirSync, readdirSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import type { NativeAddon } from '../src/node/native/addon.js';
import { type BuildInfo, loadNative, prepareBuild, REPO_ROOT } from './lib/build.js';
import { sleep, withTimeout } from './lib/children.js';
import {
  type ConDirection,
  type ConFlowResult,
  type ConIdleResult,
  type ConLatencyResult,
  type ConPortKind,
  type ConSettings,
  conFlow,
  conIdle,
  conPing,
} from './lib/console-bench.js';
import { DaemonProcess } from './lib/daemon-process.js';
import {
  type CpuShares,
  cpuShares,
  guestDelta,
  saturation,
  seconds,
  snapshot,
  socketDelta,
} from './lib/harness.js';
import type { LatencySummary, PacedResult } from './lib/latency.js';
import { cpuCount, loadAverage, machineCpu, type ProcMemory } from './lib/proc.js';
import { type ProfileSummary, summarizeProfile } from './lib/profile.js';
import type { FrameSpec } from './lib/protocol.js';
import { type Cell, fixed, int, pct, table } from './lib/table.js';
import { WorkerClient } from './lib/worker-client.js';
import { writeJson } from './lib/write-json.js';

// ---- configuration --------------------------------------------------------------------------------

const PHASES = ['tp', 'rx', 'lat', 'scale', 'prof', 'con'] as const;
type Phase = (typeof PHASES)[number];

interface Config {
  quick: boolean;
  phases: Set<Phase>;
  forceTsx: boolean;
  warmMs: number;
  measureMs: number;
  latCount: number;
  latWarmup: number;
  pacedSeconds: number;
  pacedFractions: number[];
  idleMs: number;
  memFrames: number;
  profMs: number;
  queueSize: number;
  rxSizes: number[];
  rxFrames: FrameName[];
  scaleGuests: number[];
  /** The console phase's settings. */
  con: ConSettings;
  /** Time limit of each phase. */
  phaseLimitMs: Record<Phase, number>;
  /** Longest wait for a quiet machine before one measurement / before a phase. */
  gateMs: number;
  phaseGateMs: number;
}

const FRAMES = {
  classic8: { len: 8, fd: false },
  fd64: { len: 64, fd: true },
} as const satisfies Record<string, FrameSpec>;
type FrameName = keyof typeof FRAMES;
const BATCHES = [1, 16, 64];

function parseConfig(argv: readonly string[]): Config | null {
  let quick = false;
  let forceTsx = false;
  let phases = new Set<Phase>(PHASES);
  for (const a of argv) {
    if (a === '--quick') quick = true;
    else if (a === '--tsx') forceTsx = true;
    else if (a.startsWith('--only=')) {
      const list = a.slice(7).split(',').filter(Boolean);
      const bad = list.filter((p) => !(PHASES as readonly string[]).includes(p));
      if (bad.length > 0)
        throw new Error(`--only: unknown phase(s) ${bad.join(', ')} (known: ${PHASES.join(', ')})`);
      phases = new Set(list as Phase[]);
    } else if (a === '--help' || a === '-h') return null;
    else throw new Error(`unknown option ${a}`);
  }
  return {
    quick,
    phases,
    forceTsx,
    warmMs: quick ? 250 : 500,
    measureMs: quick ? 800 : 3000,
    latCount: quick ? 20_000 : 100_000,
    latWarmup: quick ? 500 : 2000,
    pacedSeconds: quick ? 1 : 3,
    pacedFractions: quick ? [0.5] : [0.1, 0.5],
    idleMs: quick ? 3000 : 10_000,
    memFrames: quick ? 200_000 : 1_000_000,
    profMs: quick ? 1500 : 4000,
    queueSize: 256,
    rxSizes: quick ? [64, 1024] : [64, 256, 1024],
    rxFrames: quick ? ['classic8'] : ['classic8', 'fd64'],
    scaleGuests: [1, 4, 16],
    con: {
      warmMs: quick ? 250 : 500,
      measureMs: quick ? 1000 : 3000,
      queueSize: 256,
      writeChunk: 32 * 1024,
      clientChunk: 64 * 1024,
      pingCount: quick ? 3000 : 10_000,
      pingWarmup: quick ? 300 : 1000,
      idleGuests: 16,
      idleMs: quick ? 3000 : 10_000,
    },
    phaseLimitMs: quick
      ? { tp: 120_000, rx: 60_000, lat: 60_000, scale: 60_000, prof: 60_000, con: 60_000 }
      : { tp: 420_000, rx: 150_000, lat: 180_000, scale: 180_000, prof: 90_000, con: 120_000 },
    gateMs: quick ? 1000 : 5000,
    phaseGateMs: quick ? 3000 : 30_000,
  };
}

const HELP = `usage: npm run bench [-- OPTIONS]
  --quick        short runs (about a minute in total)
  --only=LIST    phases to run, comma separated: ${PHASES.join(',')} (default: all)
  --tsx          run the daemon through tsx instead of the compiled dist/
`;

const log = (s: string): void => {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${s}\n`);
};

// ---- context: the two load processes and the daemon of the moment -----------------------------------

class Ctx {
  readonly cfg: Config;
  readonly build: BuildInfo;
  readonly native: NativeAddon;
  readonly cores: number;
  a!: WorkerClient;
  b!: WorkerClient;
  private readonly daemons = new Set<DaemonProcess>();

  constructor(cfg: Config, build: BuildInfo, native: NativeAddon, cores: number) {
    this.cfg = cfg;
    this.build = build;
    this.native = native;
    this.cores = cores;
  }

  worker(name: string, fds: readonly number[] = []): Promise<WorkerClient> {
    this.checkCancelled();
    return WorkerClient.start(this.build, name, fds);
  }

  async startWorkers(): Promise<void> {
    [this.a, this.b] = await Promise.all([this.worker('loadA'), this.worker('loadB')]);
  }

  async stopWorkers(): Promise<void> {
    await Promise.allSettled([this.a?.stop(), this.b?.stop()]);
  }

  /** After a failure: fresh load processes, no daemon left. */
  async reset(): Promise<void> {
    await this.stopDaemons();
    await this.stopWorkers();
    await this.startWorkers();
  }

  async daemon(sockets: number, label: string, nodeFlags: string[] = []): Promise<DaemonProcess> {
    this.checkCancelled();
    const d = await DaemonProcess.start({ build: this.build, sockets, label, nodeFlags });
    this.daemons.add(d);
    return d;
  }

  async stopDaemon(d: DaemonProcess): Promise<void> {
    this.daemons.delete(d);
    await d.stop();
  }

  async stopDaemons(): Promise<void> {
    const all = [...this.daemons];
    this.daemons.clear();
    await Promise.allSettled(all.map((d) => d.stop()));
  }

  async closeGuests(): Promise<void> {
    await Promise.allSettled([this.a.call('close', {}), this.b.call('close', {})]);
  }

  /** Until when re-measuring a window spoilt by other processes is still affordable. */
  retryUntil = Number.POSITIVE_INFINITY;
  retries = 0;
  /** Set when the running phase timed out: its next step throws instead of running on. */
  cancelled = false;

  checkCancelled(): void {
    if (this.cancelled) throw new Error('phase cancelled (time limit)');
  }

  /**
   * Waits (up to `maxMs`) until the machine is quiet: other sessions run QEMU guests and test
   * suites on the same two cores. Returns the last measured machine load (% of one core).
   */
  async quietGate(maxMs: number, windowMs = 300): Promise<number> {
    const end = Date.now() + maxMs;
    let said = false;
    for (;;) {
      const m0 = machineCpu();
      await sleep(windowMs);
      const m1 = machineCpu();
      const busy = r1((100 * this.cores * (m1.busy - m0.busy)) / Math.max(1e-9, m1.total - m0.total));
      if (busy <= QUIET_PERCENT || Date.now() >= end) return busy;
      if (!said) log(`machine ${busy}% busy with other work; waiting up to ${Math.round(maxMs / 1000)} s`);
      said = true;
    }
  }
}

/** Machine load (% of one core) under which we call the machine quiet. */
const QUIET_PERCENT = 25;
/** Other processes' CPU during a window above which the window is measured again (once). */
const OTHER_LIMIT = 30;

/**
 * Runs one measurement after a short wait for a quiet machine; when other processes still used
 * more than OTHER_LIMIT% of a core during its window, measures once more (while the time budget
 * lasts) and keeps the cleaner of the two. The result's cpu.other shows what was left.
 */
async function measured<T extends { cpu: CpuShares }>(
  ctx: Ctx,
  label: string,
  fn: () => Promise<T>,
): Promise<T> {
  ctx.checkCancelled();
  await ctx.quietGate(ctx.cfg.gateMs);
  const r = await fn();
  if (r.cpu.other <= OTHER_LIMIT || Date.now() > ctx.retryUntil) return r;
  log(`${label}: other processes used ${r.cpu.other}% of a core meanwhile; measuring again`);
  ctx.retries++;
  await ctx.quietGate(2 * ctx.cfg.gateMs, 1000);
  const again = await fn();
  return again.cpu.other < r.cpu.other ? again : r;
}

// ---- result shapes ---------------------------------------------------------------------------------

type LoadMode = 'flood' | 'closed';

interface FlowResult {
  mode: LoadMode;
  frame: FrameName;
  batch: number;
  lateTxAck: boolean;
  senderQueue: number;
  receiverQueue: number;
  seconds: number;
  acceptedPerS: number;
  deliveredPerS: number;
  droppedPerS: number;
  txNotOkPerS: number;
  guestSentPerS: number;
  guestReceivedPerS: number;
  kicksPerFrame: number;
  suppressedKicksPerFrame: number;
  txWakeupsPerS: number;
  rxWakeupsPerS: number;
  framesPerRxWakeup: number;
  cpu: CpuShares;
  saturated: string;
  /** Daemon RSS (kB) before the traffic and after it, and frames on the bus in between. */
  rssBeforeKb: number;
  rssAfterKb: number;
  busFramesTotal: number;
  senderDrained: boolean;
}

interface BaselineFlow {
  mode: LoadMode;
  frame: FrameName;
  batch: number;
  seconds: number;
  sentPerS: number;
  deliveredPerS: number;
  writesPerS: number;
  cpu: CpuShares;
  saturated: string;
}

interface LatencyResult {
  path: 'device' | 'baseline';
  mode: 'one-in-flight' | 'paced';
  /** Paced: the fraction of the best flood rate of phase 1. */
  loadFraction?: number;
  targetRate: number | null;
  achievedRate: number;
  summary: LatencySummary;
  paced?: PacedResult;
  received?: number;
  /** Frames sent but never received (device: the receiver's backlog overflowed). */
  lost: number;
  cpu: CpuShares;
}

interface ScaleResult {
  guests: number;
  seconds: number;
  busFramesPerS: number;
  acceptedPerS: number;
  deliveredPerS: number;
  droppedPerS: number;
  daemonCpuPercent: number;
  daemonUsPerDelivered: number | null;
  daemonUsPerBusFrame: number | null;
  cpu: CpuShares;
  saturated: string;
}

interface IdleResult {
  guests: number;
  seconds: number;
  daemonCpuSeconds: number;
  daemonCpuPercent: number;
  loadCpuPercent: number;
}

interface MemoryRow {
  state: string;
  memory: ProcMemory;
  busFrames: number;
  deliveredFrames: number;
  /** The daemon's own figures (SIGUSR1 stats): V8 heap in use, bus frame copies ever allocated. */
  heapUsedKb: number | null;
  framesAllocated: number;
}

interface Results {
  env: Record<string, unknown>;
  tp: FlowResult[];
  baselineTp: BaselineFlow[];
  rx: FlowResult[];
  latency: LatencyResult[];
  scale: ScaleResult[];
  idle: IdleResult | null;
  memory: MemoryRow[];
  profile: (ProfileSummary & { flow: FlowResult }) | null;
  con: { flows: ConFlowResult[]; latency: ConLatencyResult[]; idle: ConIdleResult | null } | null;
  errors: { phase: string; error: string }[];
  notes: string[];
}

const r1 = (v: number): number => Math.round(v * 10) / 10;
const perS = (n: number, s: number): number => Math.round(n / s);

// ---- guest -> guest flow (tp, rx, prof) -----------------------------------------------------------

interface FlowOptions {
  mode: LoadMode;
  frame: FrameName;
  batch: number;
  lateTxAck: boolean;
  senderQueue: number;
  receiverQueue: number;
  measureMs: number;
  nodeFlags?: string[];
  label: string;
}

async function flow(ctx: Ctx, o: FlowOptions): Promise<FlowResult> {
  const d = await ctx.daemon(2, o.label, o.nodeFlags);
  const { a, b } = ctx;
  try {
    await Promise.all([
      a.call('connect', {
        key: 's',
        path: d.path(0),
        queueSize: o.senderQueue,
        lateTxAck: o.lateTxAck,
        canId: 0x100,
      }),
      b.call('connect', {
        key: 'r',
        path: d.path(1),
        queueSize: o.receiverQueue,
        lateTxAck: o.lateTxAck,
        canId: 0x200,
      }),
    ]);
    await b.call('drain-start', { keys: ['r'] });
    const rssBefore = d.memory();
    await a.call(o.mode === 'flood' ? 'flood-start' : 'batch-start', {
      keys: ['s'],
      frame: FRAMES[o.frame],
      batch: o.batch,
    });
    await sleep(ctx.cfg.warmMs);
    const s0 = await snapshot(d, [a, b]);
    await sleep(o.measureMs);
    const s1 = await snapshot(d, [a, b]);
    const stop = await a.call('flood-stop', { keys: ['s'] }, 15_000);
    await sleep(100);
    const end = await d.stats();
    const rssAfter = d.memory();
    const dt = seconds(s0, s1);
    const cpu = cpuShares(s0, s1, ctx.cores);
    const sent = guestDelta(s0, s1, ['s'], 'sent');
    const rxWake = guestDelta(s0, s1, ['r'], 'rxWakeups');
    const received = guestDelta(s0, s1, ['r'], 'received');
    return {
      mode: o.mode,
      frame: o.frame,
      batch: o.batch,
      lateTxAck: o.lateTxAck,
      senderQueue: o.senderQueue,
      receiverQueue: o.receiverQueue,
      seconds: r1(dt * 1000) / 1000,
      acceptedPerS: perS(socketDelta(s0, s1, [0], 'txOk'), dt),
      deliveredPerS: perS(socketDelta(s0, s1, [1], 'rxDelivered'), dt),
      droppedPerS: perS(socketDelta(s0, s1, [1], 'rxDroppedOverflow'), dt),
      txNotOkPerS: perS(socketDelta(s0, s1, [0], 'txNotOk'), dt),
      guestSentPerS: perS(sent, dt),
      guestReceivedPerS: perS(received, dt),
      kicksPerFrame: r1((1000 * guestDelta(s0, s1, ['s'], 'txKicks')) / Math.max(1, sent)) / 1000,
      suppressedKicksPerFrame:
        r1((1000 * guestDelta(s0, s1, ['s'], 'txSuppressed')) / Math.max(1, sent)) / 1000,
      txWakeupsPerS: perS(guestDelta(s0, s1, ['s'], 'txWakeups'), dt),
      rxWakeupsPerS: perS(rxWake, dt),
      framesPerRxWakeup: r1(received / Math.max(1, rxWake)),
      cpu,
      saturated: saturation(cpu, ctx.cores, { daemon: 'daemon', loadA: 'sender FE', loadB: 'receiver FE' }),
      rssBeforeKb: rssBefore.vmRss,
      rssAfterKb: rssAfter.vmRss,
      busFramesTotal: end.bus.frames,
      senderDrained: stop.drained,
    };
  } finally {
    await ctx.closeGuests();
    await ctx.stopDaemon(d);
  }
}

// ---- baseline: sender -> relay -> receiver over socketpairs ------------------------------------------

interface BaselineProcs {
  procs: WorkerClient[];
  stop(): Promise<void>;
}

/** Spawns load processes with socket fds (as their fds 4, 5); our copies are closed at once. */
async function spawnWithSockets(ctx: Ctx, specs: { name: string; fds: number[] }[]): Promise<BaselineProcs> {
  const all = specs.flatMap((s) => s.fds);
  let procs: WorkerClient[] = [];
  try {
    procs = await Promise.all(specs.map((s) => ctx.worker(s.name, s.fds)));
  } finally {
    for (const fd of all) ctx.native.close(fd);
  }
  return { procs, stop: async () => void (await Promise.allSettled(procs.map((p) => p.stop()))) };
}

/**
 * The baseline's three processes, sender -> relay -> receiver over two socketpairs (each child sees
 * its sockets as fds 4 and 5), with the receiver and the relay already running; the caller starts
 * the sender and must call `stop()`.
 */
async function startBaselineRelay(
  ctx: Ctx,
  recv: { latency: boolean; capacity: number; warmup: number },
  ack: boolean,
): Promise<{ snd: WorkerClient; procs: WorkerClient[]; stop: () => Promise<void> }> {
  const [a0, a1] = ctx.native.socketpair();
  const [b0, b1] = ctx.native.socketpair();
  const bp = await spawnWithSockets(ctx, [
    { name: 'blSender', fds: [a0] },
    { name: 'blRelay', fds: [a1, b0] },
    { name: 'blReceiver', fds: [b1] },
  ]);
  const [snd, rly, rcv] = bp.procs as [WorkerClient, WorkerClient, WorkerClient];
  try {
    await rcv.call('sock-recv-start', { fd: 4, ...recv });
    await rly.call('sock-relay-start', { inFd: 4, outFd: 5, ack });
  } catch (err) {
    await bp.stop();
    throw err;
  }
  return { snd, procs: bp.procs, stop: bp.stop };
}

async function baselineFlow(
  ctx: Ctx,
  mode: LoadMode,
  frame: FrameName,
  batch: number,
): Promise<BaselineFlow> {
  const bp = await startBaselineRelay(ctx, { latency: false, capacity: 0, warmup: 0 }, mode === 'closed');
  const snd = bp.snd;
  try {
    await snd.call(mode === 'flood' ? 'sock-flood-start' : 'sock-batch-start', {
      fd: 4,
      frame: FRAMES[frame],
      batch,
    });
    await sleep(ctx.cfg.warmMs);
    const s0 = await snapshot(null, bp.procs);
    await sleep(ctx.cfg.measureMs);
    const s1 = await snapshot(null, bp.procs);
    const dt = seconds(s0, s1);
    const d = (w: string, f: 'sent' | 'received' | 'writes'): number =>
      (s1.sock[w]?.[f] ?? 0) - (s0.sock[w]?.[f] ?? 0);
    const cpu = cpuShares(s0, s1, ctx.cores);
    return {
      mode,
      frame,
      batch,
      seconds: r1(dt * 1000) / 1000,
      sentPerS: perS(d('blSender', 'sent'), dt),
      deliveredPerS: perS(d('blReceiver', 'received'), dt),
      writesPerS: perS(d('blSender', 'writes'), dt),
      cpu,
      saturated: saturation(cpu, ctx.cores, { blSender: 'sender', blRelay: 'relay', blReceiver: 'receiver' }),
    };
  } finally {
    await bp.stop();
  }
}

// ---- phases ----------------------------------------------------------------------------------------

async function phaseTp(ctx: Ctx, res: Results): Promise<void> {
  for (const mode of ['flood', 'closed'] as const) {
    for (const frame of Object.keys(FRAMES) as FrameName[]) {
      // Quick runs: the closed loop only with classic frames.
      if (ctx.cfg.quick && mode === 'closed' && frame !== 'classic8') continue;
      for (const batch of BATCHES) {
        // LATE_TX_ACK changes nothing on the virtual bus (the hub completes every transmit at once),
        // as the flood rows show: the closed loop runs with it on only.
        for (const lateTxAck of mode === 'closed' ? [true] : [true, false]) {
          log(`tp ${mode}: ${frame}, ${batch} per kick, LATE_TX_ACK ${lateTxAck ? 'on' : 'off'}`);
          const label = `tp-${mode}-${frame}-${batch}-${lateTxAck ? 'late' : 'early'}`;
          res.tp.push(
            await measured(ctx, label, () =>
              flow(ctx, {
                mode,
                frame,
                batch,
                lateTxAck,
                senderQueue: ctx.cfg.queueSize,
                receiverQueue: ctx.cfg.queueSize,
                measureMs: ctx.cfg.measureMs,
                label,
              }),
            ),
          );
        }
        log(`tp ${mode} baseline: ${frame}, ${batch} per write`);
        res.baselineTp.push(
          await measured(ctx, `baseline ${mode} ${frame} ${batch}`, () =>
            baselineFlow(ctx, mode, frame, batch),
          ),
        );
      }
    }
  }
}

async function phaseRx(ctx: Ctx, res: Results): Promise<void> {
  for (const frame of ctx.cfg.rxFrames) {
    for (const rxq of ctx.cfg.rxSizes) {
      log(`rx: ${frame}, receiver RX ring ${rxq}`);
      res.rx.push(
        await measured(ctx, `rx ${frame} ${rxq}`, () =>
          flow(ctx, {
            mode: 'flood',
            frame,
            batch: 64,
            lateTxAck: true,
            senderQueue: ctx.cfg.queueSize,
            receiverQueue: rxq,
            measureMs: ctx.cfg.measureMs,
            label: `rx-${frame}-${rxq}`,
          }),
        ),
      );
    }
  }
}

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

async function phaseLat(ctx: Ctx, res: Results): Promise<void> {
  const { latCount } = ctx.cfg;
  log(`lat: device, one frame in flight, ${latCount} frames`);
  res.latency.push(await measured(ctx, 'lat device one-in-flight', () => pingDevice(ctx)));
  log(`lat: baseline, one frame in flight, ${latCount} frames`);
  res.latency.push(await measured(ctx, 'lat baseline one-in-flight', () => pingBaseline(ctx)));

  const maxRate = await latencyRate(ctx, res);
  for (const fraction of ctx.cfg.pacedFractions) {
    const rate = Math.max(100, Math.round(maxRate * fraction));
    const counts = pacedCounts(ctx, rate);
    const what = `paced at ${rate} frames/s (${fraction * 100}% of max), ${counts.count} frames`;
    log(`lat: device, ${what}`);
    const dev = await measured(ctx, `lat device ${what}`, () => pacedDevice(ctx, rate, fraction, counts));
    if (dev.lost > 0) {
      res.notes.push(
        `latency paced ${fraction * 100}% (device): ${dev.lost} of ${dev.paced?.sent} frames never reached the receiver: its backlog overflowed (the receiving process did not re-post RX buffers in time)`,
      );
    }
    res.latency.push(dev);
    log(`lat: baseline, ${what}`);
    res.latency.push(
      await measured(ctx, `lat baseline ${what}`, () => pacedBaseline(ctx, rate, fraction, counts)),
    );
  }
}

/** Device, one frame in flight: both guests in one load process (the sender's TX interrupts off). */
async function pingDevice(ctx: Ctx): Promise<LatencyResult> {
  const { latCount, latWarmup } = ctx.cfg;
  const d = await ctx.daemon(2, 'lat-pingpong');
  try {
    await ctx.a.call('connect', {
      key: 's',
      path: d.path(0),
      queueSize: ctx.cfg.queueSize,
      lateTxAck: true,
      canId: 0x100,
    });
    await ctx.a.call('connect', {
      key: 'r',
      path: d.path(1),
      queueSize: ctx.cfg.queueSize,
      lateTxAck: true,
      canId: 0x200,
    });
    const s0 = await snapshot(d, [ctx.a]);
    const limit = perFrameLimit(latCount + latWarmup, 2000);
    const sum = await ctx.a.call(
      'pingpong',
      { sender: 's', receiver: 'r', count: latCount, warmup: latWarmup, timeoutMs: limit },
      limit + 5000,
    );
    const s1 = await snapshot(d, [ctx.a]);
    return {
      path: 'device',
      mode: 'one-in-flight',
      targetRate: null,
      achievedRate: Math.round((latCount + latWarmup) / sum.seconds),
      summary: sum,
      lost: 0,
      cpu: cpuShares(s0, s1, ctx.cores),
    };
  } finally {
    await ctx.closeGuests();
    await ctx.stopDaemon(d);
  }
}

/** Baseline, one frame in flight: pinger -> relay -> pinger over two socketpairs. */
async function pingBaseline(ctx: Ctx): Promise<LatencyResult> {
  const { latCount, latWarmup } = ctx.cfg;
  const [a0, a1] = ctx.native.socketpair();
  const [b0, b1] = ctx.native.socketpair();
  const bp = await spawnWithSockets(ctx, [
    { name: 'blRelay', fds: [a1, b0] },
    { name: 'blPinger', fds: [a0, b1] },
  ]);
  const [rly, png] = bp.procs as [WorkerClient, WorkerClient];
  try {
    await rly.call('sock-relay-start', { inFd: 4, outFd: 5, ack: false });
    const s0 = await snapshot(null, bp.procs);
    const limit = perFrameLimit(latCount + latWarmup, 2000);
    const sum = await png.call(
      'sock-pingpong',
      { outFd: 4, inFd: 5, frame: FRAMES.classic8, count: latCount, warmup: latWarmup, timeoutMs: limit },
      limit + 5000,
    );
    const s1 = await snapshot(null, bp.procs);
    return {
      path: 'baseline',
      mode: 'one-in-flight',
      targetRate: null,
      achievedRate: Math.round((latCount + latWarmup) / sum.seconds),
      summary: sum,
      lost: 0,
      cpu: cpuShares(s0, s1, ctx.cores),
    };
  } finally {
    await bp.stop();
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
async function pacedDevice(ctx: Ctx, rate: number, fraction: number, c: PacedCounts): Promise<LatencyResult> {
  const d = await ctx.daemon(2, 'lat-paced');
  try {
    await ctx.a.call('connect', {
      key: 's',
      path: d.path(0),
      queueSize: ctx.cfg.queueSize,
      lateTxAck: true,
      canId: 0x100,
    });
    await ctx.b.call('connect', {
      key: 'r',
      path: d.path(1),
      queueSize: ctx.cfg.queueSize,
      lateTxAck: true,
      canId: 0x200,
    });
    await ctx.b.call('latency-recv-start', { key: 'r', capacity: c.count, warmup: c.warmup });
    const s0 = await snapshot(d, [ctx.a, ctx.b]);
    const paced = await ctx.a.call(
      'paced-send',
      { key: 's', rate, count: c.count + c.warmup, maxSeconds: c.maxSeconds },
      c.maxSeconds * 1000 + 15_000,
    );
    await settle(async () => (await ctx.b.call('counters', {})).guests.r?.received ?? 0, paced.sent);
    const s1 = await snapshot(d, [ctx.a, ctx.b]);
    const sum = await ctx.b.call('latency-recv-stop', { key: 'r' });
    return {
      path: 'device',
      mode: 'paced',
      loadFraction: fraction,
      targetRate: rate,
      achievedRate: Math.round(paced.achievedRate),
      summary: sum,
      paced,
      received: sum.received,
      lost: paced.sent - sum.received,
      cpu: cpuShares(s0, s1, ctx.cores),
    };
  } finally {
    await ctx.closeGuests();
    await ctx.stopDaemon(d);
  }
}

/** Baseline, paced: sender -> relay -> receiver processes at the same rate. */
async function pacedBaseline(
  ctx: Ctx,
  rate: number,
  fraction: number,
  c: PacedCounts,
): Promise<LatencyResult> {
  const bp = await startBaselineRelay(ctx, { latency: true, capacity: c.count, warmup: c.warmup }, false);
  const [snd, , rcv] = bp.procs as [WorkerClient, WorkerClient, WorkerClient];
  try {
    const s0 = await snapshot(null, bp.procs);
    const paced = await snd.call(
      'sock-paced-send',
      { fd: 4, frame: FRAMES.classic8, rate, count: c.count + c.warmup, maxSeconds: c.maxSeconds },
      c.maxSeconds * 1000 + 15_000,
    );
    await settle(async () => (await rcv.call('sock-latency', {})).received, paced.sent);
    const got = await rcv.call('sock-latency', {});
    const s1 = await snapshot(null, bp.procs);
    return {
      path: 'baseline',
      mode: 'paced',
      loadFraction: fraction,
      targetRate: rate,
      achievedRate: Math.round(paced.achievedRate),
      summary: got,
      paced,
      received: got.received,
      lost: paced.sent - got.received,
      cpu: cpuShares(s0, s1, ctx.cores),
    };
  } finally {
    await bp.stop();
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

async function phaseScale(ctx: Ctx, res: Results): Promise<void> {
  for (const n of ctx.cfg.scaleGuests) {
    log(`scale: ${n} guest(s)`);
    await ctx.quietGate(ctx.cfg.gateMs);
    const d = await ctx.daemon(n, `scale-${n}`);
    const mem = n === 16;
    const keys = Array.from({ length: n }, (_, i) => `g${i}`);
    const owner = (i: number): WorkerClient => (i % 2 === 0 ? ctx.a : ctx.b);
    const busAndDelivered = async (): Promise<{
      bus: number;
      delivered: number;
      heapUsedKb: number | null;
      framesAllocated: number;
    }> => {
      const st = await d.stats();
      return {
        bus: st.bus.frames,
        delivered: st.sockets.reduce((s, x) => s + x.rxDelivered, 0),
        heapUsedKb: st.process?.heapUsedKb ?? null,
        framesAllocated: st.bus.framesAllocated,
      };
    };
    let delivered = 0; // per-device counters reset on disconnect: keep the running total
    const memRow = async (state: string): Promise<void> => {
      await sleep(300);
      const c = await busAndDelivered();
      delivered = Math.max(delivered, c.delivered);
      res.memory.push({
        state,
        memory: d.memory(),
        busFrames: c.bus,
        deliveredFrames: delivered,
        heapUsedKb: c.heapUsedKb,
        framesAllocated: c.framesAllocated,
      });
    };
    try {
      if (mem) await memRow('started, no guest');
      const connect = (i: number): Promise<unknown> =>
        owner(i).call('connect', {
          key: keys[i]!,
          path: d.path(i),
          queueSize: ctx.cfg.queueSize,
          lateTxAck: true,
          canId: 0x100 + i,
        });
      await connect(0);
      if (mem) await memRow('1 guest connected');
      for (let i = 1; i < n; i++) await connect(i);
      if (mem) await memRow(`${n} guests connected`);
      const aKeys = keys.filter((_, i) => i % 2 === 0);
      const bKeys = keys.filter((_, i) => i % 2 === 1);
      const both = async (cmd: 'drain-start' | 'flood-stop', extra: object = {}): Promise<void> => {
        await Promise.all([
          ctx.a.call(cmd, { keys: aKeys, ...extra } as never, 20_000),
          bKeys.length > 0 ? ctx.b.call(cmd, { keys: bKeys, ...extra } as never, 20_000) : null,
        ]);
      };
      await both('drain-start');
      if (mem) {
        log(`idle: ${n} silent guests, ${ctx.cfg.idleMs / 1000} s`);
        await sleep(1000);
        const i0 = await snapshot(d, [ctx.a, ctx.b]);
        await sleep(ctx.cfg.idleMs);
        const i1 = await snapshot(d, [ctx.a, ctx.b]);
        const c = cpuShares(i0, i1, ctx.cores);
        res.idle = {
          guests: n,
          seconds: r1(seconds(i0, i1)),
          daemonCpuSeconds: (i1.cpu.daemon ?? 0) - (i0.cpu.daemon ?? 0),
          daemonCpuPercent: c.perRole.daemon ?? Number.NaN,
          loadCpuPercent: r1((c.perRole.loadA ?? 0) + (c.perRole.loadB ?? 0)),
        };
      }
      const flood = { frame: FRAMES.classic8, batch: 16 };
      await Promise.all([
        ctx.a.call('flood-start', { keys: aKeys, ...flood }),
        bKeys.length > 0 ? ctx.b.call('flood-start', { keys: bKeys, ...flood }) : null,
      ]);
      await sleep(ctx.cfg.warmMs);
      const s0 = await snapshot(d, [ctx.a, ctx.b]);
      await sleep(ctx.cfg.measureMs);
      const s1 = await snapshot(d, [ctx.a, ctx.b]);
      const dt = seconds(s0, s1);
      const all = keys.map((_, i) => i);
      const delivered = socketDelta(s0, s1, all, 'rxDelivered');
      const bus = (s1.daemon?.bus.frames ?? 0) - (s0.daemon?.bus.frames ?? 0);
      const dCpu = (s1.cpu.daemon ?? 0) - (s0.cpu.daemon ?? 0);
      const cpu = cpuShares(s0, s1, ctx.cores);
      res.scale.push({
        guests: n,
        seconds: r1(dt * 1000) / 1000,
        busFramesPerS: perS(bus, dt),
        acceptedPerS: perS(socketDelta(s0, s1, all, 'txOk'), dt),
        deliveredPerS: perS(delivered, dt),
        droppedPerS: perS(socketDelta(s0, s1, all, 'rxDroppedOverflow'), dt),
        daemonCpuPercent: cpu.perRole.daemon ?? Number.NaN,
        daemonUsPerDelivered: delivered > 0 ? r1((dCpu * 1e6) / delivered) : null,
        daemonUsPerBusFrame: bus > 0 ? r1((dCpu * 1e6) / bus) : null,
        cpu,
        saturated: saturation(cpu, ctx.cores, { daemon: 'daemon', loadA: 'load A', loadB: 'load B' }),
      });
      if (mem) {
        // Several points under traffic, so a plateau (the heap settled) can be told from a leak.
        const deadline = Date.now() + 120_000;
        const base = (await busAndDelivered()).delivered; // the scale window above delivered these
        checkpoints: for (const k of MEMORY_CHECKPOINTS) {
          const target = base + k * ctx.cfg.memFrames;
          log(`memory: flooding until ${int(k * ctx.cfg.memFrames)} more frames were delivered`);
          for (;;) {
            const c = await busAndDelivered();
            if (c.delivered >= target) break;
            if (Date.now() > deadline) {
              res.notes.push(`memory: only ${c.delivered} frames delivered within 120 s`);
              break checkpoints;
            }
            await sleep(100);
          }
          await memRow(`traffic on, +${int(k * ctx.cfg.memFrames)} delivered`);
        }
      }
      await both('flood-stop');
      if (mem) await memRow(`${n} guests, after the traffic`);
      await ctx.closeGuests();
      if (mem) {
        await sleep(500);
        await memRow('all guests disconnected');
      }
    } finally {
      await ctx.closeGuests();
      await ctx.stopDaemon(d);
    }
  }
}

/** Memory rows under traffic, at these multiples of `memFrames` delivered frames. */
const MEMORY_CHECKPOINTS = [1, 2, 4, 8, 16, 32] as const;

/** RSS change between the second checkpoint (warm) and the last one, per million delivered frames. */
function memoryGrowthNote(rows: readonly MemoryRow[]): string {
  const under = rows.filter((r) => r.state.startsWith('traffic on'));
  if (under.length < 3) return '  not enough checkpoints';
  const warm = under[1]!;
  const last = under.at(-1)!;
  const frames = last.deliveredFrames - warm.deliveredFrames;
  const kb = last.memory.vmRss - warm.memory.vmRss;
  const per = frames > 0 ? (kb * 1e6) / frames : Number.NaN;
  return `  VmRSS ${kb >= 0 ? '+' : ''}${int(kb)} kB from ${int(warm.deliveredFrames)} to ${int(last.deliveredFrames)} delivered (${fixed(per, 1)} kB per 10^6 frames); VmHWM ${int(warm.memory.vmHwm)} -> ${int(last.memory.vmHwm)} kB.`;
}

async function phaseProf(ctx: Ctx, res: Results): Promise<void> {
  // One directory per run and Node's default file names: every thread writes its own profile (with
  // --tsx the module-loader thread too), and the busiest one is the daemon's main thread.
  const dir = join(REPO_ROOT, 'bench/results/prof', stamp);
  mkdirSync(dir, { recursive: true });
  log(`prof: daemon under --cpu-prof, classic8, 64 per kick (${dir})`);
  await ctx.quietGate(ctx.cfg.gateMs);
  const f = await flow(ctx, {
    mode: 'flood',
    frame: 'classic8',
    batch: 64,
    lateTxAck: true,
    senderQueue: ctx.cfg.queueSize,
    receiverQueue: ctx.cfg.queueSize,
    measureMs: ctx.cfg.profMs,
    nodeFlags: ['--cpu-prof', '--cpu-prof-dir', dir],
    label: 'prof',
  });
  let files: string[] = [];
  for (let i = 0; i < 50 && files.length === 0; i++) {
    files = readdirSync(dir).filter((n) => n.endsWith('.cpuprofile'));
    if (files.length === 0) await sleep(100);
  }
  if (files.length === 0) throw new Error(`no profile written in ${dir}`);
  const summaries = files.map((n) => summarizeProfile(join(dir, n), REPO_ROOT, 15));
  const main = summaries.sort((x, y) => y.totalMs - y.idleMs - (x.totalMs - x.idleMs))[0]!;
  res.profile = { ...main, flow: f };
}

async function phaseCon(ctx: Ctx, res: Results): Promise<void> {
  const con = {
    flows: [] as ConFlowResult[],
    latency: [] as ConLatencyResult[],
    idle: null as ConIdleResult | null,
  };
  res.con = con;
  const c = ctx.cfg.con;
  // Bulk rows on the named port (flow-controlled both ways: every byte must arrive), then the
  // console flood (port 0 is never paced: drops are expected, every byte must be accounted for).
  const runs: [ConDirection, 'device' | 'baseline', ConPortKind][] = [
    ['guest->client', 'device', 'named'],
    ['guest->client', 'baseline', 'named'],
    ['client->guest', 'device', 'named'],
    ['client->guest', 'baseline', 'named'],
    ['guest->client', 'device', 'console'],
  ];
  for (const [direction, path, port] of runs) {
    const what = `${direction} ${port === 'named' ? 'named port' : 'console flood'}, ${path}`;
    log(`con: ${what} throughput`);
    const r = await measured(ctx, `con ${what}`, () => conFlow(ctx, c, direction, path, port));
    con.flows.push(r);
    if (port === 'console' && path === 'device') {
      if (!r.accounted) {
        res.notes.push(
          `console flood (port 0): ${r.missingBytes} byte(s) sent, neither received nor counted as dropped` +
            (r.droppedBytes === 0 ? `, ${r.mismatches} corrupt byte(s)` : ''),
        );
      }
    } else if (!r.intact) {
      res.notes.push(
        `console ${what}: ${r.missingBytes} byte(s) sent but not received, ${r.mismatches} corrupt byte(s)` +
          (r.droppedBytes ? `, ${r.droppedBytes} dropped by the daemon (clientDropped)` : ''),
      );
    }
  }
  for (const path of ['device', 'baseline'] as const) {
    log(`con: keystroke round trip, ${path}, ${c.pingCount} round trips`);
    const r = await measured(ctx, `con ping ${path}`, () => conPing(ctx, c, path));
    con.latency.push(r);
    if (r.wrong > 0) res.notes.push(`console keystroke echo ${path}: ${r.wrong} wrong byte(s) echoed`);
  }
  log(`con: idle, ${c.idleGuests} guests, ${c.idleMs / 1000} s`);
  await ctx.quietGate(ctx.cfg.gateMs);
  con.idle = await conIdle(ctx, c);
}

// ---- report ----------------------------------------------------------------------------------------

function report(res: Results): string {
  const out: string[] = [];
  const env = res.env;
  out.push(
    `vhost-device-can benchmarks  ${String(env.startedAt)}  ${env.quick ? 'QUICK' : 'full'} run`,
    `node ${String(env.node)}, ${String(env.cores)} x ${String(env.cpuModel)}, code under test: ${String(env.build)}`,
    `load average before: ${String(env.loadAverageBefore)}, after: ${String(env.loadAverageAfter)}`,
    'CPU columns: % of one core over the measured window (daemon / load processes / other = the rest of',
    'the machine, i.e. processes that are not part of this benchmark).',
  );

  const base = (mode: LoadMode, frame: FrameName, batch: number): BaselineFlow | undefined =>
    res.baselineTp.find((b) => b.mode === mode && b.frame === frame && b.batch === batch);
  if (res.tp.length > 0) {
    out.push(
      table(
        '1. guest -> bus throughput (a second guest drains its RX ring; queues 256; frames/s)',
        [
          'mode',
          'frame',
          'batch',
          'LATE',
          'accepted',
          'delivered',
          'dropped',
          'baseline',
          'dlv/base',
          'kicks/fr',
          'daemon',
          'sendFE',
          'recvFE',
          'other',
          'saturated',
        ],
        res.tp.map((r) => {
          const b = base(r.mode, r.frame, r.batch);
          return [
            r.mode,
            r.frame,
            r.batch,
            r.lateTxAck ? 'on' : 'off',
            int(r.acceptedPerS),
            int(r.deliveredPerS),
            int(r.droppedPerS),
            int(b?.deliveredPerS),
            b ? fixed(r.deliveredPerS / b.deliveredPerS, 2) : '-',
            fixed(r.kicksPerFrame, 3),
            pct(r.cpu.perRole.daemon),
            pct(r.cpu.perRole.loadA),
            pct(r.cpu.perRole.loadB),
            pct(r.cpu.other),
            r.saturated,
          ];
        }),
        [
          'flood: the sender keeps its TX ring full; whenever `batch` slots are free it posts `batch` frames and kicks',
          '(if EVENT_IDX says the daemon wants a kick: while the daemon is busy it does not, see kicks/fr).',
          'closed: `batch` frames, one kick, wait for all their completions, repeat (exactly `batch` frames per kick).',
          'accepted = TX completed OK by the daemon (txOk); delivered = frames written into the receiver RX ring',
          '(rxDelivered); dropped = receiver backlog overflow (the sender is not slowed down by a slow receiver).',
          'baseline = same frames and batching (frames per write) through a do-nothing relay process over',
          'socketpairs (sender -> relay -> receiver; closed: the relay acknowledges each write back to the sender).',
        ],
      ),
    );
    out.push(
      table(
        '1b. baseline (socketpair relay, no device)',
        [
          'mode',
          'frame',
          'per write',
          'sent/s',
          'delivered/s',
          'writes/s',
          'sender',
          'relay',
          'receiver',
          'other',
          'saturated',
        ],
        res.baselineTp.map((b) => [
          b.mode,
          b.frame,
          b.batch,
          int(b.sentPerS),
          int(b.deliveredPerS),
          int(b.writesPerS),
          pct(b.cpu.perRole.blSender),
          pct(b.cpu.perRole.blRelay),
          pct(b.cpu.perRole.blReceiver),
          pct(b.cpu.other),
          b.saturated,
        ]),
      ),
    );
  }
  if (res.rx.length > 0) {
    out.push(
      table(
        '2. bus -> guest throughput (sender 64 per kick, LATE_TX_ACK on; receiver re-posts buffers at once)',
        [
          'frame',
          'RX ring',
          'received/s',
          'guest rx/s',
          'dropped/s',
          'rx irq/s',
          'fr/irq',
          'daemon',
          'sendFE',
          'recvFE',
          'other',
          'saturated',
        ],
        res.rx.map((r) => [
          r.frame,
          r.receiverQueue,
          int(r.deliveredPerS),
          int(r.guestReceivedPerS),
          int(r.droppedPerS),
          int(r.rxWakeupsPerS),
          fixed(r.framesPerRxWakeup, 1),
          pct(r.cpu.perRole.daemon),
          pct(r.cpu.perRole.loadA),
          pct(r.cpu.perRole.loadB),
          pct(r.cpu.other),
          r.saturated,
        ]),
      ),
    );
  }
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
  if (res.scale.length > 0) {
    out.push(
      table(
        '4. scale: N guests on one bus, every guest floods (classic8, 16 per kick) and drains its RX ring',
        [
          'guests',
          'bus fr/s',
          'delivered/s',
          'dropped/s',
          'daemon',
          'us/deliv',
          'us/busfr',
          'loadA',
          'loadB',
          'other',
          'saturated',
        ],
        res.scale.map((s) => [
          s.guests,
          int(s.busFramesPerS),
          int(s.deliveredPerS),
          int(s.droppedPerS),
          pct(s.daemonCpuPercent),
          fixed(s.daemonUsPerDelivered, 2),
          fixed(s.daemonUsPerBusFrame, 2),
          pct(s.cpu.perRole.loadA),
          pct(s.cpu.perRole.loadB),
          pct(s.cpu.other),
          s.saturated,
        ]),
        [
          'us/deliv = daemon CPU time (utime+stime from /proc) per frame written into some RX ring; with 1 guest',
          'nothing is delivered (a guest never receives its own frames), so only us/busfr applies.',
        ],
      ),
    );
  }
  if (res.idle) {
    const i = res.idle;
    out.push(
      table(
        '5. idle: guests connected (controllers started, RX buffers posted), nobody sends',
        ['guests', 'seconds', 'daemon CPU s', 'daemon', 'load procs'],
        [
          [
            i.guests,
            fixed(i.seconds, 1),
            fixed(i.daemonCpuSeconds, 2),
            `${fixed(i.daemonCpuPercent, 2)}%`,
            `${fixed(i.loadCpuPercent, 2)}%`,
          ],
        ],
        ['CPU from /proc/<pid>/stat: resolution 10 ms, so 0.00 s means < 10 ms in the window.'],
      ),
    );
  }
  if (res.memory.length > 0) {
    let prev: number | null = null;
    out.push(
      table(
        '6. daemon memory (kB, /proc/<pid>/status)',
        [
          'state',
          'VmRSS',
          'delta',
          'RssAnon',
          'RssFile',
          'RssShmem',
          'VmHWM',
          'heapUsed',
          'bus frames',
          'delivered',
          'frames alloc',
        ],
        res.memory.map((m) => {
          const row: Cell[] = [
            m.state,
            int(m.memory.vmRss),
            prev === null ? '' : `${m.memory.vmRss - prev >= 0 ? '+' : ''}${int(m.memory.vmRss - prev)}`,
            int(m.memory.rssAnon),
            int(m.memory.rssFile),
            int(m.memory.rssShmem),
            int(m.memory.vmHwm),
            m.heapUsedKb === null ? '-' : int(m.heapUsedKb),
            int(m.busFrames),
            int(m.deliveredFrames),
            int(m.framesAllocated),
          ];
          prev = m.memory.vmRss;
          return row;
        }),
        (() => {
          const big = [...res.tp].sort((x, y) => y.busFramesTotal - x.busFramesTotal)[0];
          return big
            ? [
                `2 guests (phase 1, ${big.frame} / ${big.batch} per kick): VmRSS ${int(big.rssBeforeKb)} kB before -> ${int(big.rssAfterKb)} kB after ${int(big.busFramesTotal)} frames.`,
                'RssShmem = guest RAM pages the daemon touched (rings and buffers of the memfd mappings).',
                'heapUsed = V8 heap in use (process.memoryUsage, at the SIGUSR1 dump); frames alloc = bus frame',
                'copies ever allocated (the rest were recycled). Growth under traffic:',
                memoryGrowthNote(res.memory),
              ]
            : [];
        })(),
      ),
    );
  }
  if (res.profile) {
    const p = res.profile;
    out.push(
      table(
        `7. daemon profile (--cpu-prof, classic8, 64 per kick, LATE_TX_ACK on): top ${p.top.length} by self time`,
        ['function', 'location', 'self ms', '% total', '% busy'],
        p.top.map((e) => [
          e.function,
          e.location || '-',
          fixed(e.selfMs, 1),
          fixed(e.selfPercent, 1),
          fixed(e.busyPercent, 1),
        ]),
        [
          `profile ${p.file}: ${int(p.samples)} samples, ${fixed(p.totalMs, 0)} ms, idle ${fixed(p.idleMs, 0)} ms;`,
          `throughput under the profiler: ${int(p.flow.deliveredPerS)} delivered/s (daemon ${pct(p.flow.cpu.perRole.daemon)}).`,
          `by area (% of busy): ${p.byArea
            .slice(0, 10)
            .map((a) => `${a.area} ${fixed(a.busyPercent, 1)}`)
            .join(', ')}`,
        ],
      ),
    );
  }
  if (res.con !== null) conReport(res.con, out);
  const spoilt = [
    ...res.tp,
    ...res.baselineTp,
    ...res.rx,
    ...res.latency,
    ...res.scale,
    ...(res.con?.flows ?? []),
    ...(res.con?.latency ?? []),
  ].filter((r) => r.cpu.other > OTHER_LIMIT).length;
  if (spoilt > 0) {
    out.push(
      `note: ${spoilt} measurement(s) ran while other processes used more than ${OTHER_LIMIT}% of a core (column "other"),`,
      '      even after waiting and measuring again: treat those rows as pessimistic.',
    );
  }
  for (const n of res.notes) out.push(`note: ${n}`);
  for (const e of res.errors) out.push(`ERROR in ${e.phase}: ${e.error}`);
  return out.join('\n');
}

function conReport(con: NonNullable<Results['con']>, out: string[]): void {
  if (con.flows.length > 0) {
    const base = (f: ConFlowResult): ConFlowResult | undefined =>
      con.flows.find((x) => x.path === 'baseline' && x.direction === f.direction);
    out.push(
      table(
        '8. console throughput (vhost-device-console, one guest, its ports on TCP; MiB/s)',
        [
          'direction',
          'port',
          'path',
          'chunk',
          'received',
          'sent',
          'dropped',
          'pauses',
          'dev/base',
          'writes/s',
          'reads/s',
          'intact',
          'daemon',
          'relay',
          'guest',
          'client',
          'other',
          'saturated',
        ],
        con.flows.map((f) => {
          const b = f.path === 'device' ? base(f) : undefined;
          return [
            f.direction,
            f.path === 'baseline' ? '(relay)' : f.port === 'named' ? '1 named' : '0 console',
            f.path,
            f.chunk,
            fixed(f.receivedMiBps),
            fixed(f.sentMiBps),
            f.droppedMiBps === null ? '-' : fixed(f.droppedMiBps),
            f.outputPauses === null ? '-' : int(f.outputPauses),
            b ? fixed(f.receivedMiBps / b.receivedMiBps, 2) : '-',
            int(f.writesPerS),
            int(f.readsPerS),
            f.intact
              ? 'yes'
              : f.port === 'console' && f.path === 'device' && f.accounted
                ? `dropped ${fixed((f.droppedBytes ?? 0) / (1024 * 1024))} MiB, counted`
                : `NO (${int(f.missingBytes)} missing, ${int(f.mismatches)} bad)`,
            pct(f.cpu.perRole.daemon),
            pct(f.cpu.perRole.blRelay),
            pct(f.cpu.perRole.loadA),
            pct(f.cpu.perRole.loadB),
            pct(f.cpu.other),
            f.saturated,
          ];
        }),
        [
          'port 1 named: --port-name org.bench.0, opened by the guest (/dev/vport0p1), where bulk data goes in a',
          'Linux guest; the daemon pauses its output for a slow client. 0 console: hvc0, never paced (Linux spins',
          'on console writes), so a flood beyond what the client reads is dropped and counted (by design).',
          'guest->client: the guest writes 32 KiB output buffers (Linux port_fops_write chunks), one in flight,',
          'each returned before the next (Linux waits for it); a TCP client reads, bytes counted at the client.',
          'client->guest: the TCP client writes 64 KiB pieces as fast as the socket takes them; the guest reads',
          'its 4 KiB RX buffers and re-posts each at once (reads/s = used RX buffers/s). received = at the',
          'receiving end, sent = at the sender, dropped = output the daemon dropped for a client that did not',
          'read in time (clientDropped), pauses = times the daemon paused the port for the client (window).',
          'intact = after the sender stopped, every byte sent arrived and matched the pattern (whole run);',
          'console flood: "counted" = sent = received + dropped, whole run.',
          'baseline: guest peer <-> Unix socket <-> relay process (stream.pipe) <-> TCP <-> client.',
        ],
      ),
    );
  }
  if (con.latency.length > 0) {
    const b = con.latency.find((l) => l.path === 'baseline');
    out.push(
      table(
        '9. console keystroke round trip (client sends 1 byte, the guest echoes it; us)',
        ['path', 'n', 'rt/s', 'median', 'p90', 'p99', 'p99.9', 'max', 'med/base', 'wrong', 'daemon', 'relay'],
        con.latency.map((l) => [
          l.path,
          int(l.summary.n),
          int(l.roundTripsPerS),
          fixed(l.summary.medianUs),
          fixed(l.summary.p90Us),
          fixed(l.summary.p99Us),
          fixed(l.summary.p999Us),
          fixed(l.summary.maxUs),
          l.path === 'device' && b ? fixed(l.summary.medianUs / b.summary.medianUs, 2) : '-',
          int(l.wrong),
          pct(l.cpu.perRole.daemon),
          pct(l.cpu.perRole.blRelay),
        ]),
        [
          'device: client (TCP) -> daemon -> guest RX buffer -> guest echoes it as output -> daemon -> client.',
          'baseline: client (TCP) -> relay -> Unix socket -> echo peer -> relay -> client. One byte in flight.',
        ],
      ),
    );
  }
  if (con.idle !== null) {
    const i = con.idle;
    out.push(
      table(
        '10. console idle: guests connected (console open, RX buffers posted), no clients, nobody writes',
        ['guests', 'seconds', 'daemon CPU s', 'daemon', 'load procs', 'daemon RSS kB'],
        [
          [
            i.guests,
            fixed(i.seconds, 1),
            fixed(i.daemonCpuSeconds, 2),
            `${fixed(i.daemonCpuPercent, 2)}%`,
            `${fixed(i.loadCpuPercent, 2)}%`,
            int(i.rssKb),
          ],
        ],
        ['CPU from /proc/<pid>/stat: resolution 10 ms.'],
      ),
    );
  }
}

// ---- main ------------------------------------------------------------------------------------------

const stamp = new Date().toISOString().replace(/[:.]/g, '-');

async function main(): Promise<number> {
  let cfg: Config | null;
  try {
    cfg = parseConfig(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`bench: ${(err as Error).message}\n${HELP}`);
    return 2;
  }
  if (cfg === null) {
    process.stdout.write(HELP);
    return 0;
  }
  const started = Date.now();
  // Whatever happens, the run ends: the exit hook kills every child process.
  const watchdog = setTimeout(
    () => {
      log('watchdog: the run took too long; killing everything');
      process.exit(1);
    },
    cfg.quick ? 4 * 60_000 : 15 * 60_000,
  );
  watchdog.unref();

  const build = await prepareBuild({ tsx: cfg.forceTsx, log });
  const native = await loadNative(build);
  const cores = cpuCount();
  const res: Results = {
    env: {
      startedAt: new Date().toISOString(),
      quick: cfg.quick,
      node: process.version,
      cores,
      cpuModel: cpus()[0]?.model ?? '?',
      build: build.note,
      loadAverageBefore: loadAverage().join(' '),
      queueSize: cfg.queueSize,
      warmMs: cfg.warmMs,
      measureMs: cfg.measureMs,
      phases: [...cfg.phases],
    },
    tp: [],
    baselineTp: [],
    rx: [],
    latency: [],
    scale: [],
    idle: null,
    memory: [],
    profile: null,
    con: null,
    errors: [],
    notes: [],
  };
  const ctx = new Ctx(cfg, build, native, cores);
  // Re-measuring spoilt windows must not stretch a run past its budget (~8 min full, ~1.5 quick).
  ctx.retryUntil = started + (cfg.quick ? 60_000 : 5 * 60_000);
  await ctx.startWorkers();
  const phases: Record<Phase, (c: Ctx, r: Results) => Promise<void>> = {
    tp: phaseTp,
    rx: phaseRx,
    lat: phaseLat,
    scale: phaseScale,
    prof: phaseProf,
    con: phaseCon,
  };
  for (const p of PHASES) {
    if (!cfg.phases.has(p)) continue;
    // Other sessions run QEMU guests on the same cores: wait a while for a quieter machine.
    const quiet = await ctx.quietGate(cfg.phaseGateMs, 1000);
    res.env[`otherLoadBefore_${p}`] = quiet;
    if (quiet > 25) {
      const w = `phase ${p} started with the machine ${quiet}% busy (of ${cores * 100}%) without us: figures are pessimistic and noisy`;
      log(`WARNING: ${w}`);
      res.notes.push(w);
    }
    const t0 = Date.now();
    const running = phases[p](ctx, res);
    try {
      await withTimeout(running, cfg.phaseLimitMs[p], `phase ${p}`);
    } catch (err) {
      // A timed-out phase is still running: make its next step throw and let it unwind first.
      ctx.cancelled = true;
      await Promise.race([running.catch(() => undefined), sleep(30_000)]);
      ctx.cancelled = false;
      const msg = (err as Error)?.message ?? String(err);
      log(`phase ${p} failed: ${msg}`);
      res.errors.push({ phase: p, error: msg });
      try {
        await ctx.reset();
      } catch (e) {
        res.errors.push({ phase: p, error: `cannot restart the load processes: ${(e as Error).message}` });
        log(`${(e as Error).message}: skipping the remaining phases`);
        break;
      }
    }
    log(`phase ${p}: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  }
  await ctx.stopDaemons();
  await ctx.stopWorkers();
  res.env.loadAverageAfter = loadAverage().join(' ');
  res.env.durationS = Math.round((Date.now() - started) / 1000);
  res.env.remeasured = ctx.retries;

  process.stdout.write(`${report(res)}\n`);
  const dir = join(REPO_ROOT, 'bench/results');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${stamp}.json`);
  writeJson([file, join(dir, 'latest.json')], res);
  log(`results: ${file} (and bench/results/latest.json); ${res.env.durationS} s`);
  return res.errors.length === 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`bench: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exit(1);
  },
);
