// The canRecvBatch/canSendBatch record layout helpers (pure; the agreement with the addon's
// own constants is checked in test/socketcan/native-can.test.ts).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  CAN_MAX_DLEN,
  CAN_MTU,
  CAN_RECORD_DATA_OFFSET,
  CAN_RECORD_MSG_FLAGS_OFFSET,
  CAN_RECORD_SIZE,
  CAN_RECORD_TIMESTAMP_OFFSET,
  CAN_RECORD_WIRE_SIZE_OFFSET,
  CANFD_FDF,
  CANFD_MAX_DLEN,
  CANFD_MTU,
  createRawCanRecord,
  HOST_LITTLE_ENDIAN,
  readRecord,
  writeRecord,
} from '../../src/node/native/can-records.js';

const CAN_EFF_FLAG = 0x80000000;
const CAN_RTR_FLAG = 0x40000000;
const CANFD_BRS = 0x01;
const CANFD_ESI = 0x02;

function dv(buf: Uint8Array): DataView {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
}

describe('can-records layout constants', () => {
  it('matches struct canfd_frame plus the 16-byte trailer', () => {
    assert.equal(CAN_RECORD_SIZE, 88);
    assert.equal(CAN_RECORD_DATA_OFFSET, 8);
    assert.equal(CAN_RECORD_WIRE_SIZE_OFFSET, 72);
    assert.equal(CAN_RECORD_MSG_FLAGS_OFFSET, 76);
    assert.equal(CAN_RECORD_TIMESTAMP_OFFSET, 80);
    assert.equal(CAN_RECORD_TIMESTAMP_OFFSET + 8, CAN_RECORD_SIZE);
    assert.equal(CAN_RECORD_DATA_OFFSET + CANFD_MAX_DLEN, CANFD_MTU);
    assert.equal(CAN_RECORD_DATA_OFFSET + CAN_MAX_DLEN, CAN_MTU);
    assert.equal(CANFD_FDF, 4);
  });

  it('knows the host byte order', () => {
    const probe = new Uint8Array(new Uint32Array([0x01020304]).buffer);
    assert.equal(HOST_LITTLE_ENDIAN, probe[0] === 0x04);
  });
});

describe('writeRecord', () => {
  it('writes a classic frame byte by byte in host order and zeroes the rest', () => {
    const buf = new Uint8Array(CAN_RECORD_SIZE * 2).fill(0xee);
    writeRecord(buf, 1, { canId: 0x123, len: 3, data: Uint8Array.of(1, 2, 3) });
    const r = buf.subarray(CAN_RECORD_SIZE);
    assert.ok(
      buf.subarray(0, CAN_RECORD_SIZE).every((b) => b === 0xee),
      'record 0 untouched',
    );
    const id = new DataView(r.buffer, r.byteOffset).getUint32(0, HOST_LITTLE_ENDIAN);
    assert.equal(id, 0x123);
    assert.deepEqual([...r.subarray(4, 8)], [3, 0, 0, 0]);
    assert.deepEqual([...r.subarray(8, 11)], [1, 2, 3]);
    assert.ok(
      r.subarray(11, 72).every((b) => b === 0),
      'unused payload zeroed',
    );
    const d = dv(r);
    assert.equal(d.getUint32(72, HOST_LITTLE_ENDIAN), CAN_MTU);
    assert.equal(d.getUint32(76, HOST_LITTLE_ENDIAN), 0);
    assert.equal(d.getBigUint64(80, HOST_LITTLE_ENDIAN), 0n);
  });

  it('keeps the EFF/RTR/ERR bits of can_id as an unsigned 32-bit value', () => {
    const buf = new Uint8Array(CAN_RECORD_SIZE);
    writeRecord(buf, 0, { canId: (CAN_EFF_FLAG | CAN_RTR_FLAG | 0x1abcdef0) >>> 0, len: 0 });
    assert.equal(dv(buf).getUint32(0, HOST_LITTLE_ENDIAN), 0xdabcdef0);
    const out = readRecord(dv(buf), 0, createRawCanRecord());
    assert.equal(out.canId, 0xdabcdef0);
  });

  it('makes an FD record when CANFD_FDF is in flags or fd is true', () => {
    const buf = new Uint8Array(CAN_RECORD_SIZE * 2);
    const data = Uint8Array.from({ length: 64 }, (_, k) => k + 1);
    writeRecord(buf, 0, { canId: 0x7ff, len: 64, flags: CANFD_FDF | CANFD_BRS | CANFD_ESI, data });
    writeRecord(buf, 1, { canId: 0x10, len: 12, fd: true, data: data.subarray(0, 12) });
    const out = createRawCanRecord();
    readRecord(dv(buf), 0, out);
    assert.equal(out.wireSize, CANFD_MTU);
    assert.equal(out.flags, CANFD_FDF | CANFD_BRS | CANFD_ESI);
    assert.equal(out.len, 64);
    assert.deepEqual(buf.subarray(out.dataOffset, out.dataOffset + 64), data);
    readRecord(dv(buf), 1, out);
    assert.equal(out.wireSize, CANFD_MTU);
    assert.equal(out.flags, 0);
    assert.equal(out.len, 12);
    assert.equal(out.dataOffset, CAN_RECORD_SIZE + CAN_RECORD_DATA_OFFSET);
  });

  it('writes len8_dlc and lets an RTR frame have len without data', () => {
    const buf = new Uint8Array(CAN_RECORD_SIZE);
    writeRecord(buf, 0, { canId: 0x55, len: 8, len8Dlc: 15, data: new Uint8Array(8).fill(9) });
    assert.equal(buf[7], 15);
    writeRecord(buf, 0, { canId: (0x55 | CAN_RTR_FLAG) >>> 0, len: 4 });
    const out = readRecord(dv(buf), 0, createRawCanRecord());
    assert.equal(out.len, 4);
    assert.equal(out.len8Dlc, 0);
    assert.ok(
      buf.subarray(8, 72).every((b) => b === 0),
      'previous payload cleared',
    );
  });

  it('honours the byteOffset of a subarray', () => {
    const backing = new Uint8Array(CAN_RECORD_SIZE + 5);
    const buf = backing.subarray(5);
    writeRecord(buf, 0, { canId: 0x321, len: 1, data: Uint8Array.of(0xaa) });
    assert.equal(backing[5 + 8], 0xaa);
    assert.equal(readRecord(dv(buf), 0, createRawCanRecord()).canId, 0x321);
  });

  it('rejects out-of-range fields and indexes with RangeError', () => {
    const buf = new Uint8Array(CAN_RECORD_SIZE);
    const bad: [string, () => void][] = [
      ['index past the end', () => writeRecord(buf, 1, { canId: 1, len: 0 })],
      ['negative index', () => writeRecord(buf, -1, { canId: 1, len: 0 })],
      ['fractional index', () => writeRecord(buf, 0.5, { canId: 1, len: 0 })],
      ['canId > u32', () => writeRecord(buf, 0, { canId: 2 ** 32, len: 0 })],
      ['negative canId', () => writeRecord(buf, 0, { canId: -1, len: 0 })],
      ['classic len 9', () => writeRecord(buf, 0, { canId: 1, len: 9 })],
      ['FD len 65', () => writeRecord(buf, 0, { canId: 1, len: 65, fd: true })],
      ['classic data of 9 bytes', () => writeRecord(buf, 0, { canId: 1, len: 8, data: new Uint8Array(9) })],
      ['flags > 255', () => writeRecord(buf, 0, { canId: 1, len: 0, flags: 256 })],
      ['len8Dlc 16', () => writeRecord(buf, 0, { canId: 1, len: 8, len8Dlc: 16 })],
    ];
    for (const [what, fn] of bad) assert.throws(fn, RangeError, what);
    assert.throws(() => writeRecord(new Uint8Array(87), 0, { canId: 1, len: 0 }), RangeError);
  });
});

describe('readRecord', () => {
  it('reads the trailer fields written by the kernel side', () => {
    const buf = new Uint8Array(CAN_RECORD_SIZE * 3);
    const d = dv(buf);
    const base = 2 * CAN_RECORD_SIZE;
    d.setUint32(base, 0x8000abcd, HOST_LITTLE_ENDIAN);
    d.setUint8(base + 4, 48);
    d.setUint8(base + 5, CANFD_FDF | CANFD_BRS);
    d.setUint8(base + 7, 0);
    d.setUint32(base + 72, CANFD_MTU, HOST_LITTLE_ENDIAN);
    d.setUint32(base + 76, 0x800 | 0x4, HOST_LITTLE_ENDIAN);
    d.setBigUint64(base + 80, 1_700_000_000_123_456_789n, HOST_LITTLE_ENDIAN);
    const out = createRawCanRecord();
    const same = readRecord(d, 2, out);
    assert.equal(same, out, 'fills and returns the given object');
    assert.deepEqual(out, {
      canId: 0x8000abcd,
      len: 48,
      flags: CANFD_FDF | CANFD_BRS,
      len8Dlc: 0,
      dataOffset: base + 8,
      wireSize: 72,
      msgFlags: 0x804,
      timestampNs: 1_700_000_000_123_456_789n,
    });
  });

  it('throws RangeError for an index outside the view', () => {
    const d = dv(new Uint8Array(CAN_RECORD_SIZE * 2));
    const out = createRawCanRecord();
    assert.throws(() => readRecord(d, 2, out), RangeError);
    assert.throws(() => readRecord(d, -1, out), RangeError);
  });

  it('round-trips what writeRecord wrote', () => {
    const buf = new Uint8Array(CAN_RECORD_SIZE * 4);
    const frames = [
      { canId: 0x1, len: 0 },
      { canId: (0x1fffffff | CAN_EFF_FLAG) >>> 0, len: 8, data: Uint8Array.of(8, 7, 6, 5, 4, 3, 2, 1) },
      { canId: 0x2, len: 8, len8Dlc: 9, data: new Uint8Array(8).fill(0x5a) },
      { canId: 0x3, len: 20, flags: CANFD_FDF | CANFD_ESI, data: new Uint8Array(20).fill(0xa5) },
    ];
    frames.forEach((f, i) => {
      writeRecord(buf, i, f);
    });
    const out = createRawCanRecord();
    frames.forEach((f, i) => {
      readRecord(dv(buf), i, out);
      assert.equal(out.canId, f.canId);
      assert.equal(out.len, f.len);
      assert.equal(out.flags, f.flags ?? 0);
      assert.equal(out.len8Dlc, f.len8Dlc ?? 0);
      assert.equal(out.wireSize, (f.flags ?? 0) & CANFD_FDF ? CANFD_MTU : CAN_MTU);
      assert.deepEqual(buf.subarray(out.dataOffset, out.dataOffset + f.len), f.data ?? new Uint8Array(0));
      assert.equal(out.msgFlags, 0);
      assert.equal(out.timestampNs, 0n);
    });
  });
});
