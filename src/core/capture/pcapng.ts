/**
 * pcapng with LINKTYPE_CAN_SOCKETCAN (227), the format Wireshark and tshark read.
 *
 * Written (little-endian section): a Section Header Block, one Interface Description Block per
 * channel (bus) with `if_name` and `if_tsresol` = 9 (nanoseconds), and one Enhanced Packet Block per
 * frame with `epb_flags` (direction: 1 inbound, 2 outbound) and an `opt_comment` naming the port that
 * sent the frame. The packet is the SocketCAN pseudo-header (identifier and flags big-endian, length,
 * FD flags with FDF set for CAN FD, reserved, len8_dlc) followed by the payload padded to 8 bytes
 * (classic, RTR, error frames) or 64 bytes (CAN FD): the padded sizes let readers that predate the
 * FDF flag tell the two apart by size. Error frames carry CAN_ERR_FLAG and the class bits in the
 * identifier and the 8 bytes of linux/can/error.h.
 *
 * Read: either byte order, any `if_tsresol` (powers of 10 or 2) and `if_tsoffset`, Enhanced and Simple
 * Packet Blocks; blocks of other types are skipped. Interfaces of another link type are reported once
 * and their packets skipped. A block whose framing is broken (length field) ends the reading with a
 * report: nothing after it can be located.
 */
import { CanErr, type CanErrorFrame } from '../bus/can-error.js';
import { type CanFrame, CanFrameError, makeCanFrame } from '../bus/index.js';
import { ascii, concatBytes, InputBuffer, latin1, swap32, wordOf } from './bytes.js';
import { ChunkEncoder } from './encoder-base.js';
import { type FrameStage, STAGED_EXTENDED, STAGED_FD, STAGED_RTR } from './stage.js';
import type {
  CaptureDecoder,
  CaptureEncoder,
  CaptureEncoderOptions,
  CaptureEvent,
  CaptureTag,
  Direction,
  FileTotals,
} from './types.js';

export const LINKTYPE_CAN_SOCKETCAN = 227;

const BT_SHB = 0x0a0d0d0a;
const BT_IDB = 0x00000001;
const BT_SPB = 0x00000003;
const BT_EPB = 0x00000006;
const BYTE_ORDER_MAGIC = 0x1a2b3c4d;
const OPT_END = 0;
const OPT_COMMENT = 1;
const SHB_USERAPPL = 4;
const IF_NAME = 2;
const IF_TSRESOL = 9;
const IF_TSOFFSET = 14;
const EPB_FLAGS = 2;

/** SocketCAN identifier flags (linux/can.h), as in the pseudo-header. */
const CAN_EFF_FLAG = 0x80000000;
const CAN_RTR_FLAG = 0x40000000;
const CAN_ERR_FLAG = 0x20000000;
/** canfd_frame.flags */
const CANFD_BRS = 0x01;
const CANFD_ESI = 0x02;
const CANFD_FDF = 0x04;

const CLASSIC_PACKET = 16;
const FD_PACKET = 72;
/** EPB fixed part: type, length, interface, ts high, ts low, captured, original; trailing length. */
const EPB_FIXED = 28 + 4;

function pad4(n: number): number {
  return (n + 3) & ~3;
}

/** One option (code, value bytes), padded. */
function option(code: number, value: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + pad4(value.length));
  const dv = new DataView(out.buffer);
  dv.setUint16(0, code, true);
  dv.setUint16(2, value.length, true);
  out.set(value, 4);
  return out;
}

function block(type: number, body: Uint8Array): Uint8Array {
  const len = 12 + body.length;
  const out = new Uint8Array(len);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, type, true);
  dv.setUint32(4, len, true);
  out.set(body, 8);
  dv.setUint32(len - 4, len, true);
  return out;
}

/** UTF-8 is what pcapng strings are; names here are ASCII (other code units become '?'). */
function asciiSafe(s: string): Uint8Array {
  return ascii(s.replace(/[^\x20-\x7e]/g, '?'));
}

interface PcapngTag extends CaptureTag {
  /** The EPB options of every record of this port (flags, comment, end), or empty. */
  readonly options: Uint8Array;
  /** The same as little-endian words (their length is a multiple of 4). */
  readonly words: Uint32Array;
}

export class PcapngEncoder extends ChunkEncoder implements CaptureEncoder {
  readonly format = 'pcapng' as const;
  readonly channels: string[] = [];
  readonly headerHasTotals = false;
  readonly #application: string;
  readonly #idbs: Uint8Array[] = [];
  /** `startNs` as two 32-bit halves (the EPB's timestamp layout). */
  readonly #startHigh: number;
  readonly #startLow: number;
  #tsHigh = 0;
  #tsLow = 0;

  constructor(opts: CaptureEncoderOptions) {
    super(opts, 256 * 1024);
    const start = opts.startNs < 0n ? 0n : opts.startNs;
    this.#startHigh = Number(start >> 32n);
    this.#startLow = Number(start & 0xffffffffn);
    this.#application = opts.application ?? 'vhost-device-ts';
  }

  addChannel(name: string): number {
    const idb = this.#idb(name);
    this.#idbs.push(idb);
    // Packets of this channel follow its IDB in the stream.
    const at = this.out.reserve(idb.length);
    this.out.buf.set(idb, at);
    this.out.commit(at + idb.length, 0);
    this.channels.push(name);
    this.out.channels = this.channels.length;
    return this.channels.length - 1;
  }

  #idb(name: string): Uint8Array {
    const head = new Uint8Array(8);
    const dv = new DataView(head.buffer);
    dv.setUint16(0, LINKTYPE_CAN_SOCKETCAN, true);
    dv.setUint16(2, 0, true);
    dv.setUint32(4, 0, true); // snaplen 0: no limit
    return block(
      BT_IDB,
      concatBytes([
        head,
        option(IF_NAME, asciiSafe(name)),
        option(IF_TSRESOL, Uint8Array.of(9)),
        option(OPT_END, new Uint8Array(0)),
      ]),
    );
  }

  tag(port: string | undefined, direction: Direction | undefined): PcapngTag {
    const parts: Uint8Array[] = [];
    if (direction !== undefined) {
      const v = new Uint8Array(4);
      new DataView(v.buffer).setUint32(0, direction === 'inbound' ? 1 : 2, true);
      parts.push(option(EPB_FLAGS, v));
    }
    if (port !== undefined) parts.push(option(OPT_COMMENT, asciiSafe(port)));
    if (parts.length > 0) parts.push(option(OPT_END, new Uint8Array(0)));
    const options = concatBytes(parts);
    const words = new Uint32Array(options.length / 4);
    for (let i = 0; i < words.length; i++) words[i] = wordOf(options, 4 * i);
    return { port, direction, options, words };
  }

  protected stampWall(wallNs: bigint): void {
    const w = wallNs < 0n ? 0n : wallNs;
    this.#tsHigh = Number((w >> 32n) & 0xffffffffn);
    this.#tsLow = Number(w & 0xffffffffn);
  }

  /** `stampWall` of `startNs + atNs`, in numbers (exact: every sum stays below 2^53). */
  protected stampAt(atNs: number): void {
    let low = this.#startLow + atNs;
    let high = this.#startHigh;
    if (low >= 0x1_0000_0000 || low < 0) {
      const carry = Math.floor(low / 0x1_0000_0000);
      high += carry;
      low -= carry * 0x1_0000_0000;
    }
    if (high < 0) {
      high = 0;
      low = 0;
    }
    this.#tsHigh = high;
    this.#tsLow = low;
  }

  /** Starts an EPB with a packet of `caplen` bytes (time already stamped); returns its offset. */
  #begin(channel: number, caplen: number, opts: Uint8Array): number {
    this.#checkChannel(channel);
    const total = EPB_FIXED + caplen + opts.length;
    const out = this.out;
    const at = out.reserve(total);
    const dv = out.dv;
    dv.setUint32(at, BT_EPB, true);
    dv.setUint32(at + 4, total, true);
    dv.setUint32(at + 8, channel, true);
    dv.setUint32(at + 12, this.#tsHigh, true);
    dv.setUint32(at + 16, this.#tsLow, true);
    dv.setUint32(at + 20, caplen, true);
    dv.setUint32(at + 24, caplen, true);
    const end = at + 28 + caplen;
    const b = out.buf;
    // Byte loops: cheaper than TypedArray#set / Buffer#fill calls for a few dozen bytes.
    for (let i = 0; i < opts.length; i++) b[end + i] = opts[i]!;
    dv.setUint32(end + opts.length, total, true);
    return at + 28;
  }

  #checkChannel(channel: number): void {
    if (!(channel >= 0 && channel < this.channels.length)) {
      throw new RangeError(`channel ${channel} was not declared (addChannel)`);
    }
  }

  protected encode(channel: number, f: CanFrame, tag: CaptureTag): void {
    if (!f.fd && this.out.u32 !== null) {
      let id = f.id;
      if (f.extended) id |= CAN_EFF_FLAG;
      if (f.rtr) id |= CAN_RTR_FLAG;
      const d = f.data;
      this.#classicWords(channel, id >>> 0, f.len, f.len8Dlc, wordOf(d, 0), wordOf(d, 4), tag as PcapngTag);
      return;
    }
    const opts = (tag as PcapngTag).options;
    const caplen = f.fd ? FD_PACKET : CLASSIC_PACKET;
    const p = this.#begin(channel, caplen, opts);
    const out = this.out;
    const b = out.buf;
    let id = f.id;
    if (f.extended) id |= CAN_EFF_FLAG;
    if (f.rtr) id |= CAN_RTR_FLAG;
    out.dv.setUint32(p, id >>> 0, false);
    b[p + 4] = f.len;
    b[p + 5] = f.fd ? CANFD_FDF | (f.brs ? CANFD_BRS : 0) | (f.esi ? CANFD_ESI : 0) : 0;
    b[p + 6] = 0;
    b[p + 7] = f.len8Dlc;
    const data = f.data;
    const n = data.length;
    for (let i = 0; i < n; i++) b[p + 8 + i] = data[i]!;
    for (let i = p + 8 + n; i < p + caplen; i++) b[i] = 0;
    out.commit(p + caplen + opts.length + 4, 1);
  }

  /**
   * A classic frame's EPB as 32-bit stores (the EPB is word-aligned: every pcapng block is a multiple
   * of 4 bytes and chunks start on a word): the same bytes as `#frame`'s byte stores, about half the
   * work. `word0`/`word1` are the payload's first 8 bytes as little-endian words, zero-padded.
   */
  #classicWords(
    channel: number,
    id: number,
    len: number,
    len8Dlc: number,
    word0: number,
    word1: number,
    tag: PcapngTag,
  ): void {
    this.#checkChannel(channel);
    const words = tag.words;
    const nw = words.length;
    const total = EPB_FIXED + CLASSIC_PACKET + 4 * nw;
    const out = this.out;
    const at = out.reserve(total);
    const u = out.u32!;
    const w = at >>> 2;
    u[w] = BT_EPB;
    u[w + 1] = total;
    u[w + 2] = channel;
    u[w + 3] = this.#tsHigh;
    u[w + 4] = this.#tsLow;
    u[w + 5] = CLASSIC_PACKET;
    u[w + 6] = CLASSIC_PACKET;
    u[w + 7] = swap32(id); // can_id is big-endian
    u[w + 8] = len | (len8Dlc << 24); // len, flags 0, two reserved bytes... len8_dlc
    u[w + 9] = word0;
    u[w + 10] = word1;
    for (let i = 0; i < nw; i++) u[w + 11 + i] = words[i]!;
    u[w + 11 + nw] = total;
    out.commit(at + total, 1);
  }

  /**
   * Encodes every frame of `stage` (the recorder's batch), reading classic frames' fields straight
   * from its arrays; the stage is left as it was (the caller clears it).
   */
  encodeStaged(stage: FrameStage): void {
    const n = stage.size;
    const { id: ids, meta: metas, channel: channels, at: ats, tag: tags, word0, word1 } = stage;
    for (let i = 0; i < n; i++) {
      const meta = metas[i]!;
      const flags = meta >>> 24;
      const atNs = ats[i]!;
      const tag = tags[i]! as PcapngTag;
      if ((flags & STAGED_FD) !== 0 || this.out.u32 === null) {
        this.frameAt(channels[i]!, stage.frame(i), atNs, tag);
        continue;
      }
      if (this.out.at(atNs)) this.stampAt(atNs);
      let id = ids[i]!;
      if ((flags & STAGED_EXTENDED) !== 0) id |= CAN_EFF_FLAG;
      if ((flags & STAGED_RTR) !== 0) id |= CAN_RTR_FLAG;
      this.#classicWords(channels[i]!, id >>> 0, meta & 0xff, (meta >>> 8) & 0xff, word0[i]!, word1[i]!, tag);
    }
  }

  errorFrame(channel: number, e: CanErrorFrame, wallNs: bigint, tag: CaptureTag): void {
    const opts = (tag as PcapngTag).options;
    this.stamp(wallNs);
    const p = this.#begin(channel, CLASSIC_PACKET, opts);
    const out = this.out;
    out.dv.setUint32(p, (CAN_ERR_FLAG | (e.classBits & CanErr.MASK)) >>> 0, false);
    const b = out.buf;
    b[p + 4] = 8;
    b[p + 5] = 0;
    b[p + 6] = 0;
    b[p + 7] = 0;
    for (let i = 0; i < 8; i++) b[p + 8 + i] = e.data[i] ?? 0;
    out.commit(p + CLASSIC_PACKET + opts.length + 4, 1);
  }

  fileHeader(channels: number, _totals: FileTotals): Uint8Array {
    const head = new Uint8Array(16);
    const dv = new DataView(head.buffer);
    dv.setUint32(0, BYTE_ORDER_MAGIC, true);
    dv.setUint16(4, 1, true);
    dv.setUint16(6, 0, true);
    dv.setBigInt64(8, -1n, true); // section length unknown
    const shb = block(
      BT_SHB,
      concatBytes([
        head,
        option(SHB_USERAPPL, asciiSafe(this.#application)),
        option(OPT_END, new Uint8Array(0)),
      ]),
    );
    return concatBytes([shb, ...this.#idbs.slice(0, channels)]);
  }

  fileTrailer(): Uint8Array {
    return new Uint8Array(0);
  }
}

// ---------------------------------------------------------------------------------------------------
// Reading

interface Interface {
  readonly name: string;
  readonly linktype: number;
  /** ns = ts * mul / div + offset */
  readonly mul: bigint;
  readonly div: bigint;
  readonly offsetNs: bigint;
  reportedLinktype: boolean;
}

export class PcapngDecoder implements CaptureDecoder {
  readonly format = 'pcapng' as const;
  readonly #in = new InputBuffer();
  #little = true;
  #inSection = false;
  #ifaces: Interface[] = [];
  #broken = false;
  #lastNs = 0n;
  readonly #pending: CaptureEvent[] = [];

  get channelNames(): readonly string[] {
    return this.#ifaces.map((i) => i.name);
  }

  push(bytes: Uint8Array): void {
    if (!this.#broken) this.#in.push(bytes);
  }

  end(): void {
    this.#in.ended = true;
  }

  next(): CaptureEvent | undefined {
    for (;;) {
      const p = this.#pending.shift();
      if (p !== undefined) return p;
      if (this.#broken) return undefined;
      if (!this.#step()) return undefined;
    }
  }

  #bad(offset: number, message: string): CaptureEvent {
    return { kind: 'bad', position: { offset, text: `byte ${offset}` }, message };
  }

  /** Decodes one block into #pending; false when more input is needed or the input is done. */
  #step(): boolean {
    const inp = this.#in;
    const at = inp.offset;
    if (inp.available < 12) {
      if (inp.ended && inp.available > 0) {
        this.#pending.push(this.#bad(at, `truncated block (${inp.available} bytes at the end of the file)`));
        inp.consume(inp.available);
        return true;
      }
      if (inp.ended && at === 0) {
        this.#pending.push(this.#bad(0, 'empty file: not pcapng'));
        this.#broken = true;
        return true;
      }
      return false;
    }
    const head = inp.view(12);
    const rawType = head.getUint32(0, true);
    if (rawType === BT_SHB) {
      const bom = head.getUint32(8, true);
      if (bom === BYTE_ORDER_MAGIC) this.#little = true;
      else if (bom === 0x4d3c2b1a) this.#little = false;
      else {
        this.#pending.push(this.#bad(at, 'section header with an unknown byte-order magic'));
        this.#broken = true;
        return true;
      }
    } else if (!this.#inSection) {
      this.#pending.push(this.#bad(at, 'not a pcapng file (no section header block)'));
      this.#broken = true;
      return true;
    }
    const le = this.#little;
    const type = head.getUint32(0, le);
    const len = head.getUint32(4, le);
    if (len < 12 || len % 4 !== 0) {
      this.#pending.push(
        this.#bad(at, `block length ${len} is invalid: the rest of the file cannot be read`),
      );
      this.#broken = true;
      return true;
    }
    if (inp.available < len) {
      if (inp.ended) {
        this.#pending.push(
          this.#bad(at, `truncated block: ${len} bytes announced, ${inp.available} present`),
        );
        inp.consume(inp.available);
        return true;
      }
      return false;
    }
    const dv = inp.view(len);
    if (dv.getUint32(len - 4, le) !== len) {
      this.#pending.push(
        this.#bad(
          at,
          `block length ${len} does not match its trailing copy: the rest of the file cannot be read`,
        ),
      );
      this.#broken = true;
      return true;
    }
    const body = new Uint8Array(dv.buffer, dv.byteOffset, len);
    try {
      this.#block(type, body, dv, at);
    } catch (err) {
      this.#pending.push(this.#bad(at, (err as Error).message));
    }
    inp.consume(len);
    return true;
  }

  /** The options of a block: code -> value (first occurrence; comments collected separately). */
  #options(body: Uint8Array, dv: DataView, from: number, to: number): Map<number, Uint8Array> {
    const le = this.#little;
    const out = new Map<number, Uint8Array>();
    let p = from;
    while (p + 4 <= to) {
      const code = dv.getUint16(p, le);
      const n = dv.getUint16(p + 2, le);
      if (code === OPT_END) break;
      if (p + 4 + n > to) throw new Error(`option ${code} runs past the end of its block`);
      if (!out.has(code)) out.set(code, body.subarray(p + 4, p + 4 + n));
      p += 4 + pad4(n);
    }
    return out;
  }

  #block(type: number, body: Uint8Array, dv: DataView, at: number): void {
    const le = this.#little;
    const len = body.length;
    switch (type) {
      case BT_SHB: {
        if (dv.getUint16(12, le) !== 1)
          throw new Error(`unsupported pcapng major version ${dv.getUint16(12, le)}`);
        this.#inSection = true;
        this.#ifaces = [];
        return;
      }
      case BT_IDB: {
        const linktype = dv.getUint16(8, le);
        const opts = this.#options(body, dv, 16, len - 4);
        const nameBytes = opts.get(IF_NAME);
        const name =
          nameBytes === undefined ? `if${this.#ifaces.length}` : latin1(nameBytes, 0, nameBytes.length);
        let mul = 1000n;
        let div = 1n;
        const res = opts.get(IF_TSRESOL)?.[0];
        if (res !== undefined) {
          const exp = res & 0x7f;
          if ((res & 0x80) === 0) {
            if (exp <= 9) mul = 10n ** BigInt(9 - exp);
            else {
              mul = 1n;
              div = 10n ** BigInt(exp - 9);
            }
          } else {
            mul = 1_000_000_000n;
            div = 1n << BigInt(exp);
          }
        }
        const off = opts.get(IF_TSOFFSET);
        let offsetNs = 0n;
        if (off !== undefined && off.length === 8) {
          offsetNs = new DataView(off.buffer, off.byteOffset, 8).getBigInt64(0, le) * 1_000_000_000n;
        }
        this.#ifaces.push({ name, linktype, mul, div, offsetNs, reportedLinktype: false });
        if (linktype !== LINKTYPE_CAN_SOCKETCAN) {
          this.#pending.push(
            this.#bad(
              at,
              `interface ${this.#ifaces.length - 1} (${name}) has link type ${linktype}, not ${LINKTYPE_CAN_SOCKETCAN} (SocketCAN): its packets are skipped`,
            ),
          );
        }
        return;
      }
      case BT_EPB: {
        const ifIndex = dv.getUint32(8, le);
        const ts = (BigInt(dv.getUint32(12, le)) << 32n) | BigInt(dv.getUint32(16, le));
        const caplen = dv.getUint32(20, le);
        if (28 + caplen > len - 4) throw new Error(`packet length ${caplen} runs past the end of its block`);
        const iface = this.#ifaces[ifIndex];
        if (iface === undefined) throw new Error(`packet of interface ${ifIndex}, which was not described`);
        if (iface.linktype !== LINKTYPE_CAN_SOCKETCAN) return;
        const ns = (ts * iface.mul) / iface.div + iface.offsetNs;
        this.#lastNs = ns;
        const opts = this.#options(body, dv, 28 + pad4(caplen), len - 4);
        let direction: Direction | undefined;
        const flags = opts.get(EPB_FLAGS);
        if (flags !== undefined && flags.length >= 4) {
          const d = new DataView(flags.buffer, flags.byteOffset, 4).getUint32(0, le) & 3;
          direction = d === 1 ? 'inbound' : d === 2 ? 'outbound' : undefined;
        }
        const c = opts.get(OPT_COMMENT);
        const port = c === undefined ? undefined : latin1(c, 0, c.length);
        this.#packet(body.subarray(28, 28 + caplen), ns, ifIndex, direction, port);
        return;
      }
      case BT_SPB: {
        const iface = this.#ifaces[0];
        if (iface === undefined) throw new Error('simple packet block without an interface');
        if (iface.linktype !== LINKTYPE_CAN_SOCKETCAN) return;
        const orig = dv.getUint32(8, le);
        const caplen = Math.min(orig, len - 16);
        this.#packet(body.subarray(12, 12 + caplen), this.#lastNs, 0, undefined, undefined);
        return;
      }
      default:
        return; // other block types carry nothing we replay
    }
  }

  #packet(
    p: Uint8Array,
    ns: bigint,
    channel: number,
    direction: Direction | undefined,
    port: string | undefined,
  ): void {
    if (p.length < 8) throw new Error(`CAN packet of ${p.length} bytes (the header alone is 8)`);
    const dv = new DataView(p.buffer, p.byteOffset, p.length);
    const word = dv.getUint32(0, false);
    const len = p[4]!;
    const flags = p[5]!;
    if ((word & CAN_ERR_FLAG) !== 0) {
      const data = new Uint8Array(8);
      data.set(p.subarray(8, Math.min(16, p.length)));
      const error: CanErrorFrame = { classBits: word & CanErr.MASK, data, timestampNs: ns, origin: 0 };
      this.#pending.push({ kind: 'error-frame', error, channel, direction, port });
      return;
    }
    const extended = (word & CAN_EFF_FLAG) !== 0;
    const rtr = (word & CAN_RTR_FLAG) !== 0;
    // FD: FDF set, or (older writers) BRS/ESI set or the 72-byte CAN FD frame size.
    const fd =
      (flags & CANFD_FDF) !== 0 ||
      (flags & (CANFD_BRS | CANFD_ESI)) !== 0 ||
      (!rtr && p.length === FD_PACKET);
    const dataLen = rtr ? 0 : len;
    if (8 + dataLen > p.length)
      throw new Error(`CAN payload length ${len} exceeds the ${p.length - 8} bytes captured`);
    const id = word & 0x1fffffff;
    if (!extended && id > 0x7ff) throw new Error(`standard identifier 0x${id.toString(16)} out of range`);
    try {
      const frame = makeCanFrame({
        id,
        extended,
        rtr,
        fd,
        brs: fd && (flags & CANFD_BRS) !== 0,
        esi: fd && (flags & CANFD_ESI) !== 0,
        len,
        // len8_dlc only means something on a classic 8-byte frame; other writers may leave junk.
        len8Dlc: !fd && len === 8 && p[7]! > 8 && p[7]! <= 15 ? p[7]! : 0,
        data: p.subarray(8, 8 + dataLen),
        timestampNs: ns,
      });
      this.#pending.push({ kind: 'frame', frame, channel, direction, port });
    } catch (err) {
      if (err instanceof CanFrameError) throw new Error(`invalid CAN frame: ${err.message}`);
      throw err;
    }
  }
}
