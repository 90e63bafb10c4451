// The hubs' timerfd wake-ups (src/node/bus/hub-timer.ts) on the real event loop.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { nullLogger } from '../../src/core/util/log.js';
import { timerFdHubTimers } from '../../src/node/bus/hub-timer.js';
import { native } from '../../src/node/native/addon.js';

const make = timerFdHubTimers(native, nullLogger);

test('wakes once at (never before) the deadline; re-arming replaces it; disarm cancels', async (tc) => {
  const woke: bigint[] = [];
  const t = make(() => woke.push(process.hrtime.bigint()));
  try {
    const deadlines: bigint[] = [];
    for (let i = 0; i < 20; i++) {
      const d = process.hrtime.bigint() + 300_000n; // 300 us ahead
      deadlines.push(d);
      t.arm(Number(d));
      const before = woke.length;
      for (let n = 0; n < 200 && woke.length === before; n++) await sleep(1);
      assert.equal(woke.length, before + 1, `wake-up ${i}`);
      assert.ok(woke.at(-1)! >= d, 'not before its deadline');
    }
    const late = woke.map((w, i) => Number(w - deadlines[i]!) / 1000).sort((a, b) => a - b);
    // Not a timing assertion beyond "it came" (the machine may be loaded): shown for the record.
    tc.diagnostic(
      `timerfd wake-up lateness median ${late[10]!.toFixed(0)} us, max ${late[19]!.toFixed(0)} us`,
    );
    t.arm(Number(process.hrtime.bigint() + 50_000_000n));
    t.arm(Number(process.hrtime.bigint() + 1_000_000n)); // replaces the 50 ms one
    const n = woke.length;
    await sleep(20);
    assert.equal(woke.length, n + 1);
    t.arm(Number(process.hrtime.bigint() + 5_000_000n));
    t.disarm();
    await sleep(20);
    assert.equal(woke.length, n + 1, 'disarmed: no wake-up');
    t.arm(1); // long past: at once
    await sleep(5);
    assert.equal(woke.length, n + 2);
  } finally {
    t.close();
  }
});

test('a throwing wake-up is logged, not fatal; a closed timer never wakes', async () => {
  const errors: string[] = [];
  const log = { ...nullLogger, error: (m: string) => errors.push(m), child: () => log } as typeof nullLogger;
  const t = timerFdHubTimers(
    native,
    log,
  )(() => {
    throw new Error('boom');
  });
  t.arm(Number(process.hrtime.bigint()));
  await sleep(10);
  assert.deepEqual(errors, ['bus wake-up failed']);
  t.arm(Number(process.hrtime.bigint() + 2_000_000n));
  t.close();
  t.close();
  await sleep(10);
  assert.equal(errors.length, 1);
});
