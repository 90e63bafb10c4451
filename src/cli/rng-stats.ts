/** Turns the rng daemon's counters into flat log fields (the process, then one line per socket). */
import type { LogFields } from '../core/util/log.js';
import type { RngDaemon } from '../node/rng/rng-daemon.js';
import { processStats } from './process-stats.js';

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
