/**
 * The CAN frame model shared by the virtio-can device, the hub and the host adapters, plus the can-utils
 * `candump -L` text codec and an on-wire bit count for bus-load estimates.
 *
 * Identifier rules follow VIRTIO 1.4 CAN (section 5.22; docs/protocol-notes.md 3): the identifier carries
 * no flag bits; the frame type lives in separate booleans. Length rules: classic 0..8, CAN FD one of the 16
 * canonical sizes (non-canonical sizes such as 13 are invalid, not padded), RTR only in classic CAN with
 * `len` = requested DLC 0..8 and no payload. `len8Dlc` is Linux's `can_frame.len8_dlc`: the raw DLC 9..15
 * of a classic frame that carries 8 bytes (or requests 8 bytes, for RTR).
 *
 * Frames are immutable by convention (the hub shares one object between all receivers): never write to
 * `data` after a frame was built. `makeCanFrame` copies the bytes it is given so the frame owns them.
 */
import { CanFrameError, type CanFrameErrorCode } from './errors.js';

export interface CanFrame {
  /** 11-bit (0..0x7FF) or 29-bit (0..0x1FFFFFFF) identifier; no flag bits (unlike Linux `canid_t`). */
  readonly id: number;
  readonly extended: boolean;
  /** Remote transmission request; classic CAN only. */
  readonly rtr: boolean;
  /** CAN FD frame (FDF). */
  readonly fd: boolean;
  /** Bit rate switch; CAN FD only. */
  readonly brs: boolean;
  /** Error state indicator; CAN FD only. */
  readonly esi: boolean;
  /** Payload length (classic 0..8, FD a canonical size); for RTR the requested DLC 0..8. */
  readonly len: number;
  /** 0, or the raw DLC 9..15 of a classic frame with len 8 (Linux `len8_dlc`). */
  readonly len8Dlc: number;
  /** Exactly `len` bytes (empty for RTR). Shared, never written after construction. */
  readonly data: Uint8Array;
  /** Set by the hub when the frame goes on the bus (its clock, nanoseconds); 0n when constructed. */
  readonly timestampNs: bigint;
  /** Hub port id that sent the frame; 0 = unknown / constructed locally. */
  readonly origin: number;
}

/** Input of `makeCanFrame`; everything but `id` has a default. */
/** A CanFrame whose fields a producer rewrites for every frame (the hub copies frames it keeps). */
export type MutableCanFrame = { -readonly [K in keyof CanFrame]: CanFrame[K] };

/** A reusable scratch frame for a producer that decodes many frames into one object. */
export function scratchCanFrame(): MutableCanFrame {
  return {
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
}

export interface CanFrameInit {
  readonly id: number;
  /** Default false: an identifier above 0x7FF without `extended` is an error, not silently promoted. */
  readonly extended?: boolean | undefined;
  readonly rtr?: boolean | undefined;
  readonly fd?: boolean | undefined;
  readonly brs?: boolean | undefined;
  readonly esi?: boolean | undefined;
  /** Default: `data.length` (0 for RTR without `len`). */
  readonly len?: number | undefined;
  readonly len8Dlc?: number | undefined;
  /** Copied. Numbers must be integers 0..255. Default: empty. */
  readonly data?: Uint8Array | readonly number[] | undefined;
  readonly timestampNs?: bigint | undefined;
  readonly origin?: number | undefined;
}

/** Identifier limits (VIRTIO 1.4 CAN "can_id out of range" bounds). */
export const CanIdMax = {
  STANDARD: 0x7ff,
  EXTENDED: 0x1fffffff,
} as const;

/** Payload length limits. */
export const CanLength = {
  CLASSIC_MAX: 8,
  FD_MAX: 64,
  /** Largest raw DLC value (`len8Dlc` range is 9..RAW_DLC_MAX). */
  RAW_DLC_MAX: 15,
} as const;

/** CAN FD payload size for each DLC 0..15 (ISO 11898-1:2015); index = DLC. */
export const CAN_FD_LENGTHS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64] as const;

/** For len 0..64: the smallest DLC whose FD size is >= len (Linux `can_fd_len2dlc`). */
const FD_LEN_TO_DLC: Uint8Array = (() => {
  const t = new Uint8Array(CanLength.FD_MAX + 1);
  let dlc = 0;
  for (let len = 0; len <= CanLength.FD_MAX; len++) {
    while ((CAN_FD_LENGTHS[dlc] ?? CanLength.FD_MAX) < len) dlc++;
    t[len] = dlc;
  }
  return t;
})();

const EMPTY_DATA = new Uint8Array(0);

function isByteLength(n: number, max: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= max;
}

/** True when `len` is one of the 16 CAN FD payload sizes. */
export function isValidFdLength(len: number): boolean {
  return isByteLength(len, CanLength.FD_MAX) && CAN_FD_LENGTHS[FD_LEN_TO_DLC[len]!] === len;
}

/** Payload size for a CAN FD DLC 0..15; throws `ERR_CAN_LENGTH` for anything else. */
export function canFdDlcToLen(dlc: number): number {
  if (!isByteLength(dlc, CanLength.RAW_DLC_MAX)) {
    throw new CanFrameError('ERR_CAN_LENGTH', `CAN FD DLC ${dlc} is not an integer 0..15`);
  }
  return CAN_FD_LENGTHS[dlc]!;
}

/**
 * DLC for a CAN FD payload length 0..64. Like Linux `can_fd_len2dlc`, a non-canonical length rounds up
 * to the next size (13 -> DLC 10, i.e. 16 bytes); use `isValidFdLength` to reject instead. Throws
 * `ERR_CAN_LENGTH` outside 0..64.
 */
export function canFdLenToDlc(len: number): number {
  if (!isByteLength(len, CanLength.FD_MAX)) {
    throw new CanFrameError('ERR_CAN_LENGTH', `CAN FD length ${len} is not an integer 0..64`);
  }
  return FD_LEN_TO_DLC[len]!;
}

/**
 * Checks every rule of the model; returns the first violated rule's code, or null when valid. Does not
 * allocate, so it is cheap enough for the hub's transmit path.
 *
 * Order: field types, identifier, RTR+FD, BRS/ESI on classic, length, len8Dlc, data length.
 */
export function validateCanFrame(f: CanFrame): CanFrameErrorCode | null {
  if (
    typeof f.extended !== 'boolean' ||
    typeof f.rtr !== 'boolean' ||
    typeof f.fd !== 'boolean' ||
    typeof f.brs !== 'boolean' ||
    typeof f.esi !== 'boolean' ||
    !(f.data instanceof Uint8Array) ||
    typeof f.timestampNs !== 'bigint' ||
    f.timestampNs < 0n ||
    !Number.isInteger(f.origin) ||
    f.origin < 0
  ) {
    return 'ERR_CAN_FIELD_TYPE';
  }
  if (!Number.isInteger(f.id) || f.id < 0 || f.id > (f.extended ? CanIdMax.EXTENDED : CanIdMax.STANDARD)) {
    return 'ERR_CAN_ID_RANGE';
  }
  if (f.rtr && f.fd) return 'ERR_CAN_RTR_FD';
  if (!f.fd && (f.brs || f.esi)) return 'ERR_CAN_FD_FLAGS_ON_CLASSIC';
  if (f.fd ? !isValidFdLength(f.len) : !isByteLength(f.len, CanLength.CLASSIC_MAX)) return 'ERR_CAN_LENGTH';
  if (
    f.len8Dlc !== 0 &&
    (f.fd ||
      f.len !== CanLength.CLASSIC_MAX ||
      !Number.isInteger(f.len8Dlc) ||
      f.len8Dlc <= CanLength.CLASSIC_MAX ||
      f.len8Dlc > CanLength.RAW_DLC_MAX)
  ) {
    return 'ERR_CAN_LEN8_DLC';
  }
  if (f.data.length !== (f.rtr ? 0 : f.len)) return 'ERR_CAN_DATA_LENGTH';
  return null;
}

function invalidFrameMessage(code: CanFrameErrorCode, f: CanFrame): string {
  const kind = `${f.fd ? 'FD' : 'classic'}${f.rtr ? ' RTR' : ''} frame`;
  switch (code) {
    case 'ERR_CAN_ID_RANGE':
      return `${kind}: ${f.extended ? 'extended' : 'standard'} identifier ${f.id} out of range`;
    case 'ERR_CAN_LENGTH':
      return `${kind}: length ${f.len} is not valid`;
    case 'ERR_CAN_LEN8_DLC':
      return `${kind}: len8Dlc ${f.len8Dlc} needs a classic frame with len 8 and a value 9..15`;
    case 'ERR_CAN_DATA_LENGTH':
      return `${kind}: ${f.data?.length} data bytes for len ${f.len}`;
    default:
      return `${kind}: ${code}`;
  }
}

/** Throws the CanFrameError for an invalid frame; returns the frame otherwise. */
export function assertValidCanFrame(f: CanFrame): CanFrame {
  const code = validateCanFrame(f);
  if (code !== null) throw new CanFrameError(code, invalidFrameMessage(code, f));
  return f;
}

function copyData(data: Uint8Array | readonly number[] | undefined): Uint8Array {
  if (data === undefined) return EMPTY_DATA;
  if (data instanceof Uint8Array) return data.length === 0 ? EMPTY_DATA : data.slice();
  if (!Array.isArray(data))
    throw new CanFrameError('ERR_CAN_FIELD_TYPE', 'data must be a Uint8Array or an array');
  const out = new Uint8Array(data.length);
  for (let i = 0; i < data.length; i++) {
    const b: unknown = data[i];
    if (typeof b !== 'number' || !isByteLength(b, 0xff)) {
      throw new CanFrameError('ERR_CAN_FIELD_TYPE', `data[${i}] is not an integer 0..255`);
    }
    out[i] = b;
  }
  return out;
}

/**
 * Builds a validated frame (copying `data`); throws CanFrameError with the violated rule's code.
 * All frames have the same property order, so V8 keeps one hidden class for them (see `stampCanFrame`).
 */
export function makeCanFrame(init: CanFrameInit): CanFrame {
  const rtr = init.rtr ?? false;
  const data = copyData(init.data);
  const f: CanFrame = {
    id: init.id,
    extended: init.extended ?? false,
    rtr,
    fd: init.fd ?? false,
    brs: init.brs ?? false,
    esi: init.esi ?? false,
    len: init.len ?? (rtr ? 0 : data.length),
    len8Dlc: init.len8Dlc ?? 0,
    data,
    timestampNs: init.timestampNs ?? 0n,
    origin: init.origin ?? 0,
  };
  return assertValidCanFrame(f);
}

/**
 * A copy of `f` with another timestamp and origin; shares `data` (frames are immutable). (The hub
 * does not use it: its copies come from a frame pool, see frame-pool.ts.)
 */
export function stampCanFrame(f: CanFrame, timestampNs: bigint, origin: number): CanFrame {
  return {
    id: f.id,
    extended: f.extended,
    rtr: f.rtr,
    fd: f.fd,
    brs: f.brs,
    esi: f.esi,
    len: f.len,
    len8Dlc: f.len8Dlc,
    data: f.data,
    timestampNs,
    origin,
  };
}

// ---------------------------------------------------------------------------------------------------
// candump -L text (can-utils lib.c sprint_canframe / parse_canframe)

const HEX_DIGITS = '0123456789ABCDEF';
const HEX_BYTE: readonly string[] = Array.from(
  { length: 256 },
  (_, b) => HEX_DIGITS[b >> 4]! + HEX_DIGITS[b & 15]!,
);

/** Value of one hex digit (either case), or -1. */
function nibble(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30; // 0-9
  if (c >= 0x41 && c <= 0x46) return c - 0x37; // A-F
  if (c >= 0x61 && c <= 0x66) return c - 0x57; // a-f
  return -1;
}

const NS_PER_S = 1_000_000_000n;

/**
 * The frame in can-utils `candump -L` syntax, or a whole log line `(SSSSSSSSSS.uuuuuu) IFNAME FRAME` when
 * `ifname` is given (timestamp from `timestampNs`, truncated to microseconds like `candump -L`).
 *
 * - identifier: 3 uppercase hex digits (standard) or 8 (extended); data: uppercase hex, no separators.
 * - RTR: `R` followed by the requested length when it is not 0 (`123#R4`, `123#R`), like can-utils.
 * - CAN FD: `<id>##<F><data>` where the flags nibble F = BRS (1) | ESI (2), i.e. `##0`..`##3`. This is
 *   what can-utils 2020.11/2023.03 print on kernels that do not report FDF, and what python-can writes;
 *   can-utils 2025.01+ also sets FDF (4), printing `##4`..`##7`. Every reader (ours included) accepts
 *   both, because `##` alone marks FD.
 * - `_<dlc>` after 8 data bytes (or after `R8`) when `len8Dlc` is 9..15.
 *
 * Throws CanFrameError with the validation code for an invalid frame, `ERR_CAN_FIELD_TYPE` for an
 * empty ifname or one containing whitespace (the line would not parse back).
 */
export function formatCandump(f: CanFrame, ifname?: string): string {
  assertValidCanFrame(f);
  let s = f.extended
    ? HEX_BYTE[(f.id >>> 24) & 0xff]! +
      HEX_BYTE[(f.id >>> 16) & 0xff]! +
      HEX_BYTE[(f.id >>> 8) & 0xff]! +
      HEX_BYTE[f.id & 0xff]!
    : HEX_DIGITS[(f.id >>> 8) & 0xf]! + HEX_BYTE[f.id & 0xff]!;
  s += '#';
  const dlcSuffix = f.len8Dlc !== 0 ? `_${HEX_DIGITS[f.len8Dlc]!}` : '';
  if (f.rtr) {
    s += f.len === 0 ? 'R' : `R${HEX_DIGITS[f.len]!}${dlcSuffix}`;
  } else {
    if (f.fd) s += `#${HEX_DIGITS[(f.brs ? 1 : 0) | (f.esi ? 2 : 0)]!}`;
    for (let i = 0; i < f.data.length; i++) s += HEX_BYTE[f.data[i]!]!;
    s += dlcSuffix;
  }
  if (ifname === undefined) return s;
  if (ifname.length === 0 || /\s/.test(ifname)) {
    throw new CanFrameError('ERR_CAN_FIELD_TYPE', 'ifname must be non-empty and contain no whitespace');
  }
  const ts = f.timestampNs;
  const sec = (ts / NS_PER_S).toString().padStart(10, '0');
  const usec = ((ts % NS_PER_S) / 1000n).toString().padStart(6, '0');
  return `(${sec}.${usec}) ${ifname} ${s}`;
}

/** One `candump -L` log line. */
export interface CandumpLine {
  readonly timestampNs: bigint;
  readonly ifname: string;
  /** The frame, with `timestampNs` from the line and origin 0. */
  readonly frame: CanFrame;
  /** The ` R` / ` T` suffix of `candump -x` (received / transmitted), if present. */
  readonly direction: 'R' | 'T' | null;
}

function parseError(text: string, why: string, cause?: unknown): CanFrameError {
  const shown = text.length > 80 ? `${text.slice(0, 80)}...` : text;
  return new CanFrameError(
    'ERR_CAN_PARSE',
    `not a candump frame (${why}): ${JSON.stringify(shown)}`,
    cause === undefined ? undefined : { cause },
  );
}

/** Parses one frame token (no whitespace) as can-utils `parse_canframe` would, but strictly. */
function parseFrameToken(s: string, timestampNs: bigint): CanFrame {
  const hash = s.indexOf('#');
  // 3 digits: standard; 8: extended. (5 digits is CAN XL `vcid+prio`, which this model does not carry.)
  if (hash !== 3 && hash !== 8) throw parseError(s, 'identifier must be 3 or 8 hex digits');
  const extended = hash === 8;
  let id = 0;
  for (let i = 0; i < hash; i++) {
    const n = nibble(s.charCodeAt(i));
    if (n < 0) throw parseError(s, 'identifier is not hex');
    id = id * 16 + n;
  }
  if (extended && id > CanIdMax.EXTENDED) {
    // The top three bits are Linux canid_t flags; only CAN_ERR_FLAG appears in logs (error frames).
    throw parseError(s, 'error frames and identifier flag bits are not supported');
  }
  const end = s.length;
  let i = hash + 1;
  let rtr = false;
  let fd = false;
  let brs = false;
  let esi = false;
  let len = 0;
  let len8Dlc = 0;
  let data = EMPTY_DATA;
  const c = s.charCodeAt(i);
  if (c === 0x52 || c === 0x72) {
    // 'R' / 'r': remote frame, optional requested length, optional `_<raw dlc>` after R8.
    rtr = true;
    i++;
    if (i < end) {
      len = nibble(s.charCodeAt(i++));
      if (len < 0 || len > CanLength.CLASSIC_MAX) throw parseError(s, 'RTR length must be 0..8');
      if (i < end && s.charCodeAt(i) === 0x5f) {
        len8Dlc = nibble(s.charCodeAt(i + 1));
        i += 2;
        if (len !== CanLength.CLASSIC_MAX || len8Dlc <= CanLength.CLASSIC_MAX) {
          throw parseError(s, 'raw DLC suffix needs R8 and a value 9..F');
        }
      }
    }
    if (i !== end) throw parseError(s, 'trailing characters after RTR');
  } else {
    if (c === 0x23) {
      // '##<flags nibble>': CAN FD. Only BRS (1) and ESI (2) are meaningful; FDF (4) is implied by `##`.
      const flags = nibble(s.charCodeAt(i + 1));
      if (flags < 0) throw parseError(s, 'CAN FD flags nibble missing');
      fd = true;
      brs = (flags & 1) !== 0;
      esi = (flags & 2) !== 0;
      i += 2;
    }
    const max = fd ? CanLength.FD_MAX : CanLength.CLASSIC_MAX;
    const bytes = new Uint8Array(max);
    let count = 0;
    while (i < end) {
      let ch = s.charCodeAt(i);
      if (ch === 0x2e) {
        // '.': optional separator before a byte (and tolerated once at the end), as in can-utils.
        if (++i >= end) break;
        ch = s.charCodeAt(i);
      }
      if (ch === 0x5f) break; // '_': raw DLC suffix, checked below
      const hi = nibble(ch);
      const lo = nibble(s.charCodeAt(i + 1));
      if (hi < 0 || lo < 0) throw parseError(s, 'data is not hex byte pairs');
      if (count === max) throw parseError(s, `more than ${max} data bytes`);
      bytes[count++] = hi * 16 + lo;
      i += 2;
    }
    if (i < end) {
      len8Dlc = nibble(s.charCodeAt(i + 1));
      if (fd || count !== CanLength.CLASSIC_MAX || i + 2 !== end || len8Dlc <= CanLength.CLASSIC_MAX) {
        throw parseError(s, 'raw DLC suffix needs a classic frame with 8 bytes and a value 9..F');
      }
    }
    len = count;
    data = count === 0 ? EMPTY_DATA : bytes.slice(0, count);
  }
  const f: CanFrame = { id, extended, rtr, fd, brs, esi, len, len8Dlc, data, timestampNs, origin: 0 };
  const code = validateCanFrame(f);
  if (code !== null) {
    throw parseError(s, code, new CanFrameError(code, invalidFrameMessage(code, f)));
  }
  return f;
}

const LOG_LINE = /^\((\d{1,20})\.(\d{1,9})\)\s+(\S+)\s+(\S+)(?:\s+([RT]))?$/;

/**
 * Parses a `candump -L` log line: `(seconds.fraction) ifname frame [R|T]`. The fraction may have 6
 * digits (microseconds, classic `-L`) or 9 (nanoseconds, newer `-N`); any 1..9 digits are read as a
 * decimal fraction. Throws `ERR_CAN_PARSE` (with the validation error as `cause` when the syntax was
 * fine but the frame is invalid). `DROPCOUNT:` lines and CAN XL frames are not frames: skip them first.
 */
export function parseCandumpLine(text: string): CandumpLine {
  const m = LOG_LINE.exec(text.trim());
  if (m === null) throw parseError(text, 'expected "(sec.frac) ifname frame"');
  const timestampNs = BigInt(m[1]!) * NS_PER_S + BigInt(m[2]!.padEnd(9, '0'));
  const frame = parseFrameToken(m[4]!, timestampNs);
  const dir = m[5];
  return { timestampNs, ifname: m[3]!, frame, direction: dir === 'R' || dir === 'T' ? dir : null };
}

/**
 * Parses either a bare frame (`123#DEADBEEF`, `12345678#`, `123#R4`, `123##1AABB`, `123#1122334455667788_C`)
 * or a whole log line (the frame then carries the line's timestamp). Accepts the can-utils variants:
 * lowercase hex, `.` separators in data, `r`, `R` without length, any FD flags nibble (`##4`/`##5` from
 * FDF-setting versions). Stricter than can-utils where can-utils silently ignores input: trailing
 * characters, more than 8/64 bytes, non-canonical FD sizes, an invalid `_<dlc>`, standard identifiers
 * above 0x7FF and error frames are `ERR_CAN_PARSE`.
 */
export function parseCandump(text: string): CanFrame {
  const t = text.trim();
  if (t.startsWith('(')) return parseCandumpLine(t).frame;
  return parseFrameToken(t, 0n);
}

// ---------------------------------------------------------------------------------------------------
// Bus time

/** Bits of a CAN FD frame sent at the data bit rate when BRS is set (ESI through the CRC field). */
function fdDataPhaseBits(len: number): number {
  // ESI 1 + DLC 4 + data + stuff count 4 (3 gray + parity) + CRC (17 up to 16 bytes, else 21)
  // + fixed stuff bits (one before the stuff count, then one every 4 bits of the CRC field: 6 / 7).
  return 5 + len * 8 + 4 + (len > 16 ? 21 + 7 : 17 + 6);
}

/**
 * Approximate on-wire length of a frame in bits, including the 3-bit intermission, *excluding* dynamic
 * bit stuffing (which depends on the bit pattern: up to ~20% more on a classic frame). ISO 11898-1 field
 * sizes:
 * - classic standard: SOF 1, id 11, RTR 1, IDE 1, r0 1, DLC 4, data, CRC 15, CRC delim 1, ACK 1,
 *   ACK delim 1, EOF 7, IFS 3 = 47 + 8n bits (n = 0 for RTR); extended (SRR, IDE, id 18, RTR, r1, r0):
 *   67 + 8n;
 * - FD: arbitration phase SOF..BRS (17 standard / 36 extended), data phase ESI..CRC incl. stuff count
 *   and fixed stuff bits (`canFrameDataPhaseBits`), then CRC delim..IFS 13.
 */
export function canFrameBits(f: CanFrame): number {
  if (!f.fd) return (f.extended ? 67 : 47) + (f.rtr ? 0 : f.len * 8);
  return (f.extended ? 36 : 17) + fdDataPhaseBits(f.len) + 13;
}

/**
 * How many of `canFrameBits(f)` are sent at the FD data bit rate: the data phase of an FD frame with
 * BRS, else 0 (everything at the nominal rate).
 */
export function canFrameDataPhaseBits(f: CanFrame): number {
  return f.fd && f.brs ? fdDataPhaseBits(f.len) : 0;
}
