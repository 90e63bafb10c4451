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
 * - An observer (attached with `observes`: captures, monitors) has no queue: `onFrame(frame)` is
 *   called during the fan-out, in attach order, with the bus copy, which it reads there and then.
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
import { BUS_STATES, type BusState } from './bus-state.js';
import { type CanErrorFrame, stateErrorFrame } from './can-error.js';
import { type CanFrame, canFrameBits, canFrameDataPhaseBits, validateCanFrame } from './can-frame.js';
import { CanHubError } from './errors.js';
import {
  type AckMode,
  type ActiveFault,
  type BusTiming,
  checkFault,
  checkTiming,
  type FaultOptions,
  MAX_FAULT_DURATION_MS,
  type PortFault,
  TIMED_FAULT_KINDS,
} from './faults.js';
import { FramePool, type FramePoolStats, PooledFrame } from './frame-pool.js';
import { RingQueue } from './ring-queue.js';
import {
  type FaultHits,
  TimedBus,
  type TimedBusStats,
  type TimedHost,
  type TimedNode,
  type TxEntry,
} from './timed-bus.js';

export { BUS_STATES, type BusState };

/**
 * Outcome of `HubPort.transmit`: 'sent' = on the bus (fanned out, or queued for fan-out by the running
 * one); 'dropped' = rejected (port detached, hub closed or invalid frame; counted `txRejected`);
 * 'pending' = accepted, completion reported later via `onTxComplete` (reserved for host interfaces; the
 * virtual hub never returns it).
 */
export type TxResult = 'sent' | 'dropped' | 'pending';

/** Implemented by whoever owns a port. */
export interface BusPortHandler {
  /**
   * Called synchronously after a frame was queued for this port (once per frame); drain with take().
   * Never called for an observer (`observes`), which may leave it empty.
   */
  onFramesAvailable(): void;
  /**
   * For ports attached with `observes`: each frame the port accepts, during the fan-out. The frame
   * is the bus copy: read it in the call, do not keep or change it. Counted `rxFrames`.
   */
  onFrame?(frame: CanFrame): void;
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
  // Faults and the timed bus (all 0 on an untimed bus without faults).
  /** Frames a `drop` fault took off before they reached the bus (the sender was told 'sent'). */
  txFaultDropped: number;
  /** Frames a `delay` fault held back (each counted once, when it was held). */
  txDelayed: number;
  /** Frames refused because the port was bus-off (timed bus, or a bus-state fault holding it there). */
  txBusOff: number;
  /** Frames waiting for the bus that were dropped because the port stopped, went bus-off or left. */
  txAborted: number;
  /** Transmission attempts of this port that failed on a timed bus (sent again automatically). */
  txBusErrors: number;
  /** Errors this port saw as a receiver on a timed bus (destroyed frames, frames it could not decode). */
  rxBusErrors: number;
  /** Arbitrations this port's waiting frame lost on a timed bus. */
  arbitrationLost: number;
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
  /** True for ports attached with `observes` (no queue: frames go to `onFrame`). */
  readonly observes: boolean;
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
  /**
   * The controller state: on an untimed bus the last one injected with `CanHub.injectBusState`
   * (informational, the hub does not enforce it); on a timed bus it follows the error counters.
   */
  readonly busState: BusState;
  /** Transmit / receive error counters (ISO 11898-1); they move on a timed bus and with injected states. */
  readonly tec: number;
  readonly rec: number;
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
  /**
   * The owner only looks at frames as they pass (a capture, a monitor tap): each one it accepts is
   * handed to `onFrame` during the fan-out, with no queue, no take() and no release(), so it cannot
   * overflow and costs the bus least. Excludes `confirmsTransmit` and `releasesFrames`.
   */
  readonly observes?: boolean | undefined;
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
  /**
   * Makes the bus timed (see timed-bus.ts): frames wait for the bus, arbitrate and take their
   * exact time on the wire; error counters and states follow. Needs `clock` and `timer`.
   */
  readonly timing?: BusTiming | undefined;
  /**
   * The hub's wake-ups at a deadline of its clock (a timed bus, `delay` faults, fault durations):
   * called once, with the function to call at the deadline. Without it those features are refused.
   */
  readonly timer?: HubTimerFactory | undefined;
}

/** One wake-up at a time for a hub, at a deadline of the hub's clock (the node layer's timers). */
export interface HubTimer {
  /**
   * Asks for one call of the wake function at `deadlineNs` (hub clock, as a number of ns) or as
   * soon after as possible; a deadline already past means "as soon as possible". Replaces the
   * previous request.
   */
  arm(deadlineNs: number): void;
  /** Cancels the request. */
  disarm(): void;
  /** Releases the timer (the hub closed). */
  close(): void;
}

export type HubTimerFactory = (wake: () => void) => HubTimer;

export interface PortStatsSnapshot {
  readonly id: number;
  readonly name: string;
  readonly stats: Readonly<PortStats>;
  readonly busState: BusState;
  readonly tec: number;
  readonly rec: number;
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
  /** A timed bus's figures (null on an untimed bus). `busLoad` is then the real busy share. */
  readonly timing: TimedBusStats | null;
  /** Faults injected and not ended (`CanHub.faults()`). */
  readonly faults: number;
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

/** An injected fault (`CanHub.injectFault`), bound to a port name. */
interface FaultRecord extends FaultHits {
  readonly id: number;
  readonly portName: string;
  readonly fault: PortFault;
  readonly durationNs: number | null;
  /** Bus time it took effect (null: waiting for its port). */
  since: number | null;
  /** Bus time it ends by itself (Infinity: until cleared). */
  until: number;
  /** The attached port it acts on now. */
  port: Port | null;
  hits: number;
}

/** The counters a forced state implies (ISO 11898-1 thresholds). */
function forceCounters(p: Port, state: BusState): void {
  switch (state) {
    case 'error-active':
      p.tec = 0;
      p.rec = 0;
      break;
    case 'error-warning':
      p.tec = Math.min(Math.max(p.tec, 96), 127);
      p.rec = Math.min(p.rec, 127);
      break;
    case 'error-passive':
      p.tec = Math.min(Math.max(p.tec, 128), 255);
      break;
    case 'bus-off':
      p.tec = Math.max(p.tec, 256);
      break;
  }
}

/** A frame a `delay` fault holds back, and when it may go. */
interface Delayed {
  frame: PooledFrame;
  token: number;
  due: number;
}

const NO_TYPES: PortAcceptPolicy = Object.freeze({ classic: false, fd: false, rtr: false });

/** The port object handed to owners. Not exported: the hub engine reaches its fields, owners see HubPort. */
class Port implements HubPort, TimedNode {
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
    txFaultDropped: 0,
    txDelayed: 0,
    txBusOff: 0,
    txAborted: 0,
    txBusErrors: 0,
    rxBusErrors: 0,
    arbitrationLost: 0,
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
  /** Attached with `observes`: frames go to `handler.onFrame` during the fan-out, never queued. */
  observes = false;
  /** Frames taken from a releasing port and not released yet (guards against stray releases). */
  outstanding = 0;
  // Fault confinement (timed bus; injected states set them too).
  tec = 0;
  rec = 0;
  tecFloor = 0;
  /**
   * Transmits take the slow path (`BusEngine.transmitSpecial`): a timed bus, an active fault, or
   * frames still held by a delay. One boolean read on the hot path.
   */
  special = false;
  // Active faults of this port (their records count hits).
  dropFault: FaultRecord | null = null;
  dropAcc = 0;
  delayFault: FaultRecord | null = null;
  delayLine: RingQueue<Delayed> | null = null;
  stateFault: FaultRecord | null = null;
  mismatchFault: FaultRecord | null = null;
  noAckFault: FaultRecord | null = null;
  /** Frames waiting for a timed bus. */
  readonly txq = new RingQueue<TxEntry>(4);
  notBefore = 0;
  /** The owner's accept policy (the effective one refuses everything while its bit rate is wrong). */
  ownerPolicy: PortAcceptPolicy = ALL_TYPES;

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
    // A stopped controller also gives up what it had waiting to transmit.
    if (this.special) this.engine.abortTx(this);
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
    this.ownerPolicy = checkPolicy(policy);
    this.applyPolicy();
  }

  /** The effective policy: the owner's, or nothing while a bit-rate mismatch makes frames unreadable. */
  applyPolicy(): void {
    const p = this.mismatchFault === null ? this.ownerPolicy : NO_TYPES;
    this.acceptPolicy = this.ownerPolicy;
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
class BusEngine implements TimedHost {
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
  /** Present on a timed bus. */
  readonly timed: TimedBus | null;
  readonly timerFactory: HubTimerFactory | undefined;
  timer: HubTimer | null = null;
  /** Bus time the timer is armed for (Infinity: not armed). */
  armedAt = Number.POSITIVE_INFINITY;
  /** Inside onWake: arming waits for its end. */
  waking = false;
  /**
   * Hub clock value of bus time 0 (bus times are numbers of ns from here): read at creation on a
   * timed bus, at the first need otherwise (so an untimed hub reads its clock only for frames).
   */
  origin = 0n;
  originNum = 0;
  originSet = false;
  /** Hub clock of the timed bus's last event (timestamps of the state changes it causes). */
  eventNs = 0n;
  readonly faultList: FaultRecord[] = [];
  nextFaultId = 1;

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
    if (opts.timer !== undefined && typeof opts.timer !== 'function') {
      throw invalid('timer must be a function (wake) => HubTimer');
    }
    this.timerFactory = opts.timer;
    if (opts.timing === undefined) {
      this.timed = null;
    } else {
      const t = checkTiming(opts.timing);
      if (typeof t === 'string') throw invalid(`hub ${this.hubName}: ${t}`);
      if (opts.clock === undefined || opts.timer === undefined) {
        throw invalid(`hub ${this.hubName}: a timed bus needs a clock and a timer`);
      }
      this.timed = new TimedBus(t, this);
      this.relNow();
    }
  }

  // ---- time and wake-ups ----------------------------------------------------------------------

  /** Bus time now (ns from the origin). */
  relNow(): number {
    const now = this.clock();
    if (!this.originSet) {
      this.originSet = true;
      this.origin = now;
      this.originNum = Number(now);
    }
    return Number(now - this.origin);
  }

  stamp(t: number): bigint {
    return this.origin + BigInt(Math.round(t));
  }

  /** Arms the wake-up at bus time `t` unless one is armed earlier (or onWake will re-arm). */
  armAt(t: number): void {
    if (this.waking || t >= this.armedAt || this.closed) return;
    this.armedAt = t;
    this.timer ??= this.timerFactory!(() => this.onWake());
    // A deadline in the past (or -Infinity: "at once") fires as soon as the event loop polls.
    this.timer.arm(this.originNum + (t > 0 ? t : 0));
  }

  /** Arms for the earliest thing that is due next (or disarms). */
  rearm(): void {
    let t = Number.POSITIVE_INFINITY;
    if (this.timed !== null) t = this.timed.nextEvent();
    for (const p of this.ports) {
      const d = p.delayLine?.peek();
      if (d !== undefined && d.due < t) t = d.due;
    }
    for (const r of this.faultList) if (r.until < t) t = r.until;
    this.armedAt = Number.POSITIVE_INFINITY;
    if (t === Number.POSITIVE_INFINITY) this.timer?.disarm();
    else this.armAt(t);
  }

  /** The timer fired: fault ends, delayed frames, the timed bus's events; then re-arm. */
  onWake(): void {
    if (this.closed) return;
    this.armedAt = Number.POSITIVE_INFINITY;
    this.waking = true;
    try {
      const now = this.relNow();
      for (const r of [...this.faultList]) if (r.until <= now) this.removeFault(r);
      for (const p of this.ports)
        if (p.delayLine !== null && p.delayLine.size > 0) this.releaseDelayed(p, now);
      this.timed?.advance(now);
    } finally {
      this.waking = false;
    }
    this.rearm();
    this.throwIfFailed('a bus wake-up');
  }

  /** Throws ERR_BUS_HANDLER_FAILED for a handler failure recorded meanwhile (no onHandlerError). */
  throwIfFailed(what: string): void {
    if (!this.failed) return;
    const cause = this.firstError;
    const portName = this.failedPortName;
    this.failed = false;
    this.firstError = undefined;
    this.failedPortName = '';
    throw new CanHubError(
      'ERR_BUS_HANDLER_FAILED',
      `hub ${this.hubName}: handler of port ${portName} threw during ${what}`,
      { cause },
    );
  }

  // ---- the slow transmit path: timed bus, faults --------------------------------------------

  /** Whether `p`'s transmits take the slow path. */
  refreshSpecial(p: Port): void {
    p.special =
      this.timed !== null ||
      p.dropFault !== null ||
      p.delayFault !== null ||
      p.stateFault !== null ||
      p.mismatchFault !== null ||
      p.noAckFault !== null ||
      (p.delayLine !== null && p.delayLine.size > 0);
  }

  transmitSpecial(sender: Port, frame: CanFrame, token: number | undefined): TxResult {
    if (!sender.attached || validateCanFrame(frame) !== null) {
      sender.stats.txRejected++;
      return 'dropped';
    }
    const held = sender.stateFault;
    if (sender.busState === 'bus-off' && (this.timed !== null || held !== null)) {
      // A bus-off controller cannot send: refused, and its owner is told again.
      sender.stats.txBusOff++;
      if (held !== null) held.hits++;
      this.tellOwner(sender, 'bus-off');
      return 'dropped';
    }
    if (held !== null && (held.fault as { state: BusState }).state === 'bus-off') {
      // Restarted while the fault holds it: bus-off again at its first transmission.
      held.hits++;
      sender.stats.txBusOff++;
      this.forceState(sender, 'bus-off', false);
      return 'dropped';
    }
    const drop = sender.dropFault;
    if (drop !== null) {
      sender.dropAcc += (drop.fault as { ratio: number }).ratio;
      if (sender.dropAcc >= 1 - 1e-9) {
        sender.dropAcc -= 1;
        drop.hits++;
        sender.stats.txFaultDropped++;
        return 'sent';
      }
    }
    const tok = token ?? -1;
    const line = sender.delayLine;
    if (sender.delayFault !== null || (line !== null && line.size > 0)) {
      // Held back (behind anything still held, so the order stays).
      const now = this.relNow();
      const delay = sender.delayFault === null ? 0 : (sender.delayFault.fault as { ms: number }).ms * 1e6;
      if (sender.delayFault !== null) sender.delayFault.hits++;
      const copy = this.copy(frame, 0n, sender.id);
      const q = line ?? new RingQueue<Delayed>();
      sender.delayLine = q;
      q.push({ frame: copy, token: tok, due: now + delay });
      sender.stats.txDelayed++;
      sender.special = true;
      this.armAt(now + delay);
      return tok >= 0 ? 'pending' : 'sent';
    }
    if (this.timed !== null) {
      const copy = this.copy(frame, 0n, sender.id);
      if (!this.timed.submit(sender, copy, tok, this.relNow())) {
        copy.drop();
        sender.stats.txRejected++;
        return 'dropped';
      }
      if (this.timed.idle) this.armAt(this.relNow());
      return tok >= 0 ? 'pending' : 'sent';
    }
    return this.transmit(sender, frame, token, true);
  }

  /** Puts the frames of `p` whose delay ended on the bus, in order. */
  releaseDelayed(p: Port, now: number): void {
    const line = p.delayLine!;
    for (let d = line.peek(); d !== undefined && d.due <= now; d = line.peek()) {
      line.shift();
      if (!p.attached) {
        d.frame.drop();
        continue;
      }
      if (this.timed !== null) {
        if (!this.timed.submit(p, d.frame, d.token, d.due)) {
          d.frame.drop();
          p.stats.txRejected++;
          if (d.token >= 0) this.completeTx(p, d.token, false);
        }
        continue;
      }
      const r = this.transmit(p, d.frame, d.token >= 0 ? d.token : undefined, true);
      d.frame.drop();
      if (d.token >= 0 && r !== 'pending') this.completeTx(p, d.token, r === 'sent');
    }
    this.refreshSpecial(p);
  }

  /** Drops what `p` has waiting to transmit (timed queue, delay line); its senders' requests fail. */
  abortTx(p: Port): void {
    let n = 0;
    if (this.timed !== null) n += this.timed.abort(p);
    const line = p.delayLine;
    if (line !== null) {
      for (let d = line.shift(); d !== undefined; d = line.shift()) {
        n++;
        d.frame.drop();
        if (d.token >= 0) this.completeTx(p, d.token, false);
      }
    }
    p.stats.txAborted += n;
    this.refreshSpecial(p);
  }

  // ---- TimedHost --------------------------------------------------------------------------------

  nodes(): readonly TimedNode[] {
    return this.ports;
  }

  deliver(frame: PooledFrame, sender: TimedNode, token: number): void {
    const s = sender as Port;
    const payload = frame.rtr ? 0 : frame.len;
    s.stats.txFrames++;
    s.stats.txBytes += payload;
    this.frames++;
    this.bytes += payload;
    this.bits += canFrameBits(frame);
    let confirming = 0;
    this.delivering = true;
    try {
      confirming = this.fanOut(frame, s, token);
    } finally {
      this.delivering = false;
    }
    frame.drop();
    if (token >= 0 && confirming === 0) this.completeTx(s, token, true);
  }

  fail(sender: TimedNode, token: number): void {
    this.completeTx(sender as Port, token, false);
  }

  changeState(port: TimedNode, state: BusState): void {
    try {
      this.setState(port as Port, state, false, this.eventNs);
    } catch (err) {
      this.handlerFailed(err, port as Port);
    }
  }

  busy(endNs: bigint, seconds: number): void {
    this.eventNs = endNs;
    this.load.add(endNs, seconds);
  }

  emitErrorFrame(frame: CanErrorFrame): void {
    if (this.closed) return;
    this.errorFrames++;
    for (const p of this.ports) {
      if (!p.wantsErrorFrames || !p.attached) continue;
      try {
        p.handler.onErrorFrame?.(frame);
      } catch (err) {
        this.handlerFailed(err, p);
      }
    }
  }

  // ---- controller states ------------------------------------------------------------------------

  /**
   * Records `state`, tells the owner (always, or only on a change), reports a change to observers
   * (with the counters on a timed bus). Bus-off drops what the port had waiting.
   */
  setState(p: Port, state: BusState, always: boolean, timestampNs: bigint): void {
    const previous = p.busState;
    p.busState = state;
    if (state === 'bus-off' && previous !== 'bus-off' && p.special) this.abortTx(p);
    if (always || previous !== state) p.handler.onBusState?.(state);
    if (previous !== state) {
      this.emitErrorFrame(
        stateErrorFrame(state, {
          timestampNs,
          origin: p.id,
          restarted: previous === 'bus-off',
          ...(this.timed === null ? {} : { tec: p.tec, rec: p.rec }),
        }),
      );
    }
  }

  /** A state imposed from outside (injectBusState, a bus-state fault): counters follow it. */
  forceState(p: Port, state: BusState, always: boolean): void {
    forceCounters(p, state);
    if (state === 'error-active') p.notBefore = 0;
    this.setState(p, state, always, this.clock());
  }

  tellOwner(p: Port, state: BusState): void {
    p.handler.onBusState?.(state);
  }

  // ---- faults -----------------------------------------------------------------------------------

  injectFault(ref: number | string, fault: PortFault, opts: FaultOptions | undefined): number {
    if (this.closed) throw new CanHubError('ERR_BUS_CLOSED', `hub ${this.hubName} is closed`);
    const f = checkFault(fault);
    if (typeof f === 'string') throw invalid(f);
    if (TIMED_FAULT_KINDS.has(f.kind) && this.timed === null) {
      throw new CanHubError(
        'ERR_BUS_NOT_TIMED',
        `hub ${this.hubName}: a ${f.kind} fault needs a timed bus (give the bus a bit rate)`,
      );
    }
    let durationNs: number | null = null;
    const ms = opts?.durationMs;
    if (ms !== undefined) {
      if (typeof ms !== 'number' || !Number.isFinite(ms) || ms <= 0 || ms > MAX_FAULT_DURATION_MS) {
        throw invalid(`durationMs must be a number in (0, ${MAX_FAULT_DURATION_MS}], got ${String(ms)}`);
      }
      durationNs = ms * 1e6;
    }
    if ((durationNs !== null || f.kind === 'delay') && this.timerFactory === undefined) {
      throw invalid(`hub ${this.hubName}: fault durations and delays need a timer (CanHubOptions.timer)`);
    }
    const name = this.portNameOf(ref);
    // One fault per kind per port: a new one replaces the old. A state fault replaced by another
    // goes straight to the new state (no error-active in between for observers to see).
    for (const r of [...this.faultList])
      if (r.portName === name && r.fault.kind === f.kind) this.removeFault(r, f.kind !== 'bus-state');
    const rec: FaultRecord = {
      id: this.nextFaultId++,
      portName: name,
      fault: f,
      durationNs,
      since: null,
      until: Number.POSITIVE_INFINITY,
      port: null,
      hits: 0,
    };
    this.faultList.push(rec);
    const port = this.ports.find((p) => p.name === name);
    if (port !== undefined) this.activate(rec, port);
    if (!this.waking) this.rearm();
    return rec.id;
  }

  /** A port's name from its id (must be attached) or its name (need not be). */
  portNameOf(ref: number | string): string {
    if (typeof ref === 'number') {
      const p = this.findPort(ref);
      if (p === undefined)
        throw new CanHubError('ERR_BUS_UNKNOWN_PORT', `hub ${this.hubName} has no port ${ref}`);
      return p.name;
    }
    return checkName(ref, 'port name');
  }

  activate(rec: FaultRecord, p: Port): void {
    const now = this.relNow();
    if (rec.since === null) {
      rec.since = now;
      if (rec.durationNs !== null) rec.until = now + rec.durationNs;
    }
    rec.port = p;
    const f = rec.fault;
    switch (f.kind) {
      case 'drop':
        p.dropFault = rec;
        p.dropAcc = 0;
        break;
      case 'delay':
        p.delayFault = rec;
        break;
      case 'bitrate-mismatch':
        p.mismatchFault = rec;
        p.applyPolicy();
        break;
      case 'no-ack':
        p.noAckFault = rec;
        break;
      case 'error-frames':
        this.timed!.addInjector(p, f.perSecond, now, rec);
        break;
      case 'bus-state':
        p.stateFault = rec;
        p.tecFloor = f.state === 'error-passive' ? 128 : f.state === 'error-warning' ? 96 : 0;
        this.refreshSpecial(p);
        this.forceState(p, f.state, true);
        break;
    }
    this.refreshSpecial(p);
  }

  deactivate(rec: FaultRecord, restore = true): void {
    const p = rec.port;
    rec.port = null;
    if (p === null) return;
    const f = rec.fault;
    switch (f.kind) {
      case 'drop':
        p.dropFault = null;
        break;
      case 'delay':
        p.delayFault = null;
        break;
      case 'bitrate-mismatch':
        p.mismatchFault = null;
        p.applyPolicy();
        break;
      case 'no-ack':
        p.noAckFault = null;
        break;
      case 'error-frames':
        this.timed?.removeInjector(rec);
        break;
      case 'bus-state':
        p.stateFault = null;
        p.tecFloor = 0;
        // Back to normal, unless bus-off: a bus-off controller waits for its owner's restart.
        if (restore && p.attached && p.busState === f.state && f.state !== 'bus-off')
          this.forceState(p, 'error-active', true);
        break;
    }
    this.refreshSpecial(p);
  }

  removeFault(rec: FaultRecord, restore = true): void {
    const i = this.faultList.indexOf(rec);
    if (i < 0) return;
    this.faultList.splice(i, 1);
    this.deactivate(rec, restore);
  }

  faultSnapshot(r: FaultRecord): ActiveFault {
    return {
      id: r.id,
      port: r.portName,
      portId: r.port?.id ?? null,
      fault: r.fault,
      durationMs: r.durationNs === null ? null : r.durationNs / 1e6,
      sinceNs: r.since === null ? null : this.stamp(r.since),
      untilNs: r.since === null || r.until === Number.POSITIVE_INFINITY ? null : this.stamp(r.until),
      hits: r.hits,
    };
  }

  attach(handler: BusPortHandler, opts: AttachOptions): Port {
    if (this.closed) throw new CanHubError('ERR_BUS_CLOSED', `hub ${this.hubName} is closed`);
    const name = checkName(opts?.name, 'port name');
    if (opts.observes !== undefined && typeof opts.observes !== 'boolean') {
      throw invalid(`port ${name}: observes must be a boolean`);
    }
    if (opts.observes === true) {
      if (typeof handler?.onFrame !== 'function') throw invalid(`port ${name}: an observer needs onFrame()`);
      if (opts.releasesFrames === true || opts.confirmsTransmit === true) {
        throw invalid(`port ${name}: observes excludes releasesFrames and confirmsTransmit`);
      }
    } else if (typeof handler?.onFramesAvailable !== 'function') {
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
    if (opts.observes === true) port.observes = true;
    this.ports = Object.freeze([...this.ports, port]);
    this.sizePool();
    this.refreshSpecial(port);
    // Faults waiting for a port of this name take effect now.
    for (const r of this.faultList) if (r.portName === name && r.port === null) this.activate(r, port);
    return port;
  }

  detach(port: Port): void {
    if (!port.attached) return;
    port.attached = false;
    port.receiving = false;
    port.notifyPending = false;
    if (port.special) {
      this.abortTx(port);
      // Its faults wait for the next port of that name (a guest that reconnects).
      for (const r of this.faultList) if (r.port === port) this.deactivate(r);
    }
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

  transmit(sender: Port, frame: CanFrame, token?: number, plain?: boolean): TxResult {
    if (sender.special && plain !== true) return this.transmitSpecial(sender, frame, token);
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
      } else if (p.observes) {
        st.rxFrames++;
        st.rxBytes += payload;
        try {
          p.handler.onFrame!(frame);
        } catch (err) {
          this.handlerFailed(err, p);
        }
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
    for (const p of this.ports) this.detach(p);
    this.closed = true;
    this.faultList.length = 0;
    this.timer?.close();
    this.timer = null;
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
      ports: e.ports.map((p) => ({
        id: p.id,
        name: p.name,
        stats: { ...p.stats },
        busState: p.busState,
        tec: p.tec,
        rec: p.rec,
      })),
      busLoad: e.load.load(e.clock()),
      framePool: e.pool.stats(),
      timing: e.timed === null ? null : e.timed.stats(e.relNow()),
      faults: e.faultList.length,
    };
  }

  /** The timing of a timed bus (null: untimed, frames are delivered at once). */
  get timing(): { readonly bitrate: number; readonly dataBitrate: number; readonly ack: AckMode } | null {
    const t = this.#engine.timed;
    return t === null ? null : { bitrate: t.bitrate, dataBitrate: t.dataBitrate, ack: t.ack };
  }

  /**
   * Injects a fault on a port (by id: an attached port; by name: also one that is not attached yet,
   * the fault then waits for it). A port has one fault of each kind: a second one replaces the
   * first. Returns the fault's id. Throws `ERR_BUS_INVALID_OPTION` (bad fault or duration, or a
   * duration/delay on a hub without a timer), `ERR_BUS_NOT_TIMED` (a timing fault on an untimed
   * bus), `ERR_BUS_UNKNOWN_PORT` (an id no attached port has), `ERR_BUS_CLOSED`.
   */
  injectFault(port: number | string, fault: PortFault, opts?: FaultOptions): number {
    return this.#engine.injectFault(port, fault, opts);
  }

  /** Ends a fault; false when no fault has that id (it ended or never existed). */
  clearFault(id: number): boolean {
    const e = this.#engine;
    const r = e.faultList.find((x) => x.id === id);
    if (r === undefined) return false;
    e.removeFault(r);
    if (!e.waking) e.rearm();
    return true;
  }

  /** Ends every fault, or those of one port (id or name); returns how many ended. */
  clearFaults(port?: number | string): number {
    const e = this.#engine;
    const name = port === undefined ? undefined : e.portNameOf(port);
    const gone = e.faultList.filter((r) => name === undefined || r.portName === name);
    for (const r of gone) e.removeFault(r);
    if (!e.waking) e.rearm();
    return gone.length;
  }

  /** The faults in force or waiting for their port, oldest first (snapshots). */
  faults(): readonly ActiveFault[] {
    const e = this.#engine;
    return e.faultList.map((r) => e.faultSnapshot(r));
  }

  /**
   * Sets a port's controller state: records it, sets the error counters to match (error-active
   * resets both to 0: a restart), calls the port's `onBusState` and reports a change to observers.
   * On an untimed bus the hub does not change delivery (a bus-off port's owner is expected to stop
   * transmitting, as a controller would); on a timed bus a bus-off port's waiting frames are
   * dropped and it cannot transmit until it is set back to error-active.
   * Throws `ERR_BUS_UNKNOWN_PORT` / `ERR_BUS_INVALID_OPTION`.
   */
  injectBusState(portIdOrName: number | string, state: BusState): void {
    if (!BUS_STATES.includes(state)) throw invalid(`unknown bus state ${String(state)}`);
    const port = this.#engine.findPort(portIdOrName);
    if (port === undefined) {
      throw new CanHubError('ERR_BUS_UNKNOWN_PORT', `hub ${this.name} has no port ${String(portIdOrName)}`);
    }
    this.#engine.forceState(port, state, true);
  }

  /**
   * Reports an error event to every port attached with `errorFrames: true` (in attach order; a
   * throwing observer is reported like a failing `onFramesAvailable` and the others still get it).
   * Counted in `BusStats.errorFrames`. Never touches the data path.
   */
  emitErrorFrame(frame: CanErrorFrame): void {
    this.#engine.emitErrorFrame(frame);
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
  readonly #perBus: ((name: string) => Omit<CanHubOptions, 'name'> | undefined) | undefined;

  /**
   * `defaults` apply to every hub the registry creates (e.g. the process clock, bit rates);
   * `perBus(name)` adds options for one bus (e.g. the timing of a timed bus).
   */
  constructor(
    defaults: Omit<CanHubOptions, 'name'> = {},
    perBus?: (name: string) => Omit<CanHubOptions, 'name'> | undefined,
  ) {
    this.#defaults = defaults;
    this.#perBus = perBus;
  }

  /** The hub called `name`, created on demand (also when the previous one was closed directly). */
  get(name: string): CanHub {
    checkName(name, 'bus name');
    let hub = this.#hubs.get(name);
    if (hub === undefined || hub.closed) {
      hub = new CanHub({ ...this.#defaults, ...this.#perBus?.(name), name });
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
