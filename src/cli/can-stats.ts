/** Turns the daemon's counters into flat log fields (one line per device and per bus). */
import type { LogFields } from '../core/util/log.js';
import type { CanDaemon } from '../node/can/can-daemon.js';

export function formatStats(can: CanDaemon): LogFields[] {
  const mem = process.memoryUsage();
  const kb = (n: number): number => Math.round(n / 1024);
  // The process line first: RSS and the JavaScript heap, to tell a leak from a heap still settling.
  const out: LogFields[] = [
    {
      process: process.pid,
      rssKb: kb(mem.rss),
      heapUsedKb: kb(mem.heapUsed),
      heapTotalKb: kb(mem.heapTotal),
      externalKb: kb(mem.external),
    },
  ];
  const status = can.daemon.status();
  status.forEach((s, i) => {
    const d = can.device(i);
    const f: LogFields = {
      socket: i,
      connected: s.connected,
      connections: s.connections,
      refused: s.refused,
      acceptErrors: s.acceptErrors,
    };
    if (d !== null) Object.assign(f, d.statsFields());
    out.push(f);
  });
  // Host interfaces: what was read from the kernel and what the kernel dropped before we read it.
  for (const [ifname, port] of can.hostPorts) {
    out.push({ host: ifname, link: port.linkState, ...port.stats });
  }
  for (const name of can.hubs.names()) {
    const b = can.hubs.get(name).stats();
    out.push({
      bus: name,
      frames: b.frames,
      bytes: b.bytes,
      droppedOverflow: b.droppedOverflow,
      busLoad: b.busLoad.toFixed(4),
      ports: b.ports.length,
      // Frame copies the bus ever allocated: stops growing once the bus is warm (they are reused).
      framesAllocated: b.framePool.created,
    });
  }
  return out;
}
