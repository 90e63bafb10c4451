/**
 * Composition of the vhost-device-console daemon, usable as a library: N guests, one vhost-user
 * socket each, every guest with a console port (port 0, the guest's hvc0) and optional named
 * ports, each port served by the chosen backend.
 *
 * Port mapping (printed at start):
 * - network: guest i's console on TCP PORT + i (rust-vmm's numbering); named port j (1-based, in
 *   --port-name order) of guest i on PORT + j * N + i, N the guest count, so every guest's ports
 *   follow the same pattern and numbers never collide;
 * - unix: guest i's console on UDS_PATH + i; named port NAME on UDS_PATH + i + "-" + NAME;
 * - nested: guest 0's console on the daemon's terminal (named ports need network or unix).
 *
 * Endpoints (scrollback, log file, client) outlive vhost-user connections: a guest reboot or a QEMU
 * restart binds the new device to the same endpoints, and a connected client stays connected.
 */
import {
  ConsoleDevice,
  type ConsoleFeatureSwitches,
  type ConsoleHandler,
} from '../../core/devices/console/console-device.js';
import { nullLogger } from '../../core/util/log.js';
import { ringOptionsOf } from '../../core/virtio/features.js';
import { CodedError } from '../errors.js';
import { native as defaultNative } from '../native/addon.js';
import { type DaemonCommonOptions, VhostUserDaemon } from '../vhost-user/daemon.js';
import { describeAddress, type ListenAddress, PortListener } from './listeners.js';
import { NestedTerminal, type TerminalIo } from './nested-terminal.js';
import { ConsolePortEndpoint, type PortEndpointStats } from './port-endpoint.js';

export type ConsoleBackend =
  | { kind: 'network'; host: string; port: number }
  | { kind: 'unix'; path: string }
  | { kind: 'nested'; io?: TerminalIo; onQuit?: () => void }
  /** No client side (library use: reach the endpoints directly). */
  | { kind: 'none' };

export interface ConsoleDaemonOptions extends DaemonCommonOptions {
  backend: ConsoleBackend;
  /** Named ports besides the console, the same for every guest. */
  portNames?: readonly string[];
  /** Scrollback bytes per port while no client is connected (default 64 KiB). */
  scrollback?: number;
  /** Append guest output to LOGFILE + guest index (named ports: + "-" + NAME). */
  logFile?: string;
  features?: Partial<ConsoleFeatureSwitches>;
  /** Terminal size reported to guests when the backend has none (default 80 x 24). */
  cols?: number;
  rows?: number;
  legacyResizeOrder?: boolean;
}

export type ConsoleDaemonErrorCode = 'ERR_NESTED';

export class ConsoleDaemonError extends CodedError<ConsoleDaemonErrorCode> {}

export interface ConsoleGuestStatus {
  socket: string;
  connected: boolean;
  ports: { label: string; address: string; client: boolean; guestOpen: boolean; stats: PortEndpointStats }[];
}

export interface ConsoleDaemon {
  readonly daemon: VhostUserDaemon;
  /** Endpoints by guest, then port (0 = console). */
  readonly endpoints: readonly (readonly ConsolePortEndpoint[])[];
  /** Where each endpoint's clients connect, same indexing ("terminal" for nested, "" for none). */
  readonly addresses: readonly (readonly string[])[];
  /** The device serving guest `index` (null while no front-end is connected). */
  device(index: number): ConsoleDevice | null;
  /** Sets the size reported to every guest (network/unix backends have no terminal of their own). */
  resize(cols: number, rows: number): void;
  status(): ConsoleGuestStatus[];
  stop(): void;
}

export function portAddress(
  backend: ConsoleBackend,
  guests: number,
  guest: number,
  port: number,
  names: readonly string[],
): ListenAddress | null {
  switch (backend.kind) {
    case 'network':
      return { kind: 'tcp', host: backend.host, port: backend.port + port * guests + guest };
    case 'unix':
      return {
        kind: 'unix',
        path: port === 0 ? `${backend.path}${guest}` : `${backend.path}${guest}-${names[port - 1]}`,
      };
    default:
      return null;
  }
}

/** Starts the daemon: listeners first (a taken port fails start-up), then the vhost-user sockets. */
export async function startConsoleDaemon(opts: ConsoleDaemonOptions): Promise<ConsoleDaemon> {
  const log = opts.log ?? nullLogger;
  const names = opts.portNames ?? [];
  const listenFds = opts.listenFds ?? [];
  const guests = opts.paths.length + listenFds.length;
  const backend = opts.backend;
  if (backend.kind === 'nested' && (guests !== 1 || names.length > 0)) {
    throw new ConsoleDaemonError(
      'ERR_NESTED',
      'the nested backend serves exactly one guest console (no named ports): use network or unix',
    );
  }
  const scrollback = opts.scrollback ?? 64 * 1024;
  let size = { cols: opts.cols ?? 80, rows: opts.rows ?? 24 };
  const devices: (ConsoleDevice | null)[] = Array.from({ length: guests }, () => null);
  const endpoints: ConsolePortEndpoint[][] = [];
  const addresses: string[][] = [];
  const listeners: PortListener[] = [];
  let terminal: NestedTerminal | null = null;
  let daemon: VhostUserDaemon | null = null;

  const stop = (): void => {
    daemon?.stop();
    for (const l of listeners) l.stop();
    for (const g of endpoints) for (const e of g) e.close();
    terminal?.stop();
  };

  try {
    for (let g = 0; g < guests; g++) {
      const eps: ConsolePortEndpoint[] = [];
      const addrs: string[] = [];
      for (let p = 0; p <= names.length; p++) {
        const label = p === 0 ? `guest${g} console` : `guest${g} ${names[p - 1]}`;
        const logFile =
          opts.logFile === undefined
            ? undefined
            : p === 0
              ? `${opts.logFile}${g}`
              : `${opts.logFile}${g}-${names[p - 1]}`;
        const ep = new ConsolePortEndpoint({
          label,
          port: p,
          scrollback,
          ...(logFile === undefined ? {} : { logFile }),
          log,
        });
        eps.push(ep);
        const addr = portAddress(backend, guests, g, p, names);
        if (addr !== null) {
          const l = new PortListener(ep, addr, log);
          listeners.push(l);
          await l.start();
          addrs.push(describeAddress(addr));
          if (backend.kind === 'network' && p === 0 && g === 0 && !isLoopback(backend.host)) {
            log.warn('console listeners are reachable from the network and have no authentication', {
              host: backend.host,
            });
          }
        } else {
          addrs.push(backend.kind === 'nested' ? 'terminal' : '');
        }
      }
      endpoints.push(eps);
      addresses.push(addrs);
    }

    if (backend.kind === 'nested') {
      const io = backend.io ?? { input: process.stdin, output: process.stdout };
      terminal = new NestedTerminal(io, {
        quit: () => (backend.onQuit ?? (() => {}))(),
        resize: (cols, rows) => {
          size = { cols, rows };
          devices[0]?.resize(cols, rows);
        },
      });
      const s = terminal.size();
      if (s !== null) size = s;
      terminal.start();
      endpoints[0]![0]!.attachClient(terminal.stream);
    }

    daemon = new VhostUserDaemon({
      native: opts.native ?? defaultNative,
      paths: opts.paths,
      listenFds,
      log,
      ...(opts.protocolFeatures === undefined ? {} : { protocolFeatures: opts.protocolFeatures }),
      onDeviceClosed: (index, dev) => {
        if (devices[index] === dev) devices[index] = null;
        for (const e of endpoints[index]!) e.unbind(dev as ConsoleDevice);
      },
      makeDevice: (index, devLog) => {
        const eps = endpoints[index]!;
        const handler: ConsoleHandler = {
          output: (port, bytes) => eps[port]?.output(bytes),
          inputSpace: (port) => eps[port]?.inputSpace(),
          canOutput: (port) => eps[port]?.canOutput() ?? true,
          guestOpen: (port, open) =>
            devLog.info(open ? 'guest opened port' : 'guest closed port', { port: eps[port]?.label }),
        };
        const dev = new ConsoleDevice({
          handler,
          portNames: names,
          ...(opts.features === undefined ? {} : { features: opts.features }),
          cols: size.cols,
          rows: size.rows,
          legacyResizeOrder: opts.legacyResizeOrder ?? false,
          ...ringOptionsOf(opts),
          log: devLog,
        });
        devices[index] = dev;
        for (const e of eps) e.bind(dev);
        return dev;
      },
    });
    daemon.start();
  } catch (err) {
    stop();
    throw err;
  }

  for (let g = 0; g < guests; g++) {
    for (let p = 0; p <= names.length; p++) {
      log.info('console port', {
        guest: g,
        port: endpoints[g]![p]!.label,
        clients: addresses[g]![p]! || 'none',
      });
    }
  }

  const d = daemon;
  return {
    daemon: d,
    endpoints,
    addresses,
    device: (i) => devices[i] ?? null,
    resize(cols, rows) {
      size = { cols, rows };
      for (const dev of devices) dev?.resize(cols, rows);
    },
    status() {
      const socks = d.status();
      return endpoints.map((eps, g) => ({
        socket: socks[g]?.path ?? '',
        connected: socks[g]?.connected ?? false,
        ports: eps.map((e, p) => ({
          label: e.label,
          address: addresses[g]![p]!,
          client: e.hasClient,
          guestOpen: devices[g]?.isGuestOpen(p) ?? false,
          stats: e.stats,
        })),
      }));
    },
    stop,
  };
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\./.test(host);
}
