/**
 * Maps a guest memory region received from the front-end (a memfd or shared file) into our process.
 * One external ArrayBuffer per region, unmapped explicitly with detach + munmap; the addon's
 * finalizer only guards against leaks and never unmaps twice.
 *
 * The file belongs to the front-end, which may lie about its size or shrink it later. Touching a
 * mapped page past the end of the file raises SIGBUS, which would kill every guest of the daemon:
 * - a region that does not fit in its file when it arrives is refused here (fstat);
 * - the mapping is registered with the addon's SIGBUS guard, so a file shrunk afterwards reads as
 *   zeros and counts a fault (`faults()`); the connection then closes (fault-monitor.ts).
 */
import { fstatSync } from 'node:fs';
import type { MappedRegion } from '../../core/memory/guest-memory.js';
import type { MemRegionDesc } from '../../core/vhost-user/codec.js';
import type { NativeAddon } from '../native/addon.js';

const PAGE = 4096;
/** Node 20 caps an ArrayBuffer at 4 GiB (buffer.kMaxLength); Node 22 lifts it. */
export const MAX_REGION_MAPPING = 2 ** 32;

/** Thrown when a region claims bytes its file does not have. */
export class RegionFileError extends RangeError {
  readonly code = 'ERR_REGION_PAST_EOF';
}

/**
 * Refuses a region whose file range [mmap_offset, mmap_offset + size) ends past the file's size.
 * Only regular files (memfd, tmpfs, hugetlbfs) have a meaningful size; device files (e.g. DAX)
 * report 0 and are left to the SIGBUS guard.
 */
export function checkRegionFits(d: MemRegionDesc, fd: number): void {
  const st = fstatSync(fd, { bigint: true });
  if (!st.isFile()) return;
  const end = BigInt(d.mmapOffset) + BigInt(d.size);
  if (end > st.size) {
    throw new RegionFileError(
      `region needs file bytes ${d.mmapOffset}..${end} but its file has ${st.size} bytes`,
    );
  }
}

export function mapRegion(
  native: Pick<NativeAddon, 'mmap' | 'munmap' | 'mappingFaults'>,
  d: MemRegionDesc,
  fd: number,
): MappedRegion {
  // mmap needs a page-aligned file offset: map from the page that holds mmap_offset and start the
  // view at the remainder (QEMU's offsets are page aligned, so the remainder is normally 0).
  const skew = d.mmapOffset % PAGE;
  const length = d.size + skew;
  if (length > MAX_REGION_MAPPING) {
    throw Object.assign(
      new RangeError(
        `region of ${d.size} bytes exceeds the ${MAX_REGION_MAPPING}-byte mapping limit of this Node.js`,
      ),
      { code: 'ERR_MMAP_TOO_LARGE' },
    );
  }
  checkRegionFits(d, fd);
  const buffer = native.mmap(fd, length, d.mmapOffset - skew, true);
  const bytes = new Uint8Array(buffer, skew, d.size);
  let released = false;
  return {
    guestPhysAddr: d.guestPhysAddr,
    size: d.size,
    userAddr: d.userAddr,
    mmapOffset: d.mmapOffset,
    bytes,
    release(): void {
      if (released) return;
      released = true;
      native.munmap(buffer);
    },
    faults(): number {
      return released ? 0 : native.mappingFaults(buffer);
    },
  };
}
