/**
 * The hubs' wake-ups (CanHubOptions.timer): one timerfd per hub on CLOCK_MONOTONIC, the clock the
 * hubs' timestamps come from (process.hrtime), armed at absolute deadlines with nanosecond
 * resolution (libuv's timers count whole milliseconds; a 1 Mbit/s bus has frames 50 us apart).
 *
 * - The kernel wakes the event loop when the deadline passes (epoll on the timerfd); nothing spins
 *   and an idle bus costs nothing: the watcher is stopped while the timer is disarmed, so an idle
 *   hub does not keep the process alive either.
 * - Every frame due by the time the callback runs is handled in that one wake-up (the hub's timed
 *   bus works through all due events in order), so a late wake-up catches up in one batch.
 * - A wake-up that throws (a port handler failed) is logged; the bus goes on.
 */
import type { HubTimer, HubTimerFactory } from '../../core/bus/hub.js';
import type { Logger } from '../../core/util/log.js';
import type { NativeAddon, NativeWatcher } from '../native/addon.js';

type TimerNative = Pick<
  NativeAddon,
  'timerfdCreate' | 'timerfdArm' | 'timerfdRead' | 'close' | 'Watcher' | 'READABLE'
>;

class TimerFdHubTimer implements HubTimer {
  readonly #native: TimerNative;
  readonly #fd: number;
  readonly #watcher: NativeWatcher;
  #armed = false;
  #started = false;
  #closed = false;

  constructor(native: TimerNative, wake: () => void, log: Logger) {
    this.#native = native;
    this.#fd = native.timerfdCreate();
    this.#watcher = new native.Watcher(this.#fd, (status) => {
      if (status < 0) {
        log.error('bus timer failed', { status });
        return;
      }
      if (native.timerfdRead(this.#fd) === null) return; // re-armed meanwhile: not due yet
      this.#armed = false;
      try {
        wake();
      } catch (err) {
        log.error('bus wake-up failed', { reason: (err as Error)?.message ?? String(err) });
      }
      if (!this.#armed && this.#started && !this.#closed) {
        this.#watcher.stop();
        this.#started = false;
      }
    });
  }

  arm(deadlineNs: number): void {
    if (this.#closed) return;
    this.#native.timerfdArm(this.#fd, deadlineNs > 0 ? deadlineNs : 1);
    this.#armed = true;
    if (!this.#started) {
      this.#watcher.start(this.#native.READABLE);
      this.#started = true;
    }
  }

  disarm(): void {
    if (this.#closed || !this.#armed) return;
    this.#native.timerfdArm(this.#fd, 0);
    this.#armed = false;
    if (this.#started) {
      this.#watcher.stop();
      this.#started = false;
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#watcher.close();
    this.#native.close(this.#fd);
  }
}

/** A `CanHubOptions.timer` backed by timerfds. */
export function timerFdHubTimers(native: TimerNative, log: Logger): HubTimerFactory {
  return (wake) => new TimerFdHubTimer(native, wake, log);
}
