/**
 * Frames set aside to be encoded later, in one go: a recorder copies each frame here during the
 * bus's fan-out (a few stores, no allocation) and encodes the batch once the bus has finished
 * delivering, so the guests get their frames and completions without waiting for the encoder.
 *
 * A slot keeps a frame's fields, its channel, its time as a number (ns after the file's start, as
 * `CaptureEncoder.frameAt` takes it) and the sending port's tag. The first 8 payload bytes are kept
 * as two little-endian words (zero-padded), which is what the pcapng and BLF encoders store for a
 * classic frame (`encodeStaged` reads them straight from here); longer payloads (CAN FD) are copied
 * whole. One stage per file keeps the file in bus order across the buses it records.
 */
import { type CanFrame, type MutableCanFrame, scratchCanFrame } from '../bus/can-frame.js';
import { wordOf } from './bytes.js';
import type { CaptureTag } from './types.js';

const SLOT_DATA = 64;
export const STAGED_EXTENDED = 1;
export const STAGED_RTR = 2;
export const STAGED_FD = 4;
export const STAGED_BRS = 8;
export const STAGED_ESI = 16;

export class FrameStage {
  readonly capacity: number;
  /** Frames waiting (slots 0 .. size - 1). */
  size = 0;
  // Per slot, for encoders that read the stage directly (encodeStaged):
  readonly id: Uint32Array;
  /** len | len8Dlc << 8 | payload bytes kept << 16 | STAGED_* flags << 24 */
  readonly meta: Uint32Array;
  readonly channel: Uint32Array;
  readonly at: Float64Array;
  readonly tag: (CaptureTag | undefined)[];
  /** Payload bytes 0-3 and 4-7 as little-endian words, zero-padded. */
  readonly word0: Uint32Array;
  readonly word1: Uint32Array;
  readonly #origin: Float64Array;
  /** Payloads longer than 8 bytes, SLOT_DATA bytes per slot. */
  readonly #data: Uint8Array;
  /** One payload array per length (0..64), so the handed-out frame's `data` has the right size. */
  readonly #payload: Uint8Array[] = Array.from({ length: SLOT_DATA + 1 }, (_, n) => new Uint8Array(n));
  /** The reused frame `frame(i)` and `drain` hand out (valid until the next call). */
  readonly #frame: MutableCanFrame = scratchCanFrame();

  constructor(capacity: number) {
    if (!(Number.isSafeInteger(capacity) && capacity >= 1)) {
      throw new RangeError(`stage capacity must be a positive integer, got ${capacity}`);
    }
    this.capacity = capacity;
    this.id = new Uint32Array(capacity);
    this.meta = new Uint32Array(capacity);
    this.channel = new Uint32Array(capacity);
    this.at = new Float64Array(capacity);
    this.tag = new Array<CaptureTag | undefined>(capacity).fill(undefined);
    this.word0 = new Uint32Array(capacity);
    this.word1 = new Uint32Array(capacity);
    this.#origin = new Float64Array(capacity);
    this.#data = new Uint8Array(capacity * SLOT_DATA);
  }

  /** Copies `f` aside with its channel, time and tag; false (nothing kept) when the stage is full. */
  push(f: CanFrame, channel: number, atNs: number, tag: CaptureTag): boolean {
    const i = this.size;
    if (i === this.capacity) return false;
    const d = f.data;
    const n = d.length > SLOT_DATA ? SLOT_DATA : d.length;
    this.id[i] = f.id;
    this.meta[i] =
      f.len |
      (f.len8Dlc << 8) |
      (n << 16) |
      (((f.extended ? STAGED_EXTENDED : 0) |
        (f.rtr ? STAGED_RTR : 0) |
        (f.fd ? STAGED_FD : 0) |
        (f.brs ? STAGED_BRS : 0) |
        (f.esi ? STAGED_ESI : 0)) <<
        24);
    this.channel[i] = channel;
    this.at[i] = atNs;
    this.tag[i] = tag;
    this.#origin[i] = f.origin;
    if (n <= 8) {
      this.word0[i] = wordOf(d, 0);
      this.word1[i] = n > 4 ? wordOf(d, 4) : 0;
    } else {
      const b = this.#data;
      const at = i * SLOT_DATA;
      for (let k = 0; k < n; k++) b[at + k] = d[k]!;
    }
    this.size = i + 1;
    return true;
  }

  /** Slot `i` as a frame (the object is reused: read it before the next call). */
  frame(i: number): CanFrame {
    const f = this.#frame;
    const meta = this.meta[i]!;
    const flags = meta >>> 24;
    const n = (meta >>> 16) & 0xff;
    f.id = this.id[i]!;
    f.len = meta & 0xff;
    f.len8Dlc = (meta >>> 8) & 0xff;
    f.extended = (flags & STAGED_EXTENDED) !== 0;
    f.rtr = (flags & STAGED_RTR) !== 0;
    f.fd = (flags & STAGED_FD) !== 0;
    f.brs = (flags & STAGED_BRS) !== 0;
    f.esi = (flags & STAGED_ESI) !== 0;
    f.origin = this.#origin[i]!;
    const data = this.#payload[n]!;
    if (n <= 8) {
      const w0 = this.word0[i]!;
      const w1 = this.word1[i]!;
      for (let k = 0; k < n; k++) data[k] = (k < 4 ? w0 >>> (8 * k) : w1 >>> (8 * (k - 4))) & 0xff;
    } else {
      const b = this.#data;
      const at = i * SLOT_DATA;
      for (let k = 0; k < n; k++) data[k] = b[at + k]!;
    }
    f.data = data;
    return f;
  }

  /** Forgets the staged frames (their tags too). */
  clear(): void {
    this.tag.fill(undefined, 0, this.size);
    this.size = 0;
  }

  /**
   * Hands every staged frame to `fn` in the order they were pushed (the frame object is reused: read
   * it in the call), then empties the stage; returns how many. A throwing `fn` leaves the frames
   * after the failing one staged.
   */
  drain(fn: (f: CanFrame, channel: number, atNs: number, tag: CaptureTag) => void): number {
    const n = this.size;
    let i = 0;
    try {
      for (; i < n; i++) fn(this.frame(i), this.channel[i]!, this.at[i]!, this.tag[i]!);
    } finally {
      if (i < n) this.#keepAfter(i);
      else this.clear();
    }
    return n;
  }

  /** Keeps the slots after `i` (moved to the front). */
  #keepAfter(i: number): void {
    const n = this.size;
    const rest = n - i - 1;
    for (const a of [this.id, this.meta, this.channel, this.word0, this.word1]) a.copyWithin(0, i + 1, n);
    this.at.copyWithin(0, i + 1, n);
    this.#origin.copyWithin(0, i + 1, n);
    for (let k = 0; k < rest; k++) this.tag[k] = this.tag[i + 1 + k];
    this.tag.fill(undefined, rest, n);
    this.#data.copyWithin(0, (i + 1) * SLOT_DATA, n * SLOT_DATA);
    this.size = rest;
  }
}
