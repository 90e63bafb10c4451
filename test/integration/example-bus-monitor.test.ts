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
  child.stdin.write('1ABCDEF0#0102\n');
  const [f] = await drv.waitFrames(1);
  assert.equal(f!.id, 0x1abcdef0);
  assert.equal(f!.extended, true);
  assert.deepEqual([...f!.data], [1, 2]);
});
