/**
 * The device side of a split virtqueue (virtio 1.x section 2.7).
 *
 * Memory ordering (VIRTIO 1.x 2.7; docs/decisions.md "Ring memory ordering"): the guest driver runs
 * concurrently on another CPU. Fields the driver writes and we poll (avail.idx, used_event,
 * avail.flags) are read with Atomics.load, which is sequentially consistent and therefore at least
 * an acquire: descriptor and ring-entry reads that follow it cannot be satisfied from before it.
 * The used-ring elements are written with plain stores and then used.idx is published with
 * Atomics.store (at least a release), so the driver that sees the new index also sees the elements.
 * EVENT_IDX needs a full barrier between publishing used.idx and reading used_event (and between
 * writing avail_event and re-reading avail.idx): a SeqCst store followed by a SeqCst load gives
 * exactly that. V8 emits real hardware atomics for these (a builtin call on Node 20, which is also
 * a compiler barrier).
 *
 * Ring addresses are front-end virtual addresses (SET_VRING_ADDR); they are translated to a region
 * and an offset when the ring is attached and again whenever the memory table changes. Each ring
 * structure must lie inside one region. Descriptor addresses are guest physical.
 */
import type { GuestMemory, RegionView } from '../memory/guest-memory.js';
import { VhostError } from '../util/errors.js';
import { hex } from '../util/hex.js';
import type { DescriptorChain } from './descriptor-chain.js';
import { Desc, MAX_INDIRECT_DESCRIPTORS, VRING_AVAIL_F_NO_INTERRUPT } from './features.js';

export interface RingAddresses {
  /** Front-end virtual addresses, as received in SET_VRING_ADDR. */
  readonly desc: number;
  readonly avail: number;
  readonly used: number;
}

export interface QueueOptions {
  readonly eventIdx: boolean;
  readonly indirect: boolean;
}

export interface QueueStats {
  chains: number;
  notifications: number;
  suppressedNotifications: number;
  badChains: number;
}

interface Translated {
  region: RegionView;
  off: number; // byte offset of the structure inside region.bytes
}

const TWO_32 = 0x1_0000_0000;

export class SplitQueue {
  readonly index: number;
  readonly size: number;
  /** Next avail-ring slot to consume (free-running 16-bit counter). */
  lastAvail: number;
  /** Our shadow of used.idx (free-running 16-bit counter). */
  usedIdx: number;
  readonly stats: QueueStats = { chains: 0, notifications: 0, suppressedNotifications: 0, badChains: 0 };

  private opts: QueueOptions;
  private mem: GuestMemory;
  private readonly addrs: RingAddresses;
  private desc!: Translated;
  private avail!: Translated;
  private used!: Translated;
  /** used.idx value at the last notification decision (EVENT_IDX "old" index). */
  private signalledUsed = 0;
  private signalledValid = false;
  private readonly notifyFn: () => void;

  constructor(
    index: number,
    size: number,
    base: number,
    addrs: RingAddresses,
    mem: GuestMemory,
    opts: QueueOptions,
    notify: () => void,
  ) {
    this.index = index;
    this.size = size;
    this.lastAvail = base & 0xffff;
    this.usedIdx = base & 0xffff;
    this.addrs = addrs;
    this.mem = mem;
    this.opts = opts;
    this.notifyFn = notify;
    this.translate(mem);
    // Start from whatever used.idx the ring holds: after a restart with SET_VRING_BASE the driver's
    // used index and ours must agree, and the ring memory is the truth for the used side.
    this.usedIdx = this.loadU16(this.used, 2);
  }

  /** Re-resolve ring addresses against a new memory table (SET_MEM_TABLE while running). */
  translate(mem: GuestMemory): void {
    const n = this.size;
    this.desc = this.resolve(mem, this.addrs.desc, Desc.SIZE * n, 16, 'descriptor table');
    this.avail = this.resolve(mem, this.addrs.avail, 6 + 2 * n, 2, 'avail ring');
    this.used = this.resolve(mem, this.addrs.used, 6 + 8 * n, 4, 'used ring');
    this.mem = mem;
  }

  setOptions(opts: QueueOptions): void {
    this.opts = opts;
  }

  private resolve(mem: GuestMemory, uva: number, len: number, align: number, what: string): Translated {
    const i = mem.findUva(uva, len);
    if (i < 0) {
      throw new VhostError(
        'ERR_VQ_RING_ADDR',
        `queue ${this.index}: ${what} at ${hex(uva)} is not in guest memory`,
      );
    }
    const region = mem.regions[i]!;
    const off = uva - region.uva;
    if ((region.bytes.byteOffset + off) % align !== 0 || (align > 1 && region.u16 === null)) {
      throw new VhostError('ERR_VQ_RING_ADDR', `queue ${this.index}: ${what} at ${hex(uva)} is misaligned`);
    }
    return { region, off };
  }

  private loadU16(t: Translated, byteOff: number): number {
    return Atomics.load(t.region.u16!, (t.off + byteOff) >>> 1);
  }

  private storeU16(t: Translated, byteOff: number, v: number): void {
    Atomics.store(t.region.u16!, (t.off + byteOff) >>> 1, v);
  }

  /** Number of chains the driver has made available that we have not consumed. */
  pending(): number {
    const idx = this.loadU16(this.avail, 2);
    const n = (idx - this.lastAvail) & 0xffff;
    if (n > this.size) {
      throw new VhostError(
        'ERR_VQ_AVAIL_IDX',
        `queue ${this.index}: avail index ${idx} is ${n} ahead of ${this.lastAvail} (queue size ${this.size})`,
      );
    }
    return n;
  }

  /**
   * Consumes the next available chain into `chain`. Returns false when none is available.
   * Throws a VhostError when the chain is malformed: the slot is consumed and `chain.head` is set,
   * so the caller can return it with used length 0 (docs/protocol-notes.md 2) — unless the head index
   * itself is invalid (ERR_VQ_DESC_INDEX with chain.head = -1), which breaks the ring.
   */
  next(chain: DescriptorChain): boolean {
    chain.reset(-1); // a corrupt avail index must not leave a stale head behind
    if (this.pending() === 0) return false;
    const slot = this.lastAvail % this.size;
    const head = this.avail.region.dv.getUint16(this.avail.off + 4 + 2 * slot, true);
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    this.stats.chains++;
    if (head >= this.size) {
      throw new VhostError(
        'ERR_VQ_DESC_INDEX',
        `queue ${this.index}: head ${head} >= queue size ${this.size}`,
      );
    }
    chain.reset(head);
    try {
      this.walk(chain, head);
    } catch (err) {
      this.stats.badChains++;
      throw err;
    }
    return true;
  }

  private walk(chain: DescriptorChain, head: number): void {
    this.walkTable(chain, head, this.desc.region.dv, this.desc.off, this.size, false);
  }

  private walkIndirect(chain: DescriptorChain, head: number, tableAddr: number, tableLen: number): void {
    if (tableAddr < 0 || tableLen === 0 || tableLen % Desc.SIZE !== 0) {
      throw new VhostError(
        'ERR_VQ_INDIRECT',
        `queue ${this.index}: indirect table length ${tableLen} invalid`,
      );
    }
    const n = tableLen / Desc.SIZE;
    if (n > MAX_INDIRECT_DESCRIPTORS) {
      throw new VhostError(
        'ERR_VQ_INDIRECT',
        `queue ${this.index}: indirect table of ${n} descriptors is too large`,
      );
    }
    const ri = this.mem.findGpa(tableAddr, tableLen);
    if (ri < 0) {
      throw new VhostError(
        'ERR_VQ_DESC_ADDR',
        `queue ${this.index}: indirect table at ${hex(tableAddr)} unmapped`,
      );
    }
    chain.indirect = true;
    const region = this.mem.regions[ri]!;
    this.walkTable(chain, head, region.dv, tableAddr - region.gpa, n, true);
  }

  /**
   * Follows a chain through a descriptor table of `n` entries at `base` in `dv`: the ring's own
   * table from `head`, or an indirect table from entry 0. Loops, out-of-range `next`, readable after
   * writable and misplaced indirect descriptors are errors.
   */
  private walkTable(
    chain: DescriptorChain,
    head: number,
    dv: DataView,
    base: number,
    n: number,
    indirect: boolean,
  ): void {
    const what = indirect ? 'indirect chain' : 'chain';
    let i = indirect ? 0 : head;
    let seen = 0;
    let writable = false;
    for (;;) {
      if (++seen > n) {
        throw new VhostError('ERR_VQ_DESC_LOOP', `queue ${this.index}: ${what} from head ${head} loops`);
      }
      const o = base + Desc.SIZE * i;
      const addr = this.u64(dv, o);
      const len = dv.getUint32(o + 8, true);
      const flags = dv.getUint16(o + 12, true);
      const next = dv.getUint16(o + 14, true);
      if (flags & Desc.F_INDIRECT) {
        if (indirect) {
          throw new VhostError('ERR_VQ_INDIRECT', `queue ${this.index}: nested indirect table`);
        }
        if (!this.opts.indirect) {
          throw new VhostError(
            'ERR_VQ_INDIRECT',
            `queue ${this.index}: indirect descriptor without INDIRECT_DESC`,
          );
        }
        if (flags & Desc.F_NEXT || chain.count > 0) {
          // virtio 1.x 2.7.5.3.1: an indirect descriptor is the only one in its chain (no NEXT).
          throw new VhostError(
            'ERR_VQ_INDIRECT',
            `queue ${this.index}: indirect descriptor chained with others`,
          );
        }
        this.walkIndirect(chain, head, addr, len);
        return;
      }
      if (flags & Desc.F_WRITE) writable = true;
      else if (writable) {
        throw new VhostError(
          'ERR_VQ_DESC_ORDER',
          `queue ${this.index}: readable descriptor after a writable one`,
        );
      }
      this.addSegment(chain, addr, len, writable);
      if (!(flags & Desc.F_NEXT)) return;
      if (next >= n) {
        throw new VhostError(
          'ERR_VQ_DESC_INDEX',
          indirect
            ? `queue ${this.index}: indirect next ${next} >= table size ${n}`
            : `queue ${this.index}: next ${next} >= queue size ${n}`,
        );
      }
      i = next;
    }
  }

  private addSegment(chain: DescriptorChain, addr: number, len: number, writable: boolean): void {
    if (len === 0) return;
    if (addr < 0 || !this.mem.isMapped(addr, len)) {
      throw new VhostError(
        'ERR_VQ_DESC_ADDR',
        `queue ${this.index}: buffer ${addr < 0 ? 'beyond 2^53' : hex(addr)}+${len} is not in guest memory`,
      );
    }
    chain.push(addr, len, writable);
  }

  /** A little-endian u64, or -1 when it is not exactly representable (no guest has such addresses). */
  private u64(dv: DataView, o: number): number {
    const lo = dv.getUint32(o, true);
    const hi = dv.getUint32(o + 4, true);
    if (hi >= 0x20_0000) return -1;
    return hi * TWO_32 + lo;
  }

  /** Writes one used element; it becomes visible to the driver at the next publish(). */
  pushUsed(head: number, len: number): void {
    const slot = this.usedIdx % this.size;
    const dv = this.used.region.dv;
    const o = this.used.off + 4 + 8 * slot;
    dv.setUint32(o, head, true);
    dv.setUint32(o + 4, len, true);
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
  }

  /**
   * Publishes used.idx (release) and signals the driver unless it asked not to be. Call once per
   * batch: one interrupt covers every element pushed since the last call.
   */
  publish(): void {
    const old = this.loadU16(this.used, 2);
    if (old === this.usedIdx) return;
    this.storeU16(this.used, 2, this.usedIdx);
    if (this.needsNotification(old, this.usedIdx)) {
      this.stats.notifications++;
      this.notifyFn();
    } else {
      this.stats.suppressedNotifications++;
    }
  }

  private needsNotification(old: number, now: number): boolean {
    if (this.opts.eventIdx) {
      // virtio 1.x 2.7.10 / vring_need_event(): notify when used_event lies in [old, now).
      // The SeqCst store of used.idx above and this SeqCst load form the required full barrier.
      const prev = this.signalledValid ? this.signalledUsed : old;
      this.signalledUsed = now;
      this.signalledValid = true;
      const event = this.loadU16(this.avail, 4 + 2 * this.size);
      return ((now - event - 1) & 0xffff) < ((now - prev) & 0xffff);
    }
    return (this.loadU16(this.avail, 0) & VRING_AVAIL_F_NO_INTERRUPT) === 0;
  }

  /**
   * Asks the driver to kick when it adds buffers past what we consumed, and tells whether new
   * buffers arrived meanwhile (the caller then processes again instead of sleeping).
   */
  armKick(): boolean {
    if (this.opts.eventIdx) {
      // avail_event = lastAvail: the driver kicks when it moves avail.idx past it (2.7.10). The SeqCst
      // store + SeqCst load pair is the full barrier that closes the race with a concurrent add.
      this.storeU16(this.used, 4 + 8 * this.size, this.lastAvail);
    }
    return this.pending() > 0;
  }

  /** Forget the EVENT_IDX history (after the driver may have missed a signal, e.g. on restart). */
  resetSignalling(): void {
    this.signalledValid = false;
  }

  /** Force a call notification (used when an interrupt may have been lost). */
  kickDriver(): void {
    this.stats.notifications++;
    this.notifyFn();
  }
}
