/**
 * The web side of vhost-device-console: a page with each guest and port (connected or not, bytes
 * each way), `/metrics`, and `/api/status`.
 */
import type { ConsoleDaemon, ConsoleGuestStatus } from '../console/console-daemon.js';
import { httpMetrics } from './can-metrics.js';
import type { WebOptions } from './can-web.js';
import { MetricsKit, metricsRoute } from './metrics-kit.js';
import { HttpServer, type HttpServerStats, json, pageFiles, type Route } from './server.js';

export interface ConsoleWeb {
  readonly server: HttpServer;
  readonly url: string;
  close(): void;
}

export interface ConsoleGuestView extends ConsoleGuestStatus {
  readonly guest: number;
  readonly connections: number;
  readonly device: {
    readonly badChains: number;
    readonly controlDropped: number;
    readonly emergBytes: number;
  } | null;
}

export function consoleViews(con: ConsoleDaemon): ConsoleGuestView[] {
  const socks = con.daemon.status();
  return con.status().map((g, i) => {
    const d = con.device(i);
    return {
      guest: i,
      ...g,
      connections: socks[i]?.connections ?? 0,
      ports: g.ports.map((p) => ({ ...p, stats: { ...p.stats } })),
      device:
        d === null
          ? null
          : {
              badChains: d.stats.badChains,
              controlDropped: d.stats.controlDropped,
              emergBytes: d.stats.emergBytes,
            },
    };
  });
}

interface ConsoleSnapshot {
  readonly guests: readonly ConsoleGuestView[];
  readonly http: Readonly<HttpServerStats>;
  readonly version: string;
}

/** The port label's short name: `console` for port 0, else the port name. */
function portName(label: string): string {
  const sp = label.indexOf(' ');
  return sp < 0 ? label : label.slice(sp + 1);
}

export function consoleMetrics(
  take: () => ConsoleSnapshot,
  opts: { processMetrics?: boolean } = {},
): MetricsKit<ConsoleSnapshot> {
  const m = new MetricsKit(take, opts);
  m.gauge('vhost_console_build_info', 'Build of the daemon (always 1).', ['version', 'node'], (s, e) =>
    e({ version: s.version, node: process.versions.node }, 1),
  );
  m.gauge(
    'vhost_console_guest_connected',
    'Whether a front-end is connected to the guest socket (0/1).',
    ['guest'],
    (s, e) => {
      for (const g of s.guests) e({ guest: String(g.guest) }, g.connected ? 1 : 0);
    },
  );
  m.counter(
    'vhost_console_guest_connections_total',
    'Front-end connections accepted on the guest socket.',
    ['guest'],
    (s, e) => {
      for (const g of s.guests) e({ guest: String(g.guest) }, g.connections);
    },
  );
  m.gauge('vhost_console_guests_connected', 'Guests with a connected front-end.', [], (s, e) =>
    e({}, s.guests.filter((g) => g.connected).length),
  );
  const each = (
    s: ConsoleSnapshot,
    fn: (l: Record<string, string>, p: ConsoleGuestView['ports'][number]) => void,
  ): void => {
    for (const g of s.guests)
      for (const p of g.ports) fn({ guest: String(g.guest), port: portName(p.label) }, p);
  };
  m.counter(
    'vhost_console_bytes_total',
    'Bytes the guest wrote on the port (dir=tx) and bytes clients typed that reached the guest (dir=rx).',
    ['guest', 'port', 'dir'],
    (s, e) =>
      each(s, (l, p) => {
        e({ ...l, dir: 'tx' }, p.stats.outputBytes);
        e({ ...l, dir: 'rx' }, p.stats.clientBytesIn);
      }),
  );
  m.counter(
    'vhost_console_client_bytes_total',
    'Bytes written to the port clients (live and replayed scrollback).',
    ['guest', 'port'],
    (s, e) => each(s, (l, p) => e(l, p.stats.clientBytesOut)),
  );
  m.counter(
    'vhost_console_dropped_bytes_total',
    'Guest output lost: scrollback full with no client, client send queue full, log file behind or failed.',
    ['guest', 'port', 'reason'],
    (s, e) =>
      each(s, (l, p) => {
        e({ ...l, reason: 'scrollback' }, p.stats.scrollbackDropped);
        e({ ...l, reason: 'client' }, p.stats.clientDropped);
        e({ ...l, reason: 'log' }, p.stats.logDropped);
      }),
  );
  m.counter(
    'vhost_console_output_pauses_total',
    'Times guest output was paused for a slow client.',
    ['guest', 'port'],
    (s, e) => each(s, (l, p) => e(l, p.stats.outputPauses)),
  );
  m.counter(
    'vhost_console_stalled_clients_total',
    'Times a client took nothing for too long and the guest output was let go.',
    ['guest', 'port'],
    (s, e) => each(s, (l, p) => e(l, p.stats.stalledClients)),
  );
  m.counter('vhost_console_clients_total', 'Clients accepted on the port.', ['guest', 'port'], (s, e) =>
    each(s, (l, p) => e(l, p.stats.clients)),
  );
  m.counter(
    'vhost_console_refused_clients_total',
    'Clients refused because the port already had one.',
    ['guest', 'port'],
    (s, e) => each(s, (l, p) => e(l, p.stats.refusedClients)),
  );
  m.gauge(
    'vhost_console_client_connected',
    'Whether a client is connected to the port (0/1).',
    ['guest', 'port'],
    (s, e) => each(s, (l, p) => e(l, p.client ? 1 : 0)),
  );
  m.gauge(
    'vhost_console_port_open',
    'Whether the guest has the port open (0/1).',
    ['guest', 'port'],
    (s, e) => each(s, (l, p) => e(l, p.guestOpen ? 1 : 0)),
  );
  m.counter(
    'vhost_console_bad_chains_total',
    'Malformed descriptor chains returned unused.',
    ['guest'],
    (s, e) => {
      for (const g of s.guests) if (g.device !== null) e({ guest: String(g.guest) }, g.device.badChains);
    },
  );
  m.counter(
    'vhost_console_control_dropped_total',
    'Control messages to the guest dropped (backlog full, or a buffer too short for them).',
    ['guest'],
    (s, e) => {
      for (const g of s.guests) if (g.device !== null) e({ guest: String(g.guest) }, g.device.controlDropped);
    },
  );
  httpMetrics(m);
  return m;
}

export async function startConsoleWeb(con: ConsoleDaemon, opts: WebOptions): Promise<ConsoleWeb> {
  let server: HttpServer | null = null;
  const metrics = consoleMetrics(
    () => ({
      guests: consoleViews(con),
      http: server?.stats ?? { requests: {}, refused: {} },
      version: opts.version,
    }),
    { processMetrics: opts.processMetrics ?? true },
  );
  const routes: Route[] = [
    metricsRoute(metrics),
    {
      method: 'GET',
      path: /^\/api\/?$/,
      handle: ({ res }) =>
        json(res, 200, {
          daemon: 'console',
          endpoints: ['GET /api/status', 'GET /api/guests', 'GET /metrics'],
        }),
    },
    {
      method: 'GET',
      path: /^\/api\/status$/,
      handle: ({ res }) =>
        json(res, 200, {
          daemon: 'console',
          version: opts.version,
          node: process.versions.node,
          uptime: process.uptime(),
          guests: con.daemon.status().length,
          http: server?.stats,
        }),
    },
    {
      method: 'GET',
      path: /^\/api\/guests$/,
      handle: ({ res }) => json(res, 200, { guests: consoleViews(con) }),
    },
  ];
  server = new HttpServer({
    host: opts.host,
    port: opts.port,
    token: opts.token,
    log: opts.log,
    routes,
    files: pageFiles('console'),
    maxBodyBytes: opts.maxBodyBytes,
  });
  await server.listen();
  const srv = server;
  return { server: srv, url: srv.url, close: () => srv.close() };
}
