/** The vhost-device-console command as a user runs it: a child process, real sockets, signals. */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createConnection, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, isAbsolute, join } from 'node:path';
import { test } from 'node:test';
import { VhostUserFrontend } from '../../src/node/frontend/frontend.js';
import { native } from '../../src/node/native/addon.js';
import { cli, exited, ROOT, waitFor } from '../helpers/cli.js';

const { runSync, start, argv: CLI } = cli('vhost-device-console.ts');
const dir = mkdtempSync(join(tmpdir(), 'vdcon-cli-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));

/** A free TCP port range start (binds and releases; good enough for a test on loopback). */
async function freePort(span: number): Promise<number> {
  for (let tries = 0; tries < 20; tries++) {
    const base = 20000 + Math.floor(Math.random() * 30000);
    const ok = await Promise.all(
      Array.from(
        { length: span },
        (_, i) =>
          new Promise<boolean>((r) => {
            const s = createServer();
            s.once('error', () => r(false));
            s.listen(base + i, '127.0.0.1', () => s.close(() => r(true)));
          }),
      ),
    );
    if (ok.every(Boolean)) return base;
  }
  throw new Error('no free port range');
}

function tcp(port: number): Promise<{ s: Socket; data: () => string; closed: Promise<void> }> {
  return new Promise((resolve, reject) => {
    let data = '';
    const s = createConnection(port, '127.0.0.1');
    const closed = new Promise<void>((r) => s.once('close', () => r()));
    s.on('data', (c) => {
      data += c;
    });
    s.once('connect', () => resolve({ s, data: () => data, closed }));
    s.once('error', reject);
  });
}

test('--help, --version and --print-capabilities', () => {
  const h = runSync(['--help']);
  assert.equal(h.status, 0);
  assert.match(h.stdout, /SYNOPSIS/);
  assert.match(h.stdout, /--backend nested/);
  const v = runSync(['--version']);
  assert.equal(v.status, 0);
  assert.match(v.stdout, /^vhost-device-console \d+\.\d+\.\d+/);
  const c = runSync(['--print-capabilities', '--socket-count', 'bogus']);
  assert.equal(c.status, 0);
  assert.deepEqual(JSON.parse(c.stdout), { type: 'console' });
});

test('the shipped vhost-user description file names this daemon and a type QEMU knows', () => {
  const file = JSON.parse(
    readFileSync(join(ROOT, 'contrib/vhost-user/50-vhost-device-console.json'), 'utf8'),
  );
  assert.equal(file.type, 'console');
  assert.equal(typeof file.description, 'string');
  assert.ok(isAbsolute(file.binary), 'binary must be an absolute path');
  assert.equal(basename(file.binary), 'vhost-device-console');
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
  assert.ok(pkg.bin['vhost-device-console'], 'the binary the file names is installed by the package');
  // The capability type the daemon prints is the file's type (QEMU's and libvirt's contract).
  assert.equal(JSON.parse(runSync(['--print-capabilities']).stdout).type, file.type);
});

test('bad command lines exit 2 with a message', () => {
  const r = runSync(['-s', join(dir, 'x'), '-c', '2']);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /nested backend serves one guest/);
  assert.match(r.stderr, /Try 'vhost-device-console --help'/);
  assert.equal(runSync([]).status, 2);
  assert.equal(runSync(['-s', join(dir, 'x'), '-b', 'tcp']).status, 2);
});

test('a TCP port already taken fails start-up with exit 1 and leaves no socket behind', async () => {
  const port = await freePort(1);
  const blocker = createServer();
  await new Promise<void>((r) => blocker.listen(port, '127.0.0.1', r));
  try {
    const sock = join(dir, 'taken.sock');
    const r = runSync(['-s', sock, '-b', 'network', '-p', String(port)]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /ERR_ADDR_IN_USE/);
    assert.equal(existsSync(`${sock}0`), false);
  } finally {
    blocker.close();
  }
});

test('network backend: ports per guest and named port, one client each, SIGTERM cleans up', async () => {
  const guests = 2;
  const base = await freePort(guests * 2);
  const sock = join(dir, 'con.sock');
  const d = start([
    '-s',
    sock,
    '-c',
    String(guests),
    '-b',
    'network',
    '-p',
    String(base),
    '--port-name',
    'org.test.p1',
  ]);
  try {
    await waitFor(() => /vhost-device-console started/.test(d.output()));
    assert.ok(existsSync(`${sock}0`) && existsSync(`${sock}1`));
    // The mapping is logged: console of guest i on base+i, named port of guest i on base+2+i.
    assert.match(d.output(), new RegExp(`guest0 console.*tcp:127\\.0\\.0\\.1:${base}\\b`));
    assert.match(d.output(), new RegExp(`guest1 org\\.test\\.p1.*tcp:127\\.0\\.0\\.1:${base + 3}\\b`));
    for (let p = base; p < base + guests * 2; p++) {
      const c = await tcp(p);
      c.s.destroy();
    }
    const first = await tcp(base);
    const second = await tcp(base);
    await second.closed;
    assert.match(second.data(), /already has a client/);
    first.s.destroy();
    d.child.kill('SIGTERM');
    assert.equal(await exited(d.child), 0);
    assert.equal(existsSync(`${sock}0`), false);
    assert.match(d.output(), /refusedClients=1/);
  } finally {
    d.child.kill('SIGKILL');
  }
});

test('unix backend: client sockets at UDS_PATH + index', async () => {
  const sock = join(dir, 'u.sock');
  const uds = join(dir, 'console');
  const d = start(['-s', sock, '-b', 'unix', '--uds-path', uds, '--port-name', 'org.qemu.guest_agent.0']);
  try {
    await waitFor(() => /vhost-device-console started/.test(d.output()));
    assert.ok(existsSync(`${uds}0`));
    assert.ok(existsSync(`${uds}0-org.qemu.guest_agent.0`));
    d.child.kill('SIGTERM');
    assert.equal(await exited(d.child), 0);
    assert.equal(existsSync(`${uds}0`), false);
  } finally {
    d.child.kill('SIGKILL');
  }
});

test('--fd: serves a listening socket it was started with, and leaves its path alone', async () => {
  const path = join(dir, 'inherited.sock');
  const lfd = native.listenUnix(path, 4);
  const port = await freePort(1);
  const child = spawn(process.execPath, [...CLI, '--fd', '3', '-b', 'network', '-p', String(port)], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe', lfd],
  });
  native.close(lfd); // the daemon has its own copy
  let out = '';
  child.stdout!.on('data', (d) => {
    out += d;
  });
  child.stderr!.on('data', (d) => {
    out += d;
  });
  try {
    await waitFor(() => /vhost-device-console started/.test(out));
    assert.match(out, /listening socket=0 path=fd:3/);
    const fe = VhostUserFrontend.connect(path, { timeoutMs: 5000 });
    const init = await fe.init({ numQueues: 4 });
    assert.equal(init.queueNum, 4, 'a console device with one port answers on the inherited socket');
    fe.close();
    child.kill('SIGTERM');
    assert.equal(await exited(child), 0);
    assert.ok(existsSync(path), 'an inherited socket has no path of ours to remove');
  } finally {
    child.kill('SIGKILL');
  }
});

test('--fd that is not a listening socket fails start-up with exit 1', () => {
  const r = spawnSync(process.execPath, [...CLI, '--fd', '0', '-b', 'network'], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 20_000,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  assert.equal(r.status, 1);
  assert.match(r.stderr, /ERR_FD/);
});
