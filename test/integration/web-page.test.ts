/**
 * The monitor page in a real headless browser (Debian's chromium driven by playwright-core) against
 * an in-process daemon with front-end guests: a guest's frame shows up within a second, decoded as
 * CANopen when toggled; a frame sent from the page reaches a guest; the bus-off button drives a
 * guest's controller to bus-off and the page shows it. Screenshots are kept in
 * .test-artifacts/web/. Without chromium the tests skip (fail under CI=true).
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { type Browser, chromium, type Page } from 'playwright-core';
import { CanStatus } from '../../src/core/devices/can/constants.js';
import { nullLogger } from '../../src/core/util/log.js';
import { startConsoleDaemon } from '../../src/node/console/console-daemon.js';
import { ConsoleTestDriver } from '../../src/node/frontend/console-driver.js';
import { VhostUserFrontend } from '../../src/node/frontend/frontend.js';
import { GuestRam } from '../../src/node/frontend/guest-ram.js';
import { startConsoleWeb } from '../../src/node/http/console-web.js';
import { startWeb } from '../helpers/http.js';
import { frame, startDriver, startTestDaemon, waitFor } from '../helpers/vhost-user.js';

const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = new URL('../../.test-artifacts/web/', import.meta.url).pathname;
const missing = existsSync(CHROMIUM)
  ? null
  : `${CHROMIUM} is not installed (scripts/deps/host-packages.sh installs it)`;
const skip = missing !== null && !process.env.CI ? missing : false;

async function browser(t: TestContext): Promise<Browser> {
  if (missing !== null) throw new Error(missing); // under CI a missing browser fails the test
  const b = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Chromium refuses to run as root with its sandbox (CI runs as root).
    args: [...(process.getuid?.() === 0 ? ['--no-sandbox'] : []), '--disable-dev-shm-usage', '--disable-gpu'],
  });
  t.after(() => b.close());
  return b;
}

async function openPage(t: TestContext, url: string): Promise<Page> {
  const b = await browser(t);
  const page = await b.newPage({ viewport: { width: 1400, height: 1000 } });
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => {
    // The page's own refused request (a bad frame, answered 400 on purpose) is not a script error.
    if (m.type() === 'error' && !m.text().includes('status of 400')) errors.push(m.text());
  });
  t.after(() => assert.deepEqual(errors, [], 'no script errors on the page'));
  await page.goto(url);
  return page;
}

function screenshot(page: Page, name: string): Promise<Buffer> {
  mkdirSync(ARTIFACTS, { recursive: true });
  return page.screenshot({ path: join(ARTIFACTS, name), fullPage: true });
}

test('the CAN monitor page: live frames, CANopen, sending, bus-off', { skip }, async (t) => {
  const { can, paths } = startTestDaemon(t, {
    sockets: 3,
    buses: [
      { kind: 'virtual', name: 'default' },
      { kind: 'virtual', name: 'default' },
      { kind: 'virtual', name: 'body' },
    ],
  });
  const web = await startWeb(t, can);
  const a = (await startDriver(t, paths[0]!)).drv;
  const b = (await startDriver(t, paths[1]!)).drv;
  assert.equal(await a.startController(), 0);
  assert.equal(await b.startController(), 0);
  const page = await openPage(t, `${web.url}/`);
  await page.waitForSelector('#conn.ok', { timeout: 5000 });
  assert.equal(await page.textContent('#title'), 'vhost-device-can');
  await page.waitForSelector('tr[data-port="guest0"] td.state', { timeout: 3000 });
  assert.equal(await page.textContent('tr[data-port="guest0"] td.state'), 'started');
  assert.equal(await page.textContent('tr[data-port="guest2"] td.state'), 'disconnected');

  // A frame from a guest appears within a second.
  const sentAt = Date.now();
  assert.equal(await b.send(frame(0x701, [0x05])), 0);
  await page.waitForSelector('#frames tr[data-id="701"]', { timeout: 1000 });
  const seenMs = Date.now() - sentAt;
  assert.ok(seenMs < 1000, `shown after ${seenMs} ms`);
  const row = page.locator('#frames tr[data-id="701"]').first();
  assert.equal(await row.locator('td.data').textContent(), '05');
  assert.equal(await row.locator('td.co').isVisible(), false, 'CANopen column hidden until toggled');
  await page.check('#canopen');
  assert.equal(await row.locator('td.co').isVisible(), true);
  assert.equal(await row.locator('td.co').textContent(), 'heartbeat node 1: operational');
  assert.equal(await b.send(frame(0x000, [0x01, 0x00])), 0);
  const nmt = page.locator('#frames tr[data-id="000"] td.co').first();
  await nmt.waitFor({ timeout: 1000 });
  assert.equal(await nmt.textContent(), 'NMT start all nodes');

  // A frame sent from the page reaches the guests on the bus.
  await page.selectOption('#send-bus', 'default');
  await page.fill('#send-frame', '123#CAFE');
  await page.click('#send-button');
  const got = await b.waitFrames(1);
  assert.deepEqual([got[0]!.id, Buffer.from(got[0]!.data).toString('hex')], [0x123, 'cafe']);
  await page.waitForSelector('#send-result:has-text("sent 123#CAFE")', { timeout: 2000 });
  await page.waitForSelector('#frames tr[data-id="123"][data-port="web"]', { timeout: 1000 });
  // A bad frame gets the server's message, nothing is sent.
  await page.fill('#send-frame', '123#XYZ');
  await page.click('#send-button');
  await page.waitForSelector('#send-result.error', { timeout: 2000 });
  assert.match(String(await page.textContent('#send-result')), /not a candump frame/);

  // The chart has data points by now.
  await waitFor('history', () => (web.history.of('default').length >= 1 ? true : undefined), 3000);
  await page.waitForSelector('#chart canvas', { timeout: 3000 });
  await screenshot(page, 'can-monitor.png');

  // The bus-off button drives guest 0's controller to bus-off, and the page shows it.
  await page.click('button[data-fault="bus-off"][data-port="guest0"]');
  await waitFor(
    'bus-off',
    () => (can.device(0)!.configStatus & CanStatus.CTRL_BUSOFF ? true : undefined),
    2000,
  );
  assert.equal((await a.readStatus()) & CanStatus.CTRL_BUSOFF, CanStatus.CTRL_BUSOFF);
  await page.waitForSelector('tr[data-port="guest0"] td.state:text-is("bus-off")', { timeout: 3000 });
  await page.waitForSelector('#fault-list tr[data-fault-id]', { timeout: 3000 });
  await page.waitForSelector('#frames tr.err', { timeout: 2000 });
  await screenshot(page, 'can-monitor-bus-off.png');
  // Clear: the controller stays bus-off until the guest restarts it, as a real one would.
  await page.click('button[data-fault="clear"][data-port="guest0"]');
  await page.waitForSelector('#fault-none:not([hidden])', { timeout: 3000 });
  assert.equal(can.device(0)!.port.busState, 'bus-off');
  assert.equal(await a.startController(), 0);
  assert.equal(can.device(0)!.port.busState, 'error-active');
  await page.waitForSelector('tr[data-port="guest0"] td.state:text-is("started")', { timeout: 3000 });
  // The drop button: a fault of the bus's own model, listed on the page.
  await page.click('button[data-fault="drop"][data-port="guest0"]');
  await page.waitForSelector('#fault-list tr[data-fault-id]', { timeout: 3000 });
  assert.deepEqual(
    can.hubs
      .get('default')
      .faults()
      .map((f) => [f.port, f.fault]),
    [['guest0', { kind: 'drop', ratio: 0.5 }]],
  );
});

test('the console status page: guests and ports, connected or not, bytes each way', { skip }, async (t) => {
  const dir = mkdtempSync(`${tmpdir()}/vhu-web-`);
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const con = await startConsoleDaemon({
    paths: [join(dir, 'con.sock0'), join(dir, 'con.sock1')],
    backend: { kind: 'unix', path: join(dir, 'client') },
    portNames: ['org.test.0'],
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
  // Guest 0 connects and prints on its console; guest 1 stays away.
  const fe = VhostUserFrontend.connect(join(dir, 'con.sock0'), { timeoutMs: 3000 });
  const ram = new GuestRam();
  t.after(() => {
    fe.close();
    ram.close();
  });
  const drv = await ConsoleTestDriver.create(fe, ram, { ports: 2, timeoutMs: 3000 });
  t.after(() => drv.shutdown());
  await drv.waitConsole();
  await drv.write(0, new TextEncoder().encode('hello web\n'));
  await waitFor('output counted', () => (con.endpoints[0]![0]!.stats.outputBytes === 10 ? true : undefined));
  const page = await openPage(t, `${web.url}/`);
  await page.waitForSelector('#conn.ok', { timeout: 5000 });
  assert.equal(await page.textContent('#title'), 'vhost-device-console');
  await page.waitForSelector('div.guest[data-guest="0"] .state-connected', { timeout: 3000 });
  assert.equal(await page.textContent('div.guest[data-guest="0"] tbody tr >> nth=0 >> td >> nth=4'), '10');
  await page.waitForSelector('div.guest[data-guest="1"] .state-disconnected', { timeout: 3000 });
  assert.equal(await page.locator('div.guest').count(), 2);
  assert.equal(
    await page.locator('div.guest[data-guest="0"] tbody tr').count(),
    2,
    'console and the named port',
  );
  assert.match(String(await page.textContent('div.guest[data-guest="0"] tbody tr >> nth=1')), /org\.test\.0/);
  await screenshot(page, 'console-monitor.png');
});
