/**
 * Error plumbing for the CAN bus layer (frame model, candump codec, hub).
 *
 * Kept inside `core/bus` on purpose: this folder has no dependency outside itself, so it can be used as a
 * library on its own. The codes follow the same convention as `core/util/errors.ts` (stable `code`, the
 * original failure in `cause`, tests assert on `code` only), and `BUS_ERROR_DISPOSITION` uses the same
 * disposition words so the daemon's table can absorb it with a spread.
 */

/** What a failure means for whoever hit it (a subset of the daemon-wide disposition vocabulary). */
export type BusErrorDisposition =
  /** One request/frame/line is refused; everything else goes on. */
  | 'reject'
  /** A programming error (misuse of the API, a handler bug): not something a peer can cause. */
  | 'fatal';

/**
 * Every code the bus layer can raise and what it means. A `Record`, so adding a code without classifying
 * it is a compile error.
 */
export const BUS_ERROR_DISPOSITION = {
  // CanFrame validation (makeCanFrame / validateCanFrame); a peer-supplied frame that fails is refused.
  /** A field has the wrong JS type (flag not boolean, data not bytes, timestamp not bigint, ...). */
  ERR_CAN_FIELD_TYPE: 'reject',
  /** Identifier outside 0..0x7FF (standard) or 0..0x1FFFFFFF (extended). */
  ERR_CAN_ID_RANGE: 'reject',
  /** `len` not 0..8 (classic, RTR) or not one of the CAN FD sizes (0..8, 12, 16, 20, 24, 32, 48, 64). */
  ERR_CAN_LENGTH: 'reject',
  /** RTR and FD together: remote frames exist only in classic CAN. */
  ERR_CAN_RTR_FD: 'reject',
  /** BRS or ESI on a classic frame. */
  ERR_CAN_FD_FLAGS_ON_CLASSIC: 'reject',
  /** `len8Dlc` other than 0, or 9..15 on a classic frame with len 8. */
  ERR_CAN_LEN8_DLC: 'reject',
  /** `data.length` differs from `len` (or is not 0 for RTR). */
  ERR_CAN_DATA_LENGTH: 'reject',
  /** A candump frame/line that is not in the accepted syntax (or describes an invalid frame). */
  ERR_CAN_PARSE: 'reject',
  // Hub (API misuse by our own code: composition roots, devices, tests).
  /** An option or argument is out of its domain (queue limit, bitrate, port name, bus state, ...). */
  ERR_BUS_INVALID_OPTION: 'fatal',
  /** attach() on a closed hub. */
  ERR_BUS_CLOSED: 'fatal',
  /** Another attached port already has this name (names address ports in injectBusState). */
  ERR_BUS_PORT_NAME_IN_USE: 'fatal',
  /** injectBusState() for a port id/name that is not attached. */
  ERR_BUS_UNKNOWN_PORT: 'fatal',
  /** A port handler threw during fan-out and no `onHandlerError` was configured; `cause` holds it. */
  ERR_BUS_HANDLER_FAILED: 'fatal',
  /** A fault that needs a timed bus (bit-rate mismatch, no-ack, error frames) on an untimed one. */
  ERR_BUS_NOT_TIMED: 'reject',
} as const satisfies Record<string, BusErrorDisposition>;

export type BusErrorCode = keyof typeof BUS_ERROR_DISPOSITION;

/** Codes raised by the frame model and the candump codec. */
export type CanFrameErrorCode = Extract<BusErrorCode, `ERR_CAN_${string}`>;
/** Codes raised by the hub and the registry. */
export type CanHubErrorCode = Extract<BusErrorCode, `ERR_BUS_${string}`>;

/** Base class of every error the bus layer throws. */
export class BusError extends Error {
  readonly code: BusErrorCode;
  constructor(code: BusErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'BusError';
    this.code = code;
  }
  get disposition(): BusErrorDisposition {
    return BUS_ERROR_DISPOSITION[this.code];
  }
}

/** A frame failed validation, or a candump text could not be parsed. */
export class CanFrameError extends BusError {
  declare readonly code: CanFrameErrorCode;
  constructor(code: CanFrameErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'CanFrameError';
  }
}

/** The hub or the registry was misused, or a port handler failed during fan-out. */
export class CanHubError extends BusError {
  declare readonly code: CanHubErrorCode;
  constructor(code: CanHubErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'CanHubError';
  }
}
