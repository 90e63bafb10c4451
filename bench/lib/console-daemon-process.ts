/**
 * The console daemon under test in its own process: the compiled `vhost-device-console` CLI of the
 * bench's build with the network backend (guest i's console on TCP 127.0.0.1:PORT+i, its named port j
 * of `--port-name`, if any, on PORT + j*N + i with N guests). Counters come
 * from its SIGUSR1 dump (JSON log lines on stderr: a process line, then per guest a guest line and
 * one line per port), CPU time and memory from /proc.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { type BuildInfo, REPO_ROOT } from './build.js';
import { removeDir, trackChild, trackDir, withTimeout } from './children.js';
import { type ProcMemory, procCpuSeconds, procMemory } from './proc.js';

/** The per-port line of the console daemon's stats dump (guest by guest, port 0 first). */
export interface ConsolePortStatsLine {
  port: string;
  client: boolean;
  guestOpen: boolean;
  outputBytes: number;
  clientBytesOut: number;
  clientBytesIn: number;
  scrollbackDropped: number;
  clientDropped: number;
  /** Times the guest's output was paused for a slow client (absent in older daemons: 0). */
  outputPauses: number;
  stalledClients: number;
  /** Bytes written into guest RX buffers (absent while no guest is connected). */
  rxBytes: number;
  rxBuffers: number;
  inputWaiting: number;
}

export interface ConsoleDaemonStats {
  atNs: bigint;
  ports: ConsolePortStatsLine[];
  heapUsedKb: number | null;
}

export interface ConsoleDaemonStartOptions {
  build: BuildInfo;
  guests: number;
  /** TCP port of guest 0's console. */
  tcpPort: number;
  /** Named ports (`--port-name`), the same for every guest (default none). */
  portNames?: readonly string[];
  nodeFlags?: string[];
  label: string;
}

const SETPRIV = '/usr/bin/setpriv';

interface Waiter {
  ports: ConsolePortStatsLine[];
  heapUsedKb: number | null;
  resolve(s: ConsoleDaemonStats): void;
  reject(e: Error): void;
}

export class ConsoleDaemonProcess {
  readonly dir: string;
  readonly base: string;
  readonly child: ChildProcess;
  readonly label: string;
  readonly guests: number;
  readonly tcpPort: number;
  /** Ports per guest: the console and the named ports. */
  readonly portsPerGuest: number;
  private readonly tail: string[] = [];
  private waiter: Waiter | null = null;
  private readyResolve: (() => void) | null = null;
  private exited = false;
  private exitInfo = '';
  readonly exitedPromise: Promise<void>;

  private constructor(opts: ConsoleDaemonStartOptions) {
    this.label = opts.label;
    this.guests = opts.guests;
    this.tcpPort = opts.tcpPort;
    const names = opts.portNames ?? [];
    this.portsPerGuest = 1 + names.length;
    this.dir = mkdtempSync(join(tmpdir(), 'vdcon-bench-'));
    trackDir(this.dir);
    this.base = join(this.dir, 'con.sock');
    const argv = [
      ...(opts.nodeFlags ?? []),
      ...opts.build.consoleArgv,
      '-s',
      this.base,
      '-c',
      String(opts.guests),
      '-b',
      'network',
      '-p',
      String(opts.tcpPort),
      '--log-format',
      'json',
      ...names.flatMap((n) => ['--port-name', n]),
    ];
    const [cmd, ...args] = existsSync(SETPRIV)
      ? [SETPRIV, '--pdeathsig', 'KILL', '--', process.execPath, ...argv]
      : [process.execPath, ...argv];
    this.child = spawn(cmd!, args, { cwd: REPO_ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    trackChild(this.child);
    this.exitedPromise = new Promise<void>((r) => {
      this.child.once('exit', (code, sig) => {
        this.exited = true;
        this.exitInfo = `${code ?? sig}`;
        this.waiter?.reject(new Error(`console daemon ${this.label} exited (${this.exitInfo})`));
        this.waiter = null;
        r();
      });
    });
    createInterface({ input: this.child.stderr! }).on('line', (line) => this.onLine(line));
  }

  /** Spawns the daemon and waits until it listens (its TCP ports too). */
  static async start(opts: ConsoleDaemonStartOptions): Promise<ConsoleDaemonProcess> {
    const d = new ConsoleDaemonProcess(opts);
    const ready = new Promise<void>((resolve, reject) => {
      d.readyResolve = resolve;
      d.exitedPromise.then(() =>
        reject(new Error(`console daemon exited at start-up (${d.exitInfo}): ${d.lastLines()}`)),
      );
    });
    try {
      await withTimeout(ready, 20_000, `console daemon ${opts.label} start`);
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

  /** TCP port of guest `guest`'s port `port` (0: the console, j: the j-th --port-name). */
  tcpPortOf(guest: number, port: number): number {
    if (port < 0 || port >= this.portsPerGuest) throw new Error(`no port ${port}`);
    return this.tcpPort + port * this.guests + guest;
  }

  /** The line of guest `guest`'s port `port` in a dump of this daemon. */
  portLine(s: ConsoleDaemonStats | null, guest: number, port: number): ConsolePortStatsLine | undefined {
    return s?.ports[guest * this.portsPerGuest + port];
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
      return;
    }
    if (o.msg === 'vhost-device-console started') {
      this.readyResolve?.();
      this.readyResolve = null;
      return;
    }
    const w = this.waiter;
    if (o.msg !== 'stats' || w === null) return;
    if (typeof o.process === 'number') {
      w.heapUsedKb = Number(o.heapUsedKb);
    } else if (typeof o.port === 'string') {
      w.ports.push({
        port: o.port,
        client: o.client === true,
        guestOpen: o.guestOpen === true,
        outputBytes: Number(o.outputBytes ?? 0),
        clientBytesOut: Number(o.clientBytesOut ?? 0),
        clientBytesIn: Number(o.clientBytesIn ?? 0),
        scrollbackDropped: Number(o.scrollbackDropped ?? 0),
        clientDropped: Number(o.clientDropped ?? 0),
        outputPauses: Number(o.outputPauses ?? 0),
        stalledClients: Number(o.stalledClients ?? 0),
        rxBytes: Number(o.rxBytes ?? 0),
        rxBuffers: Number(o.rxBuffers ?? 0),
        inputWaiting: Number(o.inputWaiting ?? 0),
      });
      // The dump is complete after one line per port of every guest.
      if (w.ports.length === this.guests * this.portsPerGuest) {
        this.waiter = null;
        w.resolve({ atNs: process.hrtime.bigint(), ports: w.ports, heapUsedKb: w.heapUsedKb });
      }
    }
  }

  /** The daemon's counters, through SIGUSR1 (one dump at a time). */
  stats(timeoutMs = 10_000): Promise<ConsoleDaemonStats> {
    if (this.exited) return Promise.reject(new Error(`console daemon ${this.label} is not running`));
    if (this.waiter !== null) return Promise.reject(new Error('stats() already in progress'));
    const p = new Promise<ConsoleDaemonStats>((resolve, reject) => {
      this.waiter = { ports: [], heapUsedKb: null, resolve, reject };
    });
    this.child.kill('SIGUSR1');
    return withTimeout(p, timeoutMs, `console daemon ${this.label} SIGUSR1 stats`).catch((err: unknown) => {
      this.waiter = null;
      throw new Error(`${(err as Error).message}; last log line: ${(this.tail.at(-1) ?? '').slice(0, 300)}`);
    });
  }

  cpuSeconds(): number {
    return procCpuSeconds(this.pid);
  }

  memory(): ProcMemory {
    return procMemory(this.pid);
  }

  /** SIGTERM (the daemon removes its sockets and exits 0); SIGKILL after `graceMs`. */
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
