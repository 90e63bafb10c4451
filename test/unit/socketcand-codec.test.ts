/**
 * The socketcand codec and session without sockets: the element tokenizer (splits, garbage,
 * overlong and interrupted elements), command parsing, the elements written for each frame kind,
 * and the session's broadcast-manager logic with fake timers.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { type CanFrame, makeCanFrame, scratchCanFrame } from '../../src/core/bus/can-frame.js';
import {
  ascii,
  ByteWriter,
  ElementReader,
  parseFdSend,
  parseSend,
  parseSendRtr,
  parseServerFrame,
  scratchPayloads,
  TimestampText,
  Words,
  writeRawFrame,
  writeSendCommand,
} from '../../src/core/net/socketcand-codec.js';
import { type SessionHost, SocketcandSession } from '../../src/core/net/socketcand-session.js';

const text = (b: Uint8Array): string => Buffer.from(b).toString('latin1');

function readAll(chunks: string[], max = 64): string[] {
  const out: string[] = [];
  const r = new ElementReader(max);
  for (const c of chunks) {
    r.push(ascii(c), {
      element: (buf, s, e) => out.push(text(buf.subarray(s, e))),
      junk: (kind, n) => out.push(`!${kind}:${n}`),
    });
  }
  return out;
}

describe('ElementReader', () => {
  test('elements in one chunk, split across chunks, with whitespace and garbage between', () => {
    assert.deepEqual(readAll(['< hi >< ok >  \r\n< echo >']), ['< hi >', '< ok >', '< echo >']);
    assert.deepEqual(readAll(['< se', 'nd 1', '23 0 >< e', 'cho >']), ['< send 123 0 >', '< echo >']);
    assert.deepEqual(readAll(['xx< hi >yyy', 'zz< ok >']), [
      '!garbage:2',
      '< hi >',
      '!garbage:3',
      '!garbage:2',
      '< ok >',
    ]);
    assert.deepEqual(readAll(['< send < echo >']), ['!interrupted:7', '< echo >']);
    assert.deepEqual(readAll(['< sen', 'd < echo >']), ['!interrupted:7', '< echo >']);
  });

  test('an overlong element is reported and skipped up to its end, however it arrives', () => {
    const long = `<${'a'.repeat(100)}>`;
    assert.deepEqual(readAll([`${long}< ok >`]), ['!overlong:64', '< ok >']);
    assert.deepEqual(readAll([long.slice(0, 30), long.slice(30, 70), `${long.slice(70)}< ok >`]), [
      '!overlong:70',
      '< ok >',
    ]);
    // Exactly the limit is fine, one byte more is not.
    const exact = `<${'b'.repeat(62)}>`;
    assert.deepEqual(readAll([exact]), [exact]);
    assert.deepEqual(readAll([exact.slice(0, 40), exact.slice(40)]), [exact]);
    assert.deepEqual(readAll([`<${'b'.repeat(63)}>< ok >`]), ['!overlong:64', '< ok >']);
  });

  test('any chunking gives the same elements, and junk reports stay bounded', () => {
    fc.assert(
      fc.property(
        fc.array(fc.constantFrom('< hi >', '< send 123 1 FF >', 'junk', ' ', `<${'q'.repeat(80)}>`), {
          maxLength: 20,
        }),
        fc.array(fc.integer({ min: 1, max: 50 }), { minLength: 1, maxLength: 10 }),
        (parts, cuts) => {
          const all = parts.join('');
          const chunks: string[] = [];
          let i = 0;
          for (let k = 0; i < all.length; k++) {
            const n = cuts[k % cuts.length]!;
            chunks.push(all.slice(i, i + n));
            i += n;
          }
          const whole = readAll([all]).filter((x) => !x.startsWith('!'));
          const split = readAll(chunks).filter((x) => !x.startsWith('!'));
          assert.deepEqual(split, whole);
          assert.deepEqual(
            whole,
            parts.filter((p) => p.startsWith('< ')),
          );
          assert.ok(readAll(chunks).length <= all.length + 1);
        },
      ),
    );
  });
});

function words(s: string): Words {
  const w = new Words();
  const b = ascii(s);
  assert.ok(w.split(b, 0, b.length));
  return w;
}

function sendFrame(s: string): CanFrame | string {
  const f = scratchCanFrame();
  const err = parseSend(words(s), f, scratchPayloads());
  return err ?? makeCanFrame({ ...f, data: f.data });
}

describe('commands and elements', () => {
  test('send: identifiers, lengths, raw DLCs, CAN FD and what python-can writes', () => {
    const pick = (x: CanFrame | string) =>
      typeof x === 'string'
        ? x
        : [x.id, x.extended, x.fd, x.len, x.len8Dlc, Buffer.from(x.data).toString('hex')];
    assert.deepEqual(pick(sendFrame('< send 123 2 1 F1 >')), [0x123, false, false, 2, 0, '01f1']);
    assert.deepEqual(pick(sendFrame('< send 00000123 0 >')), [0x123, true, false, 0, 0, '']);
    assert.deepEqual(pick(sendFrame('< send 1ABCDEF 1 ff >')), [0x1abcdef, true, false, 1, 0, 'ff']);
    assert.deepEqual(pick(sendFrame('< send 7FF 8 1 2 3 4 5 6 7 8 >')), [
      0x7ff,
      false,
      false,
      8,
      0,
      '0102030405060708',
    ]);
    assert.deepEqual(pick(sendFrame('< send 7FF F 1 2 3 4 5 6 7 8 >')), [
      0x7ff,
      false,
      false,
      8,
      15,
      '0102030405060708',
    ]);
    assert.deepEqual(pick(sendFrame('< send 7FF 9 1 2 3 4 5 6 7 8 >')), [
      0x7ff,
      false,
      false,
      8,
      9,
      '0102030405060708',
    ]);
    const b12 = Array.from({ length: 12 }, (_, i) => i.toString(16)).join(' ');
    assert.deepEqual(pick(sendFrame(`< send 1 C ${b12} >`)), [
      1,
      false,
      true,
      12,
      0,
      '000102030405060708090a0b',
    ]);
    assert.deepEqual(pick(sendFrame(`< send 1 12 ${b12} >`)), [
      1,
      false,
      true,
      12,
      0,
      '000102030405060708090a0b',
    ]);
    const b64 = Array.from({ length: 64 }, () => 'a').join(' ');
    assert.equal(pick(sendFrame(`< send 1 40 ${b64} >`))[3], 64);
    assert.equal(pick(sendFrame(`< send 1 64 ${b64} >`))[3], 64);
    assert.match(String(sendFrame('< send 1 2 1 >')), /length "2" does not match the 1 data bytes/);
    assert.match(String(sendFrame('< send 1 >')), /needs an identifier and a length/);
  });

  test('written elements parse back to the same frame (the client link reads what the server writes)', () => {
    const ts = new TimestampText();
    fc.assert(
      fc.property(
        fc.record({
          extended: fc.boolean(),
          id: fc.integer({ min: 0, max: 0x1fffffff }),
          kind: fc.constantFrom('classic', 'rtr', 'fd', 'len8'),
          len: fc.constantFrom(0, 1, 5, 8, 12, 64),
          brs: fc.boolean(),
          esi: fc.boolean(),
          ns: fc.bigInt({ min: 0n, max: 4_000_000_000_000_000_000n }),
        }),
        (r) => {
          const id = r.extended ? r.id : r.id & 0x7ff;
          const len = r.kind === 'fd' ? r.len : Math.min(r.len, 8);
          const f = makeCanFrame({
            id,
            extended: r.extended,
            rtr: r.kind === 'rtr',
            fd: r.kind === 'fd',
            brs: r.kind === 'fd' && r.brs,
            esi: r.kind === 'fd' && r.esi,
            len: r.kind === 'len8' ? 8 : len,
            len8Dlc: r.kind === 'len8' ? 11 : 0,
            data:
              r.kind === 'rtr'
                ? []
                : Array.from({ length: r.kind === 'len8' ? 8 : len }, (_, i) => (i * 37) & 0xff),
          });
          const out = new ByteWriter(16);
          writeRawFrame(out, f, ts.of(r.ns));
          const written = text(out.take());
          assert.equal(written[0], ' ');
          const back = scratchCanFrame();
          assert.equal(parseServerFrame(words(written.trim()), back, scratchPayloads()), null, written);
          assert.equal(back.timestampNs, (r.ns / 1000n) * 1000n);
          const expectLen8 = f.rtr ? f.len8Dlc : 0; // < frame > carries 8 bytes, not the raw DLC
          assert.deepEqual(
            [
              back.id,
              back.extended,
              back.rtr,
              back.fd,
              back.brs,
              back.esi,
              back.len,
              back.len8Dlc,
              [...back.data],
            ],
            [f.id, f.extended, f.rtr, f.fd, f.brs, f.esi, f.len, expectLen8, [...f.data]],
          );
          // And the send command the link writes parses back on the server side.
          const cmd = new ByteWriter(16);
          writeSendCommand(cmd, f);
          const sent = scratchCanFrame();
          const w = words(text(cmd.take()));
          const err = w.is(0, 'fdsend')
            ? parseFdSend(w, sent, scratchPayloads())
            : w.is(0, 'sendrtr')
              ? parseSendRtr(w, sent, scratchPayloads())
              : parseSend(w, sent, scratchPayloads());
          assert.equal(err, null);
          assert.deepEqual(
            [
              sent.id,
              sent.extended,
              sent.rtr,
              sent.fd,
              sent.brs,
              sent.esi,
              sent.len,
              sent.len8Dlc,
              [...sent.data],
            ],
            [f.id, f.extended, f.rtr, f.fd, f.brs, f.esi, f.len, f.len8Dlc, [...f.data]],
          );
        },
      ),
    );
  });
});

/** A session with a fake host and manual timers. */
function fakeSession(): {
  s: SocketcandSession;
  replies: string[];
  sent: CanFrame[];
  bcm: CanFrame[];
  advance(ms: number): void;
  feed(el: string): boolean;
} {
  let now = 0;
  const timers: { at: number; fn: () => void; id: number }[] = [];
  let nextId = 1;
  const replies: string[] = [];
  const sent: CanFrame[] = [];
  const bcm: CanFrame[] = [];
  const host: SessionHost = {
    open: (b) => (b === 'default' ? null : 'no such bus'),
    transmit: (f) => {
      sent.push(makeCanFrame({ ...f, data: f.data }));
      return null;
    },
    reply: (e) => replies.push(e),
    modeChanged: () => {},
    bcmFrame: (f) => bcm.push(f),
    statistics: () => ({ rbytes: 1, rpackets: 2, tbytes: 3, tpackets: 4 }),
    errorMask: () => {},
    introduce: () => '< vdc-peer 1 >',
    timers: {
      setTimeout: (fn, ms) => {
        const id = nextId++;
        timers.push({ at: now + ms, fn, id });
        return id;
      },
      clearTimeout: (h) => {
        const i = timers.findIndex((x) => x.id === h);
        if (i >= 0) timers.splice(i, 1);
      },
      now: () => now,
    },
  };
  const s = new SocketcandSession(host);
  return {
    s,
    replies,
    sent,
    bcm,
    advance(ms) {
      const end = now + ms;
      for (;;) {
        timers.sort((a, b) => a.at - b.at);
        const next = timers[0];
        if (next === undefined || next.at > end) break;
        timers.shift();
        now = next.at;
        next.fn();
      }
      now = end;
    },
    feed(el) {
      const b = ascii(el);
      return s.element(b, 0, b.length);
    },
  };
}

describe('SocketcandSession', () => {
  test('cyclic jobs fire at their interval (first after one interval); sub-ms intervals are raised', () => {
    const x = fakeSession();
    assert.ok(x.feed('< open default >'));
    assert.ok(x.feed('< add 0 10000 123 1 AA >'));
    x.advance(9);
    assert.equal(x.sent.length, 0);
    x.advance(41);
    assert.equal(x.sent.length, 5);
    assert.ok(x.feed('< add 0 10 124 0 >'));
    assert.equal(x.s.counters.intervalsRaised, 1);
    x.advance(10);
    assert.equal(x.sent.filter((f) => f.id === 0x124).length, 10);
    assert.ok(x.feed('< add 1 0 123 1 BB >'), 'add again replaces the job');
    x.advance(999);
    assert.equal(x.sent.filter((f) => f.id === 0x123).length, 6);
    x.advance(1);
    assert.equal(x.sent.filter((f) => f.id === 0x123).at(-1)!.data[0], 0xbb);
    x.s.close();
    const n = x.sent.length;
    x.advance(5000);
    assert.equal(x.sent.length, n, 'nothing after close');
  });

  test('receive jobs: content change, throttle keeps the latest, multiplex selection', () => {
    const x = fakeSession();
    x.feed('< open default >');
    x.feed('< filter 0 50000 300 2 FF 0F >');
    const offer = (id: number, data: number[]) => x.s.offerBcm(makeCanFrame({ id, data }));
    offer(0x300, [1, 0x12]); // first: sent
    offer(0x300, [1, 0x22]); // masked unchanged
    offer(0x300, [1, 0x23]); // changed, but throttled
    offer(0x300, [2, 0x23]); // changed, replaces the held one
    assert.deepEqual(
      x.bcm.map((f) => [...f.data]),
      [[1, 0x12]],
    );
    x.advance(50);
    assert.deepEqual(
      x.bcm.map((f) => [...f.data]),
      [
        [1, 0x12],
        [2, 0x23],
      ],
    );
    x.feed('< muxfilter 0 0 400 3 FF 00 00 00 00 00 00 00 01 FF 00 00 00 00 00 00 02 00 FF 00 00 00 00 00 >');
    x.bcm.length = 0;
    offer(0x400, [1, 5, 5]); // mux 1, first
    offer(0x400, [1, 5, 6]); // mux 1 watches byte 1 only: unchanged
    offer(0x400, [2, 5, 6]); // mux 2, first
    offer(0x400, [2, 9, 6]); // mux 2 watches byte 2: unchanged
    offer(0x400, [2, 9, 7]); // changed
    offer(0x400, [3, 0, 0]); // no such mux value
    assert.deepEqual(
      x.bcm.map((f) => [...f.data]),
      [
        [1, 5, 5],
        [2, 5, 6],
        [2, 9, 7],
      ],
    );
  });

  test('statistics in control mode only; modes and errors', () => {
    const x = fakeSession();
    assert.equal(x.feed('< controlmode >'), false);
    assert.match(x.replies.at(-1)!, /no bus is open/);
    x.feed('< open default >');
    x.feed('< controlmode >');
    x.feed('< statistics 5 >');
    x.advance(25);
    assert.deepEqual(
      x.replies.filter((r) => r.startsWith('< stat')),
      ['< stat 1 2 3 4 >', '< stat 1 2 3 4 >'],
      'intervals under 10 ms mean 10 ms',
    );
    x.feed('< rawmode >');
    x.advance(100);
    assert.equal(x.replies.filter((r) => r.startsWith('< stat')).length, 2, 'not outside control mode');
    assert.equal(x.s.counters.errors, 1);
  });
});
