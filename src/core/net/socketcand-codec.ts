/**
 * The socketcand wire format, as bytes: a tokenizer for `< ... >` elements, parsers for the commands
 * that carry frames, and writers for the elements a server or a client sends. No Node APIs, no
 * strings on the hot paths (frames are parsed from and written into byte arrays).
 *
 * The format (socketcand's protocol description and its server code):
 * - ASCII elements `< word word ... >`, concatenated, no line delimiter; bytes outside elements are
 *   ignored by socketcand. A server greets with `< hi >`, answers commands with `< ok >`,
 *   `< echo >` or `< error TEXT >`.
 * - Raw mode, server -> client: `< frame ID SECS.USECS DATA >`. ID is upper-case hex, 3 digits for
 *   a standard and 8 for an extended identifier; DATA is contiguous upper-case hex (with no data the
 *   element has two spaces before `>`). Remote frames: `< rtr ID SECS.USECS DLC >`. Error frames:
 *   `< error CLASS SECS.USECS >` (CLASS = the error class bits, %03X).
 * - BCM mode, server -> client: `< frame ID SECS.USECS B0 B1 ... >` with spaced bytes.
 * - client -> server: `< send ID DLC B0 B1 ... >` with decimal DLC and 1..2 digit hex bytes; the
 *   frame is extended when the ID has 8 digits.
 * - CAN FD (socketcand's own CAN FD work, not in a release): `< fdframe ID FLAGS SECS.USECS DATA >`
 *   and `< fdsend ID FLAGS LEN B0 ... >`, FLAGS = the Linux canfd_frame flags in hex (BRS 0x01,
 *   ESI 0x02, FDF 0x04), LEN decimal.
 *
 * Our additions and leniencies are documented in docs/socketcand.md ("protocol coverage").
 */
import { CanErr, type CanErrorFrame } from '../bus/can-error.js';
import { type CanFrame, CanIdMax, isValidFdLength, type MutableCanFrame } from '../bus/can-frame.js';

export const SOCKETCAND_DEFAULT_PORT = 29536;
/**
 * Longest element accepted, in bytes from `<` to `>`. The longest legitimate one is a `muxfilter`
 * with 257 filter frames (about 6.2 KB); everything else is under 250 bytes.
 */
export const SOCKETCAND_MAX_ELEMENT = 8192;

const LT = 0x3c; // <
const GT = 0x3e; // >
const SP = 0x20;
const DOT = 0x2e;

function isSpace(c: number): boolean {
  return c === SP || c === 0x09 || c === 0x0a || c === 0x0d;
}

/** Hex digit value, or -1. */
const HEX_VALUE: Int8Array = (() => {
  const t = new Int8Array(256).fill(-1);
  for (let i = 0; i < 10; i++) t[0x30 + i] = i;
  for (let i = 0; i < 6; i++) {
    t[0x41 + i] = 10 + i;
    t[0x61 + i] = 10 + i;
  }
  return t;
})();
/** Upper-case hex digit characters. */
const HEX_CHAR: Uint8Array = ascii('0123456789ABCDEF');

/** The bytes of an ASCII string. */
export function ascii(s: string): Uint8Array {
  const b = new Uint8Array(s.length);
  for (let k = 0; k < s.length; k++) b[k] = s.charCodeAt(k) & 0x7f;
  return b;
}

// ---- tokenizer ----------------------------------------------------------------------------------

/** Receives what an ElementReader finds. */
export interface ElementSink {
  /** A complete element, `buf[start] === '<'`, `buf[end - 1] === '>'`. Valid only during the call. */
  element(buf: Uint8Array, start: number, end: number): void;
  /**
   * Input that is not an element: `bytes` of garbage between elements, an element cut short by a
   * new `<` (`interrupted`), or an element longer than the limit (`overlong`; the reader then skips
   * to the next `>`, and reports again for every further `maxElement` bytes skipped).
   */
  junk(kind: 'garbage' | 'interrupted' | 'overlong', bytes: number): void;
}

/**
 * Splits a byte stream into `< ... >` elements. Whitespace between elements is ignored; anything
 * else there is garbage, reported once per chunk pushed (and once per `maxElement` bytes within a
 * chunk), so a flood of garbage costs a bounded number of reports. Elements that lie within one
 * chunk are handed over in place; only an element split across chunks is copied.
 */
export class ElementReader {
  readonly maxElement: number;
  #carry: Uint8Array;
  #carryLen = 0;
  /** 0: between elements; 1: inside an element (its start is in #carry); 2: skipping an overlong one. */
  #state = 0;
  #skipped = 0;

  constructor(maxElement = SOCKETCAND_MAX_ELEMENT) {
    this.maxElement = maxElement;
    this.#carry = new Uint8Array(Math.min(maxElement, 256));
  }

  /** Bytes of an element started but not finished yet. */
  get pending(): number {
    return this.#state === 1 ? this.#carryLen : 0;
  }

  push(buf: Uint8Array, sink: ElementSink): void {
    const n = buf.length;
    let i = 0;
    let garbage = 0;
    const flushGarbage = (): void => {
      if (garbage > 0) sink.junk('garbage', garbage);
      garbage = 0;
    };
    while (i < n) {
      if (this.#state === 2) {
        // Skipping an overlong element up to its '>'.
        const gt = buf.indexOf(GT, i);
        const upto = gt < 0 ? n : gt;
        this.#skipped += upto - i;
        while (this.#skipped >= this.maxElement) {
          this.#skipped -= this.maxElement;
          sink.junk('overlong', this.maxElement);
        }
        if (gt < 0) return;
        this.#state = 0;
        this.#skipped = 0;
        i = gt + 1;
        continue;
      }
      if (this.#state === 1) {
        // Continuing an element whose start is in #carry.
        let j = i;
        while (j < n && buf[j] !== GT && buf[j] !== LT) j++;
        const add = j - i;
        if (this.#carryLen + add + (j < n && buf[j] === GT ? 1 : 0) > this.maxElement) {
          sink.junk('overlong', this.#carryLen + add);
          this.#carryLen = 0;
          this.#state = 2;
          this.#skipped = 0;
          i = j;
          if (j < n && buf[j] === LT) this.#state = 0; // a new element starts: resynchronise on it
          continue;
        }
        this.#append(buf, i, j);
        if (j === n) return;
        if (buf[j] === LT) {
          sink.junk('interrupted', this.#carryLen);
          this.#carryLen = 0;
          this.#state = 0;
          i = j;
          continue;
        }
        this.#append(buf, j, j + 1);
        this.#state = 0;
        i = j + 1;
        sink.element(this.#carry, 0, this.#carryLen);
        this.#carryLen = 0;
        continue;
      }
      // Between elements.
      const c = buf[i]!;
      if (c !== LT) {
        if (!isSpace(c)) {
          garbage++;
          if (garbage >= this.maxElement) flushGarbage();
        }
        i++;
        continue;
      }
      flushGarbage();
      // An element starts at i: find its end within this chunk.
      let j = i + 1;
      const limit = Math.min(n, i + this.maxElement);
      while (j < limit && buf[j] !== GT && buf[j] !== LT) j++;
      if (j < limit && buf[j] === GT) {
        sink.element(buf, i, j + 1);
        i = j + 1;
        continue;
      }
      if (j < limit && buf[j] === LT) {
        sink.junk('interrupted', j - i);
        i = j;
        continue;
      }
      if (j === n) {
        // Runs past the chunk: keep its start.
        this.#carryLen = 0;
        this.#append(buf, i, n);
        this.#state = 1;
        return;
      }
      // maxElement bytes and no '>' yet.
      sink.junk('overlong', j - i);
      this.#state = 2;
      this.#skipped = 0;
      i = j;
    }
    flushGarbage();
  }

  #append(buf: Uint8Array, from: number, to: number): void {
    const need = this.#carryLen + (to - from);
    if (need > this.#carry.length) {
      const bigger = new Uint8Array(Math.min(this.maxElement, Math.max(need, this.#carry.length * 2)));
      bigger.set(this.#carry.subarray(0, this.#carryLen));
      this.#carry = bigger;
    }
    this.#carry.set(buf.subarray(from, to), this.#carryLen);
    this.#carryLen = need;
  }

  /** Forgets a partial element (after a reconnect). */
  reset(): void {
    this.#carryLen = 0;
    this.#state = 0;
    this.#skipped = 0;
  }
}

// ---- words --------------------------------------------------------------------------------------

/** Word boundaries inside one element, reused between calls (no allocation per element). */
export class Words {
  count = 0;
  readonly start: Int32Array;
  readonly end: Int32Array;
  buf: Uint8Array = new Uint8Array(0);

  constructor(max = 2200) {
    this.start = new Int32Array(max);
    this.end = new Int32Array(max);
  }

  /**
   * Splits the element `buf[start..end)` (with its `<` and `>`) at whitespace. Returns false when it
   * has more words than this holds.
   */
  split(buf: Uint8Array, start: number, end: number): boolean {
    this.buf = buf;
    let n = 0;
    let i = start + 1;
    const stop = end - 1;
    const max = this.start.length;
    while (i < stop) {
      while (i < stop && isSpace(buf[i]!)) i++;
      if (i >= stop) break;
      if (n === max) return false;
      this.start[n] = i;
      while (i < stop && !isSpace(buf[i]!)) i++;
      this.end[n] = i;
      n++;
    }
    this.count = n;
    return true;
  }

  length(w: number): number {
    return this.end[w]! - this.start[w]!;
  }

  /** True when word `w` is exactly the ASCII `text` (text is short and lower-case). */
  is(w: number, text: string): boolean {
    const s = this.start[w]!;
    if (this.end[w]! - s !== text.length) return false;
    for (let k = 0; k < text.length; k++) if (this.buf[s + k] !== text.charCodeAt(k)) return false;
    return true;
  }

  text(w: number): string {
    let out = '';
    for (let k = this.start[w]!; k < this.end[w]!; k++) out += String.fromCharCode(this.buf[k]!);
    return out;
  }

  /** Hex value of word `w` (1..8 digits), or -1. */
  hex(w: number): number {
    return hexValue(this.buf, this.start[w]!, this.end[w]!);
  }

  /** Decimal value of word `w` (1..10 digits), or -1. */
  dec(w: number): number {
    return decValue(this.buf, this.start[w]!, this.end[w]!);
  }
}

/** Hex value of `buf[s..e)`, 1..8 digits; -1 when empty, too long or not hex. */
export function hexValue(buf: Uint8Array, s: number, e: number): number {
  if (e <= s || e - s > 8) return -1;
  let v = 0;
  for (let k = s; k < e; k++) {
    const d = HEX_VALUE[buf[k]!]!;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

/** Decimal value of `buf[s..e)`, 1..10 digits; -1 when empty, too long or not decimal. */
export function decValue(buf: Uint8Array, s: number, e: number): number {
  if (e <= s || e - s > 10) return -1;
  let v = 0;
  for (let k = s; k < e; k++) {
    const d = buf[k]! - 0x30;
    if (d < 0 || d > 9) return -1;
    v = v * 10 + d;
  }
  return v;
}

// ---- frames from commands -----------------------------------------------------------------------

/**
 * Scratch payload arrays by length 0..64, so a parsed frame needs no allocation (the hub copies
 * what it keeps).
 */
export function scratchPayloads(): Uint8Array[] {
  return Array.from({ length: 65 }, (_, n) => new Uint8Array(n));
}

/**
 * Reads an identifier word into `f.id`/`f.extended`. Extended when the word has 8 digits (as
 * socketcand decides) or when the value does not fit 11 bits (python-can 4.1 sends extended
 * identifiers without zero padding). Returns an error message or null.
 */
function readId(w: Words, i: number, f: MutableCanFrame): string | null {
  const v = w.hex(i);
  if (v < 0) return `bad identifier "${w.text(i)}" (1..8 hex digits)`;
  if (v > CanIdMax.EXTENDED) return `identifier ${w.text(i)} is larger than 1FFFFFFF`;
  f.id = v;
  f.extended = w.length(i) === 8 || v > CanIdMax.STANDARD;
  return null;
}

/** Reads `count` byte words from word `first` into `data`; an error message or null. */
function readBytes(w: Words, first: number, data: Uint8Array): string | null {
  for (let k = 0; k < data.length; k++) {
    const v = w.hex(first + k);
    if (v < 0 || v > 0xff || w.length(first + k) > 2) return `bad data byte "${w.text(first + k)}"`;
    data[k] = v;
  }
  return null;
}

/** A length/DLC word read as decimal (socketcand) or hex (python-can writes `{dlc:X}`). */
function lengthMatches(w: Words, i: number, n: number): boolean {
  return w.dec(i) === n || w.hex(i) === n;
}

function resetFrame(f: MutableCanFrame): void {
  f.rtr = false;
  f.fd = false;
  f.brs = false;
  f.esi = false;
  f.len8Dlc = 0;
  f.timestampNs = 0n;
  f.origin = 0;
}

/**
 * Parses `< send ID DLC B0 ... >` (words already split; word 0 is `send`) into `f`, using
 * `payloads` for the data. Beyond socketcand, which takes DLC 0..8 with as many bytes:
 * - DLC 9..15 (decimal, or one hex digit A..F) with 8 bytes: a classic frame with that raw DLC
 *   (Linux len8_dlc);
 * - more than 8 bytes with a matching length (decimal or hex, as python-can writes it for FD
 *   messages): a CAN FD frame without BRS.
 * Returns an error message or null.
 */
export function parseSend(w: Words, f: MutableCanFrame, payloads: Uint8Array[]): string | null {
  if (w.count < 3) return 'send needs an identifier and a length: < send ID DLC B0 ... >';
  const err = parseFrameWords(w, 1, f, payloads);
  return err === null ? null : `send: ${err}`;
}

/**
 * Reads `ID DLC B0 ...` starting at word `first` (the tail of `send`, `add`, `update`) into `f`.
 * Returns an error message or null.
 */
export function parseFrameWords(
  w: Words,
  first: number,
  f: MutableCanFrame,
  payloads: Uint8Array[],
): string | null {
  if (w.count < first + 2) return 'an identifier and a length are needed';
  resetFrame(f);
  const idErr = readId(w, first, f);
  if (idErr !== null) return idErr;
  const lw = first + 1;
  const k = w.count - first - 2;
  if (k > 64) return `${k} data bytes (at most 64)`;
  const data = payloads[k]!;
  const dec = w.dec(lw);
  if (k <= 8 && lengthMatches(w, lw, k)) {
    f.len = k;
  } else if (k === 8 && ((dec >= 9 && dec <= 15) || (w.length(lw) === 1 && w.hex(lw) >= 10))) {
    f.len = 8;
    f.len8Dlc = dec >= 9 ? dec : w.hex(lw);
  } else if (k > 8 && lengthMatches(w, lw, k)) {
    if (!isValidFdLength(k)) return `${k} bytes is not a CAN FD length (12, 16, 20, 24, 32, 48, 64)`;
    f.fd = true;
    f.len = k;
  } else {
    return `length "${w.text(lw)}" does not match the ${k} data bytes given`;
  }
  const bytesErr = readBytes(w, first + 2, data);
  if (bytesErr !== null) return bytesErr;
  f.data = data;
  return null;
}

/** Reads `ID` at word `i` (identifier only, for `delete`, `unsubscribe`...); an error or null. */
export function parseIdWord(w: Words, i: number, f: MutableCanFrame): string | null {
  resetFrame(f);
  return readId(w, i, f);
}

/** Parses `< sendrtr ID DLC >`: a remote frame, DLC 0..8 or 9..15 (requests 8 bytes). */
export function parseSendRtr(w: Words, f: MutableCanFrame, payloads: Uint8Array[]): string | null {
  if (w.count !== 3) return 'sendrtr needs an identifier and a DLC: < sendrtr ID DLC >';
  resetFrame(f);
  const idErr = readId(w, 1, f);
  if (idErr !== null) return `sendrtr: ${idErr}`;
  const dlc = w.dec(2) >= 0 ? w.dec(2) : w.length(2) === 1 ? w.hex(2) : -1;
  if (dlc < 0 || dlc > 15) return `sendrtr: bad DLC "${w.text(2)}" (0..15)`;
  f.rtr = true;
  f.len = Math.min(dlc, 8);
  f.len8Dlc = dlc > 8 ? dlc : 0;
  f.data = payloads[0]!;
  return null;
}

/** Parses `< fdsend ID FLAGS LEN B0 ... >` (socketcand's CAN FD form): a CAN FD frame. */
export function parseFdSend(w: Words, f: MutableCanFrame, payloads: Uint8Array[]): string | null {
  if (w.count < 4) return 'fdsend needs an identifier, flags and a length: < fdsend ID FLAGS LEN B0 ... >';
  resetFrame(f);
  const idErr = readId(w, 1, f);
  if (idErr !== null) return `fdsend: ${idErr}`;
  const flags = w.hex(2);
  if (flags < 0 || flags > 0x07 || w.length(2) > 2) {
    return `fdsend: bad flags "${w.text(2)}" (hex: BRS 1, ESI 2, FDF 4)`;
  }
  const len = w.dec(3);
  const k = w.count - 4;
  if (len < 0 || len !== k) return `fdsend: length "${w.text(3)}" does not match the ${k} data bytes given`;
  if (!isValidFdLength(k))
    return `fdsend: ${k} bytes is not a CAN FD length (0..8, 12, 16, 20, 24, 32, 48, 64)`;
  const data = payloads[k]!;
  const bytesErr = readBytes(w, 4, data);
  if (bytesErr !== null) return `fdsend: ${bytesErr}`;
  f.fd = true;
  f.brs = (flags & FD_FLAG_BRS) !== 0;
  f.esi = (flags & FD_FLAG_ESI) !== 0;
  f.len = k;
  f.data = data;
  return null;
}

export const FD_FLAG_BRS = 0x01;
export const FD_FLAG_ESI = 0x02;
export const FD_FLAG_FDF = 0x04;

// ---- frames from server elements (the client side) ----------------------------------------------

/** What one element from a server is, for a client (a link). */
export type ServerElementKind = 'frame' | 'error' | 'ok' | 'hi' | 'echo' | 'stat' | 'other';

/** Seconds and microseconds of a `SECS.USECS` word as nanoseconds since the epoch; -1n when bad. */
function readTimestamp(w: Words, i: number): bigint {
  const buf = w.buf;
  const s = w.start[i]!;
  const e = w.end[i]!;
  let dot = -1;
  for (let k = s; k < e; k++) {
    if (buf[k] === DOT) {
      dot = k;
      break;
    }
  }
  if (dot < 0) return -1n;
  const secs = decValue(buf, s, dot);
  const frac = decValue(buf, dot + 1, e);
  if (secs < 0 || frac < 0 || e - dot - 1 > 9) return -1n;
  let ns = frac;
  for (let k = e - dot - 1; k < 9; k++) ns *= 10;
  return BigInt(secs) * 1_000_000_000n + BigInt(ns);
}

function hasDot(w: Words, i: number): boolean {
  for (let k = w.start[i]!; k < w.end[i]!; k++) if (w.buf[k] === DOT) return true;
  return false;
}

/** Data words from `first` on, either one contiguous hex word or spaced 1..2 digit bytes. */
function readDataWords(w: Words, first: number, payloads: Uint8Array[]): Uint8Array | string {
  const words = w.count - first;
  if (words <= 0) return payloads[0]!;
  if (words === 1 && w.length(first) > 2) {
    const len = w.length(first);
    if (len % 2 !== 0 || len > 128) return `bad data "${w.text(first)}"`;
    const data = payloads[len / 2]!;
    const s = w.start[first]!;
    for (let k = 0; k < data.length; k++) {
      const hi = HEX_VALUE[w.buf[s + 2 * k]!]!;
      const lo = HEX_VALUE[w.buf[s + 2 * k + 1]!]!;
      if (hi < 0 || lo < 0) return `bad data "${w.text(first)}"`;
      data[k] = (hi << 4) | lo;
    }
    return data;
  }
  if (words > 64) return `${words} data bytes`;
  const data = payloads[words]!;
  const err = readBytes(w, first, data);
  return err ?? data;
}

/**
 * Parses a server's `< frame ID TS DATA >`, `< fdframe ID FLAGS TS DATA >` (also the older
 * `< fdframe ID TS DATA >`) or `< rtr ID TS DLC >` into `f` (timestamp: wall-clock ns, or 0n when
 * absent or bad). Returns an error message or null.
 */
export function parseServerFrame(
  w: Words,
  f: MutableCanFrame,
  payloads: Uint8Array[],
  withTimestamp = true,
): string | null {
  resetFrame(f);
  if (w.count < 3) return 'frame element too short';
  const idErr = readId(w, 1, f);
  if (idErr !== null) return idErr;
  if (w.is(0, 'rtr')) {
    const dlc = w.count === 4 ? w.dec(3) : -1;
    if (dlc < 0 || dlc > 15) return 'bad rtr element';
    f.rtr = true;
    f.len = Math.min(dlc, 8);
    f.len8Dlc = dlc > 8 ? dlc : 0;
    f.data = payloads[0]!;
    if (withTimestamp) {
      const ts = readTimestamp(w, 2);
      f.timestampNs = ts < 0n ? 0n : ts;
    }
    return null;
  }
  let tsWord = 2;
  if (w.is(0, 'fdframe')) {
    f.fd = true;
    if (!hasDot(w, 2)) {
      const flags = w.hex(2);
      if (flags < 0 || w.length(2) > 2) return `bad fdframe flags "${w.text(2)}"`;
      f.brs = (flags & FD_FLAG_BRS) !== 0;
      f.esi = (flags & FD_FLAG_ESI) !== 0;
      tsWord = 3;
    }
  }
  if (w.count <= tsWord || !hasDot(w, tsWord)) return 'frame element without a timestamp';
  if (withTimestamp) {
    const ts = readTimestamp(w, tsWord);
    f.timestampNs = ts < 0n ? 0n : ts;
  }
  const data = readDataWords(w, tsWord + 1, payloads);
  if (typeof data === 'string') return data;
  if (f.fd ? !isValidFdLength(data.length) : data.length > 8) return `${data.length} data bytes`;
  f.len = data.length;
  f.data = data;
  return null;
}

// ---- writing ------------------------------------------------------------------------------------

/**
 * A growable byte buffer for outgoing elements. `take()` hands the written bytes over (a fresh
 * array, so the caller may keep it, e.g. for a socket write) and starts anew.
 */
export class ByteWriter {
  buf: Uint8Array;
  pos = 0;
  readonly #initial: number;

  constructor(initial = 64 * 1024) {
    this.#initial = initial;
    this.buf = new Uint8Array(initial);
  }

  /** Makes room for `n` more bytes. */
  reserve(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const bigger = new Uint8Array(Math.max(this.buf.length * 2, this.pos + n));
    bigger.set(this.buf.subarray(0, this.pos));
    this.buf = bigger;
  }

  ascii(s: string): void {
    this.reserve(s.length);
    for (let k = 0; k < s.length; k++) this.buf[this.pos++] = s.charCodeAt(k) & 0x7f;
  }

  /** Appends pre-encoded bytes. */
  bytes(b: Uint8Array): void {
    this.reserve(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }

  /** `digits` upper-case hex digits of `v`. */
  hex(v: number, digits: number): void {
    this.reserve(digits);
    const b = this.buf;
    for (let k = digits - 1; k >= 0; k--) {
      b[this.pos + k] = HEX_CHAR[v & 0xf]!;
      v >>>= 4;
    }
    this.pos += digits;
  }

  /** `v` in lower-case-free minimal hex (python-can style bytes use this too; socketcand reads any). */
  hexByte(v: number): void {
    this.reserve(2);
    this.buf[this.pos++] = HEX_CHAR[v >> 4]!;
    this.buf[this.pos++] = HEX_CHAR[v & 0xf]!;
  }

  dec(v: number): void {
    if (v < 10) {
      this.reserve(1);
      this.buf[this.pos++] = 0x30 + v;
      return;
    }
    this.ascii(String(v));
  }

  get length(): number {
    return this.pos;
  }

  /** The bytes written so far, as a new array; the writer starts over (keeping its capacity). */
  take(): Uint8Array {
    const out = this.buf.slice(0, this.pos);
    this.pos = 0;
    if (this.buf.length > 4 * this.#initial) this.buf = new Uint8Array(this.#initial);
    return out;
  }

  /** The bytes written so far, as a view (valid until the next write); the writer starts over. */
  view(): Uint8Array {
    const out = this.buf.subarray(0, this.pos);
    this.pos = 0;
    return out;
  }
}

/**
 * Formats `SECS.USECS` for wall-clock nanoseconds, caching the last value (frames of one batch share
 * their timestamp, so most calls are a comparison).
 */
export class TimestampText {
  #lastNs = -1n;
  #bytes = new Uint8Array(0);

  /** The bytes of `SECS.USECS` for `wallNs` (valid until the next call with another value). */
  of(wallNs: bigint): Uint8Array {
    if (wallNs === this.#lastNs) return this.#bytes;
    this.#lastNs = wallNs;
    const us = wallNs / 1000n;
    const secs = us / 1_000_000n;
    const usecs = Number(us - secs * 1_000_000n);
    const s = `${secs}.${String(usecs).padStart(6, '0')}`;
    const b = new Uint8Array(s.length);
    for (let k = 0; k < s.length; k++) b[k] = s.charCodeAt(k);
    this.#bytes = b;
    return b;
  }
}

// Elements sent to clients start with a space (see writeRawFrame).
const FRAME_HEAD = ascii(' < frame ');
const FDFRAME_HEAD = ascii(' < fdframe ');
const RTR_HEAD = ascii(' < rtr ');
const ERROR_HEAD = ascii(' < error ');
const SEND_HEAD = ascii('< send ');
const FDSEND_HEAD = ascii('< fdsend ');
const SENDRTR_HEAD = ascii('< sendrtr ');

function writeId(out: ByteWriter, f: CanFrame): void {
  if (f.extended) out.hex(f.id, 8);
  else out.hex(f.id, 3);
}

/** The raw DLC to announce for a classic frame (len, or len8Dlc when set). */
function classicDlc(f: CanFrame): number {
  return f.len8Dlc !== 0 ? f.len8Dlc : f.len;
}

/**
 * Appends a raw-mode element for `f`, preceded by one space: `< frame ... >`, `< fdframe ... >`
 * or `< rtr ... >`. The space keeps python-can 4.1 from losing frames: after each read it drops
 * one byte more than the complete elements it parsed, which without a separator is the `<` of an
 * element split between two reads. (A space after each element would do the same, but leave a
 * lone space at the end of most reads, which python-can logs as bad data.)
 */
export function writeRawFrame(out: ByteWriter, f: CanFrame, ts: Uint8Array): void {
  const n = f.rtr ? 0 : f.len;
  out.reserve(40 + 2 * n + ts.length);
  if (f.rtr) {
    out.bytes(RTR_HEAD);
    writeId(out, f);
    out.ascii(' ');
    out.bytes(ts);
    out.ascii(' ');
    out.dec(classicDlc(f));
    out.ascii(' >');
    return;
  }
  if (f.fd) {
    out.bytes(FDFRAME_HEAD);
    writeId(out, f);
    out.ascii(' ');
    out.hexByte(FD_FLAG_FDF | (f.brs ? FD_FLAG_BRS : 0) | (f.esi ? FD_FLAG_ESI : 0));
  } else {
    out.bytes(FRAME_HEAD);
    writeId(out, f);
  }
  const b = out.buf;
  let p = out.pos;
  b[p++] = SP;
  b.set(ts, p);
  p += ts.length;
  b[p++] = SP;
  const d = f.data;
  for (let k = 0; k < n; k++) {
    const v = d[k]!;
    b[p++] = HEX_CHAR[v >> 4]!;
    b[p++] = HEX_CHAR[v & 0xf]!;
  }
  b[p++] = SP;
  b[p++] = GT;
  out.pos = p;
}

/**
 * Appends a BCM-mode `< frame ID SECS.USECS B0 B1 ... >` (bytes spaced, each followed by a space,
 * as socketcand's broadcast manager mode writes them), preceded by one space.
 */
export function writeBcmFrame(out: ByteWriter, f: CanFrame, ts: Uint8Array): void {
  out.reserve(40 + 3 * f.len + ts.length);
  out.bytes(FRAME_HEAD);
  writeId(out, f);
  out.ascii(' ');
  out.bytes(ts);
  out.ascii(' ');
  for (let k = 0; k < f.data.length; k++) {
    out.hexByte(f.data[k]!);
    out.ascii(' ');
  }
  out.ascii(' >');
}

/**
 * Appends ` < error CLASS SECS.USECS DATA >` (with the leading space): socketcand's raw-mode error element (class
 * bits %03X, timestamp) with the 8 data bytes of the Linux error frame added as a third word.
 */
export function writeErrorFrame(out: ByteWriter, e: CanErrorFrame, ts: Uint8Array): void {
  out.bytes(ERROR_HEAD);
  const cls = e.classBits & CanErr.MASK;
  out.hex(cls, cls > 0xfff ? 8 : 3);
  out.ascii(' ');
  out.bytes(ts);
  out.ascii(' ');
  for (let k = 0; k < 8; k++) out.hexByte(e.data[k] ?? 0);
  out.ascii(' >');
}

/**
 * Appends the client command that puts `f` on a socketcand bus: `< send ID DLC B0 ... >` (classic,
 * DLC decimal; a len8_dlc frame announces its raw DLC 9..15), `< sendrtr ID DLC >`, or
 * `< fdsend ID FLAGS LEN B0 ... >` for CAN FD.
 */
export function writeSendCommand(out: ByteWriter, f: CanFrame): void {
  const n = f.rtr ? 0 : f.len;
  out.reserve(32 + 3 * n);
  if (f.rtr) {
    out.bytes(SENDRTR_HEAD);
    writeId(out, f);
    out.ascii(' ');
    out.dec(classicDlc(f));
    out.ascii(' >');
    return;
  }
  if (f.fd) {
    out.bytes(FDSEND_HEAD);
    writeId(out, f);
    out.ascii(' ');
    out.hexByte((f.brs ? FD_FLAG_BRS : 0) | (f.esi ? FD_FLAG_ESI : 0));
    out.ascii(' ');
    out.dec(n);
  } else {
    out.bytes(SEND_HEAD);
    writeId(out, f);
    out.ascii(' ');
    out.dec(classicDlc(f));
  }
  const b = out.buf;
  let p = out.pos;
  const d = f.data;
  for (let k = 0; k < n; k++) {
    const v = d[k]!;
    b[p++] = SP;
    b[p++] = HEX_CHAR[v >> 4]!;
    b[p++] = HEX_CHAR[v & 0xf]!;
  }
  b[p++] = SP;
  b[p++] = GT;
  out.pos = p;
}

/** `< error TEXT >` with `<` and `>` in TEXT replaced, so the element stays one element. */
export function errorElement(text: string): string {
  return `< error ${text.replace(/[<>]/g, '_').replace(/[^\x20-\x7e]/g, '?')} >`;
}
