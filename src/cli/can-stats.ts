/** Turns the daemon's counters into flat log fields (one line per device and per bus). */
import type { LogFields } from '../core/util/log.js';
import type { CanDaemon } from '../node/can/can-daemon.js';
import { processStats } from './process-stats.js';

export function formatStats(can: CanDaemon): LogFields[] {
  const out: LogFields[] = [processStats()];
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
  // Host interfaces, links, captures, replays: each its state and counters.
  for (const a of can.attachments) {
    out.push({ [a.kind]: a.name, bus: a.bus, ...a.stats() });
  }
  for (const name of can.hubs.names()) {
    const b = can.hubs.get(name).stats();
    out.push({
      bus: name,
      frames: b.frames,
      bytes: b.bytes,
      droppedOverflow: b.droppedOverflow,
      errorFrames: b.errorFrames,
      busLoad: b.busLoad.toFixed(4),
      ports: b.ports.length,
      // Frame copies the bus ever allocated: stops growing once the bus is warm (they are reused).
      framesAllocated: b.framePool.created,
    });
  }
  return out;
}
