import assert from 'node:assert/strict';
import { test } from 'node:test';
import { GuestMemory } from '../../src/core/memory/guest-memory.js';
import { plainMemory, plainRegion } from './support/plain-memory.js';

test('findGpa requires the whole range inside one region, overflow-safe', () => {
  const mem = plainMemory({ gpa: 0x1000, size: 0x1000 }, { gpa: 0x10000, size: 0x100 });
  assert.equal(mem.findGpa(0x1000, 0x1000), 0);
  assert.equal(mem.findGpa(0x1fff, 1), 0);
  assert.equal(mem.findGpa(0x1fff, 2), -1);
  assert.equal(mem.findGpa(0x10000, 0x100), 1);
  assert.equal(mem.findGpa(0xfff, 1), -1);
  assert.equal(mem.findGpa(Number.MAX_SAFE_INTEGER, 1), -1);
  assert.equal(mem.findGpa(0x1000, Number.MAX_SAFE_INTEGER), -1);
});

test('readInto/writeFrom span adjacent regions piecewise and refuse holes without writing', () => {
  const mem = plainMemory({ gpa: 0, size: 16 }, { gpa: 16, size: 16 }, { gpa: 64, size: 16 });
  const src = Uint8Array.from({ length: 8 }, (_, i) => i + 1);
  assert.equal(mem.writeFrom(12, src, 0, 8), true);
  const dst = new Uint8Array(8);
  assert.equal(mem.readInto(12, dst, 0, 8), true);
  assert.deepEqual(dst, src);
  // 28..36 crosses into the hole at 32..64: nothing may be written.
  const before = new Uint8Array(4);
  mem.readInto(28, before, 0, 4);
  assert.equal(mem.writeFrom(28, src, 0, 8), false);
  const after = new Uint8Array(4);
  mem.readInto(28, after, 0, 4);
  assert.deepEqual(after, before);
  assert.equal(mem.readInto(30, new Uint8Array(8), 0, 8), false);
});

test('uva translation uses userspace_addr, not the guest physical address', () => {
  const mem = plainMemory({ gpa: 0x2000, size: 0x1000, uva: 0x7000_0000 });
  assert.equal(mem.findUva(0x7000_0010, 16), 0);
  assert.equal(mem.uvaToGpa(0x7000_0010, 16), 0x2010);
  assert.equal(mem.findUva(0x2010, 16), -1);
});

test('overlapping or inconsistent regions are refused with ERR_VU_BAD_REGION', () => {
  assert.throws(
    () =>
      new GuestMemory([plainRegion({ gpa: 0, size: 0x2000 }), plainRegion({ gpa: 0x1000, size: 0x1000 })]),
    { code: 'ERR_VU_BAD_REGION' },
  );
  assert.throws(() => new GuestMemory([plainRegion({ gpa: 0, size: 0 })]), { code: 'ERR_VU_BAD_REGION' });
  assert.throws(() => new GuestMemory([plainRegion({ gpa: Number.MAX_SAFE_INTEGER - 10, size: 0x100 })]), {
    code: 'ERR_VU_BAD_REGION',
  });
});

test('releaseAll releases every region', () => {
  const mem = plainMemory({ gpa: 0, size: 16 }, { gpa: 16, size: 16 });
  mem.releaseAll();
  for (const r of mem.regions) assert.equal(r.source.bytes.byteLength, 0);
});
