/**
 * One virtqueue as the front-end's guest driver sees it: a DriverRing in guest RAM plus the kick
 * eventfd (driver -> device) and the call eventfd (device -> driver interrupt).
 *
 * Completions: `waitFor(head)` resolves with the used length of that chain; `waitUsed()` resolves
 * when unclaimed used entries exist; `takeUsed()` returns them. Waiting watches the call eventfd
 * (level-triggered, always drained); the watcher runs only while somebody waits, so an idle queue
 * does not keep the event loop alive. After every drain of the used ring the ring is re-checked,
 * because with EVENT_IDX an entry published just before used_event was re-armed raises no
 * interrupt (virtqueue_enable_cb's race).
 */
import type { BufferSegment, DriverRing, UsedEntry } from '../../core/virtio/driver-ring.js';
import type { NativeAddon, NativeWatcher } from '../native/addon.js';
import { FrontendError } from './errors.js';

export interface DriverQueueStats {
  /** Kicks written to the kick eventfd. */
  kicks: number;
  /** kickPrepare() said no kick was needed (EVENT_IDX / NO_NOTIFY suppression). */
  suppressedKicks: number;
  /** Sum of the call eventfd counters read (one per device signal). */
  interrupts: number;
}

interface HeadWaiter {
  resolve(len: number): void;
  reject(err: Error): void;
  timer: ReturnType<typeof setTimeout>;
}

interface UsedWaiter {
  resolve(): void;
  reject(err: Error): void;
  timer: ReturnType<typeof setTimeout>;
  poll: ReturnType<typeof setInterval> | null;
}

export interface DriverQueueOptions {
  index: number;
  ring: DriverRing;
  native: NativeAddon;
  /** Default timeout for waits. */
  timeoutMs: number;
  /** Per-queue ring stop (SET_VRING_ENABLE 0 + GET_VRING_BASE); provided by the front-end. */
  stopRing: (index: number) => Promise<number>;
}

export class DriverQueue {
  readonly index: number;
  readonly ring: DriverRing;
  /** Our end of the kick eventfd (sent with SET_VRING_KICK). */
  readonly kickFd: number;
  /** Our end of the call eventfd (sent with SET_VRING_CALL). */
  readonly callFd: number;
  readonly stats: DriverQueueStats = { kicks: 0, suppressedKicks: 0, interrupts: 0 };

  private readonly native: NativeAddon;
  private readonly timeoutMs: number;
  private readonly stopRing: (index: number) => Promise<number>;
  private watcher: NativeWatcher | null = null;
  private watching = false;
  private stash: UsedEntry[] = [];
  private readonly headWaiters = new Map<number, HeadWaiter>();
  private readonly usedWaiters = new Set<UsedWaiter>();
  private closed = false;

  constructor(opts: DriverQueueOptions) {
    this.index = opts.index;
    this.ring = opts.ring;
    this.native = opts.native;
    this.timeoutMs = opts.timeoutMs;
    this.stopRing = opts.stopRing;
    this.kickFd = this.native.eventfdCreate(0, true);
    try {
      this.callFd = this.native.eventfdCreate(0, true);
    } catch (err) {
      this.native.close(this.kickFd);
      throw err;
    }
  }

  get size(): number {
    return this.ring.size;
  }

  /** Adds a chain (not yet visible: call kick() or publish()). See DriverRing.add. */
  add(
    readable: readonly BufferSegment[],
    writable: readonly BufferSegment[],
    opts: { indirectTableGpa?: number } = {},
  ): number {
    return this.ring.add(readable, writable, opts);
  }

  /** Makes added chains visible without notifying the device. */
  publish(): number {
    return this.ring.publish();
  }

  /**
   * Publishes added chains and notifies the device if it asked for it (EVENT_IDX avail_event or
   * used.flags NO_NOTIFY). Returns whether a kick was written.
   */
  kick(): boolean {
    this.checkOpen();
    if (!this.ring.kickPrepare()) {
      this.stats.suppressedKicks++;
      return false;
    }
    this.notify();
    return true;
  }

  /** Writes the kick eventfd unconditionally. */
  notify(): void {
    this.checkOpen();
    this.native.eventfdWrite(this.kickFd, 1);
    this.stats.kicks++;
  }

  /** Reads (and resets) the call eventfd; returns how many signals it counted. */
  drainInterrupts(): number {
    if (this.closed) return 0;
    let n = 0;
    for (;;) {
      const v = this.native.eventfdRead(this.callFd);
      if (v === null) break;
      n += v;
    }
    this.stats.interrupts += n;
    return n;
  }

  /** Used entries not claimed by waitFor(), in ring order (includes ones already collected). */
  takeUsed(): UsedEntry[] {
    this.collect();
    const s = this.stash;
    this.stash = [];
    return s;
  }

  /** True when unclaimed used entries are waiting. */
  hasUsed(): boolean {
    this.collect();
    return this.stash.length > 0;
  }

  /**
   * Resolves with the used length of chain `head` once the device returned it. Register right after
   * adding the chain: heads are reused once freed.
   */
  waitFor(head: number, timeoutMs = this.timeoutMs): Promise<number> {
    if (this.closed) return Promise.reject(closedError());
    this.collect();
    const i = this.stash.findIndex((u) => u.head === head);
    if (i >= 0) {
      const [u] = this.stash.splice(i, 1);
      return Promise.resolve(u!.len);
    }
    if (this.headWaiters.has(head)) {
      return Promise.reject(
        new FrontendError('ERR_FRONTEND_ARG', `queue ${this.index}: head ${head} awaited twice`),
      );
    }
    return new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.headWaiters.delete(head);
        this.updateWatch();
        reject(
          new FrontendError(
            'ERR_FRONTEND_TIMEOUT',
            `queue ${this.index}: chain ${head} not returned within ${timeoutMs} ms`,
          ),
        );
      }, timeoutMs);
      this.headWaiters.set(head, { resolve, reject, timer });
      this.updateWatch();
    });
  }

  /**
   * Resolves once unclaimed used entries exist. Waits on the call eventfd; with `pollMs` it also
   * re-checks the used ring on that interval (for rings whose interrupts are suppressed).
   */
  waitUsed(timeoutMs = this.timeoutMs, opts: { pollMs?: number } = {}): Promise<void> {
    if (this.closed) return Promise.reject(closedError());
    if (this.hasUsed()) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const w: UsedWaiter = {
        resolve,
        reject,
        poll: null,
        timer: setTimeout(() => {
          this.dropUsedWaiter(w);
          reject(
            new FrontendError(
              'ERR_FRONTEND_TIMEOUT',
              `queue ${this.index}: no used entry within ${timeoutMs} ms`,
            ),
          );
        }, timeoutMs),
      };
      if (opts.pollMs !== undefined) {
        w.poll = setInterval(() => this.onSignal(), opts.pollMs);
      }
      this.usedWaiters.add(w);
      this.updateWatch();
    });
  }

  /** Stops this ring on the back-end (SET_VRING_ENABLE 0, GET_VRING_BASE); returns the base. */
  stop(): Promise<number> {
    return this.stopRing(this.index);
  }

  private dropUsedWaiter(w: UsedWaiter): void {
    clearTimeout(w.timer);
    if (w.poll !== null) clearInterval(w.poll);
    this.usedWaiters.delete(w);
    this.updateWatch();
  }

  /** Moves new used entries to their waiters or to the stash; loops until the ring is quiet. */
  private collect(): void {
    if (this.closed) return;
    do {
      for (const u of this.ring.takeUsed()) {
        const w = this.headWaiters.get(u.head);
        if (w !== undefined) {
          this.headWaiters.delete(u.head);
          clearTimeout(w.timer);
          w.resolve(u.len);
        } else {
          this.stash.push(u);
        }
      }
      // takeUsed() re-armed used_event (a SeqCst store); this SeqCst load closes the race.
    } while (this.ring.hasUsed());
  }

  private onSignal(): void {
    this.drainInterrupts();
    this.collect();
    if (this.stash.length > 0) {
      for (const w of [...this.usedWaiters]) {
        this.dropUsedWaiter(w);
        w.resolve();
      }
    }
    this.updateWatch();
  }

  private updateWatch(): void {
    const want = !this.closed && (this.headWaiters.size > 0 || this.usedWaiters.size > 0);
    if (want === this.watching) return;
    if (want) {
      if (this.watcher === null) {
        this.watcher = new this.native.Watcher(this.callFd, (status) => {
          if (status < 0) {
            this.failAll(
              new FrontendError('ERR_FRONTEND_IO', `queue ${this.index}: call eventfd error ${status}`),
            );
            return;
          }
          this.onSignal();
        });
      }
      this.watcher.start(this.native.READABLE);
    } else {
      this.watcher?.stop();
    }
    this.watching = want;
  }

  private failAll(err: Error): void {
    for (const [head, w] of this.headWaiters) {
      clearTimeout(w.timer);
      this.headWaiters.delete(head);
      w.reject(err);
    }
    for (const w of [...this.usedWaiters]) {
      this.dropUsedWaiter(w);
      w.reject(err);
    }
    this.updateWatch();
  }

  private checkOpen(): void {
    if (this.closed) throw closedError();
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Rejects every waiter, closes the watcher and both eventfds. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.failAll(closedError());
    this.closed = true;
    this.watcher?.close();
    this.watcher = null;
    this.watching = false;
    this.native.close(this.kickFd);
    this.native.close(this.callFd);
  }
}

function closedError(): FrontendError {
  return new FrontendError('ERR_FRONTEND_CLOSED', 'the queue is closed');
}
