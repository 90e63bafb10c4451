/**
 * Errors of the TypeScript vhost-user front-end. Every failure carries a stable `code`; tests
 * assert on it, never on message text.
 */
import { CodedError } from '../errors.js';

export type FrontendErrorCode =
  /** A request got no reply in time (the back-end is stuck, or never answers this request). */
  | 'ERR_FRONTEND_TIMEOUT'
  /** The connection is closed (by the back-end or by us); pending requests fail with it. */
  | 'ERR_FRONTEND_CLOSED'
  /** A reply that QEMU would reject: wrong flags, wrong request code, wrong size. */
  | 'ERR_FRONTEND_BAD_REPLY'
  /** GET_CONFIG answered with an empty payload (the documented refusal). */
  | 'ERR_FRONTEND_CONFIG_REFUSED'
  /** The back-end answered a REPLY_ACK request with a non-zero u64 during a choreography step. */
  | 'ERR_FRONTEND_NACK'
  /** A method called in the wrong state (start before init, ...). */
  | 'ERR_FRONTEND_STATE'
  /** Something the back-end did not offer (a protocol feature the step needs). */
  | 'ERR_FRONTEND_UNSUPPORTED'
  /** A bad argument. */
  | 'ERR_FRONTEND_ARG'
  /** The guest RAM bump allocator is exhausted. */
  | 'ERR_FRONTEND_NO_MEMORY'
  /** Could not connect to the socket (see `cause`). */
  | 'ERR_FRONTEND_CONNECT'
  /** A socket write failed (see `cause`). */
  | 'ERR_FRONTEND_IO';

export class FrontendError extends CodedError<FrontendErrorCode> {}
