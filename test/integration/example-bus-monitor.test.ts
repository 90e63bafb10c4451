/** The README's library example (examples/bus-monitor.mjs) runs as documented. */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { test } from 'node:test';
import { CanTestDriver } from '../../src/node/frontend/can-driver.js';
import { VhostUserFrontend } from '../../src/node/frontend/frontend.js';
import { GuestRam } from '../../src/node/frontend/guest-ram.js';
import { waitFor } from '../helpers/vhost-user.js';

const ROOT = resolve(import.meta.dirname, '../..');

test('examples/bus-monitor.mjs prints guest frames and injects typed ones', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vdc-ex-'));
  const child = spawn(
    process.execPath,
    [join(ROOT, 'examples/bus-monitor.mjs'), join(dir, 'can.sock'), '1'],
    {
      cwd: ROOT,
      stdio: ['pipe', 'pipe', 'pipe'],
    },
  );
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => {
    out += d;
  });
  child.stderr.on('data', (d) => {
    err += d;
  });
  t.after(() => {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });
  await waitFor('listening', () => (err.includes('listening') ? true : undefined), 15_000);
  const fe = VhostUserFrontend.connect(join(dir, 'can.sock0'));
  const ram = new GuestRam();
  t.after(() => {
    fe.close();
    ram.close();
  });
  const drv = await CanTestDriver.create(fe, ram);
  assert.equal(await drv.startController(), 0);
  assert.equal(await drv.send({ id: 0x123, data: [0xde, 0xad, 0xbe, 0xef] }), 0);
  await waitFor('monitor line', () => (out.includes('vbus0 123#DEADBEEF') ? true : undefined), 5000);
  // More frames of the same length: the monitor releases each one, so the bus reuses the copy;
  // every line must still show its own bytes, with a CLOCK_MONOTONIC timestamp.
  for (let i = 0; i < 5; i++) assert.equal(await drv.send({ id: 0x200 + i, data: [i, i, i, i] }), 0);
  await waitFor('five more lines', () => (out.split('\n').length > 6 ? true : undefined), 5000);
  const lines = out.trim().split('\n');
  assert.deepEqual(
    lines.map((l) => l.replace(/^\(\d{10}\.\d{6}\) /, '')),
    ['vbus0 123#DEADBEEF', ...[0, 1, 2, 3, 4].map((i) => `vbus0 20${i}#0${i}0${i}0${i}0${i}`)],
  );
  const stamps = lines.map((l) => Number(/^\((\d+\.\d+)\)/.exec(l)?.[1]));
  const now = Number(process.hrtime.bigint()) / 1e9; // CLOCK_MONOTONIC, as the daemon's clock
  for (const s of stamps) assert.ok(s > 0 && now - s >= 0 && now - s < 30, `timestamp ${s} vs now ${now}`);
  child.stdin.write('1ABCDEF0#0102\n');
  const [f] = await drv.waitFrames(1);
  assert.equal(f!.id, 0x1abcdef0);
  assert.equal(f!.extended, true);
  assert.deepEqual([...f!.data], [1, 2]);
});
