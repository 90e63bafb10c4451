/**
 * A vhost-user FRONT-END in TypeScript: it plays QEMU (the vhost-user master) over a real Unix
 * socket, with real memfd guest memory and real eventfds, so that a back-end can be driven exactly
 * as QEMU 11 drives it (docs/protocol-notes.md 1.7) — by tests, benchmarks and the vhost-user-probe CLI.
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
import {
  type ConfigMsg,
  decodeConfig,
  decodeU64,
  decodeVringState,
  encodeConfig,
  encodeMemTable,
  encodeMessage,
  encodeSingleRegion,
  encodeU64,
  encodeVringAddr,
  encodeVringFdIndex,
  encodeVringState,
  type MemRegionDesc,
  type VhostUserMessage,
} from '../../core/vhost-user/codec.js';
import { MessageFramer } from '../../core/vhost-user/framer.js';
import {
  BackendReq,
  DeviceStatus,
  FrontendReq,
  frontendReqName,
  HEADER_SIZE,
  HeaderFlag,
  MAX_CONFIG_SIZE,
  MAX_FDS,
  MAX_PAYLOAD,
  ProtocolFeature,
  REPLY_FLAGS,
} from '../../core/vhost-user/protocol.js';
import { DriverRing, RING_ALIGN, ringSizes } from '../../core/virtio/driver-ring.js';
import { featureBit, featureMask, hasFeature, VirtioFeature } from '../../core/virtio/features.js';
import { native as defaultNative, type NativeAddon, type NativeWatcher } from '../native/addon.js';
import { DriverQueue } from './driver-queue.js';
import { FrontendError } from './errors.js';
import type { GuestRam } from './guest-ram.js';

/** Protocol features this front-end implements (and offers to acknowledge in init()). */
export const FRONTEND_PROTOCOL_FEATURES = featureMask(
  ProtocolFeature.MQ,
  ProtocolFeature.REPLY_ACK,
  ProtocolFeature.BACKEND_REQ,
  ProtocolFeature.CONFIG,
  ProtocolFeature.RESET_DEVICE,
  ProtocolFeature.CONFIGURE_MEM_SLOTS,
  ProtocolFeature.STATUS,
);

const PROTOCOL_FEATURES_BIT = featureBit(VirtioFeature.PROTOCOL_FEATURES);
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

export interface InitOptions {
  numQueues: number;
  /** Protocol features we are willing to acknowledge (default FRONTEND_PROTOCOL_FEATURES). */
  protocolFeatures?: bigint;
  /** Act as a front-end that ignores bit 30: no protocol features, no SET_VRING_ENABLE. */
  noProtocolFeatures?: boolean;
  /** Like QEMU with config_size = 0: F_CONFIG is not acknowledged. */
  noConfig?: boolean;
}

export interface InitResult {
  /** Device features offered by GET_FEATURES (including bit 30 when offered). */
  features: bigint;
  /** Protocol features offered, and the ones acknowledged. */
  protocolOffered: bigint;
  protocolFeatures: bigint;
  queueNum: number | null;
  maxMemSlots: number | null;
}

export interface StartOptions {
  /** Virtio features the driver accepted; bit 30 is added when protocol features are in use. */
  features: bigint;
  queues: readonly { size: number }[];
  memory: GuestRam;
  /** SET_VRING_BASE per queue (default 0); the rings are initialised at these indices. */
  bases?: readonly number[];
  /** Send ADD_MEM_REG per region instead of SET_MEM_TABLE (needs CONFIGURE_MEM_SLOTS). */
  useMemSlots?: boolean;
  /** Guest RAM region for the rings (default: the last one, which has mmap_offset != 0). */
  ringRegion?: number;
  /**
   * Runs after the rings exist in guest memory and before any message of the start sequence:
   * where a driver posts buffers during probe, before DRIVER_OK (virtio_can.c probe;
   * docs/protocol-notes.md 4).
   */
  beforeStart?: (queues: readonly DriverQueue[]) => void | Promise<void>;
  /** Leave the rings disabled (no SET_VRING_ENABLE(1)), for tests of the enable state. */
  skipEnable?: boolean;
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

export class VhostUserFrontend {
  /** Resolves when the connection is closed, by the back-end or by close(). */
  readonly closed: Promise<void>;
  readonly stats: FrontendStats = { sent: 0, received: 0, unexpected: 0, late: 0 };
  /** Every message received on the back-end channel, in order. */
  readonly backendMessages: BackendMessage[] = [];

  private readonly native: NativeAddon;
  private readonly fd: number;
  private readonly timeoutMs: number;
  private readonly framer = new MessageFramer({ maxPayload: MAX_PAYLOAD, maxFds: MAX_FDS });
  private readonly rbuf = new Uint8Array(HEADER_SIZE + MAX_PAYLOAD);
  private readonly watcher: NativeWatcher;
  private waiters: (ReplyWaiter | RawWaiter)[] = [];
  private readonly inbox: RawMessage[] = [];
  private out: OutEntry[] = [];
  private writable = false;
  private isClosed = false;
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

  // choreography state
  private initResult: InitResult | null = null;
  private useProtocol = false;
  private numQueues = 0;
  /** QEMU-internal "masked" call eventfds and the error eventfds (SET_VRING_CALL/ERR in init). */
  private readonly maskedCallFds: number[] = [];
  private readonly errFds: number[] = [];
  private queueList: DriverQueue[] = [];
  private ram: GuestRam | null = null;
  private ackedFeatures = 0n;
  private started = false;
  /** Regions the back-end has from us (for ADD/REM_MEM_REG differences). */
  private memSlots: MemRegionDesc[] = [];

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

  /** Connects to a back-end's socket. Throws ERR_FRONTEND_CONNECT (cause: the system error). */
  static connect(path: string, opts: FrontendOptions = {}): VhostUserFrontend {
    const n = opts.native ?? defaultNative;
    let fd: number;
    try {
      fd = n.connectUnix(path);
    } catch (cause) {
      const code = (cause as { code?: string }).code ?? 'ERR';
      throw new FrontendError('ERR_FRONTEND_CONNECT', `cannot connect to ${path}: ${code}`, { cause });
    }
    try {
      return new VhostUserFrontend(fd, opts);
    } catch (err) {
      n.close(fd);
      throw err;
    }
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

  private closeFds(fds: readonly number[]): void {
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
    for (const q of this.queueList) q.close();
    this.queueList = [];
    this.closeFds(this.maskedCallFds.splice(0));
    this.closeFds(this.errFds.splice(0));
    this.closeFds([this.fd]);
    this.emit('close', reason, byPeer);
    this.resolveClosed();
  }

  /** Closes the connection and every fd, watcher and queue this front-end owns. Idempotent. */
  close(): void {
    this.shutdown('closed by the front-end', false);
  }

  // ---- generic requests -----------------------------------------------------------------------

  /**
   * Sends `request` and, when it has a reply body (`expectReply`) or NEED_REPLY is set, resolves
   * with the checked reply; otherwise resolves with undefined once the message is queued.
   */
  call(request: number, payload?: Uint8Array, opts: CallOptions = {}): Promise<RawMessage | undefined> {
    return this.request(request, payload, opts).then((m) => (m === undefined ? undefined : toRaw(m)));
  }

  private request(
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

  private closedError(): FrontendError {
    return new FrontendError('ERR_FRONTEND_CLOSED', `connection closed: ${this.reason}`);
  }

  /** A message without a reply body; with NEED_REPLY, resolves with the ack value. */
  private async ack(
    request: number,
    payload: Uint8Array | undefined,
    opts: AckOptions,
    fds: readonly number[] = [],
  ): Promise<number | undefined> {
    const m = await this.request(request, payload, { ...opts, fds, expectReply: false });
    if (m === undefined) return undefined;
    return Number(this.u64(m));
  }

  private u64(m: VhostUserMessage): bigint {
    if (m.payload.byteLength !== 8) {
      throw new FrontendError(
        'ERR_FRONTEND_BAD_REPLY',
        `reply to ${frontendReqName(m.request)} has ${m.payload.byteLength} bytes, expected 8`,
      );
    }
    return decodeU64(m.payload);
  }

  private async getU64(request: number, opts: AckOptions): Promise<bigint> {
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

  // ---- one method per message -----------------------------------------------------------------

  getFeatures(opts: AckOptions = {}): Promise<bigint> {
    return this.getU64(FrontendReq.GET_FEATURES, opts);
  }

  setFeatures(features: bigint, opts: AckOptions = {}): Promise<number | undefined> {
    return this.ack(FrontendReq.SET_FEATURES, encodeU64(features), opts);
  }

  setOwner(opts: AckOptions = {}): Promise<number | undefined> {
    return this.ack(FrontendReq.SET_OWNER, undefined, opts);
  }

  resetOwner(opts: AckOptions = {}): Promise<number | undefined> {
    return this.ack(FrontendReq.RESET_OWNER, undefined, opts);
  }

  getProtocolFeatures(opts: AckOptions = {}): Promise<bigint> {
    return this.getU64(FrontendReq.GET_PROTOCOL_FEATURES, opts);
  }

  setProtocolFeatures(features: bigint, opts: AckOptions = {}): Promise<number | undefined> {
    return this.ack(FrontendReq.SET_PROTOCOL_FEATURES, encodeU64(features), opts);
  }

  async getQueueNum(opts: AckOptions = {}): Promise<number> {
    return Number(await this.getU64(FrontendReq.GET_QUEUE_NUM, opts));
  }

  async getMaxMemSlots(opts: AckOptions = {}): Promise<number> {
    return Number(await this.getU64(FrontendReq.GET_MAX_MEM_SLOTS, opts));
  }

  /** SET_MEM_TABLE with every region of `ram`, or with explicit regions and their fds. */
  setMemTable(
    ram: GuestRam | readonly MemRegionDesc[],
    fdsOrOpts?: readonly number[] | AckOptions,
    maybeOpts: AckOptions = {},
  ): Promise<number | undefined> {
    let regions: readonly MemRegionDesc[];
    let fds: readonly number[];
    let opts: AckOptions;
    const fdList = isNumberList(fdsOrOpts) ? fdsOrOpts : undefined;
    if (isRegionList(ram)) {
      regions = ram;
      fds = fdList ?? [];
      opts = maybeOpts;
    } else {
      regions = ram.regions();
      fds = regions.map((_, i) => ram.fdFor(i));
      opts = fdList !== undefined || fdsOrOpts === undefined ? maybeOpts : (fdsOrOpts as AckOptions);
    }
    return this.ack(FrontendReq.SET_MEM_TABLE, encodeMemTable(regions), opts, fds);
  }

  addMemReg(region: MemRegionDesc, fd: number, opts: AckOptions = {}): Promise<number | undefined> {
    return this.ack(FrontendReq.ADD_MEM_REG, encodeSingleRegion(region), opts, [fd]);
  }

  remMemReg(region: MemRegionDesc, opts: AckOptions = {}): Promise<number | undefined> {
    return this.ack(FrontendReq.REM_MEM_REG, encodeSingleRegion(region), opts);
  }

  setVringNum(index: number, num: number, opts: AckOptions = {}): Promise<number | undefined> {
    return this.ack(FrontendReq.SET_VRING_NUM, encodeVringState({ index, num }), opts);
  }

  /** Addresses are front-end user addresses (GuestRam.uvaOf). */
  setVringAddr(
    a: { index: number; desc: number; used: number; avail: number; flags?: number; log?: number },
    opts: AckOptions = {},
  ): Promise<number | undefined> {
    const payload = encodeVringAddr({ flags: 0, log: 0, ...a });
    return this.ack(FrontendReq.SET_VRING_ADDR, payload, opts);
  }

  setVringBase(index: number, num: number, opts: AckOptions = {}): Promise<number | undefined> {
    return this.ack(FrontendReq.SET_VRING_BASE, encodeVringState({ index, num }), opts);
  }

  /** Stops ring `index` and returns its next avail index. */
  async getVringBase(index: number, opts: AckOptions = {}): Promise<number> {
    const m = await this.request(FrontendReq.GET_VRING_BASE, encodeVringState({ index, num: 0 }), {
      ...opts,
      expectReply: true,
    });
    let s: { index: number; num: number };
    try {
      s = decodeVringState(m!.payload);
    } catch (cause) {
      throw new FrontendError('ERR_FRONTEND_BAD_REPLY', 'GET_VRING_BASE reply is not a vring state', {
        cause,
      });
    }
    if (s.index !== index) {
      throw new FrontendError(
        'ERR_FRONTEND_BAD_REPLY',
        `GET_VRING_BASE(${index}) answered for queue ${s.index}`,
      );
    }
    return s.num;
  }

  /** `fd` null sends the NOFD bit (bit 8) and no fd. The fd is duplicated by the kernel: keep or close yours. */
  setVringKick(index: number, fd: number | null, opts: AckOptions = {}): Promise<number | undefined> {
    return this.vringFd(FrontendReq.SET_VRING_KICK, index, fd, opts);
  }

  setVringCall(index: number, fd: number | null, opts: AckOptions = {}): Promise<number | undefined> {
    return this.vringFd(FrontendReq.SET_VRING_CALL, index, fd, opts);
  }

  setVringErr(index: number, fd: number | null, opts: AckOptions = {}): Promise<number | undefined> {
    return this.vringFd(FrontendReq.SET_VRING_ERR, index, fd, opts);
  }

  private vringFd(
    req: number,
    index: number,
    fd: number | null,
    opts: AckOptions,
  ): Promise<number | undefined> {
    return this.ack(req, encodeVringFdIndex(index, fd === null), opts, fd === null ? [] : [fd]);
  }

  setVringEnable(index: number, enable: boolean, opts: AckOptions = {}): Promise<number | undefined> {
    return this.ack(FrontendReq.SET_VRING_ENABLE, encodeVringState({ index, num: enable ? 1 : 0 }), opts);
  }

  /**
   * Creates the back-end channel: a socketpair whose far end goes to the back-end; our end is
   * watched for back-end requests (CONFIG_CHANGE_MSG is counted and emitted; NEED_REPLY is
   * answered with u64 0). Replaces an earlier channel.
   */
  setBackendReqFd(opts: AckOptions = {}): Promise<number | undefined> {
    if (this.isClosed) return Promise.reject(this.closedError());
    const [ours, theirs] = this.native.socketpair();
    this.closeBackendChannel();
    this.backendFd = ours;
    this.backendFramer = new MessageFramer({ maxPayload: MAX_PAYLOAD, maxFds: MAX_FDS });
    this.backendWatcher = new this.native.Watcher(ours, (status) => this.onBackendChannel(status));
    this.backendWatcher.start(this.native.READABLE);
    // Our copy of the far end is closed once the kernel has duplicated it into the message.
    return this.request(FrontendReq.SET_BACKEND_REQ_FD, undefined, {
      ...opts,
      fds: [theirs],
      closeAfter: [theirs],
    }).then((m) => (m === undefined ? undefined : Number(this.u64(m))));
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

  /** GET_CONFIG; throws ERR_FRONTEND_CONFIG_REFUSED on the documented zero-size refusal. */
  async getConfig(
    offset: number,
    size: number,
    opts: AckOptions & { flags?: number } = {},
  ): Promise<ConfigMsg> {
    const payload = encodeConfig({ offset, size, flags: opts.flags ?? 0 });
    const m = await this.request(FrontendReq.GET_CONFIG, payload, { ...opts, expectReply: true });
    if (m!.payload.byteLength === 0) {
      throw new FrontendError('ERR_FRONTEND_CONFIG_REFUSED', `GET_CONFIG(${offset}, ${size}) refused`);
    }
    let c: ConfigMsg;
    try {
      c = decodeConfig(m!.payload, MAX_CONFIG_SIZE);
    } catch (cause) {
      throw new FrontendError('ERR_FRONTEND_BAD_REPLY', 'GET_CONFIG reply is malformed', { cause });
    }
    // QEMU: the reply payload must be exactly 12 + the requested size.
    if (c.size !== size || c.offset !== offset) {
      throw new FrontendError(
        'ERR_FRONTEND_BAD_REPLY',
        `GET_CONFIG(${offset}, ${size}) answered with ${c.offset}+${c.size}`,
      );
    }
    return { offset: c.offset, size: c.size, flags: c.flags, data: c.data.slice() };
  }

  setConfig(
    offset: number,
    data: Uint8Array,
    opts: AckOptions & { flags?: number } = {},
  ): Promise<number | undefined> {
    const payload = encodeConfig({ offset, size: data.byteLength, flags: opts.flags ?? 0, data });
    return this.ack(FrontendReq.SET_CONFIG, payload, opts);
  }

  resetDevice(opts: AckOptions = {}): Promise<number | undefined> {
    return this.ack(FrontendReq.RESET_DEVICE, undefined, opts);
  }

  setStatus(status: number, opts: AckOptions = {}): Promise<number | undefined> {
    return this.ack(FrontendReq.SET_STATUS, encodeU64(status), opts);
  }

  async getStatus(opts: AckOptions = {}): Promise<number> {
    return Number(await this.getU64(FrontendReq.GET_STATUS, opts));
  }

  // ---- QEMU 11 choreography (docs/protocol-notes.md 1.7) ---------------------------------------

  /** The result of init(), or null before it. */
  get negotiated(): InitResult | null {
    return this.initResult;
  }

  /** Protocol features acknowledged by init() (0 before). */
  get protocolFeatures(): bigint {
    return this.initResult?.protocolFeatures ?? 0n;
  }

  private hasProtocol(bit: number): boolean {
    return hasFeature(this.protocolFeatures, bit);
  }

  /** The queues of the last start() (empty before). */
  get queues(): readonly DriverQueue[] {
    return this.queueList;
  }

  get isStarted(): boolean {
    return this.started;
  }

  /** Virtio features sent with the last SET_FEATURES (without bit 30). */
  get features(): bigint {
    return this.ackedFeatures;
  }

  /**
   * A. Device realize (vhost_dev_init): GET_FEATURES, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES,
   * GET_QUEUE_NUM (MQ), GET_MAX_MEM_SLOTS (CONFIGURE_MEM_SLOTS), SET_BACKEND_REQ_FD (BACKEND_REQ,
   * NEED_REPLY with REPLY_ACK), SET_OWNER, GET_FEATURES, then per queue SET_VRING_CALL (a "masked"
   * eventfd) and SET_VRING_ERR.
   */
  async init(opts: InitOptions): Promise<InitResult> {
    if (this.initResult !== null) throw new FrontendError('ERR_FRONTEND_STATE', 'init() was already done');
    if (!Number.isInteger(opts.numQueues) || opts.numQueues < 1 || opts.numQueues > 256) {
      throw new FrontendError('ERR_FRONTEND_ARG', `numQueues ${opts.numQueues}`);
    }
    const features = await this.getFeatures();
    let offered = 0n;
    let acked = 0n;
    let queueNum: number | null = null;
    let maxMemSlots: number | null = null;
    this.useProtocol = (features & PROTOCOL_FEATURES_BIT) !== 0n && !opts.noProtocolFeatures;
    if (this.useProtocol) {
      offered = await this.getProtocolFeatures();
      let supported = opts.protocolFeatures ?? FRONTEND_PROTOCOL_FEATURES;
      if (opts.noConfig) supported &= ~featureBit(ProtocolFeature.CONFIG);
      acked = offered & supported;
      await this.setProtocolFeatures(acked);
      if (hasFeature(acked, ProtocolFeature.MQ)) queueNum = await this.getQueueNum();
      if (hasFeature(acked, ProtocolFeature.CONFIGURE_MEM_SLOTS)) maxMemSlots = await this.getMaxMemSlots();
    }
    this.initResult = { features, protocolOffered: offered, protocolFeatures: acked, queueNum, maxMemSlots };
    if (hasFeature(acked, ProtocolFeature.BACKEND_REQ)) {
      const ack = await this.setBackendReqFd({ needReply: hasFeature(acked, ProtocolFeature.REPLY_ACK) });
      this.checkAck('SET_BACKEND_REQ_FD', ack);
    }
    await this.setOwner();
    await this.getFeatures();
    this.numQueues = opts.numQueues;
    for (let i = 0; i < opts.numQueues; i++) {
      const call = this.native.eventfdCreate(0, true);
      this.maskedCallFds.push(call);
      await this.setVringCall(i, call);
      const err = this.native.eventfdCreate(0, true);
      this.errFds.push(err);
      await this.setVringErr(i, err);
    }
    return this.initResult;
  }

  private checkAck(what: string, ack: number | undefined): void {
    if (ack !== undefined && ack !== 0) {
      throw new FrontendError('ERR_FRONTEND_NACK', `${what} refused by the back-end (ack ${ack})`);
    }
  }

  /**
   * A message QEMU waits for: NEED_REPLY when REPLY_ACK was negotiated, otherwise followed by a
   * GET_FEATURES barrier (vhost-user.rst "Communication"; docs/protocol-notes.md 1.2, 1.7).
   */
  private async synced(what: string, send: (o: AckOptions) => Promise<number | undefined>): Promise<void> {
    if (this.hasProtocol(ProtocolFeature.REPLY_ACK)) {
      this.checkAck(what, await send({ needReply: true }));
    } else {
      await send({});
      await this.getFeatures();
    }
  }

  /**
   * B. Driver OK (vhost_dev_start): SET_FEATURES, [GET_STATUS, SET_STATUS(FEATURES_OK)],
   * SET_MEM_TABLE or ADD_MEM_REG per region, per queue SET_VRING_NUM/BASE/ADDR/KICK/CALL, then
   * SET_VRING_ENABLE(1) per queue, then SET_VRING_CALL again per queue. Creates fresh rings.
   */
  async start(opts: StartOptions): Promise<DriverQueue[]> {
    if (this.initResult === null) throw new FrontendError('ERR_FRONTEND_STATE', 'start() before init()');
    if (this.started) throw new FrontendError('ERR_FRONTEND_STATE', 'already started; stop() first');
    if (opts.queues.length === 0 || opts.queues.length > this.numQueues) {
      throw new FrontendError(
        'ERR_FRONTEND_ARG',
        `${opts.queues.length} queues (init() set up ${this.numQueues})`,
      );
    }
    for (const q of this.queueList) q.close();
    this.queueList = [];
    const ram = opts.memory;
    const eventIdx = hasFeature(opts.features, VirtioFeature.RING_EVENT_IDX);
    const region = opts.ringRegion ?? ram.regionCount - 1;
    const queues: DriverQueue[] = [];
    try {
      opts.queues.forEach(({ size }, index) => {
        const sz = ringSizes(size);
        const layout = {
          size,
          descGpa: ram.alloc(sz.desc, RING_ALIGN.desc, region),
          availGpa: ram.alloc(sz.avail, RING_ALIGN.avail, region),
          usedGpa: ram.alloc(sz.used, RING_ALIGN.used, region),
        };
        const ring = new DriverRing(ram.memory, layout, { eventIdx });
        ring.init(opts.bases?.[index] ?? 0);
        queues.push(
          new DriverQueue({
            index,
            ring,
            native: this.native,
            timeoutMs: this.timeoutMs,
            stopRing: (i) => this.stopQueue(i),
          }),
        );
      });
    } catch (err) {
      for (const q of queues) q.close();
      throw err;
    }
    this.queueList = queues;
    this.ram = ram;
    if (opts.beforeStart) await opts.beforeStart(queues);
    await this.startSequence(opts.features, opts.bases ?? [], opts);
    return queues;
  }

  /**
   * B again after stop() (VM resume): the same rings, SET_VRING_BASE from `bases` (default: what
   * stop() returned is what the caller passes).
   */
  async restart(
    bases: readonly number[],
    opts: { useMemSlots?: boolean; skipEnable?: boolean } = {},
  ): Promise<void> {
    if (this.started) throw new FrontendError('ERR_FRONTEND_STATE', 'restart() while started');
    if (this.queueList.length === 0 || this.ram === null) {
      throw new FrontendError('ERR_FRONTEND_STATE', 'restart() before start()');
    }
    await this.startSequence(this.ackedFeatures, bases, opts);
  }

  private async startSequence(
    features: bigint,
    bases: readonly number[],
    opts: { useMemSlots?: boolean; skipEnable?: boolean },
  ): Promise<void> {
    const ram = this.ram!;
    this.ackedFeatures = features & ~PROTOCOL_FEATURES_BIT;
    await this.setFeatures(this.useProtocol ? features | PROTOCOL_FEATURES_BIT : features);
    if (this.hasProtocol(ProtocolFeature.STATUS)) {
      const s = await this.getStatus();
      if ((s & DeviceStatus.FEATURES_OK) === 0) {
        await this.synced('SET_STATUS', (o) => this.setStatus(s | DeviceStatus.FEATURES_OK, o));
      }
    }
    const replyAck = this.hasProtocol(ProtocolFeature.REPLY_ACK);
    if (opts.useMemSlots) {
      if (!this.hasProtocol(ProtocolFeature.CONFIGURE_MEM_SLOTS)) {
        throw new FrontendError('ERR_FRONTEND_UNSUPPORTED', 'useMemSlots needs CONFIGURE_MEM_SLOTS');
      }
      // Like QEMU (vhost_user_add_remove_regions): send only the difference to what the back-end
      // already has, so a restart with unchanged memory sends nothing.
      const regions = ram.regions();
      const key = (r: MemRegionDesc): string => `${r.guestPhysAddr}:${r.size}:${r.userAddr}:${r.mmapOffset}`;
      const wanted = new Set(regions.map(key));
      for (const r of this.memSlots.filter((r) => !wanted.has(key(r)))) {
        this.checkAck('REM_MEM_REG', await this.remMemReg(r, { needReply: replyAck }));
      }
      const have = new Set(this.memSlots.map(key));
      for (let i = 0; i < regions.length; i++) {
        if (have.has(key(regions[i]!))) continue;
        this.checkAck(
          'ADD_MEM_REG',
          await this.addMemReg(regions[i]!, ram.fdFor(i), { needReply: replyAck }),
        );
      }
      this.memSlots = regions;
    } else {
      this.checkAck('SET_MEM_TABLE', await this.setMemTable(ram, { needReply: replyAck }));
      this.memSlots = ram.regions();
    }
    for (const q of this.queueList) {
      const l = q.ring.layout;
      await this.setVringNum(q.index, l.size);
      await this.setVringBase(q.index, bases[q.index] ?? 0);
      await this.setVringAddr({
        index: q.index,
        desc: ram.uvaOf(l.descGpa),
        used: ram.uvaOf(l.usedGpa),
        avail: ram.uvaOf(l.availGpa),
      });
      await this.setVringKick(q.index, q.kickFd);
      await this.setVringCall(q.index, q.callFd);
    }
    if (this.useProtocol && !opts.skipEnable) {
      for (const q of this.queueList) {
        await this.synced('SET_VRING_ENABLE', (o) => this.setVringEnable(q.index, true, o));
      }
    }
    for (const q of this.queueList) await this.setVringCall(q.index, q.callFd);
    // Without REPLY_ACK (or with skipEnable) nothing above was waited for: a GET_FEATURES barrier makes sure the
    // back-end has processed the whole sequence before the caller starts using the rings.
    if (!this.hasProtocol(ProtocolFeature.REPLY_ACK) || opts.skipEnable) await this.getFeatures();
    // A ring may have run before its real call fd arrived (KICK comes before CALL in step 12, and
    // without bit 30 the ring is enabled at once): that interrupt went to the masked eventfd. QEMU
    // forwards a pending masked notification when it unmasks (vhost_virtqueue_mask); so do we.
    for (const q of this.queueList) {
      const masked = this.maskedCallFds[q.index];
      if (masked !== undefined && this.drainEventfd(masked) > 0) this.native.eventfdWrite(q.callFd, 1);
    }
    this.started = true;
  }

  private drainEventfd(fd: number): number {
    let n = 0;
    for (let v = this.native.eventfdRead(fd); v !== null; v = this.native.eventfdRead(fd)) n += v;
    return n;
  }

  /**
   * C. Stop (guest reset, VM pause): SET_VRING_ENABLE(0) for each queue, then GET_VRING_BASE for
   * each. Returns the bases (next avail index per queue).
   */
  async stop(): Promise<number[]> {
    if (!this.started) throw new FrontendError('ERR_FRONTEND_STATE', 'stop() while not started');
    if (this.useProtocol) {
      for (const q of this.queueList) {
        await this.synced('SET_VRING_ENABLE', (o) => this.setVringEnable(q.index, false, o));
      }
    }
    const bases: number[] = [];
    for (const q of this.queueList) bases.push(await this.getVringBase(q.index));
    this.started = false;
    return bases;
  }

  /** Stops one ring (SET_VRING_ENABLE 0 then GET_VRING_BASE); used by DriverQueue.stop(). */
  private async stopQueue(index: number): Promise<number> {
    if (this.useProtocol) {
      await this.synced('SET_VRING_ENABLE', (o) => this.setVringEnable(index, false, o));
    }
    const base = await this.getVringBase(index);
    return base;
  }
}

function toRaw(m: VhostUserMessage): RawMessage {
  return { request: m.request, flags: m.flags, size: m.payload.byteLength, payload: m.payload, fds: m.fds };
}

function isNumberList(x: readonly number[] | AckOptions | undefined): x is readonly number[] {
  return Array.isArray(x);
}

function isRegionList(x: GuestRam | readonly MemRegionDesc[]): x is readonly MemRegionDesc[] {
  return Array.isArray(x);
}
