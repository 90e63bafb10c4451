/** Phase rx: bus -> guest throughput against the receiver's RX ring size. */
import { type Ctx, log, measured } from '../lib/context.js';
import { flow } from '../lib/flow.js';
import type { Results } from '../lib/results.js';
import { fixed, int, pct, table } from '../lib/table.js';

export async function measureRx(ctx: Ctx, res: Results): Promise<void> {
  for (const frame of ctx.cfg.rxFrames) {
    for (const rxq of ctx.cfg.rxSizes) {
      log(`rx: ${frame}, receiver RX ring ${rxq}`);
      res.rx.push(
        await measured(ctx, `rx ${frame} ${rxq}`, () =>
          flow(ctx, {
            mode: 'flood',
            frame,
            batch: 64,
            lateTxAck: true,
            senderQueue: ctx.cfg.queueSize,
            receiverQueue: rxq,
            measureMs: ctx.cfg.measureMs,
            label: `rx-${frame}-${rxq}`,
          }),
        ),
      );
    }
  }
}

/** Table 2. */
export function reportRx(res: Results, out: string[]): void {
  if (res.rx.length > 0) {
    out.push(
      table(
        '2. bus -> guest throughput (sender 64 per kick, LATE_TX_ACK on; receiver re-posts buffers at once)',
        [
          'frame',
          'RX ring',
          'received/s',
          'guest rx/s',
          'dropped/s',
          'rx irq/s',
          'fr/irq',
          'daemon',
          'sendFE',
          'recvFE',
          'other',
          'saturated',
        ],
        res.rx.map((r) => [
          r.frame,
          r.receiverQueue,
          int(r.deliveredPerS),
          int(r.guestReceivedPerS),
          int(r.droppedPerS),
          int(r.rxWakeupsPerS),
          fixed(r.framesPerRxWakeup, 1),
          pct(r.cpu.perRole.daemon),
          pct(r.cpu.perRole.loadA),
          pct(r.cpu.perRole.loadB),
          pct(r.cpu.other),
          r.saturated,
        ]),
      ),
    );
  }
}
