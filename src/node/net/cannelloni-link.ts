/**
 * A cannelloni peer as a port on a CAN hub: `--link BUS=cannelloni://RHOST:RPORT?local=LADDR:LPORT`.
 * Frames of the bus go to the peer in cannelloni datagrams over UDP, frames from the peer go on
 * the bus; the format is in src/core/net/cannelloni.ts.
 *
 * Sockets. UDP has no connection, so the link keeps two sockets on LADDR:LPORT (both with
 * SO_REUSEADDR, after a check that no one else holds the port): one *connected* to RHOST:RPORT,
 * which the kernel gives every datagram from the peer and which reports the peer's ICMP "port
 * unreachable" as ECONNREFUSED; and one unconnected, which gets everything else: datagrams from
 * any other address, counted (`rxForeign`) and dropped.
 *
 * Sending. The hub tells the port about each frame queued for it, often from inside a guest's TX
 * loop; the frames are written once per event-loop turn (TxBatcher), packed in order into
 * datagrams of at most `datagram` bytes. cannelloni itself waits up to 100 ms (its `-t`) to fill a
 * datagram; waiting for the end of the turn instead keeps latency at the event loop's, and a busy
 * bus still fills datagrams because a turn then holds many frames. Frames are never reordered (no
 * sorting by identifier). When more than a bounded number of datagrams wait in the socket's send
 * queue, frames wait in the port's queue (bounded too: overflow counted `txDroppedOverflow`).
 *
 * Up and down. The link is *down* while its sockets cannot be bound (retried with backoff), after
 * the peer refused a datagram (ICMP port unreachable: nothing listens there), after a send failed,
 * and when a peer that sends keepalives has been silent for `timeout`. Otherwise it is *up*: bound,
 * with no sign that the peer is gone. While down, frames for the link are dropped at once and
 * counted (`txDroppedDown`); keepalives go on as probes, with backoff, and any datagram from the
 * peer brings the link up at once. Keepalives are empty DATA datagrams (count 0), sent after
 * `keepalive` ms without sending anything; receivers ignore them (cannelloni included). Silence
 * means "down" only for a peer that has sent keepalives, because a real cannelloni sends nothing
 * while its bus is idle: against one, down is only known from ICMP refusals and socket errors.
 *
 * Sequence numbers: each datagram carries the next one (wrapping at 256). A jump forward of 1..127
 * counts the datagrams in between as lost (`rxLost`); anything else counts as out of order
 * (`rxOutOfOrder`, still delivered). Counting restarts after the link was down (a restarted peer
 * starts at 0 again), and after three datagrams in a row that looked late (a peer that restarted
 * while the link stayed up).
 *
 * Loops: the hub never hands a frame back to the port it came from, so a frame from the peer is
 * never sent back to it. Links must form a tree (A-B, B-C); a cycle (A-B, B-C, C-A) would circulate
 * frames forever, as a loop of bridges without spanning tree would.
 */
import { createSocket, type Socket } from 'node:dgram';
import type { CanFrame } from '../../core/bus/can-frame.js';
import type { BusPortHandler, CanHub, HubPort } from '../../core/bus/hub.js';
import {
  CANNELLONI_DATAGRAM_ERRORS,
  CANNELLONI_FRAME_ERRORS,
  CANNELLONI_HEADER_SIZE,
  type CannelloniDatagramError,
  CannelloniDecoder,
  type CannelloniFrameError,
  cannelloniFrameSize,
  writeCannelloniFrame,
  writeCannelloniHeader,
} from '../../core/net/cannelloni.js';
import type { LogFields, Logger } from '../../core/util/log.js';
import { LinkSupervisor, TxBatcher } from '../bus/link-kit.js';
import type { BusAttachment, PortFactory } from '../bus/port-registry.js';
import { type CannelloniLinkSpec, hostPort, parseCannelloniUrl } from './cannelloni-url.js';

/** Datagrams allowed to wait in the socket's send queue before frames wait in the hub queue. */
const MAX_QUEUED_DATAGRAMS = 64;
/** Frames waiting for the link (per turn a guest may queue a whole ring). */
const DEFAULT_TX_BACKLOG = 8192;
/** How long a probe after an ICMP refusal waits for another refusal before the link counts as up. */
const PROBE_WAIT_MS = 200;
/** Requested socket buffers (the kernel caps them at net.core.rmem_max / wmem_max). */
const SOCKET_BUFFER = 4 << 20;
/** Datagrams in a row that look late after which the sequence is followed again. */
const RESYNC_AFTER = 3;
/** A repeated warning (foreign datagrams, malformed ones) is logged at most this often. */
const WARN_EVERY_MS = 10_000;

/** Errors the kernel reports from ICMP: the peer (or the way to it) is gone, the socket is fine. */
const ICMP_ERRORS = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'EHOSTDOWN']);

type Failure = 'none' | 'socket' | 'unreachable' | 'silent';

export interface CannelloniLinkOptions {
  hub: CanHub;
  bus: string;
  spec: CannelloniLinkSpec;
  log: Logger;
  /** Frames waiting for the link (default 8192). */
  txBacklog?: number;
  /** Reconnect backoff bounds, ms (defaults 250 and 5000). */
  minRetryMs?: number;
  maxRetryMs?: number;
}

const camel = (s: string): string => s.replace(/-(\w)/g, (_, c: string) => c.toUpperCase());
const cap = (s: string): string => s.charAt(0).toUpperCase() + s.slice(1);

/** Counters (LogFields-flat); see the module comment and docs/cannelloni.md for each. */
export interface CannelloniLinkCounters {
  txFrames: number;
  txDatagrams: number;
  txBytes: number;
  txKeepalives: number;
  /** Datagrams the kernel refused to send, and the frames in them (also counted in txFrames). */
  txSendErrors: number;
  txFailedFrames: number;
  /** Classic frames whose raw DLC 9..15 (len8Dlc) the format cannot carry: sent as DLC 8. */
  txLen8Dlc: number;
  rxFrames: number;
  rxDatagrams: number;
  rxBytes: number;
  rxKeepalives: number;
  rxLost: number;
  rxOutOfOrder: number;
  rxForeign: number;
  /** Datagrams refused whole (the sum of the rxBad* counters). */
  rxMalformed: number;
  /** Frames skipped inside sound datagrams (the sum of the rxSkip* counters). */
  rxSkipped: number;
  rxPadded: number;
  /** Frames whose delivery to the bus threw (another port's handler failed; logged). */
  rxErrors: number;
  [reason: string]: number;
}

export class CannelloniLink implements BusPortHandler, BusAttachment {
  readonly kind = 'link';
  readonly name: string;
  readonly bus: string;
  readonly port: HubPort;
  readonly counters: CannelloniLinkCounters;

  readonly #spec: CannelloniLinkSpec;
  readonly #log: Logger;
  readonly #sup: LinkSupervisor;
  readonly #batcher: TxBatcher;
  readonly #decoder = new CannelloniDecoder();
  readonly #peer: string;
  readonly #local: string;
  #sock: Socket | null = null;
  #guard: Socket | null = null;
  #bound = false;
  #binding = false;
  #failure: Failure = 'socket';
  #closed = false;
  #seq = 0;
  /** Sequence number expected next from the peer; -1 = resynchronise on the next datagram. */
  #expect = -1;
  /** Datagrams in a row that looked late. */
  #behind = 0;
  #peerKeepalives = false;
  #lastRx = 0;
  #lastTx = 0;
  #probe: ReturnType<typeof setTimeout> | null = null;
  readonly #tick: ReturnType<typeof setInterval>;
  readonly #warned = new Map<string, { at: number; suppressed: number }>();

  constructor(opts: CannelloniLinkOptions) {
    const spec = opts.spec;
    this.#spec = spec;
    this.bus = opts.bus;
    this.#peer = hostPort(spec.remoteHost, spec.remotePort);
    this.#local = hostPort(spec.localAddress, spec.localPort);
    this.name = `cannelloni:${this.#peer}`;
    this.#log = opts.log;
    const counters: Record<string, number> = {
      txFrames: 0,
      txDatagrams: 0,
      txBytes: 0,
      txKeepalives: 0,
      txSendErrors: 0,
      txFailedFrames: 0,
      txLen8Dlc: 0,
      rxFrames: 0,
      rxDatagrams: 0,
      rxBytes: 0,
      rxKeepalives: 0,
      rxLost: 0,
      rxOutOfOrder: 0,
      rxForeign: 0,
      rxMalformed: 0,
      rxSkipped: 0,
      rxPadded: 0,
      rxErrors: 0,
    };
    for (const e of CANNELLONI_DATAGRAM_ERRORS) counters[`rxBad${cap(camel(e))}`] = 0;
    for (const e of CANNELLONI_FRAME_ERRORS) counters[`rxSkip${cap(camel(e))}`] = 0;
    this.counters = counters as CannelloniLinkCounters;
    this.port = opts.hub.attach(this, {
      name: this.name,
      queueLimit: opts.txBacklog ?? DEFAULT_TX_BACKLOG,
      releasesFrames: true,
      accept: { classic: true, fd: true, rtr: true },
    });
    // Down until bound: frames for the link are dropped (and counted by the hub) meanwhile.
    this.port.setReceiving(false);
    this.#batcher = new TxBatcher({ flush: () => this.#flush() });
    this.#sup = new LinkSupervisor({
      connect: () => this.#attempt(),
      minMs: opts.minRetryMs ?? 250,
      maxMs: opts.maxRetryMs ?? 5000,
      onChange: (state, reason) => {
        if (state === 'up') this.#log.info('cannelloni link up', { peer: this.#peer, local: this.#local });
        else
          this.#log.warn('cannelloni link down; frames for it are dropped until it is back', {
            peer: this.#peer,
            reason,
          });
      },
    });
    const ka = spec.keepaliveMs > 0 ? spec.keepaliveMs : Number.POSITIVE_INFINITY;
    this.#tick = setInterval(() => this.#onTick(), Math.max(10, Math.min(ka, spec.timeoutMs) / 4));
    this.#tick.unref();
    this.#sup.start();
  }

  get state(): 'up' | 'down' {
    return this.#sup.state;
  }

  // ---- connection ------------------------------------------------------------------------------

  /** One attempt of the supervisor: bind if needed, else probe the peer. */
  #attempt(): void {
    if (this.#closed) return;
    if (!this.#bound || this.#failure === 'socket') {
      if (this.#binding) return;
      this.#closeSockets();
      this.#binding = true;
      this.#bind().then(
        () => {
          this.#binding = false;
          if (this.#closed) {
            this.#closeSockets();
            return;
          }
          this.#bound = true;
          this.#sendKeepalive(); // the peer hears us at once (and refuses at once if nobody listens)
          this.#up();
        },
        (err: Error) => {
          this.#binding = false;
          this.#closeSockets();
          if (!this.#closed) this.#down('socket', err.message);
        },
      );
      return;
    }
    this.#sendKeepalive();
    if (this.#failure === 'silent') {
      // Only the peer's own datagrams prove it is back (#onDatagram brings the link up).
      this.#down('silent', `no datagram from ${this.#peer} for ${this.#spec.timeoutMs} ms`);
      return;
    }
    // It refused before: no new refusal within the probe window means someone listens again.
    this.#clearProbe();
    this.#probe = setTimeout(() => {
      this.#probe = null;
      if (!this.#closed && this.#failure !== 'none') this.#up();
    }, PROBE_WAIT_MS);
  }

  async #bind(): Promise<void> {
    const type = this.#spec.family === 6 ? 'udp6' : 'udp4';
    const { localAddress: addr, localPort: port } = this.#spec;
    // The two sockets below share the port (SO_REUSEADDR); a socket without it first makes sure
    // no one else holds it (another daemon with the same local port would otherwise share it).
    const cannotBind = (err: Error): Error => new Error(`cannot bind ${this.#local}: ${err.message}`);
    const check = createSocket({ type });
    try {
      await bindSocket(check, port, addr).catch((err: Error) => {
        throw cannotBind(err);
      });
    } finally {
      closeQuietly(check);
    }
    const sock = createSocket({
      type,
      reuseAddr: true,
      recvBufferSize: SOCKET_BUFFER,
      sendBufferSize: SOCKET_BUFFER,
    });
    this.#sock = sock;
    sock.on('error', (err) => this.#onSocketError(sock, err));
    sock.on('message', (msg) => {
      if (this.#sock === sock) this.#onDatagram(msg);
    });
    await bindSocket(sock, port, addr).catch((err: Error) => {
      throw cannotBind(err);
    });
    await new Promise<void>((resolve, reject) => {
      sock.connect(this.#spec.remotePort, this.#spec.remoteHost, ((err?: Error) =>
        err ? reject(new Error(`cannot address ${this.#peer}: ${err.message}`)) : resolve()) as () => void);
    });
    const guard = createSocket({ type, reuseAddr: true });
    this.#guard = guard;
    guard.on('error', () => {
      /* it only counts strangers; its errors do not concern the peer */
    });
    guard.on('message', (_msg, rinfo) => this.#onForeign(hostPort(rinfo.address, rinfo.port)));
    await bindSocket(guard, port, addr).catch((err: Error) => {
      throw cannotBind(err);
    });
  }

  #closeSockets(): void {
    this.#bound = false;
    for (const s of [this.#sock, this.#guard]) {
      if (s === null) continue;
      s.removeAllListeners('message');
      closeQuietly(s);
    }
    this.#sock = null;
    this.#guard = null;
  }

  #up(): void {
    this.#clearProbe();
    this.#failure = 'none';
    this.#expect = -1;
    this.#behind = 0;
    this.#lastRx = performance.now(); // a full timeout's grace before silence counts
    this.port.setReceiving(true);
    this.#sup.up();
  }

  #down(failure: Exclude<Failure, 'none'>, reason: string): void {
    this.#clearProbe();
    this.#failure = failure;
    this.port.setReceiving(false);
    this.#sup.down(reason);
  }

  #clearProbe(): void {
    if (this.#probe !== null) clearTimeout(this.#probe);
    this.#probe = null;
  }

  #onSocketError(sock: Socket, err: NodeJS.ErrnoException): void {
    if (this.#closed || sock !== this.#sock || !this.#bound) return; // bind errors: #bind rejects
    this.#failed(err);
  }

  #failed(err: NodeJS.ErrnoException): void {
    const code = err.code ?? '';
    if (code === 'ECONNREFUSED') {
      this.#down('unreachable', `${this.#peer} refused (nothing listens there: ICMP port unreachable)`);
    } else if (ICMP_ERRORS.has(code)) {
      this.#down('unreachable', `${this.#peer} unreachable: ${err.message}`);
    } else {
      this.#down('socket', `socket error: ${err.message}`);
    }
  }

  #onTick(): void {
    if (this.#closed || !this.#bound) return;
    const now = performance.now();
    if (this.#failure === 'none') {
      if (this.#peerKeepalives && now - this.#lastRx > this.#spec.timeoutMs) {
        this.#down('silent', `no datagram from ${this.#peer} for ${this.#spec.timeoutMs} ms`);
        return;
      }
      if (this.#spec.keepaliveMs > 0 && now - this.#lastTx >= this.#spec.keepaliveMs) this.#sendKeepalive();
    }
  }

  // ---- bus -> peer -----------------------------------------------------------------------------

  onFramesAvailable(): void {
    this.#batcher.request();
  }

  /** A datagram of `frames` frames left (or did not: the kernel refused it, e.g. a pending ICMP error). */
  #sent(err: Error | null, frames: number): void {
    if (err) {
      this.counters.txSendErrors++;
      this.counters.txFailedFrames += frames;
      if (!this.#closed && this.#bound) this.#failed(err as NodeJS.ErrnoException);
      return;
    }
    const s = this.#sock;
    if (this.#batcher.waiting && s !== null && s.getSendQueueCount() <= MAX_QUEUED_DATAGRAMS / 2) {
      this.#batcher.kick();
    }
  }

  readonly #onKeepaliveSent = (err: Error | null): void => this.#sent(err, 0);

  /** Packs what the port queued into datagrams, in order. */
  #flush(): 'done' | 'retry' {
    const s = this.#sock;
    const port = this.port;
    if (s === null || this.#failure !== 'none') return 'done'; // a down port queues nothing
    const max = this.#spec.maxDatagram;
    const c = this.counters;
    while (port.queued > 0) {
      if (s.getSendQueueCount() >= MAX_QUEUED_DATAGRAMS) return 'retry';
      const buf = Buffer.allocUnsafe(max);
      let off = CANNELLONI_HEADER_SIZE;
      let count = 0;
      for (let f = port.peek(); f !== undefined; f = port.peek()) {
        const size = cannelloniFrameSize(f);
        if (off + size > max) break;
        off = writeCannelloniFrame(buf, off, f);
        if (f.len8Dlc !== 0) c.txLen8Dlc++;
        port.take();
        port.release(f);
        count++;
      }
      writeCannelloniHeader(buf, this.#seq, count);
      this.#seq = (this.#seq + 1) & 0xff;
      s.send(buf, 0, off, (err) => this.#sent(err, count));
      c.txFrames += count;
      c.txDatagrams++;
      c.txBytes += off;
    }
    this.#lastTx = performance.now();
    return 'done';
  }

  #sendKeepalive(): void {
    const s = this.#sock;
    if (s === null || !this.#bound) return;
    const buf = Buffer.allocUnsafe(CANNELLONI_HEADER_SIZE);
    writeCannelloniHeader(buf, this.#seq, 0);
    this.#seq = (this.#seq + 1) & 0xff;
    s.send(buf, 0, CANNELLONI_HEADER_SIZE, this.#onKeepaliveSent);
    this.counters.txKeepalives++;
    this.counters.txBytes += CANNELLONI_HEADER_SIZE;
    this.#lastTx = performance.now();
  }

  // ---- peer -> bus -----------------------------------------------------------------------------

  readonly #onFrame = (f: CanFrame): void => {
    try {
      this.port.transmit(f);
    } catch (err) {
      // Not this link's fault: another port's handler threw during the fan-out (the frame still
      // reached the others). Counted and logged rather than thrown out of a socket callback.
      this.counters.rxErrors++;
      this.#warn('error', 'a port of the bus failed while a frame from the link was delivered', {
        reason: (err as Error).message,
      });
    }
  };

  readonly #onBadFrame = (reason: CannelloniFrameError): void => {
    this.counters.rxSkipped++;
    this.counters[`rxSkip${cap(camel(reason))}`]!++;
    this.#warn(`skip:${reason}`, 'cannelloni frame skipped', { reason });
  };

  #onDatagram(msg: Buffer): void {
    const c = this.counters;
    c.rxDatagrams++;
    c.rxBytes += msg.length;
    this.#lastRx = performance.now();
    if (this.#failure !== 'none' && this.#bound) this.#up(); // heard from the peer: it is there
    const r = this.#decoder.decode(msg, this.#onFrame, this.#onBadFrame);
    if (!r.ok) {
      const e = r.error as CannelloniDatagramError;
      c.rxMalformed++;
      c[`rxBad${cap(camel(e))}`]!++;
      this.#warn(`bad:${e}`, 'malformed cannelloni datagram dropped', { reason: e, detail: r.detail });
      return;
    }
    if (this.#expect < 0) {
      this.#expect = (r.seq + 1) & 0xff;
    } else {
      const gap = (r.seq - this.#expect) & 0xff;
      if (gap === 0) {
        this.#expect = (r.seq + 1) & 0xff;
      } else if (gap < 128) {
        c.rxLost += gap;
        this.#expect = (r.seq + 1) & 0xff;
      } else {
        c.rxOutOfOrder++;
        // One late datagram is followed by expected ones; a run of "late" ones means the peer
        // started counting again (it restarted while the link stayed up): follow it.
        if (++this.#behind >= RESYNC_AFTER) this.#expect = (r.seq + 1) & 0xff;
      }
      if (gap < 128) this.#behind = 0;
    }
    if (r.count === 0) {
      c.rxKeepalives++;
      this.#peerKeepalives = true;
    }
    c.rxFrames += r.delivered;
    c.rxPadded += r.padded;
  }

  #onForeign(from: string): void {
    this.counters.rxForeign++;
    this.#warn('foreign', 'datagram from an address other than the peer dropped', { from, peer: this.#peer });
  }

  /** Logs a repeated warning at most every WARN_EVERY_MS per key, with how many were not logged. */
  #warn(key: string, msg: string, fields: LogFields): void {
    const now = performance.now();
    const w = this.#warned.get(key);
    if (w !== undefined && now - w.at < WARN_EVERY_MS) {
      w.suppressed++;
      return;
    }
    this.#log.warn(msg, { ...fields, ...(w && w.suppressed > 0 ? { notLogged: w.suppressed } : {}) });
    this.#warned.set(key, { at: now, suppressed: 0 });
  }

  // ---- attachment ------------------------------------------------------------------------------

  stats(): LogFields {
    const s = this.#sup.stats();
    const ps = this.port.stats;
    return {
      ...s,
      peer: this.#peer,
      local: this.#local,
      peerKeepalives: this.#peerKeepalives,
      txDroppedDown: ps.rxDiscardedClosed,
      txDroppedOverflow: ps.rxDroppedOverflow,
      txBackpressure: this.#batcher.backpressure,
      txQueued: this.port.queued,
      ...this.counters,
    };
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#tick);
    this.#clearProbe();
    this.#batcher.close();
    this.#sup.close();
    this.#closeSockets();
    this.port.detach();
  }
}

function closeQuietly(s: Socket): void {
  try {
    s.close();
  } catch {
    /* never bound, or closed already */
  }
}

function bindSocket(s: Socket, port: number, address: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => {
      s.removeListener('listening', onListening);
      reject(err);
    };
    const onListening = (): void => {
      s.removeListener('error', onError);
      resolve();
    };
    s.once('error', onError);
    s.once('listening', onListening);
    s.bind(port, address);
  });
}

/** `--link BUS=cannelloni://RHOST:RPORT?local=LADDR:LPORT`. */
export const cannelloniPortFactory: PortFactory<CannelloniLinkSpec> = {
  kind: 'link',
  keys: ['cannelloni'],
  help: `          cannelloni://RHOST:RPORT[?local=LADDR:LPORT]
                A cannelloni peer over UDP (a real cannelloni or another vhost-device-can),
                CAN FD included. local is the address and port bound here (default: any
                address, the remote's port); IPv6 in brackets ([fd00::2]:20000). More
                parameters: keepalive=MS (default 1000, 0 = none), timeout=MS (a peer that
                sends keepalives and is silent this long is down; default 3 keepalives),
                datagram=BYTES (default 1472, what cannelloni reads). While the link is down
                (cannot bind, the peer refuses, the peer is silent) its frames are dropped
                and counted. Links must form a tree: a cycle of links repeats frames forever.`,
  parse: parseCannelloniUrl,
  create: (ctx, spec) => new CannelloniLink({ hub: ctx.hub, bus: ctx.bus, spec, log: ctx.log }),
};
