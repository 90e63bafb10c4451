/**
 * A daemon under test in its own process (the compiled CLI of the bench's build, or the TypeScript
 * entry through tsx), whatever the daemon: spawn under `setpriv --pdeathsig KILL` where available,
 * read its JSON log lines from stderr, wait for its "started" line, collect one SIGUSR1 statistics
 * dump at a time, read CPU time and memory from /proc, stop it. Subclasses parse their own dump.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { REPO_ROOT } from './build.js';
import { removeDir, trackChild, trackDir, withTimeout } from './children.js';
import { type ProcMemory, procCpuSeconds, procMemory } from './proc.js';

const SETPRIV = '/usr/bin/setpriv';

export interface DaemonChildOptions {
  /** For messages: "daemon", "console daemon". */
  what: string;
  label: string;
  /** The "msg" of the log line that says the daemon serves. */
  startedMsg: string;
  /** Prefix of the temporary directory and file name of the socket base in it. */
  dirPrefix: string;
  socketName: string;
  /** The node arguments, given the socket base path. */
  argv(base: string): string[];
}

/** The dump being collected: fails when the daemon exits or the dump times out. */
export interface DumpWaiter {
  reject(e: Error): void;
}

export abstract class DaemonChild<W extends DumpWaiter, S> {
  readonly dir: string;
  readonly base: string;
  readonly child: ChildProcess;
  readonly label: string;
  readonly exitedPromise: Promise<void>;
  protected waiter: W | null = null;
  protected readonly tail: string[] = [];
  protected exited = false;
  private exitInfo = '';
  private readyResolve: (() => void) | null = null;
  private readonly what: string;
  private readonly startedMsg: string;

  protected constructor(opts: DaemonChildOptions) {
    this.what = opts.what;
    this.label = opts.label;
    this.startedMsg = opts.startedMsg;
    this.dir = mkdtempSync(join(tmpdir(), opts.dirPrefix));
    trackDir(this.dir);
    this.base = join(this.dir, opts.socketName);
    const argv = opts.argv(this.base);
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
        this.waiter?.reject(new Error(`${this.what} ${this.label} exited (${this.exitInfo})`));
        this.waiter = null;
        r();
      });
    });
    createInterface({ input: this.child.stderr! }).on('line', (line) => this.onLine(line));
  }

  /** Waits until the daemon logged that it serves; stops it when it does not. */
  protected async ready(): Promise<void> {
    const ready = new Promise<void>((resolve, reject) => {
      this.readyResolve = resolve;
      this.exitedPromise.then(() =>
        reject(new Error(`${this.what} exited at start-up (${this.exitInfo}): ${this.lastLines()}`)),
      );
    });
    try {
      await withTimeout(ready, 20_000, `${this.what} ${this.label} start`);
    } catch (err) {
      await this.stop();
      throw err;
    }
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
    if (o.msg === this.startedMsg) {
      this.readyResolve?.();
      this.readyResolve = null;
      return;
    }
    if (o.msg === 'stats' && this.waiter !== null) this.onStatsLine(this.waiter, o);
  }

  /** One line of a SIGUSR1 dump while `w` collects it. */
  protected abstract onStatsLine(w: W, o: Record<string, unknown>): void;

  /** Starts collecting a dump with `newWaiter` and sends SIGUSR1 (one dump at a time). */
  protected dump(
    newWaiter: (resolve: (s: S) => void, reject: (e: Error) => void) => W,
    timeoutMs: number,
  ): Promise<S> {
    if (this.exited) return Promise.reject(new Error(`${this.what} ${this.label} is not running`));
    if (this.waiter !== null) return Promise.reject(new Error('stats() already in progress'));
    const p = new Promise<S>((resolve, reject) => {
      this.waiter = newWaiter(resolve, reject);
    });
    this.child.kill('SIGUSR1');
    return withTimeout(p, timeoutMs, `${this.what} ${this.label} SIGUSR1 stats`).catch((err: unknown) => {
      this.waiter = null;
      const last = this.tail.at(-1) ?? '';
      throw new Error(`${(err as Error).message} (event loop blocked?) last log line: ${last.slice(0, 300)}`);
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
