/**
 * Our capture files, read by the real readers: tshark (pcapng), python-can 4.1 from Debian (candump
 * log, ASC, BLF) and can-utils' log2asc (candump log -> ASC, read back by our ASC reader). Random
 * frames of every kind (classic, extended, RTR, CAN FD with BRS/ESI, error frames) from a fixed seed.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { deflateSync } from 'node:zlib';
import fc from 'fast-check';
import { CAN_FD_LENGTHS, type CanFrame, makeCanFrame } from '../../src/core/bus/can-frame.js';
import { type CaptureRecord, readCapture, writeCapture } from '../../src/core/capture/index.js';
import { missingTool, pythonCanRead, tsharkRead } from '../helpers/capture-tools.js';

const dir = mkdtempSync(join(tmpdir(), 'cap-readers-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const START = BigInt(Date.now()) * 1_000_000n;
const CHANNELS = ['default', 'body'];

/** Frames without len8Dlc: python-can 4.1's log reader cannot parse the `_<dlc>` suffix. */
const arbFrame: fc.Arbitrary<Omit<Parameters<typeof makeCanFrame>[0], 'timestampNs'>> = fc
  .boolean()
  .chain((extended) => {
    const id = fc.integer({ min: 0, max: extended ? 0x1fffffff : 0x7ff });
    return fc.oneof(
      fc.record({ id, data: fc.uint8Array({ maxLength: 8 }) }).map((r) => ({ ...r, extended })),
      fc.record({ id, len: fc.integer({ min: 0, max: 8 }) }).map((r) => ({ ...r, extended, rtr: true })),
      fc
        .record({
          id,
          len: fc.constantFrom(...CAN_FD_LENGTHS.filter((l) => l > 0)),
          brs: fc.boolean(),
          esi: fc.boolean(),
          seed: fc.nat(255),
        })
        .map(({ id: i, len, brs, esi, seed }) => ({
          id: i,
          extended,
          fd: true,
          brs,
          esi,
          data: Uint8Array.from({ length: len }, (_, k) => (seed + k * 13) & 0xff),
        })),
    );
  });

const records: CaptureRecord[] = fc
  .sample(fc.tuple(arbFrame, fc.integer({ min: 1, max: 3_000_000 }), fc.nat(1), fc.boolean()), {
    seed: 1313,
    numRuns: 400,
  })
  .reduce<{ t: bigint; out: CaptureRecord[] }>(
    (acc, [init, gap, channel, tx], i) => {
      const t = acc.t + BigInt(gap);
      const direction = tx ? 'outbound' : 'inbound';
      const port = tx ? `guest${channel}` : 'replay:trace.log';
      if (i % 50 === 7) {
        acc.out.push({
          error: {
            classBits: 0x004,
            data: Uint8Array.of(0, 0x10, 0, 0, 0, 0, 0, 0),
            timestampNs: t,
            origin: 0,
          },
          channel,
          direction: 'inbound',
          port: 'guest0',
        });
      } else {
        acc.out.push({ frame: makeCanFrame({ ...init, timestampNs: t }), channel, direction, port });
      }
      return { t, out: acc.out };
    },
    { t: START, out: [] },
  ).out;

function file(format: string): string {
  const path = join(dir, `trace.${format}`);
  writeFileSync(
    path,
    writeCapture(format as 'pcapng', records, {
      channels: CHANNELS,
      startNs: START,
      deflate: (d) => deflateSync(d),
      chunkSize: 16 * 1024,
    }),
  );
  return path;
}

const hex = (d: Uint8Array): string => Buffer.from(d).toString('hex');
const secs = (ns: bigint): number => Number(ns / 1000n) / 1e6;

describe('real readers decode our capture files', () => {
  it('tshark reads every pcapng packet: interface, time, id, flags, length, data, port comment, direction', {
    skip: missingTool('tshark'),
  }, () => {
    const got = tsharkRead(file('pcapng'));
    assert.equal(got.length, records.length);
    records.forEach((r, i) => {
      const p = got[i]!;
      const ts = 'frame' in r ? r.frame.timestampNs : r.error.timestampNs;
      const what = `packet ${i + 1}: ${JSON.stringify(p)}`;
      assert.equal(p.iface, CHANNELS[r.channel ?? 0], what);
      assert.equal(p.epoch, `${ts / 1_000_000_000n}.${String(ts % 1_000_000_000n).padStart(9, '0')}`, what);
      assert.equal(p.comment, r.port, what);
      assert.equal(p.direction, r.direction === 'outbound' ? 2 : 1, what);
      if ('error' in r) {
        assert.equal(p.err, true, what);
        return;
      }
      const f = r.frame;
      assert.equal(p.id, f.id, what);
      assert.equal(p.err, false, what);
      assert.equal(p.fd, f.fd, what);
      assert.equal(p.len, f.len, what);
      if (f.fd) {
        assert.equal(p.brs, f.brs, what);
        assert.equal(p.esi, f.esi, what);
      } else {
        assert.equal(p.xtd, f.extended, what);
        assert.equal(p.rtr, f.rtr, what);
      }
      if (!f.rtr) assert.equal(p.data, hex(f.data), what);
    });
  });

  for (const kind of ['log', 'asc', 'blf'] as const) {
    it(`python-can reads every ${kind} record: time, id, flags, length, data, direction, channel`, {
      skip: missingTool('python-can'),
    }, () => {
      const got = pythonCanRead(file(kind), kind);
      assert.equal(got.length, records.length);
      records.forEach((r, i) => {
        const m = got[i]!;
        const what = `${kind} message ${i + 1}: ${JSON.stringify(m)} vs ${JSON.stringify(r, (_k, v) => (typeof v === 'bigint' ? String(v) : v instanceof Uint8Array ? hex(v) : v))}`;
        const ts = 'frame' in r ? r.frame.timestampNs : r.error.timestampNs;
        assert.ok(Math.abs(Number(m.t) - secs(ts)) < 2.5e-6, `time ${what}`);
        const channel = kind === 'log' ? CHANNELS[r.channel ?? 0] : String(r.channel ?? 0);
        assert.equal(m.channel, channel, what);
        if ('error' in r) {
          // python-can's log reader knows error frames only with the bus-error class bit.
          if (kind === 'log') assert.equal(m.id, (r.error.classBits | 0x20000000) & 0x1fffffff, what);
          else assert.equal(m.err, true, what);
          return;
        }
        const f: CanFrame = r.frame;
        assert.equal(m.err, false, what);
        assert.equal(m.id, f.id, what);
        assert.equal(m.ext, f.extended, what);
        assert.equal(m.fd, f.fd, what);
        assert.equal(m.rtr, f.rtr, what);
        assert.equal(m.rx, r.direction !== 'outbound', what);
        assert.equal(m.dlc, f.len, what);
        if (f.fd) {
          assert.equal(m.brs, f.brs, what);
          assert.equal(m.esi, f.esi, what);
        }
        assert.equal(m.data, f.rtr ? '' : hex(f.data), what);
      });
    });
  }

  it('can-utils log2asc converts our candump log; our ASC reader reads its output back', {
    skip: missingTool('log2asc'),
  }, () => {
    const out = join(dir, 'log2asc.asc');
    const r = spawnSync('log2asc', ['-I', file('log'), '-O', out, ...CHANNELS], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    assert.equal(r.status, 0, r.stderr);
    const back = readCapture('asc', readFileSync(out));
    assert.deepEqual(
      back.filter((e) => e.kind === 'bad'),
      [],
    );
    const frames = records.flatMap((x) => ('frame' in x ? [x] : []));
    const got = back.flatMap((e) => (e.kind === 'frame' ? [e] : []));
    assert.equal(got.length, frames.length);
    got.forEach((e, i) => {
      const want = frames[i]!;
      const what = `frame ${i + 1}`;
      assert.equal(e.channel, want.channel, what);
      assert.equal(e.frame.id, want.frame.id, what);
      assert.equal(e.frame.extended, want.frame.extended, what);
      assert.equal(e.frame.fd, want.frame.fd, what);
      assert.equal(e.frame.rtr, want.frame.rtr, what);
      assert.equal(e.frame.len, want.frame.len, what);
      assert.equal(hex(e.frame.data), hex(want.frame.data), what);
      assert.equal(e.direction, want.direction, what);
    });
    // log2asc writes times relative to the first frame, with microseconds.
    const first = frames[0]!.frame.timestampNs / 1000n;
    got.forEach((e, i) => {
      const rel = frames[i]!.frame.timestampNs / 1000n - first;
      const at = e.frame.timestampNs - got[0]!.frame.timestampNs;
      assert.equal(at / 1000n, rel, `time of frame ${i + 1}`);
    });
  });
});
