/**
 * Bounded CI run of the fuzz targets in test/fuzz (the long runs are `npm run fuzz`): seeded inputs
 * for a fixed time budget per target, plus fast-check byte strings (shrunk on failure). Reports how
 * many cases ran. A failure prints the seed; `npm run fuzz -- --seed N --target T --cases 1` replays it.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { seededBytes } from '../fuzz/input.js';
import { TARGETS, type TargetName } from '../fuzz/targets.js';

const BUDGET_MS = Number(process.env.FUZZ_CI_MS ?? 12_000);
const SEED = Number(process.env.FUZZ_SEED ?? 20_260_101);

for (const name of Object.keys(TARGETS) as TargetName[]) {
  test(`fuzz ${name}: seeded inputs for ${BUDGET_MS} ms`, (t) => {
    const target = TARGETS[name];
    const end = Date.now() + BUDGET_MS;
    let n = 0;
    while (Date.now() < end) {
      const seed = SEED + n;
      try {
        target.run(seededBytes(seed, target.inputLength));
      } catch (err) {
        assert.fail(
          `${name} failed on seed ${seed} (replay: npm run fuzz -- --target ${name} --seed ${seed} --cases 1): ${(err as Error).stack}`,
        );
      }
      n++;
    }
    t.diagnostic(`${name}: ${n} seeded cases`);
    assert.ok(n > 10, `only ${n} cases ran`);
  });

  test(`fuzz ${name}: fast-check byte strings`, (t) => {
    const target = TARGETS[name];
    let n = 0;
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: target.inputLength }), (bytes) => {
        n++;
        target.run(bytes);
      }),
      { numRuns: name === 'session' ? 300 : 3000, seed: SEED },
    );
    t.diagnostic(`${name}: ${n} fast-check cases`);
  });
}
