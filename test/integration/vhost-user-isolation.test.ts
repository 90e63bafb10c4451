// A guest that corrupts its rings breaks its own device only (the 'mark-broken' disposition,
// src/core/util/errors.ts): the connection stays up, the other socket keeps working, and a guest
// reset recovers the device.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { CanQueue } from '../../src/core/devices/can/constants.js';
import { DeviceStatus } from '../../src/core/vhost-user/protocol.js';
import { hasFeature, VirtioFeature } from '../../src/core/virtio/features.js';
import { CanTestDriver } from '../../src/node/frontend/can-driver.js';
import { frame, hostPort, startDriver, startTestDaemon, waitFor } from '../helpers/vhost-user.js';

describe('isolation', () => {
  test('socket 0 with an avail index far ahead is marked broken; socket 1 keeps working', async (t) => {
    const { can, paths } = startTestDaemon(t, { sockets: 2 });
    const g0 = await startDriver(t, paths[0]!);
    const g1 = await startDriver(t, paths[1]!);
    const host = hostPort(t, can.hubFor(0));
    // The guest publishes an avail index 1000 entries past what the device consumed (> queue size).
    g0.drv.tx.ring.setAvailIdx(g0.drv.tx.ring.availIdx + 1000);
    g0.drv.tx.notify();
    const session0 = can.daemon.connection(0)!.session;
    const err = await waitFor('device 0 broken', () => session0.broken ?? undefined);
    assert.equal(err.code, 'ERR_VQ_AVAIL_IDX');
    assert.equal(
      (await g0.fe.getStatus()) & DeviceStatus.DEVICE_NEEDS_RESET,
      DeviceStatus.DEVICE_NEEDS_RESET,
    );
    assert.ok(hasFeature(await g0.fe.getFeatures(), VirtioFeature.VERSION_1), 'connection 0 still answers');
    assert.ok(g0.fe.isOpen);
    assert.equal(g0.drv.tx.ring.usedIdx, 0, 'nothing was written into the corrupt ring');
    // The broken device no longer processes its other rings either.
    const ctrl = g0.drv.control(0x0201, { timeoutMs: 150 });
    await assert.rejects(ctrl, { code: 'ERR_FRONTEND_TIMEOUT' });

    // Guest 1 on the same bus is unaffected.
    assert.equal(await g1.drv.startController(), 0);
    assert.equal(await g1.drv.send({ id: 0x111, data: [1, 1, 1] }), 0);
    assert.deepEqual(
      host.frames().map((f) => f.id),
      [0x111],
    );
    host.transmit(frame(0x222, [2]));
    assert.equal((await g1.drv.waitFrames(1))[0]!.id, 0x222);
    assert.equal(can.daemon.connection(1)!.session.broken, null);
    assert.equal(can.daemon.status()[0]!.connected, true);
  });

  test('a corrupt avail index after other chains were processed does not reuse a stale head', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { fe, drv } = await startDriver(t, paths[0]!);
    assert.equal(await drv.startController(), 0); // the device's chain object now holds head 0
    assert.equal(await drv.send({ id: 1, data: [1] }), 0);
    const used = drv.tx.ring.usedIdx;
    drv.tx.ring.setAvailIdx(drv.tx.ring.availIdx + 500);
    drv.tx.notify();
    const session = can.daemon.connection(0)!.session;
    const err = await waitFor('device broken', () => session.broken ?? undefined);
    assert.equal(err.code, 'ERR_VQ_AVAIL_IDX');
    await sleep(20);
    assert.equal(drv.tx.ring.usedIdx, used, 'no used entry for a stale head');
    assert.equal(drv.tx.ring.unexpectedUsed, 0);
    assert.ok(fe.isOpen);
  });

  test('a head index beyond the queue size breaks the device, not the daemon', async (t) => {
    const { can, paths } = startTestDaemon(t, { sockets: 2 });
    const g0 = await startDriver(t, paths[0]!);
    const g1 = await startDriver(t, paths[1]!);
    g0.drv.ctrl.ring.pushAvailRaw(1000);
    g0.drv.ctrl.kick();
    const session0 = can.daemon.connection(0)!.session;
    const err = await waitFor('device 0 broken', () => session0.broken ?? undefined);
    assert.equal(err.code, 'ERR_VQ_DESC_INDEX');
    assert.equal(await g1.drv.startController(), 0);
  });

  test('a guest reset (rings restarted from index 0, new SET_FEATURES) recovers a broken device', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { fe, ram, drv } = await startDriver(t, paths[0]!);
    drv.tx.ring.setAvailIdx(5000);
    drv.tx.notify();
    const session = can.daemon.connection(0)!.session;
    await waitFor('device broken', () => session.broken ?? undefined);
    await drv.stop();
    // The driver re-probes: fresh rings, fresh features, START again.
    const again = new CanTestDriver(fe, ram);
    await again.start();
    assert.equal(session.broken, null);
    assert.equal(await again.startController(), 0);
    assert.equal(await again.send({ id: 3, data: [3] }), 0);
    const host = hostPort(t, can.hubFor(0));
    host.transmit(frame(0x33, [3]));
    assert.equal((await again.waitFrames(1))[0]!.id, 0x33);
    assert.equal(again.rx.index, CanQueue.RX);
  });
});
