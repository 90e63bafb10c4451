/**
 * The VIRTIO entropy device (device ID 4, VIRTIO 1.x "Entropy Device"), one per guest connection.
 * One queue (requestq): the driver posts device-writable buffers, the device fills each with random
 * bytes from the injected source and returns it with used length = bytes written. No config space,
 * no device features.
 *
 * Decisions beyond the spec text, with the reasoning:
 * - Rate limit: at most `maxBytes` per period of `periodMs`. A period starts with the first request
 *   after the previous one ended. A buffer larger than what is left gets what is left (the spec lets
 *   the device use less than the whole buffer); once nothing is left, the chains stay in the ring
 *   (flow control, no kick armed) until the period rolls over, when the injected timer resumes the
 *   queue. The guest's reader simply waits, as with a slow hardware generator.
 * - The budget survives a device reset: it is host state, and a guest must not escape the limit by
 *   resetting the device.
 * - A source that yields nothing (end of a regular file, a non-blocking device with no data, a read
 *   error) completes the chain it was asked for with what it gave (possibly 0 bytes, counted in
 *   `sourceErrors`) and pauses the queue until the next period, so a dry source never turns into a
 *   busy loop between guest and device.
 * - A chain without a writable part is returned with used length 0 and counted in `badChains`.
 * - A disabled ring (vhost-user "Ring states") has its chains returned with used length 0 and no
 *   entropy spent on them (`discarded`).
 */
import { deviceFailure } from '../../util/errors.js';
import type { Logger } from '../../util/log.js';
import { nullLogger } from '../../util/log.js';
import type { DeviceHost, VirtioDevice } from '../../vhost-user/device.js';
import { DescriptorChain } from '../../virtio/descriptor-chain.js';
import { maxQueueSizeOf, type RingOptions, ringFeatures } from '../../virtio/features.js';
import { type ChainHandler, QueueWorker } from '../../virtio/queue-worker.js';
import type { SplitQueue } from '../../virtio/split-queue.js';

export const VIRTIO_ID_RNG = 4;
export const RNG_REQUEST_QUEUE = 0;

/** Fills (a prefix of) `dst` with random bytes and returns how many; 0 when the source is dry. */
export type EntropySource = (dst: Uint8Array) => number;

export interface RngDeviceOptions extends RingOptions {
  source: EntropySource;
  /** Bytes per period (default: unlimited). */
  maxBytes?: number;
  /** Length of a rate-limit period in milliseconds (default 1000). */
  periodMs?: number;
  /** Monotonic milliseconds. */
  now: () => number;
  /** Runs `fn` once after `ms` milliseconds; returns a function that cancels it. */
  setTimer: (ms: number, fn: () => void) => () => void;
  log?: Logger;
}

export interface RngDeviceStats {
  /** Random bytes written into guest buffers. */
  bytes: number;
  /** Chains completed with random bytes (including short and empty ones from a dry source). */
  requests: number;
  /** Periods whose budget ran out with requests waiting. */
  throttledPeriods: number;
  /** Times the source yielded nothing (or threw). */
  sourceErrors: number;
  /** Chains returned unused from a disabled ring. */
  discarded: number;
  /** Malformed chains, or chains with no writable part, returned with used length 0. */
  badChains: number;
}

const BUDGET = 256;
const SCRATCH = 16 * 1024;

export class RngDevice implements VirtioDevice {
  readonly name = 'rng';
  readonly deviceId = VIRTIO_ID_RNG;
  readonly numQueues = 1;
  readonly configSize = 0;
  readonly maxQueueSize: number;
  readonly features: bigint;
  readonly stats: RngDeviceStats;
  readonly maxBytes: number;
  readonly periodMs: number;

  private host: DeviceHost | null = null;
  private log: Logger;
  private readonly source: EntropySource;
  private readonly now: () => number;
  private readonly setTimer: (ms: number, fn: () => void) => () => void;
  private readonly worker: QueueWorker;
  private readonly chain = new DescriptorChain(16);
  private readonly scratch = new Uint8Array(SCRATCH);
  /** Bytes left in the current period, and when it ends (-Infinity: no period running). */
  private left = 0;
  private periodEnd = Number.NEGATIVE_INFINITY;
  /** This period was already counted in throttledPeriods. */
  private throttledCounted = false;
  private cancelTimer: (() => void) | null = null;
  private scheduled = false;
  private destroyed = false;
  private sourceWarned = false;
  private readonly handle: ChainHandler = (chain, q) => this.fillChain(chain, q);
  private readonly more = (): boolean => this.left > 0;

  constructor(opts: RngDeviceOptions) {
    const maxBytes = opts.maxBytes ?? Number.POSITIVE_INFINITY;
    if (!(maxBytes >= 1) || (Number.isFinite(maxBytes) && !Number.isInteger(maxBytes))) {
      throw new RangeError(`max bytes ${maxBytes}`);
    }
    const period = opts.periodMs ?? 1000;
    if (!Number.isInteger(period) || period < 1) throw new RangeError(`period ${period} ms`);
    this.maxBytes = maxBytes;
    this.left = maxBytes;
    this.periodMs = period;
    this.features = ringFeatures(opts);
    this.maxQueueSize = maxQueueSizeOf(opts);
    this.source = opts.source;
    this.now = opts.now;
    this.setTimer = opts.setTimer;
    this.log = opts.log ?? nullLogger;
    this.stats = { bytes: 0, requests: 0, throttledPeriods: 0, sourceErrors: 0, discarded: 0, badChains: 0 };
    this.worker = new QueueWorker(
      () => this.host,
      () => this.log,
      this.stats,
    );
  }

  statsFields(): Record<string, number | string | boolean> {
    return { ...this.stats, throttled: this.cancelTimer !== null };
  }

  /** Whether requests are waiting for the next period (the timer is armed). */
  get throttled(): boolean {
    return this.cancelTimer !== null;
  }

  // ---- device contract ------------------------------------------------------------------------

  attach(host: DeviceHost): void {
    this.host = host;
    this.log = host.log;
  }

  readConfig(): void {
    // No config space (configSize 0).
  }

  writeConfig(): boolean {
    return false;
  }

  setFeatures(): void {
    // No device feature bits.
  }

  queueStarted(index: number): void {
    this.queueNotified(index);
  }

  queueStopping(): void {
    // Every chain is completed within the call that took it.
  }

  queueNotified(index: number): void {
    if (index !== RNG_REQUEST_QUEUE) return;
    this.guarded(() => {
      // While throttled the timer resumes the queue; a kick only shows that requests wait.
      if (this.cancelTimer === null) this.process();
      else {
        const q = this.host?.queue(RNG_REQUEST_QUEUE) ?? null;
        if (q !== null) this.countThrottled(q);
      }
    });
  }

  queueDiscard(index: number): void {
    const q = this.host?.disabledQueue(index) ?? null;
    if (q === null) return;
    const r = this.worker.drain(
      q,
      this.chain,
      (chain, dq) => {
        this.stats.discarded++;
        dq.pushUsed(chain.head, 0);
      },
      { budget: BUDGET },
    );
    if (r === 'budget') this.host?.schedule(() => this.queueDiscard(index));
  }

  halt(): void {
    // Nothing in flight: chains are completed as they are taken.
  }

  reset(): void {
    // The rate-limit budget and a running timer are kept (host state, see the header).
  }

  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.cancelTimer?.();
    this.cancelTimer = null;
    this.host = null;
  }

  // ---- queue processing -----------------------------------------------------------------------

  private guarded(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      const e = deviceFailure(err);
      if (this.host !== null) this.host.markBroken(e);
      else this.log.error('rng device failure outside a connection', { code: e.code, reason: e.message });
    }
  }

  /** Starts a new period when the last one is over. */
  private refill(): void {
    const t = this.now();
    if (t < this.periodEnd) return;
    this.left = this.maxBytes;
    this.periodEnd = t + this.periodMs;
    this.throttledCounted = false;
  }

  private process(): void {
    const q = this.host?.queue(RNG_REQUEST_QUEUE) ?? null;
    if (q === null) return;
    // Requests that came while the budget was spent waited for this turn (with EVENT_IDX they may
    // have come without a kick).
    if (this.left <= 0) this.countThrottled(q);
    this.refill();
    const r = this.worker.drain(q, this.chain, this.handle, { budget: BUDGET, more: this.more });
    if (r === 'stopped') this.throttle(q);
    else if (r === 'budget') this.scheduleProcess();
  }

  /**
   * The period's budget is spent (or the source is dry). The timer is armed even with the ring
   * empty: no kick was armed (EVENT_IDX), so the driver's next buffer may come without one.
   */
  private throttle(q: SplitQueue): void {
    this.countThrottled(q);
    if (this.cancelTimer !== null || this.destroyed) return;
    const wait = Math.max(1, Math.ceil(this.periodEnd - this.now()));
    this.cancelTimer = this.setTimer(wait, () => {
      this.cancelTimer = null;
      this.scheduleProcess();
    });
  }

  /** Counts the current period as throttled once requests wait in it. */
  private countThrottled(q: SplitQueue): void {
    if (!this.throttledCounted && q.pending() > 0) {
      this.throttledCounted = true;
      this.stats.throttledPeriods++;
    }
  }

  private scheduleProcess(): void {
    if (this.scheduled || this.host === null) return;
    this.scheduled = true;
    this.host.schedule(() => {
      this.scheduled = false;
      this.process();
    });
  }

  private fillChain(chain: DescriptorChain, q: SplitQueue): void {
    if (chain.writableLength === 0) {
      this.stats.badChains++;
      q.pushUsed(chain.head, 0);
      return;
    }
    const mem = this.host!.memory;
    const want = Math.min(chain.writableLength, this.left);
    let done = 0;
    let dry = false;
    while (done < want) {
      const n = Math.min(want - done, this.scratch.byteLength);
      const got = this.read(this.scratch.subarray(0, n));
      if (got <= 0) {
        dry = true;
        break;
      }
      const w = chain.write(mem, done, this.scratch, 0, got);
      if (w !== got) {
        // Guest memory no longer maps the buffer (memory table replaced): return what was written.
        this.stats.badChains++;
        break;
      }
      // A short read is normal for a device file: ask again, until it yields nothing.
      done += got;
    }
    this.left -= done;
    this.stats.bytes += done;
    this.stats.requests++;
    q.pushUsed(chain.head, done);
    if (dry) {
      // Pause until the next period rather than spin on a dry source.
      this.left = 0;
    }
  }

  private read(dst: Uint8Array): number {
    let n: number;
    try {
      n = this.source(dst);
    } catch (err) {
      n = -1;
      this.sourceFailed((err as Error).message ?? String(err));
      return n;
    }
    if (!Number.isInteger(n) || n <= 0) {
      this.sourceFailed('no data');
      return 0;
    }
    return Math.min(n, dst.byteLength);
  }

  private sourceFailed(reason: string): void {
    this.stats.sourceErrors++;
    if (!this.sourceWarned || this.log.debugEnabled) {
      this.sourceWarned = true;
      this.log.warn('entropy source yielded nothing; requests wait for the next period', { reason });
    }
  }
}
