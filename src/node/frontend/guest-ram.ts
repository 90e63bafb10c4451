/**
 * Guest RAM for the TypeScript front-end: what `-object memory-backend-memfd,share=on` is for QEMU.
 *
 * All regions live in ONE memfd, one after the other, so every region but the first has a non-zero
 * mmap_offset (the back-end must honour it). Each region is mapped here too (the "guest" side of the
 * test), and gets a fake front-end user address, `uva = UVA_BASE + gpa`, so that uva != gpa and a
 * back-end that confuses the two address spaces fails visibly (vhost-user.rst "Memory regions
 * description", SET_VRING_ADDR; docs/protocol-notes.md 1.4).
 */
import { GuestMemory, type MappedRegion } from '../../core/memory/guest-memory.js';
import type { MemRegionDesc } from '../../core/vhost-user/codec.js';
import { mapRegion } from '../memory/mmap-region.js';
import { native as defaultNative, type NativeAddon } from '../native/addon.js';
import { FrontendError } from './errors.js';

/** Where QEMU's own mappings would typically be; added to a GPA to make the fake user address. */
export const UVA_BASE = 0x7f00_0000_0000;

const PAGE = 4096;
const MiB = 1024 * 1024;

export interface GuestRamRegionSpec {
  /** Guest physical address (page aligned). */
  readonly gpa: number;
  /** Bytes (a multiple of the page size). */
  readonly size: number;
}

/** Default layout: 16 MiB at GPA 0 and 16 MiB above 4 GiB (like a PC's low and high RAM). */
export const DEFAULT_GUEST_RAM: readonly GuestRamRegionSpec[] = Object.freeze([
  { gpa: 0, size: 16 * MiB },
  { gpa: 0x1_0000_0000, size: 16 * MiB },
]);

export interface GuestRamOptions {
  regions?: readonly GuestRamRegionSpec[];
  /** Name shown in /proc/self/maps ("/memfd:NAME"). */
  name?: string;
  native?: NativeAddon;
}

export class GuestRam {
  /** The guest's view of its memory (and what DriverRing works on). */
  readonly memory: GuestMemory;
  private readonly native: NativeAddon;
  private readonly memfd: number;
  private readonly descs: readonly MemRegionDesc[];
  private readonly mapped: readonly MappedRegion[];
  /** Bump allocator cursor per region (offset into the region). */
  private readonly cursor: number[];
  private closed = false;

  constructor(opts: GuestRamOptions = {}) {
    this.native = opts.native ?? defaultNative;
    const specs = opts.regions ?? DEFAULT_GUEST_RAM;
    if (specs.length === 0)
      throw new FrontendError('ERR_FRONTEND_ARG', 'guest RAM needs at least one region');
    let total = 0;
    const descs: MemRegionDesc[] = [];
    for (const s of specs) {
      if (s.size <= 0 || s.size % PAGE !== 0 || s.gpa % PAGE !== 0) {
        throw new FrontendError('ERR_FRONTEND_ARG', `region ${s.gpa}+${s.size} is not page aligned`);
      }
      descs.push({ guestPhysAddr: s.gpa, size: s.size, userAddr: UVA_BASE + s.gpa, mmapOffset: total });
      total += s.size;
    }
    this.descs = descs;
    this.memfd = this.native.memfdCreate(opts.name ?? 'guest-ram', total);
    const mapped: MappedRegion[] = [];
    try {
      for (const d of descs) mapped.push(mapRegion(this.native, d, this.memfd));
      this.memory = new GuestMemory(mapped);
    } catch (err) {
      for (const m of mapped) m.release();
      this.native.close(this.memfd);
      throw err;
    }
    this.mapped = mapped;
    this.cursor = descs.map(() => 0);
  }

  /** Number of regions. */
  get regionCount(): number {
    return this.descs.length;
  }

  /** Region table for SET_MEM_TABLE / ADD_MEM_REG (copies). */
  regions(): MemRegionDesc[] {
    return this.descs.map((d) => ({ ...d }));
  }

  /** The fd to send with region `i` (every region shares the one memfd; each send is a new dup). */
  fdFor(regionIndex: number): number {
    this.checkOpen();
    if (this.descs[regionIndex] === undefined) {
      throw new FrontendError('ERR_FRONTEND_ARG', `no region ${regionIndex}`);
    }
    return this.memfd;
  }

  /**
   * Allocates `len` bytes aligned to `align` (a power of two) and returns the GPA. Without
   * `region`, the first region with room is used. Memory is never freed (test lifetimes are short),
   * and it is zeroed only if never used before.
   */
  alloc(len: number, align = 8, region?: number): number {
    this.checkOpen();
    if (!Number.isInteger(len) || len <= 0 || align <= 0 || (align & (align - 1)) !== 0) {
      throw new FrontendError('ERR_FRONTEND_ARG', `alloc(${len}, ${align})`);
    }
    const order = region === undefined ? this.descs.map((_, i) => i) : [region];
    for (const i of order) {
      const d = this.descs[i];
      if (d === undefined) throw new FrontendError('ERR_FRONTEND_ARG', `no region ${i}`);
      const start = (this.cursor[i]! + align - 1) & ~(align - 1);
      if (start + len <= d.size) {
        this.cursor[i] = start + len;
        return d.guestPhysAddr + start;
      }
    }
    throw new FrontendError('ERR_FRONTEND_NO_MEMORY', `no room for ${len} bytes in guest RAM`);
  }

  /** Copy of guest bytes [gpa, gpa+len). */
  read(gpa: number, len: number): Uint8Array {
    this.checkOpen();
    const out = new Uint8Array(len);
    if (!this.memory.readInto(gpa, out, 0, len)) {
      throw new FrontendError(
        'ERR_FRONTEND_ARG',
        `read of unmapped guest memory 0x${gpa.toString(16)}+${len}`,
      );
    }
    return out;
  }

  write(gpa: number, bytes: Uint8Array): void {
    this.checkOpen();
    if (!this.memory.writeFrom(gpa, bytes, 0, bytes.byteLength)) {
      throw new FrontendError(
        'ERR_FRONTEND_ARG',
        `write to unmapped guest memory 0x${gpa.toString(16)}+${bytes.byteLength}`,
      );
    }
  }

  /** Front-end user address of a GPA (what SET_VRING_ADDR carries). */
  uvaOf(gpa: number): number {
    for (const d of this.descs) {
      if (gpa >= d.guestPhysAddr && gpa < d.guestPhysAddr + d.size)
        return d.userAddr + (gpa - d.guestPhysAddr);
    }
    throw new FrontendError('ERR_FRONTEND_ARG', `GPA 0x${gpa.toString(16)} is not guest RAM`);
  }

  /** Unmaps every region and closes the memfd. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const m of this.mapped) m.release();
    this.native.close(this.memfd);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  private checkOpen(): void {
    if (this.closed) throw new FrontendError('ERR_FRONTEND_CLOSED', 'guest RAM is closed');
  }
}
