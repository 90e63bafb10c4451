import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  CAN_FD_LENGTHS,
  type CanFrame,
  canFdDlcToLen,
  canFdLenToDlc,
  canFrameBits,
  canFrameDataPhaseBits,
  formatCandump,
  isValidFdLength,
  makeCanFrame,
  parseCandump,
  parseCandumpLine,
  stampCanFrame,
  validateCanFrame,
} from '../../src/core/bus/can-frame.js';
import { BUS_ERROR_DISPOSITION, CanFrameError } from '../../src/core/bus/errors.js';

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof CanFrameError, `expected CanFrameError, got ${String(err)}`);
    return err.code;
  }
  assert.fail('expected a throw');
}

const base: CanFrame = makeCanFrame({ id: 0x123, data: [1, 2] });

describe('makeCanFrame', () => {
  it('fills defaults and derives len from data', () => {
    assert.deepEqual(base, {
      id: 0x123,
      extended: false,
      rtr: false,
      fd: false,
      brs: false,
      esi: false,
      len: 2,
      len8Dlc: 0,
      data: new Uint8Array([1, 2]),
      timestampNs: 0n,
      origin: 0,
    });
  });

  it('copies the data it is given', () => {
    const src = new Uint8Array([9, 8, 7]);
    const f = makeCanFrame({ id: 1, data: src });
    src[0] = 0;
    assert.equal(f.data[0], 9);
    assert.notEqual(f.data.buffer, src.buffer);
  });

  it('RTR: len is the requested DLC, no data', () => {
    const f = makeCanFrame({ id: 0x7ff, rtr: true, len: 4 });
    assert.equal(f.len, 4);
    assert.equal(f.data.length, 0);
    assert.equal(makeCanFrame({ id: 1, rtr: true }).len, 0);
  });

  it('accepts the identifier bounds', () => {
    assert.equal(makeCanFrame({ id: 0x7ff }).id, 0x7ff);
    assert.equal(makeCanFrame({ id: 0x1fffffff, extended: true }).id, 0x1fffffff);
    assert.equal(makeCanFrame({ id: 0, extended: true }).extended, true);
  });

  it('accepts every FD length and len8Dlc on classic 8-byte frames', () => {
    for (const len of CAN_FD_LENGTHS) {
      assert.equal(makeCanFrame({ id: 1, fd: true, brs: true, data: new Uint8Array(len) }).len, len);
    }
    assert.equal(makeCanFrame({ id: 1, data: new Uint8Array(8), len8Dlc: 15 }).len8Dlc, 15);
    assert.equal(makeCanFrame({ id: 1, rtr: true, len: 8, len8Dlc: 9 }).len8Dlc, 9);
  });

  const bad: [string, Parameters<typeof makeCanFrame>[0]][] = [
    ['ERR_CAN_ID_RANGE', { id: 0x800 }],
    ['ERR_CAN_ID_RANGE', { id: 0x20000000, extended: true }],
    ['ERR_CAN_ID_RANGE', { id: -1 }],
    ['ERR_CAN_ID_RANGE', { id: 1.5 }],
    ['ERR_CAN_RTR_FD', { id: 1, rtr: true, fd: true }],
    ['ERR_CAN_FD_FLAGS_ON_CLASSIC', { id: 1, brs: true }],
    ['ERR_CAN_FD_FLAGS_ON_CLASSIC', { id: 1, esi: true }],
    ['ERR_CAN_LENGTH', { id: 1, data: new Uint8Array(9) }],
    ['ERR_CAN_LENGTH', { id: 1, fd: true, data: new Uint8Array(13) }],
    ['ERR_CAN_LENGTH', { id: 1, fd: true, data: new Uint8Array(65) }],
    ['ERR_CAN_LENGTH', { id: 1, rtr: true, len: 9 }],
    ['ERR_CAN_LEN8_DLC', { id: 1, data: new Uint8Array(7), len8Dlc: 9 }],
    ['ERR_CAN_LEN8_DLC', { id: 1, data: new Uint8Array(8), len8Dlc: 8 }],
    ['ERR_CAN_LEN8_DLC', { id: 1, data: new Uint8Array(8), len8Dlc: 16 }],
    ['ERR_CAN_LEN8_DLC', { id: 1, fd: true, data: new Uint8Array(8), len8Dlc: 9 }],
    ['ERR_CAN_DATA_LENGTH', { id: 1, len: 3, data: [1] }],
    ['ERR_CAN_DATA_LENGTH', { id: 1, rtr: true, len: 1, data: [1] }],
    ['ERR_CAN_FIELD_TYPE', { id: 1, data: [256] }],
    ['ERR_CAN_FIELD_TYPE', { id: 1, data: [1.5] }],
    ['ERR_CAN_FIELD_TYPE', { id: 1, timestampNs: -1n }],
    ['ERR_CAN_FIELD_TYPE', { id: 1, origin: -1 }],
  ];
  for (const [want, init] of bad) {
    it(`rejects ${JSON.stringify(init, (_k, v) => (typeof v === 'bigint' ? `${v}n` : v))} with ${want}`, () => {
      assert.equal(
        code(() => makeCanFrame(init)),
        want,
      );
    });
  }

  it('reports RTR+FD before the FD-flags rule', () => {
    assert.equal(
      code(() => makeCanFrame({ id: 1, rtr: true, fd: true, brs: true })),
      'ERR_CAN_RTR_FD',
    );
  });

  it('every frame error code is classified', () => {
    assert.equal(BUS_ERROR_DISPOSITION.ERR_CAN_ID_RANGE, 'reject');
    const err = new CanFrameError('ERR_CAN_PARSE', 'x');
    assert.equal(err.disposition, 'reject');
    assert.equal(err.name, 'CanFrameError');
  });
});

describe('validateCanFrame', () => {
  it('returns null for a valid frame and a code for a hand-built bad one', () => {
    assert.equal(validateCanFrame(base), null);
    assert.equal(validateCanFrame({ ...base, len: 3 }), 'ERR_CAN_DATA_LENGTH');
    assert.equal(validateCanFrame({ ...base, fd: 1 } as unknown as CanFrame), 'ERR_CAN_FIELD_TYPE');
    assert.equal(validateCanFrame({ ...base, data: [1, 2] } as unknown as CanFrame), 'ERR_CAN_FIELD_TYPE');
    assert.equal(validateCanFrame({ ...base, timestampNs: 0 } as unknown as CanFrame), 'ERR_CAN_FIELD_TYPE');
  });
});

describe('stampCanFrame', () => {
  it('copies fields, shares data, sets timestamp and origin', () => {
    const s = stampCanFrame(base, 42n, 7);
    assert.equal(s.timestampNs, 42n);
    assert.equal(s.origin, 7);
    assert.equal(s.data, base.data);
    assert.equal(base.timestampNs, 0n);
    assert.deepEqual(Object.keys(s), Object.keys(base));
  });
});

describe('FD length helpers', () => {
  it('maps DLC to length and back', () => {
    for (let dlc = 0; dlc < 16; dlc++) {
      const len = canFdDlcToLen(dlc);
      assert.equal(len, CAN_FD_LENGTHS[dlc]);
      assert.equal(canFdLenToDlc(len), dlc);
      assert.equal(isValidFdLength(len), true);
    }
  });

  it('rounds non-canonical lengths up like can_fd_len2dlc', () => {
    assert.equal(canFdLenToDlc(9), 9);
    assert.equal(canFdLenToDlc(13), 10);
    assert.equal(canFdLenToDlc(33), 14);
    assert.equal(canFdLenToDlc(49), 15);
    assert.equal(isValidFdLength(13), false);
    assert.equal(isValidFdLength(2.5), false);
    assert.equal(isValidFdLength(65), false);
  });

  it('throws ERR_CAN_LENGTH out of range', () => {
    assert.equal(
      code(() => canFdDlcToLen(16)),
      'ERR_CAN_LENGTH',
    );
    assert.equal(
      code(() => canFdDlcToLen(-1)),
      'ERR_CAN_LENGTH',
    );
    assert.equal(
      code(() => canFdLenToDlc(65)),
      'ERR_CAN_LENGTH',
    );
  });
});

describe('formatCandump', () => {
  const cases: [string, Parameters<typeof makeCanFrame>[0]][] = [
    ['123#DEADBEEF', { id: 0x123, data: [0xde, 0xad, 0xbe, 0xef] }],
    ['001#', { id: 1 }],
    ['12345678#', { id: 0x12345678, extended: true }],
    ['00000001#00', { id: 1, extended: true, data: [0] }],
    ['123#R', { id: 0x123, rtr: true }],
    ['123#R4', { id: 0x123, rtr: true, len: 4 }],
    ['123#R8_F', { id: 0x123, rtr: true, len: 8, len8Dlc: 15 }],
    ['123##0', { id: 0x123, fd: true }],
    ['123##1AABB', { id: 0x123, fd: true, brs: true, data: [0xaa, 0xbb] }],
    ['123##2AABB', { id: 0x123, fd: true, esi: true, data: [0xaa, 0xbb] }],
    ['1FFFFFFF##3', { id: 0x1fffffff, extended: true, fd: true, brs: true, esi: true }],
    ['7FF#0102030405060708_9', { id: 0x7ff, data: [1, 2, 3, 4, 5, 6, 7, 8], len8Dlc: 9 }],
  ];
  for (const [want, init] of cases) {
    it(`writes ${want}`, () => {
      const f = makeCanFrame(init);
      assert.equal(formatCandump(f), want);
      assert.deepEqual(parseCandump(want), f);
    });
  }

  it('writes a -L log line when given an interface name', () => {
    const f = makeCanFrame({ id: 0x123, data: [1], timestampNs: 1_700_000_000_123_456_789n });
    assert.equal(formatCandump(f, 'vcan0'), '(1700000000.123456) vcan0 123#01');
    assert.equal(formatCandump(makeCanFrame({ id: 1 }), 'can0'), '(0000000000.000000) can0 001#');
  });

  it('refuses invalid frames and unusable interface names', () => {
    assert.equal(
      code(() => formatCandump({ ...base, len: 5 })),
      'ERR_CAN_DATA_LENGTH',
    );
    assert.equal(
      code(() => formatCandump(base, 'my can')),
      'ERR_CAN_FIELD_TYPE',
    );
    assert.equal(
      code(() => formatCandump(base, '')),
      'ERR_CAN_FIELD_TYPE',
    );
  });

  it('writes 64-byte FD frames', () => {
    const data = Uint8Array.from({ length: 64 }, (_, i) => i);
    const s = formatCandump(makeCanFrame({ id: 0x10, fd: true, data }));
    assert.equal(s.length, '010##0'.length + 128);
    assert.deepEqual(parseCandump(s).data, data);
  });
});

describe('parseCandump', () => {
  it('accepts can-utils variants', () => {
    assert.deepEqual(
      parseCandump('123#de.ad.be.ef'),
      makeCanFrame({ id: 0x123, data: [0xde, 0xad, 0xbe, 0xef] }),
    );
    assert.deepEqual(parseCandump('1a2#.11'), makeCanFrame({ id: 0x1a2, data: [0x11] }));
    assert.deepEqual(parseCandump('123#11.'), makeCanFrame({ id: 0x123, data: [0x11] }));
    assert.deepEqual(parseCandump('123#r'), makeCanFrame({ id: 0x123, rtr: true }));
    assert.deepEqual(parseCandump('123#r3'), makeCanFrame({ id: 0x123, rtr: true, len: 3 }));
    assert.deepEqual(parseCandump('  123#01  \n'), makeCanFrame({ id: 0x123, data: [1] }));
    assert.deepEqual(parseCandump('123##4AA'), makeCanFrame({ id: 0x123, fd: true, data: [0xaa] }));
    assert.deepEqual(
      parseCandump('123##5AA'),
      makeCanFrame({ id: 0x123, fd: true, brs: true, data: [0xaa] }),
    );
    assert.deepEqual(
      parseCandump('123##1.AA.BB'),
      makeCanFrame({ id: 0x123, fd: true, brs: true, data: [0xaa, 0xbb] }),
    );
    assert.deepEqual(
      parseCandump('123#1122334455667788_c'),
      makeCanFrame({ id: 0x123, data: [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88], len8Dlc: 12 }),
    );
  });

  it('parses log lines (6 or 9 digit fraction, optional direction)', () => {
    const f = parseCandump('(1700000000.123456) vcan0 123#01');
    assert.equal(f.timestampNs, 1_700_000_000_123_456_000n);
    const line = parseCandumpLine('(0000000001.000000001)   can1 12345678##1 T');
    assert.equal(line.timestampNs, 1_000_000_001n);
    assert.equal(line.ifname, 'can1');
    assert.equal(line.direction, 'T');
    assert.equal(line.frame.extended, true);
    assert.equal(line.frame.brs, true);
    assert.equal(line.frame.timestampNs, 1_000_000_001n);
    assert.equal(parseCandumpLine('(1.5) can0 001#').timestampNs, 1_500_000_000n);
    assert.equal(parseCandumpLine('(1.5) can0 001#').direction, null);
  });

  const bad = [
    '',
    '12#00',
    '1234#00',
    '12345#00', // CAN XL vcid/prio form
    'XYZ#00',
    '123',
    '123#0',
    '123#001',
    '123#G0',
    '123#..00',
    '123#000102030405060708',
    '800#', // standard id above 0x7FF
    '20000080#0000000000000000', // error frame
    '123#R9',
    '123#R4x',
    '123#R4_9',
    '123#R8_8',
    '123##',
    `123##1${'00'.repeat(13)}`, // non-canonical FD length
    `123##1${'00'.repeat(65)}`,
    '123#00_9',
    '123#0102030405060708_8',
    '123#0102030405060708_9x',
    '123##00102030405060708_9',
    'DROPCOUNT: 3',
    '(1.0) can0',
    '(1.0)can0 123#',
    '(x.0) can0 123#',
    '(1.0) can0 123# X',
  ];
  for (const text of bad) {
    it(`rejects ${JSON.stringify(text)} with ERR_CAN_PARSE`, () => {
      assert.equal(
        code(() => parseCandump(text)),
        'ERR_CAN_PARSE',
      );
    });
  }

  it('keeps the validation error as cause', () => {
    try {
      parseCandump('800#');
      assert.fail('expected a throw');
    } catch (err) {
      assert.ok(err instanceof CanFrameError);
      assert.equal(err.code, 'ERR_CAN_PARSE');
      assert.ok(err.cause instanceof CanFrameError);
      assert.equal(err.cause.code, 'ERR_CAN_ID_RANGE');
    }
  });
});

describe('canFrameBits', () => {
  it('classic frames: 47 + 8n (standard), 67 + 8n (extended), RTR carries no data bits', () => {
    assert.equal(canFrameBits(makeCanFrame({ id: 1 })), 47);
    assert.equal(canFrameBits(makeCanFrame({ id: 1, data: new Uint8Array(8) })), 111);
    assert.equal(canFrameBits(makeCanFrame({ id: 1, extended: true, data: new Uint8Array(8) })), 131);
    assert.equal(canFrameBits(makeCanFrame({ id: 1, rtr: true, len: 8 })), 47);
    assert.equal(canFrameDataPhaseBits(makeCanFrame({ id: 1, data: new Uint8Array(8) })), 0);
  });

  it('FD frames: CRC17 up to 16 bytes, CRC21 above; data phase only with BRS', () => {
    const fd = (len: number, brs: boolean, extended = false) =>
      makeCanFrame({ id: 1, extended, fd: true, brs, data: new Uint8Array(len) });
    assert.equal(canFrameBits(fd(0, false)), 62);
    assert.equal(canFrameBits(fd(16, false)), 62 + 128);
    assert.equal(canFrameBits(fd(20, false)), 67 + 160);
    assert.equal(canFrameBits(fd(64, true, true)), 86 + 512);
    assert.equal(canFrameDataPhaseBits(fd(64, false)), 0);
    assert.equal(canFrameDataPhaseBits(fd(8, true)), 32 + 64);
    assert.equal(canFrameDataPhaseBits(fd(64, true)), 37 + 512);
  });
});
