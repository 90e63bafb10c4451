import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { VhostError } from '../../src/core/util/errors.js';
import { DescriptorChain } from '../../src/core/virtio/descriptor-chain.js';
import { DATA, MEM_SIZE, RawRing } from '../unit/support/raw-ring.js';

const descArb = fc.record({
  // Mostly inside memory, sometimes past its end, sometimes huge.
  addr: fc.oneof(
    fc.integer({ min: 0, max: MEM_SIZE + 64 }),
    fc.constant(2 ** 40),
    fc.integer({ min: DATA, max: DATA + 0x100 }),
  ),
  len: fc.oneof(fc.integer({ min: 0, max: 64 }), fc.constant(0xffffffff), fc.constantFrom(16, 32, 48)),
  flags: fc.integer({ min: 0, max: 7 }),
  next: fc.integer({ min: 0, max: 20 }),
});

test('random descriptor tables never hang, stay inside guest memory and fail only with typed errors', () => {
  fc.assert(
    fc.property(
      fc.constantFrom(4, 8, 16),
      fc.array(descArb, { minLength: 16, maxLength: 16 }),
      fc.array(fc.integer({ min: 0, max: 20 }), { minLength: 1, maxLength: 24 }),
      fc.boolean(),
      (size, descs, heads, indirect) => {
        const r = new RawRing(size);
        descs.forEach((d, i) => {
          if (i < size) r.desc(i, d.addr, d.len, d.flags, d.next);
          // The same entries also form a possible indirect table at DATA.
          r.desc(i, d.addr, d.len, d.flags, d.next, DATA);
        });
        for (const h of heads.slice(0, size)) r.offer(h);
        const q = r.queue({ indirect });
        const c = new DescriptorChain(2);
        let steps = 0;
        for (;;) {
          assert.ok(++steps <= size + 1, 'bounded work');
          try {
            if (!q.next(c)) break;
          } catch (err) {
            assert.ok(err instanceof VhostError, `typed error, got ${err}`);
            assert.match(err.code, /^ERR_VQ_/);
            if (c.head < 0) break; // ring corrupt: a real device stops here
            continue;
          }
          // Every segment lies inside guest memory.
          for (let i = 0; i < c.count; i++) assert.ok(r.mem.isMapped(c.addr[i]!, c.len[i]!));
          assert.ok(c.count <= (indirect ? 4096 : size));
        }
      },
    ),
    { numRuns: 500 },
  );
});
