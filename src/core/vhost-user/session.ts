/**
 * One vhost-user connection, back-end side: decodes each front-end message, keeps the per-ring and
 * per-connection state, and drives the device through the device contract.
 *
 * Reply rules (vhost-user.rst "Communication"; docs/protocol-notes.md 1.2): messages that have a
 * reply body always get exactly that reply, with flags 0x5 and the request code echoed, whatever
 * NEED_REPLY says. Every other message gets a u64 ack (0 = success) only when the front-end set
 * NEED_REPLY. Unknown requests: a non-zero ack with NEED_REPLY, otherwise logged and ignored.
 *
 * Ring states (vhost-user.rst "Ring states", "Suspended device state"; docs/protocol-notes.md 1.3):
 * started/stopped and enabled/disabled are independent. A ring is started by SET_VRING_KICK and
 * stopped by GET_VRING_BASE; it is enabled by SET_VRING_ENABLE(1), or by SET_FEATURES when bit 30
 * was not negotiated. The device may process a ring only while it is started and enabled; a started
 * but disabled ring is processed without side effects (the device's queueDiscard: what the driver
 * posts is returned failed). With every ring stopped the device is suspended: no guest-memory
 * writes, no interrupts and no back-end messages (the config-change notification is deferred).
 */
import { GuestMemory, type MappedRegion, validateRegionInfo } from '../memory/guest-memory.js';
import { deviceFailure, dispositionOf, errorCodeOf, VhostError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { featureBit, hasFeature, MAX_QUEUE_SIZE, VirtioFeature } from '../virtio/features.js';
import { SplitQueue } from '../virtio/split-queue.js';
import {
  decodeConfig,
  decodeMemTable,
  decodeSingleRegion,
  decodeU64,
  decodeVringAddr,
  decodeVringFdIndex,
  decodeVringState,
  encodeConfig,
  encodeMessage,
  encodeU64,
  encodeVringState,
  type MemRegionDesc,
  needsReply,
  type VhostUserMessage,
  type VringAddr,
} from './codec.js';
import type { DeviceHost, VirtioDevice } from './device.js';
import {
  BackendReq,
  ConfigFlag,
  DeviceStatus,
  FrontendReq,
  frontendReqName,
  HeaderFlag,
  MAX_CONFIG_SIZE,
  MAX_MEM_SLOTS,
  MAX_MEM_TABLE_REGIONS,
  ProtocolFeature,
  REPLY_FLAGS,
} from './protocol.js';

/** What the session needs from the outside world (implemented by src/node/vhost-user). */
export interface SessionIo {
  /** Writes a complete message to the front-end socket. */
  sendToFrontend(bytes: Uint8Array): void;
  /** Maps a region's fd (shared, read/write). The session closes the fd itself afterwards. */
  mapRegion(region: MemRegionDesc, fd: number): MappedRegion;
  closeFd(fd: number): void;
  /** Watches a kick eventfd: drains it and calls onKick whenever it is signalled. */
  watchKick(fd: number, onKick: () => void): { close(): void };
  /**
   * A ring whose SET_VRING_KICK carried the NOFD flag has no kick to wait for: the back-end polls
   * it. Calls onPoll periodically until closed.
   */
  pollKick(onPoll: () => void): { close(): void };
  /** Signals a call eventfd (one 8-byte write of 1). */
  signal(fd: number): void;
  /** Runs `fn` after the current event-loop turn (setImmediate in the node layer). */
  schedule(fn: () => void): void;
  /** Writes a message on the back-end channel; returns false if it could not be written now. */
  sendToBackendChannel(fd: number, bytes: Uint8Array): boolean;
}

/** Protocol features this implementation supports (and tests). */
export const SUPPORTED_PROTOCOL_FEATURES =
  featureBit(ProtocolFeature.MQ) |
  featureBit(ProtocolFeature.REPLY_ACK) |
  featureBit(ProtocolFeature.BACKEND_REQ) |
  featureBit(ProtocolFeature.CONFIG) |
  featureBit(ProtocolFeature.RESET_DEVICE) |
  featureBit(ProtocolFeature.CONFIGURE_MEM_SLOTS) |
  featureBit(ProtocolFeature.STATUS);

const PROTOCOL_FEATURES_BIT = featureBit(VirtioFeature.PROTOCOL_FEATURES);

/** Requests whose reply is a body, sent whatever NEED_REPLY says (never an extra ack). */
const ALWAYS_REPLY: ReadonlySet<number> = new Set([
  FrontendReq.GET_FEATURES,
  FrontendReq.GET_PROTOCOL_FEATURES,
  FrontendReq.GET_VRING_BASE,
  FrontendReq.GET_QUEUE_NUM,
  FrontendReq.GET_CONFIG,
  FrontendReq.GET_MAX_MEM_SLOTS,
  FrontendReq.GET_STATUS,
]);

export interface SessionStats {
  messages: number;
  rejected: number;
  unknown: number;
  kicks: number;
  calls: number;
  configChangeSent: number;
}

class Vring {
  num = 0;
  base = 0;
  addr: VringAddr | null = null;
  kickFd = -1;
  callFd = -1;
  errFd = -1;
  kickWatch: { close(): void } | null = null;
  started = false;
  enabled = false;
  queue: SplitQueue | null = null;
  /** The device was told this ring is active (queueStarted) and not yet told it stopped. */
  active = false;
}

export interface SessionOptions {
  log: Logger;
  /** Restricts the protocol features offered (default: all supported). */
  protocolFeatures?: bigint;
}

export class VhostUserSession implements DeviceHost {
  readonly device: VirtioDevice;
  readonly log: Logger;
  readonly stats: SessionStats = {
    messages: 0,
    rejected: 0,
    unknown: 0,
    kicks: 0,
    calls: 0,
    configChangeSent: 0,
  };

  private readonly io: SessionIo;
  private readonly offeredProtocol: bigint;
  private readonly offeredFeatures: bigint;
  private protocol = 0n;
  private acked = 0n;
  private featuresSet = false;
  private owner = false;
  private mem: GuestMemory = GuestMemory.empty();
  private readonly vrings: Vring[];
  private backendFd = -1;
  private status = 0;
  private brokenBy: VhostError | null = null;
  private configChangePending = false;
  /** Some ring has been processable on this connection (so a later fresh start is a reset). */
  private everActive = false;
  private closed = false;

  constructor(device: VirtioDevice, io: SessionIo, opts: SessionOptions) {
    this.device = device;
    this.io = io;
    this.log = opts.log;
    this.offeredProtocol =
      SUPPORTED_PROTOCOL_FEATURES & (opts.protocolFeatures ?? SUPPORTED_PROTOCOL_FEATURES);
    this.offeredFeatures = device.features | PROTOCOL_FEATURES_BIT;
    this.vrings = Array.from({ length: device.numQueues }, () => new Vring());
    device.attach(this);
  }

  // ---- DeviceHost --------------------------------------------------------------------------------

  get memory(): GuestMemory {
    return this.mem;
  }

  get ackedFeatures(): bigint {
    return this.acked & ~PROTOCOL_FEATURES_BIT;
  }

  get broken(): VhostError | null {
    return this.brokenBy;
  }

  queue(index: number): SplitQueue | null {
    const v = this.vrings[index];
    if (v === undefined || !v.active || this.brokenBy !== null) return null;
    return v.queue;
  }

  disabledQueue(index: number): SplitQueue | null {
    const v = this.vrings[index];
    if (v === undefined || !v.started || v.enabled || this.brokenBy !== null) return null;
    return v.queue;
  }

  schedule(fn: () => void): void {
    if (this.closed) return;
    this.io.schedule(() => {
      if (!this.closed) this.callDevice(fn);
    });
  }

  notifyConfigChange(): boolean {
    if (this.backendFd < 0 || !this.hasProtocol(ProtocolFeature.BACKEND_REQ)) return false;
    if (this.suspended()) {
      // vhost-user.rst: no back-end messages while suspended; send once a ring runs again.
      this.configChangePending = true;
      return true;
    }
    this.sendConfigChange();
    return true;
  }

  markBroken(err: VhostError): void {
    if (this.brokenBy !== null) return;
    this.brokenBy = err;
    this.log.error('device marked broken: guest misbehaved; rings are left alone until reset', {
      code: err.code,
      reason: err.message,
    });
    this.device.halt();
  }

  // ---- message handling ---------------------------------------------------------------------

  /**
   * Handles one message. Throws only for 'disconnect' failures; everything else is answered
   * (NACK when the front-end asked for a reply) and logged. Unused fds are always closed.
   */
  handle(msg: VhostUserMessage): void {
    if (this.closed) {
      for (const fd of msg.fds) this.io.closeFd(fd);
      return;
    }
    this.stats.messages++;
    if (this.log.debugEnabled) {
      this.log.debug('message', {
        request: frontendReqName(msg.request),
        flags: msg.flags,
        size: msg.payload.byteLength,
        fds: msg.fds.length,
      });
    }
    const fds = msg.fds.slice();
    let ok = true;
    let replied = false;
    try {
      replied = this.dispatch(msg, fds);
    } catch (err) {
      const disposition = dispositionOf(err);
      if (disposition === 'disconnect' || disposition === 'fatal') {
        throw err; // fds are closed by the finally below
      }
      if (ALWAYS_REPLY.has(msg.request) && msg.request !== FrontendReq.GET_CONFIG) {
        // These requests have a reply body the front-end waits for; there is no NACK for them, and
        // a made-up value would be worse than a clean disconnect.
        throw new VhostError(
          'ERR_VU_NO_ANSWER',
          `cannot answer ${frontendReqName(msg.request)}: ${errorCodeOf(err)}`,
          {
            cause: err,
          },
        );
      }
      if (disposition === 'mark-broken' && err instanceof VhostError) {
        this.markBroken(err);
      }
      ok = false;
      this.stats.rejected++;
      this.log.warn('request refused', {
        request: frontendReqName(msg.request),
        code: errorCodeOf(err),
        reason: err instanceof Error ? err.message : String(err),
      });
    } finally {
      // Any fd a handler did not take over is closed here (e.g. a stray fd on REM_MEM_REG).
      for (const fd of fds) this.io.closeFd(fd);
    }
    if (!replied && needsReply(msg.flags)) this.reply(msg.request, encodeU64(ok ? 0 : 1));
  }

  private reply(request: number, payload: Uint8Array): void {
    this.io.sendToFrontend(encodeMessage(request, REPLY_FLAGS, payload));
  }

  private hasProtocol(bit: number): boolean {
    return hasFeature(this.protocol, bit);
  }

  private requireProtocol(bit: number, what: string): void {
    if (!this.hasProtocol(bit))
      throw new VhostError('ERR_VU_UNSUPPORTED', `${what} needs a protocol feature not negotiated`);
  }

  private vring(index: number): Vring {
    const v = this.vrings[index];
    if (v === undefined) {
      throw new VhostError('ERR_VU_BAD_INDEX', `queue index ${index} (device has ${this.vrings.length})`);
    }
    return v;
  }

  private takeFd(fds: number[], what: string): number {
    if (fds.length !== 1) throw new VhostError('ERR_VU_BAD_FDS', `${what}: expected 1 fd, got ${fds.length}`);
    return fds.pop()!;
  }

  private expectNoPayload(msg: VhostUserMessage): void {
    if (msg.payload.byteLength !== 0) {
      throw new VhostError(
        'ERR_VU_BAD_SIZE',
        `${frontendReqName(msg.request)} carries ${msg.payload.byteLength} bytes`,
      );
    }
  }

  /** Returns true when the handler already sent the reply. */
  private dispatch(msg: VhostUserMessage, fds: number[]): boolean {
    const p = msg.payload;
    switch (msg.request) {
      case FrontendReq.GET_FEATURES:
        this.reply(msg.request, encodeU64(this.offeredFeatures));
        return true;
      case FrontendReq.SET_FEATURES:
        this.handleSetFeatures(decodeU64(p, 'features'));
        return false;
      case FrontendReq.SET_OWNER:
        this.owner = true;
        return false;
      case FrontendReq.RESET_OWNER:
        this.owner = false;
        this.resetDevice();
        return false;
      case FrontendReq.GET_PROTOCOL_FEATURES:
        this.reply(msg.request, encodeU64(this.offeredProtocol));
        return true;
      case FrontendReq.SET_PROTOCOL_FEATURES:
        this.handleSetProtocolFeatures(decodeU64(p, 'protocol features'));
        return false;
      case FrontendReq.GET_QUEUE_NUM:
        // Answerable as soon as MQ is offered: QEMU asks right after GET_PROTOCOL_FEATURES,
        // before SET_PROTOCOL_FEATURES has negotiated anything (vhost-user.rst, GET_QUEUE_NUM).
        if (!hasFeature(this.offeredProtocol, ProtocolFeature.MQ))
          throw new VhostError(
            'ERR_VU_UNSUPPORTED',
            'GET_QUEUE_NUM needs the MQ protocol feature (not offered)',
          );
        this.reply(msg.request, encodeU64(this.vrings.length));
        return true;
      case FrontendReq.SET_MEM_TABLE:
        this.handleSetMemTable(p, fds);
        return false;
      case FrontendReq.GET_MAX_MEM_SLOTS:
        this.requireProtocol(ProtocolFeature.CONFIGURE_MEM_SLOTS, 'GET_MAX_MEM_SLOTS');
        this.reply(msg.request, encodeU64(MAX_MEM_SLOTS));
        return true;
      case FrontendReq.ADD_MEM_REG:
        this.requireProtocol(ProtocolFeature.CONFIGURE_MEM_SLOTS, 'ADD_MEM_REG');
        this.handleAddMemReg(p, fds);
        return false;
      case FrontendReq.REM_MEM_REG:
        this.requireProtocol(ProtocolFeature.CONFIGURE_MEM_SLOTS, 'REM_MEM_REG');
        this.handleRemMemReg(p);
        return false;
      case FrontendReq.SET_VRING_NUM:
        this.handleSetVringNum(p);
        return false;
      case FrontendReq.SET_VRING_ADDR:
        this.handleSetVringAddr(p);
        return false;
      case FrontendReq.SET_VRING_BASE:
        this.handleSetVringBase(p);
        return false;
      case FrontendReq.GET_VRING_BASE:
        return this.handleGetVringBase(msg);
      case FrontendReq.SET_VRING_KICK:
        this.handleSetVringKick(p, fds);
        return false;
      case FrontendReq.SET_VRING_CALL:
        this.handleSetVringCall(p, fds);
        return false;
      case FrontendReq.SET_VRING_ERR:
        this.handleSetVringErr(p, fds);
        return false;
      case FrontendReq.SET_VRING_ENABLE:
        this.handleSetVringEnable(p);
        return false;
      case FrontendReq.SET_BACKEND_REQ_FD:
        this.requireProtocol(ProtocolFeature.BACKEND_REQ, 'SET_BACKEND_REQ_FD');
        this.handleSetBackendReqFd(fds);
        return false;
      case FrontendReq.GET_CONFIG:
        this.handleGetConfig(msg);
        return true;
      case FrontendReq.SET_CONFIG:
        this.requireProtocol(ProtocolFeature.CONFIG, 'SET_CONFIG');
        this.handleSetConfig(p);
        return false;
      case FrontendReq.RESET_DEVICE:
        this.requireProtocol(ProtocolFeature.RESET_DEVICE, 'RESET_DEVICE');
        this.expectNoPayload(msg);
        this.resetDevice();
        return false;
      case FrontendReq.SET_STATUS:
        this.requireProtocol(ProtocolFeature.STATUS, 'SET_STATUS');
        this.handleSetStatus(decodeU64(p, 'status'));
        return false;
      case FrontendReq.GET_STATUS: {
        this.requireProtocol(ProtocolFeature.STATUS, 'GET_STATUS');
        const s = this.status | (this.brokenBy !== null ? DeviceStatus.DEVICE_NEEDS_RESET : 0);
        this.reply(msg.request, encodeU64(s));
        return true;
      }
      default:
        this.stats.unknown++;
        throw new VhostError(
          'ERR_VU_UNSUPPORTED',
          `request ${frontendReqName(msg.request)} is not supported`,
        );
    }
  }

  private handleSetFeatures(f: bigint): void {
    const unknown = f & ~this.offeredFeatures;
    if (unknown !== 0n) {
      throw new VhostError('ERR_VU_FEATURES', `features 0x${unknown.toString(16)} were not offered`);
    }
    if (this.suspended()) {
      // A driver negotiating again with every ring stopped is a virtio device reset from the
      // device's point of view: a broken device gets its second chance here.
      this.brokenBy = null;
    }
    this.acked = f;
    this.featuresSet = true;
    // vhost-user.rst: without VHOST_USER_F_PROTOCOL_FEATURES every ring is enabled at once.
    const enableAll = (f & PROTOCOL_FEATURES_BIT) === 0n;
    this.device.setFeatures(f & ~PROTOCOL_FEATURES_BIT);
    const opts = this.queueOptions();
    for (let i = 0; i < this.vrings.length; i++) {
      const v = this.vrings[i]!;
      v.queue?.setOptions(opts);
      if (enableAll && !v.enabled) {
        v.enabled = true;
        this.refreshActive(i);
      }
    }
  }

  private queueOptions(): { eventIdx: boolean; indirect: boolean } {
    return {
      eventIdx: hasFeature(this.acked, VirtioFeature.RING_EVENT_IDX),
      indirect: hasFeature(this.acked, VirtioFeature.RING_INDIRECT_DESC),
    };
  }

  private handleSetProtocolFeatures(f: bigint): void {
    const unknown = f & ~this.offeredProtocol;
    if (unknown !== 0n) {
      throw new VhostError('ERR_VU_FEATURES', `protocol features 0x${unknown.toString(16)} were not offered`);
    }
    this.protocol = f;
  }

  // ---- memory ---------------------------------------------------------------------------------

  private mapAll(descs: readonly MemRegionDesc[], fds: number[]): MappedRegion[] {
    const mapped: MappedRegion[] = [];
    try {
      for (let i = 0; i < descs.length; i++) {
        const d = descs[i]!;
        validateRegionInfo(d);
        try {
          mapped.push(this.io.mapRegion(d, fds[i]!));
        } catch (err) {
          throw new VhostError('ERR_VU_MEM_MAP', `cannot map region ${i}: ${(err as Error).message}`, {
            cause: err,
          });
        }
      }
    } catch (err) {
      for (const m of mapped) m.release();
      throw err;
    }
    return mapped;
  }

  private handleSetMemTable(p: Uint8Array, fds: number[]): void {
    const descs = decodeMemTable(p, MAX_MEM_TABLE_REGIONS);
    if (fds.length !== descs.length) {
      throw new VhostError(
        'ERR_VU_BAD_FDS',
        `memory table of ${descs.length} regions came with ${fds.length} fds`,
      );
    }
    const mapped = this.mapAll(descs, fds);
    let next: GuestMemory;
    try {
      next = new GuestMemory(mapped);
    } catch (err) {
      for (const m of mapped) m.release();
      throw err;
    }
    this.replaceMemory(next);
  }

  private handleAddMemReg(p: Uint8Array, fds: number[]): void {
    const d = decodeSingleRegion(p);
    const fd = this.takeFd(fds, 'ADD_MEM_REG');
    fds.push(fd); // closed after mapping by the caller's finally
    if (this.mem.regions.length >= MAX_MEM_SLOTS) {
      throw new VhostError('ERR_VU_BAD_REGION', `all ${MAX_MEM_SLOTS} memory slots are in use`);
    }
    const [m] = this.mapAll([d], [fd]);
    let next: GuestMemory;
    try {
      next = new GuestMemory([...this.mem.regions.map((r) => r.source), m!]);
    } catch (err) {
      m!.release();
      throw err;
    }
    this.replaceMemory(next, false);
  }

  private handleRemMemReg(p: Uint8Array): void {
    const d = decodeSingleRegion(p);
    const keep: MappedRegion[] = [];
    let removed: MappedRegion | null = null;
    for (const r of this.mem.regions) {
      const s = r.source;
      if (
        removed === null &&
        s.guestPhysAddr === d.guestPhysAddr &&
        s.size === d.size &&
        s.userAddr === d.userAddr
      ) {
        removed = s;
      } else keep.push(s);
    }
    if (removed === null) {
      throw new VhostError(
        'ERR_VU_BAD_REGION',
        `no region at guest physical 0x${d.guestPhysAddr.toString(16)}`,
      );
    }
    this.replaceMemory(new GuestMemory(keep), false);
    removed.release();
  }

  /**
   * Installs a new table: rings are re-translated first, and only then are the old mappings
   * released (vhost-user.rst: a new table invalidates the old one).
   */
  private replaceMemory(next: GuestMemory, releaseOld = true): void {
    const old = this.mem;
    this.mem = next;
    for (const v of this.vrings) {
      if (v.queue === null) continue;
      try {
        v.queue.translate(next);
      } catch (err) {
        if (err instanceof VhostError) this.markBroken(err);
        else throw err;
      }
    }
    if (releaseOld) old.releaseAll();
  }

  // ---- rings ----------------------------------------------------------------------------------

  private handleSetVringNum(p: Uint8Array): void {
    const s = decodeVringState(p);
    const v = this.vring(s.index);
    const max = Math.min(this.device.maxQueueSize, MAX_QUEUE_SIZE);
    if (s.num === 0 || s.num > max || (s.num & (s.num - 1)) !== 0) {
      throw new VhostError('ERR_VU_BAD_VALUE', `queue ${s.index}: size ${s.num} (power of two, 1..${max})`);
    }
    if (v.started) throw new VhostError('ERR_VU_BAD_STATE', `queue ${s.index}: size change while started`);
    v.num = s.num;
  }

  private handleSetVringAddr(p: Uint8Array): void {
    const a = decodeVringAddr(p);
    const v = this.vring(a.index);
    if (v.started) throw new VhostError('ERR_VU_BAD_STATE', `queue ${a.index}: address change while started`);
    v.addr = a;
  }

  private handleSetVringBase(p: Uint8Array): void {
    const s = decodeVringState(p);
    const v = this.vring(s.index);
    if (v.started) throw new VhostError('ERR_VU_BAD_STATE', `queue ${s.index}: base change while started`);
    if (s.num > 0xffff) throw new VhostError('ERR_VU_BAD_VALUE', `queue ${s.index}: base ${s.num} > 0xffff`);
    v.base = s.num;
  }

  private handleGetVringBase(msg: VhostUserMessage): boolean {
    const s = decodeVringState(msg.payload);
    const v = this.vring(s.index);
    // Finish or fail everything taken from the ring before answering: the front-end restarts the
    // ring at the index we return, so anything still in flight would be lost (vhost-user.rst "Ring states").
    this.deactivate(s.index);
    const next = v.queue !== null ? v.queue.lastAvail : v.base;
    this.stopRing(v);
    v.base = next;
    this.reply(msg.request, encodeVringState({ index: s.index, num: next }));
    return true;
  }

  private stopRing(v: Vring): void {
    v.started = false;
    v.queue = null;
    v.kickWatch?.close();
    v.kickWatch = null;
    if (v.kickFd >= 0) this.io.closeFd(v.kickFd);
    v.kickFd = -1;
  }

  private handleSetVringKick(p: Uint8Array, fds: number[]): void {
    const { index, noFd } = decodeVringFdIndex(p);
    const v = this.vring(index);
    const fd = noFd ? -1 : this.takeFd(fds, 'SET_VRING_KICK');
    if (noFd && fds.length > 0) throw new VhostError('ERR_VU_BAD_FDS', 'SET_VRING_KICK: NOFD with an fd');
    v.kickWatch?.close();
    v.kickWatch = null;
    if (v.kickFd >= 0) this.io.closeFd(v.kickFd);
    v.kickFd = fd;
    if (fd >= 0) {
      v.kickWatch = this.io.watchKick(fd, () => this.onKick(index));
    } else {
      // vhost-user.rst, SET_VRING_KICK: with the NOFD flag the back-end polls the ring instead of
      // waiting for kicks.
      this.log.info('queue has no kick fd: polling it', { queue: index });
      v.kickWatch = this.io.pollKick(() => this.onPoll(index));
    }
    if (!v.started) this.startRing(index, v);
  }

  private startRing(index: number, v: Vring): void {
    if (v.num === 0) throw new VhostError('ERR_VU_BAD_STATE', `queue ${index}: started before SET_VRING_NUM`);
    if (v.addr === null)
      throw new VhostError('ERR_VU_BAD_STATE', `queue ${index}: started before SET_VRING_ADDR`);
    const addr = v.addr;
    let q: SplitQueue;
    try {
      q = new SplitQueue(
        index,
        v.num,
        v.base,
        { desc: addr.desc, avail: addr.avail, used: addr.used },
        this.mem,
        this.queueOptions(),
        () => this.signalCall(index),
      );
    } catch (err) {
      if (err instanceof VhostError) {
        // The driver gave ring addresses outside its memory: the device cannot run.
        this.markBroken(err);
        return;
      }
      throw err;
    }
    v.queue = q;
    v.started = true;
    this.refreshActive(index);
    if (!v.enabled) this.discard(index);
    if (this.configChangePending && !this.suspended()) {
      this.configChangePending = false;
      this.sendConfigChange();
    }
  }

  private handleSetVringCall(p: Uint8Array, fds: number[]): void {
    const { index, noFd } = decodeVringFdIndex(p);
    const v = this.vring(index);
    const fd = noFd ? -1 : this.takeFd(fds, 'SET_VRING_CALL');
    if (v.callFd >= 0) this.io.closeFd(v.callFd);
    v.callFd = fd;
  }

  private handleSetVringErr(p: Uint8Array, fds: number[]): void {
    const { index, noFd } = decodeVringFdIndex(p);
    const v = this.vring(index);
    const fd = noFd ? -1 : this.takeFd(fds, 'SET_VRING_ERR');
    if (v.errFd >= 0) this.io.closeFd(v.errFd);
    v.errFd = fd;
  }

  private handleSetVringEnable(p: Uint8Array): void {
    const s = decodeVringState(p);
    const v = this.vring(s.index);
    if (!hasFeature(this.acked, VirtioFeature.PROTOCOL_FEATURES) && this.featuresSet) {
      throw new VhostError('ERR_VU_BAD_STATE', 'SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES');
    }
    if (s.num > 1) throw new VhostError('ERR_VU_BAD_VALUE', `SET_VRING_ENABLE(${s.index}, ${s.num})`);
    const on = s.num === 1;
    if (on === v.enabled) return;
    if (!on) this.deactivate(s.index);
    v.enabled = on;
    this.refreshActive(s.index);
    if (!on) this.discard(s.index);
  }

  /** Tells the device when a ring becomes processable. */
  private refreshActive(index: number): void {
    const v = this.vrings[index]!;
    const shouldBe = v.started && v.enabled && v.queue !== null;
    if (shouldBe && !v.active) {
      if (this.everActive && !this.vrings.some((r) => r.active) && this.freshRings()) {
        // Every ring restarted at index 0 after all had stopped: the driver re-initialised the
        // device. QEMU's vhost-user-base never forwards the guest's status reset (no SET_STATUS(0),
        // no RESET_DEVICE), so this is the only sign of it. Without a reset here the device would
        // keep its pre-reboot state (a STARTED CAN controller) and deliver stale work to the new
        // driver. A VM pause/resume restarts the rings at their old, non-zero indices instead.
        this.log.info('rings restarted from index 0: the driver was reset; resetting the device');
        this.callDevice(() => {
          this.device.reset();
          this.device.setFeatures(this.acked & ~PROTOCOL_FEATURES_BIT);
        });
      }
      v.active = true;
      this.everActive = true;
      if (this.brokenBy === null) this.callDevice(() => this.device.queueStarted(index));
    }
  }

  /** True when every started ring was started at index 0 with an empty used ring. */
  private freshRings(): boolean {
    let any = false;
    for (const r of this.vrings) {
      if (!r.started || r.queue === null) continue;
      if (r.base !== 0 || r.queue.usedIdx !== 0) return false;
      any = true;
    }
    return any;
  }

  /** Tells the device a ring stops being processable, while it can still complete chains. */
  private deactivate(index: number): void {
    const v = this.vrings[index]!;
    if (!v.active) return;
    if (this.brokenBy === null) this.callDevice(() => this.device.queueStopping(index));
    v.active = false;
  }

  private onKick(index: number): void {
    this.stats.kicks++;
    if (this.queue(index) === null) this.discard(index);
    else this.callDevice(() => this.device.queueNotified(index));
  }

  /** A started but disabled ring: the device consumes it without side effects (see the header). */
  private discard(index: number): void {
    if (this.device.queueDiscard === undefined || this.disabledQueue(index) === null) return;
    this.callDevice(() => this.device.queueDiscard!(index));
  }

  /** A poll tick of a NOFD ring: the device hears about it only when the driver added buffers. */
  private onPoll(index: number): void {
    const active = this.queue(index);
    const q = active ?? this.disabledQueue(index);
    if (q === null) return;
    try {
      if (q.pending() === 0) return;
    } catch {
      // A corrupt avail index: the device reads it too and marks itself broken.
    }
    if (active === null) this.discard(index);
    else this.callDevice(() => this.device.queueNotified(index));
  }

  /** Runs device code; a failure breaks this device only, never the daemon. */
  private callDevice(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      const e = deviceFailure(err);
      this.markBroken(e);
    }
  }

  private signalCall(index: number): void {
    const v = this.vrings[index];
    if (v === undefined || v.callFd < 0) return;
    this.stats.calls++;
    this.io.signal(v.callFd);
  }

  private suspended(): boolean {
    for (const v of this.vrings) if (v.started) return false;
    return true;
  }

  // ---- back-end channel, config, status, reset -------------------------------------------------

  private handleSetBackendReqFd(fds: number[]): void {
    const fd = this.takeFd(fds, 'SET_BACKEND_REQ_FD');
    if (this.backendFd >= 0) this.io.closeFd(this.backendFd);
    this.backendFd = fd;
  }

  private sendConfigChange(): void {
    // No NEED_REPLY: waiting for QEMU's answer while QEMU may itself wait on us for a GET_CONFIG
    // round trip from a vCPU could deadlock (docs/protocol-notes.md 1.5). Flags: version 1 only, size 0.
    const msg = encodeMessage(BackendReq.CONFIG_CHANGE_MSG, HeaderFlag.VERSION);
    if (this.io.sendToBackendChannel(this.backendFd, msg)) this.stats.configChangeSent++;
    else this.log.warn('could not send CONFIG_CHANGE_MSG on the back-end channel');
  }

  private handleGetConfig(msg: VhostUserMessage): void {
    let offset: number;
    let size: number;
    try {
      this.requireProtocol(ProtocolFeature.CONFIG, 'GET_CONFIG');
      const c = decodeConfig(msg.payload, MAX_CONFIG_SIZE);
      if (c.offset > MAX_CONFIG_SIZE - c.size) {
        throw new VhostError(
          'ERR_VU_CONFIG_RANGE',
          `config read at ${c.offset}+${c.size} beyond ${MAX_CONFIG_SIZE}`,
        );
      }
      offset = c.offset;
      size = c.size;
    } catch (err) {
      // The documented way to fail GET_CONFIG is a reply with an empty payload (vhost-user.rst).
      this.stats.rejected++;
      this.log.warn('GET_CONFIG refused', { code: errorCodeOf(err), reason: (err as Error).message });
      this.reply(msg.request, new Uint8Array(0));
      return;
    }
    // Zero-padded past the real struct, so config_size=2 and config_size=16 both read sane bytes.
    const space = new Uint8Array(Math.max(offset + size, this.device.configSize));
    this.device.readConfig(space.subarray(0, this.device.configSize));
    this.reply(
      msg.request,
      encodeConfig({ offset, size, flags: 0, data: space.subarray(offset, offset + size) }),
    );
  }

  private handleSetConfig(p: Uint8Array): void {
    const c = decodeConfig(p, MAX_CONFIG_SIZE);
    if (c.flags === ConfigFlag.MIGRATION) return; // restoring migrated state: nothing to write back
    if (c.offset > this.device.configSize || c.size > this.device.configSize - c.offset) {
      throw new VhostError(
        'ERR_VU_CONFIG_RANGE',
        `config write at ${c.offset}+${c.size} beyond the device's config`,
      );
    }
    if (!this.device.writeConfig(c.offset, c.data)) {
      throw new VhostError('ERR_VU_CONFIG_READONLY', `config write at ${c.offset}+${c.size} refused`);
    }
  }

  private handleSetStatus(v: bigint): void {
    if (v > 0xffn) throw new VhostError('ERR_VU_BAD_VALUE', `status 0x${v.toString(16)}`);
    const s = Number(v);
    if (s === 0 && this.status !== 0) this.resetDevice();
    this.status = s;
  }

  /** Device reset: every ring stopped and disabled, features cleared, device back to power-on. */
  private resetDevice(): void {
    for (let i = 0; i < this.vrings.length; i++) {
      this.deactivate(i);
      const v = this.vrings[i]!;
      this.stopRing(v);
      v.enabled = false;
      v.base = 0;
      v.addr = null;
      v.num = 0;
    }
    this.acked = 0n;
    this.featuresSet = false;
    this.brokenBy = null;
    this.status = 0;
    this.configChangePending = false;
    this.device.reset();
  }

  /** Connection closed: drop every per-connection resource. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.device.halt();
    for (const v of this.vrings) {
      v.active = false;
      this.stopRing(v);
      if (v.callFd >= 0) this.io.closeFd(v.callFd);
      if (v.errFd >= 0) this.io.closeFd(v.errFd);
      v.callFd = -1;
      v.errFd = -1;
    }
    if (this.backendFd >= 0) this.io.closeFd(this.backendFd);
    this.backendFd = -1;
    this.device.destroy();
    this.mem.releaseAll();
    this.mem = GuestMemory.empty();
  }

  /** For diagnostics and tests. */
  describe(): {
    owner: boolean;
    acked: bigint;
    protocol: bigint;
    rings: { started: boolean; enabled: boolean }[];
  } {
    return {
      owner: this.owner,
      acked: this.acked,
      protocol: this.protocol,
      rings: this.vrings.map((v) => ({ started: v.started, enabled: v.enabled })),
    };
  }
}
