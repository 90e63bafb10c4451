/**
 * One descriptor chain, walked and validated once, then read and written by offset.
 *
 * A chain object is reused for every chain a queue processes (no per-request allocation): `reset()`
 * clears it and the segment arrays only grow. Every segment was checked to lie in guest memory when
 * the chain was walked, so reads and writes cannot leave guest memory; they may still fail if the
 * memory table is replaced in between, which the read/write return values report.
 */
import type { GuestMemory } from '../memory/guest-memory.js';

export class DescriptorChain {
  /** Head descriptor index: the id that goes into the used ring. */
  head = -1;
  /** Number of readable segments; readable segments come first. */
  readableCount = 0;
  /** Total number of segments (readable + writable). */
  count = 0;
  readableLength = 0;
  writableLength = 0;
  /** Whether the chain came through an indirect table (for statistics and tests). */
  indirect = false;

  addr: Float64Array;
  len: Uint32Array;

  constructor(capacity = 16) {
    this.addr = new Float64Array(capacity);
    this.len = new Uint32Array(capacity);
  }

  reset(head: number): void {
    this.head = head;
    this.readableCount = 0;
    this.count = 0;
    this.readableLength = 0;
    this.writableLength = 0;
    this.indirect = false;
  }

  /** Appends a segment. The walker guarantees order (all readable before writable). */
  push(addr: number, len: number, writable: boolean): void {
    if (this.count === this.addr.length) this.grow();
    this.addr[this.count] = addr;
    this.len[this.count] = len;
    this.count++;
    if (writable) this.writableLength += len;
    else {
      this.readableCount++;
      this.readableLength += len;
    }
  }

  private grow(): void {
    const a = new Float64Array(this.addr.length * 2);
    a.set(this.addr);
    const l = new Uint32Array(this.len.length * 2);
    l.set(this.len);
    this.addr = a;
    this.len = l;
  }

  /**
   * Copies up to `len` bytes of the readable part, starting `offset` bytes into it, into dst.
   * Returns the number of bytes copied (less than `len` when the readable part is shorter), or -1 if
   * guest memory no longer maps a segment.
   */
  read(mem: GuestMemory, offset: number, dst: Uint8Array, dstOff: number, len: number): number {
    return this.copy(mem, 0, this.readableCount, offset, dst, dstOff, len, false);
  }

  /** Writes up to `len` bytes into the writable part at `offset`. Same return convention as read(). */
  write(mem: GuestMemory, offset: number, src: Uint8Array, srcOff: number, len: number): number {
    return this.copy(mem, this.readableCount, this.count, offset, src, srcOff, len, true);
  }

  /** Guest physical address of byte `offset` of the writable part, or -1 if the part is shorter. */
  writableAddress(offset: number): number {
    let skip = offset;
    for (let i = this.readableCount; i < this.count; i++) {
      const l = this.len[i]!;
      if (skip < l) return this.addr[i]! + skip;
      skip -= l;
    }
    return -1;
  }

  private copy(
    mem: GuestMemory,
    from: number,
    to: number,
    offset: number,
    buf: Uint8Array,
    bufOff: number,
    len: number,
    toGuest: boolean,
  ): number {
    let skip = offset;
    let done = 0;
    for (let i = from; i < to && done < len; i++) {
      const segLen = this.len[i]!;
      if (skip >= segLen) {
        skip -= segLen;
        continue;
      }
      const n = Math.min(segLen - skip, len - done);
      const gpa = this.addr[i]! + skip;
      const ok = toGuest
        ? mem.writeFrom(gpa, buf, bufOff + done, n)
        : mem.readInto(gpa, buf, bufOff + done, n);
      if (!ok) return -1;
      done += n;
      skip = 0;
    }
    return done;
  }
}
