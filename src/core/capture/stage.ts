/**
 * Frames set aside to be encoded later, in one go: a recorder copies each frame here during the
 * bus's fan-out (a few stores, no allocation) and encodes the batch once the bus has finished
 * delivering, so the guests get their frames and completions without waiting for the encoder.
 *
 * Each slot keeps a frame's fields, its payload (up to 64 bytes), its channel, its time as a number
 * (ns after the file's start, as `CaptureEncoder.frameAt` takes it) and the sending port's tag. One
 * stage per file keeps the file in bus order across the buses it records.
 */
import type { CanFrame } from '../bus/can-frame.js';
import type { CaptureTag } from './types.js';

const SLOT_DATA = 64;
const EXTENDED = 1;
const RTR = 2;
const FD = 4;
const BRS = 8;
const ESI = 16;

/** The reused frame a drain hands out (valid during the callback only). */
interface StagedFrame extends CanFrame {
  id: number;
  extended: boolean;
  rtr: boolean;
  fd: boolean;
  brs: boolean;
  esi: boolean;
  len: number;
  len8Dlc: number;
  data: Uint8Array;
  timestampNs: bigint;
  origin: number;
}

export class FrameStage {
  readonly capacity: number;
  /** Frames waiting. */
  size = 0;
  readonly #id: Uint32Array;
  readonly #meta: Uint32Array;
  readonly #origin: Float64Array;
  readonly #channel: Uint32Array;
  readonly #at: Float64Array;
  readonly #tag: (CaptureTag | undefined)[];
  readonly #data: Uint8Array;
  /** One payload array per length (0..64), so the handed-out frame's `data` has the right size. */
  readonly #payload: Uint8Array[] = Array.from({ length: SLOT_DATA + 1 }, (_, n) => new Uint8Array(n));
  readonly #frame: StagedFrame = {
    id: 0,
    extended: false,
    rtr: false,
    fd: false,
    brs: false,
    esi: false,
    len: 0,
    len8Dlc: 0,
    data: new Uint8Array(0),
    timestampNs: 0n,
    origin: 0,
  };

  constructor(capacity: number) {
    if (!(Number.isSafeInteger(capacity) && capacity >= 1)) {
      throw new RangeError(`stage capacity must be a positive integer, got ${capacity}`);
    }
    this.capacity = capacity;
    this.#id = new Uint32Array(capacity);
    this.#meta = new Uint32Array(capacity);
    this.#origin = new Float64Array(capacity);
    this.#channel = new Uint32Array(capacity);
    this.#at = new Float64Array(capacity);
    this.#tag = new Array<CaptureTag | undefined>(capacity).fill(undefined);
    this.#data = new Uint8Array(capacity * SLOT_DATA);
  }

  /** Copies `f` aside with its channel, time and tag; false (nothing kept) when the stage is full. */
  push(f: CanFrame, channel: number, atNs: number, tag: CaptureTag): boolean {
    const i = this.size;
    if (i === this.capacity) return false;
    const d = f.data;
    const n = d.length > SLOT_DATA ? SLOT_DATA : d.length;
    this.#id[i] = f.id;
    this.#meta[i] =
      f.len |
      (f.len8Dlc << 8) |
      (n << 16) |
      (((f.extended ? EXTENDED : 0) |
        (f.rtr ? RTR : 0) |
        (f.fd ? FD : 0) |
        (f.brs ? BRS : 0) |
        (f.esi ? ESI : 0)) <<
        24);
    this.#origin[i] = f.origin;
    this.#channel[i] = channel;
    this.#at[i] = atNs;
    this.#tag[i] = tag;
    const b = this.#data;
    const at = i * SLOT_DATA;
    for (let k = 0; k < n; k++) b[at + k] = d[k]!;
    this.size = i + 1;
    return true;
  }

  /**
   * Hands every staged frame to `fn` in the order they were pushed (the frame object is reused: read
   * it in the call), then empties the stage; returns how many. A throwing `fn` leaves the frames
   * after the failing one staged.
   */
  drain(fn: (f: CanFrame, channel: number, atNs: number, tag: CaptureTag) => void): number {
    const n = this.size;
    const f = this.#frame;
    const b = this.#data;
    let i = 0;
    try {
      for (; i < n; i++) {
        const meta = this.#meta[i]!;
        const flags = meta >>> 24;
        const len = (meta >>> 16) & 0xff;
        f.id = this.#id[i]!;
        f.len = meta & 0xff;
        f.len8Dlc = (meta >>> 8) & 0xff;
        f.extended = (flags & EXTENDED) !== 0;
        f.rtr = (flags & RTR) !== 0;
        f.fd = (flags & FD) !== 0;
        f.brs = (flags & BRS) !== 0;
        f.esi = (flags & ESI) !== 0;
        f.origin = this.#origin[i]!;
        const data = this.#payload[len]!;
        const at = i * SLOT_DATA;
        for (let k = 0; k < len; k++) data[k] = b[at + k]!;
        f.data = data;
        const tag = this.#tag[i]!;
        this.#tag[i] = undefined;
        fn(f, this.#channel[i]!, this.#at[i]!, tag);
      }
    } finally {
      if (i < n) {
        // Keep the frames after the one that failed (it is dropped): move them to the front.
        const rest = n - i - 1;
        this.#id.copyWithin(0, i + 1, n);
        this.#meta.copyWithin(0, i + 1, n);
        this.#origin.copyWithin(0, i + 1, n);
        this.#channel.copyWithin(0, i + 1, n);
        this.#at.copyWithin(0, i + 1, n);
        for (let k = 0; k < rest; k++) this.#tag[k] = this.#tag[i + 1 + k];
        for (let k = rest; k < n; k++) this.#tag[k] = undefined;
        b.copyWithin(0, (i + 1) * SLOT_DATA, n * SLOT_DATA);
        this.size = rest;
      } else {
        this.size = 0;
      }
    }
    return n;
  }
}
