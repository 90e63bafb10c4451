/**
 * Fuzz target: the vhost-user message stream (framer + session) driving a real CanDevice on a real
 * hub, with a hostile driver writing descriptor tables and rings into guest memory between messages.
 *
 * The input bytes choose every step: a scripted valid handshake advanced step by step, messages with
 * random codes, flags, sizes and payloads (often a mutated valid one), fds (memfds or eventfds),
 * memory table changes, chains posted by the driver (valid CAN requests and hostile descriptor
 * shapes), raw writes into ring memory, kicks, late TX confirmations from a confirming bus port, and
 * frames from the bus.
 *
 * Invariants (a violation throws InvariantError; any other exception is a crash too):
 *  - the framer and the session throw nothing but 'disconnect' VhostErrors;
 *  - every reply carries REPLY_FLAGS and the request code, and a message gets exactly the replies
 *    the protocol promises (one body for GET_*, one ack with NEED_REPLY, none otherwise);
 *  - device code never fails with an internal error (session never broken with ERR_INTERNAL);
 *  - a queue never points into a released mapping, and the memory table holds live mappings only;
 *  - per ring and while the device is not broken: every chain taken from the ring is in the used
 *    ring, except TX chains still waiting in the device's completion FIFO;
 *  - after close: every fd the session received is closed exactly once, nothing unknown is closed,
 *    and every mapping is released exactly once.
 */
import { CanHub, type HubPort } from '../../src/core/bus/hub.js';
import { CanDevice } from '../../src/core/devices/can/can-device.js';
import type { MappedRegion } from '../../src/core/memory/guest-memory.js';
import { dispositionOf, VhostError } from '../../src/core/util/errors.js';
import { nullLogger } from '../../src/core/util/log.js';
import {
  encodeConfig,
  encodeMemTable,
  encodeMessage,
  encodeSingleRegion,
  encodeU64,
  encodeVringAddr,
  encodeVringFdIndex,
  encodeVringState,
  type MemRegionDesc,
  type VhostUserMessage,
} from '../../src/core/vhost-user/codec.js';
import { MessageFramer } from '../../src/core/vhost-user/framer.js';
import { FrontendReq, HeaderFlag, REPLY_FLAGS } from '../../src/core/vhost-user/protocol.js';
import { SUPPORTED_PROTOCOL_FEATURES, VhostUserSession } from '../../src/core/vhost-user/session.js';
import { SplitQueue } from '../../src/core/virtio/split-queue.js';
import { FakeKernel, MEMFD_SIZE } from '../unit/support/fake-session-io.js';
import { check, FuzzInput, InvariantError } from './input.js';

const UVA_BASE = 0x7f00_0000_0000;
/** Region A (buffers) and region B (rings), as the scripted handshake announces them. */
const REGION_A: MemRegionDesc = { guestPhysAddr: 0, size: 0x10000, userAddr: UVA_BASE, mmapOffset: 0 };
const REGION_B: MemRegionDesc = {
  guestPhysAddr: 0x100000,
  size: 0x10000,
  userAddr: UVA_BASE + 0x100000,
  mmapOffset: 0x10000,
};
const RING = (q: number) => ({
  desc: REGION_B.userAddr + q * 0x1000,
  avail: REGION_B.userAddr + q * 0x1000 + 0x400,
  used: REGION_B.userAddr + q * 0x1000 + 0x800,
});
const RING_GPA = (q: number) => REGION_B.guestPhysAddr + q * 0x1000;
const BUF_GPA = 0x1000;
const BUF_SLOTS = 0xe000 / 0x80;

const ALWAYS_REPLY = new Set<number>([
  FrontendReq.GET_FEATURES,
  FrontendReq.GET_PROTOCOL_FEATURES,
  FrontendReq.GET_VRING_BASE,
  FrontendReq.GET_QUEUE_NUM,
  FrontendReq.GET_CONFIG,
  FrontendReq.GET_MAX_MEM_SLOTS,
  FrontendReq.GET_STATUS,
]);

// ---- pushUsed accounting (per queue object) ---------------------------------------------------

const pushes = new WeakMap<SplitQueue, number>();
/** device.stats.txAbandoned when the queue was created (its first translate()). */
const abandonedAtStart = new WeakMap<SplitQueue, number>();
let currentDevice: CanDevice | null = null;
let patched = false;
function patchSplitQueue(): void {
  if (patched) return;
  patched = true;
  const push = SplitQueue.prototype.pushUsed;
  SplitQueue.prototype.pushUsed = function (this: SplitQueue, head: number, len: number): void {
    push.call(this, head, len);
    pushes.set(this, (pushes.get(this) ?? 0) + 1);
  };
  const translate = SplitQueue.prototype.translate;
  SplitQueue.prototype.translate = function (this: SplitQueue, mem): void {
    if (!abandonedAtStart.has(this)) abandonedAtStart.set(this, currentDevice?.stats.txAbandoned ?? 0);
    translate.call(this, mem);
  };
}

// ---- the case ---------------------------------------------------------------------------------

interface DriverRing {
  availIdx: number;
  nextDesc: number;
  size: number;
}

export interface SessionCaseStats {
  steps: number;
  messages: number;
  disconnected: string | null;
  broken: string | null;
  txUsed: number;
}

export function runSessionCase(bytes: Uint8Array): SessionCaseStats {
  patchSplitQueue();
  const inp = new FuzzInput(bytes);
  const k = new FakeKernel();
  const hub = new CanHub({ name: 'fuzz', queueLimit: 8 });
  const tasks = k.scheduled;
  const device = new CanDevice({
    hub,
    portName: 'guest',
    maxQueueSize: 256,
    rxBacklog: 8,
  });
  // A confirming port (a host interface with LATE_TX_ACK) and a plain one that sends frames to us.
  const confirmQueue: import('../../src/core/bus/can-frame.js').CanFrame[] = [];
  let confirming: HubPort | null = null;
  if (inp.bool()) {
    confirming = hub.attach(
      {
        onFramesAvailable() {
          for (let f = confirming!.take(); f !== undefined; f = confirming!.take()) confirmQueue.push(f);
        },
      },
      { name: 'host', confirmsTransmit: true },
    );
  }
  const peer = hub.attach({ onFramesAvailable() {} }, { name: 'peer' });
  currentDevice = device;
  const session = new VhostUserSession(device, k, { log: nullLogger });
  const framer = new MessageFramer();
  const handedFds = new Set<number>();
  const memA = new Uint8Array(MEMFD_SIZE);
  const memB = memA; // both regions live in one memfd at different offsets
  const ringSize = inp.pick([16, 16, 16, 8, 4, 256]);
  const rings: DriverRing[] = [0, 1, 2].map(() => ({ availIdx: 0, nextDesc: 0, size: ringSize }));
  const eventIdx = inp.bool();
  const dv = new DataView(memA.buffer);
  // memfd offset of a guest physical address in the scripted layout (both regions share memA)
  const off = (gpa: number): number =>
    gpa >= REGION_B.guestPhysAddr ? gpa - REGION_B.guestPhysAddr + REGION_B.mmapOffset : gpa;
  let bufSlot = 0;
  const allocBuf = (): number => BUF_GPA + 0x80 * (bufSlot++ % BUF_SLOTS);

  let disconnected = false;
  let disconnectReason = '';
  let messages = 0;
  let steps = 0;
  let offered = 0n;

  const vrings = (): { queue: SplitQueue | null; active: boolean }[] =>
    (session as unknown as { vrings: { queue: SplitQueue | null; active: boolean }[] }).vrings;

  const send = (
    request: number,
    flags: number,
    payload: Uint8Array,
    fds: number[] = [],
    split = false,
  ): void => {
    if (disconnected) {
      for (const fd of fds) k.closeFd(fd);
      return;
    }
    for (const fd of fds) handedFds.add(fd);
    const wire = encodeMessage(request, flags, payload);
    // Header bytes may carry a different size than the payload when mutated by the caller.
    const chunks: Uint8Array[] = [];
    if (split && wire.length > 1) {
      let p = 0;
      while (p < wire.length) {
        const n = 1 + inp.int(Math.min(64, wire.length - p));
        chunks.push(wire.subarray(p, p + n));
        p += n;
      }
    } else {
      chunks.push(wire.subarray(0, 12), wire.subarray(12));
    }
    chunks.forEach((c, i) => {
      if (disconnected) return;
      let msgs: VhostUserMessage[];
      try {
        msgs = framer.push(c, i === 0 ? fds : []);
      } catch (err) {
        check(dispositionOf(err) === 'disconnect', `framer threw ${String(err)}`);
        disconnectReason = `framer:${(err as VhostError).code}`;
        disconnect();
        return;
      }
      for (const m of msgs) deliver(m);
    });
  };

  const deliver = (m: VhostUserMessage): void => {
    if (disconnected) {
      for (const fd of m.fds) k.closeFd(fd);
      return;
    }
    messages++;
    k.replies = [];
    const before = vrings().map((v) => v.queue);
    try {
      session.handle(m);
    } catch (err) {
      if (err instanceof InvariantError) throw err;
      check(
        err instanceof VhostError && err.disposition === 'disconnect',
        `session.handle(${m.request}) threw ${err instanceof Error ? `${err.name}: ${err.message}\n${err.stack}` : String(err)}`,
      );
      disconnectReason = `${m.request}:${(err as VhostError).code}`;
      disconnect();
      return;
    }
    const expected = ALWAYS_REPLY.has(m.request) ? 1 : (m.flags & HeaderFlag.NEED_REPLY) !== 0 ? 1 : 0;
    check(
      k.replies.length === expected,
      `request ${m.request} got ${k.replies.length} replies, expected ${expected}`,
    );
    for (const r of k.replies) {
      const h = new DataView(r.buffer, r.byteOffset, 12);
      check(h.getUint32(0, true) === m.request, `reply code ${h.getUint32(0, true)} to request ${m.request}`);
      check(h.getUint32(4, true) === REPLY_FLAGS, `reply flags 0x${h.getUint32(4, true).toString(16)}`);
      check(h.getUint32(8, true) === r.length - 12, 'reply size field');
    }
    if (m.request === FrontendReq.GET_FEATURES && k.replies.length === 1) {
      offered = new DataView(k.replies[0]!.buffer).getBigUint64(12, true);
    }
    if (m.request === FrontendReq.GET_VRING_BASE && k.replies.length === 1) {
      // The ring just stopped: everything taken from it must be in the used ring.
      const idx = new DataView(m.payload.buffer, m.payload.byteOffset).getUint32(0, true);
      const q = before[idx];
      if (q && session.broken === null) {
        checkQueueComplete(q, idx, 'at GET_VRING_BASE');
        const num = new DataView(k.replies[0]!.buffer).getUint32(16, true);
        check(num === q.lastAvail, `GET_VRING_BASE answered ${num}, ring consumed up to ${q.lastAvail}`);
      }
    }
  };

  const checkQueueComplete = (q: SplitQueue, idx: number, when: string): void => {
    const used = pushes.get(q) ?? 0;
    const taken = q.stats.chains;
    const waiting = idx === 0 ? device.pendingTx : 0;
    const abandoned = idx === 0 ? device.stats.txAbandoned - (abandonedAtStart.get(q) ?? 0) : 0;
    // A chain whose head index is out of range cannot be returned (it breaks the device).
    const lost = taken - used - waiting - abandoned;
    check(
      lost === 0 || (lost === 1 && session.broken !== null),
      `queue ${idx} ${when}: ${taken} chains taken, ${used} returned, ${waiting} waiting, ${abandoned} abandoned (broken: ${session.broken?.code ?? 'no'}; stats ${JSON.stringify(device.stats.txRejected)})`,
    );
  };

  const disconnect = (): void => {
    disconnected = true;
    for (const fd of framer.takeFds()) k.closeFd(fd);
    session.close();
  };

  const checkState = (): void => {
    const broken = session.broken;
    check(
      broken === null || broken.code !== 'ERR_INTERNAL',
      `internal failure: ${broken?.message}\n${(broken?.cause as Error)?.stack}`,
    );
    // Without a port that confirms later, every TX request is answered within the turn that took it:
    // nothing can be waiting when the device breaks, so nothing may be abandoned.
    check(
      confirming !== null || device.stats.txAbandoned === 0,
      `${device.stats.txAbandoned} TX requests abandoned with no late confirmation pending`,
    );
    if (disconnected) return;
    for (const r of session.memory.regions) {
      const m = k.mappings.find((x) => x.region === r.source);
      check(m !== undefined && m.releases === 0, 'memory table holds a released mapping');
    }
    vrings().forEach((v, idx) => {
      const q = v.queue;
      if (q === null) return;
      for (const key of ['desc', 'avail', 'used'] as const) {
        const t = (q as unknown as Record<string, { region: { source: MappedRegion } }>)[key]!;
        const m = k.mappings.find((x) => x.region === t.region.source);
        if (session.broken === null)
          check(m !== undefined && m.releases === 0, `queue ${idx} ${key} points into a released mapping`);
      }
      // Between events nothing may be held except TX chains waiting for the bus; chains dropped
      // when the device broke are counted (txAbandoned).
      checkQueueComplete(q, idx, 'between events');
    });
  };

  // ---- scripted valid handshake, one step per call ------------------------------------------------
  const script: (() => void)[] = [];
  const needReply = (): number => HeaderFlag.VERSION | (inp.chance(64) ? HeaderFlag.NEED_REPLY : 0);
  script.push(() => send(FrontendReq.GET_FEATURES, HeaderFlag.VERSION, new Uint8Array(0)));
  script.push(() => send(FrontendReq.SET_OWNER, needReply(), new Uint8Array(0)));
  script.push(() => send(FrontendReq.GET_PROTOCOL_FEATURES, HeaderFlag.VERSION, new Uint8Array(0)));
  script.push(() =>
    send(FrontendReq.SET_PROTOCOL_FEATURES, needReply(), encodeU64(SUPPORTED_PROTOCOL_FEATURES)),
  );
  script.push(() => {
    let f = offered === 0n ? device.features | (1n << 30n) : offered;
    if (!eventIdx) f &= ~(1n << 29n);
    send(FrontendReq.SET_FEATURES, needReply(), encodeU64(f));
  });
  script.push(() => {
    const a = k.open('memfd', memA);
    const b = k.open('memfd', memB);
    send(FrontendReq.SET_MEM_TABLE, needReply(), encodeMemTable([REGION_A, REGION_B]), [a, b]);
  });
  for (let q = 0; q < 3; q++) {
    script.push(() =>
      send(FrontendReq.SET_VRING_NUM, needReply(), encodeVringState({ index: q, num: ringSize })),
    );
    script.push(() =>
      send(
        FrontendReq.SET_VRING_ADDR,
        needReply(),
        encodeVringAddr({ index: q, flags: 0, ...RING(q), log: 0 }),
      ),
    );
    script.push(() => send(FrontendReq.SET_VRING_BASE, needReply(), encodeVringState({ index: q, num: 0 })));
    script.push(() =>
      send(FrontendReq.SET_VRING_CALL, needReply(), encodeVringFdIndex(q, false), [k.open('eventfd')]),
    );
    script.push(() => {
      kickFd[q] = k.open('eventfd');
      send(FrontendReq.SET_VRING_KICK, needReply(), encodeVringFdIndex(q, false), [kickFd[q]!]);
    });
    script.push(() =>
      send(FrontendReq.SET_VRING_ENABLE, needReply(), encodeVringState({ index: q, num: 1 })),
    );
  }
  script.push(() => {
    postCtrl(CtrlStart);
    kick(2);
  });
  const kickFd: number[] = [-1, -1, -1];
  let cursor = 0;

  // ---- the driver -------------------------------------------------------------------------------
  const CtrlStart = 0x0201;
  const writeDesc = (q: number, i: number, addr: number, len: number, flags: number, next: number): void => {
    const o = off(RING_GPA(q)) + 16 * (i % rings[q]!.size);
    dv.setBigUint64(o, BigInt(addr), true);
    dv.setUint32(o + 8, len >>> 0, true);
    dv.setUint16(o + 12, flags, true);
    dv.setUint16(o + 14, next, true);
  };
  const publishAvail = (q: number, head: number): void => {
    const r = rings[q]!;
    const a = off(RING_GPA(q) + 0x400);
    dv.setUint16(a + 4 + 2 * (r.availIdx % r.size), head, true);
    r.availIdx = (r.availIdx + 1) & 0xffff;
    dv.setUint16(a + 2, r.availIdx, true);
    if (eventIdx) dv.setUint16(a + 4 + 2 * r.size, 0xffff & (r.availIdx - 1), true); // used_event
  };
  const allocDescs = (q: number, n: number): number[] => {
    const r = rings[q]!;
    const out: number[] = [];
    for (let i = 0; i < n; i++) out.push((r.nextDesc + i) % r.size);
    r.nextDesc = (r.nextDesc + n) % r.size;
    return out;
  };
  const postCtrl = (type: number): void => {
    const [d0, d1] = allocDescs(2, 2) as [number, number];
    const req = allocBuf();
    const res = allocBuf();
    dv.setUint16(off(req), type, true);
    writeDesc(2, d0, req, 2, 1, d1);
    writeDesc(2, d1, res, 1, 2, 0);
    publishAvail(2, d0);
  };
  const postTxValid = (): void => {
    const [d0, d1] = allocDescs(0, 2) as [number, number];
    const req = allocBuf();
    const res = allocBuf();
    const len = inp.int(9);
    dv.setUint16(off(req), 0x0001, true);
    dv.setUint16(off(req) + 2, len, true);
    dv.setUint32(off(req) + 8, inp.chance(32) ? 0x8000 : 0, true);
    dv.setUint32(off(req) + 12, inp.u16() & 0x7ff, true);
    writeDesc(0, d0, req, 16 + len, 1, d1);
    writeDesc(0, d1, res, 1, 2, 0);
    publishAvail(0, d0);
  };
  const postHostile = (q: number): void => {
    // A chain of 1..4 descriptors with fuzzed lengths, flags, next and addresses (often zero-length).
    const n = 1 + inp.int(4);
    const ds = allocDescs(q, n);
    for (let i = 0; i < n; i++) {
      const sel = inp.int(6);
      const addr =
        sel === 0
          ? allocBuf()
          : sel === 1
            ? REGION_B.guestPhysAddr + inp.u16()
            : sel === 2
              ? inp.u32()
              : allocBuf();
      const len = inp.pick([0, 0, 1, 2, 16, 24, 80, inp.u32()]);
      let flags = inp.pick([0, 1, 2, 3, 4, 5, inp.u16()]);
      if (i < n - 1 && inp.chance(200)) flags |= 1;
      if (i === n - 1 && inp.chance(200)) flags &= ~1;
      const next =
        inp.chance(220) && i < n - 1 ? ds[i + 1]! : inp.u16() % (inp.bool() ? rings[q]!.size : 0x10000);
      writeDesc(q, ds[i]!, addr, len, flags, next);
      if ((flags & 4) !== 0 && inp.bool()) {
        // an indirect table in a buffer
        const t = allocBuf();
        for (let j = 0; j < 4; j++) {
          const o = off(t) + 16 * j;
          dv.setBigUint64(o, BigInt(allocBuf()), true);
          dv.setUint32(o + 8, inp.pick([0, 1, 16, 24]), true);
          dv.setUint16(o + 12, inp.int(8), true);
          dv.setUint16(o + 14, inp.int(6), true);
        }
        writeDesc(q, ds[i]!, t, inp.pick([16, 32, 64, 0, 17]), flags, next);
      }
    }
    publishAvail(q, inp.chance(230) ? ds[0]! : inp.u16());
  };
  const postRx = (): void => {
    const [d0] = allocDescs(1, 1) as [number];
    writeDesc(1, d0, allocBuf(), inp.pick([80, 24, 16, 8]), 2, 0);
    publishAvail(1, d0);
  };
  const kick = (q: number): void => {
    const fd = kickFd[q]!;
    const cb = k.kickWatches.get(fd);
    if (cb) cb();
    for (const poll of [...k.polls]) poll(); // rings without a kick fd are polled
  };
  const rawRingWrite = (): void => {
    const q = inp.int(3);
    const o = off(RING_GPA(q)) + inp.int(0xc00);
    const n = 1 + inp.int(4);
    for (let i = 0; i < n && o + i < memA.length; i++) memA[o + i] = inp.u8();
    if (inp.bool()) rings[q]!.availIdx = dv.getUint16(off(RING_GPA(q) + 0x400) + 2, true);
  };

  // ---- random and mutated messages --------------------------------------------------------------
  const randomFds = (): number[] => {
    const n = inp.chance(1) ? 9 : inp.pick([0, 0, 0, 1, 1, 2, 3]);
    const fds: number[] = [];
    for (let i = 0; i < n; i++) fds.push(k.open(inp.bool() ? 'memfd' : 'eventfd'));
    return fds;
  };
  const randomRegion = (): MemRegionDesc => {
    const base = inp.pick([REGION_A, REGION_B]);
    const r = { ...base };
    switch (inp.int(8)) {
      case 0:
        r.size = inp.pick([0, 1, 0x1000, 0x20000, 2 ** 53 - 1]);
        break;
      case 1:
        r.guestPhysAddr = inp.pick([0, 0x8000, 0x100000, 0x108000, 2 ** 53 - 0x1000, inp.u32()]);
        break;
      case 2:
        r.userAddr = inp.pick([UVA_BASE, UVA_BASE + 0x8000, UVA_BASE + 0x100000, inp.u32()]);
        break;
      case 3:
        r.mmapOffset = inp.pick([0, 0x8000, 0x10000, 0x18000, 0x20000, 1]);
        break;
      default:
        break;
    }
    return r;
  };
  const randomMessage = (): void => {
    const codes = Object.values(FrontendReq) as number[];
    const request = inp.chance(240) ? inp.pick(codes) : inp.u32();
    let flags = inp.pick([
      HeaderFlag.VERSION,
      HeaderFlag.VERSION | HeaderFlag.NEED_REPLY,
      (inp.u32() & ~3) | 1,
    ]);
    if (inp.chance(1)) flags = inp.u32();
    const q = inp.chance(ALWAYS_REPLY.has(request) ? 254 : 230) ? inp.int(3) : inp.u8();
    let payload: Uint8Array;
    let fds: number[] = [];
    switch (request) {
      case FrontendReq.SET_FEATURES:
      case FrontendReq.SET_PROTOCOL_FEATURES:
      case FrontendReq.SET_STATUS:
        payload = encodeU64(
          inp.pick([
            0n,
            offered,
            SUPPORTED_PROTOCOL_FEATURES,
            BigInt(inp.u32()) << BigInt(inp.int(40)),
            0xfn,
          ]),
        );
        break;
      case FrontendReq.SET_MEM_TABLE: {
        const regions = Array.from({ length: inp.chance(255) ? inp.pick([1, 2, 2, 3, 0]) : 9 }, randomRegion);
        payload = encodeMemTable(regions);
        fds = regions.map(() => k.open('memfd', inp.chance(200) ? memA : undefined));
        if (inp.chance(30)) fds.pop();
        break;
      }
      case FrontendReq.ADD_MEM_REG:
      case FrontendReq.REM_MEM_REG:
        payload = encodeSingleRegion(randomRegion());
        if (request === FrontendReq.ADD_MEM_REG || inp.chance(30))
          fds = [k.open('memfd', inp.chance(200) ? memA : undefined)];
        break;
      case FrontendReq.SET_VRING_NUM:
      case FrontendReq.SET_VRING_BASE:
      case FrontendReq.GET_VRING_BASE:
      case FrontendReq.SET_VRING_ENABLE:
        payload = encodeVringState({
          index: q,
          num: inp.pick([0, 1, 2, 16, ringSize, 0xffff, 0x10000, inp.u32()]),
        });
        break;
      case FrontendReq.SET_VRING_ADDR: {
        const a = { index: q, flags: 0, ...RING(q % 3), log: 0 };
        const which = inp.int(4);
        const v = inp.pick([
          0,
          1,
          2,
          UVA_BASE,
          UVA_BASE + 0xfff0,
          UVA_BASE + 0x10000 - 2,
          REGION_B.userAddr + 0xffff,
        ]);
        if (which === 0) a.desc = v;
        else if (which === 1) a.avail = v;
        else if (which === 2) a.used = v;
        payload = encodeVringAddr(a);
        break;
      }
      case FrontendReq.SET_VRING_KICK:
      case FrontendReq.SET_VRING_CALL:
      case FrontendReq.SET_VRING_ERR: {
        const noFd = inp.chance(40);
        payload = encodeVringFdIndex(q, noFd);
        if (!noFd || inp.chance(40)) fds = [k.open('eventfd')];
        if (request === FrontendReq.SET_VRING_KICK && fds.length === 1 && q < 3) kickFd[q] = fds[0]!;
        break;
      }
      case FrontendReq.SET_BACKEND_REQ_FD:
        payload = new Uint8Array(0);
        fds = [k.open('eventfd')];
        break;
      case FrontendReq.GET_CONFIG:
      case FrontendReq.SET_CONFIG: {
        const size = inp.pick([0, 1, 2, 4, 256, 257]);
        payload = encodeConfig({ offset: inp.pick([0, 1, 2, 255, 256, inp.u32()]), size, flags: inp.int(3) });
        break;
      }
      default:
        payload = new Uint8Array(0);
    }
    // Mutations of the payload itself: truncate, extend, flip bytes.
    const mut = inp.int(ALWAYS_REPLY.has(request) ? 100 : 10);
    if (mut === 0) payload = payload.subarray(0, inp.int(payload.length + 1));
    else if (mut === 1) payload = Uint8Array.from([...payload, ...inp.take(inp.int(48))]);
    else if (mut === 2 && payload.length > 0) {
      payload = payload.slice();
      const at = inp.int(payload.length);
      payload[at] = payload[at]! ^ (1 << inp.int(8));
    }
    if (inp.chance(12)) fds.push(...randomFds());
    send(request, flags, payload, fds, inp.chance(20));
  };

  // ---- main loop --------------------------------------------------------------------------------
  const MAX_STEPS = 400;
  try {
    while (!inp.done && steps < MAX_STEPS && !disconnected) {
      steps++;
      const op = inp.u8();
      if (op < 70) {
        if (cursor < script.length) script[cursor++]!();
        else randomMessage();
      } else if (op < 100) randomMessage();
      else if (op < 125) postTxValid();
      else if (op < 140) postHostile(inp.int(3));
      else if (op < 150) postRx();
      else if (op < 155) postCtrl(inp.pick([CtrlStart, 0x0202, inp.u16()]));
      else if (op < 190) kick(inp.int(3));
      else if (op < 205) {
        // the host interface confirms (or fails) its oldest frame
        const f = confirmQueue.shift();
        if (f && confirming) confirming.confirm(f, inp.chance(200));
      } else if (op < 215) {
        peer.transmit({
          id: inp.u16() & 0x7ff,
          extended: false,
          rtr: false,
          fd: false,
          brs: false,
          esi: false,
          len: 2,
          len8Dlc: 0,
          data: Uint8Array.of(1, 2),
          timestampNs: 0n,
          origin: 0,
        });
      } else if (op < 230) {
        const n = tasks.length;
        for (const t of tasks.splice(0, n)) t();
      } else if (op < 240) rawRingWrite();
      else if (op < 245 && confirming)
        hub.injectBusState('guest', inp.pick(['bus-off', 'error-active'] as const));
      else if (op < 250) {
        // stop a ring and restart it at the base we got back (a VM pause / resume)
        const q = inp.int(3);
        send(FrontendReq.GET_VRING_BASE, HeaderFlag.VERSION, encodeVringState({ index: q, num: 0 }));
        if (inp.bool()) {
          send(
            FrontendReq.SET_VRING_BASE,
            HeaderFlag.VERSION,
            encodeVringState({ index: q, num: rings[q]!.availIdx }),
          );
          kickFd[q] = k.open('eventfd');
          send(FrontendReq.SET_VRING_KICK, HeaderFlag.VERSION, encodeVringFdIndex(q, false), [kickFd[q]!]);
        }
      } else {
        randomMessage();
      }
      checkState();
    }
    // Drain: run pending work, confirm every frame, then check before closing.
    for (let i = 0; i < 4 && !disconnected; i++) {
      for (const t of tasks.splice(0, tasks.length)) t();
      for (let f = confirmQueue.shift(); f && confirming; f = confirmQueue.shift())
        confirming.confirm(f, true);
      checkState();
    }
  } finally {
    if (!disconnected) {
      disconnected = true;
      session.close();
    }
  }
  // ---- after close: resources ---------------------------------------------------------------------
  for (const fd of handedFds) {
    check(!k.fds.get(fd)!.open, `fd ${fd} (${k.fds.get(fd)!.kind}) leaked after close`);
  }
  for (const m of k.mappings) check(m.releases >= 1, 'a mapping was never released');
  check(k.kickWatches.size === 0, 'a kick watch outlived the session');
  check(k.polls.size === 0, 'a ring poll outlived the session');
  hub.close();
  return {
    steps,
    messages,
    disconnected: disconnected ? disconnectReason || 'end' : null,
    broken: session.broken?.code ?? null,
    txUsed: device.stats.txOk + device.stats.txNotOk,
  };
}
