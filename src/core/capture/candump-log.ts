/**
 * The can-utils `candump -l` log: one line per frame, `(SSSSSSSSSS.uuuuuu) IFNAME FRAME [R|T]`, read by
 * canplayer, log2asc and python-can's LogReader.
 *
 * Written: seconds with 10 digits and microseconds with 6 (what canplayer and log2asc of every
 * can-utils version parse; nanoseconds are truncated), the bus name as interface name, the frame in
 * cansend syntax (FD as `##<flags>` with BRS = 1, ESI = 2 and FDF left out, as can-utils before 2025.01
 * and python-can write it), and ` T` for frames a guest sent, ` R` for the others (candump `-x`).
 * Error frames are `CAN_ERR_FLAG | class bits` with 8 data bytes, as candump logs them.
 *
 * Read: 1..9 fraction digits, any FD flags nibble, `R`/`T` or none, `DROPCOUNT:` lines skipped; a
 * line that is not a frame is reported with its number and skipped.
 */
import { CanErr, type CanErrorFrame } from '../bus/can-error.js';
import { type CanFrame, parseCandumpLine } from '../bus/can-frame.js';
import { ascii, HEX_UPPER, hexValue, InputBuffer, putDec, putHex } from './bytes.js';
import { ChunkEncoder } from './encoder-base.js';
import type {
  CaptureDecoder,
  CaptureEncoder,
  CaptureEncoderOptions,
  CaptureEvent,
  CaptureTag,
  Direction,
  FileTotals,
} from './types.js';

interface LogTag extends CaptureTag {
  readonly suffix: Uint8Array;
}

const NS_PER_S = 1_000_000_000n;
/** The longest line: prefix 20, interface (up to 64 here), frame 8+2+1+128+2, suffix 3. */
const MAX_FIXED = 20 + 1 + 8 + 2 + 1 + 128 + 2 + 3;

export class CandumpLogEncoder extends ChunkEncoder implements CaptureEncoder {
  readonly format = 'log' as const;
  readonly channels: string[] = [];
  readonly headerHasTotals = false;
  readonly #names: Uint8Array[] = [];
  /** `(SSSSSSSSSS.uuuuuu) ` of the last timestamp. */
  readonly #prefix = new Uint8Array(24);
  #prefixLen = 0;
  /** `startNs` as whole seconds and the nanoseconds after them. */
  readonly #startS: number;
  readonly #startFraction: number;

  constructor(opts: CaptureEncoderOptions) {
    super(opts, 256 * 1024);
    this.#startS = Number(opts.startNs / NS_PER_S);
    this.#startFraction = Number(opts.startNs % NS_PER_S);
  }

  addChannel(name: string): number {
    // Interface names cannot hold whitespace in this format.
    const safe = name.replace(/[^\x21-\x7e]/g, '_') || 'can';
    this.channels.push(name);
    this.#names.push(ascii(safe));
    this.out.channels = this.channels.length;
    return this.channels.length - 1;
  }

  tag(port: string | undefined, direction: Direction | undefined): LogTag {
    const suffix = direction === undefined ? '' : direction === 'outbound' ? ' T' : ' R';
    return { port, direction, suffix: ascii(suffix) };
  }

  protected stampWall(wallNs: bigint): void {
    const w = wallNs < 0n ? 0n : wallNs;
    this.#put(Number(w / NS_PER_S), Math.floor(Number(w % NS_PER_S) / 1000));
  }

  /** `stampWall` of `startNs + atNs`, in numbers. */
  protected stampAt(atNs: number): void {
    const ns = this.#startFraction + atNs;
    const carry = Math.floor(ns / 1e9);
    const s = this.#startS + carry;
    if (s < 0) this.#put(0, 0);
    else this.#put(s, Math.floor((ns - carry * 1e9) / 1000));
  }

  /** The line prefix `(seconds.micros) `. */
  #put(seconds: number, micros: number): void {
    const b = this.#prefix;
    b[0] = 0x28; // (
    let p = putDec(b, 1, seconds, 10);
    b[p++] = 0x2e; // .
    p = putDec(b, p, micros, 6);
    b[p++] = 0x29; // )
    b[p++] = 0x20;
    this.#prefixLen = p;
  }

  /** Writes the line prefix and interface; returns the offset for the frame text. */
  /** Writes the line prefix and interface (time already stamped); returns where the frame goes. */
  #begin(channel: number, max: number): number {
    const name = this.#names[channel];
    if (name === undefined) throw new RangeError(`channel ${channel} was not declared (addChannel)`);
    const out = this.out;
    const at = out.reserve(MAX_FIXED + name.length + max);
    const b = out.buf;
    b.set(this.#prefix.subarray(0, this.#prefixLen), at);
    let p = at + this.#prefixLen;
    b.set(name, p);
    p += name.length;
    b[p++] = 0x20;
    return p;
  }

  #end(p: number, tag: CaptureTag): void {
    const b = this.out.buf;
    const suffix = (tag as LogTag).suffix;
    b.set(suffix, p);
    p += suffix.length;
    b[p++] = 0x0a;
    this.out.commit(p, 1);
  }

  protected encode(channel: number, f: CanFrame, tag: CaptureTag): void {
    let p = this.#begin(channel, 0);
    const b = this.out.buf;
    p = f.extended ? putHex(b, p, f.id, 8) : putHex(b, p, f.id, 3);
    b[p++] = 0x23; // #
    if (f.rtr) {
      b[p++] = 0x52; // R
      if (f.len !== 0) b[p++] = HEX_UPPER[f.len]!;
    } else {
      if (f.fd) {
        b[p++] = 0x23;
        b[p++] = HEX_UPPER[(f.brs ? 1 : 0) | (f.esi ? 2 : 0)]!;
      }
      const d = f.data;
      for (let i = 0; i < d.length; i++) {
        const v = d[i]!;
        b[p++] = HEX_UPPER[v >> 4]!;
        b[p++] = HEX_UPPER[v & 15]!;
      }
    }
    if (f.len8Dlc !== 0) {
      b[p++] = 0x5f; // _
      b[p++] = HEX_UPPER[f.len8Dlc]!;
    }
    this.#end(p, tag);
  }

  errorFrame(channel: number, e: CanErrorFrame, wallNs: bigint, tag: CaptureTag): void {
    this.stamp(wallNs);
    let p = this.#begin(channel, 0);
    const b = this.out.buf;
    p = putHex(b, p, (CanErr.FLAG | (e.classBits & CanErr.MASK)) >>> 0, 8);
    b[p++] = 0x23;
    for (let i = 0; i < 8; i++) p = putHex(b, p, e.data[i] ?? 0, 2);
    this.#end(p, tag);
  }

  fileHeader(_channels: number, _totals: FileTotals): Uint8Array {
    return new Uint8Array(0);
  }

  fileTrailer(): Uint8Array {
    return new Uint8Array(0);
  }
}

const LINE = /^\((\d{1,20})\.(\d{1,9})\)\s+(\S+)\s+(\S+)(?:\s+([RT]))?$/;

export class CandumpLogDecoder implements CaptureDecoder {
  readonly format = 'log' as const;
  readonly #in = new InputBuffer();
  readonly #channels = new Map<string, number>();
  readonly channelNames: string[] = [];
  #line = 0;

  push(bytes: Uint8Array): void {
    this.#in.push(bytes);
  }

  end(): void {
    this.#in.ended = true;
  }

  #channel(name: string): number {
    let c = this.#channels.get(name);
    if (c === undefined) {
      c = this.channelNames.length;
      this.#channels.set(name, c);
      this.channelNames.push(name);
    }
    return c;
  }

  next(): CaptureEvent | undefined {
    for (;;) {
      const text = this.#in.line();
      if (text === undefined) return undefined;
      const n = ++this.#line;
      const t = text.trim();
      if (t === '' || t.startsWith('DROPCOUNT')) continue;
      const ev = this.#parse(t, n);
      if (ev !== undefined) return ev;
    }
  }

  #parse(t: string, line: number): CaptureEvent {
    const bad = (message: string): CaptureEvent => ({
      kind: 'bad',
      position: { line, text: `line ${line}` },
      message,
    });
    const m = LINE.exec(t);
    if (m === null) return bad(`not a candump log line: ${JSON.stringify(t.slice(0, 80))}`);
    const dir: Direction | undefined = m[5] === 'T' ? 'outbound' : m[5] === 'R' ? 'inbound' : undefined;
    const token = m[4]!;
    const channel = this.#channel(m[3]!);
    const hash = token.indexOf('#');
    if (hash === 8) {
      let id = 0;
      for (let i = 0; i < 8; i++) id = id * 16 + Math.max(0, hexValue(token.charCodeAt(i)));
      if ((id & CanErr.FLAG) !== 0 && /^[0-9A-Fa-f]{8}#[0-9A-Fa-f]{0,16}$/.test(token)) {
        const data = new Uint8Array(8);
        for (let i = 0; i * 2 + 9 < token.length && i < 8; i++) {
          data[i] = hexValue(token.charCodeAt(9 + i * 2)) * 16 + hexValue(token.charCodeAt(10 + i * 2));
        }
        const timestampNs = BigInt(m[1]!) * NS_PER_S + BigInt(m[2]!.padEnd(9, '0'));
        return {
          kind: 'error-frame',
          error: { classBits: id & CanErr.MASK, data, timestampNs, origin: 0 },
          channel,
          direction: dir,
          port: undefined,
        };
      }
    }
    try {
      const parsed = parseCandumpLine(t);
      return { kind: 'frame', frame: parsed.frame, channel, direction: dir, port: undefined };
    } catch (err) {
      return bad((err as Error).message);
    }
  }
}
