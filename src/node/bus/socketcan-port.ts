/**
 * A host SocketCAN interface (vcan0, can0, ...) as a port on a CAN hub.
 *
 * One raw socket per interface, shared by every guest on that bus; guests talk to each other through
 * the hub directly, and the socket carries what crosses to and from the host:
 * - guest -> host: frames queued for this port are written in batches (sendmmsg). The kernel echoes
 *   each of our own frames back once it was transmitted (CAN_RAW_RECV_OWN_MSGS, flagged MSG_CONFIRM);
 *   that echo confirms the frame to the hub, which completes the guest's request (LATE_TX_ACK). Echoes
 *   are never forwarded to guests (the Linux driver echoes locally).
 * - host -> guests: every other frame read (recvmmsg) is put on the hub.
 * - Back-pressure: when the kernel's queue is full (ENOBUFS/EAGAIN) frames stay in the port's bounded
 *   queue and are retried with a short backoff; beyond the bound the hub counts the overflow and the
 *   guest's request fails with NOT_OK. Nothing is dropped without a counter.
 * - Controller state: error frames (bus-off, error-passive, warnings, restarted) are turned into bus
 *   states for every guest on the bus. An interface that goes down or disappears is noticed (socket
 *   errors and a periodic check) and reported to the guests as bus-off; its in-flight frames fail,
 *   guests' transmits fail NOT_OK while it is gone, and the socket is reopened when it comes back.
 * Readiness comes from the fd watcher: no spinning, no CPU while idle.
 */
import { type CanFrame, canFdDlcToLen, canFdLenToDlc, scratchCanFrame } from '../../core/bus/can-frame.js';
import type { BusPortHandler, BusState, CanHub, HubPort } from '../../core/bus/hub.js';
import { RingQueue } from '../../core/bus/ring-queue.js';
import type { Logger } from '../../core/util/log.js';
import { CodedError } from '../errors.js';
import {
  CAN_RECORD_DATA_OFFSET,
  CAN_RECORD_MSG_FLAGS_OFFSET,
  CAN_RECORD_SIZE,
  CAN_RECORD_WIRE_SIZE_OFFSET,
  HOST_LITTLE_ENDIAN,
} from '../native/can-records.js';
import { TxBatcher } from './link-kit.js';

/** Linux SocketCAN constants (include/uapi/linux/can.h, can/raw.h, can/error.h). */
export const LinuxCan = {
  EFF_FLAG: 0x80000000,
  RTR_FLAG: 0x40000000,
  ERR_FLAG: 0x20000000,
  SFF_MASK: 0x7ff,
  EFF_MASK: 0x1fffffff,
  ERR_MASK: 0x1fffffff,
  CANFD_BRS: 0x01,
  CANFD_ESI: 0x02,
  CANFD_FDF: 0x04,
  CAN_MTU: 16,
  CANFD_MTU: 72,
  MSG_CONFIRM: 0x800,
  ERR_CRTL: 0x04,
  ERR_BUSOFF: 0x40,
  ERR_RESTARTED: 0x100,
  ERR_CRTL_RX_WARNING: 0x04,
  ERR_CRTL_TX_WARNING: 0x08,
  ERR_CRTL_RX_PASSIVE: 0x10,
  ERR_CRTL_TX_PASSIVE: 0x20,
  ERR_CRTL_ACTIVE: 0x40,
} as const;

/** Record offsets inside a batch buffer (layout: src/node/native/can-records.ts). */
const RECORD = CAN_RECORD_SIZE;
const OFF_LEN = 4;
const OFF_FLAGS = 5;
const OFF_LEN8_DLC = 7;
const OFF_DATA = CAN_RECORD_DATA_OFFSET;
const OFF_WIRE_SIZE = CAN_RECORD_WIRE_SIZE_OFFSET;
const OFF_MSG_FLAGS = CAN_RECORD_MSG_FLAGS_OFFSET;
/** Frames per recvmmsg/sendmmsg call (the addon's maximum is 64). */
const BATCH = 64;
/**
 * Batches read per readiness callback. The socket is level-triggered: after this many the port
 * returns to the event loop, which runs the guests' kicks and RX delivery, and calls it again at
 * once if frames are still queued. Reading until the socket is empty instead starves the guests
 * for the whole of a flood: their RX rings are not refilled until it ends.
 */
const READ_BATCHES_PER_WAKE = 4;
/**
 * Default socket receive buffer in bytes. The kernel doubles it for its bookkeeping and charges
 * each queued CAN frame about 960 bytes (an skb), so 16 MiB (32 MiB granted) holds about 35,000
 * frames: a flood of that size waits there while the daemon is busy instead of being dropped.
 * Kernel memory, used only while frames wait.
 */
export const DEFAULT_SOCKETCAN_RCVBUF = 16 << 20;

/** The addon functions this port uses (src/node/native/addon.ts). */
export interface SocketCanNative {
  canIfInfo(ifname: string): { index: number; mtu: number; up: boolean; running: boolean; isCan: boolean };
  canOpen(
    ifname: string,
    opts: { fd: boolean; loopback: boolean; recvOwnMsgs: boolean; errMask: number; rcvbuf?: number },
  ): number;
  canSocketBuffers(fd: number): { rcvbuf: number; sndbuf: number };
  canRecvBatch(fd: number, buf: Uint8Array, maxFrames: number, meta: Uint32Array): number | null;
  canSendBatch(fd: number, buf: Uint8Array, count: number): number;
  canSupported(): boolean;
  close(fd: number): void;
  readonly READABLE: number;
  Watcher: new (
    fd: number,
    cb: (status: number, events: number) => void,
  ) => { start(events: number): void; stop(): void; close(): void };
}

export type SocketCanErrorCode =
  | 'ERR_HOST_CAN'
  | 'ERR_HOST_CAN_UNSUPPORTED'
  | 'ERR_HOST_CAN_MISSING'
  | 'ERR_HOST_CAN_NOT_CAN'
  | 'ERR_HOST_CAN_DOWN'
  | 'ERR_HOST_CAN_OPTION';

export class SocketCanError extends CodedError<SocketCanErrorCode> {}

export interface HostInterfaceInfo {
  ifname: string;
  mtu: number;
  /** The interface carries CAN FD frames (MTU 72 or more). */
  fd: boolean;
}

/** Start-up checks with clear errors: AF_CAN present, interface exists, is CAN, is up. */
export function checkHostInterface(native: SocketCanNative, ifname: string): HostInterfaceInfo {
  if (!native.canSupported()) {
    throw new SocketCanError(
      'ERR_HOST_CAN_UNSUPPORTED',
      `host CAN interface "${ifname}": this kernel has no SocketCAN (AF_CAN); load the can and can-raw modules, or use virtual buses`,
    );
  }
  let info: ReturnType<SocketCanNative['canIfInfo']>;
  try {
    info = native.canIfInfo(ifname);
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'ENODEV' || code === 'ENXIO') {
      throw new SocketCanError('ERR_HOST_CAN_MISSING', `host CAN interface "${ifname}" does not exist`, {
        cause: err,
      });
    }
    throw new SocketCanError('ERR_HOST_CAN', `cannot inspect "${ifname}": ${(err as Error).message}`, {
      cause: err,
    });
  }
  if (!info.isCan) throw new SocketCanError('ERR_HOST_CAN_NOT_CAN', `"${ifname}" is not a CAN interface`);
  if (!info.up) {
    throw new SocketCanError(
      'ERR_HOST_CAN_DOWN',
      `host CAN interface "${ifname}" is down; bring it up first (ip link set ${ifname} up)`,
    );
  }
  return { ifname, mtu: info.mtu, fd: info.mtu >= LinuxCan.CANFD_MTU };
}

export interface SocketCanPortOptions {
  native: SocketCanNative;
  hub: CanHub;
  ifname: string;
  log: Logger;
  /** Frames waiting for the kernel's TX queue (default 1024). */
  txBacklog?: number;
  /** How often the interface state is checked, ms (default 1000; 0 = never). */
  checkIntervalMs?: number;
  /** A written frame not echoed within this many ms fails NOT_OK (default 2000). */
  confirmTimeoutMs?: number;
  /**
   * Socket receive buffer in bytes (default DEFAULT_SOCKETCAN_RCVBUF; 0 = the kernel's default,
   * net.core.rmem_default). Set with SO_RCVBUFFORCE when the process may (CAP_NET_ADMIN), else
   * with SO_RCVBUF, which the kernel caps at net.core.rmem_max.
   */
  rcvbuf?: number;
}

export interface SocketCanStats {
  /** Frames read from the interface and put on the bus. */
  rxFrames: number;
  /** Frames written to the interface. */
  txFrames: number;
  /** Written frames whose echo confirmed transmission. */
  txConfirmed: number;
  /** Frames that could not be transmitted (interface down, write error, no echo in time). */
  txFailed: number;
  /** Times the kernel queue was full (ENOBUFS/EAGAIN) and frames waited. */
  txBackpressure: number;
  /** Echoes of frames already failed (timeout, bus-off): ignored. */
  staleEchoes: number;
  /** The kernel's count of frames dropped because our socket's receive queue was full. */
  rxKernelDrops: number;
  /** FD frames with a non-canonical length, padded to the next valid length. */
  rxPadded: number;
  errorFrames: number;
  busOff: number;
  /** Times the interface went down or away, and came back. */
  down: number;
  reattached: number;
}

type LinkState = 'up' | 'down';

export class SocketCanPort implements BusPortHandler {
  readonly ifname: string;
  readonly port: HubPort;
  readonly stats: SocketCanStats = {
    rxFrames: 0,
    txFrames: 0,
    txConfirmed: 0,
    txFailed: 0,
    txBackpressure: 0,
    staleEchoes: 0,
    rxKernelDrops: 0,
    rxPadded: 0,
    errorFrames: 0,
    busOff: 0,
    down: 0,
    reattached: 0,
  };
  fd = false;
  /** The socket's receive buffer as the kernel reports it (getsockopt: twice what was set). */
  rcvbufBytes = 0;

  private readonly native: SocketCanNative;
  private readonly hub: CanHub;
  private readonly log: Logger;
  private readonly confirmTimeoutMs: number;
  private readonly rcvbuf: number;
  private sock = -1;
  private watcher: { start(events: number): void; stop(): void; close(): void } | null = null;
  private link: LinkState = 'down';
  private closed = false;
  private readonly inflight = new RingQueue<CanFrame>(64);
  private readonly inflightAt = new RingQueue<number>(64);
  private readonly txBuf = new Uint8Array(RECORD * BATCH);
  private readonly txDv = new DataView(this.txBuf.buffer);
  private readonly txFrames: CanFrame[] = [];
  private readonly rxBuf = new Uint8Array(RECORD * BATCH);
  private readonly rxDv = new DataView(this.rxBuf.buffer);
  private readonly meta = new Uint32Array(2);
  /** The frame every received record is decoded into (the hub copies it on transmit). */
  private readonly rxFrame = scratchCanFrame();
  /** Scratch payloads by length 0..64 (the hub requires data.length === len). */
  private readonly rxData: Uint8Array[] = Array.from({ length: 65 }, (_, n) => new Uint8Array(n));
  /** One flush per turn, retried with backoff while the kernel's queue is full. */
  private readonly batcher = new TxBatcher({ flush: () => this.flush() });
  private readonly checkTimer: ReturnType<typeof setInterval> | null;

  constructor(opts: SocketCanPortOptions) {
    this.native = opts.native;
    this.hub = opts.hub;
    this.ifname = opts.ifname;
    this.log = opts.log.child({ host: opts.ifname });
    this.confirmTimeoutMs = opts.confirmTimeoutMs ?? 2000;
    this.rcvbuf = opts.rcvbuf ?? DEFAULT_SOCKETCAN_RCVBUF;
    if (!Number.isInteger(this.rcvbuf) || this.rcvbuf < 0 || this.rcvbuf > 0x7fffffff) {
      throw new SocketCanError(
        'ERR_HOST_CAN_OPTION',
        `rcvbuf must be an integer in 0..2147483647, got ${opts.rcvbuf}`,
      );
    }
    const info = checkHostInterface(this.native, this.ifname);
    this.fd = info.fd;
    this.port = this.hub.attach(this, {
      name: `host:${this.ifname}`,
      queueLimit: opts.txBacklog ?? 1024,
      confirmsTransmit: true,
      accept: { classic: true, fd: info.fd, rtr: true },
    });
    this.openSocket();
    const every = opts.checkIntervalMs ?? 1000;
    this.checkTimer = every > 0 ? setInterval(() => this.checkLink(), every) : null;
    this.checkTimer?.unref();
  }

  get linkState(): LinkState {
    return this.link;
  }

  /** Frames written and not yet confirmed by their echo. */
  get inFlight(): number {
    return this.inflight.size;
  }

  private openSocket(): void {
    this.sock = this.native.canOpen(this.ifname, {
      fd: this.fd,
      loopback: true, // other host applications (candump) must see guests' frames
      recvOwnMsgs: true, // our own frames come back flagged MSG_CONFIRM: the TX confirmation
      errMask: LinuxCan.ERR_MASK,
      ...(this.rcvbuf === 0 ? {} : { rcvbuf: this.rcvbuf }),
    });
    this.reportRcvbuf();
    const w = new this.native.Watcher(this.sock, (status) => {
      if (status < 0) this.linkLost(`socket error ${status}`);
      else this.readAll();
    });
    w.start(this.native.READABLE);
    this.watcher = w;
    this.link = 'up';
    this.port.setReceiving(true);
  }

  /** Logs the receive buffer the kernel granted (once; again only if it changed on a reopen). */
  private reportRcvbuf(): void {
    let effective = 0;
    try {
      effective = this.native.canSocketBuffers(this.sock).rcvbuf;
    } catch {
      return;
    }
    if (effective === this.rcvbufBytes) return;
    this.rcvbufBytes = effective;
    // The kernel doubles the value set (half is for its bookkeeping) and reports the doubled size.
    const fields = { requested: this.rcvbuf, effective };
    if (this.rcvbuf > 0 && effective < 2 * this.rcvbuf) {
      this.log.warn(
        'socket receive buffer smaller than requested: capped by net.core.rmem_max (SO_RCVBUFFORCE needs CAP_NET_ADMIN); a flood from the host interface may be dropped by the kernel',
        fields,
      );
    } else {
      this.log.info('socket receive buffer', fields);
    }
  }

  private closeSocket(): void {
    this.watcher?.close();
    this.watcher = null;
    if (this.sock >= 0) {
      try {
        this.native.close(this.sock);
      } catch {
        /* already gone */
      }
    }
    this.sock = -1;
  }

  // ---- guests -> host --------------------------------------------------------------------------

  onFramesAvailable(): void {
    // The hub calls this once per frame, from inside a guest's TX loop: write once per turn
    // instead, so a batch of guest frames goes out in sendmmsg batches, not a syscall per frame.
    this.batcher.request();
  }

  /**
   * Writes queued frames in batches: first those a full kernel queue sent back (`pendingRetry`),
   * then the hub queue, so the order on the wire is the order on the bus.
   */
  private flush(): 'done' | 'retry' {
    const frames = this.txFrames;
    while (this.sock >= 0) {
      frames.length = 0;
      while (frames.length < BATCH) {
        const f = this.pendingRetry.shift() ?? this.port.take();
        if (f === undefined) break;
        frames.push(f);
      }
      const n = frames.length;
      if (n === 0) break;
      for (let i = 0; i < n; i++) this.writeRecord(i, frames[i]!);
      let sent: number;
      try {
        sent = this.native.canSendBatch(this.sock, this.txBuf, n);
      } catch (err) {
        for (const f of frames) this.fail(f);
        this.linkLost(`write failed: ${(err as Error).message}`);
        return 'done';
      }
      const now = Date.now();
      for (let i = 0; i < sent; i++) {
        this.inflight.push(frames[i]!);
        this.inflightAt.push(now);
      }
      this.stats.txFrames += sent;
      if (sent < n) {
        // Kernel queue full (ENOBUFS/EAGAIN): the unsent frames go first into the retry queue,
        // ahead of older retries not taken in this batch, and are tried again shortly.
        this.stats.txBackpressure++;
        const rest: CanFrame[] = frames.slice(sent);
        for (let f = this.pendingRetry.shift(); f !== undefined; f = this.pendingRetry.shift()) rest.push(f);
        for (const f of rest) this.pendingRetry.push(f);
        return 'retry';
      }
    }
    return 'done';
  }

  private readonly pendingRetry = new RingQueue<CanFrame>(32);

  private writeRecord(i: number, f: CanFrame): void {
    const o = i * RECORD;
    const dv = this.txDv;
    let id = f.extended ? (f.id | LinuxCan.EFF_FLAG) >>> 0 : f.id;
    if (f.rtr) id = (id | LinuxCan.RTR_FLAG) >>> 0;
    dv.setUint32(o, id, HOST_LITTLE_ENDIAN);
    dv.setUint8(o + OFF_LEN, f.len);
    dv.setUint8(
      o + OFF_FLAGS,
      f.fd ? LinuxCan.CANFD_FDF | (f.brs ? LinuxCan.CANFD_BRS : 0) | (f.esi ? LinuxCan.CANFD_ESI : 0) : 0,
    );
    dv.setUint8(o + OFF_FLAGS + 1, 0);
    dv.setUint8(o + OFF_LEN8_DLC, f.len8Dlc);
    if (!f.rtr) this.txBuf.set(f.data, o + OFF_DATA);
    dv.setUint32(o + OFF_WIRE_SIZE, f.fd ? LinuxCan.CANFD_MTU : LinuxCan.CAN_MTU, HOST_LITTLE_ENDIAN);
    dv.setUint32(o + OFF_MSG_FLAGS, 0, HOST_LITTLE_ENDIAN);
  }

  private fail(f: CanFrame): void {
    this.stats.txFailed++;
    this.port.confirm(f, false);
  }

  // ---- host -> guests --------------------------------------------------------------------------

  private readAll(): void {
    for (let batches = 0; batches < READ_BATCHES_PER_WAKE; batches++) {
      if (this.sock < 0) return;
      let n: number | null;
      try {
        n = this.native.canRecvBatch(this.sock, this.rxBuf, BATCH, this.meta);
      } catch (err) {
        this.linkLost(`read failed: ${(err as Error).message}`);
        return;
      }
      if (n === null) return;
      if (this.meta[0]! !== this.stats.rxKernelDrops) {
        if (this.stats.rxKernelDrops === 0)
          this.log.warn('kernel dropped received frames (socket queue full)', { rcvbuf: this.rcvbufBytes });
        this.stats.rxKernelDrops = this.meta[0]!;
      }
      for (let i = 0; i < n; i++) this.onRecord(i);
      if (n < BATCH) return; // the socket is empty (or nearly): wait for the next readiness
    }
    // Budget used up with frames still queued: the fd stays readable, so the watcher calls again
    // after the event loop served everyone else.
  }

  /**
   * Decodes record `i` into the scratch frame and puts it on the bus. Nothing is allocated: the hub
   * copies the frame into its own pool before `transmit` returns, so one scratch frame and one
   * scratch payload per length serve every record.
   */
  private onRecord(i: number): void {
    const o = i * RECORD;
    const dv = this.rxDv;
    const canId = dv.getUint32(o, HOST_LITTLE_ENDIAN);
    const msgFlags = dv.getUint32(o + OFF_MSG_FLAGS, HOST_LITTLE_ENDIAN);
    if (msgFlags & LinuxCan.MSG_CONFIRM) {
      this.confirmEcho(canId, dv.getUint8(o + OFF_LEN));
      return;
    }
    if (canId & LinuxCan.ERR_FLAG) {
      this.onKernelErrorFrame(canId, o);
      return;
    }
    const fd = dv.getUint32(o + OFF_WIRE_SIZE, HOST_LITTLE_ENDIAN) === LinuxCan.CANFD_MTU;
    const extended = (canId & LinuxCan.EFF_FLAG) !== 0;
    const rtr = !fd && (canId & LinuxCan.RTR_FLAG) !== 0;
    const kernelLen = dv.getUint8(o + OFF_LEN);
    let len = kernelLen;
    const flags = dv.getUint8(o + OFF_FLAGS);
    if (fd) {
      const canonical = canFdDlcToLen(canFdLenToDlc(Math.min(len, 64)));
      if (canonical !== len) {
        // vcan passes any length through; a real bus only has DLC lengths: pad with zeros.
        this.stats.rxPadded++;
        len = canonical;
      }
    } else if (len > 8) {
      len = 8;
    }
    const len8 = dv.getUint8(o + OFF_LEN8_DLC);
    let data = EMPTY;
    if (!rtr) {
      data = this.rxData[len]!;
      const src = this.rxBuf;
      const from = o + OFF_DATA;
      const copy = Math.min(kernelLen, len);
      for (let k = 0; k < copy; k++) data[k] = src[from + k]!;
      for (let k = copy; k < len; k++) data[k] = 0;
    }
    const frame = this.rxFrame;
    frame.id = extended ? canId & LinuxCan.EFF_MASK : canId & LinuxCan.SFF_MASK;
    frame.extended = extended;
    frame.rtr = rtr;
    frame.fd = fd;
    frame.brs = fd && (flags & LinuxCan.CANFD_BRS) !== 0;
    frame.esi = fd && (flags & LinuxCan.CANFD_ESI) !== 0;
    frame.len = len;
    frame.len8Dlc = !fd && !rtr && len === 8 && len8 >= 9 && len8 <= 15 ? len8 : 0;
    frame.data = data;
    this.stats.rxFrames++;
    this.port.transmit(frame);
  }

  /**
   * Our own frame came back: it was transmitted. The kernel echoes one socket's frames in write
   * order, so the echo belongs to the oldest frame in flight, unless that frame was already failed
   * (confirmation timeout, bus-off) and this is its late echo: then identifier and length differ
   * from the oldest frame in flight, and the echo is ignored rather than confirming the wrong frame.
   */
  private confirmEcho(canId: number, len: number): void {
    const f = this.inflight.peek();
    if (f === undefined) {
      this.stats.staleEchoes++;
      return;
    }
    let id = f.extended ? (f.id | LinuxCan.EFF_FLAG) >>> 0 : f.id;
    if (f.rtr) id = (id | LinuxCan.RTR_FLAG) >>> 0;
    if (id !== canId || f.len !== len) {
      this.stats.staleEchoes++;
      return;
    }
    this.inflight.shift();
    this.inflightAt.shift();
    this.stats.txConfirmed++;
    this.port.confirm(f, true);
  }

  private onKernelErrorFrame(canId: number, o: number): void {
    this.stats.errorFrames++;
    const ctrl = this.rxDv.getUint8(o + OFF_DATA + 1);
    let state: BusState | null = null;
    if (canId & LinuxCan.ERR_BUSOFF) {
      state = 'bus-off';
      this.stats.busOff++;
    } else if (canId & LinuxCan.ERR_RESTARTED) {
      state = 'error-active';
    } else if (canId & LinuxCan.ERR_CRTL) {
      if (ctrl & (LinuxCan.ERR_CRTL_RX_PASSIVE | LinuxCan.ERR_CRTL_TX_PASSIVE)) state = 'error-passive';
      else if (ctrl & (LinuxCan.ERR_CRTL_RX_WARNING | LinuxCan.ERR_CRTL_TX_WARNING)) state = 'error-warning';
      else if (ctrl & LinuxCan.ERR_CRTL_ACTIVE) state = 'error-active';
    }
    if (state === null) return;
    this.log.info('host controller state', { state });
    if (state === 'bus-off') {
      // The controller dropped its TX queue: frames written but not echoed will never be.
      this.failInflight();
    }
    this.broadcast(state);
  }

  private broadcast(state: BusState): void {
    for (const p of this.hub.ports()) {
      if (p.id !== this.port.id) this.hub.injectBusState(p.id, state);
    }
  }

  private failInflight(): void {
    for (let f = this.inflight.shift(); f !== undefined; f = this.inflight.shift()) this.fail(f);
    this.inflightAt.clear();
    for (let f = this.pendingRetry.shift(); f !== undefined; f = this.pendingRetry.shift()) this.fail(f);
  }

  // ---- link state ------------------------------------------------------------------------------

  private linkLost(reason: string): void {
    if (this.link === 'down') return;
    this.link = 'down';
    this.stats.down++;
    this.log.warn('host interface lost; guests on this bus get NOT_OK until it is back', { reason });
    this.closeSocket();
    this.failInflight();
    // Refuse guests' frames (the hub then fails their requests) until the interface is back.
    this.port.setReceiving(false);
    // For the guests the controller left the bus on its own: that is bus-off (status bit 0 and a
    // config-change notification); they restart it with START once the interface is back.
    this.broadcast('bus-off');
  }

  /** Periodic: notice an interface that went away or down, and reattach when it is back up. */
  checkLink(): void {
    if (this.closed) return;
    let info: ReturnType<SocketCanNative['canIfInfo']> | null = null;
    try {
      info = this.native.canIfInfo(this.ifname);
    } catch {
      info = null;
    }
    const usable = info?.isCan === true && info.up;
    if (!usable) {
      this.linkLost(info === null ? 'interface disappeared' : 'interface is down');
      return;
    }
    // Frames written long ago and never echoed (no ACK on a real bus, a lost echo): fail them.
    const now = Date.now();
    while (this.inflightAt.size > 0 && now - this.inflightAt.peek()! > this.confirmTimeoutMs) {
      this.inflightAt.shift();
      this.fail(this.inflight.shift()!);
    }
    if (this.link === 'down') {
      try {
        // The interface may have come back with a smaller MTU: FD frames then cannot go out.
        this.fd = info!.mtu >= LinuxCan.CANFD_MTU && this.fd;
        this.port.setAcceptPolicy({ classic: true, fd: this.fd, rtr: true });
        this.openSocket();
        this.stats.reattached++;
        this.log.info('host interface is back; reattached');
        this.broadcast('error-active');
      } catch (err) {
        this.log.warn('cannot reattach the host interface yet', { reason: (err as Error).message });
      }
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.batcher.close(); // a pending flush does nothing
    if (this.checkTimer !== null) clearInterval(this.checkTimer);
    this.closeSocket();
    this.failInflight();
    this.port.detach();
  }
}

const EMPTY: Uint8Array = new Uint8Array(0);
