// Worked examples of the exact frame length, arbitration order and counter states.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CanErr, stateErrorFrame } from '../../src/core/bus/can-error.js';
import { makeCanFrame } from '../../src/core/bus/can-frame.js';
import { frameBitCount, frameBits } from '../../src/core/bus/frame-timing.js';
import { arbitrationKey, stateOf } from '../../src/core/bus/timed-bus.js';

const bits = () => ({ nominal: 0, data: 0, stuff: 0 });

test('classic SFF id 0, no data: 34 dominant bits get 6 stuff bits (53 bits)', () => {
  // SOF, 11 id bits, RTR, IDE, r0, DLC 0000: 19 zeros; the CRC-15 of zeros is 0: 15 more zeros.
  // 34 equal bits: a stuff bit after bits 5, 10, ..., 30 (each stuff bit starts a run of its
  // own), so 40 stuffed bits, then CRC delimiter, ACK, ACK delimiter, EOF 7, intermission 3.
  const f = makeCanFrame({ id: 0 });
  const b = frameBits(f, false, false, bits());
  assert.deepEqual(b, { nominal: 53, data: 0, stuff: 6 });
});

test('classic frames never go below 47 + 8n (SFF) / 67 + 8n (EFF) bits', () => {
  assert.ok(frameBitCount(makeCanFrame({ id: 0x555, data: [0x55, 0x55] })) >= 47 + 16);
  assert.ok(frameBitCount(makeCanFrame({ id: 0x1555555, extended: true })) >= 67);
  // RTR frames carry no data field whatever their DLC.
  const rtr = makeCanFrame({ id: 0x123, rtr: true, len: 8 });
  assert.ok(frameBitCount(rtr) <= 55, 'an RTR frame of DLC 8 is as short as a 0-byte frame');
});

test('CAN FD SFF, 64 bytes, no dynamic stuffing: 30 nominal + 549 data bits', () => {
  // id 0x555 = 10101010101, RRS 0, IDE 0, FDF 1, res 0, BRS 1 | ESI 0, DLC 1111, 64 x 01010101:
  // no five equal bits anywhere. Nominal: 17 (SOF..BRS) + 13 (CRC delimiter .. intermission);
  // data: ESI + DLC 5 + 512 + fixed stuff bit, stuff count, CRC-21 with fixed stuff bits 32.
  const f = makeCanFrame({ id: 0x555, fd: true, data: new Uint8Array(64).fill(0x55) });
  const b = frameBits(f, true, false, bits());
  assert.deepEqual(b, { nominal: 30, data: 549, stuff: 0 });
  // At 500 kbit/s / 2 Mbit/s: 60 us + 274.5 us.
  assert.equal(b.nominal * 2000 + b.data * 500, 334_500);
  // Without a bit-rate switch all 579 bits go at the nominal rate.
  assert.deepEqual(frameBits(f, false, false, bits()), { nominal: 579, data: 0, stuff: 0 });
});

test('CAN FD: CRC-17 up to 16 bytes, CRC-21 above (one fixed stuff bit more)', () => {
  const f16 = makeCanFrame({ id: 0x555, fd: true, data: new Uint8Array(16).fill(0x55) });
  const f20 = makeCanFrame({ id: 0x555, fd: true, data: new Uint8Array(20).fill(0x55) });
  assert.equal(frameBitCount(f16, true), 22 + 128 + 28 + 12);
  assert.equal(frameBitCount(f20, true), 22 + 160 + 33 + 12);
});

test('arbitration order: lower id; base before extended; data before remote; classic before FD', () => {
  const k = (id: number, o: { ext?: boolean; rtr?: boolean; fd?: boolean } = {}) =>
    arbitrationKey(id, o.ext ?? false, o.rtr ?? false, o.fd ?? false);
  assert.ok(k(0x100) < k(0x101));
  assert.ok(k(0x100) < k(0x100, { rtr: true }), 'data beats remote (RTR recessive)');
  assert.ok(k(0x100, { rtr: true }) < k(0x100 << 18, { ext: true }), 'SFF remote beats EFF (IDE)');
  assert.ok(k(0x100) < k(0x100 << 18, { ext: true }), 'SFF data beats EFF with the same base id');
  assert.ok(k((0x100 << 18) | 5, { ext: true }) < k((0x100 << 18) | 6, { ext: true }));
  assert.ok(k(0x100 << 18, { ext: true }) < k(0x100 << 18, { ext: true, rtr: true }));
  assert.ok(k(0x0ff << 18, { ext: true }) < k(0x100), 'a lower base id wins whatever the format');
  assert.ok(k(0x100) < k(0x100, { fd: true }), 'classic data (FDF 0) beats FD');
  assert.ok(k(0x100, { fd: true }) < k(0x100, { rtr: true }), 'FD (RRS 0) beats classic remote');
});

test('controller states from the counters (warning 96, passive 128, bus-off above 255)', () => {
  assert.equal(stateOf(0, 0), 'error-active');
  assert.equal(stateOf(95, 95), 'error-active');
  assert.equal(stateOf(96, 0), 'error-warning');
  assert.equal(stateOf(0, 127), 'error-warning');
  assert.equal(stateOf(128, 0), 'error-passive');
  assert.equal(stateOf(0, 200), 'error-passive');
  assert.equal(stateOf(255, 0), 'error-passive');
  assert.equal(stateOf(256, 0), 'bus-off');
});

test('state error frames with counters: CNT and the side that changed, none in the bus-off frame', () => {
  const w = stateErrorFrame('error-warning', { timestampNs: 1n, origin: 2, tec: 100, rec: 3 });
  assert.equal(w.classBits, CanErr.CRTL | CanErr.CNT);
  assert.equal(w.data[1], CanErr.CRTL_TX_WARNING);
  assert.deepEqual([w.data[6], w.data[7]], [100, 3]);
  const p = stateErrorFrame('error-passive', { timestampNs: 1n, origin: 2, tec: 10, rec: 130 });
  assert.equal(p.data[1], CanErr.CRTL_RX_PASSIVE);
  const both = stateErrorFrame('error-passive', { timestampNs: 1n, origin: 2, tec: 128, rec: 128 });
  assert.equal(both.data[1], CanErr.CRTL_RX_PASSIVE | CanErr.CRTL_TX_PASSIVE);
  const off = stateErrorFrame('bus-off', { timestampNs: 1n, origin: 2, tec: 256, rec: 0 });
  assert.equal(off.classBits, CanErr.BUSOFF);
  assert.deepEqual([off.data[6], off.data[7]], [0, 0]);
});
