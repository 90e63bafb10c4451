/**
 * Composition of the vhost-device-can daemon, usable as a library: a test or another program can
 * create the daemon in-process, reach its buses, attach its own ports and read every counter.
 */
import type { BusTiming, PortFault } from '../../core/bus/faults.js';
import { type CanHub, HubRegistry } from '../../core/bus/hub.js';
import { CanDevice, type CanFeatureSwitches } from '../../core/devices/can/can-device.js';
import { type LogFields, nullLogger } from '../../core/util/log.js';
import { ringOptionsOf } from '../../core/virtio/features.js';
import { builtinPorts } from '../bus/builtin-ports.js';
import { timerFdHubTimers } from '../bus/hub-timer.js';
import type { BusAttachment, BusPortRequest, PortContext, PortRegistry } from '../bus/port-registry.js';
import { SocketCanPort } from '../bus/socketcan-port.js';
import { batchClock } from '../clock.js';
import { CodedError } from '../errors.js';
import { native as defaultNative } from '../native/addon.js';
import { SocketcandServer, type SocketcandServerOptions } from '../net/socketcand-server.js';
import { type DaemonCommonOptions, VhostUserDaemon } from '../vhost-user/daemon.js';

/** Where one guest's CAN traffic goes. */
export type BusSpec =
  | { kind: 'virtual'; name: string }
  /** A host SocketCAN interface (vcan0, can0): guests naming the same one share it. */
  | { kind: 'host'; ifname: string };

export const DEFAULT_VIRTUAL_BUS = 'default';

/**
 * A bus's name, the one every option and peer uses: `default` for the default virtual bus, NAME for
 * `virtual:NAME`, the interface name for a host interface.
 */
export function busName(b: BusSpec): string {
  return b.kind === 'virtual' ? b.name : b.ifname;
}

/**
 * The buses of a configuration, by name, or a message when a virtual bus is named like a host
 * interface in use (they would be two buses with one name). Buses named only by ports (`--link`,
 * `--capture`, ...) that no guest uses are virtual buses.
 */
export function busesOf(
  buses: readonly BusSpec[],
  extraNames: readonly string[] = [],
): Map<string, BusSpec> | string {
  const out = new Map<string, BusSpec>();
  for (const b of buses) {
    const name = busName(b);
    const seen = out.get(name);
    if (seen !== undefined && seen.kind !== b.kind) {
      return `bus "${name}" is both a virtual bus and a host interface: rename the virtual bus`;
    }
    out.set(name, b);
  }
  for (const name of extraNames) if (!out.has(name)) out.set(name, { kind: 'virtual', name });
  return out;
}

export interface CanDaemonOptions extends DaemonCommonOptions {
  /** One entry per path; default: every guest on the shared in-process bus "default". */
  buses?: readonly BusSpec[];
  features?: Partial<CanFeatureSwitches>;
  rxBacklog?: number;
  /**
   * Receive buffer of each host SocketCAN socket in bytes (default DEFAULT_SOCKETCAN_RCVBUF;
   * 0 = the kernel's default). See SocketCanPortOptions.rcvbuf.
   */
  socketcanRcvbuf?: number;
  /** Existing buses to use (and share with the caller); created on demand otherwise. */
  hubs?: HubRegistry;
  /** Links, captures and replays (`--link`, `--capture`, `--replay`), created in this order. */
  ports?: readonly BusPortRequest[];
  /** Where their kinds are looked up (default: builtinPorts). */
  portRegistry?: PortRegistry;
  /** Options of the port kinds (`--replay-speed`...), handed to every port (PortContext.options). */
  portOptions?: Readonly<Record<string, string | boolean | undefined>>;
  /**
   * A socketcand server serving every bus (`--socketcand-listen`). Listening completes later:
   * await `CanDaemon.socketcand.ready` (it rejects when the address cannot be used).
   */
  socketcand?: Omit<SocketcandServerOptions, 'hubs' | 'log' | 'epochOffsetNs'>;
  /**
   * Timed buses by name (`--bitrate`, `--ack`; docs/timed-bus.md): virtual buses the daemon
   * creates (not a host interface, not with `hubs`).
   */
  timing?: Readonly<Record<string, BusTiming>>;
  /** Faults injected at start (`--fault`); each waits for its port to attach. */
  faults?: readonly FaultRequest[];
}

/** One `--fault`: a fault for a port (by name) of a bus. */
export interface FaultRequest {
  readonly bus: string;
  readonly port: string;
  readonly fault: PortFault;
  readonly durationMs?: number | undefined;
}

export type CanDaemonErrorCode =
  | 'ERR_BUS_COUNT'
  | 'ERR_BUS_NAME'
  | 'ERR_PORT_SPEC'
  | 'ERR_BUS_TIMING'
  | 'ERR_FAULT_SPEC';

export class CanDaemonError extends CodedError<CanDaemonErrorCode> {}

export interface CanDaemon {
  readonly daemon: VhostUserDaemon;
  readonly hubs: HubRegistry;
  /** The bus socket `index` is attached to. */
  hubFor(index: number): CanHub;
  /** The device currently serving socket `index` (null while no front-end is connected). */
  device(index: number): CanDevice | null;
  /** The SocketCAN ports, by interface name. */
  readonly hostPorts: ReadonlyMap<string, SocketCanPort>;
  /** Every bus by name (guests' buses and those only ports name), created at start. */
  readonly buses: ReadonlyMap<string, BusSpec>;
  /** Host interfaces, links, captures and replays, in creation order. */
  readonly attachments: readonly BusAttachment[];
  /** The socketcand server (also in `attachments`), or null without `socketcand`. */
  readonly socketcand: SocketcandServer | null;
  stop(): void;
}

/** A host interface port as a BusAttachment (stats and close for the daemon's lists). */
function hostAttachment(p: SocketCanPort): BusAttachment {
  return {
    kind: 'host',
    name: p.port.name,
    bus: p.ifname,
    stats: (): LogFields => ({ state: p.linkState, ...p.stats }),
    close: () => p.close(),
  };
}

const clock = batchClock();

export function startCanDaemon(opts: CanDaemonOptions): CanDaemon {
  const log = opts.log ?? nullLogger;
  const listenFds = opts.listenFds ?? [];
  const sockets = opts.paths.length + listenFds.length;
  const buses =
    opts.buses ??
    Array.from({ length: sockets }, () => ({ kind: 'virtual', name: DEFAULT_VIRTUAL_BUS }) as const);
  if (buses.length !== sockets) {
    throw new CanDaemonError('ERR_BUS_COUNT', `${sockets} sockets but ${buses.length} bus entries`);
  }
  const registry = opts.portRegistry ?? builtinPorts;
  const requests = opts.ports ?? [];
  const resolved = requests.map((r) => {
    const res = registry.resolve(r);
    if (typeof res === 'string') throw new CanDaemonError('ERR_PORT_SPEC', res);
    return res;
  });
  const named = busesOf(
    buses,
    requests.map((r) => r.bus),
  );
  if (typeof named === 'string') throw new CanDaemonError('ERR_BUS_NAME', named);
  const timing = opts.timing ?? {};
  for (const bus of Object.keys(timing)) {
    const b = named.get(bus);
    const why =
      b === undefined
        ? 'no guest or port uses it'
        : b.kind === 'host'
          ? 'it is a host interface (the real bus has its own timing)'
          : opts.hubs !== undefined
            ? 'its hub was given by the caller (timing applies to buses the daemon creates)'
            : null;
    if (why !== null) throw new CanDaemonError('ERR_BUS_TIMING', `bus "${bus}" cannot be timed: ${why}`);
  }
  const n = opts.native ?? defaultNative;
  const hubs =
    opts.hubs ??
    new HubRegistry({ clock, timer: timerFdHubTimers(n, log) }, (name) => {
      const t = timing[name];
      return t === undefined ? undefined : { timing: t };
    });
  const ownsHubs = opts.hubs === undefined;
  // Every bus exists from the start, so peers (socketcand clients, links) can join it at once.
  for (const name of named.keys()) hubs.get(name);
  const hubOf = (i: number): CanHub => hubs.get(busName(buses[i]!));
  const attachments: BusAttachment[] = [];
  // Replays (and whoever else asks) wait for the first guest that starts its controller on a bus.
  const started = new Set<string>();
  const waiting = new Map<string, (() => void)[]>();
  const guestStarted = (bus: string): void => {
    if (started.has(bus)) return;
    started.add(bus);
    for (const fn of waiting.get(bus) ?? []) fn();
    waiting.delete(bus);
  };
  const epochOffsetNs = BigInt(Date.now()) * 1_000_000n - process.hrtime.bigint();
  // One SocketCAN port per host interface, shared by the guests that name it. Start-up checks
  // (no AF_CAN, missing, not CAN, down) fail here with a clear error, before any socket exists.
  const hostPorts = new Map<string, SocketCanPort>();
  let socketcand: SocketcandServer | null = null;
  try {
    for (const f of opts.faults ?? []) {
      if (!named.has(f.bus)) {
        throw new CanDaemonError('ERR_FAULT_SPEC', `fault for bus "${f.bus}": no guest or port uses it`);
      }
      try {
        hubs.get(f.bus).injectFault(f.port, f.fault, { durationMs: f.durationMs });
      } catch (err) {
        throw new CanDaemonError(
          'ERR_FAULT_SPEC',
          `fault for ${f.bus}:${f.port}: ${(err as Error).message}`,
          {
            cause: err,
          },
        );
      }
    }
    for (const b of buses) {
      if (b.kind !== 'host' || hostPorts.has(b.ifname)) continue;
      hostPorts.set(
        b.ifname,
        new SocketCanPort({
          native: n,
          hub: hubs.get(busName(b)),
          ifname: b.ifname,
          log,
          ...(opts.socketcanRcvbuf === undefined ? {} : { rcvbuf: opts.socketcanRcvbuf }),
        }),
      );
    }
    for (const p of hostPorts.values()) attachments.push(hostAttachment(p));
    for (const r of resolved) {
      const bus = r.request.bus;
      const ctx: PortContext = {
        bus,
        hub: hubs.get(bus),
        hubs,
        log: log.child({ [r.factory.kind]: r.request.value, bus }),
        native: n,
        epochOffsetNs,
        options: opts.portOptions ?? {},
        onFirstGuestStart: (fn) => {
          if (started.has(bus)) fn();
          else waiting.set(bus, [...(waiting.get(bus) ?? []), fn]);
        },
      };
      attachments.push(r.factory.create(ctx, r.spec));
    }
    if (opts.socketcand !== undefined) {
      socketcand = new SocketcandServer({
        ...opts.socketcand,
        hubs,
        log: log.child({ socketcand: 'server' }),
        epochOffsetNs,
      });
      attachments.push(socketcand);
    }
  } catch (err) {
    closeAll();
    throw err;
  }
  function closeAll(): void {
    for (const a of attachments.splice(0).reverse()) {
      try {
        a.close();
      } catch (err) {
        log.warn('closing a bus port failed', { port: a.name, reason: (err as Error).message });
      }
    }
    for (const p of hostPorts.values()) p.close();
    if (ownsHubs) hubs.closeAll();
  }
  /** CAN FD only where the bus can carry it (a host interface with MTU 72). */
  const featuresOf = (i: number): Partial<CanFeatureSwitches> | undefined => {
    const b = buses[i]!;
    if (b.kind !== 'host' || hostPorts.get(b.ifname)!.fd) return opts.features;
    return { ...opts.features, fd: false };
  };
  const devices: (CanDevice | null)[] = Array.from({ length: sockets }, () => null);
  const daemon = new VhostUserDaemon({
    native: n,
    paths: opts.paths,
    listenFds,
    log,
    ...(opts.protocolFeatures === undefined ? {} : { protocolFeatures: opts.protocolFeatures }),
    onDeviceClosed: (index, dev) => {
      if (devices[index] === dev) devices[index] = null;
    },
    makeDevice: (index, devLog) => {
      const dev = new CanDevice({
        hub: hubOf(index),
        portName: `guest${index}`,
        ...(featuresOf(index) === undefined ? {} : { features: featuresOf(index)! }),
        ...ringOptionsOf(opts),
        ...(opts.rxBacklog === undefined ? {} : { rxBacklog: opts.rxBacklog }),
        log: devLog,
        onControllerChange: (state) => {
          if (state === 'started') guestStarted(busName(buses[index]!));
        },
      });
      devices[index] = dev;
      return dev;
    },
  });
  try {
    daemon.start();
  } catch (err) {
    closeAll();
    throw err;
  }
  return {
    daemon,
    hubs,
    hubFor: hubOf,
    device: (i) => devices[i] ?? null,
    hostPorts,
    buses: named,
    attachments,
    socketcand,
    stop: () => {
      daemon.stop();
      closeAll();
    },
  };
}
