/**
 * One accepted front-end connection: reads the socket with exact-size recvmsg calls (header, then
 * payload) so fds are attributed to the right message, feeds the framer, hands messages to the
 * session, and writes replies. Any 'disconnect' failure closes this connection only.
 */
import { VhostError } from '../../core/util/errors.js';
import type { Logger } from '../../core/util/log.js';
import type { MemRegionDesc } from '../../core/vhost-user/codec.js';
import type { VirtioDevice } from '../../core/vhost-user/device.js';
import { MessageFramer } from '../../core/vhost-user/framer.js';
import { HEADER_SIZE, MAX_FDS, MAX_PAYLOAD } from '../../core/vhost-user/protocol.js';
import { type SessionIo, VhostUserSession } from '../../core/vhost-user/session.js';
import { mapRegion } from '../memory/mmap-region.js';
import type { NativeAddon, NativeWatcher } from '../native/addon.js';

/** Poll period of a ring whose kick came with the NOFD flag. */
export const KICK_POLL_MS = 1;

export interface ConnectionOptions {
  native: NativeAddon;
  fd: number;
  device: VirtioDevice;
  log: Logger;
  /** Called once when the connection has closed and released everything. */
  onClose: (reason: string) => void;
  protocolFeatures?: bigint;
}

export class VhostUserConnection {
  readonly session: VhostUserSession;
  private readonly native: NativeAddon;
  private readonly fd: number;
  private readonly log: Logger;
  private readonly framer = new MessageFramer();
  private readonly buf = new Uint8Array(HEADER_SIZE + MAX_PAYLOAD);
  private readonly watcher: NativeWatcher;
  private readonly onClose: (reason: string) => void;
  private outQueue: Uint8Array[] = [];
  private closed = false;
  private signalErrors = 0;

  constructor(opts: ConnectionOptions) {
    this.native = opts.native;
    this.fd = opts.fd;
    this.log = opts.log;
    this.onClose = opts.onClose;
    const n = this.native;
    const io: SessionIo = {
      sendToFrontend: (bytes) => this.send(bytes),
      mapRegion: (d: MemRegionDesc, fd: number) => mapRegion(n, d, fd),
      closeFd: (fd) => this.closeFd(fd),
      watchKick: (fd, onKick) => this.watchKick(fd, onKick),
      pollKick: (onPoll) => this.pollKick(onPoll),
      signal: (fd) => this.signal(fd),
      sendToBackendChannel: (fd, bytes) => this.sendBackend(fd, bytes),
    };
    this.session = new VhostUserSession(
      opts.device,
      io,
      opts.protocolFeatures === undefined
        ? { log: this.log }
        : { log: this.log, protocolFeatures: opts.protocolFeatures },
    );
    this.watcher = new n.Watcher(this.fd, (status, events) => this.onEvent(status, events));
    this.watcher.start(n.READABLE);
  }

  private onEvent(status: number, events: number): void {
    if (this.closed) return;
    if (status < 0) {
      this.close(`socket error ${status}`);
      return;
    }
    if (events & this.native.WRITABLE) this.flush();
    if (events & this.native.READABLE) this.readAll();
  }

  /**
   * Processes whatever the front-end already sent, its EOF included, without waiting for the
   * watcher. Returns true when the connection is closed (now or before). The daemon calls this
   * when a new front-end arrives on a busy socket: the old one may have closed a moment ago.
   */
  drain(): boolean {
    if (!this.closed) this.readAll();
    return this.closed;
  }

  private readAll(): void {
    // Level-triggered watcher: read until EAGAIN (or until the connection closes).
    while (!this.closed) {
      const want = this.framer.wanted();
      let r: ReturnType<NativeAddon['recvMsg']>;
      try {
        r = this.native.recvMsg(this.fd, this.buf.subarray(0, want), MAX_FDS);
      } catch (err) {
        this.close(`recvmsg failed: ${(err as Error).message}`);
        return;
      }
      if (r === null) return;
      if (r.bytes === 0) {
        for (const fd of r.fds) this.closeFd(fd);
        this.close(
          this.framer.midMessage ? 'front-end closed the socket mid-message' : 'front-end disconnected',
        );
        return;
      }
      if (r.truncated) {
        for (const fd of r.fds) this.closeFd(fd);
        this.fail(new VhostError('ERR_VU_TOO_MANY_FDS', 'ancillary data truncated (too many fds)'));
        return;
      }
      try {
        for (const msg of this.framer.push(this.buf.subarray(0, r.bytes), r.fds)) {
          this.session.handle(msg);
          if (this.closed) return;
        }
      } catch (err) {
        this.fail(err);
        return;
      }
    }
  }

  private fail(err: unknown): void {
    const code = err instanceof VhostError ? err.code : 'ERR_INTERNAL';
    this.log.error('closing connection', { code, reason: err instanceof Error ? err.message : String(err) });
    this.close(code);
  }

  private send(bytes: Uint8Array): void {
    if (this.closed) return;
    if (this.outQueue.length > 0) {
      this.outQueue.push(bytes);
      return;
    }
    this.writeSome(bytes);
  }

  private writeSome(bytes: Uint8Array): void {
    let off = 0;
    try {
      while (off < bytes.byteLength) off += this.native.sendMsg(this.fd, bytes.subarray(off));
    } catch (err) {
      if ((err as { code?: string }).code === 'EAGAIN') {
        this.outQueue.push(bytes.subarray(off));
        this.watcher.start(this.native.READABLE | this.native.WRITABLE);
        return;
      }
      this.close(`send failed: ${(err as Error).message}`);
    }
  }

  private flush(): void {
    const q = this.outQueue;
    this.outQueue = [];
    this.watcher.start(this.native.READABLE);
    for (let i = 0; i < q.length; i++) {
      if (this.outQueue.length > 0) {
        this.outQueue.push(...q.slice(i));
        return;
      }
      this.writeSome(q[i]!);
    }
  }

  private closeFd(fd: number): void {
    try {
      this.native.close(fd);
    } catch (err) {
      this.log.warn('close failed', { fd, reason: (err as Error).message });
    }
  }

  private watchKick(fd: number, onKick: () => void): { close(): void } {
    const n = this.native;
    const w = new n.Watcher(fd, (status) => {
      if (status < 0) {
        w.close();
        return;
      }
      // Drain the eventfd (level-triggered), then process once for however many kicks it counted.
      try {
        while (n.eventfdRead(fd) !== null) {
          /* drained */
        }
      } catch (err) {
        this.log.warn('kick fd read failed; watcher stopped', { fd, reason: (err as Error).message });
        w.close();
        return;
      }
      onKick();
    });
    w.start(n.READABLE);
    return { close: () => w.close() };
  }

  /** A NOFD kick: the ring is looked at every KICK_POLL_MS while it is started (see README). */
  private pollKick(onPoll: () => void): { close(): void } {
    const timer = setInterval(() => {
      if (this.closed) return;
      try {
        onPoll();
      } catch (err) {
        this.fail(err);
      }
    }, KICK_POLL_MS);
    timer.unref(); // the socket's watcher keeps the process alive, not the poll
    return { close: () => clearInterval(timer) };
  }

  private signal(fd: number): void {
    try {
      this.native.eventfdWrite(fd, 1);
    } catch (err) {
      if (this.signalErrors++ === 0)
        this.log.warn('call eventfd write failed', { fd, reason: (err as Error).message });
    }
  }

  private sendBackend(fd: number, bytes: Uint8Array): boolean {
    try {
      return this.native.sendMsg(fd, bytes) === bytes.byteLength;
    } catch (err) {
      this.log.warn('back-end channel write failed', { reason: (err as Error).message });
      return false;
    }
  }

  /** Closes the socket and drops every per-connection resource. Idempotent. */
  close(reason = 'closed'): void {
    if (this.closed) return;
    this.closed = true;
    this.watcher.close();
    for (const fd of this.framer.takeFds()) this.closeFd(fd);
    try {
      this.session.close();
    } finally {
      this.closeFd(this.fd);
      this.onClose(reason);
    }
  }
}
