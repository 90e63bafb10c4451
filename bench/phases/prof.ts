/** Phase prof: the tp classic8 / 64-per-kick scenario with the daemon under --cpu-prof. */
import { mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from '../lib/build.js';
import { sleep } from '../lib/children.js';
import { type Ctx, log } from '../lib/context.js';
import { flow } from '../lib/flow.js';
import { summarizeProfile } from '../lib/profile.js';
import type { Results } from '../lib/results.js';
import { fixed, int, pct, table } from '../lib/table.js';

export async function measureProf(ctx: Ctx, res: Results): Promise<void> {
  // One directory per run and Node's default file names: every thread writes its own profile (with
  // --tsx the module-loader thread too), and the busiest one is the daemon's main thread.
  const dir = join(REPO_ROOT, 'bench/results/prof', ctx.stamp);
  mkdirSync(dir, { recursive: true });
  log(`prof: daemon under --cpu-prof, classic8, 64 per kick (${dir})`);
  await ctx.quietGate(ctx.cfg.gateMs);
  const f = await flow(ctx, {
    mode: 'flood',
    frame: 'classic8',
    batch: 64,
    lateTxAck: true,
    senderQueue: ctx.cfg.queueSize,
    receiverQueue: ctx.cfg.queueSize,
    measureMs: ctx.cfg.profMs,
    nodeFlags: ['--cpu-prof', '--cpu-prof-dir', dir],
    label: 'prof',
  });
  let files: string[] = [];
  for (let i = 0; i < 50 && files.length === 0; i++) {
    files = readdirSync(dir).filter((n) => n.endsWith('.cpuprofile'));
    if (files.length === 0) await sleep(100);
  }
  if (files.length === 0) throw new Error(`no profile written in ${dir}`);
  const summaries = files.map((n) => summarizeProfile(join(dir, n), REPO_ROOT, 15));
  const main = summaries.sort((x, y) => y.totalMs - y.idleMs - (x.totalMs - x.idleMs))[0]!;
  res.profile = { ...main, flow: f };
}

/** Table 7. */
export function reportProf(res: Results, out: string[]): void {
  if (res.profile) {
    const p = res.profile;
    out.push(
      table(
        `7. daemon profile (--cpu-prof, classic8, 64 per kick, LATE_TX_ACK on): top ${p.top.length} by self time`,
        ['function', 'location', 'self ms', '% total', '% busy'],
        p.top.map((e) => [
          e.function,
          e.location || '-',
          fixed(e.selfMs, 1),
          fixed(e.selfPercent, 1),
          fixed(e.busyPercent, 1),
        ]),
        [
          `profile ${p.file}: ${int(p.samples)} samples, ${fixed(p.totalMs, 0)} ms, idle ${fixed(p.idleMs, 0)} ms;`,
          `throughput under the profiler: ${int(p.flow.deliveredPerS)} delivered/s (daemon ${pct(p.flow.cpu.perRole.daemon)}).`,
          `by area (% of busy): ${p.byArea
            .slice(0, 10)
            .map((a) => `${a.area} ${fixed(a.busyPercent, 1)}`)
            .join(', ')}`,
        ],
      ),
    );
  }
}
