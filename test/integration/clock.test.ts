import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setImmediate as tick } from 'node:timers/promises';
import { batchClock } from '../../src/node/clock.js';

test('the batch clock reads CLOCK_MONOTONIC once per wake-up', async () => {
  const clock = batchClock();
  const before = process.hrtime.bigint();
  const a = clock();
  for (let i = 0; i < 1000; i++) assert.equal(clock(), a, 'one value for the whole synchronous run');
  const after = process.hrtime.bigint();
  assert.ok(a >= before && a <= after, 'it is process.hrtime.bigint() time');
  await tick();
  const b = clock();
  assert.ok(b > a, 'a later wake-up reads the clock again');
  await Promise.resolve();
  // The value expires in a microtask, so even a microtask boundary gives a fresh reading.
  assert.ok(clock() > b);
});
