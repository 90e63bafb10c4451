/**
 * What every bus port that carries frames to something outside the process shares (a host
 * SocketCAN interface, a socketcand or cannelloni peer):
 *
 * - TxBatcher: the hub tells a port about each frame queued for it, often from inside a guest's TX
 *   loop. Writing one syscall per frame there would cost a syscall per frame; instead the first
 *   notification of a turn schedules one flush for the end of the turn (setImmediate), which then
 *   writes everything queued in batches. A flush that meets back-pressure (a full kernel queue, a
 *   TCP socket whose buffer is full) asks for a retry, which comes after a short backoff (1 ms
 *   doubling to `maxRetryMs`) or as soon as the owner says the sink drained (`kick`).
 * - LinkSupervisor: a link is up or down. Going down schedules reconnection attempts with backoff
 *   (doubling from `minMs` to `maxMs`, with jitter so a fleet of daemons does not reconnect in
 *   step); coming up resets the backoff. It keeps the state, since when, and counters, which the
 *   port shows in its statistics.
 * - ReadPacer: a TCP peer that sends faster than the daemon parses must not take the whole event
 *   loop. Without it every chunk the kernel holds is read and put on the bus within one poll
 *   phase, turn after turn, and the guests on that bus get one ring-full per (long) turn: they
 *   lose most frames while the link reads at full speed. After a turn's worth of input the socket
 *   is paused until the next turn, so guests' rings, kicks and timers run in between; TCP flow
 *   control then slows the sender, whose side drops and counts what it cannot send.
 */

export interface TxBatcherOptions {
  /**
   * Writes what is queued. Returns 'done' when everything was written (or there was nothing),
   * 'retry' when the sink pushed back and the rest must be tried again later.
   */
  flush(): 'done' | 'retry';
  /** Upper bound of the retry backoff, ms (default 50). */
  maxRetryMs?: number;
}

export class TxBatcher {
  readonly #flush: () => 'done' | 'retry';
  readonly #maxRetryMs: number;
  #scheduled = false;
  #retryTimer: ReturnType<typeof setTimeout> | null = null;
  #retryDelay = 1;
  #closed = false;
  /** Flushes that met back-pressure. */
  backpressure = 0;

  constructor(opts: TxBatcherOptions) {
    this.#flush = opts.flush;
    this.#maxRetryMs = opts.maxRetryMs ?? 50;
  }

  /** Frames were queued: flush once at the end of this turn (unless a retry is already waiting). */
  request(): void {
    if (this.#scheduled || this.#retryTimer !== null || this.#closed) return;
    this.#scheduled = true;
    setImmediate(this.#run);
  }

  /** The sink drained (a 'drain' event): retry now instead of waiting for the backoff. */
  kick(): void {
    if (this.#closed) return;
    if (this.#retryTimer !== null) {
      clearTimeout(this.#retryTimer);
      this.#retryTimer = null;
    }
    this.request();
  }

  /** True while a retry after back-pressure is pending. */
  get waiting(): boolean {
    return this.#retryTimer !== null;
  }

  /** Flushes now, synchronously (for owners that must write before doing something else). */
  flushNow(): void {
    if (this.#closed) return;
    if (this.#flush() === 'retry') this.#scheduleRetry();
    else this.#retryDelay = 1;
  }

  readonly #run = (): void => {
    this.#scheduled = false;
    if (this.#retryTimer === null) this.flushNow();
  };

  #scheduleRetry(): void {
    this.backpressure++;
    if (this.#retryTimer !== null || this.#closed) return;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      this.flushNow();
    }, this.#retryDelay);
    this.#retryDelay = Math.min(this.#retryDelay * 2, this.#maxRetryMs);
  }

  /** No more flushes (pending ones do nothing). Idempotent. */
  close(): void {
    this.#closed = true;
    if (this.#retryTimer !== null) clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
  }
}

export type LinkState = 'up' | 'down';

export interface LinkSupervisorOptions {
  /**
   * Starts one connection attempt. It reports the outcome later with `up()` or `down(reason)`
   * (or throws, which counts as `down` with the error's message).
   */
  connect(): void;
  /** First retry delay, ms (default 250). */
  minMs?: number;
  /** Largest retry delay, ms (default 10000). */
  maxMs?: number;
  /** Told about every state change (for logging). */
  onChange?(state: LinkState, reason: string): void;
}

export interface LinkStats {
  state: LinkState;
  /** Wall-clock time of the last state change, ISO 8601. */
  since: string;
  /** Times the link came up. */
  ups: number;
  /** Times it went down (including failed attempts). */
  downs: number;
  /** Connection attempts made. */
  attempts: number;
  /** Why it went down last ('' when it never did). */
  lastError: string;
}

export class LinkSupervisor {
  readonly #opts: LinkSupervisorOptions;
  readonly #minMs: number;
  readonly #maxMs: number;
  #delay: number;
  #timer: ReturnType<typeof setTimeout> | null = null;
  #closed = false;
  #connecting = false;
  readonly #stats: LinkStats = {
    state: 'down',
    since: new Date().toISOString(),
    ups: 0,
    downs: 0,
    attempts: 0,
    lastError: '',
  };

  constructor(opts: LinkSupervisorOptions) {
    this.#opts = opts;
    this.#minMs = opts.minMs ?? 250;
    this.#maxMs = opts.maxMs ?? 10_000;
    this.#delay = this.#minMs;
  }

  get state(): LinkState {
    return this.#stats.state;
  }

  /** A copy of the state and counters. */
  stats(): LinkStats {
    return { ...this.#stats };
  }

  /** Makes the first attempt now. */
  start(): void {
    this.#attempt();
  }

  /** The connection is established. */
  up(): void {
    if (this.#closed) return;
    this.#connecting = false;
    this.#delay = this.#minMs;
    if (this.#stats.state === 'up') return;
    this.#stats.state = 'up';
    this.#stats.since = new Date().toISOString();
    this.#stats.ups++;
    this.#opts.onChange?.('up', '');
  }

  /** The connection failed or was lost: schedules the next attempt. */
  down(reason: string): void {
    if (this.#closed) return;
    this.#connecting = false;
    const wasUp = this.#stats.state === 'up';
    this.#stats.downs++;
    this.#stats.lastError = reason;
    if (wasUp) {
      this.#stats.state = 'down';
      this.#stats.since = new Date().toISOString();
    }
    if (wasUp || this.#stats.downs === 1) this.#opts.onChange?.('down', reason);
    this.#schedule();
  }

  #schedule(): void {
    if (this.#timer !== null || this.#closed) return;
    // Full jitter on the upper half: between delay/2 and delay.
    const wait = Math.round(this.#delay / 2 + (Math.random() * this.#delay) / 2);
    this.#delay = Math.min(this.#delay * 2, this.#maxMs);
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#attempt();
    }, wait);
    this.#timer.unref?.();
  }

  #attempt(): void {
    if (this.#closed || this.#connecting || this.#stats.state === 'up') return;
    this.#connecting = true;
    this.#stats.attempts++;
    try {
      this.#opts.connect();
    } catch (err) {
      this.down((err as Error).message);
    }
  }

  /** Stops retrying. Idempotent. */
  close(): void {
    this.#closed = true;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
  }
}

/** What ReadPacer needs of a socket (a net.Socket). */
export interface PausableStream {
  pause(): unknown;
  resume(): unknown;
  readonly destroyed: boolean;
}

/** Default input per event-loop turn before a socket is paused until the next turn (bytes). */
export const READ_BUDGET_BYTES = 64 * 1024;

export class ReadPacer {
  readonly #socket: PausableStream;
  readonly #budget: number;
  #bytes = 0;
  #scheduled = false;
  #paused = false;
  /** Turns cut short (the socket paused until the next turn). */
  pauses = 0;

  constructor(socket: PausableStream, budget = READ_BUDGET_BYTES) {
    this.#socket = socket;
    this.#budget = budget;
  }

  /** Call after handling each 'data' chunk of `bytes`. */
  consumed(bytes: number): void {
    this.#bytes += bytes;
    if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(this.#nextTurn);
    }
    if (this.#bytes >= this.#budget && !this.#paused) {
      this.#paused = true;
      this.pauses++;
      this.#socket.pause();
    }
  }

  readonly #nextTurn = (): void => {
    this.#scheduled = false;
    this.#bytes = 0;
    if (!this.#paused) return;
    this.#paused = false;
    if (!this.#socket.destroyed) this.#socket.resume();
  };
}
