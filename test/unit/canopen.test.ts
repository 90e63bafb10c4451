/** CANopen decoding of frames under the predefined connection set (CiA 301). */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { makeCanFrame } from '../../src/core/bus/can-frame.js';
import { decodeCanOpen } from '../../src/core/bus/canopen.js';

const d = (
  id: number,
  data: number[] = [],
  extra: { rtr?: boolean; extended?: boolean; len?: number } = {},
) => decodeCanOpen(makeCanFrame({ id, data, ...extra }));

test('NMT commands name the command and the node (0 = all)', () => {
  assert.deepEqual(d(0x000, [0x01, 0x05]), {
    service: 'nmt',
    node: 5,
    summary: 'NMT start node 5',
    fields: { cs: 1, command: 'start' },
  });
  assert.equal(d(0x000, [0x81, 0])?.summary, 'NMT reset node all nodes');
  assert.equal(d(0x000, [0x82, 3])?.summary, 'NMT reset communication node 3');
  assert.equal(d(0x000, [0x80, 3])?.summary, 'NMT enter pre-operational node 3');
  assert.equal(d(0x000, [0x02, 3])?.summary, 'NMT stop node 3');
  assert.equal(d(0x000, [0x42, 3])?.summary, 'NMT command 0x42 node 3');
  assert.match(d(0x000, [1])!.summary, /short frame/);
});

test('SYNC with and without counter, TIME of day from 1984-01-01', () => {
  assert.equal(d(0x080)?.service, 'sync');
  assert.equal(d(0x080)?.summary, 'SYNC');
  assert.equal(d(0x080, [7])?.summary, 'SYNC counter 7');
  // 2024-01-01 is 14610 days after 1984-01-01; 12:00:00.250 = 43200250 ms.
  const ms = 43_200_250;
  const days = 14_610;
  const t = d(0x100, [
    ms & 0xff,
    (ms >> 8) & 0xff,
    (ms >> 16) & 0xff,
    (ms >> 24) & 0x0f,
    days & 0xff,
    days >> 8,
  ]);
  assert.equal(t?.service, 'time');
  assert.equal(t?.summary, 'TIME 2024-01-01T12:00:00.250Z');
  assert.match(d(0x100, [1, 2])!.summary, /short frame/);
});

test('EMCY: error code, register, manufacturer bytes; code 0 is an error reset', () => {
  const m = d(0x085, [0x10, 0x81, 0x11, 1, 2, 3, 4, 5]);
  assert.equal(m?.service, 'emcy');
  assert.equal(m?.node, 5);
  assert.equal(m?.summary, 'EMCY node 5: error 0x8110 register 0x11 data 0102030405');
  assert.equal(m?.fields.code, 0x8110);
  assert.equal(d(0x0ff, [0, 0, 0])?.summary, 'EMCY node 127: error reset register 0x00');
});

test('PDOs by function code: TPDO1-4 and RPDO1-4 with node and number; RTR is a request', () => {
  const cases: [number, string, number][] = [
    [0x180, 'tpdo', 1],
    [0x200, 'rpdo', 1],
    [0x280, 'tpdo', 2],
    [0x300, 'rpdo', 2],
    [0x380, 'tpdo', 3],
    [0x400, 'rpdo', 3],
    [0x480, 'tpdo', 4],
    [0x500, 'rpdo', 4],
  ];
  for (const [base, service, n] of cases) {
    const m = d(base + 0x22, [0xde, 0xad]);
    assert.equal(m?.service, service, `0x${base.toString(16)}`);
    assert.equal(m?.pdo, n);
    assert.equal(m?.node, 0x22);
    assert.equal(m?.summary, `${service.toUpperCase()}${n} node 34: DEAD`);
  }
  assert.equal(d(0x181, [], { rtr: true, len: 2 })?.summary, 'TPDO1 node 1 request');
});

test('SDO client requests: expedited download sizes, upload, segments, abort', () => {
  // 0x2F = initiate download, expedited, size indicated, 3 unused -> 1 byte
  const dl1 = d(0x605, [0x2f, 0x17, 0x10, 0x00, 0xe8, 0, 0, 0]);
  assert.equal(dl1?.service, 'sdo-rx');
  assert.equal(dl1?.summary, 'SDO rx node 5: initiate download 0x1017:00 = E8');
  assert.equal(dl1?.fields.index, 0x1017);
  assert.equal(d(0x605, [0x2b, 0x17, 0x10, 0, 0xe8, 0x03, 0, 0])?.summary.endsWith('= E803'), true);
  assert.equal(d(0x605, [0x27, 0x17, 0x10, 0, 1, 2, 3, 0])?.summary.endsWith('= 010203'), true);
  assert.equal(d(0x605, [0x23, 0x17, 0x10, 0, 1, 2, 3, 4])?.summary.endsWith('= 01020304'), true);
  // 0x21 = initiate download, segmented, size in bytes 4..7
  assert.equal(
    d(0x605, [0x21, 0x08, 0x10, 0, 20, 0, 0, 0])?.summary,
    'SDO rx node 5: initiate download 0x1008:00 size 20',
  );
  assert.equal(
    d(0x605, [0x40, 0x18, 0x10, 0x01, 0, 0, 0, 0])?.summary,
    'SDO rx node 5: initiate upload 0x1018:01',
  );
  assert.equal(d(0x605, [0x60, 0, 0, 0, 0, 0, 0, 0])?.summary, 'SDO rx node 5: upload segment request t=0');
  assert.equal(d(0x605, [0x70, 0, 0, 0, 0, 0, 0, 0])?.summary, 'SDO rx node 5: upload segment request t=1');
  // download segment: t=1, n=2 unused (bytes 1..5), c=1
  assert.equal(
    d(0x605, [0x15, 0x41, 0x42, 0x43, 0x44, 0x45, 0, 0])?.summary,
    'SDO rx node 5: download segment t=1 last 4142434445',
  );
  const abort = d(0x605, [0x80, 0x00, 0x20, 0x01, 0x00, 0x00, 0x02, 0x06]);
  assert.equal(
    abort?.summary,
    'SDO rx node 5: abort 0x2000:01 code 0x06020000 (object does not exist in the object dictionary)',
  );
  assert.equal(abort?.fields.abortCode, 0x06020000);
});

test('SDO server responses: upload response, download response, segments, abort with unknown code', () => {
  assert.equal(
    d(0x585, [0x43, 0x18, 0x10, 0x01, 0x78, 0x56, 0x34, 0x12])?.summary,
    'SDO tx node 5: initiate upload response 0x1018:01 = 78563412',
  );
  assert.equal(d(0x585, [0x4f, 0x01, 0x10, 0, 0x05, 0, 0, 0])?.summary.endsWith('= 05'), true);
  assert.equal(
    d(0x585, [0x60, 0x17, 0x10, 0, 0, 0, 0, 0])?.summary,
    'SDO tx node 5: initiate download response 0x1017:00',
  );
  assert.equal(
    d(0x585, [0x30, 0, 0, 0, 0, 0, 0, 0])?.summary,
    'SDO tx node 5: download segment response t=1',
  );
  assert.equal(
    d(0x585, [0x00, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67])?.summary,
    'SDO tx node 5: upload segment t=0 61626364656667',
  );
  assert.equal(
    d(0x585, [0x80, 0x00, 0x10, 0x00, 0x78, 0x56, 0x34, 0x12])?.summary,
    'SDO tx node 5: abort 0x1000:00 code 0x12345678',
  );
  assert.match(d(0x585, [0x43, 0x18])!.summary, /short frame/);
});

test('heartbeat states, boot-up, node guarding toggle and request', () => {
  assert.equal(d(0x701, [0])?.summary, 'boot-up node 1');
  assert.equal(d(0x701, [5])?.summary, 'heartbeat node 1: operational');
  assert.equal(d(0x77f, [0x7f])?.summary, 'heartbeat node 127: pre-operational');
  assert.equal(d(0x701, [4])?.summary, 'heartbeat node 1: stopped');
  assert.equal(d(0x701, [0x85])?.summary, 'heartbeat node 1: operational (toggle 1)');
  assert.equal(d(0x701, [], { rtr: true, len: 1 })?.service, 'node-guarding');
});

test('LSS, and frames outside the predefined set are not CANopen', () => {
  assert.equal(d(0x7e5, [0x04, 1])?.summary, 'LSS request command 0x04');
  assert.equal(d(0x7e4, [0x44])?.summary, 'LSS response command 0x44');
  assert.equal(d(0x123, [1, 2, 3], { extended: true }), null);
  assert.equal(d(0x180), null, 'PDO COB-ID with node 0');
  assert.equal(d(0x600, [0x40, 0, 0, 0, 0, 0, 0, 0]), null, 'SDO with node 0');
  assert.equal(d(0x780, [1]), null);
  assert.equal(d(0x7c0, [1]), null);
});

test('any payload decodes without throwing', () => {
  for (let id = 0; id <= 0x7ff; id += 7) {
    for (let len = 0; len <= 8; len++) {
      const data = Array.from({ length: len }, (_, i) => (id * 31 + i * 17) & 0xff);
      const m = d(id, data);
      if (m !== null) assert.equal(typeof m.summary, 'string');
    }
  }
});
