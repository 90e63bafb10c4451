/**
 * The connection half of the TypeScript vhost-user front-end (VhostUserFrontend in frontend.ts):
 * the socket, the framing of what the back-end sends, fd passing, the FIFO of pending requests and
 * their timeouts, the inbox of unexpected messages, events, close, and the back-end channel
 * (SET_BACKEND_REQ_FD's socketpair).
 *
 * I/O never blocks the event loop: the socket is non-blocking and watched (uv_poll,
 * level-triggered: every callback drains until EAGAIN). Requests that expect an answer (messages
 * with a reply body, or NEED_REPLY) are answered in order on a stream socket, so replies are
 * matched to a FIFO of waiters. A waiter that timed out stays in the FIFO as a tombstone and
 * swallows its late reply, so one slow answer cannot shift every later match. Replies are checked
 * as QEMU checks them: flags exactly 0x5 and the request code echoed (vhost-user.rst "Header"), otherwise
 * the request fails with ERR_FRONTEND_BAD_REPLY.
 *
 * Messages are encoded with the shared codec (src/core/vhost-user/codec.ts) and split with the
 * shared MessageFramer; reads are exactly the bytes the framer wants (header, then payload), so fds
 * are attributed to the right message, as in the back-end.
 */
import { decodeU64, encodeMessage, encodeU64, type VhostUserMessage } from '../../core/vhost-user/codec.js';
import { MessageFramer } from '../../core/vhost-user/framer.js';
import {
  BackendReq,
  frontendReqName,
  HEADER_SIZE,
  HeaderFlag,
  MAX_FDS,
  MAX_PAYLOAD,
  REPLY_FLAGS,
} from '../../core/vhost-user/protocol.js';
import { native as defaultNative, type NativeAddon, type NativeWatcher } from '../native/addon.js';
import { FrontendError } from './errors.js';

const DEFAULT_TIMEOUT_MS = 5000;
/** Messages kept when nobody waits for them (readReplyRaw() takes them later). */
const INBOX_LIMIT = 64;

export interface FrontendOptions {
  native?: NativeAddon;
  /** Per-request timeout (ms), default 5000. */
  timeoutMs?: number;
}

/** Per-request options of every method that sends a message without a reply body. */
export interface AckOptions {
  /** Set NEED_REPLY and wait for the u64 ack (0 = success), which the method then returns. */
  needReply?: boolean;
  timeoutMs?: number;
}

export interface CallOptions extends AckOptions {
  fds?: readonly number[];
  /** The request has a reply body (GET_*): wait for it whatever NEED_REPLY says. */
  expectReply?: boolean;
}

/** A message as it came off the wire, for tests of the exact reply format. */
export interface RawMessage {
  request: number;
  flags: number;
  /** The header's size field. */
  size: number;
  payload: Uint8Array;
  /** fds that arrived with it; the caller owns them. */
  fds: number[];
}

/** A message the back-end sent on the back-end channel (SET_BACKEND_REQ_FD). */
export interface BackendMessage {
  request: number;
  flags: number;
  size: number;
  payload: Uint8Array;
  /** How many fds came with it (they are closed). */
  fdCount: number;
}

export interface FrontendEvents {
  /** VHOST_USER_BACKEND_CONFIG_CHANGE_MSG arrived on the back-end channel. */
  configChange: (msg: BackendMessage) => void;
  /** Any message arrived on the back-end channel (also config changes). */
  backendMessage: (msg: BackendMessage) => void;
  /** The connection closed; `byPeer` is false after our own close(). */
  close: (reason: string, byPeer: boolean) => void;
}

export interface FrontendStats {
  sent: number;
  received: number;
  /** Messages that arrived while nobody waited (kept in the inbox, or dropped past its limit). */
  unexpected: number;
  /** Replies swallowed by a timed-out request. */
  late: number;
}

type ReplyWaiter = {
  kind: 'reply';
  request: number;
  resolve(m: VhostUserMessage): void;
  reject(e: Error): void;
  timer: ReturnType<typeof setTimeout>;
  timedOut: boolean;
};

type RawWaiter = {
  kind: 'raw';
  resolve(m: RawMessage): void;
  reject(e: Error): void;
  timer: ReturnType<typeof setTimeout>;
};

interface OutEntry {
  bytes: Uint8Array;
  off: number;
  fds: readonly number[];
  /** Our copies of fds to close once they are on their way (SET_BACKEND_REQ_FD's far end). */
  closeAfter: readonly number[];
}

type Listeners = { [K in keyof FrontendEvents]: Set<FrontendEvents[K]> };

/** The transport of VhostUserFrontend; frontend-messages.ts and frontend.ts build on it. */
export abstract class FrontendTransport {
  /** Resolves when the connection is closed, by the back-end or by close(). */
  readonly closed: Promise<void>;
  readonly stats: FrontendStats = { sent: 0, received: 0, unexpected: 0, late: 0 };
  /** Every message received on the back-end channel, in order. */
  readonly backendMessages: BackendMessage[] = [];

  protected readonly native: NativeAddon;
  private readonly fd: number;
  protected readonly timeoutMs: number;
  private readonly framer = new MessageFramer({ maxPayload: MAX_PAYLOAD, maxFds: MAX_FDS });
  private readonly rbuf = new Uint8Array(HEADER_SIZE + MAX_PAYLOAD);
  private readonly watcher: NativeWatcher;
  private waiters: (ReplyWaiter | RawWaiter)[] = [];
  private readonly inbox: RawMessage[] = [];
  private out: OutEntry[] = [];
  private writable = false;
  protected isClosed = false;
  private byPeer = false;
  private reason = '';
  private resolveClosed!: () => void;
  private readonly listeners: Listeners = {
    configChange: new Set(),
    backendMessage: new Set(),
    close: new Set(),
  };

  // back-end channel
  private backendFd = -1;
  private backendWatcher: NativeWatcher | null = null;
  private backendFramer: MessageFramer | null = null;
  private readonly backendBuf = new Uint8Array(HEADER_SIZE + MAX_PAYLOAD);
  private configChanges = 0;

  /** Wraps a connected, non-blocking vhost-user socket; takes ownership of `fd`. */
  constructor(fd: number, opts: FrontendOptions = {}) {
    this.native = opts.native ?? defaultNative;
    this.fd = fd;
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.closed = new Promise<void>((resolve) => {
      this.resolveClosed = resolve;
    });
    this.watcher = new this.native.Watcher(fd, (status, events) => this.onSocket(status, events));
    this.watcher.start(this.native.READABLE);
  }

  // ---- events ---------------------------------------------------------------------------------

  /** Subscribes to an event; returns the unsubscribe function. */
  on<K extends keyof FrontendEvents>(event: K, listener: FrontendEvents[K]): () => void {
    const set = this.listeners[event] as Set<FrontendEvents[K]>;
    set.add(listener);
    return () => {
      set.delete(listener);
    };
  }

  private emit<K extends keyof FrontendEvents>(event: K, ...args: Parameters<FrontendEvents[K]>): void {
    for (const l of [...this.listeners[event]]) (l as (...a: Parameters<FrontendEvents[K]>) => void)(...args);
  }

  /** CONFIG_CHANGE_MSG messages received so far. */
  get configChangeCount(): number {
    return this.configChanges;
  }

  /** Resolves with the next CONFIG_CHANGE_MSG (rejects with ERR_FRONTEND_TIMEOUT). */
  waitConfigChange(timeoutMs = this.timeoutMs): Promise<BackendMessage> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(new FrontendError('ERR_FRONTEND_TIMEOUT', `no CONFIG_CHANGE_MSG within ${timeoutMs} ms`));
      }, timeoutMs);
      const off = this.on('configChange', (m) => {
        clearTimeout(timer);
        off();
        resolve(m);
      });
    });
  }

  get isOpen(): boolean {
    return !this.isClosed;
  }

  /** True when the back-end closed the connection (not our close()). */
  get closedByPeer(): boolean {
    return this.byPeer;
  }

  get closeReason(): string {
    return this.reason;
  }

  // ---- socket I/O -----------------------------------------------------------------------------

  private onSocket(status: number, events: number): void {
    if (this.isClosed) return;
    if (status < 0) {
      this.shutdown(`socket error ${status}`, true);
      return;
    }
    if (events & this.native.WRITABLE) this.flush();
    if (events & this.native.READABLE) this.readAll();
  }

  private readAll(): void {
    while (!this.isClosed) {
      let r: ReturnType<NativeAddon['recvMsg']>;
      try {
        r = this.native.recvMsg(this.fd, this.rbuf.subarray(0, this.framer.wanted()), MAX_FDS);
      } catch (err) {
        this.shutdown(`recvmsg failed: ${(err as { code?: string }).code ?? err}`, true);
        return;
      }
      if (r === null) return;
      if (r.bytes === 0) {
        this.closeFds(r.fds);
        this.shutdown('back-end closed the connection', true);
        return;
      }
      let msgs: VhostUserMessage[];
      try {
        msgs = this.framer.push(this.rbuf.subarray(0, r.bytes), r.fds);
      } catch (err) {
        this.closeFds(this.framer.takeFds());
        this.shutdown(`malformed message from the back-end: ${(err as { code?: string }).code}`, false);
        return;
      }
      for (const m of msgs) this.dispatch(m);
    }
  }

  private dispatch(m: VhostUserMessage): void {
    this.stats.received++;
    const w = this.waiters.shift();
    if (w === undefined) {
      this.stats.unexpected++;
      if (this.inbox.length < INBOX_LIMIT) this.inbox.push(toRaw(m));
      else this.closeFds(m.fds);
      return;
    }
    if (w.kind === 'raw') {
      clearTimeout(w.timer);
      w.resolve(toRaw(m));
      return;
    }
    this.closeFds(m.fds);
    if (w.timedOut) {
      this.stats.late++;
      return;
    }
    clearTimeout(w.timer);
    if (m.flags !== REPLY_FLAGS || m.request !== w.request) {
      w.reject(
        new FrontendError(
          'ERR_FRONTEND_BAD_REPLY',
          `reply to ${frontendReqName(w.request)}: request ${m.request}, flags 0x${m.flags.toString(16)} (expected ${w.request}, 0x${REPLY_FLAGS.toString(16)})`,
        ),
      );
      return;
    }
    w.resolve(m.fds.length === 0 ? m : { ...m, fds: [] });
  }

  private enqueue(bytes: Uint8Array, fds: readonly number[] = [], closeAfter: readonly number[] = []): void {
    this.out.push({ bytes, off: 0, fds, closeAfter });
    this.stats.sent++;
    if (this.out.length === 1) this.flush();
  }

  private flush(): void {
    while (this.out.length > 0 && !this.isClosed) {
      const e = this.out[0]!;
      let n: number;
      try {
        n = this.native.sendMsg(this.fd, e.bytes.subarray(e.off), e.off === 0 ? e.fds : undefined);
      } catch (err) {
        if ((err as { code?: string }).code === 'EAGAIN') {
          this.setWritable(true);
          return;
        }
        // The peer is gone: read what it may still have sent (a last reply), then close.
        this.readAll();
        this.shutdown(`send failed: ${(err as { code?: string }).code ?? err}`, true);
        return;
      }
      if (e.off === 0) this.closeFds(e.closeAfter);
      e.off += n;
      if (e.off >= e.bytes.byteLength) this.out.shift();
    }
    this.setWritable(false);
  }

  private setWritable(on: boolean): void {
    if (on === this.writable || this.isClosed) return;
    this.writable = on;
    this.watcher.start(this.native.READABLE | (on ? this.native.WRITABLE : 0));
  }

  protected closeFds(fds: readonly number[]): void {
    for (const fd of fds) {
      try {
        this.native.close(fd);
      } catch {
        /* already closed */
      }
    }
  }

  private shutdown(reason: string, byPeer: boolean): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.byPeer = byPeer;
    this.reason = reason;
    this.watcher.close();
    const err = new FrontendError('ERR_FRONTEND_CLOSED', `connection closed: ${reason}`);
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) {
      clearTimeout(w.timer);
      if (w.kind === 'raw' || !w.timedOut) w.reject(err);
    }
    for (const e of this.out) if (e.off === 0) this.closeFds(e.closeAfter);
    this.out = [];
    this.closeFds(this.framer.takeFds());
    for (const m of this.inbox) this.closeFds(m.fds);
    this.inbox.length = 0;
    this.closeBackendChannel();
    this.closeOwned();
    this.closeFds([this.fd]);
    this.emit('close', reason, byPeer);
    this.resolveClosed();
  }

  /** Closes the connection and every fd, watcher and queue this front-end owns. Idempotent. */
  close(): void {
    this.shutdown('closed by the front-end', false);
  }

  /** What a subclass owns (queues, eventfds) is closed here, in shutdown(), before the socket. */
  protected closeOwned(): void {}

  // ---- generic requests -----------------------------------------------------------------------

  /**
   * Sends `request` and, when it has a reply body (`expectReply`) or NEED_REPLY is set, resolves
   * with the checked reply; otherwise resolves with undefined once the message is queued.
   */
  call(request: number, payload?: Uint8Array, opts: CallOptions = {}): Promise<RawMessage | undefined> {
    return this.request(request, payload, opts).then((m) => (m === undefined ? undefined : toRaw(m)));
  }

  protected request(
    request: number,
    payload: Uint8Array | undefined,
    opts: CallOptions & { closeAfter?: readonly number[] },
  ): Promise<VhostUserMessage | undefined> {
    if (this.isClosed) {
      this.closeFds(opts.closeAfter ?? []);
      return Promise.reject(this.closedError());
    }
    const flags = HeaderFlag.VERSION | (opts.needReply ? HeaderFlag.NEED_REPLY : 0);
    const bytes = encodeMessage(request, flags, payload);
    if (!opts.expectReply && !opts.needReply) {
      this.enqueue(bytes, opts.fds ?? [], opts.closeAfter ?? []);
      return Promise.resolve(undefined);
    }
    const timeoutMs = opts.timeoutMs ?? this.timeoutMs;
    return new Promise<VhostUserMessage>((resolve, reject) => {
      const w: ReplyWaiter = {
        kind: 'reply',
        request,
        resolve,
        reject,
        timedOut: false,
        timer: setTimeout(() => {
          w.timedOut = true; // stays queued: it swallows the late reply
          reject(
            new FrontendError(
              'ERR_FRONTEND_TIMEOUT',
              `no reply to ${frontendReqName(request)} within ${timeoutMs} ms`,
            ),
          );
        }, timeoutMs),
      };
      this.waiters.push(w);
      this.enqueue(bytes, opts.fds ?? [], opts.closeAfter ?? []);
    });
  }

  protected closedError(): FrontendError {
    return new FrontendError('ERR_FRONTEND_CLOSED', `connection closed: ${this.reason}`);
  }

  /** A message without a reply body; with NEED_REPLY, resolves with the ack value. */
  protected async ack(
    request: number,
    payload: Uint8Array | undefined,
    opts: AckOptions,
    fds: readonly number[] = [],
  ): Promise<number | undefined> {
    const m = await this.request(request, payload, { ...opts, fds, expectReply: false });
    if (m === undefined) return undefined;
    return Number(this.u64(m));
  }

  protected u64(m: VhostUserMessage): bigint {
    if (m.payload.byteLength !== 8) {
      throw new FrontendError(
        'ERR_FRONTEND_BAD_REPLY',
        `reply to ${frontendReqName(m.request)} has ${m.payload.byteLength} bytes, expected 8`,
      );
    }
    return decodeU64(m.payload);
  }

  protected async getU64(request: number, opts: AckOptions): Promise<bigint> {
    const m = await this.request(request, undefined, { ...opts, expectReply: true });
    return this.u64(m!);
  }

  /** Writes raw bytes (any framing, any fds) for malformed-message tests. */
  sendRaw(bytes: Uint8Array, fds: readonly number[] = []): void {
    if (this.isClosed) throw this.closedError();
    this.enqueue(bytes, fds);
  }

  /**
   * The next message from the back-end exactly as received (no checks); messages that arrived
   * while nobody waited come first. On timeout the waiter is removed (rejects ERR_FRONTEND_TIMEOUT),
   * so this can also assert that no message comes.
   */
  readReplyRaw(timeoutMs = this.timeoutMs): Promise<RawMessage> {
    const queued = this.inbox.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    if (this.isClosed) return Promise.reject(this.closedError());
    return new Promise<RawMessage>((resolve, reject) => {
      const w: RawWaiter = {
        kind: 'raw',
        resolve,
        reject,
        timer: setTimeout(() => {
          const i = this.waiters.indexOf(w);
          if (i >= 0) this.waiters.splice(i, 1);
          reject(new FrontendError('ERR_FRONTEND_TIMEOUT', `no message within ${timeoutMs} ms`));
        }, timeoutMs),
      };
      this.waiters.push(w);
    });
  }

  /** Messages received while nobody waited, not yet taken by readReplyRaw(). */
  get pendingInbox(): number {
    return this.inbox.length;
  }

  // ---- back-end channel -----------------------------------------------------------------------

  /**
   * Opens the back-end channel: a socketpair whose near end is watched for back-end requests
   * (CONFIG_CHANGE_MSG is counted and emitted; NEED_REPLY is answered with u64 0). Replaces an
   * earlier channel. Returns the far end, for SET_BACKEND_REQ_FD to send.
   */
  protected openBackendChannel(): number {
    const [ours, theirs] = this.native.socketpair();
    this.closeBackendChannel();
    this.backendFd = ours;
    this.backendFramer = new MessageFramer({ maxPayload: MAX_PAYLOAD, maxFds: MAX_FDS });
    this.backendWatcher = new this.native.Watcher(ours, (status) => this.onBackendChannel(status));
    this.backendWatcher.start(this.native.READABLE);
    return theirs;
  }

  private onBackendChannel(status: number): void {
    const fd = this.backendFd;
    const framer = this.backendFramer;
    if (fd < 0 || framer === null) return;
    if (status < 0) {
      this.closeBackendChannel();
      return;
    }
    const buf = this.backendBuf;
    for (;;) {
      let r: ReturnType<NativeAddon['recvMsg']>;
      try {
        r = this.native.recvMsg(fd, buf.subarray(0, framer.wanted()), MAX_FDS);
      } catch {
        this.closeBackendChannel();
        return;
      }
      if (r === null) return;
      if (r.bytes === 0) {
        this.closeFds(r.fds);
        this.closeBackendChannel();
        return;
      }
      let msgs: VhostUserMessage[];
      try {
        msgs = framer.push(buf.subarray(0, r.bytes), r.fds);
      } catch {
        this.closeFds(framer.takeFds());
        this.closeBackendChannel();
        return;
      }
      for (const m of msgs) {
        this.closeFds(m.fds);
        const msg: BackendMessage = {
          request: m.request,
          flags: m.flags,
          size: m.payload.byteLength,
          payload: m.payload,
          fdCount: m.fds.length,
        };
        this.backendMessages.push(msg);
        if ((m.flags & HeaderFlag.NEED_REPLY) !== 0) {
          try {
            this.native.sendMsg(fd, encodeMessage(m.request, REPLY_FLAGS, encodeU64(0)));
          } catch {
            /* the back-end went away; its channel closes next */
          }
        }
        if (m.request === BackendReq.CONFIG_CHANGE_MSG) {
          this.configChanges++;
          this.emit('configChange', msg);
        }
        this.emit('backendMessage', msg);
        if (this.backendFd !== fd) return; // a listener replaced or closed the channel
      }
    }
  }

  private closeBackendChannel(): void {
    this.backendWatcher?.close();
    this.backendWatcher = null;
    this.backendFramer = null;
    if (this.backendFd >= 0) this.closeFds([this.backendFd]);
    this.backendFd = -1;
  }

  /** True while a back-end channel is open. */
  get hasBackendChannel(): boolean {
    return this.backendFd >= 0;
  }
}

function toRaw(m: VhostUserMessage): RawMessage {
  return { request: m.request, flags: m.flags, size: m.payload.byteLength, payload: m.payload, fds: m.fds };
}
