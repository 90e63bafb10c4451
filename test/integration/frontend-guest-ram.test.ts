// GuestRam: memfd-backed guest memory with fake front-end user addresses.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { DEFAULT_GUEST_RAM, GuestRam, UVA_BASE } from '../../src/node/frontend/guest-ram.js';
import { native } from '../../src/node/native/addon.js';
import { fdCount, memfdMaps, settle } from '../helpers/vhost-user.js';

const MiB = 1024 * 1024;

describe('GuestRam', () => {
  test('default layout: two regions in one memfd, second at a non-zero mmap_offset', (t) => {
    const ram = new GuestRam({ name: 'ram-layout' });
    t.after(() => ram.close());
    assert.deepEqual(ram.regions(), [
      { guestPhysAddr: 0, size: 16 * MiB, userAddr: UVA_BASE, mmapOffset: 0 },
      {
        guestPhysAddr: 0x1_0000_0000,
        size: 16 * MiB,
        userAddr: UVA_BASE + 0x1_0000_0000,
        mmapOffset: 16 * MiB,
      },
    ]);
    assert.equal(ram.regionCount, DEFAULT_GUEST_RAM.length);
    assert.equal(ram.fdFor(0), ram.fdFor(1), 'one memfd');
    assert.equal(ram.memory.regions.length, 2);
    assert.equal(ram.uvaOf(0x1_0000_0010), UVA_BASE + 0x1_0000_0010);
    assert.throws(() => ram.uvaOf(0x2_0000_0000), { code: 'ERR_FRONTEND_ARG' });
    assert.throws(() => ram.fdFor(2), { code: 'ERR_FRONTEND_ARG' });
    assert.equal(
      readFileSync('/proc/self/maps', 'utf8')
        .split('\n')
        .filter((l) => l.includes('/memfd:ram-layout')).length,
      2,
    );
  });

  test('both mappings see the same file: a write through region 1 is at file offset 16 MiB', (t) => {
    const ram = new GuestRam();
    t.after(() => ram.close());
    ram.write(0x1_0000_0000 + 5, Uint8Array.of(1, 2, 3));
    assert.deepEqual([...ram.read(0x1_0000_0000 + 5, 3)], [1, 2, 3]);
    // Map the memfd again at the region's offset, as a back-end does.
    const buf = native.mmap(ram.fdFor(1), 4096, 16 * MiB);
    try {
      assert.deepEqual([...new Uint8Array(buf, 5, 3)], [1, 2, 3]);
    } finally {
      native.munmap(buf);
    }
    assert.throws(() => ram.read(16 * MiB, 1), { code: 'ERR_FRONTEND_ARG' });
    assert.throws(() => ram.write(16 * MiB - 1, Uint8Array.of(1, 2)), { code: 'ERR_FRONTEND_ARG' });
  });

  test('bump allocator: alignment, region choice, exhaustion', (t) => {
    const ram = new GuestRam({
      regions: [
        { gpa: 0x10000, size: 8192 },
        { gpa: 0x100000, size: 16384 },
      ],
    });
    t.after(() => ram.close());
    assert.equal(ram.alloc(3, 1), 0x10000);
    assert.equal(ram.alloc(16, 16), 0x10010);
    assert.equal(ram.alloc(8, 8, 1), 0x100000);
    assert.equal(ram.alloc(8180, 8), 0x100008, 'does not fit region 0 any more: region 1');
    assert.throws(() => ram.alloc(9000, 8), { code: 'ERR_FRONTEND_NO_MEMORY' });
    assert.throws(() => ram.alloc(8, 3), { code: 'ERR_FRONTEND_ARG' });
    assert.throws(() => ram.alloc(0), { code: 'ERR_FRONTEND_ARG' });
    assert.throws(() => new GuestRam({ regions: [{ gpa: 1, size: 4096 }] }), { code: 'ERR_FRONTEND_ARG' });
    assert.throws(() => new GuestRam({ regions: [] }), { code: 'ERR_FRONTEND_ARG' });
  });

  test('close() unmaps and closes the memfd, idempotently; later use throws', async () => {
    await settle();
    const fds = fdCount();
    const maps = memfdMaps();
    const ram = new GuestRam();
    assert.equal(fdCount(), fds + 1);
    assert.equal(memfdMaps(), maps + 2);
    const view = ram.memory.regions[0]!.bytes;
    ram.close();
    ram.close();
    assert.equal(ram.isClosed, true);
    assert.equal(fdCount(), fds);
    assert.equal(memfdMaps(), maps);
    assert.equal(view.length, 0, 'the mapping is detached');
    assert.throws(() => ram.alloc(8), { code: 'ERR_FRONTEND_CLOSED' });
    assert.throws(() => ram.read(0, 1), { code: 'ERR_FRONTEND_CLOSED' });
  });
});
