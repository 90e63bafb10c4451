/**
 * The socketcand server over real TCP, spoken by hand: exact handshake and frame elements, the
 * broadcast manager (cyclic send jobs, subscriptions, content and multiplex filters, throttling),
 * control mode statistics, error frames on request, malformed input of every kind (each answered
 * with an error, local to its connection, counted), garbage floods, slow and stalled clients,
 * address allow lists and the client limit.
 */
import assert from 'node:assert/strict';
import type { TestContext } from 'node:test';
import { describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { makeCanFrame } from '../../src/core/bus/can-frame.js';
import type { CanDaemonOptions } from '../../src/node/can/can-daemon.js';
import { StructuredLogger } from '../../src/node/log.js';
import type { SocketcandServer } from '../../src/node/net/socketcand-server.js';
import { RawClient } from '../helpers/socketcand.js';
import {
  frame,
  hostPort,
  startDriver,
  startTestDaemon,
  type TestDaemon,
  waitFor,
} from '../helpers/vhost-user.js';

const TS = '\\d{10}\\.\\d{6}';

async function serve(
  t: TestContext,
  socketcand: Partial<NonNullable<CanDaemonOptions['socketcand']>> = {},
  more: Partial<CanDaemonOptions> = {},
): Promise<TestDaemon & { server: SocketcandServer; port: number }> {
  const d = startTestDaemon(t, {
    ...more,
    socketcand: { listen: { host: '127.0.0.1', port: 0 }, rawHoldMs: 0, ...socketcand },
  });
  const server = d.can.socketcand!;
  await server.ready;
  return { ...d, server, port: server.address.port };
}

/** A client that did `< open BUS >` (and `< rawmode >` unless `mode` is 'bcm'). */
async function opened(
  t: TestContext,
  port: number,
  mode: 'raw' | 'bcm' = 'raw',
  bus = 'default',
): Promise<RawClient> {
  const c = await RawClient.connect(t, port);
  await c.waitCount(1);
  assert.equal(await c.command(`< open ${bus} >`), '< ok >');
  if (mode === 'raw') assert.equal(await c.command('< rawmode >'), '< ok >');
  return c;
}

describe('socketcand server: handshake and raw mode', () => {
  test('the handshake replies come alone and exact; frames are written as socketcand writes them', async (t) => {
    const { can, port } = await serve(t);
    const c = await RawClient.connect(t, port);
    await c.waitCount(1);
    assert.equal(c.text, '< hi >', 'the greeting alone');
    c.send('< open default >');
    await c.waitCount(2);
    assert.equal(c.text, '< hi >< ok >');
    c.send('< rawmode >');
    await c.waitCount(3);
    assert.equal(c.text, '< hi >< ok >< ok >');
    const host = hostPort(t, can.hubs.get('default'));
    host.transmit(frame(0x123, [1, 2, 0xab]));
    host.transmit(frame(0x5, []));
    host.transmit(frame(0x1abcdef0, [0xff], { extended: true }));
    host.transmit(makeCanFrame({ id: 0x42, extended: true, data: [0] }));
    host.transmit(makeCanFrame({ id: 0x321, rtr: true, len: 4 }));
    host.transmit(makeCanFrame({ id: 0x456, len8Dlc: 13, data: [1, 2, 3, 4, 5, 6, 7, 8] }));
    host.transmit(makeCanFrame({ id: 0x100, fd: true, brs: true, data: new Uint8Array(12).fill(0xcd) }));
    host.transmit(makeCanFrame({ id: 0x101, fd: true, esi: true, data: [] }));
    await c.waitCount(11);
    const rest = (c.text as string).slice('< hi >< ok >< ok >'.length);
    const expected = [
      `< frame 123 ${TS} 0102AB >`,
      `< frame 005 ${TS}  >`,
      `< frame 1ABCDEF0 ${TS} FF >`,
      `< frame 00000042 ${TS} 00 >`,
      `< rtr 321 ${TS} 4 >`,
      `< frame 456 ${TS} 0102030405060708 >`,
      `< fdframe 100 05 ${TS} ${'CD'.repeat(12)} >`,
      `< fdframe 101 06 ${TS}  >`,
    ];
    assert.match(rest, new RegExp(`^${expected.map((e) => ` ${e}`).join('')}$`));
  });

  test('send, sendrtr and fdsend put frames on the bus; echo answers; a bad send does not', async (t) => {
    const { can, port, server } = await serve(t);
    const host = hostPort(t, can.hubs.get('default'));
    const c = await opened(t, port);
    c.send('< send 123 2 1 F1 >< send 1AAAAAAA 0 >< sendrtr 7FF 3 >< sendrtr 1 12 >');
    c.send('< fdsend 123 01 12 0 1 2 3 4 5 6 7 8 9 A B >< fdsend 1234 2 0 >');
    c.send('< send 456 12 1 2 3 4 5 6 7 8 >< send 457 8 1 2 3 4 5 6 7 8 >');
    assert.equal(await c.command('< echo >'), '< echo >');
    const got = await waitFor('9 frames', () => (host.frames().length >= 8 ? host.frames() : undefined));
    const view = got.map((f) => [
      f.id,
      f.extended,
      f.rtr,
      f.fd,
      f.brs,
      f.esi,
      f.len,
      f.len8Dlc,
      Buffer.from(f.data).toString('hex'),
    ]);
    assert.deepEqual(view, [
      [0x123, false, false, false, false, false, 2, 0, '01f1'],
      [0x1aaaaaaa, true, false, false, false, false, 0, 0, ''],
      [0x7ff, false, true, false, false, false, 3, 0, ''],
      [0x1, false, true, false, false, false, 8, 12, ''],
      [0x123, false, false, true, true, false, 12, 0, '000102030405060708090a0b'],
      [0x1234, true, false, true, false, true, 0, 0, ''],
      [0x456, false, false, false, false, false, 8, 12, '0102030405060708'],
      [0x457, false, false, false, false, false, 8, 0, '0102030405060708'],
    ]);
    assert.equal(server.counters.framesIn, 8);
    assert.equal(server.counters.protocolErrors, 0);
  });

  test('frames sent right after the rawmode < ok > are held back briefly, then all arrive', async (t) => {
    const { can, port } = await serve(t, { rawHoldMs: 80 });
    const host = hostPort(t, can.hubs.get('default'));
    const c = await RawClient.connect(t, port);
    await c.waitCount(1);
    await c.command('< open default >');
    c.send('< rawmode >');
    await c.waitCount(3);
    for (let i = 0; i < 20; i++) host.transmit(frame(0x10 + i, [i]));
    await sleep(30);
    assert.equal(c.elements().length, 3, 'nothing within the hold time');
    const els = await c.waitCount(23, 2000);
    assert.deepEqual(
      els.slice(3).map((e) => e.split(' ')[2]),
      Array.from({ length: 20 }, (_, i) => (0x10 + i).toString(16).toUpperCase().padStart(3, '0')),
    );
  });

  test('error frames go to raw clients that ask for them (< errormask >, or the server default)', async (t) => {
    const { can, port } = await serve(t);
    const hub = can.hubs.get('default');
    const host = hostPort(t, hub);
    const asks = await opened(t, port);
    const quiet = await opened(t, port);
    assert.equal(await asks.command('< errormask 1FFFFFFF >'), '< ok >');
    hub.injectBusState(host.name, 'bus-off');
    hub.injectBusState(host.name, 'error-active');
    host.transmit(frame(0x77, [7]));
    await asks.waitCount(7);
    assert.match(asks.elements()[4]!, new RegExp(`^< error 040 ${TS} 0000000000000000 >$`));
    assert.match(asks.elements()[5]!, new RegExp(`^< error 100 ${TS} 0040000000000000 >$`));
    await quiet.waitCount(4);
    await sleep(50);
    assert.deepEqual(
      quiet
        .elements()
        .slice(3)
        .map((e) => e.split(' ')[1]),
      ['frame'],
      'no error frames without asking',
    );
    assert.match(await quiet.command('< errormask 1FFFFFFFF >'), /^< error errormask: bad mask/);
  });
});

describe('socketcand server: broadcast manager mode', () => {
  test('add sends cyclically, update changes the content, delete stops; an interval of 0 sends nothing', async (t) => {
    const { can, port, server } = await serve(t);
    const host = hostPort(t, can.hubs.get('default'));
    const c = await opened(t, port, 'bcm');
    c.send('< add 0 20000 123 4 42 42 42 42 >< add 0 0 124 1 01 >');
    await sleep(300);
    const first = host.frames().length;
    assert.ok(first >= 8 && first <= 16, `${first} frames in 300 ms at 20 ms`);
    assert.ok(
      host.frames().every((f) => f.id === 0x123 && Buffer.from(f.data).toString('hex') === '42424242'),
    );
    c.send('< update 123 3 11 22 33 >');
    await sleep(100);
    const later = host.frames().slice(first + 1);
    assert.ok(later.length >= 2);
    assert.ok(
      later.every((f) => Buffer.from(f.data).toString('hex') === '112233'),
      'updated content',
    );
    c.send('< delete 123 >'); // success has no reply, as in socketcand
    assert.equal(await c.command('< echo >'), '< echo >');
    const stopped = host.frames().length;
    await sleep(100);
    assert.equal(host.frames().length, stopped, 'deleted');
    assert.match(await c.command('< delete 123 >'), /^< error delete: no send job for 123 >$/);
    assert.match(await c.command('< update 999 1 1 >'), /^< error update: no send job for 999 >$/);
    assert.ok(server.counters.framesIn >= first);
  });

  test('subscribe, filter (content change), muxfilter and throttling select what the client gets', async (t) => {
    const { can, port } = await serve(t);
    const host = hostPort(t, can.hubs.get('default'));
    const c = await opened(t, port, 'bcm');
    c.send('< subscribe 0 0 200 >< filter 0 0 300 1 FF >< subscribe 0 100000 400 >');
    c.send('< muxfilter 0 0 500 2 FF 00 00 00 00 00 00 00 33 FF 00 00 00 00 00 00 >');
    assert.equal(await c.command('< echo >'), '< echo >');
    const send = (id: number, data: number[]): void => {
      host.transmit(frame(id, data));
    };
    send(0x200, [1, 2]);
    send(0x201, [1]); // nobody asked for it
    send(0x300, [1, 9]);
    send(0x300, [1, 8]); // first byte unchanged: held back
    send(0x300, [2, 8]);
    send(0x500, [0x33, 1]);
    send(0x500, [0x33, 1]); // unchanged
    send(0x500, [0x33, 2]);
    send(0x500, [0x44, 9]); // no multiplexer value matches
    for (let i = 0; i < 10; i++) send(0x400, [i]); // throttled to one per 100 ms: first, then the latest
    const els = await c.waitCount(9, 2000);
    await sleep(150);
    const frames = c.elements().slice(3);
    const view = frames.map((e) => e.replace(new RegExp(TS), 'T'));
    assert.deepEqual(view, [
      '< frame 200 T 01 02  >',
      '< frame 300 T 01 09  >',
      '< frame 300 T 02 08  >',
      '< frame 500 T 33 01  >',
      '< frame 500 T 33 02  >',
      '< frame 400 T 00  >',
      '< frame 400 T 09  >',
    ]);
    assert.ok(els.length >= 9);
    c.send('< unsubscribe 200 >');
    send(0x200, [3]);
    assert.equal(await c.command('< echo >'), '< echo >');
    assert.ok(!c.elements().some((e) => e.includes('frame 200 ') && e.includes(' 03 ')), 'unsubscribed');
    assert.match(
      await c.command('< unsubscribe 200 >'),
      /^< error unsubscribe: no subscription or filter for 200 >$/,
    );
  });

  test('leaving BCM mode removes its jobs', async (t) => {
    const { can, port } = await serve(t);
    const host = hostPort(t, can.hubs.get('default'));
    const c = await opened(t, port, 'bcm');
    c.send('< add 0 10000 123 1 01 >');
    await waitFor('cyclic frames', () => (host.frames().length >= 2 ? true : undefined));
    assert.equal(await c.command('< rawmode >'), '< ok >');
    await sleep(30);
    const n = host.frames().length;
    await sleep(100);
    assert.equal(host.frames().length, n);
  });
});

describe('socketcand server: control mode', () => {
  test('statistics report the bus and the client every interval until 0', async (t) => {
    const { can, port } = await serve(t);
    const host = hostPort(t, can.hubs.get('default'));
    const c = await opened(t, port, 'bcm');
    c.send('< send 123 2 01 02 >');
    host.transmit(frame(0x1, [1, 2, 3]));
    assert.equal(await c.command('< controlmode >'), '< ok >');
    c.send('< statistics 50 >');
    const els = await c.waitFor('two stat lines', (e) =>
      e.filter((x) => x.startsWith('< stat ')).length >= 2 ? e : undefined,
    );
    const stat = els.find((x) => x.startsWith('< stat '))!;
    assert.match(stat, /^< stat \d+ \d+ \d+ \d+ >$/);
    const [rbytes, rpackets, tbytes, tpackets] = stat.slice(7, -2).split(' ').map(Number);
    assert.deepEqual([rbytes, rpackets, tbytes, tpackets], [5, 2, 2, 1]);
    c.send('< statistics 0 >');
    await sleep(30);
    const n = c.elements().length;
    await sleep(150);
    assert.equal(c.elements().length, n, 'stopped');
    assert.match(await c.command('< send 123 0 >'), /raw or BCM mode command/);
  });
});

describe('socketcand server: malformed input', () => {
  test('every kind of bad input gets a clear error, stays on its connection and is counted', async (t) => {
    const { can, port, server, paths } = await serve(t);
    const { drv } = await startDriver(t, paths[0]!);
    assert.equal(await drv.startController(), 0);
    const other = await opened(t, port);
    const c = await RawClient.connect(t, port);
    await c.waitCount(1);
    const cases: [string, RegExp][] = [
      ['< send 123 0 >', /^< error send: no bus is open/],
      ['< rawmode >', /^< error rawmode: no bus is open/],
      ['< open nosuchbus >', /^< error could not open bus nosuchbus: no such bus \(buses: default\) >$/],
      ['< can0 B 500000 0 0 0 0 0 0 0 >', /^< error bus configuration .* not supported >$/],
      ['< open default >', /^< ok >$/],
      ['< open default >', /^< error bus default is already open >$/],
      ['< statistics 100 >', /^< error statistics is a control mode command/],
      ['< rawmode >', /^< ok >$/],
      ['< add 0 1000 123 1 01 >', /^< error add is a BCM mode command/],
      ['< isotpmode >', /^< error ISO-TP mode is not supported >$/],
      ['< frobnicate 1 2 >', /^< error unknown command "frobnicate" >$/],
      ['< >', /^< error empty element >$/],
      ['< send 12G 1 01 >', /^< error send: bad identifier "12G"/],
      ['< send 123456789 0 >', /^< error send: bad identifier/],
      ['< send 20000000 0 >', /^< error send: identifier 20000000 is larger than 1FFFFFFF >$/],
      ['< send 123 3 01 02 >', /^< error send: length "3" does not match the 2 data bytes given >$/],
      ['< send 123 1 1FF >', /^< error send: bad data byte "1FF" >$/],
      ['< send 123 X 1 >', /^< error send: length "X" does not match/],
      ['< send 123 13 1 2 3 4 5 6 7 8 9 10 11 12 13 >', /^< error send: 13 bytes is not a CAN FD length/],
      ['< fdsend 123 08 0 >', /^< error fdsend: bad flags "08"/],
      ['< sendrtr 123 16 >', /^< error sendrtr: bad DLC "16"/],
      ['hello', /^< error 5 bytes outside any _ ... _ element ignored >$/],
      ['< send 123 < echo >', /^< error element cut short by a new one \(11 bytes ignored\) >$/],
      [`< send ${'1 '.repeat(5000)}>`, /^< error element longer than 8192 bytes ignored >$/],
    ];
    let errors = 0;
    for (const [input, expect] of cases) {
      const before = c.elements().length;
      c.send(input);
      const els = await c.waitCount(before + 1);
      assert.match(els[before]!, expect, `reply to ${input.slice(0, 40)}`);
      if (els[before]!.startsWith('< error')) errors++;
      if (input === '< send 123 < echo >') await c.waitCount(before + 2); // the echo after it
    }
    assert.equal(server.counters.protocolErrors, errors);
    assert.equal(c.closed, false, 'still connected');
    // Nothing leaked to the others: the other client and the guest still work.
    assert.equal(await drv.send({ id: 0x77, data: [7] }), 0);
    await other.waitFor('the guest frame', (e) =>
      e.some((x) => x.startsWith('< frame 077 ')) ? true : undefined,
    );
    assert.equal(await c.command('< echo >'), '< echo >');
    assert.ok(!other.elements().some((e) => e.startsWith('< error')), 'the other client saw no error');
    assert.equal(can.hubs.get('default').stats().frames, 1, 'no bad command put anything on the bus');
  });

  test('a flood of garbage closes that connection only; the bus and other clients go on', async (t) => {
    const { can, port, server } = await serve(t, { errorLimit: 20 });
    const host = hostPort(t, can.hubs.get('default'));
    const good = await opened(t, port);
    const bad = await opened(t, port);
    const junk = Buffer.alloc(1 << 20, 'x');
    for (let i = 0; i < 4 && !bad.closed; i++) bad.send(junk);
    await bad.waitClosed(5000);
    assert.equal(server.counters.closedProtocolErrors, 1);
    assert.ok(server.counters.protocolErrors > 20);
    assert.match(bad.elements().at(-1)!, /^< error more than 20 errors in 10 s: closing >$/);
    host.transmit(frame(0x55, [5]));
    await good.waitFor('a frame after the flood', (e) =>
      e.some((x) => x.startsWith('< frame 055 ')) ? true : undefined,
    );
    const overlong = await opened(t, port);
    overlong.send(`<${'y'.repeat(1 << 20)}`);
    overlong.send(`<${'z'.repeat(1 << 20)}`);
    await overlong.waitClosed(5000);
    assert.equal(server.counters.closedProtocolErrors, 2);
    // The server forgets a connection when its socket closes, which can come just after this
    // client saw its own end.
    for (let i = 0; i < 100 && server.clients().length !== 1; i++)
      await new Promise((r) => setTimeout(r, 20));
    assert.equal(server.clients().length, 1);
  });
});

describe('socketcand server: slow clients, limits, access', () => {
  test('a client that does not read never slows the bus: its frames are dropped, counted and reported, then it is closed', async (t) => {
    const { can, port, server } = await serve(t, { queueLimit: 256, stallTimeoutMs: 1500 });
    const hub = can.hubs.get('default');
    const host = hostPort(t, hub);
    const fast = await opened(t, port);
    const slow = await opened(t, port);
    slow.socket.pause();
    const f = frame(0x10, [1, 2, 3, 4, 5, 6, 7, 8]);
    const t0 = performance.now();
    let sent = 0;
    while (performance.now() - t0 < 600) {
      for (let i = 0; i < 100; i++) if (host.transmit(f) === 'sent') sent++;
      await new Promise((r) => setImmediate(r));
    }
    assert.equal(sent, hub.stats().frames, 'every transmit went on the bus');
    assert.ok(
      server.counters.droppedSlowClient > 0 || hub.stats().droppedOverflow > 0,
      'the slow client lost frames',
    );
    slow.socket.resume();
    // Every frame reached each client or was reported to it as dropped.
    const account = (c: RawClient): number => {
      let n = 0;
      for (const x of c.elements()) {
        if (x.startsWith('< frame ')) n++;
        else if (x.includes('frames dropped')) n += Number(x.split(' ')[2]);
      }
      return n;
    };
    await slow.waitFor(
      `slow: ${sent} frames or drop reports`,
      () => (account(slow) === sent ? true : undefined),
      10_000,
    );
    await fast.waitFor(
      `fast: ${sent} frames or drop reports`,
      () => (account(fast) === sent ? true : undefined),
      10_000,
    );
    assert.ok(
      slow.elements().some((x) => /^< error \d+ frames dropped: this client reads too slowly >$/.test(x)),
      'the slow client was told',
    );
    assert.equal(server.counters.droppedSlowClient, hub.stats().droppedOverflow);
    // Now stall it for good: it is closed after stallTimeoutMs of drops.
    slow.socket.pause();
    const t1 = performance.now();
    while (server.counters.closedStalled === 0 && performance.now() - t1 < 8000) {
      for (let i = 0; i < 100; i++) host.transmit(f);
      await new Promise((r) => setTimeout(r, 1));
    }
    assert.equal(server.counters.closedStalled, 1, 'the stalled client was closed');
    slow.socket.resume(); // a paused socket does not see its close
    await slow.waitClosed();
    assert.equal(fast.closed, false);
  });

  test('--socketcand-allow refuses other addresses; the client limit refuses extra clients', async (t) => {
    const lines: string[] = [];
    const log = new StructuredLogger({ level: 'info', write: (l) => lines.push(l) });
    const { port, server } = await serve(t, { allow: ['10.0.0.0/8', '::1/128'], maxClients: 1 }, { log });
    const refused = await RawClient.connect(t, port);
    await refused.waitClosed();
    assert.equal(refused.text, '', 'nothing said to a refused peer');
    assert.equal(server.counters.refusedNotAllowed, 1);
    assert.ok(lines.some((l) => l.includes('address not allowed')));

    const { port: p2, server: s2 } = await serve(t, { allow: ['127.0.0.0/8'], maxClients: 1 });
    const first = await RawClient.connect(t, p2);
    await first.waitCount(1);
    const second = await RawClient.connect(t, p2);
    await second.waitClosed();
    assert.equal(second.text, '< error too many clients (at most 1) >');
    assert.equal(s2.counters.refusedTooMany, 1);
    assert.equal(first.closed, false);
  });

  test('a non-loopback listen address logs a warning', async (t) => {
    const lines: string[] = [];
    const log = new StructuredLogger({ level: 'info', write: (l) => lines.push(l) });
    await serve(t, { listen: { host: '0.0.0.0', port: 0 } }, { log });
    assert.ok(lines.some((l) => l.includes('reachable from the network and has no authentication')));
  });

  test('IPv6 loopback works', async (t) => {
    const d = startTestDaemon(t, { socketcand: { listen: { host: '::1', port: 0 }, allow: ['::1/128'] } });
    try {
      await d.can.socketcand!.ready;
    } catch (err) {
      if (/EADDRNOTAVAIL|EAFNOSUPPORT/.test((err as Error).message)) {
        t.skip('no IPv6 loopback here');
        return;
      }
      throw err;
    }
    const c = await RawClient.connect(t, d.can.socketcand!.address.port, '::1');
    await c.waitCount(1);
    assert.equal(await c.command('< open default >'), '< ok >');
  });
});
