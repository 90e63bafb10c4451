import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { type CanFrame, makeCanFrame } from '../../src/core/bus/can-frame.js';
import {
  CANNELLONI_DATAGRAM_ERRORS,
  CANNELLONI_FRAME_ERRORS,
  CANNELLONI_MAX_DATAGRAM,
  CANNELLONI_MIN_DATAGRAM,
  CannelloniDecoder,
  decodeCannelloni,
  encodeCannelloni,
} from '../../src/core/net/cannelloni.js';
import { arbCanFrame } from '../helpers/arbitrary.js';

const arbFrame = arbCanFrame;

const shape = (f: CanFrame) => [
  f.id,
  f.extended,
  f.rtr,
  f.fd,
  f.brs,
  f.esi,
  f.len,
  Buffer.from(f.data).toString('hex'),
];

describe('cannelloni codec properties', () => {
  it('round trip: every frame comes back, in order, in datagrams within the size limit', () => {
    fc.assert(
      fc.property(
        fc.array(arbFrame, { maxLength: 300 }),
        fc.integer({ min: CANNELLONI_MIN_DATAGRAM, max: 4000 }),
        fc.integer({ min: 0, max: 255 }),
        (frames, max, firstSeq) => {
          const datagrams = encodeCannelloni(frames, { maxDatagram: max, firstSeq });
          const back: CanFrame[] = [];
          datagrams.forEach((d, i) => {
            assert.ok(d.length <= max);
            const r = decodeCannelloni(d);
            assert.ok(r.ok, r.ok ? '' : r.detail);
            assert.equal(r.header.seq, (firstSeq + i) & 0xff);
            assert.ok(r.frames.length > 0, 'no empty datagram for frames');
            assert.deepEqual(r.skipped, []);
            assert.equal(r.padded, 0);
            back.push(...r.frames);
          });
          assert.deepEqual(back.map(shape), frames.map(shape));
        },
      ),
      { numRuns: 300 },
    );
  });

  it('packing is greedy: a datagram is closed only when the next frame does not fit', () => {
    fc.assert(
      fc.property(fc.array(arbFrame, { minLength: 1, maxLength: 200 }), (frames) => {
        const datagrams = encodeCannelloni(frames);
        let k = 0;
        for (const d of datagrams.slice(0, -1)) {
          const n = (d[3]! << 8) | d[4]!;
          k += n;
          const next = frames[k]!;
          const size = 5 + (next.fd ? 1 : 0) + (next.rtr ? 0 : next.len);
          assert.ok(d.length + size > 1472);
        }
      }),
      { numRuns: 200 },
    );
  });

  it('arbitrary bytes never throw; a refusal delivers nothing and has a known reason', () => {
    const dec = new CannelloniDecoder();
    const datagramErrors = new Set<string>(CANNELLONI_DATAGRAM_ERRORS);
    const frameErrors = new Set<string>(CANNELLONI_FRAME_ERRORS);
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 200 }),
          // Mostly-plausible datagrams reach the frame walk more often than random bytes.
          fc
            .tuple(fc.integer({ min: 0, max: 4 }), fc.uint8Array({ maxLength: 300 }))
            .map(([count, rest]) => Uint8Array.from([2, 0, 0, 0, count, ...rest])),
        ),
        (bytes) => {
          let delivered = 0;
          const r = dec.decode(
            bytes,
            (f) => {
              delivered++;
              assert.equal(f.data.length, f.rtr ? 0 : f.len);
            },
            (reason) => assert.ok(frameErrors.has(reason)),
          );
          if (r.ok) {
            assert.equal(r.delivered + r.skipped, r.count);
            assert.equal(delivered, r.delivered);
          } else {
            assert.ok(datagramErrors.has(r.error!), String(r.error));
            assert.equal(delivered, 0);
          }
        },
      ),
      { numRuns: 3000 },
    );
  });

  it('every delivered frame is a valid frame, whatever the bytes', () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ minLength: 5, maxLength: 70 }), { maxLength: 8 }), (frames) => {
        // Build datagrams whose layout is sound but whose fields are random.
        const body: number[] = [];
        for (const f of frames) {
          const id = [f[0]!, f[1]!, f[2]!, f[3]!];
          const len = f[4]!;
          body.push(...id, len);
          if (len & 0x80) body.push(f[5] ?? 0);
          if (!(id[0]! & 0x40)) for (let i = 0; i < (len & 0x7f); i++) body.push(i);
        }
        const bytes = Uint8Array.from([2, 0, 9, 0, frames.length, ...body]);
        const r = decodeCannelloni(bytes);
        assert.ok(r.ok, r.ok ? '' : r.detail);
        for (const f of r.frames) makeCanFrame(f); // throws on an invalid frame
        assert.equal(r.frames.length + r.skipped.length, frames.length);
      }),
      { numRuns: 1000 },
    );
  });

  it('the size limit is checked', () => {
    assert.throws(() => encodeCannelloni([], { maxDatagram: CANNELLONI_MAX_DATAGRAM + 1 }), RangeError);
    assert.throws(() => encodeCannelloni([], { maxDatagram: 100.5 }), RangeError);
  });
});
