/**
 * Composition of the vhost-device-can daemon, usable as a library: a test or another program can
 * create the daemon in-process, reach its buses, attach its own ports and read every counter.
 */
import { type CanHub, HubRegistry } from '../../core/bus/hub.js';
import { CanDevice, type CanFeatureSwitches } from '../../core/devices/can/can-device.js';
import type { Logger } from '../../core/util/log.js';
import { nullLogger } from '../../core/util/log.js';
import { native as defaultNative, type NativeAddon } from '../native/addon.js';
import { VhostUserDaemon } from '../vhost-user/daemon.js';

/** Where one guest's CAN traffic goes. */
export type BusSpec =
  | { kind: 'virtual'; name: string }
  /** A host SocketCAN interface (parsed today, served once SocketCAN ports exist). */
  | { kind: 'host'; ifname: string };

export const DEFAULT_VIRTUAL_BUS = 'default';

export interface CanDaemonOptions {
  /** Socket paths, one per guest (the CLI derives them as PATH0..PATH{N-1}). */
  paths: readonly string[];
  /** One entry per path; default: every guest on the shared in-process bus "default". */
  buses?: readonly BusSpec[];
  features?: Partial<CanFeatureSwitches>;
  eventIdx?: boolean;
  indirectDesc?: boolean;
  maxQueueSize?: number;
  rxBacklog?: number;
  /** Existing buses to use (and share with the caller); created on demand otherwise. */
  hubs?: HubRegistry;
  log?: Logger;
  native?: NativeAddon;
  protocolFeatures?: bigint;
}

export class CanDaemonError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'CanDaemonError';
    this.code = code;
  }
}

export interface CanDaemon {
  readonly daemon: VhostUserDaemon;
  readonly hubs: HubRegistry;
  /** The bus socket `index` is attached to. */
  hubFor(index: number): CanHub;
  /** The device currently serving socket `index` (null while no front-end is connected). */
  device(index: number): CanDevice | null;
  stop(): void;
}

const clock = (): bigint => process.hrtime.bigint();

export function startCanDaemon(opts: CanDaemonOptions): CanDaemon {
  const log = opts.log ?? nullLogger;
  const buses = opts.buses ?? opts.paths.map(() => ({ kind: 'virtual', name: DEFAULT_VIRTUAL_BUS }) as const);
  if (buses.length !== opts.paths.length) {
    throw new CanDaemonError('ERR_BUS_COUNT', `${opts.paths.length} sockets but ${buses.length} bus entries`);
  }
  for (const b of buses) {
    if (b.kind === 'host') {
      throw new CanDaemonError(
        'ERR_HOST_CAN_UNSUPPORTED',
        `host CAN interface "${b.ifname}": SocketCAN ports are not implemented yet; use virtual buses (omit --can-devices or use virtual:NAME)`,
      );
    }
  }
  const hubs = opts.hubs ?? new HubRegistry({ clock });
  const ownsHubs = opts.hubs === undefined;
  const hubOf = (i: number): CanHub => {
    const b = buses[i]!;
    return hubs.get(b.kind === 'virtual' ? b.name : b.ifname);
  };
  const devices: (CanDevice | null)[] = opts.paths.map(() => null);
  const n = opts.native ?? defaultNative;
  const daemon = new VhostUserDaemon({
    native: n,
    paths: opts.paths,
    log,
    ...(opts.protocolFeatures === undefined ? {} : { protocolFeatures: opts.protocolFeatures }),
    makeDevice: (index, devLog) => {
      const dev = new CanDevice({
        hub: hubOf(index),
        portName: `guest${index}`,
        ...(opts.features === undefined ? {} : { features: opts.features }),
        ...(opts.eventIdx === undefined ? {} : { eventIdx: opts.eventIdx }),
        ...(opts.indirectDesc === undefined ? {} : { indirectDesc: opts.indirectDesc }),
        ...(opts.maxQueueSize === undefined ? {} : { maxQueueSize: opts.maxQueueSize }),
        ...(opts.rxBacklog === undefined ? {} : { rxBacklog: opts.rxBacklog }),
        schedule: (fn) => setImmediate(fn),
        log: devLog,
      });
      devices[index] = dev;
      const destroy = dev.destroy.bind(dev);
      dev.destroy = () => {
        if (devices[index] === dev) devices[index] = null;
        // The counters die with the connection: log them so nothing is lost without a trace.
        const st = dev.stats;
        const rejected = Object.entries(st.txRejected)
          .filter(([, v]) => v > 0)
          .map(([k, v]) => `${k}:${v}`)
          .join(',');
        devLog.info('device statistics at disconnect', {
          txOk: st.txOk,
          txNotOk: st.txNotOk,
          txRejected: rejected || '-',
          rxDelivered: st.rxDelivered,
          rxDroppedOverflow: dev.port.stats.rxDroppedOverflow,
          rxFiltered: dev.port.stats.rxFiltered,
          rxDiscardedStopped: dev.port.stats.rxDiscardedClosed,
          rxShortBuffer: st.rxShortBuffer,
          badChains: st.badChains,
          busOff: st.busOff,
        });
        destroy();
      };
      return dev;
    },
  });
  daemon.start();
  return {
    daemon,
    hubs,
    hubFor: hubOf,
    device: (i) => devices[i] ?? null,
    stop: () => {
      daemon.stop();
      if (ownsHubs) hubs.closeAll();
    },
  };
}
