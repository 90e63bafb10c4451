import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LATENESS_EDGES_US, LatenessHistogram } from '../../src/core/bus/timed-bus.js';

test('cumulative lateness buckets count the frames under each edge; two readings give a window', () => {
  const h = new LatenessHistogram();
  const lateNs = [-5_000, 0, 9_999, 10_000, 55_500, 99_999, 100_000, 2_500_000, 12_000_000];
  for (const ns of lateNs) h.record(ns);
  const under = (edgeUs: number, from: readonly number[]): number =>
    from.filter((ns) => ns < edgeUs * 1000).length;
  const first = h.cumulative();
  assert.equal(first.length, LATENESS_EDGES_US.length);
  assert.deepEqual(
    first,
    LATENESS_EDGES_US.map((e) => under(e, lateNs)),
  );
  assert.equal(h.count, lateNs.length);
  // A window: what was recorded between two readings.
  const more = [15_000, 150_000, 150_001];
  for (const ns of more) h.record(ns);
  const second = h.cumulative();
  assert.deepEqual(
    second.map((c, i) => c - first[i]!),
    LATENESS_EDGES_US.map((e) => under(e, more)),
  );
});
