// The listening socket under a hostile or hurried front-end: a reconnect that arrives before the
// old connection's EOF was read is accepted (the old socket is drained first); a genuinely live
// front-end still has the socket, and a second one is refused and counted.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CAN_NUM_QUEUES } from '../../src/core/devices/can/constants.js';
import { VhostUserFrontend } from '../../src/node/frontend/frontend.js';
import { startTestDaemon, waitConnected } from '../helpers/vhost-user.js';

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
});
