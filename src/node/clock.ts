/** Clocks for the node layer. */

/**
 * The bus clock: CLOCK_MONOTONIC in nanoseconds, read once per wake-up. Every frame put on a bus
 * while one callback runs (a guest's kick, a host socket's readiness) gets the same timestamp, the
 * time the daemon picked the batch up, and the same bigint object, so stamping allocates nothing per
 * frame. The cached value expires in a microtask, which Node runs as soon as the callback returns.
 */
export function batchClock(): () => bigint {
  let now: bigint | null = null;
  const expire = (): void => {
    now = null;
  };
  return (): bigint => {
    if (now === null) {
      now = process.hrtime.bigint();
      queueMicrotask(expire);
    }
    return now;
  };
}
