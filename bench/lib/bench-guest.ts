/**
 * One benchmark guest: the TypeScript front-end (VhostUserFrontend + GuestRam) and the CAN test
 * driver (CanTestDriver) for the handshake, feature negotiation and controller START, then lean
 * hot paths straight on the DriverRings of the TX and RX queues:
 *
 * - TX: one pre-built slot per ring entry (16-byte header written once, payload re-written per
 *   frame, 1-byte result), posted through an indirect table as Linux does when INDIRECT_DESC is
 *   negotiated (2 segments -> 1 ring descriptor). Completions are reaped on the call eventfd.
 * - RX: the buffers CanTestDriver posted during probe are taken over (their addresses read back
 *   from the descriptor table) and re-posted as soon as they are used, one kick per pass.
 *
 * No per-frame allocation of our own beyond what DriverRing.add/takeUsed do (the front-end code
 * every test uses), so the figures describe that front-end, not a tuned one. We own the watchers
 * on the TX and RX call eventfds: CanTestDriver's own waits (which would create DriverQueue
 * watchers on the same fds) are never used on those two queues.
 */
import {
  CAN_HEADER_SIZE,
  CanFeature,
  CanFlag,
  CanHdr,
  CanMsgType,
} from '../../src/core/devices/can/constants.js';
import type { BufferSegment, DriverRing } from '../../src/core/virtio/driver-ring.js';
import { featureBit } from '../../src/core/virtio/features.js';
import { CAN_DRIVER_FEATURES, CanTestDriver } from '../../src/node/frontend/can-driver.js';
import type { DriverQueue } from '../../src/node/frontend/driver-queue.js';
import { VhostUserFrontend } from '../../src/node/frontend/frontend.js';
import { GuestRam } from '../../src/node/frontend/guest-ram.js';
import { type NativeWatcher, native } from '../../src/node/native/addon.js';

export interface BenchGuestOptions {
  path: string;
  /** Size of every queue (TX, RX, control). */
  queueSize: number;
  /** Accept VIRTIO_CAN_F_LATE_TX_ACK when offered. */
  lateTxAck: boolean;
  /** Post TX chains through indirect tables (what Linux does when INDIRECT_DESC is negotiated). */
  indirect?: boolean;
  /** CAN id of the frames this guest sends. */
  canId?: number;
  timeoutMs?: number;
}

export interface GuestCounters {
  /** TX chains posted. */
  sent: number;
  /** TX completions with result OK / anything else. */
  txOk: number;
  txNotOk: number;
  /** Kick eventfd writes on TX, and kicks EVENT_IDX said were not needed. */
  txKicks: number;
  txSuppressed: number;
  /** Call eventfd wake-ups handled on TX / RX. */
  txWakeups: number;
  rxWakeups: number;
  /** Frames taken from the RX used ring. */
  received: number;
  /** Received frames whose used length did not cover the header. */
  rxShort: number;
}

/** Called for every received frame: guest physical address of the buffer, used length, receive time. */
export type FrameHook = (gpa: number, len: number, nowNs: bigint) => void;

const EMPTY: readonly BufferSegment[] = Object.freeze([]);

export class BenchGuest {
  readonly fe: VhostUserFrontend;
  readonly ram: GuestRam;
  readonly drv: CanTestDriver;
  readonly counters: GuestCounters = {
    sent: 0,
    txOk: 0,
    txNotOk: 0,
    txKicks: 0,
    txSuppressed: 0,
    txWakeups: 0,
    rxWakeups: 0,
    received: 0,
    rxShort: 0,
  };
  /** Guest RAM region 0 starts at GPA 0, where every buffer of ours lives: offset == GPA. */
  private readonly dv: DataView;
  private readonly bytes: Uint8Array;
  private readonly txq: DriverQueue;
  private readonly rxq: DriverQueue;
  private readonly txRing: DriverRing;
  private readonly rxRing: DriverRing;
  private readonly size: number;
  private readonly canId: number;

  // TX slots
  private readonly bufGpa: Float64Array;
  private readonly resultGpa: Float64Array;
  private readonly readSeg: BufferSegment[][];
  private readonly writeSeg: BufferSegment[][];
  private readonly addOpts: { indirectTableGpa?: number }[];
  private readonly freeSlots: Int32Array;
  private freeTop: number;
  private readonly slotOfHead: Int32Array;
  private frameLen = 8;

  // RX buffers
  private readonly rxSeg: BufferSegment[][];
  private readonly rxGpa: Float64Array;
  private readonly bufOfHead: Int32Array;
  private readonly scratch: Int32Array;
  private readonly scratchLen: Uint32Array;

  private txWatcher: NativeWatcher | null = null;
  private rxWatcher: NativeWatcher | null = null;
  private closed = false;

  /** Runs after TX completions were reaped (the flood loop refills from here). */
  onTxSpace: (() => void) | null = null;
  /** Per received frame (latency measurement); null = just count. */
  onFrame: FrameHook | null = null;

  static async connect(opts: BenchGuestOptions): Promise<BenchGuest> {
    const fe = VhostUserFrontend.connect(opts.path, { timeoutMs: opts.timeoutMs ?? 10_000 });
    const ram = new GuestRam({ name: 'bench-guest' });
    try {
      const init = await fe.init({ numQueues: 3 });
      let features = init.features & CAN_DRIVER_FEATURES;
      if (!opts.lateTxAck) features &= ~featureBit(CanFeature.LATE_TX_ACK);
      const drv = await CanTestDriver.create(fe, ram, {
        features,
        queueSize: opts.queueSize,
        timeoutMs: opts.timeoutMs ?? 10_000,
      });
      const r = await drv.startController();
      if (r !== 0) throw new Error(`SET_CTRL_MODE_START answered ${r}`);
      return new BenchGuest(fe, ram, drv, opts);
    } catch (err) {
      fe.close();
      ram.close();
      throw err;
    }
  }

  private constructor(fe: VhostUserFrontend, ram: GuestRam, drv: CanTestDriver, opts: BenchGuestOptions) {
    this.fe = fe;
    this.ram = ram;
    this.drv = drv;
    const r0 = ram.memory.regions[0]!;
    if (r0.gpa !== 0) throw new Error('guest RAM region 0 must start at GPA 0');
    this.dv = r0.dv;
    this.bytes = r0.bytes;
    this.txq = drv.tx;
    this.rxq = drv.rx;
    this.txRing = drv.tx.ring;
    this.rxRing = drv.rx.ring;
    this.size = this.txRing.size;
    this.canId = opts.canId ?? 0x100;
    const n = this.size;
    const indirect = opts.indirect ?? true;

    this.bufGpa = new Float64Array(n);
    this.resultGpa = new Float64Array(n);
    this.readSeg = [];
    this.writeSeg = [];
    this.addOpts = [];
    this.freeSlots = new Int32Array(n);
    this.slotOfHead = new Int32Array(n).fill(-1);
    for (let s = 0; s < n; s++) {
      const buf = ram.alloc(CAN_HEADER_SIZE + 64, 8, 0);
      const result = ram.alloc(1, 1, 0);
      const table = ram.alloc(32, 16, 0);
      this.bufGpa[s] = buf;
      this.resultGpa[s] = result;
      this.readSeg.push([{ gpa: buf, len: CAN_HEADER_SIZE + 8 }]);
      this.writeSeg.push([{ gpa: result, len: 1 }]);
      this.addOpts.push(indirect ? { indirectTableGpa: table } : {});
      this.freeSlots[s] = s;
    }
    this.freeTop = n;
    this.setFrame(8, false);

    // Take over the RX buffers CanTestDriver posted during probe: heads 0..n-1 of a fresh ring.
    this.rxSeg = [];
    this.rxGpa = new Float64Array(n);
    this.bufOfHead = new Int32Array(n).fill(-1);
    this.scratch = new Int32Array(n);
    this.scratchLen = new Uint32Array(n);
    const rxLen = drv.rxBufferSize;
    for (let i = 0; i < n; i++) {
      const d = this.rxRing.readDesc(i);
      if ((d.flags & 2) === 0 || d.len !== rxLen)
        throw new Error(`RX descriptor ${i} is not a posted buffer`);
      this.rxSeg.push([{ gpa: d.addr, len: rxLen }]);
      this.rxGpa[i] = d.addr;
      this.bufOfHead[i] = i;
    }
    if (this.rxRing.inFlight !== n)
      throw new Error(`expected ${n} RX buffers posted, ${this.rxRing.inFlight}`);
  }

  get fdNegotiated(): boolean {
    return this.drv.fdNegotiated;
  }

  get features(): bigint {
    return this.drv.features;
  }

  /** TX slots not in flight. */
  get txFree(): number {
    return this.freeTop;
  }

  get queueSize(): number {
    return this.size;
  }

  /** Sets the frame every later post() sends: `len` payload bytes, classic or FD. */
  setFrame(len: number, fd: boolean): void {
    if (this.freeTop !== this.size) throw new Error('setFrame() with TX in flight');
    this.frameLen = len;
    for (let s = 0; s < this.size; s++) {
      const b = this.bufGpa[s]!;
      this.dv.setUint16(b + CanHdr.MSG_TYPE, CanMsgType.TX, true);
      this.dv.setUint16(b + CanHdr.LENGTH, len, true);
      this.dv.setUint8(b + CanHdr.RESERVED_CLASSIC_DLC, 0);
      this.dv.setUint8(b + CanHdr.PADDING, 0);
      this.dv.setUint16(b + CanHdr.RESERVED_XL_PRIORITY, 0, true);
      this.dv.setUint32(b + CanHdr.FLAGS, fd ? CanFlag.FD : 0, true);
      this.dv.setUint32(b + CanHdr.CAN_ID, this.canId, true);
      this.bytes.fill(0, b + CAN_HEADER_SIZE, b + CAN_HEADER_SIZE + 64);
      this.readSeg[s] = [{ gpa: b, len: CAN_HEADER_SIZE + len }];
    }
  }

  // ---- TX ---------------------------------------------------------------------------------------

  /**
   * Posts one frame (not yet published: call kick()). The first 8 payload bytes carry `stamp`
   * (a sequence number or a process.hrtime.bigint() time). Returns false when no slot is free.
   */
  post(stamp: bigint): boolean {
    if (this.freeTop === 0) return false;
    const s = this.freeSlots[--this.freeTop]!;
    const b = this.bufGpa[s]!;
    if (this.frameLen >= 8) this.dv.setBigUint64(b + CAN_HEADER_SIZE, stamp, true);
    const head = this.txRing.add(this.readSeg[s]!, this.writeSeg[s]!, this.addOpts[s]!);
    this.slotOfHead[head] = s;
    this.counters.sent++;
    return true;
  }

  /** post() for throughput runs: a 32-bit sequence number instead of a bigint stamp. */
  postSeq(seq: number): boolean {
    if (this.freeTop === 0) return false;
    const s = this.freeSlots[--this.freeTop]!;
    if (this.frameLen >= 4) this.dv.setUint32(this.bufGpa[s]! + CAN_HEADER_SIZE, seq, true);
    const head = this.txRing.add(this.readSeg[s]!, this.writeSeg[s]!, this.addOpts[s]!);
    this.slotOfHead[head] = s;
    this.counters.sent++;
    return true;
  }

  /** Publishes posted frames and kicks unless EVENT_IDX says the device does not need it. */
  kick(): void {
    if (this.txq.kick()) this.counters.txKicks++;
    else this.counters.txSuppressed++;
  }

  /** Takes every TX completion, frees the slots; returns how many. */
  reapTx(): number {
    const ring = this.txRing;
    let n = 0;
    do {
      const used = ring.takeUsed();
      for (let i = 0; i < used.length; i++) {
        const u = used[i]!;
        const s = this.slotOfHead[u.head]!;
        if (s < 0) continue;
        this.slotOfHead[u.head] = -1;
        if (u.len >= 1 && this.bytes[this.resultGpa[s]!] === 0) this.counters.txOk++;
        else this.counters.txNotOk++;
        this.freeSlots[this.freeTop++] = s;
        n++;
      }
    } while (ring.hasUsed());
    return n;
  }

  /** Watch the TX call eventfd: completions are reaped on every interrupt, then onTxSpace runs. */
  watchTx(): void {
    if (this.txWatcher !== null || this.closed) return;
    this.txRing.suppressInterrupts(false);
    const fd = this.txq.callFd;
    this.txWatcher = new native.Watcher(fd, (status) => {
      if (status < 0 || this.closed) return;
      native.eventfdRead(fd);
      this.counters.txWakeups++;
      this.reapTx();
      this.onTxSpace?.();
    });
    this.txWatcher.start(native.READABLE);
  }

  /** No TX interrupts: the caller reaps completions itself (paced and ping-pong senders). */
  unwatchTx(): void {
    this.txWatcher?.close();
    this.txWatcher = null;
    this.txRing.suppressInterrupts(true);
  }

  // ---- RX ---------------------------------------------------------------------------------------

  /** Watch the RX call eventfd: frames are counted (and passed to onFrame), buffers re-posted. */
  watchRx(): void {
    if (this.rxWatcher !== null || this.closed) return;
    const fd = this.rxq.callFd;
    this.rxWatcher = new native.Watcher(fd, (status) => {
      if (status < 0 || this.closed) return;
      native.eventfdRead(fd);
      this.counters.rxWakeups++;
      this.pollRx();
    });
    this.rxWatcher.start(native.READABLE);
    this.pollRx(); // frames that arrived before the watcher
  }

  /** Takes used RX buffers, hands them to onFrame, re-posts them with one kick per pass. */
  pollRx(): number {
    const ring = this.rxRing;
    let total = 0;
    for (;;) {
      const used = ring.takeUsed();
      const n = used.length;
      if (n === 0) break;
      const hook = this.onFrame;
      const now = hook === null ? 0n : process.hrtime.bigint();
      // Resolve every head before re-posting: takeUsed() already freed them, so a re-post may
      // reuse a head of this batch.
      for (let i = 0; i < n; i++) {
        const u = used[i]!;
        this.scratch[i] = this.bufOfHead[u.head]!;
        this.scratchLen[i] = u.len;
        this.bufOfHead[u.head] = -1;
      }
      for (let i = 0; i < n; i++) {
        const b = this.scratch[i]!;
        if (b < 0) continue;
        const len = this.scratchLen[i]!;
        if (len < CAN_HEADER_SIZE) this.counters.rxShort++;
        if (hook !== null) hook(this.rxGpa[b]!, len, now);
        const head = ring.add(EMPTY, this.rxSeg[b]!);
        this.bufOfHead[head] = b;
      }
      this.counters.received += n;
      total += n;
      this.rxq.kick();
      if (!ring.hasUsed()) break;
    }
    return total;
  }

  /** The 8-byte stamp at the start of a received frame's payload. */
  stampAt(gpa: number): bigint {
    return this.dv.getBigUint64(gpa + CAN_HEADER_SIZE, true);
  }

  // ---- life cycle -------------------------------------------------------------------------------

  /** Waits until every posted TX frame completed (reaping by polling), or the time limit. */
  async drainTx(timeoutMs: number): Promise<boolean> {
    const end = Date.now() + timeoutMs;
    while (this.freeTop < this.size) {
      this.reapTx();
      if (this.freeTop === this.size) break;
      if (Date.now() > end) return false;
      await new Promise((r) => setTimeout(r, 2));
    }
    return true;
  }

  /** Closes watchers first, then the front-end (its queues close the eventfds) and guest RAM. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.txWatcher?.close();
    this.rxWatcher?.close();
    this.txWatcher = null;
    this.rxWatcher = null;
    this.onFrame = null;
    this.onTxSpace = null;
    this.fe.close();
    this.ram.close();
  }
}
