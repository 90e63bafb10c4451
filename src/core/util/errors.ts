/**
 * Error codes and what each one means for the daemon.
 *
 * Every failure the core can raise carries a stable `code`. The `DISPOSITION` table decides what the
 * caller does with it; because it is a `Record<ErrorCode, Disposition>`, adding a code without
 * classifying it is a compile error. Tests assert on `err.code`, never on message text.
 */

/** What a failure means for the component that hit it. */
export type Disposition =
  /** The one request is refused (NACK if the front-end asked for a reply); everything else goes on. */
  | 'reject'
  /** The connection's byte stream can no longer be trusted: close it, keep serving the others. */
  | 'disconnect'
  /** The guest broke the virtio contract: this device stops touching its rings until reset/reconnect. */
  | 'mark-broken'
  /**
   * A bug (an exception that is not a VhostError). Inside a connection it closes that connection;
   * the daemon and the other connections go on.
   */
  | 'fatal';

export const DISPOSITION = {
  // vhost-user framing (the stream is out of sync or hostile)
  ERR_VU_BAD_VERSION: 'disconnect',
  ERR_VU_MSG_TOO_LARGE: 'disconnect',
  ERR_VU_TOO_MANY_FDS: 'disconnect',
  /** A request whose reply is a body (GET_*) failed: there is no NACK for it, so the connection closes. */
  ERR_VU_NO_ANSWER: 'disconnect',
  /** Guest memory vanished under us (the front-end truncated the file): the guest is unusable. */
  ERR_VU_MEM_FAULT: 'disconnect',
  /** The front-end keeps sending requests without reading the replies. */
  ERR_VU_UNREAD_REPLIES: 'disconnect',
  // vhost-user message semantics (one message is wrong; the stream is fine)
  ERR_VU_BAD_SIZE: 'reject',
  ERR_VU_BAD_FDS: 'reject',
  ERR_VU_BAD_INDEX: 'reject',
  ERR_VU_BAD_VALUE: 'reject',
  ERR_VU_BAD_STATE: 'reject',
  ERR_VU_UNSUPPORTED: 'reject',
  ERR_VU_FEATURES: 'reject',
  ERR_VU_MEM_MAP: 'reject',
  ERR_VU_BAD_REGION: 'reject',
  ERR_VU_CONFIG_RANGE: 'reject',
  ERR_VU_CONFIG_READONLY: 'reject',
  // guest memory and virtqueues (the guest driver misbehaved)
  ERR_MEM_OUT_OF_RANGE: 'mark-broken',
  ERR_VQ_RING_ADDR: 'mark-broken',
  ERR_VQ_AVAIL_IDX: 'mark-broken',
  ERR_VQ_DESC_INDEX: 'mark-broken',
  ERR_VQ_DESC_LOOP: 'mark-broken',
  ERR_VQ_DESC_ORDER: 'mark-broken',
  ERR_VQ_INDIRECT: 'mark-broken',
  ERR_VQ_DESC_ADDR: 'mark-broken',
  // internal
  ERR_INTERNAL: 'fatal',
} as const satisfies Record<string, Disposition>;

export type ErrorCode = keyof typeof DISPOSITION;

export class VhostError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'VhostError';
    this.code = code;
  }
  get disposition(): Disposition {
    return DISPOSITION[this.code];
  }
}

export function dispositionOf(err: unknown): Disposition {
  if (err instanceof VhostError) return err.disposition;
  return 'fatal';
}

export function errorCodeOf(err: unknown): string {
  if (err && typeof err === 'object' && 'code' in err && typeof err.code === 'string') return err.code;
  return 'ERR_INTERNAL';
}

/**
 * A failure thrown from device code, as the VhostError that marks the device broken: a VhostError
 * keeps its code, anything else (a bug) becomes ERR_INTERNAL with the original as its cause.
 */
export function deviceFailure(err: unknown): VhostError {
  if (err instanceof VhostError) return err;
  return new VhostError('ERR_INTERNAL', `device failure: ${(err as Error)?.message ?? String(err)}`, {
    cause: err,
  });
}
