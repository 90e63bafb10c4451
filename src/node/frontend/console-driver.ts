/**
 * Plays the Linux virtio_console driver (drivers/char/virtio_console.c) on top of the TypeScript
 * front-end, as it behaves on a real guest:
 *
 * - Features: Linux's table is SIZE and MULTIPORT (plus VERSION_1 and the ring features);
 *   EMERG_WRITE only when a test asks for it. With MULTIPORT, max_nr_ports is read from config
 *   space and 2 * (max_nr_ports + 1) queues are set up, otherwise 2.
 * - Probe: DRIVER_OK first (all rings started), then the control receiveq is filled with page-sized
 *   buffers (a kick per buffer), then DEVICE_READY(id 0xFFFFFFFF, value 1). Without MULTIPORT port 0
 *   is added at once as the console (its receiveq filled, no control traffic).
 * - Control messages from the device are handled one by one, in ring order, each buffer re-posted
 *   after it was handled: PORT_ADD creates the port (receiveq filled, PORT_READY(id, 1); an existing
 *   port gets PORT_READY again; id >= max_nr_ports is ignored), CONSOLE_PORT makes it the console
 *   and answers PORT_OPEN(id, 1), RESIZE is read as cols, rows (rows, cols with
 *   `legacyResizeOrder`, Linux before 6.15) for console ports only, PORT_NAME takes used length - 8
 *   bytes (first one wins), PORT_OPEN records the host side, PORT_REMOVE unplugs. Messages for
 *   unknown ports are dropped.
 * - Control sends wait for their completion (Linux spins on the control transmitq), one at a time.
 * - Writes go out in chunks of at most 32 KiB, one buffer each, each awaited (a blocking write).
 *   A generic port must be open; a blocking write waits for the host side (`force` skips that).
 * - Data buffers returned on a port nobody has open are discarded (counted), like Linux. Other
 *   data buffers are read at once (as if a reader were waiting) and re-posted; with `holdRx` they
 *   are kept until repostRx(), to play a guest whose reader is slow.
 * - Without MULTIPORT a config change makes the driver re-read cols and rows from config space.
 *
 * Unlike Linux it records everything: every control message the device wrote (with its exact used
 * length), every data buffer (used length, overrun of the posted length), every control message
 * it sent and its used length. A used control buffer shorter than 8 bytes is recorded and counted
 * but not interpreted (Linux would read stale bytes). A background pump handles control and data
 * buffers as their interrupts arrive, until the front-end closes or `shutdown()` is called.
 */
import {
  CONSOLE_BAD_ID,
  CONSOLE_CONTROL_SIZE,
  CONSOLE_MAX_PORTS,
  ConsoleConfig,
  ConsoleEvent,
  ConsoleFeature,
  ConsoleQueue,
  portRxQueue,
  portTxQueue,
} from '../../core/devices/console/constants.js';
import { ProtocolFeature } from '../../core/vhost-user/protocol.js';
import { featureBit, featureMask, hasFeature, VirtioFeature } from '../../core/virtio/features.js';
import type { DriverQueue } from './driver-queue.js';
import { FrontendError } from './errors.js';
import type { InitOptions, VhostUserFrontend } from './frontend.js';
import type { GuestRam } from './guest-ram.js';

/** Linux's feature table (SIZE, MULTIPORT) plus VERSION_1 and the ring features. */
export const CONSOLE_DRIVER_FEATURES = featureMask(
  VirtioFeature.VERSION_1,
  ConsoleFeature.SIZE,
  ConsoleFeature.MULTIPORT,
  VirtioFeature.RING_EVENT_IDX,
  VirtioFeature.RING_INDIRECT_DESC,
);

/** PAGE_SIZE: every receive buffer Linux posts. */
export const CONSOLE_PAGE = 4096;
/** Linux's largest single write buffer (port_fops_write). */
export const CONSOLE_WRITE_CHUNK = 32 * 1024;

export interface ConsoleDriverOptions {
  /** Exact features to accept (default: the offered part of CONSOLE_DRIVER_FEATURES). */
  features?: bigint;
  /** Also accept EMERG_WRITE (Linux never does). */
  emergWrite?: boolean;
  /** false: do not accept MULTIPORT (the legacy single-console mode). */
  multiport?: boolean;
  /** Queues the front-end's init() sets up when the driver runs it (default 2 * (ports + 1)). */
  initQueues?: number;
  /** Expected max_nr_ports, used only for the default of initQueues (default 1). */
  ports?: number;
  /** Size of every queue (default 64). */
  queueSize?: number;
  /** Buffers posted per port receiveq (default: the queue size, fill_queue fills the ring). */
  rxBuffers?: number;
  /** Buffers posted on the control receiveq (default: the queue size). */
  controlBuffers?: number;
  /** Receive buffer size (default 4096). */
  bufferSize?: number;
  /** Read RESIZE as rows, cols (Linux before 6.15). */
  legacyResizeOrder?: boolean;
  /** Do not re-post data buffers once read: tests re-post them with repostRx(). */
  holdRx?: boolean;
  /** Do not send DEVICE_READY in start() (tests send it with sendControl). */
  noDeviceReady?: boolean;
  /** Wait limit (ms), default 5000. */
  timeoutMs?: number;
  init?: Omit<InitOptions, 'numQueues'>;
}

/** A control message the device wrote into a control receiveq buffer. */
export interface ConsoleControlIn {
  id: number;
  event: number;
  value: number;
  /** Used length reported by the device. */
  usedLen: number;
  /** Bytes after the 8-byte header, up to the used length. */
  payload: Uint8Array;
  /** The device wrote past the posted buffer (guard bytes changed) or reported more than it. */
  overrun: boolean;
}

/** A control message the driver sent, with the used length the device returned. */
export interface ConsoleControlOut {
  id: number;
  event: number;
  value: number;
  bytes: Uint8Array;
  usedLen: number;
}

/** One used data buffer of a port receiveq. */
export interface ConsoleRxBuffer {
  port: number;
  usedLen: number;
  data: Uint8Array;
  /** Bytes thrown away because nobody had the port open (Linux discard_port_data). */
  discarded: boolean;
  overrun: boolean;
}

/** One write buffer and the used length it came back with. */
export interface ConsoleTxBuffer {
  port: number;
  len: number;
  usedLen: number;
}

export interface ConsolePortView {
  id: number;
  console: boolean;
  name: string | undefined;
  /** The device said the host side is open (PORT_OPEN 1). */
  hostConnected: boolean;
  /** The guest side is open (console, or open() on a generic port). */
  guestConnected: boolean;
  /** Bytes received while the port was open and not yet read. */
  pending: number;
  /** Bytes discarded because the port was not open. */
  discarded: number;
  removed: boolean;
}

export interface ConsoleDriverStats {
  /** Control messages dropped: unknown port, unknown event, bad PORT_ADD id. */
  controlDropped: number;
  /** Used control buffers shorter than the 8-byte header. */
  controlShort: number;
  /** Used entries whose head was not one of our buffers. */
  unknownUsed: number;
  /** Config-change notifications received (non-MULTIPORT re-reads the size). */
  configChanges: number;
}

interface Port {
  id: number;
  rxq: DriverQueue;
  txq: DriverQueue;
  console: boolean;
  name: string | undefined;
  hostConnected: boolean;
  guestConnected: boolean;
  removed: boolean;
  rxBufs: Map<number, number>;
  held: number[];
  chunks: Uint8Array[];
  pending: number;
  discarded: number;
  txBuf: number;
}

const GUARD = 16;
const GUARD_BYTE = 0xcc;
const TEXT = new TextDecoder();

export class ConsoleTestDriver {
  readonly frontend: VhostUserFrontend;
  readonly ram: GuestRam;
  readonly stats: ConsoleDriverStats = {
    controlDropped: 0,
    controlShort: 0,
    unknownUsed: 0,
    configChanges: 0,
  };
  /** Every control message the device sent, in order. */
  readonly controlIn: ConsoleControlIn[] = [];
  /** Every control message the driver sent, in order. */
  readonly controlOut: ConsoleControlOut[] = [];
  /** Every used data buffer, in order. */
  readonly rxLog: ConsoleRxBuffer[] = [];
  /** Every write buffer, in order. */
  readonly txLog: ConsoleTxBuffer[] = [];
  /** Sizes read from config space after config changes (non-MULTIPORT). */
  readonly configSizes: { cols: number; rows: number }[] = [];

  private readonly opts: ConsoleDriverOptions;
  private readonly timeoutMs: number;
  private readonly bufSize: number;
  private queueList: readonly DriverQueue[] = [];
  private negotiated = 0n;
  private maxPorts = 1;
  private readonly portMap = new Map<number, Port>();
  private readonly ctrlBufs = new Map<number, number>();
  private ctrlSendBuf = 0;
  private ctrlLock: Promise<unknown> = Promise.resolve();
  private consoleSize: { cols: number; rows: number } | null = null;
  private stopped = false;
  private pumpDone: Promise<void> = Promise.resolve();
  private pumpError: Error | null = null;
  private readonly armed = new Map<DriverQueue, Promise<void>>();
  private readonly watchers = new Set<() => void>();
  private offConfig: (() => void) | null = null;

  constructor(frontend: VhostUserFrontend, ram: GuestRam, opts: ConsoleDriverOptions = {}) {
    this.frontend = frontend;
    this.ram = ram;
    this.opts = opts;
    this.timeoutMs = opts.timeoutMs ?? 5000;
    this.bufSize = opts.bufferSize ?? CONSOLE_PAGE;
  }

  /** Runs init() if the front-end has not, then start(). */
  static async create(
    frontend: VhostUserFrontend,
    ram: GuestRam,
    opts: ConsoleDriverOptions = {},
  ): Promise<ConsoleTestDriver> {
    const d = new ConsoleTestDriver(frontend, ram, opts);
    await d.start();
    return d;
  }

  get features(): bigint {
    return this.negotiated;
  }

  get multiport(): boolean {
    return hasFeature(this.negotiated, ConsoleFeature.MULTIPORT);
  }

  /** max_nr_ports as read from config space (1 without MULTIPORT). */
  get maxNrPorts(): number {
    return this.maxPorts;
  }

  get queues(): readonly DriverQueue[] {
    return this.queueList;
  }

  queue(i: number): DriverQueue {
    const q = this.queueList[i];
    if (q === undefined) throw new FrontendError('ERR_FRONTEND_ARG', `no queue ${i}`);
    return q;
  }

  /** The console size the guest knows (RESIZE or config space), null before any. */
  get size(): { cols: number; rows: number } | null {
    return this.consoleSize === null ? null : { ...this.consoleSize };
  }

  /** An error that stopped the background pump, if any. */
  get error(): Error | null {
    return this.pumpError;
  }

  /** Probe: features, DRIVER_OK (ring start), control buffers, DEVICE_READY. */
  async start(): Promise<void> {
    const fe = this.frontend;
    const o = this.opts;
    if (fe.negotiated === null) {
      await fe.init({ ...o.init, numQueues: o.initQueues ?? 2 * ((o.ports ?? 1) + 1) });
    }
    const offered = fe.negotiated!.features;
    let want = CONSOLE_DRIVER_FEATURES;
    if (o.emergWrite) want |= featureBit(ConsoleFeature.EMERG_WRITE);
    if (o.multiport === false) want &= ~featureBit(ConsoleFeature.MULTIPORT);
    this.negotiated = o.features ?? offered & want;
    this.maxPorts = 1;
    if (this.multiport) {
      const c = await fe.getConfig(ConsoleConfig.MAX_NR_PORTS, 4);
      const n = new DataView(c.data.buffer, c.data.byteOffset, 4).getUint32(0, true);
      if (n === 0 || n > CONSOLE_MAX_PORTS) {
        throw new FrontendError('ERR_FRONTEND_BAD_REPLY', `max_nr_ports ${n} (Linux refuses the device)`);
      }
      this.maxPorts = n;
    }
    const nq = this.multiport ? 2 * (this.maxPorts + 1) : 2;
    const size = o.queueSize ?? 64;
    this.queueList = await fe.start({
      features: this.negotiated,
      queues: Array.from({ length: nq }, () => ({ size })),
      memory: this.ram,
    });
    this.ctrlSendBuf = this.ram.alloc(CONSOLE_PAGE, 8);
    this.offConfig = fe.on('configChange', () => {
      this.stats.configChanges++;
      if (!this.multiport) void this.readConfigSize();
    });
    if (this.multiport) {
      const rx = this.queue(ConsoleQueue.CTRL_RX);
      const n = Math.min(o.controlBuffers ?? size, size);
      for (let i = 0; i < n; i++) {
        const gpa = this.ram.alloc(this.bufSize + GUARD, 8);
        this.postBuffer(rx, gpa, this.ctrlBufs);
        rx.kick();
      }
    } else {
      this.addPort(0);
    }
    this.pumpDone = this.pump();
    if (this.multiport && !o.noDeviceReady) {
      await this.sendControl(CONSOLE_BAD_ID, ConsoleEvent.DEVICE_READY, 1);
    }
  }

  /** Stops the background pump (the front-end stays open). */
  async shutdown(): Promise<void> {
    this.stopped = true;
    this.offConfig?.();
    this.offConfig = null;
    this.wake();
    await this.pumpDone;
  }

  // ---- ports ----------------------------------------------------------------------------------

  /** Port ids known to the driver (added and not removed). */
  portIds(): number[] {
    return [...this.portMap.values()].filter((p) => !p.removed).map((p) => p.id);
  }

  port(id: number): ConsolePortView | undefined {
    const p = this.portMap.get(id);
    if (p === undefined) return undefined;
    return {
      id: p.id,
      console: p.console,
      name: p.name,
      hostConnected: p.hostConnected,
      guestConnected: p.guestConnected,
      pending: p.pending,
      discarded: p.discarded,
      removed: p.removed,
    };
  }

  portName(id: number): string | undefined {
    return this.portMap.get(id)?.name;
  }

  hostConnected(id: number): boolean {
    return this.portMap.get(id)?.hostConnected ?? false;
  }

  private need(id: number): Port {
    const p = this.portMap.get(id);
    if (p === undefined || p.removed) throw new FrontendError('ERR_FRONTEND_STATE', `no port ${id}`);
    return p;
  }

  /** open() of /dev/vportNpM: refused for console ports and ports already open; PORT_OPEN(id, 1). */
  async openPort(id: number): Promise<void> {
    const p = this.need(id);
    if (p.console) throw new FrontendError('ERR_FRONTEND_STATE', `port ${id} is a console (ENXIO)`);
    if (p.guestConnected)
      throw new FrontendError('ERR_FRONTEND_STATE', `port ${id} is already open (EMFILE)`);
    p.guestConnected = true;
    await this.sendControl(id, ConsoleEvent.PORT_OPEN, 1);
  }

  /** close() of the port: PORT_OPEN(id, 0), then unread data is discarded. */
  async closePort(id: number): Promise<void> {
    const p = this.need(id);
    await this.sendControl(id, ConsoleEvent.PORT_OPEN, 0);
    p.guestConnected = false;
    p.discarded += p.pending;
    p.chunks = [];
    p.pending = 0;
  }

  // ---- control --------------------------------------------------------------------------------

  /** Sends one control message and waits for its completion; resolves with the used length. */
  sendControl(id: number, event: number, value: number, extra?: Uint8Array): Promise<number> {
    const m = new Uint8Array(CONSOLE_CONTROL_SIZE + (extra?.byteLength ?? 0));
    const dv = new DataView(m.buffer);
    dv.setUint32(0, id, true);
    dv.setUint16(4, event, true);
    dv.setUint16(6, value, true);
    if (extra !== undefined) m.set(extra, CONSOLE_CONTROL_SIZE);
    return this.sendControlRaw(m);
  }

  /**
   * Sends any bytes as one control transmitq chain (malformed-input tests): `writable` adds a
   * writable segment of that many bytes, `indirect` puts the chain in an indirect table. An empty
   * `bytes` with no writable part is refused (a chain needs a segment). Resolves with the used length.
   */
  sendControlRaw(bytes: Uint8Array, opts: { writable?: number; indirect?: boolean } = {}): Promise<number> {
    const run = async (): Promise<number> => {
      const q = this.queue(ConsoleQueue.CTRL_TX);
      if (bytes.byteLength > CONSOLE_PAGE)
        throw new FrontendError('ERR_FRONTEND_ARG', 'control message too long');
      this.ram.write(this.ctrlSendBuf, bytes);
      const readable = bytes.byteLength > 0 ? [{ gpa: this.ctrlSendBuf, len: bytes.byteLength }] : [];
      const writable =
        opts.writable !== undefined && opts.writable > 0
          ? [{ gpa: this.ram.alloc(opts.writable, 8), len: opts.writable }]
          : [];
      const head = q.add(
        readable,
        writable,
        opts.indirect
          ? { indirectTableGpa: this.ram.alloc(16 * (readable.length + writable.length), 16) }
          : {},
      );
      const done = q.waitFor(head, this.timeoutMs);
      q.kick();
      const usedLen = await done;
      const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      this.controlOut.push({
        id: bytes.byteLength >= 4 ? dv.getUint32(0, true) : -1,
        event: bytes.byteLength >= 6 ? dv.getUint16(4, true) : -1,
        value: bytes.byteLength >= 8 ? dv.getUint16(6, true) : -1,
        bytes: bytes.slice(),
        usedLen,
      });
      return usedLen;
    };
    const p = this.ctrlLock.then(run, run);
    this.ctrlLock = p.catch(() => {});
    return p;
  }

  /** Emergency write: SET_CONFIG of the u32 emerg_wr (offset 8) with `byte` in its low byte. */
  async emergWrite(byte: number): Promise<number | undefined> {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, byte & 0xff, true);
    const replyAck = hasFeature(this.frontend.protocolFeatures, ProtocolFeature.REPLY_ACK);
    return this.frontend.setConfig(ConsoleConfig.EMERG_WR, b, replyAck ? { needReply: true } : {});
  }

  /** Control messages from the device with this event (in order). */
  controlEvents(event: number): ConsoleControlIn[] {
    return this.controlIn.filter((m) => m.event === event);
  }

  // ---- data -----------------------------------------------------------------------------------

  /**
   * A blocking write(): chunks of at most `chunk` bytes (default 32 KiB), one buffer each, each
   * awaited. A generic port must be open and, unless `force`, the host side connected (waited for).
   * Resolves with the used lengths.
   */
  async write(
    id: number,
    bytes: Uint8Array,
    opts: { chunk?: number; indirect?: boolean; force?: boolean } = {},
  ): Promise<number[]> {
    const p = this.need(id);
    if (!opts.force) {
      if (!p.guestConnected) throw new FrontendError('ERR_FRONTEND_STATE', `port ${id} is not open`);
      if (!p.console && !p.hostConnected) {
        await this.waitUntil(`host side of port ${id}`, () => p.hostConnected);
      }
    }
    const chunk = Math.min(opts.chunk ?? CONSOLE_WRITE_CHUNK, CONSOLE_WRITE_CHUNK);
    if (p.txBuf === 0) p.txBuf = this.ram.alloc(CONSOLE_WRITE_CHUNK, 8);
    const used: number[] = [];
    for (let off = 0; off < bytes.byteLength; off += chunk) {
      const part = bytes.subarray(off, Math.min(bytes.byteLength, off + chunk));
      this.ram.write(p.txBuf, part);
      const head = p.txq.add(
        [{ gpa: p.txBuf, len: part.byteLength }],
        [],
        opts.indirect ? { indirectTableGpa: this.ram.alloc(16, 16) } : {},
      );
      const done = p.txq.waitFor(head, this.timeoutMs);
      p.txq.kick();
      const usedLen = await done;
      this.txLog.push({ port: id, len: part.byteLength, usedLen });
      used.push(usedLen);
    }
    return used;
  }

  /** Takes the bytes received on port `id` so far. */
  read(id: number): Uint8Array {
    const p = this.need(id);
    const out = concat(p.chunks, p.pending);
    p.chunks = [];
    p.pending = 0;
    return out;
  }

  /** Waits until at least `n` unread bytes arrived on port `id`, then takes them all. */
  async waitOutput(id: number, n: number, timeoutMs = this.timeoutMs): Promise<Uint8Array> {
    const p = this.need(id);
    await this.waitUntil(`${n} bytes on port ${id}`, () => p.pending >= n, timeoutMs);
    return this.read(id);
  }

  /** holdRx mode: re-posts the held buffers of port `id` (one kick). Returns how many. */
  repostRx(id: number): number {
    const p = this.need(id);
    const held = p.held.splice(0);
    for (const gpa of held) this.postBuffer(p.rxq, gpa, p.rxBufs);
    if (held.length > 0) p.rxq.kick();
    return held.length;
  }

  /** Buffers of port `id` posted and not yet returned. */
  postedRx(id: number): number {
    return this.need(id).rxBufs.size;
  }

  // ---- waiting --------------------------------------------------------------------------------

  /** Resolves once `pred` holds (checked after every pump pass); rejects ERR_FRONTEND_TIMEOUT. */
  waitUntil(what: string, pred: () => boolean, timeoutMs = this.timeoutMs): Promise<void> {
    if (this.pumpError !== null) return Promise.reject(this.pumpError);
    if (pred()) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const check = (): void => {
        if (this.pumpError !== null) {
          done();
          reject(this.pumpError);
        } else if (pred()) {
          done();
          resolve();
        }
      };
      const timer = setTimeout(() => {
        this.watchers.delete(check);
        reject(
          new FrontendError('ERR_FRONTEND_TIMEOUT', `console driver: ${what} not within ${timeoutMs} ms`),
        );
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        this.watchers.delete(check);
      };
      this.watchers.add(check);
    });
  }

  /** Waits until `n` control messages with `event` arrived (all, in order). */
  async waitControl(event: number, n = 1, timeoutMs = this.timeoutMs): Promise<ConsoleControlIn[]> {
    await this.waitUntil(
      `${n} control event(s) ${event}`,
      () => this.controlEvents(event).length >= n,
      timeoutMs,
    );
    return this.controlEvents(event);
  }

  /** Waits until the console port exists, is marked console and its PORT_OPEN went out. */
  async waitConsole(timeoutMs = this.timeoutMs): Promise<number> {
    let id = -1;
    await this.waitUntil(
      'a console port',
      () => {
        for (const p of this.portMap.values()) {
          if (p.console && !p.removed && (!this.multiport || this.sentOpen(p.id))) {
            id = p.id;
            return true;
          }
        }
        return false;
      },
      timeoutMs,
    );
    return id;
  }

  private sentOpen(id: number): boolean {
    return this.controlOut.some((m) => m.id === id && m.event === ConsoleEvent.PORT_OPEN && m.value === 1);
  }

  // ---- the pump -------------------------------------------------------------------------------

  private async pump(): Promise<void> {
    try {
      while (!this.stopped && !this.frontendGone()) {
        const progressed = await this.processAll();
        this.notify();
        if (progressed) continue;
        await this.waitAny();
      }
    } catch (err) {
      if (!this.frontendGone() && !this.stopped) this.pumpError = err as Error;
      this.notify();
    }
  }

  private frontendGone(): boolean {
    return !this.frontend.isOpen || (this.queueList[0]?.isClosed ?? true);
  }

  private wakeFn: (() => void) | null = null;
  private wake(): void {
    this.wakeFn?.();
  }

  private notify(): void {
    for (const w of [...this.watchers]) w();
  }

  private waitAny(): Promise<void> {
    const qs: DriverQueue[] = [];
    if (this.multiport) qs.push(this.queue(ConsoleQueue.CTRL_RX));
    for (const p of this.portMap.values()) if (!p.removed) qs.push(p.rxq);
    const ps: Promise<void>[] = [];
    for (const q of qs) {
      let w = this.armed.get(q);
      if (w === undefined) {
        w = q
          .waitUsed(1000)
          .catch(() => {})
          .finally(() => this.armed.delete(q));
        this.armed.set(q, w);
      }
      ps.push(w);
    }
    ps.push(
      new Promise<void>((resolve) => {
        this.wakeFn = resolve;
      }),
    );
    return Promise.race(ps);
  }

  private async processAll(): Promise<boolean> {
    let any = false;
    if (this.multiport) {
      const rx = this.queue(ConsoleQueue.CTRL_RX);
      const batch = this.claim(rx, this.ctrlBufs);
      for (const b of batch) {
        any = true;
        await this.handleControl(b.gpa, b.len);
        this.postBuffer(rx, b.gpa, this.ctrlBufs);
        rx.kick();
      }
    }
    for (const p of [...this.portMap.values()]) {
      if (p.removed) continue;
      const batch = this.claim(p.rxq, p.rxBufs);
      for (const b of batch) {
        any = true;
        this.handleData(p, b.gpa, b.len);
      }
      if (batch.length > 0 && !this.opts.holdRx) p.rxq.kick();
    }
    return any;
  }

  /** Takes used entries and maps them to buffers before anything is re-posted (heads get reused). */
  private claim(q: DriverQueue, bufs: Map<number, number>): { gpa: number; len: number }[] {
    const out: { gpa: number; len: number }[] = [];
    for (const u of q.takeUsed()) {
      const gpa = bufs.get(u.head);
      if (gpa === undefined) {
        this.stats.unknownUsed++;
        continue;
      }
      bufs.delete(u.head);
      out.push({ gpa, len: u.len });
    }
    return out;
  }

  private postBuffer(q: DriverQueue, gpa: number, bufs: Map<number, number>): void {
    this.ram.write(gpa + this.bufSize, new Uint8Array(GUARD).fill(GUARD_BYTE));
    const head = q.add([], [{ gpa, len: this.bufSize }]);
    bufs.set(head, gpa);
  }

  private readBuffer(gpa: number, usedLen: number): { data: Uint8Array; overrun: boolean } {
    const raw = this.ram.read(gpa, this.bufSize + GUARD);
    let overrun = usedLen > this.bufSize;
    for (let i = this.bufSize; i < raw.length; i++) if (raw[i] !== GUARD_BYTE) overrun = true;
    return { data: raw.slice(0, Math.min(usedLen, this.bufSize)), overrun };
  }

  private handleData(p: Port, gpa: number, usedLen: number): void {
    const { data, overrun } = this.readBuffer(gpa, usedLen);
    const discarded = !p.guestConnected;
    this.rxLog.push({ port: p.id, usedLen, data, discarded, overrun });
    if (discarded) p.discarded += data.byteLength;
    else if (data.byteLength > 0) {
      p.chunks.push(data);
      p.pending += data.byteLength;
    }
    if (this.opts.holdRx) p.held.push(gpa);
    else this.postBuffer(p.rxq, gpa, p.rxBufs);
  }

  private async handleControl(gpa: number, usedLen: number): Promise<void> {
    const { data, overrun } = this.readBuffer(gpa, usedLen);
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const short = data.byteLength < CONSOLE_CONTROL_SIZE;
    const m: ConsoleControlIn = {
      id: short ? -1 : dv.getUint32(0, true),
      event: short ? -1 : dv.getUint16(4, true),
      value: short ? -1 : dv.getUint16(6, true),
      usedLen,
      payload: data.slice(Math.min(CONSOLE_CONTROL_SIZE, data.byteLength)),
      overrun,
    };
    this.controlIn.push(m);
    if (short) {
      this.stats.controlShort++;
      return;
    }
    const port = this.portMap.get(m.id);
    const live = port !== undefined && !port.removed ? port : undefined;
    if (live === undefined && m.event !== ConsoleEvent.PORT_ADD) {
      this.stats.controlDropped++;
      return;
    }
    switch (m.event) {
      case ConsoleEvent.PORT_ADD:
        if (live !== undefined) {
          await this.sendControl(m.id, ConsoleEvent.PORT_READY, 1);
          return;
        }
        if (m.id >= this.maxPorts) {
          this.stats.controlDropped++;
          return;
        }
        this.addPort(m.id);
        await this.sendControl(m.id, ConsoleEvent.PORT_READY, 1);
        return;
      case ConsoleEvent.PORT_REMOVE:
        live!.removed = true;
        live!.guestConnected = false;
        live!.hostConnected = false;
        return;
      case ConsoleEvent.CONSOLE_PORT:
        if (m.value === 0 || live!.console) return;
        live!.console = true;
        live!.guestConnected = true;
        await this.sendControl(m.id, ConsoleEvent.PORT_OPEN, 1);
        return;
      case ConsoleEvent.RESIZE: {
        if (!live!.console) return;
        const pv = new DataView(m.payload.buffer, m.payload.byteOffset, m.payload.byteLength);
        const a = m.payload.byteLength >= 2 ? pv.getUint16(0, true) : 0;
        const b = m.payload.byteLength >= 4 ? pv.getUint16(2, true) : 0;
        this.consoleSize = this.opts.legacyResizeOrder ? { cols: b, rows: a } : { cols: a, rows: b };
        return;
      }
      case ConsoleEvent.PORT_OPEN:
        live!.hostConnected = m.value !== 0;
        return;
      case ConsoleEvent.PORT_NAME: {
        if (live!.name !== undefined) return;
        const nul = m.payload.indexOf(0);
        live!.name = TEXT.decode(nul >= 0 ? m.payload.subarray(0, nul) : m.payload);
        return;
      }
      default:
        this.stats.controlDropped++;
    }
  }

  private addPort(id: number): void {
    const rxq = this.queue(portRxQueue(id));
    const txq = this.queue(portTxQueue(id));
    const p: Port = {
      id,
      rxq,
      txq,
      console: false,
      name: undefined,
      hostConnected: false,
      guestConnected: false,
      removed: false,
      rxBufs: new Map(),
      held: [],
      chunks: [],
      pending: 0,
      discarded: 0,
      txBuf: 0,
    };
    const n = Math.min(this.opts.rxBuffers ?? rxq.size, rxq.size);
    for (let i = 0; i < n; i++) {
      this.postBuffer(rxq, this.ram.alloc(this.bufSize + GUARD, 8), p.rxBufs);
      rxq.kick();
    }
    if (!this.multiport) {
      p.console = true;
      p.guestConnected = true;
    }
    this.portMap.set(id, p);
    this.wake();
  }

  private async readConfigSize(): Promise<void> {
    try {
      const c = await this.frontend.getConfig(ConsoleConfig.COLS, 4);
      const dv = new DataView(c.data.buffer, c.data.byteOffset, 4);
      const s = { cols: dv.getUint16(0, true), rows: dv.getUint16(2, true) };
      this.consoleSize = s;
      this.configSizes.push(s);
    } catch (err) {
      if (this.frontend.isOpen) this.pumpError = err as Error;
    }
    this.notify();
  }
}

function concat(chunks: readonly Uint8Array[], total: number): Uint8Array {
  const out = new Uint8Array(total);
  let o = 0;
  for (const c of chunks) {
    out.set(c, o);
    o += c.byteLength;
  }
  return out;
}
