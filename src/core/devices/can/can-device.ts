/**
 * The VIRTIO CAN device (VIRTIO 1.4 section 5.22), one per guest connection, attached to a CAN bus
 * through a hub port. It implements the device contract; the vhost-user layer drives it.
 *
 * Decisions beyond the spec text, with the reasoning (the long form: docs/decisions.md "CAN device"):
 * - START and STOP are idempotent: a guest rebooted without `ip link set down` must be able to bring
 *   the interface up again (the reference answers NOT_OK and the guest gets EIO).
 * - A malformed TX request is answered NOT_OK and counted; it never stops the controller.
 * - TX completions go to the used ring in submission order, also when some wait for the bus
 *   (LATE_TX_ACK) and later ones are refused at once.
 * - RX buffers are taken from the ring only when a frame is ready (the reference leaks them), and
 *   frames arriving while the controller is stopped are discarded, never delivered after a START.
 * - Bus-off sets status bit 0 (value 1), stops the controller, fails pending TX and sends a
 *   config-change notification (deferred by the session while the device is suspended).
 * - RX processing triggered by the bus is deferred with the host's `schedule` so that a burst of
 *   frames from another guest's batch costs one pass over our RX ring and one interrupt.
 */
import { scratchCanFrame } from '../../bus/can-frame.js';
import type { BusPortHandler, BusState, CanHub, HubPort, PortAcceptPolicy } from '../../bus/hub.js';
import { deviceFailure } from '../../util/errors.js';
import type { Logger } from '../../util/log.js';
import { nullLogger } from '../../util/log.js';
import type { DeviceHost, VirtioDevice } from '../../vhost-user/device.js';
import { DescriptorChain } from '../../virtio/descriptor-chain.js';
import {
  featureBit,
  hasFeature,
  maxQueueSizeOf,
  type RingOptions,
  ringFeatures,
} from '../../virtio/features.js';
import { type ChainHandler, type ChainHooks, QueueWorker } from '../../virtio/queue-worker.js';
import type { SplitQueue } from '../../virtio/split-queue.js';
import {
  CAN_CONFIG_SIZE,
  CAN_HEADER_SIZE,
  CAN_MAX_FD_LEN,
  CAN_NUM_QUEUES,
  CanFeature,
  CanFlag,
  CanMsgType,
  CanQueue,
  CanResult,
  CanStatus,
  VIRTIO_ID_CAN,
} from './constants.js';
import {
  type CanNegotiated,
  checkTxHeader,
  encodeRxHeader,
  type TxHeader,
  TxReject,
  type TxRejectReason,
} from './tx-request.js';

export interface CanFeatureSwitches {
  classic: boolean;
  fd: boolean;
  rtr: boolean;
  lateTxAck: boolean;
}

export const DEFAULT_CAN_FEATURES: Readonly<CanFeatureSwitches> = Object.freeze({
  classic: true,
  fd: true,
  rtr: true,
  lateTxAck: true,
});

export interface CanDeviceOptions extends RingOptions {
  /** The bus this guest joins. */
  hub: CanHub;
  /** Port name on the hub (unique per hub), e.g. "guest0". */
  portName: string;
  /** Which CAN features to offer (a bus that cannot carry FD must not offer it). */
  features?: Partial<CanFeatureSwitches>;
  /** Frames waiting for RX buffers, per guest, before drops are counted (default DEFAULT_RX_BACKLOG). */
  rxBacklog?: number;
  log?: Logger;
  /** Told when the guest starts or stops its controller (bus-off stops it too). */
  onControllerChange?: (state: ControllerState) => void;
}

export type ControllerState = 'stopped' | 'started';

export interface CanDeviceStats {
  txOk: number;
  txNotOk: number;
  txBytes: number;
  txRejected: Record<TxRejectReason, number>;
  rxDelivered: number;
  rxBytes: number;
  /** RX buffers shorter than the frame (the frame was dropped, the buffer returned empty). */
  rxShortBuffer: number;
  ctrlStart: number;
  ctrlStop: number;
  ctrlNotOk: number;
  /** Control requests on a started but disabled control ring (answered NOT_OK, not acted on). */
  ctrlDisabled: number;
  busOff: number;
  /** Malformed chains returned with used length 0 (any queue). */
  badChains: number;
  /**
   * TX requests dropped without an answer in the used ring: the device was marked broken (or the
   * connection closed) while they waited for the bus or behind one that did.
   */
  txAbandoned: number;
}

function zeroRejects(): Record<TxRejectReason, number> {
  const r = {} as Record<TxRejectReason, number>;
  for (const v of Object.values(TxReject)) r[v] = 0;
  return r;
}

/**
 * Default backlog per guest: about what the host interface's default socket receive buffer holds
 * of a flood (35,000 classic frames), so a burst the kernel absorbed is not dropped here. About
 * 360 bytes of JavaScript heap per waiting classic frame (410 for 64-byte FD): at most about
 * 12-13 MiB per guest, used only while the guest falls behind.
 */
export const DEFAULT_RX_BACKLOG = 32768;

const PENDING = 0xff;
/** TX chains processed per turn before yielding to other work (see processTx). */
const TX_BUDGET = 256;

export class CanDevice implements VirtioDevice, BusPortHandler {
  readonly name = 'can';
  readonly deviceId = VIRTIO_ID_CAN;
  readonly numQueues = CAN_NUM_QUEUES;
  readonly configSize = CAN_CONFIG_SIZE;
  readonly maxQueueSize: number;
  readonly features: bigint;
  readonly port: HubPort;
  readonly stats: CanDeviceStats = {
    txOk: 0,
    txNotOk: 0,
    txBytes: 0,
    txRejected: zeroRejects(),
    rxDelivered: 0,
    rxBytes: 0,
    rxShortBuffer: 0,
    ctrlStart: 0,
    ctrlStop: 0,
    ctrlNotOk: 0,
    ctrlDisabled: 0,
    busOff: 0,
    badChains: 0,
    txAbandoned: 0,
  };

  private host: DeviceHost | null = null;
  private log: Logger;
  private controller: ControllerState = 'stopped';
  private readonly onControllerChange: ((state: ControllerState) => void) | undefined;
  private readonly hub: CanHub;
  private status = 0;
  private neg: CanNegotiated = { classic: false, fd: false, rtr: false, lateTxAck: false };
  private destroyed = false;

  // Reused per request: nothing is allocated per frame on the TX and RX paths (the hub copies the
  // frame it puts on the bus, so the TX frame below is rewritten for every request).
  private readonly chain = new DescriptorChain(8);
  private readonly hdrBytes = new Uint8Array(CAN_HEADER_SIZE + CAN_MAX_FD_LEN);
  private readonly hdrView = new DataView(this.hdrBytes.buffer);
  private readonly txHdr: TxHeader = { flags: 0, id: 0, len: 0, len8Dlc: 0 };
  /** Views of hdrBytes' payload by length, made on first use (at most 65). */
  private readonly payloadViews: Uint8Array[] = [];
  private readonly txFrame = scratchCanFrame();

  // TX completion FIFO, in submission order. Entry i: head, result address, result (PENDING until
  // known). Tokens are consecutive, so token t lives at position t - fifoToken from the FIFO start.
  private fifoHead = new Uint16Array(0);
  private fifoAddr = new Float64Array(0);
  private fifoResult = new Uint8Array(0);
  private fifoLen = new Uint8Array(0);
  private fifoStart = 0;
  private fifoCount = 0;
  private fifoToken = 0; // token of the entry at fifoStart
  private nextToken = 0;

  // Deferred work goes through host.schedule, which runs it guarded like any device hook.
  private rxScheduled = false;
  private readonly runRx = (): void => {
    this.rxScheduled = false;
    this.processRx();
  };
  private txScheduled = false;
  private readonly runTx = (): void => {
    this.txScheduled = false;
    this.processTx();
  };

  /** The queue loops shared by every device (bad chains, budgets, kick re-arming). */
  private readonly worker: QueueWorker;
  private readonly txHooks: ChainHooks = {
    // A TX chain that cannot be walked still completes in submission order, NOT_OK.
    onBadChain: (_q, chain) => {
      this.stats.txRejected[TxReject.BAD_CHAIN]++;
      this.stats.txNotOk++;
      this.enqueueTx(chain.head, -1, CanResult.NOT_OK);
    },
    // The ring itself is corrupt. Its used side is still usable: TX chains taken before this point
    // are answered first (the pending ones NOT_OK), so every request the stats count as answered is
    // in the used ring, in order, before the device stops touching the rings.
    onCorrupt: () => this.cancelPendingTx(),
    beforePublish: (q) => this.flushTx(q),
  };
  private readonly handleTx: ChainHandler = (chain, q) => this.txChain(chain, q);
  private readonly handleCtrl: ChainHandler = (chain, q) => this.ctrlChain(chain, q);
  private readonly handleRx = (chain: DescriptorChain, q: SplitQueue): boolean => this.rxChain(chain, q);
  private readonly framesWaiting = (): boolean => this.port.queued > 0;

  constructor(opts: CanDeviceOptions) {
    const sw = { ...DEFAULT_CAN_FEATURES, ...opts.features };
    if (!sw.classic && !sw.fd) throw new RangeError('a CAN device needs CAN_CLASSIC or CAN_FD');
    let f = ringFeatures(opts);
    if (sw.classic) f |= featureBit(CanFeature.CAN_CLASSIC);
    if (sw.fd) f |= featureBit(CanFeature.CAN_FD);
    // RTR_FRAMES requires CAN_CLASSIC (5.22.3): never offer it alone.
    if (sw.rtr && sw.classic) f |= featureBit(CanFeature.RTR_FRAMES);
    if (sw.lateTxAck) f |= featureBit(CanFeature.LATE_TX_ACK);
    this.features = f;
    this.maxQueueSize = maxQueueSizeOf(opts);
    this.log = opts.log ?? nullLogger;
    this.onControllerChange = opts.onControllerChange;
    this.hub = opts.hub;
    this.worker = new QueueWorker(
      () => this.host,
      () => this.log,
      this.stats,
    );
    this.port = opts.hub.attach(this, {
      name: opts.portName,
      queueLimit: opts.rxBacklog ?? DEFAULT_RX_BACKLOG,
      accept: { classic: false, fd: false, rtr: false },
      // processRx copies each frame into guest memory at once and releases it (see there).
      releasesFrames: true,
    });
    // The controller starts STOPPED (5.22.6.3): nothing is received until the guest's START.
    this.port.setReceiving(false);
  }

  get controllerState(): ControllerState {
    return this.controller;
  }

  get configStatus(): number {
    return this.status;
  }

  get negotiated(): Readonly<CanNegotiated> {
    return this.neg;
  }

  /** TX requests waiting for the bus (LATE_TX_ACK) or for an earlier one to complete. */
  get pendingTx(): number {
    return this.fifoCount;
  }

  // ---- device contract ------------------------------------------------------------------------

  attach(host: DeviceHost): void {
    this.host = host;
    this.log = host.log;
  }

  readConfig(dst: Uint8Array): void {
    dst[0] = this.status & 0xff;
    dst[1] = (this.status >> 8) & 0xff;
  }

  writeConfig(): boolean {
    return false; // status is read-only for the driver
  }

  setFeatures(acked: bigint): void {
    this.neg = {
      classic: hasFeature(acked, CanFeature.CAN_CLASSIC),
      fd: hasFeature(acked, CanFeature.CAN_FD),
      rtr: hasFeature(acked, CanFeature.RTR_FRAMES),
      lateTxAck: hasFeature(acked, CanFeature.LATE_TX_ACK),
    };
    const policy: PortAcceptPolicy = {
      classic: this.neg.classic,
      fd: this.neg.fd,
      rtr: this.neg.rtr && this.neg.classic,
    };
    this.port.setAcceptPolicy(policy);
  }

  queueStarted(index: number): void {
    if (index === CanQueue.TX) {
      const q = this.host?.queue(index);
      if (q && this.fifoHead.length < q.size) {
        this.fifoHead = new Uint16Array(q.size);
        this.fifoAddr = new Float64Array(q.size);
        this.fifoResult = new Uint8Array(q.size);
        this.fifoLen = new Uint8Array(q.size);
        this.fifoStart = 0;
      }
    }
    // Buffers may have been posted before the ring started (the Linux driver fills the RX ring
    // during probe, before DRIVER_OK, and that kick is lost): scan now instead of waiting.
    this.queueNotified(index);
  }

  queueStopping(index: number): void {
    if (index === CanQueue.TX) {
      // Everything taken from the TX ring must be in the used ring before GET_VRING_BASE is answered.
      this.cancelPendingTx();
    }
    // RX and control never hold chains between calls.
  }

  queueNotified(index: number): void {
    switch (index) {
      case CanQueue.TX:
        this.processTx();
        break;
      case CanQueue.RX:
        this.processRx();
        break;
      case CanQueue.CTRL:
        this.processCtrl();
        break;
    }
  }

  queueDiscard(index: number): void {
    // RX buffers stay in the ring untouched: a disabled ring is supplied no frames.
    if (index === CanQueue.TX || index === CanQueue.CTRL) this.discardRequests(index);
  }

  halt(): void {
    this.stats.txAbandoned += this.fifoCount;
    this.fifoCount = 0;
    this.fifoToken = this.nextToken;
  }

  reset(): void {
    this.halt();
    this.controller = 'stopped';
    this.status = 0;
    this.neg = { classic: false, fd: false, rtr: false, lateTxAck: false };
    this.port.setAcceptPolicy({ classic: false, fd: false, rtr: false });
    this.port.setReceiving(false);
  }

  statsFields(): Record<string, number | string | boolean> {
    const st = this.stats;
    const rejected = Object.entries(st.txRejected)
      .filter(([, n]) => n > 0)
      .map(([k, n]) => `${k}:${n}`)
      .join(',');
    const ps = this.port.stats;
    return {
      controller: this.controller,
      status: this.status,
      txOk: st.txOk,
      txNotOk: st.txNotOk,
      txRejected: rejected || '-',
      rxDelivered: st.rxDelivered,
      rxShortBuffer: st.rxShortBuffer,
      badChains: st.badChains,
      ctrlDisabled: st.ctrlDisabled,
      txAbandoned: st.txAbandoned,
      busOff: st.busOff,
      rxDroppedOverflow: ps.rxDroppedOverflow,
      rxFiltered: ps.rxFiltered,
      rxDiscardedStopped: ps.rxDiscardedClosed,
      rxQueued: this.port.queued,
    };
  }

  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.halt();
    this.port.detach();
  }

  private fail(err: unknown): void {
    const e = deviceFailure(err);
    if (this.host !== null) this.host.markBroken(e);
    else this.log.error('device failure outside a connection', { code: e.code, reason: e.message });
  }

  // ---- bus port handler -----------------------------------------------------------------------

  onFramesAvailable(): void {
    if (this.rxScheduled || this.destroyed) return;
    this.rxScheduled = true;
    this.host?.schedule(this.runRx);
  }

  onTxComplete(token: number, ok: boolean): void {
    const pos = token - this.fifoToken;
    if (pos < 0 || pos >= this.fifoCount) return; // already cancelled (STOP, bus-off, ring stop)
    const slot = (this.fifoStart + pos) % this.fifoHead.length;
    if (this.fifoResult[slot] !== PENDING) return;
    this.fifoResult[slot] = ok ? CanResult.OK : CanResult.NOT_OK;
    if (ok) {
      this.stats.txOk++;
      this.stats.txBytes += this.fifoLen[slot]!;
    } else {
      this.stats.txRejected[TxReject.BUS]++;
      this.stats.txNotOk++;
    }
    // Called by the bus (a host interface's echo), not through the session: catch for ourselves.
    try {
      const q = this.host?.queue(CanQueue.TX) ?? null;
      if (q !== null) {
        this.flushTx(q);
        q.publish();
      }
    } catch (err) {
      this.fail(err);
    }
  }

  onBusState(state: BusState): void {
    this.log.info('bus state change', { state });
    // Only a started controller takes part in bus traffic and can go bus-off (5.22.6.4: "changed
    // from started to stopped").
    if (state !== 'bus-off' || this.controller !== 'started') return;
    // 5.22.6.4: bus-off sets the status bit, stops the controller and completes pending TX NOT_OK;
    // it is unsolicited, so the driver is told with a configuration change notification.
    this.stats.busOff++;
    this.status |= CanStatus.CTRL_BUSOFF;
    try {
      this.enterStopped(); // completes pending TX in guest memory: may meet a bad ring
    } catch (err) {
      this.fail(err);
    }
    if (!this.host?.notifyConfigChange()) {
      this.log.warn('bus-off cannot be signalled: the front-end did not negotiate BACKEND_REQ');
    }
  }

  // ---- TX -------------------------------------------------------------------------------------

  private processTx(): void {
    const q = this.host?.queue(CanQueue.TX) ?? null;
    if (q === null) return;
    // Fairness: a guest that keeps its TX ring full must not starve the other guests' RX delivery
    // (scheduled on the same loop): after a budget the batch is published and the rest waits a turn.
    const r = this.worker.drain(q, this.chain, this.handleTx, { ...this.txHooks, budget: TX_BUDGET });
    if (r === 'budget' && !this.txScheduled) {
      this.txScheduled = true;
      this.host?.schedule(this.runTx);
    }
  }

  private txChain(chain: DescriptorChain, q: SplitQueue): void {
    if (this.fifoCount === this.fifoHead.length) {
      // Cannot happen with a well-behaved driver (at most `size` chains in flight); be safe.
      this.completeNow(q, chain.head, chain.writableAddress(0), CanResult.NOT_OK);
      return;
    }
    const resultAddr = chain.writableAddress(0);
    if (resultAddr < 0) {
      // No room for the result: return the chain with used length 0 (the driver reads NOT_OK).
      this.stats.txRejected[TxReject.NO_RESULT_BYTE]++;
      this.stats.txNotOk++;
      this.enqueueTx(chain.head, -1, CanResult.NOT_OK);
      return;
    }
    const reason = this.parseTx(chain, this.host!.memory);
    if (reason !== null) {
      this.stats.txRejected[reason]++;
      this.stats.txNotOk++;
      this.enqueueTx(chain.head, resultAddr, CanResult.NOT_OK);
      return;
    }
    this.transmit(chain.head, resultAddr);
  }

  /** Reads and validates the request; null when it is a valid frame now in hdrBytes. */
  private parseTx(chain: DescriptorChain, mem: DeviceHost['memory']): TxRejectReason | null {
    if (this.controller !== 'started') return TxReject.STOPPED;
    const n = chain.read(mem, 0, this.hdrBytes, 0, Math.min(chain.readableLength, this.hdrBytes.length));
    if (n < 0) return TxReject.BAD_CHAIN;
    return checkTxHeader(this.hdrView, chain.readableLength, this.neg, this.txHdr);
  }

  private transmit(head: number, resultAddr: number): void {
    const h = this.txHdr;
    const rtr = (h.flags & CanFlag.RTR) !== 0;
    const frame = this.txFrame;
    frame.id = h.id;
    frame.extended = (h.flags & CanFlag.EXTENDED) !== 0;
    frame.rtr = rtr;
    frame.fd = (h.flags & CanFlag.FD) !== 0;
    // virtio 1.4 has no BRS/ESI bits: the Linux driver does not convey them (brs, esi stay false).
    frame.len = h.len;
    frame.len8Dlc = h.len8Dlc;
    frame.data = rtr ? EMPTY : this.payload(h.len);
    const token = this.nextToken;
    this.enqueueTx(head, resultAddr, PENDING);
    const r = this.port.transmit(frame, token);
    const pos = token - this.fifoToken;
    if (pos < 0 || pos >= this.fifoCount) return; // cancelled meanwhile (bus-off raised during fan-out)
    const slot = (this.fifoStart + pos) % this.fifoHead.length;
    this.fifoLen[slot] = h.len;
    if (r === 'sent') {
      this.stats.txOk++;
      this.stats.txBytes += h.len;
      this.fifoResult[slot] = CanResult.OK;
    } else if (r === 'dropped') {
      this.stats.txRejected[TxReject.BUS]++;
      this.stats.txNotOk++;
      this.fifoResult[slot] = CanResult.NOT_OK;
    } else if (!this.neg.lateTxAck) {
      // 'pending' on a port that confirms later: without LATE_TX_ACK, acceptance is enough (5.22.6.2.1).
      this.stats.txOk++;
      this.stats.txBytes += h.len;
      this.fifoResult[slot] = CanResult.OK;
    }
  }

  /** hdrBytes' payload bytes 0..len-1 (where parseTx read them), as a cached view. */
  private payload(len: number): Uint8Array {
    let v = this.payloadViews[len];
    if (v === undefined) {
      v = this.hdrBytes.subarray(CAN_HEADER_SIZE, CAN_HEADER_SIZE + len);
      this.payloadViews[len] = v;
    }
    return v;
  }

  private enqueueTx(head: number, resultAddr: number, result: number): void {
    const slot = (this.fifoStart + this.fifoCount) % this.fifoHead.length;
    this.fifoHead[slot] = head;
    this.fifoAddr[slot] = resultAddr;
    this.fifoResult[slot] = result;
    this.fifoCount++;
    this.nextToken++;
  }

  /** Moves completed entries from the FIFO front to the used ring, preserving submission order. */
  private flushTx(q: SplitQueue): void {
    const mem = this.host!.memory;
    while (this.fifoCount > 0) {
      const slot = this.fifoStart;
      const result = this.fifoResult[slot]!;
      if (result === PENDING) break;
      const addr = this.fifoAddr[slot]!;
      let used = 0;
      if (addr >= 0 && mem.writeByte(addr, result)) used = 1;
      q.pushUsed(this.fifoHead[slot]!, used);
      this.fifoStart = (this.fifoStart + 1) % this.fifoHead.length;
      this.fifoCount--;
      this.fifoToken++;
    }
  }

  private completeNow(q: SplitQueue, head: number, addr: number, result: number): void {
    const used = addr >= 0 && this.host!.memory.writeByte(addr, result) ? 1 : 0;
    q.pushUsed(head, used);
  }

  /** Completes every TX still waiting with NOT_OK (STOP, bus-off, ring stop). */
  private cancelPendingTx(): void {
    if (this.fifoCount === 0) return;
    const n = this.fifoCount;
    for (let i = 0; i < n; i++) {
      const slot = (this.fifoStart + i) % this.fifoHead.length;
      if (this.fifoResult[slot] === PENDING) {
        this.fifoResult[slot] = CanResult.NOT_OK;
        this.stats.txRejected[TxReject.CANCELLED]++;
        this.stats.txNotOk++;
      }
    }
    const q = this.host?.queue(CanQueue.TX) ?? null;
    if (q === null) {
      // Ring not processable (suspended or broken): nothing may be written; forget the requests.
      this.halt();
      return;
    }
    this.flushTx(q);
    q.publish();
  }

  /**
   * A started but disabled TX or control ring (vhost-user "Ring states"): every request is returned
   * NOT_OK at once and never acted on (no frame reaches the bus, no controller change). Nothing
   * taken from this ring is pending (disabling it cancelled that), so completing in place keeps
   * submission order.
   */
  private discardRequests(index: number): void {
    const q = this.host?.disabledQueue(index) ?? null;
    if (q === null) return;
    const tx = index === CanQueue.TX;
    const r = this.worker.drain(
      q,
      this.chain,
      (chain, dq) => {
        if (tx) {
          this.stats.txRejected[TxReject.DISABLED]++;
          this.stats.txNotOk++;
        } else {
          this.stats.ctrlDisabled++;
          this.stats.ctrlNotOk++;
        }
        this.completeNow(dq, chain.head, chain.writableAddress(0), CanResult.NOT_OK);
      },
      {
        budget: TX_BUDGET,
        onBadChain: (bq, chain) => {
          if (tx) {
            this.stats.txRejected[TxReject.BAD_CHAIN]++;
            this.stats.txNotOk++;
          }
          bq.pushUsed(chain.head, 0);
        },
      },
    );
    // A driver refilling the ring as fast as we empty it must not hold the loop.
    if (r === 'budget') this.host?.schedule(() => this.queueDiscard(index));
  }

  // ---- RX -------------------------------------------------------------------------------------

  private processRx(): void {
    const q = this.host?.queue(CanQueue.RX) ?? null;
    if (q === null) return; // frames wait in the port's bounded queue
    // A buffer is popped only for a frame that is ready (no buffer is returned empty "just in case").
    this.worker.fill(q, this.chain, this.framesWaiting, this.handleRx);
  }

  /** Writes the next waiting frame into `chain`; returns whether more frames wait. */
  private rxChain(chain: DescriptorChain, q: SplitQueue): boolean {
    const port = this.port;
    const f = port.take()!;
    const total = CAN_HEADER_SIZE + f.len; // RTR: 16 + DLC, the driver checks used >= 16 + length
    if (chain.writableLength < total) {
      // The driver posts 16 + 8 or 16 + 64 byte buffers; a shorter one loses this frame.
      port.release(f);
      this.stats.rxShortBuffer++;
      q.pushUsed(chain.head, 0);
      return port.queued > 0;
    }
    encodeRxHeader(f, this.hdrView);
    if (f.rtr) this.hdrBytes.fill(0, CAN_HEADER_SIZE, total);
    else this.hdrBytes.set(f.data, CAN_HEADER_SIZE);
    // Everything needed is in hdrBytes now: the hub may reuse the frame.
    port.release(f);
    const n = chain.write(this.host!.memory, 0, this.hdrBytes, 0, total);
    q.pushUsed(chain.head, n === total ? total : 0);
    this.stats.rxDelivered++;
    this.stats.rxBytes += f.len;
    return port.queued > 0;
  }

  // ---- control --------------------------------------------------------------------------------

  private processCtrl(): void {
    const q = this.host?.queue(CanQueue.CTRL) ?? null;
    if (q === null) return;
    this.worker.drain(q, this.chain, this.handleCtrl);
  }

  private ctrlChain(chain: DescriptorChain, q: SplitQueue): void {
    const host = this.host!;
    // Control requests complete in order and only after the transition finished (5.22.6.3).
    const head = chain.head;
    const resultAddr = chain.writableAddress(0);
    let result: number = CanResult.NOT_OK;
    // virtio_can_control_out is 2 bytes; shorter requests and unknown types get NOT_OK.
    if (chain.readableLength >= 2 && chain.read(host.memory, 0, this.hdrBytes, 0, 2) === 2) {
      result = this.control(this.hdrView.getUint16(0, true));
    }
    if (result !== CanResult.OK) this.stats.ctrlNotOk++;
    const used = resultAddr >= 0 && host.memory.writeByte(resultAddr, result) ? 1 : 0;
    q.pushUsed(head, used);
  }

  private control(type: number): number {
    switch (type) {
      case CanMsgType.SET_CTRL_MODE_START:
        this.stats.ctrlStart++;
        // Clearing BUSOFF happens before the request is marked used; the driver caused it, so no
        // config-change notification is needed (5.22.6.3).
        if (this.status & CanStatus.CTRL_BUSOFF) {
          this.status &= ~CanStatus.CTRL_BUSOFF;
          // Back from bus-off: observers of the bus see the controller restart.
          this.hub.injectBusState(this.port.id, 'error-active');
        }
        if (this.controller !== 'started') {
          this.controller = 'started';
          this.port.setReceiving(true);
          this.onControllerChange?.('started');
        }
        return CanResult.OK;
      case CanMsgType.SET_CTRL_MODE_STOP:
        this.stats.ctrlStop++;
        this.enterStopped();
        return CanResult.OK;
      default:
        return CanResult.NOT_OK;
    }
  }

  private enterStopped(): void {
    const was = this.controller;
    this.controller = 'stopped';
    if (was !== 'stopped') this.onControllerChange?.('stopped');
    // Frames not yet delivered are discarded: a later START must not deliver stale frames.
    this.port.setReceiving(false);
    this.cancelPendingTx();
  }
}

const EMPTY = new Uint8Array(0);
