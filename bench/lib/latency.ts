/**
 * Latency bookkeeping and a paced send loop, shared by the device and the baseline runs.
 */

export interface LatencySummary {
  /** Samples summarised (after the warm-up ones were dropped). */
  n: number;
  minUs: number;
  medianUs: number;
  p90Us: number;
  p99Us: number;
  p999Us: number;
  maxUs: number;
  meanUs: number;
}

/** Records one-way latencies (ns) into a preallocated array; the first `warmup` are dropped. */
export class LatencyRecorder {
  private readonly samples: Float64Array;
  private readonly warmup: number;
  private seen = 0;
  private kept = 0;

  constructor(capacity: number, warmup: number) {
    this.samples = new Float64Array(capacity);
    this.warmup = warmup;
  }

  add(ns: number): void {
    if (this.seen++ < this.warmup) return;
    if (this.kept < this.samples.length) this.samples[this.kept++] = ns;
  }

  /** Samples seen, warm-up included. */
  get count(): number {
    return this.seen;
  }

  summary(): LatencySummary {
    return summarize(this.samples.subarray(0, this.kept));
  }
}

export function summarize(ns: Float64Array): LatencySummary {
  const n = ns.length;
  if (n === 0) {
    return {
      n: 0,
      minUs: Number.NaN,
      medianUs: Number.NaN,
      p90Us: Number.NaN,
      p99Us: Number.NaN,
      p999Us: Number.NaN,
      maxUs: Number.NaN,
      meanUs: Number.NaN,
    };
  }
  const s = Float64Array.from(ns).sort();
  const q = (p: number): number => s[Math.min(n - 1, Math.floor(p * n))]! / 1000;
  let sum = 0;
  for (let i = 0; i < n; i++) sum += s[i]!;
  const r = (v: number): number => Math.round(v * 10) / 10;
  return {
    n,
    minUs: r(s[0]! / 1000),
    medianUs: r(q(0.5)),
    p90Us: r(q(0.9)),
    p99Us: r(q(0.99)),
    p999Us: r(q(0.999)),
    maxUs: r(s[n - 1]! / 1000),
    meanUs: r(sum / n / 1000),
  };
}

export interface PacedResult {
  sent: number;
  seconds: number;
  achievedRate: number;
  /** Bursts (one kick / one write each) and their sizes. */
  bursts: number;
  meanBurst: number;
  maxBurst: number;
  /** Times the ring or socket was full when frames were due (they went out later). */
  fullEvents: number;
}

/**
 * Sends `count` frames at `rate` frames/s from a blocking loop: it posts every frame that is due
 * (one burst, one kick), then sleeps in Atomics.wait until the next one is due. Atomics.wait sleeps
 * without burning a core (it is a futex wait; Linux timer slack makes the shortest sleep about
 * 50-60 us), so at high rates frames go out in small bursts instead of one by one.
 *
 * `sendBurst(n)` must try to send n frames and return how many it sent; `reap()` runs every
 * iteration (TX completions polled with interrupts off). Stops early after `maxSeconds`.
 */
export function pacedLoop(
  rate: number,
  count: number,
  maxSeconds: number,
  sendBurst: (n: number) => number,
  reap: () => void,
): PacedResult {
  const sleeper = new Int32Array(new SharedArrayBuffer(4));
  const intervalNs = 1e9 / rate;
  const t0 = process.hrtime.bigint();
  const deadline = t0 + BigInt(Math.round(maxSeconds * 1e9));
  let sent = 0;
  let bursts = 0;
  let maxBurst = 0;
  let fullEvents = 0;
  for (;;) {
    reap();
    const now = process.hrtime.bigint();
    if (now > deadline) break;
    const elapsed = Number(now - t0);
    const due = Math.min(count, Math.floor(elapsed / intervalNs) + 1) - sent;
    let full = false;
    if (due > 0) {
      const n = sendBurst(due);
      if (n < due) {
        fullEvents++;
        full = true;
      }
      if (n > 0) {
        sent += n;
        bursts++;
        if (n > maxBurst) maxBurst = n;
      }
    }
    if (sent >= count) break;
    const nextNs = sent * intervalNs - Number(process.hrtime.bigint() - t0);
    if (full)
      Atomics.wait(sleeper, 0, 0, 0.02); // ring or socket full: back off briefly
    else if (nextNs > 0) Atomics.wait(sleeper, 0, 0, nextNs / 1e6);
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  return {
    sent,
    seconds,
    achievedRate: sent / seconds,
    bursts,
    meanBurst: bursts === 0 ? 0 : sent / bursts,
    maxBurst,
    fullEvents,
  };
}
