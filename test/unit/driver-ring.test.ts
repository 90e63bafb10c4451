// DriverRing (the guest side of a split virtqueue) against the real device-side SplitQueue, over
// plain ArrayBuffer "guest memory" whose front-end user addresses differ from guest physical ones.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { GuestMemory, type MappedRegion } from '../../src/core/memory/guest-memory.js';
import { DescriptorChain } from '../../src/core/virtio/descriptor-chain.js';
import { DriverRing, type DriverRingLayout, ringSizes } from '../../src/core/virtio/driver-ring.js';
import { Desc, VRING_USED_F_NO_NOTIFY } from '../../src/core/virtio/features.js';
import { SplitQueue } from '../../src/core/virtio/split-queue.js';

const REGION_GPA = 0x10_0000;
const REGION_SIZE = 0x4_0000;
const UVA_BASE = 0x7f00_0000_0000;

function region(gpa: number, size: number): MappedRegion {
  return {
    guestPhysAddr: gpa,
    size,
    userAddr: UVA_BASE + gpa,
    mmapOffset: 0,
    bytes: new Uint8Array(size),
    release() {},
  };
}

interface Rig {
  mem: GuestMemory;
  ring: DriverRing;
  queue: SplitQueue;
  notifications: () => number;
  bytes: Uint8Array;
  layout: DriverRingLayout;
}

/** A ring of `size` entries at the start of one region, plus a device queue on the same memory. */
function rig(
  size: number,
  opts: { eventIdx?: boolean; indirect?: boolean; base?: number } = {},
  secondRegion = false,
): Rig {
  const regions = [region(REGION_GPA, REGION_SIZE)];
  if (secondRegion) regions.push(region(0x1_0000_0000, REGION_SIZE));
  const mem = new GuestMemory(regions);
  const sz = ringSizes(size);
  const ringGpa = secondRegion ? 0x1_0000_0000 : REGION_GPA;
  const layout: DriverRingLayout = {
    size,
    descGpa: ringGpa,
    availGpa: ringGpa + sz.desc,
    usedGpa: ringGpa + ((sz.desc + sz.avail + 3) & ~3),
  };
  const eventIdx = opts.eventIdx ?? false;
  const ring = new DriverRing(mem, layout, { eventIdx });
  ring.init(opts.base ?? 0);
  let n = 0;
  const queue = new SplitQueue(
    0,
    size,
    opts.base ?? 0,
    { desc: UVA_BASE + layout.descGpa, avail: UVA_BASE + layout.availGpa, used: UVA_BASE + layout.usedGpa },
    mem,
    { eventIdx, indirect: opts.indirect ?? false },
    () => {
      n++;
    },
  );
  return { mem, ring, queue, notifications: () => n, bytes: regions[0]!.bytes, layout };
}

/** Data buffers live from offset 0x8000 of the first region. */
const DATA = REGION_GPA + 0x8000;

function fill(r: Rig, gpa: number, data: number[]): void {
  assert.ok(r.mem.writeFrom(gpa, Uint8Array.from(data), 0, data.length));
}

describe('DriverRing against SplitQueue', () => {
  test('direct chain round trip: readable then writable, used length and free count', () => {
    const r = rig(8);
    fill(r, DATA, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    const head = r.ring.add(
      [
        { gpa: DATA, len: 6 },
        { gpa: DATA + 6, len: 4 },
      ],
      [{ gpa: DATA + 0x100, len: 4 }],
    );
    assert.equal(r.ring.freeCount, 5);
    assert.equal(r.ring.inFlight, 1);
    const chain = new DescriptorChain();
    assert.equal(r.queue.next(chain), false, 'nothing is visible before publish()');
    assert.equal(r.ring.publish(), 1);
    assert.equal(r.queue.next(chain), true);
    assert.equal(chain.head, head);
    assert.equal(chain.count, 3);
    assert.equal(chain.readableCount, 2);
    assert.equal(chain.readableLength, 10);
    assert.equal(chain.writableLength, 4);
    assert.equal(chain.indirect, false);
    const got = new Uint8Array(10);
    assert.equal(chain.read(r.mem, 0, got, 0, 10), 10);
    assert.deepEqual([...got], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert.equal(chain.write(r.mem, 0, Uint8Array.of(0xaa, 0xbb, 0xcc, 0xdd), 0, 4), 4);
    assert.equal(r.ring.hasUsed(), false);
    r.queue.pushUsed(chain.head, 4);
    r.queue.publish();
    assert.equal(r.notifications(), 1, 'no suppression asked: the device notifies');
    assert.deepEqual(r.ring.takeUsed(), [{ head, len: 4 }]);
    assert.equal(r.ring.freeCount, 8);
    assert.equal(r.ring.inFlight, 0);
    assert.equal(r.ring.lastUsed, 1);
    assert.deepEqual([...r.bytes.subarray(0x8100, 0x8104)], [0xaa, 0xbb, 0xcc, 0xdd]);
    assert.deepEqual(r.ring.takeUsed(), [], 'entries are taken once');
  });

  test('indirect chain round trip takes one ring descriptor', () => {
    const r = rig(4, { indirect: true });
    fill(r, DATA, [9, 8, 7]);
    const table = REGION_GPA + 0x9000;
    const head = r.ring.add(
      [
        { gpa: DATA, len: 2 },
        { gpa: DATA + 2, len: 1 },
      ],
      [{ gpa: DATA + 0x40, len: 1 }],
      { indirectTableGpa: table },
    );
    assert.equal(r.ring.freeCount, 3);
    const d = r.ring.readDesc(head);
    assert.equal(d.flags, Desc.F_INDIRECT);
    assert.equal(d.addr, table);
    assert.equal(d.len, 3 * Desc.SIZE);
    r.ring.publish();
    const chain = new DescriptorChain();
    assert.equal(r.queue.next(chain), true);
    assert.equal(chain.head, head);
    assert.equal(chain.indirect, true);
    assert.equal(chain.count, 3);
    assert.equal(chain.readableLength, 3);
    assert.equal(chain.writableLength, 1);
    r.queue.pushUsed(head, 1);
    r.queue.publish();
    assert.deepEqual(r.ring.takeUsed(), [{ head, len: 1 }]);
    assert.equal(r.ring.freeCount, 4);
  });

  test('indirect descriptors are refused by a device without INDIRECT_DESC', () => {
    const r = rig(4, { indirect: false });
    r.ring.add([{ gpa: DATA, len: 2 }], [], { indirectTableGpa: REGION_GPA + 0x9000 });
    r.ring.publish();
    assert.throws(() => r.queue.next(new DescriptorChain()), { code: 'ERR_VQ_INDIRECT' });
  });

  test('a full ring throws ERR_DRIVER_RING_FULL and leaves the ring unchanged', () => {
    const r = rig(4);
    r.ring.add([{ gpa: DATA, len: 1 }], [{ gpa: DATA + 1, len: 1 }]);
    r.ring.add([{ gpa: DATA, len: 1 }], []);
    assert.equal(r.ring.freeCount, 1);
    assert.throws(() => r.ring.add([{ gpa: DATA, len: 1 }], [{ gpa: DATA + 1, len: 1 }]), {
      code: 'ERR_DRIVER_RING_FULL',
    });
    assert.equal(r.ring.freeCount, 1);
    assert.equal(r.ring.availIdx, 2);
    // An indirect chain still fits: it needs one ring descriptor.
    r.ring.add([{ gpa: DATA, len: 1 }], [{ gpa: DATA + 1, len: 1 }], { indirectTableGpa: DATA + 0x200 });
    assert.equal(r.ring.freeCount, 0);
    assert.throws(() => r.ring.add([], []), { code: 'ERR_DRIVER_RING_ARG' });
  });

  test('rings in a second region at a high guest physical address', () => {
    const r = rig(8, {}, true);
    const head = r.ring.add([{ gpa: DATA, len: 3 }], [{ gpa: 0x1_0000_0000 + 0x8000, len: 8 }]);
    r.ring.publish();
    const chain = new DescriptorChain();
    assert.ok(r.queue.next(chain));
    assert.equal(chain.head, head);
    assert.equal(chain.writableAddress(0), 0x1_0000_0000 + 0x8000);
    r.queue.pushUsed(head, 8);
    r.queue.publish();
    assert.deepEqual(r.ring.takeUsed(), [{ head, len: 8 }]);
  });

  test('index wrap-around past 65535 (both sides start at 65530)', () => {
    for (const eventIdx of [false, true]) {
      const r = rig(8, { base: 65530, eventIdx });
      assert.equal(r.ring.availIdx, 65530);
      assert.equal(r.queue.lastAvail, 65530);
      assert.equal(r.queue.usedIdx, 65530, 'the device reads used.idx from the ring');
      const chain = new DescriptorChain();
      let seen = 0;
      for (let round = 0; round < 10; round++) {
        const heads: number[] = [];
        for (let k = 0; k < 3; k++) {
          heads.push(r.ring.add([{ gpa: DATA + 16 * k, len: 16 }], [{ gpa: DATA + 0x100 + k, len: 1 }]));
        }
        r.ring.kickPrepare();
        const consumed: number[] = [];
        while (r.queue.next(chain)) {
          consumed.push(chain.head);
          r.queue.pushUsed(chain.head, 1);
        }
        assert.deepEqual(consumed, heads, `round ${round}`);
        r.queue.publish();
        r.queue.armKick();
        const used = r.ring.takeUsed();
        assert.deepEqual(
          used.map((u) => u.head),
          heads,
        );
        seen += used.length;
        assert.equal(r.ring.freeCount, 8);
      }
      assert.equal(seen, 30);
      assert.equal(r.ring.availIdx, (65530 + 30) & 0xffff);
      assert.equal(r.ring.availIdx, 24, 'the index wrapped');
      assert.equal(r.ring.lastUsed, 24);
      assert.equal(r.queue.lastAvail, 24);
      assert.equal(r.ring.usedIdx, 24);
      assert.equal(r.ring.unexpectedUsed, 0);
    }
  });

  test('EVENT_IDX: the driver kicks only when avail passes avail_event', () => {
    const r = rig(8, { eventIdx: true });
    const chain = new DescriptorChain();
    r.queue.armKick(); // avail_event = 0
    assert.equal(r.ring.availEvent, 0);
    r.ring.add([{ gpa: DATA, len: 1 }], []);
    assert.equal(r.ring.kickPrepare(), true, 'avail moved 0 -> 1 past avail_event 0');
    r.ring.add([{ gpa: DATA, len: 1 }], []);
    assert.equal(r.ring.kickPrepare(), false, 'the device has not asked again: avail_event is still 0');
    assert.equal(r.ring.kickPrepare(), false, 'nothing added: never a kick');
    while (r.queue.next(chain)) r.queue.pushUsed(chain.head, 0);
    r.queue.publish();
    assert.equal(r.queue.armKick(), false);
    assert.equal(r.ring.availEvent, 2);
    r.ring.add([{ gpa: DATA, len: 1 }], []);
    r.ring.add([{ gpa: DATA, len: 1 }], []);
    assert.equal(r.ring.kickPrepare(), true, 'a batch of two crossing avail_event 2 kicks once');
    // needsKick is the raw rule: event in [old, new).
    assert.equal(r.ring.needsKick(2, 4), true);
    assert.equal(r.ring.needsKick(3, 4), false);
    assert.equal(r.ring.needsKick(1, 2), false);
  });

  test('EVENT_IDX: the device interrupts only when used passes used_event', () => {
    const r = rig(8, { eventIdx: true });
    const chain = new DescriptorChain();
    for (let k = 0; k < 6; k++) r.ring.add([{ gpa: DATA, len: 1 }], []);
    r.ring.publish();
    const complete = (): void => {
      assert.ok(r.queue.next(chain));
      r.queue.pushUsed(chain.head, 0);
      r.queue.publish();
    };
    assert.equal(r.ring.usedEvent, 0);
    complete();
    assert.equal(r.notifications(), 1, 'used 0 -> 1 crosses used_event 0');
    complete();
    assert.equal(r.notifications(), 1, 'the driver has not taken entries: used_event still 0');
    assert.equal(r.queue.stats.suppressedNotifications, 1);
    assert.equal(r.ring.takeUsed().length, 2);
    assert.equal(r.ring.usedEvent, 2, 'takeUsed re-arms used_event at lastUsed');
    complete();
    assert.equal(r.notifications(), 2);
    r.ring.takeUsed();
    assert.equal(r.ring.suppressInterrupts(true), false);
    complete();
    complete();
    assert.equal(r.notifications(), 2, 'suppressed: used_event = lastUsed - 1');
    assert.equal(r.ring.takeUsed().length, 2);
    assert.equal(r.ring.usedEvent, 2, 'takeUsed leaves used_event alone while suppressed');
    assert.equal(r.ring.suppressInterrupts(false), false);
    assert.equal(r.ring.usedEvent, 5);
    complete();
    assert.equal(r.notifications(), 3);
    assert.equal(r.ring.takeUsed().length, 1);
  });

  test('without EVENT_IDX: avail.flags NO_INTERRUPT and used.flags NO_NOTIFY', () => {
    const r = rig(8);
    const chain = new DescriptorChain();
    for (let k = 0; k < 3; k++) r.ring.add([{ gpa: DATA, len: 1 }], []);
    assert.equal(r.ring.kickPrepare(), true);
    r.ring.suppressInterrupts(true);
    assert.ok(r.queue.next(chain));
    r.queue.pushUsed(chain.head, 0);
    r.queue.publish();
    assert.equal(r.notifications(), 0, 'NO_INTERRUPT honoured');
    assert.equal(r.ring.suppressInterrupts(false), true, 'an entry is already waiting');
    assert.ok(r.queue.next(chain));
    r.queue.pushUsed(chain.head, 0);
    r.queue.publish();
    assert.equal(r.notifications(), 1);
    // The device sets used.flags NO_NOTIFY while it polls.
    const usedFlagsOff = r.layout.usedGpa - REGION_GPA;
    Atomics.store(new Uint16Array(r.bytes.buffer), usedFlagsOff >>> 1, VRING_USED_F_NO_NOTIFY);
    assert.equal(r.ring.usedFlags, VRING_USED_F_NO_NOTIFY);
    r.ring.add([{ gpa: DATA, len: 1 }], []);
    assert.equal(r.ring.kickPrepare(), false);
  });

  test('raw helpers build hostile rings the device rejects', () => {
    const loop = rig(4);
    loop.ring.writeDesc(0, { addr: DATA, len: 1, flags: Desc.F_NEXT, next: 1 });
    loop.ring.writeDesc(1, { addr: DATA, len: 1, flags: Desc.F_NEXT, next: 0 });
    loop.ring.pushAvailRaw(0);
    loop.ring.publish();
    const chain = new DescriptorChain();
    assert.throws(() => loop.queue.next(chain), { code: 'ERR_VQ_DESC_LOOP' });
    assert.equal(chain.head, 0, 'the slot is consumed and the head is known');

    const badHead = rig(4);
    badHead.ring.pushAvailRaw(7);
    badHead.ring.publish();
    assert.throws(() => badHead.queue.next(new DescriptorChain()), { code: 'ERR_VQ_DESC_INDEX' });

    const jump = rig(4);
    jump.ring.setAvailIdx(100);
    assert.equal(jump.ring.publishedAvailIdx, 100);
    assert.throws(() => jump.queue.pending(), { code: 'ERR_VQ_AVAIL_IDX' });

    const unmapped = rig(4);
    unmapped.ring.add([{ gpa: 0x5000_0000, len: 16 }], []);
    unmapped.ring.publish();
    assert.throws(() => unmapped.queue.next(new DescriptorChain()), { code: 'ERR_VQ_DESC_ADDR' });

    const table = REGION_GPA + 0x9000;
    const nested = rig(4, { indirect: true });
    nested.ring.writeTableDesc(table, 0, { addr: table, len: 16, flags: Desc.F_INDIRECT, next: 0 });
    nested.ring.writeDesc(2, { addr: table, len: 16, flags: Desc.F_INDIRECT, next: 0 });
    nested.ring.pushAvailRaw(2);
    nested.ring.publish();
    assert.throws(() => nested.queue.next(new DescriptorChain()), { code: 'ERR_VQ_INDIRECT' });
  });

  test('used entries for unknown heads are counted, raw claims are freed normally', () => {
    const r = rig(4);
    r.ring.writeDesc(3, { addr: DATA, len: 4, flags: 0, next: 0 });
    r.ring.claimRaw(3);
    assert.equal(r.ring.freeCount, 3);
    r.ring.pushAvailRaw(3);
    r.ring.publish();
    const chain = new DescriptorChain();
    assert.ok(r.queue.next(chain));
    r.queue.pushUsed(3, 0);
    r.queue.pushUsed(3, 0); // a buggy device completes the same head twice
    r.queue.publish();
    assert.deepEqual(r.ring.takeUsed(), [
      { head: 3, len: 0 },
      { head: 3, len: 0 },
    ]);
    assert.equal(r.ring.unexpectedUsed, 1);
    assert.equal(r.ring.freeCount, 4);
  });

  test('construction checks addresses, alignment and size', () => {
    const mem = new GuestMemory([region(REGION_GPA, REGION_SIZE)]);
    const ok = { size: 8, descGpa: REGION_GPA, availGpa: REGION_GPA + 0x100, usedGpa: REGION_GPA + 0x200 };
    assert.doesNotThrow(() => new DriverRing(mem, ok, { eventIdx: false }));
    assert.throws(() => new DriverRing(mem, { ...ok, size: 6 }, { eventIdx: false }), {
      code: 'ERR_DRIVER_RING_ARG',
    });
    assert.throws(() => new DriverRing(mem, { ...ok, descGpa: REGION_GPA + 8 }, { eventIdx: false }), {
      code: 'ERR_DRIVER_RING_ADDR',
    });
    assert.throws(() => new DriverRing(mem, { ...ok, usedGpa: REGION_GPA + 0x202 }, { eventIdx: false }), {
      code: 'ERR_DRIVER_RING_ADDR',
    });
    assert.throws(
      () => new DriverRing(mem, { ...ok, usedGpa: REGION_GPA + REGION_SIZE - 8 }, { eventIdx: false }),
      { code: 'ERR_DRIVER_RING_ADDR' },
    );
  });
});
