/** Writes split-ring structures byte by byte, so tests can build any (also hostile) ring. */
import type { GuestMemory } from '../../../src/core/memory/guest-memory.js';
import { SplitQueue } from '../../../src/core/virtio/split-queue.js';
import { plainMemory } from './plain-memory.js';

export const UVA = 0x7f00_0000_0000;
export const DESC = 0x1000;
export const AVAIL = 0x3000;
export const USED = 0x4000;
export const DATA = 0x8000;
export const MEM_SIZE = 0x10000;

export class RawRing {
  readonly mem: GuestMemory;
  readonly dv: DataView;
  readonly size: number;
  availIdx = 0;

  constructor(size: number, mem = plainMemory({ gpa: 0, size: MEM_SIZE, uva: UVA })) {
    this.size = size;
    this.mem = mem;
    const b = mem.regions[0]!.bytes;
    this.dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  }

  desc(i: number, addr: number, len: number, flags: number, next = 0, table = DESC): void {
    const o = table + 16 * i;
    this.dv.setBigUint64(o, BigInt(addr), true);
    this.dv.setUint32(o + 8, len, true);
    this.dv.setUint16(o + 12, flags, true);
    this.dv.setUint16(o + 14, next, true);
  }

  offer(head: number): void {
    this.dv.setUint16(AVAIL + 4 + 2 * (this.availIdx % this.size), head, true);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    this.dv.setUint16(AVAIL + 2, this.availIdx, true);
  }

  setAvailIdx(n: number): void {
    this.availIdx = n & 0xffff;
    this.dv.setUint16(AVAIL + 2, this.availIdx, true);
  }

  usedIdx(): number {
    return this.dv.getUint16(USED + 2, true);
  }

  used(i: number): { id: number; len: number } {
    const o = USED + 4 + 8 * (i % this.size);
    return { id: this.dv.getUint32(o, true), len: this.dv.getUint32(o + 4, true) };
  }

  setUsedEvent(n: number): void {
    this.dv.setUint16(AVAIL + 4 + 2 * this.size, n, true);
  }

  availEvent(): number {
    return this.dv.getUint16(USED + 4 + 8 * this.size, true);
  }

  setAvailFlags(f: number): void {
    this.dv.setUint16(AVAIL, f, true);
  }

  queue(
    opts: { eventIdx?: boolean; indirect?: boolean; base?: number } = {},
    notify: () => void = () => {},
  ): SplitQueue {
    return new SplitQueue(
      0,
      this.size,
      opts.base ?? 0,
      { desc: UVA + DESC, avail: UVA + AVAIL, used: UVA + USED },
      this.mem,
      { eventIdx: opts.eventIdx ?? false, indirect: opts.indirect ?? false },
      notify,
    );
  }
}
