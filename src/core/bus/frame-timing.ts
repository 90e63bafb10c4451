/**
 * Exact on-wire length of a CAN frame (ISO 11898-1), for the timed bus: every bit from the start of
 * frame to the end of the 3-bit intermission, with the stuff bits the real bit pattern needs.
 *
 * Classic frames (CAN 2.0): the bit string SOF .. end of data is built from the frame's fields
 * (standard: SOF, ID[10:0], RTR, IDE = 0, r0 = 0, DLC; extended: SOF, ID[28:18], SRR = 1, IDE = 1,
 * ID[17:0], RTR, r1 = 0, r0 = 0, DLC; remote frames carry no data field), the CRC-15 (polynomial
 * 0x4599, register starting at 0) is computed over it and appended, and bit stuffing runs over all
 * of that (after five equal bits one complementary bit, which counts toward the next run). Then
 * come, unstuffed: CRC delimiter, ACK slot, ACK delimiter, 7 EOF bits and 3 intermission bits.
 *
 * CAN FD frames: SOF, ID, RRS = 0, IDE, FDF = 1, res = 0, BRS, ESI, DLC, data, dynamically stuffed;
 * then the CRC field with fixed stuff bits: one before the 4-bit stuff count, one after it and one
 * after every 4 CRC bits (CRC-17 up to 16 data bytes: 27 bits and the delimiter; CRC-21 above: 32
 * and the delimiter), so its
 * length does not depend on the CRC value. When the dynamic stuff condition falls on the last data
 * bit, the first fixed stuff bit (the complement of that bit) takes the place of the dynamic one:
 * only one bit is inserted (our reading of ISO 11898-1:2015; it changes the length by one bit in
 * about one frame in 32). With BRS the bits after the BRS bit up to and including the CRC field
 * (stuff bits included) go at the data bit rate; CRC delimiter, ACK, EOF and intermission at the
 * nominal rate (the switch happens at sample points inside BRS and the CRC delimiter; counting
 * those two bits whole at the nominal rate is our approximation).
 *
 * Bit values: dominant = 0, recessive = 1.
 */
import { type CanFrame, canFdLenToDlc } from './can-frame.js';

/** Bits of a frame, split by bit rate. */
export interface FrameBits {
  /** Bits sent at the nominal bit rate (all of them without BRS), intermission included. */
  nominal: number;
  /** Bits sent at the data bit rate (FD frames with BRS), stuff bits included. */
  data: number;
  /** Stuff bits among them (dynamic ones; the fixed FD CRC-field stuff bits are not counted). */
  stuff: number;
}

/** Unstuffed bits after the CRC sequence: CRC delimiter, ACK slot, ACK delimiter, EOF 7, intermission 3. */
export const FRAME_TAIL_BITS = 13;
/** Intermission (interframe space) between two frames. */
export const INTERMISSION_BITS = 3;
/**
 * An error frame: 6-bit error flag, up to 6 more bits of other nodes' flags overlapping it, 8-bit
 * delimiter; plus the intermission before the next frame.
 */
export const ERROR_FRAME_BITS = 20 + INTERMISSION_BITS;
/** An error-passive transmitter waits this many more bits after its own frame (suspend transmission). */
export const SUSPEND_TRANSMISSION_BITS = 8;

const CRC15_POLY = 0x4599;

/** The stuffing state machine: counts inserted bits and which rate they go at. */
class Stuffer {
  last = -1;
  run = 0;
  stuff = 0;
  /** Stuff bits inserted while `dataPhase` was set. */
  stuffData = 0;
  dataPhase = false;
  /** CRC-15 register, updated by `crcBits`. */
  crc = 0;

  reset(): void {
    this.last = -1;
    this.run = 0;
    this.stuff = 0;
    this.stuffData = 0;
    this.dataPhase = false;
    this.crc = 0;
  }

  /** Feeds one bit; a stuff bit is inserted right after the fifth equal bit. */
  bit(b: number, stuffAfter = true): void {
    if (b === this.last) this.run++;
    else {
      this.last = b;
      this.run = 1;
    }
    if (this.run === 5 && stuffAfter) {
      this.stuff++;
      if (this.dataPhase) this.stuffData++;
      this.last ^= 1;
      this.run = 1;
    }
  }

  /** Feeds `n` bits of `value`, most significant first. */
  bits(value: number, n: number): void {
    for (let i = n - 1; i >= 0; i--) this.bit((value >>> i) & 1);
  }

  /** Feeds `n` bits of `value` into the CRC-15 register and the stuffer. */
  crcBits(value: number, n: number): void {
    for (let i = n - 1; i >= 0; i--) {
      const b = (value >>> i) & 1;
      const x = b ^ ((this.crc >>> 14) & 1);
      this.crc = (this.crc << 1) & 0x7fff;
      if (x) this.crc ^= CRC15_POLY;
      this.bit(b);
    }
  }
}

const st = new Stuffer();

/** The DLC a frame is sent with. */
function dlcOf(f: CanFrame): number {
  if (f.fd) return canFdLenToDlc(f.len);
  return f.len8Dlc !== 0 ? f.len8Dlc : f.len;
}

/**
 * The exact bits of `f` on the wire, intermission included, written into `out` (no allocation).
 * `brs`: an FD frame switches to the data bit rate (else all its bits go at the nominal rate);
 * `esi`: the ESI bit of an FD frame (recessive when the transmitter is error-passive). Classic
 * frames ignore both. The frame must be valid (`validateCanFrame`).
 */
export function frameBits(f: CanFrame, brs: boolean, esi: boolean, out: FrameBits): FrameBits {
  const s = st;
  s.reset();
  const id = f.id;
  const dlc = dlcOf(f);
  if (!f.fd) {
    // Classic: CRC-15 over SOF .. data, stuffing over SOF .. CRC.
    s.crcBits(0, 1); // SOF
    if (f.extended) {
      s.crcBits(id >>> 18, 11);
      s.crcBits(0b11, 2); // SRR, IDE
      s.crcBits(id & 0x3ffff, 18);
      s.crcBits(f.rtr ? 1 : 0, 1);
      s.crcBits(0, 2); // r1, r0
    } else {
      s.crcBits(id, 11);
      s.crcBits(f.rtr ? 1 : 0, 1);
      s.crcBits(0, 2); // IDE, r0
    }
    s.crcBits(dlc, 4);
    const n = f.rtr ? 0 : f.len;
    const d = f.data;
    for (let i = 0; i < n; i++) s.crcBits(d[i]!, 8);
    const crc = s.crc;
    s.bits(crc, 15);
    const header = f.extended ? 39 : 19;
    out.nominal = header + n * 8 + 15 + s.stuff + FRAME_TAIL_BITS;
    out.data = 0;
    out.stuff = s.stuff;
    return out;
  }
  // CAN FD: dynamic stuffing over SOF .. data; the data phase starts after BRS.
  s.bit(0); // SOF
  let arbitration: number;
  if (f.extended) {
    s.bits(id >>> 18, 11);
    s.bits(0b11, 2); // SRR, IDE
    s.bits(id & 0x3ffff, 18);
    s.bits(0b010, 3); // RRS, FDF, res
    arbitration = 36;
  } else {
    s.bits(id, 11);
    s.bits(0b0010, 4); // RRS, IDE, FDF, res
    arbitration = 17;
  }
  // BRS: a stuff bit it triggers comes after the switch.
  s.dataPhase = brs;
  s.bit(brs ? 1 : 0);
  s.bit(esi ? 1 : 0);
  // The last bit of the dynamic region (last data bit, or the DLC's last bit without data) is fed
  // without a stuff bit after it: the first fixed stuff bit follows anyway.
  const d = f.data;
  const n = f.len;
  if (n === 0) {
    s.bits(dlc >>> 1, 3);
    s.bit(dlc & 1, false);
  } else {
    s.bits(dlc, 4);
    for (let i = 0; i < n - 1; i++) s.bits(d[i]!, 8);
    const byte = d[n - 1]!;
    s.bits(byte >>> 1, 7);
    s.bit(byte & 1, false);
  }
  // Fixed stuff bit, stuff count 4, CRC 17 or 21 with a fixed stuff bit every 4 bits (the CRC
  // delimiter is in the tail).
  const crcField = n > 16 ? 32 : 27;
  const dynamicAfterBrs = s.stuffData;
  const tail = FRAME_TAIL_BITS;
  const header = arbitration + 5; // + ESI, DLC
  if (brs) {
    out.nominal = arbitration + (s.stuff - dynamicAfterBrs) + tail;
    out.data = header - arbitration + n * 8 + dynamicAfterBrs + crcField;
  } else {
    out.nominal = header + n * 8 + s.stuff + crcField + tail;
    out.data = 0;
  }
  out.stuff = s.stuff;
  return out;
}

/** Total bits of `frameBits`. */
export function frameBitCount(f: CanFrame, brs = false, esi = false): number {
  const b = frameBits(f, brs, esi, { nominal: 0, data: 0, stuff: 0 });
  return b.nominal + b.data;
}
