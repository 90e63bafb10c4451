/**
 * Host-interface flood benchmark (not a test): `npm run bench:flood [-- --runs N --frames N
 * --only default,tuned]`.
 *
 * What it measures: `cangen IF -g 0 -n FRAMES` (as fast as the kernel takes them) on a vcan
 * interface that one guest reaches through our daemon (`vhost-device-can -d IF`), the guest being
 * the TypeScript driver emulation (CanTestDriver) with a 64-entry RX ring that takes used buffers
 * on every interrupt and re-posts them at once with one kick, as Linux's virtio_can does from its
 * NAPI poll. Per run: frames sent (the interface's tx_packets), read by the daemon, dropped by the
 * kernel because the socket's receive queue was full (SO_RXQ_OVFL), dropped by the guest's
 * backlog (rxDroppedOverflow), delivered to the guest (and how many of those while cangen was
 * still writing), the daemon's RSS and peak RSS.
 *
 * Where: the host kernel has no AF_CAN, so the host part compiles a snapshot of src/ (as
 * `npm run bench` does) into `.test-artifacts/` and re-runs this file inside the guest kit's
 * CAN-capable kernel with scripts/guest/host-kernel-run.sh; the daemon runs that compiled CLI in
 * its own process there. Results: a table on stdout, JSON in bench/results/flood-latest.json.
 *
 * Scenarios (the same command lines for every version of the daemon):
 * - default: `-d IF` and nothing else;
 * - tuned: `--rx-backlog 32768` and net.core.rmem_default = 8 MiB (the socket receive buffer a
 *   socket gets when it sets none), what a user could do without a daemon option;
 * - kernel-rcvbuf: `--socketcan-rcvbuf 0`, the kernel's default buffer (needs a daemon that has
 *   the option; pick the others with `--only default,tuned` for an older one).
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { makeCanFrame } from '../src/core/bus/can-frame.js';
import { CanHub } from '../src/core/bus/hub.js';
import { CanTestDriver } from '../src/node/frontend/can-driver.js';
import { VhostUserFrontend } from '../src/node/frontend/frontend.js';
import { GuestRam } from '../src/node/frontend/guest-ram.js';
import { native } from '../src/node/native/addon.js';
import { CAN_RECORD_SIZE, writeRecord } from '../src/node/native/can-records.js';
import { hostKernelAvailable } from '../test/e2e/helpers/host-kernel.js';
import { type BuildInfo, prepareBuild, REPO_ROOT } from './lib/build.js';
import { DaemonProcess } from './lib/daemon-process.js';
import { writeJson } from './lib/write-json.js';

interface Scenario {
  name: string;
  what: string;
  daemonArgs: string[];
  /** net.core.rmem_default for the run (bytes), or null to keep the kernel's. */
  rmemDefault: number | null;
}

const SCENARIOS: Scenario[] = [
  { name: 'default', what: 'default settings', daemonArgs: [], rmemDefault: null },
  {
    name: 'tuned',
    what: '--rx-backlog 32768, rmem_default 8 MiB',
    daemonArgs: ['--rx-backlog', '32768'],
    rmemDefault: 8 << 20,
  },
  {
    // Needs a daemon with --socketcan-rcvbuf: what the bounded reads and the backlog alone give.
    name: 'kernel-rcvbuf',
    what: '--socketcan-rcvbuf 0 (net.core.rmem_default of the kernel)',
    daemonArgs: ['--socketcan-rcvbuf', '0'],
    rmemDefault: null,
  },
];

const IFNAME = 'vflood0';
/** An extended identifier cangen never sends without -e: marks the end of the burst. */
const MARKER_ID = 0x1ffffffe;
const RING = 64;

interface Args {
  runs: number;
  frames: number;
  only: string[] | null;
  inner: boolean;
  daemon: string;
  out: string;
}

function parseArgs(argv: readonly string[]): Args {
  const a: Args = { runs: 3, frames: 20_000, only: null, inner: false, daemon: '', out: '' };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!;
    const v = argv[i + 1];
    const num = (min: number, max: number): number => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < min || n > max) throw new Error(`${k} expects ${min}..${max}`);
      i++;
      return n;
    };
    if (k === '--runs') a.runs = num(1, 20);
    else if (k === '--frames') a.frames = num(1, 1_000_000);
    else if (k === '--only') {
      a.only = (v ?? '').split(',').filter((s) => s !== '');
      i++;
    } else if (k === '--inner') a.inner = true;
    else if (k === '--daemon') {
      a.daemon = v ?? '';
      i++;
    } else if (k === '--out') {
      a.out = v ?? '';
      i++;
    } else throw new Error(`unknown option ${k}`);
  }
  for (const n of a.only ?? []) {
    if (!SCENARIOS.some((s) => s.name === n)) throw new Error(`--only: unknown scenario ${n}`);
  }
  return a;
}

const log = (s: string): void => {
  process.stderr.write(`[bench:flood ${new Date().toISOString().slice(11, 19)}] ${s}\n`);
};

export interface FloodRow {
  scenario: string;
  run: number;
  /** tx_packets of the interface during cangen. */
  sent: number;
  /** Frames the daemon read from its socket (marker excluded). */
  read: number;
  kernelDrops: number;
  backlogDrops: number;
  delivered: number;
  /** Delivered before cangen exited: the guest's ring was refilled during the burst. */
  deliveredDuringBurst: number;
  burstSeconds: number;
  /** From the end of the burst until the guest had everything. */
  drainSeconds: number;
  rssKb: number;
  peakRssKb: number;
  /** The daemon's log line about its socket receive buffer, if any. */
  rcvbufNote: string;
}

// ---- inside the CAN-capable kernel ---------------------------------------------------------------

function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: 'pipe' });
}

function txPackets(): number {
  return Number(readFileSync(`/sys/class/net/${IFNAME}/statistics/tx_packets`, 'utf8'));
}

function run(cmd: string, args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const c: ChildProcess = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    c.stderr!.on('data', (d) => {
      err += d;
    });
    c.once('error', reject);
    c.once('exit', (code) => (code === 0 ? resolve(0) : reject(new Error(`${cmd} exited ${code}: ${err}`))));
  });
}

async function floodOnce(
  sc: Scenario,
  runNo: number,
  frames: number,
  daemonEntry: string,
): Promise<FloodRow> {
  try {
    ip('link', 'del', IFNAME);
  } catch {
    /* not there */
  }
  ip('link', 'add', 'dev', IFNAME, 'type', 'vcan');
  ip('link', 'set', IFNAME, 'up');
  const rmemPath = '/proc/sys/net/core/rmem_default';
  const rmemBefore = readFileSync(rmemPath, 'utf8').trim();
  if (sc.rmemDefault !== null) writeFileSync(rmemPath, `${sc.rmemDefault}\n`);
  const build: BuildInfo = {
    kind: 'compiled',
    daemonArgv: [daemonEntry],
    consoleArgv: [], // the flood bench runs no console daemon
    workerArgv: [],
    addonModule: '',
    note: '',
  };
  let d: DaemonProcess | null = null;
  let fe: VhostUserFrontend | null = null;
  let ram: GuestRam | null = null;
  let stop = false;
  try {
    d = await DaemonProcess.start({
      build,
      sockets: 1,
      args: ['-d', IFNAME, ...sc.daemonArgs],
      label: `${sc.name}#${runNo}`,
    });
    fe = VhostUserFrontend.connect(d.path(0), { timeoutMs: 20_000 });
    ram = new GuestRam({ name: 'flood-guest' });
    const drv = await CanTestDriver.create(fe, ram, { queueSize: RING, timeoutMs: 20_000 });
    if ((await drv.startController()) !== 0) throw new Error('SET_CTRL_MODE_START failed');

    // The guest: on every RX interrupt, take the used buffers, decode them, re-post them (one kick).
    let marker = 0;
    let lastChange = Date.now();
    const rxLoop = (async () => {
      while (!stop) {
        for (const f of drv.takeReceived()) {
          if (f.extended && f.id === MARKER_ID) marker++;
          lastChange = Date.now();
        }
        try {
          await drv.rx.waitUsed(100);
        } catch (err) {
          if ((err as { code?: string }).code !== 'ERR_FRONTEND_TIMEOUT') throw err;
        }
      }
    })();

    const tx0 = txPackets();
    const t0 = performance.now();
    await run('cangen', [IFNAME, '-g', '0', '-n', String(frames)]);
    const t1 = performance.now();
    const duringBurst = drv.receivedCount;
    const sent = txPackets() - tx0;
    // The kernel reports its drop counter with the next frame it queues for us: a marker frame.
    await sleep(50);
    await run('cansend', [IFNAME, `${MARKER_ID.toString(16).toUpperCase().padStart(8, '0')}#00`]);
    const deadline = Date.now() + 120_000;
    while (marker === 0 && Date.now() - lastChange < 3000 && Date.now() < deadline) await sleep(20);
    const t2 = performance.now();
    const st = await d.stats();
    const mem = d.memory();
    stop = true;
    await rxLoop;
    const host = st.hosts.find((h) => h.host === IFNAME);
    const sock = st.sockets[0];
    if (host === undefined || sock === undefined) throw new Error('no host/socket line in the stats dump');
    const rcvbufNote = d.logLines().find((l) => /rcvbuf|receive buffer/i.test(l)) ?? '';
    return {
      scenario: sc.name,
      run: runNo,
      sent,
      read: host.rxFrames - 1,
      kernelDrops: host.rxKernelDrops,
      backlogDrops: sock.rxDroppedOverflow,
      delivered: drv.receivedCount - marker,
      deliveredDuringBurst: duringBurst,
      burstSeconds: (t1 - t0) / 1000,
      drainSeconds: (t2 - t1) / 1000,
      rssKb: mem.vmRss,
      peakRssKb: mem.vmHwm,
      rcvbufNote: rcvbufNote.slice(0, 300),
    };
  } finally {
    stop = true;
    fe?.close();
    ram?.close();
    await d?.stop();
    writeFileSync(rmemPath, `${rmemBefore}\n`);
    try {
      ip('link', 'del', IFNAME);
    } catch {
      /* gone */
    }
  }
}

/**
 * Kernel memory per queued CAN frame: a socket with a 1 MiB receive buffer that nobody reads gets
 * classic frames until the kernel drops; the granted size divided by the frames it holds.
 */
function kernelBytesPerFrame(): { granted: number; held: number; perFrame: number } {
  ip('link', 'add', 'dev', IFNAME, 'type', 'vcan');
  ip('link', 'set', IFNAME, 'up');
  const open = { fd: false, loopback: true, recvOwnMsgs: false, errMask: 0 };
  const rx = native.canOpen(IFNAME, { ...open, rcvbuf: 1 << 20 });
  const tx = native.canOpen(IFNAME, open);
  try {
    const granted = native.canSocketBuffers(rx).rcvbuf;
    const buf = new Uint8Array(CAN_RECORD_SIZE * 64);
    for (let i = 0; i < 64; i++) writeRecord(buf, i, { canId: i, len: 8, data: new Uint8Array(8) });
    const want = Math.ceil(granted / 100);
    for (let sent = 0; sent < want; ) {
      const n = native.canSendBatch(tx, buf, 64);
      if (n === 0) throw new Error('vcan refused frames');
      sent += n;
    }
    const meta = new Uint32Array(2);
    const rbuf = new Uint8Array(CAN_RECORD_SIZE * 64);
    let held = 0;
    for (
      let n = native.canRecvBatch(rx, rbuf, 64, meta);
      n !== null;
      n = native.canRecvBatch(rx, rbuf, 64, meta)
    ) {
      held += n;
    }
    return { granted, held, perFrame: granted / held };
  } finally {
    native.close(rx);
    native.close(tx);
    ip('link', 'del', IFNAME);
  }
}

async function inner(a: Args): Promise<void> {
  const rows: FloodRow[] = [];
  try {
    ip('link', 'del', IFNAME);
  } catch {
    /* not there */
  }
  const kernel = kernelBytesPerFrame();
  log(
    `kernel memory per queued frame: a ${kernel.granted}-byte receive buffer held ${kernel.held} classic frames (${kernel.perFrame.toFixed(0)} B each)`,
  );
  const scenarios = SCENARIOS.filter((s) => a.only === null || a.only.includes(s.name));
  for (let r = 1; r <= a.runs; r++) {
    // Interleaved (default, tuned, default, ...) so slow phases of a shared machine hit both.
    for (const sc of scenarios) {
      log(`${sc.name} run ${r}/${a.runs}: cangen ${IFNAME} -g 0 -n ${a.frames}`);
      const row = await floodOnce(sc, r, a.frames, a.daemon);
      log(
        `  sent ${row.sent} read ${row.read} kernelDrops ${row.kernelDrops} backlogDrops ${row.backlogDrops} delivered ${row.delivered} (during burst ${row.deliveredDuringBurst}) rss ${row.rssKb} kB peak ${row.peakRssKb} kB`,
      );
      rows.push(row);
    }
  }
  writeFileSync(a.out, JSON.stringify({ frames: a.frames, ring: RING, kernel, rows }));
}

// ---- on the host -------------------------------------------------------------------------------

function range(xs: number[]): string {
  if (xs.length === 0) return '-';
  const lo = Math.min(...xs);
  const hi = Math.max(...xs);
  return lo === hi ? String(lo) : `${lo}..${hi}`;
}

function report(frames: number, rows: FloodRow[]): string {
  const cols: [string, (r: FloodRow) => string][] = [
    ['scenario', (r) => r.scenario],
    ['run', (r) => String(r.run)],
    ['sent', (r) => String(r.sent)],
    ['read', (r) => String(r.read)],
    ['kernel drops', (r) => String(r.kernelDrops)],
    ['backlog drops', (r) => String(r.backlogDrops)],
    ['delivered', (r) => String(r.delivered)],
    ['%', (r) => ((100 * r.delivered) / Math.max(1, r.sent)).toFixed(1)],
    ['in burst', (r) => String(r.deliveredDuringBurst)],
    ['burst s', (r) => r.burstSeconds.toFixed(2)],
    ['drain s', (r) => r.drainSeconds.toFixed(2)],
    ['RSS MB', (r) => (r.rssKb / 1024).toFixed(1)],
    ['peak MB', (r) => (r.peakRssKb / 1024).toFixed(1)],
  ];
  const cells = [cols.map(([h]) => h), ...rows.map((r) => cols.map(([, f]) => f(r)))];
  const w = cols.map((_, i) => Math.max(...cells.map((c) => c[i]!.length)));
  const lines = cells.map((c) => c.map((s, i) => s.padStart(w[i]!)).join('  '));
  lines.splice(1, 0, w.map((n) => '-'.repeat(n)).join('  '));
  const out = [`cangen -g 0 -n ${frames} on vcan -> daemon -> one guest (64-entry RX ring)`, ...lines, ''];
  for (const sc of new Set(rows.map((r) => r.scenario))) {
    const rs = rows.filter((r) => r.scenario === sc);
    out.push(
      `${sc}: delivered ${range(rs.map((r) => r.delivered))}, kernel drops ${range(rs.map((r) => r.kernelDrops))}, backlog drops ${range(rs.map((r) => r.backlogDrops))}, peak RSS ${range(rs.map((r) => Math.round(r.peakRssKb / 1024)))} MB`,
    );
    const note = rs.find((r) => r.rcvbufNote !== '')?.rcvbufNote;
    if (note) out.push(`  daemon: ${note}`);
  }
  return out.join('\n');
}

/**
 * What one frame waiting in a guest's backlog costs: a hub with one guest-like port (releases its
 * frames, never drains) fills its queue of `n` frames; the JavaScript heap (pooled frame object,
 * its payload array, the queue slot) grows by this much per frame. Needs --expose-gc.
 */
export function queuedFrameBytes(payload: number, n = 32768): number {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined) return Number.NaN;
  const hub = new CanHub({ name: 'mem', queueLimit: n });
  const guest = hub.attach({ onFramesAvailable() {} }, { name: 'guest', releasesFrames: true });
  const host = hub.attach({ onFramesAvailable() {} }, { name: 'host', queueLimit: 1 });
  host.setReceiving(false);
  const frame = makeCanFrame({ id: 0x123, fd: payload > 8, data: new Uint8Array(payload) });
  gc();
  gc();
  const before = process.memoryUsage();
  for (let i = 0; i < n; i++) host.transmit(frame);
  gc();
  gc();
  const after = process.memoryUsage();
  if (guest.queued !== n) throw new Error(`queued ${guest.queued} of ${n}`);
  const bytes = after.heapUsed - before.heapUsed + (after.arrayBuffers - before.arrayBuffers);
  hub.close();
  return bytes / n;
}

async function host(a: Args, passthrough: string[]): Promise<number> {
  const perFrame8 = queuedFrameBytes(8);
  const perFrame64 = queuedFrameBytes(64);
  log(
    `memory per frame queued for a guest: ${perFrame8.toFixed(0)} B (classic, 8 bytes), ${perFrame64.toFixed(0)} B (FD, 64 bytes)`,
  );
  const ok = hostKernelAvailable();
  if (ok !== true) {
    process.stdout.write(`bench:flood skipped: ${ok}\n`);
    return 0;
  }
  const artifacts = join(REPO_ROOT, '.test-artifacts');
  mkdirSync(artifacts, { recursive: true });
  const build = await prepareBuild({ tsx: false, log, parentDir: artifacts });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const work = join(artifacts, `flood-${stamp}`);
  const outFile = join(work, 'artifacts', 'flood.json');
  log(`booting the CAN-capable kernel (TCG); work dir ${work}`);
  const r = spawnSync(
    'bash',
    [
      join(REPO_ROOT, 'scripts/guest/host-kernel-run.sh'),
      '--timeout',
      String(300 + a.runs * 240),
      '--work-dir',
      work,
      '--',
      process.execPath,
      '--import',
      'tsx',
      'bench/flood.ts',
      '--inner',
      '--daemon',
      build.daemonArgv[0]!,
      '--out',
      outFile,
      ...passthrough,
    ],
    { cwd: REPO_ROOT, stdio: ['ignore', 'inherit', 'inherit'] },
  );
  if (r.status !== 0 || !existsSync(outFile)) {
    log(`the run inside the guest failed (exit ${r.status}); see ${work}`);
    return 1;
  }
  const res = JSON.parse(readFileSync(outFile, 'utf8')) as {
    frames: number;
    ring: number;
    kernel: { granted: number; held: number; perFrame: number };
    rows: FloodRow[];
  };
  process.stdout.write(`${report(res.frames, res.rows)}\n`);
  process.stdout.write(
    `kernel memory per frame in a socket receive queue: ${res.kernel.perFrame.toFixed(0)} B (${res.kernel.held} classic frames in ${res.kernel.granted} B)\n`,
  );
  process.stdout.write(
    `memory per frame queued for a guest (JS heap): ${perFrame8.toFixed(0)} B classic 8-byte, ${perFrame64.toFixed(0)} B FD 64-byte\n`,
  );
  const results = join(REPO_ROOT, 'bench/results');
  mkdirSync(results, { recursive: true });
  writeJson([join(results, `flood-${stamp}.json`), join(results, 'flood-latest.json')], {
    startedAt: stamp,
    build: build.note,
    queuedFrameBytes: { classic8: perFrame8, fd64: perFrame64 },
    ...res,
  });
  return 0;
}

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  const a = parseArgs(argv);
  if (a.inner) {
    if (process.env.VHOST_TS_IN_GUEST !== '1') throw new Error('--inner runs inside host-kernel-run.sh only');
    await inner(a);
    return 0;
  }
  return host(
    a,
    argv.filter((s) => s !== '--inner'),
  );
}

main().then(
  (rc) => process.exit(rc),
  (err: unknown) => {
    process.stderr.write(`bench:flood: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
