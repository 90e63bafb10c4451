/** vhost-device-can --realtime[=N] as a user runs it: a child process, its threads seen in /proc. */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { cli, exited, ROOT, waitFor } from '../helpers/cli.js';
import {
  cpuLatencySkip,
  fifoSkip,
  readCpuLatency,
  refuseSkip,
  threadSched,
  threadsOf,
  WITHOUT_SYS_NICE,
} from '../helpers/realtime.js';

const can = cli('vhost-device-can.ts');

const dir = mkdtempSync(join(tmpdir(), 'vdc-rt-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));

/** Runs `argv` (command first) to its exit, at most 20 s; its status and output (stdout, stderr). */
async function runToExit(argv: string[]): Promise<{ code: number | null; out: string }> {
  const child = spawn(argv[0]!, argv.slice(1), { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (x) => {
    out += x;
  });
  child.stderr.on('data', (x) => {
    out += x;
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
  const code = await exited(child);
  clearTimeout(timer);
  return { code, out };
}

test('bad --realtime values exit 2 naming the problem', () => {
  const s = ['-s', join(dir, 'x'), '--bitrate', 'default=500k'];
  const cases: [string[], RegExp][] = [
    [['--realtime=0'], /--realtime must be between 1 and 99, got 0/],
    [['--realtime=100'], /--realtime must be between 1 and 99, got 100/],
    [['--realtime=abc'], /--realtime expects an integer, got "abc"/],
    [['--realtime=1.5'], /--realtime expects an integer, got "1\.5"/],
    [['--realtime='], /--realtime expects an integer, got ""/],
    [['--realtime', '12'], /--realtime takes its priority as --realtime=N/],
    [['--cpu-latency=-1'], /--cpu-latency expects an integer, got "-1"/],
    [['--cpu-latency=2000000001'], /--cpu-latency must be between 0 and 2000000000, got 2000000001/],
    [['--cpu-latency=5us'], /--cpu-latency expects an integer, got "5us"/],
    [['--cpu-latency'], /--cpu-latency/],
  ];
  for (const [args, re] of cases) {
    const r = can.runSync([...s, ...args]);
    assert.equal(r.status, 2, args.join(' '));
    assert.match(r.stderr, re);
    assert.match(r.stderr, /Try 'vhost-device-can --help'/);
  }
  assert.match(
    can.runSync(['--help']).stdout,
    /--realtime\[=N\]\n[\s\S]*?SCHED_FIFO at priority N \(1..99, default 10\)/,
  );
});

test('--realtime=12: the main thread runs SCHED_FIFO 12, every other thread SCHED_OTHER', {
  skip: fifoSkip,
}, async (t) => {
  const base = join(dir, 'rt.sock');
  const d = can.start(['-s', base, '--bitrate', 'default=500k', '--realtime=12']);
  t.after(() => d.child.kill('SIGKILL'));
  await waitFor(() => d.output().includes('vhost-device-can started'));
  const pid = d.child.pid!;
  assert.deepEqual(threadSched(pid, pid), { tid: pid, rtPriority: 12, policy: 1 });
  const others = threadsOf(pid).filter((x) => x.tid !== pid);
  assert.ok(others.length > 0);
  for (const x of others) assert.deepEqual([x.policy, x.rtPriority], [0, 0], `thread ${x.tid}`);
  assert.match(d.output(), /realtime: main thread SCHED_FIFO priority 12/);
  assert.doesNotMatch(d.output(), /untimed bus/, 'every bus is timed: no warning');
  assert.doesNotMatch(d.output(), /single-threaded-gc/, 'node runs with the #! line options: no GC warning');
  // The line comes once the socket is bound, before "started".
  const out = d.output();
  assert.ok(out.indexOf('listening') < out.indexOf('realtime:'));
  assert.ok(out.indexOf('realtime:') < out.indexOf('vhost-device-can started'));
  d.child.kill('SIGTERM');
  assert.equal(await exited(d.child), 0);
});

test('bare --realtime is priority 10; an untimed bus draws a warning naming it', {
  skip: fifoSkip,
}, async (t) => {
  const base = join(dir, 'rt10.sock');
  const d = can.start([
    '-s',
    base,
    '-c',
    '2',
    '-d',
    'virtual:a virtual:b',
    '--bitrate',
    'a=125k',
    '--realtime',
  ]);
  t.after(() => d.child.kill('SIGKILL'));
  await waitFor(() => d.output().includes('vhost-device-can started'));
  const pid = d.child.pid!;
  assert.deepEqual(threadSched(pid, pid), { tid: pid, rtPriority: 10, policy: 1 });
  assert.match(d.output(), /realtime: main thread SCHED_FIFO priority 10/);
  assert.match(d.output(), /WARN +realtime: a flood on an untimed bus keeps a core busy .* untimed=b\n/);
  d.child.kill('SIGTERM');
  assert.equal(await exited(d.child), 0);
});

test('refused by the kernel (no CAP_SYS_NICE, RLIMIT_RTPRIO 0): exit 1 with the cause and the fix, sockets removed', {
  skip: refuseSkip,
}, async () => {
  const base = join(dir, 'refused.sock');
  const { code, out } = await runToExit([
    ...WITHOUT_SYS_NICE,
    process.execPath,
    ...can.argv,
    '-s',
    base,
    '--bitrate',
    'default=500k',
    '--realtime=12',
  ]);
  assert.equal(code, 1, out);
  assert.match(
    out,
    /vhost-device-can: --realtime=12: the kernel refused SCHED_FIFO priority 12 for the main thread \(sched_setscheduler: Operation not permitted\)/,
  );
  assert.match(out, /needs root or CAP_SYS_NICE/);
  assert.match(out, /`ulimit -r 12`/);
  assert.match(out, /\(ERR_REALTIME\)\n/);
  assert.doesNotMatch(out, /vhost-device-can started/);
  assert.equal(existsSync(`${base}0`), false, 'the socket file is removed');
});

test('--cpu-latency=77: the kernel limit is 77 us while the daemon runs and back once it is killed', {
  skip: cpuLatencySkip ?? fifoSkip,
}, async (t) => {
  const before = readCpuLatency();
  if (before <= 77) {
    t.skip(`something else holds the CPU latency limit at ${before} us already`);
    return;
  }
  const d = can.start([
    '-s',
    join(dir, 'lat.sock'),
    '--bitrate',
    'default=500k',
    '--realtime=12',
    '--cpu-latency=77',
  ]);
  t.after(() => d.child.kill('SIGKILL'));
  await waitFor(() => d.output().includes('vhost-device-can started'));
  assert.equal(readCpuLatency(), 77);
  assert.match(
    d.output(),
    /cpu-latency: idle CPUs held to a wake-up latency of at most 77 us .*effectiveUs=77/,
  );
  // Held after the real-time switch, before "started".
  const out = d.output();
  assert.ok(out.indexOf('realtime:') < out.indexOf('cpu-latency:'));
  assert.ok(out.indexOf('cpu-latency:') < out.indexOf('vhost-device-can started'));
  // A killed daemon leaves nothing behind: the kernel drops the request with the process's files.
  d.child.kill('SIGKILL');
  await exited(d.child);
  assert.equal(readCpuLatency(), before);

  // A clean stop releases it as well.
  const e = can.start(['-s', join(dir, 'lat2.sock'), '--cpu-latency=0']);
  t.after(() => e.child.kill('SIGKILL'));
  await waitFor(() => e.output().includes('vhost-device-can started'));
  assert.equal(readCpuLatency(), 0);
  e.child.kill('SIGTERM');
  assert.equal(await exited(e.child), 0);
  assert.equal(readCpuLatency(), before);
});

test('--cpu-latency refused (not root: the device is for root only): exit 1 with the cause and the fix, sockets removed', {
  skip: cpuLatencySkip,
}, async () => {
  // A directory the unprivileged user can create its socket in.
  const open = mkdtempSync(join(tmpdir(), 'vdc-lat-'));
  chmodSync(open, 0o777);
  const base = join(open, 'nobody.sock');
  const asNobody = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--'];
  const { code, out } = await runToExit([
    ...asNobody,
    process.execPath,
    ...can.argv,
    '-s',
    base,
    '--cpu-latency=0',
  ]);
  rmSync(open, { recursive: true, force: true });
  assert.equal(code, 1, out);
  assert.match(
    out,
    /vhost-device-can: --cpu-latency=0: cannot hold the CPU latency limit through \/dev\/cpu_dma_latency \(EACCES: permission denied, open '\/dev\/cpu_dma_latency'\): the device is root's/,
  );
  assert.match(out, /\(ERR_CPU_LATENCY\)\n/);
  assert.match(out, /listening/, 'it got as far as serving');
  assert.doesNotMatch(out, /vhost-device-can started/);
  assert.equal(existsSync(`${base}0`), false, 'the socket file is removed');
});

test('started without the node options of its #! line, --realtime warns about the garbage collector', {
  skip: fifoSkip,
}, async (t) => {
  const base = join(dir, 'gc.sock');
  const argv = can.argv.filter((a) => a !== '--single-threaded-gc');
  assert.equal(argv.length, can.argv.length - 1, 'the #! line gives --single-threaded-gc');
  const child = spawn(process.execPath, [...argv, '-s', base, '--bitrate', 'default=500k', '--realtime'], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.after(() => child.kill('SIGKILL'));
  let out = '';
  child.stderr.on('data', (x) => {
    out += x;
  });
  await waitFor(() => out.includes('vhost-device-can started'));
  assert.match(
    out,
    /WARN +realtime: node was started without --single-threaded-gc: .*stall it for tens of milliseconds/,
  );
  child.kill('SIGTERM');
  assert.equal(await exited(child), 0);
});
