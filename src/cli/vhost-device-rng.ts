#!/usr/bin/env node
/**
 * vhost-device-rng: composition root. Parses the command line, wires the daemon, handles signals.
 */
import { readFileSync } from 'node:fs';
import type { LogFields } from '../core/util/log.js';
import { StructuredLogger } from '../node/log.js';
import { type RngDaemon, startRngDaemon } from '../node/rng/rng-daemon.js';
import { socketPaths } from './common-args.js';
import { processStats } from './process-stats.js';
import { parseRngArgs, RNG_HELP } from './rng-args.js';

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  return pkg.version;
}

/** The process line, then one line per socket with its device's counters (when connected). */
export function formatRngStats(rng: RngDaemon): LogFields[] {
  const out: LogFields[] = [processStats()];
  rng.daemon.status().forEach((s, i) => {
    const d = rng.device(i);
    out.push({
      socket: i,
      connected: s.connected,
      connections: s.connections,
      refused: s.refused,
      acceptErrors: s.acceptErrors,
      ...(d === null ? {} : d.statsFields()),
    });
  });
  return out;
}

function main(argv: readonly string[]): number {
  const parsed = parseRngArgs(argv);
  switch (parsed.kind) {
    case 'help':
      process.stdout.write(RNG_HELP);
      return 0;
    case 'version':
      process.stdout.write(`vhost-device-rng ${version()}\n`);
      return 0;
    case 'capabilities':
      process.stdout.write(`${JSON.stringify({ type: 'rng' })}\n`);
      return 0;
    case 'error':
      process.stderr.write(`vhost-device-rng: ${parsed.message}\nTry 'vhost-device-rng --help'.\n`);
      return 2;
  }
  const o = parsed.options;
  const log = new StructuredLogger({ level: o.logLevel, format: o.logFormat });
  if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
    log.error('big-endian hosts are not supported (vhost-user uses native byte order)');
    return 1;
  }
  let rng: RngDaemon;
  try {
    rng = startRngDaemon({
      paths: o.socketPath === null ? [] : socketPaths(o.socketPath, o.socketCount),
      ...(o.fd === null ? {} : { listenFds: [o.fd] }),
      filename: o.filename,
      periodMs: o.periodMs,
      ...(o.maxBytes === null ? {} : { maxBytes: o.maxBytes }),
      eventIdx: o.eventIdx,
      indirectDesc: o.indirectDesc,
      maxQueueSize: o.maxQueueSize,
      log,
    });
  } catch (err) {
    const code = (err as { code?: string }).code ?? 'ERR';
    process.stderr.write(`vhost-device-rng: ${(err as Error).message} (${code})\n`);
    return 1;
  }
  log.info('vhost-device-rng started', {
    version: version(),
    sockets: o.socketCount,
    source: o.filename,
    periodMs: o.periodMs,
    maxBytesPerGuest: Number.isFinite(rng.perGuestMaxBytes) ? rng.perGuestMaxBytes : 'unlimited',
  });
  const dumpStats = (): void => {
    for (const line of formatRngStats(rng)) log.info('stats', line);
  };
  const timer = o.statsInterval > 0 ? setInterval(dumpStats, o.statsInterval * 1000) : null;
  process.on('SIGUSR1', dumpStats);
  const shutdown = (sig: string): void => {
    log.info('shutting down', { signal: sig });
    if (timer) clearInterval(timer);
    dumpStats();
    rng.stop();
    process.exit(0);
  };
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  return -1; // keep running
}

const rc = main(process.argv.slice(2));
if (rc >= 0) process.exitCode = rc;
