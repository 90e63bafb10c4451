// The addon's scheduling calls (native/sched.c) against the kernel. Switching happens in a child
// process, so the test runner itself never runs under SCHED_FIFO.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { native } from '../../src/node/native/addon.js';
import { ROOT } from '../helpers/cli.js';
import { fifoSkip, refuseSkip, WITHOUT_SYS_NICE } from '../helpers/realtime.js';

/** Runs `body` (an ES module's text; it has `native`) in a child node; its stdout parsed as JSON. */
function child(
  body: string,
  prefix: string[] = [],
): { json: unknown; stderr: string; status: number | null } {
  const src = `import { native } from './src/node/native/addon.ts';\n${body}`;
  const argv = [process.execPath, '--import', 'tsx', '--input-type=module', '-e', src];
  const all = [...prefix, ...argv];
  const r = spawnSync(all[0]!, all.slice(1), { cwd: ROOT, encoding: 'utf8', timeout: 20_000 });
  let json: unknown = null;
  try {
    json = JSON.parse(r.stdout);
  } catch {
    // left null: the assertions show stdout and stderr
  }
  return { json, stderr: `${r.stdout}\n${r.stderr}`, status: r.status };
}

test('schedGet reads the calling thread: SCHED_OTHER at priority 0 for the test runner', () => {
  const s = native.schedGet();
  assert.deepEqual(s, { policy: 'SCHED_OTHER', priority: 0, resetOnFork: false });
});

test('schedSetFifo checks its arguments before any syscall', () => {
  for (const p of [0, 100, -1, 1.5, Number.NaN]) {
    assert.throws(
      () => native.schedSetFifo(p, true),
      { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' },
      `${p}`,
    );
  }
  assert.throws(() => native.schedSetFifo('10' as unknown as number, true), {
    name: 'TypeError',
    code: 'ERR_INVALID_ARG_TYPE',
  });
  assert.throws(() => native.schedSetFifo(10, 1 as unknown as boolean), {
    name: 'TypeError',
    code: 'ERR_INVALID_ARG_TYPE',
  });
  assert.equal(native.schedGet().policy, 'SCHED_OTHER', 'nothing changed');
});

test('SCHED_FIFO for the calling thread only; threads created afterwards stay SCHED_OTHER', {
  skip: fifoSkip,
}, () => {
  const r = child(`
import { readdirSync, readFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
const sched = (tid) => {
  const s = readFileSync('/proc/self/task/' + tid + '/stat', 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return { tid: Number(tid), rtPriority: Number(f[37]), policy: Number(f[38]) };
};
const tids = () => readdirSync('/proc/self/task');
const before = native.schedGet();
const old = new Set(tids());
native.schedSetFifo(12, true);
const after = native.schedGet();
// A Worker is a new thread created by this (now real-time) thread.
const w = new Worker('setInterval(() => {}, 1000)', { eval: true });
await new Promise((r) => w.once('online', r));
const threads = tids().map(sched);
const created = threads.filter((t) => !old.has(String(t.tid))).map((t) => t.tid);
await w.terminate();
console.log(JSON.stringify({ pid: process.pid, before, after, threads, created }));
`);
  assert.equal(r.status, 0, r.stderr);
  const o = r.json as {
    pid: number;
    before: unknown;
    after: unknown;
    threads: { tid: number; rtPriority: number; policy: number }[];
    created: number[];
  };
  assert.deepEqual(o.before, { policy: 'SCHED_OTHER', priority: 0, resetOnFork: false });
  assert.deepEqual(o.after, { policy: 'SCHED_FIFO', priority: 12, resetOnFork: true });
  const main = o.threads.find((t) => t.tid === o.pid);
  assert.deepEqual(main, { tid: o.pid, rtPriority: 12, policy: 1 }, 'the main thread, seen by the kernel');
  const others = o.threads.filter((t) => t.tid !== o.pid);
  assert.ok(others.length > 0);
  for (const t of others) assert.deepEqual([t.policy, t.rtPriority], [0, 0], `thread ${t.tid}`);
  assert.ok(o.created.length > 0, 'the Worker made at least one new thread');
});

test('without CAP_SYS_NICE and RLIMIT_RTPRIO 0 the kernel refuses: EPERM from sched_setscheduler', {
  skip: refuseSkip,
}, () => {
  const r = child(
    `
try {
  native.schedSetFifo(12, true);
  console.log(JSON.stringify({ ok: true }));
} catch (e) {
  console.log(JSON.stringify({ code: e.code, errno: e.errno, syscall: e.syscall, message: e.message, now: native.schedGet() }));
}
`,
    WITHOUT_SYS_NICE,
  );
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(r.json, {
    code: 'EPERM',
    errno: 1,
    syscall: 'sched_setscheduler',
    message: 'sched_setscheduler: Operation not permitted',
    now: { policy: 'SCHED_OTHER', priority: 0, resetOnFork: false },
  });
});
