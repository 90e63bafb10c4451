// Shared pieces of the end-to-end CAN scenarios (test/e2e/can-*.test.ts): real Linux guests
// (test/e2e/helpers/guest.ts) against the vhost-device-can daemon running in this process
// (startCanDaemon), with a "tap" port on the virtual bus standing in for the rest of the bus.
//
// Evidence: every scenario gets its own directory under <repo>/.test-artifacts/ (E2eRun.workDir)
// holding daemon.log (the daemon's log lines plus "e2e" lines for what the host did), one
// sub-directory per guest boot (console.log, qemu-cmdline.txt, share/ with the scenario and
// what it wrote) and results.json (measured figures). Every assertion made through E2eRun
// names that directory.

import assert from 'node:assert/strict';
import { createWriteStream, mkdirSync, mkdtempSync, rmSync, type WriteStream, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import {
  type CanFrame,
  formatCandump,
  parseCandump,
  parseCandumpLine,
} from '../../../src/core/bus/can-frame.js';
import type { CanHub, HubPort } from '../../../src/core/bus/hub.js';
import type { CanDevice } from '../../../src/core/devices/can/can-device.js';
import { type CanDaemon, type CanDaemonOptions, startCanDaemon } from '../../../src/node/can/can-daemon.js';
import { type LogLevel, StructuredLogger } from '../../../src/node/log.js';
import {
  type ConsoleDeviceSpec,
  findGuestKit,
  type GuestKit,
  type GuestResult,
  REPO_ROOT,
  type RunningGuest,
  startGuest,
} from './guest.js';

// ---------------------------------------------------------------------------------------------
// The kit

const found = findGuestKit();
/** The guest kit, or undefined when it has not been built. */
export const guestKit: GuestKit | undefined = 'missing' in found ? undefined : found;
/** Why the e2e tests skip (undefined when the kit is there): pass as the test's `skip` option. */
export const skipWithoutKit: string | undefined = 'missing' in found ? found.missing : undefined;

// ---------------------------------------------------------------------------------------------
// Guest-side shell (the guest's /bin/sh is dash; busybox applets, iproute2 `ip`, can-utils)

/**
 * Prepended to every scenario. Handshakes with the host go through files in the 9p share (/mnt):
 * the guest `signal`s NAME (the host waits with RunningGuest.waitForFile), the host creates a
 * file the guest `await_host`s. A failure writes /mnt/failure.txt and exits non-zero.
 */
export const GUEST_PRELUDE = `
PATH=/usr/sbin:/usr/bin:/sbin:/bin
fail() { echo "scenario failed: $*"; echo "$*" > /mnt/failure.txt; exit 1; }
# signal NAME [TEXT]: create /mnt/NAME atomically (contents TEXT, default "ok")
signal() { _t=ok; [ $# -lt 2 ] || _t=$2; echo "$_t" > "/mnt/$1.tmp" && mv "/mnt/$1.tmp" "/mnt/$1"; }
# await_host NAME [SECONDS]: wait for the host to create /mnt/NAME
await_host() {
  _n=0; _s=60; [ $# -lt 2 ] || _s=$2
  until [ -f "/mnt/$1" ]; do
    _n=$((_n + 1)); [ $_n -le $((_s * 20)) ] || fail "the host never created /mnt/$1"
    sleep 0.05
  done
}
# wait_rcv N: until at least N CAN_RAW filters are registered on can0 (candump bound)
wait_rcv() {
  _n=0
  until [ "$(cat /proc/net/can/rcvlist_* | grep -c ' can0 ')" -ge "$1" ]; do
    _n=$((_n + 1)); [ $_n -le 200 ] || fail "fewer than $1 receivers on can0"
    sleep 0.05
  done
}
# can_stat NAME: a can0 counter from /sys/class/net/can0/statistics (tx_packets, rx_packets, ...)
can_stat() { cat "/sys/class/net/can0/statistics/$1"; }
# wait_stat NAME VALUE [SECONDS]: until counter NAME of can0 reaches VALUE
wait_stat() {
  _n=0; _s=30; [ $# -lt 3 ] || _s=$3
  until [ "$(can_stat "$1")" -ge "$2" ]; do
    _n=$((_n + 1)); [ $_n -le $((_s * 20)) ] || fail "can0 $1 is $(can_stat "$1"), expected $2"
    sleep 0.05
  done
}
# wait_busoff: until can0 reports state BUS-OFF (10 s); its details then go to /mnt/link-busoff.txt
wait_busoff() {
  _n=0
  until ip -details link show can0 | grep -q 'state BUS-OFF'; do
    _n=$((_n + 1)); [ $_n -le 200 ] || { ip -details link show can0 > /mnt/link-busoff.txt; fail "no BUS-OFF"; }
    sleep 0.05
  done
  ip -details -statistics link show can0 > /mnt/link-busoff.txt
}
# save_stats NAME: every can0 counter as "name value" lines into /mnt/NAME
save_stats() {
  for _f in /sys/class/net/can0/statistics/*; do echo "$(basename "$_f") $(cat "$_f")"; done > "/mnt/$1"
}
# wait_pid SECONDS PID: kill PID after SECONDS unless it has exited; then wait for it
wait_pid() {
  ( sleep "$1"; kill "$2" 2>/dev/null ) &
  _w=$!
  wait "$2"; _rc=$?
  kill $_w 2>/dev/null
  return $_rc
}
`;

/** Parses `save_stats` output into numbers. */
export function parseGuestStats(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const m = /^(\w+) (\d+)$/.exec(line);
    if (m) out[m[1]!] = Number(m[2]);
  }
  return out;
}

/** The CAN state in `ip -details link show can0` output (`ERROR-ACTIVE`, `BUS-OFF`, ...), or null. */
export function canLinkState(ipDetails: string): string | null {
  return /\bcan (?:<[^>]*> )?state (\S+)/.exec(ipDetails)?.[1] ?? null;
}

// ---------------------------------------------------------------------------------------------
// Frames and candump text

/** A cansend/candump frame string as our bus model (parseCandump), e.g. `123##1AABB`. */
export function frameOf(text: string): CanFrame {
  return parseCandump(text);
}

/**
 * The frame as it is after a trip through virtio-can (VIRTIO 1.4 has no BRS/ESI bits, so the Linux
 * driver cannot convey them and the device never reports them), formatted as our hub tap prints it:
 * FD frames as `##0`.
 */
export function viaVirtio(text: string): string {
  return formatCandump({ ...frameOf(text), brs: false, esi: false });
}

/**
 * What `candump -L` in the guest prints for a frame that reached it through virtio-can: BRS/ESI
 * are lost and the guest's can-utils prints CANFD_FDF in the FD flags nibble (`##4`).
 */
export function guestCandumpOf(text: string): string {
  const f = frameOf(text);
  const s = formatCandump({ ...f, brs: false, esi: false });
  return f.fd ? s.replace('##0', '##4') : s;
}

/**
 * The frame part of every line of a guest's `candump -L` output (`(sec.usec) can0 FRAME`), in
 * order. Throws on a line that is not such a line (naming it).
 */
export function candumpFrames(text: string, ifname = 'can0'): string[] {
  const lines = text.split('\n');
  if (lines.at(-1) === '') lines.pop();
  return lines.map((line, i) => {
    const m = /^\(\d{10}\.\d{6}\) (\S+) (\S+)$/.exec(line);
    if (!m || m[1] !== ifname)
      throw new Error(`candump line ${i + 1} is not "(ts) ${ifname} FRAME": ${line}`);
    parseCandumpLine(line); // must also be a frame our parser accepts
    return m[2]!;
  });
}

/**
 * The classic 8-byte frames `cangen -I ID -L 8 -D i -n COUNT` sends: payload = a little-endian
 * counter that starts at 0 (checked against can-utils 2023.03 in the kit).
 */
export function cangenIncrementing(id: string, count: number, first = 0): string[] {
  const out: string[] = [];
  const b = Buffer.alloc(8);
  for (let i = 0; i < count; i++) {
    b.writeBigUInt64LE(BigInt(first + i));
    out.push(`${id}#${b.toString('hex').toUpperCase()}`);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// A tap on the bus

export interface Tap {
  readonly port: HubPort;
  /** Every frame received, in bus order. */
  readonly frames: CanFrame[];
  /** `formatCandump` of every frame received (FD as `##0`/`##1`). */
  lines(): string[];
  /** Frames sent by the given hub port id. */
  from(origin: number): CanFrame[];
  /** Resolves once `count` frames have been received; rejects after `timeoutMs`. */
  waitFor(count: number, timeoutMs?: number): Promise<void>;
  transmit(text: string | CanFrame): void;
}

export function attachTap(hub: CanHub, name = 'tap', context = ''): Tap {
  const frames: CanFrame[] = [];
  const waiters: Array<{ count: number; resolve: () => void }> = [];
  const port: HubPort = hub.attach(
    {
      onFramesAvailable() {
        for (let f = port.take(); f !== undefined; f = port.take()) frames.push(f);
        for (let i = waiters.length - 1; i >= 0; i--) {
          const w = waiters[i]!;
          if (frames.length >= w.count) {
            waiters.splice(i, 1);
            w.resolve();
          }
        }
      },
    },
    { name },
  );
  return {
    port,
    frames,
    lines: () => frames.map((f) => formatCandump(f)),
    from: (origin) => frames.filter((f) => f.origin === origin),
    waitFor(count, timeoutMs = 30_000) {
      if (frames.length >= count) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          const i = waiters.indexOf(w);
          if (i >= 0) waiters.splice(i, 1);
          reject(
            new Error(`tap ${name}: ${frames.length} of ${count} frames after ${timeoutMs} ms${context}`),
          );
        }, timeoutMs);
        const w = {
          count,
          resolve: () => {
            clearTimeout(timer);
            resolve();
          },
        };
        waiters.push(w);
      });
    },
    transmit(text) {
      const f = typeof text === 'string' ? frameOf(text) : text;
      const r = port.transmit(f);
      if (r !== 'sent') throw new Error(`tap ${name}: transmit of ${formatCandump(f)} returned ${r}`);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// One scenario run: work directory, daemon, guests, evidence, assertions

export interface GuestSpec {
  /** sub-directory of the run's workDir (console.log, share/) */
  name: string;
  /** the scenario body, run after GUEST_PRELUDE */
  scenario: string;
  /** socket indices of the run's daemon, one CAN device each (default [0], or [] with `consoles`) */
  sockets?: number[];
  /** explicit socket paths instead of `sockets` (a daemon not started by this run) */
  socketPaths?: string[];
  /** console devices (served by a back-end the test started, e.g. helpers/console-scenarios.ts) */
  consoles?: ConsoleDeviceSpec[];
  configSize?: number;
  timeoutMs?: number;
  extraQemuArgs?: string[];
}

const SUN_PATH_MAX = 107;

export class E2eRun {
  readonly name: string;
  readonly workDir: string;
  readonly daemonLogPath: string;
  /** The daemon's logger (writes to daemon.log). */
  readonly log: StructuredLogger;
  /** Host-side notes, in daemon.log too (src=e2e). */
  readonly note: (msg: string, fields?: Record<string, string | number | boolean>) => void;
  /** Measured figures, written to results.json by close() (and by saveResults()). */
  readonly results: Record<string, unknown> = {};
  /** Every line written to daemon.log, in order (to wait for daemon events: waitForLog). */
  readonly logLines: string[] = [];
  private readonly logStream: WriteStream;
  private readonly guests: RunningGuest[] = [];
  private readonly cleanups: Array<() => void> = [];
  private readonly closeHooks: Array<() => void | Promise<void>> = [];
  private daemon: CanDaemon | null = null;
  private closed = false;
  private readonly socketDir: string;

  constructor(name: string, logLevel: LogLevel = 'debug') {
    this.name = name;
    const base = join(REPO_ROOT, '.test-artifacts');
    mkdirSync(base, { recursive: true });
    const stamp = new Date().toISOString().replace(/[:.]/g, '-');
    this.workDir = mkdtempSync(join(base, `e2e-${name}-${stamp}-`));
    this.daemonLogPath = join(this.workDir, 'daemon.log');
    this.logStream = createWriteStream(this.daemonLogPath, { flags: 'a' });
    this.log = new StructuredLogger({
      level: logLevel,
      write: (line) => {
        this.logLines.push(line);
        this.logStream.write(`${line}\n`);
      },
    });
    const e2e = this.log.child({ src: 'e2e' });
    this.note = (msg, fields) => e2e.info(msg, fields);
    // Unix socket paths are limited to 107 bytes: fall back to a short directory if needed.
    this.socketDir = this.workDir;
    if (Buffer.byteLength(join(this.workDir, 'can.sock99')) > SUN_PATH_MAX) {
      const dir = mkdtempSync('/tmp/e2e-can-');
      this.socketDir = dir;
      writeFileSync(join(this.workDir, 'socket-dir.txt'), `${dir}\n`);
      this.cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    }
    this.note('run started', { name, workDir: this.workDir });
  }

  socketPath(i: number): string {
    return join(this.socketDir, `can.sock${i}`);
  }

  /** A path for another back-end's socket(s) in the run's (short enough) socket directory. */
  socketPathFor(name: string): string {
    return join(this.socketDir, name);
  }

  /** Runs `fn` in close(), after the guests are gone (stops back-ends the test started). */
  onClose(fn: () => void | Promise<void>): void {
    this.closeHooks.push(fn);
  }

  /** Starts the daemon in this process with `count` sockets (all on the default virtual bus). */
  startDaemon(count: number, opts: Partial<CanDaemonOptions> = {}): CanDaemon {
    assert.equal(this.daemon, null, 'one daemon per run');
    const paths = Array.from({ length: count }, (_, i) => this.socketPath(i));
    this.daemon = startCanDaemon({ ...opts, paths, log: this.log });
    this.note('daemon started', { sockets: paths.join(' ') });
    return this.daemon;
  }

  get can(): CanDaemon {
    if (this.daemon === null) throw new Error('startDaemon() first');
    return this.daemon;
  }

  /** The device serving socket i, asserting that a front-end is connected. */
  device(i: number): CanDevice {
    const d = this.can.device(i);
    this.ok(d !== null, `a front-end is connected on socket ${i}`);
    return d!;
  }

  tap(busOfSocket = 0, name = 'tap'): Tap {
    return attachTap(this.can.hubFor(busOfSocket), name, ` [workDir ${this.workDir}]`);
  }

  startGuest(spec: GuestSpec): RunningGuest {
    if (guestKit === undefined) throw new Error(skipWithoutKit);
    const paths =
      spec.socketPaths ?? (spec.sockets ?? (spec.consoles ? [] : [0])).map((i) => this.socketPath(i));
    const g = startGuest({
      kit: guestKit,
      scenario: `${GUEST_PRELUDE}\n${spec.scenario}`,
      canDevices: paths.map((socketPath) => ({
        socketPath,
        ...(spec.configSize === undefined ? {} : { configSize: spec.configSize }),
      })),
      ...(spec.consoles === undefined ? {} : { consoleDevices: spec.consoles }),
      timeoutMs: spec.timeoutMs ?? 90_000,
      workDir: join(this.workDir, spec.name),
      ...(spec.extraQemuArgs === undefined ? {} : { extraQemuArgs: spec.extraQemuArgs }),
    });
    this.guests.push(g);
    const all = [...paths, ...(spec.consoles ?? []).map((c) => c.socketPath)];
    this.note('guest started', { guest: spec.name, pid: g.pid ?? -1, sockets: all.join(' ') });
    return g;
  }

  /** Waits for the guest's /mnt/NAME, with the run's directory in the error. */
  async waitFor(g: RunningGuest, name: string, timeoutMs = 60_000): Promise<string> {
    try {
      const text = await g.waitForFile(name, timeoutMs);
      this.note('guest signalled', { guest: g.workDir.slice(this.workDir.length + 1), file: name });
      return text;
    } catch (err) {
      throw new Error(`${(err as Error).message} [workDir ${this.workDir}]`, { cause: err });
    }
  }

  /** Lines of daemon.log matching `re`. */
  logMatches(re: RegExp): string[] {
    return this.logLines.filter((l) => re.test(l));
  }

  /** Waits until at least `count` lines of daemon.log match `re`. */
  async waitForLog(re: RegExp, count = 1, timeoutMs = 30_000): Promise<void> {
    try {
      await until(
        () => this.logMatches(re).length >= count,
        `${count} daemon.log line(s) matching ${re}`,
        timeoutMs,
      );
    } catch (err) {
      throw new Error(`${(err as Error).message} [workDir ${this.workDir}]`, { cause: err });
    }
  }

  /** Creates /mnt/NAME in the guest's share (contents in one step, as the guest expects). */
  tell(g: RunningGuest, name: string, text = 'go\n'): void {
    writeFileSync(join(g.shareDir, `${name}.tmp`), text);
    writeFileSync(join(g.shareDir, name), text);
    this.note('host signalled', { guest: g.workDir.slice(this.workDir.length + 1), file: name });
  }

  /** Asserts the guest ran its scenario to the end with status 0 (or `status`). */
  guestFinished(r: GuestResult, status = 0): void {
    let failure = '';
    try {
      failure = r.files('failure.txt').trim();
    } catch {}
    const why =
      `guest ${r.workDir}: exitStatus=${r.exitStatus} timedOut=${r.timedOut} ` +
      `qemu=${r.qemuExitCode}/${r.qemuSignal}${failure ? ` failure: ${failure}` : ''}\n` +
      `console tail:\n${r.consoleLog.slice(-3000)}`;
    this.ok(!r.timedOut && r.exitStatus === status, why);
  }

  // ---- assertions that name the evidence directory ------------------------------------------

  private wrap(fn: () => void, what: string): void {
    try {
      fn();
    } catch (err) {
      if (err instanceof assert.AssertionError) {
        throw new assert.AssertionError({
          message: `${what} [workDir ${this.workDir}]\n${err.message}`,
          actual: err.actual,
          expected: err.expected,
          operator: err.operator,
        });
      }
      throw err;
    }
  }

  equal(actual: unknown, expected: unknown, what: string): void {
    this.wrap(() => assert.deepStrictEqual(actual, expected), what);
  }

  ok(value: unknown, what: string): void {
    this.wrap(() => assert.ok(value), what);
  }

  /** `until`, with the run's directory in the error. */
  async until(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
    await until(cond, what, timeoutMs).catch((err: Error) => {
      throw this.annotate(err);
    });
  }

  /** Waits until `snapshot()` has not changed for `quietMs` (counters settled). */
  async settle(snapshot: () => string, quietMs = 300, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (let last = snapshot(); ; ) {
      await sleep(quietMs);
      const now = snapshot();
      if (now === last) return;
      if (Date.now() > deadline)
        throw this.annotate(new Error(`counters still moving after ${timeoutMs} ms`));
      last = now;
    }
  }

  /** The error, with the run's directory in its message (unless it already names it). */
  annotate(err: unknown): unknown {
    if (!(err instanceof Error) || err.message.includes(this.workDir)) return err;
    if (err instanceof assert.AssertionError) {
      return new assert.AssertionError({
        message: `${err.message} [workDir ${this.workDir}]`,
        actual: err.actual,
        expected: err.expected,
        operator: err.operator,
      });
    }
    return new Error(`${err.message} [workDir ${this.workDir}]`, { cause: err });
  }

  /** Merges figures into results.json (written now and again by close()). */
  saveResults(figures: Record<string, unknown> = {}): void {
    Object.assign(this.results, figures);
    writeFileSync(join(this.workDir, 'results.json'), `${JSON.stringify(this.results, null, 2)}\n`);
  }

  /** Kills every guest still running, stops the daemon, flushes daemon.log. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const g of this.guests) g.kill();
    await Promise.allSettled(this.guests.map((g) => g.done));
    for (const fn of this.closeHooks) {
      try {
        await fn();
      } catch (err) {
        this.note('close hook failed', { error: String((err as Error)?.message ?? err) });
      }
    }
    if (this.daemon !== null) {
      this.note('daemon stopping', { hubStats: JSON.stringify(this.daemon.hubFor(0).stats()) });
      this.daemon.stop();
    }
    for (const c of this.cleanups) c();
    this.saveResults();
    await new Promise<void>((resolve) => this.logStream.end(resolve));
  }
}

/**
 * A test body with its own E2eRun: the run is closed afterwards (guests killed, daemon stopped,
 * daemon.log flushed) and any error escaping the body names the run's directory.
 */
export function withRun(
  name: string,
  body: (run: E2eRun, t: TestContext) => Promise<void>,
): (t: TestContext) => Promise<void> {
  return async (t) => {
    const run = new E2eRun(name);
    try {
      await body(run, t);
    } catch (err) {
      run.note('test failed', { error: String((err as Error)?.message ?? err).slice(0, 2000) });
      throw run.annotate(err);
    } finally {
      await run.close();
    }
  };
}

/** Resolves after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `cond` every 20 ms until true; rejects with `what` after `timeoutMs`. */
export async function until(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

/**
 * Measures event-loop responsiveness: a timer every `periodMs`; `stop()` returns the worst and
 * mean lateness in milliseconds and the number of ticks.
 */
export function loopLagMonitor(periodMs = 10): { stop(): { maxMs: number; meanMs: number; ticks: number } } {
  let last = performance.now();
  let max = 0;
  let sum = 0;
  let ticks = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    const lag = Math.max(0, now - last - periodMs);
    last = now;
    if (lag > max) max = lag;
    sum += lag;
    ticks++;
  }, periodMs);
  return {
    stop() {
      clearInterval(timer);
      return {
        maxMs: Math.round(max * 10) / 10,
        meanMs: Math.round((sum / Math.max(1, ticks)) * 100) / 100,
        ticks,
      };
    },
  };
}
