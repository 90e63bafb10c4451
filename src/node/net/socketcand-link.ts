/**
 * `--link BUS=socketcand://HOST:PORT/CHANNEL`: the daemon as a socketcand client. It joins BUS to
 * the bus CHANNEL of a socketcand server (a real socketcand next to CAN hardware, or another
 * vhost-device-can's `--socketcand-listen`), in raw mode, frames both ways.
 *
 * - Handshake: `< hi >`, `< open CHANNEL >` -> `< ok >`, `< rawmode >` -> `< ok >`; then it
 *   introduces itself with `< vdc-peer ... >` (see peers.ts: a vhost-device-can server answers, a
 *   plain socketcand answers an error that is ignored) so redundant links between two daemons do
 *   not loop or duplicate frames.
 * - Frames from BUS go out as `< send ... >` (`< sendrtr ... >`, `< fdsend ... >` for remote and
 *   CAN FD frames), batched: one flush per event-loop turn, retried when the socket pushes back
 *   (TxBatcher). Frames from the server go onto BUS from this link's port, so the hub never sends
 *   them back out of this link.
 * - A lost or refused connection is retried with backoff (LinkSupervisor). While the link is down
 *   the port does not receive: frames for it are dropped and counted (rxDiscardedClosed).
 */
import { connect, type Socket } from 'node:net';
import { type MutableCanFrame, scratchCanFrame } from '../../core/bus/can-frame.js';
import type { BusPortHandler, HubPort } from '../../core/bus/hub.js';
import {
  ByteWriter,
  ElementReader,
  parseServerFrame,
  SOCKETCAND_DEFAULT_PORT,
  scratchPayloads,
  Words,
  writeSendCommand,
} from '../../core/net/socketcand-codec.js';
import type { LogFields, Logger } from '../../core/util/log.js';
import { LinkSupervisor, ReadPacer, TxBatcher } from '../bus/link-kit.js';
import type { BusAttachment, PortContext, PortFactory } from '../bus/port-registry.js';
import { formatHostPort, parseHostPort } from './addresses.js';
import { isPeerWord, type PeerConnection, type PeerRegistry, peersOf } from './peers.js';

export interface SocketcandLinkSpec {
  host: string;
  port: number;
  channel: string;
}

const CHANNEL = /^[A-Za-z0-9_.:-]{1,64}$/;
const WRITE_CHUNK = 64 * 1024;
/** The server must finish the handshake within this (ms). */
const HANDSHAKE_TIMEOUT_MS = 5000;

/** Parses `socketcand://HOST[:PORT]/CHANNEL` (no I/O): the spec or a message. */
export function parseSocketcandUrl(value: string): SocketcandLinkSpec | string {
  const m = /^socketcand:\/\/(\[[^\]]*\]|[^/:[\]]+)(?::([0-9]{1,5}))?\/([^/?#]*)$/i.exec(value);
  if (m === null) return 'expected socketcand://HOST:PORT/CHANNEL (HOST an IPv4 address, [IPv6] or a name)';
  const rawHost = m[1]!;
  const port = m[2] === undefined ? SOCKETCAND_DEFAULT_PORT : Number(m[2]);
  const channel = decodeURIComponent(m[3]!);
  if (port < 1 || port > 65535) return `port ${port} is out of range (1..65535)`;
  if (!CHANNEL.test(channel))
    return `bad channel "${channel}" (the remote bus name: letters, digits, _ . : -)`;
  let host = rawHost;
  if (rawHost.startsWith('[')) {
    const hp = parseHostPort(`${rawHost}:${port}`, 'host');
    if (typeof hp === 'string') return hp;
    host = hp.host;
  } else if (!/^[A-Za-z0-9.-]{1,253}$/.test(rawHost)) {
    return `bad host "${rawHost}"`;
  }
  return { host, port, channel };
}

export interface SocketcandLinkStats {
  /** Frames received from the server and put on the bus. */
  framesIn: number;
  /** Frames sent to the server. */
  framesOut: number;
  /** Elements from the server that were not understood. */
  badElements: number;
  /** `< error ... >` from the server after the handshake (e.g. frames it dropped, commands it lacks). */
  remoteErrors: number;
  /** Error frames the server reported (not relayed: controller states are local to each side). */
  remoteErrorFrames: number;
  /** Frames dropped because this link is muted (a redundant path to the same peer bus). */
  droppedMuted: number;
}

type Phase = 'idle' | 'hi' | 'open' | 'raw' | 'up';

export class SocketcandLink implements BusPortHandler, BusAttachment, PeerConnection {
  readonly kind = 'link';
  readonly name: string;
  readonly bus: string;
  readonly spec: SocketcandLinkSpec;
  readonly port: HubPort;
  readonly counters: SocketcandLinkStats = {
    framesIn: 0,
    framesOut: 0,
    badElements: 0,
    remoteErrors: 0,
    remoteErrorFrames: 0,
    droppedMuted: 0,
  };
  readonly #log: Logger;
  readonly #peers: PeerRegistry;
  readonly #supervisor: LinkSupervisor;
  readonly #batcher = new TxBatcher({ flush: () => this.#flush() });
  readonly #reader = new ElementReader();
  readonly #words = new Words();
  readonly #scratch: MutableCanFrame = scratchCanFrame();
  readonly #payloads = scratchPayloads();
  readonly #out = new ByteWriter(WRITE_CHUNK + 1024);
  #socket: Socket | null = null;
  #phase: Phase = 'idle';
  #handshakeTimer: ReturnType<typeof setTimeout> | null = null;
  #closed = false;
  // Peer identity (when the server is a vhost-device-can).
  #peerDaemon = '';
  #token = '';
  #joined = false;
  muted = false;

  constructor(ctx: PortContext, spec: SocketcandLinkSpec, opts: { queueLimit?: number } = {}) {
    this.spec = spec;
    this.bus = ctx.bus;
    this.name = `socketcand:${formatHostPort(spec)}/${spec.channel}`;
    this.#log = ctx.log;
    this.#peers = peersOf(ctx.hubs);
    this.port = ctx.hub.attach(this, {
      name: this.name,
      releasesFrames: true,
      queueLimit: opts.queueLimit ?? 4096,
    });
    this.port.setReceiving(false);
    this.#supervisor = new LinkSupervisor({
      connect: () => this.#connect(),
      onChange: (state, reason) => {
        if (state === 'up') this.#log.info('socketcand link up', { link: this.name });
        else this.#log.warn('socketcand link down', { link: this.name, reason });
      },
    });
    this.#supervisor.start();
  }

  // ---- PeerConnection ---------------------------------------------------------------------------

  get peerDaemon(): string {
    return this.#peerDaemon;
  }

  get localBus(): string {
    return this.bus;
  }

  get remoteBus(): string {
    return this.spec.channel;
  }

  get initiator(): string {
    return this.#peers.selfId;
  }

  get token(): string {
    return this.#token;
  }

  setMuted(muted: boolean): void {
    if (muted === this.muted) return;
    this.muted = muted;
    this.#log.info(
      muted ? 'socketcand link muted (a redundant path to the same peer bus)' : 'socketcand link unmuted',
      {
        link: this.name,
      },
    );
    this.#updateReceiving();
  }

  // ---- connection -------------------------------------------------------------------------------

  #connect(): void {
    const s = connect({ host: this.spec.host, port: this.spec.port, noDelay: true });
    this.#socket = s;
    this.#phase = 'hi';
    this.#reader.reset();
    this.#handshakeTimer = setTimeout(
      () => this.#fail(s, 'the server did not finish the handshake in time'),
      HANDSHAKE_TIMEOUT_MS,
    );
    const sink = {
      element: (buf: Uint8Array, start: number, end: number): void => this.#element(s, buf, start, end),
      junk: (): void => {
        this.counters.badElements++;
      },
    };
    const pacer = new ReadPacer(s);
    s.on('data', (chunk: Buffer) => {
      if (this.#socket !== s) return;
      this.#reader.push(chunk, sink);
      pacer.consumed(chunk.length);
    });
    s.on('drain', () => this.#batcher.kick());
    let lastError = '';
    s.on('error', (err) => {
      lastError = err.message;
    });
    s.on('close', () => this.#fail(s, lastError === '' ? 'connection closed' : lastError));
    s.setKeepAlive(true, 10_000);
  }

  /** The connection `s` failed or closed: the link goes down and is retried. */
  #fail(s: Socket, reason: string): void {
    if (this.#socket !== s) return;
    this.#socket = null;
    this.#phase = 'idle';
    if (this.#handshakeTimer !== null) clearTimeout(this.#handshakeTimer);
    this.#handshakeTimer = null;
    s.destroy();
    this.#leavePeers();
    this.#updateReceiving();
    this.#supervisor.down(reason);
  }

  #send(s: Socket, text: string): void {
    s.write(text);
  }

  #element(s: Socket, buf: Uint8Array, start: number, end: number): void {
    const w = this.#words;
    if (!w.split(buf, start, end) || w.count === 0) {
      this.counters.badElements++;
      return;
    }
    if (this.#phase === 'up') {
      if (w.is(0, 'frame') || w.is(0, 'fdframe') || w.is(0, 'rtr')) {
        const err = parseServerFrame(w, this.#scratch, this.#payloads, false);
        if (err !== null) {
          this.counters.badElements++;
          return;
        }
        if (this.muted) {
          this.counters.droppedMuted++;
          return;
        }
        if (this.port.transmit(this.#scratch) === 'dropped') this.counters.badElements++;
        else this.counters.framesIn++;
        return;
      }
      if (w.is(0, 'error')) {
        // `< error CLASS TS ... >` is an error frame; other errors are messages.
        if (w.count >= 3 && w.hex(1) >= 0 && w.length(1) <= 8 && w.text(2).includes('.')) {
          this.counters.remoteErrorFrames++;
        } else {
          this.counters.remoteErrors++;
          if (this.#log.debugEnabled)
            this.#log.debug('socketcand server error', { link: this.name, text: w.text(1) });
        }
        return;
      }
      if (w.is(0, 'vdc-peer') && w.count === 2 && isPeerWord(w.text(1))) {
        this.#leavePeers();
        this.#peerDaemon = w.text(1);
        this.#peers.join(this);
        this.#joined = true;
        return;
      }
      if (w.is(0, 'ok') || w.is(0, 'echo') || w.is(0, 'stat')) return;
      this.counters.badElements++;
      return;
    }
    // Handshake.
    if (w.is(0, 'error')) {
      const text = new TextDecoder().decode(buf.subarray(start, end));
      this.#fail(s, `the server refused: ${text}`);
      return;
    }
    if (this.#phase === 'hi' && w.is(0, 'hi')) {
      this.#send(s, `< open ${this.spec.channel} >`);
      this.#phase = 'open';
    } else if (this.#phase === 'open' && w.is(0, 'ok')) {
      this.#send(s, '< rawmode >');
      this.#phase = 'raw';
    } else if (this.#phase === 'raw' && w.is(0, 'ok')) {
      this.#phase = 'up';
      if (this.#handshakeTimer !== null) clearTimeout(this.#handshakeTimer);
      this.#handshakeTimer = null;
      this.#token = this.#peers.token();
      this.#send(s, `< vdc-peer ${this.#peers.selfId} ${this.bus} ${this.#token} >`);
      this.#supervisor.up();
      this.#updateReceiving();
    } else {
      this.#fail(
        s,
        `unexpected handshake reply ${new TextDecoder().decode(buf.subarray(start, end)).slice(0, 80)}`,
      );
    }
  }

  #leavePeers(): void {
    if (!this.#joined) return;
    this.#joined = false;
    this.#peers.leave(this);
    this.#peerDaemon = '';
    this.muted = false;
  }

  #updateReceiving(): void {
    this.port.setReceiving(this.#phase === 'up' && !this.muted && !this.#closed);
  }

  // ---- frames to the server ---------------------------------------------------------------------

  onFramesAvailable(): void {
    this.#batcher.request();
  }

  #flush(): 'done' | 'retry' {
    const s = this.#socket;
    if (s === null || this.#phase !== 'up') return 'done';
    const out = this.#out;
    let n = 0;
    let ok = true;
    for (let f = this.port.take(); f !== undefined; f = this.port.take()) {
      writeSendCommand(out, f);
      this.port.release(f);
      n++;
      if (out.length >= WRITE_CHUNK) {
        ok = s.write(out.take());
        if (!ok) break;
      }
    }
    if (out.length > 0) ok = s.write(out.take()) && ok;
    this.counters.framesOut += n;
    return ok ? 'done' : 'retry';
  }

  stats(): LogFields {
    const sup = this.#supervisor.stats();
    const p = this.port.stats;
    return {
      ...sup,
      peer: this.#peerDaemon === '' ? '-' : this.#peerDaemon,
      muted: this.muted,
      ...this.counters,
      droppedWhileDown: p.rxDiscardedClosed,
      droppedOverflow: p.rxDroppedOverflow,
      backpressure: this.#batcher.backpressure,
    };
  }

  get state(): 'up' | 'down' {
    return this.#supervisor.state;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#supervisor.close();
    this.#batcher.close();
    if (this.#handshakeTimer !== null) clearTimeout(this.#handshakeTimer);
    this.#leavePeers();
    const s = this.#socket;
    this.#socket = null;
    s?.destroy();
    this.port.detach();
  }
}

export const socketcandLinkFactory: PortFactory<SocketcandLinkSpec> = {
  kind: 'link',
  keys: ['socketcand'],
  help: `        socketcand://HOST:PORT/CHANNEL   a socketcand server's bus CHANNEL (a real socketcand,
                  or another vhost-device-can's --socketcand-listen), raw mode, frames both
                  ways; PORT defaults to 29536. Reconnects with backoff; frames for it while it
                  is down are dropped and counted. Links between two vhost-device-can daemons
                  recognise each other: a pair linked both ways carries each frame once.`,
  parse: parseSocketcandUrl,
  create: (ctx, spec) => new SocketcandLink(ctx, spec),
};
