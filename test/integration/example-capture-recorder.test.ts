/** The README's recorder example (examples/capture-recorder.mjs) runs as documented. */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { test } from 'node:test';
import { readCaptureFile } from '../../src/node/capture/files.js';
import { CanTestDriver } from '../../src/node/frontend/can-driver.js';
import { VhostUserFrontend } from '../../src/node/frontend/frontend.js';
import { GuestRam } from '../../src/node/frontend/guest-ram.js';
import { waitFor } from '../helpers/vhost-user.js';

const ROOT = resolve(import.meta.dirname, '../..');

test('examples/capture-recorder.mjs records a guest’s frames and completes the file on Ctrl-C', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vdc-rec-'));
  const file = join(dir, 'bus.blf');
  const child = spawn(
    process.execPath,
    [join(ROOT, 'examples/capture-recorder.mjs'), join(dir, 'can.sock'), '1', file],
    {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
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
  await waitFor('listening', () => (err.includes('recording into') ? true : undefined), 15_000);
  const fe = VhostUserFrontend.connect(join(dir, 'can.sock0'));
  const ram = new GuestRam();
  t.after(() => {
    fe.close();
    ram.close();
  });
  const drv = await CanTestDriver.create(fe, ram);
  assert.equal(await drv.startController(), 0);
  assert.equal(await drv.send({ id: 0x123, data: [1, 2] }), 0);
  assert.equal(await drv.send({ id: 0x1abcdef0, extended: true, fd: true, data: new Array(12).fill(7) }), 0);
  assert.equal(await drv.send({ id: 0x7ff, rtr: true, len: 2 }), 0);
  // Within a second the frames are in the file, while the example still runs.
  await waitFor('frames in the file', () => (readCaptureFile(file).length === 3 ? true : undefined), 3000);
  child.kill('SIGINT');
  await new Promise((r) => child.once('exit', r));
  assert.equal(out, `3 frames in ${file}\n`, err);
  const ev = readCaptureFile(file);
  assert.deepEqual(
    ev.map((e) =>
      e.kind === 'frame' ? [e.frame.id, e.frame.fd, e.frame.rtr, e.frame.len, e.direction] : e.kind,
    ),
    [
      [0x123, false, false, 2, 'outbound'],
      [0x1abcdef0, true, false, 12, 'outbound'],
      [0x7ff, false, true, 2, 'outbound'],
    ],
  );
});
