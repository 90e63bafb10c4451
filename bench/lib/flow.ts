/** One guest -> guest flow through a fresh daemon (the tp, rx, lat and prof phases). */
import { sleep } from './children.js';
import { type Ctx, FRAMES, type FrameName, perS, r1 } from './context.js';
import type { DaemonProcess } from './daemon-process.js';
import { cpuShares, guestDelta, saturation, seconds, snapshot, socketDelta } from './harness.js';
import type { FlowResult, LoadMode } from './results.js';

export interface FlowOptions {
  mode: LoadMode;
  frame: FrameName;
  batch: number;
  lateTxAck: boolean;
  senderQueue: number;
  receiverQueue: number;
  measureMs: number;
  nodeFlags?: string[];
  /** Extra daemon arguments (e.g. --http 127.0.0.1:0). */
  daemonArgs?: string[];
  /**
   * Started after the warm-up, before the measured window (with the running daemon); the function it
   * returns is called after the window.
   */
  during?: (d: DaemonProcess) => Promise<() => Promise<void>>;
  /** Gets the daemon's last log lines once it has stopped (its final statistics). */
  onStopped?: (logLines: readonly string[]) => void;
  label: string;
}

export async function flow(ctx: Ctx, o: FlowOptions): Promise<FlowResult> {
  const d = await ctx.daemon(
    2,
    o.label,
    o.nodeFlags,
    o.daemonArgs === undefined ? {} : { args: o.daemonArgs },
  );
  const { a, b } = ctx;
  try {
    await Promise.all([
      a.call('connect', {
        key: 's',
        path: d.path(0),
        queueSize: o.senderQueue,
        lateTxAck: o.lateTxAck,
        canId: 0x100,
      }),
      b.call('connect', {
        key: 'r',
        path: d.path(1),
        queueSize: o.receiverQueue,
        lateTxAck: o.lateTxAck,
        canId: 0x200,
      }),
    ]);
    await b.call('drain-start', { keys: ['r'] });
    const rssBefore = d.memory();
    await a.call(o.mode === 'flood' ? 'flood-start' : 'batch-start', {
      keys: ['s'],
      frame: FRAMES[o.frame],
      batch: o.batch,
    });
    await sleep(ctx.cfg.warmMs);
    const endDuring = o.during === undefined ? null : await o.during(d);
    const s0 = await snapshot(d, [a, b]);
    await sleep(o.measureMs);
    const s1 = await snapshot(d, [a, b]);
    await endDuring?.();
    const stop = await a.call('flood-stop', { keys: ['s'] }, 15_000);
    await sleep(100);
    const end = await d.stats();
    const rssAfter = d.memory();
    const dt = seconds(s0, s1);
    const cpu = cpuShares(s0, s1, ctx.cores);
    const sent = guestDelta(s0, s1, ['s'], 'sent');
    const rxWake = guestDelta(s0, s1, ['r'], 'rxWakeups');
    const received = guestDelta(s0, s1, ['r'], 'received');
    return {
      mode: o.mode,
      frame: o.frame,
      batch: o.batch,
      lateTxAck: o.lateTxAck,
      senderQueue: o.senderQueue,
      receiverQueue: o.receiverQueue,
      seconds: r1(dt * 1000) / 1000,
      acceptedPerS: perS(socketDelta(s0, s1, [0], 'txOk'), dt),
      deliveredPerS: perS(socketDelta(s0, s1, [1], 'rxDelivered'), dt),
      droppedPerS: perS(socketDelta(s0, s1, [1], 'rxDroppedOverflow'), dt),
      txNotOkPerS: perS(socketDelta(s0, s1, [0], 'txNotOk'), dt),
      guestSentPerS: perS(sent, dt),
      guestReceivedPerS: perS(received, dt),
      kicksPerFrame: r1((1000 * guestDelta(s0, s1, ['s'], 'txKicks')) / Math.max(1, sent)) / 1000,
      suppressedKicksPerFrame:
        r1((1000 * guestDelta(s0, s1, ['s'], 'txSuppressed')) / Math.max(1, sent)) / 1000,
      txWakeupsPerS: perS(guestDelta(s0, s1, ['s'], 'txWakeups'), dt),
      rxWakeupsPerS: perS(rxWake, dt),
      framesPerRxWakeup: r1(received / Math.max(1, rxWake)),
      cpu,
      saturated: saturation(cpu, ctx.cores, { daemon: 'daemon', loadA: 'sender FE', loadB: 'receiver FE' }),
      rssBeforeKb: rssBefore.vmRss,
      rssAfterKb: rssAfter.vmRss,
      busFramesTotal: end.bus.frames,
      senderDrained: stop.drained,
    };
  } finally {
    await ctx.closeGuests();
    await ctx.stopDaemon(d);
    o.onStopped?.(d.logLines());
  }
}
