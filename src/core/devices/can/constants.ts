/**
 * VIRTIO CAN constants (VIRTIO 1.4 section 5.22; include/uapi/linux/virtio_can.h; docs/protocol-notes.md 3).
 * One namespace per kind of number: feature bit numbers, message types, flag bits, status bits.
 * (The reference implementation gave bus-off and RTR_FRAMES the same value and got bus-off wrong.)
 */

export const VIRTIO_ID_CAN = 36;

/** Device feature bit numbers. */
export const CanFeature = {
  CAN_CLASSIC: 0,
  CAN_FD: 1,
  RTR_FRAMES: 2,
  LATE_TX_ACK: 3,
} as const;

/** Virtqueue indices, in the fixed spec order. */
export const CanQueue = {
  TX: 0,
  RX: 1,
  CTRL: 2,
} as const;
export const CAN_NUM_QUEUES = 3;

export const CanMsgType = {
  TX: 0x0001,
  RX: 0x0101,
  SET_CTRL_MODE_START: 0x0201,
  SET_CTRL_MODE_STOP: 0x0202,
} as const;

/** Bits of the `flags` field of TX and RX messages; every other bit is undefined. */
export const CanFlag = {
  EXTENDED: 0x8000,
  FD: 0x4000,
  RTR: 0x2000,
} as const;
export const CAN_DEFINED_FLAGS = CanFlag.EXTENDED | CanFlag.FD | CanFlag.RTR;

export const CanResult = {
  OK: 0,
  NOT_OK: 1,
} as const;

/** Bits of the config-space `status` field. Bus-off is bit 0, value 1. */
export const CanStatus = {
  CTRL_BUSOFF: 0x0001,
} as const;

/** Size of struct virtio_can_config. */
export const CAN_CONFIG_SIZE = 2;
/** Size of the TX/RX message header before the payload. */
export const CAN_HEADER_SIZE = 16;
export const CAN_MAX_CLASSIC_LEN = 8;
export const CAN_MAX_FD_LEN = 64;
export const CAN_MAX_STD_ID = 0x7ff;
export const CAN_MAX_EXT_ID = 0x1fffffff;
/** Valid CAN FD payload lengths (DLC 0..15). */
export const CAN_FD_LENGTHS: readonly number[] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64];
export const FD_LENGTH_VALID: Uint8Array = (() => {
  const t = new Uint8Array(CAN_MAX_FD_LEN + 1);
  for (const l of CAN_FD_LENGTHS) t[l] = 1;
  return t;
})();

/** Header field offsets of virtio_can_tx_out / virtio_can_rx. */
export const CanHdr = {
  MSG_TYPE: 0,
  LENGTH: 2,
  RESERVED_CLASSIC_DLC: 4,
  PADDING: 5,
  RESERVED_XL_PRIORITY: 6,
  FLAGS: 8,
  CAN_ID: 12,
} as const;
