/**
 * A monitor's tap on one bus: a hub port that copies every frame (and error event) into a bounded
 * ring of preallocated typed arrays, then releases the frame at once. The guest path never waits for
 * it: copying is a few stores per frame, nothing is allocated, and the ring overwrites its oldest
 * entries when readers fall behind (each reader counts what it lost).
 *
 * Readers (the stream viewers) keep a sequence number and read at their own pace with `forEach`.
 * The tap is attached while someone reads (see FrameStreams) and detached after, so a daemon nobody
 * watches pays nothing.
 *
 * Sampling at the source: viewers are sent a few hundred frames per second, so during a flood the
 * tap does not need every frame. It copies at most `windowBudget` entries per window (the streams'
 * 100 ms tick calls `nextWindow()`); once the budget is used it leaves the bus until the next
 * window, and the frames put on the bus meanwhile are counted `unseen` (from the bus's own frame
 * counter). A flood then costs the bus one extra port for a few milliseconds per window instead of
 * all the time; below the budget (about 40,000 frames/s by default) every frame is seen.
 */
import type { CanErrorFrame } from '../../core/bus/can-error.js';
import type { CanFrame } from '../../core/bus/can-frame.js';
import type { BusPortHandler, CanHub, HubPort } from '../../core/bus/hub.js';

/** Entry flags. */
export const TapFlag = {
  EXTENDED: 1,
  RTR: 2,
  FD: 4,
  BRS: 8,
  ESI: 16,
  /** An error event (SocketCAN error frame): id = error class bits, data = its 8 bytes. */
  ERROR: 32,
} as const;

/** One ring entry as a reader sees it (a view that is rewritten for every entry: copy what you keep). */
export interface TapEntry {
  seq: number;
  id: number;
  flags: number;
  len: number;
  len8Dlc: number;
  /** Bus clock nanoseconds, as a Number. */
  timestampNs: number;
  /** Hub port id of the sender (for error events: the port the error is about; 0 = the bus). */
  origin: number;
}

/** A copied entry with its payload bytes. */
export interface TapFrame extends TapEntry {
  data: Uint8Array;
}

export const DEFAULT_TAP_CAPACITY = 8192;
const SLOT_BYTES = 64;

export class FrameTap implements BusPortHandler {
  readonly hub: CanHub;
  readonly capacity: number;
  readonly #mask: number;
  readonly #ids: Uint32Array;
  readonly #flags: Uint8Array;
  readonly #lens: Uint8Array;
  readonly #len8: Uint8Array;
  readonly #ts: Float64Array;
  readonly #origins: Uint32Array;
  readonly #data: Uint8Array;
  /** Sequence number of the next entry (= entries written since the tap was made). */
  #head = 0;
  #port: HubPort | null = null;
  /** Port id -> name of every port seen on the bus while the tap was attached (see `portName`). */
  #names = new Map<number, string>();
  #portsSeen: readonly HubPort[] | null = null;
  readonly #entry: TapEntry = {
    seq: 0,
    id: 0,
    flags: 0,
    len: 0,
    len8Dlc: 0,
    timestampNs: 0,
    origin: 0,
  };

  /** `capacity` is rounded up to a power of two. */
  /** Entries copied per window before the tap pauses (see the module comment). */
  readonly windowBudget: number;
  #name: string | null = null;
  #windowCount = 0;
  /** The bus's frame counter when the tap paused (-1: not paused). */
  #pausedAt = -1;
  #unseen = 0;

  /** `capacity` is rounded up to a power of two; `windowBudget` defaults to half of it. */
  constructor(hub: CanHub, capacity = DEFAULT_TAP_CAPACITY, windowBudget?: number) {
    let c = 16;
    while (c < capacity) c *= 2;
    this.hub = hub;
    this.capacity = c;
    this.windowBudget = Math.max(1, Math.min(windowBudget ?? c >> 1, c));
    this.#mask = c - 1;
    this.#ids = new Uint32Array(c);
    this.#flags = new Uint8Array(c);
    this.#lens = new Uint8Array(c);
    this.#len8 = new Uint8Array(c);
    this.#ts = new Float64Array(c);
    this.#origins = new Uint32Array(c);
    this.#data = new Uint8Array(c * SLOT_BYTES);
  }

  /** Entries written so far; the next one gets this sequence number. */
  get head(): number {
    return this.#head;
  }

  /** Oldest sequence number still in the ring. */
  get tail(): number {
    return Math.max(0, this.#head - this.capacity);
  }

  /** True from `attach` to `detach` (also while paused by the window budget). */
  get attached(): boolean {
    return this.#name !== null;
  }

  /** Frames put on the bus while the tap was paused (never copied). */
  get unseen(): number {
    return this.#unseen;
  }

  /** True while the window's budget is used up and the tap is off the bus. */
  get paused(): boolean {
    return this.#pausedAt >= 0;
  }

  /** The hub port (null while detached). */
  get port(): HubPort | null {
    return this.#port;
  }

  /** Joins the bus as port `name` (idempotent). */
  attach(name: string): void {
    if (this.#name !== null) return;
    this.#name = name;
    this.#windowCount = 0;
    this.#join();
  }

  detach(): void {
    this.#name = null;
    this.#leave();
    this.#pausedAt = -1;
  }

  /** Starts a new window: the budget is renewed, and a paused tap joins the bus again. */
  nextWindow(): void {
    this.#windowCount = 0;
    if (this.#pausedAt < 0 || this.#name === null) return;
    this.#unseen += Math.max(0, this.hub.stats().frames - this.#pausedAt);
    this.#pausedAt = -1;
    this.#join();
  }

  #join(): void {
    if (this.#port !== null || this.#name === null || this.hub.closed) return;
    this.#port = this.hub.attach(this, {
      name: this.#name,
      // The handler drains each frame at once: a small queue is enough, and frames are recycled.
      queueLimit: 64,
      releasesFrames: true,
      errorFrames: true,
    });
  }

  #leave(): void {
    this.#port?.detach();
    this.#port = null;
  }

  onFramesAvailable(): void {
    const port = this.#port;
    if (port === null) return;
    this.#notePorts();
    for (let f = port.take(); f !== undefined; f = port.take()) {
      this.#push(f);
      port.release(f);
    }
    if (++this.#windowCount >= this.windowBudget) {
      // Budget used: off the bus until the next window (a handler may detach its own port).
      this.#pausedAt = this.hub.stats().frames;
      this.#leave();
    }
  }

  onErrorFrame(e: CanErrorFrame): void {
    this.#notePorts();
    const i = this.#head & this.#mask;
    this.#ids[i] = e.classBits >>> 0;
    this.#flags[i] = TapFlag.ERROR;
    this.#lens[i] = 8;
    this.#len8[i] = 0;
    this.#ts[i] = Number(e.timestampNs);
    this.#origins[i] = e.origin;
    this.#data.set(e.data.subarray(0, 8), i * SLOT_BYTES);
    this.#head++;
  }

  /**
   * The name of port `id` (a sender): names are noted while frames arrive, so a port that sent and
   * left at once (an API request's port) is still named. `#ID` for one never seen, `bus` for 0.
   */
  portName(id: number): string {
    if (id === 0) return 'bus';
    let name = this.#names.get(id);
    if (name === undefined) {
      this.#notePorts();
      name = this.#names.get(id);
    }
    return name ?? `#${id}`;
  }

  /** Remembers the names of the bus's ports when its port list changed (no work otherwise). */
  #notePorts(): void {
    const ports = this.hub.ports();
    if (ports === this.#portsSeen) return;
    this.#portsSeen = ports;
    // Bounded: a bus whose ports come and go for days keeps the current ones and the latest gone.
    if (this.#names.size > 4096) this.#names = new Map();
    for (const p of ports) this.#names.set(p.id, p.name);
  }

  #push(f: CanFrame): void {
    const i = this.#head & this.#mask;
    this.#ids[i] = f.id;
    this.#flags[i] =
      (f.extended ? TapFlag.EXTENDED : 0) |
      (f.rtr ? TapFlag.RTR : 0) |
      (f.fd ? TapFlag.FD : 0) |
      (f.brs ? TapFlag.BRS : 0) |
      (f.esi ? TapFlag.ESI : 0);
    this.#lens[i] = f.len;
    this.#len8[i] = f.len8Dlc;
    this.#ts[i] = Number(f.timestampNs);
    this.#origins[i] = f.origin;
    const src = f.data;
    const o = i * SLOT_BYTES;
    const d = this.#data;
    if (src.length <= 8) for (let k = 0; k < src.length; k++) d[o + k] = src[k]!;
    else d.set(src, o);
    this.#head++;
  }

  /**
   * Calls `fn` for entries `from` .. head-1 that are still in the ring, in order, with a reused view
   * (no payload: see `at`). Returns the sequence number to continue from (the head).
   */
  forEach(from: number, fn: (e: TapEntry) => void): number {
    const end = this.#head;
    const e = this.#entry;
    for (let s = Math.max(from, this.tail); s < end; s++) fn(this.#read(s, e));
    return end;
  }

  /** A copy of one entry, or null when it was overwritten or not written yet. */
  at(seq: number): TapFrame | null {
    if (seq < this.tail || seq >= this.#head) return null;
    const e = this.#read(seq, { ...this.#entry });
    const o = (seq & this.#mask) * SLOT_BYTES;
    const n = (e.flags & TapFlag.RTR) !== 0 ? 0 : e.len;
    return { ...e, data: this.#data.slice(o, o + n) };
  }

  #read(s: number, e: TapEntry): TapEntry {
    const i = s & this.#mask;
    e.seq = s;
    e.id = this.#ids[i]!;
    e.flags = this.#flags[i]!;
    e.len = this.#lens[i]!;
    e.len8Dlc = this.#len8[i]!;
    e.timestampNs = this.#ts[i]!;
    e.origin = this.#origins[i]!;
    return e;
  }
}
