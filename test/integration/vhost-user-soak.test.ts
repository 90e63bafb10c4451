// Soak: many connect/handshake/disconnect cycles against a daemon in a child process, so that its
// own fds, guest-memory mappings and RSS can be compared before and after. Cycles end in every
// state: before any message, mid-message, mid-handshake, with memory mapped but no ring, with TX
// kicked and not completed, with RX frames waiting for buffers, after a ring stop.
// VU_SOAK_CYCLES sets the number of cycles (default 300, a few seconds).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { CAN_NUM_QUEUES } from '../../src/core/devices/can/constants.js';
import { CanTestDriver } from '../../src/node/frontend/can-driver.js';
import { VhostUserFrontend } from '../../src/node/frontend/frontend.js';
import { GuestRam } from '../../src/node/frontend/guest-ram.js';
import { type ChildDaemon, header, startChildDaemon } from '../helpers/vhost-user.js';

const CYCLES = Number(process.env.VU_SOAK_CYCLES ?? 300);
const MB = 1024 * 1024;

async function waitFree(d: ChildDaemon): Promise<void> {
  const end = Date.now() + 5000;
  while ((await d.request({ cmd: 'status' })).status[0]!.connected) {
    if (Date.now() > end) throw new Error('the daemon kept the connection');
    await sleep(1);
  }
}

async function cycle(d: ChildDaemon, i: number): Promise<void> {
  const fe = VhostUserFrontend.connect(d.path, { timeoutMs: 5000 });
  const ram = new GuestRam();
  try {
    switch (i % 8) {
      case 0: // gone before any message
        break;
      case 1: // half a header
        fe.sendRaw(header(1, 1, 0).subarray(0, 6));
        break;
      case 2: // a request in flight
        fe.getFeatures().catch(() => {});
        break;
      case 3: // QEMU realize only
        await fe.init({ numQueues: CAN_NUM_QUEUES });
        break;
      case 4: // memory mapped, no ring started
        await fe.init({ numQueues: CAN_NUM_QUEUES });
        await fe.setMemTable(ram, { needReply: true });
        break;
      case 5: {
        // TX kicked, not waited for
        const drv = await CanTestDriver.create(fe, ram, { queueSize: 16 });
        assert.equal(await drv.startController(), 0);
        drv.sendMany(Array.from({ length: 8 }, (_, k) => ({ id: k, data: [k] }))).catch(() => {});
        break;
      }
      case 6: {
        // RX frames waiting for buffers in the device's backlog
        const drv = await CanTestDriver.create(fe, ram, { queueSize: 16, rxBuffers: 2 });
        assert.equal(await drv.startController(), 0);
        await d.request({ cmd: 'inject', n: 20 });
        break;
      }
      case 7: {
        // a clean stop first (GET_VRING_BASE on every ring)
        const drv = await CanTestDriver.create(fe, ram, { queueSize: 16 });
        assert.equal(await drv.startController(), 0);
        assert.equal(await drv.send({ id: i & 0x7ff, data: [1] }), 0);
        await drv.stop();
        break;
      }
    }
  } finally {
    fe.close();
    ram.close();
  }
  await waitFree(d);
}

describe('soak', () => {
  test(`${CYCLES} connect/handshake/disconnect cycles: the daemon's fds and mappings return to baseline, RSS stays bounded`, async (t) => {
    const d = await startChildDaemon(t);
    for (let i = 0; i < 40; i++) await cycle(d, i); // warm-up: JIT, pools, heap sizing
    await d.request({ cmd: 'gc' });
    await sleep(50);
    const before = { fds: d.fds(), memfd: d.memfdMaps(), rss: d.rss() };
    const heapBefore = (await d.request({ cmd: 'gc' })).heapUsed;
    assert.equal(before.memfd, 0, 'no guest memory mapped while nobody is connected');
    const t0 = Date.now();
    let peakRss = before.rss;
    for (let i = 0; i < CYCLES; i++) {
      await cycle(d, i);
      if (i % 100 === 99) peakRss = Math.max(peakRss, d.rss());
    }
    const elapsed = Date.now() - t0;
    // Mappings and fds are released on disconnect, not by GC finalizers: count before any GC.
    const memfdNoGc = d.memfdMaps();
    const fdsNoGc = d.fds();
    const st = await d.request({ cmd: 'gc' });
    await sleep(50);
    const after = { fds: d.fds(), memfd: d.memfdMaps(), rss: d.rss() };
    t.diagnostic(
      `${CYCLES} cycles in ${(elapsed / 1000).toFixed(1)} s; fds ${before.fds} -> ${after.fds}; ` +
        `memfd maps ${before.memfd} -> ${memfdNoGc} (no GC) -> ${after.memfd}; ` +
        `RSS ${(before.rss / MB).toFixed(1)} -> ${(after.rss / MB).toFixed(1)} MB (peak ${(peakRss / MB).toFixed(1)}); ` +
        `heapUsed after GC ${(heapBefore / MB).toFixed(1)} -> ${(st.heapUsed / MB).toFixed(1)} MB`,
    );
    assert.equal(st.status[0]!.connections, 40 + CYCLES);
    assert.equal(st.status[0]!.refused, 0);
    assert.equal(memfdNoGc, 0, 'guest memory is unmapped on disconnect');
    assert.equal(fdsNoGc, before.fds, 'fds are closed on disconnect');
    assert.equal(after.fds, before.fds);
    assert.equal(after.memfd, 0);
    // The heap after a full GC holds nothing per connection.
    assert.ok(
      st.heapUsed - heapBefore < 4 * MB,
      `heap grew ${((st.heapUsed - heapBefore) / MB).toFixed(1)} MB`,
    );
    assert.ok(after.rss - before.rss < 48 * MB, `RSS grew ${((after.rss - before.rss) / MB).toFixed(1)} MB`);
  });
});
