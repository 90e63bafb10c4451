// Runs one of the project's commands as a user does: a child process from the TypeScript sources
// (through tsx), its output collected, with helpers to wait for it and for its exit.
import {
  type ChildProcess,
  type SpawnSyncReturns,
  type StdioOptions,
  spawn,
  spawnSync,
} from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

export const ROOT = resolve(import.meta.dirname, '../..');

export interface Cli {
  /** The node arguments that run the command (for spawning it yourself). */
  readonly argv: readonly string[];
  runSync(args: string[], stdio?: StdioOptions): SpawnSyncReturns<string>;
  start(args: string[], extraStdio?: (number | 'ignore')[]): { child: ChildProcess; output: () => string };
}

/**
 * `entry` is a file under src/cli, e.g. "vhost-device-can.ts". Node gets the options the entry's
 * `#!/usr/bin/env -S node OPTIONS` line gives it, as when the command is run.
 */
export function cli(entry: string): Cli {
  const file = join(ROOT, 'src/cli', entry);
  const argv = [...shebangNodeOptions(file), '--import', 'tsx', file];
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

/** The node options of a `#!/usr/bin/env -S node OPTIONS` first line (none for `#!/usr/bin/env node`). */
export function shebangNodeOptions(file: string): string[] {
  const first = readFileSync(file, 'utf8').split('\n', 1)[0]!;
  const m = /^#!\/usr\/bin\/env(?: -S)? node(.*)$/.exec(first);
  if (m === null) throw new Error(`${file}: not a node script (${first})`);
  return m[1]!.split(' ').filter((x) => x !== '');
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
