/**
 * VIRTIO console constants (VIRTIO 1.x "Console Device", device ID 3; include/uapi/linux/
 * virtio_console.h). One namespace per kind of number.
 */

export const VIRTIO_ID_CONSOLE = 3;

/** Device feature bit numbers. */
export const ConsoleFeature = {
  /** `cols` and `rows` in config space are valid; RESIZE control messages are honoured. */
  SIZE: 0,
  /** Several ports, control queues, `max_nr_ports` valid. */
  MULTIPORT: 1,
  /** `emerg_wr` in config space is valid. */
  EMERG_WRITE: 2,
} as const;

/**
 * Queue layout: port 0 receiveq/transmitq at 0/1, control receiveq/transmitq at 2/3 (MULTIPORT
 * only), then port n >= 1 at 2n + 2 (receiveq) and 2n + 3 (transmitq).
 */
export const ConsoleQueue = {
  PORT0_RX: 0,
  PORT0_TX: 1,
  CTRL_RX: 2,
  CTRL_TX: 3,
} as const;

/** Receiveq (device -> guest data) index of port `n`. */
export function portRxQueue(n: number): number {
  return n === 0 ? 0 : 2 * n + 2;
}
/** Transmitq (guest -> device data) index of port `n`. */
export function portTxQueue(n: number): number {
  return n === 0 ? 1 : 2 * n + 3;
}
/** Queue count for `maxPorts` ports with MULTIPORT: 2 * (max_nr_ports + 1). */
export function consoleQueueCount(maxPorts: number): number {
  return 2 * (maxPorts + 1);
}

/** Config space: le16 cols; le16 rows; le32 max_nr_ports; le32 emerg_wr (12 bytes). */
export const ConsoleConfig = {
  COLS: 0,
  ROWS: 2,
  MAX_NR_PORTS: 4,
  EMERG_WR: 8,
  SIZE: 12,
} as const;

/** Control message: le32 id; le16 event; le16 value (8 bytes), then an event-specific payload. */
export const CONSOLE_CONTROL_SIZE = 8;

/** Control events (spec names in comments where Linux differs). */
export const ConsoleEvent = {
  DEVICE_READY: 0,
  /** Spec: DEVICE_ADD. */
  PORT_ADD: 1,
  /** Spec: DEVICE_REMOVE. */
  PORT_REMOVE: 2,
  PORT_READY: 3,
  CONSOLE_PORT: 4,
  /** Followed by le16 cols; le16 rows (Linux before 6.15 reads rows first). */
  RESIZE: 5,
  PORT_OPEN: 6,
  /** Followed by the UTF-8 name, no NUL; its length is the buffer's used length minus 8. */
  PORT_NAME: 7,
} as const;

/** The id Linux puts in DEVICE_READY (the field is unused there). */
export const CONSOLE_BAD_ID = 0xffffffff;

/** Linux refuses a device with max_nr_ports of 0 or above this. */
export const CONSOLE_MAX_PORTS = 0x8000;
