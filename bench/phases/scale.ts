/**
 * Phase scale: 1, 4, 16 guests on one bus, all flooding and draining; daemon CPU per frame. The
 * 16-guest daemon also gives the idle CPU (silent guests) and the memory rows.
 */
import { sleep } from '../lib/children.js';
import { type Ctx, FRAMES, log, perS, r1 } from '../lib/context.js';
import { cpuShares, saturation, seconds, snapshot, socketDelta } from '../lib/harness.js';
import type { MemoryRow, Results } from '../lib/results.js';
import { type Cell, fixed, int, pct, table } from '../lib/table.js';
import type { WorkerClient } from '../lib/worker-client.js';

export async function measureScale(ctx: Ctx, res: Results): Promise<void> {
  for (const n of ctx.cfg.scaleGuests) {
    log(`scale: ${n} guest(s)`);
    await ctx.quietGate(ctx.cfg.gateMs);
    const d = await ctx.daemon(n, `scale-${n}`);
    const mem = n === 16;
    const keys = Array.from({ length: n }, (_, i) => `g${i}`);
    const owner = (i: number): WorkerClient => (i % 2 === 0 ? ctx.a : ctx.b);
    const busAndDelivered = async (): Promise<{
      bus: number;
      delivered: number;
      heapUsedKb: number | null;
      framesAllocated: number;
    }> => {
      const st = await d.stats();
      return {
        bus: st.bus.frames,
        delivered: st.sockets.reduce((s, x) => s + x.rxDelivered, 0),
        heapUsedKb: st.process?.heapUsedKb ?? null,
        framesAllocated: st.bus.framesAllocated,
      };
    };
    let delivered = 0; // per-device counters reset on disconnect: keep the running total
    const memRow = async (state: string): Promise<void> => {
      await sleep(300);
      const c = await busAndDelivered();
      delivered = Math.max(delivered, c.delivered);
      res.memory.push({
        state,
        memory: d.memory(),
        busFrames: c.bus,
        deliveredFrames: delivered,
        heapUsedKb: c.heapUsedKb,
        framesAllocated: c.framesAllocated,
      });
    };
    try {
      if (mem) await memRow('started, no guest');
      const connect = (i: number): Promise<unknown> =>
        owner(i).call('connect', {
          key: keys[i]!,
          path: d.path(i),
          queueSize: ctx.cfg.queueSize,
          lateTxAck: true,
          canId: 0x100 + i,
        });
      await connect(0);
      if (mem) await memRow('1 guest connected');
      for (let i = 1; i < n; i++) await connect(i);
      if (mem) await memRow(`${n} guests connected`);
      const aKeys = keys.filter((_, i) => i % 2 === 0);
      const bKeys = keys.filter((_, i) => i % 2 === 1);
      const both = async (cmd: 'drain-start' | 'flood-stop', extra: object = {}): Promise<void> => {
        await Promise.all([
          ctx.a.call(cmd, { keys: aKeys, ...extra } as never, 20_000),
          bKeys.length > 0 ? ctx.b.call(cmd, { keys: bKeys, ...extra } as never, 20_000) : null,
        ]);
      };
      await both('drain-start');
      if (mem) {
        log(`idle: ${n} silent guests, ${ctx.cfg.idleMs / 1000} s`);
        await sleep(1000);
        const i0 = await snapshot(d, [ctx.a, ctx.b]);
        await sleep(ctx.cfg.idleMs);
        const i1 = await snapshot(d, [ctx.a, ctx.b]);
        const c = cpuShares(i0, i1, ctx.cores);
        res.idle = {
          guests: n,
          seconds: r1(seconds(i0, i1)),
          daemonCpuSeconds: (i1.cpu.daemon ?? 0) - (i0.cpu.daemon ?? 0),
          daemonCpuPercent: c.perRole.daemon ?? Number.NaN,
          loadCpuPercent: r1((c.perRole.loadA ?? 0) + (c.perRole.loadB ?? 0)),
        };
      }
      const flood = { frame: FRAMES.classic8, batch: 16 };
      await Promise.all([
        ctx.a.call('flood-start', { keys: aKeys, ...flood }),
        bKeys.length > 0 ? ctx.b.call('flood-start', { keys: bKeys, ...flood }) : null,
      ]);
      await sleep(ctx.cfg.warmMs);
      const s0 = await snapshot(d, [ctx.a, ctx.b]);
      await sleep(ctx.cfg.measureMs);
      const s1 = await snapshot(d, [ctx.a, ctx.b]);
      const dt = seconds(s0, s1);
      const all = keys.map((_, i) => i);
      const delivered = socketDelta(s0, s1, all, 'rxDelivered');
      const bus = (s1.daemon?.bus.frames ?? 0) - (s0.daemon?.bus.frames ?? 0);
      const dCpu = (s1.cpu.daemon ?? 0) - (s0.cpu.daemon ?? 0);
      const cpu = cpuShares(s0, s1, ctx.cores);
      res.scale.push({
        guests: n,
        seconds: r1(dt * 1000) / 1000,
        busFramesPerS: perS(bus, dt),
        acceptedPerS: perS(socketDelta(s0, s1, all, 'txOk'), dt),
        deliveredPerS: perS(delivered, dt),
        droppedPerS: perS(socketDelta(s0, s1, all, 'rxDroppedOverflow'), dt),
        daemonCpuPercent: cpu.perRole.daemon ?? Number.NaN,
        daemonUsPerDelivered: delivered > 0 ? r1((dCpu * 1e6) / delivered) : null,
        daemonUsPerBusFrame: bus > 0 ? r1((dCpu * 1e6) / bus) : null,
        cpu,
        saturated: saturation(cpu, ctx.cores, { daemon: 'daemon', loadA: 'load A', loadB: 'load B' }),
      });
      if (mem) {
        // Several points under traffic, so a plateau (the heap settled) can be told from a leak.
        const deadline = Date.now() + 120_000;
        const base = (await busAndDelivered()).delivered; // the scale window above delivered these
        checkpoints: for (const k of MEMORY_CHECKPOINTS) {
          const target = base + k * ctx.cfg.memFrames;
          log(`memory: flooding until ${int(k * ctx.cfg.memFrames)} more frames were delivered`);
          for (;;) {
            const c = await busAndDelivered();
            if (c.delivered >= target) break;
            if (Date.now() > deadline) {
              res.notes.push(`memory: only ${c.delivered} frames delivered within 120 s`);
              break checkpoints;
            }
            await sleep(100);
          }
          await memRow(`traffic on, +${int(k * ctx.cfg.memFrames)} delivered`);
        }
      }
      await both('flood-stop');
      if (mem) await memRow(`${n} guests, after the traffic`);
      await ctx.closeGuests();
      if (mem) {
        await sleep(500);
        await memRow('all guests disconnected');
      }
    } finally {
      await ctx.closeGuests();
      await ctx.stopDaemon(d);
    }
  }
}

/** Memory rows under traffic, at these multiples of `memFrames` delivered frames. */
const MEMORY_CHECKPOINTS = [1, 2, 4, 8, 16, 32] as const;

/** RSS change between the second checkpoint (warm) and the last one, per million delivered frames. */
function memoryGrowthNote(rows: readonly MemoryRow[]): string {
  const under = rows.filter((r) => r.state.startsWith('traffic on'));
  if (under.length < 3) return '  not enough checkpoints';
  const warm = under[1]!;
  const last = under.at(-1)!;
  const frames = last.deliveredFrames - warm.deliveredFrames;
  const kb = last.memory.vmRss - warm.memory.vmRss;
  const per = frames > 0 ? (kb * 1e6) / frames : Number.NaN;
  return `  VmRSS ${kb >= 0 ? '+' : ''}${int(kb)} kB from ${int(warm.deliveredFrames)} to ${int(last.deliveredFrames)} delivered (${fixed(per, 1)} kB per 10^6 frames); VmHWM ${int(warm.memory.vmHwm)} -> ${int(last.memory.vmHwm)} kB.`;
}

/** Tables 4 (scale), 5 (idle) and 6 (memory). */
export function reportScale(res: Results, out: string[]): void {
  if (res.scale.length > 0) {
    out.push(
      table(
        '4. scale: N guests on one bus, every guest floods (classic8, 16 per kick) and drains its RX ring',
        [
          'guests',
          'bus fr/s',
          'delivered/s',
          'dropped/s',
          'daemon',
          'us/deliv',
          'us/busfr',
          'loadA',
          'loadB',
          'other',
          'saturated',
        ],
        res.scale.map((s) => [
          s.guests,
          int(s.busFramesPerS),
          int(s.deliveredPerS),
          int(s.droppedPerS),
          pct(s.daemonCpuPercent),
          fixed(s.daemonUsPerDelivered, 2),
          fixed(s.daemonUsPerBusFrame, 2),
          pct(s.cpu.perRole.loadA),
          pct(s.cpu.perRole.loadB),
          pct(s.cpu.other),
          s.saturated,
        ]),
        [
          'us/deliv = daemon CPU time (utime+stime from /proc) per frame written into some RX ring; with 1 guest',
          'nothing is delivered (a guest never receives its own frames), so only us/busfr applies.',
        ],
      ),
    );
  }
  if (res.idle) {
    const i = res.idle;
    out.push(
      table(
        '5. idle: guests connected (controllers started, RX buffers posted), nobody sends',
        ['guests', 'seconds', 'daemon CPU s', 'daemon', 'load procs'],
        [
          [
            i.guests,
            fixed(i.seconds, 1),
            fixed(i.daemonCpuSeconds, 2),
            `${fixed(i.daemonCpuPercent, 2)}%`,
            `${fixed(i.loadCpuPercent, 2)}%`,
          ],
        ],
        ['CPU from /proc/<pid>/stat: resolution 10 ms, so 0.00 s means < 10 ms in the window.'],
      ),
    );
  }
  if (res.memory.length > 0) {
    let prev: number | null = null;
    out.push(
      table(
        '6. daemon memory (kB, /proc/<pid>/status)',
        [
          'state',
          'VmRSS',
          'delta',
          'RssAnon',
          'RssFile',
          'RssShmem',
          'VmHWM',
          'heapUsed',
          'bus frames',
          'delivered',
          'frames alloc',
        ],
        res.memory.map((m) => {
          const row: Cell[] = [
            m.state,
            int(m.memory.vmRss),
            prev === null ? '' : `${m.memory.vmRss - prev >= 0 ? '+' : ''}${int(m.memory.vmRss - prev)}`,
            int(m.memory.rssAnon),
            int(m.memory.rssFile),
            int(m.memory.rssShmem),
            int(m.memory.vmHwm),
            m.heapUsedKb === null ? '-' : int(m.heapUsedKb),
            int(m.busFrames),
            int(m.deliveredFrames),
            int(m.framesAllocated),
          ];
          prev = m.memory.vmRss;
          return row;
        }),
        (() => {
          const big = [...res.tp].sort((x, y) => y.busFramesTotal - x.busFramesTotal)[0];
          return big
            ? [
                `2 guests (phase 1, ${big.frame} / ${big.batch} per kick): VmRSS ${int(big.rssBeforeKb)} kB before -> ${int(big.rssAfterKb)} kB after ${int(big.busFramesTotal)} frames.`,
                'RssShmem = guest RAM pages the daemon touched (rings and buffers of the memfd mappings).',
                'heapUsed = V8 heap in use (process.memoryUsage, at the SIGUSR1 dump); frames alloc = bus frame',
                'copies ever allocated (the rest were recycled). Growth under traffic:',
                memoryGrowthNote(res.memory),
              ]
            : [];
        })(),
      ),
    );
  }
}
