// A front-end that lies about its guest memory file, or shrinks it after SET_MEM_TABLE, must not
// take the daemon (and every other guest) down with SIGBUS: the table is refused, or the faulting
// connection alone is closed.
import assert from 'node:assert/strict';
import { ftruncateSync } from 'node:fs';
import { describe, test } from 'node:test';
import { CanQueue } from '../../src/core/devices/can/constants.js';
import { VirtioFeature } from '../../src/core/virtio/features.js';
import { UVA_BASE } from '../../src/node/frontend/guest-ram.js';
import { StructuredLogger } from '../../src/node/log.js';
import { native } from '../../src/node/native/addon.js';
import {
  connect,
  frame,
  hostPort,
  startDriver,
  startTestDaemon,
  waitDisconnected,
  waitFor,
} from '../helpers/vhost-user.js';

const MiB = 1024 * 1024;

function captureLog(): { log: StructuredLogger; lines: string[] } {
  const lines: string[] = [];
  return { log: new StructuredLogger({ level: 'info', write: (l) => lines.push(l) }), lines };
}

describe('guest memory files that lie', () => {
  test('a region larger than its file is refused; the ring placed past EOF never faults', async (t) => {
    const { can, paths } = startTestDaemon(t, { sockets: 2 });
    const { fe } = connect(t, paths[0]!);
    const faultsBefore = native.memoryFaults();
    const memfd = native.memfdCreate('short', 1 * MiB);
    t.after(() => native.close(memfd));
    await fe.init({ numQueues: 3 });
    // The external reproduction: 1 MiB memfd, a region that claims 4 MiB, a ring at 2 MiB.
    const region = { guestPhysAddr: 0, size: 4 * MiB, userAddr: UVA_BASE, mmapOffset: 0 };
    assert.equal(await fe.setMemTable([region], [memfd], { needReply: true }), 1, 'table refused');
    // mmap_offset itself past the end of the file.
    const past = { guestPhysAddr: 0, size: MiB, userAddr: UVA_BASE, mmapOffset: 2 * MiB };
    assert.equal(await fe.setMemTable([past], [memfd], { needReply: true }), 1, 'offset past EOF refused');
    // The same through ADD_MEM_REG.
    assert.equal(await fe.addMemReg(region, memfd, { needReply: true }), 1, 'ADD_MEM_REG refused');
    const ring = 2 * MiB;
    await fe.setVringNum(CanQueue.TX, 16);
    await fe.setVringAddr({
      index: CanQueue.TX,
      flags: 0,
      desc: UVA_BASE + ring,
      used: UVA_BASE + ring + 0x1000,
      avail: UVA_BASE + ring + 0x800,
      log: 0,
    });
    await fe.setVringBase(CanQueue.TX, 0);
    const kick = native.eventfdCreate(0, true);
    t.after(() => native.close(kick));
    await fe.setVringKick(CanQueue.TX, kick);
    await fe.setVringEnable(CanQueue.TX, true);
    native.eventfdWrite(kick, 1);
    // The connection answers (the ring has no memory, so the device is marked broken, not the daemon).
    assert.ok((await fe.getFeatures()) & (1n << BigInt(VirtioFeature.VERSION_1)));
    const session = can.daemon.connection(0)!.session;
    assert.equal(session.broken?.code, 'ERR_VQ_RING_ADDR');
    assert.equal(session.memory.regions.length, 0);
    assert.equal(native.memoryFaults(), faultsBefore, 'nothing was ever touched past EOF');
    // Another guest is served as usual.
    const g1 = await startDriver(t, paths[1]!);
    assert.equal(await g1.drv.startController(), 0);
  });

  test('a file shrunk after SET_MEM_TABLE closes that connection only; the other guest keeps working', async (t) => {
    const { log, lines } = captureLog();
    const { can, paths } = startTestDaemon(t, { sockets: 2, log });
    const g0 = await startDriver(t, paths[0]!);
    const g1 = await startDriver(t, paths[1]!);
    assert.equal(await g0.drv.startController(), 0);
    assert.equal(await g1.drv.startController(), 0);
    const host = hostPort(t, can.hubFor(0));
    const faultsBefore = native.memoryFaults();
    // The front-end truncates guest RAM to its first page: the rings (allocated further in) are gone.
    ftruncateSync(g0.ram.fdFor(0), 4096);
    g0.drv.tx.notify();
    await waitDisconnected(can, 0);
    assert.ok(native.memoryFaults() > faultsBefore, 'the guard absorbed the fault');
    const closing = lines.find((l) => l.includes('closing connection') && l.includes('ERR_VU_MEM_FAULT'));
    assert.ok(closing, `closing line in:\n${lines.join('\n')}`);
    assert.match(closing, /socket=0/);
    // Guest 1 is untouched: both directions still work.
    assert.equal(await g1.drv.send({ id: 0x101, data: [1, 2] }), 0);
    assert.deepEqual(
      host.frames().map((f) => f.id),
      [0x101],
    );
    host.transmit(frame(0x202, [3]));
    assert.equal((await g1.drv.waitFrames(1))[0]!.id, 0x202);
    assert.equal(can.daemon.status()[1]!.connected, true);
    // Socket 0 accepts a new front-end with a good file.
    const again = await startDriver(t, paths[0]!);
    assert.equal(await again.drv.startController(), 0);
  });

  test('a fault while delivering RX (triggered by another guest) closes the shrunk guest only', async (t) => {
    const { can, paths } = startTestDaemon(t, { sockets: 2 });
    const g0 = await startDriver(t, paths[0]!);
    const g1 = await startDriver(t, paths[1]!);
    assert.equal(await g0.drv.startController(), 0);
    assert.equal(await g1.drv.startController(), 0);
    ftruncateSync(g0.ram.fdFor(0), 4096);
    // Guest 1 transmits; guest 0's device writes the frame into its (vanished) RX ring.
    assert.equal(await g1.drv.send({ id: 0x303, data: [4] }), 0);
    await waitDisconnected(can, 0);
    assert.equal(await g1.drv.send({ id: 0x304, data: [5] }), 0);
    assert.equal(can.daemon.status()[1]!.connected, true);
    await waitFor('socket 0 free', () => (can.daemon.connection(0) === null ? true : undefined));
  });
});
