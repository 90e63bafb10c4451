// Host side of the host-kernel runner: boots the guest kit's CAN-capable kernel on the host's
// own root filesystem (scripts/guest/host-kernel-run.sh) with two emulated Kvaser PCI
// controllers and runs test/host-kernel/smoke.test.ts there. Passes only if every smoke test
// ran and passed inside the guest (a skipped smoke test fails this one), the exit status came
// back, and QEMU is gone afterwards. Skipped when the guest kit is missing
// (sudo scripts/guest/build-kit.sh).

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { type HostKernelResult, hostKernelAvailable, runInHostKernel } from './helpers/host-kernel.js';

const available = hostKernelAvailable();
const skip = available === true ? false : available;

const SMOKE_TESTS = 5;

function describe(r: HostKernelResult): string {
  return (
    `exitStatus=${r.exitStatus} runner=${r.runnerExitCode}/${r.runnerSignal} timedOut=${r.timedOut} ` +
    `(work dir ${r.workDir}); output:\n${r.output.slice(-6000)}`
  );
}

/** Counts from node:test's summary, TAP (`# pass 5`) or spec (`ℹ pass 5`). */
function summary(output: string, key: string): number | undefined {
  const m = new RegExp(`^(?:#|ℹ) ${key} (\\d+)$`, 'm').exec(output);
  return m ? Number(m[1]) : undefined;
}

function qemuProcessesFor(workDir: string): string[] {
  const out = execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' });
  return out.split('\n').filter((l) => l.includes('qemu-system') && l.includes(workDir));
}

test('host-kernel runner: the smoke test passes inside the guest with two Kvaser controllers', {
  skip,
  timeout: 420_000,
}, async () => {
  const r = await runInHostKernel(['node', '--import', 'tsx', '--test', 'test/host-kernel/smoke.test.ts'], {
    kvaser: 2,
    timeoutMs: 360_000,
  });
  const why = describe(r);
  assert.equal(r.timedOut, false, why);
  assert.equal(r.exitStatus, 0, why);
  assert.equal(r.runnerExitCode, 0, why);
  assert.equal(summary(r.stdout, 'tests'), SMOKE_TESTS, why);
  assert.equal(summary(r.stdout, 'pass'), SMOKE_TESTS, why);
  assert.equal(summary(r.stdout, 'fail'), 0, why);
  assert.equal(summary(r.stdout, 'skipped'), 0, why);
  assert.doesNotMatch(r.stdout, /# SKIP/, why);
  assert.match(r.stdout, /^ok \d+ - kvaser_pci: can0 -> can1/m, why);
  // The command's stdout also came out on the runner's stdout, live.
  assert.match(r.output, /^# pass 5$/m, why);
  assert.ok(existsSync(join(r.artifactsDir, 'smoke.txt')), `the guest wrote into ${r.artifactsDir}`);
  assert.match(readFileSync(join(r.workDir, 'console.log'), 'utf8'), /reboot: Power down/, why);
  assert.ok(r.bootSeconds !== null && r.bootSeconds > 0, why);
  assert.deepEqual(qemuProcessesFor(r.workDir), [], 'QEMU is gone');
  console.log(
    `host-kernel: boot ${r.bootSeconds}s (guest uptime), smoke test ${r.commandSeconds}s, ` +
      `${(r.durationMs / 1000).toFixed(1)}s in all; ${r.workDir}`,
  );
});

test('host-kernel runner: the command exit status and stderr come back; a timeout kills the guest', {
  skip,
  timeout: 240_000,
}, async () => {
  const failing = await runInHostKernel(['sh', '-c', 'echo to-stdout; echo to-stderr >&2; exit 3'], {
    timeoutMs: 120_000,
  });
  let why = describe(failing);
  assert.equal(failing.exitStatus, 3, why);
  assert.equal(failing.runnerExitCode, 3, why);
  assert.equal(failing.stdout, 'to-stdout\n', why);
  assert.equal(failing.stderr, 'to-stderr\n', why);

  const hanging = await runInHostKernel(['sleep', '600'], { timeoutMs: 20_000 });
  why = describe(hanging);
  assert.equal(hanging.timedOut, true, why);
  assert.equal(hanging.exitStatus, null, why);
  assert.equal(hanging.runnerExitCode, 124, why);
  assert.deepEqual(qemuProcessesFor(hanging.workDir), [], 'QEMU is gone');
});
