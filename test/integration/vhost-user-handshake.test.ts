// The QEMU 11 handshake against the in-process CAN daemon, and the reply rules of the vhost-user
// layer (docs/protocol-notes.md 1.2, 1.7). Each test's title says what it checks.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { CAN_NUM_QUEUES, CanFeature, CanMsgType } from '../../src/core/devices/can/constants.js';
import { encodeConfig, encodeMessage, encodeVringState } from '../../src/core/vhost-user/codec.js';
import {
  ConfigFlag,
  DeviceStatus,
  FrontendReq,
  HeaderFlag,
  ProtocolFeature,
  REPLY_FLAGS,
} from '../../src/core/vhost-user/protocol.js';
import { featureBit, featureMask, hasFeature, VirtioFeature } from '../../src/core/virtio/features.js';
import { CanTestDriver } from '../../src/node/frontend/can-driver.js';
import {
  connect,
  startDriver,
  startTestDaemon,
  waitConnected,
  waitDisconnected,
} from '../helpers/vhost-user.js';

const U64 = (p: Uint8Array): bigint => new DataView(p.buffer, p.byteOffset, 8).getBigUint64(0, true);

describe('QEMU handshake', () => {
  test('A (init) then B (start): features, protocol features, queues, traffic', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { fe, ram } = connect(t, paths[0]!);
    const init = await fe.init({ numQueues: CAN_NUM_QUEUES });
    // VERSION_1, bit 30, CLASSIC, FD; RTR only with CLASSIC.
    for (const bit of [
      VirtioFeature.VERSION_1,
      VirtioFeature.PROTOCOL_FEATURES,
      CanFeature.CAN_CLASSIC,
      CanFeature.CAN_FD,
    ]) {
      assert.ok(hasFeature(init.features, bit), `feature bit ${bit}`);
    }
    // MQ, REPLY_ACK, BACKEND_REQ, CONFIG, and nothing we do not implement ourselves.
    const wanted = featureMask(
      ProtocolFeature.MQ,
      ProtocolFeature.REPLY_ACK,
      ProtocolFeature.BACKEND_REQ,
      ProtocolFeature.CONFIG,
    );
    assert.equal(init.protocolOffered & wanted, wanted);
    assert.equal(init.protocolFeatures, init.protocolOffered, 'we implement everything offered');
    assert.equal(init.queueNum, 3, 'three queues');
    assert.equal(init.maxMemSlots, 32);
    assert.ok(fe.hasBackendChannel, 'SET_BACKEND_REQ_FD was sent and acked');

    const session = can.daemon.connection(0)!.session;
    let d = session.describe();
    assert.equal(d.owner, true);
    assert.equal(d.acked, 0n, 'protocol features negotiated before SET_FEATURES');
    assert.equal(d.protocol, init.protocolFeatures);
    assert.deepEqual(d.rings, [
      { started: false, enabled: false },
      { started: false, enabled: false },
      { started: false, enabled: false },
    ]);
    // config is readable before SET_FEATURES, status 0.
    const cfg = await fe.getConfig(0, 2);
    assert.deepEqual([...cfg.data], [0, 0]);

    const drv = new CanTestDriver(fe, ram);
    await drv.start();
    d = session.describe();
    assert.equal(d.acked, drv.features | featureBit(VirtioFeature.PROTOCOL_FEATURES));
    assert.ok(d.rings.every((r) => r.started && r.enabled));
    assert.equal(can.device(0)!.controllerState, 'stopped', 'the controller starts stopped');
    assert.equal(await fe.getStatus(), DeviceStatus.FEATURES_OK, 'STATUS: FEATURES_OK set during start');
    assert.equal(await drv.send({ id: 0x123, data: [1] }), 1, 'TX while stopped is NOT_OK');
    assert.equal(await drv.startController(), 0);
    assert.equal(await drv.send({ id: 0x123, data: [1, 2, 3, 4, 5, 6, 7, 8] }), 0);
    assert.equal(fe.stats.unexpected, 0);
  });

  test('every reply has flags exactly 0x5 and echoes the request code', async (t) => {
    const { paths } = startTestDaemon(t);
    const { fe, ram } = connect(t, paths[0]!);
    await CanTestDriver.create(fe, ram);
    const cases: [number, Uint8Array | undefined, number][] = [
      [FrontendReq.GET_FEATURES, undefined, 8],
      [FrontendReq.GET_PROTOCOL_FEATURES, undefined, 8],
      [FrontendReq.GET_QUEUE_NUM, undefined, 8],
      [FrontendReq.GET_MAX_MEM_SLOTS, undefined, 8],
      [FrontendReq.GET_STATUS, undefined, 8],
      [FrontendReq.GET_CONFIG, encodeConfig({ offset: 0, size: 2, flags: 0 }), 14],
      [FrontendReq.GET_CONFIG, encodeConfig({ offset: 0, size: 16, flags: 0 }), 28],
      [FrontendReq.GET_VRING_BASE, encodeVringState({ index: 2, num: 0 }), 8],
    ];
    for (const [request, payload, size] of cases) {
      fe.sendRaw(encodeMessage(request, HeaderFlag.VERSION, payload));
      const r = await fe.readReplyRaw();
      assert.equal(r.flags, REPLY_FLAGS, `flags of the reply to ${request}`);
      assert.equal(r.request, request);
      assert.equal(r.size, size, `size of the reply to ${request}`);
      assert.equal(r.fds.length, 0);
    }
    // An ack for NEED_REPLY has the same flags.
    fe.sendRaw(encodeMessage(FrontendReq.SET_OWNER, HeaderFlag.VERSION | HeaderFlag.NEED_REPLY));
    const ack = await fe.readReplyRaw();
    assert.equal(ack.flags, REPLY_FLAGS);
    assert.equal(ack.request, FrontendReq.SET_OWNER);
    assert.equal(U64(ack.payload), 0n);
  });

  test('NEED_REPLY on a message with a reply body gives exactly one reply', async (t) => {
    const { paths } = startTestDaemon(t);
    const { fe } = connect(t, paths[0]!);
    await fe.init({ numQueues: 3 });
    const flags = HeaderFlag.VERSION | HeaderFlag.NEED_REPLY;
    for (const [req, payload] of [
      [FrontendReq.GET_FEATURES, undefined],
      [FrontendReq.GET_PROTOCOL_FEATURES, undefined],
      [FrontendReq.GET_QUEUE_NUM, undefined],
      [FrontendReq.GET_CONFIG, encodeConfig({ offset: 0, size: 2, flags: 0 })],
    ] as const) {
      fe.sendRaw(encodeMessage(req, flags, payload));
      const r = await fe.readReplyRaw();
      assert.equal(r.request, req);
      assert.equal(r.flags, REPLY_FLAGS, 'NEED_REPLY is not echoed');
    }
    await assert.rejects(fe.readReplyRaw(150), { code: 'ERR_FRONTEND_TIMEOUT' }, 'no second reply');
    // The typed API agrees: a GET_FEATURES with NEED_REPLY returns the features, not an ack.
    const f = await fe.getFeatures({ needReply: true });
    assert.ok(hasFeature(f, VirtioFeature.VERSION_1));
    assert.equal(await fe.getQueueNum({ needReply: true }), 3);
    await sleep(50);
    assert.equal(fe.pendingInbox, 0);
    assert.equal(fe.stats.unexpected, 0);
  });

  test('GET_QUEUE_NUM is answered once MQ is offered, before SET_PROTOCOL_FEATURES', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { fe } = connect(t, paths[0]!);
    await fe.getFeatures();
    const offered = await fe.getProtocolFeatures();
    assert.ok(hasFeature(offered, ProtocolFeature.MQ));
    assert.equal(await fe.getQueueNum(), CAN_NUM_QUEUES);
    assert.ok(can.daemon.status()[0]!.connected, 'the connection is still up');
    // And it still works after a SET_PROTOCOL_FEATURES that leaves MQ out.
    assert.equal(await fe.setProtocolFeatures(featureBit(ProtocolFeature.REPLY_ACK), { needReply: true }), 0);
    assert.equal(await fe.getQueueNum({ needReply: true }), CAN_NUM_QUEUES);
  });

  test('GET_QUEUE_NUM when MQ is not offered closes the connection (there is no NACK for it)', async (t) => {
    const { can, paths } = startTestDaemon(t, { protocolFeatures: featureBit(ProtocolFeature.REPLY_ACK) });
    const { fe } = connect(t, paths[0]!);
    await fe.getProtocolFeatures();
    await assert.rejects(fe.getQueueNum(), { code: 'ERR_FRONTEND_CLOSED' });
    await waitDisconnected(can);
  });

  test('NEED_REPLY on a message without a reply body gives a u64 ack 0', async (t) => {
    const { paths } = startTestDaemon(t);
    const { fe } = connect(t, paths[0]!);
    assert.equal(await fe.setOwner({ needReply: true }), 0);
    const proto = await fe.getProtocolFeatures();
    assert.equal(await fe.setProtocolFeatures(proto, { needReply: true }), 0);
    assert.equal(await fe.setVringNum(0, 64, { needReply: true }), 0);
    assert.equal(await fe.setVringBase(0, 0, { needReply: true }), 0);
    assert.equal(await fe.setOwner(), undefined, 'without NEED_REPLY nothing is awaited');
    await sleep(50);
    assert.equal(fe.pendingInbox, 0, 'and nothing is sent back');
  });

  test('unknown request: non-zero ack with NEED_REPLY, ignored without it', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { fe } = connect(t, paths[0]!);
    await fe.init({ numQueues: 3 });
    const r = await fe.call(99, undefined, { needReply: true });
    assert.ok(r);
    assert.equal(r.request, 99);
    assert.equal(r.flags, REPLY_FLAGS);
    assert.notEqual(U64(r.payload), 0n);
    await fe.call(99, Uint8Array.of(1, 2, 3));
    await fe.call(FrontendReq.SET_LOG_BASE, new Uint8Array(16));
    assert.ok(hasFeature(await fe.getFeatures(), VirtioFeature.VERSION_1), 'the connection survives');
    assert.equal(fe.pendingInbox, 0);
    assert.ok(fe.isOpen);
    assert.ok(can.daemon.connection(0)!.session.stats.unknown >= 2);
  });

  test('SET_VRING_NUM 0, 3, 65536 and above the maximum are rejected', async (t) => {
    const { paths } = startTestDaemon(t);
    const { fe } = connect(t, paths[0]!);
    await fe.init({ numQueues: 3 });
    for (const num of [0, 3, 100, 65536, 2048, 0xffff_ffff]) {
      assert.notEqual(await fe.setVringNum(0, num, { needReply: true }), 0, `size ${num}`);
    }
    for (const num of [1, 2, 64, 1024]) {
      assert.equal(await fe.setVringNum(1, num, { needReply: true }), 0, `size ${num}`);
    }
    assert.notEqual(await fe.setVringNum(3, 64, { needReply: true }), 0, 'queue index 3 does not exist');
  });

  test('SET_FEATURES without bit 30 enables every ring at once', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { fe, ram } = connect(t, paths[0]!);
    const drv = await CanTestDriver.create(fe, ram, { init: { noProtocolFeatures: true } });
    assert.equal(fe.protocolFeatures, 0n);
    const d = can.daemon.connection(0)!.session.describe();
    assert.equal(hasFeature(d.acked, VirtioFeature.PROTOCOL_FEATURES), false);
    assert.ok(d.rings.every((r) => r.started && r.enabled));
    assert.equal(await drv.startController(), 0);
    assert.equal(await drv.send({ id: 1, data: [1] }), 0);
    // No REPLY_ACK: stop() synchronises with GET_FEATURES barriers instead, and still works.
    const bases = await drv.stop();
    assert.deepEqual(bases, [1, 0, 1]);
  });

  test('with bit 30 rings start disabled and run only after SET_VRING_ENABLE(1)', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { fe, ram, drv } = await startDriver(t, paths[0]!, { skipEnable: true });
    const d = can.daemon.connection(0)!.session.describe();
    assert.ok(d.rings.every((r) => r.started && !r.enabled));
    // vhost-user "Ring states": a started but disabled ring is processed without side effects, so
    // a kicked request is returned NOT_OK and not acted on.
    assert.equal(await drv.control(CanMsgType.SET_CTRL_MODE_START, { timeoutMs: 1000 }), 1);
    assert.equal(can.device(0)!.stats.ctrlStart, 0, 'a disabled ring is not processed');
    assert.equal(can.device(0)!.stats.ctrlDisabled, 1);
    // A request made visible without a kick waits; enabling scans the ring.
    const req = ram.alloc(2, 2, 0);
    const result = ram.alloc(1, 1, 0);
    ram.write(req, Uint8Array.of(CanMsgType.SET_CTRL_MODE_START & 0xff, CanMsgType.SET_CTRL_MODE_START >> 8));
    const head = drv.ctrl.add([{ gpa: req, len: 2 }], [{ gpa: result, len: 1 }]);
    const pending = drv.ctrl.waitFor(head);
    drv.ctrl.publish();
    await sleep(50);
    assert.equal(can.device(0)!.stats.ctrlStart, 0);
    assert.equal(await fe.setVringEnable(2, true, { needReply: true }), 0);
    assert.equal(await pending, 1, 'enabling scans the ring without a new kick');
    assert.equal(ram.read(result, 1)[0], 0);
    assert.equal(can.device(0)!.controllerState, 'started');
  });

  test('SET_VRING_KICK and SET_VRING_CALL with the NOFD bit are accepted', async (t) => {
    const { paths } = startTestDaemon(t);
    const { fe, drv } = await startDriver(t, paths[0]!);
    assert.equal(await fe.setVringCall(0, null, { needReply: true }), 0);
    assert.equal(await fe.setVringErr(0, null, { needReply: true }), 0);
    await drv.stop();
    assert.equal(await fe.setVringKick(2, null, { needReply: true }), 0);
    assert.equal(await fe.setVringKick(2, drv.ctrl.kickFd, { needReply: true }), 0);
  });

  test('config space: sizes, zero padding, range refusal, read-only status', async (t) => {
    const { paths } = startTestDaemon(t);
    const { fe } = connect(t, paths[0]!);
    await fe.init({ numQueues: 3 });
    const c2 = await fe.getConfig(0, 2);
    assert.equal(c2.size, 2);
    assert.deepEqual([...c2.data], [0, 0]);
    const c16 = await fe.getConfig(0, 16);
    assert.deepEqual([...c16.data], new Array(16).fill(0));
    assert.equal((await fe.getConfig(1, 1)).data.length, 1);
    await assert.rejects(fe.getConfig(0, 300), { code: 'ERR_FRONTEND_CONFIG_REFUSED' });
    await assert.rejects(fe.getConfig(250, 16), { code: 'ERR_FRONTEND_CONFIG_REFUSED' });
    assert.notEqual(
      await fe.setConfig(0, Uint8Array.of(1, 0), { needReply: true }),
      0,
      'status is read-only',
    );
    assert.equal(
      await fe.setConfig(0, Uint8Array.of(1, 0), { needReply: true, flags: ConfigFlag.MIGRATION }),
      0,
      'migration writes are accepted',
    );
    assert.deepEqual([...(await fe.getConfig(0, 2)).data], [0, 0]);
  });

  test('GET_CONFIG without F_CONFIG negotiated is refused with an empty reply', async (t) => {
    const { paths } = startTestDaemon(t);
    const { fe } = connect(t, paths[0]!);
    await fe.init({ numQueues: 3, noConfig: true });
    assert.equal(hasFeature(fe.protocolFeatures, ProtocolFeature.CONFIG), false);
    await assert.rejects(fe.getConfig(0, 2), { code: 'ERR_FRONTEND_CONFIG_REFUSED' });
    assert.ok(fe.isOpen);
  });

  test('bad values are refused: unoffered features, base > 0xffff, enable value 2', async (t) => {
    const { paths } = startTestDaemon(t);
    const { fe } = connect(t, paths[0]!);
    await fe.init({ numQueues: 3 });
    assert.notEqual(await fe.setFeatures(1n << 40n, { needReply: true }), 0);
    assert.notEqual(await fe.setProtocolFeatures(1n << 20n, { needReply: true }), 0);
    assert.notEqual(await fe.setVringBase(0, 0x10000, { needReply: true }), 0);
    assert.notEqual(
      await fe
        .call(FrontendReq.SET_VRING_ENABLE, encodeVringState({ index: 0, num: 2 }), { needReply: true })
        .then((m) => U64(m!.payload)),
      0n,
    );
    assert.ok(fe.isOpen);
  });

  test('RESET_DEVICE returns the device to power-on; the driver can start again', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { fe, ram, drv } = await startDriver(t, paths[0]!);
    assert.equal(await drv.startController(), 0);
    await drv.stop();
    assert.equal(await fe.resetDevice({ needReply: true }), 0);
    assert.equal(can.device(0)!.controllerState, 'stopped');
    assert.equal(can.daemon.connection(0)!.session.describe().acked, 0n);
    const again = new CanTestDriver(fe, ram);
    await again.start();
    assert.equal(await again.send({ id: 1, data: [1] }), 1, 'stopped after the reset');
    assert.equal(await again.startController(), 0);
    assert.equal(await again.send({ id: 1, data: [1] }), 0);
  });

  test('a new connection starts from scratch', async (t) => {
    const { can, paths } = startTestDaemon(t);
    {
      const { fe, drv } = await startDriver(t, paths[0]!);
      assert.equal(await drv.startController(), 0);
      assert.equal(await drv.send({ id: 7, data: [7] }), 0);
      fe.close();
      await waitDisconnected(can);
    }
    const { fe, ram } = connect(t, paths[0]!);
    await waitConnected(can);
    const d = can.daemon.connection(0)!.session.describe();
    assert.equal(d.owner, false);
    assert.equal(d.acked, 0n);
    assert.equal(d.protocol, 0n);
    const drv = await CanTestDriver.create(fe, ram);
    assert.equal(can.device(0)!.controllerState, 'stopped');
    assert.equal(await drv.send({ id: 7, data: [7] }), 1, 'the controller is STOPPED again');
    assert.equal(await drv.readStatus(), 0);
  });
});
