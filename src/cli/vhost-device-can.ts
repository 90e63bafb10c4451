#!/usr/bin/env node
/**
 * vhost-device-can: composition root. Parses the command line, wires the daemon, handles signals.
 */
import { readFileSync } from 'node:fs';
import { startCanDaemon } from '../node/can/can-daemon.js';
import { StructuredLogger } from '../node/log.js';
import { CAN_HELP, parseCanArgs, socketPaths } from './can-args.js';
import { formatStats } from './can-stats.js';

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  return pkg.version;
}

function main(argv: readonly string[]): number {
  const parsed = parseCanArgs(argv);
  switch (parsed.kind) {
    case 'help':
      process.stdout.write(CAN_HELP);
      return 0;
    case 'version':
      process.stdout.write(`vhost-device-can ${version()}\n`);
      return 0;
    case 'capabilities':
      process.stdout.write(`${JSON.stringify({ type: 'can' })}\n`);
      return 0;
    case 'error':
      process.stderr.write(`vhost-device-can: ${parsed.message}\nTry 'vhost-device-can --help'.\n`);
      return 2;
  }
  const o = parsed.options;
  const log = new StructuredLogger({ level: o.logLevel, format: o.logFormat });
  if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
    log.error('big-endian hosts are not supported (vhost-user uses native byte order)');
    return 1;
  }
  let can: ReturnType<typeof startCanDaemon>;
  try {
    can = startCanDaemon({
      paths: socketPaths(o.socketPath, o.socketCount),
      buses: o.buses,
      features: o.features,
      eventIdx: o.eventIdx,
      indirectDesc: o.indirectDesc,
      maxQueueSize: o.maxQueueSize,
      rxBacklog: o.rxBacklog,
      log,
    });
  } catch (err) {
    const code = (err as { code?: string }).code ?? 'ERR';
    process.stderr.write(`vhost-device-can: ${(err as Error).message} (${code})\n`);
    return 1;
  }
  log.info('vhost-device-can started', {
    version: version(),
    sockets: o.socketCount,
    buses: [...new Set(o.buses.map((b) => (b.kind === 'virtual' ? `virtual:${b.name}` : b.ifname)))].join(
      ' ',
    ),
  });
  const dumpStats = (): void => {
    for (const line of formatStats(can)) log.info('stats', line);
  };
  const timer = o.statsInterval > 0 ? setInterval(dumpStats, o.statsInterval * 1000) : null;
  process.on('SIGUSR1', dumpStats);
  const shutdown = (sig: string): void => {
    log.info('shutting down', { signal: sig });
    if (timer) clearInterval(timer);
    dumpStats();
    can.stop();
    process.exit(0);
  };
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  return -1; // keep running
}

const rc = main(process.argv.slice(2));
if (rc >= 0) process.exitCode = rc;
