/**
 * The orchestrator's handle on a load process (bench/lib/worker.ts, compiled or through tsx).
 */
import { type ChildProcess, fork } from 'node:child_process';
import type { BuildInfo } from './build.js';
import { trackChild, withTimeout } from './children.js';
import type { WorkerCommand, WorkerCommands, WorkerReply } from './protocol.js';

interface Pending {
  resolve(v: unknown): void;
  reject(e: Error): void;
}

export class WorkerClient {
  readonly name: string;
  readonly child: ChildProcess;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private exited = false;

  /** `fds` are passed to the child as its fds 4, 5, ... (fd 3 is the IPC channel). */
  private constructor(build: BuildInfo, name: string, fds: readonly number[]) {
    this.name = name;
    const argv = build.workerArgv;
    this.child = fork(argv.at(-1)!, [], {
      execArgv: argv.slice(0, -1),
      stdio: ['ignore', 'inherit', 'inherit', 'ipc', ...fds],
      serialization: 'json',
    });
    trackChild(this.child);
    this.child.on('message', (raw: unknown) => {
      const r = raw as WorkerReply;
      const p = this.pending.get(r.id);
      if (p === undefined) return;
      this.pending.delete(r.id);
      if (r.ok) p.resolve(r.result);
      else p.reject(new Error(`${this.name}: ${r.error}`));
    });
    this.child.once('exit', (code, sig) => {
      this.exited = true;
      const err = new Error(`${this.name} (pid ${this.child.pid}) exited (${code ?? sig})`);
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    });
  }

  static async start(build: BuildInfo, name: string, fds: readonly number[] = []): Promise<WorkerClient> {
    const w = new WorkerClient(build, name, fds);
    await w.call('ping', {}, 20_000);
    return w;
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  call<K extends WorkerCommand>(
    cmd: K,
    args: WorkerCommands[K][0],
    timeoutMs = 30_000,
  ): Promise<WorkerCommands[K][1]> {
    if (this.exited) return Promise.reject(new Error(`${this.name} is not running`));
    const id = this.nextId++;
    const p = new Promise<WorkerCommands[K][1]>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
    });
    this.child.send({ id, cmd, args });
    return withTimeout(p, timeoutMs, `${this.name} ${cmd}`).finally(() => this.pending.delete(id));
  }

  /** Asks the worker to exit (it closes its guests), SIGKILL after a grace period. */
  async stop(graceMs = 3000): Promise<void> {
    if (this.exited) return;
    const gone = new Promise<void>((r) => this.child.once('exit', () => r()));
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await gone;
    clearTimeout(t);
  }
}
