// Smoke test of the host-kernel guest itself (scripts/guest/host-kernel-run.sh): this very
// node, checkout and can-utils, running on the guest kit's CAN-capable kernel. It checks the
// modules, the writable places, vcan and vxcan with ip/cansend/candump, and (with --kvaser 2)
// two emulated Kvaser PCI controllers (SJA1000 driver) on one QEMU can-bus at 500 kbit/s.
//
// Only meaningful inside the guest; everywhere else every test is skipped. Run it with
//   scripts/guest/host-kernel-run.sh --kvaser 2 -- node --import tsx --test test/host-kernel/smoke.test.ts
// (test/e2e/host-kernel.test.ts does exactly that and insists that nothing was skipped).

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { accessSync, constants, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { test } from 'node:test';
import { native } from '../../src/node/native/addon.js';
import { REPO_ROOT } from '../e2e/helpers/guest.js';
import { inHostKernelGuest } from '../e2e/helpers/host-kernel.js';

const HOW =
  'scripts/guest/host-kernel-run.sh --kvaser 2 -- node --import tsx --test test/host-kernel/smoke.test.ts';
const skip = inHostKernelGuest() ? false : `not inside a host-kernel guest; run: ${HOW}`;
const kvaser = Number(process.env.VHOST_TS_GUEST_KVASER ?? '0');

function run(cmd: string, ...args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * Starts `candump -L -n 1 rxIface`, waits until its raw socket is registered, runs `cansend
 * txIface frame` and resolves with candump's line.
 */
async function sendAndDump(txIface: string, rxIface: string, frame: string): Promise<string> {
  const dump = spawn('candump', ['-L', '-n', '1', rxIface], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  dump.stdout.on('data', (b: Buffer) => {
    out += b.toString();
  });
  dump.stderr.on('data', (b: Buffer) => {
    err += b.toString();
  });
  const exited = new Promise<number | null>((r) => dump.once('close', (code) => r(code)));
  try {
    const deadline = Date.now() + 10_000;
    while (!readFileSync('/proc/net/can/rcvlist_all', 'utf8').includes(rxIface)) {
      assert.ok(Date.now() < deadline, `candump never bound to ${rxIface}: ${err}`);
      await sleep(50);
    }
    run('cansend', txIface, frame);
    const code = await Promise.race([exited, sleep(10_000).then(() => 'timeout' as const)]);
    assert.equal(code, 0, `candump on ${rxIface}: exit ${code}, stderr: ${err}, stdout: ${out}`);
    return out.trim();
  } finally {
    dump.kill('SIGKILL');
  }
}

function deleteLink(name: string): void {
  try {
    run('ip', 'link', 'del', name);
  } catch {
    // absent
  }
}

test('the guest kernel has AF_CAN and the CAN modules; the native addon sees them', { skip }, () => {
  const modules = readFileSync('/proc/modules', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[0]);
  for (const m of ['can', 'can_raw', 'can_dev', 'vcan', 'vxcan', 'can_gw', 'sja1000', 'kvaser_pci']) {
    assert.ok(modules.includes(m), `module ${m} not loaded: ${modules.join(' ')}`);
  }
  assert.equal(native.canSupported(), true);
});

test('the guest environment: writable tmpfs and artifact share, read-only root, loopback up', {
  skip,
}, () => {
  for (const dir of ['/tmp', '/dev/shm', '/run', process.env.HOME ?? '/tmp/home']) {
    accessSync(dir, constants.W_OK);
    const p = join(dir, `smoke-${process.pid}`);
    writeFileSync(p, 'x');
    rmSync(p);
  }
  const artifacts = process.env.VHOST_TS_GUEST_ARTIFACTS;
  assert.ok(artifacts, 'VHOST_TS_GUEST_ARTIFACTS is set');
  writeFileSync(join(artifacts, 'smoke.txt'), `written in the guest by pid ${process.pid}\n`);
  assert.throws(() => writeFileSync(join(REPO_ROOT, `smoke-${process.pid}.txt`), 'x'), /EROFS/);
  const flags = Number(readFileSync('/sys/class/net/lo/flags', 'utf8').trim());
  assert.equal(flags & 1, 1, 'lo is up');
});

test('vcan: ip link add vcan0 type vcan; cansend/candump on vcan0', { skip }, async () => {
  deleteLink('vcan0');
  run('ip', 'link', 'add', 'dev', 'vcan0', 'type', 'vcan');
  try {
    run('ip', 'link', 'set', 'vcan0', 'up');
    assert.match(run('ip', '-details', 'link', 'show', 'vcan0'), /vcan/);
    assert.match(await sendAndDump('vcan0', 'vcan0', '123#DEADBEEF'), /^\(\d+\.\d+\) vcan0 123#DEADBEEF$/);
    assert.match(
      await sendAndDump('vcan0', 'vcan0', '12345678#0102030405060708'),
      /^\(\d+\.\d+\) vcan0 12345678#0102030405060708$/,
    );
  } finally {
    deleteLink('vcan0');
  }
});

test('vxcan: a vxcan0/vxcan1 pair carries a frame', { skip }, async () => {
  deleteLink('vxcan0');
  run('ip', 'link', 'add', 'vxcan0', 'type', 'vxcan', 'peer', 'name', 'vxcan1');
  try {
    run('ip', 'link', 'set', 'vxcan0', 'up');
    run('ip', 'link', 'set', 'vxcan1', 'up');
    assert.match(await sendAndDump('vxcan0', 'vxcan1', '321#CAFE'), /^\(\d+\.\d+\) vxcan1 321#CAFE$/);
  } finally {
    deleteLink('vxcan0');
  }
});

test('kvaser_pci: can0 -> can1 over the QEMU can-bus at 500 kbit/s', {
  skip: skip || (kvaser < 2 ? `needs 2 Kvaser controllers (VHOST_TS_GUEST_KVASER=${kvaser}): ${HOW}` : false),
}, async () => {
  for (const dev of ['can0', 'can1']) {
    const driver = basename(readlinkSync(`/sys/class/net/${dev}/device/driver`));
    assert.equal(driver, 'kvaser_pci', `${dev}'s driver`);
    run('ip', 'link', 'set', dev, 'down');
    run('ip', 'link', 'set', dev, 'type', 'can', 'bitrate', '500000');
    run('ip', 'link', 'set', dev, 'up');
    const details = run('ip', '-details', 'link', 'show', dev);
    assert.match(details, /bitrate 500000/, details);
    assert.match(details, /state ERROR-ACTIVE/, details);
  }
  assert.match(await sendAndDump('can0', 'can1', '123#DEADBEEF'), /^\(\d+\.\d+\) can1 123#DEADBEEF$/);
  assert.match(
    await sendAndDump('can1', 'can0', '1ABCDEF0#11223344'),
    /^\(\d+\.\d+\) can0 1ABCDEF0#11223344$/,
  );
  const stats = run('ip', '-statistics', 'link', 'show', 'can0');
  assert.match(stats, /can0/);
  for (const dev of ['can0', 'can1']) run('ip', 'link', 'set', dev, 'down');
});
