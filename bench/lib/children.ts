/**
 * Process hygiene for the benchmarks: every child (daemon, load process, QEMU) is registered here
 * and SIGKILLed when the bench process exits for any reason; SIGINT/SIGTERM run the cleanups
 * (temporary directories) and exit. Children are killed by their own pid only.
 */
import type { ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';

const live = new Set<ChildProcess>();
const dirs = new Set<string>();
let installed = false;

function killAll(): void {
  for (const c of live) {
    try {
      c.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
  live.clear();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  dirs.clear();
}

function install(): void {
  if (installed) return;
  installed = true;
  process.on('exit', killAll);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      process.stderr.write(`\nbench: ${sig}: killing ${live.size} child process(es)\n`);
      killAll();
      process.exit(130);
    });
  }
}

export function trackChild(c: ChildProcess): void {
  install();
  live.add(c);
  c.once('exit', () => live.delete(c));
}

/** A directory removed at exit (unless removed earlier with untrackDir + rmSync). */
export function trackDir(dir: string): void {
  install();
  dirs.add(dir);
}

export function removeDir(dir: string): void {
  dirs.delete(dir);
  rmSync(dir, { recursive: true, force: true });
}

/** Resolves with `p`, or rejects after `ms` with a message naming `what`. */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${what}: no result within ${Math.round(ms / 1000)} s`)), ms);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(t);
        reject(e);
      },
    );
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
