/**
 * The timed bus: a discrete-event model of one CAN bus that the hub drives when it was created with
 * `timing` (CanHubOptions). Pure logic: it is told the time (`advance(now)`) and says when it wants
 * to be woken next (`nextEvent()`); the node layer turns that into timer wake-ups.
 *
 * Model:
 * - Each port has a FIFO of frames waiting for the bus. When the bus is idle, the head frames that
 *   were waiting at that moment arbitrate: the lowest arbitration field wins (`arbitrationKey`:
 *   lower identifier; with the same base identifier a base frame before an extended one; data
 *   before remote; classic data before FD), the others count a lost arbitration and wait. Equal
 *   fields (two nodes sending the same identifier and type): the port attached first wins.
 * - The winner occupies the bus for its exact length (frame-timing.ts) at the nominal and data bit
 *   rates, intermission included; when it ends, every receiver gets it and its sender's request
 *   completes, at that same moment, stamped with the ideal end time.
 * - Time is a number of nanoseconds from the bus's origin. A wake-up that comes late handles every
 *   event that is due, in time order, with the ideal times (so nothing is reordered and timestamps
 *   stay exact); how late deliveries were is recorded (`lateness`) and a wake-up more than
 *   BEHIND_NS late is counted (`behind`).
 * - A frame handed over while the bus lags the host's clock counts as waiting from the bus's
 *   present (its current frame's end), not from the host's.
 * - Catching up, the bus pauses (`nextEvent()` is then "now") before an arbitration or an idle
 *   period more than PAUSE_FOR_INPUT_NS in the past, when it may lack frames the host has not read
 *   yet: at the first one of a late wake-up, and whenever a port ran out of frames meanwhile (its
 *   owner may answer the completions it just got). Frames handed over during the pause count as
 *   waiting since that point. So a host stall longer than the queued frames last does not leave
 *   the bus idle in bus time while the guests had frames to send; after pauses that brought
 *   nothing (MIN_FRUITLESS_PAUSES, MAX_PAUSE_NS) the bus accepts it was idle.
 * - Fault confinement per port (ISO 11898-1): a transmission that fails adds 8 to the sender's TEC
 *   (an error-passive sender's ACK errors add nothing), a destroyed frame adds 1 to every
 *   receiver's REC; a successful transmission takes 1 from the sender's TEC, a successful
 *   reception 1 from REC (above 127: back to 127). States: warning from 96, passive from 128,
 *   bus-off above 255 (left only by a restart: `CanHub.injectBusState(port, 'error-active')`).
 *   Failed frames are sent again (automatic retransmission) until they go through or their port
 *   goes bus-off or stops.
 * - An error-passive sender waits 8 more bit times after each of its frames (suspend transmission).
 * - Error frames occupy the bus for ERROR_FRAME_BITS at the nominal rate; a frame destroyed by a bit
 *   rate mismatch is detected MISMATCH_DETECT_BITS after its start.
 */
import type { BusState } from './bus-state.js';
import { busErrorFrame, CanErr, CanErrLoc, type CanErrorFrame } from './can-error.js';
import type { AckMode, ResolvedTiming } from './faults.js';
import type { PooledFrame } from './frame-pool.js';
import { ERROR_FRAME_BITS, type FrameBits, frameBits, SUSPEND_TRANSMISSION_BITS } from './frame-timing.js';
import type { RingQueue } from './ring-queue.js';

/** Bits after its start at which the receivers notice a frame sent at the wrong bit rate. */
export const MISMATCH_DETECT_BITS = 8;
/** A wake-up this late (ns) is counted as the host falling behind. */
export const BEHIND_NS = 1_000_000;
/** Frames a port may have waiting for a timed bus; more are refused (`txQueueOverflow`). */
export const TIMED_TX_QUEUE_LIMIT = 4096;
/** Events handled per wake-up at most; the rest on the next turn (a host far behind yields). */
export const MAX_EVENTS_PER_WAKE = 20_000;
/**
 * A wake-up that would arbitrate this far in the past (ns) first lets the host read its inputs:
 * frames guests queued while the host was busy take part in that arbitration.
 */
export const PAUSE_FOR_INPUT_NS = 250_000;
/**
 * Pauses in a row that bring no frame end (the bus accepts it was idle) once there were at least
 * MIN_FRUITLESS_PAUSES of them and MAX_PAUSE_NS of host time went by: both, so a host that is
 * descheduled during the pauses does not give up early, and one that is not does not spin. The
 * first two re-wake at once, the next ones every RETRY_PAUSE_NS.
 */
export const MIN_FRUITLESS_PAUSES = 8;
export const MAX_PAUSE_NS = 2_000_000;
export const RETRY_PAUSE_NS = 50_000;

/** One frame waiting for (or on) the bus. */
export interface TxEntry {
  frame: PooledFrame;
  /** The sender's completion token (-1: none). */
  token: number;
  /** When it was handed to the bus (ns from the origin). */
  enq: number;
  /** `arbitrationKey` of the frame. */
  key: number;
  /** Its port stopped or left while it was on the bus: no retry, no completion. */
  aborted: boolean;
}

/** A fault's counter of what it did (the hub's fault record). */
export interface FaultHits {
  hits: number;
}

/** What the timed bus needs of a hub port (the hub's Port implements it). */
export interface TimedNode {
  readonly id: number;
  readonly name: string;
  readonly attached: boolean;
  readonly receiving: boolean;
  busState: BusState;
  tec: number;
  rec: number;
  /** Lowest TEC while a bus-state fault holds the port in warning/passive. */
  tecFloor: number;
  mismatchFault: FaultHits | null;
  noAckFault: FaultHits | null;
  /** Frames waiting for the bus, oldest first. */
  readonly txq: RingQueue<TxEntry>;
  /** Earliest time this port may start its next frame (suspend transmission). */
  notBefore: number;
  readonly stats: {
    txBusErrors: number;
    rxBusErrors: number;
    arbitrationLost: number;
  };
}

/** What the timed bus needs of the hub. */
export interface TimedHost {
  /** Attached ports in attach order (a stable snapshot). */
  nodes(): readonly TimedNode[];
  /** Hub clock value (ns) of bus time `t`. */
  stamp(t: number): bigint;
  /**
   * `frame` (timestamp set) went on the bus and ended at bus time `end`: count it, fan it out,
   * complete the sender's token (>= 0) and give back the bus's hold on the frame.
   */
  deliver(frame: PooledFrame, sender: TimedNode, token: number): void;
  /** Completes a sender's request that will not be delivered (not ok), without fan-out. */
  fail(sender: TimedNode, token: number): void;
  /** The port's state follows from its counters now: record it, report it, tell its owner. */
  changeState(port: TimedNode, state: BusState): void;
  emitErrorFrame(frame: CanErrorFrame): void;
  /** Bus time seconds for the load meter, ending at hub clock `endNs`. */
  busy(endNs: bigint, seconds: number): void;
}

/** Outcome of a frame on the bus. */
const Fate = { OK: 0, NO_ACK: 1, MISMATCH: 2, DESTROYED: 3 } as const;
type Fate = (typeof Fate)[keyof typeof Fate];

/** What occupies the bus: nothing, a frame, an error frame on an idle bus (an injected error flag). */
const SlotKind = { NONE: 0, FRAME: 1, ERROR: 2 } as const;
type SlotKind = (typeof SlotKind)[keyof typeof SlotKind];

/** An error-frames fault: error flags every `interval` ns from `next` on. */
interface Injector {
  readonly port: TimedNode;
  readonly interval: number;
  next: number;
  readonly record: FaultHits;
}

/**
 * The arbitration field as one number; lower wins. Standard: ID[10:0], RTR (FD: RRS = 0), IDE = 0,
 * then r0/FDF. Extended: ID[28:18], SRR = 1, IDE = 1, ID[17:0], RTR (FD: RRS = 0), r1/FDF. Once the
 * IDE bits differ the rest does not matter, so the low 20 bits hold FDF (standard) or ID[17:0],
 * RTR, FDF (extended).
 */
export function arbitrationKey(id: number, extended: boolean, rtr: boolean, fd: boolean): number {
  const fdf = fd ? 1 : 0;
  const rtrBit = rtr && !fd ? 1 : 0;
  if (!extended) return id * 2 ** 22 + rtrBit * 2 ** 21 + fdf * 2 ** 19;
  const base = id >>> 18;
  const ext = id & 0x3ffff;
  return base * 2 ** 22 + 2 ** 21 + 2 ** 20 + ext * 4 + rtrBit * 2 + fdf;
}

/** The upper edges (us) of `LatenessHistogram.cumulative()` and `TimedBusStats.lateBuckets`. */
export const LATENESS_EDGES_US: readonly number[] = Object.freeze([
  10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 150, 200, 300, 500, 1000, 2000, 5000, 10_000,
]);

/** Delivery lateness, 1 us buckets up to 10 ms, and the largest seen. */
export class LatenessHistogram {
  static readonly BUCKETS = 10_000;
  readonly #counts = new Uint32Array(LatenessHistogram.BUCKETS + 1);
  count = 0;
  maxNs = 0;

  record(ns: number): void {
    const us = ns <= 0 ? 0 : Math.floor(ns / 1000);
    this.#counts[us < LatenessHistogram.BUCKETS ? us : LatenessHistogram.BUCKETS]!++;
    this.count++;
    if (ns > this.maxNs) this.maxNs = ns;
  }

  /** The p-quantile (0..1) in microseconds (upper edge of its bucket); 0 when empty. */
  quantileUs(p: number): number {
    if (this.count === 0) return 0;
    const want = Math.max(1, Math.ceil(p * this.count));
    let seen = 0;
    for (let i = 0; i <= LatenessHistogram.BUCKETS; i++) {
      seen += this.#counts[i]!;
      if (seen >= want) return i < LatenessHistogram.BUCKETS ? i + 1 : Math.ceil(this.maxNs / 1000);
    }
    return Math.ceil(this.maxNs / 1000);
  }

  /**
   * Frames less than `edge` microseconds late, for each edge of LATENESS_EDGES_US (cumulative, as a
   * Prometheus histogram counts): over a window, the difference of two readings.
   */
  cumulative(): number[] {
    const out: number[] = [];
    let seen = 0;
    let i = 0;
    for (const edge of LATENESS_EDGES_US) {
      // Bucket i counts lateness in [i, i + 1) us: under `edge` us is buckets 0 .. edge - 1.
      for (; i < edge && i < LatenessHistogram.BUCKETS; i++) seen += this.#counts[i]!;
      out.push(seen);
    }
    return out;
  }

  reset(): void {
    this.#counts.fill(0);
    this.count = 0;
    this.maxNs = 0;
  }
}

export interface TimedBusStats {
  readonly bitrate: number;
  /** 0 when FD frames are not timed with a bit-rate switch. */
  readonly dataBitrate: number;
  readonly ack: AckMode;
  /** Time the bus was busy (frames, failed attempts, error frames), seconds. */
  readonly busySeconds: number;
  /** Transmission attempts that failed (ACK errors, mismatched senders, injected errors). */
  readonly busErrors: number;
  /** Error frames on an idle bus (injected error flags). */
  readonly idleErrorFrames: number;
  /** Arbitrations a waiting frame lost (one per losing frame per arbitration). */
  readonly arbitrationLost: number;
  /** Frames waiting for the bus now, over all ports. */
  readonly pending: number;
  /** Frames refused because their port had TIMED_TX_QUEUE_LIMIT waiting. */
  readonly txQueueOverflow: number;
  /** Delivery time minus ideal end time, over every frame delivered: median, p99, max (us). */
  readonly lateP50Us: number;
  readonly lateP99Us: number;
  readonly lateMaxUs: number;
  /** Frames delivered, and how many of them less than LATENESS_EDGES_US[i] late (cumulative). */
  readonly lateCount: number;
  readonly lateBuckets: readonly number[];
  /** Frames delivered more than BEHIND_NS after their ideal end. */
  readonly lateFrames: number;
  /** Wake-ups that found the schedule more than BEHIND_NS behind. */
  readonly behind: number;
  /** Wake-ups (timer callbacks) so far. */
  readonly wakeups: number;
  /** Late wake-ups that paused to read the host's inputs before arbitrating in the past. */
  readonly pauses: number;
  /**
   * The bus's present (end of the last thing it carried) and the host clock now, both in seconds
   * from the bus's origin: over a window, busy/bus-time is how saturated the bus was and
   * bus-time/clock how well it kept real time (their product: delivered rate / exact rate).
   */
  readonly busTimeSeconds: number;
  readonly clockSeconds: number;
}

export class TimedBus {
  readonly bitrate: number;
  readonly dataBitrate: number;
  readonly ack: AckMode;
  readonly #nsPerBit: number;
  readonly #nsPerDataBit: number;
  readonly #host: TimedHost;

  // The slot on the bus (one object's fields, reused).
  #kind: SlotKind = SlotKind.NONE;
  #port: TimedNode | null = null;
  #entry: TxEntry | null = null;
  #start = 0;
  #end = 0;
  #fate: Fate = Fate.OK;
  #errorBy: Injector | null = null;
  #busFree = 0;
  #advancing = false;
  /**
   * Set when a late wake-up stopped before an arbitration in the past (bus time of that
   * arbitration): frames handed over until it resumes count as waiting from then on.
   */
  #pausedAt: number | null = null;
  /** A pause would help: a fresh late wake-up, or a port ran out of frames during a catch-up. */
  #needInput = false;
  /** Pauses in a row that brought no frame, and when the first of them began (host time). */
  #fruitless = 0;
  #fruitlessSince = 0;
  /** When a pause wants to be woken (bus time; -Infinity: at once). */
  #resumeAt = Number.NEGATIVE_INFINITY;
  #pauses = 0;
  #injectors: Injector[] = [];
  readonly #bits: FrameBits = { nominal: 0, data: 0, stuff: 0 };
  readonly #free: TxEntry[] = [];

  #pending = 0;
  #busyNs = 0;
  #busErrors = 0;
  #idleErrors = 0;
  #arbitrationLost = 0;
  #txQueueOverflow = 0;
  #lateFrames = 0;
  #behind = 0;
  #wakeups = 0;
  readonly lateness = new LatenessHistogram();

  constructor(timing: ResolvedTiming, host: TimedHost) {
    this.bitrate = timing.bitrate;
    this.dataBitrate = timing.dataBitrate;
    this.ack = timing.ack;
    this.#nsPerBit = 1e9 / timing.bitrate;
    this.#nsPerDataBit = timing.dataBitrate > 0 ? 1e9 / timing.dataBitrate : this.#nsPerBit;
    this.#host = host;
  }

  /** Nanoseconds per nominal bit. */
  get nsPerBit(): number {
    return this.#nsPerBit;
  }

  /** Nothing on the bus (a submitted frame needs a wake-up to start). */
  get idle(): boolean {
    return this.#kind === SlotKind.NONE;
  }

  /** Frames waiting over all ports. */
  get pending(): number {
    return this.#pending;
  }

  /**
   * Queues `frame` (a bus copy the bus now holds) from `port`, handed over at bus time `now`.
   * False (nothing queued) when the port is bus-off or its queue is full; the caller keeps the frame.
   */
  submit(port: TimedNode, frame: PooledFrame, token: number, now: number): boolean {
    if (port.busState === 'bus-off') return false;
    if (port.txq.size >= TIMED_TX_QUEUE_LIMIT) {
      this.#txQueueOverflow++;
      return false;
    }
    const e = this.#free.pop() ?? { frame, token, enq: 0, key: 0, aborted: false };
    e.frame = frame;
    e.token = token;
    // A frame handed over while the bus lags the host's clock (the host was busy) counts as
    // waiting from the bus's present, not the host's: the guest may well have queued it in time,
    // the host just had not read it. (While a late wake-up pauses for inputs, that is the pause.)
    let enq = now;
    const paused = this.#pausedAt;
    if (paused !== null) {
      if (paused < enq) enq = paused;
      this.#fruitless = 0;
    } else if (this.#kind !== SlotKind.NONE) {
      if (this.#end < enq) enq = this.#end;
    } else if (this.#pending > 0) {
      const start = this.#earliestStart();
      if (start < enq) enq = start;
    }
    e.enq = enq;
    e.key = arbitrationKey(frame.id, frame.extended, frame.rtr, frame.fd);
    e.aborted = false;
    port.txq.push(e);
    this.#pending++;
    return true;
  }

  /**
   * Drops every frame `port` has waiting (its controller stopped, went bus-off or left); their
   * senders' requests fail. A frame of it already on the bus finishes there, without completion.
   */
  abort(port: TimedNode): number {
    let n = 0;
    const q = port.txq;
    let keep: TxEntry | undefined;
    for (let e = q.shift(); e !== undefined; e = q.shift()) {
      if (e === this.#entry) {
        e.aborted = true;
        keep = e;
        continue;
      }
      n++;
      this.#pending--;
      const token = e.token;
      e.frame.drop();
      this.#recycle(e);
      if (token >= 0) this.#host.fail(port, token);
    }
    if (keep !== undefined) q.push(keep);
    return n;
  }

  /** Starts error flags from `port` every 1/perSecond s, the first one interval from `now`. */
  addInjector(port: TimedNode, perSecond: number, now: number, record: FaultHits): void {
    const interval = 1e9 / perSecond;
    this.#injectors.push({ port, interval, next: now + interval, record });
  }

  removeInjector(record: FaultHits): void {
    this.#injectors = this.#injectors.filter((i) => i.record !== record);
  }

  /** The next bus time something happens (Infinity: nothing will until a frame is submitted). */
  nextEvent(): number {
    if (this.#pausedAt !== null) return this.#resumeAt; // after the host read its inputs
    let t = this.#nextTick();
    if (this.#kind !== SlotKind.NONE) return Math.min(t, this.#end);
    if (this.#pending > 0) t = Math.min(t, this.#earliestStart());
    return t;
  }

  /** Handles everything due at bus time `now` (frames ending, arbitration, error flags). */
  advance(now: number): void {
    if (this.#advancing) return;
    this.#advancing = true;
    this.#wakeups++;
    let first = true;
    const resumed = this.#pausedAt !== null;
    this.#pausedAt = null;
    if (!resumed) {
      this.#needInput = true;
      this.#fruitless = 0;
    } else if (this.#fruitless > 0 && this.#pending === 0) {
      // Nothing came during the pause and the bus would go idle: the inputs may still be on
      // their way (a guest answering its completions); may pause again.
      this.#needInput = true;
    }
    try {
      for (let n = 0; n < MAX_EVENTS_PER_WAKE; n++) {
        const tick = this.#nextTick();
        if (this.#kind !== SlotKind.NONE) {
          const end = this.#end;
          if (tick < end && tick <= now) {
            if (this.#kind === SlotKind.FRAME && this.#fate === Fate.OK && tick >= this.#start) {
              this.#destroy(tick);
            } else {
              this.#skipTick(); // an error flag during an error: it changes nothing
            }
            continue;
          }
          if (end > now) break;
          if (first) {
            first = false;
            if (!resumed && now - end > BEHIND_NS) this.#behind++;
          }
          this.#finish(now);
          continue;
        }
        const start = this.#pending > 0 ? this.#earliestStart() : Number.POSITIVE_INFINITY;
        if (tick <= start && tick !== Number.POSITIVE_INFINITY) {
          if (tick > now) break;
          this.#idleError(tick);
          continue;
        }
        // About to arbitrate (or to go idle) in the past: let the host read its inputs first.
        const at = start === Number.POSITIVE_INFINITY ? this.#busFree : start;
        if (
          this.#needInput &&
          now - at > PAUSE_FOR_INPUT_NS &&
          (this.#fruitless < MIN_FRUITLESS_PAUSES || now - this.#fruitlessSince < MAX_PAUSE_NS)
        ) {
          if (this.#fruitless === 0) this.#fruitlessSince = now;
          this.#pausedAt = at;
          this.#needInput = false;
          this.#fruitless++;
          this.#pauses++;
          this.#resumeAt = this.#fruitless <= 2 ? Number.NEGATIVE_INFINITY : now + RETRY_PAUSE_NS;
          break;
        }
        if (start > now) break;
        this.#arbitrate(start);
      }
    } finally {
      this.#advancing = false;
    }
  }

  /** `now`: the host clock (bus time), for `clockSeconds`. */
  stats(now: number): TimedBusStats {
    const h = this.lateness;
    return {
      bitrate: this.bitrate,
      dataBitrate: this.dataBitrate,
      ack: this.ack,
      busySeconds: this.#busyNs / 1e9,
      busErrors: this.#busErrors,
      idleErrorFrames: this.#idleErrors,
      arbitrationLost: this.#arbitrationLost,
      pending: this.#pending,
      txQueueOverflow: this.#txQueueOverflow,
      lateP50Us: h.quantileUs(0.5),
      lateP99Us: h.quantileUs(0.99),
      lateMaxUs: Math.ceil(h.maxNs / 1000),
      lateCount: h.count,
      lateBuckets: h.cumulative(),
      lateFrames: this.#lateFrames,
      behind: this.#behind,
      wakeups: this.#wakeups,
      pauses: this.#pauses,
      busTimeSeconds: this.#busFree / 1e9,
      clockSeconds: now / 1e9,
    };
  }

  // ---- events ---------------------------------------------------------------------------------

  #nextTick(): number {
    const inj = this.#injectors;
    let t = Number.POSITIVE_INFINITY;
    for (let i = 0; i < inj.length; i++) if (inj[i]!.next < t) t = inj[i]!.next;
    return t;
  }

  /** The injector whose tick is due first; advances it. */
  #takeTick(): Injector {
    const inj = this.#injectors;
    let best = inj[0]!;
    for (let i = 1; i < inj.length; i++) if (inj[i]!.next < best.next) best = inj[i]!;
    best.next += best.interval;
    return best;
  }

  #skipTick(): void {
    this.#takeTick();
  }

  /** When the bus can next start a frame: the earliest waiting head, not before the bus is free. */
  #earliestStart(): number {
    const nodes = this.#host.nodes();
    let t = Number.POSITIVE_INFINITY;
    for (let i = 0; i < nodes.length; i++) {
      const p = nodes[i]!;
      const h = p.txq.peek();
      if (h === undefined) continue;
      const ready = h.enq > p.notBefore ? h.enq : p.notBefore;
      if (ready < t) t = ready;
    }
    return t > this.#busFree ? t : this.#busFree;
  }

  #arbitrate(t: number): void {
    const nodes = this.#host.nodes();
    let winner: TimedNode | null = null;
    let best = Number.POSITIVE_INFINITY;
    let contenders = 0;
    for (let i = 0; i < nodes.length; i++) {
      const p = nodes[i]!;
      const h = p.txq.peek();
      if (h === undefined || h.enq > t || p.notBefore > t) continue;
      contenders++;
      p.stats.arbitrationLost++; // taken back from the winner below
      if (h.key < best) {
        best = h.key;
        winner = p;
      }
    }
    if (winner === null) {
      // Only frames that are not ready: cannot happen (t comes from #earliestStart); be safe.
      this.#busFree = t + 1;
      return;
    }
    winner.stats.arbitrationLost--;
    this.#arbitrationLost += contenders - 1;
    const e = winner.txq.peek()!;
    const f = e.frame;
    const b = frameBits(f, f.fd && this.dataBitrate > 0, winner.busState === 'error-passive', this.#bits);
    const duration = b.nominal * this.#nsPerBit + b.data * this.#nsPerDataBit;
    this.#kind = SlotKind.FRAME;
    this.#port = winner;
    this.#entry = e;
    this.#start = t;
    this.#errorBy = null;
    if (winner.mismatchFault !== null) {
      this.#fate = Fate.MISMATCH;
      this.#end = t + (MISMATCH_DETECT_BITS + ERROR_FRAME_BITS) * this.#nsPerBit;
    } else if (!this.#acknowledged(winner)) {
      // Sent up to the ACK slot; the error flag starts at the ACK delimiter (instead of the 11
      // bits of ACK delimiter, EOF and intermission).
      this.#fate = Fate.NO_ACK;
      this.#end = t + duration + (ERROR_FRAME_BITS - 11) * this.#nsPerBit;
    } else {
      this.#fate = Fate.OK;
      this.#end = t + duration;
    }
  }

  #acknowledged(sender: TimedNode): boolean {
    if (sender.noAckFault !== null) return false;
    if (this.ack === 'always') return true;
    if (this.ack === 'never') return false;
    const nodes = this.#host.nodes();
    for (let i = 0; i < nodes.length; i++) {
      const p = nodes[i]!;
      if (p !== sender && participates(p) && p.mismatchFault === null) return true;
    }
    return false;
  }

  /** An error flag at `t` destroys the frame on the bus. */
  #destroy(t: number): void {
    const inj = this.#takeTick();
    inj.record.hits++;
    this.#fate = Fate.DESTROYED;
    this.#errorBy = inj;
    this.#end = t + ERROR_FRAME_BITS * this.#nsPerBit;
  }

  /** An error flag on an idle bus: an error frame from `t` (not before the bus is free). */
  #idleError(t: number): void {
    const inj = this.#takeTick();
    inj.record.hits++;
    const start = t > this.#busFree ? t : this.#busFree;
    this.#kind = SlotKind.ERROR;
    this.#port = inj.port;
    this.#entry = null;
    this.#start = start;
    this.#end = start + ERROR_FRAME_BITS * this.#nsPerBit;
    this.#errorBy = inj;
  }

  #finish(now: number): void {
    const kind = this.#kind;
    const port = this.#port!;
    const entry = this.#entry;
    const start = this.#start;
    const end = this.#end;
    const fate = this.#fate;
    const by = this.#errorBy;
    this.#kind = SlotKind.NONE;
    this.#port = null;
    this.#entry = null;
    this.#errorBy = null;
    this.#busFree = end;
    this.#busyNs += end - start;
    const host = this.#host;
    const endNs = host.stamp(end);
    host.busy(endNs, (end - start) / 1e9);
    if (port.busState === 'error-passive') port.notBefore = end + SUSPEND_TRANSMISSION_BITS * this.#nsPerBit;
    if (kind === SlotKind.ERROR) {
      this.#idleErrors++;
      this.#receiversSawError(null, endNs, by!.port);
      return;
    }
    const e = entry!;
    if (fate === Fate.OK) {
      port.txq.shift();
      this.#pending--;
      const late = now - end;
      // Ran out of frames while catching up: its owner may have more once it sees this completion.
      if (port.txq.size === 0 && late > PAUSE_FOR_INPUT_NS) this.#needInput = true;
      this.lateness.record(late);
      if (late > BEHIND_NS) this.#lateFrames++;
      if (port.tec > 0) port.tec = Math.max(port.tec - 1, port.tecFloor);
      const frame = e.frame;
      const token = e.aborted ? -1 : e.token;
      this.#recycle(e);
      frame.timestampNs = endNs;
      // Counters first (a receiver's state change is reported after the frame it belongs to).
      const nodes = host.nodes();
      for (let i = 0; i < nodes.length; i++) {
        const p = nodes[i]!;
        if (p === port || !participates(p)) continue;
        if (p.mismatchFault !== null) {
          p.stats.rxBusErrors++;
          p.rec++;
        } else if (p.rec > 0) {
          p.rec = p.rec > 127 ? 127 : p.rec - 1;
        }
      }
      host.deliver(frame, port, token);
      this.#settle(port);
      for (let i = 0; i < nodes.length; i++) if (nodes[i] !== port) this.#settle(nodes[i]!);
      return;
    }
    // A failed attempt: the frame stays first in its port's queue and is sent again.
    this.#busErrors++;
    port.stats.txBusErrors++;
    const passive = port.busState === 'error-passive';
    if (fate === Fate.NO_ACK) {
      if (port.noAckFault !== null) port.noAckFault.hits++;
      if (!passive) port.tec += 8;
    } else {
      if (fate === Fate.MISMATCH && port.mismatchFault !== null) port.mismatchFault.hits++;
      port.tec += 8;
    }
    if (e.aborted) {
      port.txq.shift();
      this.#pending--;
      e.frame.drop();
      this.#recycle(e);
    }
    host.emitErrorFrame(
      busErrorFrame({
        timestampNs: endNs,
        origin: port.id,
        type:
          CanErr.PROT_TX |
          (fate === Fate.NO_ACK ? 0 : fate === Fate.MISMATCH ? CanErr.PROT_BIT : CanErr.PROT_BIT1),
        location:
          fate === Fate.NO_ACK
            ? CanErrLoc.ACK
            : fate === Fate.MISMATCH
              ? CanErrLoc.ID28_21
              : CanErrLoc.UNSPEC,
        ack: fate === Fate.NO_ACK,
        tec: port.tec,
        rec: port.rec,
      }),
    );
    if (fate === Fate.NO_ACK) {
      this.#settle(port);
      return;
    }
    this.#receiversSawError(port, endNs, by?.port ?? null);
    this.#settle(port);
  }

  /** Every participating node but `sender` saw an error: REC + 1 each; states follow. */
  #receiversSawError(sender: TimedNode | null, endNs: bigint, reporter: TimedNode | null): void {
    const nodes = this.#host.nodes();
    for (let i = 0; i < nodes.length; i++) {
      const p = nodes[i]!;
      if (p === sender || !participates(p)) continue;
      p.rec++;
      p.stats.rxBusErrors++;
    }
    if (sender === null && reporter !== null) {
      this.#host.emitErrorFrame(
        busErrorFrame({
          timestampNs: endNs,
          origin: reporter.id,
          type: CanErr.PROT_FORM,
          location: CanErrLoc.UNSPEC,
          tec: reporter.tec,
          rec: reporter.rec,
        }),
      );
    }
    for (let i = 0; i < nodes.length; i++) if (nodes[i] !== sender) this.#settle(nodes[i]!);
  }

  /** Applies the state that `p`'s counters give, if it changed (bus-off is left only by a restart). */
  #settle(p: TimedNode): void {
    if (!p.attached || p.busState === 'bus-off') return;
    if (p.tec < p.tecFloor) p.tec = p.tecFloor;
    const s = stateOf(p.tec, p.rec);
    if (s !== p.busState) this.#host.changeState(p, s);
  }

  #recycle(e: TxEntry): void {
    e.frame = null as unknown as PooledFrame;
    if (this.#free.length < 1024) this.#free.push(e);
  }
}

/** Takes part in the bus: acknowledges, counts errors. */
function participates(p: TimedNode): boolean {
  return p.attached && p.receiving && p.busState !== 'bus-off';
}

/** The ISO 11898-1 state of a controller with these counters. */
export function stateOf(tec: number, rec: number): BusState {
  if (tec > 255) return 'bus-off';
  if (tec >= 128 || rec >= 128) return 'error-passive';
  if (tec >= 96 || rec >= 96) return 'error-warning';
  return 'error-active';
}
