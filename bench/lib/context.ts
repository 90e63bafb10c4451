/**
 * What every benchmark phase shares: the phase names, the run's settings, the frame kinds, the
 * context (the two load processes and the daemons of the moment), the quiet-machine gate and the
 * re-measuring of spoilt windows.
 */
import type { NativeAddon } from '../../src/node/native/addon.js';
import type { BuildInfo } from './build.js';
import { sleep } from './children.js';
import type { ConSettings } from './console-bench.js';
import { DaemonProcess } from './daemon-process.js';
import type { CpuShares } from './harness.js';
import { machineCpu } from './proc.js';
import type { FrameSpec } from './protocol.js';
import { WorkerClient } from './worker-client.js';

export const PHASES = [
  'tp',
  'rx',
  'lat',
  'scale',
  'prof',
  'con',
  'socketcand',
  'web',
  'net',
  'cap',
  'timed',
] as const;
export type Phase = (typeof PHASES)[number];

export interface Config {
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

export const FRAMES = {
  classic8: { len: 8, fd: false },
  fd64: { len: 64, fd: true },
} as const satisfies Record<string, FrameSpec>;
export type FrameName = keyof typeof FRAMES;
export const BATCHES = [1, 16, 64];

export const log = (s: string): void => {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${s}\n`);
};

// ---- context: the two load processes and the daemon of the moment -----------------------------------

export class Ctx {
  readonly cfg: Config;
  readonly build: BuildInfo;
  readonly native: NativeAddon;
  readonly cores: number;
  /** The run's time stamp (file and directory names under bench/results). */
  readonly stamp: string;
  a!: WorkerClient;
  b!: WorkerClient;
  private readonly daemons = new Set<DaemonProcess>();

  constructor(cfg: Config, build: BuildInfo, native: NativeAddon, cores: number, stamp: string) {
    this.cfg = cfg;
    this.build = build;
    this.native = native;
    this.cores = cores;
    this.stamp = stamp;
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

  async daemon(
    sockets: number,
    label: string,
    nodeFlags: string[] = [],
    extra: { args?: string[]; buses?: number } = {},
  ): Promise<DaemonProcess> {
    this.checkCancelled();
    const d = await DaemonProcess.start({ build: this.build, sockets, label, nodeFlags, ...extra });
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
export const QUIET_PERCENT = 25;
/** Other processes' CPU during a window above which the window is measured again (once). */
export const OTHER_LIMIT = 30;

/**
 * Runs one measurement after a short wait for a quiet machine; when other processes still used
 * more than OTHER_LIMIT% of a core during its window, measures once more (while the time budget
 * lasts) and keeps the cleaner of the two. The result's cpu.other shows what was left.
 */
export async function measured<T extends { cpu: CpuShares }>(
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

export const r1 = (v: number): number => Math.round(v * 10) / 10;
export const perS = (n: number, s: number): number => Math.round(n / s);
