import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
  CAN_FD_LENGTHS,
  type CanFrame,
  canFrameBits,
  canFrameDataPhaseBits,
  formatCandump,
  makeCanFrame,
  parseCandump,
  parseCandumpLine,
  validateCanFrame,
} from '../../src/core/bus/can-frame.js';

const arbId = (extended: boolean) => fc.integer({ min: 0, max: extended ? 0x1fffffff : 0x7ff });

/** Any valid frame: classic data, RTR, or FD, with len8Dlc where it is allowed. */
const arbCanFrame: fc.Arbitrary<CanFrame> = fc.boolean().chain((extended) =>
  fc.oneof(
    fc
      .record({
        id: arbId(extended),
        data: fc.uint8Array({ maxLength: 8 }),
        dlc: fc.option(fc.integer({ min: 9, max: 15 })),
      })
      .map(({ id, data, dlc }) =>
        makeCanFrame({ id, extended, data, len8Dlc: data.length === 8 && dlc !== null ? dlc : 0 }),
      ),
    fc
      .record({
        id: arbId(extended),
        len: fc.integer({ min: 0, max: 8 }),
        dlc: fc.option(fc.integer({ min: 9, max: 15 })),
      })
      .map(({ id, len, dlc }) =>
        makeCanFrame({ id, extended, rtr: true, len, len8Dlc: len === 8 && dlc !== null ? dlc : 0 }),
      ),
    fc
      .record({
        id: arbId(extended),
        len: fc.constantFrom(...CAN_FD_LENGTHS),
        seed: fc.integer({ min: 0, max: 255 }),
        brs: fc.boolean(),
        esi: fc.boolean(),
      })
      .map(({ id, len, seed, brs, esi }) =>
        makeCanFrame({
          id,
          extended,
          fd: true,
          brs,
          esi,
          data: Uint8Array.from({ length: len }, (_, i) => (seed * 31 + i * 7) & 0xff),
        }),
      ),
  ),
);

/** The same frame text in the can-utils input variants: lowercase, dotted data, FDF set in the nibble. */
function variant(text: string): string {
  const m = /^([0-9A-F]+#)(#[0-9A-F])?(R.*)?([0-9A-F]*)(_[0-9A-F])?$/.exec(text);
  assert.ok(m, text);
  const [, head, fdFlags, rtr, data, dlc] = m;
  let out = head!.toLowerCase();
  if (fdFlags) out += `#${(Number.parseInt(fdFlags[1]!, 16) | 4).toString(16)}`;
  if (rtr) return out + rtr.toLowerCase();
  out += (data ?? '').replace(/(..)(?=.)/g, '$1.').toLowerCase();
  return out + (dlc ?? '');
}

describe('candump codec properties', () => {
  it('parse(format(f)) == f for every valid frame', () => {
    fc.assert(
      fc.property(arbCanFrame, (f) => {
        assert.deepEqual(parseCandump(formatCandump(f)), f);
      }),
    );
  });

  it('log lines round-trip with microsecond timestamps', () => {
    fc.assert(
      fc.property(
        arbCanFrame,
        fc.bigInt({ min: 0n, max: 9_999_999_999_999_999n }),
        fc.stringMatching(/^[a-z][a-z0-9_.-]{0,14}$/),
        (f, us, ifname) => {
          const stamped = { ...f, timestampNs: us * 1000n };
          const line = parseCandumpLine(formatCandump(stamped, ifname));
          assert.equal(line.ifname, ifname);
          assert.equal(line.timestampNs, stamped.timestampNs);
          assert.deepEqual(line.frame, stamped);
        },
      ),
    );
  });

  it('the can-utils input variants parse to the same frame', () => {
    fc.assert(
      fc.property(arbCanFrame, (f) => {
        assert.deepEqual(parseCandump(variant(formatCandump(f))), f);
      }),
    );
  });

  it('generated frames are valid and the bit counts are consistent', () => {
    fc.assert(
      fc.property(arbCanFrame, (f) => {
        assert.equal(validateCanFrame(f), null);
        const bits = canFrameBits(f);
        const dataBits = canFrameDataPhaseBits(f);
        assert.ok(bits >= 47 && bits <= 86 + 512);
        assert.ok(dataBits >= 0 && dataBits < bits);
        assert.equal(dataBits > 0, f.fd && f.brs);
      }),
    );
  });
});
