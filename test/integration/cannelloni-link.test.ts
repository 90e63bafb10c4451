/**
 * cannelloni links on loopback: two daemons linked to each other with front-end guests on both,
 * and a daemon linked to a raw UDP socket standing in for the peer (so every datagram can be
 * written and checked byte by byte, malformed ones included). The multi-host version, with
 * daemons in network namespaces, is test/integration/netns-links.test.ts (with socketcand beside it).
 */
import assert from 'node:assert/strict';
import { createSocket, type Socket } from 'node:dgram';
import { type TestContext, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { CanDaemon } from '../../src/node/can/can-daemon.js';
import type { CanRxFrame } from '../../src/node/frontend/can-driver.js';
import { cli } from '../helpers/cli.js';
import { hostPort, startDriver, startTestDaemon, waitFor } from '../helpers/vhost-user.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

/** `n` UDP ports free on 127.0.0.1 right now. */
async function freePorts(n: number): Promise<number[]> {
  const socks = await Promise.all(
    Array.from({ length: n }, async () => {
      const s = createSocket('udp4');
      await new Promise<void>((r) => s.bind(0, '127.0.0.1', r));
      return s;
    }),
  );
  const ports = socks.map((s) => s.address().port);
  for (const s of socks) s.close();
  return ports;
}

/** A raw UDP socket on 127.0.0.1:port recording what it receives; closed after the test. */
async function rawPeer(t: TestContext, port: number): Promise<Socket & { got: Buffer[] }> {
  const s = Object.assign(createSocket('udp4'), { got: [] as Buffer[] });
  s.on('message', (m) => s.got.push(m));
  await new Promise<void>((r) => s.bind(port, '127.0.0.1', r));
  t.after(() => {
    try {
      s.close();
    } catch {
      /* closed by the test */
    }
  });
  return s;
}

function send(s: Socket, bytes: Buffer, port: number): Promise<void> {
  return new Promise((resolve, reject) =>
    s.send(bytes, port, '127.0.0.1', (e) => (e ? reject(e) : resolve())),
  );
}

function linkOf(can: CanDaemon) {
  const a = can.attachments.find((x) => x.kind === 'link');
  assert.ok(a, 'the link is attached');
  return a;
}

const statOf = (can: CanDaemon, key: string): unknown => linkOf(can).stats()[key];
const waitStat = (can: CanDaemon, key: string, want: (v: never) => boolean, ms = 3000) =>
  waitFor(`link ${key}`, () => (want(statOf(can, key) as never) ? true : undefined), ms);

const summary = (f: CanRxFrame): string =>
  `${f.id.toString(16)}${f.extended ? 'x' : ''}${f.fd ? 'F' : ''}${f.rtr ? 'R' : ''}#${Buffer.from(f.data).toString('hex')}`;

test('two daemons linked over cannelloni share a bus: frames both ways, FD and RTR, order kept, nothing looped', async (t) => {
  const [pa, pb] = await freePorts(2);
  const a = startTestDaemon(t, {
    ports: [{ kind: 'link', bus: 'default', value: `cannelloni://127.0.0.1:${pb}?local=127.0.0.1:${pa}` }],
  });
  const b = startTestDaemon(t, {
    ports: [{ kind: 'link', bus: 'default', value: `cannelloni://127.0.0.1:${pa}?local=127.0.0.1:${pb}` }],
  });
  await waitStat(a.can, 'state', (v) => v === 'up');
  await waitStat(b.can, 'state', (v) => v === 'up');
  const { drv: ga } = await startDriver(t, a.paths[0]!);
  const { drv: gb } = await startDriver(t, b.paths[0]!);
  assert.equal(await ga.startController(), 0);
  assert.equal(await gb.startController(), 0);
  assert.ok(ga.fdNegotiated && gb.fdNegotiated);

  const N = 500;
  const fromA = Array.from({ length: N }, (_, i) =>
    i % 50 === 7
      ? { id: 0x100 + (i % 16), fd: true, data: Array.from({ length: 64 }, (_, k) => (i + k) & 0xff) }
      : i % 50 === 9
        ? { id: 0x1abcd00 + i, extended: true, rtr: true, len: i % 9 }
        : { id: 0x100 + (i % 16), data: [i & 0xff, i >> 8] },
  );
  const fromB = Array.from({ length: N }, (_, i) => ({ id: 0x200, data: [i & 0xff, i >> 8, 0xbb] }));
  const [ra, rb] = await Promise.all([ga.sendMany(fromA), gb.sendMany(fromB)]);
  assert.ok(ra.every((r) => r === 0) && rb.every((r) => r === 0));
  const gotB = await gb.waitFrames(N, 5000);
  const gotA = await ga.waitFrames(N, 5000);
  const want = (frames: typeof fromA) =>
    frames.map((f) =>
      summary({
        id: f.id,
        extended: f.extended ?? false,
        fd: f.fd ?? false,
        rtr: f.rtr ?? false,
        data: Uint8Array.from(f.rtr ? [] : (f.data ?? [])),
      } as CanRxFrame),
    );
  assert.deepEqual(gotB.map(summary), want(fromA), 'B got all of A, in order');
  assert.deepEqual(gotA.map(summary), want(fromB), 'A got all of B, in order');
  assert.equal(
    gotB.filter((f) => f.rtr).reduce((s, f) => s + f.length, 0),
    fromA.filter((f) => f.rtr).reduce((s, f) => s + (f.len ?? 0), 0),
    'RTR DLCs carried',
  );

  // Nothing circulates: once quiet, each bus carried exactly N + N frames and stays there.
  await sleep(300);
  for (const d of [a, b]) assert.equal(d.can.hubs.get('default').stats().frames, 2 * N);
  assert.equal(ga.receivedCount, N, 'A never got its own frames back');
  assert.equal(gb.receivedCount, N);
  const sa = linkOf(a.can).stats();
  const sb = linkOf(b.can).stats();
  assert.equal(sa.txFrames, N);
  assert.equal(sa.rxFrames, N);
  assert.equal(sb.txFrames, N);
  assert.equal(sb.rxFrames, N);
  for (const s of [sa, sb]) {
    assert.deepEqual(
      [
        s.rxLost,
        s.rxMalformed,
        s.rxSkipped,
        s.rxForeign,
        s.txDroppedDown,
        s.txDroppedOverflow,
        s.txSendErrors,
      ],
      [0, 0, 0, 0, 0, 0, 0],
    );
    assert.ok((s.txDatagrams as number) < N, `frames are batched into datagrams (${s.txDatagrams})`);
  }
});

test('against a raw peer: exact datagrams out, every kind of malformed datagram counted, the link keeps working', async (t) => {
  const [pLink, pPeer, pStranger] = await freePorts(3);
  const peer = await rawPeer(t, pPeer!);
  const stranger = await rawPeer(t, pStranger!);
  const d = startTestDaemon(t, {
    ports: [
      {
        kind: 'link',
        bus: 'default',
        value: `cannelloni://127.0.0.1:${pPeer}?local=127.0.0.1:${pLink}&keepalive=0`,
      },
    ],
  });
  await waitStat(d.can, 'state', (v) => v === 'up');
  const { drv: g } = await startDriver(t, d.paths[0]!);
  assert.equal(await g.startController(), 0);
  const tap = hostPort(t, d.can.hubs.get('default'), 'tap');
  // The link announces itself with one empty datagram when it binds.
  await waitFor('the bind keepalive', () => (peer.got.length >= 1 ? true : undefined));
  assert.equal(peer.got[0]!.toString('hex'), '0200000000');

  // Out: a guest's frames, byte for byte.
  assert.equal(await g.send({ id: 0x123, data: [1, 2, 3] }), 0);
  await waitFor('a data datagram', () => (peer.got.length >= 2 ? true : undefined));
  assert.equal(peer.got[1]!.toString('hex'), hex('02 00 01 0001 00000123 03 010203').toString('hex'));
  assert.deepEqual(
    await g.sendMany([
      { id: 0x1fffffff, extended: true, fd: true, data: [9, 8] },
      { id: 0x7ff, rtr: true, len: 2 },
    ]),
    [0, 0],
  );
  await waitFor('FD + RTR', () => (peer.got.length >= 3 ? true : undefined));
  assert.equal(
    peer.got
      .slice(2)
      .map((b) => b.toString('hex'))
      .join('|'),
    hex('02 00 02 0002 9fffffff 82 04 0908 400007ff 02').toString('hex'),
  );

  // In: a sound datagram.
  await send(peer, hex('02 00 10 0002 00000042 01 aa 80000043 88 05 0102030405060708'), pLink!);
  const got = await g.waitFrames(2);
  assert.deepEqual(got.map(summary), ['42#aa', '43xF#0102030405060708']);
  // VirtIO CAN has no BRS flag; the bus itself carries it.
  assert.deepEqual(
    tap
      .frames()
      .filter((f) => f.id === 0x42 || f.id === 0x43)
      .map((f) => [f.id, f.fd, f.brs, f.esi]),
    [
      [0x42, false, false, false],
      [0x43, true, true, false],
    ],
  );
  g.takeReceived();

  // Every kind of malformed datagram: counted by reason, nothing delivered.
  const malformed: [string, string][] = [
    ['rxBadShort', '0200'],
    ['rxBadVersion', '01 00 11 0001 00000001 00'],
    ['rxBadOpCode', '02 01 11 0000'],
    ['rxBadTruncated', '02 00 11 0002 00000001 00'],
    ['rxBadTruncated', '02 00 11 0001 00000001 08 0102'],
    ['rxBadTrailing', '02 00 11 0001 00000001 00 ff'],
  ];
  for (const [, bytes] of malformed) await send(peer, hex(bytes), pLink!);
  // Sound layout, impossible frames: skipped one by one, the good one delivered.
  await send(
    peer,
    hex(
      `02 00 11 0005 00000001 09 ${'00'.repeat(9)} 00000002 c1 00 ${'00'.repeat(65)} 40000003 81 00 20000004 00 00000005 01 55`,
    ),
    pLink!,
  );
  // A sound datagram from a stranger: dropped before decoding.
  await send(stranger, hex('02 00 00 0001 00000066 00'), pLink!);
  await waitStat(d.can, 'rxSkipped', (v) => v === 4);
  await waitStat(d.can, 'rxForeign', (v) => v === 1);
  const s = linkOf(d.can).stats();
  assert.deepEqual(
    [s.rxBadShort, s.rxBadVersion, s.rxBadOpCode, s.rxBadTruncated, s.rxBadTrailing, s.rxMalformed],
    [1, 1, 1, 2, 1, 6],
  );
  assert.deepEqual(
    [s.rxSkipClassicLength, s.rxSkipFdLength, s.rxSkipRtrFd, s.rxSkipErrorFrame],
    [1, 1, 1, 1],
  );
  assert.deepEqual((await g.waitFrames(1)).map(summary), ['5#55']);
  await sleep(50);
  assert.equal(g.takeReceived().length, 1, 'only the one good frame');
  assert.equal(s.state, 'up');

  // Sequence numbers: 0x11 was the last sound one; 0x14 means 0x12 and 0x13 were lost; 0x12 late.
  await send(peer, hex('02 00 14 0000'), pLink!);
  await send(peer, hex('02 00 12 0000'), pLink!);
  await waitStat(d.can, 'rxOutOfOrder', (v) => v === 1);
  assert.equal(statOf(d.can, 'rxLost'), 2);
  assert.equal(statOf(d.can, 'rxKeepalives'), 2);

  // Still working both ways.
  await send(peer, hex('02 00 15 0001 00000077 01 77'), pLink!);
  assert.deepEqual((await g.waitFrames(1)).map(summary), ['77#77']);
  const before = peer.got.length;
  assert.equal(await g.send({ id: 0x78, data: [0x78] }), 0);
  await waitFor('the frame out', () => (peer.got.length > before ? true : undefined));
  assert.match(peer.got.at(-1)!.toString('hex'), /^0200..000100000078\d\d78$/);
  assert.equal(statOf(d.can, 'txSendErrors'), 0);

  // The peer restarts while the link stays up: its numbers start at 0 again. Three datagrams that
  // look late, then the link follows the new sequence (no datagram counted lost).
  for (const sq of ['00', '01', '02', '03', '04']) await send(peer, hex(`02 00 ${sq} 0000`), pLink!);
  await waitStat(d.can, 'rxKeepalives', (v) => v === 7);
  assert.deepEqual([statOf(d.can, 'rxOutOfOrder'), statOf(d.can, 'rxLost')], [4, 2]);
});

test('peer gone (ICMP refusal) -> down, frames dropped and counted; peer back -> up, traffic resumes', async (t) => {
  const [pLink, pPeer] = await freePorts(2);
  let peer = await rawPeer(t, pPeer!);
  const d = startTestDaemon(t, {
    ports: [
      {
        kind: 'link',
        bus: 'default',
        value: `cannelloni://127.0.0.1:${pPeer}?local=127.0.0.1:${pLink}&keepalive=50`,
      },
    ],
  });
  await waitStat(d.can, 'state', (v) => v === 'up');
  const { drv: g } = await startDriver(t, d.paths[0]!);
  assert.equal(await g.startController(), 0);
  assert.equal(await g.send({ id: 1, data: [1] }), 0);
  await waitStat(d.can, 'txFrames', (v) => v === 1);

  peer.close(); // nothing listens: the next keepalive draws an ICMP port unreachable
  await waitStat(d.can, 'state', (v) => v === 'down', 2000);
  assert.match(String(statOf(d.can, 'lastError')), /refused/);
  const results = await g.sendMany(Array.from({ length: 10 }, (_, i) => ({ id: 2, data: [i] })));
  assert.deepEqual(
    results,
    new Array(10).fill(0),
    'a guest still completes its sends (a bus does not report a missing node)',
  );
  assert.equal(statOf(d.can, 'txDroppedDown'), 10, 'frames for the link are dropped and counted while down');
  assert.equal(statOf(d.can, 'txFrames'), 1);

  // Back at the same address: its first datagram brings the link up at once.
  peer = await rawPeer(t, pPeer!);
  await send(peer, hex('02 00 00 0000'), pLink!);
  await waitStat(d.can, 'state', (v) => v === 'up', 2000);
  assert.equal(await g.send({ id: 3, data: [3] }), 0);
  await waitFor('traffic resumed', () =>
    peer.got.some((b) => b.subarray(5).toString('hex') === '000000030103') ? true : undefined,
  );
  assert.equal(statOf(d.can, 'txDroppedDown'), 10);

  // A peer that never speaks first (a real cannelloni on an idle bus) is found by probing.
  peer.close();
  await waitStat(d.can, 'state', (v) => v === 'down', 2000);
  peer = await rawPeer(t, pPeer!);
  await waitStat(d.can, 'state', (v) => v === 'up', 8000);
  const s = linkOf(d.can).stats();
  assert.ok((s.ups as number) >= 3 && (s.downs as number) >= 2, JSON.stringify(s));
});

test('a peer that sends keepalives and falls silent is down after the timeout; its next datagram brings it back', async (t) => {
  const [pLink, pPeer] = await freePorts(2);
  const peer = await rawPeer(t, pPeer!);
  const d = startTestDaemon(t, {
    ports: [
      {
        kind: 'link',
        bus: 'default',
        value: `cannelloni://127.0.0.1:${pPeer}?local=127.0.0.1:${pLink}&keepalive=50&timeout=300`,
      },
    ],
  });
  await waitStat(d.can, 'state', (v) => v === 'up');
  // Silence from a peer that never sent a keepalive means nothing (a real cannelloni is silent).
  await sleep(500);
  assert.equal(statOf(d.can, 'state'), 'up');
  await send(peer, hex('02 00 00 0000'), pLink!);
  await waitStat(d.can, 'peerKeepalives', (v) => v === true);
  const t0 = Date.now();
  await waitStat(d.can, 'state', (v) => v === 'down', 2000);
  const took = Date.now() - t0;
  assert.ok(took >= 200, `down after the timeout, not before (${took} ms)`);
  assert.match(String(statOf(d.can, 'lastError')), /no datagram from 127\.0\.0\.1:\d+ for 300 ms/);
  await send(peer, hex('02 00 01 0000'), pLink!);
  await waitStat(d.can, 'state', (v) => v === 'up', 1000);
});

test('a local port in use: down with the reason, retried until it is free', async (t) => {
  const [pLink, pPeer] = await freePorts(2);
  const blocker = await rawPeer(t, pLink!);
  await rawPeer(t, pPeer!);
  const d = startTestDaemon(t, {
    ports: [
      { kind: 'link', bus: 'default', value: `cannelloni://127.0.0.1:${pPeer}?local=127.0.0.1:${pLink}` },
    ],
  });
  await waitStat(d.can, 'lastError', (v: string) => /cannot bind 127\.0\.0\.1:\d+: .*EADDRINUSE/.test(v));
  assert.equal(statOf(d.can, 'state'), 'down');
  blocker.close();
  await waitStat(d.can, 'state', (v) => v === 'up', 8000);
  assert.ok((statOf(d.can, 'attempts') as number) >= 2);
});

test('a failing port elsewhere on the bus is counted and logged, the link keeps serving', async (t) => {
  const [pLink, pPeer] = await freePorts(2);
  const peer = await rawPeer(t, pPeer!);
  const d = startTestDaemon(t, {
    ports: [
      { kind: 'link', bus: 'default', value: `cannelloni://127.0.0.1:${pPeer}?local=127.0.0.1:${pLink}` },
    ],
  });
  await waitStat(d.can, 'state', (v) => v === 'up');
  let fail = true;
  const bad = d.can.hubs.get('default').attach(
    {
      onFramesAvailable() {
        while (bad.take() !== undefined) {}
        if (fail) throw new Error('boom');
      },
    },
    { name: 'bad' },
  );
  t.after(() => bad.detach());
  const good = hostPort(t, d.can.hubs.get('default'), 'good');
  await send(peer, hex('02 00 00 0001 00000001 01 01'), pLink!);
  await waitStat(d.can, 'rxErrors', (v) => v === 1);
  fail = false;
  await send(peer, hex('02 00 01 0001 00000002 01 02'), pLink!);
  await waitFor('the next frame', () => (good.frames().length === 2 ? true : undefined));
  assert.equal(statOf(d.can, 'rxFrames'), 2);
});

test('a host name is looked up when the link binds', async (t) => {
  const [pLink, pPeer] = await freePorts(2);
  const peer = await rawPeer(t, pPeer!);
  const d = startTestDaemon(t, {
    ports: [
      { kind: 'link', bus: 'default', value: `cannelloni://localhost:${pPeer}?local=127.0.0.1:${pLink}` },
    ],
  });
  await waitStat(d.can, 'state', (v) => v === 'up');
  await waitFor('the bind keepalive', () => (peer.got.length >= 1 ? true : undefined));
  assert.equal(statOf(d.can, 'peer'), `localhost:${pPeer}`);
});

test('the command line refuses a bad link URL with exit status 2 and the reason', () => {
  const r = cli('vhost-device-can.ts').runSync([
    '-s',
    '/tmp/never-used.sock',
    '--link',
    'default=cannelloni://192.0.2.2:20000?local=192.0.2.1',
  ]);
  assert.equal(r.status, 2, r.stderr);
  assert.match(
    r.stderr,
    /--link default=cannelloni:\/\/192\.0\.2\.2:20000\?local=192\.0\.2\.1: local "192\.0\.2\.1" is not LADDR:LPORT/,
  );
});
