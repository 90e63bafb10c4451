/**
 * The cannelloni datagram format, byte by byte. Every expected datagram below is written by hand
 * from the format's description (header: version 2, op code 0, sequence, count as u16 big-endian;
 * frame: can_id u32 big-endian with Linux's EFF 0x80000000 / RTR 0x40000000 flags, the length byte
 * with 0x80 marking CAN FD, then for FD a flags byte (BRS 0x01, ESI 0x02, FDF 0x04), then the data,
 * none for remote requests), not from our encoder.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type CanFrame, makeCanFrame } from '../../src/core/bus/can-frame.js';
import {
  CANNELLONI_DEFAULT_DATAGRAM,
  CannelloniDecoder,
  decodeCannelloni,
  encodeCannelloni,
} from '../../src/core/net/cannelloni.js';

const hex = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
const toHex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const seq = (n: number, from = 0): number[] => Array.from({ length: n }, (_, i) => (from + i) & 0xff);

/** A frame as compared after a trip (no timestamp, no origin). */
const shape = (f: CanFrame) => ({
  id: f.id,
  extended: f.extended,
  rtr: f.rtr,
  fd: f.fd,
  brs: f.brs,
  esi: f.esi,
  len: f.len,
  data: toHex(f.data),
});

interface Golden {
  what: string;
  frame: CanFrame;
  bytes: string;
}

const GOLDEN: Golden[] = [
  {
    what: 'classic, standard id 0x123, 4 bytes',
    frame: makeCanFrame({ id: 0x123, data: [0xde, 0xad, 0xbe, 0xef] }),
    bytes: '00000123 04 deadbeef',
  },
  {
    what: 'classic, standard id 0, no data',
    frame: makeCanFrame({ id: 0 }),
    bytes: '00000000 00',
  },
  {
    what: 'classic, extended id 0x12345678, 8 bytes (EFF flag in the top bit)',
    frame: makeCanFrame({ id: 0x12345678, extended: true, data: seq(8, 1) }),
    bytes: '92345678 08 0102030405060708',
  },
  {
    what: 'remote request, standard id 0x7ff, DLC 3: no data bytes',
    frame: makeCanFrame({ id: 0x7ff, rtr: true, len: 3 }),
    bytes: '400007ff 03',
  },
  {
    what: 'remote request, extended id 0x1abcdef0, DLC 8',
    frame: makeCanFrame({ id: 0x1abcdef0, extended: true, rtr: true, len: 8 }),
    bytes: 'dabcdef0 08',
  },
  {
    what: 'CAN FD, standard id 0x10, 12 bytes, BRS (len 0x80|12, flags FDF|BRS)',
    frame: makeCanFrame({ id: 0x10, fd: true, brs: true, data: seq(12, 0xa0) }),
    bytes: `00000010 8c 05 ${toHex(Uint8Array.from(seq(12, 0xa0)))}`,
  },
  {
    what: 'CAN FD, extended id 1, 64 bytes, ESI (len 0x80|64, flags FDF|ESI)',
    frame: makeCanFrame({ id: 1, extended: true, fd: true, esi: true, data: seq(64) }),
    bytes: `80000001 c0 06 ${toHex(Uint8Array.from(seq(64)))}`,
  },
  {
    what: 'CAN FD, no data, no BRS/ESI (flags FDF only)',
    frame: makeCanFrame({ id: 0x20, fd: true }),
    bytes: '00000020 80 04',
  },
];

describe('cannelloni golden datagrams', () => {
  for (const g of GOLDEN) {
    it(`encodes and decodes: ${g.what}`, () => {
      const datagram = `02 00 07 0001 ${g.bytes}`;
      const [got, ...more] = encodeCannelloni([g.frame], { firstSeq: 7 });
      assert.equal(more.length, 0);
      assert.equal(toHex(got!), toHex(hex(datagram)));
      const d = decodeCannelloni(hex(datagram));
      assert.ok(d.ok, d.ok ? '' : d.detail);
      assert.deepEqual(d.header, { version: 2, opCode: 0, seq: 7, count: 1 });
      assert.deepEqual(d.frames.map(shape), [shape(g.frame)]);
      assert.deepEqual(d.skipped, []);
    });
  }

  it('packs several frames into one datagram in order, count big-endian', () => {
    const frames = GOLDEN.map((g) => g.frame);
    const [got] = encodeCannelloni(frames, { firstSeq: 0xfe });
    assert.equal(toHex(got!), toHex(hex(`02 00 fe 0008 ${GOLDEN.map((g) => g.bytes).join(' ')}`)));
    const d = decodeCannelloni(got!);
    assert.ok(d.ok);
    assert.deepEqual(d.frames.map(shape), frames.map(shape));
  });

  it('splits at the datagram size without splitting a frame; sequence numbers count up and wrap', () => {
    // 300 empty classic frames of 5 bytes: (1472 - 5) / 5 = 293 fit in the first datagram.
    const frames = Array.from({ length: 300 }, (_, i) => makeCanFrame({ id: i }));
    const out = encodeCannelloni(frames, { firstSeq: 255 });
    assert.deepEqual(
      out.map((d) => d.length),
      [5 + 293 * 5, 5 + 7 * 5],
    );
    assert.equal(toHex(out[0]!.subarray(0, 5)), '0200ff0125', '293 = 0x0125');
    assert.equal(toHex(out[1]!.subarray(0, 5)), '0200000007', 'the sequence wraps to 0');
    assert.equal(toHex(out[0]!.subarray(5, 15)), '0000000000' + '0000000100');
    assert.ok(out.every((d) => d.length <= CANNELLONI_DEFAULT_DATAGRAM));
    // The smallest allowed size holds exactly one largest frame.
    const big = makeCanFrame({ id: 5, fd: true, data: new Uint8Array(64) });
    assert.deepEqual(
      encodeCannelloni([big, big], { maxDatagram: 75 }).map((d) => d.length),
      [75, 75],
    );
    assert.throws(() => encodeCannelloni([big], { maxDatagram: 74 }), RangeError);
    assert.deepEqual(encodeCannelloni([]), []);
  });

  it('sends a classic frame with a raw DLC 9..15 as DLC 8 (the format has no field for it)', () => {
    const f = makeCanFrame({ id: 0x1, data: seq(8), len8Dlc: 12 });
    assert.equal(toHex(encodeCannelloni([f])[0]!), toHex(hex('02 00 00 0001 00000001 08 0001020304050607')));
  });
});

describe('cannelloni decoding of what others may send', () => {
  it('an empty datagram (count 0) is sound and carries nothing (a keepalive)', () => {
    const d = decodeCannelloni(hex('02 00 2a 0000'));
    assert.ok(d.ok);
    assert.deepEqual(d.header, { version: 2, opCode: 0, seq: 42, count: 0 });
    assert.deepEqual(d.frames, []);
  });

  it('ignores the FDF flag and unknown flag bits; takes BRS and ESI from the flags byte', () => {
    const d = decodeCannelloni(hex('02 00 00 0002 00000001 81 f8 aa 00000002 82 03 bbcc'));
    assert.ok(d.ok);
    assert.deepEqual(
      d.frames.map((f) => [f.id, f.fd, f.brs, f.esi, toHex(f.data)]),
      [
        [1, true, false, false, 'aa'],
        [2, true, true, true, 'bbcc'],
      ],
    );
  });

  it('pads an FD length between two sizes up to the next one (13 -> 16) and says so', () => {
    const d = decodeCannelloni(hex(`02 00 00 0001 00000003 8d 04 ${'11'.repeat(13)}`));
    assert.ok(d.ok);
    assert.equal(d.padded, 1);
    assert.equal(d.frames[0]!.len, 16);
    assert.equal(toHex(d.frames[0]!.data), `${'11'.repeat(13)}000000`);
  });

  it('keeps the low 11 bits of a standard identifier with higher bits set (as CAN drivers do)', () => {
    const d = decodeCannelloni(hex('02 00 00 0001 1ffff923 00'));
    assert.ok(d.ok);
    assert.deepEqual([d.frames[0]!.id, d.frames[0]!.extended], [0x123, false]);
  });

  it('skips frames that cannot be CAN frames and delivers the rest of the datagram', () => {
    const d = decodeCannelloni(
      hex(
        [
          '02 00 00 0006',
          `00000001 09 ${'00'.repeat(9)}`, // classic length 9
          '00000002 01 77', // fine
          `00000003 c1 04 ${'00'.repeat(65)}`, // FD length 65
          '40000004 88 04', // remote request marked FD: flags byte, no data
          '20000004 08 0000000000000000', // error frame
          '00000005 00', // fine
        ].join(' '),
      ),
    );
    assert.ok(d.ok, d.ok ? '' : d.detail);
    assert.deepEqual(d.skipped, [
      { index: 0, reason: 'classic-length' },
      { index: 2, reason: 'fd-length' },
      { index: 3, reason: 'rtr-fd' },
      { index: 4, reason: 'error-frame' },
    ]);
    assert.deepEqual(
      d.frames.map((f) => f.id),
      [2, 5],
    );
  });

  const refused: [string, string, string][] = [
    ['short', '', 'no bytes'],
    ['short', '02 00 00 00', 'four bytes'],
    ['version', '01 00 00 0000', 'version 1'],
    ['version', '03 00 00 0001 00000001 00', 'version 3'],
    ['op-code', '02 01 00 0000', 'ACK'],
    ['op-code', '02 02 00 0000', 'NACK'],
    ['op-code', '02 07 00 0000', 'op code 7'],
    ['truncated', '02 00 00 0001', 'count 1, no frame'],
    ['truncated', '02 00 00 0001 000001', 'half a frame header'],
    ['truncated', '02 00 00 0001 00000001 80', 'FD frame without its flags byte'],
    ['truncated', '02 00 00 0001 00000001 04 aabbcc', 'three of four data bytes'],
    ['truncated', '02 00 00 0002 00000001 01 aa', 'the second frame missing'],
    ['truncated', `02 00 00 0001 00000001 ff 00 ${'00'.repeat(126)}`, 'FD length 127, 126 bytes'],
    ['trailing', '02 00 00 0000 00', 'a byte after a keepalive'],
    ['trailing', '02 00 00 0001 00000001 01 aa bb', 'a byte after the last frame'],
  ];
  for (const [error, bytes, what] of refused) {
    it(`refuses the whole datagram (${error}): ${what}`, () => {
      let delivered = 0;
      const r = new CannelloniDecoder().decode(hex(bytes), () => delivered++);
      assert.equal(r.ok, false);
      assert.equal(r.error, error);
      assert.match(r.detail, /\w/);
      assert.equal(delivered, 0, 'nothing of a refused datagram is delivered');
    });
  }

  it('reuses one scratch frame: a frame is valid only during the callback', () => {
    const seen: CanFrame[] = [];
    new CannelloniDecoder().decode(hex('02 00 00 0002 00000001 01 aa 00000002 01 bb'), (f) => seen.push(f));
    assert.equal(seen[0], seen[1]);
  });
});
