/**
 * One method per vhost-user front-end message (vhost-user.rst "Front-end message types"), for
 * VhostUserFrontend (frontend.ts): each encodes its payload with the shared codec
 * (src/core/vhost-user/codec.ts) and sends it through the transport (frontend-transport.ts);
 * messages with a reply body decode and check it. No ordering rules here: QEMU's choreography is in
 * frontend.ts, and tests may send any message in any state.
 */
import {
  type ConfigMsg,
  decodeConfig,
  decodeVringState,
  encodeConfig,
  encodeMemTable,
  encodeSingleRegion,
  encodeU64,
  encodeVringAddr,
  encodeVringFdIndex,
  encodeVringState,
  type MemRegionDesc,
} from '../../core/vhost-user/codec.js';
import { FrontendReq, MAX_CONFIG_SIZE } from '../../core/vhost-user/protocol.js';
import { FrontendError } from './errors.js';
import { type AckOptions, FrontendTransport } from './frontend-transport.js';
import type { GuestRam } from './guest-ram.js';

/** The typed message methods of VhostUserFrontend, over its transport. */
export abstract class FrontendMessages extends FrontendTransport {
  getFeatures(opts: AckOptions = {}): Promise<bigint> {
    return this.getU64(FrontendReq.GET_FEATURES, opts);
  }

  setFeatures(features: bigint, opts: AckOptions = {}): Promise<number | undefined> {
    return this.ack(FrontendReq.SET_FEATURES, encodeU64(features), opts);
  }

  setOwner(opts: AckOptions = {}): Promise<number | undefined> {
    return this.ack(FrontendReq.SET_OWNER, undefined, opts);
  }

  resetOwner(opts: AckOptions = {}): Promise<number | undefined> {
    return this.ack(FrontendReq.RESET_OWNER, undefined, opts);
  }

  getProtocolFeatures(opts: AckOptions = {}): Promise<bigint> {
    return this.getU64(FrontendReq.GET_PROTOCOL_FEATURES, opts);
  }

  setProtocolFeatures(features: bigint, opts: AckOptions = {}): Promise<number | undefined> {
    return this.ack(FrontendReq.SET_PROTOCOL_FEATURES, encodeU64(features), opts);
  }

  async getQueueNum(opts: AckOptions = {}): Promise<number> {
    return Number(await this.getU64(FrontendReq.GET_QUEUE_NUM, opts));
  }

  async getMaxMemSlots(opts: AckOptions = {}): Promise<number> {
    return Number(await this.getU64(FrontendReq.GET_MAX_MEM_SLOTS, opts));
  }

  /** SET_MEM_TABLE with every region of `ram`, or with explicit regions and their fds. */
  setMemTable(
    ram: GuestRam | readonly MemRegionDesc[],
    fdsOrOpts?: readonly number[] | AckOptions,
    maybeOpts: AckOptions = {},
  ): Promise<number | undefined> {
    let regions: readonly MemRegionDesc[];
    let fds: readonly number[];
    let opts: AckOptions;
    const fdList = isNumberList(fdsOrOpts) ? fdsOrOpts : undefined;
    if (isRegionList(ram)) {
      regions = ram;
      fds = fdList ?? [];
      opts = maybeOpts;
    } else {
      regions = ram.regions();
      fds = regions.map((_, i) => ram.fdFor(i));
      opts = fdList !== undefined || fdsOrOpts === undefined ? maybeOpts : (fdsOrOpts as AckOptions);
    }
    return this.ack(FrontendReq.SET_MEM_TABLE, encodeMemTable(regions), opts, fds);
  }

  addMemReg(region: MemRegionDesc, fd: number, opts: AckOptions = {}): Promise<number | undefined> {
    return this.ack(FrontendReq.ADD_MEM_REG, encodeSingleRegion(region), opts, [fd]);
  }

  remMemReg(region: MemRegionDesc, opts: AckOptions = {}): Promise<number | undefined> {
    return this.ack(FrontendReq.REM_MEM_REG, encodeSingleRegion(region), opts);
  }

  setVringNum(index: number, num: number, opts: AckOptions = {}): Promise<number | undefined> {
    return this.ack(FrontendReq.SET_VRING_NUM, encodeVringState({ index, num }), opts);
  }

  /** Addresses are front-end user addresses (GuestRam.uvaOf). */
  setVringAddr(
    a: { index: number; desc: number; used: number; avail: number; flags?: number; log?: number },
    opts: AckOptions = {},
  ): Promise<number | undefined> {
    const payload = encodeVringAddr({ flags: 0, log: 0, ...a });
    return this.ack(FrontendReq.SET_VRING_ADDR, payload, opts);
  }

  setVringBase(index: number, num: number, opts: AckOptions = {}): Promise<number | undefined> {
    return this.ack(FrontendReq.SET_VRING_BASE, encodeVringState({ index, num }), opts);
  }

  /** Stops ring `index` and returns its next avail index. */
  async getVringBase(index: number, opts: AckOptions = {}): Promise<number> {
    const m = await this.request(FrontendReq.GET_VRING_BASE, encodeVringState({ index, num: 0 }), {
      ...opts,
      expectReply: true,
    });
    let s: { index: number; num: number };
    try {
      s = decodeVringState(m!.payload);
    } catch (cause) {
      throw new FrontendError('ERR_FRONTEND_BAD_REPLY', 'GET_VRING_BASE reply is not a vring state', {
        cause,
      });
    }
    if (s.index !== index) {
      throw new FrontendError(
        'ERR_FRONTEND_BAD_REPLY',
        `GET_VRING_BASE(${index}) answered for queue ${s.index}`,
      );
    }
    return s.num;
  }

  /** `fd` null sends the NOFD bit (bit 8) and no fd. The fd is duplicated by the kernel: keep or close yours. */
  setVringKick(index: number, fd: number | null, opts: AckOptions = {}): Promise<number | undefined> {
    return this.vringFd(FrontendReq.SET_VRING_KICK, index, fd, opts);
  }

  setVringCall(index: number, fd: number | null, opts: AckOptions = {}): Promise<number | undefined> {
    return this.vringFd(FrontendReq.SET_VRING_CALL, index, fd, opts);
  }

  setVringErr(index: number, fd: number | null, opts: AckOptions = {}): Promise<number | undefined> {
    return this.vringFd(FrontendReq.SET_VRING_ERR, index, fd, opts);
  }

  private vringFd(
    req: number,
    index: number,
    fd: number | null,
    opts: AckOptions,
  ): Promise<number | undefined> {
    return this.ack(req, encodeVringFdIndex(index, fd === null), opts, fd === null ? [] : [fd]);
  }

  setVringEnable(index: number, enable: boolean, opts: AckOptions = {}): Promise<number | undefined> {
    return this.ack(FrontendReq.SET_VRING_ENABLE, encodeVringState({ index, num: enable ? 1 : 0 }), opts);
  }

  /**
   * Creates the back-end channel: a socketpair whose far end goes to the back-end; our end is
   * watched for back-end requests (CONFIG_CHANGE_MSG is counted and emitted; NEED_REPLY is
   * answered with u64 0). Replaces an earlier channel.
   */
  setBackendReqFd(opts: AckOptions = {}): Promise<number | undefined> {
    if (this.isClosed) return Promise.reject(this.closedError());
    const theirs = this.openBackendChannel();
    // Our copy of the far end is closed once the kernel has duplicated it into the message.
    return this.request(FrontendReq.SET_BACKEND_REQ_FD, undefined, {
      ...opts,
      fds: [theirs],
      closeAfter: [theirs],
    }).then((m) => (m === undefined ? undefined : Number(this.u64(m))));
  }

  /** GET_CONFIG; throws ERR_FRONTEND_CONFIG_REFUSED on the documented zero-size refusal. */
  async getConfig(
    offset: number,
    size: number,
    opts: AckOptions & { flags?: number } = {},
  ): Promise<ConfigMsg> {
    const payload = encodeConfig({ offset, size, flags: opts.flags ?? 0 });
    const m = await this.request(FrontendReq.GET_CONFIG, payload, { ...opts, expectReply: true });
    if (m!.payload.byteLength === 0) {
      throw new FrontendError('ERR_FRONTEND_CONFIG_REFUSED', `GET_CONFIG(${offset}, ${size}) refused`);
    }
    let c: ConfigMsg;
    try {
      c = decodeConfig(m!.payload, MAX_CONFIG_SIZE);
    } catch (cause) {
      throw new FrontendError('ERR_FRONTEND_BAD_REPLY', 'GET_CONFIG reply is malformed', { cause });
    }
    // QEMU: the reply payload must be exactly 12 + the requested size.
    if (c.size !== size || c.offset !== offset) {
      throw new FrontendError(
        'ERR_FRONTEND_BAD_REPLY',
        `GET_CONFIG(${offset}, ${size}) answered with ${c.offset}+${c.size}`,
      );
    }
    return { offset: c.offset, size: c.size, flags: c.flags, data: c.data.slice() };
  }

  setConfig(
    offset: number,
    data: Uint8Array,
    opts: AckOptions & { flags?: number } = {},
  ): Promise<number | undefined> {
    const payload = encodeConfig({ offset, size: data.byteLength, flags: opts.flags ?? 0, data });
    return this.ack(FrontendReq.SET_CONFIG, payload, opts);
  }

  resetDevice(opts: AckOptions = {}): Promise<number | undefined> {
    return this.ack(FrontendReq.RESET_DEVICE, undefined, opts);
  }

  setStatus(status: number, opts: AckOptions = {}): Promise<number | undefined> {
    return this.ack(FrontendReq.SET_STATUS, encodeU64(status), opts);
  }

  async getStatus(opts: AckOptions = {}): Promise<number> {
    return Number(await this.getU64(FrontendReq.GET_STATUS, opts));
  }
}

function isNumberList(x: readonly number[] | AckOptions | undefined): x is readonly number[] {
  return Array.isArray(x);
}

function isRegionList(x: GuestRam | readonly MemRegionDesc[]): x is readonly MemRegionDesc[] {
  return Array.isArray(x);
}
