/**
 * vhost-user wire constants (qemu docs/interop/vhost-user.rst; docs/protocol-notes.md 1).
 * One namespace per kind of number: request codes, header flags, protocol feature bits.
 */

/** Front-end -> back-end request codes. */
export const FrontendReq = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  CREATE_CRYPTO_SESSION: 26,
  CLOSE_CRYPTO_SESSION: 27,
  POSTCOPY_ADVISE: 28,
  POSTCOPY_LISTEN: 29,
  POSTCOPY_END: 30,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  GPU_SET_SOCKET: 33,
  RESET_DEVICE: 34,
  VRING_KICK: 35,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
  GET_SHARED_OBJECT: 41,
  SET_DEVICE_STATE_FD: 42,
  CHECK_DEVICE_STATE: 43,
} as const;
export type FrontendReqCode = (typeof FrontendReq)[keyof typeof FrontendReq];

const frontendNames = new Map<number, string>(Object.entries(FrontendReq).map(([k, v]) => [v, k]));
export function frontendReqName(code: number): string {
  return frontendNames.get(code) ?? `UNKNOWN_${code}`;
}

/** Back-end -> front-end request codes (sent on the back-end channel from SET_BACKEND_REQ_FD). */
export const BackendReq = {
  IOTLB_MSG: 1,
  CONFIG_CHANGE_MSG: 2,
  VRING_HOST_NOTIFIER_MSG: 3,
  VRING_CALL: 4,
  VRING_ERR: 5,
  SHARED_OBJECT_ADD: 6,
  SHARED_OBJECT_REMOVE: 7,
  SHARED_OBJECT_LOOKUP: 8,
} as const;

const backendNames = new Map<number, string>(Object.entries(BackendReq).map(([k, v]) => [v, k]));
export function backendReqName(code: number): string {
  return backendNames.get(code) ?? `UNKNOWN_${code}`;
}

/** Header flag bits. */
export const HeaderFlag = {
  VERSION_MASK: 0x3,
  VERSION: 0x1,
  REPLY: 0x4,
  NEED_REPLY: 0x8,
} as const;

/** Every reply carries exactly these flags (version 1 + REPLY); QEMU rejects anything else. */
export const REPLY_FLAGS = HeaderFlag.VERSION | HeaderFlag.REPLY;

/** Protocol feature bit numbers (GET/SET_PROTOCOL_FEATURES). */
export const ProtocolFeature = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  NET_MTU: 4,
  BACKEND_REQ: 5,
  CROSS_ENDIAN: 6,
  CRYPTO_SESSION: 7,
  PAGEFAULT: 8,
  CONFIG: 9,
  BACKEND_SEND_FD: 10,
  HOST_NOTIFIER: 11,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
  XEN_MMAP: 17,
  SHARED_OBJECT: 18,
  DEVICE_STATE: 19,
  SHMEM: 20,
} as const;

export const HEADER_SIZE = 12;
/** Largest payload we accept. The biggest legitimate one is a config message (12 + 256). */
export const MAX_PAYLOAD = 4096;
/** Most fds a single message may carry (SET_MEM_TABLE: one per region, at most 8). */
export const MAX_FDS = 8;
/** Regions in one SET_MEM_TABLE (vhost-user.rst: VHOST_MEMORY_BASELINE_NREGIONS). */
export const MAX_MEM_TABLE_REGIONS = 8;
/** Slots we report in GET_MAX_MEM_SLOTS for CONFIGURE_MEM_SLOTS. */
export const MAX_MEM_SLOTS = 32;
/** Largest config space QEMU handles (VHOST_USER_MAX_CONFIG_SIZE). */
export const MAX_CONFIG_SIZE = 256;

/** Kick/call/err payload: bits 0-7 queue index, bit 8 "no fd". */
export const VRING_IDX_MASK = 0xff;
export const VRING_NOFD_MASK = 0x100;

/** SET_CONFIG flags. */
export const ConfigFlag = {
  WRITABLE: 0,
  MIGRATION: 1,
} as const;

/** Device status bits (virtio 1.x 2.1), used with the STATUS protocol feature. */
export const DeviceStatus = {
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
  DEVICE_NEEDS_RESET: 64,
  FAILED: 128,
} as const;
