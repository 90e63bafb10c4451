// Resource hygiene across the whole stack (front-end and back-end share this process, so the
// counts cover both): superseded fds are closed, connections leave nothing behind
//, repeated memory tables do not accumulate mappings.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CanTestDriver } from '../../src/node/frontend/can-driver.js';
import { VhostUserFrontend } from '../../src/node/frontend/frontend.js';
import { GuestRam } from '../../src/node/frontend/guest-ram.js';
import { native } from '../../src/node/native/addon.js';
import {
  connect,
  fdCount,
  hostPort,
  mapsCount,
  memfdMaps,
  settle,
  startDriver,
  startTestDaemon,
  waitConnected,
  waitDisconnected,
  warmHeap,
} from '../helpers/vhost-user.js';

describe('resources', () => {
  test('SET_VRING_CALL / ERR / KICK repeated with new fds: the fd count stays flat', async (t) => {
    const { paths } = startTestDaemon(t);
    const { fe, drv } = await startDriver(t, paths[0]!);
    await settle();
    const before = fdCount();
    for (let i = 0; i < 200; i++) {
      const call = native.eventfdCreate(0, true);
      assert.equal(await fe.setVringCall(i % 3, call, { needReply: true }), 0);
      native.close(call);
      const err = native.eventfdCreate(0, true);
      assert.equal(await fe.setVringErr(i % 3, err, { needReply: true }), 0);
      native.close(err);
    }
    await settle();
    assert.equal(fdCount(), before);
    // Put the real call fds back and check the device still signals them.
    for (const q of drv.queues) await fe.setVringCall(q.index, q.callFd, { needReply: true });
    assert.equal(await drv.startController(), 0);
  });

  test('the back-end channel replaced repeatedly: no fd growth', async (t) => {
    const { paths } = startTestDaemon(t);
    const { fe } = connect(t, paths[0]!);
    await fe.init({ numQueues: 3 });
    await settle();
    const before = fdCount();
    for (let i = 0; i < 50; i++) assert.equal(await fe.setBackendReqFd({ needReply: true }), 0);
    await settle();
    assert.equal(fdCount(), before);
  });

  test('200 connect/disconnect cycles leak no fds and no mappings', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const host = hostPort(t, can.hubFor(0));
    const cycle = async (i: number): Promise<void> => {
      const fe = VhostUserFrontend.connect(paths[0]!, { timeoutMs: 3000 });
      const ram = new GuestRam();
      try {
        await waitConnected(can);
        if (i % 4 === 3) {
          await fe.init({ numQueues: 3 }); // QEMU realize only, then gone
        } else {
          const drv = await CanTestDriver.create(fe, ram, { queueSize: 16 });
          if (i % 4 === 0) {
            assert.equal(await drv.startController(), 0);
            assert.equal(await drv.send({ id: i & 0x7ff, data: [i & 0xff] }), 0);
          }
          await drv.stop();
        }
      } finally {
        fe.close();
        ram.close();
      }
      await waitDisconnected(can);
    };
    for (let i = 0; i < 12; i++) await cycle(i); // warm-up: JIT, lazily created pools
    warmHeap();
    await settle();
    const fds = fdCount();
    const maps = mapsCount();
    const memfds = memfdMaps();
    const started = Date.now();
    for (let i = 0; i < 200; i++) await cycle(i);
    await settle();
    t.diagnostic(`200 cycles in ${Date.now() - started} ms`);
    assert.equal(fdCount(), fds, 'fd count');
    assert.equal(memfdMaps(), memfds, 'guest RAM mappings');
    assert.equal(memfds, 0);
    assert.ok(mapsCount() <= maps + 8, `maps lines ${mapsCount()} vs ${maps}`);
    assert.equal(host.frames().length, 3 + 50);
    assert.equal(can.daemon.status()[0]!.refused, 0);
  });
});
