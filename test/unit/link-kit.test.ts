/** TxBatcher (one flush per turn, backoff on back-pressure) and LinkSupervisor (reconnect with backoff). */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { LinkSupervisor, TxBatcher } from '../../src/node/bus/link-kit.js';

test('TxBatcher: many requests in one turn make one flush; back-pressure retries until done; kick retries at once', async () => {
  let flushes = 0;
  let pushBack = 0;
  const b = new TxBatcher({
    flush: () => {
      flushes++;
      return pushBack-- > 0 ? 'retry' : 'done';
    },
    maxRetryMs: 4,
  });
  for (let i = 0; i < 100; i++) b.request();
  assert.equal(flushes, 0, 'nothing is written inside the turn');
  await sleep(0);
  assert.equal(flushes, 1);
  pushBack = 3;
  b.request();
  await sleep(0);
  assert.equal(flushes, 2);
  assert.ok(b.waiting, 'a retry is pending after back-pressure');
  b.request(); // ignored while waiting: the retry will flush
  await sleep(30);
  assert.equal(flushes, 5, 'three retries until the sink took everything');
  assert.equal(b.backpressure, 3);
  assert.ok(!b.waiting);
  pushBack = 1;
  b.flushNow();
  assert.ok(b.waiting);
  b.kick();
  assert.ok(!b.waiting, 'kick cancels the backoff');
  await sleep(0);
  assert.equal(flushes, 7);
  b.close();
  b.request();
  await sleep(5);
  assert.equal(flushes, 7, 'closed: no more flushes');
});

test('LinkSupervisor: retries with growing delays until up, resets on up, counts, and stops when closed', async () => {
  const attemptsAt: number[] = [];
  const changes: string[] = [];
  let succeedAt = 4;
  const t0 = Date.now();
  const s: LinkSupervisor = new LinkSupervisor({
    minMs: 10,
    maxMs: 40,
    connect: () => {
      attemptsAt.push(Date.now() - t0);
      if (attemptsAt.length === succeedAt) setImmediate(() => s.up());
      else if (attemptsAt.length === 2) throw new Error('refused');
      else setImmediate(() => s.down('timeout'));
    },
    onChange: (st, why) => changes.push(`${st}${why === '' ? '' : ` ${why}`}`),
  });
  s.start();
  for (let i = 0; i < 100 && s.state !== 'up'; i++) await sleep(10);
  assert.equal(s.state, 'up');
  assert.equal(attemptsAt.length, 4);
  const gaps = attemptsAt.slice(1).map((t, i) => t - attemptsAt[i]!);
  assert.ok(gaps[0]! >= 5 && gaps[2]! >= 20, `delays grow (${gaps.join(', ')} ms)`);
  assert.deepEqual(changes, ['down timeout', 'up'], 'repeated failures are reported once');
  const st = s.stats();
  assert.equal(st.ups, 1);
  assert.equal(st.downs, 3);
  assert.equal(st.attempts, 4);
  assert.equal(st.lastError, 'timeout');
  succeedAt = 6;
  s.down('reset by peer');
  assert.equal(s.state, 'down');
  await sleep(1);
  assert.equal(attemptsAt.length, 4, 'the first retry after up waits at least minMs/2');
  for (let i = 0; i < 100 && s.state !== 'up'; i++) await sleep(5);
  assert.equal(s.state, 'up');
  s.close();
  s.down('closing');
  await sleep(60);
  assert.equal(attemptsAt.length, 6, 'closed: no more attempts');
});
