// fast-check arbitraries shared by the property tests.
import fc from 'fast-check';
import { CAN_FD_LENGTHS, type CanFrame, makeCanFrame } from '../../src/core/bus/can-frame.js';

export const arbId = (extended: boolean) => fc.integer({ min: 0, max: extended ? 0x1fffffff : 0x7ff });

/** Any valid frame: classic data, RTR, or FD, with len8Dlc where it is allowed. */
export const arbCanFrame: fc.Arbitrary<CanFrame> = fc.boolean().chain((extended) =>
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
