#!/usr/bin/env node
/**
 * vhost-device-rng: composition root. Parses the command line and wires the daemon (run-daemon.ts
 * handles the rest: help, exit codes, statistics, signals).
 */
import { startRngDaemon } from '../node/rng/rng-daemon.js';
import { socketPaths } from './common-args.js';
import { parseRngArgs, RNG_HELP, type RngCliOptions } from './rng-args.js';
import { formatRngStats } from './rng-stats.js';
import { main } from './run-daemon.js';

main<RngCliOptions>({
  name: 'vhost-device-rng',
  capabilityType: 'rng',
  help: RNG_HELP,
  parse: parseRngArgs,
  start(o, log) {
    const rng = startRngDaemon({
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
    const perGuest = rng.perGuestMaxBytes;
    return {
      stats: () => formatRngStats(rng),
      stop: () => rng.stop(),
      started: { maxBytesPerGuest: Number.isFinite(perGuest) ? perGuest : 'unlimited' },
    };
  },
  describe: (o) => ({
    sockets: o.socketCount,
    source: o.filename,
    periodMs: o.periodMs,
  }),
});
