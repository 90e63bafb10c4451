/**
 * A fake SessionIo for core tests and the session fuzz target: fds are numbers in a table (memfds
 * with shared contents, eventfds), mappings are windows of a memfd's bytes, kick watches are
 * callbacks the test fires. Every misuse (closing an fd twice or one never handed out, mapping a
 * closed fd, signalling a closed eventfd) throws InvariantError.
 */
import type { MappedRegion } from '../../../src/core/memory/guest-memory.js';
import type { MemRegionDesc } from '../../../src/core/vhost-user/codec.js';
import type { SessionIo } from '../../../src/core/vhost-user/session.js';
import { check } from '../../fuzz/input.js';

export const MEMFD_SIZE = 0x20000;

export type FdKind = 'memfd' | 'eventfd';
export interface FdEntry {
  kind: FdKind;
  open: boolean;
  /** memfd contents (shared by every mapping of it, like MAP_SHARED). */
  mem?: Uint8Array;
}

export interface Mapping {
  region: MappedRegion;
  releases: number;
}

export class FakeKernel implements SessionIo {
  readonly fds = new Map<number, FdEntry>();
  readonly mappings: Mapping[] = [];
  readonly kickWatches = new Map<number, () => void>();
  /** Rings polled instead of kicked (SET_VRING_KICK with NOFD): the test fires them. */
  readonly polls = new Set<() => void>();
  replies: Uint8Array[] = [];
  signals = 0;
  backendMessages = 0;
  private nextFd = 100;

  open(kind: FdKind, mem?: Uint8Array): number {
    const fd = this.nextFd++;
    this.fds.set(
      fd,
      kind === 'memfd' ? { kind, open: true, mem: mem ?? new Uint8Array(MEMFD_SIZE) } : { kind, open: true },
    );
    return fd;
  }

  sendToFrontend(bytes: Uint8Array): void {
    this.replies.push(bytes.slice());
  }

  mapRegion(region: MemRegionDesc, fd: number): MappedRegion {
    const e = this.fds.get(fd);
    check(e?.open === true, `mapRegion of fd ${fd} that is not open`);
    if (e.kind !== 'memfd') throw new Error('mmap: not a mappable fd');
    const mem = e.mem!;
    if (region.mmapOffset > mem.length || region.size > mem.length - region.mmapOffset) {
      throw new Error('mmap: beyond the end of the file');
    }
    let bytes = mem.subarray(region.mmapOffset, region.mmapOffset + region.size);
    const m: Mapping = { region: undefined as unknown as MappedRegion, releases: 0 };
    m.region = {
      guestPhysAddr: region.guestPhysAddr,
      size: region.size,
      userAddr: region.userAddr,
      mmapOffset: region.mmapOffset,
      get bytes() {
        return bytes;
      },
      release() {
        if (m.releases++ === 0) bytes = new Uint8Array(0);
      },
    };
    this.mappings.push(m);
    return m.region;
  }

  closeFd(fd: number): void {
    const e = this.fds.get(fd);
    check(e !== undefined, `close of fd ${fd} that was never handed out`);
    check(e.open, `fd ${fd} closed twice`);
    e.open = false;
    this.kickWatches.delete(fd);
  }

  watchKick(fd: number, onKick: () => void): { close(): void } {
    const e = this.fds.get(fd);
    check(e?.open === true, `watchKick on fd ${fd} that is not open`);
    this.kickWatches.set(fd, onKick);
    return { close: () => this.kickWatches.delete(fd) };
  }

  /** Work the session deferred (host.schedule): the test runs it. */
  readonly scheduled: (() => void)[] = [];
  schedule(fn: () => void): void {
    this.scheduled.push(fn);
  }

  pollKick(onPoll: () => void): { close(): void } {
    this.polls.add(onPoll);
    return { close: () => this.polls.delete(onPoll) };
  }

  signal(fd: number): void {
    const e = this.fds.get(fd);
    check(e?.open === true, `signal on fd ${fd} that is not open`);
    this.signals++;
  }

  sendToBackendChannel(fd: number, _bytes: Uint8Array): boolean {
    const e = this.fds.get(fd);
    check(e?.open === true, `back-end message on fd ${fd} that is not open`);
    this.backendMessages++;
    return true;
  }
}
