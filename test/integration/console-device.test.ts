/**
 * The VIRTIO console device behind the real vhost-user daemon (Unix sockets, memfd guest RAM,
 * eventfds), driven by the TypeScript front-end playing QEMU's vhost-user sequence and the Linux
 * virtio_console driver (ConsoleTestDriver).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  ConsoleDevice,
  type ConsoleDeviceOptions,
  MAX_PORT_NAME_BYTES,
} from '../../src/core/devices/console/console-device.js';
import { CONSOLE_BAD_ID, ConsoleEvent, ConsoleFeature } from '../../src/core/devices/console/constants.js';
import { nullLogger } from '../../src/core/util/log.js';
import { featureBit, VirtioFeature } from '../../src/core/virtio/features.js';
import { type ConsoleDriverOptions, ConsoleTestDriver } from '../../src/node/frontend/console-driver.js';
import { VhostUserFrontend } from '../../src/node/frontend/frontend.js';
import { GuestRam } from '../../src/node/frontend/guest-ram.js';
import { native } from '../../src/node/native/addon.js';
import { VhostUserDaemon } from '../../src/node/vhost-user/daemon.js';
import { waitFor } from '../helpers/vhost-user.js';

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);

/** What the host side of one device saw. */
class Recorder {
  readonly out = new Map<number, number[]>();
  readonly opens: [number, boolean][] = [];
  readonly spaces: number[] = [];
  onSpace: ((port: number) => void) | null = null;
  output(port: number, bytes: Uint8Array): void {
    let a = this.out.get(port);
    if (a === undefined) {
      a = [];
      this.out.set(port, a);
    }
    for (const b of bytes) a.push(b);
  }
  bytes(port: number): Uint8Array {
    return Uint8Array.from(this.out.get(port) ?? []);
  }
}

interface Served {
  dev: ConsoleDevice;
  rec: Recorder;
}

interface TestConsoleDaemon {
  daemon: VhostUserDaemon;
  paths: string[];
  /** Devices created so far, per socket (one per connection). */
  served: Served[][];
  current(index?: number): Served;
}

function startConsoleDaemon(
  t: TestContext,
  opts: { sockets?: number; device?: Partial<ConsoleDeviceOptions>; hostConnected?: number[] } = {},
): TestConsoleDaemon {
  const dir = mkdtempSync(`${tmpdir()}/vhc-`);
  const paths = Array.from({ length: opts.sockets ?? 1 }, (_, i) => join(dir, `con.sock${i}`));
  const served: Served[][] = paths.map(() => []);
  const daemon = new VhostUserDaemon({
    native,
    paths,
    log: nullLogger,
    makeDevice: (index, log) => {
      const rec = new Recorder();
      const dev: ConsoleDevice = new ConsoleDevice({
        portNames: ['org.test.one', 'org.test.two'],
        ...opts.device,
        handler: {
          output: (p, b) => rec.output(p, b),
          guestOpen: (p, o) => rec.opens.push([p, o]),
          inputSpace: (p) => {
            rec.spaces.push(p);
            rec.onSpace?.(p);
          },
        },
        log,
      });
      for (const p of opts.hostConnected ?? []) dev.setHostConnected(p, true);
      served[index]!.push({ dev, rec });
      return dev;
    },
  });
  daemon.start();
  t.after(() => {
    daemon.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  return {
    daemon,
    paths,
    served,
    current: (i = 0) => {
      const s = served[i]!.at(-1);
      assert.ok(s, `a device on socket ${i}`);
      return s;
    },
  };
}

async function guest(
  t: TestContext,
  path: string,
  opts: ConsoleDriverOptions = {},
): Promise<{ fe: VhostUserFrontend; ram: GuestRam; drv: ConsoleTestDriver }> {
  const fe = VhostUserFrontend.connect(path, { timeoutMs: 3000 });
  const ram = new GuestRam();
  t.after(() => {
    fe.close();
    ram.close();
  });
  const drv = await ConsoleTestDriver.create(fe, ram, { ports: 3, timeoutMs: 3000, ...opts });
  t.after(() => drv.shutdown());
  return { fe, ram, drv };
}

test('Linux handshake: DEVICE_READY, PORT_ADD per port, console port with size, names, opens', async (t) => {
  const d = startConsoleDaemon(t, { device: { cols: 132, rows: 43 }, hostConnected: [1] });
  const { fe, drv } = await guest(t, d.paths[0]!);
  const offered = fe.negotiated!.features;
  for (const b of [
    VirtioFeature.VERSION_1,
    ConsoleFeature.SIZE,
    ConsoleFeature.MULTIPORT,
    ConsoleFeature.EMERG_WRITE,
  ]) {
    assert.ok(offered & featureBit(b), `feature ${b} offered`);
  }
  assert.equal(
    drv.features & featureBit(ConsoleFeature.EMERG_WRITE),
    0n,
    'Linux does not accept EMERG_WRITE',
  );
  assert.equal(drv.maxNrPorts, 3);
  assert.equal(drv.queues.length, 8);
  const con = await drv.waitConsole();
  assert.equal(con, 0);
  await drv.waitUntil('names', () => drv.portName(1) !== undefined && drv.portName(2) !== undefined);
  const { dev, rec } = d.current();
  await waitFor('guest open of port 0', () => (dev.isGuestOpen(0) ? true : undefined));
  assert.deepEqual(drv.portIds().sort(), [0, 1, 2]);
  assert.equal(drv.portName(1), 'org.test.one');
  assert.equal(drv.portName(2), 'org.test.two');
  assert.equal(drv.portName(0), undefined);
  assert.deepEqual(drv.size, { cols: 132, rows: 43 });
  assert.equal(drv.hostConnected(1), true, 'PORT_OPEN for a port whose host side was connected');
  assert.equal(drv.hostConnected(2), false);
  // The exact control stream the device sent: PORT_ADD x3, then per PORT_READY its answers.
  const adds = drv.controlEvents(ConsoleEvent.PORT_ADD);
  assert.deepEqual(
    adds.map((m) => [m.id, m.value, m.usedLen]),
    [
      [0, 1, 8],
      [1, 1, 8],
      [2, 1, 8],
    ],
  );
  const forPort0 = drv.controlIn.filter((m) => m.id === 0 && m.event !== ConsoleEvent.PORT_ADD);
  assert.deepEqual(
    forPort0.map((m) => [m.event, m.usedLen]),
    [
      [ConsoleEvent.CONSOLE_PORT, 8],
      [ConsoleEvent.RESIZE, 12],
    ],
  );
  const names = drv.controlEvents(ConsoleEvent.PORT_NAME);
  assert.deepEqual(
    names.map((m) => [m.id, m.usedLen]),
    [
      [1, 8 + 12],
      [2, 8 + 12],
    ],
  );
  for (const m of drv.controlIn) assert.equal(m.overrun, false);
  // What the driver sent, each returned with used length 0.
  assert.deepEqual(drv.controlOut[0]!.id, CONSOLE_BAD_ID);
  assert.deepEqual(drv.controlOut[0]!.event, ConsoleEvent.DEVICE_READY);
  for (const m of drv.controlOut) assert.equal(m.usedLen, 0);
  assert.deepEqual(rec.opens, [[0, true]]);
  assert.equal(dev.stats.controlIgnored, 0);
  assert.equal(dev.stats.controlDropped, 0);
  assert.equal(dev.stats.badChains, 0);
  assert.equal(drv.stats.controlDropped, 0);
});

/** Feeds `data` into port `port` of `dev` with flow control (resumes on inputSpace). */
function feed(dev: ConsoleDevice, rec: Recorder, port: number, data: Uint8Array): void {
  let off = 0;
  const push = (): void => {
    while (off < data.byteLength) {
      const n = dev.input(port, data.subarray(off, Math.min(data.byteLength, off + 8192)));
      off += n;
      if (n === 0) return;
    }
  };
  rec.onSpace = (p) => {
    if (p === port) push();
  };
  push();
}

const pattern = (n: number, seed: number) =>
  Uint8Array.from({ length: n }, (_, i) => (i * seed + (i >> 9)) & 0xff);

test('console data both ways, byte-exact; 100 KiB each way with flow control', async (t) => {
  const d = startConsoleDaemon(t, { device: { inputLimit: 16 * 1024 } });
  // Four page-sized receive buffers: 100 KiB cannot fit in guest buffers plus the device's 16 KiB.
  const { drv } = await guest(t, d.paths[0]!, { rxBuffers: 4 });
  await drv.waitConsole();
  const { dev, rec } = d.current();
  await waitFor('guest open', () => (dev.isGuestOpen(0) ? true : undefined));
  assert.deepEqual(await drv.write(0, enc('hello host\n')), [0]);
  assert.equal(dec(rec.bytes(0)), 'hello host\n');
  assert.equal(dev.input(0, enc('hello guest\n')), 12);
  assert.equal(dec(await drv.waitOutput(0, 12)), 'hello guest\n');
  // 100 KiB guest -> host: four buffers (32 KiB chunks), each returned with used length 0.
  const out = pattern(100 * 1024, 7);
  assert.deepEqual(await drv.write(0, out), [0, 0, 0, 0]);
  assert.deepEqual(
    drv.txLog.slice(-4).map((b) => b.len),
    [32768, 32768, 32768, 4096],
  );
  assert.deepEqual(rec.bytes(0).subarray(11), out);
  // 100 KiB host -> guest through a 16 KiB input buffer: the backend is paused and resumed.
  const inp = pattern(100 * 1024, 13);
  const before = drv.rxLog.length;
  feed(dev, rec, 0, inp);
  const got = await drv.waitOutput(0, inp.byteLength);
  assert.equal(got.byteLength, inp.byteLength);
  assert.ok(Buffer.from(got).equals(Buffer.from(inp)), 'byte-exact, no loss or duplicate');
  const bufs = drv.rxLog.slice(before);
  assert.ok(bufs.every((b) => b.usedLen > 0 && b.usedLen <= 4096 && !b.overrun && !b.discarded));
  assert.equal(
    bufs.reduce((a, b) => a + b.usedLen, 0),
    inp.byteLength,
    'used lengths add up to exactly the bytes sent',
  );
  assert.ok(rec.spaces.length > 0, 'the input buffer filled and was resumed');
  assert.equal(dev.stats.ports[0]!.rxBytes, 12 + inp.byteLength);
  assert.equal(dev.stats.ports[0]!.txBytes, 11 + out.byteLength);
  assert.equal(dev.stats.badChains, 0);
});

test('generic named port: open, data both ways, host connect/disconnect, close discards nothing sent', async (t) => {
  const d = startConsoleDaemon(t);
  const { drv } = await guest(t, d.paths[0]!);
  await drv.waitUntil('port names', () => drv.portName(2) === 'org.test.two');
  const { dev, rec } = d.current();
  await assert.rejects(drv.write(2, enc('x')), { code: 'ERR_FRONTEND_STATE' }, 'not open');
  await drv.openPort(2);
  await waitFor('guest open of port 2', () => (dev.isGuestOpen(2) ? true : undefined));
  assert.deepEqual(rec.opens.at(-1), [2, true]);
  // A blocking write waits for the host side (Linux's will_write_block).
  const w = drv.write(2, enc('to the host'));
  await sleep(30);
  assert.equal(rec.bytes(2).byteLength, 0, 'no write while the host side is closed');
  dev.setHostConnected(2, true);
  await w;
  assert.equal(dec(rec.bytes(2)), 'to the host');
  assert.equal(drv.hostConnected(2), true);
  dev.input(2, enc('to the guest'));
  assert.equal(dec(await drv.waitOutput(2, 12)), 'to the guest');
  dev.setHostConnected(2, false);
  await drv.waitUntil('host closed', () => !drv.hostConnected(2));
  await drv.closePort(2);
  await waitFor('guest close of port 2', () => (dev.isGuestOpen(2) ? undefined : true));
  // Input while the guest has the port closed waits in the device, nothing reaches the guest.
  dev.input(2, enc('later'));
  await sleep(20);
  assert.equal(dev.pendingInput(2), 5);
  assert.equal(drv.port(2)!.discarded, 0);
  await drv.openPort(2);
  assert.equal(dec(await drv.waitOutput(2, 5)), 'later');
  assert.equal(drv.stats.controlDropped, 0);
});

test('resize: RESIZE for the console port (cols, rows), legacy order for old guests', async (t) => {
  const d = startConsoleDaemon(t, { sockets: 2, device: { cols: 80, rows: 24 } });
  const { drv } = await guest(t, d.paths[0]!);
  await drv.waitConsole();
  assert.deepEqual(drv.size, { cols: 80, rows: 24 });
  d.current(0).dev.resize(211, 57);
  await drv.waitUntil('resize', () => drv.size?.cols === 211);
  assert.deepEqual(drv.size, { cols: 211, rows: 57 });
  const r = drv.controlEvents(ConsoleEvent.RESIZE).at(-1)!;
  assert.equal(r.usedLen, 12);
  assert.deepEqual([...r.payload], [211, 0, 57, 0]);
  // Linux before 6.15 reads rows first: the device's legacyResizeOrder makes it come out right.
  const l = startConsoleDaemon(t, { device: { cols: 100, rows: 30, legacyResizeOrder: true } });
  const { drv: old } = await guest(t, l.paths[0]!, { legacyResizeOrder: true });
  await old.waitConsole();
  assert.deepEqual(old.size, { cols: 100, rows: 30 });
  l.current(0).dev.resize(90, 20);
  await old.waitUntil('legacy resize', () => old.size?.cols === 90);
  assert.deepEqual(old.size, { cols: 90, rows: 20 });
});

test('legacy single-port mode (no MULTIPORT): port 0 at once, size via config change, emergency write', async (t) => {
  const d = startConsoleDaemon(t, { device: { portNames: [], cols: 80, rows: 25 } });
  const { fe, drv } = await guest(t, d.paths[0]!, { multiport: false, emergWrite: true, ports: 1 });
  assert.equal(drv.multiport, false);
  assert.equal(drv.queues.length, 2);
  const { dev, rec } = d.current();
  await waitFor('port 0 open', () => (dev.isGuestOpen(0) ? true : undefined));
  await drv.write(0, enc('legacy'));
  assert.equal(dec(rec.bytes(0)), 'legacy');
  dev.input(0, enc('in'));
  assert.equal(dec(await drv.waitOutput(0, 2)), 'in');
  dev.resize(132, 50);
  await drv.waitUntil('config size', () => drv.configSizes.length === 1);
  assert.deepEqual(drv.size, { cols: 132, rows: 50 });
  assert.equal(fe.configChangeCount, 1);
  assert.equal(drv.controlIn.length, 0, 'no control traffic');
  assert.equal(await drv.emergWrite(0x21), 0);
  assert.equal(dec(rec.bytes(0)), 'legacy!');
  assert.equal(dev.stats.emergBytes, 1);
});

test('malformed control messages are counted, answered with used length 0, and the device keeps serving', async (t) => {
  const d = startConsoleDaemon(t);
  const { drv } = await guest(t, d.paths[0]!);
  await drv.waitConsole();
  const { dev, rec } = d.current();
  const before = dev.stats.controlIgnored;
  const sends: [string, Uint8Array][] = [
    ['short', Uint8Array.of(1, 0, 0, 0, 6, 0)],
    ['unknown event', ctl(0, 42, 1)],
    ['bad id', ctl(7, ConsoleEvent.PORT_OPEN, 1)],
    ['huge id', ctl(0xfffffff0, ConsoleEvent.PORT_READY, 1)],
    ['guest PORT_NAME, oversized', ctl(1, ConsoleEvent.PORT_NAME, 1, new Uint8Array(4000).fill(0x41))],
    ['guest PORT_ADD', ctl(2, ConsoleEvent.PORT_ADD, 1)],
    ['guest RESIZE', ctl(0, ConsoleEvent.RESIZE, 0, Uint8Array.of(1, 0, 1, 0))],
    ['guest CONSOLE_PORT', ctl(1, ConsoleEvent.CONSOLE_PORT, 1)],
  ];
  for (const [what, m] of sends) assert.equal(await drv.sendControlRaw(m), 0, what);
  assert.equal(dev.stats.controlIgnored - before, sends.length);
  // A chain with no readable bytes (only a writable segment) is short; an unknown event through
  // an indirect table is counted like any other.
  assert.equal(await drv.sendControlRaw(new Uint8Array(0), { writable: 8 }), 0);
  assert.equal(dev.stats.controlIgnored - before, sends.length + 1);
  assert.equal(await drv.sendControlRaw(ctl(0, 99, 0), { indirect: true }), 0);
  assert.equal(dev.stats.controlIgnored - before, sends.length + 2);
  // Nothing was answered, nothing changed, and the device still serves everything.
  assert.equal(dev.isGuestOpen(1), false);
  assert.equal(drv.stats.controlDropped, 0);
  await drv.write(0, enc('still here'));
  assert.equal(dec(rec.bytes(0)), 'still here');
  await drv.openPort(1);
  await waitFor('guest open of port 1', () => (dev.isGuestOpen(1) ? true : undefined));
  dev.input(1, enc('ok'));
  assert.equal(dec(await drv.waitOutput(1, 2)), 'ok');
  assert.equal(d.daemon.status()[0]!.connected, true);
});

function ctl(id: number, event: number, value: number, extra?: Uint8Array): Uint8Array {
  const m = new Uint8Array(8 + (extra?.byteLength ?? 0));
  const dv = new DataView(m.buffer);
  dv.setUint32(0, id, true);
  dv.setUint16(4, event, true);
  dv.setUint16(6, value, true);
  if (extra) m.set(extra, 8);
  return m;
}

test('reconnect: a new front-end gets a new device and the full handshake again', async (t) => {
  const d = startConsoleDaemon(t);
  for (let round = 0; round < 3; round++) {
    const fe = VhostUserFrontend.connect(d.paths[0]!, { timeoutMs: 3000 });
    const ram = new GuestRam();
    try {
      const drv = await ConsoleTestDriver.create(fe, ram, { ports: 3, timeoutMs: 3000 });
      await drv.waitConsole();
      await drv.waitUntil('names', () => drv.portName(2) !== undefined);
      assert.equal(d.served[0]!.length, round + 1, 'one device per connection');
      const { dev, rec } = d.current();
      await drv.write(0, enc(`round ${round}`));
      assert.equal(dec(rec.bytes(0)), `round ${round}`);
      dev.input(0, enc(`back ${round}`));
      assert.equal(dec(await drv.waitOutput(0, 6)), `back ${round}`);
      assert.equal(drv.controlEvents(ConsoleEvent.PORT_ADD).length, 3);
      await drv.shutdown();
    } finally {
      fe.close();
      ram.close();
    }
    await waitFor('socket free', () => (d.daemon.status()[0]!.connected ? undefined : true));
  }
  assert.equal(d.daemon.status()[0]!.connections, 3);
});

test('two guests on two sockets are independent', async (t) => {
  const d = startConsoleDaemon(t, { sockets: 2 });
  const a = await guest(t, d.paths[0]!);
  const b = await guest(t, d.paths[1]!);
  await Promise.all([a.drv.waitConsole(), b.drv.waitConsole()]);
  await Promise.all([a.drv.write(0, enc('from a')), b.drv.write(0, enc('from b'))]);
  assert.equal(dec(d.current(0).rec.bytes(0)), 'from a');
  assert.equal(dec(d.current(1).rec.bytes(0)), 'from b');
  d.current(0).dev.input(0, enc('to a'));
  d.current(1).dev.input(0, enc('to b'));
  assert.equal(dec(await a.drv.waitOutput(0, 4)), 'to a');
  assert.equal(dec(await b.drv.waitOutput(0, 4)), 'to b');
  // One guest closing does not disturb the other.
  a.fe.close();
  await waitFor('socket 0 free', () => (d.daemon.status()[0]!.connected ? undefined : true));
  await b.drv.write(0, enc(' again'));
  assert.equal(dec(d.current(1).rec.bytes(0)), 'from b again');
});

test('the longest port name (255 bytes of UTF-8) arrives whole: used length 8 + 255', async (t) => {
  const name = `${'ä'.repeat(127)}x`; // 127 * 2 + 1 bytes
  assert.equal(enc(name).byteLength, MAX_PORT_NAME_BYTES);
  const d = startConsoleDaemon(t, { device: { portNames: [name] } });
  const { drv } = await guest(t, d.paths[0]!, { ports: 2 });
  await drv.waitUntil('the name', () => drv.portName(1) !== undefined);
  assert.equal(drv.portName(1), name);
  assert.equal(drv.controlEvents(ConsoleEvent.PORT_NAME)[0]!.usedLen, 8 + MAX_PORT_NAME_BYTES);
});

test('receive buffers are used only when there is input, one used entry per buffer; held buffers stop delivery', async (t) => {
  const d = startConsoleDaemon(t);
  const { drv } = await guest(t, d.paths[0]!, { holdRx: true, rxBuffers: 2 });
  await drv.waitConsole();
  const { dev, rec } = d.current();
  await waitFor('guest open', () => (dev.isGuestOpen(0) ? true : undefined));
  await sleep(20);
  assert.equal(drv.rxLog.length, 0, 'no buffer comes back without input');
  const data = pattern(10 * 1024, 3);
  assert.equal(dev.input(0, data), data.byteLength);
  await drv.waitUntil('two buffers', () => drv.rxLog.length === 2);
  assert.deepEqual(
    drv.rxLog.map((b) => b.usedLen),
    [4096, 4096],
  );
  assert.equal(dev.pendingInput(0), 2048, 'the rest waits in the device');
  assert.equal(drv.postedRx(0), 0);
  assert.equal(drv.repostRx(0), 2);
  const got = await drv.waitOutput(0, data.byteLength);
  assert.ok(Buffer.from(got).equals(Buffer.from(data)));
  assert.deepEqual(
    drv.rxLog.map((b) => b.usedLen),
    [4096, 4096, 2048],
  );
  assert.deepEqual(rec.spaces, [], 'nothing was refused');
});

test('a TX chain the device cannot walk comes back with used length 0, counted; the port keeps working', async (t) => {
  const d = startConsoleDaemon(t);
  const { drv } = await guest(t, d.paths[0]!);
  await drv.waitConsole();
  const { dev, rec } = d.current();
  const tx = drv.queue(1);
  const head = 0;
  // Descriptor 0 may be in use by nothing (the TX ring is idle): point it outside guest RAM.
  assert.equal(tx.ring.inFlight, 0);
  tx.ring.writeDesc(head, { addr: 0x4000_0000, len: 64, flags: 0, next: 0 });
  tx.ring.claimRaw(head);
  tx.ring.pushAvailRaw(head);
  const done = tx.waitFor(head);
  tx.kick();
  assert.equal(await done, 0);
  assert.equal(dev.stats.badChains, 1);
  await drv.write(0, enc('fine'));
  assert.equal(dec(rec.bytes(0)), 'fine');
  assert.equal(d.daemon.status()[0]!.connected, true);
});
