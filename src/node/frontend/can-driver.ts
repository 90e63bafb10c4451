/**
 * Plays the mainline Linux virtio_can driver (drivers/net/can/virtio_can.c; docs/protocol-notes.md 4) on top
 * of the TypeScript front-end: feature negotiation, RX buffers posted before DRIVER_OK (so the
 * back-end must scan the ring without a kick), TX as 16+len readable bytes + 1 writable result
 * byte (optionally through an indirect table), control requests as 2 + 1 bytes, RX decoding and
 * re-posting, and the config-space status read.
 *
 * Unlike Linux it drops nothing on RX: every used buffer is decoded and recorded with its used
 * length and raw header fields, so tests can check what the device wrote. A guard area after each
 * RX buffer detects writes past the posted length.
 */
import {
  CAN_HEADER_SIZE,
  CAN_MAX_CLASSIC_LEN,
  CAN_MAX_FD_LEN,
  CAN_NUM_QUEUES,
  CanFeature,
  CanFlag,
  CanHdr,
  CanMsgType,
  CanQueue,
} from '../../core/devices/can/constants.js';
import { DriverRingError } from '../../core/virtio/driver-ring.js';
import { featureMask, hasFeature, VirtioFeature } from '../../core/virtio/features.js';
import type { DriverQueue } from './driver-queue.js';
import { FrontendError } from './errors.js';
import type { InitOptions, VhostUserFrontend } from './frontend.js';
import type { GuestRam } from './guest-ram.js';

/** What the driver accepts when the device offers it (Linux's feature table plus ring features). */
export const CAN_DRIVER_FEATURES = featureMask(
  VirtioFeature.VERSION_1,
  CanFeature.CAN_CLASSIC,
  CanFeature.CAN_FD,
  CanFeature.RTR_FRAMES,
  CanFeature.LATE_TX_ACK,
  VirtioFeature.RING_EVENT_IDX,
  VirtioFeature.RING_INDIRECT_DESC,
);

export interface CanTxFrame {
  id: number;
  extended?: boolean;
  fd?: boolean;
  rtr?: boolean;
  /** Default: data length (for RTR: the requested DLC, default 0). */
  len?: number;
  data?: Uint8Array | readonly number[];
}

export interface CanSendOptions {
  /** Raw readable bytes instead of an encoded frame (malformed-request tests). */
  raw?: Uint8Array;
  /** Post no writable result byte (the device must return the chain with used length 0). */
  noResultByte?: boolean;
  /** Put the chain into an indirect table. */
  indirect?: boolean;
  timeoutMs?: number;
}

export interface CanRxFrame {
  msgType: number;
  /** The `length` field as written. */
  length: number;
  /** The raw `flags` field. */
  flags: number;
  /** The raw `can_id` field. */
  id: number;
  extended: boolean;
  fd: boolean;
  rtr: boolean;
  reservedClassicDlc: number;
  padding: number;
  reservedXlPriority: number;
  /** Payload bytes: min(length, usedLen - 16) bytes (empty for RTR). */
  data: Uint8Array;
  /** Used length reported by the device. */
  usedLen: number;
  /** Size of the buffer that was posted. */
  bufferLen: number;
  /** True when the device wrote past the posted buffer (the guard area changed). */
  overrun: boolean;
}

export interface CanDriverOptions {
  /** Exact features to accept (default: what the device offers of CAN_DRIVER_FEATURES). */
  features?: bigint;
  /** Size of every queue (QEMU's default vq_size is 64). */
  queueSize?: number;
  /** RX buffers posted before start (default: the queue size). */
  rxBuffers?: number;
  /** SET_VRING_BASE for each queue on the first start (the rings start at these indices). */
  bases?: readonly number[];
  useMemSlots?: boolean;
  /** Wait limit for completions (ms), default 5000. */
  timeoutMs?: number;
  /** Options for the front-end's init() when the driver runs it. */
  init?: Omit<InitOptions, 'numQueues'>;
  /** Leave the rings disabled after start (no SET_VRING_ENABLE(1)). */
  skipEnable?: boolean;
}

interface TxSlot {
  buf: number;
  result: number;
  table: number;
}

const SLOT_BYTES = CAN_HEADER_SIZE + CAN_MAX_FD_LEN;
const GUARD = 16;
const GUARD_BYTE = 0xcc;
const RESULT_SENTINEL = 0xee;

export class CanTestDriver {
  readonly frontend: VhostUserFrontend;
  readonly ram: GuestRam;
  private readonly opts: CanDriverOptions;
  private readonly timeoutMs: number;
  private queueList: readonly DriverQueue[] = [];
  private negotiatedFeatures = 0n;
  private txFree: TxSlot[] = [];
  private ctrlFree: TxSlot[] = [];
  private readonly txHeads = new Map<number, TxSlot>();
  private readonly rxBufs = new Map<number, number>();
  private rxBufLen = 0;
  private frames: CanRxFrame[] = [];
  private total = 0;

  constructor(frontend: VhostUserFrontend, ram: GuestRam, opts: CanDriverOptions = {}) {
    this.frontend = frontend;
    this.ram = ram;
    this.opts = opts;
    this.timeoutMs = opts.timeoutMs ?? 5000;
  }

  /** Runs init() if the front-end has not, then start(). */
  static async create(
    frontend: VhostUserFrontend,
    ram: GuestRam,
    opts: CanDriverOptions = {},
  ): Promise<CanTestDriver> {
    const d = new CanTestDriver(frontend, ram, opts);
    await d.start();
    return d;
  }

  /** Features accepted in SET_FEATURES (without bit 30). */
  get features(): bigint {
    return this.negotiatedFeatures;
  }

  get fdNegotiated(): boolean {
    return hasFeature(this.negotiatedFeatures, CanFeature.CAN_FD);
  }

  get queues(): readonly DriverQueue[] {
    return this.queueList;
  }

  get tx(): DriverQueue {
    return this.queue(CanQueue.TX);
  }

  get rx(): DriverQueue {
    return this.queue(CanQueue.RX);
  }

  get ctrl(): DriverQueue {
    return this.queue(CanQueue.CTRL);
  }

  private queue(i: number): DriverQueue {
    const q = this.queueList[i];
    if (q === undefined) throw new FrontendError('ERR_FRONTEND_STATE', 'the CAN driver is not started');
    return q;
  }

  /** Size of each posted RX buffer: 16 + 64 with CAN_FD, 16 + 8 without. */
  get rxBufferSize(): number {
    return this.rxBufLen;
  }

  /**
   * Probe + DRIVER_OK: negotiates features, posts every RX buffer into the RX ring before the
   * start sequence (no kick), then runs the front-end's start sequence.
   */
  async start(): Promise<void> {
    const fe = this.frontend;
    if (fe.negotiated === null) await fe.init({ ...this.opts.init, numQueues: CAN_NUM_QUEUES });
    const offered = fe.negotiated!.features;
    this.negotiatedFeatures = this.opts.features ?? offered & CAN_DRIVER_FEATURES;
    const size = this.opts.queueSize ?? 64;
    this.rxBufLen = CAN_HEADER_SIZE + (this.fdNegotiated ? CAN_MAX_FD_LEN : CAN_MAX_CLASSIC_LEN);
    const rxCount = Math.min(this.opts.rxBuffers ?? size, size);
    this.txHeads.clear();
    this.rxBufs.clear();
    this.txFree = this.allocSlots(size);
    this.ctrlFree = this.allocSlots(Math.max(1, size >> 1));
    this.queueList = await fe.start({
      features: this.negotiatedFeatures,
      queues: [{ size }, { size }, { size }],
      memory: this.ram,
      ...(this.opts.bases === undefined ? {} : { bases: this.opts.bases }),
      ...(this.opts.useMemSlots === undefined ? {} : { useMemSlots: this.opts.useMemSlots }),
      ...(this.opts.skipEnable ? { skipEnable: true } : {}),
      beforeStart: (qs) => {
        const rx = qs[CanQueue.RX]!;
        for (let i = 0; i < rxCount; i++) {
          const gpa = this.ram.alloc(this.rxBufLen + GUARD, 8, 0);
          this.postRx(rx, gpa);
        }
        // Linux kicks here too, during probe; QEMU drops that kick before DRIVER_OK.
        rx.publish();
      },
    });
  }

  private allocSlots(n: number): TxSlot[] {
    const out: TxSlot[] = [];
    for (let i = 0; i < n; i++) {
      out.push({
        buf: this.ram.alloc(SLOT_BYTES, 8, 0),
        result: this.ram.alloc(1, 1, 0),
        table: this.ram.alloc(32, 16, 0),
      });
    }
    return out;
  }

  private postRx(rx: DriverQueue, gpa: number): void {
    this.ram.write(gpa, new Uint8Array(this.rxBufLen + GUARD).fill(GUARD_BYTE));
    const head = rx.add([], [{ gpa, len: this.rxBufLen }]);
    this.rxBufs.set(head, gpa);
  }

  /** Ring stop (VM pause / guest reset): returns the bases. */
  stop(): Promise<number[]> {
    return this.frontend.stop();
  }

  /** Ring restart with the same rings (VM resume). */
  restart(bases: readonly number[]): Promise<void> {
    return this.frontend.restart(bases, this.opts.useMemSlots ? { useMemSlots: true } : {});
  }

  // ---- TX -------------------------------------------------------------------------------------

  /** Encodes virtio_can_tx_out as the Linux driver does (reserved fields zero, payload present for RTR). */
  encodeTx(frame: CanTxFrame): Uint8Array {
    const data = frame.data === undefined ? new Uint8Array(0) : Uint8Array.from(frame.data);
    const len = frame.len ?? (frame.rtr ? 0 : data.length);
    const out = new Uint8Array(CAN_HEADER_SIZE + len);
    const dv = new DataView(out.buffer);
    dv.setUint16(CanHdr.MSG_TYPE, CanMsgType.TX, true);
    dv.setUint16(CanHdr.LENGTH, len, true);
    const flags =
      (frame.extended ? CanFlag.EXTENDED : 0) | (frame.fd ? CanFlag.FD : 0) | (frame.rtr ? CanFlag.RTR : 0);
    dv.setUint32(CanHdr.FLAGS, flags, true);
    dv.setUint32(CanHdr.CAN_ID, frame.id, true);
    if (!frame.rtr) out.set(data.subarray(0, len), CAN_HEADER_SIZE);
    return out;
  }

  /** Sends one frame; resolves with the result byte, or -1 when the used length is 0. */
  async send(frame: CanTxFrame, opts: CanSendOptions = {}): Promise<number> {
    const [r] = await this.sendMany([frame], opts);
    return r!;
  }

  /**
   * Posts every frame, kicks once, and resolves with the result bytes in order. When the ring runs
   * out of descriptors it kicks and waits for completions before posting the rest. When a wait
   * fails (the connection closed, a timeout) it stops posting and rejects at once with that error's
   * code, saying how many frames completed; the waits still running end quietly.
   */
  async sendMany(frames: readonly CanTxFrame[], opts: CanSendOptions = {}): Promise<number[]> {
    const q = this.tx;
    const results = new Array<number>(frames.length).fill(-1);
    const inflight = new Set<Promise<void>>();
    let completed = 0;
    // The first failure. The waits never reject (they record it here), so giving up early leaves
    // no rejected promise behind.
    let failure: unknown = null;
    let onFailure: () => void = () => {};
    const failed = new Promise<void>((resolve) => {
      onFailure = resolve;
    });
    // Woken by every completion (a slot is free again) and by a failure. One waiter at a time:
    // racing every in-flight promise instead costs a reaction per promise per wait, which makes a
    // long flood through a big ring quadratic.
    let slotFreed: (() => void) | null = null;
    const wakeSender = (): void => {
      const w = slotFreed;
      slotFreed = null;
      w?.();
    };
    const check = (): void => {
      if (failure === null && q.isClosed)
        failure = new FrontendError('ERR_FRONTEND_CLOSED', 'the queue is closed');
      if (failure === null) return;
      const code = failure instanceof FrontendError ? failure.code : 'ERR_FRONTEND_IO';
      const why = failure instanceof Error ? failure.message : String(failure);
      throw new FrontendError(code, `TX: ${completed} of ${frames.length} frames completed: ${why}`, {
        cause: failure,
      });
    };
    for (let i = 0; i < frames.length; i++) {
      const bytes = opts.raw ?? this.encodeTx(frames[i]!);
      for (;;) {
        check();
        const posted = this.postTx(q, bytes, opts);
        if (posted !== null) {
          const p: Promise<void> = q
            .waitFor(posted.head, opts.timeoutMs ?? this.timeoutMs)
            .then((len) => {
              results[i] = len >= 1 ? this.ram.read(posted.slot.result, 1)[0]! : -1;
              completed++;
            })
            .catch((err: unknown) => {
              failure ??= err;
              onFailure();
            })
            .finally(() => {
              this.txFree.push(posted.slot);
              inflight.delete(p);
              wakeSender();
            });
          inflight.add(p);
          break;
        }
        if (inflight.size === 0)
          throw new FrontendError('ERR_FRONTEND_STATE', 'TX ring full with nothing in flight');
        q.kick();
        await Promise.race([
          new Promise<void>((resolve) => {
            slotFreed = resolve;
          }),
          failed,
        ]);
      }
    }
    check();
    q.kick();
    await Promise.race([Promise.all(inflight), failed]);
    check();
    return results;
  }

  /** Adds one TX chain; null when no slot or descriptors are free. */
  private postTx(
    q: DriverQueue,
    bytes: Uint8Array,
    opts: CanSendOptions,
  ): { head: number; slot: TxSlot } | null {
    const slot = this.txFree.pop();
    if (slot === undefined) return null;
    let buf = slot.buf;
    if (bytes.byteLength > SLOT_BYTES) buf = this.ram.alloc(bytes.byteLength, 8, 0);
    this.ram.write(buf, bytes);
    this.ram.write(slot.result, Uint8Array.of(RESULT_SENTINEL));
    const readable = bytes.byteLength > 0 ? [{ gpa: buf, len: bytes.byteLength }] : [];
    const writable = opts.noResultByte ? [] : [{ gpa: slot.result, len: 1 }];
    try {
      const head = q.add(readable, writable, opts.indirect ? { indirectTableGpa: slot.table } : {});
      return { head, slot };
    } catch (err) {
      this.txFree.push(slot);
      if (err instanceof DriverRingError && err.code === 'ERR_DRIVER_RING_FULL') return null;
      throw err;
    }
  }

  // ---- control --------------------------------------------------------------------------------

  /**
   * One control request (START 0x0201, STOP 0x0202, or anything): 2 readable bytes + 1 writable
   * result byte. Resolves with the result, or -1 when the used length is 0.
   */
  async control(type: number, opts: CanSendOptions = {}): Promise<number> {
    const q = this.ctrl;
    const slot = this.ctrlFree.pop();
    if (slot === undefined)
      throw new FrontendError('ERR_FRONTEND_STATE', 'too many control requests in flight');
    try {
      const bytes = opts.raw ?? Uint8Array.of(type & 0xff, (type >> 8) & 0xff);
      this.ram.write(slot.buf, bytes);
      this.ram.write(slot.result, Uint8Array.of(RESULT_SENTINEL));
      const head = q.add(
        bytes.byteLength > 0 ? [{ gpa: slot.buf, len: bytes.byteLength }] : [],
        opts.noResultByte ? [] : [{ gpa: slot.result, len: 1 }],
        opts.indirect ? { indirectTableGpa: slot.table } : {},
      );
      const done = q.waitFor(head, opts.timeoutMs ?? this.timeoutMs);
      q.kick();
      const len = await done;
      return len >= 1 ? this.ram.read(slot.result, 1)[0]! : -1;
    } finally {
      this.ctrlFree.push(slot);
    }
  }

  /** ifup: SET_CTRL_MODE_START. */
  startController(): Promise<number> {
    return this.control(CanMsgType.SET_CTRL_MODE_START);
  }

  /** ifdown: SET_CTRL_MODE_STOP. */
  stopController(): Promise<number> {
    return this.control(CanMsgType.SET_CTRL_MODE_STOP);
  }

  // ---- RX -------------------------------------------------------------------------------------

  /** Takes used RX buffers, decodes them, re-posts them (one kick), returns how many were new. */
  pollRx(): number {
    const q = this.rx;
    const used = q.takeUsed();
    if (used.length === 0) return 0;
    // Decode the whole batch before re-posting: takeUsed() already freed every head of the batch,
    // so a re-posted buffer may take a head that is still to be decoded.
    const repost: number[] = [];
    for (const u of used) {
      const gpa = this.rxBufs.get(u.head);
      if (gpa === undefined) continue; // not one of our buffers (a device bug; DriverRing counts it)
      this.rxBufs.delete(u.head);
      this.frames.push(this.decodeRx(gpa, u.len));
      this.total++;
      repost.push(gpa);
    }
    for (const gpa of repost) this.postRx(q, gpa);
    q.kick();
    return used.length;
  }

  private decodeRx(gpa: number, usedLen: number): CanRxFrame {
    const raw = this.ram.read(gpa, this.rxBufLen + GUARD);
    const dv = new DataView(raw.buffer);
    const length = dv.getUint16(CanHdr.LENGTH, true);
    const flags = dv.getUint32(CanHdr.FLAGS, true);
    const rtr = (flags & CanFlag.RTR) !== 0;
    const avail = Math.max(0, Math.min(usedLen, this.rxBufLen) - CAN_HEADER_SIZE);
    const dataLen = rtr ? 0 : Math.min(length, avail);
    let overrun = false;
    for (let i = this.rxBufLen; i < raw.length; i++) if (raw[i] !== GUARD_BYTE) overrun = true;
    return {
      msgType: dv.getUint16(CanHdr.MSG_TYPE, true),
      length,
      flags,
      id: dv.getUint32(CanHdr.CAN_ID, true),
      extended: (flags & CanFlag.EXTENDED) !== 0,
      fd: (flags & CanFlag.FD) !== 0,
      rtr,
      reservedClassicDlc: dv.getUint8(CanHdr.RESERVED_CLASSIC_DLC),
      padding: dv.getUint8(CanHdr.PADDING),
      reservedXlPriority: dv.getUint16(CanHdr.RESERVED_XL_PRIORITY, true),
      data: raw.slice(CAN_HEADER_SIZE, CAN_HEADER_SIZE + dataLen),
      usedLen,
      bufferLen: this.rxBufLen,
      overrun: overrun || usedLen > this.rxBufLen,
    };
  }

  /** Every frame received so far (after collecting new ones). */
  received(): CanRxFrame[] {
    this.pollRx();
    return this.frames.slice();
  }

  /** Frames received so far, removed from the record. */
  takeReceived(): CanRxFrame[] {
    this.pollRx();
    const f = this.frames;
    this.frames = [];
    return f;
  }

  /** Frames received since start (also counts taken ones). */
  get receivedCount(): number {
    return this.total;
  }

  /**
   * Waits until at least `n` frames are recorded (received() minus takeReceived()), re-posting
   * buffers as it goes; resolves with the recorded frames. Rejects ERR_FRONTEND_TIMEOUT.
   */
  async waitFrames(n: number, timeoutMs = this.timeoutMs): Promise<CanRxFrame[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      this.pollRx();
      if (this.frames.length >= n) return this.frames.slice();
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new FrontendError(
          'ERR_FRONTEND_TIMEOUT',
          `${this.frames.length} of ${n} frames received within ${timeoutMs} ms`,
        );
      }
      try {
        await this.rx.waitUsed(left);
      } catch (err) {
        if ((err as { code?: string }).code !== 'ERR_FRONTEND_TIMEOUT') throw err;
      }
    }
  }

  // ---- config ---------------------------------------------------------------------------------

  /** The config-space status (GET_CONFIG(0, 2)): bit 0 = BUSOFF. */
  async readStatus(): Promise<number> {
    const c = await this.frontend.getConfig(0, 2);
    return c.data[0]! | (c.data[1]! << 8);
  }
}
