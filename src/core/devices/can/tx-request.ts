/**
 * Validation of a guest TX request (virtio_can_tx_out) and encoding of RX messages (virtio_can_rx).
 * The rules are the spec's (VIRTIO 1.4 5.22.6.2; docs/protocol-notes.md 3; transport-level cases:
 * docs/decisions.md "CAN device"); a bad request is never an exception: it is a reason code, counted, and answered with VIRTIO_CAN_RESULT_NOT_OK.
 */
import type { CanFrame } from '../../bus/can-frame.js';
import {
  CAN_DEFINED_FLAGS,
  CAN_HEADER_SIZE,
  CAN_MAX_CLASSIC_LEN,
  CAN_MAX_EXT_ID,
  CAN_MAX_FD_LEN,
  CAN_MAX_STD_ID,
  CanFlag,
  CanHdr,
  CanMsgType,
  FD_LENGTH_VALID,
} from './constants.js';

/** Which frame types the driver negotiated. */
export interface CanNegotiated {
  classic: boolean;
  fd: boolean;
  rtr: boolean;
  lateTxAck: boolean;
}

/** Why a TX request was answered NOT_OK. */
export const TxReject = {
  STOPPED: 'stopped',
  SHORT_HEADER: 'short-header',
  MSG_TYPE: 'msg-type',
  UNDEFINED_FLAGS: 'undefined-flags',
  FD_NOT_NEGOTIATED: 'fd-not-negotiated',
  CLASSIC_NOT_NEGOTIATED: 'classic-not-negotiated',
  RTR_NOT_NEGOTIATED: 'rtr-not-negotiated',
  RTR_FD: 'rtr-fd',
  ID_RANGE: 'id-range',
  LENGTH: 'length',
  SHORT_PAYLOAD: 'short-payload',
  NO_RESULT_BYTE: 'no-result-byte',
  BUS: 'bus',
  CANCELLED: 'cancelled',
  BAD_CHAIN: 'bad-chain',
  /** Sent on a started but disabled TX ring (discarded, vhost-user "Ring states"). */
  DISABLED: 'disabled',
} as const;
export type TxRejectReason = (typeof TxReject)[keyof typeof TxReject];

export interface TxHeader {
  flags: number;
  id: number;
  len: number;
  len8Dlc: number;
}

/**
 * Checks a 16-byte TX header against the negotiated features. `readable` is the length of the
 * chain's readable part. Fills `out` and returns null when the frame may go on the bus.
 */
export function checkTxHeader(
  hdr: DataView,
  readable: number,
  neg: CanNegotiated,
  out: TxHeader,
): TxRejectReason | null {
  if (readable < CAN_HEADER_SIZE) return TxReject.SHORT_HEADER;
  if (hdr.getUint16(CanHdr.MSG_TYPE, true) !== CanMsgType.TX) return TxReject.MSG_TYPE;
  const flags = hdr.getUint32(CanHdr.FLAGS, true);
  // A frame with an undefined flag bit is a frame of a type that was not negotiated (5.22.6.2.1).
  if ((flags & ~CAN_DEFINED_FLAGS) !== 0) return TxReject.UNDEFINED_FLAGS;
  const fd = (flags & CanFlag.FD) !== 0;
  const rtr = (flags & CanFlag.RTR) !== 0;
  const ext = (flags & CanFlag.EXTENDED) !== 0;
  if (rtr && fd) return TxReject.RTR_FD; // RTR exists only for classic CAN
  if (fd && !neg.fd) return TxReject.FD_NOT_NEGOTIATED;
  if (!fd && !neg.classic) return TxReject.CLASSIC_NOT_NEGOTIATED;
  if (rtr && !neg.rtr) return TxReject.RTR_NOT_NEGOTIATED;
  const id = hdr.getUint32(CanHdr.CAN_ID, true);
  // The three MSBs never carry type information; anything above the 11/29-bit range is rejected.
  if (id > (ext ? CAN_MAX_EXT_ID : CAN_MAX_STD_ID)) return TxReject.ID_RANGE;
  const len = hdr.getUint16(CanHdr.LENGTH, true);
  if (fd ? len > CAN_MAX_FD_LEN || FD_LENGTH_VALID[len] !== 1 : len > CAN_MAX_CLASSIC_LEN)
    return TxReject.LENGTH;
  // An RTR frame carries no payload; the Linux driver still appends `len` zero bytes, so accept both.
  if (!rtr && readable < CAN_HEADER_SIZE + len) return TxReject.SHORT_PAYLOAD;
  // reserved_classic_dlc: reserved in 1.4 (the driver writes 0). Honour 9..15 as len8_dlc for an
  // 8-byte classic frame, ignore it otherwise: never a reason to refuse a frame.
  const dlc = hdr.getUint8(CanHdr.RESERVED_CLASSIC_DLC);
  out.flags = flags;
  out.id = id;
  out.len = len;
  out.len8Dlc = !fd && !rtr && len === CAN_MAX_CLASSIC_LEN && dlc >= 9 && dlc <= 15 ? dlc : 0;
  return null;
}

/** Writes the virtio_can_rx header for `f` into `dst` (>= 16 bytes). Payload bytes are written by the caller. */
export function encodeRxHeader(f: CanFrame, dst: DataView): void {
  dst.setUint16(CanHdr.MSG_TYPE, CanMsgType.RX, true);
  dst.setUint16(CanHdr.LENGTH, f.len, true);
  dst.setUint8(CanHdr.RESERVED_CLASSIC_DLC, f.len8Dlc);
  dst.setUint8(CanHdr.PADDING, 0);
  dst.setUint16(CanHdr.RESERVED_XL_PRIORITY, 0, true);
  const flags = (f.extended ? CanFlag.EXTENDED : 0) | (f.fd ? CanFlag.FD : 0) | (f.rtr ? CanFlag.RTR : 0);
  dst.setUint32(CanHdr.FLAGS, flags, true);
  dst.setUint32(CanHdr.CAN_ID, f.id, true);
}
