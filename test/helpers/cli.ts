// Runs one of the project's commands as a user does: a child process from the TypeScript sources
// (through tsx), its output collected, with helpers to wait for it and for its exit.
import {
  type ChildProcess,
  type SpawnSyncReturns,
  type StdioOptions,
  spawn,
  spawnSync,
} from 'node:child_process';
import { join, resolve } from 'node:path';

export const ROOT = resolve(import.meta.dirname, '../..');

export interface Cli {
  /** The node arguments that run the command (for spawning it yourself). */
  readonly argv: readonly string[];
  runSync(args: string[], stdio?: StdioOptions): SpawnSyncReturns<string>;
  start(args: string[], extraStdio?: (number | 'ignore')[]): { child: ChildProcess; output: () => string };
}

/** `entry` is a file under src/cli, e.g. "vhost-device-can.ts". */
export function cli(entry: string): Cli {
  const argv = ['--import', 'tsx', join(ROOT, 'src/cli', entry)];
  return {
    argv,
    runSync: (args, stdio) =>
      spawnSync(process.execPath, [...argv, ...args], {
        cwd: ROOT,
        encoding: 'utf8',
        timeout: 20_000,
        ...(stdio === undefined ? {} : { stdio }),
      }),
    start: (args, extraStdio = []) => {
      const child = spawn(process.execPath, [...argv, ...args], {
        cwd: ROOT,
        stdio: ['ignore', 'pipe', 'pipe', ...extraStdio],
      });
      let out = '';
      child.stdout!.on('data', (d) => {
        out += d;
      });
      child.stderr!.on('data', (d) => {
        out += d;
      });
      return { child, output: () => out };
    },
  };
}

export async function waitFor(cond: () => boolean, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 50));
  }
}

export function exited(child: ChildProcess): Promise<number | null> {
  return new Promise((r) => {
    if (child.exitCode !== null) r(child.exitCode);
    else child.on('exit', (code) => r(code));
  });
}
