import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DescriptorChain } from '../../src/core/virtio/descriptor-chain.js';
import { Desc } from '../../src/core/virtio/features.js';
import { plainMemory } from './support/plain-memory.js';
import { AVAIL, DATA, DESC, RawRing, UVA } from './support/raw-ring.js';

const { F_NEXT: NEXT, F_WRITE: WRITE, F_INDIRECT: INDIRECT } = Desc;

test('a readable + writable chain is walked, read and written by offset', () => {
  const r = new RawRing(8);
  r.mem.writeFrom(DATA, Uint8Array.of(1, 2, 3, 4, 5), 0, 5);
  r.desc(0, DATA, 3, NEXT, 1);
  r.desc(1, DATA + 3, 2, NEXT, 2);
  r.desc(2, DATA + 0x100, 4, WRITE);
  r.offer(0);
  const q = r.queue();
  const c = new DescriptorChain(1); // capacity 1: forces growth
  assert.equal(q.next(c), true);
  assert.equal(c.head, 0);
  assert.equal(c.readableLength, 5);
  assert.equal(c.writableLength, 4);
  const buf = new Uint8Array(5);
  assert.equal(c.read(r.mem, 1, buf, 0, 5), 4);
  assert.deepEqual([...buf.subarray(0, 4)], [2, 3, 4, 5]);
  assert.equal(c.write(r.mem, 2, Uint8Array.of(9, 9, 9), 0, 3), 2);
  assert.equal(c.writableAddress(3), DATA + 0x103);
  assert.equal(c.writableAddress(4), -1);
  q.pushUsed(c.head, 4);
  q.publish();
  assert.equal(r.usedIdx(), 1);
  assert.deepEqual(r.used(0), { id: 0, len: 4 });
  assert.equal(q.next(c), false);
});

test('loops, bad next indices, readable-after-writable and unmapped buffers are typed errors', () => {
  const cases: [string, (r: RawRing) => void][] = [
    [
      'ERR_VQ_DESC_LOOP',
      (r) => {
        r.desc(0, DATA, 1, NEXT, 1);
        r.desc(1, DATA, 1, NEXT, 0);
      },
    ],
    ['ERR_VQ_DESC_INDEX', (r) => r.desc(0, DATA, 1, NEXT, 8)],
    [
      'ERR_VQ_DESC_ORDER',
      (r) => {
        r.desc(0, DATA, 1, WRITE | NEXT, 1);
        r.desc(1, DATA, 1, 0);
      },
    ],
    ['ERR_VQ_DESC_ADDR', (r) => r.desc(0, 0xffff_0000, 16, 0)],
    ['ERR_VQ_DESC_ADDR', (r) => r.desc(0, 0xfff0, 0x20, 0)],
    ['ERR_VQ_DESC_ADDR', (r) => r.desc(0, 2 ** 60, 1, 0)],
    ['ERR_VQ_INDIRECT', (r) => r.desc(0, DATA, 32, INDIRECT)], // INDIRECT_DESC not negotiated
  ];
  for (const [code, build] of cases) {
    const r = new RawRing(8);
    build(r);
    r.offer(0);
    const q = r.queue();
    const c = new DescriptorChain();
    assert.throws(() => q.next(c), { code }, code);
    assert.equal(c.head, 0, 'the slot is consumed and the head known, so the chain can be returned');
    assert.equal(q.stats.badChains, 1);
  }
});

test('a head index beyond the queue size is an error with no head', () => {
  const r = new RawRing(8);
  r.offer(9);
  const c = new DescriptorChain();
  assert.throws(() => r.queue().next(c), { code: 'ERR_VQ_DESC_INDEX' });
  assert.equal(c.head, -1);
});

test('avail index more than queue-size ahead marks the ring corrupt', () => {
  const r = new RawRing(8);
  r.setAvailIdx(9);
  assert.throws(() => r.queue().pending(), { code: 'ERR_VQ_AVAIL_IDX' });
});

test('indirect tables: walked when negotiated; nested, chained or malformed tables refused', () => {
  const TABLE = DATA + 0x1000;
  const good = new RawRing(8);
  good.desc(0, DATA, 16, NEXT, 1, TABLE);
  good.desc(1, DATA + 0x100, 1, WRITE, 0, TABLE);
  good.desc(0, TABLE, 32, INDIRECT);
  good.offer(0);
  const c = new DescriptorChain();
  assert.equal(good.queue({ indirect: true }).next(c), true);
  assert.equal(c.indirect, true);
  assert.equal(c.readableLength, 16);
  assert.equal(c.writableLength, 1);

  const bad: [string, (r: RawRing) => void][] = [
    ['ERR_VQ_INDIRECT', (r) => r.desc(0, TABLE, 24, INDIRECT)], // not a multiple of 16
    ['ERR_VQ_INDIRECT', (r) => r.desc(0, TABLE, 0, INDIRECT)],
    [
      'ERR_VQ_INDIRECT',
      (r) => {
        r.desc(0, TABLE, 16, INDIRECT | NEXT, 1);
        r.desc(1, DATA, 1, 0);
      },
    ],
    [
      'ERR_VQ_INDIRECT',
      (r) => {
        r.desc(0, TABLE, 16, INDIRECT);
        r.desc(0, TABLE, 16, INDIRECT, 0, TABLE); // nested
      },
    ],
    [
      'ERR_VQ_DESC_LOOP',
      (r) => {
        r.desc(0, TABLE, 32, INDIRECT);
        r.desc(0, DATA, 1, NEXT, 1, TABLE);
        r.desc(1, DATA, 1, NEXT, 0, TABLE);
      },
    ],
    [
      'ERR_VQ_DESC_INDEX',
      (r) => {
        r.desc(0, TABLE, 16, INDIRECT);
        r.desc(0, DATA, 1, NEXT, 1, TABLE);
      },
    ],
    ['ERR_VQ_DESC_ADDR', (r) => r.desc(0, 0xfff0, 64, INDIRECT)],
  ];
  for (const [code, build] of bad) {
    const r = new RawRing(8);
    build(r);
    r.offer(0);
    assert.throws(() => r.queue({ indirect: true }).next(new DescriptorChain()), { code }, code);
  }
});

test('without EVENT_IDX: notify unless the driver set NO_INTERRUPT', () => {
  const r = new RawRing(8);
  let calls = 0;
  const q = r.queue({}, () => calls++);
  q.pushUsed(0, 0);
  q.publish();
  assert.equal(calls, 1);
  r.setAvailFlags(1);
  q.pushUsed(1, 0);
  q.publish();
  assert.equal(calls, 1);
  assert.equal(q.stats.suppressedNotifications, 1);
  q.publish(); // nothing new: no store, no call
  assert.equal(calls, 1);
});

test('EVENT_IDX: notify only when used_event is crossed; avail_event asks for the next kick', () => {
  const r = new RawRing(8);
  let calls = 0;
  const q = r.queue({ eventIdx: true }, () => calls++);
  r.setUsedEvent(2); // driver wants an interrupt once used idx passes 2
  q.pushUsed(0, 0);
  q.publish(); // used 0 -> 1
  assert.equal(calls, 0);
  q.pushUsed(1, 0);
  q.pushUsed(2, 0);
  q.publish(); // 1 -> 3 crosses 2
  assert.equal(calls, 1);
  q.pushUsed(3, 0);
  q.publish(); // 3 -> 4, event still 2: already signalled
  assert.equal(calls, 1);
  r.desc(0, DATA, 1, 0);
  r.offer(0);
  r.offer(0);
  const c = new DescriptorChain();
  q.next(c);
  assert.equal(q.armKick(), true, 'one more chain is pending');
  assert.equal(r.availEvent(), 1);
  q.next(c);
  assert.equal(q.armKick(), false);
  assert.equal(r.availEvent(), 2);
});

test('indices wrap at 65536 and the ring restarts at SET_VRING_BASE', () => {
  const r = new RawRing(4);
  r.setAvailIdx(65534);
  const q = r.queue({ base: 65534 });
  r.desc(0, DATA, 1, 0);
  for (let i = 0; i < 4; i++) r.offer(0);
  assert.equal(q.pending(), 4);
  const c = new DescriptorChain();
  let n = 0;
  while (q.next(c)) n++;
  assert.equal(n, 4);
  assert.equal(q.lastAvail, 2);
});

test('ring structures outside guest memory or misaligned are ERR_VQ_RING_ADDR', () => {
  const r = new RawRing(8);
  assert.throws(
    () =>
      new (r.queue().constructor as typeof import('../../src/core/virtio/split-queue.js').SplitQueue)(
        0,
        8,
        0,
        { desc: UVA + DESC, avail: UVA + AVAIL + 1, used: UVA + 0x4000 },
        r.mem,
        { eventIdx: false, indirect: false },
        () => {},
      ),
    { code: 'ERR_VQ_RING_ADDR' },
  );
  const small = new RawRing(8, plainMemory({ gpa: 0, size: 0x3100, uva: UVA }));
  assert.throws(() => small.queue(), { code: 'ERR_VQ_RING_ADDR' });
});
