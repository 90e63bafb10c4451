/**
 * The daemon under test in its own process: the compiled CLI of the bench's build (bench/lib/build.ts)
 * or the TypeScript entry through tsx. Counters come from its SIGUSR1 dump (JSON log lines on
 * stderr), CPU time and memory from /proc.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { type BuildInfo, REPO_ROOT } from './build.js';
import { removeDir, trackChild, trackDir, withTimeout } from './children.js';
import { type ProcMemory, procCpuSeconds, procMemory } from './proc.js';

export interface SocketStats {
  socket: number;
  connected: boolean;
  txOk: number;
  txNotOk: number;
  rxDelivered: number;
  rxDroppedOverflow: number;
  rxQueued: number;
}

export interface BusStatsLine {
  bus: string;
  frames: number;
  droppedOverflow: number;
  /** Frame copies the bus allocated so far (the rest were reused). */
  framesAllocated: number;
}

/** A host SocketCAN interface's counters (SocketCanStats). */
export interface HostStatsLine {
  host: string;
  rxFrames: number;
  rxKernelDrops: number;
  txFrames: number;
}

/** The daemon's own view of its memory (process.memoryUsage, kB). */
export interface ProcessStatsLine {
  rssKb: number;
  heapUsedKb: number;
  heapTotalKb: number;
  externalKb: number;
}

export interface DaemonStats {
  /** hrtime (ns) in the bench process when the dump arrived */
  atNs: bigint;
  sockets: SocketStats[];
  bus: BusStatsLine;
  process: ProcessStatsLine | null;
  /** One line per host SocketCAN interface (none on virtual buses). */
  hosts: HostStatsLine[];
}

export interface DaemonStartOptions {
  build: BuildInfo;
  sockets: number;
  /** Extra node flags (e.g. --cpu-prof ...), placed before the script. */
  nodeFlags?: string[];
  /** Extra daemon arguments. */
  args?: string[];
  label: string;
}

const SETPRIV = '/usr/bin/setpriv';

interface StatsWaiter {
  sockets: SocketStats[];
  hosts: HostStatsLine[];
  process: ProcessStatsLine | null;
  timer: ReturnType<typeof setTimeout> | null;
  resolve(s: DaemonStats): void;
  reject(e: Error): void;
}

export class DaemonProcess {
  readonly dir: string;
  readonly base: string;
  readonly child: ChildProcess;
  readonly label: string;
  readonly sockets: number;
  private readonly tail: string[] = [];
  private waiter: StatsWaiter | null = null;
  private readyResolve: (() => void) | null = null;
  private exited = false;
  private exitInfo = '';
  readonly exitedPromise: Promise<void>;

  private constructor(opts: DaemonStartOptions) {
    this.label = opts.label;
    this.sockets = opts.sockets;
    this.dir = mkdtempSync(join(tmpdir(), 'vdc-bench-'));
    trackDir(this.dir);
    this.base = join(this.dir, 'can.sock');
    const argv = [
      ...(opts.nodeFlags ?? []),
      ...opts.build.daemonArgv,
      '-s',
      this.base,
      '-c',
      String(opts.sockets),
      '--log-format',
      'json',
      ...(opts.args ?? []),
    ];
    // Under `setpriv --pdeathsig KILL` (same pid after exec) the daemon dies with us even when we
    // are SIGKILLed and cannot run the exit hook.
    const [cmd, ...args] = existsSync(SETPRIV)
      ? [SETPRIV, '--pdeathsig', 'KILL', '--', process.execPath, ...argv]
      : [process.execPath, ...argv];
    this.child = spawn(cmd!, args, { cwd: REPO_ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    trackChild(this.child);
    this.exitedPromise = new Promise<void>((r) => {
      this.child.once('exit', (code, sig) => {
        this.exited = true;
        this.exitInfo = `${code ?? sig}`;
        this.waiter?.reject(new Error(`daemon ${this.label} exited (${this.exitInfo})`));
        this.waiter = null;
        r();
      });
    });
    const rl = createInterface({ input: this.child.stderr! });
    rl.on('line', (line) => this.onLine(line));
  }

  /** Spawns the daemon and waits until it listens. */
  static async start(opts: DaemonStartOptions): Promise<DaemonProcess> {
    const d = new DaemonProcess(opts);
    const ready = new Promise<void>((resolve, reject) => {
      d.readyResolve = resolve;
      d.exitedPromise.then(() =>
        reject(new Error(`daemon exited at start-up (${d.exitInfo}): ${d.lastLines()}`)),
      );
    });
    try {
      await withTimeout(ready, 20_000, `daemon ${opts.label} start`);
    } catch (err) {
      await d.stop();
      throw err;
    }
    return d;
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  path(i: number): string {
    return `${this.base}${i}`;
  }

  /** The last 50 lines the daemon wrote to stderr. */
  logLines(): readonly string[] {
    return this.tail;
  }

  lastLines(): string {
    return this.tail.slice(-8).join('\n');
  }

  private onLine(line: string): void {
    this.tail.push(line);
    if (this.tail.length > 50) this.tail.shift();
    let o: Record<string, unknown>;
    try {
      o = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return; // not a log line (a node warning, the profiler...)
    }
    if (o.msg === 'vhost-device-can started') {
      this.readyResolve?.();
      this.readyResolve = null;
      return;
    }
    if (o.msg !== 'stats' || this.waiter === null) return;
    if (typeof o.process === 'number') {
      this.waiter.process = {
        rssKb: Number(o.rssKb),
        heapUsedKb: Number(o.heapUsedKb),
        heapTotalKb: Number(o.heapTotalKb),
        externalKb: Number(o.externalKb),
      };
    } else if (typeof o.socket === 'number') {
      this.waiter.sockets.push({
        socket: o.socket,
        connected: o.connected === true,
        txOk: Number(o.txOk ?? 0),
        txNotOk: Number(o.txNotOk ?? 0),
        rxDelivered: Number(o.rxDelivered ?? 0),
        rxDroppedOverflow: Number(o.rxDroppedOverflow ?? 0),
        rxQueued: Number(o.rxQueued ?? 0),
      });
      // The bus line follows at once, but there is none before the first guest created the bus.
      if (this.waiter.sockets.length === this.sockets) {
        const w = this.waiter;
        const none = { bus: 'none', frames: 0, droppedOverflow: 0, framesAllocated: 0 };
        w.timer = setTimeout(() => this.finishStats(w, none), 200);
      }
    } else if (typeof o.host === 'string') {
      this.waiter.hosts.push({
        host: o.host,
        rxFrames: Number(o.rxFrames ?? 0),
        rxKernelDrops: Number(o.rxKernelDrops ?? 0),
        txFrames: Number(o.txFrames ?? 0),
      });
    } else if (typeof o.bus === 'string') {
      this.finishStats(this.waiter, {
        bus: o.bus,
        frames: Number(o.frames),
        droppedOverflow: Number(o.droppedOverflow),
        framesAllocated: Number(o.framesAllocated ?? 0),
      });
    }
  }

  private finishStats(w: StatsWaiter, bus: BusStatsLine): void {
    if (this.waiter !== w) return;
    this.waiter = null;
    if (w.timer !== null) clearTimeout(w.timer);
    w.resolve({
      atNs: process.hrtime.bigint(),
      sockets: w.sockets,
      bus,
      process: w.process,
      hosts: w.hosts,
    });
  }

  /** The daemon's counters, through SIGUSR1 (one dump at a time). */
  stats(timeoutMs = 10_000): Promise<DaemonStats> {
    if (this.exited) return Promise.reject(new Error(`daemon ${this.label} is not running`));
    if (this.waiter !== null) return Promise.reject(new Error('stats() already in progress'));
    const p = new Promise<DaemonStats>((resolve, reject) => {
      this.waiter = { sockets: [], hosts: [], process: null, timer: null, resolve, reject };
    });
    this.child.kill('SIGUSR1');
    return withTimeout(p, timeoutMs, `daemon ${this.label} SIGUSR1 stats`).catch((err: unknown) => {
      this.waiter = null;
      const last = this.tail.at(-1) ?? '';
      throw new Error(
        `${(err as Error).message} (daemon event loop blocked?) last log line: ${last.slice(0, 300)}`,
      );
    });
  }

  cpuSeconds(): number {
    return procCpuSeconds(this.pid);
  }

  memory(): ProcMemory {
    return procMemory(this.pid);
  }

  /** SIGTERM (the daemon dumps stats, removes its sockets, exits 0); SIGKILL after `graceMs`. */
  async stop(graceMs = 10_000): Promise<void> {
    if (!this.exited) {
      this.child.kill('SIGTERM');
      const t = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
      await this.exitedPromise;
      clearTimeout(t);
    }
    removeDir(this.dir);
  }
}
