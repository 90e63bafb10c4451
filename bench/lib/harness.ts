/**
 * Measurement plumbing shared by the scenarios: snapshots of every process taking part (daemon
 * counters through SIGUSR1, guest counters through IPC, CPU time from /proc) and the rates and CPU
 * shares between two snapshots, plus a verdict on which side saturated.
 */
import type { GuestCounters } from './bench-guest.js';
import type { ConsoleGuestCounters } from './console-guest.js';
import type { ConPeerCounters } from './console-peers.js';
import type { DaemonProcess, DaemonStats } from './daemon-process.js';
import { machineCpu, procCpuSeconds } from './proc.js';
import type { SockCounters } from './sock-peer.js';
import type { WorkerClient } from './worker-client.js';

export interface Snapshot {
  atNs: bigint;
  daemon: DaemonStats | null;
  guests: Record<string, GuestCounters>;
  sock: Record<string, SockCounters | null>;
  /** Console guests and stream peers, by key. */
  conGuests: Record<string, ConsoleGuestCounters>;
  conPeers: Record<string, ConPeerCounters>;
  /** CPU seconds per role (daemon, worker names, 'bench' = this orchestrator). */
  cpu: Record<string, number>;
  machineBusy: number;
  machineTotal: number;
}

export async function snapshot(
  daemon: DaemonProcess | null,
  workers: readonly WorkerClient[],
): Promise<Snapshot> {
  const [stats, ...counters] = await Promise.all([
    daemon === null ? Promise.resolve(null) : daemon.stats(),
    ...workers.map((w) => w.call('counters', {})),
  ]);
  const atNs = process.hrtime.bigint();
  const cpu: Record<string, number> = { bench: procCpuSeconds(process.pid) };
  if (daemon !== null) cpu.daemon = daemon.cpuSeconds();
  for (const w of workers) cpu[w.name] = procCpuSeconds(w.pid);
  const m = machineCpu();
  const guests: Record<string, GuestCounters> = {};
  const sock: Record<string, SockCounters | null> = {};
  const conGuests: Record<string, ConsoleGuestCounters> = {};
  const conPeers: Record<string, ConPeerCounters> = {};
  workers.forEach((w, i) => {
    Object.assign(guests, counters[i]!.guests);
    Object.assign(conGuests, counters[i]!.conGuests);
    Object.assign(conPeers, counters[i]!.conPeers);
    sock[w.name] = counters[i]!.sock;
  });
  return {
    atNs,
    daemon: stats,
    guests,
    sock,
    conGuests,
    conPeers,
    cpu,
    machineBusy: m.busy,
    machineTotal: m.total,
  };
}

export interface CpuShares {
  /** % of one core per role over the window. */
  perRole: Record<string, number>;
  /** % of one core used by everything on the machine (all cores: up to cores x 100). */
  machine: number;
  /** machine minus our processes: other load on the machine during the window. */
  other: number;
}

export function seconds(a: Snapshot, b: Snapshot): number {
  return Number(b.atNs - a.atNs) / 1e9;
}

export function cpuShares(a: Snapshot, b: Snapshot, cores: number): CpuShares {
  const dt = seconds(a, b);
  const perRole: Record<string, number> = {};
  let ours = 0;
  for (const k of Object.keys(b.cpu)) {
    const v = (100 * ((b.cpu[k] ?? 0) - (a.cpu[k] ?? 0))) / dt;
    perRole[k] = Math.round(v * 10) / 10;
    ours += v;
  }
  const dTotal = b.machineTotal - a.machineTotal;
  const machine = dTotal > 0 ? (100 * cores * (b.machineBusy - a.machineBusy)) / dTotal : Number.NaN;
  return {
    perRole,
    machine: Math.round(machine * 10) / 10,
    other: Math.round(Math.max(0, machine - ours) * 10) / 10,
  };
}

/** Difference of a counter summed over the given guests. */
export function guestDelta(
  a: Snapshot,
  b: Snapshot,
  keys: readonly string[],
  field: keyof GuestCounters,
): number {
  let d = 0;
  for (const k of keys) d += (b.guests[k]?.[field] ?? 0) - (a.guests[k]?.[field] ?? 0);
  return d;
}

/** Difference of a daemon socket counter summed over the given socket indices. */
export function socketDelta(
  a: Snapshot,
  b: Snapshot,
  sockets: readonly number[],
  field: 'txOk' | 'txNotOk' | 'rxDelivered' | 'rxDroppedOverflow',
): number {
  let d = 0;
  for (const i of sockets) {
    d += (b.daemon?.sockets[i]?.[field] ?? 0) - (a.daemon?.sockets[i]?.[field] ?? 0);
  }
  return d;
}

/**
 * Which side limits the rate. A process at >= 85% of a core is saturated (Node runs our code on one
 * thread; the rest is GC and libuv threads). If none is, but the machine is >= 90% busy, the limit is
 * CPU contention; otherwise it is wake-up latency (processes waiting for each other).
 */
export function saturation(cpu: CpuShares, cores: number, roles: Record<string, string>): string {
  const hot = Object.entries(roles)
    .map(([key, label]) => ({ label, v: cpu.perRole[key] ?? 0 }))
    .filter((r) => r.v >= 85)
    .sort((x, y) => y.v - x.v);
  if (hot.length > 0) return hot.map((h) => `${h.label} (${h.v.toFixed(0)}%)`).join(' + ');
  if (cpu.machine >= 90 * cores) {
    const top = Object.entries(roles)
      .map(([key, label]) => ({ label, v: cpu.perRole[key] ?? 0 }))
      .sort((x, y) => y.v - x.v)[0];
    return `CPU contention (machine ${cpu.machine.toFixed(0)}%/${cores * 100}%, other ${cpu.other.toFixed(0)}%; busiest: ${top?.label} ${top?.v.toFixed(0)}%)`;
  }
  return 'none: wake-up/latency bound';
}
