/**
 * `--capture` in a running daemon, with a front-end guest (the Linux virtio_can driver emulation):
 * the guest's classic, extended, RTR and FD frames and a controller state change reach every file;
 * tshark decodes the pcapng while the daemon runs and after it stops; python-can reads the others.
 * Failure paths: a write error (/dev/full) and a full tmpfs stop only that capture (one log line, a
 * counter) while the guest keeps being served; rotation; a FIFO with and without a reader.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { makeCanFrame } from '../../src/core/bus/can-frame.js';
import type { BusAttachment } from '../../src/node/bus/port-registry.js';
import { StructuredLogger } from '../../src/node/log.js';
import { missingTool, pythonCanRead, tsharkRead } from '../helpers/capture-tools.js';
import { hostPort, startDriver, startTestDaemon, waitFor } from '../helpers/vhost-user.js';

const FD64 = Array.from({ length: 64 }, (_, i) => (i * 5) & 0xff);

function logSink(): { log: StructuredLogger; lines: string[] } {
  const lines: string[] = [];
  return { log: new StructuredLogger({ level: 'info', format: 'json', write: (l) => lines.push(l) }), lines };
}

function attachment(list: readonly BusAttachment[], suffix: string): BusAttachment {
  const a = list.find((x) => x.name.endsWith(suffix));
  assert.ok(a, `attachment ${suffix}`);
  return a;
}

test('a guest’s classic, extended, RTR and FD frames and a state change reach every capture; tshark reads the pcapng during and after the run', {
  skip: missingTool('tshark') ?? missingTool('python-can'),
}, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'cap-daemon-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const files = ['pcapng', 'log', 'asc', 'blf'].map((e) => join(dir, `bus.${e}`));
  const { can, paths } = startTestDaemon(t, {
    ports: files.map((value) => ({ kind: 'capture' as const, bus: 'default', value })),
  });
  const { drv } = await startDriver(t, paths[0]!);
  assert.equal(await drv.startController(), 0);
  const tap = hostPort(t, can.hubFor(0), 'tap');
  const sentAt = Date.now();
  assert.equal(await drv.send({ id: 0x123, data: [1, 2, 3] }), 0);
  assert.equal(await drv.send({ id: 0x1abcdef0, extended: true, data: [1, 2, 3, 4, 5, 6, 7, 8] }), 0);
  assert.equal(await drv.send({ id: 0x7ff, rtr: true, len: 4 }), 0);
  assert.equal(await drv.send({ id: 0x456, fd: true, data: FD64 }), 0);
  assert.equal(await drv.send({ id: 0x12345, extended: true, fd: true, data: FD64.slice(0, 12) }), 0);
  assert.equal(tap.transmit(makeCanFrame({ id: 0x321, data: [9] })), 'sent');
  can.hubFor(0).injectBusState('tap', 'error-passive');

  const check = (label: string): void => {
    const p = tsharkRead(files[0]!);
    const what = `${label}: ${JSON.stringify(p)}`;
    assert.equal(p.length, 7, what);
    assert.deepEqual(
      p.map((x) => [x.iface, x.id, x.xtd, x.rtr, x.fd, x.len, x.comment, x.direction]),
      [
        ['default', 0x123, false, false, false, 3, 'guest0', 2],
        ['default', 0x1abcdef0, true, false, false, 8, 'guest0', 2],
        ['default', 0x7ff, false, true, false, 4, 'guest0', 2],
        ['default', 0x456, false, false, true, 64, 'guest0', 2],
        ['default', 0x12345, true, false, true, 12, 'guest0', 2],
        ['default', 0x321, false, false, false, 1, 'tap', 1],
        ['default', null, false, false, false, 8, 'tap', 1],
      ],
      what,
    );
    assert.equal(p[0]!.data, '010203', what);
    assert.equal(p[3]!.data, Buffer.from(FD64).toString('hex'), what);
    assert.equal(p[6]!.err, true, what);
    const epoch = Number(p[0]!.epoch) * 1000;
    assert.ok(Math.abs(epoch - sentAt) < 2000, `wall-clock time stamps: ${p[0]!.epoch} vs ${sentAt}`);
  };
  // While the daemon runs: the data is in the file within a second (flushes every 500 ms).
  await waitFor('7 packets in the pcapng', () => (tsharkPackets(files[0]!) === 7 ? true : undefined), 3000);
  assert.ok(Date.now() - sentAt < 2000, `data in the file after ${Date.now() - sentAt} ms`);
  check('while running');
  const pc = attachment(can.attachments, 'bus.pcapng').stats();
  assert.equal(pc.frames, 6);
  assert.equal(pc.errorFrames, 1);
  assert.equal(pc.state, 'writing');
  can.stop();
  check('after stop');
  for (const kind of ['log', 'asc', 'blf'] as const) {
    const m = pythonCanRead(join(dir, `bus.${kind}`), kind);
    assert.equal(m.length, 7, kind);
    assert.deepEqual(
      m.slice(0, 6).map((x) => [x.id, x.ext, x.rtr, x.fd, x.dlc, x.rx]),
      [
        [0x123, false, false, false, 3, false],
        [0x1abcdef0, true, false, false, 8, false],
        [0x7ff, false, true, false, 4, false],
        [0x456, false, false, true, 64, false],
        [0x12345, true, false, true, 12, false],
        [0x321, false, false, false, 1, true],
      ],
      kind,
    );
    assert.equal(m[3]!.data, Buffer.from(FD64).toString('hex'), kind);
  }
});

function tsharkPackets(file: string): number {
  try {
    return tsharkRead(file, { allowCutShort: true }).length;
  } catch {
    return -1;
  }
}

test('a write error stops only that capture: one log line, a counter, the guest and the other captures go on', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'cap-full-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const full = join(dir, 'full.log');
  symlinkSync('/dev/full', full); // every write fails with ENOSPC
  const good = join(dir, 'good.log');
  const { log, lines } = logSink();
  const { can, paths } = startTestDaemon(t, {
    log,
    ports: [
      { kind: 'capture', bus: 'default', value: full },
      { kind: 'capture', bus: 'default', value: good },
    ],
  });
  const { drv } = await startDriver(t, paths[0]!);
  assert.equal(await drv.startController(), 0);
  assert.equal(await drv.send({ id: 0x100, data: [1] }), 0);
  const bad = attachment(can.attachments, 'full.log');
  await waitFor('the capture to stop', () => (bad.stats().state === 'failed' ? true : undefined), 3000);
  for (let i = 0; i < 20; i++)
    assert.equal(await drv.send({ id: 0x200 + i, data: [i] }), 0, 'the guest is served');
  const ok = attachment(can.attachments, 'good.log');
  await waitFor(
    'the other capture to write',
    () => (ok.stats().recordsWritten === 21 ? true : undefined),
    3000,
  );
  const s = bad.stats();
  assert.equal(s.writeErrors, 1);
  assert.equal(s.frames, 1, 'the failed capture detached: later frames do not reach it');
  const stopped = lines.filter((l) => l.includes('capture stopped'));
  assert.equal(stopped.length, 1, lines.join('\n'));
  assert.match(stopped[0]!, /"code":"ENOSPC"/);
  assert.equal(can.device(0)!.stats.txOk, 21);
});

test('a capture whose file cannot be created fails start-up with a clear error', (t) => {
  assert.throws(
    () =>
      startTestDaemon(t, {
        ports: [{ kind: 'capture', bus: 'default', value: '/nonexistent-dir/x.pcapng' }],
      }),
    (err: Error & { code?: string }) =>
      err.code === 'ERR_CAPTURE_OPEN' && /nonexistent-dir/.test(err.message),
  );
});

/** Mounts a tmpfs of `size` at a new directory; undefined (and the reason) where that is not allowed. */
function tinyTmpfs(size: string): { dir: string; unmount(): void } | string {
  const dir = mkdtempSync(join(tmpdir(), 'cap-tmpfs-'));
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'captest', dir], { encoding: 'utf8' });
  if (r.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    return `cannot mount a tmpfs here (needs root): ${(r.stderr || String(r.error)).trim()}`;
  }
  return {
    dir,
    unmount: () => {
      spawnSync('umount', [dir]);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

test('a full disk (a 1 MiB tmpfs) stops the capture with the file cut at its last whole chunk', async (t) => {
  const fs = tinyTmpfs('1m');
  if (typeof fs === 'string') {
    if (process.env.CI) assert.fail(fs);
    t.skip(fs);
    return;
  }
  t.after(fs.unmount);
  if (missingTool('tshark') !== undefined) {
    t.skip(missingTool('tshark'));
    return;
  }
  const file = join(fs.dir, 'bus.pcapng');
  const { log, lines } = logSink();
  const { can } = startTestDaemon(t, { log, ports: [{ kind: 'capture', bus: 'default', value: file }] });
  const tap = hostPort(t, can.hubFor(0), 'tap');
  const a = attachment(can.attachments, 'bus.pcapng');
  // Frames of ~70 bytes each until the 1 MiB are full (about 15,000).
  for (let i = 0; i < 40_000 && a.stats().state === 'writing'; i++) {
    tap.transmit(makeCanFrame({ id: i & 0x7ff, data: [i & 0xff, i >> 8] }));
    if (i % 1000 === 999) await new Promise((r) => setTimeout(r, 5));
  }
  await waitFor('the capture to stop', () => (a.stats().state === 'failed' ? true : undefined), 5000);
  const s = a.stats();
  assert.equal(s.writeErrors, 1);
  assert.equal(lines.filter((l) => l.includes('capture stopped')).length, 1);
  // The file holds whole blocks only (the chunk that did not fit is cut off): tshark reads it
  // without complaint, every packet counted as written is there.
  const packets = tsharkRead(file);
  assert.equal(packets.length, s.recordsWritten);
  assert.ok(packets.length > 5000, `${packets.length} packets before the disk was full`);
  assert.ok(Number(s.recordsDropped) > 0);
  assert.ok(statSync(file).size <= 1 << 20);
  // The bus goes on: another port still gets frames.
  const other = hostPort(t, can.hubFor(0), 'other');
  tap.transmit(makeCanFrame({ id: 1 }));
  assert.equal(other.frames().length, 1);
});

test('--capture-max-size rotates: trace.pcapng, trace.1.pcapng, ... each complete and within the size', {
  skip: missingTool('tshark'),
}, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'cap-rot-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'trace.pcapng');
  const { can } = startTestDaemon(t, {
    ports: [
      { kind: 'capture', bus: 'default', value: file },
      { kind: 'capture', bus: 'default', value: join(dir, 'trace.asc') },
    ],
    portOptions: { 'capture-max-size': '64K' },
  });
  const tap = hostPort(t, can.hubFor(0), 'tap');
  const N = 5000;
  for (let i = 0; i < N; i++) {
    tap.transmit(makeCanFrame({ id: i % 0x800, data: [i & 0xff, (i >> 8) & 0xff] }));
    if (i % 500 === 499) await new Promise((r) => setTimeout(r, 5));
  }
  can.stop();
  const names = readdirSync(dir)
    .filter((n) => n.endsWith('.pcapng'))
    .sort((a, b) => order(a) - order(b));
  assert.ok(names.length >= 5, names.join(' '));
  assert.deepEqual(
    names,
    names.map((_, i) => (i === 0 ? 'trace.pcapng' : `trace.${i}.pcapng`)),
  );
  const ids: number[] = [];
  for (const n of names) {
    assert.ok(statSync(join(dir, n)).size <= 65536, `${n}: ${statSync(join(dir, n)).size} bytes`);
    const p = tsharkRead(join(dir, n));
    assert.ok(
      p.every((x) => x.iface === 'default'),
      `${n}: every file declares its interface`,
    );
    ids.push(...p.map((x) => x.id!));
  }
  assert.deepEqual(
    ids,
    Array.from({ length: N }, (_, i) => i % 0x800),
    'nothing lost or duplicated across files',
  );
  const ascs = readdirSync(dir).filter((n) => n.endsWith('.asc'));
  assert.ok(ascs.length >= 3, ascs.join(' '));
  for (const n of ascs) {
    const r = spawnSync('tail', ['-n', '1', join(dir, n)], { encoding: 'utf8' });
    assert.equal(r.stdout, 'End TriggerBlock\n', `${n} is a complete ASC file`);
  }
});

function order(name: string): number {
  const m = /\.(\d+)\.pcapng$/.exec(name);
  return m === null ? 0 : Number(m[1]);
}

test('a FIFO without a reader does not block the daemon; a reader that opens it gets a valid live stream', {
  skip: missingTool('tshark'),
}, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'cap-fifo-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const fifo = join(dir, 'live.pcapng');
  assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
  const t0 = Date.now();
  const { can, paths } = startTestDaemon(t, { ports: [{ kind: 'capture', bus: 'default', value: fifo }] });
  assert.ok(Date.now() - t0 < 1000, 'start-up does not wait for a reader');
  const a = attachment(can.attachments, 'live.pcapng');
  assert.equal(a.stats().state, 'waiting-reader');
  const { drv } = await startDriver(t, paths[0]!);
  assert.equal(await drv.startController(), 0);
  assert.equal(await drv.send({ id: 0x10, data: [1] }), 0, 'the guest is served without a reader');
  await waitFor('the frame to be dropped', () => (a.stats().recordsDropped === 1 ? true : undefined), 3000);
  // A reader: `cat FIFO > out.pcapng`, as a pipe into Wireshark would read it.
  const out = join(dir, 'out.pcapng');
  const cat: ChildProcess = spawn('sh', ['-c', `exec cat "${fifo}" > "${out}"`], { stdio: 'ignore' });
  t.after(() => cat.kill('SIGKILL'));
  await waitFor('the reader to be seen', () => (a.stats().state === 'writing' ? true : undefined), 3000);
  for (let i = 0; i < 5; i++) assert.equal(await drv.send({ id: 0x20 + i, fd: i === 4, data: [i, i] }), 0);
  await waitFor('5 records written', () => (a.stats().recordsWritten === 5 ? true : undefined), 3000);
  await waitFor(
    'the live file to hold them',
    () => (existsSync(out) && tsharkPackets(out) === 5 ? true : undefined),
    3000,
  );
  can.stop();
  await new Promise<void>((r) => (cat.exitCode !== null ? r() : cat.once('exit', () => r())));
  const p = tsharkRead(out);
  assert.deepEqual(
    p.map((x) => [x.id, x.len, x.comment]),
    [0, 1, 2, 3, 4].map((i) => [0x20 + i, 2, 'guest0']),
  );
});

test('recordBuses records several in-process buses into one pcapng, one interface each', {
  skip: missingTool('tshark'),
}, async (t) => {
  const { recordBuses } = await import('../../src/node/capture/capture-port.js');
  const dir = mkdtempSync(join(tmpdir(), 'cap-lib-'));
  mkdirSync(dir, { recursive: true });
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const { can } = startTestDaemon(t, {
    sockets: 2,
    buses: [
      { kind: 'virtual', name: 'body' },
      { kind: 'virtual', name: 'chassis' },
    ],
  });
  const file = join(dir, 'two.pcapng');
  const rec = recordBuses(file, { body: can.hubFor(0), chassis: can.hubFor(1) });
  const a = hostPort(t, can.hubFor(0), 'ecu-a');
  const b = hostPort(t, can.hubFor(1), 'ecu-b');
  a.transmit(makeCanFrame({ id: 1, data: [1] }));
  b.transmit(makeCanFrame({ id: 2, data: [2] }));
  a.transmit(makeCanFrame({ id: 3, data: [3] }));
  rec.close();
  assert.deepEqual(
    tsharkRead(file).map((p) => [p.iface, p.id, p.comment]),
    [
      ['body', 1, 'ecu-a'],
      ['chassis', 2, 'ecu-b'],
      ['body', 3, 'ecu-a'],
    ],
  );
  assert.equal(rec.stats().frames, 3);
});

test('tshark -i FIFO shows the bus live, as wireshark -k -i FIFO does', {
  skip: missingTool('tshark'),
}, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'cap-live-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const fifo = join(dir, 'live.pcapng');
  assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
  const { can } = startTestDaemon(t, { ports: [{ kind: 'capture', bus: 'default', value: fifo }] });
  const ts = spawn('tshark', ['-l', '-i', fifo, '-T', 'fields', '-e', 'can.id', '-e', 'frame.comment'], {
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  t.after(() => ts.kill('SIGKILL'));
  let out = '';
  ts.stdout.on('data', (d) => {
    out += d;
  });
  const a = attachment(can.attachments, 'live.pcapng');
  await waitFor('tshark to open the FIFO', () => (a.stats().state === 'writing' ? true : undefined), 10_000);
  const tap = hostPort(t, can.hubFor(0), 'tap');
  for (let i = 0; i < 3; i++) tap.transmit(makeCanFrame({ id: 0x100 + i, data: [i] }));
  await waitFor('three live lines', () => (out.split('\n').length > 3 ? true : undefined), 10_000);
  assert.equal(out, '256\ttap\n257\ttap\n258\ttap\n');
});

test('a BLF capture of many containers: the growing file is readable while recording, and python-can reads every frame', {
  skip: missingTool('python-can'),
}, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'cap-blf-runs-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'bus.blf');
  const { can } = startTestDaemon(t, { ports: [{ kind: 'capture', bus: 'default', value: file }] });
  const tap = hostPort(t, can.hubFor(0), 'tap');
  const a = attachment(can.attachments, 'bus.blf');
  // Varied payloads (they compress less): about 60 containers of 128 KiB.
  const N = 140_000;
  for (let i = 0; i < N; i++) {
    tap.transmit(makeCanFrame({ id: i & 0x7ff, data: [i & 0xff, (i >> 8) & 0xff, (i * 7) & 0xff, i % 251] }));
    if ((i & 1023) === 1023) await new Promise((r) => setImmediate(r));
  }
  // Without closing: everything reaches the file within a second (flush timer plus a run's wait).
  await waitFor('every frame in the file', () => (a.stats().recordsWritten === N ? true : undefined), 3000);
  const { readCaptureFile } = await import('../../src/node/capture/files.js');
  const live = readCaptureFile(file).filter((e) => e.kind === 'frame');
  assert.equal(live.length, N, 'frames readable while the capture runs');
  assert.ok(Number(a.stats().bytesWritten) > 0 && a.stats().writeErrors === 0);
  a.close();
  const py = pythonCanRead(file, 'blf');
  assert.equal(py.length, N);
  for (const k of [0, 1, 4095, 77_777, N - 1]) {
    const m = py[k]!;
    assert.equal(m.id, k & 0x7ff, `frame ${k}`);
    assert.equal(m.data, Buffer.from([k & 0xff, (k >> 8) & 0xff, (k * 7) & 0xff, k % 251]).toString('hex'));
  }
});
