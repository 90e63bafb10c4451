#!/usr/bin/env node
/**
 * vhost-device-can: composition root. Parses the command line, wires the daemon (run-daemon.ts
 * handles the rest: help, exit codes, statistics, signals).
 */
import { busName, startCanDaemon } from '../node/can/can-daemon.js';
import { CAN_HELP, type CanCliOptions, parseCanArgs, socketPaths } from './can-args.js';
import { formatStats } from './can-stats.js';
import { main } from './run-daemon.js';

main<CanCliOptions>({
  name: 'vhost-device-can',
  capabilityType: 'can',
  help: CAN_HELP,
  parse: parseCanArgs,
  start(o, log) {
    const can = startCanDaemon({
      paths: o.socketPath === null ? [] : socketPaths(o.socketPath, o.socketCount),
      ...(o.fd === null ? {} : { listenFds: [o.fd] }),
      buses: o.buses,
      features: o.features,
      eventIdx: o.eventIdx,
      indirectDesc: o.indirectDesc,
      maxQueueSize: o.maxQueueSize,
      rxBacklog: o.rxBacklog,
      socketcanRcvbuf: o.socketcanRcvbuf,
      ports: o.ports,
      portOptions: o.portOptions,
      timing: o.timing,
      faults: o.faults,
      log,
    });
    return { stats: () => formatStats(can), stop: () => can.stop() };
  },
  describe: (o) => ({
    sockets: o.socketCount,
    buses: [...new Set([...o.buses.map(busName), ...o.ports.map((p) => p.bus)])].join(' '),
  }),
});
