/**
 * Phase net: frames/s over a network link between two daemons on loopback, and each daemon's CPU
 * per frame, beside the in-process bus (one daemon, two guests) measured in the same run.
 *
 * Daemon A serves the sending guest (load process A floods its TX ring, 64 frames per kick), daemon
 * B the receiving guest (load process B drains its RX ring); A and B share the bus `default` over
 * the link. Each link kind is one entry of NET_LINKS: the daemon arguments of both ends given free
 * loopback ports, and how to read what the link carried from both daemons' statistics. Entries:
 * cannelloni (UDP, both ends alike), and socketcand (TCP) with the sender's daemon as the server
 * and, the other way round, as the linking client.
 */
import { createSocket } from 'node:dgram';
import { createServer, type Server } from 'node:net';
import { sleep } from '../lib/children.js';
import { type Ctx, FRAMES, type FrameName, log, measured, perS, r1 } from '../lib/context.js';
import type { DaemonProcess, DaemonStats } from '../lib/daemon-process.js';
import { flow } from '../lib/flow.js';
import { type CpuShares, cpuShares, type Snapshot, saturation, seconds, snapshot } from '../lib/harness.js';
import type { FlowResult, Results } from '../lib/results.js';
import { fixed, int, pct, table } from '../lib/table.js';

/** One kind of link to measure. */
export interface NetLinkKind {
  /** Row label. */
  readonly name: string;
  /** Free loopback ports it needs (TCP and UDP: both free when this is asked). */
  readonly ports: number;
  /** Extra arguments of daemon A (the sender's) and daemon B (the receiver's). */
  args(ports: readonly number[]): { a: string[]; b: string[] };
  /** What the link carried so far (cumulative), from the statistics of A and of B. */
  counters(a: DaemonStats, b: DaemonStats): NetLinkCounters;
}

export interface NetLinkCounters {
  /** Frames A sent over the link; frames B received from it. */
  tx: number;
  rx: number;
  /** Frames for the link A dropped (its queue full, the link down, the peer reading too slowly). */
  txDropped: number;
  /** Datagrams A sent, datagrams B found missing in the sequence; null for a stream (TCP). */
  datagrams: number | null;
  lostDatagrams: number | null;
}

const sum = (lines: readonly Record<string, unknown>[], ...fields: string[]): number =>
  lines.reduce((n, l) => n + fields.reduce((m, f) => m + Number(l[f] ?? 0), 0), 0);

/** Every link of both daemons up, and every socketcand server with its client. */
function linksUp(s: DaemonStats): boolean {
  return (
    s.links.length + s.servers.length > 0 &&
    s.links.every((l) => l.state === 'up') &&
    s.servers.every((l) => Number(l.clients) > 0)
  );
}

const cannelloni = (name: string, query: string): NetLinkKind => ({
  name,
  ports: 2,
  args: ([pa, pb]) => ({
    a: ['--link', `default=cannelloni://127.0.0.1:${pb}?local=127.0.0.1:${pa}${query}`],
    b: ['--link', `default=cannelloni://127.0.0.1:${pa}?local=127.0.0.1:${pb}${query}`],
  }),
  counters: (a, b) => ({
    tx: sum(a.links, 'txFrames'),
    rx: sum(b.links, 'rxFrames'),
    txDropped: sum(a.links, 'txDroppedOverflow', 'txDroppedDown'),
    datagrams: sum(a.links, 'txDatagrams'),
    lostDatagrams: sum(b.links, 'rxLost'),
  }),
});

/**
 * A socketcand link: one daemon listens (--socketcand-listen), the other links to it
 * (--link default=socketcand://...). `serverSends`: the sender's daemon A is the server (it writes
 * `< frame ... >`, B's link parses them), else A is the link (it writes `< send ... >`).
 */
const socketcand = (name: string, serverSends: boolean): NetLinkKind => ({
  name,
  ports: 1,
  args: ([p]) => {
    const server = ['--socketcand-listen', `127.0.0.1:${p}`];
    const link = ['--link', `default=socketcand://127.0.0.1:${p}/default`];
    return serverSends ? { a: server, b: link } : { a: link, b: server };
  },
  // The server's line counts for all its clients: here there is one, the other daemon's link.
  counters: (a, b) => ({
    tx: sum(a.links, 'framesOut') + sum(a.servers, 'framesOut'),
    rx: sum(b.links, 'framesIn') + sum(b.servers, 'framesIn'),
    txDropped: sum(a.links, 'droppedWhileDown', 'droppedOverflow') + sum(a.servers, 'droppedSlowClient'),
    datagrams: null,
    lostDatagrams: null,
  }),
});

/** The link kinds of the phase. */
export const NET_LINKS: readonly NetLinkKind[] = [
  cannelloni('cannelloni', ''),
  // Between two of these daemons larger datagrams are allowed (a real cannelloni reads 1500 bytes).
  cannelloni('cannelloni 8k', '&datagram=8192'),
  socketcand('socketcand', true),
  socketcand('socketcand, A links', false),
];

export interface NetResult {
  link: string;
  frame: FrameName;
  seconds: number;
  /** Guest frames daemon A completed (txOk). */
  acceptedPerS: number;
  /** Frames A's link sent / B's link received. */
  linkTxPerS: number;
  linkRxPerS: number;
  /** Frames written into the receiving guest's RX ring. */
  deliveredPerS: number;
  /** Frames the link's queue could not take (A), the receiving guest's backlog could not take (B). */
  txDroppedPerS: number;
  rxDroppedPerS: number;
  /** Datagrams B counted lost (sequence gaps), per second (null: not a datagram link). */
  lostDatagramsPerS: number | null;
  datagramsPerS: number | null;
  framesPerDatagram: number | null;
  /** Daemon CPU per frame carried by the link, microseconds. */
  usPerFrameA: number | null;
  usPerFrameB: number | null;
  cpu: CpuShares;
  saturated: string;
}

interface NetSnapshot {
  snap: Snapshot;
  a: DaemonStats;
  b: DaemonStats;
}

/** `n` ports free for both UDP and TCP on 127.0.0.1 right now. */
async function freePorts(n: number): Promise<number[]> {
  const out: number[] = [];
  const socks = [];
  const servers: Server[] = [];
  for (let tries = 0; out.length < n; tries++) {
    if (tries > 100) throw new Error('no free loopback ports');
    const s = createSocket('udp4');
    await new Promise<void>((r) => s.bind(0, '127.0.0.1', r));
    socks.push(s);
    const port = s.address().port;
    const tcp = createServer();
    const ok = await new Promise<boolean>((r) => {
      tcp.once('error', () => r(false));
      tcp.listen(port, '127.0.0.1', () => r(true));
    });
    if (!ok) continue;
    servers.push(tcp);
    out.push(port);
  }
  for (const s of socks) s.close();
  await Promise.all(servers.map((t) => new Promise((r) => t.close(r))));
  return out;
}

async function netSnapshot(ctx: Ctx, da: DaemonProcess, db: DaemonProcess): Promise<NetSnapshot> {
  const [a, b, snap] = await Promise.all([da.stats(), db.stats(), snapshot(null, [ctx.a, ctx.b])]);
  snap.cpu.daemonA = da.cpuSeconds();
  snap.cpu.daemonB = db.cpuSeconds();
  return { snap, a, b };
}

async function linkFlow(ctx: Ctx, kind: NetLinkKind, frame: FrameName): Promise<NetResult> {
  const args = kind.args(await freePorts(kind.ports));
  const label = `net-${kind.name.replace(/\W+/g, '-')}-${frame}`;
  const da = await ctx.daemon(1, `${label}-A`, [], { args: args.a });
  const db = await ctx.daemon(1, `${label}-B`, [], { args: args.b });
  const { a, b } = ctx;
  try {
    for (let i = 0; ; i++) {
      const [sa, sb] = await Promise.all([da.stats(), db.stats()]);
      if (linksUp(sa) && linksUp(sb)) break;
      if (i > 100)
        throw new Error(
          `the ${kind.name} link did not come up: ${JSON.stringify([sa.links, sa.servers, sb.links, sb.servers])}`,
        );
      await sleep(50);
    }
    await Promise.all([
      a.call('connect', {
        key: 's',
        path: da.path(0),
        queueSize: ctx.cfg.queueSize,
        lateTxAck: true,
        canId: 0x100,
      }),
      b.call('connect', {
        key: 'r',
        path: db.path(0),
        queueSize: ctx.cfg.queueSize,
        lateTxAck: true,
        canId: 0x200,
      }),
    ]);
    await b.call('drain-start', { keys: ['r'] });
    await a.call('flood-start', { keys: ['s'], frame: FRAMES[frame], batch: 64 });
    await sleep(ctx.cfg.warmMs);
    const s0 = await netSnapshot(ctx, da, db);
    await sleep(ctx.cfg.measureMs);
    const s1 = await netSnapshot(ctx, da, db);
    await a.call('flood-stop', { keys: ['s'] }, 15_000);
    const dt = seconds(s0.snap, s1.snap);
    const cpu = cpuShares(s0.snap, s1.snap, ctx.cores);
    const c0 = kind.counters(s0.a, s0.b);
    const c1 = kind.counters(s1.a, s1.b);
    const dNull = (f: 'datagrams' | 'lostDatagrams'): number | null =>
      c0[f] === null || c1[f] === null ? null : c1[f] - c0[f];
    const datagrams = dNull('datagrams');
    const lost = dNull('lostDatagrams');
    const sock = (
      s: NetSnapshot,
      which: 'a' | 'b',
      f: 'txOk' | 'rxDelivered' | 'rxDroppedOverflow',
    ): number => s[which].sockets[0]?.[f] ?? 0;
    const linkTx = c1.tx - c0.tx;
    const linkRx = c1.rx - c0.rx;
    const cpuS = (role: string): number => ((cpu.perRole[role] ?? 0) / 100) * dt;
    return {
      link: kind.name,
      frame,
      seconds: r1(dt * 1000) / 1000,
      acceptedPerS: perS(sock(s1, 'a', 'txOk') - sock(s0, 'a', 'txOk'), dt),
      linkTxPerS: perS(linkTx, dt),
      linkRxPerS: perS(linkRx, dt),
      deliveredPerS: perS(sock(s1, 'b', 'rxDelivered') - sock(s0, 'b', 'rxDelivered'), dt),
      txDroppedPerS: perS(c1.txDropped - c0.txDropped, dt),
      rxDroppedPerS: perS(sock(s1, 'b', 'rxDroppedOverflow') - sock(s0, 'b', 'rxDroppedOverflow'), dt),
      lostDatagramsPerS: lost === null ? null : perS(lost, dt),
      datagramsPerS: datagrams === null ? null : perS(datagrams, dt),
      framesPerDatagram: datagrams === null ? null : r1(linkTx / Math.max(1, datagrams)),
      usPerFrameA: linkTx > 0 ? r1((cpuS('daemonA') * 1e6 * 100) / linkTx) / 100 : null,
      usPerFrameB: linkRx > 0 ? r1((cpuS('daemonB') * 1e6 * 100) / linkRx) / 100 : null,
      cpu,
      saturated: saturation(cpu, ctx.cores, {
        daemonA: 'daemon A',
        daemonB: 'daemon B',
        loadA: 'sender FE',
        loadB: 'receiver FE',
      }),
    };
  } finally {
    await ctx.closeGuests();
    await ctx.stopDaemon(da);
    await ctx.stopDaemon(db);
  }
}

export async function measureNet(ctx: Ctx, res: Results): Promise<void> {
  const frames: FrameName[] = ctx.cfg.quick ? ['classic8'] : ['classic8', 'fd64'];
  for (const frame of frames) {
    log(`net: in-process bus, ${frame}`);
    res.netBus.push(
      await measured(ctx, `net-bus-${frame}`, () =>
        flow(ctx, {
          mode: 'flood',
          frame,
          batch: 64,
          lateTxAck: true,
          senderQueue: ctx.cfg.queueSize,
          receiverQueue: ctx.cfg.queueSize,
          measureMs: ctx.cfg.measureMs,
          label: `net-bus-${frame}`,
        }),
      ),
    );
    for (const kind of NET_LINKS) {
      log(`net: ${kind.name} link, ${frame}`);
      res.net.push(await measured(ctx, `net-${kind.name}-${frame}`, () => linkFlow(ctx, kind, frame)));
    }
  }
}

/** Goal per link: 20 times the busiest physical CAN FD bus (about 24 000 frames/s). */
export const NET_GOAL = 20 * 24_000;

export function reportNet(res: Results, out: string[]): void {
  if (res.net.length === 0 && res.netBus.length === 0) return;
  const busRow = (r: FlowResult) => {
    const us = r.deliveredPerS > 0 ? ((r.cpu.perRole.daemon ?? 0) / 100) * (1e6 / r.deliveredPerS) : null;
    return [
      'in-process bus',
      r.frame,
      int(r.acceptedPerS),
      '-',
      '-',
      int(r.deliveredPerS),
      int(r.droppedPerS),
      '-',
      '-',
      '-',
      fixed(us, 2),
      '-',
      pct(r.cpu.perRole.daemon),
      '-',
      pct(r.cpu.other),
      r.saturated,
    ];
  };
  out.push(
    table(
      `N. guest -> link -> guest between two daemons on loopback (flood, 64 per kick; frames/s; goal ${int(NET_GOAL)}/s per link)`,
      [
        'path',
        'frame',
        'accepted',
        'link tx',
        'link rx',
        'delivered',
        'dropped',
        'lost dg/s',
        'dg/s',
        'fr/dg',
        'us/fr A',
        'us/fr B',
        'daemon A',
        'daemon B',
        'other',
        'saturated',
      ],
      [
        ...res.netBus.map(busRow),
        ...res.net.map((r) => [
          r.link,
          r.frame,
          int(r.acceptedPerS),
          int(r.linkTxPerS),
          int(r.linkRxPerS),
          int(r.deliveredPerS),
          int(r.txDroppedPerS + r.rxDroppedPerS),
          int(r.lostDatagramsPerS),
          int(r.datagramsPerS),
          fixed(r.framesPerDatagram, 1),
          fixed(r.usPerFrameA, 2),
          fixed(r.usPerFrameB, 2),
          pct(r.cpu.perRole.daemonA),
          pct(r.cpu.perRole.daemonB),
          pct(r.cpu.other),
          r.saturated,
        ]),
      ],
      [
        'in-process bus: one daemon, the sending and the receiving guest on one bus (as phase 1, flood, 64 per kick).',
        'link rows: daemon A (sending guest) and daemon B (receiving guest) share the bus over the link on 127.0.0.1.',
        'link tx / link rx = frames A sent over the link / B received; delivered = frames written to the receiving guest.',
        'dropped = frames the link queue (A) or the receiving guest backlog (B) could not take; lost dg/s = datagrams',
        'missing in the sequence at B (the kernel dropped them: B slower than A). us/fr = daemon CPU per link frame.',
        '"cannelloni 8k": datagrams up to 8192 bytes (datagram=8192), only between two of these daemons.',
        '"socketcand": A --socketcand-listen, B --link socketcand://A/default (A writes < frame >, B parses);',
        '"socketcand, A links": the other way round (A\'s link writes < send >, B\'s server parses). TCP: no datagrams.',
      ],
    ),
  );
}
