/**
 * The DRIVER side of a split virtqueue (virtio 1.x section 2.7), over guest memory: what a guest
 * virtio driver (Linux drivers/virtio/virtio_ring.c) does with the descriptor table, the avail ring
 * and the used ring. The test front-end uses it to play the guest; SplitQueue is the device side.
 *
 * Memory ordering mirrors split-queue.ts from the other end. Descriptors and avail-ring entries are
 * written with plain stores and then avail.idx is published with Atomics.store (sequentially
 * consistent, so at least a release): a device that sees the new index also sees the entries
 * (virtio 2.7.13.2 "the driver MUST perform a suitable memory barrier before the idx update").
 * used.idx is read with Atomics.load (at least an acquire) before the used elements it covers.
 * EVENT_IDX needs a full barrier between publishing avail.idx and reading avail_event, and between
 * writing used_event and re-reading used.idx (virtio_ring.c virtio_mb()): an Atomics.store followed
 * by an Atomics.load on the same Uint16Array gives exactly that.
 *
 * Ring addresses here are guest physical (the driver's view); the front-end translates them to its
 * own user addresses for SET_VRING_ADDR. Each ring structure must lie inside one region.
 */
import type { GuestMemory, RegionView } from '../memory/guest-memory.js';
import { Desc, VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY } from './features.js';

export type DriverRingErrorCode =
  /** A ring structure or indirect table is not inside one region of guest memory, or misaligned. */
  | 'ERR_DRIVER_RING_ADDR'
  /** Not enough free descriptors for the chain. */
  | 'ERR_DRIVER_RING_FULL'
  /** A bad argument (empty chain, queue size not a power of two, index out of range). */
  | 'ERR_DRIVER_RING_ARG';

export class DriverRingError extends Error {
  readonly code: DriverRingErrorCode;
  constructor(code: DriverRingErrorCode, message: string) {
    super(message);
    this.name = 'DriverRingError';
    this.code = code;
  }
}

export interface DriverRingLayout {
  /** Queue size: a power of two, 1..32768. */
  readonly size: number;
  /** Guest physical addresses, aligned 16 / 2 / 4 (virtio 2.7 "Alignment requirements"). */
  readonly descGpa: number;
  readonly availGpa: number;
  readonly usedGpa: number;
}

export interface DriverRingOptions {
  /** VIRTIO_RING_F_EVENT_IDX negotiated: use used_event / avail_event instead of the flags. */
  readonly eventIdx: boolean;
}

/** One guest buffer segment. */
export interface BufferSegment {
  readonly gpa: number;
  readonly len: number;
}

export interface UsedEntry {
  /** Head descriptor index from the used element. */
  readonly head: number;
  /** Bytes the device says it wrote. */
  readonly len: number;
}

/** A raw descriptor, for tests that build hostile rings. */
export interface RawDescriptor {
  readonly addr: number;
  readonly len: number;
  readonly flags: number;
  readonly next: number;
}

interface Place {
  region: RegionView;
  off: number;
}

const TWO_32 = 0x1_0000_0000;

export const RING_ALIGN = { desc: 16, avail: 2, used: 4 } as const;

/** Bytes of each ring part for a queue of `size` entries (with the EVENT_IDX trailer). */
export function ringSizes(size: number): { desc: number; avail: number; used: number } {
  return { desc: Desc.SIZE * size, avail: 6 + 2 * size, used: 6 + 8 * size };
}

export class DriverRing {
  readonly size: number;
  readonly layout: DriverRingLayout;
  private readonly mem: GuestMemory;
  private readonly eventIdx: boolean;
  private readonly desc: Place;
  private readonly avail: Place;
  private readonly used: Place;

  /** Free descriptor indices (a stack; Linux uses a list threaded through `next`, same effect). */
  private readonly freeList: Uint16Array;
  private freeTop = 0;
  /** Per head: the descriptors its chain holds (ring descriptors, not indirect-table ones). */
  private readonly chains: (number[] | undefined)[];
  /** Our shadow of avail.idx (free-running 16-bit): entries up to it are written, maybe not published. */
  private availShadow = 0;
  /** avail.idx at the last kickPrepare() (Linux: avail_idx_shadow - num_added). */
  private kickedAvail = 0;
  private lastUsedIdx = 0;
  private interruptsOff = false;
  private unexpected = 0;

  constructor(mem: GuestMemory, layout: DriverRingLayout, opts: DriverRingOptions) {
    const n = layout.size;
    if (!Number.isInteger(n) || n < 1 || n > 32768 || (n & (n - 1)) !== 0) {
      throw new DriverRingError('ERR_DRIVER_RING_ARG', `queue size ${n} is not a power of two in 1..32768`);
    }
    this.size = n;
    this.layout = layout;
    this.mem = mem;
    this.eventIdx = opts.eventIdx;
    const sz = ringSizes(n);
    this.desc = this.place(layout.descGpa, sz.desc, RING_ALIGN.desc, 'descriptor table');
    this.avail = this.place(layout.availGpa, sz.avail, RING_ALIGN.avail, 'avail ring');
    this.used = this.place(layout.usedGpa, sz.used, RING_ALIGN.used, 'used ring');
    this.freeList = new Uint16Array(n);
    this.chains = new Array<number[] | undefined>(n).fill(undefined);
    this.resetFree();
  }

  private place(gpa: number, len: number, align: number, what: string): Place {
    const i = this.mem.findGpa(gpa, len);
    if (i < 0) {
      throw new DriverRingError(
        'ERR_DRIVER_RING_ADDR',
        `${what} at 0x${gpa.toString(16)}+${len} is unmapped`,
      );
    }
    const region = this.mem.regions[i]!;
    const off = gpa - region.gpa;
    if (region.u16 === null || (region.bytes.byteOffset + off) % align !== 0) {
      throw new DriverRingError('ERR_DRIVER_RING_ADDR', `${what} at 0x${gpa.toString(16)} is misaligned`);
    }
    return { region, off };
  }

  private resetFree(): void {
    // Hand out descriptors 0, 1, 2, ... first (like a freshly initialised Linux ring).
    for (let i = 0; i < this.size; i++) this.freeList[i] = this.size - 1 - i;
    this.freeTop = this.size;
    this.chains.fill(undefined);
  }

  private load16(p: Place, byteOff: number): number {
    return Atomics.load(p.region.u16!, (p.off + byteOff) >>> 1);
  }

  private store16(p: Place, byteOff: number, v: number): void {
    Atomics.store(p.region.u16!, (p.off + byteOff) >>> 1, v & 0xffff);
  }

  /**
   * Zeroes the three ring parts and frees every descriptor. `startIdx` (default 0) sets avail.idx,
   * used.idx and used_event to the same value, for rings that start at a non-zero base (the device
   * is then given SET_VRING_BASE(startIdx)).
   */
  init(startIdx = 0): void {
    const sz = ringSizes(this.size);
    this.desc.region.bytes.fill(0, this.desc.off, this.desc.off + sz.desc);
    this.avail.region.bytes.fill(0, this.avail.off, this.avail.off + sz.avail);
    this.used.region.bytes.fill(0, this.used.off, this.used.off + sz.used);
    const s = startIdx & 0xffff;
    this.availShadow = s;
    this.kickedAvail = s;
    this.lastUsedIdx = s;
    this.interruptsOff = false;
    this.unexpected = 0;
    this.store16(this.used, 2, s);
    this.store16(this.avail, 4 + 2 * this.size, s); // used_event: interrupt on the first used entry
    this.store16(this.avail, 2, s);
    this.resetFree();
  }

  /** Descriptors not held by an outstanding chain. */
  get freeCount(): number {
    return this.freeTop;
  }

  /** Chains added and not yet returned through the used ring. */
  get inFlight(): number {
    let n = 0;
    for (const c of this.chains) if (c !== undefined) n++;
    return n;
  }

  /** Our avail index (including added but unpublished entries). */
  get availIdx(): number {
    return this.availShadow;
  }

  /** avail.idx as currently stored in guest memory. */
  get publishedAvailIdx(): number {
    return this.load16(this.avail, 2);
  }

  /** The used index up to which entries have been taken. */
  get lastUsed(): number {
    return this.lastUsedIdx;
  }

  /** used.idx as the device last published it. */
  get usedIdx(): number {
    return this.load16(this.used, 2);
  }

  /** Used elements whose head was not an outstanding chain (a device bug, or raw test chains). */
  get unexpectedUsed(): number {
    return this.unexpected;
  }

  /**
   * Adds one chain: `readable` segments first, then `writable` ones (virtio 2.7.4). With
   * `indirectTableGpa` the segments go into an indirect table written there (16 bytes per
   * segment) and the chain takes a single ring descriptor (virtio 2.7.5.3). The avail entry is
   * written but not published: call publish() (or kickPrepare()) to make it visible.
   * Returns the head index. Throws ERR_DRIVER_RING_FULL without changing anything when there are
   * not enough free descriptors.
   */
  add(
    readable: readonly BufferSegment[],
    writable: readonly BufferSegment[],
    opts: { indirectTableGpa?: number } = {},
  ): number {
    const total = readable.length + writable.length;
    if (total === 0) throw new DriverRingError('ERR_DRIVER_RING_ARG', 'a chain needs at least one segment');
    const indirect = opts.indirectTableGpa !== undefined;
    const need = indirect ? 1 : total;
    if (need > this.freeTop) {
      throw new DriverRingError(
        'ERR_DRIVER_RING_FULL',
        `chain of ${need} descriptors, ${this.freeTop} free (queue size ${this.size})`,
      );
    }
    let head: number;
    if (indirect) {
      const tableGpa = opts.indirectTableGpa!;
      const t = this.place(tableGpa, Desc.SIZE * total, RING_ALIGN.desc, 'indirect table');
      let i = 0;
      for (const s of readable) {
        this.writeDescAt(t, i, s.gpa, s.len, i + 1 < total ? Desc.F_NEXT : 0, i + 1 < total ? i + 1 : 0);
        i++;
      }
      for (const s of writable) {
        const more = i + 1 < total;
        this.writeDescAt(t, i, s.gpa, s.len, Desc.F_WRITE | (more ? Desc.F_NEXT : 0), more ? i + 1 : 0);
        i++;
      }
      head = this.freeList[--this.freeTop]!;
      this.writeDescAt(this.desc, head, tableGpa, Desc.SIZE * total, Desc.F_INDIRECT, 0);
      this.chains[head] = [head];
    } else {
      const ids: number[] = [];
      for (let k = 0; k < total; k++) ids.push(this.freeList[--this.freeTop]!);
      let k = 0;
      for (const s of readable) {
        const more = k + 1 < total;
        this.writeDescAt(this.desc, ids[k]!, s.gpa, s.len, more ? Desc.F_NEXT : 0, more ? ids[k + 1]! : 0);
        k++;
      }
      for (const s of writable) {
        const more = k + 1 < total;
        this.writeDescAt(
          this.desc,
          ids[k]!,
          s.gpa,
          s.len,
          Desc.F_WRITE | (more ? Desc.F_NEXT : 0),
          more ? ids[k + 1]! : 0,
        );
        k++;
      }
      head = ids[0]!;
      this.chains[head] = ids;
    }
    this.pushAvailRaw(head);
    return head;
  }

  private writeDescAt(p: Place, i: number, addr: number, len: number, flags: number, next: number): void {
    const dv = p.region.dv;
    const o = p.off + Desc.SIZE * i;
    dv.setUint32(o, addr % TWO_32, true);
    dv.setUint32(o + 4, Math.floor(addr / TWO_32), true);
    dv.setUint32(o + 8, len, true);
    dv.setUint16(o + 12, flags, true);
    dv.setUint16(o + 14, next, true);
  }

  /**
   * Publishes every added chain: avail.idx = our shadow, with a release store. Returns the new
   * avail index.
   */
  publish(): number {
    this.store16(this.avail, 2, this.availShadow);
    return this.availShadow;
  }

  /**
   * Whether the device wants a kick for avail moving from `oldAvail` to `newAvail`
   * (virtqueue_kick_prepare_split). With EVENT_IDX: vring_need_event(avail_event, new, old), i.e.
   * kick when avail_event lies in [old, new). Without: unless the device set used.flags NO_NOTIFY.
   * Call after publish(): the Atomics.store of avail.idx and the Atomics.load here form the full
   * barrier the spec requires between the two.
   */
  needsKick(oldAvail: number, newAvail: number): boolean {
    if (this.eventIdx) {
      const event = this.load16(this.used, 4 + 8 * this.size);
      return ((newAvail - event - 1) & 0xffff) < ((newAvail - oldAvail) & 0xffff);
    }
    return (this.load16(this.used, 0) & VRING_USED_F_NO_NOTIFY) === 0;
  }

  /**
   * publish() plus needsKick() for everything added since the previous kickPrepare() (what Linux's
   * virtqueue_kick_prepare does). Returns whether the caller should notify the device.
   */
  kickPrepare(): boolean {
    const old = this.kickedAvail;
    const now = this.publish();
    this.kickedAvail = now;
    if (old === now) return false;
    return this.needsKick(old, now);
  }

  /** True when the device has published used entries we have not taken. */
  hasUsed(): boolean {
    return this.load16(this.used, 2) !== this.lastUsedIdx;
  }

  /**
   * Takes every used element published since the last call, in order, and frees the descriptors of
   * their chains. With EVENT_IDX and interrupts on, then sets used_event = lastUsed so that the
   * device interrupts for the next element (as virtqueue_get_buf does).
   */
  takeUsed(): UsedEntry[] {
    const out: UsedEntry[] = [];
    const end = this.load16(this.used, 2); // acquire: the elements below are read after it
    const dv = this.used.region.dv;
    while (this.lastUsedIdx !== end) {
      const slot = this.lastUsedIdx % this.size;
      const o = this.used.off + 4 + 8 * slot;
      const head = dv.getUint32(o, true);
      const len = dv.getUint32(o + 4, true);
      this.lastUsedIdx = (this.lastUsedIdx + 1) & 0xffff;
      const chain = head < this.size ? this.chains[head] : undefined;
      if (chain === undefined) this.unexpected++;
      else {
        this.chains[head] = undefined;
        for (let k = chain.length - 1; k >= 0; k--) this.freeList[this.freeTop++] = chain[k]!;
      }
      out.push({ head, len });
    }
    if (this.eventIdx && !this.interruptsOff) this.store16(this.avail, 4 + 2 * this.size, this.lastUsedIdx);
    return out;
  }

  /** Writes used_event (EVENT_IDX): the device interrupts once used.idx moves past `idx`. */
  setUsedEvent(idx: number): void {
    this.store16(this.avail, 4 + 2 * this.size, idx);
  }

  /** The used_event value currently in the avail ring. */
  get usedEvent(): number {
    return this.load16(this.avail, 4 + 2 * this.size);
  }

  /** The avail_event value the device wrote into the used ring (EVENT_IDX). */
  get availEvent(): number {
    return this.load16(this.used, 4 + 8 * this.size);
  }

  /** used.flags as the device wrote them. */
  get usedFlags(): number {
    return this.load16(this.used, 0);
  }

  /**
   * Asks the device not to interrupt (`on`) or to interrupt again. Without EVENT_IDX this is
   * avail.flags NO_INTERRUPT. With EVENT_IDX the device ignores the flag, so used_event is also
   * moved: to lastUsed - 1 (never reached until the index wraps) when off, back to lastUsed when
   * on (virtqueue_disable_cb / virtqueue_enable_cb). Returns whether used entries are already
   * waiting (the race virtqueue_enable_cb reports), checked after the barrier of the stores.
   */
  suppressInterrupts(on: boolean): boolean {
    this.interruptsOff = on;
    this.store16(this.avail, 0, on ? VRING_AVAIL_F_NO_INTERRUPT : 0);
    if (this.eventIdx) this.setUsedEvent(on ? this.lastUsedIdx - 1 : this.lastUsedIdx);
    return this.hasUsed();
  }

  // ---- raw access for hostile tests -------------------------------------------------------------

  /** Writes descriptor `i` of the ring as given (no free-list bookkeeping). */
  writeDesc(i: number, d: RawDescriptor): void {
    if (!Number.isInteger(i) || i < 0 || i >= this.size) {
      throw new DriverRingError('ERR_DRIVER_RING_ARG', `descriptor index ${i} (queue size ${this.size})`);
    }
    this.writeDescAt(this.desc, i, d.addr, d.len, d.flags, d.next);
  }

  /** Writes a raw descriptor into a table at `tableGpa` (an indirect table built by hand). */
  writeTableDesc(tableGpa: number, i: number, d: RawDescriptor): void {
    const t = this.place(tableGpa + Desc.SIZE * i, Desc.SIZE, 1, 'descriptor');
    this.writeDescAt(t, 0, d.addr, d.len, d.flags, d.next);
  }

  /** Reads descriptor `i` of the ring. */
  readDesc(i: number): RawDescriptor {
    const dv = this.desc.region.dv;
    const o = this.desc.off + Desc.SIZE * i;
    return {
      addr: dv.getUint32(o, true) + dv.getUint32(o + 4, true) * TWO_32,
      len: dv.getUint32(o + 8, true),
      flags: dv.getUint16(o + 12, true),
      next: dv.getUint16(o + 14, true),
    };
  }

  /** Appends `head` to the avail ring (unpublished) without any validation or bookkeeping. */
  pushAvailRaw(head: number): void {
    const slot = this.availShadow % this.size;
    this.avail.region.dv.setUint16(this.avail.off + 4 + 2 * slot, head, true);
    this.availShadow = (this.availShadow + 1) & 0xffff;
  }

  /** Stores avail.idx = n (and our shadow), published at once. */
  setAvailIdx(n: number): void {
    this.availShadow = n & 0xffff;
    this.store16(this.avail, 2, n);
  }

  /**
   * Marks `head` as outstanding with the given ring descriptors, for raw chains written with
   * writeDesc() + pushAvailRaw() whose used entries should be accounted normally.
   */
  claimRaw(head: number, descriptors: readonly number[] = [head]): void {
    const set = new Set(descriptors);
    let w = 0;
    for (let r = 0; r < this.freeTop; r++) {
      const d = this.freeList[r]!;
      if (!set.has(d)) this.freeList[w++] = d;
    }
    this.freeTop = w;
    this.chains[head] = [...descriptors];
  }
}
