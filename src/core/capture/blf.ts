/**
 * Vector BLF (binary logging format), as python-can's BLFReader and Vector's tools read it.
 *
 * Layout (little-endian): a 144-byte file header (`LOGG`, sizes, object count, start and stop time as
 * Windows SYSTEMTIME in local time, millisecond precision), then objects, each starting with `LOBJ`
 * and its size, followed by `size % 4` padding bytes (the format's own rule). Top-level objects are
 * LOG_CONTAINERs (type 10) whose payload, zlib-compressed (method 2) or stored (method 0), is a stream
 * of objects with a version-1 header (flags = nanosecond timestamps, timestamp relative to the file's
 * start time). Frames are CAN_MESSAGE2 (86: classic and RTR; DIR flag = Tx, 0x80 = RTR),
 * CAN_FD_MESSAGE_64 (101: CAN FD; EDL 0x1000, BRS 0x2000, ESI 0x4000; direction byte) and
 * CAN_ERROR_EXT (73: SocketCAN error frames, the class bits as identifier, the 8 error bytes as data).
 * Channels are 1-based in order of declaration. `Tx` marks frames a guest sent.
 *
 * Compression is not done here (the core has no zlib): the encoder's chunks are container payloads,
 * which the caller deflates and hands to `wrap`; the decoder takes an `inflate` function.
 *
 * Read: containers of either method; objects with header version 1 or 2, 10 us or 1 ns timestamps;
 * CAN_MESSAGE/CAN_MESSAGE2, CAN_FD_MESSAGE, CAN_FD_MESSAGE_64 and CAN_ERROR_EXT; objects that span two
 * containers. Other object types are skipped. A container that does not inflate, or an object whose
 * header is broken, is reported (with the container's byte offset and the object's offset inside it)
 * and reading resumes at the next object found.
 */
import type { CanErrorFrame } from '../bus/can-error.js';
import { CAN_FD_LENGTHS, type CanFrame, makeCanFrame } from '../bus/can-frame.js';
import { InputBuffer, wordOf } from './bytes.js';
import { ChunkEncoder } from './encoder-base.js';
import { type FrameStage, STAGED_EXTENDED, STAGED_FD, STAGED_RTR } from './stage.js';
import type {
  CaptureDecoder,
  CaptureEncoder,
  CaptureEncoderOptions,
  CaptureEvent,
  CaptureTag,
  Direction,
  FileTotals,
} from './types.js';

export const BLF_HEADER_SIZE = 144;
const OBJ_BASE = 16;
const OBJ_V1 = 32;
const LOG_CONTAINER = 10;
const CAN_MESSAGE = 1;
const CAN_ERROR_EXT = 73;
const CAN_MESSAGE2 = 86;
const CAN_FD_MESSAGE = 100;
const CAN_FD_MESSAGE_64 = 101;
const TIME_TEN_MICS = 1;
const TIME_ONE_NANS = 2;
const EXT_ID = 0x80000000;
const MSG_DIR_TX = 0x01;
const MSG_RTR = 0x80;
const FD64_RTR = 0x0010;
const FD64_EDL = 0x1000;
const FD64_BRS = 0x2000;
const FD64_ESI = 0x4000;
/** The default (and usual) uncompressed size of one container. */
export const BLF_CONTAINER_SIZE = 128 * 1024;
const SIG_LOGG = 0x47474f4c; // 'LOGG' little-endian
const SIG_LOBJ = 0x4a424f4c; // 'LOBJ' little-endian
const NS_PER_MS = 1_000_000n;

/** zlib (RFC 1950) inflate: the container payload, expected to be `size` bytes. */
export type BlfInflate = (data: Uint8Array, size: number) => Uint8Array;

interface BlfTag extends CaptureTag {
  readonly tx: boolean;
}

function putSystemTime(dv: DataView, off: number, ms: number): void {
  if (ms <= 0) {
    for (let i = 0; i < 8; i++) dv.setUint16(off + i * 2, 0, true);
    return;
  }
  const d = new Date(ms);
  const f = [
    d.getFullYear(),
    d.getMonth() + 1,
    d.getDay(),
    d.getDate(),
    d.getHours(),
    d.getMinutes(),
    d.getSeconds(),
    d.getMilliseconds(),
  ];
  for (let i = 0; i < 8; i++) dv.setUint16(off + i * 2, f[i]!, true);
}

function readSystemTime(dv: DataView, off: number): number {
  const g = (i: number): number => dv.getUint16(off + i * 2, true);
  if (g(0) === 0) return 0;
  const t = new Date(g(0), g(1) - 1, g(3), g(4), g(5), g(6), g(7)).getTime();
  return Number.isNaN(t) ? 0 : t;
}

export class BlfEncoder extends ChunkEncoder implements CaptureEncoder {
  readonly format = 'blf' as const;
  readonly channels: string[] = [];
  readonly headerHasTotals = true;
  readonly #startMs: number;
  /** The file's time base: `startNs` down to the millisecond (the header holds milliseconds). */
  readonly #startNs: bigint;
  /** `startNs - #startNs` (under a millisecond). */
  readonly #startFraction: number;
  #tsLow = 0;
  #tsHigh = 0;

  constructor(opts: CaptureEncoderOptions) {
    super(opts, BLF_CONTAINER_SIZE);
    this.#startMs = Number(opts.startNs / NS_PER_MS);
    this.#startNs = BigInt(this.#startMs) * NS_PER_MS;
    this.#startFraction = Number(opts.startNs - this.#startNs);
  }

  addChannel(name: string): number {
    this.channels.push(name);
    this.out.channels = this.channels.length;
    return this.channels.length - 1;
  }

  tag(port: string | undefined, direction: Direction | undefined): BlfTag {
    return { port, direction, tx: direction === 'outbound' };
  }

  protected stampWall(wallNs: bigint): void {
    let rel = wallNs - this.#startNs;
    if (rel < 0n) rel = 0n;
    this.#tsLow = Number(rel & 0xffffffffn);
    this.#tsHigh = Number(rel >> 32n);
  }

  /** `stampWall` of `startNs + atNs`, in numbers. */
  protected stampAt(atNs: number): void {
    let rel = atNs + this.#startFraction;
    if (rel < 0) rel = 0;
    const high = Math.floor(rel / 0x1_0000_0000);
    this.#tsHigh = high;
    this.#tsLow = rel - high * 0x1_0000_0000;
  }

  /**
   * Writes the header of an object of OBJ_V1 + `body` bytes (time already stamped); returns where
   * the object starts.
   */
  #begin(channel: number, type: number, body: number): number {
    if (!(channel >= 0 && channel < this.channels.length)) {
      throw new RangeError(`channel ${channel} was not declared (addChannel)`);
    }
    const size = OBJ_V1 + body;
    const out = this.out;
    const at = out.reserve(size + (size % 4));
    const dv = out.dv;
    dv.setUint32(at, SIG_LOBJ, true);
    dv.setUint16(at + 4, OBJ_V1, true);
    dv.setUint16(at + 6, 1, true);
    dv.setUint32(at + 8, size, true);
    dv.setUint32(at + 12, type, true);
    dv.setUint32(at + 16, TIME_ONE_NANS, true);
    dv.setUint16(at + 20, 0, true);
    dv.setUint16(at + 22, 0, true);
    dv.setUint32(at + 24, this.#tsLow, true);
    dv.setUint32(at + 28, this.#tsHigh, true);
    return at;
  }

  /** Ends the object of `size` bytes at `at` (padded to 4 bytes). */
  #end(at: number, size: number): void {
    const pad = size % 4;
    const b = this.out.buf;
    for (let i = at + size; i < at + size + pad; i++) b[i] = 0;
    this.out.commit(at + size + pad, 1);
  }

  protected encode(channel: number, f: CanFrame, tag: CaptureTag): void {
    const tx = (tag as BlfTag).tx;
    const id = (f.extended ? (f.id | EXT_ID) >>> 0 : f.id) >>> 0;
    if (!f.fd && this.out.u32 !== null && (this.out.pos & 3) === 0) {
      const flags = (tx ? MSG_DIR_TX : 0) | (f.rtr ? MSG_RTR : 0);
      const d = f.data;
      this.#classicWords(channel, id, flags, f.len8Dlc !== 0 ? f.len8Dlc : f.len, wordOf(d, 0), wordOf(d, 4));
      return;
    }
    if (!f.fd) {
      const size = OBJ_V1 + 24;
      const at = this.#begin(channel, CAN_MESSAGE2, 24);
      const b = this.out.buf;
      const dv = this.out.dv;
      const p = at + OBJ_V1;
      dv.setUint16(p, channel + 1, true);
      b[p + 2] = (tx ? MSG_DIR_TX : 0) | (f.rtr ? MSG_RTR : 0);
      b[p + 3] = f.len8Dlc !== 0 ? f.len8Dlc : f.len;
      dv.setUint32(p + 4, id, true);
      const d = f.data;
      for (let i = 0; i < 8; i++) b[p + 8 + i] = d[i] ?? 0;
      for (let i = p + 16; i < p + 24; i++) b[i] = 0; // frame length, bit count, reserved
      this.#end(at, size);
      return;
    }
    const n = f.len;
    const size = OBJ_V1 + 40 + n;
    const at = this.#begin(channel, CAN_FD_MESSAGE_64, 40 + n);
    const b = this.out.buf;
    const dv = this.out.dv;
    const p = at + OBJ_V1;
    b[p] = channel + 1;
    b[p + 1] = CAN_FD_LENGTHS.indexOf(n as (typeof CAN_FD_LENGTHS)[number]);
    b[p + 2] = n;
    b[p + 3] = 0;
    dv.setUint32(p + 4, id, true);
    dv.setUint32(p + 8, 0, true); // frame length
    dv.setUint32(p + 12, FD64_EDL | (f.brs ? FD64_BRS : 0) | (f.esi ? FD64_ESI : 0), true);
    b.fill(0, p + 16, p + 36); // bit timings, BRS/CRC offsets, bit count
    b[p + 34] = tx ? 1 : 0; // direction (after the 16-bit bit count)
    b[p + 35] = 0; // ext data offset
    dv.setUint32(p + 36, 0, true); // crc
    b.set(f.data, p + 40);
    this.#end(at, size);
  }

  /**
   * CAN_MESSAGE2 as 14 aligned little-endian words: the same bytes as `#frame`'s byte stores, half
   * the stores. `word0`/`word1` are the payload's first 8 bytes as little-endian words, zero-padded.
   */
  #classicWords(channel: number, id: number, flags: number, dlc: number, word0: number, word1: number): void {
    if (!(channel >= 0 && channel < this.channels.length)) {
      throw new RangeError(`channel ${channel} was not declared (addChannel)`);
    }
    const size = OBJ_V1 + 24;
    const out = this.out;
    const at = out.reserve(size);
    const u = out.u32!;
    const w = at >>> 2;
    u[w] = SIG_LOBJ;
    u[w + 1] = OBJ_V1 | (1 << 16); // header size, header version
    u[w + 2] = size;
    u[w + 3] = CAN_MESSAGE2;
    u[w + 4] = TIME_ONE_NANS;
    u[w + 5] = 0; // client index, object version
    u[w + 6] = this.#tsLow;
    u[w + 7] = this.#tsHigh;
    u[w + 8] = ((channel + 1) | (flags << 16) | (dlc << 24)) >>> 0;
    u[w + 9] = id;
    u[w + 10] = word0;
    u[w + 11] = word1;
    u[w + 12] = 0; // frame length
    u[w + 13] = 0; // bit count, reserved
    out.commit(at + size, 1);
  }

  /**
   * Encodes every frame of `stage` (the recorder's batch), reading classic frames' fields straight
   * from its arrays; the stage is left as it was (the caller clears it).
   */
  encodeStaged(stage: FrameStage): void {
    const n = stage.size;
    const { id: ids, meta: metas, channel: channels, at: ats, tag: tags, word0, word1 } = stage;
    const out = this.out;
    for (let i = 0; i < n; i++) {
      const meta = metas[i]!;
      const flags = meta >>> 24;
      const atNs = ats[i]!;
      const tag = tags[i]! as BlfTag;
      if ((flags & STAGED_FD) !== 0 || out.u32 === null || (out.pos & 3) !== 0) {
        this.frameAt(channels[i]!, stage.frame(i), atNs, tag);
        continue;
      }
      if (this.out.at(atNs)) this.stampAt(atNs);
      const id = (flags & STAGED_EXTENDED) !== 0 ? (ids[i]! | EXT_ID) >>> 0 : ids[i]!;
      const len8 = (meta >>> 8) & 0xff;
      this.#classicWords(
        channels[i]!,
        id,
        (tag.tx ? MSG_DIR_TX : 0) | ((flags & STAGED_RTR) !== 0 ? MSG_RTR : 0),
        len8 !== 0 ? len8 : meta & 0xff,
        word0[i]!,
        word1[i]!,
      );
    }
  }

  errorFrame(channel: number, e: CanErrorFrame, wallNs: bigint, _tag: CaptureTag): void {
    this.stamp(wallNs);
    const size = OBJ_V1 + 32;
    const at = this.#begin(channel, CAN_ERROR_EXT, 32);
    const b = this.out.buf;
    const dv = this.out.dv;
    const p = at + OBJ_V1;
    b.fill(0, p, p + 32);
    dv.setUint16(p, channel + 1, true);
    b[p + 10] = 8; // dlc
    dv.setUint32(p + 16, e.classBits >>> 0, true);
    for (let i = 0; i < 8; i++) b[p + 24 + i] = e.data[i] ?? 0;
    this.#end(at, size);
  }

  fileHeader(_channels: number, totals: FileTotals): Uint8Array {
    const h = new Uint8Array(BLF_HEADER_SIZE);
    const dv = new DataView(h.buffer);
    dv.setUint32(0, SIG_LOGG, true);
    dv.setUint32(4, BLF_HEADER_SIZE, true);
    h.set([5, 0, 0, 0, 2, 6, 8, 1], 8); // application id and version, BLF version
    dv.setBigUint64(16, BigInt(totals.fileSize), true);
    dv.setBigUint64(24, BigInt(totals.uncompressedSize), true);
    dv.setUint32(32, totals.records, true);
    dv.setUint32(36, 0, true);
    putSystemTime(dv, 40, this.#startMs);
    const stop = totals.lastNs > 0n ? Number(totals.lastNs / NS_PER_MS) : this.#startMs;
    putSystemTime(dv, 56, stop);
    return h;
  }

  fileTrailer(): Uint8Array {
    return new Uint8Array(0);
  }

  wrap(payload: Uint8Array, compressed: Uint8Array | null): Uint8Array {
    return blfContainer(payload.length, compressed ?? payload, compressed !== null);
  }
}

/** A LOG_CONTAINER object holding `data` (deflated when `deflated`), with its padding. */
export function blfContainer(uncompressedSize: number, data: Uint8Array, deflated: boolean): Uint8Array {
  const size = OBJ_BASE + 16 + data.length;
  const out = new Uint8Array(size + (size % 4));
  const dv = new DataView(out.buffer);
  dv.setUint32(0, SIG_LOBJ, true);
  dv.setUint16(4, OBJ_BASE, true);
  dv.setUint16(6, 1, true);
  dv.setUint32(8, size, true);
  dv.setUint32(12, LOG_CONTAINER, true);
  dv.setUint16(16, deflated ? 2 : 0, true);
  dv.setUint32(24, uncompressedSize, true);
  out.set(data, 32);
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Reading

export class BlfDecoder implements CaptureDecoder {
  readonly format = 'blf' as const;
  readonly channelNames: readonly string[] = [];
  readonly #in = new InputBuffer();
  readonly #inflate: BlfInflate | undefined;
  #header = false;
  #broken = false;
  #startNs = 0n;
  /** Uncompressed object stream: what is left of the previous containers, then the current one. */
  #stream = new Uint8Array(0);
  #pos = 0;
  /** File offset of the container the stream position is in (for reports). */
  #containerAt = 0;
  #streamBase = 0;
  readonly #pending: CaptureEvent[] = [];

  constructor(opts: { inflate?: BlfInflate | undefined } = {}) {
    this.#inflate = opts.inflate;
  }

  push(bytes: Uint8Array): void {
    if (!this.#broken) this.#in.push(bytes);
  }

  end(): void {
    this.#in.ended = true;
  }

  next(): CaptureEvent | undefined {
    for (;;) {
      const p = this.#pending.shift();
      if (p !== undefined) return p;
      if (this.#innerStep()) continue;
      if (this.#broken || !this.#outerStep()) return undefined;
    }
  }

  #bad(offset: number, message: string, inner?: number): CaptureEvent {
    const text =
      inner === undefined ? `byte ${offset}` : `byte ${offset} (object at ${inner} in the container)`;
    return { kind: 'bad', position: { offset, text }, message };
  }

  /** Reads the header or one top-level object; false when more input is needed or done. */
  #outerStep(): boolean {
    const inp = this.#in;
    const at = inp.offset;
    if (!this.#header) {
      if (inp.available < 72) {
        if (inp.ended) {
          this.#pending.push(this.#bad(0, 'not a BLF file (shorter than its header)'));
          this.#broken = true;
          return true;
        }
        return false;
      }
      const dv = inp.view(72);
      const size = dv.getUint32(4, true);
      if (dv.getUint32(0, true) !== SIG_LOGG || size < 72) {
        this.#pending.push(this.#bad(0, 'not a BLF file (no LOGG header)'));
        this.#broken = true;
        return true;
      }
      if (inp.available < size) return inp.ended ? this.#truncated(at, size) : false;
      this.#startNs = BigInt(readSystemTime(dv, 40)) * NS_PER_MS;
      inp.consume(size);
      this.#header = true;
      return true;
    }
    if (inp.available < OBJ_BASE) {
      if (inp.ended && inp.available > 0) return this.#truncated(at, OBJ_BASE);
      return false;
    }
    const dv = inp.view(OBJ_BASE);
    if (dv.getUint32(0, true) !== SIG_LOBJ) {
      // Resynchronise on the next object signature.
      const skip = this.#findSignature(inp.peek(inp.available), 1);
      if (skip < 0 && !inp.ended) return false;
      const n = skip < 0 ? inp.available : skip;
      this.#pending.push(this.#bad(at, `no object signature; ${n} bytes skipped`));
      inp.consume(n);
      return true;
    }
    const size = dv.getUint32(8, true);
    const type = dv.getUint32(12, true);
    if (size < OBJ_BASE) {
      this.#pending.push(this.#bad(at, `object size ${size} is too small`));
      inp.consume(4);
      return true;
    }
    const total = size + (size % 4);
    if (inp.available < total) {
      if (inp.available >= size && inp.ended) {
        // The padding may be missing at the very end.
      } else {
        return inp.ended ? this.#truncated(at, total) : false;
      }
    }
    const obj = inp.peek(size).slice();
    inp.consume(Math.min(total, inp.available));
    if (type === LOG_CONTAINER) this.#container(obj, at);
    else this.#object(obj, 0, at, undefined);
    return true;
  }

  #truncated(at: number, size: number): boolean {
    this.#pending.push(this.#bad(at, `truncated: ${size} bytes announced, ${this.#in.available} present`));
    this.#in.consume(this.#in.available);
    return true;
  }

  #findSignature(b: Uint8Array, from: number): number {
    for (let i = from; i + 4 <= b.length; i++) {
      if (b[i] === 0x4c && b[i + 1] === 0x4f && b[i + 2] === 0x42 && b[i + 3] === 0x4a) return i;
    }
    return -1;
  }

  #container(obj: Uint8Array, at: number): void {
    const dv = new DataView(obj.buffer, obj.byteOffset, obj.length);
    if (obj.length < 32) {
      this.#pending.push(this.#bad(at, 'log container shorter than its header'));
      return;
    }
    const headerSize = dv.getUint16(4, true);
    if (headerSize < 16 || headerSize + 16 > obj.length) {
      this.#pending.push(this.#bad(at, `log container header size ${headerSize} is invalid`));
      return;
    }
    const method = dv.getUint16(headerSize, true);
    const rawSize = dv.getUint32(headerSize + 8, true);
    const data = obj.subarray(headerSize + 16);
    let payload: Uint8Array;
    if (method === 0) payload = data;
    else if (method === 2) {
      if (this.#inflate === undefined) {
        this.#pending.push(this.#bad(at, 'compressed container, but no inflate function was given'));
        return;
      }
      try {
        payload = this.#inflate(data, rawSize);
      } catch (err) {
        this.#pending.push(this.#bad(at, `container does not inflate: ${(err as Error).message}`));
        // What was left of the previous container cannot be completed now.
        this.#stream = new Uint8Array(0);
        this.#pos = 0;
        return;
      }
    } else {
      this.#pending.push(this.#bad(at, `container with unknown compression method ${method}`));
      return;
    }
    const rest = this.#stream.subarray(this.#pos);
    const next = new Uint8Array(rest.length + payload.length);
    next.set(rest);
    next.set(payload, rest.length);
    this.#stream = next;
    this.#streamBase = -rest.length;
    this.#pos = 0;
    this.#containerAt = at;
  }

  /** Parses one object from the uncompressed stream; false when the stream needs the next container. */
  #innerStep(): boolean {
    const s = this.#stream;
    let pos = this.#pos;
    if (pos >= s.length) return false;
    // Padding after the previous object: up to 3 bytes before the next signature.
    if (!(s[pos] === 0x4c && s[pos + 1] === 0x4f && s[pos + 2] === 0x42 && s[pos + 3] === 0x4a)) {
      const found = this.#findSignature(s.subarray(0, Math.min(s.length, pos + 8)), pos);
      if (found < 0) {
        if (s.length - pos <= 3) {
          // The padding of the last object: wait for the next container, or drop it at the end.
          if (!this.#in.ended) return false;
          this.#pos = s.length;
          return false;
        }
        if (s.length - pos < 8 && !this.#in.ended) return false; // may continue in the next container
        const next = this.#findSignature(s, pos);
        const innerAt = pos + this.#streamBase;
        this.#pending.push(
          this.#bad(
            this.#containerAt,
            `no object signature; ${next < 0 ? s.length - pos : next - pos} bytes skipped`,
            innerAt,
          ),
        );
        this.#pos = next < 0 ? s.length : next;
        return true;
      }
      pos = found;
    }
    if (s.length - pos < OBJ_BASE) {
      this.#pos = pos;
      return false;
    }
    const dv = new DataView(s.buffer, s.byteOffset, s.length);
    const size = dv.getUint32(pos + 8, true);
    if (size < OBJ_BASE) {
      this.#pending.push(
        this.#bad(this.#containerAt, `object size ${size} is too small`, pos + this.#streamBase),
      );
      this.#pos = pos + 4;
      return true;
    }
    if (pos + size > s.length) {
      this.#pos = pos;
      return false; // continues in the next container
    }
    const innerAt = pos + this.#streamBase;
    this.#pos = pos + size;
    this.#object(s, pos, this.#containerAt, innerAt);
    return true;
  }

  /** Decodes the object at `pos` of `s` into #pending (frames, error frames, reports). */
  #object(s: Uint8Array, pos: number, containerAt: number, innerAt: number | undefined): void {
    const dv = new DataView(s.buffer, s.byteOffset, s.length);
    const headerSize = dv.getUint16(pos + 4, true);
    const version = dv.getUint16(pos + 6, true);
    const size = dv.getUint32(pos + 8, true);
    const type = dv.getUint32(pos + 12, true);
    if (
      type !== CAN_MESSAGE &&
      type !== CAN_MESSAGE2 &&
      type !== CAN_FD_MESSAGE &&
      type !== CAN_FD_MESSAGE_64 &&
      type !== CAN_ERROR_EXT
    ) {
      return; // other objects (markers, statistics, other buses)
    }
    const bad = (m: string): void => {
      this.#pending.push(this.#bad(containerAt, m, innerAt));
    };
    if ((version !== 1 && version !== 2) || headerSize < OBJ_BASE + 16 || headerSize > size) {
      bad(`object header version ${version} / size ${headerSize} not understood`);
      return;
    }
    const flags = dv.getUint32(pos + 16, true);
    const ts = version === 1 ? dv.getBigUint64(pos + 24, true) : dv.getBigUint64(pos + 24, true);
    const rel = flags === TIME_TEN_MICS ? ts * 10_000n : ts;
    const ns = this.#startNs + rel;
    const p = pos + headerSize;
    const bodyLen = size - headerSize;
    const need = (n: number): boolean => {
      if (bodyLen >= n) return true;
      bad(`object type ${type} of ${bodyLen} bytes, expected at least ${n}`);
      return false;
    };
    try {
      switch (type) {
        case CAN_MESSAGE:
        case CAN_MESSAGE2: {
          if (!need(16)) return;
          const channel = dv.getUint16(p, true) - 1;
          const f = s[p + 2]!;
          const dlc = s[p + 3]!;
          const raw = dv.getUint32(p + 4, true);
          const extended = (raw & EXT_ID) !== 0;
          const rtr = (f & MSG_RTR) !== 0;
          const len = Math.min(dlc, 8);
          const frame = makeCanFrame({
            id: raw & 0x1fffffff,
            extended,
            rtr,
            len,
            len8Dlc: dlc > 8 ? dlc : 0,
            data: rtr ? undefined : s.subarray(p + 8, p + 8 + len),
            timestampNs: ns,
          });
          this.#frame(frame, channel, (f & MSG_DIR_TX) !== 0);
          return;
        }
        case CAN_FD_MESSAGE: {
          if (!need(84)) return;
          const channel = dv.getUint16(p, true) - 1;
          const f = s[p + 2]!;
          const dlc = s[p + 3]!;
          const raw = dv.getUint32(p + 4, true);
          const fdFlags = s[p + 13]!;
          const valid = s[p + 14]!;
          const fd = (fdFlags & 1) !== 0;
          const rtr = (f & MSG_RTR) !== 0;
          const len = fd ? (CAN_FD_LENGTHS[dlc & 15] ?? 0) : Math.min(dlc, 8);
          const frame = makeCanFrame({
            id: raw & 0x1fffffff,
            extended: (raw & EXT_ID) !== 0,
            rtr: !fd && rtr,
            fd,
            brs: fd && (fdFlags & 2) !== 0,
            esi: fd && (fdFlags & 4) !== 0,
            len,
            data: !fd && rtr ? undefined : s.subarray(p + 20, p + 20 + Math.min(valid, len)),
            timestampNs: ns,
          });
          this.#frame(frame, channel, (f & MSG_DIR_TX) !== 0);
          return;
        }
        case CAN_FD_MESSAGE_64: {
          if (!need(40)) return;
          const channel = s[p]! - 1;
          const dlc = s[p + 1]!;
          const valid = s[p + 2]!;
          const raw = dv.getUint32(p + 4, true);
          const f = dv.getUint32(p + 12, true);
          const dir = s[p + 34]!;
          const fd = (f & FD64_EDL) !== 0;
          const rtr = !fd && (f & FD64_RTR) !== 0;
          const len = fd ? (CAN_FD_LENGTHS[dlc & 15] ?? 0) : Math.min(dlc, 8);
          if (!rtr && !need(40 + Math.min(valid, len))) return;
          const frame = makeCanFrame({
            id: raw & 0x1fffffff,
            extended: (raw & EXT_ID) !== 0,
            rtr,
            fd,
            brs: fd && (f & FD64_BRS) !== 0,
            esi: fd && (f & FD64_ESI) !== 0,
            len,
            len8Dlc: !fd && dlc > 8 ? dlc : 0,
            data: rtr ? undefined : s.subarray(p + 40, p + 40 + len),
            timestampNs: ns,
          });
          this.#frame(frame, channel, dir !== 0);
          return;
        }
        case CAN_ERROR_EXT: {
          if (!need(32)) return;
          const channel = dv.getUint16(p, true) - 1;
          const data = s.slice(p + 24, p + 32);
          const error: CanErrorFrame = {
            classBits: dv.getUint32(p + 16, true) & 0x1fffffff,
            data,
            timestampNs: ns,
            origin: 0,
          };
          this.#pending.push({ kind: 'error-frame', error, channel, direction: undefined, port: undefined });
          return;
        }
      }
    } catch (err) {
      bad(`invalid CAN frame: ${(err as Error).message}`);
    }
  }

  #frame(frame: CanFrame, channel: number, tx: boolean): void {
    this.#pending.push({
      kind: 'frame',
      frame,
      channel,
      direction: tx ? 'outbound' : 'inbound',
      port: undefined,
    });
  }
}
