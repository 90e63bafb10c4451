/**
 * The daemon under test in its own process: the compiled CLI of the bench's build (bench/lib/build.ts)
 * or the TypeScript entry through tsx. Counters come from its SIGUSR1 dump (JSON log lines on
 * stderr), CPU time and memory from /proc.
 */
import type { BuildInfo } from './build.js';
import { DaemonChild } from './daemon-child.js';

export interface SocketStats {
  socket: number;
  connected: boolean;
  txOk: number;
  txNotOk: number;
  rxDelivered: number;
  rxDroppedOverflow: number;
  rxQueued: number;
}

export interface BusStatsLine {
  bus: string;
  frames: number;
  droppedOverflow: number;
  /** Frame copies the bus allocated so far (the rest were reused). */
  framesAllocated: number;
  /** A timed bus (--bitrate): busy seconds, delivery lateness (us, cumulative), late wake-ups. */
  timing: {
    busyS: number;
    busTimeS: number;
    clockS: number;
    lateP50Us: number;
    lateP99Us: number;
    lateMaxUs: number;
    /** Frames delivered, and how many less than LATENESS_EDGES_US[i] late (cumulative). */
    lateCount: number;
    lateBuckets: number[];
    behind: number;
    pauses: number;
    wakeups: number;
  } | null;
}

/** A host SocketCAN interface's counters (SocketCanStats). */
export interface HostStatsLine {
  host: string;
  rxFrames: number;
  rxKernelDrops: number;
  txFrames: number;
}

/** The daemon's own view of its memory (process.memoryUsage, kB). */
export interface ProcessStatsLine {
  rssKb: number;
  heapUsedKb: number;
  heapTotalKb: number;
  externalKb: number;
}

/** A link's state and counters (a --link attachment: every field of its stats line). */
export type LinkStatsLine = Record<string, unknown> & { link: string };

export interface DaemonStats {
  /** hrtime (ns) in the bench process when the dump arrived */
  atNs: bigint;
  sockets: SocketStats[];
  bus: BusStatsLine;
  /** Every bus line of the dump (`bus` is the first). */
  buses: BusStatsLine[];
  process: ProcessStatsLine | null;
  /** One line per host SocketCAN interface (none on virtual buses). */
  hosts: HostStatsLine[];
  /** One line per --link. */
  links: LinkStatsLine[];
  /** The socketcand server's line (--socketcand-listen), when it listens. */
  servers: ServerStatsLine[];
}

/** A server's state and counters (every field of its stats line). */
export type ServerStatsLine = Record<string, unknown> & { 'socketcand-server': string };

export interface DaemonStartOptions {
  build: BuildInfo;
  sockets: number;
  /** Extra node flags (e.g. --cpu-prof ...), placed before the script. */
  nodeFlags?: string[];
  /** Extra daemon arguments. */
  args?: string[];
  label: string;
  /** Bus lines a stats dump has (default 1: the dump ends at the first). */
  buses?: number;
}

interface StatsWaiter {
  sockets: SocketStats[];
  buses: BusStatsLine[];
  hosts: HostStatsLine[];
  links: LinkStatsLine[];
  servers: ServerStatsLine[];
  process: ProcessStatsLine | null;
  timer: ReturnType<typeof setTimeout> | null;
  resolve(s: DaemonStats): void;
  reject(e: Error): void;
}

export class DaemonProcess extends DaemonChild<StatsWaiter, DaemonStats> {
  readonly sockets: number;
  readonly busCount: number;

  private constructor(opts: DaemonStartOptions) {
    super({
      what: 'daemon',
      label: opts.label,
      startedMsg: 'vhost-device-can started',
      dirPrefix: 'vdc-bench-',
      socketName: 'can.sock',
      argv: (base) => [
        ...(opts.nodeFlags ?? []),
        ...opts.build.daemonArgv,
        '-s',
        base,
        '-c',
        String(opts.sockets),
        '--log-format',
        'json',
        ...(opts.args ?? []),
      ],
    });
    this.sockets = opts.sockets;
    this.busCount = opts.buses ?? 1;
  }

  /** Spawns the daemon and waits until it listens. */
  static async start(opts: DaemonStartOptions): Promise<DaemonProcess> {
    const d = new DaemonProcess(opts);
    await d.ready();
    return d;
  }

  protected onStatsLine(w: StatsWaiter, o: Record<string, unknown>): void {
    if (typeof o.process === 'number') {
      w.process = {
        rssKb: Number(o.rssKb),
        heapUsedKb: Number(o.heapUsedKb),
        heapTotalKb: Number(o.heapTotalKb),
        externalKb: Number(o.externalKb),
      };
    } else if (typeof o.socket === 'number') {
      w.sockets.push({
        socket: o.socket,
        connected: o.connected === true,
        txOk: Number(o.txOk ?? 0),
        txNotOk: Number(o.txNotOk ?? 0),
        rxDelivered: Number(o.rxDelivered ?? 0),
        rxDroppedOverflow: Number(o.rxDroppedOverflow ?? 0),
        rxQueued: Number(o.rxQueued ?? 0),
      });
      // The bus line follows at once, but there is none before the first guest created the bus.
      if (w.sockets.length === this.sockets) {
        const none = { bus: 'none', frames: 0, droppedOverflow: 0, framesAllocated: 0, timing: null };
        w.timer = setTimeout(() => this.finishStats(w, none), 200);
      }
    } else if (typeof o.host === 'string') {
      w.hosts.push({
        host: o.host,
        rxFrames: Number(o.rxFrames ?? 0),
        rxKernelDrops: Number(o.rxKernelDrops ?? 0),
        txFrames: Number(o.txFrames ?? 0),
      });
    } else if (typeof o.link === 'string') {
      w.links.push(o as LinkStatsLine);
    } else if (typeof o['socketcand-server'] === 'string') {
      w.servers.push(o as ServerStatsLine);
    } else if (typeof o.bus === 'string' && o.busLoad !== undefined) {
      // A bus line (the lines of captures, links... name their bus too, without busLoad).
      w.buses.push({
        bus: o.bus,
        frames: Number(o.frames),
        droppedOverflow: Number(o.droppedOverflow),
        framesAllocated: Number(o.framesAllocated ?? 0),
        timing:
          o.busyS === undefined
            ? null
            : {
                busyS: Number(o.busyS),
                busTimeS: Number(o.busTimeS),
                clockS: Number(o.clockS),
                lateP50Us: Number(o.lateP50Us),
                lateP99Us: Number(o.lateP99Us),
                lateMaxUs: Number(o.lateMaxUs),
                lateCount: Number(o.lateCount ?? 0),
                lateBuckets: String(o.lateBuckets ?? '')
                  .split(' ')
                  .filter((x) => x !== '')
                  .map(Number),
                behind: Number(o.behind),
                pauses: Number(o.pauses),
                wakeups: Number(o.wakeups),
              },
      });
      if (w.buses.length >= this.busCount) this.finishStats(w, w.buses[0]!);
    }
  }

  private finishStats(w: StatsWaiter, bus: BusStatsLine): void {
    if (this.waiter !== w) return;
    this.waiter = null;
    if (w.timer !== null) clearTimeout(w.timer);
    w.resolve({
      atNs: process.hrtime.bigint(),
      sockets: w.sockets,
      bus,
      buses: w.buses.length > 0 ? w.buses : [bus],
      process: w.process,
      hosts: w.hosts,
      links: w.links,
      servers: w.servers,
    });
  }

  /** The daemon's counters, through SIGUSR1 (one dump at a time). */
  stats(timeoutMs = 10_000): Promise<DaemonStats> {
    return this.dump(
      (resolve, reject) => ({
        sockets: [],
        buses: [],
        hosts: [],
        links: [],
        servers: [],
        process: null,
        timer: null,
        resolve,
        reject,
      }),
      timeoutMs,
    );
  }
}
