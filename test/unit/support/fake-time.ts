/** A hand-driven clock and hub timer for timed-bus unit tests. */
import type { HubTimerFactory } from '../../../src/core/bus/hub.js';

export class FakeTime {
  now = 0n;
  /** The armed deadline (hub clock ns), null when disarmed. */
  deadline: number | null = null;
  wakeups = 0;
  private wake: (() => void) | null = null;
  readonly clock = (): bigint => this.now;
  readonly timer: HubTimerFactory = (wake) => {
    this.wake = wake;
    return {
      arm: (d) => {
        this.deadline = d;
      },
      disarm: () => {
        this.deadline = null;
      },
      close: () => {
        this.deadline = null;
      },
    };
  };

  /**
   * Runs every wake-up due up to `t` (ns), each exactly at its deadline (a perfect timer), plus
   * `lateNs` (a late one), then leaves the clock at `t`.
   */
  runUntil(t: bigint, lateNs = 0n, maxWakes = 1_000_000): void {
    for (let i = 0; i < maxWakes; i++) {
      const d = this.deadline;
      if (d === null || d > Number(t)) break;
      this.deadline = null;
      const at = BigInt(Math.ceil(d)) + lateNs;
      if (at > this.now) this.now = at;
      this.wakeups++;
      this.wake!();
    }
    if (t > this.now) this.now = t;
  }

  /** Runs for `ns` more nanoseconds. */
  run(ns: bigint, lateNs = 0n): void {
    this.runUntil(this.now + ns, lateNs);
  }
}
