// eventfd syscalls and the uv_poll Watcher, against real kernel objects and the real loop.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { type NativeSystemError, type NativeWatcher, native } from '../../src/node/native/addon.js';

const gc: (() => void) | undefined = (globalThis as { gc?: () => void }).gc;
const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
const addonTs = fileURLToPath(new URL('../../src/node/native/addon.ts', import.meta.url));

function fdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

function fdFlags(fd: number): number {
  const m = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8').match(/flags:\s*(\d+)/);
  assert.ok(m);
  return Number.parseInt(m[1]!, 8);
}

/** Resolves with the first value `pick` returns, or rejects after `ms`. */
function waitFor<T>(what: string, pick: () => T | undefined, ms = 2000): Promise<T> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const poll = () => {
      const v = pick();
      if (v !== undefined) resolve(v);
      else if (Date.now() - started > ms) reject(new Error(`timed out waiting for ${what}`));
      else setTimeout(poll, 2);
    };
    poll();
  });
}

/** `promise`, or 'timeout' after `ms` (the timer does not hold the test process open). */
function within<T>(promise: Promise<T>, ms: number): Promise<T | 'timeout'> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Runs an ES module snippet in a child node with tsx; `ADDON` is replaced by the addon.ts path. */
function spawnSnippet(code: string) {
  const source = code.replaceAll('ADDON', JSON.stringify(addonTs));
  return spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', source], {
    cwd: repoRoot,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

function collect(child: ReturnType<typeof spawnSnippet>) {
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => {
    stdout += d.toString();
  });
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  return { child, out: () => stdout, err: () => stderr, exit };
}

test('eventfd: create, write, read, EAGAIN when empty', () => {
  const before = fdCount();
  const fd = native.eventfdCreate(0, true);
  assert.equal(fdFlags(fd) & 0o2000000, 0o2000000, 'close-on-exec');
  assert.equal(fdFlags(fd) & 0o4000, 0o4000, 'non-blocking');
  assert.equal(native.eventfdRead(fd), null);
  native.eventfdWrite(fd, 3);
  native.eventfdWrite(fd, 4);
  assert.equal(native.eventfdRead(fd), 7, 'writes add up');
  assert.equal(native.eventfdRead(fd), null, 'a read resets the counter');
  native.close(fd);

  const blocking = native.eventfdCreate(5, false);
  assert.equal(fdFlags(blocking) & 0o4000, 0, 'blocking when asked');
  assert.equal(native.eventfdRead(blocking), 5, 'initial value');
  native.close(blocking);
  assert.equal(fdCount(), before);
});

test('eventfd: counter overflow on a non-blocking fd throws EAGAIN', () => {
  const fd = native.eventfdCreate(0, true);
  const big = Number.MAX_SAFE_INTEGER;
  let writes = 0;
  let error: unknown;
  while (error === undefined && writes < 5000) {
    try {
      native.eventfdWrite(fd, big);
      writes++;
    } catch (e) {
      error = e;
    }
  }
  assert.equal(writes, 2048, '2048 * (2^53 - 1) still fits below 2^64 - 1');
  assert.ok(error instanceof Error);
  assert.equal((error as NativeSystemError).code, 'EAGAIN');
  assert.equal((error as NativeSystemError).errno, 11);
  assert.equal((error as NativeSystemError).syscall, 'write');
  assert.equal(native.eventfdRead(fd), 2048 * big);
  native.close(fd);
});

test('eventfd: argument validation', () => {
  const fd = native.eventfdCreate(0, true);
  assert.throws(() => native.eventfdWrite(fd, -1), RangeError);
  assert.throws(() => native.eventfdWrite(fd, 1.5), RangeError);
  assert.throws(() => native.eventfdWrite(fd, 2 ** 53), RangeError);
  assert.throws(() => native.eventfdCreate(2 ** 32, true), RangeError);
  assert.throws(() => native.eventfdCreate(0, 1 as unknown as boolean), TypeError);
  assert.throws(() => native.eventfdRead('x' as unknown as number), TypeError);
  assert.equal(native.eventfdRead(fd), null, 'nothing was written by the rejected calls');
  native.close(fd);
  assert.throws(
    () => native.eventfdRead(fd),
    (e: unknown) => (e as NativeSystemError).code === 'EBADF' && (e as NativeSystemError).syscall === 'read',
  );
});

test('fence() is callable', () => {
  assert.equal(native.fence(), undefined);
  assert.equal(native.READABLE, 1);
  assert.equal(native.WRITABLE, 2);
});

test('Watcher: readable fires on an eventfd write, with the watcher as `this`', async () => {
  const fd = native.eventfdCreate(0, true);
  const seen: Array<{ status: number; events: number; value: number | null; self: unknown }> = [];
  const w: NativeWatcher = new native.Watcher(fd, function (this: unknown, status, events) {
    seen.push({ status, events, value: native.eventfdRead(fd), self: this });
  });
  w.start(native.READABLE);
  await sleep(20);
  assert.equal(seen.length, 0, 'no event before a write');

  native.eventfdWrite(fd, 2);
  await waitFor('first callback', () => seen[0]);
  assert.deepEqual(seen[0], { status: 0, events: native.READABLE, value: 2, self: w });

  native.eventfdWrite(fd, 5);
  await waitFor('second callback', () => seen[1]);
  assert.equal(seen[1]?.value, 5);
  w.close();
  native.close(fd);
});

test('Watcher: stop() stops callbacks, start() resumes (level-triggered), close() twice is fine', async () => {
  const fd = native.eventfdCreate(0, true);
  let calls = 0;
  let drained = 0;
  const w = new native.Watcher(fd, () => {
    calls++;
    drained += native.eventfdRead(fd) ?? 0;
  });
  w.start(native.READABLE);
  native.eventfdWrite(fd, 1);
  await waitFor('callback', () => (calls === 1 ? true : undefined));

  w.stop();
  w.stop(); // idempotent
  native.eventfdWrite(fd, 10);
  await sleep(50);
  assert.equal(calls, 1, 'no callback while stopped');

  w.start(native.READABLE); // the counter is still non-zero: fires at once
  await waitFor('callback after restart', () => (calls === 2 ? true : undefined));
  assert.equal(drained, 11);

  w.close();
  w.close();
  w.stop(); // no-op after close
  native.eventfdWrite(fd, 1);
  await sleep(30);
  assert.equal(calls, 2, 'no callback after close');
  assert.throws(
    () => w.start(native.READABLE),
    (e: unknown) => (e as NativeSystemError).code === 'ERR_WATCHER_CLOSED',
  );
  native.close(fd);
});

test('Watcher on a socketpair: readable on data, writable at once, start() changes the mask', async () => {
  const [a, b] = native.socketpair();
  const events: number[] = [];
  const buf = new Uint8Array(64);
  let received = '';
  const w = new native.Watcher(a, (status, ev) => {
    assert.equal(status, 0);
    events.push(ev);
    if (ev & native.READABLE) {
      for (let r = native.recvMsg(a, buf, 0); r !== null && r.bytes > 0; r = native.recvMsg(a, buf, 0)) {
        received += new TextDecoder().decode(buf.subarray(0, r.bytes));
      }
    }
    if (ev & native.WRITABLE) w.start(native.READABLE); // stop asking for writability
  });
  w.start(native.READABLE | native.WRITABLE);
  await waitFor('writable', () => (events.length > 0 ? true : undefined));
  assert.equal(events[0]! & native.WRITABLE, native.WRITABLE, 'an empty socket is writable');
  const afterWritable = events.length;
  await sleep(30);
  assert.equal(events.length, afterWritable, 'WRITABLE no longer requested');

  native.sendMsg(b, new TextEncoder().encode('over the pair'));
  await waitFor('data', () => (received === 'over the pair' ? true : undefined));
  assert.equal(events.at(-1), native.READABLE);
  w.close();
  native.close(a);
  native.close(b);
});

test('Watcher on a listening socket fires when a client connects', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'vn-watch-'));
  try {
    const path = join(dir, 's.sock');
    const lfd = native.listenUnix(path, 4);
    const accepted: number[] = [];
    const w = new native.Watcher(lfd, () => {
      for (let fd = native.acceptUnix(lfd); fd !== null; fd = native.acceptUnix(lfd)) accepted.push(fd);
    });
    w.start(native.READABLE);
    const c1 = native.connectUnix(path);
    const c2 = native.connectUnix(path);
    await waitFor('two accepts', () => (accepted.length === 2 ? true : undefined));
    w.close();
    for (const fd of [...accepted, c1, c2, lfd]) native.close(fd);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('Watcher closed inside its own callback (without draining) is not called again', async () => {
  const fd = native.eventfdCreate(0, true);
  let calls = 0;
  const w = new native.Watcher(fd, () => {
    calls++;
    w.close();
    w.close();
  });
  w.start(native.READABLE);
  native.eventfdWrite(fd, 1); // never drained: level-triggered would fire forever
  await waitFor('callback', () => (calls > 0 ? true : undefined));
  await sleep(50);
  assert.equal(calls, 1);
  assert.equal(native.eventfdRead(fd), 1, 'the counter was left alone');
  native.close(fd);
});

test('Watcher: one per fd per loop (EEXIST), free again after close()', () => {
  const fd = native.eventfdCreate(0, true);
  const w1 = new native.Watcher(fd, () => {});
  w1.start(native.READABLE);
  assert.throws(
    () => new native.Watcher(fd, () => {}),
    (e: unknown) =>
      (e as NativeSystemError).code === 'EEXIST' && (e as NativeSystemError).syscall === 'uv_poll_init',
  );
  w1.close();
  const w2 = new native.Watcher(fd, () => {});
  w2.start(native.READABLE);
  w2.close();
  native.close(fd);
});

test('Watcher: argument and receiver validation', () => {
  const fd = native.eventfdCreate(0, true);
  assert.throws(() => new native.Watcher(fd, 'nope' as unknown as () => void), TypeError);
  assert.throws(() => new native.Watcher(-1, () => {}), RangeError);
  assert.throws(
    () => (native.Watcher as unknown as (fd: number, cb: () => void) => void)(fd, () => {}),
    TypeError,
  );
  const w = new native.Watcher(fd, () => {});
  assert.throws(() => w.start(0), RangeError);
  assert.throws(() => w.start(4), RangeError, 'unknown bits would trip a libuv assertion');
  assert.throws(() => w.start.call({}, native.READABLE), TypeError, 'V8 checks the receiver');
  w.close();
  native.close(fd);
});

test('Watcher reports a poll error (POLLERR) with a negative status and stops', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vn-fifo-'));
  try {
    const fifo = join(dir, 'f');
    try {
      execFileSync('mkfifo', [fifo]);
    } catch {
      t.skip('mkfifo is not available');
      return;
    }
    const reader = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
    const writer = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
    const seen: Array<[number, number]> = [];
    const w = new native.Watcher(writer, (status, events) => {
      seen.push([status, events]);
    });
    closeSync(reader); // the write end of a pipe without readers reports POLLERR
    w.start(native.WRITABLE);
    await waitFor('error callback', () => (seen.length > 0 ? true : undefined));
    await sleep(30);
    assert.ok(seen[0]![0] < 0, `status ${seen[0]![0]} is a libuv error code`);
    assert.equal(seen[0]![0], -9, 'UV_EBADF, as libuv reports POLLERR');
    assert.equal(seen.length, 1, 'libuv stopped the watcher after the error');
    w.close();
    closeSync(writer);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('Watchers dropped without close() are finalized by GC without crashing', async () => {
  const fd = native.eventfdCreate(0, true);
  (function dropSome() {
    for (let i = 0; i < 100; i++) {
      const w = new native.Watcher(fd, () => {});
      if (i % 2 === 0) {
        w.start(native.READABLE);
        w.stop(); // stopped: no longer kept alive
      }
    }
  })();
  for (let i = 0; i < 5; i++) {
    gc?.();
    await sleep(5);
  }
  // A started watcher that JS dropped keeps working (it is kept alive while started).
  let calls = 0;
  (function startAndDrop() {
    new native.Watcher(fd, function (this: NativeWatcher) {
      calls++;
      native.eventfdRead(fd);
      this.close();
    }).start(native.READABLE);
  })();
  for (let i = 0; i < 3; i++) {
    gc?.();
    await sleep(5);
  }
  native.eventfdWrite(fd, 1);
  await waitFor('callback of the dropped started watcher', () => (calls > 0 ? true : undefined));
  assert.equal(calls, 1);
  native.close(fd);
});

test('a started watcher keeps the process alive; a stopped one does not', async () => {
  const alive = collect(
    spawnSnippet(`
      const { native } = await import(ADDON);
      const fd = native.eventfdCreate(0, true);
      new native.Watcher(fd, () => {}).start(native.READABLE);
      console.log('ready');
    `),
  );
  await waitFor('child ready', () => (alive.out().includes('ready') ? true : undefined), 10_000);
  await sleep(300);
  const stillRunning = await within(
    alive.exit.then(() => false),
    10,
  );
  assert.equal(stillRunning, 'timeout', `the child exited early: ${alive.err()}`);

  const stopped = collect(
    spawnSnippet(`
      const { native } = await import(ADDON);
      const fd = native.eventfdCreate(0, true);
      const w = new native.Watcher(fd, () => {});
      w.start(native.READABLE);
      w.stop();
      console.log('stopped');
    `),
  );
  const result = await within(stopped.exit, 10_000);
  assert.deepEqual(result, { code: 0, signal: null }, stopped.err());
  assert.match(stopped.out(), /stopped/);

  alive.child.kill('SIGTERM');
  assert.deepEqual(await alive.exit, { code: null, signal: 'SIGTERM' });
});

test('an exception thrown by a watcher callback becomes an uncaughtException', async () => {
  const child = collect(
    spawnSnippet(`
      const { native } = await import(ADDON);
      const fd = native.eventfdCreate(0, true);
      const w = new native.Watcher(fd, () => { throw new Error('boom from watcher'); });
      process.on('uncaughtException', (err) => {
        console.log('caught: ' + err.message);
        w.close();
      });
      w.start(native.READABLE);
      native.eventfdWrite(fd, 1);
    `),
  );
  const result = await within(child.exit, 10_000);
  assert.deepEqual(result, { code: 0, signal: null }, child.err());
  assert.equal(child.out().trim(), 'caught: boom from watcher');

  const unhandled = collect(
    spawnSnippet(`
      const { native } = await import(ADDON);
      const fd = native.eventfdCreate(0, true);
      new native.Watcher(fd, () => { throw new Error('nobody catches this'); }).start(native.READABLE);
      native.eventfdWrite(fd, 1);
    `),
  );
  const r2 = await within(unhandled.exit, 10_000);
  assert.notEqual(r2, 'timeout');
  assert.equal((r2 as { code: number }).code, 1, 'an uncaught exception ends the process');
  assert.match(unhandled.err(), /nobody catches this/);
});
