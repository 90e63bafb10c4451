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

/**
 * The error frame a Linux driver sends when a controller changes state (can_change_state and
 * can_bus_off): CRTL with the warning/passive/active byte, or BUSOFF; RESTARTED when it comes back
 * from bus-off. With counters (`tec`, `rec`) it also sets CNT and data[6..7].
 */
export function stateErrorFrame(
  state: 'error-active' | 'error-warning' | 'error-passive' | 'bus-off',
  opts: { timestampNs: bigint; origin: number; tec?: number; rec?: number; restarted?: boolean },
): CanErrorFrame {
  const data = new Uint8Array(8);
  let classBits = 0;
  switch (state) {
    case 'bus-off':
      classBits = CanErr.BUSOFF;
      break;
    case 'error-passive':
      classBits = CanErr.CRTL;
      data[1] = CanErr.CRTL_RX_PASSIVE | CanErr.CRTL_TX_PASSIVE;
      break;
    case 'error-warning':
      classBits = CanErr.CRTL;
      data[1] = CanErr.CRTL_RX_WARNING | CanErr.CRTL_TX_WARNING;
      break;
    case 'error-active':
      classBits = opts.restarted === true ? CanErr.RESTARTED : CanErr.CRTL;
      data[1] = CanErr.CRTL_ACTIVE;
      break;
  }
  if (opts.tec !== undefined || opts.rec !== undefined) {
    classBits |= CanErr.CNT;
    data[6] = Math.min(255, opts.tec ?? 0);
    data[7] = Math.min(255, opts.rec ?? 0);
  }
  return { classBits, data, timestampNs: opts.timestampNs, origin: opts.origin };
}
