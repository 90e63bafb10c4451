// Shared plumbing for the vhost-user integration tests: an in-process CAN daemon in a fresh
// tmpdir, front-ends connected to it, host-side bus ports, and resource counters.
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { type CanFrame, makeCanFrame } from '../../src/core/bus/can-frame.js';
import type { CanHub, HubPort } from '../../src/core/bus/hub.js';
import { type CanDaemon, type CanDaemonOptions, startCanDaemon } from '../../src/node/can/can-daemon.js';
import { type CanDriverOptions, CanTestDriver } from '../../src/node/frontend/can-driver.js';
import { VhostUserFrontend } from '../../src/node/frontend/frontend.js';
import { GuestRam } from '../../src/node/frontend/guest-ram.js';
import type { ChildReply, ChildRequest } from './daemon-child.js';

export interface TestDaemon {
  can: CanDaemon;
  dir: string;
  paths: string[];
}

/** Starts a CAN daemon with `sockets` sockets in a fresh tmpdir; stopped (and removed) after the test. */
export function startTestDaemon(
  t: TestContext,
  opts: Omit<Partial<CanDaemonOptions>, 'paths'> & { sockets?: number } = {},
): TestDaemon {
  const dir = mkdtempSync(`${tmpdir()}/vhu-`);
  const { sockets = 1, ...rest } = opts;
  const paths = Array.from({ length: sockets }, (_, i) => join(dir, `can.sock${i}`));
  const can = startCanDaemon({ ...rest, paths });
  t.after(() => {
    can.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  return { can, dir, paths };
}

/** A connected front-end and its guest RAM, both closed after the test. */
export function connect(
  t: TestContext,
  path: string,
  opts: { timeoutMs?: number } = {},
): { fe: VhostUserFrontend; ram: GuestRam } {
  const fe = VhostUserFrontend.connect(path, { timeoutMs: opts.timeoutMs ?? 3000 });
  const ram = new GuestRam();
  t.after(() => {
    fe.close();
    ram.close();
  });
  return { fe, ram };
}

/** connect() + a started CanTestDriver (QEMU handshake A and B). */
export async function startDriver(
  t: TestContext,
  path: string,
  opts: CanDriverOptions = {},
): Promise<{ fe: VhostUserFrontend; ram: GuestRam; drv: CanTestDriver }> {
  const { fe, ram } = connect(t, path, opts.timeoutMs === undefined ? {} : { timeoutMs: opts.timeoutMs });
  const drv = await CanTestDriver.create(fe, ram, opts);
  return { fe, ram, drv };
}

/** A host-side port on `hub` that records every frame it receives. */
export function hostPort(t: TestContext, hub: CanHub, name = 'host'): HubPort & { frames(): CanFrame[] } {
  const frames: CanFrame[] = [];
  const port: HubPort = hub.attach(
    {
      onFramesAvailable() {
        for (let f = port.take(); f !== undefined; f = port.take()) frames.push(f);
      },
    },
    { name },
  );
  t.after(() => port.detach());
  return Object.assign(port, { frames: () => frames });
}

export function frame(
  id: number,
  data: number[] = [],
  extra: { extended?: boolean; fd?: boolean } = {},
): CanFrame {
  return makeCanFrame({ id, data, ...extra });
}

/** Resolves when `pick` returns a value other than undefined; rejects after `ms`. */
export async function waitFor<T>(what: string, pick: () => T | undefined, ms = 2000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = pick();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

/** Waits until the daemon has dropped the connection on socket `index` (it then accepts again). */
export function waitDisconnected(can: CanDaemon, index = 0, ms = 2000): Promise<true> {
  return waitFor(
    `socket ${index} to be free`,
    () => (can.daemon.status()[index]?.connected ? undefined : true),
    ms,
  );
}

/** Waits until the daemon serves a connection on socket `index`. */
export function waitConnected(can: CanDaemon, index = 0, ms = 2000): Promise<true> {
  return waitFor(
    `socket ${index} to be connected`,
    () => (can.daemon.status()[index]?.connected ? true : undefined),
    ms,
  );
}

export function fdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

export function mapsCount(): number {
  return readFileSync('/proc/self/maps', 'utf8').split('\n').length;
}

/** Lines of /proc/self/maps that belong to memfd guest RAM. */
export function memfdMaps(): number {
  return readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((l) => l.includes('/memfd:')).length;
}

/** Runs the GC twice (tests run with --expose-gc) so counts are not skewed by pending finalizers. */
export async function settle(): Promise<void> {
  const gc = (globalThis as { gc?: () => void }).gc;
  for (let i = 0; i < 2; i++) {
    gc?.();
    await sleep(5);
  }
}

/**
 * Grows V8's young generation to its steady-state size (it grows under allocation pressure, in
 * 256 KiB pages that show up as /proc/self/maps lines), so a maps count taken afterwards is not
 * skewed by heap sizing. Call before the baseline of a leak test.
 */
export function warmHeap(): void {
  let keep: object[] = [];
  for (let i = 0; i < 3_000_000; i++) {
    keep.push({ i });
    if (keep.length > 200_000) keep = [];
  }
}

/** A 12-byte vhost-user header. */
export function header(request: number, flags: number, size: number): Uint8Array {
  const b = new Uint8Array(12);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, request, true);
  dv.setUint32(4, flags, true);
  dv.setUint32(8, size, true);
  return b;
}

export interface ChildDaemon {
  pid: number;
  path: string;
  /** Sends a request over IPC and resolves with the child's reply (in order). */
  request(req: ChildRequest): Promise<ChildReply>;
  /** Open fds of the child (/proc/PID/fd). */
  fds(): number;
  /** Lines of the child's /proc/PID/maps that map memfd guest RAM. */
  memfdMaps(): number;
  /** Resident set size of the child in bytes (/proc/PID/status VmRSS). */
  rss(): number;
  /** User + system CPU time of the child in clock ticks (/proc/PID/stat). */
  cpuTicks(): number;
}

/**
 * Starts a CAN daemon with one socket in a child process (test/helpers/daemon-child.ts), optionally
 * with RLIMIT_NOFILE lowered to `nofile`; killed after the test.
 */
export async function startChildDaemon(t: TestContext, opts: { nofile?: number } = {}): Promise<ChildDaemon> {
  const dir = mkdtempSync(`${tmpdir()}/vhu-child-`);
  const path = join(dir, 'can.sock0');
  const script = new URL('./daemon-child.ts', import.meta.url).pathname;
  const args = ['--import', 'tsx', '--expose-gc', script, path];
  // bash sets the limit and execs node, so the pid is node's; the IPC fd survives the exec.
  const limit = opts.nofile === undefined ? '' : `ulimit -n ${opts.nofile} && `;
  const child: ChildProcess = spawn('bash', ['-c', `${limit}exec "$0" "$@"`, process.execPath, ...args], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  t.after(() => {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });
  const waiting: ((r: ChildReply) => void)[] = [];
  child.on('message', (m: ChildReply) => waiting.shift()?.(m));
  const next = (): Promise<ChildReply> =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the daemon child did not answer')), 20_000);
      waiting.push((r) => {
        clearTimeout(timer);
        resolve(r);
      });
    });
  await next(); // ready
  const pid = child.pid!;
  const proc = (f: string): string => readFileSync(`/proc/${pid}/${f}`, 'utf8');
  return {
    pid,
    path,
    request(req) {
      const r = next();
      child.send(req);
      return r;
    },
    fds: () => readdirSync(`/proc/${pid}/fd`).length,
    memfdMaps: () =>
      proc('maps')
        .split('\n')
        .filter((l) => l.includes('/memfd:')).length,
    rss: () => Number(/VmRSS:\s+(\d+) kB/.exec(proc('status'))![1]) * 1024,
    cpuTicks: () => {
      // Fields after the ")" that ends the command name: state is field 3, utime 14, stime 15.
      const f = proc('stat')
        .slice(proc('stat').lastIndexOf(')') + 2)
        .split(' ');
      return Number(f[11]) + Number(f[12]);
    },
  };
}
