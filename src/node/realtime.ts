/**
 * The daemon's main thread under the real-time FIFO scheduling class (`--realtime[=N]`).
 *
 * A timed bus (`--bitrate`) delivers every frame at its ideal end time from a timerfd wake-up on
 * the main thread, the one that runs the event loop (and all guest I/O). At normal priority that
 * wake-up waits whenever another task holds the core; under SCHED_FIFO it preempts every normal
 * task. Only the calling thread is switched: libuv's thread pool (capture file writes, zlib),
 * V8's helper threads and anything created later stay under SCHED_OTHER (SCHED_RESET_ON_FORK is
 * set, so new threads and child processes do not inherit the class).
 *
 * The CLI calls `enterRealtime` once the daemon serves (sockets bound). `startCanDaemon` does not:
 * a program that embeds the daemon owns its thread (which may run other work) and decides itself,
 * by calling the same function (exported by the package).
 */
import { type Logger, nullLogger } from '../core/util/log.js';
import { CodedError } from './errors.js';
import { native as defaultNative, type NativeAddon } from './native/addon.js';

/** The priority of a bare `--realtime` (what `chrt -f 10` gives). */
export const DEFAULT_REALTIME_PRIORITY = 10;
export const MIN_REALTIME_PRIORITY = 1;
export const MAX_REALTIME_PRIORITY = 99;

export class RealtimeError extends CodedError<'ERR_REALTIME'> {}

/** The policy and priority the thread has afterwards (read back from the kernel). */
export interface RealtimeState {
  policy: string;
  priority: number;
}

export interface RealtimeOptions {
  /** Where the one "realtime:" line goes (default: nowhere). */
  log?: Logger;
  /** The addon's two scheduling calls (default: the loaded addon; tests pass a stand-in). */
  native?: Pick<NativeAddon, 'schedSetFifo' | 'schedGet'>;
}

/**
 * Puts the calling thread under SCHED_FIFO at `priority` (1..99) and logs one line. Throws a
 * RealtimeError whose message names the cause and the fix when the kernel refuses (the thread is
 * then unchanged), a RangeError for a priority outside 1..99.
 */
export function enterRealtime(priority: number, opts: RealtimeOptions = {}): RealtimeState {
  const native = opts.native ?? defaultNative;
  const log = opts.log ?? nullLogger;
  if (!Number.isInteger(priority) || priority < MIN_REALTIME_PRIORITY || priority > MAX_REALTIME_PRIORITY) {
    throw new RangeError(
      `realtime priority must be an integer ${MIN_REALTIME_PRIORITY}..${MAX_REALTIME_PRIORITY}, got ${priority}`,
    );
  }
  try {
    native.schedSetFifo(priority, true);
  } catch (err) {
    throw new RealtimeError('ERR_REALTIME', realtimeRefusal(err, priority), { cause: err });
  }
  const now = native.schedGet();
  log.info(`realtime: main thread ${now.policy} priority ${now.priority}`, {
    resetOnFork: now.resetOnFork,
  });
  return { policy: now.policy, priority: now.priority };
}

/** Why the kernel refused SCHED_FIFO at `priority`, and what to do about it. */
export function realtimeRefusal(err: unknown, priority: number): string {
  const e = err as { code?: unknown; message?: unknown };
  const code = typeof e?.code === 'string' ? e.code : 'unknown';
  const reason = typeof e?.message === 'string' ? e.message : String(err);
  const head = `--realtime=${priority}: the kernel refused SCHED_FIFO priority ${priority} for the main thread (${reason})`;
  switch (code) {
    case 'EPERM':
      return (
        `${head}: it needs root or CAP_SYS_NICE (setcap cap_sys_nice+ep on node, or ` +
        `AmbientCapabilities=CAP_SYS_NICE in a systemd unit), or a real-time priority limit of at ` +
        `least ${priority} (\`ulimit -r ${priority}\`, LimitRTPRIO=${priority}); in a control group ` +
        `without real-time time (cpu.rt_runtime_us = 0) even root is refused`
      );
    case 'EINVAL':
      return `${head}: this kernel does not accept that policy or priority (sched_get_priority_max(SCHED_FIFO) is usually 99)`;
    default:
      return head;
  }
}
