/**
 * Frame streams for viewers (the monitor page, `curl -N`, test scripts) as Server-Sent Events.
 *
 * Each bus a viewer watches has one FrameTap (attached while anyone watches it). Every `tickMs` the
 * streams read what the taps collected since the viewer's last look, keep the frames that pass its
 * filter, and send at most `rate` frames per second (a token bucket), picked evenly over the
 * matches; the rest are counted `skipped`. Frames the viewer never got to look at are counted
 * `lost`: overwritten in the tap's ring before it read them, or put on the bus while the tap sat
 * out the rest of a window during a flood (see FrameTap). A viewer whose socket does not take what was written (Node's write
 * buffer over `maxBufferBytes`, or still congested after `stallMs`) is cut off, so a slow reader
 * never makes the daemon queue without bound; EventSource reconnects by itself.
 *
 * Events: `hello` (the filter and rate), `frame` (one frame or error event, JSON), `stats` (every
 * second: sent, skipped, lost).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { CanErr } from '../../core/bus/can-error.js';
import { decodeCanOpen } from '../../core/bus/canopen.js';
import type { CanHub } from '../../core/bus/hub.js';
import { FrameTap, type TapEntry, TapFlag, type TapFrame } from './frame-tap.js';
import { HttpError } from './server.js';

export interface StreamFilter {
  /** Buses to watch; null = all. */
  readonly buses: readonly string[] | null;
  /** Identifier filter: `(id & mask) === (filterId & mask)`; mask 0 passes every frame. */
  readonly id: number;
  readonly mask: number;
  /** Only extended (true) or standard (false) frames; null = both. */
  readonly extended: boolean | null;
  /** Sender port names (or `#ID`); null = any. */
  readonly ports: ReadonlySet<string> | null;
  /** Include error events (controller state changes, error frames). */
  readonly errors: boolean;
}

export interface StreamRequest {
  filter: StreamFilter;
  rate: number;
  canopen: boolean;
}

export interface FrameStreamsOptions {
  /** The bus called `name`, or undefined. */
  hubOf(name: string): CanHub | undefined;
  busNames(): string[];
  /** Wall-clock ns of the bus clock's zero (frame times in events are wall-clock seconds). */
  epochOffsetNs: bigint;
  maxStreams?: number | undefined;
  /** Frames per second per viewer when the request gives none, and the most it may ask for. */
  defaultRate?: number | undefined;
  maxRate?: number | undefined;
  /** Bytes Node may hold for one viewer's socket before the viewer is cut off. */
  maxBufferBytes?: number | undefined;
  /** How long a viewer's socket may stay congested before it is cut off. */
  stallMs?: number | undefined;
  tickMs?: number | undefined;
  tapCapacity?: number | undefined;
  /** Entries a tap copies per tick before it sits out the rest of the tick (default: half its capacity). */
  tapWindowBudget?: number | undefined;
  /** Port name of the taps on the buses. */
  tapName?: string | undefined;
}

export interface FrameStreamsStats {
  /** Streams open now. */
  streams: number;
  opened: number;
  /** Viewers cut off for not reading. */
  cut: number;
  /** Requests refused because `maxStreams` were open. */
  refused: number;
  /** Frames and error events sent, skipped by the rate limit or a congested socket, lost (overwritten before read). */
  sent: number;
  skipped: number;
  lost: number;
}

export const STREAM_DEFAULTS = {
  MAX_STREAMS: 8,
  RATE: 200,
  MAX_RATE: 5000,
  MAX_BUFFER_BYTES: 1 << 20,
  STALL_MS: 5000,
  TICK_MS: 100,
} as const;

const HEX = '0123456789ABCDEF';
function hexOf(b: Uint8Array): string {
  let s = '';
  for (let i = 0; i < b.length; i++) s += HEX[b[i]! >> 4]! + HEX[b[i]! & 15]!;
  return s;
}

function parseHex(v: string, what: string, max: number): number {
  if (!/^(0x)?[0-9a-fA-F]{1,8}$/.test(v))
    throw new HttpError(400, 'ERR_HTTP_BAD_REQUEST', `${what} must be hex`);
  const n = Number.parseInt(v.replace(/^0x/, ''), 16);
  if (n > max)
    throw new HttpError(400, 'ERR_HTTP_BAD_REQUEST', `${what} must be at most 0x${max.toString(16)}`);
  return n;
}

function flag(q: URLSearchParams, name: string): boolean | null {
  const v = q.get(name);
  if (v === null || v === '') return null;
  if (v === '1' || v === 'true') return true;
  if (v === '0' || v === 'false') return false;
  throw new HttpError(400, 'ERR_HTTP_BAD_REQUEST', `${name} must be 0 or 1`);
}

/**
 * Reads a stream request from query parameters: `bus` (repeatable or comma separated), `id` and
 * `mask` (hex; `id` alone matches exactly), `ext` (0/1), `port` (sender names, comma separated),
 * `errors` (0/1, default 1), `rate` (frames/s), `decode=canopen`. Throws HttpError 400/404.
 */
export function parseStreamRequest(
  q: URLSearchParams,
  known: readonly string[],
  defaultRate: number,
  maxRate: number,
): StreamRequest {
  const list = (name: string): string[] =>
    q
      .getAll(name)
      .flatMap((v) => v.split(','))
      .map((s) => s.trim())
      .filter((s) => s !== '');
  const buses = list('bus');
  for (const b of buses) {
    if (!known.includes(b)) throw new HttpError(404, 'ERR_HTTP_NOT_FOUND', `no bus called "${b}"`);
  }
  const idText = q.get('id');
  const maskText = q.get('mask');
  const id = idText === null || idText === '' ? 0 : parseHex(idText, 'id', 0x1fffffff);
  const mask =
    maskText !== null && maskText !== ''
      ? parseHex(maskText, 'mask', 0x1fffffff)
      : idText === null || idText === ''
        ? 0
        : 0x1fffffff;
  const ports = list('port');
  const rateText = q.get('rate');
  let rate = defaultRate;
  if (rateText !== null && rateText !== '') {
    rate = Number(rateText);
    if (!Number.isInteger(rate) || rate < 1 || rate > maxRate) {
      throw new HttpError(400, 'ERR_HTTP_BAD_REQUEST', `rate must be an integer 1..${maxRate}`);
    }
  }
  const decode = q.get('decode');
  if (decode !== null && decode !== '' && decode !== 'canopen') {
    throw new HttpError(400, 'ERR_HTTP_BAD_REQUEST', 'decode must be "canopen" (or absent)');
  }
  return {
    filter: {
      buses: buses.length === 0 ? null : buses,
      id,
      mask,
      extended: flag(q, 'ext'),
      ports: ports.length === 0 ? null : new Set(ports),
      errors: flag(q, 'errors') ?? true,
    },
    rate,
    canopen: decode === 'canopen',
  };
}

/** A short name for an error event, from its class bits and controller byte. */
export function describeErrorEvent(classBits: number, data: Uint8Array): string {
  const parts: string[] = [];
  if (classBits & CanErr.BUSOFF) parts.push('bus-off');
  if (classBits & CanErr.RESTARTED) parts.push('restarted');
  if (classBits & CanErr.CRTL) {
    const c = data[1] ?? 0;
    if (c & (CanErr.CRTL_RX_PASSIVE | CanErr.CRTL_TX_PASSIVE)) parts.push('error-passive');
    else if (c & (CanErr.CRTL_RX_WARNING | CanErr.CRTL_TX_WARNING)) parts.push('error-warning');
    else if (c & CanErr.CRTL_ACTIVE) parts.push('error-active');
    if (c & (CanErr.CRTL_RX_OVERFLOW | CanErr.CRTL_TX_OVERFLOW)) parts.push('overflow');
  }
  if (classBits & CanErr.TX_TIMEOUT) parts.push('tx-timeout');
  if (classBits & CanErr.LOSTARB) parts.push('lost-arbitration');
  if (classBits & CanErr.PROT) parts.push('protocol-violation');
  if (classBits & CanErr.TRX) parts.push('transceiver');
  if (classBits & CanErr.ACK) parts.push('no-ack');
  if (classBits & CanErr.BUSERROR) parts.push('bus-error');
  return parts.length === 0 ? 'error' : parts.join(' ');
}

/** The candump token of a ring entry (`123#DEADBEEF`, `12345678#R`, `123##1AABB`). */
function candumpToken(f: TapFrame): string {
  const ext = (f.flags & TapFlag.EXTENDED) !== 0;
  let s = f.id
    .toString(16)
    .toUpperCase()
    .padStart(ext ? 8 : 3, '0');
  s += '#';
  const dlc = f.len8Dlc !== 0 ? `_${HEX[f.len8Dlc]}` : '';
  if (f.flags & TapFlag.RTR) return `${s}R${f.len === 0 ? '' : HEX[f.len]}${f.len === 0 ? '' : dlc}`;
  if (f.flags & TapFlag.FD)
    s += `#${HEX[((f.flags & TapFlag.BRS) !== 0 ? 1 : 0) | ((f.flags & TapFlag.ESI) !== 0 ? 2 : 0)]}`;
  return `${s}${hexOf(f.data)}${dlc}`;
}

/** The JSON of one ring entry as the stream and the API send it. */
export function frameJson(
  f: TapFrame,
  bus: string,
  portName: string,
  epochOffsetNs: bigint,
  canopen: boolean,
): Record<string, unknown> {
  // Wall-clock seconds with microseconds (a double holds them exactly for the next centuries).
  const t = Number((epochOffsetNs + BigInt(Math.round(f.timestampNs))) / 1000n) / 1e6;
  if (f.flags & TapFlag.ERROR) {
    return {
      seq: f.seq,
      bus,
      t,
      port: portName,
      error: true,
      classBits: f.id,
      data: hexOf(f.data),
      text: describeErrorEvent(f.id, f.data),
    };
  }
  const out: Record<string, unknown> = {
    seq: f.seq,
    bus,
    t,
    port: portName,
    id: f.id,
    ext: (f.flags & TapFlag.EXTENDED) !== 0,
    rtr: (f.flags & TapFlag.RTR) !== 0,
    fd: (f.flags & TapFlag.FD) !== 0,
    brs: (f.flags & TapFlag.BRS) !== 0,
    esi: (f.flags & TapFlag.ESI) !== 0,
    len: f.len,
    data: hexOf(f.data),
    text: candumpToken(f),
  };
  if (canopen) {
    const co = decodeCanOpen({
      id: f.id,
      extended: (f.flags & TapFlag.EXTENDED) !== 0,
      rtr: (f.flags & TapFlag.RTR) !== 0,
      len: f.len,
      data: f.data,
    });
    if (co !== null)
      out.canopen = { service: co.service, summary: co.summary, ...('node' in co ? { node: co.node } : {}) };
  }
  return out;
}

interface Subscription {
  bus: string;
  tap: FrameTap;
  cursor: number;
  /** The tap's `unseen` count at the viewer's last look. */
  unseen: number;
}

class Viewer {
  readonly res: ServerResponse;
  readonly req: StreamRequest;
  readonly subs: Subscription[];
  tokens: number;
  sent = 0;
  skipped = 0;
  lost = 0;
  congestedSince = 0;
  lastStats = 0;
  closed = false;

  constructor(res: ServerResponse, req: StreamRequest, subs: Subscription[]) {
    this.res = res;
    this.req = req;
    this.subs = subs;
    this.tokens = 0;
  }
}

interface TapState {
  tap: FrameTap;
  viewers: number;
}

export class FrameStreams {
  readonly #o: {
    hubOf(name: string): CanHub | undefined;
    busNames(): string[];
    epochOffsetNs: bigint;
    maxStreams: number;
    defaultRate: number;
    maxRate: number;
    maxBufferBytes: number;
    stallMs: number;
    tickMs: number;
    tapCapacity: number;
    tapWindowBudget: number | undefined;
    tapName: string;
  };
  readonly #viewers = new Set<Viewer>();
  readonly #taps = new Map<string, TapState>();
  #timer: ReturnType<typeof setInterval> | null = null;
  #lastTick = 0;
  readonly stats: FrameStreamsStats = {
    streams: 0,
    opened: 0,
    cut: 0,
    refused: 0,
    sent: 0,
    skipped: 0,
    lost: 0,
  };
  // Reused per tick: the matching entries of one viewer (sequence numbers and subscription index).
  #matchSeq = new Float64Array(1024);
  #matchSub = new Uint16Array(1024);

  constructor(opts: FrameStreamsOptions) {
    this.#o = {
      hubOf: opts.hubOf,
      busNames: opts.busNames,
      epochOffsetNs: opts.epochOffsetNs,
      maxStreams: opts.maxStreams ?? STREAM_DEFAULTS.MAX_STREAMS,
      defaultRate: opts.defaultRate ?? STREAM_DEFAULTS.RATE,
      maxRate: opts.maxRate ?? STREAM_DEFAULTS.MAX_RATE,
      maxBufferBytes: opts.maxBufferBytes ?? STREAM_DEFAULTS.MAX_BUFFER_BYTES,
      stallMs: opts.stallMs ?? STREAM_DEFAULTS.STALL_MS,
      tickMs: opts.tickMs ?? STREAM_DEFAULTS.TICK_MS,
      tapCapacity: opts.tapCapacity ?? 8192,
      tapWindowBudget: opts.tapWindowBudget,
      tapName: opts.tapName ?? 'web-monitor',
    };
  }

  get defaultRate(): number {
    return this.#o.defaultRate;
  }

  get maxRate(): number {
    return this.#o.maxRate;
  }

  /** Frames each bus's tap copied since it was made (absent: nobody watched that bus yet). */
  tapFrames(): Map<string, number> {
    return new Map([...this.#taps].map(([bus, s]) => [bus, s.tap.head]));
  }

  /** Opens a stream on `res` (throws HttpError 503 when `maxStreams` are open). */
  open(httpReq: IncomingMessage, res: ServerResponse, sreq: StreamRequest): void {
    if (this.#viewers.size >= this.#o.maxStreams) {
      this.stats.refused++;
      throw new HttpError(
        503,
        'ERR_HTTP_TOO_MANY_STREAMS',
        `${this.#o.maxStreams} streams are open already: close one first`,
      );
    }
    const buses = sreq.filter.buses ?? this.#o.busNames();
    const subs: Subscription[] = [];
    for (const bus of buses) {
      const st = this.#tapOf(bus);
      if (st === undefined) continue;
      st.viewers++;
      st.tap.attach(this.#o.tapName);
      subs.push({ bus, tap: st.tap, cursor: st.tap.head, unseen: st.tap.unseen });
    }
    const v = new Viewer(res, sreq, subs);
    v.tokens = Math.max(1, sreq.rate * (this.#o.tickMs / 1000));
    this.#viewers.add(v);
    this.stats.opened++;
    this.stats.streams = this.#viewers.size;
    res.writeHead(200, {
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-store',
      'X-Content-Type-Options': 'nosniff',
      Connection: 'keep-alive',
    });
    const f = sreq.filter;
    res.write(
      `retry: 2000\nevent: hello\ndata: ${JSON.stringify({
        buses,
        id: f.id,
        mask: f.mask,
        ext: f.extended,
        ports: f.ports === null ? null : [...f.ports],
        errors: f.errors,
        rate: sreq.rate,
        canopen: sreq.canopen,
      })}\n\n`,
    );
    const close = (): void => this.#close(v);
    httpReq.socket.on('close', close);
    res.on('close', close);
    res.on('drain', () => {
      v.congestedSince = 0;
    });
    if (this.#timer === null) {
      this.#lastTick = Date.now();
      this.#timer = setInterval(() => this.#tick(), this.#o.tickMs);
      this.#timer.unref?.();
    }
  }

  /** Ends every stream and detaches the taps. */
  close(): void {
    for (const v of [...this.#viewers]) {
      v.res.end();
      this.#close(v);
    }
    for (const s of this.#taps.values()) s.tap.detach();
    this.#taps.clear();
  }

  #tapOf(bus: string): TapState | undefined {
    let st = this.#taps.get(bus);
    const hub = this.#o.hubOf(bus);
    if (hub === undefined) return undefined;
    if (st === undefined || st.tap.hub !== hub) {
      st = { tap: new FrameTap(hub, this.#o.tapCapacity, this.#o.tapWindowBudget), viewers: 0 };
      this.#taps.set(bus, st);
    }
    return st;
  }

  #close(v: Viewer): void {
    if (v.closed) return;
    v.closed = true;
    this.#viewers.delete(v);
    this.stats.streams = this.#viewers.size;
    for (const s of v.subs) {
      const st = this.#taps.get(s.bus);
      if (st === undefined || st.tap !== s.tap) continue;
      if (--st.viewers === 0) st.tap.detach();
    }
    if (this.#viewers.size === 0 && this.#timer !== null) {
      clearInterval(this.#timer);
      this.#timer = null;
    }
  }

  #cut(v: Viewer): void {
    this.stats.cut++;
    v.res.destroy();
    this.#close(v);
  }

  #portName(bus: string, id: number): string {
    return this.#taps.get(bus)?.tap.portName(id) ?? `#${id}`;
  }

  #matches(v: Viewer, bus: string, e: TapEntry): boolean {
    const f = v.req.filter;
    if (e.flags & TapFlag.ERROR) {
      if (!f.errors) return false;
    } else {
      if (f.mask !== 0 && (e.id & f.mask) !== (f.id & f.mask)) return false;
      if (f.extended !== null && ((e.flags & TapFlag.EXTENDED) !== 0) !== f.extended) return false;
    }
    if (f.ports !== null) {
      const name = this.#portName(bus, e.origin);
      if (!f.ports.has(name) && !f.ports.has(`#${e.origin}`)) return false;
    }
    return true;
  }

  #tick(): void {
    const now = Date.now();
    const dt = Math.max(0, now - this.#lastTick) / 1000;
    this.#lastTick = now;
    for (const v of [...this.#viewers]) {
      if (v.closed) continue;
      if (v.res.destroyed || v.res.writableEnded) {
        this.#close(v);
        continue;
      }
      this.#serve(v, now, dt);
    }
    // Every viewer has read this window: the taps start the next one (a paused tap rejoins).
    for (const st of this.#taps.values()) if (st.viewers > 0) st.tap.nextWindow();
  }

  #serve(v: Viewer, now: number, dt: number): void {
    const rate = v.req.rate;
    const burst = Math.max(1, (rate * (2 * this.#o.tickMs)) / 1000);
    v.tokens = Math.min(burst, v.tokens + rate * dt);
    // Collect the matching entries of every watched bus since the last look.
    let m = 0;
    for (let k = 0; k < v.subs.length; k++) {
      const s = v.subs[k]!;
      const tail = s.tap.tail;
      // Lost: overwritten in the ring before this look, or put on the bus while the tap paused.
      const lost = Math.max(0, tail - s.cursor) + (s.tap.unseen - s.unseen);
      s.unseen = s.tap.unseen;
      if (lost > 0) {
        v.lost += lost;
        this.stats.lost += lost;
      }
      s.cursor = s.tap.forEach(s.cursor, (e) => {
        if (!this.#matches(v, s.bus, e)) return;
        if (m === this.#matchSeq.length) this.#grow();
        this.#matchSeq[m] = e.seq;
        this.#matchSub[m] = k;
        m++;
      });
    }
    const congested = v.res.writableNeedDrain;
    if (congested) {
      if (v.congestedSince === 0) v.congestedSince = now;
      v.skipped += m;
      this.stats.skipped += m;
      if (v.res.writableLength > this.#o.maxBufferBytes || now - v.congestedSince >= this.#o.stallMs) {
        this.#cut(v);
      }
      return;
    }
    v.congestedSince = 0;
    const budget = Math.min(m, Math.floor(v.tokens));
    v.tokens -= budget;
    v.skipped += m - budget;
    this.stats.skipped += m - budget;
    let out = '';
    for (let j = 0; j < budget; j++) {
      // Evenly over the matches, so a burst is sampled rather than cut at its start.
      const idx = Math.floor((j * m) / budget);
      const sub = v.subs[this.#matchSub[idx]!]!;
      const f = sub.tap.at(this.#matchSeq[idx]!);
      if (f === null) continue;
      const j2 = frameJson(
        f,
        sub.bus,
        this.#portName(sub.bus, f.origin),
        this.#o.epochOffsetNs,
        v.req.canopen,
      );
      out += `event: frame\ndata: ${JSON.stringify(j2)}\n\n`;
      v.sent++;
      this.stats.sent++;
    }
    if (now - v.lastStats >= 1000) {
      v.lastStats = now;
      out += `event: stats\ndata: ${JSON.stringify({ sent: v.sent, skipped: v.skipped, lost: v.lost, rate })}\n\n`;
    }
    if (out !== '') v.res.write(out);
    if (v.res.writableLength > this.#o.maxBufferBytes) this.#cut(v);
  }

  #grow(): void {
    const seq = new Float64Array(this.#matchSeq.length * 2);
    seq.set(this.#matchSeq);
    const sub = new Uint16Array(this.#matchSub.length * 2);
    sub.set(this.#matchSub);
    this.#matchSeq = seq;
    this.#matchSub = sub;
  }
}
