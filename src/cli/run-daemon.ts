/**
 * The life of every daemon command, written once: parse the command line; answer --help,
 * --version and --print-capabilities; refuse a bad command line with exit status 2; start the
 * daemon (exit status 1 with its error when that fails); log statistics on SIGUSR1 and every
 * --stats-interval; on SIGINT/SIGTERM (and SIGHUP) log them a last time, stop and exit 0.
 */
import { readFileSync } from 'node:fs';
import type { LogFields } from '../core/util/log.js';
import { StructuredLogger } from '../node/log.js';
import type { CommonOptions, EarlyResult } from './common-args.js';

export interface RunningDaemon {
  /** One log line's fields per entry: the process, then devices, buses, ports. */
  stats(): LogFields[];
  stop(): void;
  /** More fields for the "started" line, known only once the daemon runs. */
  started?: LogFields;
}

export interface DaemonCli<O extends CommonOptions> {
  /** The command's name, e.g. "vhost-device-can". */
  name: string;
  /** The vhost-user back-end type printed by --print-capabilities. */
  capabilityType: string;
  help: string;
  parse(argv: readonly string[]): { kind: 'run'; options: O } | EarlyResult;
  /** Starts the daemon; `quit` ends it as a signal would (for a terminal's escape sequence). */
  start(o: O, log: StructuredLogger, quit: () => void): RunningDaemon | Promise<RunningDaemon>;
  /** Fields of the "started" log line. */
  describe(o: O): LogFields;
}

export function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  return pkg.version;
}

/** Runs the command; resolves with the exit status, or -1 while the daemon keeps running. */
export async function runDaemonCli<O extends CommonOptions>(
  cli: DaemonCli<O>,
  argv: readonly string[],
): Promise<number> {
  const parsed = cli.parse(argv);
  switch (parsed.kind) {
    case 'help':
      process.stdout.write(cli.help);
      return 0;
    case 'version':
      process.stdout.write(`${cli.name} ${packageVersion()}\n`);
      return 0;
    case 'capabilities':
      // vhost-user back-end program conventions: JSON on stdout, exit 0.
      process.stdout.write(`${JSON.stringify({ type: cli.capabilityType })}\n`);
      return 0;
    case 'error':
      process.stderr.write(`${cli.name}: ${parsed.message}\nTry '${cli.name} --help'.\n`);
      return 2;
  }
  const o = parsed.options;
  const log = new StructuredLogger({ level: o.logLevel, format: o.logFormat });
  if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
    log.error('big-endian hosts are not supported (vhost-user uses native byte order)');
    return 1;
  }
  let d: RunningDaemon | null = null;
  let timer: ReturnType<typeof setInterval> | null = null;
  const dumpStats = (): void => {
    if (d !== null) for (const line of d.stats()) log.info('stats', line);
  };
  const shutdown = (why: string): void => {
    log.info('shutting down', { reason: why });
    if (timer) clearInterval(timer);
    dumpStats();
    d?.stop();
    process.exit(0);
  };
  try {
    d = await cli.start(o, log, () => shutdown('quit'));
  } catch (err) {
    const code = (err as { code?: string }).code ?? 'ERR';
    process.stderr.write(`${cli.name}: ${(err as Error).message} (${code})\n`);
    return 1;
  }
  // Before the "started" line: whoever waits for it may signal at once, and a SIGUSR1 that
  // arrives before a listener exists starts Node's inspector instead.
  process.on('SIGUSR1', dumpStats);
  log.info(`${cli.name} started`, { version: packageVersion(), ...cli.describe(o), ...d.started });
  timer = o.statsInterval > 0 ? setInterval(dumpStats, o.statsInterval * 1000) : null;
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGHUP', () => shutdown('SIGHUP'));
  return -1;
}

/** The entry point of a daemon command. */
export function main<O extends CommonOptions>(cli: DaemonCli<O>): void {
  runDaemonCli(cli, process.argv.slice(2)).then(
    (rc) => {
      if (rc >= 0) process.exitCode = rc;
    },
    (err) => {
      process.stderr.write(`${cli.name}: ${(err as Error)?.stack ?? err}\n`);
      process.exitCode = 1;
    },
  );
}
