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
import { faultMonitorFor } from '../memory/fault-monitor.js';
import { mapRegion } from '../memory/mmap-region.js';
import type { NativeAddon, NativeWatcher } from '../native/addon.js';

/**
 * Replies queued for a front-end that does not read them. A real front-end waits for each reply it
 * asked for, so a few hundred bytes is the most that ever waits; past this bound the peer is only
 * making us buffer (one GET_FEATURES flood would otherwise grow the daemon without limit).
 */
export const MAX_UNREAD_REPLY_BYTES = 1024 * 1024;

/** vhost-user messages handled per event-loop turn and connection (each takes two reads). */
const MESSAGES_PER_TURN = 256;

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
  private outQueued = 0;
  private closed = false;
  private readonly unsubscribeFaults: () => void;
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
      schedule: (fn) => setImmediate(fn),
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
    this.unsubscribeFaults = faultMonitorFor(n).subscribe(() => this.checkMemoryFaults());
  }

  /**
   * After the SIGBUS guard absorbed a fault somewhere in the process: if it was in this guest's
   * memory (the front-end shrank the file behind it), the guest's RAM is gone and the device would
   * only read zeros from now on, so the connection closes. Other connections are untouched.
   */
  private checkMemoryFaults(): void {
    if (this.closed) return;
    const regions = this.session.memory.regions;
    for (let i = 0; i < regions.length; i++) {
      const n = regions[i]!.source.faults?.() ?? 0;
      if (n > 0) {
        this.fail(
          new VhostError(
            'ERR_VU_MEM_FAULT',
            `guest memory region ${i} (guest physical 0x${regions[i]!.gpa.toString(16)}) lost ` +
              `${n === 1 ? 'a page' : 'pages'}: the front-end shrank its file after SET_MEM_TABLE`,
          ),
        );
        return;
      }
    }
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
    // Past the per-turn budget too (a few turns' worth): what is already queued before the EOF.
    for (let turn = 0; turn < 16 && !this.closed && this.readAll(); turn++) {
      /* more to read */
    }
    return this.closed;
  }

  /** Returns true when it stopped on the budget with data possibly left to read. */
  private readAll(): boolean {
    // Level-triggered watcher: read until EAGAIN, the connection closes, or the budget is spent;
    // a front-end streaming messages nonstop must not keep the loop from the other guests (the
    // watcher calls again at once for what is left).
    for (let budget = MESSAGES_PER_TURN * 2; budget > 0 && !this.closed; budget--) {
      const want = this.framer.wanted();
      let r: ReturnType<NativeAddon['recvMsg']>;
      try {
        r = this.native.recvMsg(this.fd, this.buf.subarray(0, want), MAX_FDS);
      } catch (err) {
        this.close(`recvmsg failed: ${(err as Error).message}`);
        return false;
      }
      if (r === null) return false;
      if (r.bytes === 0) {
        for (const fd of r.fds) this.closeFd(fd);
        this.close(
          this.framer.midMessage ? 'front-end closed the socket mid-message' : 'front-end disconnected',
        );
        return false;
      }
      if (r.truncated) {
        for (const fd of r.fds) this.closeFd(fd);
        this.fail(new VhostError('ERR_VU_TOO_MANY_FDS', 'ancillary data truncated (too many fds)'));
        return false;
      }
      try {
        for (const msg of this.framer.push(this.buf.subarray(0, r.bytes), r.fds)) {
          this.session.handle(msg);
          if (this.closed) return false;
        }
      } catch (err) {
        this.fail(err);
        return false;
      }
    }
    return !this.closed;
  }

  private fail(err: unknown): void {
    const code = err instanceof VhostError ? err.code : 'ERR_INTERNAL';
    this.log.error('closing connection', { code, reason: err instanceof Error ? err.message : String(err) });
    this.close(code);
  }

  private send(bytes: Uint8Array): void {
    if (this.closed) return;
    if (this.outQueue.length > 0) {
      this.enqueue(bytes);
      return;
    }
    this.writeSome(bytes);
  }

  private enqueue(bytes: Uint8Array): void {
    this.outQueue.push(bytes);
    this.outQueued += bytes.byteLength;
    if (this.outQueued > MAX_UNREAD_REPLY_BYTES) {
      this.fail(
        new VhostError(
          'ERR_VU_UNREAD_REPLIES',
          `front-end left ${this.outQueued} bytes of replies unread (limit ${MAX_UNREAD_REPLY_BYTES})`,
        ),
      );
    }
  }

  private writeSome(bytes: Uint8Array): void {
    let off = 0;
    try {
      while (off < bytes.byteLength) off += this.native.sendMsg(this.fd, bytes.subarray(off));
    } catch (err) {
      if ((err as { code?: string }).code === 'EAGAIN') {
        this.watcher.start(this.native.READABLE | this.native.WRITABLE);
        this.enqueue(bytes.subarray(off));
        return;
      }
      this.close(`send failed: ${(err as Error).message}`);
    }
  }

  private flush(): void {
    const q = this.outQueue;
    this.outQueue = [];
    this.outQueued = 0;
    this.watcher.start(this.native.READABLE);
    for (let i = 0; i < q.length; i++) {
      if (this.closed) return;
      if (this.outQueue.length > 0) {
        for (const b of q.slice(i)) this.enqueue(b);
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
    this.unsubscribeFaults();
    for (const fd of this.framer.takeFds()) this.closeFd(fd);
    // close() runs inside event-loop callbacks (socket, kick, fault monitor): a failure here must be
    // logged, never thrown, or it would end the process and every other guest with it.
    try {
      this.session.close();
    } catch (err) {
      this.log.error('releasing the connection failed', { reason: (err as Error)?.message ?? String(err) });
    }
    this.closeFd(this.fd);
    try {
      this.onClose(reason);
    } catch (err) {
      this.log.error('connection close hook failed', { reason: (err as Error)?.message ?? String(err) });
    }
  }
}
