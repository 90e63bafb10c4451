// The console across a guest's life, on one back-end socket:
// 1. before any client is connected the guest writes 100 KiB to hvc0: the writes complete (the
//    device consumes output whether or not anyone reads it; Linux busy-waits for each buffer), the
//    console answers a client connected afterwards (with the CLI: the newest output is replayed to
//    it from the scrollback), and again after that client disconnects and reconnects;
// 2. the guest reboots (`reboot -f` typed over the console; QEMU resets instead of exiting): the
//    new kernel probes the device again and the console works on the same connection;
// 3. QEMU is killed (SIGKILL) and a new QEMU connects to the same socket: the console works again.
// The host-side client stays connected throughout (endpoints outlive vhost-user connections).
// Three kernel boots in all.

import { test } from 'node:test';
import { skipWithoutKit, withRun } from './helpers/can-scenarios.js';
import {
  CONSOLE_PRELUDE,
  type ConsoleClient,
  consoleBackendKind,
  shellRun,
  startConsoleBackend,
} from './helpers/console-scenarios.js';

const FLOOD_BYTES = 100 * 1024;
const backendKind = consoleBackendKind();

/** Shell checks run after every (re)boot: arithmetic, and the boot the guest is in. */
async function checkShell(con: ConsoleClient, what: string): Promise<string> {
  const out = await shellRun(con, 'echo $((6*7)); cat /mnt/boot-id');
  const [answer, bootId] = out.split('\n');
  if (answer !== '42') throw new Error(`${what}: echo $((6*7)) printed ${JSON.stringify(out)}`);
  return bootId ?? '';
}

test(
  'console: output before any client, guest reboot, QEMU killed and restarted',
  { skip: skipWithoutKit ?? backendKind.skip, timeout: 240_000 },
  withRun('console-lifecycle', async (run) => {
    const backend = await startConsoleBackend(run, { guests: 1 });
    const figures: Record<string, unknown> = {};
    const t0 = Date.now();

    // The scenario runs once per boot; /mnt/boots counts them (a guest's share outlives its reboots;
    // every QEMU gets a share of its own).
    const scenario = (name: string): string => `${CONSOLE_PRELUDE}
boot=$(( $(cat /mnt/boots 2>/dev/null || echo 0) + 1 ))
echo $boot > /mnt/boots
echo "${name}-$boot" > /mnt/boot-id
if [ $boot = 1 ] && [ "${name}" = first ]; then
  wait_dev /dev/hvc0
  read _up _ < /proc/uptime
  head -c ${FLOOD_BYTES} /dev/zero | tr '\\0' x > /dev/hvc0 || fail "writing to /dev/hvc0"
  echo flood-end-marker > /dev/hvc0
  read _up2 _ < /proc/uptime
  signal flood-done "$_up $_up2"
fi
console_shell shell-up-$boot
wait $shell_pid
signal shell-exited "$?"
`;

    // ---- 1. 100 KiB of output with nobody connected -----------------------------------------
    const g1 = run.startGuest({
      name: 'guest-1',
      consoles: [{ socketPath: backend.socketPath(0) }],
      extraQemuArgs: ['-action', 'reboot=reset'], // overrides -no-reboot: a guest reboot resets
      scenario: scenario('first'),
    });
    const flood = (await run.waitFor(g1, 'flood-done', 90_000)).trim().split(' ').map(Number);
    figures.floodGuestSeconds = Math.round((flood[1]! - flood[0]!) * 100) / 100;
    if (backend.caps.stats) {
      const unread = backend.unreadOutput(0)[0]!;
      const tx = backend.deviceStats(0)!.ports[0]!.txBytes;
      figures.unreadBytes = unread;
      run.ok(tx >= FLOOD_BYTES, `the device consumed the guest's output (${tx} bytes)`);
      run.ok(unread >= FLOOD_BYTES, `output with no client went unread (${unread} bytes), not held`);
    }
    await run.waitFor(g1, 'shell-up-1');
    figures.firstBootMs = Date.now() - t0;
    let con = await backend.connect(0, 0);
    if (backend.kind === 'cli') {
      // The scrollback (64 KiB by default) replays the newest output to the late client: the end
      // of the flood and the line after it, not its beginning.
      await con.waitFor(/flood-end-marker/, 10_000);
      const at = con.text().indexOf('flood-end-marker');
      run.ok(at > 0 && at <= 64 * 1024, `the newest output was replayed (marker at byte ${at})`);
      run.ok(/^x+$/.test(con.text().slice(0, at)), 'what came before it is the tail of the flood');
    }
    run.equal(await checkShell(con, 'after the flood'), 'first-1', 'boot id after the flood');
    // A client that leaves and comes back gets the same console.
    await con.close();
    con = await backend.connect(0, 0);
    run.equal(
      await checkShell(con, 'after a client reconnect'),
      'first-1',
      'boot id after a client reconnect',
    );
    if (!backend.caps.stats) {
      // No counters on this back-end: the flood must at least not have reached the new client as
      // anything but (optional) scrollback, and the shell answered above.
      run.note('flood bytes seen by the late client', { bytes: con.received });
    }

    // ---- 2. reboot -f typed over the console --------------------------------------------------
    const connectionsBefore = backend.frontEndConnections(0);
    const tReboot = Date.now();
    con.write('reboot -f\n');
    await run.waitFor(g1, 'shell-up-2', 90_000);
    figures.rebootToShellMs = Date.now() - tReboot;
    run.equal(backend.frontEndConnections(0), connectionsBefore, 'a reboot keeps the vhost-user connection');
    run.ok(!con.closed, 'the client stayed connected through the reboot');
    run.equal(await checkShell(con, 'after the reboot'), 'first-2', 'boot id after the reboot');
    if (backend.caps.stats) {
      const s = backend.deviceStats(0)!;
      run.equal(
        [s.badChains, s.controlIgnored, s.controlDropped],
        [0, 0, 0],
        'device counters after the reboot',
      );
    }

    // ---- 3. QEMU killed, a new one on the same socket ----------------------------------------
    process.kill(g1.pid!, 'SIGKILL');
    const r1 = await g1.done;
    run.equal(r1.qemuSignal, 'SIGKILL', 'the first QEMU was killed');
    await run.until(() => !backend.frontEndConnected(0), 'the back-end to see the front-end go', 20_000);
    const tRestart = Date.now();
    const g2 = run.startGuest({
      name: 'guest-2',
      consoles: [{ socketPath: backend.socketPath(0) }],
      scenario: scenario('second'),
    });
    await run.waitFor(g2, 'shell-up-1', 90_000);
    figures.restartToShellMs = Date.now() - tRestart;
    run.equal(backend.frontEndConnections(0), connectionsBefore + 1, 'the new QEMU is a new connection');
    run.ok(!con.closed, 'the client stayed connected through the QEMU restart');
    run.equal(await checkShell(con, 'after the QEMU restart'), 'second-1', 'boot id after the QEMU restart');
    const stats = backend.caps.stats ? backend.deviceStats(0) : null;

    con.write('exit\n');
    const r2 = await g2.done;
    run.guestFinished(r2);
    run.equal(r2.files('shell-exited').trim(), '0', "the shell's exit status");
    if (stats !== null) {
      run.equal([stats.badChains, stats.controlIgnored, stats.controlDropped], [0, 0, 0], 'device counters');
    }
    figures.totalMs = Date.now() - t0;
    run.saveResults({ ...figures, device: stats });
    run.note('lifecycle figures', { figures: JSON.stringify(figures) });
  }),
);
