// A scriptable fake vhost-user back-end on one end of a socketpair, for tests of the front-end
// itself: it records every message (request, flags, payload, fd count), closes received fds (or
// keeps the back-end channel fd), and answers through a replaceable handler.
import type { TestContext } from 'node:test';
import {
  decodeHeader,
  encodeConfig,
  encodeMessage,
  encodeU64,
  type VhostUserMessage,
} from '../../src/core/vhost-user/codec.js';
import { MessageFramer } from '../../src/core/vhost-user/framer.js';
import {
  FrontendReq,
  HEADER_SIZE,
  HeaderFlag,
  MAX_FDS,
  MAX_PAYLOAD,
  REPLY_FLAGS,
} from '../../src/core/vhost-user/protocol.js';
import { VhostUserFrontend } from '../../src/node/frontend/frontend.js';
import { type NativeWatcher, native } from '../../src/node/native/addon.js';

export interface Recorded {
  request: number;
  flags: number;
  payload: Uint8Array;
  fds: number;
}

/** What the handler returns: a reply payload, 'default' for the built-in answer, or null for none. */
export type Answer = Uint8Array | 'default' | null | { raw: Uint8Array };

export interface FakeBackendOptions {
  features?: bigint;
  protocolFeatures?: bigint;
  queueNum?: number;
}

export class FakeBackend {
  readonly messages: Recorded[] = [];
  /** The back-end channel fd received with SET_BACKEND_REQ_FD (kept open), or -1. */
  channelFd = -1;
  handler: (m: VhostUserMessage) => Answer = () => 'default';
  private readonly fd: number;
  private readonly watcher: NativeWatcher;
  private readonly framer = new MessageFramer({ maxPayload: MAX_PAYLOAD, maxFds: MAX_FDS });
  private readonly buf = new Uint8Array(HEADER_SIZE + MAX_PAYLOAD);
  private readonly opts: Required<FakeBackendOptions>;
  private closed = false;

  constructor(fd: number, opts: FakeBackendOptions = {}) {
    this.fd = fd;
    this.opts = {
      features: opts.features ?? (1n << 32n) | (1n << 30n) | (1n << 29n) | (1n << 28n) | 0xfn,
      protocolFeatures: opts.protocolFeatures ?? 0b10_0010_1001n, // MQ, REPLY_ACK, BACKEND_REQ, CONFIG
      queueNum: opts.queueNum ?? 3,
    };
    this.watcher = new native.Watcher(fd, () => this.onReadable());
    this.watcher.start(native.READABLE);
  }

  /** A front-end connected to a new fake back-end; both closed after the test. */
  static pair(
    t: TestContext,
    opts: FakeBackendOptions & { timeoutMs?: number } = {},
  ): { fe: VhostUserFrontend; be: FakeBackend } {
    const [a, b] = native.socketpair();
    const be = new FakeBackend(b, opts);
    const fe = new VhostUserFrontend(a, { timeoutMs: opts.timeoutMs ?? 2000 });
    t.after(() => {
      fe.close();
      be.close();
    });
    return { fe, be };
  }

  /** Request codes received so far. */
  requests(): number[] {
    return this.messages.map((m) => m.request);
  }

  private onReadable(): void {
    while (!this.closed) {
      const r = native.recvMsg(this.fd, this.buf.subarray(0, this.framer.wanted()), MAX_FDS);
      if (r === null) return;
      if (r.bytes === 0) {
        this.close();
        return;
      }
      for (const m of this.framer.push(this.buf.subarray(0, r.bytes), r.fds)) this.onMessage(m);
    }
  }

  private onMessage(m: VhostUserMessage): void {
    this.messages.push({ request: m.request, flags: m.flags, payload: m.payload, fds: m.fds.length });
    const fds = [...m.fds];
    if (m.request === FrontendReq.SET_BACKEND_REQ_FD && fds.length === 1) {
      if (this.channelFd >= 0) native.close(this.channelFd);
      this.channelFd = fds.pop()!;
    }
    for (const fd of fds) native.close(fd);
    const a = this.handler(m);
    if (a === null) return;
    if (a instanceof Uint8Array) {
      this.send(encodeMessage(m.request, REPLY_FLAGS, a));
      return;
    }
    if (a !== 'default') {
      this.send(a.raw);
      return;
    }
    const body = this.defaultReply(m);
    if (body !== null) this.send(encodeMessage(m.request, REPLY_FLAGS, body));
  }

  private defaultReply(m: VhostUserMessage): Uint8Array | null {
    switch (m.request) {
      case FrontendReq.GET_FEATURES:
        return encodeU64(this.opts.features);
      case FrontendReq.GET_PROTOCOL_FEATURES:
        return encodeU64(this.opts.protocolFeatures);
      case FrontendReq.GET_QUEUE_NUM:
        return encodeU64(this.opts.queueNum);
      case FrontendReq.GET_MAX_MEM_SLOTS:
        return encodeU64(8);
      case FrontendReq.GET_STATUS:
        return encodeU64(0);
      case FrontendReq.GET_VRING_BASE: {
        const out = new Uint8Array(8); // {index, num = 0}
        out.set(m.payload.subarray(0, 4));
        return out;
      }
      case FrontendReq.GET_CONFIG: {
        const size = new DataView(m.payload.buffer, m.payload.byteOffset).getUint32(4, true);
        return encodeConfig({ offset: 0, size, flags: 0 });
      }
      default:
        return (m.flags & HeaderFlag.NEED_REPLY) !== 0 ? encodeU64(0) : null;
    }
  }

  /** Writes raw bytes to the front-end. */
  send(bytes: Uint8Array): void {
    native.sendMsg(this.fd, bytes);
  }

  /** Writes a message on the back-end channel. */
  sendOnChannel(bytes: Uint8Array): void {
    native.sendMsg(this.channelFd, bytes);
  }

  /** Reads one complete reply from the back-end channel (non-blocking; null if none yet). */
  readChannel(): { request: number; flags: number; payload: Uint8Array } | null {
    const h = new Uint8Array(HEADER_SIZE);
    const r = native.recvMsg(this.channelFd, h, 0);
    if (r === null || r.bytes < HEADER_SIZE) return null;
    const hd = decodeHeader(h);
    const p = new Uint8Array(hd.size);
    if (hd.size > 0) native.recvMsg(this.channelFd, p, 0);
    return { request: hd.request, flags: hd.flags, payload: p };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.watcher.close();
    for (const fd of this.framer.takeFds()) native.close(fd);
    if (this.channelFd >= 0) native.close(this.channelFd);
    this.channelFd = -1;
    native.close(this.fd);
  }
}
