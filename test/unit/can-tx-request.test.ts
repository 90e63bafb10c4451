import assert from 'node:assert/strict';
import { test } from 'node:test';
import { makeCanFrame } from '../../src/core/bus/can-frame.js';
import { CanFlag, CanMsgType } from '../../src/core/devices/can/constants.js';
import {
  type CanNegotiated,
  checkTxHeader,
  encodeRxHeader,
  type TxHeader,
} from '../../src/core/devices/can/tx-request.js';

const ALL: CanNegotiated = { classic: true, fd: true, rtr: true, lateTxAck: false };

function hdr(o: { type?: number; len?: number; flags?: number; id?: number; dlc?: number }): DataView {
  const dv = new DataView(new ArrayBuffer(16));
  dv.setUint16(0, o.type ?? CanMsgType.TX, true);
  dv.setUint16(2, o.len ?? 0, true);
  dv.setUint8(4, o.dlc ?? 0);
  dv.setUint32(8, o.flags ?? 0, true);
  dv.setUint32(12, o.id ?? 0x123, true);
  return dv;
}

function check(o: Parameters<typeof hdr>[0], neg: CanNegotiated = ALL, readable?: number): string | null {
  const out: TxHeader = { flags: 0, id: 0, len: 0, len8Dlc: 0 };
  return checkTxHeader(hdr(o), readable ?? 16 + (o.len ?? 0), neg, out);
}

test('valid frames pass: classic, extended, FD lengths, RTR', () => {
  assert.equal(check({ len: 8 }), null);
  assert.equal(check({ id: 0x1abcdef0, flags: CanFlag.EXTENDED }), null);
  for (const len of [0, 8, 12, 16, 20, 24, 32, 48, 64])
    assert.equal(check({ len, flags: CanFlag.FD }), null, `FD ${len}`);
  assert.equal(check({ len: 4, flags: CanFlag.RTR }, ALL, 16), null, 'RTR needs no payload bytes');
  assert.equal(check({ len: 4, flags: CanFlag.RTR }, ALL, 20), null, 'and accepts the zeros Linux appends');
});

test('each spec rule gives its reason', () => {
  assert.equal(check({ type: 0x0101 }), 'msg-type');
  assert.equal(check({ flags: 0x0001 }), 'undefined-flags');
  assert.equal(check({ id: 0x800 }), 'id-range');
  assert.equal(check({ id: 0x20000000, flags: CanFlag.EXTENDED }), 'id-range');
  assert.equal(check({ id: 0xe0000123, flags: CanFlag.EXTENDED }), 'id-range');
  assert.equal(check({ len: 9 }), 'length');
  assert.equal(check({ len: 13, flags: CanFlag.FD }), 'length');
  assert.equal(check({ len: 65, flags: CanFlag.FD }), 'length');
  assert.equal(check({ len: 12, flags: CanFlag.FD }, { ...ALL, fd: false }), 'fd-not-negotiated');
  assert.equal(check({ len: 1 }, { ...ALL, classic: false, rtr: false }), 'classic-not-negotiated');
  assert.equal(check({ flags: CanFlag.RTR }, { ...ALL, rtr: false }), 'rtr-not-negotiated');
  assert.equal(check({ flags: CanFlag.RTR | CanFlag.FD }), 'rtr-fd');
  assert.equal(check({ len: 8 }, ALL, 20), 'short-payload');
  assert.equal(check({}, ALL, 15), 'short-header');
});

test('reserved_classic_dlc becomes len8_dlc only for 8-byte classic frames', () => {
  const out: TxHeader = { flags: 0, id: 0, len: 0, len8Dlc: 0 };
  assert.equal(checkTxHeader(hdr({ len: 8, dlc: 12 }), 24, ALL, out), null);
  assert.equal(out.len8Dlc, 12);
  assert.equal(checkTxHeader(hdr({ len: 4, dlc: 12 }), 20, ALL, out), null, 'never a reason to refuse');
  assert.equal(out.len8Dlc, 0);
});

test('RX header: msg_type 0x0101, flags only EXTENDED|FD|RTR, reserved bytes zero', () => {
  const dv = new DataView(new ArrayBuffer(16).slice(0));
  new Uint8Array(dv.buffer).fill(0xaa);
  encodeRxHeader(
    makeCanFrame({ id: 0x1abcdef0, extended: true, fd: true, brs: true, data: new Uint8Array(12) }),
    dv,
  );
  assert.equal(dv.getUint16(0, true), 0x0101);
  assert.equal(dv.getUint16(2, true), 12);
  assert.equal(dv.getUint8(4), 0);
  assert.equal(dv.getUint8(5), 0);
  assert.equal(dv.getUint16(6, true), 0);
  assert.equal(dv.getUint32(8, true), CanFlag.EXTENDED | CanFlag.FD);
  assert.equal(dv.getUint32(12, true), 0x1abcdef0);
});
