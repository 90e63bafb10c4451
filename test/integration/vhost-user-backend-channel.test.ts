// The back-end channel (SET_BACKEND_REQ_FD) and the bus-off config-change notification
// (vhost-user.rst "Back-end communication"; docs/protocol-notes.md 1.5, 3).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { CanStatus } from '../../src/core/devices/can/constants.js';
import { BackendReq, HeaderFlag, ProtocolFeature } from '../../src/core/vhost-user/protocol.js';
import { featureBit } from '../../src/core/virtio/features.js';
import { FRONTEND_PROTOCOL_FEATURES } from '../../src/node/frontend/frontend.js';
import { startDriver, startTestDaemon } from '../helpers/vhost-user.js';

describe('back-end channel', () => {
  test('bus-off sends CONFIG_CHANGE_MSG with flags 0x1 and size 0; START clears the status bit', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { fe, drv } = await startDriver(t, paths[0]!);
    assert.ok(fe.hasBackendChannel, 'SET_BACKEND_REQ_FD was acknowledged during init');
    assert.equal(await drv.startController(), 0);
    assert.equal(await drv.send({ id: 1, data: [1] }), 0);
    const next = fe.waitConfigChange(2000);
    can.hubFor(0).injectBusState('guest0', 'bus-off');
    const msg = await next;
    assert.equal(msg.request, BackendReq.CONFIG_CHANGE_MSG);
    assert.equal(msg.flags, HeaderFlag.VERSION, 'flags exactly 0x1: no NEED_REPLY, no REPLY');
    assert.equal(msg.size, 0);
    assert.equal(msg.fdCount, 0);
    assert.equal(fe.configChangeCount, 1);
    // status bit 0 (value 1), controller stopped, TX refused.
    assert.equal(await drv.readStatus(), CanStatus.CTRL_BUSOFF);
    assert.equal(can.device(0)!.controllerState, 'stopped');
    assert.equal(await drv.send({ id: 2, data: [2] }), 1);
    // START clears the bit (before completing), no notification for that.
    assert.equal(await drv.startController(), 0);
    assert.equal(await drv.readStatus(), 0);
    assert.equal(await drv.send({ id: 3, data: [3] }), 0);
    await sleep(30);
    assert.equal(fe.configChangeCount, 1);
    assert.deepEqual(
      fe.backendMessages.map((m) => [m.request, m.flags, m.size]),
      [[BackendReq.CONFIG_CHANGE_MSG, 1, 0]],
    );
  });

  test('while every ring is stopped no back-end message is sent; it follows the restart', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { fe, drv } = await startDriver(t, paths[0]!);
    assert.equal(await drv.startController(), 0);
    const bases = await drv.stop();
    can.hubFor(0).injectBusState('guest0', 'bus-off');
    await sleep(100);
    assert.equal(fe.configChangeCount, 0, 'suspended: the notification is deferred');
    assert.equal(await drv.readStatus(), CanStatus.CTRL_BUSOFF, 'config is still answered');
    const next = fe.waitConfigChange(2000);
    await drv.restart(bases);
    const msg = await next;
    assert.equal(msg.flags, HeaderFlag.VERSION);
    assert.equal(msg.size, 0);
    assert.equal(fe.configChangeCount, 1);
  });

  test('without BACKEND_REQ there is no channel and bus-off is only visible in the status', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const protocolFeatures = FRONTEND_PROTOCOL_FEATURES & ~featureBit(ProtocolFeature.BACKEND_REQ);
    const { fe, drv } = await startDriver(t, paths[0]!, { init: { protocolFeatures } });
    assert.equal(fe.hasBackendChannel, false);
    assert.equal(await drv.startController(), 0);
    can.hubFor(0).injectBusState('guest0', 'bus-off');
    await sleep(50);
    assert.equal(fe.backendMessages.length, 0);
    assert.equal(await drv.readStatus(), CanStatus.CTRL_BUSOFF);
  });

  test('SET_BACKEND_REQ_FD without BACKEND_REQ negotiated is refused', async (t) => {
    const { paths } = startTestDaemon(t);
    const protocolFeatures = FRONTEND_PROTOCOL_FEATURES & ~featureBit(ProtocolFeature.BACKEND_REQ);
    const { fe } = await startDriver(t, paths[0]!, { init: { protocolFeatures } });
    assert.notEqual(await fe.setBackendReqFd({ needReply: true }), 0);
  });
});
