/**
 * Vector ASC, the ASCII logging format of Vector's tools, as python-can's ASCReader, can-utils'
 * asc2log and CANoe read it.
 *
 * Written: `date`, `base hex  timestamps absolute`, `internal events logged`, a comment per channel
 * (`// channel N: BUS`), `Begin Triggerblock`, `Start of measurement`, one line per frame, and
 * `End TriggerBlock` at the end of the file. Dates are local time with milliseconds and am/pm (as
 * CANoe writes them); the recording's start is rounded down to the millisecond and every timestamp is
 * seconds since it, with 6 decimals (nanoseconds are truncated to microseconds). Channels are 1-based
 * in order of declaration. Classic: `t ch  ID[x]  Rx|Tx   d DLC BYTES` (RTR: `r DLC`); CAN FD:
 * `t CANFD ch Rx|Tx ID  <name> BRS ESI DLC LEN BYTES duration length flags crc` plus four bit-timing
 * fields, flags having EDL (bit 12), BRS (13), ESI (14). Error frames are `t ch  ErrorFrame`: ASC keeps
 * no SocketCAN class or data bytes, so they read back with class bits 0 and zero data. `Tx` marks
 * frames a guest sent, `Rx` the others.
 *
 * Read: hex or decimal base, absolute or relative timestamps, 12- or 24-hour dates, classic and FD
 * lines with or without a symbolic name; other events (statistics, chip states, comments) are
 * skipped. A line that starts like a frame and cannot be read is reported with its number.
 */
import { CanErr, type CanErrorFrame } from '../bus/can-error.js';
import { CAN_FD_LENGTHS, type CanFrame, makeCanFrame } from '../bus/can-frame.js';
import { ascii, HEX_UPPER, InputBuffer, putAscii, putDec, putHex } from './bytes.js';
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

const NS_PER_MS = 1_000_000n;
const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const FD_EDL = 1 << 12;
const FD_BRS = 1 << 13;
const FD_ESI = 1 << 14;

/** `Www Mmm dd hh:mm:ss.mmm am YYYY` in local time. */
export function ascDate(ms: number): string {
  const d = new Date(ms);
  const h = d.getHours();
  const two = (n: number): string => String(n).padStart(2, '0');
  return (
    `${DAYS[d.getDay()]} ${MONTHS[d.getMonth()]} ${two(d.getDate())} ` +
    `${two(h % 12 === 0 ? 12 : h % 12)}:${two(d.getMinutes())}:${two(d.getSeconds())}.` +
    `${String(d.getMilliseconds()).padStart(3, '0')} ${h < 12 ? 'am' : 'pm'} ${d.getFullYear()}`
  );
}

const MONTH_NUMBER: Record<string, number> = {
  jan: 0,
  feb: 1,
  mar: 2,
  mär: 2,
  apr: 3,
  may: 4,
  mai: 4,
  jun: 5,
  jul: 6,
  aug: 7,
  sep: 8,
  oct: 9,
  okt: 9,
  nov: 10,
  dec: 11,
  dez: 11,
};

/** Parses an ASC date (after `date` / `Begin Triggerblock`) to ms since the epoch (local time). */
export function parseAscDate(s: string): number | undefined {
  const m =
    /^\s*(?:\w+\s+)?([A-Za-zä]{3})\w*\s+(\d{1,2})\s+(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?\s*(am|pm)?\s+(\d{4})\s*$/i.exec(
      s,
    );
  if (m === null) return undefined;
  const month = MONTH_NUMBER[m[1]!.toLowerCase()];
  if (month === undefined) return undefined;
  let hour = Number(m[3]);
  const ampm = m[7]?.toLowerCase();
  if (ampm === 'pm' && hour < 12) hour += 12;
  if (ampm === 'am' && hour === 12) hour = 0;
  const ms = m[6] === undefined ? 0 : Math.floor(Number(m[6].padEnd(6, '0')) / 1000);
  const t = new Date(Number(m[8]), month, Number(m[2]), hour, Number(m[4]), Number(m[5]), ms).getTime();
  return Number.isNaN(t) ? undefined : t;
}

interface AscTag extends CaptureTag {
  readonly dir: Uint8Array;
}

const TX = ascii('Tx  ');
const RX = ascii('Rx  ');

export class AscEncoder extends ChunkEncoder implements CaptureEncoder {
  readonly format = 'asc' as const;
  readonly channels: string[] = [];
  readonly headerHasTotals = false;
  /** The file's time base: `startNs` down to the millisecond (the date line holds milliseconds). */
  readonly #startNs: bigint;
  /** `startNs - #startNs` (under a millisecond). */
  readonly #startFraction: number;
  readonly #startMs: number;
  /** `SSSS.uuuuuu` right-aligned to 11 columns, of the last timestamp. */
  readonly #stampBytes = new Uint8Array(32);
  #stampLen = 0;
  readonly #scratch = new Uint8Array(32);

  constructor(opts: CaptureEncoderOptions) {
    super(opts, 256 * 1024);
    this.#startMs = Number(opts.startNs / NS_PER_MS);
    this.#startNs = BigInt(this.#startMs) * NS_PER_MS;
    this.#startFraction = Number(opts.startNs - this.#startNs);
  }

  #comment(channel: number): string {
    return `// channel ${channel + 1}: ${this.channels[channel]!.replace(/[^\x20-\x7e]/g, '?')}\n`;
  }

  addChannel(name: string): number {
    this.channels.push(name);
    const c = this.channels.length - 1;
    const line = ascii(this.#comment(c));
    const at = this.out.reserve(line.length);
    this.out.buf.set(line, at);
    this.out.commit(at + line.length, 0);
    this.out.channels = this.channels.length;
    return c;
  }

  tag(port: string | undefined, direction: Direction | undefined): AscTag {
    return { port, direction, dir: direction === 'outbound' ? TX : RX };
  }

  protected stampWall(wallNs: bigint): void {
    let rel = wallNs - this.#startNs;
    if (rel < 0n) rel = 0n;
    const us = rel / 1000n;
    this.#put(Number(us / 1_000_000n), Number(us % 1_000_000n));
  }

  /** `stampWall` of `startNs + atNs`, in numbers. */
  protected stampAt(atNs: number): void {
    const rel = atNs + this.#startFraction;
    const us = rel < 0 ? 0 : Math.floor(rel / 1000);
    const s = Math.floor(us / 1_000_000);
    this.#put(s, us - s * 1_000_000);
  }

  /** Formats `seconds.micros` right-aligned to 11 columns, then a space. */
  #put(seconds: number, micros: number): void {
    const tmp = this.#scratch;
    let p = putDec(tmp, 0, seconds, 1);
    tmp[p++] = 0x2e;
    p = putDec(tmp, p, micros, 6);
    const width = Math.max(11, p);
    const b = this.#stampBytes;
    b.fill(0x20, 0, width - p);
    b.set(tmp.subarray(0, p), width - p);
    b[width] = 0x20;
    this.#stampLen = width + 1;
  }

  /** Starts a line (time already stamped); returns where its text goes. */
  #begin(channel: number, max: number): number {
    if (!(channel >= 0 && channel < this.channels.length)) {
      throw new RangeError(`channel ${channel} was not declared (addChannel)`);
    }
    const out = this.out;
    const at = out.reserve(this.#stampLen + max);
    out.buf.set(this.#stampBytes.subarray(0, this.#stampLen), at);
    return at + this.#stampLen;
  }

  protected encode(channel: number, f: CanFrame, tag: CaptureTag): void {
    let p = this.#begin(channel, 512);
    const b = this.out.buf;
    const dir = (tag as AscTag).dir;
    if (!f.fd) {
      // `ch  ID              Rx   d 8 00 11 ...`
      p = putDec(b, p, channel + 1, 1);
      b[p++] = 0x20;
      b[p++] = 0x20;
      const idStart = p;
      p = putHex(b, p, f.id, idDigits(f.id));
      if (f.extended) b[p++] = 0x78; // x
      while (p < idStart + 15) b[p++] = 0x20;
      b[p++] = 0x20;
      b.set(dir, p);
      p += dir.length;
      b[p++] = f.rtr ? 0x72 : 0x64; // r / d
      b[p++] = 0x20;
      b[p++] = HEX_UPPER[f.len8Dlc !== 0 ? f.len8Dlc : f.len]!;
      if (!f.rtr) p = putBytes(b, p, f.data);
    } else {
      // `CANFD   1 Rx         123                                  1 0 9 12 00 11 ... 0 0 3000 0 0 0 0 0`
      p = putAscii(b, p, 'CANFD ');
      p = padLeft(b, p, channel + 1, 3, false);
      b[p++] = 0x20;
      b.set(dir, p);
      p += dir.length;
      b[p++] = 0x20;
      const idLen = idDigits(f.id) + (f.extended ? 1 : 0);
      for (let i = idLen; i < 8; i++) b[p++] = 0x20;
      p = putHex(b, p, f.id, idDigits(f.id));
      if (f.extended) b[p++] = 0x78;
      b.fill(0x20, p, p + 34); // two spaces + an empty 32-column symbolic name
      p += 34;
      b[p++] = 0x20;
      b[p++] = f.brs ? 0x31 : 0x30;
      b[p++] = 0x20;
      b[p++] = f.esi ? 0x31 : 0x30;
      b[p++] = 0x20;
      b[p++] = HEX_UPPER[dlcOfFd(f.len)]!;
      b[p++] = 0x20;
      p = padLeft(b, p, f.len, 2, false);
      p = putBytes(b, p, f.data);
      // message duration, message length, flags, crc, 4 bit-timing fields
      p = putAscii(b, p, '        0    0 ');
      const flags = FD_EDL | (f.brs ? FD_BRS : 0) | (f.esi ? FD_ESI : 0);
      p = padLeft(b, p, flags, 8, true);
      p = putAscii(b, p, '        0        0        0        0        0');
    }
    b[p++] = 0x0a;
    this.out.commit(p, 1);
  }

  errorFrame(channel: number, _e: CanErrorFrame, wallNs: bigint, _tag: CaptureTag): void {
    this.stamp(wallNs);
    let p = this.#begin(channel, 32);
    const b = this.out.buf;
    p = putDec(b, p, channel + 1, 1);
    p = putAscii(b, p, '  ErrorFrame\n');
    this.out.commit(p, 1);
  }

  fileHeader(channels: number, _totals: FileTotals): Uint8Array {
    const date = ascDate(this.#startMs);
    let s = `date ${date}\nbase hex  timestamps absolute\ninternal events logged\n// version 9.0.0\n`;
    for (let c = 0; c < channels; c++) s += this.#comment(c);
    s += `Begin Triggerblock ${date}\n   0.000000 Start of measurement\n`;
    return ascii(s);
  }

  fileTrailer(): Uint8Array {
    return ascii('End TriggerBlock\n');
  }
}

function idDigits(id: number): number {
  let n = 1;
  for (let v = id >>> 4; v !== 0; v >>>= 4) n++;
  return n;
}

function dlcOfFd(len: number): number {
  return CAN_FD_LENGTHS.indexOf(len as (typeof CAN_FD_LENGTHS)[number]);
}

/** ` XX XX ...` */
function putBytes(b: Uint8Array, p: number, d: Uint8Array): number {
  for (let i = 0; i < d.length; i++) {
    const v = d[i]!;
    b[p++] = 0x20;
    b[p++] = HEX_UPPER[v >> 4]!;
    b[p++] = HEX_UPPER[v & 15]!;
  }
  return p;
}

/** `v` right-aligned in `width` columns, decimal or uppercase hex. */
function padLeft(b: Uint8Array, p: number, v: number, width: number, hexa: boolean): number {
  const tmp = new Uint8Array(12);
  const n = hexa ? putHex(tmp, 0, v, idDigits(v)) : putDec(tmp, 0, v, 1);
  for (let i = n; i < width; i++) b[p++] = 0x20;
  b.set(tmp.subarray(0, n), p);
  return p + n;
}

// ---------------------------------------------------------------------------------------------------
// Reading

const TIME = /^(\d+)\.(\d+)$/;

export class AscDecoder implements CaptureDecoder {
  readonly format = 'asc' as const;
  readonly #in = new InputBuffer();
  readonly channelNames: string[] = [];
  #line = 0;
  #startNs = 0n;
  #base = 16;
  #relative = false;
  #lastNs = 0n;

  push(bytes: Uint8Array): void {
    this.#in.push(bytes);
  }

  end(): void {
    this.#in.ended = true;
  }

  next(): CaptureEvent | undefined {
    for (;;) {
      const text = this.#in.line();
      if (text === undefined) return undefined;
      const n = ++this.#line;
      const ev = this.#parse(text.trim(), n);
      if (ev !== undefined) return ev;
    }
  }

  #parse(t: string, line: number): CaptureEvent | undefined {
    const bad = (message: string): CaptureEvent => ({
      kind: 'bad',
      position: { line, text: `line ${line}` },
      message: `${message}: ${JSON.stringify(t.slice(0, 100))}`,
    });
    if (t === '') return undefined;
    const tok = t.split(/\s+/);
    const first = tok[0]!.toLowerCase();
    if (first === 'date' || (first === 'begin' && tok[1]?.toLowerCase() === 'triggerblock')) {
      const ms = parseAscDate(tok.slice(first === 'date' ? 1 : 2).join(' '));
      if (ms === undefined) return first === 'date' ? undefined : bad('unreadable trigger block date');
      this.#startNs = BigInt(ms) * NS_PER_MS;
      return undefined;
    }
    if (first === 'base') {
      this.#base = tok[1]?.toLowerCase() === 'dec' ? 10 : 16;
      this.#relative = tok[3]?.toLowerCase() === 'relative';
      return undefined;
    }
    if (t.startsWith('//')) {
      const m = /^\/\/\s*channel\s+(\d+):\s*(.*)$/i.exec(t);
      if (m !== null) this.channelNames[Number(m[1]) - 1] = m[2]!;
      return undefined;
    }
    const tm = TIME.exec(tok[0]!);
    if (tm === null) return undefined; // header words, End TriggerBlock, ...
    const rel = BigInt(tm[1]!) * 1_000_000_000n + BigInt(tm[2]!.slice(0, 9).padEnd(9, '0'));
    const ns = this.#relative
      ? (this.#lastNs === 0n ? this.#startNs : this.#lastNs) + rel
      : this.#startNs + rel;
    const second = tok[1] ?? '';
    if (second.toUpperCase() === 'CANFD') return this.#fd(tok, ns, bad);
    if (!/^\d+$/.test(second)) return undefined; // other events
    const channel = Number(second) - 1;
    if (tok[2]?.toLowerCase() === 'errorframe') {
      this.#lastNs = ns;
      return this.#errorFrame(channel, ns, undefined);
    }
    const dirTok = tok[3];
    if (dirTok !== 'Rx' && dirTok !== 'Tx') return undefined; // statistics, chip states, J1939...
    const kind = tok[4]?.toLowerCase();
    const id = this.#id(tok[2]!);
    if (id === undefined) return bad('unreadable identifier');
    const dlc = Number.parseInt(tok[5] ?? '', 16);
    if (!(kind === 'd' || kind === 'r') || (kind === 'd' && Number.isNaN(dlc)))
      return bad('expected "d DLC DATA" or "r [DLC]"');
    const direction: Direction = dirTok === 'Tx' ? 'outbound' : 'inbound';
    try {
      let frame: CanFrame;
      if (kind === 'r') {
        const len = Number.isNaN(dlc) ? 0 : Math.min(dlc, 8);
        frame = makeCanFrame({
          id: id.id,
          extended: id.extended,
          rtr: true,
          len,
          len8Dlc: dlc > 8 ? dlc : 0,
          timestampNs: ns,
        });
      } else {
        const len = Math.min(dlc, 8);
        const data = this.#bytes(tok, 6, len);
        if (data === undefined) return bad(`expected ${len} data bytes`);
        frame = makeCanFrame({
          id: id.id,
          extended: id.extended,
          len,
          len8Dlc: dlc > 8 ? dlc : 0,
          data,
          timestampNs: ns,
        });
      }
      this.#lastNs = ns;
      return { kind: 'frame', frame, channel, direction, port: undefined };
    } catch (err) {
      return bad((err as Error).message);
    }
  }

  #fd(tok: string[], ns: bigint, bad: (m: string) => CaptureEvent): CaptureEvent | undefined {
    const channel = Number(tok[2]) - 1;
    const dirTok = tok[3];
    if (!(channel >= 0) || (dirTok !== 'Rx' && dirTok !== 'Tx')) return bad('expected "CANFD CH Rx|Tx"');
    const direction: Direction = dirTok === 'Tx' ? 'outbound' : 'inbound';
    if (tok[4]?.toLowerCase() === 'errorframe') {
      this.#lastNs = ns;
      return this.#errorFrame(channel, ns, direction);
    }
    const id = this.#id(tok[4] ?? '');
    if (id === undefined) return bad('unreadable identifier');
    // An optional symbolic name stands between the identifier and BRS.
    let i = 5;
    if (!(isBit(tok[i]) && isBit(tok[i + 1]) && /^[0-9a-f]$/i.test(tok[i + 2] ?? ''))) i++;
    const brs = tok[i] === '1';
    const esi = tok[i + 1] === '1';
    const dlc = Number.parseInt(tok[i + 2] ?? '', 16);
    const len = Number.parseInt(tok[i + 3] ?? '', 10);
    if (!isBit(tok[i]) || !isBit(tok[i + 1]) || Number.isNaN(dlc) || Number.isNaN(len)) {
      return bad('expected "BRS ESI DLC LENGTH DATA"');
    }
    const data = this.#bytes(tok, i + 4, len);
    if (data === undefined) return bad(`expected ${len} data bytes`);
    try {
      const frame = makeCanFrame({
        id: id.id,
        extended: id.extended,
        fd: true,
        brs,
        esi,
        data,
        timestampNs: ns,
      });
      this.#lastNs = ns;
      return { kind: 'frame', frame, channel, direction, port: undefined };
    } catch (err) {
      return bad((err as Error).message);
    }
  }

  #errorFrame(channel: number, ns: bigint, direction: Direction | undefined): CaptureEvent {
    const error: CanErrorFrame = { classBits: 0, data: new Uint8Array(8), timestampNs: ns, origin: 0 };
    return { kind: 'error-frame', error, channel, direction, port: undefined };
  }

  #id(s: string): { id: number; extended: boolean } | undefined {
    const extended = /x$/i.test(s);
    const digits = extended ? s.slice(0, -1) : s;
    if (!(this.#base === 16 ? /^[0-9a-f]{1,8}$/i : /^\d{1,10}$/).test(digits)) return undefined;
    const id = Number.parseInt(digits, this.#base);
    if (id > (extended ? CanErr.MASK : 0x7ff)) return undefined;
    return { id, extended };
  }

  #bytes(tok: string[], from: number, n: number): Uint8Array | undefined {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      const s = tok[from + i];
      if (s === undefined || !(this.#base === 16 ? /^[0-9a-f]{1,2}$/i : /^\d{1,3}$/).test(s))
        return undefined;
      const v = Number.parseInt(s, this.#base);
      if (v > 255) return undefined;
      out[i] = v;
    }
    return out;
  }
}

function isBit(s: string | undefined): boolean {
  return s === '0' || s === '1';
}
