/**
 * Two daemons joined by socketcand: daemon B's `--link default=socketcand://ADDR:PORT/default`
 * to daemon A's `--socketcand-listen`, a guest (the TS front-end driver) on each. Frames both
 * ways, order kept per sender, nothing duplicated, nothing looped back; the same with links both
 * ways; a link that loses its server is retried and counts what it dropped meanwhile.
 *
 * The addresses are parameters (SOCKETCAND_TEST_ADDR_A, SOCKETCAND_TEST_ADDR_B, default
 * 127.0.0.1) so the same scenario can run between network namespaces.
 */
import assert from 'node:assert/strict';
import type { TestContext } from 'node:test';
import { describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { CanDaemon } from '../../src/node/can/can-daemon.js';
import type { CanRxFrame, CanTestDriver } from '../../src/node/frontend/can-driver.js';
import type { SocketcandLink } from '../../src/node/net/socketcand-link.js';
import { startDriver, startTestDaemon, waitFor } from '../helpers/vhost-user.js';

const ADDR_A = process.env.SOCKETCAND_TEST_ADDR_A ?? '127.0.0.1';
const ADDR_B = process.env.SOCKETCAND_TEST_ADDR_B ?? '127.0.0.1';
const url = (addr: string, port: number, bus = 'default'): string =>
  `socketcand://${addr.includes(':') ? `[${addr}]` : addr}:${port}/${bus}`;

interface Side {
  can: CanDaemon;
  drv: CanTestDriver;
  port: number;
}

async function side(t: TestContext, listen: string | null, links: string[], port = 0): Promise<Side> {
  const { can, paths } = startTestDaemon(t, {
    ...(listen === null ? {} : { socketcand: { listen: { host: listen, port } } }),
    ports: links.map((value) => ({ kind: 'link' as const, bus: 'default', value })),
  });
  if (can.socketcand !== null) await can.socketcand.ready;
  const { drv } = await startDriver(t, paths[0]!, { queueSize: 256 });
  assert.equal(await drv.startController(), 0);
  return { can, drv, port: can.socketcand?.address.port ?? 0 };
}

function linkOf(can: CanDaemon): SocketcandLink {
  return can.attachments.find((a) => a.kind === 'link') as SocketcandLink;
}

const seqFrames = (base: number, n: number): { id: number; data: number[] }[] =>
  Array.from({ length: n }, (_, i) => ({ id: base, data: [i >> 8, i & 0xff, base & 0xff] }));

/** Asserts the frames from one sender arrived once each, in order. */
function assertSequence(rx: CanRxFrame[], id: number, n: number, who: string): void {
  const mine = rx.filter((f) => f.id === id).map((f) => (f.data[0]! << 8) | f.data[1]!);
  assert.deepEqual(
    mine,
    Array.from({ length: n }, (_, i) => i),
    `${who}: frames of ${id.toString(16)} once each, in order`,
  );
}

/** Sends `n` sequence frames from both guests at once; each must see the other's, and not its own. */
async function exchange(a: Side, b: Side, n: number): Promise<void> {
  a.drv.takeReceived();
  b.drv.takeReceived();
  const [ra, rb] = await Promise.all([
    a.drv.sendMany(seqFrames(0x1a, n)),
    b.drv.sendMany(seqFrames(0x1b, n)),
  ]);
  assert.ok(ra.every((r) => r === 0) && rb.every((r) => r === 0), 'every transmit succeeded');
  const gotA = await a.drv.waitFrames(n, 10_000);
  const gotB = await b.drv.waitFrames(n, 10_000);
  await sleep(300); // anything looping or duplicated would show up now
  const allA = a.drv.received();
  const allB = b.drv.received();
  assert.equal(allA.length, n, 'A got exactly the frames of B');
  assert.equal(allB.length, n, 'B got exactly the frames of A');
  assertSequence(gotA, 0x1b, n, 'guest on A');
  assertSequence(gotB, 0x1a, n, 'guest on B');
}

describe('socketcand link between two daemons', () => {
  test('frames both ways, order kept per sender, nothing duplicated or looped', async (t) => {
    const a = await side(t, ADDR_A, []);
    const b = await side(t, null, [url(ADDR_A, a.port)]);
    const link = linkOf(b.can);
    await waitFor('the link up', () => (link.state === 'up' ? true : undefined), 5000);
    await sleep(100); // the server holds frames briefly after rawmode
    await exchange(a, b, 500);
    const s = link.stats();
    assert.equal(s.state, 'up');
    assert.equal(s.framesOut, 500);
    assert.equal(s.framesIn, 500);
    assert.equal(s.droppedWhileDown, 0);
    assert.notEqual(s.peer, '-', 'the server introduced itself');
    // The bus counters agree: each bus carried 1000 frames, no more.
    assert.equal(a.can.hubs.get('default').stats().frames, 1000);
    assert.equal(b.can.hubs.get('default').stats().frames, 1000);
    const server = a.can.socketcand!;
    assert.equal(server.counters.framesIn, 500);
    assert.equal(server.counters.framesOut, 500);
    assert.equal(server.counters.protocolErrors, 0);
    // CAN FD, RTR and extended frames cross the link unchanged.
    b.drv.takeReceived();
    assert.equal(await a.drv.send({ id: 0x1fffffff, extended: true, data: [1] }), 0);
    assert.equal(await a.drv.send({ id: 0x321, rtr: true, len: 3 }), 0);
    assert.equal(await a.drv.send({ id: 0x100, fd: true, data: Array.from({ length: 64 }, (_, i) => i) }), 0);
    const rx = await b.drv.waitFrames(3);
    assert.deepEqual(
      rx.map((f) => [f.id, f.extended, f.rtr, f.fd, f.length, f.data.length]),
      [
        [0x1fffffff, true, false, false, 1, 1],
        [0x321, false, true, false, 3, 0],
        [0x100, false, false, true, 64, 64],
      ],
    );
  });

  test('two daemons linked both ways carry each frame once', async (t) => {
    const portA = await freePort(ADDR_A);
    const portB = await freePort(ADDR_B);
    const a = await side(t, ADDR_A, [url(ADDR_B, portB)], portA);
    const b = await side(t, ADDR_B, [url(ADDR_A, portA)], portB);
    const linkAB = linkOf(a.can);
    const linkBA = linkOf(b.can);
    await waitFor(
      'both links up',
      () => (linkAB.state === 'up' && linkBA.state === 'up' ? true : undefined),
      8000,
    );
    // Each daemon sees the pair twice (its link, and the other's link as a server client): one of
    // the two carries frames, on both ends the same one.
    await waitFor('the redundant connection muted', () => {
      const mutedA = Number(linkAB.muted) + a.can.socketcand!.clients().filter((c) => c.muted).length;
      const mutedB = Number(linkBA.muted) + b.can.socketcand!.clients().filter((c) => c.muted).length;
      return mutedA === 1 && mutedB === 1 ? true : undefined;
    });
    assert.notEqual(linkAB.muted, linkBA.muted, 'the same connection carries on both ends');
    await sleep(100);
    await exchange(a, b, 300);
    assert.equal(a.can.hubs.get('default').stats().frames, 600, 'bus A carried each frame once');
    assert.equal(b.can.hubs.get('default').stats().frames, 600, 'bus B carried each frame once');
    // The carrying connection goes away: the other one takes over.
    const carrier = linkAB.muted ? linkBA : linkAB;
    const spare = carrier === linkAB ? linkBA : linkAB;
    carrier.close();
    await waitFor('the spare link unmuted', () => (spare.muted ? undefined : true), 5000);
    await sleep(100);
    await exchange(a, b, 100);
  });

  test('a link whose server goes away is retried; frames meanwhile are dropped and counted', async (t) => {
    const portA = await freePort(ADDR_A);
    const a1 = await side(t, ADDR_A, [], portA);
    const b = await side(t, null, [url(ADDR_A, portA)]);
    const link = linkOf(b.can);
    await waitFor('the link up', () => (link.state === 'up' ? true : undefined), 5000);
    a1.can.stop();
    await waitFor('the link down', () => (link.state === 'down' ? true : undefined), 5000);
    const results = await b.drv.sendMany(seqFrames(0x1b, 20));
    assert.ok(
      results.every((r) => r === 0),
      'the guest sends on: its bus is fine',
    );
    await waitFor('drops counted', () => (link.stats().droppedWhileDown === 20 ? true : undefined));
    const a2 = await side(t, ADDR_A, [], portA);
    await waitFor('the link up again', () => (link.state === 'up' ? true : undefined), 8000);
    const s = link.stats();
    assert.equal(s.ups, 2);
    assert.ok(Number(s.downs) >= 1 && Number(s.attempts) >= 2);
    assert.match(String(s.lastError), /closed|ECONNREFUSED|ECONNRESET/);
    await sleep(100);
    await exchange(a2, b, 50);
  });

  test('a link to a bus the server does not have stays down with the reason, and keeps trying', async (t) => {
    const a = await side(t, ADDR_A, []);
    const b = await side(t, null, [url(ADDR_A, a.port, 'nosuchbus')]);
    const link = linkOf(b.can);
    await waitFor('two attempts', () => (Number(link.stats().attempts) >= 2 ? true : undefined), 5000);
    const s = link.stats();
    assert.equal(s.state, 'down');
    assert.match(String(s.lastError), /could not open bus nosuchbus: no such bus/);
    assert.equal(s.ups, 0);
  });
});

/** A TCP port free right now on `host` (for daemons that must know each other's port up front). */
async function freePort(host: string): Promise<number> {
  const { createServer } = await import('node:net');
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen({ host, port: 0 }, () => {
      const a = srv.address();
      const port = typeof a === 'object' && a !== null ? a.port : 0;
      srv.close(() => resolve(port));
    });
  });
}
