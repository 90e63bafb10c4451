// A real Linux guest reads /dev/hwrng served by the rng daemon: the guest's virtio_rng driver binds
// to the device (QEMU's vhost-user-test-device-pci, virtio-id 4), the bytes it reads are random and
// the daemon's rate limit holds. The kit's kernel has virtio_rng as a module that is not in the
// initramfs: the host decompresses it from the kit's rootfs into the guest's share.

import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { startRngDaemon } from '../../src/node/rng/rng-daemon.js';
import { guestKit, skipWithoutKit, withRun } from './helpers/can-scenarios.js';

function virtioRngModule(): string | null {
  if (guestKit === undefined) return null;
  const p = join(
    guestKit.dir,
    'rootfs/lib/modules',
    guestKit.kernelVersion,
    'kernel/drivers/char/hw_random/virtio-rng.ko.xz',
  );
  return existsSync(p) ? p : null;
}

const moduleXz = virtioRngModule();
const hasXz = spawnSync('xz', ['--version']).status === 0;
const skip =
  skipWithoutKit ??
  (moduleXz === null ? 'virtio-rng.ko.xz not in the kit rootfs' : undefined) ??
  (hasXz ? undefined : 'xz is needed to unpack the virtio-rng module');

const MAX_BYTES = 4096;
const PERIOD_MS = 500;
const READ = 16 * 1024;

test(
  'rng: a Linux guest reads random bytes from /dev/hwrng at the configured rate',
  { skip, timeout: 240_000 },
  withRun('rng-guest', async (run) => {
    const sock = run.socketPathFor('rng.sock');
    const rng = startRngDaemon({
      paths: [`${sock}0`],
      maxBytes: MAX_BYTES,
      periodMs: PERIOD_MS,
      log: run.log,
    });
    run.onClose(() => rng.stop());
    const t0 = performance.now();
    const g = run.startGuest({
      name: 'guest',
      sockets: [],
      extraQemuArgs: [
        '-chardev',
        `socket,id=rng0,path=${sock}0`,
        '-device',
        'vhost-user-test-device-pci,chardev=rng0,virtio-id=4,num_vqs=1,config_size=0',
      ],
      timeoutMs: 200_000,
      scenario: `
await_host virtio-rng.ko 120
insmod /mnt/virtio-rng.ko || fail "insmod virtio-rng"
_n=0
until [ -c /dev/hwrng ] && grep -q virtio /sys/class/misc/hw_random/rng_current 2>/dev/null; do
  _n=$((_n + 1)); [ $_n -le 200 ] || fail "no virtio hwrng"
  sleep 0.05
done
cat /sys/class/misc/hw_random/rng_current > /mnt/rng-current
head -c 1024 /dev/hwrng > /mnt/rand1 || fail "read 1"
head -c 1024 /dev/hwrng > /mnt/rand2 || fail "read 2"
signal first-reads
head -c ${READ} /dev/hwrng > /mnt/rand3 || fail "read 3"
signal done
await_host finish 60
`,
    });
    // The share exists once the guest started; the module goes there in one step.
    const ko = execFileSync('xz', ['-dc', moduleXz!], { maxBuffer: 64 * 1024 * 1024 });
    writeFileSync(join(g.shareDir, 'virtio-rng.ko.tmp'), ko);
    renameSync(join(g.shareDir, 'virtio-rng.ko.tmp'), join(g.shareDir, 'virtio-rng.ko'));

    await run.waitFor(g, 'first-reads', 150_000);
    const t1 = performance.now();
    await run.waitFor(g, 'done', 60_000);
    const elapsed = performance.now() - t0;
    const bulkMs = performance.now() - t1;
    const dev = rng.device(0);
    run.ok(dev !== null, 'the guest is connected');
    const stats = { ...dev!.stats };
    run.tell(g, 'finish');
    const r = await g.done;
    run.guestFinished(r);
    run.ok(r.files('rng-current').includes('virtio_rng'), `rng_current: ${r.files('rng-current').trim()}`);
    const a = readFileSync(join(r.shareDir, 'rand1'));
    const b = readFileSync(join(r.shareDir, 'rand2'));
    const c = readFileSync(join(r.shareDir, 'rand3'));
    run.equal(c.length, READ, 'third read length');
    run.equal(a.length, 1024, 'first read length');
    run.equal(b.length, 1024, 'second read length');
    run.ok(!a.equals(b), 'two reads differ');
    run.ok(new Set(a).size > 200, `first read: ${new Set(a).size} distinct byte values of 1024`);
    // Every byte the guest read came from the device; the kernel's hwrng thread reads more.
    run.ok(stats.bytes >= 2048 + READ, `device served ${stats.bytes} bytes`);
    // The rate limit: never more than MAX_BYTES per period started since the daemon started.
    const periods = Math.floor(elapsed / PERIOD_MS) + 2;
    run.ok(
      stats.bytes <= MAX_BYTES * periods,
      `${stats.bytes} bytes in ${elapsed.toFixed(0)} ms (at most ${MAX_BYTES} per ${PERIOD_MS} ms)`,
    );
    // READ bytes at MAX_BYTES per period take at least READ / MAX_BYTES - 1 whole periods (less
    // a little for the 50 ms polling of the signal files).
    const minMs = (READ / MAX_BYTES - 1) * PERIOD_MS - 100;
    run.ok(bulkMs >= minMs, `reading ${READ} bytes took ${bulkMs.toFixed(0)} ms (at least ${minMs})`);
    run.ok(stats.throttledPeriods >= 1, `throttled periods: ${stats.throttledPeriods}`);
    run.equal(stats.badChains, 0, 'bad chains');
    run.results.rng = { ...stats, elapsedMs: Math.round(elapsed), bulkMs: Math.round(bulkMs) };
  }),
);
