/**
 * The cannelloni datagram format (UDP and SCTP, format version 2), as its project documents it, so a
 * real cannelloni on the other end of a link interoperates. Pure: bytes in, frames out, and back.
 *
 * A datagram is a 5-byte header and `count` frames, every field in network byte order:
 *
 *   offset 0  u8   version      2
 *   offset 1  u8   op code      0 = DATA (1 = ACK and 2 = NACK exist in the format; UDP peers send DATA only)
 *   offset 2  u8   sequence     one more per datagram sent, wrapping at 256
 *   offset 3  u16  count        frames that follow (0: an empty datagram, which receivers ignore)
 *
 * and each frame, shaped like Linux's `struct canfd_frame`:
 *
 *   u32  can_id   identifier with Linux's flag bits: 0x80000000 extended (EFF), 0x40000000 remote
 *                 request (RTR), 0x20000000 error frame (ERR)
 *   u8   len      payload length; bit 0x80 set marks a CAN FD frame (the length is then len & 0x7F)
 *   u8   flags    CAN FD frames only: Linux's canfd_frame flags (0x01 BRS, 0x02 ESI, 0x04 FDF)
 *   ...  data     `len & 0x7F` bytes, absent for remote requests (whose len is the requested DLC)
 *
 * Decoding is strict about structure and lenient where a real bus would be: a datagram whose header
 * or frame layout is broken (short, wrong version, wrong op code, a frame running past the end,
 * bytes left after the last frame) is refused whole, with a reason, and nothing of it is delivered;
 * a frame that is laid out correctly but cannot be a CAN frame (a classic length above 8, an FD
 * length above 64, a remote request marked FD, an error frame) is skipped with a reason while the
 * rest of the datagram is delivered. An FD length between two valid sizes (13) is padded with zeros
 * to the next one (16), as a CAN FD controller would send it. A standard identifier with bits above
 * 0x7FF set keeps its low 11 bits, as Linux's CAN drivers do. Nothing here throws on any input.
 *
 * Encoding never splits a frame across datagrams and never exceeds the size it is given; frames
 * keep their order. What the format cannot carry: `len8Dlc` (the raw DLC 9..15 of a classic frame
 * with 8 bytes) goes out as DLC 8, and timestamps are not carried at all.
 */
import {
  CAN_FD_LENGTHS,
  type CanFrame,
  canFdLenToDlc,
  type MutableCanFrame,
  scratchCanFrame,
} from '../bus/can-frame.js';

export const CANNELLONI_VERSION = 2;
export const CannelloniOpCode = { DATA: 0, ACK: 1, NACK: 2 } as const;
export const CANNELLONI_HEADER_SIZE = 5;
/** Bit of the length byte that marks a CAN FD frame. */
export const CANNELLONI_FD_LEN_FLAG = 0x80;
/**
 * The datagram size cannelloni itself sends and can take: a 1500-byte Ethernet MTU less the IPv4
 * (20) and UDP (8) headers. Its receiver reads at most 1500 bytes, so larger datagrams would be cut.
 */
export const CANNELLONI_DEFAULT_DATAGRAM = 1472;
/** The largest frame on the wire: id 4, len 1, flags 1, 64 data bytes. */
export const CANNELLONI_MAX_FRAME_SIZE = 70;
/** A datagram must hold at least one frame of any kind. */
export const CANNELLONI_MIN_DATAGRAM = CANNELLONI_HEADER_SIZE + CANNELLONI_MAX_FRAME_SIZE;
/** The largest UDP payload over IPv4. */
export const CANNELLONI_MAX_DATAGRAM = 65_507;

/** Linux `canid_t` flag bits and `canfd_frame.flags` bits (include/uapi/linux/can.h). */
export const CannelloniCanId = {
  EFF: 0x80000000,
  RTR: 0x40000000,
  ERR: 0x20000000,
  SFF_MASK: 0x7ff,
  EFF_MASK: 0x1fffffff,
} as const;
export const CannelloniFdFlag = { BRS: 0x01, ESI: 0x02, FDF: 0x04 } as const;

/** Why a whole datagram was refused. */
export type CannelloniDatagramError =
  /** Fewer than 5 bytes: no complete header. */
  | 'short'
  /** The version byte is not 2. */
  | 'version'
  /** The op code is not DATA. */
  | 'op-code'
  /** A frame (its header, FD flags or data) runs past the end of the datagram. */
  | 'truncated'
  /** Bytes remain after the `count` frames. */
  | 'trailing';

export const CANNELLONI_DATAGRAM_ERRORS: readonly CannelloniDatagramError[] = Object.freeze([
  'short',
  'version',
  'op-code',
  'truncated',
  'trailing',
]);

/** Why one frame of an otherwise sound datagram was skipped. */
export type CannelloniFrameError =
  /** A classic frame (or remote request) with a length above 8. */
  | 'classic-length'
  /** A CAN FD frame with a length above 64. */
  | 'fd-length'
  /** A remote request marked as CAN FD (remote frames exist only in classic CAN). */
  | 'rtr-fd'
  /** A frame with the error flag: bus error reports are not carried onto this bus. */
  | 'error-frame';

export const CANNELLONI_FRAME_ERRORS: readonly CannelloniFrameError[] = Object.freeze([
  'classic-length',
  'fd-length',
  'rtr-fd',
  'error-frame',
]);

/** The header fields of a datagram. */
export interface CannelloniHeader {
  version: number;
  opCode: number;
  seq: number;
  count: number;
}

/** Bytes `f` takes in a datagram. */
export function cannelloniFrameSize(f: CanFrame): number {
  return 5 + (f.fd ? 1 : 0) + (f.rtr ? 0 : f.len);
}

/** Writes a DATA header at the start of `buf` (at least 5 bytes). */
export function writeCannelloniHeader(buf: Uint8Array, seq: number, count: number): void {
  buf[0] = CANNELLONI_VERSION;
  buf[1] = CannelloniOpCode.DATA;
  buf[2] = seq & 0xff;
  buf[3] = (count >>> 8) & 0xff;
  buf[4] = count & 0xff;
}

/**
 * Writes `f` (a valid frame) at `off`; returns the offset after it. The caller made sure it fits
 * (`cannelloniFrameSize`).
 */
export function writeCannelloniFrame(buf: Uint8Array, off: number, f: CanFrame): number {
  let id = f.id;
  if (f.extended) id |= CannelloniCanId.EFF;
  if (f.rtr) id |= CannelloniCanId.RTR;
  buf[off] = (id >>> 24) & 0xff;
  buf[off + 1] = (id >>> 16) & 0xff;
  buf[off + 2] = (id >>> 8) & 0xff;
  buf[off + 3] = id & 0xff;
  let o = off + 5;
  if (f.fd) {
    buf[off + 4] = f.len | CANNELLONI_FD_LEN_FLAG;
    buf[o++] = CannelloniFdFlag.FDF | (f.brs ? CannelloniFdFlag.BRS : 0) | (f.esi ? CannelloniFdFlag.ESI : 0);
  } else {
    buf[off + 4] = f.len;
  }
  if (!f.rtr) {
    const d = f.data;
    const n = f.len;
    if (n <= 8) for (let i = 0; i < n; i++) buf[o + i] = d[i]!;
    else buf.set(d.subarray(0, n), o);
    o += n;
  }
  return o;
}

export interface CannelloniEncodeOptions {
  /** Sequence number of the first datagram (default 0); the next ones count up, wrapping at 256. */
  firstSeq?: number;
  /** Largest datagram in bytes (default CANNELLONI_DEFAULT_DATAGRAM). */
  maxDatagram?: number;
}

/** Checks a datagram size limit; a message for a bad one. */
export function checkMaxDatagram(n: number): string | undefined {
  if (!Number.isInteger(n) || n < CANNELLONI_MIN_DATAGRAM || n > CANNELLONI_MAX_DATAGRAM) {
    return `a datagram size must be an integer ${CANNELLONI_MIN_DATAGRAM}..${CANNELLONI_MAX_DATAGRAM}, got ${n}`;
  }
  return undefined;
}

/**
 * Packs `frames` (valid frames), in order, into as few datagrams of at most `maxDatagram` bytes as
 * the order allows. An empty list gives no datagram. Throws RangeError for a bad `maxDatagram`.
 */
export function encodeCannelloni(
  frames: readonly CanFrame[],
  opts: CannelloniEncodeOptions = {},
): Uint8Array[] {
  const max = opts.maxDatagram ?? CANNELLONI_DEFAULT_DATAGRAM;
  const bad = checkMaxDatagram(max);
  if (bad !== undefined) throw new RangeError(bad);
  let seq = opts.firstSeq ?? 0;
  const out: Uint8Array[] = [];
  let i = 0;
  while (i < frames.length) {
    // Size the datagram first, so each one is allocated once at its exact size.
    let size = CANNELLONI_HEADER_SIZE;
    let end = i;
    while (end < frames.length && size + cannelloniFrameSize(frames[end]!) <= max) {
      size += cannelloniFrameSize(frames[end]!);
      end++;
    }
    const buf = new Uint8Array(size);
    writeCannelloniHeader(buf, seq, end - i);
    let off = CANNELLONI_HEADER_SIZE;
    for (let k = i; k < end; k++) off = writeCannelloniFrame(buf, off, frames[k]!);
    out.push(buf);
    seq = (seq + 1) & 0xff;
    i = end;
  }
  return out;
}

/** What `CannelloniDecoder.decode` found (one object, reused by every call of the same decoder). */
export interface CannelloniDecodeResult {
  /** The datagram was sound (its frames were delivered, less the skipped ones). */
  ok: boolean;
  /** Why it was refused (null when ok). */
  error: CannelloniDatagramError | null;
  /** A sentence saying where it broke ('' when ok). */
  detail: string;
  /** Header fields (valid when the datagram had 5 bytes). */
  version: number;
  opCode: number;
  seq: number;
  count: number;
  /** Frames delivered to `onFrame`. */
  delivered: number;
  /** Frames skipped (each also reported to `onBadFrame`). */
  skipped: number;
  /** FD frames whose length was padded up to a valid FD size. */
  padded: number;
}

const EMPTY = new Uint8Array(0);

/**
 * Decodes datagrams into one scratch frame per call of `onFrame` (valid only during the call: copy
 * what you keep; the hub's `transmit` copies). Allocates nothing per frame.
 */
export class CannelloniDecoder {
  readonly #frame: MutableCanFrame = scratchCanFrame();
  /** Scratch payloads by length 0..64 (a frame's data must be exactly `len` bytes). */
  readonly #data: Uint8Array[] = Array.from({ length: 65 }, (_, n) => new Uint8Array(n));
  readonly #result: CannelloniDecodeResult = {
    ok: false,
    error: null,
    detail: '',
    version: 0,
    opCode: 0,
    seq: 0,
    count: 0,
    delivered: 0,
    skipped: 0,
    padded: 0,
  };

  decode(
    buf: Uint8Array,
    onFrame: (f: CanFrame) => void,
    onBadFrame?: (reason: CannelloniFrameError, index: number) => void,
  ): CannelloniDecodeResult {
    const r = this.#result;
    r.ok = false;
    r.error = null;
    r.detail = '';
    r.version = r.opCode = r.seq = r.count = 0;
    r.delivered = r.skipped = r.padded = 0;
    const n = buf.length;
    if (n < CANNELLONI_HEADER_SIZE)
      return refuse(r, 'short', `${n} bytes, a header needs ${CANNELLONI_HEADER_SIZE}`);
    r.version = buf[0]!;
    r.opCode = buf[1]!;
    r.seq = buf[2]!;
    r.count = (buf[3]! << 8) | buf[4]!;
    if (r.version !== CANNELLONI_VERSION) {
      return refuse(r, 'version', `version ${r.version}, expected ${CANNELLONI_VERSION}`);
    }
    if (r.opCode !== CannelloniOpCode.DATA)
      return refuse(r, 'op-code', `op code ${r.opCode}, expected 0 (DATA)`);
    // Pass 1: the layout, exactly as a cannelloni receiver walks it, before anything is delivered.
    let off = CANNELLONI_HEADER_SIZE;
    for (let i = 0; i < r.count; i++) {
      if (off + 5 > n)
        return refuse(
          r,
          'truncated',
          `frame ${i + 1} of ${r.count}: header at byte ${off}, datagram has ${n}`,
        );
      const rtr = (buf[off]! & 0x40) !== 0;
      const len = buf[off + 4]!;
      off += 5;
      if (len & CANNELLONI_FD_LEN_FLAG) {
        if (off + 1 > n)
          return refuse(
            r,
            'truncated',
            `frame ${i + 1} of ${r.count}: FD flags at byte ${off}, datagram has ${n}`,
          );
        off += 1;
      }
      if (!rtr) {
        const dl = len & 0x7f;
        if (off + dl > n) {
          return refuse(
            r,
            'truncated',
            `frame ${i + 1} of ${r.count}: ${dl} data bytes at byte ${off}, datagram has ${n}`,
          );
        }
        off += dl;
      }
    }
    if (off !== n) return refuse(r, 'trailing', `${n - off} bytes after the last of ${r.count} frames`);
    r.ok = true;
    // Pass 2: deliver.
    off = CANNELLONI_HEADER_SIZE;
    const f = this.#frame;
    for (let i = 0; i < r.count; i++) {
      const canId = ((buf[off]! << 24) | (buf[off + 1]! << 16) | (buf[off + 2]! << 8) | buf[off + 3]!) >>> 0;
      const lenByte = buf[off + 4]!;
      off += 5;
      const fd = (lenByte & CANNELLONI_FD_LEN_FLAG) !== 0;
      const flags = fd ? buf[off++]! : 0;
      const rtr = (canId & CannelloniCanId.RTR) !== 0;
      const wireLen = lenByte & 0x7f;
      const dataAt = off;
      if (!rtr) off += wireLen;
      let bad: CannelloniFrameError | null = null;
      if (canId & CannelloniCanId.ERR) bad = 'error-frame';
      else if (rtr && fd) bad = 'rtr-fd';
      else if (!fd && wireLen > 8) bad = 'classic-length';
      else if (fd && wireLen > 64) bad = 'fd-length';
      if (bad !== null) {
        r.skipped++;
        onBadFrame?.(bad, i);
        continue;
      }
      let len = wireLen;
      if (fd) {
        len = CAN_FD_LENGTHS[canFdLenToDlc(wireLen)]!; // wireLen <= 64 here: never throws
        if (len !== wireLen) r.padded++;
      }
      const extended = (canId & CannelloniCanId.EFF) !== 0;
      f.id = extended ? canId & CannelloniCanId.EFF_MASK : canId & CannelloniCanId.SFF_MASK;
      f.extended = extended;
      f.rtr = rtr;
      f.fd = fd;
      f.brs = fd && (flags & CannelloniFdFlag.BRS) !== 0;
      f.esi = fd && (flags & CannelloniFdFlag.ESI) !== 0;
      f.len = len;
      f.len8Dlc = 0;
      if (rtr) {
        f.data = EMPTY;
      } else {
        const d = this.#data[len]!;
        for (let k = 0; k < wireLen; k++) d[k] = buf[dataAt + k]!;
        for (let k = wireLen; k < len; k++) d[k] = 0;
        f.data = d;
      }
      r.delivered++;
      onFrame(f);
    }
    return r;
  }
}

function refuse(
  r: CannelloniDecodeResult,
  error: CannelloniDatagramError,
  detail: string,
): CannelloniDecodeResult {
  r.ok = false;
  r.error = error;
  r.detail = detail;
  return r;
}

/** A datagram decoded into owned frames (for tests and tools; the link uses CannelloniDecoder). */
export type DecodedCannelloni =
  | {
      ok: true;
      header: CannelloniHeader;
      frames: CanFrame[];
      skipped: { index: number; reason: CannelloniFrameError }[];
      padded: number;
    }
  | { ok: false; error: CannelloniDatagramError; detail: string };

export function decodeCannelloni(buf: Uint8Array): DecodedCannelloni {
  const frames: CanFrame[] = [];
  const skipped: { index: number; reason: CannelloniFrameError }[] = [];
  const r = new CannelloniDecoder().decode(
    buf,
    (f) => frames.push({ ...f, data: f.data.slice() }),
    (reason, index) => skipped.push({ index, reason }),
  );
  if (!r.ok) return { ok: false, error: r.error!, detail: r.detail };
  return {
    ok: true,
    header: { version: r.version, opCode: r.opCode, seq: r.seq, count: r.count },
    frames,
    skipped,
    padded: r.padded,
  };
}
