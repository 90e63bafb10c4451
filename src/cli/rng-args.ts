/**
 * Command-line parsing for vhost-device-rng, free of side effects so it can be unit tested.
 * A drop-in for rust-vmm's CLI (--socket-path/-s, --socket-count/-c, --period/-p, --max-bytes/-m,
 * --filename/-f, same meanings), plus the options every daemon of this project has. Every bad
 * input yields a message naming the option and what is expected.
 */
import {
  COMMON_OPTIONS_HELP,
  type CommonOptions,
  type EarlyResult,
  intOption,
  parseDaemonArgs,
} from './common-args.js';

export interface RngCliOptions extends CommonOptions {
  /** Entropy source file. */
  filename: string;
  /** Milliseconds per rate-limit period. */
  periodMs: number;
  /** Bytes per period for all guests together; null = unlimited. */
  maxBytes: number | null;
}

export type RngCliResult = { kind: 'run'; options: RngCliOptions } | EarlyResult;

export const MAX_RNG_SOCKETS = 64;
export const DEFAULT_PERIOD_MS = 1000;
/** setTimeout's limit: a longer period could not be timed. */
export const MAX_PERIOD_MS = 2 ** 31 - 1;

export function parseRngArgs(argv: readonly string[]): RngCliResult {
  const common = parseDaemonArgs(
    argv,
    {
      period: { type: 'string', short: 'p' },
      'max-bytes': { type: 'string', short: 'm' },
      filename: { type: 'string', short: 'f' },
    },
    MAX_RNG_SOCKETS,
  );
  if (common.kind !== 'common') return common;
  const values = common.values;
  const count = common.options.socketCount;
  const period = intOption(
    values.period as string | undefined,
    'period',
    1,
    MAX_PERIOD_MS,
    DEFAULT_PERIOD_MS,
  );
  if (typeof period === 'string') return { kind: 'error', message: period };
  let maxBytes: number | null = null;
  if (values['max-bytes'] !== undefined) {
    const m = intOption(values['max-bytes'] as string, 'max-bytes', 1, Number.MAX_SAFE_INTEGER, 0);
    if (typeof m === 'string') return { kind: 'error', message: m };
    if (m < count) {
      return {
        kind: 'error',
        message: `--max-bytes ${m} is split between ${count} guests: it must be at least ${count}`,
      };
    }
    maxBytes = m;
  }
  const filename = (values.filename as string | undefined) ?? '/dev/urandom';
  if (filename === '') return { kind: 'error', message: '--filename is empty' };
  return { kind: 'run', options: { ...common.options, filename, periodMs: period, maxBytes } };
}

export const RNG_HELP = `NAME
    vhost-device-rng - VirtIO entropy device back-end (vhost-user): random bytes for guests,
    rate-limited like a hardware generator

SYNOPSIS
    vhost-device-rng --socket-path PATH [--socket-count N] [--period MS] [--max-bytes N]
                     [--filename PATH] [OPTIONS]
    vhost-device-rng --fd N [OPTIONS]
    vhost-device-rng --print-capabilities

DESCRIPTION
    Serves N guests, one vhost-user Unix socket each, at PATH0 .. PATH{N-1}. Each guest gets a
    VirtIO entropy device (device ID 4; /dev/hwrng in a Linux guest with virtio_rng). Every buffer
    the guest posts is filled with bytes read from the source.

    With --max-bytes, at most that many bytes are handed out per --period, split equally between
    the guests (each gets max-bytes / N). A request beyond the budget gets what is left; the
    following ones wait for the next period. "--max-bytes 5000 --period 1000" is 5 kB per second.
    A source that yields nothing (end of a file, a device with no data) makes requests wait for the
    next period too (counted as sourceErrors).

OPTIONS
    -s, --socket-path PATH
        Base path of the vhost-user sockets; the index 0..N-1 is appended.
    --fd N
        Serve one guest on an already-open listening Unix socket N instead of --socket-path.
    -c, --socket-count N
        Number of guests, 1..${MAX_RNG_SOCKETS}. Default 1.
    -f, --filename PATH
        Entropy source. Default /dev/urandom (read through the kernel's getrandom). Any other file
        is read non-blocking, e.g. /dev/hwrng of the host.
    -p, --period MS
        Length of a rate-limit period in milliseconds, 1..${MAX_PERIOD_MS}. Default ${DEFAULT_PERIOD_MS}.
    -m, --max-bytes N
        Bytes per period for all guests together. Default: unlimited.
${COMMON_OPTIONS_HELP}
QEMU
    Start the daemon first, then QEMU (10.2 or newer has vhost-user-test-device-pci; older ones
    have vhost-user-rng-pci, chardev=rng0):
      qemu-system-x86_64 ... \\
        -object memory-backend-memfd,id=mem,size=1G,share=on -machine memory-backend=mem \\
        -chardev socket,id=rng0,path=PATH0 \\
        -device vhost-user-test-device-pci,chardev=rng0,virtio-id=4,num_vqs=1,config_size=0

EXIT STATUS
    0 after SIGINT/SIGTERM (sockets removed), 2 for a bad command line, 1 when start-up fails
    (path in use, source missing, ...).
`;
