/**
 * The console daemon's web side over real HTTP (guests, ports, bytes each way, /metrics), and
 * `--http` on both commands as a user runs them.
 */
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect as unixConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { nullLogger } from '../../src/core/util/log.js';
import { startConsoleDaemon } from '../../src/node/console/console-daemon.js';
import { ConsoleTestDriver } from '../../src/node/frontend/console-driver.js';
import { VhostUserFrontend } from '../../src/node/frontend/frontend.js';
import { GuestRam } from '../../src/node/frontend/guest-ram.js';
import { startConsoleWeb } from '../../src/node/http/console-web.js';
import { cli, exited, waitFor as waitCli } from '../helpers/cli.js';
import { lintExposition, parseMetrics, req, sample } from '../helpers/http.js';
import { waitFor } from '../helpers/vhost-user.js';

test('console guests and ports with bytes each way, and their metrics', async (t) => {
  const dir = mkdtempSync(`${tmpdir()}/vhu-cweb-`);
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const con = await startConsoleDaemon({
    paths: [join(dir, 'con.sock0'), join(dir, 'con.sock1')],
    backend: { kind: 'unix', path: join(dir, 'client') },
    portNames: ['org.test.0'],
    scrollback: 4,
  });
  t.after(() => con.stop());
  const web = await startConsoleWeb(con, {
    host: '127.0.0.1',
    port: 0,
    log: nullLogger,
    version: '0.0.0-test',
    processMetrics: false,
  });
  t.after(() => web.close());

  const fe = VhostUserFrontend.connect(join(dir, 'con.sock0'), { timeoutMs: 3000 });
  const ram = new GuestRam();
  t.after(() => {
    fe.close();
    ram.close();
  });
  const drv = await ConsoleTestDriver.create(fe, ram, { ports: 2, timeoutMs: 3000 });
  t.after(() => drv.shutdown());
  await drv.waitConsole();
  // 10 bytes with no client: 4 stay in the scrollback, 6 are dropped (counted).
  await drv.write(0, new TextEncoder().encode('0123456789'));
  await waitFor('output', () => (con.endpoints[0]![0]!.stats.outputBytes === 10 ? true : undefined));
  const client = unixConnect(join(dir, 'client0'));
  t.after(() => client.destroy());
  let fromGuest = '';
  client.on('data', (d) => {
    fromGuest += d;
  });
  await waitFor('replay', () => (fromGuest === '6789' ? true : undefined));
  client.write('ls\n');
  await waitFor('input', () => (con.endpoints[0]![0]!.stats.clientBytesIn === 3 ? true : undefined));

  const r = await req(`${web.url}/api/guests`);
  assert.equal(r.status, 200);
  const [g0, g1] = r.json.guests;
  assert.equal(g0.connected, true);
  assert.equal(g1.connected, false);
  assert.deepEqual(
    g0.ports.map((p: { label: string; client: boolean }) => [p.label, p.client]),
    [
      ['guest0 console', true],
      ['guest0 org.test.0', false],
    ],
  );
  assert.equal(g0.ports[0].stats.outputBytes, 10);
  assert.equal(g0.ports[0].stats.clientBytesIn, 3);
  assert.equal((await req(`${web.url}/api/status`)).json.daemon, 'console');

  const text = (await req(`${web.url}/metrics`)).text;
  assert.deepEqual(lintExposition(text), []);
  const m = parseMetrics(text);
  assert.equal(sample(m, 'vhost_console_build_info'), 1);
  assert.equal(sample(m, 'vhost_console_guest_connected', { guest: '0' }), 1);
  assert.equal(sample(m, 'vhost_console_guest_connected', { guest: '1' }), 0);
  assert.equal(sample(m, 'vhost_console_guests_connected'), 1);
  assert.equal(sample(m, 'vhost_console_bytes_total', { guest: '0', port: 'console', dir: 'tx' }), 10);
  assert.equal(sample(m, 'vhost_console_bytes_total', { guest: '0', port: 'console', dir: 'rx' }), 3);
  assert.equal(sample(m, 'vhost_console_client_bytes_total', { guest: '0', port: 'console' }), 4);
  assert.equal(
    sample(m, 'vhost_console_dropped_bytes_total', { guest: '0', port: 'console', reason: 'scrollback' }),
    6,
  );
  assert.equal(sample(m, 'vhost_console_client_connected', { guest: '0', port: 'console' }), 1);
  assert.equal(sample(m, 'vhost_console_client_connected', { guest: '0', port: 'org.test.0' }), 0);
  assert.equal(sample(m, 'vhost_console_port_open', { guest: '0', port: 'console' }), 1);
  // The console page has no changes to make: POSTs find nothing.
  const post = await req(`${web.url}/api/guests`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: '{}',
  });
  assert.equal(post.status, 405);
});

test('--http on the commands: address checks, token file, the URL in the start line, metrics', async (t) => {
  const dir = mkdtempSync(`${tmpdir()}/vhu-chttp-`);
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const can = cli('vhost-device-can.ts');
  const con = cli('vhost-device-console.ts');
  for (const [c, extra] of [
    [can, []],
    [con, ['--backend', 'unix', '--uds-path', join(dir, 'u')]],
  ] as const) {
    const bad = (args: string[], pattern: RegExp, status = 2): void => {
      const r = c.runSync(['-s', join(dir, 'x.sock'), ...extra, ...args]);
      assert.equal(r.status, status, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, pattern);
    };
    bad(['--http', '0.0.0.0:8080'], /needs --http-token-file/);
    bad(['--http', 'localhost:99999'], /PORT 0\.\.65535/);
    bad(['--http', '::1:80'], /IPv6 address in brackets/);
    bad(['--http-token-file', '/x'], /--http-token-file needs --http/);
    bad(['--http', '0.0.0.0:0', '--http-token-file', join(dir, 'missing')], /ENOENT/, 1);
    writeFileSync(join(dir, 'short'), 'abc\n');
    bad(['--http', '127.0.0.1:0', '--http-token-file', join(dir, 'short')], /at least 16 characters/, 1);
    assert.match(c.runSync(['--help']).stdout, /--http \[ADDR:\]PORT/);
  }

  const tokenFile = join(dir, 'token');
  writeFileSync(tokenFile, 'secret-token-0123456789\n');
  chmodSync(tokenFile, 0o600);
  const p = can.start(['-s', join(dir, 'can.sock'), '--http', '127.0.0.1:0', '--http-token-file', tokenFile]);
  t.after(() => p.child.kill('SIGKILL'));
  await waitCli(() => /http=http:\/\/127\.0\.0\.1:\d+\//.test(p.output()));
  const url = /http=(http:\/\/127\.0\.0\.1:\d+)\//.exec(p.output())![1]!;
  assert.equal((await req(`${url}/metrics`)).status, 401);
  const r = await req(`${url}/metrics`, { headers: { Authorization: 'Bearer secret-token-0123456789' } });
  assert.equal(r.status, 200);
  assert.deepEqual(lintExposition(r.text), []);
  const m = parseMetrics(r.text);
  assert.ok(m.has('vhost_can_build_info'));
  assert.ok(m.has('process_resident_memory_bytes'));
  assert.equal(sample(m, 'vhost_can_guest_connected', { guest: '0', bus: 'default' }), 0);
  p.child.kill('SIGTERM');
  assert.equal(await exited(p.child), 0);
});
