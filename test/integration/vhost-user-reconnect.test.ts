// The listening socket under a hostile or hurried front-end: a reconnect that arrives before the
// old connection's EOF was read is accepted (the old socket is drained first); a genuinely live
// front-end still has the socket, and a second one is refused and counted.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { CAN_NUM_QUEUES } from '../../src/core/devices/can/constants.js';
import { VhostUserFrontend } from '../../src/node/frontend/frontend.js';
import { startChildDaemon, startTestDaemon, waitConnected } from '../helpers/vhost-user.js';

describe('reconnect', () => {
  test('close and reconnect at once, 300 times: every fresh front-end is accepted', async (t) => {
    const { can, paths } = startTestDaemon(t);
    let fe = VhostUserFrontend.connect(paths[0]!, { timeoutMs: 3000 });
    t.after(() => fe.close());
    for (let i = 0; i < 300; i++) {
      const init = await fe.init({ numQueues: CAN_NUM_QUEUES });
      assert.equal(init.queueNum, CAN_NUM_QUEUES, `cycle ${i}`);
      fe.close();
      if (i % 2 === 1) {
        // A front-end that connects and gives up at once, before the daemon ran: both connections
        // wait in the accept queue, the first one already closed. Accepting it attaches it; the
        // real front-end behind it must not be refused for that.
        VhostUserFrontend.connect(paths[0]!, { timeoutMs: 3000 }).close();
      }
      // Reconnect in the same tick: the daemon sees the new connection and the old one's EOF in
      // the same event loop turn, in either order.
      fe = VhostUserFrontend.connect(paths[0]!, { timeoutMs: 3000 });
    }
    await fe.init({ numQueues: CAN_NUM_QUEUES });
    const s = can.daemon.status()[0]!;
    assert.equal(s.refused, 0);
    assert.equal(s.connections, 301 + 150);
  });

  test('a second front-end while the first is live is refused and counted; the first keeps working', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const first = VhostUserFrontend.connect(paths[0]!, { timeoutMs: 3000 });
    t.after(() => first.close());
    await first.init({ numQueues: CAN_NUM_QUEUES });
    await waitConnected(can);
    // The first one has a message in flight when the second connects: draining it must not close it.
    const pending = first.getFeatures();
    const second = VhostUserFrontend.connect(paths[0]!, { timeoutMs: 3000 });
    t.after(() => second.close());
    await assert.rejects(second.getFeatures(), { code: 'ERR_FRONTEND_CLOSED' });
    await pending;
    assert.equal(can.daemon.status()[0]!.refused, 1);
    assert.equal(await first.getQueueNum(), CAN_NUM_QUEUES);
  });

  test('accept failing with EMFILE backs off (no busy loop, one log line) and recovers once fds are free', async (t) => {
    const d = await startChildDaemon(t, { nofile: 256 });
    const filled = await d.request({ cmd: 'fill-fds' });
    assert.ok(filled.filled > 0, 'the child filled its fd table');
    // A front-end connects: the connection waits in the listen queue, and accept fails.
    const fe = VhostUserFrontend.connect(d.path, { timeoutMs: 10_000 });
    t.after(() => fe.close());
    const features = fe.getFeatures();
    features.catch(() => {}); // awaited below; a failed assertion before must not leave it unhandled
    await sleep(100);
    const cpu0 = d.cpuTicks();
    const t0 = Date.now();
    await sleep(1500);
    const ticks = d.cpuTicks() - cpu0;
    const seconds = (Date.now() - t0) / 1000;
    const during = await d.request({ cmd: 'status' });
    t.diagnostic(
      `${ticks} CPU ticks in ${seconds.toFixed(1)} s, ${during.status[0]!.acceptErrors} failed accepts`,
    );
    // A busy loop would burn a whole core (100 ticks per second) and log every turn.
    assert.ok(ticks / seconds < 20, `${ticks} CPU ticks in ${seconds.toFixed(1)} s while accept failed`);
    const logged = Object.entries(during.logs).filter(([m]) => m.startsWith('accept failed'));
    assert.deepEqual(
      logged.map(([, n]) => n),
      [1],
      'logged once per episode',
    );
    const s = during.status[0]!;
    assert.equal(s.connected, false);
    assert.equal(s.acceptBackoff, true);
    // Back-off 100, 200, 400, 800, 1000 ms...: a handful of attempts, not thousands.
    assert.ok(s.acceptErrors >= 2 && s.acceptErrors <= 10, `${s.acceptErrors} failed accepts`);
    await d.request({ cmd: 'free-fds' });
    await features; // accepted at the next retry (at most a second later)
    const after = await d.request({ cmd: 'status' });
    assert.equal(after.status[0]!.connected, true);
    assert.equal(after.status[0]!.acceptBackoff, false);
  });
});
