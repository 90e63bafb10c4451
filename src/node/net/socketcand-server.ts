/**
 * A socketcand server (`--socketcand-listen ADDR:PORT`): socketcand clients (python-can's
 * `socketcand` interface, Kayak, another vhost-device-can's `--link socketcand://...`) reach every
 * bus of the daemon over TCP. The protocol state machine is SocketcandSession (core); this file is
 * the sockets, the bus ports and the limits.
 *
 * - Each client that opens a bus is a port on that bus's hub (`socketcand:ADDR:PORT`). Frames for
 *   it wait in the port's bounded queue and are written in batches (one flush per event-loop turn).
 *   A client that reads too slowly never slows the bus: when its socket pushes back, frames stay
 *   queued, and past the queue's bound the hub drops them for that client only (counted). The
 *   client is told how many were dropped (`< error N frames dropped ... >`) as soon as it reads
 *   again, and a client stuck that way for `stallTimeoutMs` is disconnected.
 * - Handshake replies (`< hi >`, each `< ok >`) are written alone, one per command, because
 *   python-can reads each with a single recv() and compares it whole. After the `< ok >` of
 *   `< rawmode >` frames are held back for `rawHoldMs`, so the first frames do not land in that
 *   same recv().
 * - Garbage, overlong elements and bad commands each get `< error ... >` and are counted; more than
 *   `errorLimit` of them within 10 s close that connection. Nothing a client sends affects others.
 * - `allow` restricts peers by address range; `maxClients` bounds connections.
 */
import { createServer, type Server, type Socket } from 'node:net';
import type { CanErrorFrame } from '../../core/bus/can-error.js';
import type { CanFrame } from '../../core/bus/can-frame.js';
import type { BusPortHandler, CanHub, HubPort, HubRegistry } from '../../core/bus/hub.js';
import {
  ByteWriter,
  ElementReader,
  errorElement,
  SOCKETCAND_MAX_ELEMENT,
  TimestampText,
  writeBcmFrame,
  writeErrorFrame,
  writeRawFrame,
} from '../../core/net/socketcand-codec.js';
import {
  type BusStatistics,
  type SessionHost,
  type SessionTimers,
  type SocketcandMode,
  SocketcandSession,
} from '../../core/net/socketcand-session.js';
import type { LogFields, Logger } from '../../core/util/log.js';
import { ReadPacer, TxBatcher } from '../bus/link-kit.js';
import type { BusAttachment } from '../bus/port-registry.js';
import { CodedError } from '../errors.js';
import { AllowList, formatHostPort, type HostPort, isLoopback } from './addresses.js';
import { isPeerWord, type PeerConnection, type PeerRegistry, peersOf } from './peers.js';

export interface SocketcandServerOptions {
  listen: HostPort;
  /** Address ranges (parseCidr) allowed to connect; empty or absent: everyone. */
  allow?: readonly string[];
  hubs: HubRegistry;
  log: Logger;
  /** Wall-clock ns of the bus clock's zero (frame timestamps are sent as wall-clock time). */
  epochOffsetNs: bigint;
  /** Connections at once (default 64). */
  maxClients?: number;
  /** Longest element accepted from a client, bytes (default 8192). */
  maxElement?: number;
  /** Frames waiting for one client (its hub port queue; default 4096). */
  queueLimit?: number;
  /** Protocol errors within 10 s that close a connection (default 100). */
  errorLimit?: number;
  /** A client that reads nothing while frames for it are being dropped is closed after this (default 10000 ms). */
  stallTimeoutMs?: number;
  /** Frames held back after the `< ok >` of `< rawmode >` (default 50 ms). */
  rawHoldMs?: number;
  /** Error classes sent to raw-mode clients that did not choose with `< errormask >` (default 0: none). */
  errorMask?: number;
}

export type SocketcandServerErrorCode = 'ERR_SOCKETCAND_LISTEN' | 'ERR_SOCKETCAND_ADDR_IN_USE';

export class SocketcandServerError extends CodedError<SocketcandServerErrorCode> {}

export interface SocketcandServerStats {
  clients: number;
  accepted: number;
  refusedNotAllowed: number;
  refusedTooMany: number;
  /** Frames clients put on buses (commands and cyclic jobs). */
  framesIn: number;
  /** Frames written to clients. */
  framesOut: number;
  /** Frames dropped for clients that read too slowly (their queue was full). */
  droppedSlowClient: number;
  /** Frames dropped on muted (redundant) links between two daemons. */
  droppedMuted: number;
  /** Bad input: garbage, overlong elements, bad or misplaced commands. */
  protocolErrors: number;
  closedProtocolErrors: number;
  closedStalled: number;
}

const ERROR_WINDOW_MS = 10_000;
/** Bytes formatted before a socket write. */
const WRITE_CHUNK = 64 * 1024;
const STALL_CHECK_MS = 1000;

const timers: SessionTimers = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
  now: () => performance.now(),
};

export class SocketcandServer implements BusAttachment {
  readonly kind = 'socketcand-server';
  readonly bus = '*';
  readonly name: string;
  /** Resolves once listening; rejects when the address cannot be used. */
  readonly ready: Promise<void>;
  readonly counters: SocketcandServerStats = {
    clients: 0,
    accepted: 0,
    refusedNotAllowed: 0,
    refusedTooMany: 0,
    framesIn: 0,
    framesOut: 0,
    droppedSlowClient: 0,
    droppedMuted: 0,
    protocolErrors: 0,
    closedProtocolErrors: 0,
    closedStalled: 0,
  };
  readonly hubs: HubRegistry;
  readonly log: Logger;
  readonly epochOffsetNs: bigint;
  readonly peers: PeerRegistry;
  readonly opts: Required<
    Omit<SocketcandServerOptions, 'allow' | 'hubs' | 'log' | 'epochOffsetNs' | 'listen'>
  >;
  readonly #allow: AllowList | null;
  readonly #server: Server;
  readonly #clients = new Set<Client>();
  readonly #stallTimer: ReturnType<typeof setInterval>;
  #address: HostPort;
  #closed = false;

  constructor(o: SocketcandServerOptions) {
    this.hubs = o.hubs;
    this.log = o.log;
    this.epochOffsetNs = o.epochOffsetNs;
    this.peers = peersOf(o.hubs);
    this.opts = {
      maxClients: o.maxClients ?? 64,
      maxElement: o.maxElement ?? SOCKETCAND_MAX_ELEMENT,
      queueLimit: o.queueLimit ?? 4096,
      errorLimit: o.errorLimit ?? 100,
      stallTimeoutMs: o.stallTimeoutMs ?? 10_000,
      rawHoldMs: o.rawHoldMs ?? 50,
      errorMask: o.errorMask ?? 0,
    };
    this.#allow = o.allow !== undefined && o.allow.length > 0 ? new AllowList(o.allow) : null;
    this.#address = o.listen;
    this.name = `socketcand-server:${formatHostPort(o.listen)}`;
    if (!isLoopback(o.listen.host)) {
      this.log.warn('the socketcand server is reachable from the network and has no authentication', {
        listen: formatHostPort(o.listen),
        allow: this.#allow === null ? 'everyone (use --socketcand-allow CIDR)' : (o.allow ?? []).join(' '),
      });
    }
    this.#server = createServer({ noDelay: true }, (s) => this.#onConnection(s));
    this.ready = new Promise<void>((resolve, reject) => {
      this.#server.once('error', (err: NodeJS.ErrnoException) => {
        reject(
          new SocketcandServerError(
            err.code === 'EADDRINUSE' ? 'ERR_SOCKETCAND_ADDR_IN_USE' : 'ERR_SOCKETCAND_LISTEN',
            `socketcand server: cannot listen on ${formatHostPort(o.listen)}: ${err.message}`,
            { cause: err },
          ),
        );
      });
      this.#server.listen({ host: o.listen.host, port: o.listen.port, exclusive: true }, () => {
        const a = this.#server.address();
        if (a !== null && typeof a === 'object') this.#address = { host: o.listen.host, port: a.port };
        this.#server.on('error', (err) => this.log.error('socketcand server error', { reason: err.message }));
        this.log.info('socketcand server listening', {
          listen: formatHostPort(this.#address),
          buses: this.hubs.names().join(' '),
        });
        resolve();
      });
    });
    // A failed listen is reported through `ready`; nobody awaiting it must not crash the process.
    this.ready.catch(() => {});
    this.#stallTimer = setInterval(() => this.#checkStalls(), STALL_CHECK_MS);
    this.#stallTimer.unref();
  }

  /** The address listened on (the real port once `ready`, when 0 was asked for). */
  get address(): HostPort {
    return this.#address;
  }

  stats(): LogFields {
    return {
      state: this.#closed ? 'closed' : 'listening',
      listen: formatHostPort(this.#address),
      ...this.counters,
    };
  }

  #onConnection(s: Socket): void {
    const addr = s.remoteAddress ?? '?';
    const peer = formatHostPort({
      host: addr.startsWith('::ffff:') ? addr.slice(7) : addr,
      port: s.remotePort ?? 0,
    });
    s.on('error', () => {}); // reported through 'close'
    if (this.#closed) {
      s.destroy();
      return;
    }
    if (this.#allow !== null && !this.#allow.allows(addr)) {
      this.counters.refusedNotAllowed++;
      this.log.warn('socketcand client refused: address not allowed', { peer });
      s.destroy();
      return;
    }
    if (this.#clients.size >= this.opts.maxClients) {
      this.counters.refusedTooMany++;
      this.log.warn('socketcand client refused: too many clients', { peer, max: this.opts.maxClients });
      s.end(errorElement(`too many clients (at most ${this.opts.maxClients})`));
      return;
    }
    this.counters.accepted++;
    const c = new Client(this, s, peer);
    this.#clients.add(c);
    this.counters.clients = this.#clients.size;
    this.log.info('socketcand client connected', { peer });
    s.once('close', () => {
      c.dispose();
      this.#clients.delete(c);
      this.counters.clients = this.#clients.size;
      // (Not after close(): the daemon's log may be gone by then.)
      if (!this.#closed) this.log.info('socketcand client disconnected', { peer, ...c.summary() });
    });
  }

  #checkStalls(): void {
    const now = performance.now();
    for (const c of this.#clients) {
      if (c.stalledFor(now) > this.opts.stallTimeoutMs) {
        this.counters.closedStalled++;
        this.log.warn('socketcand client closed: it reads too slowly', { peer: c.remote, ...c.summary() });
        c.destroy();
      }
    }
  }

  /** Clients now (for tests and statistics). */
  clients(): readonly { peer: string; mode: SocketcandMode; bus: string; muted: boolean }[] {
    return [...this.#clients].map((c) => ({
      peer: c.remote,
      mode: c.session.mode,
      bus: c.session.bus,
      muted: c.muted,
    }));
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#stallTimer);
    this.#server.close();
    for (const c of this.#clients) c.destroy();
  }
}

/** One connection. */
class Client implements SessionHost, BusPortHandler, PeerConnection {
  readonly server: SocketcandServer;
  readonly socket: Socket;
  readonly remote: string;
  readonly session: SocketcandSession;
  readonly timers = timers;
  readonly #reader: ElementReader;
  readonly #out = new ByteWriter(WRITE_CHUNK + 1024);
  readonly #ts = new TimestampText();
  readonly #batcher = new TxBatcher({ flush: () => this.#flush() });
  #hub: CanHub | null = null;
  #port: HubPort | null = null;
  #holdTimer: ReturnType<typeof setTimeout> | null = null;
  #errorMask: number;
  #droppedReported = 0;
  #stalledSince = -1;
  #droppedAtStall = 0;
  #errorWindowStart = 0;
  #errorsInWindow = 0;
  #disposed = false;
  // Peer (another vhost-device-can's link), once it introduced itself.
  #peerId = '';
  #remoteBus = '';
  #token = '';
  muted = false;

  constructor(server: SocketcandServer, socket: Socket, remote: string) {
    this.server = server;
    this.socket = socket;
    this.remote = remote;
    this.#errorMask = server.opts.errorMask;
    this.#reader = new ElementReader(server.opts.maxElement);
    this.session = new SocketcandSession(this);
    const sink = {
      element: (buf: Uint8Array, start: number, end: number): void => {
        if (!this.session.element(buf, start, end)) this.#protocolError();
      },
      junk: (kind: 'garbage' | 'interrupted' | 'overlong', bytes: number): void => {
        const what =
          kind === 'garbage'
            ? `${bytes} bytes outside any < ... > element ignored`
            : kind === 'interrupted'
              ? `element cut short by a new one (${bytes} bytes ignored)`
              : `element longer than ${server.opts.maxElement} bytes ignored`;
        this.reply(errorElement(what));
        this.#protocolError();
      },
    };
    const pacer = new ReadPacer(socket);
    socket.on('data', (chunk: Buffer) => {
      if (this.#disposed) return;
      this.#reader.push(chunk, sink);
      pacer.consumed(chunk.length);
    });
    socket.on('drain', () => {
      this.#stalledSince = -1;
      this.#batcher.kick();
    });
    socket.setKeepAlive(true, 30_000);
    this.reply('< hi >');
  }

  // ---- PeerConnection ---------------------------------------------------------------------------

  get peerDaemon(): string {
    return this.#peerId;
  }

  get localBus(): string {
    return this.session.bus;
  }

  get remoteBus(): string {
    return this.#remoteBus;
  }

  get initiator(): string {
    return this.#peerId; // the client opened the connection
  }

  get token(): string {
    return this.#token;
  }

  setMuted(muted: boolean): void {
    if (muted === this.muted) return;
    this.muted = muted;
    this.server.log.info(
      muted ? 'socketcand link muted (a redundant path to the same peer bus)' : 'socketcand link unmuted',
      {
        peer: this.remote,
        bus: this.session.bus,
      },
    );
    this.#updateReceiving();
  }

  // ---- SessionHost ------------------------------------------------------------------------------

  open(bus: string): string | null {
    if (!this.server.hubs.has(bus)) {
      return `no such bus (buses: ${this.server.hubs.names().join(', ')})`;
    }
    const hub = this.server.hubs.get(bus);
    this.#hub = hub;
    this.#port = hub.attach(this, {
      name: `socketcand:${this.remote}`,
      queueLimit: this.server.opts.queueLimit,
      releasesFrames: true,
      errorFrames: true,
    });
    this.#port.setReceiving(false);
    return null;
  }

  transmit(frame: CanFrame): string | null {
    const port = this.#port;
    if (port === null) return 'no bus is open';
    if (this.muted) {
      this.server.counters.droppedMuted++;
      return null;
    }
    if (port.transmit(frame) === 'dropped') return 'the bus refused the frame';
    this.server.counters.framesIn++;
    return null;
  }

  reply(element: string): void {
    if (this.#disposed) return;
    // Handshake replies alone and exact; everything else preceded by a space (see writeRawFrame).
    const alone = element === '< hi >' || element === '< ok >';
    this.#out.ascii(alone ? element : ` ${element}`);
    this.#write();
  }

  modeChanged(mode: SocketcandMode): void {
    if (this.#holdTimer !== null) clearTimeout(this.#holdTimer);
    this.#holdTimer = null;
    if (mode === 'raw' && this.server.opts.rawHoldMs > 0) {
      this.#holdTimer = setTimeout(() => {
        this.#holdTimer = null;
        this.#batcher.request();
      }, this.server.opts.rawHoldMs);
    }
    this.#updateReceiving();
  }

  bcmFrame(frame: CanFrame): void {
    writeBcmFrame(this.#out, frame, this.#ts.of(this.server.epochOffsetNs + frame.timestampNs));
    this.server.counters.framesOut++;
    // From a throttle timer (outside a flush) it must go out now.
    if (!this.#flushing) this.#write();
  }

  statistics(): BusStatistics {
    const bus = this.#hub?.stats();
    const own = this.#port?.stats;
    return {
      rbytes: bus?.bytes ?? 0,
      rpackets: bus?.frames ?? 0,
      tbytes: own?.txBytes ?? 0,
      tpackets: own?.txFrames ?? 0,
    };
  }

  errorMask(mask: number): void {
    this.#errorMask = mask;
  }

  introduce(id: string, bus: string, token: string): string {
    if (!isPeerWord(id) || !isPeerWord(token)) return errorElement('vdc-peer: id and token are hex words');
    const peers = this.server.peers;
    if (this.#peerId !== '') peers.leave(this);
    this.#peerId = id;
    this.#remoteBus = bus;
    this.#token = token;
    peers.join(this);
    return `< vdc-peer ${peers.selfId} >`;
  }

  // ---- frames to the client ---------------------------------------------------------------------

  #updateReceiving(): void {
    const mode = this.session.mode;
    this.#port?.setReceiving(!this.muted && (mode === 'raw' || mode === 'bcm'));
  }

  onFramesAvailable(): void {
    this.#batcher.request();
  }

  onErrorFrame(e: CanErrorFrame): void {
    if (this.session.mode !== 'raw' || this.muted || (e.classBits & this.#errorMask) === 0) return;
    this.#fill(); // frames queued before it go first
    writeErrorFrame(this.#out, e, this.#ts.of(this.server.epochOffsetNs + e.timestampNs));
    this.#batcher.request();
  }

  #flushing = false;

  /** Formats queued frames into the output buffer, writing full chunks; false when the socket pushed back. */
  #fill(): boolean {
    const port = this.#port;
    if (port === null || this.#holdTimer !== null) return true;
    const dropped = port.stats.rxDroppedOverflow - this.#droppedReported;
    if (dropped > 0) {
      this.#droppedReported += dropped;
      this.server.counters.droppedSlowClient += dropped;
      this.#out.ascii(` ${errorElement(`${dropped} frames dropped: this client reads too slowly`)}`);
    }
    const raw = this.session.mode === 'raw';
    const out = this.#out;
    const ts = this.#ts;
    const epoch = this.server.epochOffsetNs;
    let n = 0;
    this.#flushing = true;
    try {
      for (let f = port.take(); f !== undefined; f = port.take()) {
        if (raw) {
          writeRawFrame(out, f, ts.of(epoch + f.timestampNs));
          n++;
        } else {
          this.session.offerBcm(f);
        }
        port.release(f);
        if (out.length >= WRITE_CHUNK && !this.#write()) break;
      }
    } finally {
      this.#flushing = false;
      this.server.counters.framesOut += n;
    }
    return this.#stalledSince < 0;
  }

  #flush(): 'done' | 'retry' {
    if (this.#disposed) return 'done';
    // The client has not taken what was written yet: leave the frames queued (the 'drain' event
    // resumes), so what waits in user space stays about one chunk per client.
    if (this.socket.writableNeedDrain) return 'retry';
    const ok = this.#fill();
    if (this.#out.length > 0 && !this.#write()) return 'retry';
    return ok ? 'done' : 'retry';
  }

  /** Writes the output buffer; false when the socket's buffer is full (the client reads slowly). */
  #write(): boolean {
    if (this.#out.length === 0 || this.socket.destroyed) return true;
    const ok = this.socket.write(this.#out.take());
    if (!ok && this.#stalledSince < 0) {
      this.#stalledSince = performance.now();
      this.#droppedAtStall = this.#port?.stats.rxDroppedOverflow ?? 0;
    }
    return ok;
  }

  /** How long the client has been too slow while frames for it were dropped (ms; 0 when not). */
  stalledFor(now: number): number {
    if (this.#stalledSince < 0 || (this.#port?.stats.rxDroppedOverflow ?? 0) === this.#droppedAtStall)
      return 0;
    return now - this.#stalledSince;
  }

  #protocolError(): void {
    this.server.counters.protocolErrors++;
    const now = performance.now();
    if (now - this.#errorWindowStart > ERROR_WINDOW_MS) {
      this.#errorWindowStart = now;
      this.#errorsInWindow = 0;
    }
    if (++this.#errorsInWindow > this.server.opts.errorLimit && !this.#disposed) {
      this.server.counters.closedProtocolErrors++;
      this.server.log.warn('socketcand client closed: too many protocol errors', {
        peer: this.remote,
        limit: this.server.opts.errorLimit,
      });
      this.reply(errorElement(`more than ${this.server.opts.errorLimit} errors in 10 s: closing`));
      this.#disposed = true;
      this.socket.end();
      setTimeout(() => this.socket.destroy(), 1000).unref();
    }
  }

  summary(): LogFields {
    const s = this.session.counters;
    return {
      bus: this.session.bus,
      framesIn: s.framesIn,
      errors: s.errors,
      droppedSlow: this.#droppedReported,
    };
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** Releases everything (the socket closed). Idempotent. */
  dispose(): void {
    this.#disposed = true;
    this.session.close();
    this.#batcher.close();
    if (this.#holdTimer !== null) clearTimeout(this.#holdTimer);
    this.#holdTimer = null;
    if (this.#peerId !== '') this.server.peers.leave(this);
    this.#port?.detach();
    this.#port = null;
  }
}
