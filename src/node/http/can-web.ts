/**
 * The web side of vhost-device-can: the monitor page, `/metrics` and the control API on one HTTP
 * server (see docs/monitor.md for the endpoints).
 */
import type { CanFrame } from '../../core/bus/can-frame.js';
import { makeCanFrame, parseCandump } from '../../core/bus/can-frame.js';
import type { CanHub } from '../../core/bus/hub.js';
import type { Logger } from '../../core/util/log.js';
import type { CanDaemon } from '../can/can-daemon.js';
import { BusHistory } from './bus-history.js';
import { canMetrics } from './can-metrics.js';
import { API_PORT, busViews, guestViews, MONITOR_PORT } from './can-view.js';
import { type FaultControl, FaultError, HubFaultControl, parseFault } from './fault-control.js';
import { FrameStreams, type FrameStreamsOptions, parseStreamRequest } from './frame-streams.js';
import { metricsRoute } from './metrics-kit.js';
import { HttpError, HttpServer, json, pageFiles, type Route, type RouteContext } from './server.js';

export interface WebOptions {
  host: string;
  port: number;
  token?: string | null | undefined;
  log: Logger;
  /** The daemon's version (build info, /api/status). */
  version: string;
  /** Stream limits (tests make them small). */
  streams?: Partial<Omit<FrameStreamsOptions, 'hubOf' | 'busNames' | 'epochOffsetNs'>> | undefined;
  maxBodyBytes?: number | undefined;
  /** Include process and Node.js metrics (default true). */
  processMetrics?: boolean | undefined;
}

export interface CanWeb {
  readonly server: HttpServer;
  /** `http://host:port` */
  readonly url: string;
  readonly faults: FaultControl;
  readonly streams: FrameStreams;
  readonly history: BusHistory;
  close(): void;
}

/** Frames one inject request may carry. */
export const MAX_INJECT_FRAMES = 1000;

const FAULT_STATUS: Record<string, number> = {
  ERR_FAULT_INVALID: 400,
  ERR_FAULT_NOT_AVAILABLE: 501,
  ERR_FAULT_UNKNOWN_BUS: 404,
  ERR_FAULT_UNKNOWN_PORT: 404,
};

function faultHttp(err: unknown): never {
  if (err instanceof FaultError) throw new HttpError(FAULT_STATUS[err.code] ?? 400, err.code, err.message);
  throw err;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** One frame of an inject request: `"123#DEADBEEF"` (candump syntax) or `{id, data, ext, fd, brs, esi, rtr, len}`. */
export function frameFromJson(v: unknown, where: string): CanFrame {
  try {
    if (typeof v === 'string') return parseCandump(v);
    if (!isObject(v)) throw new Error('expected "ID#DATA" or an object with "id"');
    const id = typeof v.id === 'string' ? Number.parseInt(v.id, 16) : v.id;
    if (typeof id !== 'number' || !Number.isInteger(id))
      throw new Error('"id" must be an integer or a hex string');
    let data: number[] = [];
    if (typeof v.data === 'string') {
      const hex = v.data.replace(/[\s.]/g, '');
      if (!/^([0-9a-fA-F]{2})*$/.test(hex)) throw new Error('"data" must be hex byte pairs');
      data = hex.match(/../g)?.map((b) => Number.parseInt(b, 16)) ?? [];
    } else if (Array.isArray(v.data)) data = v.data as number[];
    else if (v.data !== undefined) throw new Error('"data" must be a hex string or an array of bytes');
    const bool = (k: string): boolean | undefined => {
      const b = v[k];
      if (b === undefined) return undefined;
      if (typeof b !== 'boolean') throw new Error(`"${k}" must be true or false`);
      return b;
    };
    const len = v.len;
    if (len !== undefined && typeof len !== 'number') throw new Error('"len" must be a number');
    return makeCanFrame({
      id,
      data,
      extended: bool('ext') ?? bool('extended'),
      fd: bool('fd'),
      brs: bool('brs'),
      esi: bool('esi'),
      rtr: bool('rtr'),
      len,
    });
  } catch (err) {
    throw new HttpError(400, 'ERR_HTTP_BAD_REQUEST', `${where}: ${(err as Error).message}`);
  }
}

export async function startCanWeb(can: CanDaemon, opts: WebOptions): Promise<CanWeb> {
  const hubOf = (name: string): CanHub | undefined =>
    can.buses.has(name) && can.hubs.has(name) ? can.hubs.get(name) : undefined;
  const busNames = (): string[] => [...can.buses.keys()];
  const faults = new HubFaultControl(hubOf, () => can.hubs.names());
  const epochOffsetNs = BigInt(Date.now()) * 1_000_000n - process.hrtime.bigint();
  const streams = new FrameStreams({
    hubOf,
    busNames,
    epochOffsetNs,
    tapName: MONITOR_PORT,
    ...opts.streams,
  });
  const history = new BusHistory(
    () => new Map(busNames().flatMap((n) => (can.hubs.has(n) ? [[n, can.hubs.get(n)] as const] : []))),
  );
  let server: HttpServer | null = null;
  const metrics = canMetrics(
    () => ({
      buses: busViews(can),
      guests: guestViews(can),
      streams: { ...streams.stats },
      tapFrames: streams.tapFrames(),
      faults: faults.list(),
      faultsInjected: { ...faults.injected },
      http: server?.stats ?? { requests: {}, refused: {} },
      version: opts.version,
    }),
    { processMetrics: opts.processMetrics ?? true },
  );

  const busParam = (ctx: RouteContext): string => {
    const bus = ctx.params.bus!;
    if (!can.buses.has(bus)) throw new HttpError(404, 'ERR_HTTP_NOT_FOUND', `no bus called "${bus}"`);
    return bus;
  };

  const routes: Route[] = [
    metricsRoute(metrics),
    {
      method: 'GET',
      path: /^\/api\/?$/,
      handle: ({ res }) =>
        json(res, 200, {
          daemon: 'can',
          endpoints: [
            'GET /api/status',
            'GET /api/buses',
            'GET /api/buses/BUS',
            'GET /api/buses/BUS/history',
            'POST /api/buses/BUS/frames',
            'GET /api/guests',
            'GET /api/faults',
            'POST /api/faults',
            'DELETE /api/faults',
            'DELETE /api/faults/ID',
            'GET /api/stream?bus=&id=&mask=&ext=&port=&errors=&rate=&decode=canopen',
            'GET /metrics',
          ],
        }),
    },
    {
      method: 'GET',
      path: /^\/api\/status$/,
      handle: ({ res }) =>
        json(res, 200, {
          daemon: 'can',
          version: opts.version,
          node: process.versions.node,
          uptime: process.uptime(),
          buses: busNames(),
          guests: can.daemon.status().length,
          faultKinds: faults.kinds,
          stream: { defaultRate: streams.defaultRate, maxRate: streams.maxRate, ...streams.stats },
          http: server?.stats,
        }),
    },
    {
      method: 'GET',
      path: /^\/api\/buses$/,
      handle: ({ res }) => json(res, 200, { buses: busViews(can) }),
    },
    {
      method: 'GET',
      path: /^\/api\/buses\/(?<bus>[^/]+)$/,
      handle: (ctx) => json(ctx.res, 200, busViews(can, busParam(ctx))[0]),
    },
    {
      method: 'GET',
      path: /^\/api\/buses\/(?<bus>[^/]+)\/history$/,
      handle: (ctx) => {
        const bus = busParam(ctx);
        json(ctx.res, 200, { bus, intervalSeconds: 1, samples: history.of(bus) });
      },
    },
    {
      method: 'POST',
      path: /^\/api\/buses\/(?<bus>[^/]+)\/frames$/,
      handle: (ctx) => {
        const bus = busParam(ctx);
        const b = ctx.body;
        const list: unknown[] = isObject(b)
          ? Array.isArray(b.frames)
            ? b.frames
            : b.frame !== undefined
              ? [b.frame]
              : []
          : [];
        if (list.length === 0) {
          throw new HttpError(400, 'ERR_HTTP_BAD_REQUEST', 'expected {"frame": ...} or {"frames": [...]}');
        }
        if (list.length > MAX_INJECT_FRAMES) {
          throw new HttpError(400, 'ERR_HTTP_BAD_REQUEST', `at most ${MAX_INJECT_FRAMES} frames per request`);
        }
        const frames = list.map((v, i) => frameFromJson(v, `frames[${i}]`));
        // A port for this request only: it never receives, so it costs the bus nothing between requests.
        const hub = can.hubs.get(bus);
        const port = hub.attach({ onFramesAvailable: () => {} }, { name: API_PORT, queueLimit: 1 });
        let sent = 0;
        let dropped = 0;
        try {
          port.setReceiving(false);
          for (const f of frames) {
            if (port.transmit(f) === 'dropped') dropped++;
            else sent++;
          }
        } finally {
          port.detach();
        }
        json(ctx.res, 200, { bus, sent, dropped });
      },
    },
    {
      method: 'GET',
      path: /^\/api\/guests$/,
      handle: ({ res }) => json(res, 200, { guests: guestViews(can) }),
    },
    {
      method: 'GET',
      path: /^\/api\/faults$/,
      handle: ({ res }) => json(res, 200, { kinds: faults.kinds, faults: faults.list() }),
    },
    {
      method: 'POST',
      path: /^\/api\/faults$/,
      handle: (ctx) => {
        const b = ctx.body;
        if (!isObject(b))
          throw new HttpError(400, 'ERR_HTTP_BAD_REQUEST', 'expected {"bus", "port", "fault"}');
        if (typeof b.bus !== 'string')
          throw new HttpError(400, 'ERR_HTTP_BAD_REQUEST', '"bus" must be a string');
        if (typeof b.port !== 'string' && typeof b.port !== 'number') {
          throw new HttpError(400, 'ERR_HTTP_BAD_REQUEST', '"port" must be a port name or id');
        }
        const fault = parseFault(b.fault);
        if (typeof fault === 'string') throw new HttpError(400, 'ERR_FAULT_INVALID', fault);
        if (b.durationMs !== undefined && typeof b.durationMs !== 'number') {
          throw new HttpError(400, 'ERR_FAULT_INVALID', '"durationMs" must be a number');
        }
        try {
          const f = faults.inject(b.bus, b.port, fault, { durationMs: b.durationMs as number | undefined });
          json(ctx.res, 201, { fault: f });
        } catch (err) {
          faultHttp(err);
        }
      },
    },
    {
      method: 'DELETE',
      path: /^\/api\/faults$/,
      handle: (ctx) => {
        const b = isObject(ctx.body) ? ctx.body : {};
        const bus = typeof b.bus === 'string' ? b.bus : undefined;
        const port = typeof b.port === 'string' || typeof b.port === 'number' ? b.port : undefined;
        json(ctx.res, 200, { cleared: faults.clearAll({ bus, port }) });
      },
    },
    {
      method: 'DELETE',
      path: /^\/api\/faults\/(?<id>\d+)$/,
      handle: (ctx) => {
        const id = Number(ctx.params.id);
        if (!faults.clear(id)) throw new HttpError(404, 'ERR_HTTP_NOT_FOUND', `no active fault ${id}`);
        json(ctx.res, 200, { cleared: 1 });
      },
    },
    {
      method: 'GET',
      path: /^\/api\/stream$/,
      handle: (ctx) => {
        const sreq = parseStreamRequest(
          ctx.url.searchParams,
          busNames(),
          streams.defaultRate,
          streams.maxRate,
        );
        streams.open(ctx.req, ctx.res, sreq);
      },
    },
  ];

  server = new HttpServer({
    host: opts.host,
    port: opts.port,
    token: opts.token,
    log: opts.log,
    routes,
    files: pageFiles('can'),
    maxBodyBytes: opts.maxBodyBytes,
  });
  try {
    await server.listen();
  } catch (err) {
    history.close();
    throw err;
  }
  const srv = server;
  return {
    server: srv,
    url: srv.url,
    faults,
    streams,
    history,
    close() {
      streams.close();
      history.close();
      faults.close();
      srv.close();
    },
  };
}
