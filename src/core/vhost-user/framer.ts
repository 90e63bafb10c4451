/**
 * Splits a vhost-user byte stream into messages and attributes file descriptors to them.
 *
 * The kernel may merge stream data that precedes an SCM_RIGHTS message but never data that follows
 * it (docs/protocol-notes.md 1.1). The node connection therefore asks `wanted()` and reads exactly that many
 * bytes: first the 12-byte header, then the payload. fds that arrive with a chunk belong to the
 * message that chunk is part of. The framer bounds the payload size and the fd count before
 * allocating, and survives any split of the stream (see the property tests).
 */
import { VhostError } from '../util/errors.js';
import { decodeHeader, type VhostUserMessage } from './codec.js';
import { HEADER_SIZE, HeaderFlag, MAX_FDS, MAX_PAYLOAD } from './protocol.js';

export class MessageFramer {
  private readonly header = new Uint8Array(HEADER_SIZE);
  private headerFill = 0;
  private body: Uint8Array | null = null;
  private bodyFill = 0;
  private request = 0;
  private flags = 0;
  private fds: number[] = [];
  private readonly maxPayload: number;
  private readonly maxFds: number;

  constructor(opts: { maxPayload?: number; maxFds?: number } = {}) {
    this.maxPayload = opts.maxPayload ?? MAX_PAYLOAD;
    this.maxFds = opts.maxFds ?? MAX_FDS;
  }

  /** Bytes still needed to finish the current header or payload. */
  wanted(): number {
    if (this.body === null) return HEADER_SIZE - this.headerFill;
    return this.body.byteLength - this.bodyFill;
  }

  /** True while part of a message has been received. */
  get midMessage(): boolean {
    return this.headerFill > 0 || this.body !== null;
  }

  /**
   * Feeds a chunk (any length) and the fds that came with it. Returns the messages completed by it.
   * Throws a 'disconnect' VhostError on a stream that cannot be trusted any more; the fds held so far
   * are then available from takeFds() so the caller can close them.
   */
  push(chunk: Uint8Array, fds: readonly number[] = []): VhostUserMessage[] {
    const out: VhostUserMessage[] = [];
    for (const fd of fds) this.fds.push(fd);
    if (this.fds.length > this.maxFds) {
      throw new VhostError(
        'ERR_VU_TOO_MANY_FDS',
        `${this.fds.length} fds for one message (max ${this.maxFds})`,
      );
    }
    let pos = 0;
    // A message with an empty payload completes as soon as its header does, even for an empty chunk.
    while (pos < chunk.byteLength || (this.body !== null && this.bodyFill === this.body.byteLength)) {
      if (this.body === null) {
        const n = Math.min(HEADER_SIZE - this.headerFill, chunk.byteLength - pos);
        this.header.set(chunk.subarray(pos, pos + n), this.headerFill);
        this.headerFill += n;
        pos += n;
        if (this.headerFill < HEADER_SIZE) break;
        const h = decodeHeader(this.header);
        if ((h.flags & HeaderFlag.VERSION_MASK) !== HeaderFlag.VERSION) {
          throw new VhostError(
            'ERR_VU_BAD_VERSION',
            `header flags 0x${h.flags.toString(16)}: version is not 1`,
          );
        }
        if (h.size > this.maxPayload) {
          throw new VhostError('ERR_VU_MSG_TOO_LARGE', `payload of ${h.size} bytes (max ${this.maxPayload})`);
        }
        this.request = h.request;
        this.flags = h.flags;
        this.body = new Uint8Array(h.size);
        this.bodyFill = 0;
      }
      const n = Math.min(this.body.byteLength - this.bodyFill, chunk.byteLength - pos);
      if (n > 0) {
        this.body.set(chunk.subarray(pos, pos + n), this.bodyFill);
        this.bodyFill += n;
        pos += n;
      }
      if (this.bodyFill < this.body.byteLength) break;
      out.push({ request: this.request, flags: this.flags, payload: this.body, fds: this.fds });
      this.fds = [];
      this.body = null;
      this.headerFill = 0;
    }
    return out;
  }

  /** Hands over fds received for an incomplete message (to be closed on disconnect). */
  takeFds(): number[] {
    const f = this.fds;
    this.fds = [];
    return f;
  }
}
