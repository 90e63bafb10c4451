/** The vhost-device-rng command as a user runs it: a child process, real sockets, signals. */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, isAbsolute, join } from 'node:path';
import { test } from 'node:test';
import { featureBit, VirtioFeature } from '../../src/core/virtio/features.js';
import { VhostUserFrontend } from '../../src/node/frontend/frontend.js';
import { GuestRam } from '../../src/node/frontend/guest-ram.js';
import { cli, exited, ROOT, waitFor } from '../helpers/cli.js';

const { runSync, start } = cli('vhost-device-rng.ts');
const dir = mkdtempSync(join(tmpdir(), 'vdrng-cli-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));

test('--help, --version and --print-capabilities', () => {
  const h = runSync(['--help']);
  assert.equal(h.status, 0);
  assert.match(h.stdout, /SYNOPSIS/);
  assert.match(h.stdout, /--max-bytes N/);
  const v = runSync(['--version']);
  assert.equal(v.status, 0);
  assert.match(v.stdout, /^vhost-device-rng \d+\.\d+\.\d+/);
  const c = runSync(['--print-capabilities', '--period', 'bogus']);
  assert.equal(c.status, 0);
  assert.deepEqual(JSON.parse(c.stdout), { type: 'rng' });
});

test('the shipped vhost-user description file names this daemon', () => {
  const file = JSON.parse(readFileSync(join(ROOT, 'contrib/vhost-user/50-vhost-device-rng.json'), 'utf8'));
  assert.equal(file.type, 'rng');
  assert.ok(isAbsolute(file.binary));
  assert.equal(basename(file.binary), 'vhost-device-rng');
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
  assert.ok(pkg.bin['vhost-device-rng']);
});

test('bad command lines exit 2, a missing source exits 1, no socket left behind', () => {
  const r = runSync(['-s', join(dir, 'x'), '--period', '0']);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--period must be between 1/);
  assert.match(r.stderr, /Try 'vhost-device-rng --help'/);
  assert.equal(runSync([]).status, 2);
  const sock = join(dir, 'nosrc.sock');
  const m = runSync(['-s', sock, '-f', join(dir, 'missing')]);
  assert.equal(m.status, 1);
  assert.match(m.stderr, /cannot open the entropy source.*\(ENOENT\)/);
  assert.equal(existsSync(`${sock}0`), false);
});

test('serves random bytes at the configured rate; SIGUSR1 stats; SIGTERM cleans up', async (t) => {
  const sock = join(dir, 'rng.sock');
  const d = start(['-s', sock, '--max-bytes', '48', '--period', '400', '--log-format', 'json']);
  t.after(() => d.child.kill('SIGKILL'));
  await waitFor(() => /vhost-device-rng started/.test(d.output()));
  assert.match(d.output(), /"maxBytesPerGuest":48/);
  const fe = VhostUserFrontend.connect(`${sock}0`, { timeoutMs: 3000 });
  const ram = new GuestRam();
  t.after(() => {
    fe.close();
    ram.close();
  });
  const init = await fe.init({ numQueues: 1, noConfig: true });
  const [q] = await fe.start({
    features: init.features & featureBit(VirtioFeature.VERSION_1),
    queues: [{ size: 16 }],
    memory: ram,
  });
  const post = (len: number) => {
    const gpa = ram.alloc(len);
    const head = q!.add([], [{ gpa, len }]);
    return { gpa, done: q!.waitFor(head) };
  };
  const t0 = performance.now();
  const a = post(32);
  const b = post(32);
  q!.kick();
  assert.equal(await a.done, 32);
  assert.equal(await b.done, 16, 'the rest of the 48-byte budget');
  assert.ok(!ram.read(a.gpa, 32).every((x) => x === 0));
  const c = post(8);
  q!.kick();
  assert.equal(await c.done, 8);
  assert.ok(performance.now() - t0 >= 370, 'the third request waited for the next period');
  d.child.kill('SIGUSR1');
  await waitFor(() => /"bytes":56/.test(d.output()));
  assert.match(d.output(), /"throttledPeriods":1/);
  d.child.kill('SIGTERM');
  assert.equal(await exited(d.child), 0);
  assert.equal(existsSync(`${sock}0`), false);
});
