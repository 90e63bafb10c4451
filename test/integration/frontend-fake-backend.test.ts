// The front-end against a scripted fake back-end: the exact QEMU 11 message order (realize, start,
// stop: docs/protocol-notes.md 1.7), reply checking, timeouts, the back-end channel, closing.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  decodeMemTable,
  decodeVringAddr,
  encodeMessage,
  encodeU64,
} from '../../src/core/vhost-user/codec.js';
import { BackendReq, FrontendReq, HeaderFlag, REPLY_FLAGS } from '../../src/core/vhost-user/protocol.js';
import { featureBit, VirtioFeature } from '../../src/core/virtio/features.js';
import { VhostUserFrontend } from '../../src/node/frontend/frontend.js';
import { GuestRam } from '../../src/node/frontend/guest-ram.js';
import { FakeBackend } from '../helpers/fake-backend.js';
import { fdCount, settle, waitFor } from '../helpers/vhost-user.js';

const R = FrontendReq;
const NEED = HeaderFlag.VERSION | HeaderFlag.NEED_REPLY;

describe('front-end against a fake back-end', () => {
  test('init, start and stop send exactly the QEMU 11 sequence', async (t) => {
    const { fe, be } = FakeBackend.pair(t);
    const ram = new GuestRam();
    t.after(() => ram.close());
    const init = await fe.init({ numQueues: 3 });
    assert.equal(init.queueNum, 3);
    assert.equal(init.maxMemSlots, null);
    const perQueue = (...reqs: number[]) => [0, 1, 2].flatMap(() => reqs);
    const a = [
      R.GET_FEATURES,
      R.GET_PROTOCOL_FEATURES,
      R.SET_PROTOCOL_FEATURES,
      R.GET_QUEUE_NUM,
      R.SET_BACKEND_REQ_FD,
      R.SET_OWNER,
      R.GET_FEATURES,
      ...perQueue(R.SET_VRING_CALL, R.SET_VRING_ERR),
    ];
    await waitFor('init messages', () => (be.messages.length >= a.length ? true : undefined));
    assert.deepEqual(be.requests(), a);
    const backendReq = be.messages[4]!;
    assert.equal(backendReq.flags, NEED, 'SET_BACKEND_REQ_FD with NEED_REPLY (REPLY_ACK negotiated)');
    assert.equal(backendReq.fds, 1);
    assert.ok(be.channelFd >= 0);

    const features = featureBit(VirtioFeature.VERSION_1) | featureBit(VirtioFeature.RING_EVENT_IDX) | 1n;
    const queues = await fe.start({
      features,
      queues: [{ size: 64 }, { size: 64 }, { size: 32 }],
      memory: ram,
    });
    const b = [
      R.SET_FEATURES,
      R.SET_MEM_TABLE,
      ...perQueue(R.SET_VRING_NUM, R.SET_VRING_BASE, R.SET_VRING_ADDR, R.SET_VRING_KICK, R.SET_VRING_CALL),
      ...perQueue(R.SET_VRING_ENABLE),
      ...perQueue(R.SET_VRING_CALL),
    ];
    await waitFor('start messages', () => (be.messages.length >= a.length + b.length ? true : undefined));
    const sent = be.messages.slice(a.length);
    assert.deepEqual(
      sent.map((m) => m.request),
      b,
    );
    const setFeatures = new DataView(sent[0]!.payload.buffer, sent[0]!.payload.byteOffset).getBigUint64(
      0,
      true,
    );
    assert.equal(setFeatures, features | featureBit(VirtioFeature.PROTOCOL_FEATURES), 'acked | bit 30');
    const memTable = sent[1]!;
    assert.equal(memTable.flags, NEED);
    assert.equal(memTable.fds, 2);
    const regions = decodeMemTable(memTable.payload, 8);
    assert.deepEqual(regions, ram.regions());
    assert.equal(regions[1]!.mmapOffset, regions[0]!.size);
    for (const q of queues) {
      const addr = decodeVringAddr(sent[2 + 5 * q.index + 2]!.payload);
      const l = q.ring.layout;
      assert.deepEqual(
        { index: addr.index, desc: addr.desc, used: addr.used, avail: addr.avail },
        {
          index: q.index,
          desc: ram.uvaOf(l.descGpa),
          used: ram.uvaOf(l.usedGpa),
          avail: ram.uvaOf(l.availGpa),
        },
      );
      assert.equal(sent[2 + 5 * q.index + 3]!.fds, 1, 'SET_VRING_KICK carries the kick fd');
    }
    for (const m of sent.slice(17, 20)) assert.equal(m.flags, NEED, 'SET_VRING_ENABLE waits for the ack');
    assert.equal(queues[2]!.size, 32);

    const before = be.messages.length;
    const bases = await fe.stop();
    assert.deepEqual(bases, [0, 0, 0]);
    assert.deepEqual(
      be.messages.slice(before).map((m) => m.request),
      [...perQueue(R.SET_VRING_ENABLE), ...perQueue(R.GET_VRING_BASE)],
    );
  });

  test('without REPLY_ACK, QEMU-style GET_FEATURES barriers replace NEED_REPLY', async (t) => {
    const { fe, be } = FakeBackend.pair(t, { protocolFeatures: 1n }); // MQ only
    const ram = new GuestRam();
    t.after(() => ram.close());
    await fe.init({ numQueues: 1 });
    // Nothing in init() is acknowledged here, so its last messages may still be in flight.
    await waitFor('init messages', () => (be.messages.length === 8 ? true : undefined));
    const n = be.messages.length;
    await fe.start({ features: featureBit(VirtioFeature.VERSION_1), queues: [{ size: 8 }], memory: ram });
    assert.deepEqual(be.requests().slice(n), [
      R.SET_FEATURES,
      R.SET_MEM_TABLE,
      R.SET_VRING_NUM,
      R.SET_VRING_BASE,
      R.SET_VRING_ADDR,
      R.SET_VRING_KICK,
      R.SET_VRING_CALL,
      R.SET_VRING_ENABLE,
      R.GET_FEATURES,
      R.SET_VRING_CALL,
      R.GET_FEATURES,
    ]);
    assert.ok(be.messages.slice(n).every((m) => (m.flags & HeaderFlag.NEED_REPLY) === 0));
  });

  test('replies are matched in order; a timed-out request swallows its late reply', async (t) => {
    const { fe, be } = FakeBackend.pair(t, { timeoutMs: 100 });
    let hold: Uint8Array | null = null;
    be.handler = (m) => {
      if (m.request === R.GET_QUEUE_NUM) {
        hold = encodeMessage(R.GET_QUEUE_NUM, REPLY_FLAGS, encodeU64(3));
        return null; // answered later, too late
      }
      return 'default';
    };
    const [f1, f2] = await Promise.all([fe.getFeatures(), fe.getProtocolFeatures()]);
    assert.equal(f1 & featureBit(VirtioFeature.VERSION_1), featureBit(VirtioFeature.VERSION_1));
    assert.equal(f2, 0b10_0010_1001n);
    await assert.rejects(fe.getQueueNum(), { code: 'ERR_FRONTEND_TIMEOUT' });
    be.send(hold!);
    assert.ok((await fe.getFeatures()) > 0n, 'the late reply did not shift the matching');
    assert.equal(fe.stats.late, 1);
  });

  test('replies QEMU would reject fail with ERR_FRONTEND_BAD_REPLY', async (t) => {
    const { fe, be } = FakeBackend.pair(t);
    be.handler = (m) => ({
      raw: encodeMessage(m.request, REPLY_FLAGS | HeaderFlag.NEED_REPLY, encodeU64(1)),
    });
    await assert.rejects(fe.getFeatures(), { code: 'ERR_FRONTEND_BAD_REPLY' }, 'NEED_REPLY echoed');
    be.handler = () => ({ raw: encodeMessage(R.GET_PROTOCOL_FEATURES, REPLY_FLAGS, encodeU64(1)) });
    await assert.rejects(fe.getFeatures(), { code: 'ERR_FRONTEND_BAD_REPLY' }, 'wrong request code');
    be.handler = (m) => encodeU64(m.request).subarray(0, 4);
    await assert.rejects(fe.getFeatures(), { code: 'ERR_FRONTEND_BAD_REPLY' }, 'short u64');
    be.handler = () => new Uint8Array(0);
    await assert.rejects(fe.getConfig(0, 2), { code: 'ERR_FRONTEND_CONFIG_REFUSED' });
    be.handler = () => new Uint8Array(12 + 4);
    await assert.rejects(fe.getConfig(0, 2), { code: 'ERR_FRONTEND_BAD_REPLY' }, 'config size mismatch');
    be.handler = () => 'default';
    assert.ok(fe.isOpen);
  });

  test('the back-end channel: CONFIG_CHANGE_MSG is counted and emitted, NEED_REPLY is answered with 0', async (t) => {
    const { fe, be } = FakeBackend.pair(t);
    await fe.getFeatures();
    assert.equal(await fe.setBackendReqFd({ needReply: true }), 0);
    await waitFor('channel fd', () => (be.channelFd >= 0 ? true : undefined));
    const seen: number[] = [];
    const off = fe.on('configChange', (m) => seen.push(m.flags));
    const first = fe.waitConfigChange();
    be.sendOnChannel(encodeMessage(BackendReq.CONFIG_CHANGE_MSG, HeaderFlag.VERSION));
    assert.equal((await first).size, 0);
    const second = fe.waitConfigChange();
    be.sendOnChannel(encodeMessage(BackendReq.CONFIG_CHANGE_MSG, NEED));
    await second;
    const reply = await waitFor('channel reply', () => be.readChannel() ?? undefined);
    assert.equal(reply.request, BackendReq.CONFIG_CHANGE_MSG);
    assert.equal(reply.flags, REPLY_FLAGS);
    assert.equal(new DataView(reply.payload.buffer).getBigUint64(0, true), 0n);
    be.sendOnChannel(encodeMessage(BackendReq.VRING_CALL, HeaderFlag.VERSION, encodeU64(0)));
    await waitFor('third message', () => (fe.backendMessages.length === 3 ? true : undefined));
    assert.equal(fe.configChangeCount, 2);
    assert.deepEqual(seen, [HeaderFlag.VERSION, NEED]);
    off();
  });

  test('a closed back-end fails pending requests with ERR_FRONTEND_CLOSED and resolves `closed`', async (t) => {
    const { fe, be } = FakeBackend.pair(t);
    be.handler = () => null;
    const pending = fe.getFeatures();
    await sleep(10);
    be.close();
    await assert.rejects(pending, { code: 'ERR_FRONTEND_CLOSED' });
    await fe.closed;
    assert.equal(fe.closedByPeer, true);
    await assert.rejects(fe.getFeatures(), { code: 'ERR_FRONTEND_CLOSED' });
    assert.throws(() => fe.sendRaw(new Uint8Array(12)), { code: 'ERR_FRONTEND_CLOSED' });
  });

  test('close() releases every fd (socket, eventfds, channel) and is idempotent', async (t) => {
    await settle();
    const before = fdCount();
    {
      const { fe, be } = FakeBackend.pair(t);
      const ram = new GuestRam();
      await fe.init({ numQueues: 3 });
      await fe.start({
        features: featureBit(VirtioFeature.VERSION_1),
        queues: [{ size: 8 }, { size: 8 }],
        memory: ram,
      });
      fe.close();
      fe.close();
      be.close();
      ram.close();
      ram.close();
      assert.equal(fe.closedByPeer, false);
    }
    await settle();
    assert.equal(fdCount(), before);
  });

  test('connect() to a missing socket throws ERR_FRONTEND_CONNECT', () => {
    assert.throws(
      () => VhostUserFrontend.connect('/nonexistent/vhu.sock'),
      (err: unknown) => {
        assert.equal((err as { code?: string }).code, 'ERR_FRONTEND_CONNECT');
        assert.equal((err as { cause?: { code?: string } }).cause?.code, 'ENOENT');
        return true;
      },
    );
  });

  test('choreography state errors', async (t) => {
    const { fe } = FakeBackend.pair(t);
    const ram = new GuestRam();
    t.after(() => ram.close());
    await assert.rejects(fe.start({ features: 0n, queues: [{ size: 8 }], memory: ram }), {
      code: 'ERR_FRONTEND_STATE',
    });
    await assert.rejects(fe.stop(), { code: 'ERR_FRONTEND_STATE' });
    await fe.init({ numQueues: 1 });
    await assert.rejects(fe.init({ numQueues: 1 }), { code: 'ERR_FRONTEND_STATE' });
    await assert.rejects(fe.start({ features: 0n, queues: [{ size: 8 }, { size: 8 }], memory: ram }), {
      code: 'ERR_FRONTEND_ARG',
    });
    await assert.rejects(fe.start({ features: 0n, queues: [{ size: 8 }], memory: ram, useMemSlots: true }), {
      code: 'ERR_FRONTEND_UNSUPPORTED',
    });
  });
});
