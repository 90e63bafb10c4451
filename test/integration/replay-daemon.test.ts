/**
 * `--replay` in a running daemon: a recorded file (each of the four formats) reaches a front-end
 * guest byte-exact, starting when the guest starts its controller, with the recorded spacing within
 * the tolerance the README states (REPLAY_TOLERANCE_MS); malformed input is reported with its
 * position and the rest plays; --replay-speed, --replay-loop and --replay-start now.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { deflateSync } from 'node:zlib';
import { type CanFrame, makeCanFrame } from '../../src/core/bus/can-frame.js';
import { type CaptureFormat, writeCapture } from '../../src/core/capture/index.js';
import { StructuredLogger } from '../../src/node/log.js';
import { hostPort, startDriver, startTestDaemon, waitFor } from '../helpers/vhost-user.js';

/** Largest deviation of a replayed frame from its recorded offset the test accepts (README: typically < 3 ms; 50 ms on a busy machine, where timers fire late). */
const REPLAY_TOLERANCE_MS = 50;

const T0 = 1_790_000_000_000_000_000n;
const ms = (n: number): bigint => BigInt(Math.round(n * 1e6));

/** Recorded offsets (ms) and frames: bursts (several frames at one instant) and gaps. */
const SCRIPT: [number, Parameters<typeof makeCanFrame>[0]][] = [
  [0, { id: 0x100, data: [1, 2, 3] }],
  [30, { id: 0x1abcdef0, extended: true, data: [1, 2, 3, 4, 5, 6, 7, 8] }],
  [30, { id: 0x7ff, rtr: true, len: 5 }],
  [30, { id: 0x101, data: [] }],
  [75.5, { id: 0x456, fd: true, data: Array.from({ length: 64 }, (_, i) => 255 - i) }],
  [120, { id: 0x1234, extended: true, fd: true, data: Array.from({ length: 20 }, (_, i) => i) }],
  [121, { id: 0x102, data: [0xff] }],
  [200, { id: 0x103, data: [0, 0, 0, 0, 0, 0, 0, 0] }],
  [300, { id: 0x104, data: [9, 9] }],
];

function frames(): CanFrame[] {
  return SCRIPT.map(([at, init]) => makeCanFrame({ ...init, timestampNs: T0 + ms(at) }));
}

function writeFile(dir: string, format: CaptureFormat, extra = ''): string {
  const path = join(dir, `trace${extra}.${format}`);
  writeFileSync(
    path,
    writeCapture(
      format,
      frames().map((frame) => ({ frame, direction: 'outbound' as const, port: 'guest0' })),
      { channels: ['recorded'], deflate: (d) => deflateSync(d) },
    ),
  );
  return path;
}

function tmp(t: { after(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'replay-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

for (const format of ['pcapng', 'log', 'asc', 'blf'] as const) {
  test(`${format}: a replay waits for the guest's START, then reaches it byte-exact with the recorded spacing`, async (t) => {
    const dir = tmp(t);
    const file = writeFile(dir, format);
    const { can, paths } = startTestDaemon(t, { ports: [{ kind: 'replay', bus: 'default', value: file }] });
    const tap = hostPort(t, can.hubFor(0), 'tap');
    const { drv } = await startDriver(t, paths[0]!);
    await sleep(150);
    assert.equal(tap.frames().length, 0, 'nothing plays before a guest starts its controller');
    assert.equal(await drv.startController(), 0);
    const got = await drv.waitFrames(SCRIPT.length, 5000);
    const want = frames();
    assert.deepEqual(
      got.map((f) => [f.id, f.extended, f.rtr, f.fd, f.length, [...f.data]]),
      want.map((f) => [f.id, f.extended, f.rtr, f.fd, f.len, [...f.data]]),
    );
    const sent = tap.frames();
    assert.equal(sent.length, SCRIPT.length);
    const first = sent[0]!.timestampNs;
    const errors = sent.map((f, i) => Number(f.timestampNs - first) / 1e6 - SCRIPT[i]![0]);
    const worst = Math.max(...errors.map(Math.abs));
    t.diagnostic(`${format}: spacing error per frame (ms): ${errors.map((e) => e.toFixed(2)).join(' ')}`);
    assert.ok(
      worst <= REPLAY_TOLERANCE_MS,
      `worst spacing error ${worst.toFixed(2)} ms > ${REPLAY_TOLERANCE_MS}`,
    );
    const a = can.attachments.find((x) => x.kind === 'replay')!;
    assert.equal(a.name, `replay:${file}`);
    await waitFor('the replay to finish', () => (a.stats().state === 'done' ? true : undefined));
    assert.deepEqual(a.stats(), {
      state: 'done',
      frames: SCRIPT.length,
      errorFrames: 0,
      bad: 0,
      dropped: 0,
      passes: 1,
    });
  });
}

test('a malformed candump line is reported with its line number; the other lines play', async (t) => {
  const dir = tmp(t);
  const file = join(dir, 'bad.log');
  writeFileSync(
    file,
    [
      '(1790000000.000000) can0 123#0102',
      '(1790000000.001000) can0 12X#0102',
      'garbage',
      '(1790000000.002000) can0 124#R',
      '(1790000000.003000) can0 20000004#0004000000000000',
      '(1790000000.004000) can0 125##1AABBCCDDEEFF001122334455',
      '',
    ].join('\n'),
  );
  const lines: string[] = [];
  const log = new StructuredLogger({ level: 'info', format: 'json', write: (l) => lines.push(l) });
  const { can } = startTestDaemon(t, {
    log,
    ports: [{ kind: 'replay', bus: 'default', value: file }],
    portOptions: { 'replay-start': 'now' },
  });
  const seen: string[] = [];
  can
    .hubFor(0)
    .attach(
      { onFramesAvailable() {}, onErrorFrame: (e) => seen.push(`error ${e.classBits}`) },
      { name: 'observer', errorFrames: true },
    );
  const tap = hostPort(t, can.hubFor(0), 'tap');
  const a = can.attachments.find((x) => x.kind === 'replay')!;
  await waitFor('the replay to finish', () => (a.stats().state === 'done' ? true : undefined));
  assert.deepEqual(
    tap.frames().map((f) => [f.id, f.rtr, f.fd, f.len]),
    [
      [0x123, false, false, 2],
      [0x124, true, false, 0],
      [0x125, false, true, 12],
    ],
  );
  assert.deepEqual(seen, ['error 4'], 'recorded error frames reach observers');
  assert.equal(a.stats().bad, 2);
  const reports = lines.filter((l) => l.includes('skipped unreadable input'));
  assert.equal(reports.length, 2);
  assert.match(reports[0]!, /"at":"line 2"/);
  assert.match(reports[1]!, /"at":"line 3"/);
});

test('a corrupt BLF container is reported with its byte offset; the other containers play', async (t) => {
  const dir = tmp(t);
  const file = join(dir, 'bad.blf');
  const recs = Array.from({ length: 30 }, (_, i) => ({
    frame: makeCanFrame({ id: i, data: [i], timestampNs: T0 + BigInt(i) * 1000n }),
  }));
  // 56-byte objects in 560-byte containers: 10 frames per container, 3 containers.
  const bytes = writeCapture('blf', recs, { chunkSize: 560, deflate: (d) => deflateSync(d) });
  const dv = new DataView(bytes.buffer, bytes.byteOffset);
  const second = 144 + dv.getUint32(144 + 8, true) + (dv.getUint32(144 + 8, true) % 4);
  bytes[second + 32 + 2] = bytes[second + 32 + 2]! ^ 0xa5;
  bytes[second + 32 + 3] = bytes[second + 32 + 3]! ^ 0x5a;
  writeFileSync(file, bytes);
  const lines: string[] = [];
  const log = new StructuredLogger({ level: 'info', format: 'json', write: (l) => lines.push(l) });
  const { can } = startTestDaemon(t, {
    log,
    ports: [{ kind: 'replay', bus: 'default', value: file }],
    portOptions: { 'replay-start': 'now' },
  });
  const tap = hostPort(t, can.hubFor(0), 'tap');
  const a = can.attachments.find((x) => x.kind === 'replay')!;
  await waitFor('the replay to finish', () => (a.stats().state === 'done' ? true : undefined));
  assert.deepEqual(
    tap.frames().map((f) => f.id),
    [...Array.from({ length: 10 }, (_, i) => i), ...Array.from({ length: 10 }, (_, i) => 20 + i)],
  );
  assert.equal(a.stats().bad, 1);
  assert.ok(
    lines.some((l) => l.includes(`"at":"byte ${second}"`)),
    lines.join('\n'),
  );
});

test('--replay-speed scales the spacing; --replay-loop plays again; --replay-start now needs no guest', async (t) => {
  const dir = tmp(t);
  const file = writeFile(dir, 'log');
  const { can } = startTestDaemon(t, {
    ports: [{ kind: 'replay', bus: 'default', value: file }],
    portOptions: { 'replay-speed': '4', 'replay-loop': true, 'replay-start': 'now' },
  });
  const tap = hostPort(t, can.hubFor(0), 'tap');
  const a = can.attachments.find((x) => x.kind === 'replay')!;
  await waitFor('three passes', () => (Number(a.stats().passes) >= 3 ? true : undefined), 5000);
  const got = tap.frames();
  assert.ok(got.length >= 3 * SCRIPT.length);
  const first = got[0]!.timestampNs;
  // Pass k starts when pass k-1's last frame was due: offsets are k * 75 ms + recorded / 4.
  const span = SCRIPT.at(-1)![0];
  for (let i = 0; i < 3 * SCRIPT.length; i++) {
    const k = Math.floor(i / SCRIPT.length);
    const want = (k * span + SCRIPT[i % SCRIPT.length]![0]) / 4;
    const at = Number(got[i]!.timestampNs - first) / 1e6;
    assert.ok(
      Math.abs(at - want) <= REPLAY_TOLERANCE_MS,
      `frame ${i}: at ${at.toFixed(2)} ms, due ${want} ms`,
    );
    assert.equal(got[i]!.id, frames()[i % SCRIPT.length]!.id);
  }
  assert.equal(a.stats().state, 'playing');
  can.stop();
  assert.equal(a.stats().state, 'closed');
});

test('a replay file that does not exist fails start-up with a clear error', (t) => {
  assert.throws(
    () => startTestDaemon(t, { ports: [{ kind: 'replay', bus: 'default', value: '/nonexistent/x.asc' }] }),
    (err: Error & { code?: string }) => err.code === 'ERR_REPLAY_OPEN' && /nonexistent/.test(err.message),
  );
});
