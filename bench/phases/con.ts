/**
 * Phase con: vhost-device-console (the measurements are in lib/console-bench.ts): guest -> client
 * and client -> guest throughput, a console flood, the keystroke round trip, each beside a
 * Unix<->TCP relay process; idle CPU with 16 guests.
 */
import {
  type ConDirection,
  type ConFlowResult,
  type ConIdleResult,
  type ConLatencyResult,
  type ConPortKind,
  conFlow,
  conIdle,
  conPing,
} from '../lib/console-bench.js';
import { type Ctx, log, measured } from '../lib/context.js';
import type { Results } from '../lib/results.js';
import { fixed, int, pct, table } from '../lib/table.js';

export async function measureCon(ctx: Ctx, res: Results): Promise<void> {
  const con = {
    flows: [] as ConFlowResult[],
    latency: [] as ConLatencyResult[],
    idle: null as ConIdleResult | null,
  };
  res.con = con;
  const c = ctx.cfg.con;
  // Bulk rows on the named port (flow-controlled both ways: every byte must arrive), then the
  // console flood (port 0 is never paced: drops are expected, every byte must be accounted for).
  const runs: [ConDirection, 'device' | 'baseline', ConPortKind][] = [
    ['guest->client', 'device', 'named'],
    ['guest->client', 'baseline', 'named'],
    ['client->guest', 'device', 'named'],
    ['client->guest', 'baseline', 'named'],
    ['guest->client', 'device', 'console'],
  ];
  for (const [direction, path, port] of runs) {
    const what = `${direction} ${port === 'named' ? 'named port' : 'console flood'}, ${path}`;
    log(`con: ${what} throughput`);
    const r = await measured(ctx, `con ${what}`, () => conFlow(ctx, c, direction, path, port));
    con.flows.push(r);
    if (port === 'console' && path === 'device') {
      if (!r.accounted) {
        res.notes.push(
          `console flood (port 0): ${r.missingBytes} byte(s) sent, neither received nor counted as dropped` +
            (r.droppedBytes === 0 ? `, ${r.mismatches} corrupt byte(s)` : ''),
        );
      }
    } else if (!r.intact) {
      res.notes.push(
        `console ${what}: ${r.missingBytes} byte(s) sent but not received, ${r.mismatches} corrupt byte(s)` +
          (r.droppedBytes ? `, ${r.droppedBytes} dropped by the daemon (clientDropped)` : ''),
      );
    }
  }
  for (const path of ['device', 'baseline'] as const) {
    log(`con: keystroke round trip, ${path}, ${c.pingCount} round trips`);
    const r = await measured(ctx, `con ping ${path}`, () => conPing(ctx, c, path));
    con.latency.push(r);
    if (r.wrong > 0) res.notes.push(`console keystroke echo ${path}: ${r.wrong} wrong byte(s) echoed`);
  }
  log(`con: idle, ${c.idleGuests} guests, ${c.idleMs / 1000} s`);
  await ctx.quietGate(ctx.cfg.gateMs);
  con.idle = await conIdle(ctx, c);
}

/** Tables 8 (throughput), 9 (keystroke round trip) and 10 (idle). */
export function reportCon(res: Results, out: string[]): void {
  const con = res.con;
  if (con === null) return;
  if (con.flows.length > 0) {
    const base = (f: ConFlowResult): ConFlowResult | undefined =>
      con.flows.find((x) => x.path === 'baseline' && x.direction === f.direction);
    out.push(
      table(
        '8. console throughput (vhost-device-console, one guest, its ports on TCP; MiB/s)',
        [
          'direction',
          'port',
          'path',
          'chunk',
          'received',
          'sent',
          'dropped',
          'pauses',
          'dev/base',
          'writes/s',
          'reads/s',
          'intact',
          'daemon',
          'relay',
          'guest',
          'client',
          'other',
          'saturated',
        ],
        con.flows.map((f) => {
          const b = f.path === 'device' ? base(f) : undefined;
          return [
            f.direction,
            f.path === 'baseline' ? '(relay)' : f.port === 'named' ? '1 named' : '0 console',
            f.path,
            f.chunk,
            fixed(f.receivedMiBps),
            fixed(f.sentMiBps),
            f.droppedMiBps === null ? '-' : fixed(f.droppedMiBps),
            f.outputPauses === null ? '-' : int(f.outputPauses),
            b ? fixed(f.receivedMiBps / b.receivedMiBps, 2) : '-',
            int(f.writesPerS),
            int(f.readsPerS),
            f.intact
              ? 'yes'
              : f.port === 'console' && f.path === 'device' && f.accounted
                ? `dropped ${fixed((f.droppedBytes ?? 0) / (1024 * 1024))} MiB, counted`
                : `NO (${int(f.missingBytes)} missing, ${int(f.mismatches)} bad)`,
            pct(f.cpu.perRole.daemon),
            pct(f.cpu.perRole.blRelay),
            pct(f.cpu.perRole.loadA),
            pct(f.cpu.perRole.loadB),
            pct(f.cpu.other),
            f.saturated,
          ];
        }),
        [
          'port 1 named: --port-name org.bench.0, opened by the guest (/dev/vport0p1), where bulk data goes in a',
          'Linux guest; the daemon pauses its output for a slow client. 0 console: hvc0, never paced (Linux spins',
          'on console writes), so a flood beyond what the client reads is dropped and counted (by design).',
          'guest->client: the guest writes 32 KiB output buffers (Linux port_fops_write chunks), one in flight,',
          'each returned before the next (Linux waits for it); a TCP client reads, bytes counted at the client.',
          'client->guest: the TCP client writes 64 KiB pieces as fast as the socket takes them; the guest reads',
          'its 4 KiB RX buffers and re-posts each at once (reads/s = used RX buffers/s). received = at the',
          'receiving end, sent = at the sender, dropped = output the daemon dropped for a client that did not',
          'read in time (clientDropped), pauses = times the daemon paused the port for the client (window).',
          'intact = after the sender stopped, every byte sent arrived and matched the pattern (whole run);',
          'console flood: "counted" = sent = received + dropped, whole run.',
          'baseline: guest peer <-> Unix socket <-> relay process (stream.pipe) <-> TCP <-> client.',
        ],
      ),
    );
  }
  if (con.latency.length > 0) {
    const b = con.latency.find((l) => l.path === 'baseline');
    out.push(
      table(
        '9. console keystroke round trip (client sends 1 byte, the guest echoes it; us)',
        ['path', 'n', 'rt/s', 'median', 'p90', 'p99', 'p99.9', 'max', 'med/base', 'wrong', 'daemon', 'relay'],
        con.latency.map((l) => [
          l.path,
          int(l.summary.n),
          int(l.roundTripsPerS),
          fixed(l.summary.medianUs),
          fixed(l.summary.p90Us),
          fixed(l.summary.p99Us),
          fixed(l.summary.p999Us),
          fixed(l.summary.maxUs),
          l.path === 'device' && b ? fixed(l.summary.medianUs / b.summary.medianUs, 2) : '-',
          int(l.wrong),
          pct(l.cpu.perRole.daemon),
          pct(l.cpu.perRole.blRelay),
        ]),
        [
          'device: client (TCP) -> daemon -> guest RX buffer -> guest echoes it as output -> daemon -> client.',
          'baseline: client (TCP) -> relay -> Unix socket -> echo peer -> relay -> client. One byte in flight.',
        ],
      ),
    );
  }
  if (con.idle !== null) {
    const i = con.idle;
    out.push(
      table(
        '10. console idle: guests connected (console open, RX buffers posted), no clients, nobody writes',
        ['guests', 'seconds', 'daemon CPU s', 'daemon', 'load procs', 'daemon RSS kB'],
        [
          [
            i.guests,
            fixed(i.seconds, 1),
            fixed(i.daemonCpuSeconds, 2),
            `${fixed(i.daemonCpuPercent, 2)}%`,
            `${fixed(i.loadCpuPercent, 2)}%`,
            int(i.rssKb),
          ],
        ],
        ['CPU from /proc/<pid>/stat: resolution 10 ms.'],
      ),
    );
  }
}
