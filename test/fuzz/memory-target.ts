/**
 * Fuzz target: the memory table decoder and GuestMemory.
 *
 * decodeMemTable gets random payloads (sizes, counts, u64s near 2^53 and 2^64); the regions it
 * accepts (or random ones: overlapping, adjacent, zero-sized, overflowing) build a GuestMemory. Each
 * region's bytes are a window of a larger buffer with guard bytes on both sides. Random lookups,
 * reads and writes are then compared with a byte-by-byte model.
 *
 * Invariants: nothing but VhostError is thrown; a table is accepted only when its regions are valid
 * and disjoint; readInto / writeFrom / writeByte / isMapped / findGpa / findUva agree with the model;
 * a failing write changes nothing; guard bytes never change.
 */
import { GuestMemory, type MappedRegion } from '../../src/core/memory/guest-memory.js';
import { VhostError } from '../../src/core/util/errors.js';
import { decodeMemTable, encodeMemTable, type MemRegionDesc } from '../../src/core/vhost-user/codec.js';
import { MAX_MEM_TABLE_REGIONS } from '../../src/core/vhost-user/protocol.js';
import { check, FuzzInput } from './input.js';

const GUARD = 64;
const GUARD_BYTE = 0xa5;
const MAX_SAFE = Number.MAX_SAFE_INTEGER;

interface Backing {
  desc: MemRegionDesc;
  buf: Uint8Array; // guard + region + guard
  bytes: Uint8Array; // the region window
}

function expectVhost(fn: () => void, what: string): boolean {
  try {
    fn();
    return true;
  } catch (err) {
    check(
      err instanceof VhostError,
      `${what} threw ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`,
    );
    return false;
  }
}

export function runMemoryCase(bytes: Uint8Array): { regions: number; ops: number } {
  const inp = new FuzzInput(bytes);

  // 1. The decoder on a random or mutated payload.
  const bigs = [0n, 1n, 0x1000n, 0xffffn, 2n ** 53n - 1n, 2n ** 53n, 2n ** 64n - 1n];
  const raw = (() => {
    if (inp.bool()) return inp.take(inp.int(300));
    const n = inp.pick([0, 1, 2, 3, 8, 9]);
    const p = new Uint8Array(8 + 32 * Math.min(n, 9) + inp.pick([0, 0, 0, 1, 32]));
    const dv = new DataView(p.buffer);
    dv.setUint32(0, inp.chance(230) ? n : inp.u32(), true);
    for (let off = 8; off + 8 <= p.length; off += 8) {
      dv.setBigUint64(off, inp.chance(128) ? BigInt(inp.u32()) : inp.pick(bigs), true);
    }
    return p;
  })();
  expectVhost(() => {
    const regions = decodeMemTable(raw, MAX_MEM_TABLE_REGIONS);
    check(regions.length >= 1 && regions.length <= MAX_MEM_TABLE_REGIONS, 'decoded region count');
    for (const r of regions) {
      for (const v of [r.guestPhysAddr, r.size, r.userAddr, r.mmapOffset]) {
        check(Number.isSafeInteger(v) && v >= 0, `decoded value ${v} is not a safe integer`);
      }
    }
    // Round trip.
    const again = decodeMemTable(encodeMemTable(regions), MAX_MEM_TABLE_REGIONS);
    check(JSON.stringify(again) === JSON.stringify(regions), 'decode(encode(x)) != x');
  }, 'decodeMemTable');

  // 2. A memory made of small regions placed by the input.
  const n = inp.int(5);
  const backs: Backing[] = [];
  let cursor = inp.int(4) * 0x100;
  for (let i = 0; i < n; i++) {
    const size = inp.pick([0, 1, 2, 3, 16, 40, 64, 100, 255]);
    const mode = inp.int(6);
    let gpa: number;
    if (mode === 0)
      gpa = cursor; // adjacent to the previous one
    else if (mode === 1)
      gpa = Math.max(0, cursor - inp.int(32)); // maybe overlapping
    else if (mode === 2) gpa = inp.pick([MAX_SAFE - size + 1, MAX_SAFE - size, MAX_SAFE, 2 ** 53, -1, 0.5]);
    else gpa = cursor + inp.int(64);
    cursor = gpa + size;
    const buf = new Uint8Array(GUARD + size + GUARD).fill(GUARD_BYTE);
    const window = buf.subarray(GUARD, GUARD + size);
    for (let j = 0; j < size; j++) window[j] = j & 0xff;
    const uva = inp.bool() ? gpa + 0x7f00_0000_0000 : inp.pick([0, gpa, MAX_SAFE]);
    backs.push({
      desc: { guestPhysAddr: gpa, size, userAddr: uva, mmapOffset: inp.pick([0, 0, 4096, MAX_SAFE]) },
      buf,
      bytes: window,
    });
  }
  const mapped: MappedRegion[] = backs.map((b) => ({
    ...b.desc,
    bytes: inp.chance(10) ? b.bytes.subarray(1) : b.bytes,
    release() {},
  }));
  let mem: GuestMemory | null = null;
  expectVhost(() => {
    mem = new GuestMemory(mapped);
  }, 'new GuestMemory');
  // Validity model: accepted iff every region is sane and they are pairwise disjoint.
  const sane = (r: MappedRegion): boolean =>
    r.size > 0 &&
    [r.guestPhysAddr, r.userAddr, r.mmapOffset].every((v) => Number.isSafeInteger(v) && v >= 0) &&
    r.guestPhysAddr + r.size <= MAX_SAFE &&
    r.userAddr + r.size <= MAX_SAFE &&
    r.mmapOffset + r.size <= MAX_SAFE &&
    r.bytes.byteLength === r.size;
  let valid = mapped.every(sane);
  if (valid) {
    for (let i = 0; i < mapped.length; i++)
      for (let j = i + 1; j < mapped.length; j++) {
        const a = mapped[i]!;
        const b = mapped[j]!;
        if (a.guestPhysAddr < b.guestPhysAddr + b.size && b.guestPhysAddr < a.guestPhysAddr + a.size)
          valid = false;
      }
  }
  check(
    (mem !== null) === valid,
    `GuestMemory ${mem !== null ? 'accepted' : 'refused'} a table the model calls ${valid ? 'valid' : 'invalid'}`,
  );
  if (mem === null) return { regions: n, ops: 0 };
  const m: GuestMemory = mem;

  // Byte model: gpa -> [backing, index]
  const where = (gpa: number): [Backing, number] | null => {
    for (const b of backs) {
      if (gpa >= b.desc.guestPhysAddr && gpa < b.desc.guestPhysAddr + b.desc.size)
        return [b, gpa - b.desc.guestPhysAddr];
    }
    return null;
  };
  const mappedAll = (gpa: number, len: number): boolean => {
    if (len <= 0) return where(gpa) !== null;
    for (let i = 0; i < len; i++) if (where(gpa + i) === null) return false;
    return true;
  };
  const oneRegion = (gpa: number, len: number): boolean => {
    const w = where(gpa);
    return w !== null && Math.max(len, 1) <= w[0].desc.size - w[1];
  };

  const bases = backs.map((b) => b.desc.guestPhysAddr);
  const addr = (): number => {
    const s = inp.int(5);
    if (s === 0) return inp.pick([0, MAX_SAFE, -1, 2 ** 53, Number.NaN]);
    const b = bases.length > 0 ? inp.pick(bases) : 0;
    return b + inp.int(300) - 20;
  };
  const ops = 20 + inp.int(60);
  for (let i = 0; i < ops; i++) {
    const gpa = addr();
    const len = inp.pick([0, 1, 2, 7, 16, 33, 64, 200, inp.int(400)]);
    const safe = Number.isSafeInteger(gpa) && gpa >= 0 && gpa + Math.max(len, 1) <= MAX_SAFE;
    switch (inp.int(6)) {
      case 0: {
        const dst = new Uint8Array(len + 4).fill(0xcc);
        let ok = false;
        expectVhost(() => {
          ok = m.readInto(gpa, dst, 2, len);
        }, 'readInto');
        if (safe) {
          check(ok === mappedAll(gpa, len) || len === 0, `readInto(${gpa}, ${len}) = ${ok}`);
          if (ok)
            for (let j = 0; j < len; j++) {
              const w = where(gpa + j)!;
              check(dst[2 + j] === w[0].bytes[w[1]], `readInto byte ${j} differs`);
            }
        }
        check(
          dst[0] === 0xcc && dst[1] === 0xcc && dst[len + 2] === 0xcc && dst[len + 3] === 0xcc,
          'readInto wrote outside dst',
        );
        break;
      }
      case 1: {
        const src = inp.take(len);
        const before = backs.map((b) => b.buf.slice());
        let ok = false;
        expectVhost(() => {
          ok = m.writeFrom(gpa, src, 0, len);
        }, 'writeFrom');
        if (safe && len > 0) check(ok === mappedAll(gpa, len), `writeFrom(${gpa}, ${len}) = ${ok}`);
        backs.forEach((b, bi) => {
          for (let j = 0; j < b.buf.length; j++) {
            const inRegion = j >= GUARD && j < GUARD + b.desc.size;
            const g = b.desc.guestPhysAddr + (j - GUARD);
            const target = ok && inRegion && g >= gpa && g < gpa + len;
            if (target) check(b.buf[j] === src[g - gpa], 'writeFrom wrote the wrong byte');
            else
              check(
                b.buf[j] === before[bi]![j],
                `writeFrom(${gpa}, ${len}) changed a byte it must not (ok=${ok})`,
              );
          }
        });
        break;
      }
      case 2: {
        const v = inp.u8();
        let ok = false;
        expectVhost(() => {
          ok = m.writeByte(gpa, v);
        }, 'writeByte');
        if (safe) check(ok === (where(gpa) !== null), `writeByte(${gpa}) = ${ok}`);
        if (ok) {
          const w = where(gpa)!;
          check(w[0].bytes[w[1]] === v, 'writeByte value');
        }
        for (const b of backs) {
          for (let j = 0; j < GUARD; j++)
            check(
              b.buf[j] === GUARD_BYTE && b.buf[b.buf.length - 1 - j] === GUARD_BYTE,
              'guard byte changed',
            );
        }
        break;
      }
      case 3: {
        let r = false;
        expectVhost(() => {
          r = m.isMapped(gpa, len);
        }, 'isMapped');
        if (safe) check(r === mappedAll(gpa, len), `isMapped(${gpa}, ${len}) = ${r}`);
        break;
      }
      case 4: {
        let i2 = -2;
        expectVhost(() => {
          i2 = m.findGpa(gpa, len);
        }, 'findGpa');
        if (safe) check(i2 >= 0 === oneRegion(gpa, len), `findGpa(${gpa}, ${len}) = ${i2}`);
        if (i2 >= 0) {
          const r = m.regions[i2]!;
          check(
            gpa >= r.gpa && gpa - r.gpa + Math.max(len, 1) <= r.size,
            'findGpa returned a region not holding the range',
          );
        }
        break;
      }
      default: {
        const uva = inp.bool() ? gpa + 0x7f00_0000_0000 : gpa;
        let i2 = -2;
        let g = -2;
        expectVhost(() => {
          i2 = m.findUva(uva, len);
          g = m.uvaToGpa(uva, len);
        }, 'findUva');
        if (i2 >= 0) {
          const r = m.regions[i2]!;
          check(
            uva >= r.uva && uva - r.uva + Math.max(len, 1) <= r.size,
            'findUva returned a region not holding the range',
          );
          check(g === r.gpa + (uva - r.uva), 'uvaToGpa disagrees with findUva');
        } else check(g === -1, 'uvaToGpa found what findUva did not');
      }
    }
  }
  return { regions: n, ops };
}
