/**
 * python-can, unmodified, as a socketcand client of `--socketcand-listen`: Debian bookworm's 4.1
 * (/usr/bin/python3 with python3-can) and Debian trixie's 4.5 (fetched by
 * scripts/deps/python-can-trixie.sh). A front-end guest (the TS virtio-can driver) on the same bus
 * is the other end: frames both ways, byte-exact, send_periodic and can_filters.
 */
import assert from 'node:assert/strict';
import type { TestContext } from 'node:test';
import { test } from 'node:test';
import type { CanDaemon } from '../../src/node/can/can-daemon.js';
import type { CanTestDriver } from '../../src/node/frontend/can-driver.js';
import { type PyFrame, requirePythonCan, startPyPeer } from '../helpers/socketcand.js';
import { frame, hostPort, startDriver, startTestDaemon } from '../helpers/vhost-user.js';

const hex = (b: Uint8Array | readonly number[]): string => Buffer.from(b).toString('hex');

async function setup(t: TestContext): Promise<{ port: number; drv: CanTestDriver; can: CanDaemon }> {
  const { can, paths } = startTestDaemon(t, { socketcand: { listen: { host: '127.0.0.1', port: 0 } } });
  await can.socketcand!.ready;
  const { drv } = await startDriver(t, paths[0]!);
  assert.equal(await drv.startController(), 0);
  return { port: can.socketcand!.address.port, drv, can };
}

/** A guest frame with a raw DLC 9..15 for 8 bytes (virtio-can's reserved_classic_dlc byte). */
function len8Frame(drv: CanTestDriver, id: number, dlc: number, data: number[]): Uint8Array {
  const raw = drv.encodeTx({ id, data });
  raw[4] = dlc;
  return raw;
}

for (const version of ['4.1', '4.5'] as const) {
  test(`python-can ${version} and a guest exchange frames through --socketcand-listen, byte-exact`, async (t) => {
    const py = requirePythonCan(t, version);
    if (py === null) return;
    const { port, drv } = await setup(t);
    const peer = await startPyPeer(t, py, '127.0.0.1', port, 'default');

    // guest -> python-can
    const d8 = [0xde, 0xad, 0xbe, 0xef, 0x00, 0x11, 0x7f, 0x80];
    assert.equal(await drv.send({ id: 0x123, data: [1, 2, 3] }), 0);
    assert.equal(await drv.send({ id: 0x1abcdef0, extended: true }), 0);
    assert.equal(await drv.send({ id: 0x7ff, data: d8 }), 0);
    assert.equal(await drv.send({ id: 0x456 }, { raw: len8Frame(drv, 0x456, 12, d8) }), 0);
    assert.equal(await drv.send({ id: 0x42, extended: true, data: [0xaa] }), 0);
    // python-can has no way to show these two: the server sends < rtr > and < fdframe > elements,
    // which it logs and skips.
    assert.equal(await drv.send({ id: 0x321, rtr: true, len: 4 }), 0);
    assert.equal(await drv.send({ id: 0x100, fd: true, data: Array.from({ length: 12 }, (_, i) => i) }), 0);
    assert.equal(await drv.send({ id: 0x124, data: [9] }), 0);
    const got = (await peer.request({ op: 'recv', count: 6, timeout: 5 })).frames as PyFrame[];
    const extra = (await peer.request({ op: 'recv', count: 1, timeout: 0.3 })).frames as PyFrame[];
    assert.deepEqual(extra, [], 'nothing more arrives');
    assert.deepEqual(
      got.map((f) => [f.id, f.data]),
      [
        [0x123, '010203'],
        [0x1abcdef0, ''],
        [0x7ff, hex(d8)],
        [0x456, hex(d8)],
        [0x42, 'aa'],
        [0x124, '09'],
      ],
    );
    if (version === '4.5') {
      // 4.5 tells the identifier format by the number of digits (3 or 8).
      assert.deepEqual(
        got.map((f) => f.ext),
        [false, true, false, false, true, false],
      );
    }
    // Timestamps are wall-clock seconds.
    for (const f of got) assert.ok(Math.abs(f.ts! - Date.now() / 1000) < 30, `timestamp ${f.ts}`);

    // python-can -> guest
    drv.takeReceived();
    const fd12 = Array.from({ length: 12 }, (_, i) => 0xf0 + i);
    const sent: PyFrame[] = [
      { id: 0x123, data: '0102' },
      { id: 0x1abcdef0, ext: true, data: '' },
      { id: 0x7ff, data: hex(d8) },
      { id: 0x1fffffff, ext: true, data: 'ffee' },
      // a raw DLC 12 carrying 8 bytes (python-can writes the DLC in hex: C)
      { id: 0x456, data: hex(d8), dlc: 12 },
      // a CAN FD message: python-can sends it with < send > and a hex length
      { id: 0x101, data: hex(fd12), fd: true },
      { id: 0x42, ext: true, data: '55' },
    ];
    assert.deepEqual(await peer.request({ op: 'send', frames: sent }), { sent: sent.length });
    const rx = await drv.waitFrames(7);
    assert.deepEqual(
      rx.map((f) => [f.id, f.extended, f.fd, f.rtr, hex(f.data), f.reservedClassicDlc]),
      [
        [0x123, false, false, false, '0102', 0],
        [0x1abcdef0, true, false, false, '', 0],
        [0x7ff, false, false, false, hex(d8), 0],
        [0x1fffffff, true, false, false, 'ffee', 0],
        [0x456, false, false, false, hex(d8), 12],
        [0x101, false, true, false, hex(fd12), 0],
        // 4.1 writes extended identifiers without zero padding: 42 reads as a standard one.
        [0x42, version === '4.5', false, false, '55', 0],
      ],
    );
    assert.deepEqual(await peer.request({ op: 'quit' }), { bye: true });
    assert.doesNotMatch(peer.stderr(), /Traceback|CanError/);
  });

  test(`python-can ${version}: thousands of frames in a row arrive complete and in order`, async (t) => {
    const py = requirePythonCan(t, version);
    if (py === null) return;
    const { port, can } = await setup(t);
    const peer = await startPyPeer(t, py, '127.0.0.1', port, 'default');
    const host = hostPort(t, can.hubs.get('default'));
    // Mixed sizes, so elements straddle python-can's 1024-byte reads at every offset.
    const n = 5000;
    for (let i = 0; i < n; i++) {
      host.transmit(
        frame(
          i % 2 === 0 ? 0x100 : 0x1abcde00 + (i & 0xff),
          Array.from({ length: i % 9 }, (_, k) => (i + k) & 0xff),
          { extended: i % 2 === 1 },
        ),
      );
      if (i % 500 === 499) await new Promise((r) => setTimeout(r, 5));
    }
    const got = (await peer.request({ op: 'recv', count: n, timeout: 30 }, 40_000)).frames as PyFrame[];
    assert.equal(got.length, n, 'every frame arrived');
    for (let i = 0; i < n; i++) {
      const want = Buffer.from(Array.from({ length: i % 9 }, (_, k) => (i + k) & 0xff)).toString('hex');
      assert.equal(got[i]!.data, want, `frame ${i}`);
    }
  });

  test(`python-can ${version}: send_periodic reaches the guest at its period`, async (t) => {
    const py = requirePythonCan(t, version);
    if (py === null) return;
    const { port, drv } = await setup(t);
    const peer = await startPyPeer(t, py, '127.0.0.1', port, 'default');
    const t0 = Date.now();
    await peer.request({ op: 'periodic', frame: { id: 0x200, data: 'a5a5' }, period: 0.02, duration: 0.5 });
    const rx = await drv.waitFrames(10, 5000);
    await new Promise((r) => setTimeout(r, 700));
    const all = drv.received();
    const elapsed = Date.now() - t0;
    assert.ok(
      all.length >= 10 && all.length <= 30,
      `${all.length} frames in ${elapsed} ms (expected about 25)`,
    );
    for (const f of rx) assert.deepEqual([f.id, hex(f.data)], [0x200, 'a5a5']);
    const n = all.length;
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(drv.received().length, n, 'the task stopped after its duration');
  });

  test(`python-can ${version}: can_filters select what the application sees`, async (t) => {
    const py = requirePythonCan(t, version);
    if (py === null) return;
    const { port, drv } = await setup(t);
    const peer = await startPyPeer(t, py, '127.0.0.1', port, 'default', [{ can_id: 0x200, can_mask: 0x7f0 }]);
    for (const id of [0x100, 0x201, 0x300, 0x20f, 0x210])
      assert.equal(await drv.send({ id, data: [id & 0xff] }), 0);
    const got = (await peer.request({ op: 'recv', count: 3, timeout: 2 })).frames as PyFrame[];
    assert.deepEqual(
      got.map((f) => f.id),
      [0x201, 0x20f],
    );
  });
}
