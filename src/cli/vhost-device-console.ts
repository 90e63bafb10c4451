#!/usr/bin/env node
/**
 * vhost-device-console: composition root. Parses the command line and starts the daemon
 * (run-daemon.ts handles the rest: help, exit codes, statistics, signals); the terminal (nested
 * backend) is restored on every way out.
 */
import { type ConsoleBackend, startConsoleDaemon } from '../node/console/console-daemon.js';
import { startConsoleWeb } from '../node/http/console-web.js';
import { socketPaths } from './common-args.js';
import { CONSOLE_HELP, type ConsoleCliOptions, parseConsoleArgs } from './console-args.js';
import { formatConsoleStats } from './console-stats.js';
import { httpToken, serveHttp } from './http-args.js';
import { main, packageVersion } from './run-daemon.js';

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

main<ConsoleCliOptions>({
  name: 'vhost-device-console',
  capabilityType: 'console',
  help: CONSOLE_HELP,
  parse: parseConsoleArgs,
  async start(o, log, quit) {
    const token = httpToken(o.http, log); // first: a bad token file fails before any socket exists
    const con = await startConsoleDaemon({
      paths: o.socketPath === null ? [] : socketPaths(o.socketPath, o.socketCount),
      ...(o.fd !== null ? { listenFds: [o.fd] } : {}),
      backend: backendOf(o, quit),
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
    const http = await serveHttp(
      o.http,
      token,
      log,
      packageVersion(),
      () => con.stop(),
      (w) => startConsoleWeb(con, w),
    );
    return { stats: () => formatConsoleStats(con), stop: http.stop, started: http.started };
  },
  describe: (o) => ({
    sockets: o.fd !== null ? 1 : o.socketCount,
    backend: o.backend,
    ports: 1 + o.portNames.length,
  }),
});
