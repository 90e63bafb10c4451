/**
 * The console daemon under test in its own process: the compiled `vhost-device-console` CLI of the
 * bench's build with the network backend (guest i's console on TCP 127.0.0.1:PORT+i, its named port j
 * of `--port-name`, if any, on PORT + j*N + i with N guests). Counters come
 * from its SIGUSR1 dump (JSON log lines on stderr: a process line, then per guest a guest line and
 * one line per port), CPU time and memory from /proc.
 */
import type { BuildInfo } from './build.js';
import { DaemonChild } from './daemon-child.js';

/** The per-port line of the console daemon's stats dump (guest by guest, port 0 first). */
export interface ConsolePortStatsLine {
  port: string;
  client: boolean;
  guestOpen: boolean;
  outputBytes: number;
  clientBytesOut: number;
  clientBytesIn: number;
  scrollbackDropped: number;
  clientDropped: number;
  /** Times the guest's output was paused for a slow client (absent in older daemons: 0). */
  outputPauses: number;
  stalledClients: number;
  /** Bytes written into guest RX buffers (absent while no guest is connected). */
  rxBytes: number;
  rxBuffers: number;
  inputWaiting: number;
}

export interface ConsoleDaemonStats {
  atNs: bigint;
  ports: ConsolePortStatsLine[];
  heapUsedKb: number | null;
}

export interface ConsoleDaemonStartOptions {
  build: BuildInfo;
  guests: number;
  /** TCP port of guest 0's console. */
  tcpPort: number;
  /** Named ports (`--port-name`), the same for every guest (default none). */
  portNames?: readonly string[];
  nodeFlags?: string[];
  label: string;
}

interface Waiter {
  ports: ConsolePortStatsLine[];
  heapUsedKb: number | null;
  resolve(s: ConsoleDaemonStats): void;
  reject(e: Error): void;
}

export class ConsoleDaemonProcess extends DaemonChild<Waiter, ConsoleDaemonStats> {
  readonly guests: number;
  readonly tcpPort: number;
  /** Ports per guest: the console plus the named ports. */
  readonly portsPerGuest: number;

  private constructor(opts: ConsoleDaemonStartOptions) {
    const names = opts.portNames ?? [];
    super({
      what: 'console daemon',
      label: opts.label,
      startedMsg: 'vhost-device-console started',
      dirPrefix: 'vdcon-bench-',
      socketName: 'con.sock',
      argv: (base) => [
        ...(opts.nodeFlags ?? []),
        ...opts.build.consoleArgv,
        '-s',
        base,
        '-c',
        String(opts.guests),
        '-b',
        'network',
        '-p',
        String(opts.tcpPort),
        '--log-format',
        'json',
        ...names.flatMap((n) => ['--port-name', n]),
      ],
    });
    this.guests = opts.guests;
    this.tcpPort = opts.tcpPort;
    this.portsPerGuest = 1 + names.length;
  }

  /** Spawns the daemon and waits until it listens (its TCP ports too). */
  static async start(opts: ConsoleDaemonStartOptions): Promise<ConsoleDaemonProcess> {
    const d = new ConsoleDaemonProcess(opts);
    await d.ready();
    return d;
  }

  /** TCP port of guest `guest`'s port `port` (0: the console, j: the j-th --port-name). */
  tcpPortOf(guest: number, port: number): number {
    if (port < 0 || port >= this.portsPerGuest) throw new Error(`no port ${port}`);
    return this.tcpPort + port * this.guests + guest;
  }

  /** The line of guest `guest`'s port `port` in a dump of this daemon. */
  portLine(s: ConsoleDaemonStats | null, guest: number, port: number): ConsolePortStatsLine | undefined {
    return s?.ports[guest * this.portsPerGuest + port];
  }

  protected onStatsLine(w: Waiter, o: Record<string, unknown>): void {
    if (typeof o.process === 'number') {
      w.heapUsedKb = Number(o.heapUsedKb);
    } else if (typeof o.port === 'string') {
      w.ports.push({
        port: o.port,
        client: o.client === true,
        guestOpen: o.guestOpen === true,
        outputBytes: Number(o.outputBytes ?? 0),
        clientBytesOut: Number(o.clientBytesOut ?? 0),
        clientBytesIn: Number(o.clientBytesIn ?? 0),
        scrollbackDropped: Number(o.scrollbackDropped ?? 0),
        clientDropped: Number(o.clientDropped ?? 0),
        outputPauses: Number(o.outputPauses ?? 0),
        stalledClients: Number(o.stalledClients ?? 0),
        rxBytes: Number(o.rxBytes ?? 0),
        rxBuffers: Number(o.rxBuffers ?? 0),
        inputWaiting: Number(o.inputWaiting ?? 0),
      });
      // The dump is complete after one line per port of every guest.
      if (w.ports.length === this.guests * this.portsPerGuest) {
        this.waiter = null;
        w.resolve({ atNs: process.hrtime.bigint(), ports: w.ports, heapUsedKb: w.heapUsedKb });
      }
    }
  }

  /** The daemon's counters, through SIGUSR1 (one dump at a time). */
  stats(timeoutMs = 10_000): Promise<ConsoleDaemonStats> {
    return this.dump((resolve, reject) => ({ ports: [], heapUsedKb: null, resolve, reject }), timeoutMs);
  }
}
