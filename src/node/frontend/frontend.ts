/**
 * A vhost-user FRONT-END in TypeScript: it plays QEMU (the vhost-user master) over a real Unix
 * socket, with real memfd guest memory and real eventfds, so that a back-end can be driven exactly
 * as QEMU 11 drives it (docs/protocol-notes.md 1.7) — by tests, benchmarks and the vhost-user-probe CLI.
 *
 * VhostUserFrontend is built in three layers, one file each:
 * - frontend-transport.ts: the socket, reply framing and matching, fd passing, pending requests and
 *   their timeouts, events, close, and the back-end channel;
 * - frontend-messages.ts: one typed method per message (getFeatures, setMemTable, setVring*, ...);
 * - this file: the class itself, connect(), and QEMU's init/start/restart/stop choreography with the
 *   rings and eventfds it owns. The types of the lower layers are re-exported from here.
 */
import type { MemRegionDesc } from '../../core/vhost-user/codec.js';
import { DeviceStatus, ProtocolFeature } from '../../core/vhost-user/protocol.js';
import { DriverRing, RING_ALIGN, ringSizes } from '../../core/virtio/driver-ring.js';
import { featureBit, featureMask, hasFeature, VirtioFeature } from '../../core/virtio/features.js';
import { native as defaultNative } from '../native/addon.js';
import { DriverQueue } from './driver-queue.js';
import { FrontendError } from './errors.js';
import { FrontendMessages } from './frontend-messages.js';
import type { AckOptions, FrontendOptions } from './frontend-transport.js';
import type { GuestRam } from './guest-ram.js';

export type {
  AckOptions,
  BackendMessage,
  CallOptions,
  FrontendEvents,
  FrontendOptions,
  FrontendStats,
  RawMessage,
} from './frontend-transport.js';

/** Protocol features this front-end implements (and offers to acknowledge in init()). */
export const FRONTEND_PROTOCOL_FEATURES = featureMask(
  ProtocolFeature.MQ,
  ProtocolFeature.REPLY_ACK,
  ProtocolFeature.BACKEND_REQ,
  ProtocolFeature.CONFIG,
  ProtocolFeature.RESET_DEVICE,
  ProtocolFeature.CONFIGURE_MEM_SLOTS,
  ProtocolFeature.STATUS,
);

const PROTOCOL_FEATURES_BIT = featureBit(VirtioFeature.PROTOCOL_FEATURES);

export interface InitOptions {
  numQueues: number;
  /** Protocol features we are willing to acknowledge (default FRONTEND_PROTOCOL_FEATURES). */
  protocolFeatures?: bigint;
  /** Act as a front-end that ignores bit 30: no protocol features, no SET_VRING_ENABLE. */
  noProtocolFeatures?: boolean;
  /** Like QEMU with config_size = 0: F_CONFIG is not acknowledged. */
  noConfig?: boolean;
}

export interface InitResult {
  /** Device features offered by GET_FEATURES (including bit 30 when offered). */
  features: bigint;
  /** Protocol features offered, and the ones acknowledged. */
  protocolOffered: bigint;
  protocolFeatures: bigint;
  queueNum: number | null;
  maxMemSlots: number | null;
}

export interface StartOptions {
  /** Virtio features the driver accepted; bit 30 is added when protocol features are in use. */
  features: bigint;
  queues: readonly { size: number }[];
  memory: GuestRam;
  /** SET_VRING_BASE per queue (default 0); the rings are initialised at these indices. */
  bases?: readonly number[];
  /** Send ADD_MEM_REG per region instead of SET_MEM_TABLE (needs CONFIGURE_MEM_SLOTS). */
  useMemSlots?: boolean;
  /** Guest RAM region for the rings (default: the last one, which has mmap_offset != 0). */
  ringRegion?: number;
  /**
   * Runs after the rings exist in guest memory and before any message of the start sequence:
   * where a driver posts buffers during probe, before DRIVER_OK (virtio_can.c probe;
   * docs/protocol-notes.md 4).
   */
  beforeStart?: (queues: readonly DriverQueue[]) => void | Promise<void>;
  /** Leave the rings disabled (no SET_VRING_ENABLE(1)), for tests of the enable state. */
  skipEnable?: boolean;
}

export class VhostUserFrontend extends FrontendMessages {
  // choreography state
  private initResult: InitResult | null = null;
  private useProtocol = false;
  private numQueues = 0;
  /** QEMU-internal "masked" call eventfds and the error eventfds (SET_VRING_CALL/ERR in init). */
  private readonly maskedCallFds: number[] = [];
  private readonly errFds: number[] = [];
  private queueList: DriverQueue[] = [];
  private ram: GuestRam | null = null;
  private ackedFeatures = 0n;
  private started = false;
  /** Regions the back-end has from us (for ADD/REM_MEM_REG differences). */
  private memSlots: MemRegionDesc[] = [];

  /** Connects to a back-end's socket. Throws ERR_FRONTEND_CONNECT (cause: the system error). */
  static connect(path: string, opts: FrontendOptions = {}): VhostUserFrontend {
    const n = opts.native ?? defaultNative;
    let fd: number;
    try {
      fd = n.connectUnix(path);
    } catch (cause) {
      const code = (cause as { code?: string }).code ?? 'ERR';
      throw new FrontendError('ERR_FRONTEND_CONNECT', `cannot connect to ${path}: ${code}`, { cause });
    }
    try {
      return new VhostUserFrontend(fd, opts);
    } catch (err) {
      n.close(fd);
      throw err;
    }
  }

  protected override closeOwned(): void {
    for (const q of this.queueList) q.close();
    this.queueList = [];
    this.closeFds(this.maskedCallFds.splice(0));
    this.closeFds(this.errFds.splice(0));
  }

  // ---- QEMU 11 choreography (docs/protocol-notes.md 1.7) ---------------------------------------

  /** The result of init(), or null before it. */
  get negotiated(): InitResult | null {
    return this.initResult;
  }

  /** Protocol features acknowledged by init() (0 before). */
  get protocolFeatures(): bigint {
    return this.initResult?.protocolFeatures ?? 0n;
  }

  private hasProtocol(bit: number): boolean {
    return hasFeature(this.protocolFeatures, bit);
  }

  /** The queues of the last start() (empty before). */
  get queues(): readonly DriverQueue[] {
    return this.queueList;
  }

  get isStarted(): boolean {
    return this.started;
  }

  /** Virtio features sent with the last SET_FEATURES (without bit 30). */
  get features(): bigint {
    return this.ackedFeatures;
  }

  /**
   * A. Device realize (vhost_dev_init): GET_FEATURES, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES,
   * GET_QUEUE_NUM (MQ), GET_MAX_MEM_SLOTS (CONFIGURE_MEM_SLOTS), SET_BACKEND_REQ_FD (BACKEND_REQ,
   * NEED_REPLY with REPLY_ACK), SET_OWNER, GET_FEATURES, then per queue SET_VRING_CALL (a "masked"
   * eventfd) and SET_VRING_ERR.
   */
  async init(opts: InitOptions): Promise<InitResult> {
    if (this.initResult !== null) throw new FrontendError('ERR_FRONTEND_STATE', 'init() was already done');
    if (!Number.isInteger(opts.numQueues) || opts.numQueues < 1 || opts.numQueues > 256) {
      throw new FrontendError('ERR_FRONTEND_ARG', `numQueues ${opts.numQueues}`);
    }
    const features = await this.getFeatures();
    let offered = 0n;
    let acked = 0n;
    let queueNum: number | null = null;
    let maxMemSlots: number | null = null;
    this.useProtocol = (features & PROTOCOL_FEATURES_BIT) !== 0n && !opts.noProtocolFeatures;
    if (this.useProtocol) {
      offered = await this.getProtocolFeatures();
      let supported = opts.protocolFeatures ?? FRONTEND_PROTOCOL_FEATURES;
      if (opts.noConfig) supported &= ~featureBit(ProtocolFeature.CONFIG);
      acked = offered & supported;
      await this.setProtocolFeatures(acked);
      if (hasFeature(acked, ProtocolFeature.MQ)) queueNum = await this.getQueueNum();
      if (hasFeature(acked, ProtocolFeature.CONFIGURE_MEM_SLOTS)) maxMemSlots = await this.getMaxMemSlots();
    }
    this.initResult = { features, protocolOffered: offered, protocolFeatures: acked, queueNum, maxMemSlots };
    if (hasFeature(acked, ProtocolFeature.BACKEND_REQ)) {
      const ack = await this.setBackendReqFd({ needReply: hasFeature(acked, ProtocolFeature.REPLY_ACK) });
      this.checkAck('SET_BACKEND_REQ_FD', ack);
    }
    await this.setOwner();
    await this.getFeatures();
    this.numQueues = opts.numQueues;
    for (let i = 0; i < opts.numQueues; i++) {
      const call = this.native.eventfdCreate(0, true);
      this.maskedCallFds.push(call);
      await this.setVringCall(i, call);
      const err = this.native.eventfdCreate(0, true);
      this.errFds.push(err);
      await this.setVringErr(i, err);
    }
    return this.initResult;
  }

  private checkAck(what: string, ack: number | undefined): void {
    if (ack !== undefined && ack !== 0) {
      throw new FrontendError('ERR_FRONTEND_NACK', `${what} refused by the back-end (ack ${ack})`);
    }
  }

  /**
   * A message QEMU waits for: NEED_REPLY when REPLY_ACK was negotiated, otherwise followed by a
   * GET_FEATURES barrier (vhost-user.rst "Communication"; docs/protocol-notes.md 1.2, 1.7).
   */
  private async synced(what: string, send: (o: AckOptions) => Promise<number | undefined>): Promise<void> {
    if (this.hasProtocol(ProtocolFeature.REPLY_ACK)) {
      this.checkAck(what, await send({ needReply: true }));
    } else {
      await send({});
      await this.getFeatures();
    }
  }

  /**
   * B. Driver OK (vhost_dev_start): SET_FEATURES, [GET_STATUS, SET_STATUS(FEATURES_OK)],
   * SET_MEM_TABLE or ADD_MEM_REG per region, per queue SET_VRING_NUM/BASE/ADDR/KICK/CALL, then
   * SET_VRING_ENABLE(1) per queue, then SET_VRING_CALL again per queue. Creates fresh rings.
   */
  async start(opts: StartOptions): Promise<DriverQueue[]> {
    if (this.initResult === null) throw new FrontendError('ERR_FRONTEND_STATE', 'start() before init()');
    if (this.started) throw new FrontendError('ERR_FRONTEND_STATE', 'already started; stop() first');
    if (opts.queues.length === 0 || opts.queues.length > this.numQueues) {
      throw new FrontendError(
        'ERR_FRONTEND_ARG',
        `${opts.queues.length} queues (init() set up ${this.numQueues})`,
      );
    }
    for (const q of this.queueList) q.close();
    this.queueList = [];
    const ram = opts.memory;
    const eventIdx = hasFeature(opts.features, VirtioFeature.RING_EVENT_IDX);
    const region = opts.ringRegion ?? ram.regionCount - 1;
    const queues: DriverQueue[] = [];
    try {
      opts.queues.forEach(({ size }, index) => {
        const sz = ringSizes(size);
        const layout = {
          size,
          descGpa: ram.alloc(sz.desc, RING_ALIGN.desc, region),
          availGpa: ram.alloc(sz.avail, RING_ALIGN.avail, region),
          usedGpa: ram.alloc(sz.used, RING_ALIGN.used, region),
        };
        const ring = new DriverRing(ram.memory, layout, { eventIdx });
        ring.init(opts.bases?.[index] ?? 0);
        queues.push(
          new DriverQueue({
            index,
            ring,
            native: this.native,
            timeoutMs: this.timeoutMs,
            stopRing: (i) => this.stopQueue(i),
          }),
        );
      });
    } catch (err) {
      for (const q of queues) q.close();
      throw err;
    }
    this.queueList = queues;
    this.ram = ram;
    if (opts.beforeStart) await opts.beforeStart(queues);
    await this.startSequence(opts.features, opts.bases ?? [], opts);
    return queues;
  }

  /**
   * B again after stop() (VM resume): the same rings, SET_VRING_BASE from `bases` (default: what
   * stop() returned is what the caller passes).
   */
  async restart(
    bases: readonly number[],
    opts: { useMemSlots?: boolean; skipEnable?: boolean } = {},
  ): Promise<void> {
    if (this.started) throw new FrontendError('ERR_FRONTEND_STATE', 'restart() while started');
    if (this.queueList.length === 0 || this.ram === null) {
      throw new FrontendError('ERR_FRONTEND_STATE', 'restart() before start()');
    }
    await this.startSequence(this.ackedFeatures, bases, opts);
  }

  private async startSequence(
    features: bigint,
    bases: readonly number[],
    opts: { useMemSlots?: boolean; skipEnable?: boolean },
  ): Promise<void> {
    const ram = this.ram!;
    this.ackedFeatures = features & ~PROTOCOL_FEATURES_BIT;
    await this.setFeatures(this.useProtocol ? features | PROTOCOL_FEATURES_BIT : features);
    if (this.hasProtocol(ProtocolFeature.STATUS)) {
      const s = await this.getStatus();
      if ((s & DeviceStatus.FEATURES_OK) === 0) {
        await this.synced('SET_STATUS', (o) => this.setStatus(s | DeviceStatus.FEATURES_OK, o));
      }
    }
    const replyAck = this.hasProtocol(ProtocolFeature.REPLY_ACK);
    if (opts.useMemSlots) {
      if (!this.hasProtocol(ProtocolFeature.CONFIGURE_MEM_SLOTS)) {
        throw new FrontendError('ERR_FRONTEND_UNSUPPORTED', 'useMemSlots needs CONFIGURE_MEM_SLOTS');
      }
      // Like QEMU (vhost_user_add_remove_regions): send only the difference to what the back-end
      // already has, so a restart with unchanged memory sends nothing.
      const regions = ram.regions();
      const key = (r: MemRegionDesc): string => `${r.guestPhysAddr}:${r.size}:${r.userAddr}:${r.mmapOffset}`;
      const wanted = new Set(regions.map(key));
      for (const r of this.memSlots.filter((r) => !wanted.has(key(r)))) {
        this.checkAck('REM_MEM_REG', await this.remMemReg(r, { needReply: replyAck }));
      }
      const have = new Set(this.memSlots.map(key));
      for (let i = 0; i < regions.length; i++) {
        if (have.has(key(regions[i]!))) continue;
        this.checkAck(
          'ADD_MEM_REG',
          await this.addMemReg(regions[i]!, ram.fdFor(i), { needReply: replyAck }),
        );
      }
      this.memSlots = regions;
    } else {
      this.checkAck('SET_MEM_TABLE', await this.setMemTable(ram, { needReply: replyAck }));
      this.memSlots = ram.regions();
    }
    for (const q of this.queueList) {
      const l = q.ring.layout;
      await this.setVringNum(q.index, l.size);
      await this.setVringBase(q.index, bases[q.index] ?? 0);
      await this.setVringAddr({
        index: q.index,
        desc: ram.uvaOf(l.descGpa),
        used: ram.uvaOf(l.usedGpa),
        avail: ram.uvaOf(l.availGpa),
      });
      await this.setVringKick(q.index, q.kickFd);
      await this.setVringCall(q.index, q.callFd);
    }
    if (this.useProtocol && !opts.skipEnable) {
      for (const q of this.queueList) {
        await this.synced('SET_VRING_ENABLE', (o) => this.setVringEnable(q.index, true, o));
      }
    }
    for (const q of this.queueList) await this.setVringCall(q.index, q.callFd);
    // Without REPLY_ACK (or with skipEnable) nothing above was waited for: a GET_FEATURES barrier makes sure the
    // back-end has processed the whole sequence before the caller starts using the rings.
    if (!this.hasProtocol(ProtocolFeature.REPLY_ACK) || opts.skipEnable) await this.getFeatures();
    // A ring may have run before its real call fd arrived (KICK comes before CALL in step 12, and
    // without bit 30 the ring is enabled at once): that interrupt went to the masked eventfd. QEMU
    // forwards a pending masked notification when it unmasks (vhost_virtqueue_mask); so do we.
    for (const q of this.queueList) {
      const masked = this.maskedCallFds[q.index];
      if (masked !== undefined && this.drainEventfd(masked) > 0) this.native.eventfdWrite(q.callFd, 1);
    }
    this.started = true;
  }

  private drainEventfd(fd: number): number {
    let n = 0;
    for (let v = this.native.eventfdRead(fd); v !== null; v = this.native.eventfdRead(fd)) n += v;
    return n;
  }

  /**
   * C. Stop (guest reset, VM pause): SET_VRING_ENABLE(0) for each queue, then GET_VRING_BASE for
   * each. Returns the bases (next avail index per queue).
   */
  async stop(): Promise<number[]> {
    if (!this.started) throw new FrontendError('ERR_FRONTEND_STATE', 'stop() while not started');
    if (this.useProtocol) {
      for (const q of this.queueList) {
        await this.synced('SET_VRING_ENABLE', (o) => this.setVringEnable(q.index, false, o));
      }
    }
    const bases: number[] = [];
    for (const q of this.queueList) bases.push(await this.getVringBase(q.index));
    this.started = false;
    return bases;
  }

  /** Stops one ring (SET_VRING_ENABLE 0 then GET_VRING_BASE); used by DriverQueue.stop(). */
  private async stopQueue(index: number): Promise<number> {
    if (this.useProtocol) {
      await this.synced('SET_VRING_ENABLE', (o) => this.setVringEnable(index, false, o));
    }
    const base = await this.getVringBase(index);
    return base;
  }
}
