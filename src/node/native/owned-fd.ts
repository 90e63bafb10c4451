// A close-once owner for a raw fd: every resource has one owner, and close() is idempotent
// (docs/decisions.md "Native addon").
import { native } from './addon.js';

/** The error thrown when a closed or released `OwnedFd` is used. */
export interface FdClosedError extends Error {
  code: 'ERR_FD_CLOSED';
}

function fdClosedError(): FdClosedError {
  return Object.assign(new Error('the file descriptor has been closed or released'), {
    code: 'ERR_FD_CLOSED' as const,
  });
}

export class OwnedFd {
  #fd: number;
  #closed = false;
  readonly #closeFd: (fd: number) => void;

  /**
   * Takes ownership of `fd`. `closeFd` defaults to the addon's close(2); tests may inject
   * another one.
   */
  constructor(fd: number, closeFd: (fd: number) => void = (n) => native.close(n)) {
    if (!Number.isInteger(fd) || fd < 0) {
      throw Object.assign(new RangeError(`invalid fd: ${fd}`), { code: 'ERR_OUT_OF_RANGE' });
    }
    this.#fd = fd;
    this.#closeFd = closeFd;
  }

  /** The fd number. Throws code 'ERR_FD_CLOSED' after `close()` or `release()`. */
  get fd(): number {
    if (this.#closed) throw fdClosedError();
    return this.#fd;
  }

  /** Whether `close()` or `release()` has been called. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Closes the fd once; later calls do nothing. The owner counts as closed even if close(2)
   * reports an error (Linux releases the descriptor in every case but EBADF), so the number
   * is never closed twice: it may already belong to someone else.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closeFd(this.#fd);
  }

  /**
   * Gives up ownership without closing and returns the fd (to hand it to another owner,
   * e.g. a session that keeps a received kick fd). Throws code 'ERR_FD_CLOSED' if already
   * closed or released.
   */
  release(): number {
    const fd = this.fd;
    this.#closed = true;
    return fd;
  }
}
