/**
 * The listening side: one Unix socket per guest at PATH0..PATH{N-1} (rust-vmm's naming), one
 * front-end per socket at a time. After a disconnect every per-connection object is dropped (the
 * device too: the next connection gets a fresh one) and the socket accepts again.
 *
 * Socket paths are handled carefully: a path that exists and is not a socket is never deleted, nor
 * one that a live back-end still answers on; a stale socket file left by a crashed daemon is.
 */
import { fstatSync, lstatSync, unlinkSync } from 'node:fs';
import type { Logger } from '../../core/util/log.js';
import type { VirtioDevice } from '../../core/vhost-user/device.js';
import type { RingOptions } from '../../core/virtio/features.js';
import { CodedError } from '../errors.js';
import type { NativeAddon, NativeWatcher } from '../native/addon.js';
import { VhostUserConnection } from './connection.js';

/** What every daemon composition (CAN, console, rng) takes besides its own options. */
export interface DaemonCommonOptions extends RingOptions {
  /** Socket paths, one per guest (the CLIs derive them as PATH0..PATH{N-1}). */
  paths: readonly string[];
  /** Already-listening vhost-user sockets (`--fd`), guests after those of `paths`. */
  listenFds?: readonly number[];
  log?: Logger;
  native?: NativeAddon;
  /** Restricts the protocol features offered (tests). */
  protocolFeatures?: bigint;
}

export interface DaemonOptions {
  native: NativeAddon;
  /** Socket paths, one per guest (already suffixed). */
  paths: readonly string[];
  /**
   * Listening Unix sockets the daemon was started with (vhost-user back-end conventions: `--fd`),
   * served after `paths` (their socket indices follow the paths'). Never unlinked: there is no path.
   */
  listenFds?: readonly number[];
  /** Creates the device for a new connection on socket `index`. */
  makeDevice: (index: number, log: Logger) => VirtioDevice;
  /**
   * The connection on socket `index` closed and its device was destroyed (after its counters were
   * logged): forget it.
   */
  onDeviceClosed?: (index: number, device: VirtioDevice) => void;
  log: Logger;
  protocolFeatures?: bigint;
}

export type DaemonErrorCode =
  | 'ERR_PATH'
  | 'ERR_PATH_NOT_SOCKET'
  | 'ERR_PATH_IN_USE'
  | 'ERR_LISTEN'
  | 'ERR_FD';

export class DaemonError extends CodedError<DaemonErrorCode> {}

interface Listener {
  index: number;
  /** The socket path, or "fd:N" for an inherited socket. */
  path: string;
  /** False for an inherited socket: nothing to unlink. */
  ownsPath: boolean;
  fd: number;
  watcher: NativeWatcher;
  conn: VhostUserConnection | null;
  connections: number;
  /** Connections refused because a front-end was already attached. */
  refused: number;
  /** Failed accept calls (EMFILE, ENFILE, ...). */
  acceptErrors: number;
  /** Current accept back-off delay (ms); 0 when accepting normally. */
  backoffMs: number;
  retryTimer: ReturnType<typeof setTimeout> | null;
}

export interface DaemonSocketStatus {
  path: string;
  connected: boolean;
  connections: number;
  refused: number;
  /** Failed accept calls; while they fail the socket is retried with a back-off. */
  acceptErrors: number;
  /** True while accepting is paused after a failure. */
  acceptBackoff: boolean;
}

/** First and largest delay before accepting again after a failed accept (doubling in between). */
export const ACCEPT_BACKOFF_MIN_MS = 100;
export const ACCEPT_BACKOFF_MAX_MS = 1000;

/** Checks that `path` can be (re)used for listening; removes a stale socket file. */
export function preparePath(native: Pick<NativeAddon, 'connectUnix' | 'close'>, path: string): void {
  let st: ReturnType<typeof lstatSync>;
  try {
    st = lstatSync(path);
  } catch (err) {
    if ((err as { code?: string }).code === 'ENOENT') return;
    throw new DaemonError('ERR_PATH', `cannot inspect ${path}: ${(err as Error).message}`, { cause: err });
  }
  if (!st.isSocket()) {
    throw new DaemonError('ERR_PATH_NOT_SOCKET', `${path} exists and is not a socket; refusing to remove it`);
  }
  let fd = -1;
  try {
    fd = native.connectUnix(path);
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'ECONNREFUSED') {
      unlinkSync(path); // nobody listens: a stale socket file from an earlier run
      return;
    }
    throw new DaemonError('ERR_PATH', `cannot check ${path}: ${(err as Error).message}`, { cause: err });
  }
  native.close(fd);
  throw new DaemonError('ERR_PATH_IN_USE', `${path} is in use by another running back-end`);
}

export class VhostUserDaemon {
  private readonly opts: DaemonOptions;
  private readonly listeners: Listener[] = [];
  private started = false;
  private stopped = false;

  constructor(opts: DaemonOptions) {
    this.opts = opts;
  }

  /** Creates every socket; on any failure the ones already created are removed again. */
  start(): void {
    if (this.started) return;
    this.started = true;
    const { native } = this.opts;
    try {
      for (const [index, path] of this.opts.paths.entries()) {
        preparePath(native, path);
        let fd: number;
        try {
          fd = native.listenUnix(path, 4);
        } catch (err) {
          throw new DaemonError('ERR_LISTEN', `cannot listen on ${path}: ${(err as Error).message}`, {
            cause: err,
          });
        }
        this.addListener(index, path, true, fd);
      }
      const base = this.opts.paths.length;
      for (const [i, fd] of (this.opts.listenFds ?? []).entries()) {
        this.adoptListener(base + i, fd);
      }
    } catch (err) {
      this.stop();
      throw err;
    }
  }

  /** An inherited listening socket: checked by accepting once (also takes a waiting front-end). */
  private adoptListener(index: number, fd: number): void {
    const { native } = this.opts;
    let isSocket = false;
    try {
      isSocket = fstatSync(fd).isSocket();
    } catch (err) {
      throw new DaemonError('ERR_FD', `fd ${fd}: ${(err as Error).message}`, { cause: err });
    }
    if (!isSocket) throw new DaemonError('ERR_FD', `fd ${fd} is not a socket`);
    // The watcher makes the fd non-blocking first: an inherited blocking socket must not stall us.
    const l = this.addListener(index, `fd:${fd}`, false, fd);
    let first: number | null;
    try {
      first = native.acceptUnix(fd);
    } catch (err) {
      throw new DaemonError('ERR_FD', `fd ${fd} is not a listening Unix socket: ${(err as Error).message}`, {
        cause: err,
      });
    }
    if (first !== null) this.attach(l, first);
  }

  private addListener(index: number, path: string, ownsPath: boolean, fd: number): Listener {
    const { native, log } = this.opts;
    const l: Listener = {
      index,
      path,
      ownsPath,
      fd,
      conn: null,
      connections: 0,
      refused: 0,
      acceptErrors: 0,
      backoffMs: 0,
      retryTimer: null,
      watcher: new native.Watcher(fd, () => this.onAcceptable(l)),
    };
    this.listeners.push(l);
    l.watcher.start(native.READABLE);
    log.info('listening', { socket: index, path });
    return l;
  }

  private onAcceptable(l: Listener): void {
    const { native, log } = this.opts;
    for (;;) {
      let fd: number | null;
      try {
        fd = native.acceptUnix(l.fd);
      } catch (err) {
        this.backOff(l, err);
        return;
      }
      if (l.backoffMs !== 0) {
        l.backoffMs = 0;
        log.info('accepting again', { socket: l.index, path: l.path, acceptErrors: l.acceptErrors });
      }
      if (fd === null) return;
      // A front-end that closed and reconnected at once: its EOF may still be unread. Process what
      // the old connection has pending first (its onClose clears l.conn); only a live one keeps
      // the socket.
      l.conn?.drain();
      if (l.conn !== null) {
        // One front-end per socket: a second one would fight over the same device.
        l.refused++;
        log.warn('refusing a second front-end on a busy socket', { socket: l.index, path: l.path });
        native.close(fd);
        continue;
      }
      this.attach(l, fd);
    }
  }

  /**
   * accept failed (EMFILE/ENFILE when fds run out, ENOMEM, ...). The pending connection stays
   * queued, so the level-triggered watcher would fire again at once: a busy loop. Pause the
   * watcher instead and retry after a delay that doubles up to a second; log once per episode.
   */
  private backOff(l: Listener, err: unknown): void {
    l.acceptErrors++;
    if (l.backoffMs === 0) {
      l.backoffMs = ACCEPT_BACKOFF_MIN_MS;
      this.opts.log.error('accept failed; retrying with a back-off until it works again', {
        socket: l.index,
        path: l.path,
        code: (err as { code?: string }).code,
        reason: (err as Error).message,
      });
    } else {
      l.backoffMs = Math.min(l.backoffMs * 2, ACCEPT_BACKOFF_MAX_MS);
    }
    l.watcher.stop();
    l.retryTimer = setTimeout(() => {
      l.retryTimer = null;
      if (this.stopped) return;
      l.watcher.start(this.opts.native.READABLE);
      this.onAcceptable(l);
    }, l.backoffMs);
  }

  private attach(l: Listener, fd: number): void {
    l.connections++;
    const log = this.opts.log.child({ socket: l.index, conn: l.connections });
    let device: VirtioDevice;
    try {
      device = this.opts.makeDevice(l.index, log);
    } catch (err) {
      log.error('cannot create the device for a new connection', { reason: (err as Error).message });
      this.opts.native.close(fd);
      return;
    }
    log.info('front-end connected');
    try {
      l.conn = new VhostUserConnection({
        native: this.opts.native,
        fd,
        device,
        log,
        onClose: (reason) => {
          l.conn = null;
          // The counters die with the connection: log them so nothing is lost without a trace.
          log.info('device statistics at disconnect', device.statsFields());
          log.info('front-end disconnected; socket accepts again', { reason });
          this.opts.onDeviceClosed?.(l.index, device);
        },
        ...(this.opts.protocolFeatures === undefined ? {} : { protocolFeatures: this.opts.protocolFeatures }),
      });
    } catch (err) {
      device.destroy();
      this.opts.native.close(fd);
      log.error('cannot set up the connection', { reason: (err as Error).message });
    }
  }

  /** The connection currently served on socket `index`, if any (for diagnostics and tests). */
  connection(index: number): VhostUserConnection | null {
    return this.listeners[index]?.conn ?? null;
  }

  status(): DaemonSocketStatus[] {
    return this.listeners.map((l) => ({
      path: l.path,
      connected: l.conn !== null,
      connections: l.connections,
      refused: l.refused,
      acceptErrors: l.acceptErrors,
      acceptBackoff: l.backoffMs !== 0,
    }));
  }

  /** Closes every connection and listener and removes the socket files. Idempotent. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    for (const l of this.listeners) {
      l.conn?.close('daemon shutting down');
      if (l.retryTimer !== null) clearTimeout(l.retryTimer);
      l.watcher.close();
      try {
        this.opts.native.close(l.fd);
      } catch {
        /* already closed */
      }
      if (!l.ownsPath) continue;
      try {
        unlinkSync(l.path);
      } catch {
        /* removed by someone else */
      }
    }
    this.listeners.length = 0;
  }
}
