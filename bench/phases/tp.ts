/**
 * Phase tp: guest -> bus throughput, 8-byte classic / 64-byte FD frames, 1/16/64 frames per kick,
 * flood (with and without LATE_TX_ACK) and closed loop; beside each, the socketpair relay baseline.
 */
import { sleep } from '../lib/children.js';
import { BATCHES, type Ctx, FRAMES, type FrameName, log, measured, perS, r1 } from '../lib/context.js';
import { flow } from '../lib/flow.js';
import { cpuShares, saturation, seconds, snapshot } from '../lib/harness.js';
import { startBaselineRelay } from '../lib/relay.js';
import type { BaselineFlow, LoadMode, Results } from '../lib/results.js';
import { fixed, int, pct, table } from '../lib/table.js';

async function baselineFlow(
  ctx: Ctx,
  mode: LoadMode,
  frame: FrameName,
  batch: number,
): Promise<BaselineFlow> {
  const bp = await startBaselineRelay(ctx, { latency: false, capacity: 0, warmup: 0 }, mode === 'closed');
  const snd = bp.snd;
  try {
    await snd.call(mode === 'flood' ? 'sock-flood-start' : 'sock-batch-start', {
      fd: 4,
      frame: FRAMES[frame],
      batch,
    });
    await sleep(ctx.cfg.warmMs);
    const s0 = await snapshot(null, bp.procs);
    await sleep(ctx.cfg.measureMs);
    const s1 = await snapshot(null, bp.procs);
    const dt = seconds(s0, s1);
    const d = (w: string, f: 'sent' | 'received' | 'writes'): number =>
      (s1.sock[w]?.[f] ?? 0) - (s0.sock[w]?.[f] ?? 0);
    const cpu = cpuShares(s0, s1, ctx.cores);
    return {
      mode,
      frame,
      batch,
      seconds: r1(dt * 1000) / 1000,
      sentPerS: perS(d('blSender', 'sent'), dt),
      deliveredPerS: perS(d('blReceiver', 'received'), dt),
      writesPerS: perS(d('blSender', 'writes'), dt),
      cpu,
      saturated: saturation(cpu, ctx.cores, { blSender: 'sender', blRelay: 'relay', blReceiver: 'receiver' }),
    };
  } finally {
    await bp.stop();
  }
}

export async function measureTp(ctx: Ctx, res: Results): Promise<void> {
  for (const mode of ['flood', 'closed'] as const) {
    for (const frame of Object.keys(FRAMES) as FrameName[]) {
      // Quick runs: the closed loop only with classic frames.
      if (ctx.cfg.quick && mode === 'closed' && frame !== 'classic8') continue;
      for (const batch of BATCHES) {
        // LATE_TX_ACK changes nothing on the virtual bus (the hub completes every transmit at once),
        // as the flood rows show: the closed loop runs with it on only.
        for (const lateTxAck of mode === 'closed' ? [true] : [true, false]) {
          log(`tp ${mode}: ${frame}, ${batch} per kick, LATE_TX_ACK ${lateTxAck ? 'on' : 'off'}`);
          const label = `tp-${mode}-${frame}-${batch}-${lateTxAck ? 'late' : 'early'}`;
          res.tp.push(
            await measured(ctx, label, () =>
              flow(ctx, {
                mode,
                frame,
                batch,
                lateTxAck,
                senderQueue: ctx.cfg.queueSize,
                receiverQueue: ctx.cfg.queueSize,
                measureMs: ctx.cfg.measureMs,
                label,
              }),
            ),
          );
        }
        log(`tp ${mode} baseline: ${frame}, ${batch} per write`);
        res.baselineTp.push(
          await measured(ctx, `baseline ${mode} ${frame} ${batch}`, () =>
            baselineFlow(ctx, mode, frame, batch),
          ),
        );
      }
    }
  }
}

/** Tables 1 (device) and 1b (baseline). */
export function reportTp(res: Results, out: string[]): void {
  const base = (mode: LoadMode, frame: FrameName, batch: number): BaselineFlow | undefined =>
    res.baselineTp.find((b) => b.mode === mode && b.frame === frame && b.batch === batch);
  if (res.tp.length > 0) {
    out.push(
      table(
        '1. guest -> bus throughput (a second guest drains its RX ring; queues 256; frames/s)',
        [
          'mode',
          'frame',
          'batch',
          'LATE',
          'accepted',
          'delivered',
          'dropped',
          'baseline',
          'dlv/base',
          'kicks/fr',
          'daemon',
          'sendFE',
          'recvFE',
          'other',
          'saturated',
        ],
        res.tp.map((r) => {
          const b = base(r.mode, r.frame, r.batch);
          return [
            r.mode,
            r.frame,
            r.batch,
            r.lateTxAck ? 'on' : 'off',
            int(r.acceptedPerS),
            int(r.deliveredPerS),
            int(r.droppedPerS),
            int(b?.deliveredPerS),
            b ? fixed(r.deliveredPerS / b.deliveredPerS, 2) : '-',
            fixed(r.kicksPerFrame, 3),
            pct(r.cpu.perRole.daemon),
            pct(r.cpu.perRole.loadA),
            pct(r.cpu.perRole.loadB),
            pct(r.cpu.other),
            r.saturated,
          ];
        }),
        [
          'flood: the sender keeps its TX ring full; whenever `batch` slots are free it posts `batch` frames and kicks',
          '(if EVENT_IDX says the daemon wants a kick: while the daemon is busy it does not, see kicks/fr).',
          'closed: `batch` frames, one kick, wait for all their completions, repeat (exactly `batch` frames per kick).',
          'accepted = TX completed OK by the daemon (txOk); delivered = frames written into the receiver RX ring',
          '(rxDelivered); dropped = receiver backlog overflow (the sender is not slowed down by a slow receiver).',
          'baseline = same frames and batching (frames per write) through a do-nothing relay process over',
          'socketpairs (sender -> relay -> receiver; closed: the relay acknowledges each write back to the sender).',
        ],
      ),
    );
    out.push(
      table(
        '1b. baseline (socketpair relay, no device)',
        [
          'mode',
          'frame',
          'per write',
          'sent/s',
          'delivered/s',
          'writes/s',
          'sender',
          'relay',
          'receiver',
          'other',
          'saturated',
        ],
        res.baselineTp.map((b) => [
          b.mode,
          b.frame,
          b.batch,
          int(b.sentPerS),
          int(b.deliveredPerS),
          int(b.writesPerS),
          pct(b.cpu.perRole.blSender),
          pct(b.cpu.perRole.blRelay),
          pct(b.cpu.perRole.blReceiver),
          pct(b.cpu.other),
          b.saturated,
        ]),
      ),
    );
  }
}
