import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  decodeConfig,
  decodeHeader,
  decodeMemTable,
  decodeSingleRegion,
  decodeU64,
  decodeVringAddr,
  decodeVringFdIndex,
  decodeVringState,
  encodeConfig,
  encodeMemTable,
  encodeMessage,
  encodeSingleRegion,
  encodeU64,
  encodeVringAddr,
  encodeVringFdIndex,
  encodeVringState,
} from '../../src/core/vhost-user/codec.js';
import { FrontendReq, REPLY_FLAGS } from '../../src/core/vhost-user/protocol.js';

test('header and message encoding are little-endian u32 request, flags, size', () => {
  const m = encodeMessage(FrontendReq.GET_FEATURES, REPLY_FLAGS, encodeU64(0x1_0000_0003n));
  assert.equal(m.byteLength, 20);
  assert.deepEqual([...m.subarray(0, 12)], [1, 0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0]);
  assert.deepEqual(decodeHeader(m), { request: 1, flags: 5, size: 8 });
  assert.equal(decodeU64(m.subarray(12)), 0x1_0000_0003n);
});

test('fixed-size payloads refuse other sizes with ERR_VU_BAD_SIZE', () => {
  assert.throws(() => decodeU64(new Uint8Array(7)), { code: 'ERR_VU_BAD_SIZE' });
  assert.throws(() => decodeVringState(new Uint8Array(12)), { code: 'ERR_VU_BAD_SIZE' });
  assert.throws(() => decodeVringAddr(new Uint8Array(39)), { code: 'ERR_VU_BAD_SIZE' });
  assert.throws(() => decodeSingleRegion(new Uint8Array(32)), { code: 'ERR_VU_BAD_SIZE' });
});

test('vring state and address round trip; address wire order is desc, used, avail, log', () => {
  assert.deepEqual(decodeVringState(encodeVringState({ index: 2, num: 65535 })), { index: 2, num: 65535 });
  const a = {
    index: 1,
    flags: 0,
    desc: 0x7f00_0000_1000,
    used: 0x7f00_0000_3000,
    avail: 0x7f00_0000_2000,
    log: 0,
  };
  const bytes = encodeVringAddr(a);
  const dv = new DataView(bytes.buffer);
  assert.equal(dv.getBigUint64(16, true), BigInt(a.used));
  assert.equal(dv.getBigUint64(24, true), BigInt(a.avail));
  assert.deepEqual(decodeVringAddr(bytes), a);
});

test('addresses beyond 2^53 are refused with ERR_VU_BAD_VALUE', () => {
  const bytes = encodeVringAddr({ index: 0, flags: 0, desc: 0, used: 0, avail: 0, log: 0 });
  new DataView(bytes.buffer).setBigUint64(8, 1n << 60n, true);
  assert.throws(() => decodeVringAddr(bytes), { code: 'ERR_VU_BAD_VALUE' });
});

test('vring fd index: bits 0-7 index, bit 8 NOFD, other bits refused', () => {
  assert.deepEqual(decodeVringFdIndex(encodeVringFdIndex(2, true)), { index: 2, noFd: true });
  assert.deepEqual(decodeVringFdIndex(encodeU64(0x01)), { index: 1, noFd: false });
  assert.throws(() => decodeVringFdIndex(encodeU64(0x200)), { code: 'ERR_VU_BAD_VALUE' });
});

test('memory table: count bounds, exact or full-array sizes', () => {
  const regions = [
    { guestPhysAddr: 0, size: 0x100000, userAddr: 0x7f0000000000, mmapOffset: 0 },
    { guestPhysAddr: 0x100000000, size: 0x100000, userAddr: 0x7f0000100000, mmapOffset: 0x100000 },
  ];
  const t = encodeMemTable(regions);
  assert.equal(t.byteLength, 8 + 64);
  assert.deepEqual(decodeMemTable(t, 8), regions);
  const full = new Uint8Array(8 + 32 * 8);
  full.set(t);
  assert.deepEqual(decodeMemTable(full, 8), regions);
  assert.throws(() => decodeMemTable(t.subarray(0, 40), 8), { code: 'ERR_VU_BAD_SIZE' });
  const zero = new Uint8Array(8);
  assert.throws(() => decodeMemTable(zero, 8), { code: 'ERR_VU_BAD_VALUE' });
  const nine = new Uint8Array(8 + 32 * 9);
  new DataView(nine.buffer).setUint32(0, 9, true);
  assert.throws(() => decodeMemTable(nine, 8), { code: 'ERR_VU_BAD_VALUE' });
  assert.deepEqual(decodeSingleRegion(encodeSingleRegion(regions[1]!)), regions[1]);
});

test('config message: payload size must equal 12 + size, size bounded', () => {
  const c = encodeConfig({ offset: 0, size: 2, flags: 0, data: Uint8Array.of(1, 0) });
  assert.equal(c.byteLength, 14);
  const d = decodeConfig(c, 256);
  assert.equal(d.size, 2);
  assert.deepEqual([...d.data], [1, 0]);
  assert.throws(() => decodeConfig(c.subarray(0, 13), 256), { code: 'ERR_VU_BAD_SIZE' });
  assert.throws(() => decodeConfig(encodeConfig({ offset: 0, size: 300, flags: 0 }), 256), {
    code: 'ERR_VU_BAD_SIZE',
  });
  assert.throws(() => decodeConfig(new Uint8Array(4), 256), { code: 'ERR_VU_BAD_SIZE' });
});
