/**
 * vhost-device-can on a host vcan interface, in a kernel with SocketCAN. The TypeScript front-end
 * plays the guests; can-utils (candump/cansend) are the other nodes on vcan. Run it with
 *   scripts/guest/host-kernel-run.sh -- node --import tsx --test test/socketcan/vcan-kvaser-daemon.test.ts
 * On a host without AF_CAN every test is skipped with that reason.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { CanFeature } from '../../src/core/devices/can/constants.js';
import { featureBit } from '../../src/core/virtio/features.js';
import type { CanTxFrame } from '../../src/node/frontend/can-driver.js';
import { native } from '../../src/node/native/addon.js';
import { startDriver, startTestDaemon, waitFor } from '../helpers/vhost-user.js';

const HAVE_CAN = native.canSupported();
const SKIP = HAVE_CAN
  ? false
  : 'no AF_CAN in this kernel: run with scripts/guest/host-kernel-run.sh -- node --import tsx --test test/socketcan/vcan-kvaser-daemon.test.ts';

let seq = 0;
function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: 'pipe' });
}

/** A fresh vcan interface, removed after the test. */
function vcan(t: { after(fn: () => void): void }, mtu = 72): string {
  const name = `vct${process.pid % 1000}${seq++}`;
  ip('link', 'add', 'dev', name, 'type', 'vcan');
  ip('link', 'set', name, 'mtu', String(mtu));
  ip('link', 'set', name, 'up');
  t.after(() => {
    try {
      ip('link', 'del', name);
    } catch {
      /* gone already */
    }
  });
  return name;
}

/** candump -L on an interface; lines() returns the frame column of each line. */
function candump(
  t: { after(fn: () => void): void },
  ifname: string,
): { lines(): string[]; child: ChildProcess } {
  const child = spawn('candump', ['-L', ifname], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d) => {
    out += d;
  });
  t.after(() => child.kill('SIGKILL'));
  return {
    child,
    lines: () =>
      out
        .split('\n')
        .filter((l) => l.trim() !== '')
        .map((l) => l.trim().split(/\s+/)[2]!),
  };
}

async function candumpReady(ifname: string): Promise<void> {
  // candump registers its receive filter in /proc/net/can/rcvlist_*; wait until it shows up.
  await waitFor(
    'candump listening',
    () => {
      try {
        const all = execFileSync(
          'sh',
          ['-c', 'cat /proc/net/can/rcvlist_all /proc/net/can/rcvlist_fil 2>/dev/null'],
          {
            encoding: 'utf8',
          },
        );
        return all.includes(ifname) ? true : undefined;
      } catch {
        return undefined;
      }
    },
    5000,
  );
}

const FRAMES: [CanTxFrame, string][] = [
  [{ id: 0x123, data: [0xde, 0xad, 0xbe, 0xef] }, '123#DEADBEEF'],
  [{ id: 0x000, data: [] }, '000#'],
  [{ id: 0x1abcdef0, extended: true, data: [1, 2, 3, 4, 5, 6, 7, 8] }, '1ABCDEF0#0102030405060708'],
  [{ id: 0x7ff, rtr: true, len: 4 }, '7FF#R4'],
  [{ id: 0x456, fd: true, data: new Array(12).fill(0xab) }, `456##4${'AB'.repeat(12)}`],
];

test('guest -> vcan: classic, extended, RTR and FD frames byte-exact; LATE_TX_ACK completes on the echo', {
  skip: SKIP,
}, async (t) => {
  const ifname = vcan(t);
  const dump = candump(t, ifname);
  await candumpReady(ifname);
  const { paths, can } = startTestDaemon(t, {
    sockets: 2,
    buses: [
      { kind: 'host', ifname },
      { kind: 'host', ifname },
    ],
  });
  const a = (await startDriver(t, paths[0]!)).drv;
  const b = (await startDriver(t, paths[1]!)).drv;
  assert.ok(a.features & featureBit(CanFeature.LATE_TX_ACK));
  assert.ok(a.features & featureBit(CanFeature.CAN_FD), 'vcan with MTU 72 carries FD');
  await a.startController();
  await b.startController();
  const results = await a.sendMany(FRAMES.map(([f]) => f));
  assert.deepEqual(results, new Array(FRAMES.length).fill(0));
  const host = can.hostPorts.get(ifname)!;
  assert.equal(host.stats.txConfirmed, FRAMES.length, 'every frame was confirmed by its echo');
  await waitFor('candump lines', () => (dump.lines().length >= FRAMES.length ? true : undefined), 5000);
  // can-utils prints FD flags with FDF set (##4) on this kernel.
  assert.deepEqual(
    dump.lines().map((l) => l.replace(/##[0-9A-F]/, '##4')),
    FRAMES.map(([, s]) => s),
  );
  // The other guest on the same interface got them through the hub; the sender got nothing back.
  const got = await b.waitFrames(FRAMES.length);
  assert.deepEqual(
    got.map((f) => f.id),
    FRAMES.map(([f]) => f.id),
  );
  await sleep(100);
  assert.equal(a.received().length, 0, 'no echo to the sending guest');
  assert.equal(b.received().length, FRAMES.length, 'no duplicate through the host socket');
});

test('vcan -> guests: cansend frames reach every guest byte-exact and in order', {
  skip: SKIP,
}, async (t) => {
  const ifname = vcan(t);
  const { paths } = startTestDaemon(t, {
    sockets: 2,
    buses: [
      { kind: 'host', ifname },
      { kind: 'host', ifname },
    ],
  });
  const a = (await startDriver(t, paths[0]!)).drv;
  const b = (await startDriver(t, paths[1]!)).drv;
  await a.startController();
  await b.startController();
  for (const [, s] of FRAMES) execFileSync('cansend', [ifname, s.replace('##4', '##1')]);
  for (const d of [a, b]) {
    const got = await d.waitFrames(FRAMES.length);
    assert.deepEqual(
      got.map((f) => [f.id, f.extended, f.rtr, f.fd, f.length, [...f.data]]),
      FRAMES.map(([f]) => [
        f.id,
        !!f.extended,
        !!f.rtr,
        !!f.fd,
        f.len ?? f.data?.length ?? 0,
        f.rtr ? [] : [...(f.data ?? [])],
      ]),
    );
  }
});

test('an interface with MTU 16 is classic-only: FD is not offered', { skip: SKIP }, async (t) => {
  const ifname = vcan(t, 16);
  const { paths } = startTestDaemon(t, { buses: [{ kind: 'host', ifname }] });
  const { fe } = await startDriver(t, paths[0]!);
  assert.equal(fe.negotiated!.features & featureBit(CanFeature.CAN_FD), 0n);
  assert.ok(fe.negotiated!.features & featureBit(CanFeature.CAN_CLASSIC));
});

test('start-up checks: missing, not CAN, down', { skip: SKIP }, (t) => {
  assert.throws(() => startTestDaemon(t, { buses: [{ kind: 'host', ifname: 'nosuchcan0' }] }), {
    code: 'ERR_HOST_CAN_MISSING',
  });
  assert.throws(() => startTestDaemon(t, { buses: [{ kind: 'host', ifname: 'lo' }] }), {
    code: 'ERR_HOST_CAN_NOT_CAN',
  });
  const ifname = vcan(t);
  ip('link', 'set', ifname, 'down');
  assert.throws(() => startTestDaemon(t, { buses: [{ kind: 'host', ifname }] }), {
    code: 'ERR_HOST_CAN_DOWN',
  });
});

test('interface taken down: guests see bus-off (status 1 + config change), get NOT_OK, and restart once it is back', {
  skip: SKIP,
}, async (t) => {
  const ifname = vcan(t);
  const { paths, can } = startTestDaemon(t, { buses: [{ kind: 'host', ifname }] });
  const { fe, drv } = await startDriver(t, paths[0]!);
  await drv.startController();
  assert.equal(await drv.send({ id: 1, data: [1] }), 0);
  ip('link', 'set', ifname, 'down');
  const host = can.hostPorts.get(ifname)!;
  assert.equal(await drv.send({ id: 2, data: [2] }), 1, 'no transmission while the interface is down');
  await waitFor('link lost noticed', () => (host.linkState === 'down' ? true : undefined), 3000);
  await waitFor('CONFIG_CHANGE_MSG', () => (fe.configChangeCount >= 1 ? true : undefined), 3000);
  assert.equal(await drv.readStatus(), 1, 'bus-off status bit');
  assert.equal(can.device(0)!.controllerState, 'stopped');
  assert.equal(await drv.send({ id: 3, data: [3] }), 1);
  ip('link', 'set', ifname, 'up');
  await waitFor('reattached', () => (host.linkState === 'up' ? true : undefined), 5000);
  const dump = candump(t, ifname);
  await candumpReady(ifname);
  assert.equal(await drv.startController(), 0, 'the guest restarts the controller (ip link set can0 up)');
  assert.equal(await drv.readStatus(), 0);
  assert.equal(await drv.send({ id: 4, data: [4] }), 0);
  await waitFor('frame on vcan', () => (dump.lines().includes('004#04') ? true : undefined), 3000);
  assert.ok(host.stats.down >= 1);
  assert.equal(host.stats.reattached, 1);
});

test('a flood from vcan is bounded per guest and every drop is counted', { skip: SKIP }, async (t) => {
  const ifname = vcan(t);
  const { paths, can } = startTestDaemon(t, { rxBacklog: 32, buses: [{ kind: 'host', ifname }] });
  const { drv } = await startDriver(t, paths[0]!, { queueSize: 16 });
  await drv.startController();
  // cangen -n 2000 -g 0: 2000 frames as fast as the host can write them.
  execFileSync('cangen', [ifname, '-n', '2000', '-g', '0', '-p', '5', '-I', '100', '-L', '1', '-D', 'i']);
  // The kernel reports its drop counter (SO_RXQ_OVFL) with the next frame it queues: send a marker.
  await sleep(200);
  execFileSync('cansend', [ifname, '7EE#EE']);
  const host = can.hostPorts.get(ifname)!;
  const dev = can.device(0)!;
  let received = 0;
  await waitFor(
    'the marker',
    () => {
      received += drv.takeReceived().length;
      return host.stats.rxFrames + host.stats.rxKernelDrops >= 2001 ? true : undefined;
    },
    10_000,
  );
  for (let quiet = 0; quiet < 10; ) {
    const n = drv.takeReceived().length;
    received += n;
    quiet = n === 0 ? quiet + 1 : 0;
    await sleep(20);
  }
  const drops = dev.port.stats.rxDroppedOverflow;
  assert.equal(host.stats.rxFrames + host.stats.rxKernelDrops, 2001, 'kernel drops are counted too');
  assert.equal(received + drops, host.stats.rxFrames, 'delivered + dropped = offered to the guest');
});

test('a 20,000-frame cangen burst reaches a 64-entry-ring guest with default settings (ring refilled during the burst)', {
  skip: SKIP,
}, async (t) => {
  const ifname = vcan(t, 16);
  // Defaults: --socketcan-rcvbuf 16M (32 MiB granted: about 35,000 frames), --rx-backlog 32768.
  const { paths, can } = startTestDaemon(t, { buses: [{ kind: 'host', ifname }] });
  const { drv } = await startDriver(t, paths[0]!, { queueSize: 64, timeoutMs: 20_000 });
  await drv.startController();
  const host = can.hostPorts.get(ifname)!;
  const dev = can.device(0)!;
  assert.ok(host.rcvbufBytes >= 32 << 20, `receive buffer granted: ${host.rcvbufBytes}`);
  // The guest: on every interrupt, take the used buffers and re-post them at once (one kick).
  const MARKER = 0x1ffffffe; // an extended id: cangen sends standard ones only without -e
  let received = 0;
  let marker = false;
  let stop = false;
  const rx = (async () => {
    while (!stop) {
      for (const f of drv.takeReceived()) {
        if (f.extended && f.id === MARKER) marker = true;
        else received++;
      }
      await drv.rx.waitUsed(100).catch(() => {});
    }
  })();
  t.after(() => {
    stop = true;
  });
  const N = 20_000;
  const tx0 = Number(
    execFileSync('cat', [`/sys/class/net/${ifname}/statistics/tx_packets`], { encoding: 'utf8' }),
  );
  const t0 = performance.now();
  await new Promise<void>((resolve, reject) => {
    const c = spawn('cangen', [ifname, '-g', '0', '-n', String(N)], { stdio: 'ignore' });
    c.once('error', reject);
    c.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`cangen exited ${code}`))));
  });
  const burstMs = performance.now() - t0;
  const duringBurst = received;
  const sent =
    Number(execFileSync('cat', [`/sys/class/net/${ifname}/statistics/tx_packets`], { encoding: 'utf8' })) -
    tx0;
  // The kernel reports its drop counter with the next frame it queues: the marker.
  execFileSync('cansend', [ifname, `${MARKER.toString(16)}#00`]);
  await waitFor('the marker frame', () => (marker ? true : undefined), 120_000);
  stop = true;
  await rx;
  const drops = { kernel: host.stats.rxKernelDrops, backlog: dev.port.stats.rxDroppedOverflow };
  const why = `sent ${sent}, read ${host.stats.rxFrames - 1}, delivered ${received} (${duringBurst} during the ${burstMs.toFixed(0)} ms burst), drops ${JSON.stringify(drops)}`;
  t.diagnostic(why);
  assert.equal(sent, N, why);
  // Every frame is accounted for: read or dropped by the kernel; delivered or dropped by the backlog.
  assert.equal(host.stats.rxFrames - 1 + drops.kernel, sent, why);
  assert.equal(received + drops.backlog, host.stats.rxFrames - 1, why);
  // The guest's ring was refilled again and again while cangen was still writing. Measured (TCG,
  // 4 runs): 320-1341 frames delivered during the burst; reading the socket dry on every wake-up
  // instead (the old behaviour) starves the guest until the socket runs empty: 128 in 4 runs.
  assert.ok(duringBurst > 3 * 64, why);
  // Nothing can be lost at these sizes: the burst fits the kernel buffer and the backlog.
  assert.equal(drops.backlog, 0, why);
  assert.ok(received >= 0.9 * N, why);
});

test('host error frames are never delivered as data; a bus-off error frame puts the guests into BUS-OFF', {
  skip: SKIP,
}, async (t) => {
  const ifname = vcan(t);
  const { paths, can } = startTestDaemon(t, { buses: [{ kind: 'host', ifname }] });
  const { fe, drv } = await startDriver(t, paths[0]!);
  await drv.startController();
  const host = can.hostPorts.get(ifname)!;
  // CAN_ERR_CRTL with data[1] = CAN_ERR_CRTL_RX_PASSIVE: error-passive, not a bus-off.
  execFileSync('cansend', [ifname, '20000004#0010000000000000']);
  await waitFor('error frame seen', () => (host.stats.errorFrames >= 1 ? true : undefined), 3000);
  assert.equal(await drv.readStatus(), 0);
  assert.equal(can.device(0)!.controllerState, 'started');
  // CAN_ERR_BUSOFF.
  execFileSync('cansend', [ifname, '20000040#0000000000000000']);
  await waitFor('CONFIG_CHANGE_MSG', () => (fe.configChangeCount >= 1 ? true : undefined), 3000);
  assert.equal(await drv.readStatus(), 1);
  assert.equal(host.stats.busOff, 1);
  await sleep(50);
  assert.equal(drv.received().length, 0, 'no error frame reached the guest as data');
  assert.equal(await drv.startController(), 0);
  execFileSync('cansend', [ifname, '123#01']);
  assert.deepEqual(
    (await drv.waitFrames(1)).map((f) => f.id),
    [0x123],
  );
});

const KVASER = HAVE_CAN && existsSync('/sys/class/net/can0') && existsSync('/sys/class/net/can1');

test('real controller drivers (QEMU kvaser_pci, SJA1000): the daemon on can0, can-utils on can1', {
  skip: KVASER ? false : 'needs two kvaser_pci controllers: host-kernel-run.sh --kvaser 2',
}, async (t) => {
  for (const c of ['can0', 'can1']) {
    ip('link', 'set', c, 'down');
    ip('link', 'set', c, 'type', 'can', 'bitrate', '500000');
    ip('link', 'set', c, 'up');
  }
  t.after(() => {
    for (const c of ['can0', 'can1']) ip('link', 'set', c, 'down');
  });
  // Needs controllers no earlier test overflowed: QEMU's SJA1000 model keeps a receive FIFO that
  // overflowed lagging behind for good (test/e2e/socketcan.test.ts gives each file a fresh guest).
  const dump = candump(t, 'can1');
  await candumpReady('can1');
  const { paths, can } = startTestDaemon(t, { buses: [{ kind: 'host', ifname: 'can0' }] });
  const { fe, drv } = await startDriver(t, paths[0]!);
  assert.equal(fe.negotiated!.features & featureBit(CanFeature.CAN_FD), 0n, 'SJA1000 is classic CAN only');
  await drv.startController();
  const classic = FRAMES.filter(([f]) => !f.fd);
  assert.deepEqual(await drv.sendMany(classic.map(([f]) => f)), new Array(classic.length).fill(0));
  assert.equal(can.hostPorts.get('can0')!.stats.txConfirmed, classic.length, 'confirmed by the driver echo');
  // Ignore frames an earlier test left queued in the emulated controllers (they are replayed when a
  // controller comes up again): only ours, in our order.
  const ours = new Set(classic.map(([, s]) => s.split('#')[0]!));
  const seen = () => dump.lines().filter((l) => ours.has(l.split('#')[0]!));
  await waitFor('frames on can1', () => (seen().length >= classic.length ? true : undefined), 5000).catch(
    (err) => {
      const host = can.hostPorts.get('can0')!;
      throw new Error(
        `${err.message}; candump can1: ${JSON.stringify(dump.lines())}; can0 port: ${JSON.stringify(host.stats)}; ` +
          execFileSync('ip', ['-s', '-d', 'link', 'show', 'can1'], { encoding: 'utf8' }),
      );
    },
  );
  assert.deepEqual(
    seen(),
    classic.map(([, s]) => s),
  );
  execFileSync('cansend', ['can1', '1F334455#1122334455667788']);
  const [f] = await drv.waitFrames(1);
  assert.equal(f!.id, 0x1f334455);
  assert.equal(f!.extended, true);
  assert.deepEqual([...f!.data], [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]);
});

test('a full kernel TX queue is back-pressure: frames wait, are retried and all go out in order', {
  skip: KVASER ? false : 'needs two kvaser_pci controllers: host-kernel-run.sh --kvaser 2',
}, async (t) => {
  for (const c of ['can0', 'can1']) {
    ip('link', 'set', c, 'down');
    ip('link', 'set', c, 'type', 'can', 'bitrate', '500000');
    ip('link', 'set', c, 'txqueuelen', '1');
    ip('link', 'set', c, 'up');
  }
  t.after(() => {
    for (const c of ['can0', 'can1']) {
      ip('link', 'set', c, 'down');
      ip('link', 'set', c, 'txqueuelen', '10');
    }
  });
  const { paths, can } = startTestDaemon(t, { buses: [{ kind: 'host', ifname: 'can0' }] });
  const { drv } = await startDriver(t, paths[0]!, { queueSize: 256, timeoutMs: 20_000 });
  await drv.startController();
  const N = 500;
  const frames = Array.from({ length: N }, (_, i) => ({ id: i & 0x7ff, data: [i & 0xff, i >> 8] }));
  const results = await drv.sendMany(frames);
  const host = can.hostPorts.get('can0')!;
  const why = JSON.stringify(host.stats);
  assert.deepEqual(results, new Array(N).fill(0), why);
  assert.equal(host.stats.txConfirmed, N, why);
  assert.equal(host.stats.txFailed, 0, why);
  t.diagnostic(`kernel back-pressure events: ${host.stats.txBackpressure}`);
});
