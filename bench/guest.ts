/**
 * Real-guest benchmark (not a test): `node --import tsx bench/guest.ts [--seconds N]`
 * (`npm run bench:guest` once package.json has that script).
 *
 * One TCG guest of the guest kit (scripts/guest/README.md) with the mainline virtio_can driver runs
 * `cangen -g 0` (flat out) for a fixed time twice:
 *   1. on can0, the virtio-can device served by our daemon (in this process, startCanDaemon), whose
 *      virtual bus has a counting tap port: frames/s delivered to the bus;
 *   2. on vcan0, the guest kernel's own virtual CAN device: the rate the guest itself can generate
 *      with no device in the way (tx_packets, what `ip -s link` shows).
 * The ratio says how much of the guest's own ceiling our device path keeps. TCG (no KVM here), one
 * vCPU: the guest is slow, so the guest's CPU is the expected limit; QEMU's and our CPU are
 * reported to show it. Skips with a message (exit 0) when the kit has not been built.
 */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { HubPort } from '../src/core/bus/hub.js';
import { startCanDaemon } from '../src/node/can/can-daemon.js';
import { findGuestKit, startGuest } from '../test/e2e/helpers/guest.js';
import { REPO_ROOT } from './lib/build.js';
import { removeDir, trackDir } from './lib/children.js';
import { procCpuSeconds } from './lib/proc.js';
import { fixed, int, pct, table } from './lib/table.js';
import { writeJson } from './lib/write-json.js';

// The prelude of the e2e scenarios (test/e2e/helpers/can-scenarios.ts), trimmed to what we use.
const PRELUDE = `
PATH=/usr/sbin:/usr/bin:/sbin:/bin
fail() { echo "scenario failed: $*"; echo "$*" > /mnt/failure.txt; exit 1; }
signal() { _t=ok; [ $# -lt 2 ] || _t=$2; echo "$_t" > "/mnt/$1.tmp" && mv "/mnt/$1.tmp" "/mnt/$1"; }
await_host() {
  _n=0; _s=60; [ $# -lt 2 ] || _s=$2
  until [ -f "/mnt/$1" ]; do
    _n=$((_n + 1)); [ $_n -le $((_s * 20)) ] || fail "the host never created /mnt/$1"
    sleep 0.05
  done
}
txp() { cat "/sys/class/net/$1/statistics/tx_packets"; }
up() { cut -d' ' -f1 /proc/uptime; }
`;

// Same cangen options on both interfaces: classic 8-byte frames, fixed ID, incrementing payload,
// no gap, poll (back-pressure) instead of exiting on ENOBUFS, no local loopback.
const CANGEN = '-g 0 -p 10 -x -I 123 -L 8 -D i';

function scenario(seconds: number): string {
  return `${PRELUDE}
ip link set can0 up || fail "ip link set can0 up"
ip link add dev vcan0 type vcan || fail "ip link add vcan0"
ip link set vcan0 up || fail "ip link set vcan0 up"
signal ready
await_host go 120
a0=$(txp can0); t0=$(up)
timeout ${seconds} cangen can0 ${CANGEN}
t1=$(up); a1=$(txp can0)
signal can0 "$t0 $t1 $a0 $a1"
await_host vcan 60
b0=$(txp vcan0); u0=$(up)
timeout ${seconds} cangen vcan0 ${CANGEN}
u1=$(up); b1=$(txp vcan0)
signal vcan0 "$u0 $u1 $b0 $b1"
`;
}

function parseSeconds(argv: readonly string[]): number {
  const i = argv.indexOf('--seconds');
  if (i < 0) return 10;
  const n = Number(argv[i + 1]);
  if (!Number.isInteger(n) || n < 1 || n > 300) throw new Error('--seconds expects 1..300');
  return n;
}

interface Span {
  seconds: number;
  frames: number;
}

function span(text: string): Span {
  const [t0, t1, a0, a1] = text.trim().split(/\s+/).map(Number) as [number, number, number, number];
  return { seconds: t1 - t0, frames: a1 - a0 };
}

async function main(): Promise<number> {
  const seconds = parseSeconds(process.argv.slice(2));
  const kit = findGuestKit();
  if ('missing' in kit) {
    process.stdout.write(`bench:guest skipped: ${kit.missing}\n`);
    return 0;
  }
  const log = (s: string): void => {
    process.stderr.write(`[bench:guest ${new Date().toISOString().slice(11, 19)}] ${s}\n`);
  };
  const sockDir = mkdtempSync(join(tmpdir(), 'vdc-bench-guest-'));
  trackDir(sockDir);
  const work = join(REPO_ROOT, 'bench/results', `guest-${new Date().toISOString().replace(/[:.]/g, '-')}`);
  mkdirSync(work, { recursive: true });

  const can = startCanDaemon({ paths: [join(sockDir, 'can.sock0')] });
  let tapFrames = 0;
  let firstNs = 0n;
  let lastNs = 0n;
  const tap: HubPort = can.hubFor(0).attach(
    {
      onFramesAvailable() {
        while (tap.take() !== undefined) {
          const now = process.hrtime.bigint();
          if (tapFrames++ === 0) firstNs = now;
          lastNs = now;
        }
      },
    },
    { name: 'bench-tap', queueLimit: 1 << 16 },
  );

  const guest = startGuest({
    kit,
    scenario: scenario(seconds),
    canDevices: [{ socketPath: join(sockDir, 'can.sock0') }],
    timeoutMs: 180_000 + 2 * seconds * 1000,
    workDir: work,
  });
  const kill = (): void => guest.kill();
  process.once('SIGINT', kill);
  process.once('SIGTERM', kill);
  try {
    log(`booting the guest (TCG; ${kit.kernelVersion}, QEMU ${kit.qemuVersion}) ...`);
    await guest.waitForFile('ready', 150_000);
    const cpu = (): { qemu: number; daemon: number; at: number } => ({
      qemu: procCpuSeconds(guest.pid ?? -1),
      daemon: procCpuSeconds(process.pid),
      at: performance.now(),
    });
    log(`cangen -g 0 on can0 (virtio-can -> our daemon) for ${seconds} s`);
    const tap0 = tapFrames;
    const c0 = cpu();
    writeFileSync(join(guest.shareDir, 'go'), 'go\n');
    const virtio = span(await guest.waitForFile('can0', seconds * 1000 + 60_000));
    const c1 = cpu();
    await new Promise((r) => setTimeout(r, 300)); // frames still in flight
    const tapDelta = tapFrames - tap0;
    const dev = can.device(0);
    log(`cangen -g 0 on vcan0 (in-guest virtual CAN) for ${seconds} s`);
    const c2 = cpu();
    writeFileSync(join(guest.shareDir, 'vcan'), 'go\n');
    const vcan = span(await guest.waitForFile('vcan0', seconds * 1000 + 60_000));
    const c3 = cpu();
    const r = await guest.done;

    const wall01 = (c1.at - c0.at) / 1000;
    const wall23 = (c3.at - c2.at) / 1000;
    const virtioRate = virtio.frames / virtio.seconds;
    const vcanRate = vcan.frames / vcan.seconds;
    const res = {
      startedAt: new Date().toISOString(),
      seconds,
      cangen: CANGEN,
      kernel: kit.kernelVersion,
      qemu: kit.qemuVersion,
      virtio: {
        guestTxPackets: virtio.frames,
        guestSeconds: virtio.seconds,
        guestFramesPerS: Math.round(virtioRate),
        tapFrames: tapDelta,
        tapFramesPerS: Math.round(tapDelta / Math.max(1e-9, Number(lastNs - firstNs) / 1e9)),
        deviceTxOk: dev?.stats.txOk ?? null,
        deviceTxNotOk: dev?.stats.txNotOk ?? null,
        qemuCpuPercent: Math.round((100 * (c1.qemu - c0.qemu)) / wall01),
        daemonCpuPercent: Math.round((100 * (c1.daemon - c0.daemon)) / wall01),
      },
      vcan: {
        guestTxPackets: vcan.frames,
        guestSeconds: vcan.seconds,
        guestFramesPerS: Math.round(vcanRate),
        qemuCpuPercent: Math.round((100 * (c3.qemu - c2.qemu)) / wall23),
      },
      ratio: Math.round((1000 * virtioRate) / vcanRate) / 1000,
      guestExit: r.exitStatus,
      workDir: work,
    };
    writeJson([join(work, 'results.json'), join(REPO_ROOT, 'bench/results/guest-latest.json')], res);
    process.stdout.write(
      `${table(
        `bench:guest: one TCG guest, \`cangen IF ${CANGEN}\` for ${seconds} s (kernel ${kit.kernelVersion}, QEMU ${kit.qemuVersion})`,
        ['path', 'guest tx frames', 'guest s', 'frames/s', 'on the bus (tap)', 'QEMU CPU', 'daemon CPU'],
        [
          [
            'can0: virtio-can -> vhost-device-can -> bus',
            int(virtio.frames),
            fixed(virtio.seconds, 2),
            int(virtioRate),
            int(tapDelta),
            pct(res.virtio.qemuCpuPercent),
            pct(res.virtio.daemonCpuPercent),
          ],
          [
            'vcan0: in-guest virtual CAN (no device)',
            int(vcan.frames),
            fixed(vcan.seconds, 2),
            int(vcanRate),
            '-',
            pct(res.vcan.qemuCpuPercent),
            '-',
          ],
        ],
        [
          `ratio virtio-can / vcan: ${fixed(res.ratio, 3)}`,
          'guest tx frames = tx_packets of the interface (what `ip -s link` shows); the tap counts what reached the',
          'daemon bus. CPU: % of one core (QEMU: all its threads; daemon: this process, which hosts it).',
          `evidence: ${work} (console.log, share/), results.json; also bench/results/guest-latest.json`,
        ],
      )}\n`,
    );
    if (r.exitStatus !== 0) {
      log(`the guest scenario ended with status ${r.exitStatus}; see ${work}/console.log`);
      return 1;
    }
    return 0;
  } finally {
    guest.kill();
    await guest.done.catch(() => undefined);
    tap.detach();
    can.stop();
    removeDir(sockDir);
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`bench:guest: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exit(1);
  },
);
