// Host side of the SocketCAN suites: runs test/socketcan (the native AF_CAN layer and the daemon on
// vcan and on two emulated kvaser_pci controllers) inside the guest kit's CAN-capable kernel booted
// on this host's root filesystem, and fails unless every test ran and passed there (a skipped test
// fails this one: it would mean the guest had no AF_CAN). Skipped when the guest kit is missing.
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { hostKernelAvailable, runInHostKernel } from './helpers/host-kernel.js';

const available = hostKernelAvailable();

function summary(output: string, key: string): number | undefined {
  const m = new RegExp(`^(?:#|ℹ) ${key} (\\d+)$`, 'm').exec(output);
  return m ? Number(m[1]) : undefined;
}

// One fresh guest per file: the files share the two emulated controllers, and QEMU's SJA1000 model
// keeps a receive FIFO that an earlier flood overflowed lagging behind for good.
const FILES = readdirSync(join(import.meta.dirname, '../socketcan'))
  .filter((f) => f.endsWith('.test.ts'))
  .sort();

for (const file of FILES) {
  test(`SocketCAN: ${file} passes inside a CAN-capable kernel (vcan and two kvaser_pci)`, {
    skip: available === true ? false : available,
    timeout: 600_000,
  }, async () => {
    const r = await runInHostKernel(['node', '--import', 'tsx', '--test', `test/socketcan/${file}`], {
      kvaser: 2,
      timeoutMs: 540_000,
    });
    const why = `exit ${r.exitStatus} timedOut=${r.timedOut} (work dir ${r.workDir}); output:\n${r.output.slice(-8000)}`;
    assert.equal(r.timedOut, false, why);
    assert.equal(r.exitStatus, 0, why);
    assert.ok((summary(r.stdout, 'pass') ?? 0) >= 5, why);
    assert.equal(summary(r.stdout, 'fail'), 0, why);
    assert.equal(summary(r.stdout, 'skipped'), 0, why);
  });
}
