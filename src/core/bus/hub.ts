/**
 * The in-process virtual CAN bus ("hub"): every attached port (a guest's virtio-can device, a host
 * interface, a network peer, a test) transmits into it, and it fans each frame out to every *other*
 * port's bounded receive queue.
 *
 * Semantics (why, in brief):
 * - No echo to the sender. The Linux virtio_can driver echoes locally (IFF_ECHO, virtio_can.c;
 *   a second copy from the bus makes guest applications see every frame twice (rust-vmm #925).
 * - Fan-out is synchronous and in attach order. All transmits, including ones made from inside a
 *   handler callback, go through one FIFO, so every receiver sees frames in the order they were
 *   transmitted (per sender, and globally, which also makes timestamps monotonic per receiver).
 * - One frame object is shared by all receivers; frames are immutable by convention.
 * - A full receive queue drops the frame for that receiver only and the sender still gets 'sent':
 *   on a real bus another node's buffer overrun does not affect the transmitter.
 * - The owner of a port is told `onFramesAvailable()` once per frame queued for it, after the frame
 *   was queued to *all* receivers, and drains with `take()`. The notification is per frame (not edge
 *   triggered), so an owner that cannot drain now (no guest RX buffers) simply drains later.
 *
 * Re-entrancy: a handler may call `transmit` (or detach/attach/setReceiving) from inside
 * `onFramesAvailable`. A transmit made while a fan-out is running is stamped and counted at once and
 * queued in the hub's pending FIFO; the outermost transmit delivers it after the current frame, before
 * returning. So nothing recurses, ordering stays FIFO, and the nested call still returns 'sent'. (Two
 * handlers that answer every frame with a frame livelock, as two such nodes would on a real bus.)
 *
 * Hot path: nothing is allocated per frame once the bus is warm. The copy that goes on the bus comes
 * from a frame pool (frame-pool.ts) and returns to it when every receiver attached with
 * `releasesFrames` has released it (a receiver that keeps frames pins them instead: they are never
 * reused); the timestamp is whatever bigint the clock returns (the daemon's clock reads the time once
 * per wake-up, so a batch shares one); queues are power-of-two rings; port lists are copy-on-write
 * arrays (attach and detach are rare) so fan-out iterates a stable snapshot without copying.
 */
import { BusLoadMeter } from './bus-load.js';
import { type CanErrorFrame, stateErrorFrame } from './can-error.js';
import { type CanFrame, canFrameBits, canFrameDataPhaseBits, validateCanFrame } from './can-frame.js';
import { CanHubError } from './errors.js';
import { FramePool, type FramePoolStats, PooledFrame } from './frame-pool.js';
import { RingQueue } from './ring-queue.js';

/** Controller state of one port, as a CAN controller would report it (ISO 11898-1 fault confinement). */
export type BusState = 'error-active' | 'error-warning' | 'error-passive' | 'bus-off';
export const BUS_STATES: readonly BusState[] = Object.freeze([
  'error-active',
  'error-warning',
  'error-passive',
  'bus-off',
]);

/**
 * Outcome of `HubPort.transmit`: 'sent' = on the bus (fanned out, or queued for fan-out by the running
 * one); 'dropped' = rejected (port detached, hub closed or invalid frame; counted `txRejected`);
 * 'pending' = accepted, completion reported later via `onTxComplete` (reserved for host interfaces; the
 * virtual hub never returns it).
 */
export type TxResult = 'sent' | 'dropped' | 'pending';

/** Implemented by whoever owns a port. */
export interface BusPortHandler {
  /** Called synchronously after a frame was queued for this port (once per frame); drain with take(). */
  onFramesAvailable(): void;
  /** Fault injection / controller state changes for this port (`CanHub.injectBusState`). */
  onBusState?(state: BusState): void;
  /** Asynchronous transmit completion (reserved for host interfaces; the virtual hub completes synchronously). */
  onTxComplete?(token: number, ok: boolean): void;
  /**
   * An error event on the bus (SocketCAN error frame), for ports attached with `errorFrames: true`:
   * controller state changes of any port (`injectBusState`) and whatever `CanHub.emitErrorFrame`
   * reports. Called synchronously; the frame is shared and immutable.
   */
  onErrorFrame?(frame: CanErrorFrame): void;
}

/**
 * What a port may receive; everything else is counted `rxFiltered` and never queued. An RTR frame is a
 * classic frame, so it needs `classic` *and* `rtr` (as the virtio-can driver requires CAN_CLASSIC and
 * RTR_FRAMES, docs/protocol-notes.md 4); an FD frame needs `fd`.
 */
export interface PortAcceptPolicy {
  readonly classic: boolean;
  readonly fd: boolean;
  readonly rtr: boolean;
}

/**
 * Per-port counters: a live, plain object (numbers) the hub mutates; read-only to everyone else.
 * Byte counters count payload bytes (0 for RTR).
 *
 * For each frame another port put on the bus while this port was attached, exactly one of
 * `rxFrames`, `rxDroppedOverflow`, `rxFiltered`, `rxDiscardedClosed` is incremented. A queued frame that
 * is later flushed (`setReceiving(false)`, `detach()`) is additionally counted in `rxDiscardedClosed`,
 * so: frames taken + frames still queued + dropped + filtered + discarded == frames offered.
 */
export interface PortStats {
  txFrames: number;
  txBytes: number;
  /** Frames queued for this port. */
  rxFrames: number;
  rxBytes: number;
  /** Frames dropped because this port's queue was full. */
  rxDroppedOverflow: number;
  /** Frames this port's accept policy excludes. */
  rxFiltered: number;
  /** Frames that arrived while receiving was off, plus queued frames flushed by setReceiving(false)/detach. */
  rxDiscardedClosed: number;
  /** Transmits refused: port detached, hub closed, or the frame failed validation. */
  txRejected: number;
}

export interface HubPort {
  /** Unique within the hub, from 1, never reused (0 is the "unknown" origin). */
  readonly id: number;
  readonly name: string;
  readonly hub: CanHub;
  /**
   * Puts a frame on the bus. The hub validates it (invalid: 'dropped' + `txRejected`), then fans out a
   * copy (data included) stamped with `timestampNs = clock()` and `origin = this.id`, so the caller may
   * reuse its frame object and buffer as soon as this returns. `token` is for `onTxComplete` of
   * asynchronous ports; the virtual hub completes synchronously (the return value is the completion)
   * and ignores it.
   */
  transmit(frame: CanFrame, token?: number): TxResult;
  /**
   * Next queued frame, FIFO; undefined when empty or detached. On a port attached with
   * `releasesFrames` the frame must be handed back with `release` once it was consumed.
   */
  take(): CanFrame | undefined;
  /**
   * For a `releasesFrames` port: the frame from `take()` is no longer used by its owner, so the hub
   * may reuse it (never touch it afterwards). Call it exactly once per frame taken. On other ports it
   * does nothing.
   */
  release(frame: CanFrame): void;
  /** True for ports attached with `releasesFrames`. */
  readonly releasesFrames: boolean;
  peek(): CanFrame | undefined;
  readonly queued: number;
  readonly queueLimit: number;
  /**
   * On (the default): frames are queued. Off: new frames are discarded and the queue is flushed; both
   * count `rxDiscardedClosed`. Returns how many queued frames were flushed (0 when turning on).
   */
  setReceiving(on: boolean): number;
  readonly receiving: boolean;
  setAcceptPolicy(policy: PortAcceptPolicy): void;
  readonly acceptPolicy: PortAcceptPolicy;
  /** Last state injected with `CanHub.injectBusState` (informational; the hub does not enforce it). */
  readonly busState: BusState;
  readonly stats: Readonly<PortStats>;
  readonly attached: boolean;
  /** Leaves the bus: queued frames are flushed (counted `rxDiscardedClosed`), transmit is refused. Idempotent. */
  detach(): void;
  /** True for ports attached with `confirmsTransmit` (host interfaces). */
  readonly confirmsTransmit: boolean;
  /**
   * For a `confirmsTransmit` port: reports that a frame taken from this port's queue was really
   * transmitted (ok) or could not be (not ok). The sender's `onTxComplete(token, ok)` runs once every
   * confirming port that received the frame has reported (ok only if all did). Unknown frames and
   * repeated reports are ignored.
   */
  confirm(frame: CanFrame, ok: boolean): void;
}

export interface AttachOptions {
  /** Unique among the attached ports of this hub (names address ports in `injectBusState`). */
  readonly name: string;
  /** Receive queue bound, integer >= 1; default: the hub's `queueLimit`. */
  readonly queueLimit?: number | undefined;
  /** Default: everything. */
  readonly accept?: PortAcceptPolicy | undefined;
  /** Only `false` exists: the hub never echoes (the driver echoes itself). Kept to make that explicit. */
  readonly receiveOwn?: false | undefined;
  /**
   * This port puts frames on a real bus and confirms each one later with `confirm()` (a host
   * interface waiting for its own-message echo). A sender that passes a token to `transmit` then gets
   * 'pending' and, later, `onTxComplete(token, ok)` (LATE_TX_ACK). Frames still queued here when the
   * port detaches are reported as not transmitted.
   */
  readonly confirmsTransmit?: boolean | undefined;
  /**
   * The owner consumes each frame at once and calls `release(frame)` after it, so the hub can reuse
   * the frame object (no allocation per frame on a bus whose receivers all do this). Without it
   * (the default) frames taken from this port stay valid for as long as the owner keeps them.
   */
  readonly releasesFrames?: boolean | undefined;
  /** Deliver error events to `onErrorFrame` (observers: captures, monitors, network peers). */
  readonly errorFrames?: boolean | undefined;
}

export interface CanHubOptions {
  readonly name: string;
  /** Per-port receive queue bound, default 1024. */
  readonly queueLimit?: number | undefined;
  /** Nominal bit rate in bit/s for the bus-load estimate, default 500000. */
  readonly bitrate?: number | undefined;
  /** CAN FD data-phase bit rate (frames with BRS), default 2000000. */
  readonly dataBitrate?: number | undefined;
  /** Nanoseconds, for frame timestamps and bus load; default: always 0n. */
  readonly clock?: (() => bigint) | undefined;
  /**
   * Called when a port's `onFramesAvailable` throws during fan-out. Default (absent): fan-out finishes
   * for every port and every pending frame, then the outermost `transmit` throws
   * `ERR_BUS_HANDLER_FAILED` with the first error as `cause`. Errors from `onBusState` (a direct call)
   * propagate unchanged.
   */
  readonly onHandlerError?: ((error: unknown, port: HubPort) => void) | undefined;
}

export interface PortStatsSnapshot {
  readonly id: number;
  readonly name: string;
  readonly stats: Readonly<PortStats>;
}

export interface BusStats {
  /** Frames put on the bus since the hub was created. */
  readonly frames: number;
  /** Payload bytes of those frames. */
  readonly bytes: number;
  /** `canFrameBits` of those frames (no stuffing). */
  readonly bits: number;
  /** Receive-queue overflows over all ports, including ports detached since. */
  readonly droppedOverflow: number;
  /** Error events reported to observers (`emitErrorFrame`, controller state changes). */
  readonly errorFrames: number;
  /** Attached ports, in attach order, with a copy of their counters. */
  readonly ports: readonly PortStatsSnapshot[];
  /** Sliding 1 s window estimate, 0..1 (see bus-load.ts for the approximation). */
  readonly busLoad: number;
  /** The recycled frame copies (see frame-pool.ts): `created` stops growing once the bus is warm. */
  readonly framePool: FramePoolStats;
}

export const CanHubDefaults = {
  QUEUE_LIMIT: 1024,
  BITRATE: 500_000,
  DATA_BITRATE: 2_000_000,
} as const;

/** Largest accepted queue limit (a sanity bound; queues grow on demand, so this is not preallocated). */
const MAX_QUEUE_LIMIT = 1 << 24;
const ALL_TYPES: PortAcceptPolicy = Object.freeze({ classic: true, fd: true, rtr: true });
const ZERO_CLOCK = (): bigint => 0n;

function invalid(message: string): CanHubError {
  return new CanHubError('ERR_BUS_INVALID_OPTION', message);
}

function checkQueueLimit(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > MAX_QUEUE_LIMIT) {
    throw invalid(`${what} must be an integer 1..${MAX_QUEUE_LIMIT}, got ${String(v)}`);
  }
  return v;
}

function checkBitrate(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
    throw invalid(`${what} must be a positive number, got ${String(v)}`);
  }
  return v;
}

function checkName(v: unknown, what: string): string {
  if (typeof v !== 'string' || v.length === 0) throw invalid(`${what} must be a non-empty string`);
  return v;
}

function checkPolicy(p: unknown): PortAcceptPolicy {
  if (
    typeof p !== 'object' ||
    p === null ||
    typeof (p as PortAcceptPolicy).classic !== 'boolean' ||
    typeof (p as PortAcceptPolicy).fd !== 'boolean' ||
    typeof (p as PortAcceptPolicy).rtr !== 'boolean'
  ) {
    throw invalid('accept policy needs boolean classic, fd and rtr');
  }
  const { classic, fd, rtr } = p as PortAcceptPolicy;
  return Object.freeze({ classic, fd, rtr });
}

interface PendingTx {
  sender: Port;
  token: number;
  remaining: number;
  ok: boolean;
}

/** The port object handed to owners. Not exported: the hub engine reaches its fields, owners see HubPort. */
class Port implements HubPort {
  readonly id: number;
  readonly name: string;
  readonly hub: CanHub;
  readonly queueLimit: number;
  readonly stats: PortStats = {
    txFrames: 0,
    txBytes: 0,
    rxFrames: 0,
    rxBytes: 0,
    rxDroppedOverflow: 0,
    rxFiltered: 0,
    rxDiscardedClosed: 0,
    txRejected: 0,
  };
  readonly handler: BusPortHandler;
  readonly queue: RingQueue<CanFrame>;
  readonly engine: BusEngine;
  attached = true;
  receiving = true;
  busState: BusState = 'error-active';
  acceptPolicy: PortAcceptPolicy = ALL_TYPES;
  // The policy again as plain booleans, read per frame.
  acceptClassic = true;
  acceptFd = true;
  acceptRtr = true;
  /** Set while a fan-out queued a frame here and has not notified the handler yet. */
  notifyPending = false;
  confirmsTransmit = false;
  releasesFrames = false;
  wantsErrorFrames = false;
  /** Frames taken from a releasing port and not released yet (guards against stray releases). */
  outstanding = 0;

  constructor(engine: BusEngine, id: number, name: string, queueLimit: number, handler: BusPortHandler) {
    this.engine = engine;
    this.hub = engine.hub;
    this.id = id;
    this.name = name;
    this.queueLimit = queueLimit;
    this.handler = handler;
    this.queue = new RingQueue<CanFrame>(Math.min(queueLimit, 16));
  }

  get queued(): number {
    return this.queue.size;
  }

  transmit(frame: CanFrame, token?: number): TxResult {
    return this.engine.transmit(this, frame, token);
  }

  confirm(frame: CanFrame, ok: boolean): void {
    this.engine.confirm(frame, ok);
  }

  take(): CanFrame | undefined {
    const f = this.queue.shift();
    if (f !== undefined && this.releasesFrames) this.outstanding++;
    return f;
  }

  release(frame: CanFrame): void {
    if (!this.releasesFrames || this.outstanding === 0) return;
    this.outstanding--;
    if (frame instanceof PooledFrame) frame.drop();
  }

  /** Empties the queue, giving back the holds of a releasing port; returns how many were queued. */
  flush(): number {
    if (!this.releasesFrames) return this.queue.clear();
    let n = 0;
    for (let f = this.queue.shift(); f !== undefined; f = this.queue.shift()) {
      n++;
      if (f instanceof PooledFrame) f.drop();
    }
    return n;
  }

  peek(): CanFrame | undefined {
    return this.queue.peek();
  }

  setReceiving(on: boolean): number {
    if (!this.attached) return 0;
    this.receiving = on;
    if (on) return 0;
    let n = 0;
    if (this.confirmsTransmit) {
      // Frames flushed from a confirming port were never transmitted: tell their senders.
      for (let f = this.queue.shift(); f !== undefined; f = this.queue.shift()) {
        n++;
        this.engine.confirm(f, false);
      }
    } else {
      n = this.flush();
    }
    this.stats.rxDiscardedClosed += n;
    return n;
  }

  setAcceptPolicy(policy: PortAcceptPolicy): void {
    const p = checkPolicy(policy);
    this.acceptPolicy = p;
    this.acceptClassic = p.classic;
    this.acceptFd = p.fd;
    this.acceptRtr = p.rtr;
  }

  accepts(f: CanFrame): boolean {
    return f.fd ? this.acceptFd : this.acceptClassic && (!f.rtr || this.acceptRtr);
  }

  detach(): void {
    this.engine.detach(this);
  }
}

/** The fan-out engine behind a CanHub (kept apart so CanHub's public surface stays the documented one). */
class BusEngine {
  readonly hub: CanHub;
  readonly hubName: string;
  readonly queueLimit: number;
  readonly bitrate: number;
  readonly dataBitrate: number;
  readonly clock: () => bigint;
  readonly onHandlerError: ((error: unknown, port: HubPort) => void) | undefined;
  /** Attached ports in attach order; replaced (never mutated) on attach/detach. */
  ports: readonly Port[] = Object.freeze([]);
  nextPortId = 1;
  closed = false;
  delivering = false;
  readonly pendingFrames = new RingQueue<PooledFrame>();
  readonly pool = new FramePool();
  readonly pendingSenders = new RingQueue<Port>();
  failed = false;
  firstError: unknown = undefined;
  failedPortName = '';
  frames = 0;
  bytes = 0;
  bits = 0;
  droppedOverflow = 0;
  errorFrames = 0;
  readonly load = new BusLoadMeter();
  /** Attached ports with confirmsTransmit. */
  confirmingPorts = 0;
  /** Frames waiting for confirmation by confirming ports, with the sender's token. */
  readonly awaiting = new Map<CanFrame, PendingTx>();
  /** Tokens of frames deferred by a nested transmit (parallel to pendingFrames). */
  readonly pendingTokens = new RingQueue<number>();

  constructor(hub: CanHub, opts: CanHubOptions) {
    this.hub = hub;
    this.hubName = checkName(opts.name, 'hub name');
    this.queueLimit = checkQueueLimit(opts.queueLimit ?? CanHubDefaults.QUEUE_LIMIT, 'queueLimit');
    this.bitrate = checkBitrate(opts.bitrate ?? CanHubDefaults.BITRATE, 'bitrate');
    this.dataBitrate = checkBitrate(opts.dataBitrate ?? CanHubDefaults.DATA_BITRATE, 'dataBitrate');
    const clock = opts.clock ?? ZERO_CLOCK;
    if (typeof clock !== 'function') throw invalid('clock must be a function returning bigint nanoseconds');
    this.clock = clock;
    this.onHandlerError = opts.onHandlerError;
  }

  attach(handler: BusPortHandler, opts: AttachOptions): Port {
    if (this.closed) throw new CanHubError('ERR_BUS_CLOSED', `hub ${this.hubName} is closed`);
    const name = checkName(opts?.name, 'port name');
    if (typeof handler?.onFramesAvailable !== 'function') {
      throw invalid(`port ${name}: handler needs onFramesAvailable()`);
    }
    if (opts.receiveOwn !== undefined && opts.receiveOwn !== false) {
      throw invalid(`port ${name}: receiveOwn can only be false (the hub never echoes to the sender)`);
    }
    const limit = checkQueueLimit(opts.queueLimit ?? this.queueLimit, `port ${name} queueLimit`);
    if (opts.releasesFrames !== undefined && typeof opts.releasesFrames !== 'boolean') {
      throw invalid(`port ${name}: releasesFrames must be a boolean`);
    }
    if (opts.releasesFrames === true && opts.confirmsTransmit === true) {
      // A confirming port keeps frames until their echo: it cannot hand them back at once.
      throw invalid(`port ${name}: releasesFrames and confirmsTransmit exclude each other`);
    }
    for (const p of this.ports) {
      if (p.name === name) {
        throw new CanHubError('ERR_BUS_PORT_NAME_IN_USE', `hub ${this.hubName} already has a port ${name}`);
      }
    }
    const port = new Port(this, this.nextPortId++, name, limit, handler);
    if (opts.accept !== undefined) port.setAcceptPolicy(opts.accept);
    if (opts.confirmsTransmit) {
      port.confirmsTransmit = true;
      this.confirmingPorts++;
    }
    if (opts.releasesFrames === true) port.releasesFrames = true;
    if (opts.errorFrames === true) port.wantsErrorFrames = true;
    this.ports = Object.freeze([...this.ports, port]);
    this.sizePool();
    return port;
  }

  detach(port: Port): void {
    if (!port.attached) return;
    port.attached = false;
    port.receiving = false;
    port.notifyPending = false;
    if (port.confirmsTransmit) {
      this.confirmingPorts--;
      // Frames this port never got to transmit: their senders learn they did not go out.
      for (let f = port.queue.shift(); f !== undefined; f = port.queue.shift()) {
        port.stats.rxDiscardedClosed++;
        this.confirm(f, false);
      }
    }
    port.stats.rxDiscardedClosed += port.flush();
    this.ports = Object.freeze(this.ports.filter((p) => p !== port));
    this.sizePool();
  }

  /** Keep as many free frames as the releasing ports' queues can hold (see FramePool.setMaxFree). */
  sizePool(): void {
    let n = 0;
    for (const p of this.ports) if (p.releasesFrames) n += p.queueLimit;
    this.pool.setMaxFree(n);
  }

  /** Counts one confirmation for `frame`; completes the sender's request when all are in. */
  confirm(frame: CanFrame, ok: boolean): void {
    const p = this.awaiting.get(frame);
    if (p === undefined) return;
    if (!ok) p.ok = false;
    if (--p.remaining > 0) return;
    this.awaiting.delete(frame);
    this.completeTx(p.sender, p.token, p.ok);
  }

  completeTx(sender: Port, token: number, ok: boolean): void {
    if (!sender.attached) return;
    try {
      sender.handler.onTxComplete?.(token, ok);
    } catch (err) {
      this.handlerFailed(err, sender);
    }
  }

  transmit(sender: Port, frame: CanFrame, token?: number): TxResult {
    if (!sender.attached || validateCanFrame(frame) !== null) {
      sender.stats.txRejected++;
      return 'dropped';
    }
    const now = this.clock();
    const stamped = this.copy(frame, now, sender.id);
    const payload = frame.rtr ? 0 : frame.len;
    const bits = canFrameBits(frame);
    const dataBits = canFrameDataPhaseBits(frame);
    sender.stats.txFrames++;
    sender.stats.txBytes += payload;
    this.frames++;
    this.bytes += payload;
    this.bits += bits;
    this.load.add(now, (bits - dataBits) / this.bitrate + dataBits / this.dataBitrate);

    // With a confirming port on the bus a sender that can take a late completion gets one.
    const tok = token !== undefined && this.confirmingPorts > 0 ? token : -1;
    if (this.delivering) {
      // Called from inside a handler: deliver after the frame being fanned out (FIFO), not recursively.
      this.pendingFrames.push(stamped);
      this.pendingSenders.push(sender);
      this.pendingTokens.push(tok);
      return tok >= 0 ? 'pending' : 'sent';
    }
    let result: TxResult = 'sent';
    this.delivering = true;
    try {
      if (this.fanOut(stamped, sender, tok) > 0) result = 'pending';
      stamped.drop(); // the fan-out's hold: receivers that queued it hold (or pinned) it now
      while (this.pendingFrames.size > 0) {
        const f = this.pendingFrames.shift()!;
        const s = this.pendingSenders.shift()!;
        const t = this.pendingTokens.shift()!;
        // A deferred transmit already answered 'pending': complete it now if nobody must confirm.
        if (this.fanOut(f, s, t) === 0 && t >= 0) this.completeTx(s, t, true);
        f.drop();
      }
    } finally {
      this.delivering = false;
      // Only non-empty if fanOut itself threw (a bug): do not deliver stale frames on the next transmit
      // (they keep their fan-out hold, so they are never reused: the garbage collector takes them).
      this.pendingFrames.clear();
      this.pendingSenders.clear();
      this.pendingTokens.clear();
    }
    if (this.failed) {
      const cause = this.firstError;
      const portName = this.failedPortName;
      this.failed = false;
      this.firstError = undefined;
      this.failedPortName = '';
      throw new CanHubError(
        'ERR_BUS_HANDLER_FAILED',
        `hub ${this.hubName}: handler of port ${portName} threw in onFramesAvailable`,
        { cause },
      );
    }
    return result;
  }

  /** The bus copy of `f`: a pooled frame with the same fields and bytes, stamped. */
  copy(f: CanFrame, timestampNs: bigint, origin: number): PooledFrame {
    const src = f.data;
    const c = this.pool.acquire(src.length);
    c.id = f.id;
    c.extended = f.extended;
    c.rtr = f.rtr;
    c.fd = f.fd;
    c.brs = f.brs;
    c.esi = f.esi;
    c.len = f.len;
    c.len8Dlc = f.len8Dlc;
    const dst = c.data;
    // A loop beats TypedArray#set for the usual 0..8 bytes; set() for FD payloads.
    if (src.length <= 8) for (let i = 0; i < src.length; i++) dst[i] = src[i]!;
    else dst.set(src);
    c.timestampNs = timestampNs;
    c.origin = origin;
    return c;
  }

  /**
   * Queues `frame` for every other port, then notifies those that got it. Returns how many
   * confirming ports must still confirm it (0 when `token` < 0 or none took it). No allocation
   * unless a confirmation is awaited.
   */
  fanOut(frame: PooledFrame, sender: Port, token: number): number {
    const ports = this.ports; // stable snapshot: attach/detach replace the array
    const n = ports.length;
    const payload = frame.rtr ? 0 : frame.len;
    let queuedAny = false;
    let confirmations = 0;
    let refusedByConfirming = false;
    for (let i = 0; i < n; i++) {
      const p = ports[i]!;
      if (p === sender || !p.attached) continue;
      const st = p.stats;
      if (!p.accepts(frame)) {
        st.rxFiltered++;
        if (p.confirmsTransmit) refusedByConfirming = true; // that bus cannot carry it
      } else if (!p.receiving) {
        st.rxDiscardedClosed++;
        if (p.confirmsTransmit) refusedByConfirming = true;
      } else if (p.queue.size >= p.queueLimit) {
        st.rxDroppedOverflow++;
        this.droppedOverflow++;
        if (p.confirmsTransmit) refusedByConfirming = true;
      } else {
        p.queue.push(frame);
        if (p.releasesFrames) frame.hold();
        else frame.pin();
        st.rxFrames++;
        st.rxBytes += payload;
        p.notifyPending = true;
        queuedAny = true;
        if (p.confirmsTransmit) confirmations++;
      }
    }
    if (token >= 0 && (confirmations > 0 || refusedByConfirming)) {
      // Registered before any handler runs, so a confirmation from inside a handler is counted.
      this.awaiting.set(frame, { sender, token, remaining: confirmations + 1, ok: !refusedByConfirming });
    } else {
      confirmations = 0;
    }
    if (queuedAny) this.notify(ports);
    if (confirmations > 0 || (token >= 0 && refusedByConfirming)) {
      // Drop the extra count taken above now that every handler ran; completes if all confirmed.
      this.confirm(frame, !refusedByConfirming);
      return 1;
    }
    return 0;
  }

  notify(ports: readonly Port[]): void {
    const n = ports.length;
    // Notify only after every receiver has the frame, so a handler that transmits, detaches or drains
    // sees a consistent bus (its nested transmit is deferred to the FIFO anyway).
    for (let i = 0; i < n; i++) {
      const p = ports[i]!;
      if (!p.notifyPending) continue;
      p.notifyPending = false;
      if (!p.attached || p.queue.size === 0) continue; // detached or flushed by an earlier handler
      try {
        p.handler.onFramesAvailable();
      } catch (err) {
        this.handlerFailed(err, p);
      }
    }
  }

  handlerFailed(err: unknown, port: Port): void {
    if (this.onHandlerError !== undefined) {
      try {
        this.onHandlerError(err, port);
        return;
      } catch (reportErr) {
        err = reportErr; // the reporter itself failed: fall back to throwing from transmit
      }
    }
    if (!this.failed) {
      this.failed = true;
      this.firstError = err;
      this.failedPortName = port.name;
    }
  }

  findPort(idOrName: number | string): Port | undefined {
    for (const p of this.ports) {
      if (typeof idOrName === 'number' ? p.id === idOrName : p.name === idOrName) return p;
    }
    return undefined;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const p of this.ports) this.detach(p);
    this.pendingFrames.clear();
    this.pendingSenders.clear();
    this.pendingTokens.clear();
    this.awaiting.clear();
  }
}

/** A virtual CAN bus. See the module comment for the delivery semantics. */
export class CanHub {
  readonly #engine: BusEngine;

  /** Throws `ERR_BUS_INVALID_OPTION` for an empty name, a queue limit/bitrate out of range. */
  constructor(opts: CanHubOptions) {
    this.#engine = new BusEngine(this, opts);
  }

  get name(): string {
    return this.#engine.hubName;
  }

  get closed(): boolean {
    return this.#engine.closed;
  }

  /**
   * Adds a port at the end of the fan-out order. Throws `ERR_BUS_CLOSED`, `ERR_BUS_PORT_NAME_IN_USE`,
   * `ERR_BUS_INVALID_OPTION`. A port attached while a frame is being fanned out does not get that frame
   * (it was on the bus before the port joined), but does get frames transmitted afterwards.
   */
  attach(handler: BusPortHandler, opts: AttachOptions): HubPort {
    return this.#engine.attach(handler, opts);
  }

  /** Attached ports in attach order (an immutable snapshot). */
  ports(): readonly HubPort[] {
    return this.#engine.ports;
  }

  /** Counters and bus load now (allocates: not for per-frame use). */
  stats(): BusStats {
    const e = this.#engine;
    return {
      frames: e.frames,
      bytes: e.bytes,
      bits: e.bits,
      droppedOverflow: e.droppedOverflow,
      errorFrames: e.errorFrames,
      ports: e.ports.map((p) => ({ id: p.id, name: p.name, stats: { ...p.stats } })),
      busLoad: e.load.load(e.clock()),
      framePool: e.pool.stats(),
    };
  }

  /**
   * Fault injection: records `state` on the port and calls its `onBusState`. The hub itself does not
   * change delivery (a bus-off port's owner is expected to stop transmitting, as a controller would).
   * Throws `ERR_BUS_UNKNOWN_PORT` / `ERR_BUS_INVALID_OPTION`.
   */
  injectBusState(portIdOrName: number | string, state: BusState): void {
    if (!BUS_STATES.includes(state)) throw invalid(`unknown bus state ${String(state)}`);
    const port = this.#engine.findPort(portIdOrName);
    if (port === undefined) {
      throw new CanHubError('ERR_BUS_UNKNOWN_PORT', `hub ${this.name} has no port ${String(portIdOrName)}`);
    }
    const previous = port.busState;
    port.busState = state;
    port.handler.onBusState?.(state);
    if (previous !== state) {
      this.emitErrorFrame(
        stateErrorFrame(state, {
          timestampNs: this.#engine.clock(),
          origin: port.id,
          restarted: previous === 'bus-off',
        }),
      );
    }
  }

  /**
   * Reports an error event to every port attached with `errorFrames: true` (in attach order; a
   * throwing observer is reported like a failing `onFramesAvailable` and the others still get it).
   * Counted in `BusStats.errorFrames`. Never touches the data path.
   */
  emitErrorFrame(frame: CanErrorFrame): void {
    const e = this.#engine;
    if (e.closed) return;
    e.errorFrames++;
    for (const p of e.ports) {
      if (!p.wantsErrorFrames || !p.attached) continue;
      try {
        p.handler.onErrorFrame?.(frame);
      } catch (err) {
        e.handlerFailed(err, p);
      }
    }
  }

  /** The bus clock (ns), as used for frame timestamps. */
  now(): bigint {
    return this.#engine.clock();
  }

  /** Detaches every port (in attach order) and refuses new ones. Idempotent. */
  close(): void {
    this.#engine.close();
  }
}

/**
 * Named virtual buses ("virtual:NAME" on the CLI): the first `get(name)` creates the hub, later ones
 * return it, so several devices in one process share a bus by naming it.
 */
export class HubRegistry {
  readonly #hubs = new Map<string, CanHub>();
  readonly #defaults: Omit<CanHubOptions, 'name'>;

  /** `defaults` apply to every hub the registry creates (e.g. the process clock, bit rates). */
  constructor(defaults: Omit<CanHubOptions, 'name'> = {}) {
    this.#defaults = defaults;
  }

  /** The hub called `name`, created on demand (also when the previous one was closed directly). */
  get(name: string): CanHub {
    checkName(name, 'bus name');
    let hub = this.#hubs.get(name);
    if (hub === undefined || hub.closed) {
      hub = new CanHub({ ...this.#defaults, name });
      this.#hubs.set(name, hub);
    }
    return hub;
  }

  /** True when an open hub called `name` exists (does not create one). */
  has(name: string): boolean {
    const hub = this.#hubs.get(name);
    return hub !== undefined && !hub.closed;
  }

  /** Names of the open hubs, in creation order. */
  names(): string[] {
    const out: string[] = [];
    for (const [name, hub] of this.#hubs) if (!hub.closed) out.push(name);
    return out;
  }

  /** Closes every hub and forgets them. Idempotent. */
  closeAll(): void {
    for (const hub of this.#hubs.values()) hub.close();
    this.#hubs.clear();
  }
}
