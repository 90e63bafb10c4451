#!/usr/bin/env node
/**
 * vhost-device-console: composition root. Parses the command line, starts the daemon, handles
 * signals; the terminal (nested backend) is restored on every way out.
 */
import { readFileSync } from 'node:fs';
import {
  type ConsoleBackend,
  type ConsoleDaemon,
  startConsoleDaemon,
} from '../node/console/console-daemon.js';
import { StructuredLogger } from '../node/log.js';
import { socketPaths } from './common-args.js';
import { CONSOLE_HELP, type ConsoleCliOptions, parseConsoleArgs } from './console-args.js';
import { formatConsoleStats } from './console-stats.js';

const NAME = 'vhost-device-console';

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  return pkg.version;
}

function backendOf(o: ConsoleCliOptions, quit: () => void): ConsoleBackend {
  switch (o.backend) {
    case 'network':
      return { kind: 'network', host: o.tcpHost, port: o.tcpPort };
    case 'unix':
      return { kind: 'unix', path: o.udsPath! };
    case 'nested':
      return { kind: 'nested', onQuit: quit };
  }
}

async function main(argv: readonly string[]): Promise<number> {
  const parsed = parseConsoleArgs(argv);
  switch (parsed.kind) {
    case 'help':
      process.stdout.write(CONSOLE_HELP);
      return 0;
    case 'version':
      process.stdout.write(`${NAME} ${version()}\n`);
      return 0;
    case 'capabilities':
      process.stdout.write(`${JSON.stringify({ type: 'console' })}\n`);
      return 0;
    case 'error':
      process.stderr.write(`${NAME}: ${parsed.message}\nTry '${NAME} --help'.\n`);
      return 2;
  }
  const o = parsed.options;
  const log = new StructuredLogger({ level: o.logLevel, format: o.logFormat });
  let con: ConsoleDaemon | null = null;
  let timer: ReturnType<typeof setInterval> | null = null;
  const dumpStats = (): void => {
    if (con !== null) for (const line of formatConsoleStats(con)) log.info('stats', line);
  };
  const shutdown = (why: string): void => {
    log.info('shutting down', { reason: why });
    if (timer) clearInterval(timer);
    dumpStats();
    con?.stop();
    process.exit(0);
  };
  try {
    con = await startConsoleDaemon({
      paths: o.socketPath === null ? [] : socketPaths(o.socketPath, o.socketCount),
      ...(o.fd !== null ? { listenFds: [o.fd] } : {}),
      backend: backendOf(o, () => shutdown('escape sequence')),
      portNames: o.portNames,
      scrollback: o.scrollback,
      ...(o.logFile === null ? {} : { logFile: o.logFile }),
      features: { size: o.size, multiport: o.multiport, emergWrite: o.emergWrite },
      cols: o.cols,
      rows: o.rows,
      legacyResizeOrder: o.legacyResizeOrder,
      eventIdx: o.eventIdx,
      indirectDesc: o.indirectDesc,
      maxQueueSize: o.maxQueueSize,
      log,
    });
  } catch (err) {
    const code = (err as { code?: string }).code ?? 'ERR';
    process.stderr.write(`${NAME}: ${(err as Error).message} (${code})\n`);
    return 1;
  }
  log.info(`${NAME} started`, {
    version: version(),
    sockets: o.fd !== null ? 1 : o.socketCount,
    backend: o.backend,
    ports: 1 + o.portNames.length,
  });
  timer = o.statsInterval > 0 ? setInterval(dumpStats, o.statsInterval * 1000) : null;
  process.on('SIGUSR1', dumpStats);
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGHUP', () => shutdown('SIGHUP'));
  return -1; // keep running
}

main(process.argv.slice(2)).then(
  (rc) => {
    if (rc >= 0) process.exitCode = rc;
  },
  (err) => {
    process.stderr.write(`${NAME}: ${(err as Error)?.stack ?? err}\n`);
    process.exitCode = 1;
  },
);
