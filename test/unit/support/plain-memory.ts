/** Guest memory over plain ArrayBuffers, for unit tests of pure logic (no mmap involved). */
import { GuestMemory, type MappedRegion } from '../../../src/core/memory/guest-memory.js';

export interface PlainRegion {
  gpa: number;
  size: number;
  uva?: number;
}

export function plainRegion(r: PlainRegion): MappedRegion {
  let bytes = new Uint8Array(r.size);
  return {
    guestPhysAddr: r.gpa,
    size: r.size,
    userAddr: r.uva ?? r.gpa + 0x7f00_0000_0000,
    mmapOffset: 0,
    get bytes() {
      return bytes;
    },
    release() {
      bytes = new Uint8Array(0);
    },
  };
}

export function plainMemory(...regions: PlainRegion[]): GuestMemory {
  return new GuestMemory(regions.map(plainRegion));
}
