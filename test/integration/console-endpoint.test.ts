// The host side of a console port over real Unix-socket clients: scrollback replay, one client at
// a time, flow-controlled input, device rebinding, log file. The device is a stand-in recording
// what it is given (the endpoint's logic is what is under test here).
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createConnection, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ConsoleDevice } from '../../src/core/devices/console/console-device.js';
import { nullLogger } from '../../src/core/util/log.js';
import { PortListener } from '../../src/node/console/listeners.js';
import { ConsolePortEndpoint } from '../../src/node/console/port-endpoint.js';

const dir = mkdtempSync(join(tmpdir(), 'con-ep-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;

class FakeDevice {
  received: number[] = [];
  room: number;
  connected: boolean[] = [];
  constructor(room: number) {
    this.room = room;
  }
  input(_port: number, bytes: Uint8Array): number {
    const k = Math.min(this.room, bytes.byteLength);
    this.received.push(...bytes.subarray(0, k));
    this.room -= k;
    return k;
  }
  setHostConnected(_port: number, c: boolean): void {
    this.connected.push(c);
  }
  /** outputSpace() calls (the endpoint resuming the guest's output). */
  spaces = 0;
  outputSpace(_port: number): void {
    this.spaces++;
  }
}
const asDevice = (f: FakeDevice) => f as unknown as ConsoleDevice;

async function listen(ep: ConsolePortEndpoint): Promise<{ path: string; stop: () => void }> {
  const path = join(dir, `ep${n++}`);
  const l = new PortListener(ep, { kind: 'unix', path }, nullLogger);
  await l.start();
  return { path, stop: () => l.stop() };
}

function client(path: string): Promise<{ s: Socket; data: () => Buffer; closed: Promise<void> }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const s = createConnection(path);
    const closed = new Promise<void>((r) => s.once('close', () => r()));
    s.on('data', (c) => chunks.push(c));
    s.once('connect', () => resolve({ s, data: () => Buffer.concat(chunks), closed }));
    s.once('error', reject);
  });
}

async function until(what: string, cond: () => boolean, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out: ${what}`);
    await sleep(2);
  }
}

test('output with no client goes to the scrollback, replayed in order to the next client; overflow counted', async (t) => {
  const ep = new ConsolePortEndpoint({ label: 'g0 console', port: 0, scrollback: 16, log: nullLogger });
  const l = await listen(ep);
  t.after(() => {
    l.stop();
    ep.close();
  });
  ep.output(Buffer.from('0123456789'));
  ep.output(Buffer.from('abcdefghij')); // 20 bytes into 16: the 4 oldest fall out
  assert.equal(ep.stats.scrollbackDropped, 4);
  assert.equal(ep.scrollbackBytes, 16);
  const c = await client(l.path);
  await until('replay', () => c.data().length === 16);
  assert.equal(c.data().toString(), '456789abcdefghij');
  ep.output(Buffer.from('LIVE'));
  await until('live', () => c.data().length === 20);
  assert.equal(c.data().toString().slice(16), 'LIVE');
  assert.equal(ep.scrollbackBytes, 0);
  // An output larger than the whole scrollback keeps its newest bytes.
  c.s.destroy();
  await until('detached', () => !ep.hasClient);
  ep.output(Buffer.from(`${'x'.repeat(40)}TAIL`));
  assert.equal(ep.scrollbackBytes, 16);
  const c2 = await client(l.path);
  await until('replay 2', () => c2.data().length === 16);
  assert.ok(c2.data().toString().endsWith('TAIL'));
  c2.s.destroy();
});

test('one client at a time: a second one gets a reason and is closed; the first keeps working', async (t) => {
  const ep = new ConsolePortEndpoint({ label: 'g0 console', port: 0, scrollback: 64, log: nullLogger });
  const dev = new FakeDevice(1000);
  ep.bind(asDevice(dev));
  const l = await listen(ep);
  t.after(() => {
    l.stop();
    ep.close();
  });
  const a = await client(l.path);
  await until('host connected', () => dev.connected.at(-1) === true);
  const b = await client(l.path);
  await b.closed;
  assert.match(b.data().toString(), /already has a client/);
  assert.equal(ep.stats.refusedClients, 1);
  a.s.write('hi');
  await until('input', () => dev.received.length === 2);
  assert.equal(Buffer.from(dev.received).toString(), 'hi');
  a.s.destroy();
  await until('host disconnected', () => dev.connected.at(-1) === false);
});

test('input is flow-controlled: what the device cannot take waits, in order, and the client is paused', async (t) => {
  const ep = new ConsolePortEndpoint({ label: 'g0 console', port: 0, scrollback: 64, log: nullLogger });
  const dev = new FakeDevice(10);
  ep.bind(asDevice(dev));
  const l = await listen(ep);
  t.after(() => {
    l.stop();
    ep.close();
  });
  const c = await client(l.path);
  const sent = Buffer.from(Array.from({ length: 3000 }, (_, i) => 65 + (i % 26)));
  c.s.write(sent);
  await until('first 10', () => dev.received.length === 10);
  await sleep(20);
  assert.equal(dev.received.length, 10, 'nothing is taken beyond the room');
  // Room appears in steps; everything arrives exactly once, in order.
  while (dev.received.length < sent.length) {
    dev.room = 700;
    ep.inputSpace();
    await sleep(5);
  }
  assert.deepEqual(Buffer.from(dev.received), sent);
  assert.equal(ep.stats.clientBytesIn, sent.length);
  c.s.destroy();
});

test('a new device (guest reboot, QEMU restart) takes over the client and the pending input', async (t) => {
  const ep = new ConsolePortEndpoint({ label: 'g0 console', port: 0, scrollback: 64, log: nullLogger });
  const l = await listen(ep);
  t.after(() => {
    l.stop();
    ep.close();
  });
  const c = await client(l.path);
  await until('attached', () => ep.hasClient);
  c.s.write('typed before any guest');
  await sleep(30);
  const dev = new FakeDevice(1000);
  ep.bind(asDevice(dev));
  assert.deepEqual(dev.connected, [true], 'the new device learns a client is connected');
  assert.equal(Buffer.from(dev.received).toString(), 'typed before any guest');
  ep.unbind(asDevice(dev));
  c.s.write('!');
  await sleep(20);
  assert.equal(dev.received.length, 22, 'an unbound device gets nothing more');
  const dev2 = new FakeDevice(1000);
  ep.bind(asDevice(dev2));
  assert.equal(Buffer.from(dev2.received).toString(), '!');
  c.s.destroy();
});

/** Prints pattern bytes while the endpoint lets it (canOutput), at most `max`; returns the bytes. */
function printWhileAllowed(ep: ConsolePortEndpoint, from: number, max: number): Buffer {
  const out: Buffer[] = [];
  let n = 0;
  while (n < max && ep.canOutput()) {
    const b = Buffer.from(Array.from({ length: 16 * 1024 }, (_, i) => (from + n + i) % 251));
    ep.output(b);
    out.push(b);
    n += b.length;
  }
  return Buffer.concat(out);
}

test('a client that reads slowly holds the guest back (output paused), then gets every byte', async (t) => {
  const ep = new ConsolePortEndpoint({
    label: 'g0 console',
    port: 0,
    scrollback: 64,
    pauseAt: 64 * 1024,
    sendLimit: 256 * 1024,
    stallMs: 5000,
    log: nullLogger,
  });
  const dev = new FakeDevice(0);
  ep.bind(asDevice(dev));
  const l = await listen(ep);
  t.after(() => {
    l.stop();
    ep.close();
  });
  const c = await client(l.path);
  await until('attached', () => ep.hasClient);
  c.s.pause(); // not reading: the socket buffers fill, then the endpoint's send queue
  const sent = printWhileAllowed(ep, 0, 64 * 1024 * 1024);
  assert.equal(ep.canOutput(), false, 'output paused before 64 MiB');
  assert.equal(ep.stats.outputPauses, 1);
  assert.equal(ep.stats.clientDropped, 0);
  await sleep(50);
  assert.equal(dev.spaces, 0, 'still paused while the client reads nothing (within stallMs)');
  c.s.resume();
  await until('resumed', () => dev.spaces === 1);
  assert.equal(ep.canOutput(), true);
  await until('all bytes', () => c.data().length === sent.length, 5000);
  assert.ok(c.data().equals(sent), 'every byte, in order');
  assert.equal(ep.stats.clientDropped, 0);
  assert.equal(ep.stats.stalledClients, 0);
  c.s.destroy();
});

test('a client that reads nothing for stallMs no longer holds the guest; the excess is dropped and counted', async (t) => {
  const ep = new ConsolePortEndpoint({
    label: 'g0 console',
    port: 0,
    scrollback: 64,
    pauseAt: 64 * 1024,
    sendLimit: 256 * 1024,
    stallMs: 150,
    log: nullLogger,
  });
  const dev = new FakeDevice(0);
  ep.bind(asDevice(dev));
  const l = await listen(ep);
  t.after(() => {
    l.stop();
    ep.close();
  });
  const c = await client(l.path);
  await until('attached', () => ep.hasClient);
  c.s.pause();
  printWhileAllowed(ep, 0, 64 * 1024 * 1024);
  assert.equal(ep.canOutput(), false);
  await until('given up on the client', () => dev.spaces === 1, 3000);
  assert.equal(ep.stats.stalledClients, 1);
  assert.equal(ep.canOutput(), true, 'the guest prints on');
  ep.output(Buffer.alloc(512 * 1024, 1));
  assert.ok(ep.stats.clientDropped > 0, 'beyond the send queue bound output is dropped and counted');
  // The client leaves: output goes to the scrollback, nothing is held.
  c.s.destroy();
  await until('detached', () => !ep.hasClient);
  assert.equal(ep.canOutput(), true);
});

test('--log-file gets every byte the guest printed, client or not', async (t) => {
  const file = join(dir, 'guest.log');
  const ep = new ConsolePortEndpoint({
    label: 'g0 console',
    port: 0,
    scrollback: 4,
    logFile: file,
    log: nullLogger,
  });
  t.after(() => ep.close());
  ep.output(Buffer.from('boot line 1\n'));
  ep.output(Buffer.from('login: '));
  await until('written', () => {
    try {
      return readFileSync(file, 'utf8') === 'boot line 1\nlogin: ';
    } catch {
      return false;
    }
  });
  assert.equal(ep.stats.logBytes, 19);
  assert.equal(ep.stats.scrollbackDropped, 15);
});

test('a client that left a moment ago does not get the next one refused; newcomers are served in order', async (t) => {
  const ep = new ConsolePortEndpoint({ label: 'g0 console', port: 0, scrollback: 64, log: nullLogger });
  const l = await listen(ep);
  t.after(() => {
    l.stop();
    ep.close();
  });
  for (let round = 0; round < 20; round++) {
    const gone = await client(l.path);
    gone.s.destroy(); // its close may not be read before the next two connect
    const a = await client(l.path);
    const b = await client(l.path);
    await b.closed;
    assert.match(b.data().toString(), /already has a client/, `round ${round}: the later one is refused`);
    assert.equal(a.s.destroyed, false, `round ${round}: the earlier one is served`);
    a.s.destroy();
    await until('detached', () => !ep.hasClient);
  }
});
