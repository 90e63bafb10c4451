/**
 * What the benchmark runs: a private compiled snapshot of the repository.
 *
 * src/ and bench/ are compiled with tsc into a temporary directory, and the native addon,
 * package.json and the monitor page (web/) are copied next to the output, node_modules linked (the
 * compiled addon.js finds the addon three directories up, as it does from dist/). The daemon, the
 * load processes and the orchestrator's own socketpairs then all use that snapshot:
 * - the daemon runs compiled JS, as in production (`node .../src/cli/vhost-device-can.js`);
 * - the load processes run compiled JS too, without tsx;
 * - other people rebuilding dist/ or build/Release (node-gyp removes the addon while it builds) or
 *   editing src/ during the run cannot break it half-way, and the shared dist/ is never written.
 *
 * A tree that does not type-check is compiled anyway (tsc still emits) when the daemon then starts;
 * the note says so. `--tsx` skips all this and runs the TypeScript sources through tsx.
 */
import { spawnSync } from 'node:child_process';
import {
  copyFileSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { NativeAddon } from '../../src/node/native/addon.js';
// The node options the vhost-device-can command runs with (its #! line, npm start).
import { REALTIME_NODE_FLAGS } from '../../src/node/realtime-flags.js';
import { sleep, trackDir } from './children.js';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const ADDON_REL = 'build/Release/vhost_native.node';

export interface BuildInfo {
  kind: 'compiled' | 'tsx';
  /** node flags + script of the daemon CLI (arguments follow) */
  daemonArgv: string[];
  /** node flags + script of the console daemon CLI (vhost-device-console) */
  consoleArgv: string[];
  /** node flags + script of a load process */
  workerArgv: string[];
  /** module URL of the addon binding to import in the orchestrator */
  addonModule: string;
  note: string;
}

function tscErrors(out: string): string {
  return out
    .split('\n')
    .filter((l) => /error TS/.test(l))
    .slice(0, 3)
    .join(' | ');
}

function daemonStarts(argv: string[]): string | null {
  const r = spawnSync(process.execPath, [...argv, '--version'], { encoding: 'utf8', timeout: 30_000 });
  return r.status === 0 ? null : `${r.stderr ?? ''}`.trim().split('\n').slice(-3).join(' | ');
}

/** Waits (up to `ms`) for the addon to exist: a concurrent node-gyp rebuild removes it for a while. */
async function waitForAddon(ms: number, log: (s: string) => void): Promise<string> {
  const p = join(REPO_ROOT, ADDON_REL);
  const end = Date.now() + ms;
  let said = false;
  while (!existsSync(p)) {
    if (Date.now() > end) throw new Error(`${p} is missing (build it with: node scripts/build-native.mjs)`);
    if (!said) log(`${ADDON_REL} is missing (being rebuilt?); waiting up to ${ms / 1000} s`);
    said = true;
    await sleep(500);
  }
  if (said) await sleep(2000); // let the writer finish
  return p;
}

export async function prepareBuild(opts: {
  tsx: boolean;
  log: (s: string) => void;
  /** Parent directory of the snapshot (default: the OS temporary directory). */
  parentDir?: string;
}): Promise<BuildInfo> {
  if (opts.tsx) {
    await waitForAddon(120_000, opts.log);
    return {
      kind: 'tsx',
      daemonArgv: [...REALTIME_NODE_FLAGS, '--import', 'tsx', join(REPO_ROOT, 'src/cli/vhost-device-can.ts')],
      consoleArgv: ['--import', 'tsx', join(REPO_ROOT, 'src/cli/vhost-device-console.ts')],
      workerArgv: ['--import', 'tsx', join(REPO_ROOT, 'bench/lib/worker.ts')],
      addonModule: pathToFileURL(join(REPO_ROOT, 'src/node/native/addon.ts')).href,
      note: 'TypeScript sources through tsx (--tsx)',
    };
  }
  const tmp = mkdtempSync(join(opts.parentDir ?? tmpdir(), 'vdc-bench-build-'));
  trackDir(tmp);
  const out = join(tmp, 'out');
  const tsconfig = join(tmp, 'tsconfig.json');
  writeFileSync(
    tsconfig,
    JSON.stringify(
      {
        extends: join(REPO_ROOT, 'tsconfig.base.json'),
        compilerOptions: {
          types: ['node'],
          typeRoots: [join(REPO_ROOT, 'node_modules/@types')],
          rootDir: REPO_ROOT,
          outDir: out,
          declaration: false,
          sourceMap: true,
          noEmitOnError: false,
        },
        include: [join(REPO_ROOT, 'src'), join(REPO_ROOT, 'bench')],
      },
      null,
      2,
    ),
  );
  opts.log(`compiling src/ and bench/ into ${out} ...`);
  const r = spawnSync(join(REPO_ROOT, 'node_modules/.bin/tsc'), ['-p', tsconfig], {
    cwd: REPO_ROOT,
    encoding: 'utf8',
    timeout: 300_000,
  });
  const errors = r.status === 0 ? '' : tscErrors(`${r.stdout ?? ''}${r.stderr ?? ''}`);
  const daemonEntry = join(out, 'src/cli/vhost-device-can.js');
  const consoleEntry = join(out, 'src/cli/vhost-device-console.js');
  const workerEntry = join(out, 'bench/lib/worker.js');
  if (!existsSync(daemonEntry) || !existsSync(consoleEntry) || !existsSync(workerEntry)) {
    throw new Error(`tsc produced no ${daemonEntry} (${errors || `exit ${r.status}`})`);
  }
  const addon = await waitForAddon(120_000, opts.log);
  mkdirSync(join(out, 'build/Release'), { recursive: true });
  copyFileSync(addon, join(out, ADDON_REL));
  copyFileSync(join(REPO_ROOT, 'package.json'), join(out, 'package.json'));
  // Runtime dependencies (prom-client, uplot) resolve from the snapshot as from dist/, and the
  // monitor page's files sit where the compiled server looks for them.
  symlinkSync(join(REPO_ROOT, 'node_modules'), join(out, 'node_modules'), 'dir');
  cpSync(join(REPO_ROOT, 'web'), join(out, 'web'), { recursive: true });
  const bad = daemonStarts([daemonEntry]) ?? daemonStarts([consoleEntry]);
  if (bad !== null) {
    throw new Error(`the compiled daemon does not start: ${bad}${errors ? ` (tsc: ${errors})` : ''}`);
  }
  return {
    kind: 'compiled',
    daemonArgv: [...REALTIME_NODE_FLAGS, daemonEntry],
    consoleArgv: [consoleEntry],
    workerArgv: [workerEntry],
    addonModule: pathToFileURL(join(out, 'src/node/native/addon.js')).href,
    note: errors
      ? `compiled snapshot of src/ (tsc reported errors, JS emitted anyway: ${errors})`
      : 'compiled snapshot of src/ (tsc, private outDir; addon copied)',
  };
}

/** The native binding of the build (the orchestrator makes socketpairs with it). */
export async function loadNative(build: BuildInfo): Promise<NativeAddon> {
  const m = (await import(build.addonModule)) as { native: NativeAddon };
  return m.native;
}
