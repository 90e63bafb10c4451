/**
 * Buses that span hosts: vhost-device-can daemons (the CLI, as users run it) in separate network
 * namespaces on one LAN (test/helpers/netns.ts), with front-end guests on every daemon. The same
 * scenarios run over each kind of network link (LINK_KINDS): cannelloni (UDP, both ends alike) and
 * socketcand (TCP: host 0 runs `--socketcand-listen`, host 1 `--link default=socketcand://...`).
 * Needs root; skips without it unless CI is set.
 */
import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { CanRxFrame, CanTestDriver, CanTxFrame } from '../../src/node/frontend/can-driver.js';
import {
  createNetLab,
  LINK_KINDS,
  LINK_PORT,
  type LinkEnd,
  linkEnd,
  linksUp,
  NetDaemon,
  type NetLab,
  type NetLinkKind,
  netnsSkip,
  waitUntil,
} from '../helpers/netns.js';
import { startDriver } from '../helpers/vhost-user.js';

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

/** One daemon per host, joined by `kind` along `edges`. */
function daemons(
  t: TestContext,
  lab: NetLab,
  kind: NetLinkKind,
  edges: [number, number][],
  opts: { v6?: boolean; fast?: boolean } = {},
): NetDaemon[] {
  return kind.args(lab, edges, opts).map((args, i) => new NetDaemon(t, lab, i, { args }));
}

/** The counters every link end must show after a clean exchange of `n` frames each way. */
const clean = (e: LinkEnd) => [e.up, e.tx, e.rx, e.droppedDown, e.droppedOverflow, e.bad, e.lost];

for (const kind of LINK_KINDS) {
  for (const v6 of [false, true]) {
    test(`${kind.name}, two hosts (IPv${v6 ? 6 : 4}), one bus: frames both ways, FD, RTR and extended, order kept, nothing duplicated or looped`, {
      skip: netnsSkip,
      timeout: 60_000,
    }, async (t) => {
      const lab = createNetLab(t, 2);
      const [a, b] = daemons(t, lab, kind, [[0, 1]], { v6 }) as [NetDaemon, NetDaemon];
      await Promise.all([a.ready(), b.ready()]);
      await linksUp([a, b]);
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
        const e = await linkEnd(d);
        assert.ok(e.name.startsWith(kind.name), `host ${d.host}: a ${kind.name} link end: ${e.name}`);
        assert.deepEqual(clean(e), [true, N, N, 0, 0, 0, 0], `host ${d.host}: ${JSON.stringify(e.line)}`);
      }
    });
  }

  test(`${kind.name}, three hosts in a chain (A-B-C): every guest gets every other guest frames once, in order; nothing loops`, {
    skip: netnsSkip,
    timeout: 60_000,
  }, async (t) => {
    const lab = createNetLab(t, 3);
    const ds = daemons(t, lab, kind, [
      [0, 1],
      [1, 2],
    ]);
    await Promise.all(ds.map((d) => d.ready()));
    await linksUp(ds);
    const guests = await Promise.all(ds.map((d) => guest(t, d)));
    const N = 600;
    const tags = [0xa, 0xb, 0xc];
    const sent = tags.map((tag) => traffic(tag, N));
    await Promise.all(guests.map((g, i) => g.sendMany(sent[i]!)));
    const got = await Promise.all(guests.map((g) => g.waitFrames(2 * N, 15_000)));
    got.forEach((frames, i) => {
      for (let j = 0; j < 3; j++) {
        const mine = frames.filter((f) => f.data[0] === tags[j] || (f.rtr && f.id >> 24 === tags[j]));
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
    for (const [i, d] of ds.entries()) {
      assert.equal(guests[i]!.receivedCount, 2 * N, `guest ${i}: nothing more arrived`);
      assert.equal((await d.bus()).frames, 3 * N, `host ${i}: each frame on the bus once`);
    }
  });

  test(`${kind.name}: daemon A killed: B's link down, frames dropped and counted; A restarted: up again, traffic resumes`, {
    skip: netnsSkip,
    timeout: 90_000,
  }, async (t) => {
    const lab = createNetLab(t, 2);
    const [a, b] = daemons(t, lab, kind, [[0, 1]], { fast: true }) as [NetDaemon, NetDaemon];
    await Promise.all([a.ready(), b.ready()]);
    await linksUp([a, b]);
    let ga = await guest(t, a);
    const gb = await guest(t, b);
    assert.equal(await ga.send({ id: 1, data: [1] }), 0);
    assert.equal(await gb.send({ id: 2, data: [2] }), 0);
    assert.deepEqual((await gb.waitFrames(1)).map(text), ['1#01']);
    assert.deepEqual((await ga.waitFrames(1)).map(text), ['2#02']);
    gb.takeReceived();

    await a.kill();
    const down = await waitUntil('B sees the link down', async () => {
      const e = await linkEnd(b);
      return e.up ? undefined : e;
    });
    assert.match(down.lastError, kind.peerGone);
    t.diagnostic(`B's link down: ${down.lastError}`);
    const during = Array.from({ length: 20 }, (_, i) => ({ id: 3, data: [i] }));
    assert.deepEqual(await gb.sendMany(during), new Array(20).fill(0), 'B guest sends on: its bus is fine');
    const mid = await waitUntil('the drops counted', async () => {
      const e = await linkEnd(b);
      return e.droppedDown === 20 ? e : undefined;
    });
    assert.equal(mid.tx, 1, 'nothing sent while down');

    ga.frontend.close();
    await a.restart();
    // socketcand: B reconnects with backoff (250 ms doubling): allow a few of its attempts.
    await linksUp([a, b], 30_000);
    ga = await guest(t, a);
    assert.equal(await ga.send({ id: 4, data: [4] }), 0);
    assert.equal(await gb.send({ id: 5, data: [5] }), 0);
    assert.deepEqual((await gb.waitFrames(1)).map(text), ['4#04']);
    assert.deepEqual((await ga.waitFrames(1)).map(text), ['5#05']);
    await sleep(300);
    assert.equal(ga.receivedCount, 1, 'the restarted side got only the frame sent after it was back');
    assert.equal(gb.receivedCount, 2, 'B got one frame before and one after, none twice');
    const after = await linkEnd(b);
    assert.ok(Number(after.line.ups) >= 2 && Number(after.line.downs) >= 1, JSON.stringify(after.line));
    assert.deepEqual(
      [after.up, after.tx, after.rx, after.droppedDown, after.bad],
      [true, 2, 2, 20, 0],
      JSON.stringify(after.line),
    );
    assert.equal((await b.bus()).frames, 1 + 1 + 20 + 1 + 1, "B's bus: each frame once");
  });
}

test('cannelloni: malformed datagrams from a raw socket on the peer host: counted by reason, the link keeps working', {
  skip: netnsSkip,
  timeout: 60_000,
}, async (t) => {
  const lab = createNetLab(t, 2);
  const [h0, h1] = lab.hosts;
  const PORT = LINK_PORT;
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
  await linksUp([a, b]);
  const gb = await guest(t, b);
  assert.equal(await ga.send({ id: 7, data: [7] }), 0);
  assert.equal(await gb.send({ id: 8, data: [8] }), 0);
  assert.deepEqual((await gb.waitFrames(1)).map(text), ['7#07']);
  assert.deepEqual((await ga.waitFrames(2)).map(text), ['5#aa', '8#08']);
});
