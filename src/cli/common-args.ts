/**
 * Command-line pieces every daemon of this project shares: the options of the vhost-user back-end
 * program conventions (--socket-path, --fd, --print-capabilities), the socket count, the ring
 * options, logging and statistics. Each daemon's parser adds its own options to these and calls
 * `parseCommon` first; the messages name the option and what is expected.
 */
import { type ParseArgsConfig, parseArgs } from 'node:util';
import { isLogLevel, type LogLevel } from '../node/log.js';

/** Options of every daemon (for parseArgs). */
export const COMMON_OPTIONS = {
  'socket-path': { type: 'string', short: 's' },
  fd: { type: 'string' },
  'socket-count': { type: 'string', short: 'c' },
  'no-event-idx': { type: 'boolean' },
  'no-indirect-desc': { type: 'boolean' },
  'max-queue-size': { type: 'string', short: 'q' },
  'log-level': { type: 'string' },
  'log-format': { type: 'string' },
  verbose: { type: 'boolean', short: 'v' },
  'stats-interval': { type: 'string' },
  'print-capabilities': { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean', short: 'V' },
} as const satisfies NonNullable<ParseArgsConfig['options']>;

/** The --help lines of the options in COMMON_OPTIONS that every daemon describes the same way. */
export const COMMON_OPTIONS_HELP = `    --no-event-idx, --no-indirect-desc
        Do not offer VIRTIO_RING_F_EVENT_IDX / VIRTIO_RING_F_INDIRECT_DESC.
    -q, --max-queue-size N
        Largest virtqueue size accepted (power of two, default 1024).
    --stats-interval SECONDS
        Log every counter every SECONDS (0 = never; default). SIGUSR1 logs them at any time.
    --log-level error|warn|info|debug, -v (= debug), --log-format text|json
        Logging, on stderr.
    --print-capabilities
        Print the back-end's capabilities as JSON and exit (vhost-user back-end conventions).
    -h, --help      This text.
    -V, --version   The version.
`;

export type ArgValues = Record<string, string | boolean | string[] | undefined>;

export interface CommonOptions {
  /** Base socket path; null with --fd. */
  socketPath: string | null;
  /** An already-open listening vhost-user socket (--fd). */
  fd: number | null;
  socketCount: number;
  eventIdx: boolean;
  indirectDesc: boolean;
  maxQueueSize: number;
  logLevel: LogLevel;
  logFormat: 'text' | 'json';
  statsInterval: number;
}

/** What every parser returns besides its own 'run' result. */
export type EarlyResult =
  | { kind: 'help' }
  | { kind: 'version' }
  | { kind: 'capabilities' }
  | { kind: 'error'; message: string };

/** An integer option in [min, max] (default when absent), or the message for a bad value. */
export function intOption(
  v: string | undefined,
  name: string,
  min: number,
  max: number,
  dflt: number,
): number | string {
  if (v === undefined) return dflt;
  if (!/^[0-9]+$/.test(v)) return `--${name} expects an integer, got "${v}"`;
  const n = Number(v);
  if (n < min || n > max) return `--${name} must be between ${min} and ${max}, got ${n}`;
  return n;
}

/**
 * The help/version/capabilities requests and the shared options, in the order a user expects the
 * errors: an early result, or the parsed common options.
 */
export function parseCommon(
  values: ArgValues,
  positionals: readonly string[],
  maxSockets: number,
): EarlyResult | { kind: 'common'; options: CommonOptions } {
  const err = (message: string): EarlyResult => ({ kind: 'error', message });
  // vhost-user back-end program conventions: --print-capabilities ignores every other option.
  if (values['print-capabilities']) return { kind: 'capabilities' };
  if (values.help) return { kind: 'help' };
  if (values.version) return { kind: 'version' };
  if (positionals.length > 0) return err(`unexpected argument "${positionals[0]}"`);

  const socketPath = (values['socket-path'] as string | undefined) ?? null;
  const fdArg = values.fd as string | undefined;
  if (socketPath !== null && fdArg !== undefined) return err('--socket-path and --fd exclude each other');
  if ((socketPath === null || socketPath === '') && fdArg === undefined) {
    return err('the required option --socket-path PATH (or --fd N) is missing');
  }
  let fd: number | null = null;
  if (fdArg !== undefined) {
    const n = intOption(fdArg, 'fd', 0, 2 ** 31 - 1, 0);
    if (typeof n === 'string') return err(n);
    fd = n;
  }
  const count = intOption(values['socket-count'] as string | undefined, 'socket-count', 1, maxSockets, 1);
  if (typeof count === 'string') return err(count);
  if (fd !== null && count !== 1) return err('--fd serves one guest: --socket-count must be 1');
  // Suffixes 0..N-1 are appended; sun_path holds 107 bytes.
  const longest = `${socketPath}${count - 1}`;
  if (socketPath !== null && Buffer.byteLength(longest) > 107) {
    return err(`socket path "${longest}" is longer than the 107 bytes a Unix socket allows`);
  }
  const mq = intOption(values['max-queue-size'] as string | undefined, 'max-queue-size', 1, 32768, 1024);
  if (typeof mq === 'string') return err(mq);
  if ((mq & (mq - 1)) !== 0) return err(`--max-queue-size must be a power of two, got ${mq}`);
  const statsInterval = intOption(
    values['stats-interval'] as string | undefined,
    'stats-interval',
    0,
    86400,
    0,
  );
  if (typeof statsInterval === 'string') return err(statsInterval);
  let logLevel: LogLevel = values.verbose ? 'debug' : 'info';
  const lv = values['log-level'] as string | undefined;
  if (lv !== undefined) {
    if (!isLogLevel(lv)) return err(`--log-level must be error, warn, info or debug, got "${lv}"`);
    logLevel = lv;
  }
  const lf = (values['log-format'] as string | undefined) ?? 'text';
  if (lf !== 'text' && lf !== 'json') return err(`--log-format must be text or json, got "${lf}"`);
  return {
    kind: 'common',
    options: {
      socketPath,
      fd,
      socketCount: count,
      eventIdx: !values['no-event-idx'],
      indirectDesc: !values['no-indirect-desc'],
      maxQueueSize: mq,
      logLevel,
      logFormat: lf,
      statsInterval,
    },
  };
}

/**
 * Parses `argv` with the common options plus the daemon's `own`, then the common ones: an early
 * result (help, version, capabilities, error), or every value and the parsed common options.
 */
export function parseDaemonArgs(
  argv: readonly string[],
  own: NonNullable<ParseArgsConfig['options']>,
  maxSockets: number,
): EarlyResult | { kind: 'common'; options: CommonOptions; values: ArgValues } {
  let values: ArgValues;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: [...argv],
      strict: true,
      allowPositionals: true,
      options: { ...COMMON_OPTIONS, ...own },
    }));
  } catch (err) {
    return { kind: 'error', message: (err as Error).message };
  }
  const common = parseCommon(values, positionals, maxSockets);
  return common.kind === 'common' ? { ...common, values } : common;
}

export function socketPaths(base: string, count: number): string[] {
  return Array.from({ length: count }, (_, i) => `${base}${i}`);
}
