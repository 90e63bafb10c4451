/**
 * Sliding-window bus load: the fraction of the last second the frames would have occupied a real bus.
 *
 * Approximation, on purpose (it is a statistic, not a scheduler):
 * - the window is 10 buckets of 100 ms; load = (air time in the current, partial bucket + the 9 before
 *   it) / (0.9 s + time elapsed in the current bucket). Spans before the first frame count as idle.
 * - air time per frame = nominal bits / bitrate + data-phase bits / dataBitrate (`canFrameBits`,
 *   `canFrameDataPhaseBits`: no dynamic bit stuffing, so a real bus would be ~10-20% busier).
 * - the result is clamped to 1: the virtual bus has no arbitration and can carry more than the
 *   configured bit rate allows; 1 then means "saturated".
 * - timestamps are converted with `Number()`: sub-microsecond rounding for clocks counting from the Unix
 *   epoch is irrelevant at 100 ms granularity, and it avoids a BigInt division per frame. A clock that
 *   steps backwards is treated as "still in the current bucket".
 * With the hub's default clock (always 0n) every frame lands in one bucket that never expires, so the
 * value only means something with a real clock.
 */
const BUCKETS = 10;
const BUCKET_NS = 100_000_000;

/** Ring slot of an absolute bucket index (also for a clock that starts below 0). */
function slot(bucket: number): number {
  return ((bucket % BUCKETS) + BUCKETS) % BUCKETS;
}

export class BusLoadMeter {
  readonly #airtime = new Float64Array(BUCKETS); // seconds of bus time per bucket
  #bucket = 0; // absolute index (floor(ns / BUCKET_NS)) of the current bucket
  #started = false;
  /** The last `add` time: a batch of frames shares one timestamp, so most calls skip the advance. */
  #lastNs = -1n;

  /** Adds `seconds` of bus time at time `nowNs`. Allocation-free. */
  add(nowNs: bigint, seconds: number): void {
    if (nowNs !== this.#lastNs) {
      this.#lastNs = nowNs;
      this.#advance(Number(nowNs));
    }
    this.#airtime[slot(this.#bucket)]! += seconds;
  }

  /** Load over the window ending at `nowNs`, 0..1. */
  load(nowNs: bigint): number {
    const now = Number(nowNs);
    this.#advance(now);
    let total = 0;
    for (let k = 0; k < BUCKETS; k++) total += this.#airtime[k]!;
    const inBucket = Math.min(Math.max(now - this.#bucket * BUCKET_NS, 0), BUCKET_NS);
    const windowS = ((BUCKETS - 1) * BUCKET_NS + inBucket) / 1e9;
    return Math.min(total / windowS, 1);
  }

  #advance(nowNs: number): void {
    const b = Math.floor(nowNs / BUCKET_NS);
    if (!this.#started) {
      this.#started = true;
      this.#bucket = b;
      return;
    }
    if (b <= this.#bucket) return;
    const steps = Math.min(b - this.#bucket, BUCKETS);
    for (let k = 1; k <= steps; k++) this.#airtime[slot(this.#bucket + k)] = 0;
    this.#bucket = b;
  }
}
