// Stream framing over the real socket: split and merged messages with their fds, oversized and
// badly versioned messages, abrupt disconnects (docs/protocol-notes.md 1.1; the framer's disconnect rules).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { encodeMessage, encodeU64, encodeVringFdIndex } from '../../src/core/vhost-user/codec.js';
import { FrontendReq, HeaderFlag, REPLY_FLAGS } from '../../src/core/vhost-user/protocol.js';
import { hasFeature, VirtioFeature } from '../../src/core/virtio/features.js';
import { native } from '../../src/node/native/addon.js';
import { MAX_UNREAD_REPLY_BYTES } from '../../src/node/vhost-user/connection.js';
import {
  connect,
  fdCount,
  header,
  settle,
  startTestDaemon,
  waitConnected,
  waitDisconnected,
} from '../helpers/vhost-user.js';

const U64 = (p: Uint8Array): bigint => new DataView(p.buffer, p.byteOffset, 8).getBigUint64(0, true);
const NEED = HeaderFlag.VERSION | HeaderFlag.NEED_REPLY;

describe('framing', () => {
  test('a message written byte by byte is parsed once complete', async (t) => {
    const { paths } = startTestDaemon(t);
    const { fe } = connect(t, paths[0]!);
    const msg = encodeMessage(FrontendReq.GET_FEATURES, HeaderFlag.VERSION);
    for (const b of msg) {
      fe.sendRaw(Uint8Array.of(b));
      await sleep(2);
    }
    const r = await fe.readReplyRaw();
    assert.equal(r.request, FrontendReq.GET_FEATURES);
    assert.equal(r.flags, REPLY_FLAGS);
    assert.ok(hasFeature(U64(r.payload), VirtioFeature.VERSION_1));
  });

  test('an fd-carrying message split across writes keeps its fd', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { fe } = connect(t, paths[0]!);
    await fe.init({ numQueues: 3 });
    const efd = native.eventfdCreate(0, true);
    t.after(() => native.close(efd));
    const msg = encodeMessage(FrontendReq.SET_VRING_CALL, NEED, encodeVringFdIndex(1, false));
    fe.sendRaw(msg.subarray(0, 1), [efd]); // the fd travels with the first byte
    for (let i = 1; i < msg.length; i += 3) {
      await sleep(2);
      fe.sendRaw(msg.subarray(i, i + 3));
    }
    const r = await fe.readReplyRaw();
    assert.equal(r.request, FrontendReq.SET_VRING_CALL);
    assert.equal(U64(r.payload), 0n, 'the fd was attributed to this message');
    assert.equal(can.daemon.connection(0)!.session.stats.rejected, 0);
  });

  test('several messages in one write are all handled, in order, with their fds', async (t) => {
    const { paths } = startTestDaemon(t);
    const { fe } = connect(t, paths[0]!);
    await fe.init({ numQueues: 3 });
    const efd = native.eventfdCreate(0, true);
    t.after(() => native.close(efd));
    const parts = [
      encodeMessage(FrontendReq.GET_FEATURES, HeaderFlag.VERSION),
      encodeMessage(FrontendReq.SET_VRING_NUM, NEED, new Uint8Array([0, 0, 0, 0, 64, 0, 0, 0])),
      encodeMessage(FrontendReq.GET_PROTOCOL_FEATURES, HeaderFlag.VERSION),
      encodeMessage(FrontendReq.SET_VRING_NUM, NEED, new Uint8Array([0, 0, 0, 0, 3, 0, 0, 0])),
    ];
    const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let off = 0;
    for (const p of parts) {
      all.set(p, off);
      off += p.length;
    }
    fe.sendRaw(all);
    const replies = [
      await fe.readReplyRaw(),
      await fe.readReplyRaw(),
      await fe.readReplyRaw(),
      await fe.readReplyRaw(),
    ];
    assert.deepEqual(
      replies.map((r) => r.request),
      [
        FrontendReq.GET_FEATURES,
        FrontendReq.SET_VRING_NUM,
        FrontendReq.GET_PROTOCOL_FEATURES,
        FrontendReq.SET_VRING_NUM,
      ],
    );
    assert.equal(U64(replies[1]!.payload), 0n);
    assert.notEqual(U64(replies[3]!.payload), 0n, 'size 3 refused');
    // An fd message followed by another message in the same write: the fd belongs to the first.
    const two = new Uint8Array([
      ...encodeMessage(FrontendReq.SET_VRING_ERR, NEED, encodeVringFdIndex(0, false)),
      ...encodeMessage(FrontendReq.SET_OWNER, NEED),
    ]);
    fe.sendRaw(two, [efd]);
    const [a, b] = [await fe.readReplyRaw(), await fe.readReplyRaw()];
    assert.equal(a.request, FrontendReq.SET_VRING_ERR);
    assert.equal(U64(a.payload), 0n);
    assert.equal(b.request, FrontendReq.SET_OWNER);
    assert.equal(U64(b.payload), 0n);
  });

  test('an oversized message (size 1 MiB) closes that connection; the daemon accepts a new one', async (t) => {
    const { can, paths } = startTestDaemon(t);
    await settle();
    const fds = fdCount();
    {
      const { fe, ram } = connect(t, paths[0]!);
      await fe.init({ numQueues: 3 });
      fe.sendRaw(header(FrontendReq.SET_CONFIG, HeaderFlag.VERSION, 1024 * 1024));
      await fe.closed;
      assert.equal(fe.closedByPeer, true);
      fe.close();
      ram.close();
    }
    await waitDisconnected(can);
    const { fe, ram } = connect(t, paths[0]!);
    await waitConnected(can);
    const init = await fe.init({ numQueues: 3 });
    assert.equal(init.queueNum, 3);
    fe.close();
    ram.close();
    await waitDisconnected(can);
    await settle();
    assert.equal(fdCount(), fds, 'nothing leaked by the dropped connection');
  });

  test('bad version bits close the connection', async (t) => {
    const { can, paths } = startTestDaemon(t);
    for (const flags of [0x0, 0x2, 0x3, 0x6]) {
      const { fe } = connect(t, paths[0]!);
      assert.ok(hasFeature(await fe.getFeatures(), VirtioFeature.VERSION_1));
      fe.sendRaw(encodeMessage(FrontendReq.GET_FEATURES, flags));
      await fe.closed;
      assert.equal(fe.closedByPeer, true, `flags 0x${flags.toString(16)}`);
      await waitDisconnected(can);
    }
  });

  test('more fds than a message may carry close the connection', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const { fe } = connect(t, paths[0]!);
    await fe.init({ numQueues: 3 });
    await settle();
    const efds = Array.from({ length: 10 }, () => native.eventfdCreate(0, true));
    t.after(() => {
      for (const fd of efds) native.close(fd);
    });
    fe.sendRaw(encodeMessage(FrontendReq.SET_VRING_CALL, HeaderFlag.VERSION, encodeU64(0)), efds);
    await fe.closed;
    assert.equal(fe.closedByPeer, true);
    await waitDisconnected(can);
  });

  test('a front-end vanishing mid-message leaves nothing behind', async (t) => {
    const { can, paths } = startTestDaemon(t);
    await settle();
    const fds = fdCount();
    for (let i = 0; i < 10; i++) {
      const { fe, ram } = connect(t, paths[0]!);
      await fe.init({ numQueues: 3 });
      const efd = native.eventfdCreate(0, true);
      const msg = encodeMessage(FrontendReq.SET_VRING_KICK, HeaderFlag.VERSION, encodeVringFdIndex(0, false));
      fe.sendRaw(msg.subarray(0, 14), [efd]); // header + 2 payload bytes, with the fd
      native.close(efd);
      await sleep(5);
      fe.close();
      ram.close();
      await waitDisconnected(can);
    }
    await settle();
    assert.equal(fdCount(), fds);
  });

  test('a front-end that never reads its replies is closed at a bound, not buffered forever', async (t) => {
    const { can, paths } = startTestDaemon(t, { sockets: 2 });
    const fd = native.connectUnix(paths[0]!);
    t.after(() => native.close(fd));
    await waitConnected(can);
    const burst = new Uint8Array(12 * 256);
    for (let i = 0; i < 256; i++)
      burst.set(encodeMessage(FrontendReq.GET_FEATURES, HeaderFlag.VERSION), 12 * i);
    // ~1.2 MiB of replies are owed after 100k requests; the loop ends well before its bound.
    let sent = 0;
    const end = Date.now() + 20_000;
    while (can.daemon.status()[0]!.connected && Date.now() < end && sent < 400_000) {
      try {
        sent += native.sendMsg(fd, burst) / 12;
      } catch (err) {
        if ((err as { code?: string }).code !== 'EAGAIN') break; // EPIPE/ECONNRESET: closed by the daemon
        await sleep(1);
      }
    }
    await waitDisconnected(can);
    const owed = sent * 20;
    assert.ok(owed > MAX_UNREAD_REPLY_BYTES, `closed only after the bound (${owed} bytes owed)`);
    assert.ok(sent < 400_000, 'closed before the sender gave up');
    // The other socket is served as usual.
    const { fe } = connect(t, paths[1]!);
    assert.equal((await fe.init({ numQueues: 3 })).queueNum, 3);
  });
});
