// Shared plumbing for the vhost-user integration tests: an in-process CAN daemon in a fresh
// tmpdir, front-ends connected to it, host-side bus ports, and resource counters.
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
