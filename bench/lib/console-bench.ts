/**
 * The console phase's scenarios (`npm run bench -- --only=con`): vhost-device-console in its own
 * process (compiled CLI, network backend), guests in load process A (ConsoleBenchGuest: the
 * front-end over real vhost-user sockets, memfd RAM and eventfds), TCP clients in load process B.
 * Every figure has its baseline in the same run: the same bytes through a do-nothing relay process
 * (ConRelay: Unix socket <-> TCP), the guest's part played by a socket peer in process A.
 *
 * Which port: bulk transfers run on a named port (`--port-name org.bench.0`, the guest's
 * /dev/vport0p1, opened by the guest), as bulk data goes in a Linux guest; the device pauses its
 * output for a slow client there. The keystroke round trip runs on the console (port 0, hvc0, a
 * shell's echo). The console flood writes bulk data on port 0: its output is never paced (a Linux
 * guest spins on hvc writes), so what the client cannot take beyond the daemon's send queue is
 * dropped and counted (clientDropped): by design, not a loss.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BuildInfo } from './build.js';
import { removeDir, sleep, trackDir } from './children.js';
import { ConsoleDaemonProcess, type ConsoleDaemonStats } from './console-daemon-process.js';
import { type CpuShares, cpuShares, type Snapshot, saturation, seconds, snapshot } from './harness.js';
import type { LatencySummary } from './latency.js';
import type { WorkerClient } from './worker-client.js';

export interface ConBenchHost {
  readonly build: BuildInfo;
  readonly cores: number;
  readonly a: WorkerClient;
  readonly b: WorkerClient;
  worker(name: string): Promise<WorkerClient>;
  checkCancelled(): void;
}

export interface ConSettings {
  warmMs: number;
  measureMs: number;
  queueSize: number;
  /** Guest output buffer size (Linux port_fops_write: at most 32 KiB). */
  writeChunk: number;
  /** TCP client write size. */
  clientChunk: number;
  pingCount: number;
  pingWarmup: number;
  idleGuests: number;
  idleMs: number;
}

export type ConDirection = 'guest->client' | 'client->guest';
/** 'named': port 1 (a --port-name port, flow-controlled both ways); 'console': port 0 (hvc0). */
export type ConPortKind = 'named' | 'console';

/** The named port the bulk rows use (the guest's port 1, TCP PORT + 1 * N + i). */
export const CON_BENCH_PORT_NAME = 'org.bench.0';

export interface ConFlowResult {
  direction: ConDirection;
  path: 'device' | 'baseline';
  /** Device: the guest port the bytes went through (baseline: the row it is the baseline of). */
  port: ConPortKind;
  /** Bytes per write of the sending side. */
  chunk: number;
  seconds: number;
  /** Bytes counted at the receiving end (client for guest->client, guest for client->guest). */
  receivedMiBps: number;
  sentMiBps: number;
  /** guest->client, device: output the daemon dropped because the client's send queue was full. */
  droppedMiBps: number | null;
  /** guest->client, device: the same, whole run (bytes; the daemon's clientDropped). */
  droppedBytes: number | null;
  /** guest->client, device: times the daemon paused the port's output for the client (window). */
  outputPauses: number | null;
  /** Sender write calls (guest output buffers) and receiver reads (guest RX buffers) per second. */
  writesPerS: number;
  readsPerS: number;
  /** After the sender stopped and everything settled: sent - received (whole run, bytes). */
  missingBytes: number;
  /** Received bytes that did not match the pattern (whole run). */
  mismatches: number;
  /** Whole run: every byte sent arrived, in order and intact. */
  intact: boolean;
  /**
   * Whole run: every byte sent either arrived or was counted as dropped by the daemon (sent =
   * received + clientDropped). With drops the client's pattern check is out of step after the
   * first one, so `mismatches` then says nothing about corruption.
   */
  accounted: boolean;
  cpu: CpuShares;
  saturated: string;
}

export interface ConLatencyResult {
  path: 'device' | 'baseline';
  summary: LatencySummary;
  roundTripsPerS: number;
  /** Echoed bytes that were not the byte sent. */
  wrong: number;
  cpu: CpuShares;
}

export interface ConIdleResult {
  guests: number;
  seconds: number;
  daemonCpuSeconds: number;
  daemonCpuPercent: number;
  loadCpuPercent: number;
  /** Daemon RSS (kB) with the guests connected. */
  rssKb: number;
}

const MiB = 1024 * 1024;
const r1 = (v: number): number => Math.round(v * 10) / 10;
const r2 = (v: number): number => Math.round(v * 100) / 100;

/** A console daemon on a random free-looking TCP base port (retried when a port is taken). */
async function startDaemon(
  h: ConBenchHost,
  guests: number,
  label: string,
  portNames: readonly string[] = [],
): Promise<ConsoleDaemonProcess> {
  let last: Error | null = null;
  for (let attempt = 0; attempt < 6; attempt++) {
    h.checkCancelled();
    const port = 20_000 + Math.floor(Math.random() * 30_000);
    try {
      return await ConsoleDaemonProcess.start({ build: h.build, guests, tcpPort: port, label, portNames });
    } catch (err) {
      last = err as Error;
      if (!/in use|EADDRINUSE|ADDR_IN_USE/i.test(last.message)) throw last;
    }
  }
  throw last ?? new Error('no free TCP port for the console daemon');
}

interface ConSnap {
  s: Snapshot;
  d: ConsoleDaemonStats | null;
}

async function snap(d: ConsoleDaemonProcess | null, workers: readonly WorkerClient[]): Promise<ConSnap> {
  const [s, st] = await Promise.all([snapshot(null, workers), d === null ? null : d.stats()]);
  if (d !== null) s.cpu.daemon = d.cpuSeconds();
  return { s, d: st };
}

/** Polls `count()` until it reaches `target` or stops moving for 500 ms. */
async function settle(count: () => Promise<number>, target: number): Promise<number> {
  let last = -1;
  let since = Date.now();
  const deadline = Date.now() + 15_000;
  for (;;) {
    const n = await count();
    if (n >= target || Date.now() > deadline) return n;
    if (n !== last) {
      last = n;
      since = Date.now();
    } else if (Date.now() - since > 500) return n;
    await sleep(20);
  }
}

async function peerCount(w: WorkerClient, key: string, f: 'bytesIn' | 'bytesOut'): Promise<number> {
  return (await w.call('counters', {})).conPeers[key]?.[f] ?? 0;
}

async function guestCount(w: WorkerClient, key: string, f: 'bytesIn' | 'bytesOut'): Promise<number> {
  return (await w.call('counters', {})).conGuests[key]?.[f] ?? 0;
}

/**
 * One throughput run. Device: guest `g` in A on `port` (the named port, or the console), TCP client
 * `c` in B on that port's TCP port. Baseline: socket peer `g` in A on the relay's Unix socket, TCP
 * client `c` in B on the relay's TCP port, relay process R.
 */
export async function conFlow(
  h: ConBenchHost,
  cfg: ConSettings,
  direction: ConDirection,
  path: 'device' | 'baseline',
  port: ConPortKind = 'named',
): Promise<ConFlowResult> {
  const { a, b } = h;
  const g2c = direction === 'guest->client';
  const pn = port === 'named' ? 1 : 0;
  const chunk = g2c ? cfg.writeChunk : cfg.clientChunk;
  let d: ConsoleDaemonProcess | null = null;
  let relay: WorkerClient | null = null;
  let dir: string | null = null;
  try {
    if (path === 'device') {
      d = await startDaemon(h, 1, `con-${g2c ? 'g2c' : 'c2g'}-${port}`, [CON_BENCH_PORT_NAME]);
      await a.call('con-connect', {
        key: 'g',
        path: d.path(0),
        queueSize: cfg.queueSize,
        port: pn,
        ports: d.portsPerGuest,
      });
      await b.call('con-peer-connect', { key: 'c', addr: { host: '127.0.0.1', port: d.tcpPortOf(0, pn) } });
    } else {
      relay = await h.worker('blRelay');
      dir = mkdtempSync(join(tmpdir(), 'vdcon-relay-'));
      trackDir(dir);
      const sockPath = join(dir, 'relay.sock');
      const { port } = await relay.call('con-relay-start', { path: sockPath });
      await a.call('con-peer-connect', { key: 'g', addr: { path: sockPath } });
      await b.call('con-peer-connect', { key: 'c', addr: { host: '127.0.0.1', port } });
    }
    const dev = path === 'device';
    // Receiver first, then the sender.
    if (g2c) {
      await b.call('con-peer-read-start', { key: 'c', check: true });
      if (dev) await a.call('con-write-start', { key: 'g', chunk });
      else await a.call('con-peer-write-start', { key: 'g', chunk });
    } else {
      if (dev) await a.call('con-read-start', { key: 'g', mode: 'read' });
      else await a.call('con-peer-read-start', { key: 'g', check: true });
      await b.call('con-peer-write-start', { key: 'c', chunk });
    }
    const workers = relay === null ? [a, b] : [a, b, relay];
    await sleep(cfg.warmMs);
    const s0 = await snap(d, workers);
    await sleep(cfg.measureMs);
    const s1 = await snap(d, workers);
    // Stop the sender, let everything in flight arrive, then check the whole run.
    if (g2c) {
      if (dev) await a.call('con-write-stop', { key: 'g' });
      else await a.call('con-peer-write-stop', { key: 'g' });
    } else {
      await b.call('con-peer-write-stop', { key: 'c' });
    }
    const sentTotal = g2c
      ? dev
        ? await guestCount(a, 'g', 'bytesOut')
        : await peerCount(a, 'g', 'bytesOut')
      : await peerCount(b, 'c', 'bytesOut');
    let dropped = 0;
    if (dev && g2c) {
      // The daemon's drops are known once the guest stopped: what the client can still get.
      dropped = d!.portLine(await d!.stats(), 0, pn)?.clientDropped ?? 0;
    }
    const recvCount = g2c
      ? () => peerCount(b, 'c', 'bytesIn')
      : dev
        ? () => guestCount(a, 'g', 'bytesIn')
        : () => peerCount(a, 'g', 'bytesIn');
    const recvTotal = await settle(recvCount, sentTotal - dropped);
    const end = await snap(d, workers);
    const dt = seconds(s0.s, s1.s);
    const cpu = cpuShares(s0.s, s1.s, h.cores);
    const sender = g2c ? 'g' : 'c';
    const receiver = g2c ? 'c' : 'g';
    const sentBytes = (s: ConSnap): number =>
      dev && g2c ? (s.s.conGuests.g?.bytesOut ?? 0) : (s.s.conPeers[sender]?.bytesOut ?? 0);
    const recvBytes = (s: ConSnap): number =>
      dev && !g2c ? (s.s.conGuests.g?.bytesIn ?? 0) : (s.s.conPeers[receiver]?.bytesIn ?? 0);
    const writes = (s: ConSnap): number =>
      dev && g2c ? (s.s.conGuests.g?.writes ?? 0) : (s.s.conPeers[sender]?.writes ?? 0);
    const reads = (s: ConSnap): number =>
      dev && !g2c ? (s.s.conGuests.g?.buffersIn ?? 0) : (s.s.conPeers[receiver]?.reads ?? 0);
    const mismatches =
      dev && !g2c ? (end.s.conGuests.g?.mismatches ?? 0) : (end.s.conPeers[receiver]?.mismatches ?? 0);
    const droppedWin =
      dev && g2c
        ? (d!.portLine(s1.d, 0, pn)?.clientDropped ?? 0) - (d!.portLine(s0.d, 0, pn)?.clientDropped ?? 0)
        : null;
    const roles: Record<string, string> = dev
      ? { daemon: 'daemon', loadA: 'guest', loadB: 'client' }
      : { blRelay: 'relay', loadA: 'guest peer', loadB: 'client' };
    return {
      direction,
      path,
      port,
      chunk,
      seconds: r2(dt),
      receivedMiBps: r1((recvBytes(s1) - recvBytes(s0)) / MiB / dt),
      sentMiBps: r1((sentBytes(s1) - sentBytes(s0)) / MiB / dt),
      droppedMiBps: droppedWin === null ? null : r1(droppedWin / MiB / dt),
      droppedBytes: dev && g2c ? dropped : null,
      outputPauses:
        dev && g2c
          ? (d!.portLine(s1.d, 0, pn)?.outputPauses ?? 0) - (d!.portLine(s0.d, 0, pn)?.outputPauses ?? 0)
          : null,
      writesPerS: Math.round((writes(s1) - writes(s0)) / dt),
      readsPerS: Math.round((reads(s1) - reads(s0)) / dt),
      missingBytes: sentTotal - recvTotal,
      mismatches,
      intact: sentTotal === recvTotal && mismatches === 0 && dropped === 0,
      accounted: sentTotal === recvTotal + dropped && (dropped > 0 || mismatches === 0),
      cpu,
      saturated: saturation(cpu, h.cores, roles),
    };
  } finally {
    await Promise.allSettled([a.call('con-close', {}), b.call('con-close', {})]);
    await relay?.stop();
    await d?.stop();
    if (dir !== null) removeDir(dir);
  }
}

/** Keystroke round trips: the client in B sends 1 byte, the guest (or its peer) in A echoes it. */
export async function conPing(
  h: ConBenchHost,
  cfg: ConSettings,
  path: 'device' | 'baseline',
): Promise<ConLatencyResult> {
  const { a, b } = h;
  let d: ConsoleDaemonProcess | null = null;
  let relay: WorkerClient | null = null;
  let dir: string | null = null;
  try {
    if (path === 'device') {
      d = await startDaemon(h, 1, 'con-ping');
      await a.call('con-connect', { key: 'g', path: d.path(0), queueSize: cfg.queueSize });
      await a.call('con-read-start', { key: 'g', mode: 'echo' });
      await b.call('con-peer-connect', { key: 'c', addr: { host: '127.0.0.1', port: d.tcpPort } });
    } else {
      relay = await h.worker('blRelay');
      dir = mkdtempSync(join(tmpdir(), 'vdcon-relay-'));
      trackDir(dir);
      const sockPath = join(dir, 'relay.sock');
      const { port } = await relay.call('con-relay-start', { path: sockPath });
      await a.call('con-peer-connect', { key: 'g', addr: { path: sockPath } });
      await a.call('con-peer-echo-start', { key: 'g' });
      await b.call('con-peer-connect', { key: 'c', addr: { host: '127.0.0.1', port } });
    }
    const workers = relay === null ? [a, b] : [a, b, relay];
    // The client's connection reaches the guest as PORT_OPEN; give it a moment before timing.
    await sleep(100);
    const s0 = await snap(d, workers);
    const limit = 30_000 + Math.ceil((cfg.pingCount + cfg.pingWarmup) / 2);
    const sum = await b.call(
      'con-peer-ping',
      { key: 'c', count: cfg.pingCount, warmup: cfg.pingWarmup, timeoutMs: limit },
      limit + 5000,
    );
    const s1 = await snap(d, workers);
    const { seconds: secs, wrong, ...summary } = sum;
    return {
      path,
      summary,
      roundTripsPerS: Math.round((cfg.pingCount + cfg.pingWarmup) / secs),
      wrong,
      cpu: cpuShares(s0.s, s1.s, h.cores),
    };
  } finally {
    await Promise.allSettled([a.call('con-close', {}), b.call('con-close', {})]);
    await relay?.stop();
    await d?.stop();
    if (dir !== null) removeDir(dir);
  }
}

/** N guests connected (probe done, RX buffers posted), no clients, nobody writes. */
export async function conIdle(h: ConBenchHost, cfg: ConSettings): Promise<ConIdleResult> {
  const { a, b } = h;
  const n = cfg.idleGuests;
  const d = await startDaemon(h, n, `con-idle-${n}`);
  try {
    // In parallel: each probe ends with a wait for the driver's last receiveq wait (up to 1 s).
    await Promise.all(
      Array.from({ length: n }, (_, i) =>
        (i % 2 === 0 ? a : b).call('con-connect', {
          key: `i${i}`,
          path: d.path(i),
          queueSize: cfg.queueSize,
        }),
      ),
    );
    await sleep(1000);
    const s0 = await snap(d, [a, b]);
    await sleep(cfg.idleMs);
    const s1 = await snap(d, [a, b]);
    const c = cpuShares(s0.s, s1.s, h.cores);
    const open = s1.d?.ports.filter((p) => p.guestOpen).length ?? 0;
    if (open !== n) throw new Error(`idle: ${open} of ${n} guests have their console open`);
    return {
      guests: n,
      seconds: r1(seconds(s0.s, s1.s)),
      daemonCpuSeconds: r2((s1.s.cpu.daemon ?? 0) - (s0.s.cpu.daemon ?? 0)),
      daemonCpuPercent: r2(
        (100 * ((s1.s.cpu.daemon ?? 0) - (s0.s.cpu.daemon ?? 0))) / Math.max(1e-9, seconds(s0.s, s1.s)),
      ),
      loadCpuPercent: r1((c.perRole.loadA ?? 0) + (c.perRole.loadB ?? 0)),
      rssKb: d.memory().vmRss,
    };
  } finally {
    await Promise.allSettled([a.call('con-close', {}), b.call('con-close', {})]);
    await d.stop();
  }
}
