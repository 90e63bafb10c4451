/**
 * Phase cap: what recording costs. The guest -> guest flood (8-byte classic frames, 64 per kick,
 * LATE_TX_ACK on) through a daemon with no capture, a pcapng capture, a BLF capture, and both;
 * the delivered rate of each beside the rate without capture, and the files' bytes per frame.
 * The files go to the temporary directory (a disk here); both captures are measured once more
 * with the files in memory (/dev/shm, a tmpfs), which separates the daemon's cost from the disk's
 * (a flood of 1.4 M frames/s is about 100 MB/s of pcapng: page cache, write-back, the block device).
 */
import { mkdtempSync, readdirSync, rmSync, statfsSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Ctx, log, measured } from '../lib/context.js';
import { flow } from '../lib/flow.js';
import type { CapResult, Results } from '../lib/results.js';
import { fixed, int, pct, table } from '../lib/table.js';

const SHM = '/dev/shm';
const FS_TYPES: Record<number, string> = {
  61267: 'ext4',
  16914836: 'tmpfs',
  1481003842: 'xfs',
  2435016766: 'btrfs',
};

function fsTypeOf(dir: string): string {
  const t = statfsSync(dir).type;
  return FS_TYPES[t] ?? `0x${t.toString(16)}`;
}

export async function measureCap(ctx: Ctx, res: Results): Promise<void> {
  const scenarios: { formats: readonly string[]; parent: string }[] = [
    { formats: [], parent: tmpdir() },
    { formats: ['pcapng'], parent: tmpdir() },
    { formats: ['blf'], parent: tmpdir() },
    { formats: ['pcapng', 'blf'], parent: tmpdir() },
  ];
  let shm = false;
  try {
    shm = fsTypeOf(SHM) === 'tmpfs' && fsTypeOf(tmpdir()) !== 'tmpfs';
  } catch {}
  if (shm) scenarios.push({ formats: ['pcapng', 'blf'], parent: SHM });
  for (const { formats, parent } of scenarios) {
    const name = formats.length === 0 ? 'none' : formats.join('+');
    log(`cap: flood with capture ${name} (files in ${parent})`);
    const dir = mkdtempSync(join(parent, 'vdc-bench-cap-'));
    try {
      const args = formats.flatMap((f) => ['--capture', `default=${join(dir, `bus.${f}`)}`]);
      const recorded: CapResult['recorded'] = {};
      const onStopped = (lines: readonly string[]): void => {
        for (const l of lines) {
          const m = /"capture":"[^"]*\.(\w+)"/.exec(l);
          if (m === null || !l.includes('"msg":"stats"')) continue;
          const o = JSON.parse(l) as { frames?: number; recordsDropped?: number };
          recorded[m[1]!] = { frames: Number(o.frames ?? 0), dropped: Number(o.recordsDropped ?? 0) };
        }
      };
      const r = await measured(ctx, `cap ${name}`, () => {
        // A re-measurement starts from empty files.
        for (const f of readdirSync(dir)) rmSync(join(dir, f), { force: true });
        return flow(ctx, {
          mode: 'flood',
          frame: 'classic8',
          batch: 64,
          lateTxAck: true,
          senderQueue: ctx.cfg.queueSize,
          receiverQueue: ctx.cfg.queueSize,
          measureMs: ctx.cfg.measureMs,
          daemonArgs: args,
          onStopped,
          label: `cap-${name}`,
        });
      });
      // The daemon has stopped (its captures closed their files): bytes per frame recorded.
      const bytesPerFrame: Record<string, number> = {};
      for (const f of formats) {
        const frames = recorded[f]?.frames ?? r.busFramesTotal;
        bytesPerFrame[f] = fixed2(statSync(join(dir, `bus.${f}`)).size / Math.max(1, frames));
      }
      res.cap.push({ captures: name, dir: parent, fsType: fsTypeOf(dir), flow: r, bytesPerFrame, recorded });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
}

function fixed2(v: number): number {
  return Math.round(v * 100) / 100;
}

/** Table 7. */
export function reportCap(res: Results, out: string[]): void {
  if (res.cap.length === 0) return;
  const base = res.cap.find((c) => c.captures === 'none');
  out.push(
    table(
      '7. capture cost: guest -> guest flood (8-byte frames, 64 per kick) with --capture (frames/s)',
      [
        'captures',
        'files in',
        'delivered',
        'vs none',
        'bytes/frame',
        'dropped by capture',
        'daemon',
        'sendFE',
        'recvFE',
        'other',
        'saturated',
      ],
      res.cap.map((c: CapResult) => [
        c.captures,
        c.captures === 'none' ? '-' : `${c.dir} (${c.fsType})`,
        int(c.flow.deliveredPerS),
        base === undefined || base.flow.deliveredPerS === 0
          ? '-'
          : `${fixed((100 * c.flow.deliveredPerS) / base.flow.deliveredPerS, 0)}%`,
        Object.entries(c.bytesPerFrame)
          .map(([f, b]) => `${f} ${fixed(b, 1)}`)
          .join(', ') || '-',
        Object.entries(c.recorded)
          .map(([f, x]) => `${f} ${int(x.dropped)} of ${int(x.frames)}`)
          .join(', ') || '-',
        pct(c.flow.cpu.perRole.daemon),
        pct(c.flow.cpu.perRole.loadA),
        pct(c.flow.cpu.perRole.loadB),
        pct(c.flow.cpu.other),
        c.flow.saturated,
      ]),
    ),
  );
}
