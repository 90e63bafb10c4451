/**
 * Capture formats: whatever our encoders write, our decoders read back (fed in random pieces), with
 * exactly the losses each format documents (log/ASC: microseconds; ASC: error frame details; only
 * pcapng keeps the sending port). Damaged input is reported with its position and the rest is read.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { deflateSync, inflateSync } from 'node:zlib';
import fc from 'fast-check';
import type { CanErrorFrame } from '../../src/core/bus/can-error.js';
import { CAN_FD_LENGTHS, type CanFrame, makeCanFrame } from '../../src/core/bus/can-frame.js';
import { MemoryChunks } from '../../src/core/capture/bytes.js';
import {
  AT_NS_LIMIT,
  type CaptureEvent,
  type CaptureFormat,
  type CaptureRecord,
  type ChunkHandler,
  createCaptureDecoder,
  createCaptureEncoder,
  type Direction,
  readCapture,
  writeCapture,
} from '../../src/core/capture/index.js';
import { FrameStage } from '../../src/core/capture/stage.js';

const arbId = (extended: boolean) => fc.integer({ min: 0, max: extended ? 0x1fffffff : 0x7ff });

const arbFrame = (ts: bigint): fc.Arbitrary<CanFrame> =>
  fc.boolean().chain((extended) =>
    fc.oneof(
      fc
        .record({
          id: arbId(extended),
          data: fc.uint8Array({ maxLength: 8 }),
          dlc: fc.option(fc.integer({ min: 9, max: 15 })),
        })
        .map(({ id, data, dlc }) =>
          makeCanFrame({
            id,
            extended,
            data,
            len8Dlc: data.length === 8 && dlc !== null ? dlc : 0,
            timestampNs: ts,
          }),
        ),
      fc
        .record({
          id: arbId(extended),
          len: fc.integer({ min: 0, max: 8 }),
          dlc: fc.option(fc.integer({ min: 9, max: 15 })),
        })
        .map(({ id, len, dlc }) =>
          makeCanFrame({
            id,
            extended,
            rtr: true,
            len,
            len8Dlc: len === 8 && dlc !== null ? dlc : 0,
            timestampNs: ts,
          }),
        ),
      fc
        .record({
          id: arbId(extended),
          len: fc.constantFrom(...CAN_FD_LENGTHS),
          seed: fc.nat(255),
          brs: fc.boolean(),
          esi: fc.boolean(),
        })
        .map(({ id, len, seed, brs, esi }) =>
          makeCanFrame({
            id,
            extended,
            fd: true,
            brs,
            esi,
            data: Uint8Array.from({ length: len }, (_, i) => (seed * 31 + i * 7) & 0xff),
            timestampNs: ts,
          }),
        ),
    ),
  );

const arbError = (ts: bigint): fc.Arbitrary<CanErrorFrame> =>
  fc
    .record({
      classBits: fc.integer({ min: 1, max: 0x3ff }),
      data: fc.uint8Array({ minLength: 8, maxLength: 8 }),
    })
    .map(({ classBits, data }) => ({ classBits, data, timestampNs: ts, origin: 0 }));

const START = 1_700_000_000_123_000_000n; // a wall-clock start on a millisecond

/** Records with increasing wall-clock times, on up to three channels. */
const arbRecords: fc.Arbitrary<CaptureRecord[]> = fc
  .array(
    fc.record({
      gap: fc.bigInt({ min: 0n, max: 5_000_000_000n }),
      channel: fc.integer({ min: 0, max: 2 }),
      direction: fc.option(fc.constantFrom<Direction>('inbound', 'outbound'), { nil: undefined }),
      port: fc.option(fc.constantFrom('guest0', 'guest12', 'replay:/tmp/x y.log', 'socketcand:1.2.3.4'), {
        nil: undefined,
      }),
      pick: fc.nat(9),
    }),
    { maxLength: 60 },
  )
  .chain((items) => {
    let t = START;
    return fc.tuple(
      ...items.map((it) => {
        t += it.gap;
        const ts = t;
        const base = { channel: it.channel, direction: it.direction, port: it.port };
        return it.pick === 0
          ? arbError(ts).map((error): CaptureRecord => ({ error, ...base }))
          : arbFrame(ts).map((frame): CaptureRecord => ({ frame, ...base }));
      }),
    );
  });

const CHANNELS = ['default', 'body', 'chassis'];

/** What a format keeps of a record. */
function expected(format: CaptureFormat, r: CaptureRecord): unknown {
  const trunc = (ns: bigint): bigint => (format === 'log' || format === 'asc' ? (ns / 1000n) * 1000n : ns);
  const dir = format === 'asc' || format === 'blf' ? (r.direction ?? 'inbound') : r.direction;
  const port = format === 'pcapng' ? r.port : undefined;
  if ('frame' in r) {
    const f = r.frame;
    return {
      kind: 'frame',
      channel: CHANNELS[r.channel ?? 0],
      direction: dir,
      port,
      frame: { ...f, data: [...f.data], timestampNs: trunc(f.timestampNs) },
    };
  }
  const e = r.error;
  const keepsError = format !== 'asc';
  return {
    kind: 'error-frame',
    channel: CHANNELS[r.channel ?? 0],
    // Error frames: pcapng and log keep the direction given; ASC and BLF store none.
    direction: format === 'asc' || format === 'blf' ? undefined : r.direction,
    port,
    error: {
      classBits: keepsError ? e.classBits : 0,
      data: keepsError ? [...e.data] : [0, 0, 0, 0, 0, 0, 0, 0],
      timestampNs: trunc(e.timestampNs),
      origin: 0,
    },
  };
}

/** An event with its channel as a name (candump numbers interfaces by first appearance). */
function normalise(e: CaptureEvent, names: readonly string[]): unknown {
  if (e.kind === 'frame') {
    return {
      kind: e.kind,
      channel: names[e.channel] ?? CHANNELS[e.channel],
      direction: e.direction,
      port: e.port,
      frame: { ...e.frame, data: [...e.frame.data] },
    };
  }
  if (e.kind === 'error-frame') {
    return {
      kind: e.kind,
      channel: names[e.channel] ?? CHANNELS[e.channel],
      direction: e.direction,
      port: e.port,
      error: { ...e.error, data: [...e.error.data] },
    };
  }
  return e;
}

/** Reads `bytes` through the pull decoder, pushing them in the given piece sizes. */
function readInPieces(
  format: CaptureFormat,
  bytes: Uint8Array,
  pieces: number[],
): { events: CaptureEvent[]; names: readonly string[] } {
  const dec = createCaptureDecoder(format, { inflate: (d) => inflateSync(d) });
  const out: CaptureEvent[] = [];
  let off = 0;
  let i = 0;
  while (off < bytes.length) {
    const n = Math.max(1, pieces[i++ % Math.max(1, pieces.length)] ?? bytes.length);
    dec.push(bytes.subarray(off, off + n));
    off += n;
    for (let e = dec.next(); e !== undefined; e = dec.next()) out.push(e);
  }
  dec.end();
  for (let e = dec.next(); e !== undefined; e = dec.next()) out.push(e);
  return { events: out, names: dec.channelNames };
}

const FORMATS: CaptureFormat[] = ['pcapng', 'log', 'asc', 'blf'];

describe('capture formats round trip (write, then read in pieces)', () => {
  for (const format of FORMATS) {
    it(`${format}: every record comes back as the format keeps it`, () => {
      fc.assert(
        fc.property(
          arbRecords,
          fc.array(fc.integer({ min: 1, max: 700 }), { minLength: 1, maxLength: 5 }),
          fc.constantFrom(512, 4096, 256 * 1024),
          fc.boolean(),
          (records, pieces, chunkSize, compress) => {
            const bytes = writeCapture(format, records, {
              channels: CHANNELS,
              startNs: START,
              chunkSize,
              ...(compress ? { deflate: (d: Uint8Array) => deflateSync(d) } : {}),
            });
            const got = readInPieces(format, bytes, pieces);
            assert.deepEqual(
              got.events.map((e) => normalise(e, got.names)),
              records.map((r) => expected(format, r)),
            );
            const dec = createCaptureDecoder(format, { inflate: (d) => inflateSync(d) });
            dec.push(bytes);
            dec.end();
            while (dec.next() !== undefined);
            if (format === 'pcapng' || format === 'asc') assert.deepEqual(dec.channelNames, CHANNELS);
          },
        ),
        { numRuns: 150 },
      );
    });
  }
});

describe("the recorder's number-time path writes the same bytes as the bigint one", () => {
  for (const format of FORMATS) {
    it(`${format}: frameAt(startNs + at) == frame(wall), times before and after the start`, () => {
      fc.assert(
        fc.property(
          // A start anywhere (not on a millisecond or second), and times within AT_NS_LIMIT of it.
          fc.bigInt({ min: 1_000_000_000_000_000_000n, max: 2_000_000_000_000_000_000n }),
          fc.array(
            fc.tuple(
              fc.oneof(
                fc.integer({ min: -2_000_000_000, max: 2_000_000_000 }),
                fc.integer({ min: 0, max: AT_NS_LIMIT - 1 }),
                fc.integer({ min: -AT_NS_LIMIT + 1, max: 0 }),
              ),
              fc.nat(9),
            ),
            { minLength: 1, maxLength: 20 },
          ),
          (startNs, items) => {
            const write = (fast: boolean): Uint8Array[] => {
              const out = new MemoryChunks();
              const enc = createCaptureEncoder(format, { handler: out, startNs, chunkSize: 4096 });
              const ch = enc.addChannel('default');
              const tag = enc.tag('guest0', 'outbound');
              for (const [at, pick] of items) {
                const frame = makeCanFrame({ id: 0x120 + pick, fd: pick > 6, data: [pick, 1, 2, 3] });
                if (fast) enc.frameAt(ch, frame, at, tag);
                else enc.frame(ch, frame, startNs + BigInt(at), tag);
              }
              enc.flush();
              return [...out.chunks.map((c) => c.bytes), ...out.chunks.map((c) => bigintBytes(c.lastNs))];
            };
            assert.deepEqual(write(true), write(false));
          },
        ),
        { numRuns: 200 },
      );
    });
  }
});

describe('word stores (aligned buffers) and byte stores (unaligned ones) write the same bytes', () => {
  for (const format of FORMATS) {
    it(`${format}: the same records into a buffer on a word boundary and one off it`, () => {
      fc.assert(
        fc.property(arbRecords, (records) => {
          const write = (offset: number): Uint8Array => {
            const { chunks, handler } = offsetChunks(offset);
            const enc = createCaptureEncoder(format, { handler, startNs: START, chunkSize: 4096 });
            for (const name of CHANNELS) enc.addChannel(name);
            for (const r of records) {
              const tag = enc.tag(r.port, r.direction);
              if ('frame' in r) enc.frame(r.channel ?? 0, r.frame, r.frame.timestampNs, tag);
              else enc.errorFrame(r.channel ?? 0, r.error, r.error.timestampNs, tag);
            }
            enc.flush();
            return Uint8Array.from(chunks.flatMap((c) => [...c]));
          };
          assert.deepEqual(write(1), write(0));
        }),
        { numRuns: 150 },
      );
    });
  }
});

describe("a recorder's staged batch encodes to the same bytes as frame by frame", () => {
  for (const format of FORMATS) {
    it(`${format}: encodeStaged (or the stage drained into frameAt) == frameAt per frame, aligned or not`, () => {
      fc.assert(
        fc.property(
          arbRecords,
          fc.constantFrom(0, 1),
          fc.integer({ min: 1, max: 7 }),
          (records, offset, cap) => {
            const frames = records.filter((r): r is CaptureRecord & { frame: CanFrame } => 'frame' in r);
            const write = (staged: boolean): Uint8Array => {
              const { chunks, handler } = offsetChunks(offset);
              const enc = createCaptureEncoder(format, { handler, startNs: START, chunkSize: 4096 });
              for (const name of CHANNELS) enc.addChannel(name);
              const stage = new FrameStage(cap);
              const flushStage = (): void => {
                if (enc.encodeStaged !== undefined) {
                  enc.encodeStaged(stage);
                  stage.clear();
                } else {
                  stage.drain((f, ch, at, tag) => enc.frameAt(ch, f, at, tag));
                }
              };
              for (const r of frames) {
                const tag = enc.tag(r.port, r.direction);
                const at = Number(r.frame.timestampNs - START);
                if (!staged) enc.frameAt(r.channel ?? 0, r.frame, at, tag);
                else if (!stage.push(r.frame, r.channel ?? 0, at, tag)) {
                  flushStage();
                  assert.ok(stage.push(r.frame, r.channel ?? 0, at, tag));
                }
              }
              flushStage();
              enc.flush();
              return Uint8Array.from(chunks.flatMap((c) => [...c]));
            };
            assert.deepEqual(write(true), write(false));
          },
        ),
        { numRuns: 150 },
      );
    });
  }
});

/** Chunks in buffers that start `offset` bytes into their memory (1: not on a word boundary). */
function offsetChunks(offset: number): { chunks: Uint8Array[]; handler: ChunkHandler } {
  const chunks: Uint8Array[] = [];
  const handler: ChunkHandler = {
    allocate: (size: number) => new Uint8Array(size + offset).subarray(offset),
    emit: (c) => chunks.push(c.bytes.slice()),
  };
  return { chunks, handler };
}

function bigintBytes(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigInt64(0, v);
  return b;
}

const frameAt = (i: number): CaptureRecord => ({
  frame: makeCanFrame({ id: 0x100 + i, data: [i & 0xff, 1, 2], timestampNs: START + BigInt(i) * 1_000_000n }),
  direction: 'outbound',
  port: 'guest0',
});

describe('damaged input is reported with its position and the rest is read', () => {
  for (const format of ['log', 'asc'] as const) {
    it(`${format}: a garbage line is reported with its line number`, () => {
      fc.assert(
        fc.property(fc.integer({ min: 1, max: 30 }), fc.integer({ min: 0, max: 29 }), (n, at) => {
          const records = Array.from({ length: n }, (_, i) => frameAt(i));
          const text = Buffer.from(writeCapture(format, records, { startNs: START })).toString('latin1');
          const lines = text.split('\n');
          // Insert before the at-th frame line (frames are the lines starting with a time or '(').
          const frameLines = lines.flatMap((l, i) =>
            /^\s*\(?\d+\.\d+\)?\s+\S+\s+\S+/.test(l) && !/Start of/.test(l) ? [i] : [],
          );
          const where = frameLines[Math.min(at, frameLines.length - 1)]!;
          const garbage =
            format === 'log'
              ? '(1700000000.000000) can0 12G#00'
              : '   1.000000 1  12G             Rx   d 2 00 11';
          lines.splice(where, 0, garbage);
          const got = readCapture(format, Buffer.from(lines.join('\n'), 'latin1'));
          const bad = got.filter((e) => e.kind === 'bad');
          assert.equal(bad.length, 1, JSON.stringify(bad));
          assert.equal(bad[0]!.kind === 'bad' && bad[0]!.position.line, where + 1);
          assert.deepEqual(
            got.filter((e) => e.kind === 'frame').map((e) => e.kind === 'frame' && e.frame.id),
            records.map((r) => 'frame' in r && r.frame.id),
          );
        }),
        { numRuns: 60 },
      );
    });
  }

  it('pcapng: a packet with a bad CAN header is reported at its block offset; the others are read', () => {
    fc.assert(
      fc.property(fc.integer({ min: 2, max: 30 }), fc.nat(), (n, pick) => {
        const records = Array.from({ length: n }, (_, i) => frameAt(i));
        const bytes = writeCapture('pcapng', records, { startNs: START });
        // Find the EPBs (type 6) and break one packet's length byte (classic, so > 8 is invalid).
        const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
        const epbs: number[] = [];
        for (let off = 0; off < bytes.length; off += dv.getUint32(off + 4, true)) {
          if (dv.getUint32(off, true) === 6) epbs.push(off);
        }
        const victim = epbs[pick % epbs.length]!;
        bytes[victim + 28 + 4] = 200;
        const got = readCapture('pcapng', bytes);
        const bad = got.filter((e) => e.kind === 'bad');
        assert.equal(bad.length, 1);
        assert.equal(bad[0]!.kind === 'bad' && bad[0]!.position.offset, victim);
        assert.equal(got.filter((e) => e.kind === 'frame').length, n - 1);
      }),
      { numRuns: 60 },
    );
  });

  it('blf: a container that does not inflate is reported at its offset; the other containers are read', () => {
    fc.assert(
      fc.property(fc.integer({ min: 20, max: 200 }), fc.nat(), (n, pick) => {
        const records = Array.from({ length: n }, (_, i) => frameAt(i));
        // 56-byte objects, 560-byte containers: 10 frames per container.
        const bytes = writeCapture('blf', records, {
          startNs: START,
          chunkSize: 560,
          deflate: (d) => deflateSync(d),
        });
        const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
        const containers: number[] = [];
        for (let off = 144; off < bytes.length; ) {
          containers.push(off);
          const size = dv.getUint32(off + 8, true);
          off += size + (size % 4);
        }
        const victim = containers[pick % containers.length]!;
        // Break the zlib stream header and its first bytes.
        bytes[victim + 32 + 1] = bytes[victim + 32 + 1]! ^ 0xff;
        bytes[victim + 32 + 3] = bytes[victim + 32 + 3]! ^ 0x55;
        const got = readCapture('blf', bytes, { inflate: (d) => inflateSync(d) });
        const bad = got.filter((e) => e.kind === 'bad');
        assert.ok(bad.length >= 1);
        assert.equal(bad[0]!.kind === 'bad' && bad[0]!.position.offset, victim);
        const ids = got.flatMap((e) => (e.kind === 'frame' ? [e.frame.id] : []));
        const lost =
          pick % containers.length === containers.length - 1 ? n - 10 * (containers.length - 1) : 10;
        assert.equal(ids.length, n - lost);
      }),
      { numRuns: 40 },
    );
  });

  it('truncated files: the complete part is read and the cut is reported', () => {
    for (const format of FORMATS) {
      const records = Array.from({ length: 50 }, (_, i) => frameAt(i));
      const bytes = writeCapture(format, records, {
        startNs: START,
        deflate: (d) => deflateSync(d),
        chunkSize: 1120,
      });
      const cut = bytes.subarray(0, bytes.length - 7);
      const got = readCapture(format, cut, { inflate: (d) => inflateSync(d) });
      const frames = got.filter((e) => e.kind === 'frame').length;
      assert.ok(frames >= 30 && frames <= 50, `${format}: ${frames} frames`);
      // Binary formats know a block is cut; a cut text line may still read as a (shorter) frame.
      if (format === 'pcapng' || format === 'blf')
        assert.ok(
          got.some((e) => e.kind === 'bad'),
          `${format}: the cut is reported`,
        );
    }
  });
});

describe('decoders never throw, whatever the bytes', () => {
  for (const format of FORMATS) {
    it(`${format}: mutated files are read to the end with reports, never an exception`, () => {
      const records = Array.from({ length: 40 }, (_, i) => frameAt(i));
      const good = writeCapture(format, records, {
        startNs: START,
        chunkSize: 700,
        deflate: (d) => deflateSync(d),
      });
      fc.assert(
        fc.property(
          fc.array(fc.tuple(fc.nat(good.length - 1), fc.nat(255), fc.constantFrom('set', 'cut', 'insert')), {
            minLength: 1,
            maxLength: 8,
          }),
          fc.array(fc.integer({ min: 1, max: 300 }), { minLength: 1, maxLength: 4 }),
          (edits, pieces) => {
            let bytes = Uint8Array.from(good);
            for (const [at, v, op] of edits) {
              const i = at % Math.max(1, bytes.length);
              if (op === 'set') bytes[i] = v;
              else if (op === 'cut')
                bytes = Uint8Array.from([...bytes.subarray(0, i), ...bytes.subarray(i + 1 + (v % 16))]);
              else bytes = Uint8Array.from([...bytes.subarray(0, i), v, v ^ 0x5a, ...bytes.subarray(i)]);
            }
            const got = readInPieces(format, bytes, pieces).events;
            assert.ok(got.filter((e) => e.kind === 'frame').length <= records.length + 8);
          },
        ),
        { numRuns: 200 },
      );
    });
  }
});
