import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { encodeMessage, type VhostUserMessage } from '../../src/core/vhost-user/codec.js';
import { MessageFramer } from '../../src/core/vhost-user/framer.js';
import { HeaderFlag, MAX_PAYLOAD } from '../../src/core/vhost-user/protocol.js';

interface Spec {
  request: number;
  flags: number;
  payload: Uint8Array;
  fds: number[];
}

const specArb = fc.record({
  request: fc.integer({ min: 1, max: 50 }),
  flags: fc.constantFrom(HeaderFlag.VERSION, HeaderFlag.VERSION | HeaderFlag.NEED_REPLY),
  payload: fc.uint8Array({ maxLength: 300 }),
  fds: fc.array(fc.integer({ min: 3, max: 1000 }), { maxLength: 8 }),
});

test('framing survives any split of the stream and attributes fds to their message', () => {
  fc.assert(
    fc.property(
      fc.array(specArb, { minLength: 1, maxLength: 12 }),
      fc.array(fc.integer({ min: 1, max: 64 })),
      (specs, cuts) => {
        // Build the stream; each message's fds travel with its first byte (what recvmsg of the header gives).
        const chunks: { bytes: Uint8Array; fds: number[] }[] = [];
        let ci = 0;
        for (const s of specs) {
          const bytes = encodeMessage(s.request, s.flags, s.payload);
          let pos = 0;
          let first = true;
          while (pos < bytes.byteLength) {
            const n = Math.min(
              cuts.length ? cuts[ci++ % cuts.length]! : bytes.byteLength,
              bytes.byteLength - pos,
            );
            chunks.push({ bytes: bytes.subarray(pos, pos + n), fds: first ? s.fds : [] });
            first = false;
            pos += n;
          }
        }
        const f = new MessageFramer();
        const got: VhostUserMessage[] = [];
        for (const c of chunks) got.push(...f.push(c.bytes, c.fds));
        assert.equal(got.length, specs.length);
        specs.forEach((s: Spec, i) => {
          const m = got[i]!;
          assert.equal(m.request, s.request);
          assert.equal(m.flags, s.flags);
          assert.deepEqual([...m.payload], [...s.payload]);
          assert.deepEqual(m.fds, s.fds);
        });
        assert.equal(f.midMessage, false);
        assert.equal(f.wanted(), 12);
      },
    ),
    { numRuns: 300 },
  );
});

test('wanted() never asks past the current message, so a reader never merges two messages', () => {
  fc.assert(
    fc.property(fc.array(specArb, { minLength: 1, maxLength: 6 }), (specs) => {
      const stream = specs.map((s) => encodeMessage(s.request, s.flags, s.payload));
      const f = new MessageFramer();
      let count = 0;
      for (const bytes of stream) {
        let pos = 0;
        while (pos < bytes.byteLength) {
          const w = f.wanted();
          assert.ok(w > 0 && pos + w <= bytes.byteLength, 'wanted stays inside the message');
          count += f.push(bytes.subarray(pos, pos + w)).length;
          pos += w;
        }
      }
      assert.equal(count, specs.length);
    }),
  );
});

test('oversized payloads, bad versions and too many fds are disconnect errors', () => {
  const f = new MessageFramer();
  const big = encodeMessage(1, HeaderFlag.VERSION).slice();
  new DataView(big.buffer).setUint32(8, MAX_PAYLOAD + 1, true);
  assert.throws(() => f.push(big), { code: 'ERR_VU_MSG_TOO_LARGE' });
  assert.throws(() => new MessageFramer().push(encodeMessage(1, 0x2)), { code: 'ERR_VU_BAD_VERSION' });
  const g = new MessageFramer();
  assert.throws(() => g.push(encodeMessage(1, 1).subarray(0, 4), [3, 4, 5, 6, 7, 8, 9, 10, 11]), {
    code: 'ERR_VU_TOO_MANY_FDS',
  });
  assert.equal(g.takeFds().length, 9, 'fds held by the framer are handed back for closing');
});
