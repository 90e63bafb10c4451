/**
 * Capture and replay against can-utils on vcan, in a kernel with SocketCAN (canplayer and candump
 * need AF_CAN, which the host kernel may lack). Run it with
 *   scripts/guest/host-kernel-run.sh -- node --import tsx --test test/socketcan/capture-vcan.test.ts
 * On a host without AF_CAN every test is skipped with that reason.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { formatCandump, makeCanFrame, parseCandump } from '../../src/core/bus/can-frame.js';
import { readCapture, writeCapture } from '../../src/core/capture/index.js';
import { native } from '../../src/node/native/addon.js';
import { startTestDaemon, waitFor } from '../helpers/vhost-user.js';

const SKIP = native.canSupported()
  ? false
  : 'no AF_CAN in this kernel (canplayer, candump): run with scripts/guest/host-kernel-run.sh -- node --import tsx --test test/socketcan/capture-vcan.test.ts';

let seq = 0;
function vcan(t: { after(fn: () => void): void }): string {
  const name = `vcp${process.pid % 1000}${seq++}`;
  execFileSync('ip', ['link', 'add', 'dev', name, 'type', 'vcan']);
  execFileSync('ip', ['link', 'set', name, 'mtu', '72']);
  execFileSync('ip', ['link', 'set', name, 'up']);
  t.after(() => spawnSync('ip', ['link', 'del', name]));
  return name;
}

function tmp(t: { after(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'cap-vcan-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** `candump -L IFNAME`: the frame column of each line so far. */
function candump(
  t: { after(fn: () => void): void },
  ifname: string,
): { frames(): string[]; child: ChildProcess } {
  const child = spawn('candump', ['-L', ifname], { stdio: ['ignore', 'pipe', 'ignore'] });
  let out = '';
  child.stdout!.on('data', (d) => {
    out += d;
  });
  t.after(() => child.kill('SIGKILL'));
  return {
    child,
    frames: () =>
      out
        .split('\n')
        .filter((l) => l.trim() !== '')
        .map((l) =>
          l
            .trim()
            .split(/\s+/)[2]!
            .replace(/##[0-9A-F]/, (m) => `##${Number.parseInt(m[2]!, 16) & 3}`),
        ),
  };
}

async function listening(ifname: string): Promise<void> {
  await waitFor(
    'candump listening',
    () => {
      const r = spawnSync(
        'sh',
        ['-c', 'cat /proc/net/can/rcvlist_all /proc/net/can/rcvlist_fil 2>/dev/null'],
        {
          encoding: 'utf8',
        },
      );
      return r.stdout.includes(ifname) ? true : undefined;
    },
    5000,
  );
}

const TEXT = [
  '123#DEADBEEF',
  '000#',
  '1ABCDEF0#0102030405060708',
  '7FF#R4',
  `456##1${'AB'.repeat(12)}`,
  `457##0${'01'.repeat(64)}`,
];
const T0 = BigInt(Date.now()) * 1_000_000n;

test('canplayer plays our candump log onto vcan: candump sees every frame byte-exact', {
  skip: SKIP,
}, async (t) => {
  const ifname = vcan(t);
  const dir = tmp(t);
  const file = join(dir, 'trace.log');
  writeFileSync(
    file,
    writeCapture(
      'log',
      TEXT.map((s, i) => ({
        frame: { ...parseCandump(s), timestampNs: T0 + BigInt(i) * 10_000_000n },
        direction: 'outbound' as const,
      })),
      { channels: ['recorded'] },
    ),
  );
  const dump = candump(t, ifname);
  await listening(ifname);
  const r = spawnSync('canplayer', ['-I', file, `${ifname}=recorded`], { encoding: 'utf8', timeout: 20_000 });
  assert.equal(r.status, 0, r.stderr);
  await waitFor('candump lines', () => (dump.frames().length >= TEXT.length ? true : undefined), 5000);
  assert.deepEqual(
    dump.frames(),
    TEXT.map((s) => formatCandump(parseCandump(s))),
  );
});

test('a log written by candump -l is read by our decoder', { skip: SKIP }, async (t) => {
  const ifname = vcan(t);
  const dir = tmp(t);
  const child = spawn('candump', ['-l', '-s', '0', ifname], { cwd: dir, stdio: 'ignore' });
  t.after(() => child.kill('SIGKILL'));
  await listening(ifname);
  for (const s of TEXT) execFileSync('cansend', [ifname, s]);
  await new Promise((r) => setTimeout(r, 300));
  child.kill('SIGINT');
  await new Promise((r) => child.once('exit', r));
  const name = spawnSync('sh', ['-c', `ls ${dir}`], { encoding: 'utf8' }).stdout.trim();
  const events = readCapture('log', readFileSync(join(dir, name)));
  assert.deepEqual(
    events.filter((e) => e.kind === 'bad'),
    [],
  );
  assert.deepEqual(
    events.map((e) => (e.kind === 'frame' ? formatCandump({ ...e.frame, brs: false, esi: false }) : e.kind)),
    TEXT.map((s) => formatCandump({ ...parseCandump(s), brs: false, esi: false })),
  );
});

test('--capture on a host vcan bus records cansend frames as inbound from the interface port', {
  skip: SKIP,
}, async (t) => {
  const ifname = vcan(t);
  const dir = tmp(t);
  const file = join(dir, 'bus.pcapng');
  const { can } = startTestDaemon(t, {
    buses: [{ kind: 'host', ifname }],
    ports: [{ kind: 'capture', bus: ifname, value: file }],
  });
  for (const s of TEXT) execFileSync('cansend', [ifname, s]);
  const a = can.attachments.find((x) => x.kind === 'capture')!;
  await waitFor('frames captured', () => (a.stats().frames === TEXT.length ? true : undefined), 5000);
  can.stop();
  const events = readCapture('pcapng', readFileSync(file));
  assert.deepEqual(
    events.map((e) =>
      e.kind === 'frame' ? [formatCandump({ ...e.frame, brs: false, esi: false }), e.direction] : e.kind,
    ),
    TEXT.map((s) => [formatCandump({ ...parseCandump(s), brs: false, esi: false }), 'inbound']),
  );
  const port = events[0]!.kind === 'frame' ? events[0]!.port : undefined;
  assert.equal(port, can.hostPorts.get(ifname)!.port.name);
});

test('--replay into a host vcan bus: candump on the interface sees the recorded frames', {
  skip: SKIP,
}, async (t) => {
  const ifname = vcan(t);
  const dir = tmp(t);
  const file = join(dir, 'trace.blf');
  const { deflateSync } = await import('node:zlib');
  writeFileSync(
    file,
    writeCapture(
      'blf',
      TEXT.map((s, i) => ({
        frame: makeCanFrame({ ...parseCandump(s), timestampNs: T0 + BigInt(i) * 5_000_000n }),
      })),
      { deflate: (d) => deflateSync(d) },
    ),
  );
  const dump = candump(t, ifname);
  await listening(ifname);
  startTestDaemon(t, {
    buses: [{ kind: 'host', ifname }],
    ports: [{ kind: 'replay', bus: ifname, value: file }],
    portOptions: { 'replay-start': 'now' },
  });
  await waitFor('candump lines', () => (dump.frames().length >= TEXT.length ? true : undefined), 5000);
  assert.deepEqual(
    dump.frames(),
    TEXT.map((s) => formatCandump(parseCandump(s))),
  );
});

test('log2asc converts a candump -l log of FD frames that our ASC reader reads back', {
  skip: SKIP,
}, async (t) => {
  const ifname = vcan(t);
  const dir = tmp(t);
  const child = spawn('candump', ['-l', '-s', '0', ifname], { cwd: dir, stdio: 'ignore' });
  t.after(() => child.kill('SIGKILL'));
  await listening(ifname);
  for (const s of TEXT) execFileSync('cansend', [ifname, s]);
  await new Promise((r) => setTimeout(r, 300));
  child.kill('SIGINT');
  await new Promise((r) => child.once('exit', r));
  const name = spawnSync('sh', ['-c', `ls ${dir}`], { encoding: 'utf8' }).stdout.trim();
  const out = join(dir, 'out.asc');
  const r = spawnSync('log2asc', ['-I', join(dir, name), '-O', out, ifname], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const events = readCapture('asc', readFileSync(out));
  assert.deepEqual(
    events.map((e) => (e.kind === 'frame' ? formatCandump({ ...e.frame, brs: false, esi: false }) : e.kind)),
    TEXT.map((s) => formatCandump({ ...parseCandump(s), brs: false, esi: false })),
  );
});
