/**
 * The VIRTIO entropy device behind the real rng daemon (Unix sockets, memfd guest RAM, eventfds),
 * driven by the TypeScript front-end playing QEMU's vhost-user sequence and a tiny virtio-rng
 * driver: post writable buffers, kick, read the used lengths and the bytes.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { nullLogger } from '../../src/core/util/log.js';
import { featureBit, VirtioFeature } from '../../src/core/virtio/features.js';
import type { DriverQueue } from '../../src/node/frontend/driver-queue.js';
import { VhostUserFrontend } from '../../src/node/frontend/frontend.js';
import { GuestRam } from '../../src/node/frontend/guest-ram.js';
import { type RngDaemonOptions, startRngDaemon } from '../../src/node/rng/rng-daemon.js';

const dir = mkdtempSync(join(tmpdir(), 'vhrng-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));
let seq = 0;

function daemon(t: TestContext, opts: Partial<RngDaemonOptions> = {}, sockets = 1) {
  const base = join(dir, `rng${seq++}.sock`);
  const paths = Array.from({ length: sockets }, (_, i) => `${base}${i}`);
  const rng = startRngDaemon({ paths, log: nullLogger, ...opts });
  t.after(() => rng.stop());
  return { rng, paths };
}

/** A minimal virtio-rng driver: one request queue of writable buffers. */
class RngDriver {
  readonly fe: VhostUserFrontend;
  readonly ram: GuestRam;
  readonly q: DriverQueue;

  private constructor(fe: VhostUserFrontend, ram: GuestRam, q: DriverQueue) {
    this.fe = fe;
    this.ram = ram;
    this.q = q;
  }

  static async create(t: TestContext, path: string, opts: { eventIdx?: boolean } = {}): Promise<RngDriver> {
    const fe = VhostUserFrontend.connect(path, { timeoutMs: 3000 });
    const ram = new GuestRam();
    t.after(() => {
      fe.close();
      ram.close();
    });
    const init = await fe.init({ numQueues: 1, noConfig: true });
    let want = featureBit(VirtioFeature.VERSION_1);
    if (opts.eventIdx ?? true) want |= featureBit(VirtioFeature.RING_EVENT_IDX);
    const [q] = await fe.start({ features: init.features & want, queues: [{ size: 64 }], memory: ram });
    return new RngDriver(fe, ram, q!);
  }

  /** Posts one writable buffer of `len` bytes; resolves with [used length, bytes]. */
  request(len: number, timeoutMs?: number): Promise<[number, Uint8Array]> {
    const gpa = this.ram.alloc(len, 8);
    const head = this.q.add([], [{ gpa, len }]);
    const done = this.q.waitFor(head, timeoutMs);
    this.q.kick();
    return done.then((n) => [n, this.ram.read(gpa, n)]);
  }
}

const zeros = (b: Uint8Array) => b.every((x) => x === 0);

test('buffers come back full of random bytes that differ between requests', async (t) => {
  const { rng, paths } = daemon(t);
  const drv = await RngDriver.create(t, paths[0]!);
  const offered = drv.fe.negotiated!.features;
  assert.ok(offered & featureBit(VirtioFeature.VERSION_1));
  const [n1, a] = await drv.request(64);
  const [n2, b] = await drv.request(64);
  assert.equal(n1, 64);
  assert.equal(n2, 64);
  assert.ok(!zeros(a), 'bytes written');
  assert.notDeepEqual(a, b, 'two requests get different bytes');
  // Several at once, with one kick, and a large one.
  const many = await Promise.all([16, 32, 4096, 70_000].map((l) => drv.request(l)));
  assert.deepEqual(
    many.map(([n]) => n),
    [16, 32, 4096, 70_000],
  );
  const big = many[3]![1];
  // 70 000 random bytes: every byte value shows up (a counter or a constant would not pass).
  assert.equal(new Set(big).size, 256);
  const dev = rng.device(0)!;
  assert.equal(dev.stats.bytes, 64 + 64 + 16 + 32 + 4096 + 70_000);
  assert.equal(dev.stats.requests, 6);
  assert.equal(dev.stats.badChains, 0);
});

test('rate limit: max-bytes per period, the rest arrives after the period', async (t) => {
  const { rng, paths } = daemon(t, { maxBytes: 100, periodMs: 300 });
  const drv = await RngDriver.create(t, paths[0]!);
  const t0 = performance.now();
  const first = await Promise.all([drv.request(60), drv.request(60)]);
  const firstAt = performance.now() - t0;
  assert.deepEqual(
    first.map(([n]) => n),
    [60, 40],
    'the second request gets what is left of the budget',
  );
  const third = drv.request(50);
  const [n3] = await third;
  const thirdAt = performance.now() - t0;
  assert.equal(n3, 50);
  assert.ok(firstAt < 250, `first period served at once (${firstAt.toFixed(0)} ms)`);
  assert.ok(thirdAt >= 280, `the third request waited for the next period (${thirdAt.toFixed(0)} ms)`);
  const dev = rng.device(0)!;
  assert.equal(dev.stats.throttledPeriods, 1);
  assert.equal(dev.stats.bytes, 150);
});

test('rate limit is split between guests; each guest has its own budget', async (t) => {
  const { rng, paths } = daemon(t, { maxBytes: 64, periodMs: 60_000 }, 2);
  assert.equal(rng.perGuestMaxBytes, 32);
  const a = await RngDriver.create(t, paths[0]!);
  const b = await RngDriver.create(t, paths[1]!);
  const [na] = await a.request(100);
  const [nb] = await b.request(100);
  assert.equal(na, 32);
  assert.equal(nb, 32);
  // Budget spent for this (long) period: a further request waits.
  await assert.rejects(a.request(8, 300), { code: 'ERR_FRONTEND_TIMEOUT' });
  assert.equal(rng.device(0)!.throttled, true);
});

test('a file source: its bytes reach the guest; at its end requests wait and are counted', async (t) => {
  const file = join(dir, 'entropy.bin');
  const content = Uint8Array.from({ length: 40 }, (_, i) => 200 - i);
  writeFileSync(file, content);
  const { rng, paths } = daemon(t, { filename: file, periodMs: 200 });
  const drv = await RngDriver.create(t, paths[0]!, { eventIdx: false });
  const [n, bytes] = await drv.request(32);
  assert.equal(n, 32);
  assert.deepEqual(bytes, content.subarray(0, 32));
  const [n2, rest] = await drv.request(32);
  assert.equal(n2, 8, 'the rest of the file');
  assert.deepEqual(rest, content.subarray(32));
  assert.equal(rng.device(0)!.stats.sourceErrors, 1);
});

test('a missing source file fails at start with a clear error', () => {
  assert.throws(() => startRngDaemon({ paths: [join(dir, 'never.sock')], filename: join(dir, 'nope') }), {
    code: 'ENOENT',
    message: /cannot open the entropy source/,
  });
});
