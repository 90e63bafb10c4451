/**
 * Phase socketcand: frames/s over a socketcand link between two daemons on loopback, and each
 * daemon's CPU per frame, beside the in-process bus in the same run.
 *
 * Two processes (bench/lib/scd-node.ts, run through tsx), each a vhost-device-can composition with
 * no guests: A with `--socketcand-listen 127.0.0.1:0`, B with `--link default=socketcand://A/default`.
 * A generator port puts classic 8-byte frames on one side's bus as fast as the way out takes them
 * (it never overruns the link's queue), a counter port on the other side takes what arrives.
 * Directions: B -> A (the link writes `< send ... >`, the server parses) and A -> B (the server
 * writes `< frame ... >`, the link parses). The CPU columns are whole processes, generator and
 * counter included; the in-process row is the same generator and counter on one bus with nothing
 * else, i.e. what the bus itself costs. Goal: 20 x 24k = 480k frames/s per link.
 */
import { type ChildProcess, fork } from 'node:child_process';
import { join } from 'node:path';
import { REPO_ROOT } from '../lib/build.js';
import { type Ctx, log } from '../lib/context.js';
import type { Results } from '../lib/results.js';
import { fixed, int, pct, table } from '../lib/table.js';

export const SOCKETCAND_GOAL_FPS = 480_000;

export interface ScdRow {
  path: string;
  seconds: number;
  framesPerS: number;
  sentPerS: number;
  dropped: number;
  senderCpuPercent: number;
  receiverCpuPercent: number;
  /** CPU µs per received frame, both processes together (generator and counter included). */
  usPerFrame: number;
  /** Frames/s one core could carry on the busier side: 1e6 / its µs per frame. */
  perCoreCapacity: number;
}

interface Window {
  sent: number;
  received: number;
  ms: number;
  cpuUs: number;
  dropped: number;
}

class Node {
  readonly child: ChildProcess;
  private readonly waiting: ((m: Record<string, unknown>) => void)[] = [];

  constructor(name: string) {
    this.child = fork(join(REPO_ROOT, 'bench/lib/scd-node.ts'), [name], {
      execArgv: ['--import', 'tsx'],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    this.child.on('message', (m: Record<string, unknown>) => this.waiting.shift()?.(m));
  }

  call<T>(m: Record<string, unknown>, ms = 30_000): Promise<T> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`socketcand bench: ${String(m.op)} timed out`)), ms);
      this.waiting.push((r) => {
        clearTimeout(timer);
        if (typeof r.error === 'string') reject(new Error(r.error));
        else resolve(r as T);
      });
      this.child.send(m);
    });
  }

  kill(): void {
    this.child.kill('SIGKILL');
  }
}

function row(path: string, g: Window, r: Window, sameProcess = false): ScdRow {
  const s = r.ms / 1000;
  return {
    path,
    seconds: Math.round(s * 10) / 10,
    framesPerS: Math.round(r.received / s),
    sentPerS: Math.round(g.sent / (g.ms / 1000)),
    dropped: g.dropped + (sameProcess ? 0 : r.dropped),
    senderCpuPercent: Math.round((g.cpuUs / g.ms) * 0.1),
    receiverCpuPercent: sameProcess ? 0 : Math.round((r.cpuUs / r.ms) * 0.1),
    usPerFrame: (g.cpuUs + (sameProcess ? 0 : r.cpuUs)) / Math.max(1, r.received),
    perCoreCapacity: Math.round(
      (1e6 * Math.max(1, r.received)) / Math.max(1, sameProcess ? g.cpuUs : Math.max(g.cpuUs, r.cpuUs)),
    ),
  };
}

export async function measureSocketcand(ctx: Ctx, res: Results): Promise<void> {
  const ms = ctx.cfg.measureMs;
  const a = new Node('A');
  const b = new Node('B');
  try {
    const { port } = await a.call<{ port: number }>({ op: 'start', listen: true });
    await b.call({ op: 'start', link: `socketcand://127.0.0.1:${port}/default` });
    await Promise.all([a.call({ op: 'up' }), b.call({ op: 'up' })]);
    const rows: ScdRow[] = [];
    for (const [label, gen, recv] of [
      ['link B -> server A (< send >)', b, a],
      ['server A -> link B (< frame >)', a, b],
    ] as const) {
      await ctx.quietGate(ctx.cfg.gateMs);
      log(`socketcand: ${label}`);
      // A short warm-up window, then the measured one.
      await Promise.all([
        gen.call({ op: 'window', ms: 300, gen: true }),
        recv.call({ op: 'window', ms: 300, gen: false }),
      ]);
      const [g, r] = await Promise.all([
        gen.call<Window>({ op: 'window', ms, gen: true }),
        recv.call<Window>({ op: 'window', ms, gen: false }),
      ]);
      rows.push(row(label, g, r));
    }
    await ctx.quietGate(ctx.cfg.gateMs);
    const ip = await a.call<Window>({ op: 'inproc', ms });
    rows.push(row('in-process bus (generator -> counter)', ip, ip, true));
    res.socketcand = rows;
    await Promise.all([a.call({ op: 'stop' }), b.call({ op: 'stop' })]).catch(() => undefined);
  } finally {
    a.kill();
    b.kill();
  }
}

/** Table 9. */
export function reportSocketcand(res: Results, out: string[]): void {
  const rows = res.socketcand;
  if (!rows || rows.length === 0) return;
  const link = rows.filter((r) => r.path.includes('->') && !r.path.startsWith('in-process'));
  const worst = Math.min(...link.map((r) => r.framesPerS));
  out.push(
    table(
      '9. socketcand link between two daemons on loopback (classic 8-byte frames), beside the in-process bus',
      [
        'path',
        'frames/s',
        'offered/s',
        'dropped',
        'CPU sender',
        'CPU receiver',
        'µs CPU/frame',
        'per core/s',
      ],
      rows.map((r) => [
        r.path,
        int(r.framesPerS),
        int(r.sentPerS),
        int(r.dropped),
        pct(r.senderCpuPercent),
        r.receiverCpuPercent === 0 ? '-' : pct(r.receiverCpuPercent),
        fixed(r.usPerFrame, 2),
        int(r.perCoreCapacity),
      ]),
      [
        `goal: ${int(SOCKETCAND_GOAL_FPS)} frames/s per link (20 x the 24k frames/s of a busy CAN FD bus): ${
          worst >= SOCKETCAND_GOAL_FPS ? 'met' : 'NOT met'
        } (slowest direction ${int(worst)}/s).`,
        'CPU: whole processes (% of one core), generator and counter ports included; µs/frame adds both processes.',
        '"per core/s": frames/s the busier process could carry with a core to itself (1e6 / its µs per frame);',
        'frames/s itself drops when other work shares the two cores (see the load note).',
        'The generator never overruns the link queue, so "dropped" should be 0; frames/s is what arrived.',
      ],
    ),
  );
}
