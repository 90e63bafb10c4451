/**
 * Buses that span hosts: vhost-device-can daemons (the CLI, as users run it) in separate network
 * namespaces on one LAN (test/helpers/netns.ts), linked with cannelloni, with front-end guests on
 * every daemon. Needs root; skips without it unless CI is set.
 */
import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { CanRxFrame, CanTestDriver, CanTxFrame } from '../../src/node/frontend/can-driver.js';
import { createNetLab, NetDaemon, type NetLab, netnsSkip, waitUntil } from '../helpers/netns.js';
import { startDriver } from '../helpers/vhost-user.js';

const PORT = 20000;
const FAST = 'keepalive=100&timeout=500';

const text = (f: CanRxFrame | CanTxFrame): string =>
  `${f.id.toString(16)}${f.extended ? 'x' : ''}${f.fd ? 'F' : ''}${f.rtr ? `R${'length' in f ? f.length : (f.len ?? 0)}` : ''}#${
    f.rtr ? '' : Buffer.from(Uint8Array.from(f.data ?? [])).toString('hex')
  }`;

/** `n` frames from sender `tag`: a sequence number in the payload, every 10th CAN FD, one RTR in 50. */
function traffic(tag: number, n: number): CanTxFrame[] {
  return Array.from({ length: n }, (_, i) => {
    const seq = [tag, i & 0xff, i >> 8];
    if (i % 10 === 3)
      return { id: 0x10 * tag + 1, fd: true, data: [...seq, ...new Array(45).fill(i & 0xff)] };
    if (i % 50 === 7) return { id: 0x1000000 * tag + i, extended: true, rtr: true, len: i % 9 };
    return { id: 0x10 * tag, data: seq };
  });
}

async function guest(t: TestContext, d: NetDaemon, i = 0): Promise<CanTestDriver> {
  const { drv } = await startDriver(t, d.path(i));
  assert.equal(await drv.startController(), 0);
  assert.ok(drv.fdNegotiated, 'CAN FD offered on a virtual bus');
  return drv;
}

async function linkUp(d: NetDaemon, name?: string): Promise<void> {
  await waitUntil(`link ${name ?? ''} of host ${d.host} up`, async () =>
    (await d.link(name)).state === 'up' ? true : undefined,
  );
}

function pair(t: TestContext, lab: NetLab, v6: boolean, extra = ''): [NetDaemon, NetDaemon] {
  const [h0, h1] = lab.hosts;
  const a = (h: typeof h0) => (v6 ? `[${h!.ipv6}]` : h!.ipv4);
  const q = extra === '' ? '' : `&${extra}`;
  return [
    new NetDaemon(t, lab, 0, {
      args: ['--link', `default=cannelloni://${a(h1)}:${PORT}?local=${a(h0)}:${PORT}${q}`],
    }),
    new NetDaemon(t, lab, 1, {
      args: ['--link', `default=cannelloni://${a(h0)}:${PORT}?local=${a(h1)}:${PORT}${q}`],
    }),
  ];
}

for (const v6 of [false, true]) {
  test(`two hosts (IPv${v6 ? 6 : 4}), one bus: frames both ways, FD and RTR, order kept, nothing duplicated or looped`, {
    skip: netnsSkip,
    timeout: 60_000,
  }, async (t) => {
    const lab = createNetLab(t, 2);
    const [a, b] = pair(t, lab, v6);
    await Promise.all([a.ready(), b.ready()]);
    await Promise.all([linkUp(a), linkUp(b)]);
    const [ga, gb] = await Promise.all([guest(t, a), guest(t, b)]);
    const N = v6 ? 300 : 2000;
    const fromA = traffic(0xa, N);
    const fromB = traffic(0xb, N);
    const [ra, rb] = await Promise.all([ga.sendMany(fromA), gb.sendMany(fromB)]);
    assert.ok([...ra, ...rb].every((r) => r === 0));
    const [gotB, gotA] = await Promise.all([gb.waitFrames(N, 15_000), ga.waitFrames(N, 15_000)]);
    assert.deepEqual(gotB.map(text), fromA.map(text), "B received A's frames, all, in order, once");
    assert.deepEqual(gotA.map(text), fromB.map(text), "A received B's frames, all, in order, once");
    await sleep(500);
    assert.equal(ga.receivedCount, N, 'nothing more arrived (no echo, no loop)');
    assert.equal(gb.receivedCount, N);
    for (const d of [a, b]) {
      assert.equal((await d.bus()).frames, 2 * N, `host ${d.host}: the bus carried each frame once`);
      const l = await d.link();
      assert.deepEqual(
        [
          l.state,
          l.txFrames,
          l.rxFrames,
          l.rxLost,
          l.rxMalformed,
          l.rxForeign,
          l.txDroppedDown,
          l.txDroppedOverflow,
        ],
        ['up', N, N, 0, 0, 0, 0, 0],
        JSON.stringify(l),
      );
    }
  });
}

test('three hosts in a chain (A-B-C): every guest gets every other guest frames once, in order; nothing loops', {
  skip: netnsSkip,
  timeout: 60_000,
}, async (t) => {
  const lab = createNetLab(t, 3);
  const [h0, h1, h2] = lab.hosts;
  const a = new NetDaemon(t, lab, 0, {
    args: ['--link', `default=cannelloni://${h1!.ipv4}:${PORT}?local=${h0!.ipv4}:${PORT}`],
  });
  const b = new NetDaemon(t, lab, 1, {
    args: [
      '--link',
      `default=cannelloni://${h0!.ipv4}:${PORT}?local=${h1!.ipv4}:${PORT}`,
      '--link',
      `default=cannelloni://${h2!.ipv4}:${PORT + 1}?local=${h1!.ipv4}:${PORT + 1}`,
    ],
  });
  const c = new NetDaemon(t, lab, 2, {
    args: ['--link', `default=cannelloni://${h1!.ipv4}:${PORT + 1}?local=${h2!.ipv4}:${PORT + 1}`],
  });
  await Promise.all([a.ready(), b.ready(), c.ready()]);
  await Promise.all([
    linkUp(a),
    linkUp(b, `cannelloni:${h0!.ipv4}:${PORT}`),
    linkUp(b, `cannelloni:${h2!.ipv4}:${PORT + 1}`),
    linkUp(c),
  ]);
  const guests = await Promise.all([a, b, c].map((d) => guest(t, d)));
  const N = 600;
  const sent = [0xa, 0xb, 0xc].map((tag) => traffic(tag, N));
  await Promise.all(guests.map((g, i) => g.sendMany(sent[i]!)));
  const got = await Promise.all(guests.map((g) => g.waitFrames(2 * N, 15_000)));
  got.forEach((frames, i) => {
    for (let j = 0; j < 3; j++) {
      const mine = frames.filter(
        (f) => f.data[0] === [0xa, 0xb, 0xc][j] || (f.rtr && f.id >> 24 === [0xa, 0xb, 0xc][j]),
      );
      if (j === i) assert.equal(mine.length, 0, `guest ${i} never gets its own frames`);
      else
        assert.deepEqual(
          mine.map(text),
          sent[j]!.map(text),
          `guest ${i} got guest ${j}'s frames once, in order`,
        );
    }
  });
  await sleep(500);
  for (const [i, d] of [a, b, c].entries()) {
    assert.equal(guests[i]!.receivedCount, 2 * N, `guest ${i}: nothing more arrived`);
    assert.equal((await d.bus()).frames, 3 * N, `host ${i}: each frame on the bus once`);
  }
});

test('peer daemon killed: link down, frames dropped and counted; peer restarted: up again, traffic resumes', {
  skip: netnsSkip,
  timeout: 60_000,
}, async (t) => {
  const lab = createNetLab(t, 2);
  const [a, b] = pair(t, lab, false, FAST);
  await Promise.all([a.ready(), b.ready()]);
  await Promise.all([linkUp(a), linkUp(b)]);
  const ga = await guest(t, a);
  let gb = await guest(t, b);
  assert.equal(await ga.send({ id: 1, data: [1] }), 0);
  await gb.waitFrames(1);

  await b.kill();
  const down = await waitUntil('A sees the link down', async () => {
    const l = await a.link();
    return l.state === 'down' ? l : undefined;
  });
  assert.match(String(down.lastError), /refused|no datagram/);
  const during = Array.from({ length: 20 }, (_, i) => ({ id: 2, data: [i] }));
  assert.deepEqual(await ga.sendMany(during), new Array(20).fill(0));
  const l = await a.link();
  assert.equal(l.txDroppedDown, 20, 'the frames sent while down were dropped and counted');
  assert.equal(l.txFrames, 1);

  gb.frontend.close();
  await b.restart();
  await Promise.all([linkUp(a), linkUp(b)]);
  gb = await guest(t, b);
  assert.equal(await ga.send({ id: 3, data: [3] }), 0);
  assert.equal(await gb.send({ id: 4, data: [4] }), 0);
  assert.deepEqual((await gb.waitFrames(1)).map(text), ['3#03']);
  assert.deepEqual((await ga.waitFrames(1)).map(text), ['4#04']);
  const after = await a.link();
  assert.ok((after.ups as number) >= 2 && (after.downs as number) >= 1, JSON.stringify(after));
  assert.equal(after.txDroppedDown, 20);
});

test('malformed datagrams from a raw socket on the peer host: counted by reason, the link keeps working', {
  skip: netnsSkip,
  timeout: 60_000,
}, async (t) => {
  const lab = createNetLab(t, 2);
  const [h0, h1] = lab.hosts;
  const a = new NetDaemon(t, lab, 0, {
    args: ['--link', `default=cannelloni://${h1!.ipv4}:${PORT}?local=${h0!.ipv4}:${PORT}`],
  });
  await a.ready();
  const ga = await guest(t, a);
  // From the peer's address and port (standing in for it), then from another port of that host.
  const datagrams = [
    '0200', // short
    '0300000000', // version
    '0201000000', // op code
    '020000000100000001', // truncated
    '02000000010000000100ff', // trailing
    '020000000200000001090000000000000000000000000501aa', // classic length 9 (skipped) + a good frame
  ];
  const script = `
      const dgram = require('node:dgram');
      const [from, to, ...hex] = process.argv.slice(1);
      const s = dgram.createSocket('udp4');
      s.bind(Number(from.split(':')[1]), from.split(':')[0], async () => {
        for (const h of hex) await new Promise((r) => s.send(Buffer.from(h, 'hex'), Number(to.split(':')[1]), to.split(':')[0], r));
        s.close();
      });`;
  const run = (from: string, hex: string[]) => {
    const r = lab.exec(1, [process.execPath, '-e', script, from, `${h0!.ipv4}:${PORT}`, ...hex]);
    assert.equal(r.status, 0, r.stderr);
  };
  run(`${h1!.ipv4}:${PORT}`, datagrams);
  run(`${h1!.ipv4}:${PORT + 5}`, ['020000000100000066010066']);
  assert.deepEqual((await ga.waitFrames(1)).map(text), ['5#aa']);
  const l = await waitUntil('all counted', async () => {
    const s = await a.link();
    return s.rxForeign === 1 && s.rxMalformed === 5 ? s : undefined;
  });
  assert.deepEqual(
    [l.rxBadShort, l.rxBadVersion, l.rxBadOpCode, l.rxBadTruncated, l.rxBadTrailing, l.rxSkipClassicLength],
    [1, 1, 1, 1, 1, 1],
  );
  assert.equal(l.rxFrames, 1);

  // The real peer takes its place: the link works both ways.
  const b = new NetDaemon(t, lab, 1, {
    args: ['--link', `default=cannelloni://${h0!.ipv4}:${PORT}?local=${h1!.ipv4}:${PORT}`],
  });
  await b.ready();
  await Promise.all([linkUp(a), linkUp(b)]);
  const gb = await guest(t, b);
  assert.equal(await ga.send({ id: 7, data: [7] }), 0);
  assert.equal(await gb.send({ id: 8, data: [8] }), 0);
  assert.deepEqual((await gb.waitFrames(1)).map(text), ['7#07']);
  assert.deepEqual((await ga.waitFrames(2)).map(text), ['5#aa', '8#08']);
});
