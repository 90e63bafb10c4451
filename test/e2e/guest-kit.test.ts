// Smoke test of the guest kit itself (no daemon involved): the kernel boots, /init loads the
// CAN modules and the out-of-tree virtio_can driver, the 9p share works both ways, can-utils
// work on a vcan interface (classic, extended, RTR, FD), and QEMU is always reaped.
// Skipped when the kit has not been built (sudo scripts/guest/build-kit.sh).

import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { findGuestKit, type GuestKit, type GuestResult, runGuest, startGuest } from './helpers/guest.js';

const found = findGuestKit();
const kit: GuestKit | undefined = 'missing' in found ? undefined : found;
const skipReason = 'missing' in found ? found.missing : undefined;

function describeFailure(r: GuestResult): string {
  return `exitStatus=${r.exitStatus} timedOut=${r.timedOut} qemu=${r.qemuExitCode}/${r.qemuSignal}; console (${r.workDir}/console.log):\n${r.consoleLog.slice(-4000)}`;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

// Frames sent with cansend and the exact `candump -L` text expected for each (after the
// timestamp). vcan0's MTU is 72 (CANFD_MTU) so it carries both classic and FD frames; the MTU
// can only change while the link is down, and candump must not see a down/up (it exits on
// ENETDOWN), so it is set before the link comes up. In the FD lines the flags nibble candump
// prints includes CANFD_FDF (0x04), which the guest kernel sets on every FD frame: cansend's
// `##1` (BRS) comes back as `##5`, `##0` as `##4`.
const FRAMES: Array<[send: string, dumped: string]> = [
  ['123#DEADBEEF', '123#DEADBEEF'], // classic, 11-bit
  ['12345678#0102030405060708', '12345678#0102030405060708'], // extended, 8 bytes
  ['321#', '321#'], // classic, zero length
  ['7FF#R', '7FF#R'], // RTR, DLC 0
  ['1AB#R4', '1AB#R4'], // RTR, DLC 4
  ['456##1112233445566778899AABBCC', '456##5112233445566778899AABBCC'], // FD, BRS, 12 bytes
  [`00000ABC##0${'55'.repeat(64)}`, `00000ABC##4${'55'.repeat(64)}`], // FD, extended, 64 bytes
];

const VCAN_SCENARIO = `
set -e
lsmod > /mnt/lsmod.txt
ls /sys/bus/virtio/drivers > /mnt/virtio-drivers.txt
ip link add dev vcan0 type vcan
ip link set vcan0 mtu 72
ip link set vcan0 up
ip -details link show vcan0 > /mnt/vcan0.txt
candump -L -n ${FRAMES.length} vcan0 > /mnt/dump.txt &
dump=$!
# Send only once candump's raw socket is registered on vcan0.
i=0
until grep -q vcan0 /proc/net/can/rcvlist_all; do
  i=$((i + 1)); [ $i -lt 100 ] || { echo "candump never bound"; exit 10; }
  sleep 0.1
done
${FRAMES.map(([send]) => `cansend vcan0 ${send}`).join('\n')}
# candump exits by itself after ${FRAMES.length} frames; kill it if some never arrive.
( sleep 20; kill $dump 2>/dev/null ) &
watchdog=$!
wait $dump
kill $watchdog 2>/dev/null || true
echo done > /mnt/finished
`;

test('guest kit: vcan round trip with can-utils, virtio_can loaded', { skip: skipReason }, async () => {
  assert.ok(kit);
  const r = await runGuest({ kit, scenario: VCAN_SCENARIO, canDevices: [], timeoutMs: 120_000 });
  assert.equal(r.timedOut, false, describeFailure(r));
  assert.equal(r.exitStatus, 0, describeFailure(r));
  assert.equal(r.qemuExitCode, 0, describeFailure(r));
  assert.equal(r.files('finished'), 'done\n');

  // /init loaded every module, virtio_can included, and reported no failure.
  const initLog = r.files('init.log');
  assert.doesNotMatch(initLog, /ERROR/, initLog);
  assert.match(initLog, /^loaded virtio_can$/m);
  assert.match(r.files('lsmod.txt'), /^virtio_can\s/m);
  assert.match(r.files('modules.txt'), /^virtio_can\s/m);
  assert.match(r.files('virtio-drivers.txt'), /^virtio_can$/m);
  assert.match(r.files('vcan0.txt'), /mtu 72\b/);

  const lines = r.files('dump.txt').split('\n');
  assert.equal(lines.pop(), '', 'dump.txt ends with a newline');
  assert.equal(lines.length, FRAMES.length, r.files('dump.txt'));
  lines.forEach((line, i) => {
    const m = /^\(\d{10}\.\d{6}\) (.*)$/.exec(line);
    assert.ok(m, `timestamped candump -L line: ${JSON.stringify(line)}`);
    assert.equal(m[1], `vcan0 ${FRAMES[i]?.[1]}`);
  });
});

test('guest kit: startGuest handle, files both ways through the share', { skip: skipReason }, async () => {
  assert.ok(kit);
  const scenario = `
echo "$(uname -r)" > /mnt/ready.tmp && mv /mnt/ready.tmp /mnt/ready
i=0
until [ -f /mnt/go ]; do
  i=$((i + 1)); [ $i -lt 600 ] || exit 20
  sleep 0.1
done
cat /mnt/go > /mnt/echoed
exit 7
`;
  const g = startGuest({ kit, scenario, canDevices: [], timeoutMs: 120_000 });
  const ready = await g.waitForFile('ready', 100_000);
  assert.equal(ready, `${kit.kernelVersion}\n`);
  writeFileSync(join(g.shareDir, 'go'), 'from the host\n');
  const r = await g.done;
  assert.equal(r.exitStatus, 7, describeFailure(r));
  assert.equal(r.files('echoed'), 'from the host\n');
  await assert.rejects(g.waitForFile('never', 1000), /exited before creating/);
});

test('guest kit: a hung guest is killed at the timeout', { skip: skipReason }, async () => {
  assert.ok(kit);
  const g = startGuest({ kit, scenario: 'sleep 1000\n', canDevices: [], timeoutMs: 4000 });
  const r = await g.done;
  assert.equal(r.timedOut, true);
  assert.equal(r.exitStatus, null);
  assert.ok(g.pid !== undefined && !isAlive(g.pid), 'QEMU is gone');
  assert.match(r.consoleLog, /timeout after 4000 ms/);
});

test('guest kit: a missing vhost-user socket is reported before QEMU starts', { skip: skipReason }, () => {
  assert.ok(kit);
  assert.throws(
    () =>
      startGuest({
        kit,
        scenario: 'true\n',
        canDevices: [{ socketPath: '/nonexistent/can.sock' }],
        timeoutMs: 1000,
      }),
    /does not exist/,
  );
});
