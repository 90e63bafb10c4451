/**
 * Recycled bus frames: the hub's copies of transmitted frames come from here, so a bus carrying
 * guest-to-guest traffic allocates nothing per frame once it is warm.
 *
 * Ownership (why a frame can be reused safely):
 * - A frame handed out by `acquire` starts with one hold: the hub's own, for the fan-out.
 * - Every *releasing* port that queues it takes one more hold and gives it back with
 *   `HubPort.release` after it consumed the frame (the virtio-can device copies it into guest memory
 *   and releases it at once), or when its queue is flushed.
 * - Any other port that queues it *pins* it: such an owner may keep the frame as long as it likes
 *   (a host interface waiting for its echo, a monitor, a test), so a pinned frame is never reused;
 *   the garbage collector takes it when the last reference goes.
 * - When the last hold is dropped and the frame is not pinned, it goes back to the free list for its
 *   data length, so a recycled frame's `data` already has the right size: no allocation even when
 *   lengths vary.
 * The bookkeeping lives in private fields: a frame spread with `{ ...frame }` is a plain frame.
 */
import type { CanFrame } from './can-frame.js';

/** Free frames kept over all lengths unless the hub asks for more; more go to the garbage collector. */
const DEFAULT_MAX_FREE = 4096;
const EMPTY_DATA = new Uint8Array(0);

export class PooledFrame implements CanFrame {
  id = 0;
  extended = false;
  rtr = false;
  fd = false;
  brs = false;
  esi = false;
  len = 0;
  len8Dlc = 0;
  readonly data: Uint8Array;
  timestampNs = 0n;
  origin = 0;
  readonly #pool: FramePool;
  #holds = 0;
  #pinned = false;

  constructor(pool: FramePool, dataLength: number) {
    this.#pool = pool;
    this.data = dataLength === 0 ? EMPTY_DATA : new Uint8Array(dataLength);
  }

  /** Called by `FramePool.acquire`: one hold (the acquirer's), not pinned. */
  reset(): void {
    this.#holds = 1;
    this.#pinned = false;
  }

  /** One more owner that will call `drop()`. */
  hold(): void {
    this.#holds++;
  }

  /** An owner that never gives the frame back: the frame is never reused. */
  pin(): void {
    this.#pinned = true;
  }

  /** Gives one hold back; the last one returns the frame to its pool (unless pinned). */
  drop(): void {
    if (this.#holds <= 0) return; // already free: a stray second release must not corrupt the pool
    if (--this.#holds === 0 && !this.#pinned) this.#pool.recycle(this);
  }
}

export interface FramePoolStats {
  /** Frames created (the pool was empty for that length). */
  created: number;
  /** Frames handed out again after being recycled. */
  reused: number;
  /** Frames on the free lists now. */
  free: number;
}

export class FramePool {
  readonly #free: PooledFrame[][] = [];
  #maxFree: number;
  #freeCount = 0;
  #created = 0;
  #reused = 0;

  constructor(maxFree = DEFAULT_MAX_FREE) {
    this.#maxFree = maxFree;
    for (let len = 0; len <= 64; len++) this.#free.push([]);
  }

  /**
   * How many free frames to keep. The hub sets it to what its receive queues can hold, so a bus
   * running at its backlog limits recycles every frame instead of dropping the surplus and creating
   * new ones later; the pool never holds more than the peak number of frames in flight.
   */
  setMaxFree(n: number): void {
    this.#maxFree = Math.max(n, DEFAULT_MAX_FREE);
  }

  /**
   * A frame with `data.length === dataLength` (0..64) and one hold. Its fields are stale: the caller
   * sets every one of them.
   */
  acquire(dataLength: number): PooledFrame {
    const list = this.#free[dataLength]!;
    let f = list.pop();
    if (f === undefined) {
      f = new PooledFrame(this, dataLength);
      this.#created++;
    } else {
      this.#freeCount--;
      this.#reused++;
    }
    f.reset();
    return f;
  }

  /** Only from `PooledFrame.drop`. */
  recycle(f: PooledFrame): void {
    if (this.#freeCount >= this.#maxFree) return;
    this.#free[f.data.length]!.push(f);
    this.#freeCount++;
  }

  stats(): FramePoolStats {
    return { created: this.#created, reused: this.#reused, free: this.#freeCount };
  }
}
