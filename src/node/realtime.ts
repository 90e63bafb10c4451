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
 *
 * `--cpu-latency=US` (`holdCpuLatency`) is the other half: even a real-time thread has to wait for
 * its CPU to come out of an idle state. Deep idle states (and, in a virtual machine, a halted
 * vCPU that the host has to schedule again) take tens of microseconds to leave. The kernel's PM QoS
 * CPU latency limit (/dev/cpu_dma_latency) keeps every CPU out of idle states slower to leave than
 * the limit, for as long as the requesting file stays open; at 0 idle CPUs poll instead of sleeping.
 */
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { type Logger, nullLogger } from '../core/util/log.js';
import { CodedError } from './errors.js';
import { native as defaultNative, type NativeAddon } from './native/addon.js';
import { REALTIME_NODE_FLAGS } from './realtime-flags.js';

/** The priority of a bare `--realtime` (what `chrt -f 10` gives). */
export const DEFAULT_REALTIME_PRIORITY = 10;
export const MIN_REALTIME_PRIORITY = 1;
export const MAX_REALTIME_PRIORITY = 99;

/** The kernel's PM QoS CPU latency device. */
export const CPU_LATENCY_DEVICE = '/dev/cpu_dma_latency';
/** The kernel's "no limit" (PM_QOS_CPU_LATENCY_DEFAULT_VALUE, microseconds): the largest limit asked. */
export const MAX_CPU_LATENCY_US = 2_000_000_000;

export { REALTIME_NODE_FLAGS };

export class RealtimeError extends CodedError<'ERR_REALTIME' | 'ERR_CPU_LATENCY'> {}

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
  /** The node options the process started with (default process.execArgv), for the GC warning. */
  execArgv?: readonly string[];
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
  const execArgv = opts.execArgv ?? process.execArgv;
  const missing = REALTIME_NODE_FLAGS.filter((f) => !execArgv.includes(f));
  if (missing.length > 0) {
    log.warn(
      `realtime: node was started without ${missing.join(' ')}: V8's garbage collector then makes the ` +
        'real-time main thread wait for helper threads at normal priority, which can stall it for tens ' +
        'of milliseconds (the vhost-device-can command and npm start pass it; a program embedding the ' +
        `daemon runs node ${missing.join(' ')} ...)`,
    );
  }
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

/** A CPU latency limit this process holds (`holdCpuLatency`). */
export interface CpuLatencyHold {
  /** The limit asked for, in microseconds. */
  readonly requestedUs: number;
  /** The limit the kernel applies once this one is placed: the lowest of every holder's. */
  readonly effectiveUs: number;
  /** Drops the request (closes the device); idempotent. Exiting the process drops it as well. */
  release(): void;
}

export interface CpuLatencyOptions {
  /** Where the one "cpu-latency:" line goes (default: nowhere). */
  log?: Logger;
  /** The device (default CPU_LATENCY_DEVICE; tests pass another file). */
  device?: string;
}

/**
 * Asks the kernel to keep every CPU's idle wake-up latency at most `us` microseconds (0: idle CPUs
 * poll) until `release()` or the end of the process, and logs one line. Throws a RealtimeError
 * (ERR_CPU_LATENCY) naming the cause when the device cannot be opened or written, a RangeError
 * for a limit outside 0..MAX_CPU_LATENCY_US.
 */
export function holdCpuLatency(us: number, opts: CpuLatencyOptions = {}): CpuLatencyHold {
  const device = opts.device ?? CPU_LATENCY_DEVICE;
  if (!Number.isInteger(us) || us < 0 || us > MAX_CPU_LATENCY_US) {
    throw new RangeError(`CPU latency must be an integer 0..${MAX_CPU_LATENCY_US} (microseconds), got ${us}`);
  }
  let fd: number;
  try {
    fd = openSync(device, 'r+');
  } catch (err) {
    throw new RealtimeError('ERR_CPU_LATENCY', cpuLatencyRefusal(err, us, device), { cause: err });
  }
  let effectiveUs: number;
  try {
    // Four bytes are taken as a binary s32 in the host's byte order (anything else as a hex string).
    const value = new Int32Array([us]);
    writeSync(fd, new Uint8Array(value.buffer));
    // Reading gives the limit in force, the lowest of all requests (the same binary s32).
    const back = new Int32Array(1);
    effectiveUs = readSync(fd, new Uint8Array(back.buffer), 0, 4, null) === 4 ? back[0]! : us;
  } catch (err) {
    closeSync(fd);
    throw new RealtimeError('ERR_CPU_LATENCY', cpuLatencyRefusal(err, us, device), { cause: err });
  }
  let open = true;
  (opts.log ?? nullLogger).info(`cpu-latency: idle CPUs held to a wake-up latency of at most ${us} us`, {
    device,
    effectiveUs,
  });
  return {
    requestedUs: us,
    effectiveUs,
    release() {
      if (!open) return;
      open = false;
      closeSync(fd);
    },
  };
}

/** Why the CPU latency limit could not be placed, and what to do about it. */
export function cpuLatencyRefusal(err: unknown, us: number, device: string): string {
  const e = err as { code?: unknown; message?: unknown };
  const code = typeof e?.code === 'string' ? e.code : 'unknown';
  const reason = typeof e?.message === 'string' ? e.message : String(err);
  const head = `--cpu-latency=${us}: cannot hold the CPU latency limit through ${device} (${reason})`;
  switch (code) {
    case 'EACCES':
    case 'EPERM':
      return `${head}: the device is root's (mode 0600 by default); run as root, or let the daemon's user write it (a udev rule)`;
    case 'ENOENT':
    case 'ENODEV':
    case 'ENXIO':
      return `${head}: this kernel has no PM QoS CPU latency device (built without CONFIG_CPU_IDLE, or /dev not populated)`;
    default:
      return head;
  }
}
