/**
 * Composition of the vhost-device-rng daemon, usable as a library: one VIRTIO entropy device per
 * guest connection, an entropy source (the kernel's CSPRNG for /dev/urandom, a file otherwise),
 * the node clock and timers for the rate limit.
 */
import { randomFillSync } from 'node:crypto';
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { type EntropySource, RngDevice } from '../../core/devices/rng/rng-device.js';
import { nullLogger } from '../../core/util/log.js';
import { ringOptionsOf } from '../../core/virtio/features.js';
import { CodedError } from '../errors.js';
import { native as defaultNative } from '../native/addon.js';
import { type DaemonCommonOptions, VhostUserDaemon } from '../vhost-user/daemon.js';

export const DEFAULT_RNG_SOURCE = '/dev/urandom';

export interface RngDaemonOptions extends DaemonCommonOptions {
  /** Entropy source file (default /dev/urandom, served by the kernel CSPRNG via getrandom). */
  filename?: string;
  /** Bytes per period for all guests together, split equally between them (default: unlimited). */
  maxBytes?: number;
  periodMs?: number;
}

/** ERR_MAX_BYTES for a bad rate; an errno name (ENOENT, EACCES, EISDIR, ...) for a bad source file. */
export type RngDaemonErrorCode = 'ERR_MAX_BYTES' | `E${string}`;

export class RngDaemonError extends CodedError<RngDaemonErrorCode> {}

export interface RngDaemon {
  readonly daemon: VhostUserDaemon;
  /** The device currently serving socket `index` (null while no front-end is connected). */
  device(index: number): RngDevice | null;
  /** Bytes per period each guest gets (Infinity: unlimited). */
  readonly perGuestMaxBytes: number;
  stop(): void;
}

/**
 * Opens `filename` as an entropy source. Non-blocking: a device file with nothing to give yields 0
 * (the device then waits for the next period) instead of stalling the event loop.
 */
export function openEntropySource(filename: string): { source: EntropySource; close(): void } {
  if (filename === DEFAULT_RNG_SOURCE) {
    return {
      source: (dst) => {
        randomFillSync(dst);
        return dst.byteLength;
      },
      close: () => {},
    };
  }
  let fd: number;
  try {
    fd = openSync(filename, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new RngDaemonError(
      (e.code as `E${string}` | undefined) ?? 'EIO',
      `cannot open the entropy source ${filename}: ${e.message}`,
    );
  }
  if (fstatSync(fd).isDirectory()) {
    closeSync(fd);
    throw new RngDaemonError('EISDIR', `the entropy source ${filename} is a directory`);
  }
  return {
    source: (dst) => {
      try {
        return readSync(fd, dst, 0, dst.byteLength, null);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EAGAIN') return 0;
        throw err;
      }
    },
    close: () => closeSync(fd),
  };
}

export function startRngDaemon(opts: RngDaemonOptions): RngDaemon {
  const log = opts.log ?? nullLogger;
  const listenFds = opts.listenFds ?? [];
  const sockets = opts.paths.length + listenFds.length;
  const total = opts.maxBytes ?? Number.POSITIVE_INFINITY;
  // The bandwidth is split equally between the guests: each gets its share per period.
  const perGuest = Number.isFinite(total) ? Math.floor(total / Math.max(1, sockets)) : total;
  if (perGuest < 1) {
    throw new RngDaemonError(
      'ERR_MAX_BYTES',
      `--max-bytes ${total} leaves less than one byte for each of ${sockets} guests`,
    );
  }
  const src = openEntropySource(opts.filename ?? DEFAULT_RNG_SOURCE);
  const devices: (RngDevice | null)[] = Array.from({ length: sockets }, () => null);
  const setTimer = (ms: number, fn: () => void): (() => void) => {
    const t = setTimeout(fn, ms);
    return () => clearTimeout(t);
  };
  const daemon = new VhostUserDaemon({
    native: opts.native ?? defaultNative,
    paths: opts.paths,
    listenFds,
    log,
    ...(opts.protocolFeatures === undefined ? {} : { protocolFeatures: opts.protocolFeatures }),
    onDeviceClosed: (index, dev) => {
      if (devices[index] === dev) devices[index] = null;
    },
    makeDevice: (index, devLog) => {
      const dev = new RngDevice({
        source: src.source,
        maxBytes: perGuest,
        ...(opts.periodMs === undefined ? {} : { periodMs: opts.periodMs }),
        now: () => performance.now(),
        setTimer,
        ...ringOptionsOf(opts),
        log: devLog,
      });
      devices[index] = dev;
      return dev;
    },
  });
  try {
    daemon.start();
  } catch (err) {
    src.close();
    throw err;
  }
  let stopped = false;
  return {
    daemon,
    device: (i) => devices[i] ?? null,
    perGuestMaxBytes: perGuest,
    stop: () => {
      if (stopped) return;
      stopped = true;
      daemon.stop();
      src.close();
    },
  };
}
