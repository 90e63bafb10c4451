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
      faults: b.faults,
      ...(b.timing === null
        ? {}
        : {
            bitrate: b.timing.bitrate,
            dataBitrate: b.timing.dataBitrate,
            busyS: b.timing.busySeconds.toFixed(6),
            busTimeS: b.timing.busTimeSeconds.toFixed(6),
            clockS: b.timing.clockSeconds.toFixed(6),
            busErrors: b.timing.busErrors,
            arbitrationLost: b.timing.arbitrationLost,
            pending: b.timing.pending,
            lateP50Us: b.timing.lateP50Us,
            lateP99Us: b.timing.lateP99Us,
            lateMaxUs: b.timing.lateMaxUs,
            // Frames delivered, and how many under 10, 20, ... 100, 150, 200, 300, 500 us, 1, 2, 5,
            // 10 ms late (cumulative): a window's quantiles from two lines.
            lateCount: b.timing.lateCount,
            lateBuckets: b.timing.lateBuckets.join(' '),
            lateFrames: b.timing.lateFrames,
            behind: b.timing.behind,
            wakeups: b.timing.wakeups,
            pauses: b.timing.pauses,
          }),
    });
  }
  // Error counters and states of the ports of timed buses (and of any port that is not error-active).
  for (const name of can.hubs.names()) {
    const hub = can.hubs.get(name);
    const timed = hub.timing !== null;
    for (const p of hub.stats().ports) {
      if (!timed && p.busState === 'error-active' && p.tec === 0 && p.rec === 0) continue;
      out.push({
        busPort: p.name,
        onBus: name,
        state: p.busState,
        tec: p.tec,
        rec: p.rec,
        txBusErrors: p.stats.txBusErrors,
        rxBusErrors: p.stats.rxBusErrors,
        arbitrationLost: p.stats.arbitrationLost,
        txAborted: p.stats.txAborted,
        txFaultDropped: p.stats.txFaultDropped,
        txDelayed: p.stats.txDelayed,
      });
    }
  }
  return out;
}
