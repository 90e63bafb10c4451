/**
 * A TX chain answered NOT_OK at once ({len 0, NEXT} -> {len 0, WRITE}: no room for the result byte)
 * followed by a ring corruption found while looking for the next chain (an avail index that jumps
 * more than the queue size ahead, or a head index beyond the queue). The corruption marks the device
 * broken; before the fix the already-answered chain sat in the TX completion FIFO, was dropped by
 * halt(), and never reached the used ring although the stats counted it as rejected.
 *
 * The real session and device run over a fake SessionIo (no sockets): 16-entry rings, two memory
 * regions, LATE_TX_ACK negotiated, the controller started.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CanHub } from '../../src/core/bus/hub.js';
import { CanDevice } from '../../src/core/devices/can/can-device.js';
import { CanFeature } from '../../src/core/devices/can/constants.js';
import { nullLogger } from '../../src/core/util/log.js';
import {
  encodeMemTable,
  encodeU64,
  encodeVringAddr,
  encodeVringFdIndex,
  encodeVringState,
  type MemRegionDesc,
} from '../../src/core/vhost-user/codec.js';
import {
  DeviceStatus,
  FrontendReq,
  HeaderFlag,
  ProtocolFeature,
} from '../../src/core/vhost-user/protocol.js';
import { SUPPORTED_PROTOCOL_FEATURES, VhostUserSession } from '../../src/core/vhost-user/session.js';
import { featureBit, VirtioFeature } from '../../src/core/virtio/features.js';
import { SplitQueue } from '../../src/core/virtio/split-queue.js';
import { FakeKernel } from './support/fake-session-io.js';

const SIZE = 16;
const UVA = 0x7f00_0000_0000;
const A: MemRegionDesc = { guestPhysAddr: 0, size: 0x10000, userAddr: UVA, mmapOffset: 0 };
const B: MemRegionDesc = {
  guestPhysAddr: 0x100000,
  size: 0x10000,
  userAddr: UVA + 0x100000,
  mmapOffset: 0x10000,
};
const ringGpa = (q: number) => B.guestPhysAddr + q * 0x1000;
/** memfd offset of a guest physical address (both regions live in one memfd). */
const off = (gpa: number) => (gpa >= B.guestPhysAddr ? gpa - B.guestPhysAddr + B.mmapOffset : gpa);

function setup() {
  const k = new FakeKernel();
  const mem = new Uint8Array(0x20000);
  const dv = new DataView(mem.buffer);
  const hub = new CanHub({ name: 't' });
  const dev = new CanDevice({ hub, portName: 'g' });
  const s = new VhostUserSession(dev, k, { log: nullLogger });
  const send = (req: number, payload: Uint8Array = new Uint8Array(0), fds: number[] = []) =>
    s.handle({ request: req, flags: HeaderFlag.VERSION, payload, fds });
  const features =
    featureBit(VirtioFeature.VERSION_1) |
    featureBit(VirtioFeature.PROTOCOL_FEATURES) |
    featureBit(VirtioFeature.RING_EVENT_IDX) |
    featureBit(CanFeature.CAN_CLASSIC) |
    featureBit(CanFeature.LATE_TX_ACK);
  send(FrontendReq.SET_OWNER);
  send(FrontendReq.SET_PROTOCOL_FEATURES, encodeU64(SUPPORTED_PROTOCOL_FEATURES));
  send(FrontendReq.SET_FEATURES, encodeU64(features));
  send(FrontendReq.SET_MEM_TABLE, encodeMemTable([A, B]), [k.open('memfd', mem), k.open('memfd', mem)]);
  const driver = [0, 1, 2].map(() => ({ avail: 0, desc: 0 }));
  for (let q = 0; q < 3; q++) {
    const base = B.userAddr + q * 0x1000;
    send(FrontendReq.SET_VRING_NUM, encodeVringState({ index: q, num: SIZE }));
    send(
      FrontendReq.SET_VRING_ADDR,
      encodeVringAddr({ index: q, flags: 0, desc: base, avail: base + 0x400, used: base + 0x800, log: 0 }),
    );
    send(FrontendReq.SET_VRING_BASE, encodeVringState({ index: q, num: 0 }));
    send(FrontendReq.SET_VRING_CALL, encodeVringFdIndex(q, false), [k.open('eventfd')]);
    send(FrontendReq.SET_VRING_KICK, encodeVringFdIndex(q, false), [k.open('eventfd')]);
    send(FrontendReq.SET_VRING_ENABLE, encodeVringState({ index: q, num: 1 }));
  }
  const desc = (q: number, i: number, addr: number, len: number, flags: number, next: number) => {
    const o = off(ringGpa(q)) + 16 * i;
    dv.setBigUint64(o, BigInt(addr), true);
    dv.setUint32(o + 8, len, true);
    dv.setUint16(o + 12, flags, true);
    dv.setUint16(o + 14, next, true);
  };
  const availOff = (q: number) => off(ringGpa(q) + 0x400);
  const usedOff = (q: number) => off(ringGpa(q) + 0x800);
  const post = (q: number, head: number) => {
    const d = driver[q]!;
    dv.setUint16(availOff(q) + 4 + 2 * (d.avail % SIZE), head, true);
    d.avail = (d.avail + 1) & 0xffff;
    dv.setUint16(availOff(q) + 2, d.avail, true);
  };
  const kick = (q: number) => {
    for (const cb of [...k.kickWatches.values()].slice(q, q + 1)) cb();
  };
  // CTRL START: request at 0x1000, result at 0x1100.
  dv.setUint16(0x1000, 0x0201, true);
  desc(2, 0, 0x1000, 2, 1, 1);
  desc(2, 1, 0x1100, 1, 2, 0);
  post(2, 0);
  kick(2);
  assert.equal(dev.controllerState, 'started');
  const usedIdx = (q: number) => dv.getUint16(usedOff(q) + 2, true);
  const usedElem = (q: number, i: number) => ({
    id: dv.getUint32(usedOff(q) + 4 + 8 * i, true),
    len: dv.getUint32(usedOff(q) + 8 + 8 * i, true),
  });
  const getVringBase = (q: number): number => {
    k.replies = [];
    send(FrontendReq.GET_VRING_BASE, encodeVringState({ index: q, num: 0 }));
    assert.equal(k.replies.length, 1);
    return new DataView(k.replies[0]!.buffer).getUint32(16, true);
  };
  const status = (): number => {
    k.replies = [];
    send(FrontendReq.GET_STATUS);
    return Number(new DataView(k.replies[0]!.buffer).getBigUint64(12, true));
  };
  assert.ok((SUPPORTED_PROTOCOL_FEATURES & featureBit(ProtocolFeature.STATUS)) !== 0n);
  /** The zero-length chain {len 0, NEXT} -> {len 0, WRITE} at descriptors 0 and 1 of TX. */
  const postZeroLengthChain = () => {
    desc(0, 0, 0x2000, 0, 1, 1);
    desc(0, 1, 0x2100, 0, 2, 0);
    post(0, 0);
  };
  /** A valid 2-byte classic frame at descriptors 2 and 3 of TX (result byte at 0x3100). */
  const postValidFrame = () => {
    dv.setUint16(0x3000, 0x0001, true);
    dv.setUint16(0x3002, 2, true);
    dv.setUint32(0x3008, 0, true);
    dv.setUint32(0x300c, 0x123, true);
    mem[0x3100] = 0xee;
    desc(0, 2, 0x3000, 18, 1, 3);
    desc(0, 3, 0x3100, 1, 2, 0);
    post(0, 2);
  };
  return {
    k,
    s,
    dev,
    dv,
    mem,
    driver,
    post,
    kick,
    usedIdx,
    usedElem,
    getVringBase,
    status,
    postZeroLengthChain,
    postValidFrame,
    availOff,
  };
}

test('zero-length TX chain, then an avail index that jumps while it is processed: the chain still reaches the used ring', () => {
  const t = setup();
  t.postZeroLengthChain();
  // The driver (another CPU) rewrites avail.idx while the device walks the ring: emulated by
  // corrupting it right after the first chain was taken.
  const next = SplitQueue.prototype.next;
  let taken = 0;
  SplitQueue.prototype.next = function (this: SplitQueue, chain) {
    const r = next.call(this, chain);
    if (r && this.index === 0 && taken++ === 0) t.dv.setUint16(t.availOff(0) + 2, 0x8000, true);
    return r;
  };
  try {
    t.kick(0);
  } finally {
    SplitQueue.prototype.next = next;
  }
  assert.equal(t.dev.stats.txRejected['no-result-byte'], 1);
  assert.equal(t.s.broken?.code, 'ERR_VQ_AVAIL_IDX', 'the corrupt avail index breaks the device');
  assert.ok((t.status() & DeviceStatus.DEVICE_NEEDS_RESET) !== 0);
  assert.equal(t.usedIdx(0), 1, 'the chain answered before the corruption is in the used ring');
  assert.deepEqual(t.usedElem(0, 0), { id: 0, len: 0 });
  assert.equal(t.dev.pendingTx, 0);
  assert.equal(t.getVringBase(0), 1);
});

test('zero-length TX chain, then a head beyond the queue: the first chain is returned before the device breaks', () => {
  const t = setup();
  t.postZeroLengthChain();
  t.post(0, 0x40); // head 64 >= 16
  t.kick(0);
  assert.equal(t.s.broken?.code, 'ERR_VQ_DESC_INDEX');
  assert.equal(t.dev.stats.txRejected['no-result-byte'], 1);
  assert.equal(t.usedIdx(0), 1);
  assert.deepEqual(t.usedElem(0, 0), { id: 0, len: 0 });
  assert.equal(t.getVringBase(0), 2);
});

test('zero-length TX chain, then a valid frame: both are answered in order (control case)', () => {
  const t = setup();
  t.postZeroLengthChain();
  t.postValidFrame();
  t.kick(0);
  assert.equal(t.s.broken, null);
  assert.equal(t.usedIdx(0), 2);
  assert.deepEqual(
    [t.usedElem(0, 0), t.usedElem(0, 1)],
    [
      { id: 0, len: 0 },
      { id: 2, len: 1 },
    ],
  );
  assert.equal(t.mem[0x3100], 0, 'the valid frame was sent (OK)');
  assert.equal(t.getVringBase(0), 2);
});

test('host.schedule: deferred device work runs guarded (a failure marks that device broken) and not after close', () => {
  const k = new FakeKernel();
  const hub = new CanHub({ name: 'sched' });
  const device = new CanDevice({ hub, portName: 'g' });
  const session = new VhostUserSession(device, k, { log: nullLogger });
  let ran = 0;
  session.schedule(() => {
    ran++;
  });
  session.schedule(() => {
    throw new TypeError('boom');
  });
  assert.equal(ran, 0, 'nothing runs inline');
  assert.equal(k.scheduled.length, 2);
  for (const t of k.scheduled.splice(0)) assert.doesNotThrow(t);
  assert.equal(ran, 1);
  assert.equal(session.broken?.code, 'ERR_INTERNAL');
  assert.match(session.broken?.message ?? '', /boom/);
  session.schedule(() => {
    ran++;
  });
  session.close();
  for (const t of k.scheduled.splice(0)) t();
  assert.equal(ran, 1, 'work deferred before close does not run after it');
  session.schedule(() => {
    ran++;
  });
  assert.equal(k.scheduled.length, 0, 'nothing is scheduled once closed');
});
