// The record layout of `NativeAddon.canRecvBatch()` / `canSendBatch()` (native/can.c), and
// allocation-free helpers to read and write it. Pure: no addon needed.
//
// One record is 88 bytes, all fields in host byte order:
//
//   bytes  0..3   u32 can_id: identifier | CAN_EFF_FLAG (0x80000000) | CAN_RTR_FLAG (0x40000000)
//                 | CAN_ERR_FLAG (0x20000000), exactly Linux's canid_t
//   byte   4      u8 len: payload length (classic 0..8, FD 0..64)
//   byte   5      u8 flags: CANFD_BRS 1, CANFD_ESI 2, CANFD_FDF 4 (FD frames only)
//   byte   6      u8 reserved (__res0)
//   byte   7      u8 len8_dlc: DLC 9..15 of a classic frame with len 8 (CAN_CTRLMODE_CC_LEN8_DLC)
//   bytes  8..71  u8 data[64]
//   bytes 72..75  u32 wire size: 16 (CAN_MTU, classic struct can_frame) or 72 (CANFD_MTU)
//   bytes 76..79  u32 msg_flags from recvmmsg (MSG_CONFIRM 0x800: our own frame echoed back;
//                 MSG_DONTROUTE 0x4: sent by another socket on this host)
//   bytes 80..87  u64 receive timestamp in ns (SO_TIMESTAMPNS, CLOCK_REALTIME; 0 if absent)
//
// Bytes 0..71 are `struct canfd_frame`; a classic frame is its first 16 bytes (`struct
// can_frame`, whose byte 5 is padding). test/socketcan/native-can.test.ts checks that these
// constants agree with the addon's.

/** Bytes per record. */
export const CAN_RECORD_SIZE = 88;
/** Offset of the payload (`data[64]`) inside a record. */
export const CAN_RECORD_DATA_OFFSET = 8;
/** Offset of the u32 wire size inside a record. */
export const CAN_RECORD_WIRE_SIZE_OFFSET = 72;
/** Offset of the u32 msg_flags inside a record. */
export const CAN_RECORD_MSG_FLAGS_OFFSET = 76;
/** Offset of the u64 timestamp (ns) inside a record. */
export const CAN_RECORD_TIMESTAMP_OFFSET = 80;

/** Wire size of a classic frame (sizeof(struct can_frame)). */
export const CAN_MTU = 16;
/** Wire size of a CAN FD frame (sizeof(struct canfd_frame)). */
export const CANFD_MTU = 72;
/** Largest payload of a classic frame. */
export const CAN_MAX_DLEN = 8;
/** Largest payload of a CAN FD frame. */
export const CANFD_MAX_DLEN = 64;
/** `flags` bit marking a CAN FD frame (set by Linux >= 5.19 on every received FD frame). */
export const CANFD_FDF = 0x04;

const OFF_LEN = 4;
const OFF_FLAGS = 5;
const OFF_LEN8_DLC = 7;

/** Whether this machine is little-endian (the records use host byte order). */
export const HOST_LITTLE_ENDIAN: boolean = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** One decoded record; `readRecord()` fills a caller-owned instance so nothing is allocated. */
export interface RawCanRecord {
  /** Linux can_id, including CAN_EFF_FLAG / CAN_RTR_FLAG / CAN_ERR_FLAG (unsigned 32-bit). */
  canId: number;
  /** Payload length. */
  len: number;
  /** canfd_frame.flags (BRS/ESI/FDF); padding of a classic frame. */
  flags: number;
  /** len8_dlc (classic frames; 0 when unused). */
  len8Dlc: number;
  /** Byte offset of the payload, relative to the start of the DataView given to readRecord. */
  dataOffset: number;
  /** 16 (classic) or 72 (FD); whatever the kernel reported, for received records. */
  wireSize: number;
  /** recvmmsg msg_flags (MSG_CONFIRM, MSG_DONTROUTE, ...). */
  msgFlags: number;
  /** Receive time in ns since the epoch, 0n when absent. */
  timestampNs: bigint;
}

/** A fresh record object to reuse with `readRecord()`. */
export function createRawCanRecord(): RawCanRecord {
  return {
    canId: 0,
    len: 0,
    flags: 0,
    len8Dlc: 0,
    dataOffset: CAN_RECORD_DATA_OFFSET,
    wireSize: 0,
    msgFlags: 0,
    timestampNs: 0n,
  };
}

/** A frame to encode with `writeRecord()`. */
export interface CanRecordInput {
  /** Linux can_id with its EFF/RTR/ERR flag bits (unsigned 32-bit). */
  canId: number;
  /** Payload length: 0..8 classic, 0..64 FD. Written as given (an RTR frame may have len > data). */
  len: number;
  /** canfd_frame.flags. The frame is FD when CANFD_FDF is set here or `fd` is true. */
  flags?: number;
  /** len8_dlc, 0..15 (default 0). */
  len8Dlc?: number;
  /** Payload bytes, at most 8 (classic) or 64 (FD); the rest of data[64] is zeroed. */
  data?: Uint8Array;
  /** Force an FD record (wire size 72) without setting CANFD_FDF in `flags`. */
  fd?: boolean;
}

function checkIndex(byteLength: number, i: number): number {
  if (!Number.isInteger(i) || i < 0 || (i + 1) * CAN_RECORD_SIZE > byteLength) {
    throw new RangeError(
      `record index ${i} is out of range for a buffer of ${byteLength} bytes (${CAN_RECORD_SIZE} per record)`,
    );
  }
  return i * CAN_RECORD_SIZE;
}

function checkUint(name: string, v: number, max: number): void {
  if (!Number.isInteger(v) || v < 0 || v > max) {
    throw new RangeError(`${name} must be an integer in 0..${max}, got ${v}`);
  }
}

/** Stores a u32 in host byte order without allocating a DataView. */
function putU32(buf: Uint8Array, off: number, v: number): void {
  if (HOST_LITTLE_ENDIAN) {
    buf[off] = v & 0xff;
    buf[off + 1] = (v >>> 8) & 0xff;
    buf[off + 2] = (v >>> 16) & 0xff;
    buf[off + 3] = v >>> 24;
  } else {
    buf[off] = v >>> 24;
    buf[off + 1] = (v >>> 16) & 0xff;
    buf[off + 2] = (v >>> 8) & 0xff;
    buf[off + 3] = v & 0xff;
  }
}

/** Decodes record `i` of `dv` into `out` (and returns `out`). Allocates only the bigint. */
export function readRecord(dv: DataView, i: number, out: RawCanRecord): RawCanRecord {
  const base = checkIndex(dv.byteLength, i);
  out.canId = dv.getUint32(base, HOST_LITTLE_ENDIAN);
  out.len = dv.getUint8(base + OFF_LEN);
  out.flags = dv.getUint8(base + OFF_FLAGS);
  out.len8Dlc = dv.getUint8(base + OFF_LEN8_DLC);
  out.dataOffset = base + CAN_RECORD_DATA_OFFSET;
  out.wireSize = dv.getUint32(base + CAN_RECORD_WIRE_SIZE_OFFSET, HOST_LITTLE_ENDIAN);
  out.msgFlags = dv.getUint32(base + CAN_RECORD_MSG_FLAGS_OFFSET, HOST_LITTLE_ENDIAN);
  out.timestampNs = dv.getBigUint64(base + CAN_RECORD_TIMESTAMP_OFFSET, HOST_LITTLE_ENDIAN);
  return out;
}

/**
 * Encodes `frame` as record `i` of `buf`, ready for `canSendBatch()`: the whole 88 bytes are
 * written (unused payload, reserved byte, msg_flags and timestamp are zeroed). Throws a
 * RangeError for an index outside `buf` or a field out of range (classic: len and data at
 * most 8; FD: at most 64).
 */
export function writeRecord(buf: Uint8Array, i: number, frame: CanRecordInput): void {
  const base = checkIndex(buf.byteLength, i);
  const flags = frame.flags ?? 0;
  const len8Dlc = frame.len8Dlc ?? 0;
  const data = frame.data;
  const fd = frame.fd === true || (flags & CANFD_FDF) !== 0;
  const maxLen = fd ? CANFD_MAX_DLEN : CAN_MAX_DLEN;
  checkUint('canId', frame.canId, 0xffffffff);
  checkUint('len', frame.len, maxLen);
  checkUint('flags', flags, 0xff);
  checkUint('len8Dlc', len8Dlc, 15);
  if (data !== undefined && data.length > maxLen) {
    throw new RangeError(`data must be at most ${maxLen} bytes for ${fd ? 'an FD' : 'a classic'} frame`);
  }
  buf.fill(0, base, base + CAN_RECORD_SIZE);
  putU32(buf, base, frame.canId);
  buf[base + OFF_LEN] = frame.len;
  buf[base + OFF_FLAGS] = flags;
  buf[base + OFF_LEN8_DLC] = len8Dlc;
  if (data !== undefined) buf.set(data, base + CAN_RECORD_DATA_OFFSET);
  putU32(buf, base + CAN_RECORD_WIRE_SIZE_OFFSET, fd ? CANFD_MTU : CAN_MTU);
}
