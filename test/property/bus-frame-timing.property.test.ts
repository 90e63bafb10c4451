// The exact frame length (src/core/bus/frame-timing.ts) against an independent bit-by-bit encoder
// written here: it builds every bit of the frame as an array (fields, CRC by polynomial long
// division, stuff bits inserted by scanning, the FD CRC field with its stuff count and fixed stuff
// bits), then counts. Over random classic, extended, remote and FD frames.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { CAN_FD_LENGTHS, type CanFrame, canFdLenToDlc, makeCanFrame } from '../../src/core/bus/can-frame.js';
import { frameBits } from '../../src/core/bus/frame-timing.js';

type Bits = number[];

function field(value: number, n: number): Bits {
  const out: Bits = [];
  for (let i = n - 1; i >= 0; i--) out.push(Math.floor(value / 2 ** i) % 2);
  return out;
}

/**
 * Remainder of message(x) * x^degree divided by the generator (degree + 1 coefficients, highest
 * first), by long division on the bit array: the CRC as bits, highest first.
 */
function crcByDivision(message: Bits, generator: Bits): Bits {
  const degree = generator.length - 1;
  const work = [...message, ...new Array<number>(degree).fill(0)];
  for (let i = 0; i < message.length; i++) {
    if (work[i] === 0) continue;
    for (let j = 0; j < generator.length; j++) work[i + j]! ^= generator[j]!;
  }
  return work.slice(message.length);
}

// x^15 + x^14 + x^10 + x^8 + x^7 + x^4 + x^3 + 1 (CAN's CRC-15, 0x4599 without the x^15 term)
const CRC15_GEN = [1, 1, 0, 0, 0, 1, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1];

/**
 * Bit stuffing by scanning: after five equal bits of the output (stuff bits included) a
 * complementary bit goes in. `noStuffAtEnd`: no stuff bit after the last input bit (FD: the first
 * fixed stuff bit follows).
 */
function stuff(bits: Bits, noStuffAtEnd = false): { out: Bits; inserted: number[] } {
  const out: Bits = [];
  const inserted: number[] = []; // indices in `bits` after which a stuff bit went in
  for (let i = 0; i < bits.length; i++) {
    out.push(bits[i]!);
    const n = out.length;
    if (n >= 5 && out.slice(n - 5).every((b) => b === out[n - 1])) {
      if (noStuffAtEnd && i === bits.length - 1) break;
      out.push(1 - out[n - 1]!);
      inserted.push(i);
    }
  }
  return { out, inserted };
}

function dlcOf(f: CanFrame): number {
  return f.fd ? canFdLenToDlc(f.len) : f.len8Dlc || f.len;
}

/** Every bit of the frame, and how many are at the data rate. */
function encode(f: CanFrame, brs: boolean, esi: boolean): { bits: Bits; dataPhase: number } {
  const dataBits = f.rtr ? [] : [...f.data].flatMap((b) => field(b, 8));
  const tail = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]; // CRC del, ACK (recessive as sent), ACK del, EOF 7, IFS 3
  if (!f.fd) {
    const id = f.extended
      ? [...field(Math.floor(f.id / 2 ** 18), 11), 1, 1, ...field(f.id % 2 ** 18, 18), f.rtr ? 1 : 0, 0, 0]
      : [...field(f.id, 11), f.rtr ? 1 : 0, 0, 0];
    const body = [0, ...id, ...field(dlcOf(f), 4), ...dataBits];
    const crc = crcByDivision(body, CRC15_GEN);
    const { out } = stuff([...body, ...crc]);
    // Check the stuffed region: no six equal bits in a row.
    for (let i = 5; i < out.length; i++) {
      assert.ok(!out.slice(i - 5, i + 1).every((b) => b === out[i]), 'six equal bits after stuffing');
    }
    return { bits: [...out, ...tail], dataPhase: 0 };
  }
  const arb = f.extended
    ? [0, ...field(Math.floor(f.id / 2 ** 18), 11), 1, 1, ...field(f.id % 2 ** 18, 18), 0, 1, 0, brs ? 1 : 0]
    : [0, ...field(f.id, 11), 0, 0, 1, 0, brs ? 1 : 0];
  const rest = [esi ? 1 : 0, ...field(dlcOf(f), 4), ...dataBits];
  const dyn = [...arb, ...rest];
  const { out, inserted } = stuff(dyn, true);
  const count = inserted.length;
  // Stuff bits triggered by a bit at or after BRS belong to the data phase.
  const brsIndex = arb.length - 1;
  const stuffInArb = inserted.filter((i) => i < brsIndex).length;
  const gray = (count % 8) ^ ((count % 8) >> 1);
  const sbc = [...field(gray, 3)];
  sbc.push(sbc.reduce((a, b) => a ^ b, 0)); // parity
  const crcLen = f.len > 16 ? 21 : 17;
  const gen = crcLen === 17 ? field(0x3685b, 18) : field(0x302899, 22); // 0x1685B, 0x102899 with x^n
  const crc = crcByDivision([...out, ...sbc], gen);
  assert.equal(crc.length, crcLen);
  // CRC field: fixed stuff bit, stuff count, then a fixed stuff bit before every 4 bits.
  const crcField: Bits = [];
  const payload = [...sbc, ...crc];
  let last = out[out.length - 1]!;
  for (let i = 0; i < payload.length; i++) {
    if (i % 4 === 0) {
      crcField.push(1 - last);
      last = 1 - last;
    }
    crcField.push(payload[i]!);
    last = payload[i]!;
  }
  assert.equal(crcField.length, crcLen === 17 ? 27 : 32, 'CRC field length (without its delimiter)');
  const bits = [...out, ...crcField, ...tail];
  const nominalHead = arb.length + stuffInArb;
  const dataPhase = brs ? bits.length - nominalHead - tail.length : 0;
  return { bits, dataPhase };
}

const classic = fc
  .record({
    extended: fc.boolean(),
    id: fc.integer({ min: 0, max: 0x1fffffff }),
    rtr: fc.boolean(),
    data: fc.uint8Array({ minLength: 0, maxLength: 8 }),
    rtrLen: fc.integer({ min: 0, max: 8 }),
    raw: fc.integer({ min: 0, max: 15 }),
    bias: fc.constantFrom(0, 0xff, -1), // runs of equal bits make stuffing likely
  })
  .map((r) => {
    const id = r.extended ? r.id : r.id & 0x7ff;
    const data = r.bias === -1 ? r.data : r.data.map(() => r.bias);
    const len = r.rtr ? r.rtrLen : data.length;
    const len8Dlc = len === 8 && r.raw > 8 ? r.raw : 0;
    return makeCanFrame({ id, extended: r.extended, rtr: r.rtr, len, len8Dlc, data: r.rtr ? [] : data });
  });

const fd = fc
  .record({
    extended: fc.boolean(),
    id: fc.integer({ min: 0, max: 0x1fffffff }),
    len: fc.constantFrom(...CAN_FD_LENGTHS),
    seed: fc.uint8Array({ minLength: 64, maxLength: 64 }),
    bias: fc.constantFrom(0, 0xff, 0x0f, -1),
  })
  .map((r) =>
    makeCanFrame({
      id: r.extended ? r.id : r.id & 0x7ff,
      extended: r.extended,
      fd: true,
      data: r.bias === -1 ? r.seed.slice(0, r.len) : new Uint8Array(r.len).fill(r.bias),
    }),
  );

test('classic frames: exact length equals the bit-by-bit encoding', () => {
  fc.assert(
    fc.property(classic, (f) => {
      const b = frameBits(f, false, false, { nominal: 0, data: 0, stuff: 0 });
      const ref = encode(f, false, false);
      assert.equal(b.data, 0);
      assert.equal(b.nominal, ref.bits.length);
      const n = f.rtr ? 0 : f.len;
      const base = (f.extended ? 67 : 47) + 8 * n;
      const g = (f.extended ? 54 : 34) + 8 * n; // stuffable bits
      assert.ok(b.nominal >= base && b.nominal <= base + Math.floor((g - 1) / 4), 'within the worst case');
      assert.equal(b.stuff, b.nominal - base);
    }),
    { numRuns: 3000 },
  );
});

test('CAN FD frames: exact length and data-phase share equal the bit-by-bit encoding', () => {
  fc.assert(
    fc.property(fd, fc.boolean(), fc.boolean(), (f, brs, esi) => {
      const b = frameBits(f, brs, esi, { nominal: 0, data: 0, stuff: 0 });
      const ref = encode(f, brs, esi);
      assert.equal(b.nominal + b.data, ref.bits.length, 'total bits');
      assert.equal(b.data, ref.dataPhase, 'data-phase bits');
      const fixed = (f.extended ? 41 : 22) + 8 * f.len + (f.len > 16 ? 33 : 28) + 12;
      assert.equal(b.nominal + b.data - b.stuff, fixed, 'length.h fixed part');
    }),
    { numRuns: 3000 },
  );
});
