/**
 * Composition of the vhost-device-can daemon, usable as a library: a test or another program can
 * create the daemon in-process, reach its buses, attach its own ports and read every counter.
 */
import { type CanHub, HubRegistry } from '../../core/bus/hub.js';
import { CanDevice, type CanFeatureSwitches } from '../../core/devices/can/can-device.js';
import { nullLogger } from '../../core/util/log.js';
import { ringOptionsOf } from '../../core/virtio/features.js';
import { SocketCanPort } from '../bus/socketcan-port.js';
import { batchClock } from '../clock.js';
import { CodedError } from '../errors.js';
import { native as defaultNative } from '../native/addon.js';
import { type DaemonCommonOptions, VhostUserDaemon } from '../vhost-user/daemon.js';

/** Where one guest's CAN traffic goes. */
export type BusSpec =
  | { kind: 'virtual'; name: string }
  /** A host SocketCAN interface (vcan0, can0): guests naming the same one share it. */
  | { kind: 'host'; ifname: string };

export const DEFAULT_VIRTUAL_BUS = 'default';

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
}

export type CanDaemonErrorCode = 'ERR_BUS_COUNT';

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
  stop(): void;
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
  const hubs = opts.hubs ?? new HubRegistry({ clock });
  const ownsHubs = opts.hubs === undefined;
  const hubName = (b: BusSpec): string => (b.kind === 'virtual' ? b.name : `host:${b.ifname}`);
  const hubOf = (i: number): CanHub => hubs.get(hubName(buses[i]!));
  const n = opts.native ?? defaultNative;
  // One SocketCAN port per host interface, shared by the guests that name it. Start-up checks
  // (no AF_CAN, missing, not CAN, down) fail here with a clear error, before any socket exists.
  const hostPorts = new Map<string, SocketCanPort>();
  try {
    for (const b of buses) {
      if (b.kind !== 'host' || hostPorts.has(b.ifname)) continue;
      hostPorts.set(
        b.ifname,
        new SocketCanPort({
          native: n,
          hub: hubs.get(hubName(b)),
          ifname: b.ifname,
          log,
          ...(opts.socketcanRcvbuf === undefined ? {} : { rcvbuf: opts.socketcanRcvbuf }),
        }),
      );
    }
  } catch (err) {
    for (const p of hostPorts.values()) p.close();
    if (ownsHubs) hubs.closeAll();
    throw err;
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
      });
      devices[index] = dev;
      return dev;
    },
  });
  try {
    daemon.start();
  } catch (err) {
    for (const p of hostPorts.values()) p.close();
    if (ownsHubs) hubs.closeAll();
    throw err;
  }
  return {
    daemon,
    hubs,
    hubFor: hubOf,
    device: (i) => devices[i] ?? null,
    hostPorts,
    stop: () => {
      daemon.stop();
      for (const p of hostPorts.values()) p.close();
      if (ownsHubs) hubs.closeAll();
    },
  };
}
