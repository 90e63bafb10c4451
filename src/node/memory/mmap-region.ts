/**
 * Maps a guest memory region received from the front-end (a memfd or shared file) into our process.
 * One external ArrayBuffer per region, unmapped explicitly with detach + munmap (ecosystem.md 2.1);
 * the addon's finalizer only guards against leaks and never unmaps twice.
 */
import type { MappedRegion } from '../../core/memory/guest-memory.js';
import type { MemRegionDesc } from '../../core/vhost-user/codec.js';
import type { NativeAddon } from '../native/addon.js';

const PAGE = 4096;
/** Node 20 caps an ArrayBuffer at 4 GiB (buffer.kMaxLength); Node 22 lifts it. */
export const MAX_REGION_MAPPING = 2 ** 32;

export function mapRegion(
  native: Pick<NativeAddon, 'mmap' | 'munmap'>,
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
  const buffer = native.mmap(fd, length, d.mmapOffset - skew);
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
  };
}
