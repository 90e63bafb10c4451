import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
  canFrameBits,
  canFrameDataPhaseBits,
  formatCandump,
  parseCandump,
  parseCandumpLine,
  validateCanFrame,
} from '../../src/core/bus/can-frame.js';

import { arbCanFrame } from '../helpers/arbitrary.js';

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
