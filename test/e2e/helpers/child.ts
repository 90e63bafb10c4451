/** Child processes of the end-to-end helpers (QEMU, the host-kernel runner) and their work folders. */
import type { ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync } from 'node:fs';
import { join } from 'node:path';

// Every child still running is SIGKILLed when this process exits (normal exit or uncaught error;
// signal deaths are covered by setpriv's pdeathsig, which the callers put in front of the command).
const live = new Set<ChildProcess>();
let exitHookInstalled = false;

export function track(child: ChildProcess): void {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', () => {
      for (const c of live) c.kill('SIGKILL');
    });
  }
  live.add(child);
  child.once('exit', () => live.delete(child));
}

export interface GracefulStop {
  /** SIGTERM now, SIGKILL after the grace period if the child is still running. Idempotent. */
  stop(): void;
  /** The child is gone: no SIGKILL any more. */
  exited(): void;
  readonly hasExited: boolean;
}

export function gracefulStop(child: ChildProcess, graceMs: number): GracefulStop {
  let gone = false;
  let killTimer: NodeJS.Timeout | undefined;
  return {
    stop(): void {
      if (gone || killTimer !== undefined) return;
      child.kill('SIGTERM');
      killTimer = setTimeout(() => {
        if (!gone) child.kill('SIGKILL');
      }, graceMs);
      killTimer.unref();
    },
    exited(): void {
      gone = true;
      if (killTimer !== undefined) clearTimeout(killTimer);
    },
    get hasExited(): boolean {
      return gone;
    },
  };
}

/** A new folder under .test-artifacts/ of `root`, named `<prefix>-<time>-XXXXXX`. */
export function freshWorkDir(root: string, prefix: string): string {
  const base = join(root, '.test-artifacts');
  mkdirSync(base, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  return mkdtempSync(join(base, `${prefix}-${stamp}-`));
}
