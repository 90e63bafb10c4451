/** The vhost-device-can command as a user runs it: a child process, real sockets, signals. */
import assert from 'node:assert/strict';
import { existsSync, lstatSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { cli, exited, waitFor } from '../helpers/cli.js';

const { runSync, start } = cli('vhost-device-can.ts');

const dir = mkdtempSync(join(tmpdir(), 'vdc-cli-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));

test('--help reads like a manual and --version prints the version', () => {
  const h = runSync(['--help']);
  assert.equal(h.status, 0);
  assert.match(h.stdout, /SYNOPSIS/);
  assert.match(h.stdout, /--can-devices/);
  const v = runSync(['--version']);
  assert.equal(v.status, 0);
  assert.match(v.stdout, /^vhost-device-can \d+\.\d+\.\d+/);
});

test('--print-capabilities prints the type as JSON and ignores everything else', () => {
  const c = runSync(['--print-capabilities', '-c', 'bogus']);
  assert.equal(c.status, 0);
  assert.deepEqual(JSON.parse(c.stdout), { type: 'can' });
});

test('bad command lines exit 2 with a message', () => {
  const r = runSync(['-s', join(dir, 'x'), '-c', '2', '-d', 'vcan0']);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--socket-count is 2/);
  assert.equal(runSync([]).status, 2);
});

test('start-up failures exit 1: missing directory, not a socket, host interface not yet served', () => {
  const a = runSync(['-s', join(dir, 'missing', 'can.sock')]);
  assert.equal(a.status, 1);
  assert.match(a.stderr, /ERR_LISTEN/);
  writeFileSync(join(dir, 'plain0'), 'keep me');
  const b = runSync(['-s', join(dir, 'plain')]);
  assert.equal(b.status, 1);
  assert.match(b.stderr, /not a socket/);
  assert.ok(existsSync(join(dir, 'plain0')), 'a non-socket path is never deleted');
  const c = runSync(['-s', join(dir, 'h'), '-d', 'vcan0']);
  assert.equal(c.status, 1);
  assert.match(c.stderr, /ERR_HOST_CAN_UNSUPPORTED/);
});

test('serves PATH0..N-1, refuses a path a live daemon serves, SIGUSR1 logs stats, SIGTERM cleans up', async () => {
  const base = join(dir, 'can.sock');
  const d = start(['-s', base, '-c', '2']);
  try {
    await waitFor(() => d.output().includes('vhost-device-can started'));
    for (const p of [`${base}0`, `${base}1`]) assert.ok(lstatSync(p).isSocket(), p);
    const second = runSync(['-s', base, '-c', '1']);
    assert.equal(second.status, 1);
    assert.match(second.stderr, /in use/);
    assert.ok(lstatSync(`${base}0`).isSocket(), 'the live socket was left alone');
    d.child.kill('SIGUSR1');
    await waitFor(() => /INFO {2}stats bus=default/.test(d.output()));
    assert.match(
      d.output(),
      /INFO {2}stats process=\d+ rssKb=\d+ heapUsedKb=\d+ heapTotalKb=\d+ externalKb=\d+/,
    );
    assert.match(d.output(), /stats bus=default .*framesAllocated=0/);
    d.child.kill('SIGTERM');
    assert.equal(await exited(d.child), 0);
    assert.equal(existsSync(`${base}0`), false);
    assert.equal(existsSync(`${base}1`), false);
  } finally {
    d.child.kill('SIGKILL');
  }
});

test('a stale socket file from a crashed daemon is replaced', async () => {
  const base = join(dir, 'stale.sock');
  const d1 = start(['-s', base]);
  await waitFor(() => d1.output().includes('vhost-device-can started'));
  d1.child.kill('SIGKILL');
  await exited(d1.child);
  assert.ok(lstatSync(`${base}0`).isSocket(), 'the crash left the socket file behind');
  const d2 = start(['-s', base]);
  try {
    await waitFor(() => d2.output().includes('vhost-device-can started'));
  } finally {
    d2.child.kill('SIGINT');
    assert.equal(await exited(d2.child), 0);
  }
});

test('--socketcand-listen: serves the buses, shows its counters in the statistics; a taken port fails start-up', async () => {
  const base = join(dir, 'scd.sock');
  const d = start(['-s', base, '--socketcand-listen', '127.0.0.1:0', '--stats-interval', '1']);
  try {
    await waitFor(() => /socketcand server listening .*listen=127\.0\.0\.1:\d+/.test(d.output()));
    const port = Number(/listen=127\.0\.0\.1:(\d+)/.exec(d.output())![1]);
    await waitFor(() => /socketcand-server=socketcand-server:127\.0\.0\.1:\d+ .*clients=0/.test(d.output()));
    const taken = runSync(['-s', join(dir, 'scd2.sock'), '--socketcand-listen', `127.0.0.1:${port}`]);
    assert.equal(taken.status, 1);
    assert.match(taken.stderr, /ERR_SOCKETCAND_ADDR_IN_USE|cannot listen on 127\.0\.0\.1/);
    assert.ok(!existsSync(join(dir, 'scd2.sock0')), 'the failed daemon removed its socket');
    d.child.kill('SIGTERM');
    assert.equal(await exited(d.child), 0);
  } finally {
    d.child.kill('SIGKILL');
  }
});
