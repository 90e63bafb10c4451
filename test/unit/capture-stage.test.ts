import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type CanFrame, makeCanFrame } from '../../src/core/bus/can-frame.js';
import { FrameStage } from '../../src/core/capture/stage.js';
import type { CaptureTag } from '../../src/core/capture/types.js';

const tagA: CaptureTag = { port: 'guest0', direction: 'outbound' };
const tagB: CaptureTag = { port: 'tap', direction: 'inbound' };

/** A frame's fields with its payload as a plain array (the stage hands out one reused object). */
function fields(f: CanFrame): unknown {
  return { ...f, data: [...f.data] };
}

test('frames come out of the stage as they went in, in order, with channel, time and tag', () => {
  const stage = new FrameStage(8);
  const frames = [
    makeCanFrame({ id: 0x123, data: [1, 2, 3], origin: 4 }),
    makeCanFrame({ id: 0x1abcdef0, extended: true, data: [1, 2, 3, 4, 5, 6, 7, 8], len8Dlc: 12, origin: 5 }),
    makeCanFrame({ id: 0x7ff, rtr: true, len: 4, origin: 4 }),
    makeCanFrame({
      id: 0x456,
      fd: true,
      brs: true,
      esi: true,
      data: Array.from({ length: 64 }, (_, i) => i),
      origin: 6,
    }),
    makeCanFrame({ id: 0x12, fd: true, data: [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2], origin: 7 }),
  ];
  for (const [i, f] of frames.entries()) {
    assert.equal(stage.push(f, i % 2, 1000 * i + 0.5, i % 2 ? tagB : tagA), true);
  }
  assert.equal(stage.size, 5);
  const got: unknown[] = [];
  assert.equal(
    stage.drain((f, channel, at, tag) => got.push([fields(f), channel, at, tag])),
    5,
  );
  assert.deepEqual(
    got,
    frames.map((f, i) => [fields(f), i % 2, 1000 * i + 0.5, i % 2 ? tagB : tagA]),
  );
  assert.equal(stage.size, 0);
  assert.equal(
    stage.drain(() => assert.fail('empty')),
    0,
  );
});

test('a full stage refuses the next frame; a failing encoder loses only its frame', () => {
  const stage = new FrameStage(3);
  for (let i = 0; i < 3; i++) assert.equal(stage.push(makeCanFrame({ id: i, data: [i] }), 0, i, tagA), true);
  assert.equal(stage.push(makeCanFrame({ id: 9 }), 0, 9, tagA), false);
  const seen: number[] = [];
  assert.throws(
    () =>
      stage.drain((f) => {
        if (f.id === 1) throw new Error('boom');
        seen.push(f.id);
      }),
    /boom/,
  );
  assert.deepEqual(seen, [0]);
  assert.equal(stage.size, 1);
  stage.drain((f, _c, at) => seen.push(f.id * 100 + at));
  assert.deepEqual(seen, [0, 202]);
});
