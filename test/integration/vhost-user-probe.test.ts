// The vhost-user-probe CLI as a child process against the in-process daemon (which must keep
// serving it: the child is awaited asynchronously, never with spawnSync).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { connect, startTestDaemon, waitConnected, waitDisconnected } from '../helpers/vhost-user.js';

const repoRoot = fileURLToPath(new URL('../../', import.meta.url));

function runProbe(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/vhost-user-probe.ts', ...args], {
      cwd: repoRoot,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.on('error', reject);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('vhost-user-probe', () => {
  test('prints features, protocol features, 3 queues and config; the daemon accepts again', async (t) => {
    const { can, paths } = startTestDaemon(t);
    const r = await runProbe([paths[0]!]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^queues: 3$/m);
    assert.match(r.stdout, /^features: 0x000000017000000f$/m);
    assert.match(r.stdout, /^ {2}32 {2}VERSION_1$/m);
    assert.match(r.stdout, /^ {2} 9 {2}CONFIG$/m);
    assert.match(r.stdout, /^config \(16 bytes at 0\): (00 ){15}00$/m);
    await waitDisconnected(can);
    assert.equal(can.daemon.status()[0]!.connections, 1);
    const { fe } = connect(t, paths[0]!);
    await waitConnected(can);
    assert.equal((await fe.init({ numQueues: 3 })).queueNum, 3);
  });

  test('--json and --config-size', async (t) => {
    const { paths } = startTestDaemon(t);
    const r = await runProbe([paths[0]!, '--json', '--config-size', '2']);
    assert.equal(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout) as {
      queueNum: number;
      maxMemSlots: number;
      config: { size: number; hex: string };
      protocolFeatureBits: { bit: number; name: string }[];
    };
    assert.equal(j.queueNum, 3);
    assert.equal(j.maxMemSlots, 32);
    assert.deepEqual(j.config, { offset: 0, size: 2, hex: '00 00' });
    assert.ok(j.protocolFeatureBits.some((b) => b.name === 'BACKEND_REQ'));
  });

  test('exits 1 with a clear message when it cannot connect, 2 on usage errors', async (t) => {
    const { dir } = startTestDaemon(t);
    const r = await runProbe([join(dir, 'nothing-here')]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /cannot connect to .*nothing-here: ENOENT/);
    assert.equal(r.stdout, '');
    const u = await runProbe([]);
    assert.equal(u.code, 2);
    const c = await runProbe([join(dir, 'x'), '--config-size', '999']);
    assert.equal(c.code, 2);
  });
});
