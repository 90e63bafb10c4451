#!/usr/bin/env -S node --single-threaded-gc
/**
 * vhost-device-can: composition root. Parses the command line, wires the daemon (run-daemon.ts
 * handles the rest: help, exit codes, statistics, signals).
 */
import { busName, startCanDaemon } from '../node/can/can-daemon.js';
import { startCanWeb } from '../node/http/can-web.js';
import { type CpuLatencyHold, enterRealtime, holdCpuLatency } from '../node/realtime.js';
import { CAN_HELP, type CanCliOptions, parseCanArgs, socketPaths } from './can-args.js';
import { formatStats } from './can-stats.js';
import { httpToken, serveHttp } from './http-args.js';
import { main, packageVersion } from './run-daemon.js';

main<CanCliOptions>({
  name: 'vhost-device-can',
  capabilityType: 'can',
  help: CAN_HELP,
  parse: parseCanArgs,
  async start(o, log) {
    const token = httpToken(o.http, log); // first: a bad token file fails before any socket exists
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
      ...(o.socketcand === null ? {} : { socketcand: o.socketcand }),
      timing: o.timing,
      faults: o.faults,
      log,
    });
    if (can.socketcand !== null) {
      try {
        await can.socketcand.ready;
      } catch (err) {
        can.stop();
        throw err;
      }
    }
    const http = await serveHttp(
      o.http,
      token,
      log,
      packageVersion(),
      () => can.stop(),
      (w) => startCanWeb(can, w),
    );
    if (o.realtime !== null) {
      // Last: once every socket is bound, so a refusal stops a complete daemon (files removed).
      try {
        enterRealtime(o.realtime, { log });
      } catch (err) {
        http.stop();
        throw err;
      }
      const untimed = [...can.buses.keys()].filter((b) => o.timing[b] === undefined);
      if (untimed.length > 0) {
        log.warn(
          'realtime: a flood on an untimed bus keeps a core busy at real-time priority ' +
            '(the kernel leaves other tasks only the share kernel.sched_rt_runtime_us grants, 5 % by default)',
          { untimed: untimed.join(' ') },
        );
      }
    }
    let hold: CpuLatencyHold | null = null;
    if (o.cpuLatency !== null) {
      try {
        hold = holdCpuLatency(o.cpuLatency, { log });
      } catch (err) {
        http.stop();
        throw err;
      }
    }
    const stop = (): void => {
      hold?.release();
      http.stop();
    };
    return { stats: () => formatStats(can), stop, started: http.started };
  },
  describe: (o) => ({
    sockets: o.socketCount,
    buses: [...new Set([...o.buses.map(busName), ...o.ports.map((p) => p.bus)])].join(' '),
  }),
});
