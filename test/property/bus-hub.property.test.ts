import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { CAN_FD_LENGTHS, type CanFrame, makeCanFrame } from '../../src/core/bus/can-frame.js';
import { CanHub, type HubPort, type PortAcceptPolicy } from '../../src/core/bus/hub.js';

const arbFrame: fc.Arbitrary<CanFrame> = fc.oneof(
  fc
    .record({ id: fc.integer({ min: 0, max: 0x7ff }), data: fc.uint8Array({ maxLength: 8 }) })
    .map(({ id, data }) => makeCanFrame({ id, data })),
  fc
    .record({ id: fc.integer({ min: 0, max: 0x1fffffff }), len: fc.integer({ min: 0, max: 8 }) })
    .map(({ id, len }) => makeCanFrame({ id, extended: true, rtr: true, len })),
  fc
    .record({
      id: fc.integer({ min: 0, max: 0x7ff }),
      len: fc.constantFrom(...CAN_FD_LENGTHS),
      brs: fc.boolean(),
    })
    .map(({ id, len, brs }) => makeCanFrame({ id, fd: true, brs, data: new Uint8Array(len).fill(len) })),
);

interface PortSpec {
  queueLimit: number;
  accept: PortAcceptPolicy;
  /** Drain inside onFramesAvailable (eager) or only on explicit `take` ops (lazy). */
  eager: boolean;
  /** How many frames this port may transmit from inside its handler in reply to received ones. */
  replies: number;
  /** Attached with releasesFrames: every frame is released right after it was taken. */
  releases: boolean;
}

const arbPortSpec: fc.Arbitrary<PortSpec> = fc.record({
  queueLimit: fc.integer({ min: 1, max: 6 }),
  accept: fc.record({ classic: fc.boolean(), fd: fc.boolean(), rtr: fc.boolean() }),
  eager: fc.boolean(),
  replies: fc.integer({ min: 0, max: 3 }),
  releases: fc.boolean(),
});

type Op =
  | { kind: 'tx'; port: number; frame: CanFrame }
  | { kind: 'take'; port: number; count: number }
  | { kind: 'receiving'; port: number; on: boolean }
  | { kind: 'detach'; port: number };

const arbOp = (ports: number): fc.Arbitrary<Op> => {
  const port = fc.integer({ min: 0, max: ports - 1 });
  return fc.oneof(
    { weight: 6, arbitrary: fc.record({ kind: fc.constant('tx' as const), port, frame: arbFrame }) },
    {
      weight: 3,
      arbitrary: fc.record({
        kind: fc.constant('take' as const),
        port,
        count: fc.integer({ min: 1, max: 4 }),
      }),
    },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('receiving' as const), port, on: fc.boolean() }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('detach' as const), port }) },
  );
};

const arbScenario = fc
  .array(arbPortSpec, { minLength: 2, maxLength: 5 })
  .chain((specs) => fc.tuple(fc.constant(specs), fc.array(arbOp(specs.length), { maxLength: 80 })));

function accepts(p: PortAcceptPolicy, f: CanFrame): boolean {
  return f.fd ? p.fd : p.classic && (!f.rtr || p.rtr);
}

interface Tracked {
  spec: PortSpec;
  port: HubPort;
  /** Copies of the frames taken, made at take time (a released frame may be reused afterwards). */
  taken: CanFrame[];
  /** Frames a non-releasing port kept, with their copy: the hub must never rewrite them. */
  kept: [CanFrame, CanFrame][];
  /** Frames other ports put on the bus while this port was attached. */
  offered: CanFrame[];
  flushed: number;
  sentTs: bigint[];
  repliesLeft: number;
}

describe('CanHub properties', () => {
  it('delivers each frame at most once per receiver, in order, never to its sender, and accounts for all', () => {
    fc.assert(
      fc.property(arbScenario, ([specs, ops]) => {
        let t = 0n;
        const hub = new CanHub({ name: 'prop', clock: () => ++t });
        const sentByTs = new Map<bigint, CanFrame>();
        const tracked: Tracked[] = [];

        /** Transmit through the hub and keep the test's own record of what went on the bus. */
        const transmit = (from: Tracked, f: CanFrame): void => {
          const before = t;
          const r = from.port.transmit(f);
          if (!from.port.attached) {
            assert.equal(r, 'dropped');
            assert.equal(t, before, 'a refused frame is not stamped');
            return;
          }
          assert.equal(r, 'sent');
          // Stamped with the next clock value; replies made during this fan-out consumed later ones.
          const ts = before + 1n;
          assert.ok(t >= ts);
          from.sentTs.push(ts);
          sentByTs.set(ts, f);
          // Ports detach only between top-level ops, and a nested frame is delivered before the op
          // returns, so "attached now" is "attached when the frame is fanned out".
          for (const o of tracked) if (o !== from && o.port.attached) o.offered.push(f);
        };

        const drain = (tr: Tracked, max: number): void => {
          for (let k = 0; k < max; k++) {
            const f = tr.port.take();
            if (f === undefined) return;
            const copy = { ...f, data: f.data.slice() };
            tr.taken.push(copy);
            if (tr.spec.releases) tr.port.release(f);
            else tr.kept.push([f, copy]);
            if (tr.repliesLeft > 0) {
              tr.repliesLeft--;
              transmit(tr, makeCanFrame({ id: (f.id + 1) & 0x7ff, data: [tr.port.id] }));
            }
          }
        };

        for (const [i, spec] of specs.entries()) {
          const tr = {
            spec,
            taken: [],
            kept: [],
            offered: [],
            flushed: 0,
            sentTs: [],
            repliesLeft: spec.replies,
          } as unknown as Tracked;
          tr.port = hub.attach(
            {
              onFramesAvailable() {
                if (spec.eager) drain(tr, Number.POSITIVE_INFINITY);
              },
            },
            {
              name: `p${i}`,
              queueLimit: spec.queueLimit,
              accept: spec.accept,
              releasesFrames: spec.releases,
            },
          );
          tracked.push(tr);
        }

        for (const op of ops) {
          const tr = tracked[op.port]!;
          switch (op.kind) {
            case 'tx':
              transmit(tr, op.frame);
              break;
            case 'take':
              drain(tr, op.count);
              break;
            case 'receiving':
              tr.flushed += tr.port.setReceiving(op.on);
              break;
            case 'detach':
              if (tr.port.attached) tr.flushed += tr.port.queued;
              tr.port.detach();
              break;
          }
          for (const o of tracked) assert.ok(o.port.queued <= o.spec.queueLimit);
        }

        let totalSent = 0;
        for (const tr of tracked) {
          const st = tr.port.stats;
          totalSent += tr.sentTs.length;
          assert.equal(st.txFrames, tr.sentTs.length);
          // Drain what is left so every queued frame is checked too (no replies any more).
          tr.repliesLeft = 0;
          const queued = tr.port.queued;
          drain(tr, Number.POSITIVE_INFINITY);
          const delivered = tr.taken;

          // Never to its own sender; global FIFO, hence in order per sender; each frame at most once.
          let lastTs = 0n;
          for (const f of delivered) {
            assert.notEqual(f.origin, tr.port.id);
            assert.ok(f.timestampNs > lastTs, 'timestamps strictly increase along a receiver queue');
            lastTs = f.timestampNs;
            const original = sentByTs.get(f.timestampNs);
            assert.ok(original, 'delivered frame was sent');
            assert.deepEqual({ ...f, timestampNs: 0n, origin: 0 }, original);
            const sender = tracked.find((o) => o.port.id === f.origin)!;
            assert.ok(sender.sentTs.includes(f.timestampNs), 'origin is the port that sent it');
          }

          // Accounting: every frame offered while attached ended in exactly one bucket.
          assert.equal(
            delivered.length + st.rxDroppedOverflow + st.rxFiltered + st.rxDiscardedClosed,
            tr.offered.length,
          );
          assert.equal(st.rxFrames, delivered.length + tr.flushed);
          assert.equal(st.rxFiltered, tr.offered.filter((f) => !accepts(tr.spec.accept, f)).length);
          assert.ok(queued <= tr.spec.queueLimit);
          for (const [f, copy] of tr.kept) {
            assert.deepEqual({ ...f, data: f.data.slice() }, copy, 'a kept frame was never reused');
          }
        }
        const s = hub.stats();
        assert.equal(s.frames, totalSent);
        assert.equal(
          s.droppedOverflow,
          tracked.reduce((n, tr) => n + tr.port.stats.rxDroppedOverflow, 0),
        );
        hub.close();
      }),
      { numRuns: 300 },
    );
  });
});
