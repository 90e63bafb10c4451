/**
 * Byte plumbing of the capture codecs: the chunk an encoder fills (whole blocks only, no allocation
 * per record), the buffer a decoder reads from as the file arrives in pieces, and ASCII helpers (the
 * core has no TextEncoder).
 */
import type { ChunkHandler, EncodedChunk } from './types.js';

/** True on a little-endian host: the encoders may then store little-endian words as Uint32Array. */
export const LITTLE_ENDIAN_HOST: boolean = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1;

/** `v` (32 bits) with its bytes reversed: a big-endian word through a little-endian Uint32Array. */
export function swap32(v: number): number {
  return (((v & 0xff) << 24) | ((v & 0xff00) << 8) | ((v >>> 8) & 0xff00) | (v >>> 24)) >>> 0;
}

/**
 * Up to 4 bytes of `d` from `from` as a little-endian word (missing bytes 0): what a Uint32Array
 * store of it puts in memory on a little-endian host.
 */
export function wordOf(d: Uint8Array, from: number): number {
  const n = d.length - from;
  if (n >= 4) return (d[from]! | (d[from + 1]! << 8) | (d[from + 2]! << 16) | (d[from + 3]! << 24)) >>> 0;
  let w = 0;
  for (let i = 0; i < n; i++) w |= d[from + i]! << (8 * i);
  return w >>> 0;
}

/** A growable buffer of encoder output: blocks are reserved, written in place, then committed. */
export class ChunkWriter {
  buf: Uint8Array;
  dv: DataView;
  /**
   * The buffer as 32-bit words when stores through it are little-endian and aligned (a little-endian
   * host and a buffer on a 4-byte boundary), else null: the encoders' fast path for whole words.
   */
  u32: Uint32Array | null = null;
  /** Write position (bytes committed so far). */
  pos = 0;
  records = 0;
  /**
   * Time of the records being written: `lastWall` when it was given as a bigint, else `lastAt` ns
   * after `startNs` (the encoders' fast path keeps bigint arithmetic out of every record). Set
   * through `wall()` / `at()`, which also tell the encoder whether its time fields need recomputing.
   */
  lastWall: bigint | null = null;
  lastAt = Number.NaN;
  channelsAtStart = 0;
  readonly size: number;
  readonly startNs: bigint;
  readonly #handler: ChunkHandler;
  /** Channels declared so far (the encoder keeps it current). */
  channels = 0;

  constructor(handler: ChunkHandler, size: number, startNs: bigint) {
    this.#handler = handler;
    this.size = size;
    this.startNs = startNs;
    this.buf = handler.allocate(size);
    this.dv = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
    this.u32 = wordsOf(this.buf);
  }

  /**
   * Makes room for a block of at most `n` bytes and returns where it starts. When the chunk cannot
   * hold it, the chunk is emitted first (so a block never spans chunks).
   */
  reserve(n: number): number {
    if (this.pos + n <= this.buf.length) return this.pos;
    if (this.pos > 0) this.flush();
    if (n > this.buf.length) this.replace(n);
    return 0;
  }

  /** The next records are at wall-clock `wallNs`; true when that differs from the time before. */
  wall(wallNs: bigint): boolean {
    if (this.lastWall === wallNs) return false;
    this.lastWall = wallNs;
    this.lastAt = Number.NaN;
    return true;
  }

  /** The next records are `atNs` after `startNs`; true when that differs from the time before. */
  at(atNs: number): boolean {
    if (this.lastAt === atNs) return false;
    this.lastAt = atNs;
    this.lastWall = null;
    return true;
  }

  /**
   * Ends the block that began at the last `reserve`: `end` is the offset after its last byte. A
   * block holding a record (`records` > 0) is stamped (`wall` or `at`) before.
   */
  commit(end: number, records: number): void {
    this.pos = end;
    this.records += records;
  }

  /** Wall-clock time of the chunk's last record (0n when it has none). */
  get lastNs(): bigint {
    if (this.records === 0) return 0n;
    if (this.lastWall !== null) return this.lastWall;
    return Number.isFinite(this.lastAt) ? this.startNs + BigInt(this.lastAt) : 0n;
  }

  /** Hands the filled part (if any) to the handler and continues in a fresh buffer. */
  flush(): void {
    if (this.pos === 0) return;
    const chunk: EncodedChunk = {
      bytes: this.buf.subarray(0, this.pos),
      buffer: this.buf,
      records: this.records,
      channelsAtStart: this.channelsAtStart,
      lastNs: this.lastNs,
    };
    this.replace(this.size);
    this.#handler.emit(chunk);
  }

  private replace(n: number): void {
    this.buf = this.#handler.allocate(Math.max(n, this.size));
    this.dv = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
    this.u32 = wordsOf(this.buf);
    this.pos = 0;
    this.records = 0;
    this.channelsAtStart = this.channels;
  }
}

function wordsOf(b: Uint8Array): Uint32Array | null {
  if (!LITTLE_ENDIAN_HOST || b.byteOffset % 4 !== 0) return null;
  return new Uint32Array(b.buffer, b.byteOffset, b.byteLength >>> 2);
}

/** A ChunkHandler that collects chunks in memory (fresh buffers, never recycled). */
export class MemoryChunks implements ChunkHandler {
  readonly chunks: EncodedChunk[] = [];
  allocate(size: number): Uint8Array {
    return new Uint8Array(size);
  }
  emit(chunk: EncodedChunk): void {
    this.chunks.push(chunk);
  }
}

/** Bytes of a file arriving in pieces: append at the end, consume from the front. */
export class InputBuffer {
  #buf = new Uint8Array(0);
  #start = 0;
  #end = 0;
  /** File offset of the first unconsumed byte. */
  offset = 0;
  ended = false;

  push(bytes: Uint8Array): void {
    const have = this.#end - this.#start;
    if (this.#end + bytes.length > this.#buf.length) {
      // Move the unconsumed bytes to the front, into a larger buffer when they would not fit.
      if (have + bytes.length > this.#buf.length) {
        const next = new Uint8Array(Math.max(have + bytes.length, this.#buf.length * 2, 4096));
        next.set(this.#buf.subarray(this.#start, this.#end));
        this.#buf = next;
      } else {
        this.#buf.copyWithin(0, this.#start, this.#end);
      }
      this.#start = 0;
      this.#end = have;
    }
    this.#buf.set(bytes, this.#end);
    this.#end += bytes.length;
  }

  get available(): number {
    return this.#end - this.#start;
  }

  /** A view of the next `n` unconsumed bytes (valid until the next push). */
  peek(n: number): Uint8Array {
    return this.#buf.subarray(this.#start, this.#start + n);
  }

  /** A DataView of the next `n` unconsumed bytes (valid until the next push). */
  view(n: number): DataView {
    return new DataView(this.#buf.buffer, this.#buf.byteOffset + this.#start, n);
  }

  consume(n: number): void {
    this.#start += n;
    this.offset += n;
  }

  /**
   * The next line without its terminator (LF, CRLF), consumed; at the end of input the last line
   * without terminator; undefined when no complete line is buffered.
   */
  line(): string | undefined {
    const b = this.#buf;
    let i = this.#start;
    const end = this.#end;
    while (i < end && b[i] !== 0x0a) i++;
    if (i === end && !this.ended) return undefined;
    if (i === end && this.#start === end) return undefined;
    let stop = i;
    if (stop > this.#start && b[stop - 1] === 0x0d) stop--;
    const s = latin1(b, this.#start, stop);
    const used = i < end ? i + 1 - this.#start : i - this.#start;
    this.consume(used);
    return s;
  }
}

/** Bytes [from, to) as a string, one character per byte. */
export function latin1(b: Uint8Array, from: number, to: number): string {
  let s = '';
  for (let i = from; i < to; i += 4096) {
    s += String.fromCharCode(...b.subarray(i, Math.min(to, i + 4096)));
  }
  return s;
}

/** Writes `s` (code units below 256) at `off`; returns the offset after it. */
export function putAscii(b: Uint8Array, off: number, s: string): number {
  for (let i = 0; i < s.length; i++) b[off++] = s.charCodeAt(i) & 0xff;
  return off;
}

/** `s` as bytes, one per code unit (callers pass ASCII). */
export function ascii(s: string): Uint8Array {
  const out = new Uint8Array(s.length);
  putAscii(out, 0, s);
  return out;
}

export const HEX_UPPER: Uint8Array = ascii('0123456789ABCDEF');

/** Writes `v` as `digits` uppercase hex digits; returns the offset after them. */
export function putHex(b: Uint8Array, off: number, v: number, digits: number): number {
  for (let i = digits - 1; i >= 0; i--) {
    b[off + i] = HEX_UPPER[v & 15]!;
    v >>>= 4;
  }
  return off + digits;
}

/** Writes the decimal `v` (a non-negative integer) zero-padded to `width` digits. */
export function putDec(b: Uint8Array, off: number, v: number, width: number): number {
  let n = 1;
  for (let t = v; t >= 10; t = Math.floor(t / 10)) n++;
  const w = Math.max(n, width);
  for (let i = w - 1; i >= 0; i--) {
    b[off + i] = 0x30 + (v % 10);
    v = Math.floor(v / 10);
  }
  return off + w;
}

/** Concatenates byte arrays. */
export function concatBytes(parts: readonly Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** The value of a hex digit character code, or -1. */
export function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  return -1;
}

const NS_PER_S = 1_000_000_000n;

/** Splits wall-clock ns into whole seconds (bigint) and the nanoseconds within the second. */
export function splitNs(ns: bigint): { sec: bigint; nsec: number } {
  return { sec: ns / NS_PER_S, nsec: Number(ns % NS_PER_S) };
}
