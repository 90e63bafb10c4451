/** Turns the console daemon's counters into flat log fields (the process, then one line per port). */
import type { LogFields } from '../core/util/log.js';
import type { ConsoleDaemon } from '../node/console/console-daemon.js';
import { processStats } from './process-stats.js';

export function formatConsoleStats(con: ConsoleDaemon): LogFields[] {
  const out: LogFields[] = [processStats()];
  const sockets = con.daemon.status();
  con.status().forEach((g, i) => {
    const dev = con.device(i);
    const s = sockets[i];
    out.push({
      guest: i,
      connected: g.connected,
      connections: s?.connections ?? 0,
      refused: s?.refused ?? 0,
      ...(dev === null
        ? {}
        : {
            controlIn: dev.stats.controlIn,
            controlOut: dev.stats.controlOut,
            controlIgnored: dev.stats.controlIgnored,
            controlDropped: dev.stats.controlDropped,
            emergBytes: dev.stats.emergBytes,
            badChains: dev.stats.badChains,
          }),
    });
    g.ports.forEach((p, n) => {
      const d = dev?.stats.ports[n];
      out.push({
        port: p.label,
        address: p.address || '-',
        client: p.client,
        guestOpen: p.guestOpen,
        outputBytes: p.stats.outputBytes,
        clientBytesOut: p.stats.clientBytesOut,
        clientBytesIn: p.stats.clientBytesIn,
        scrollbackDropped: p.stats.scrollbackDropped,
        clientDropped: p.stats.clientDropped,
        outputPauses: p.stats.outputPauses,
        stalledClients: p.stats.stalledClients,
        logDropped: p.stats.logDropped,
        clients: p.stats.clients,
        refusedClients: p.stats.refusedClients,
        ...(d === undefined
          ? {}
          : {
              rxBytes: d.rxBytes,
              rxBuffers: d.rxBuffers,
              inputWaiting: dev!.pendingInput(n),
              outputPaused: dev!.outputPaused(n),
            }),
      });
    });
  });
  return out;
}
