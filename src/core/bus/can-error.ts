/**
 * SocketCAN error frames as the bus reports them to observers that ask for them (captures, monitors,
 * socketcand clients, host interfaces): the same class bits and data bytes a Linux CAN driver puts in
 * a `struct can_frame` with CAN_ERR_FLAG set (linux/can/error.h), so they can be written to a capture
 * or sent to a SocketCAN peer unchanged.
 */

/** Error class bits of the identifier (without CAN_ERR_FLAG), and the data byte values. */
export const CanErr = {
  /** CAN_ERR_FLAG: set in a Linux can_id for an error frame. */
  FLAG: 0x20000000,
  /** Error class mask of the identifier. */
  MASK: 0x1fffffff,
  TX_TIMEOUT: 0x001,
  LOSTARB: 0x002,
  CRTL: 0x004,
  PROT: 0x008,
  TRX: 0x010,
  ACK: 0x020,
  BUSOFF: 0x040,
  BUSERROR: 0x080,
  RESTARTED: 0x100,
  /** data[6] = TX error counter, data[7] = RX error counter are valid. */
  CNT: 0x200,
  // data[1]: controller problems
  CRTL_RX_OVERFLOW: 0x01,
  CRTL_TX_OVERFLOW: 0x02,
  CRTL_RX_WARNING: 0x04,
  CRTL_TX_WARNING: 0x08,
  CRTL_RX_PASSIVE: 0x10,
  CRTL_TX_PASSIVE: 0x20,
  CRTL_ACTIVE: 0x40,
  // data[2]: protocol error type
  PROT_BIT: 0x01,
  PROT_FORM: 0x02,
  PROT_STUFF: 0x04,
  PROT_BIT0: 0x08,
  PROT_BIT1: 0x10,
  PROT_OVERLOAD: 0x20,
  PROT_ACTIVE: 0x40,
  PROT_TX: 0x80,
} as const;

/** One error event on a bus. Immutable by convention, like CanFrame. */
export interface CanErrorFrame {
  /** Error class bits (CanErr.TX_TIMEOUT ... CanErr.CNT), without CanErr.FLAG. */
  readonly classBits: number;
  /** Exactly 8 bytes, laid out as linux/can/error.h describes. */
  readonly data: Uint8Array;
  /** Bus clock (ns), as CanFrame.timestampNs. */
  readonly timestampNs: bigint;
  /** Hub port id the error is about (its controller), 0 = the bus as a whole. */
  readonly origin: number;
}

/** The Linux can_id of an error frame (CAN_ERR_FLAG | class bits). */
export function errorFrameCanId(f: CanErrorFrame): number {
  return (CanErr.FLAG | (f.classBits & CanErr.MASK)) >>> 0;
}

/** Error location (data[3] of a CAN_ERR_PROT frame), as linux/can/error.h numbers them. */
export const CanErrLoc = {
  UNSPEC: 0x00,
  SOF: 0x03,
  ID28_21: 0x02,
  ID20_18: 0x06,
  SRTR: 0x04,
  IDE: 0x05,
  ID17_13: 0x07,
  ID12_05: 0x0f,
  ID04_00: 0x0e,
  RTR: 0x0c,
  RES1: 0x0d,
  RES0: 0x09,
  DLC: 0x0b,
  DATA: 0x0a,
  CRC_SEQ: 0x08,
  CRC_DEL: 0x18,
  ACK: 0x19,
  ACK_DEL: 0x1b,
  EOF: 0x1a,
  INTERM: 0x12,
} as const;

/** Error counter thresholds (linux/can/error.h CAN_ERROR_WARNING_THRESHOLD ...). */
export const CanErrThreshold = {
  WARNING: 96,
  PASSIVE: 128,
  BUS_OFF: 256,
} as const;

type ControllerState = 'error-active' | 'error-warning' | 'error-passive' | 'bus-off';

/** 0 active, 1 warning, 2 passive, 3 bus-off: the order Linux's `enum can_state` has. */
function counterLevel(n: number): number {
  if (n >= CanErrThreshold.BUS_OFF) return 3;
  if (n >= CanErrThreshold.PASSIVE) return 2;
  if (n >= CanErrThreshold.WARNING) return 1;
  return 0;
}

const TX_BITS = [CanErr.CRTL_ACTIVE, CanErr.CRTL_TX_WARNING, CanErr.CRTL_TX_PASSIVE, 0];
const RX_BITS = [CanErr.CRTL_ACTIVE, CanErr.CRTL_RX_WARNING, CanErr.CRTL_RX_PASSIVE, 0];

/**
 * The error frame a Linux driver sends when a controller changes state (can_change_state and
 * can_bus_off): CRTL with the warning/passive/active byte, or BUSOFF; RESTARTED when it comes back
 * from bus-off.
 *
 * With counters (`tec`, `rec`) it is what drivers since Linux 6.0 send: CNT with data[6] = TEC and
 * data[7] = REC (not in the bus-off frame), and data[1] names the side that caused the change (the
 * TX bits when TEC's level is at least REC's, the RX bits when REC's is at least TEC's), as
 * can_change_state does. Without counters both sides' bits are set.
 */
export function stateErrorFrame(
  state: ControllerState,
  opts: { timestampNs: bigint; origin: number; tec?: number; rec?: number; restarted?: boolean },
): CanErrorFrame {
  const data = new Uint8Array(8);
  let classBits = 0;
  const counters = opts.tec !== undefined || opts.rec !== undefined;
  switch (state) {
    case 'bus-off':
      classBits = CanErr.BUSOFF;
      break;
    case 'error-passive':
    case 'error-warning': {
      classBits = CanErr.CRTL;
      const level = state === 'error-passive' ? 2 : 1;
      if (!counters) {
        data[1] = TX_BITS[level]! | RX_BITS[level]!;
        break;
      }
      const tx = Math.min(counterLevel(opts.tec ?? 0), 2);
      const rx = Math.min(counterLevel(opts.rec ?? 0), 2);
      if (tx >= rx) data[1]! |= TX_BITS[tx]!;
      if (rx >= tx) data[1]! |= RX_BITS[rx]!;
      break;
    }
    case 'error-active':
      classBits = opts.restarted === true ? CanErr.RESTARTED : CanErr.CRTL;
      data[1] = CanErr.CRTL_ACTIVE;
      break;
  }
  if (counters && state !== 'bus-off') {
    classBits |= CanErr.CNT;
    data[6] = Math.min(255, opts.tec ?? 0);
    data[7] = Math.min(255, opts.rec ?? 0);
  }
  return { classBits, data, timestampNs: opts.timestampNs, origin: opts.origin };
}

/**
 * A bus error as a controller with bus-error reporting reports it: PROT | BUSERROR with the error
 * type (data[2]) and location (data[3]), ACK for a missing acknowledgement, and the counters (CNT,
 * data[6] = TEC, data[7] = REC).
 */
export function busErrorFrame(opts: {
  timestampNs: bigint;
  origin: number;
  /** data[2]: CanErr.PROT_* bits (PROT_TX when the controller was transmitting). */
  type: number;
  /** data[3]: CanErrLoc.*. */
  location: number;
  ack?: boolean;
  tec: number;
  rec: number;
}): CanErrorFrame {
  const data = new Uint8Array(8);
  data[2] = opts.type & 0xff;
  data[3] = opts.location & 0xff;
  data[6] = Math.min(255, opts.tec);
  data[7] = Math.min(255, opts.rec);
  const classBits = CanErr.PROT | CanErr.BUSERROR | CanErr.CNT | (opts.ack === true ? CanErr.ACK : 0);
  return { classBits, data, timestampNs: opts.timestampNs, origin: opts.origin };
}
