// A real Linux guest with a VirtIO console (device 3, MULTIPORT, one named port) served by our
// console device: a shell on /dev/hvc0 driven from the host, the terminal size following
// resize(), and a named port found by name under /sys/class/virtio-ports and used in both
// directions. One boot for all of it (TCG boots are slow).

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { skipWithoutKit, sleep, withRun } from './helpers/can-scenarios.js';
import {
  CONSOLE_PRELUDE,
  consoleBackendKind,
  shellRun,
  startConsoleBackend,
} from './helpers/console-scenarios.js';

const PORT_NAME = 'org.test.port0';
const backendKind = consoleBackendKind();

test(
  'console: shell on hvc0, resize, named port in both directions',
  { skip: skipWithoutKit ?? backendKind.skip, timeout: 180_000 },
  withRun('console-shell', async (run, t) => {
    const backend = await startConsoleBackend(run, { guests: 1, portNames: [PORT_NAME] });
    const started = Date.now();
    const g = run.startGuest({
      name: 'guest',
      consoles: [{ socketPath: backend.socketPath(0), namedPorts: 1 }],
      scenario: `${CONSOLE_PRELUDE}
console_shell shell-up
dev=$(port_dev ${PORT_NAME}) || fail "no port named ${PORT_NAME} under /sys/class/virtio-ports"
signal port-found "$dev"
# The host connects its side first: with the host side closed, Linux returns EOF to readers.
await_host port-connected 120
# A port can be open only once (EBUSY): one read-write descriptor shared by reader and writer.
exec 3<>"$dev" || fail "cannot open $dev"
cat <&3 > /tmp/from-host.txt &
reader=$!
echo "hello from the guest on ${PORT_NAME}" >&3 || fail "write to $dev"
signal port-written
_n=0
until grep -q "hello from the host" /tmp/from-host.txt; do
  _n=$((_n + 1)); [ $_n -le 400 ] || fail "nothing from the host on $dev"
  sleep 0.05
done
cp /tmp/from-host.txt /mnt/from-host.txt
signal port-read
# The host closes its side: the guest's reader gets end-of-file.
wait_pid 30 $reader || fail "the reader did not end when the host side closed"
exec 3>&-
signal port-eof
wait $shell_pid
signal shell-exited "$?"
`,
    });

    const con = await backend.connect(0, 0);
    await run.waitFor(g, 'shell-up', 90_000);
    const bootMs = Date.now() - started;

    await t.test('a shell on hvc0 runs commands typed by the host', async () => {
      run.equal(await shellRun(con, 'echo $((6*7))'), '42', 'echo $((6*7))');
      run.equal(await shellRun(con, 'tty'), '/dev/hvc0', "the shell's terminal");
      // A longer line: several RX buffers' worth would not be needed, but the line must arrive whole.
      const long = 'x'.repeat(300);
      run.equal(await shellRun(con, `echo ${long} | wc -c`), '301', 'a 300-character line');
    });

    await t.test(
      'stty size follows resize()',
      { skip: !backend.caps.resize && 'no resize channel on the CLI back-end' },
      async () => {
        const initial = await shellRun(con, 'stty size');
        // The device answers the console port's PORT_READY with RESIZE (its default 80 x 24).
        run.equal(initial, '24 80', 'stty size before any resize()');
        // cols and rows differ so that a swapped RESIZE payload shows.
        for (const [cols, rows] of [
          [132, 43],
          [90, 30],
        ] as const) {
          backend.resize(0, cols, rows);
          // RESIZE is asynchronous (a control message, then the tty's resize work): poll.
          let size = '';
          const deadline = Date.now() + 10_000;
          do {
            size = await shellRun(con, 'stty size');
            if (size === `${rows} ${cols}`) break;
            await sleep(200);
          } while (Date.now() < deadline);
          run.equal(size, `${rows} ${cols}`, `stty size after resize(${cols}, ${rows}) (rows first)`);
        }
      },
    );

    await t.test('the named port is visible by name in the guest', async () => {
      const names = await shellRun(con, 'cat /sys/class/virtio-ports/*/name');
      run.ok(
        names.split('\n').includes(PORT_NAME),
        `${PORT_NAME} in /sys/class/virtio-ports/*/name: ${names}`,
      );
      const dev = (await run.waitFor(g, 'port-found')).trim();
      run.ok(/^\/dev\/vport\d+p1$/.test(dev), `port 1 device node: ${dev}`);
    });

    await t.test(
      'the named port carries data both ways and the host closing it gives the guest EOF',
      { skip: !backend.caps.namedPorts && 'the CLI back-end exposes only the console port over TCP' },
      async () => {
        const port = await backend.connect(0, 1);
        run.tell(g, 'port-connected');
        await port.waitFor(/hello from the guest on org\.test\.port0\n/, 30_000);
        await run.waitFor(g, 'port-written');
        port.write('hello from the host\n');
        await run.waitFor(g, 'port-read', 30_000);
        run.equal(
          readFileSync(join(g.shareDir, 'from-host.txt'), 'utf8'),
          'hello from the host\n',
          'what the guest read',
        );
        await port.close();
        await run.waitFor(g, 'port-eof', 40_000);
      },
    );

    const stats = backend.caps.stats ? backend.deviceStats(0) : null;
    // Done: the shell exits, the scenario ends and the guest powers off.
    con.write('exit\n');
    const r = await g.done;
    run.guestFinished(r);
    run.equal(r.files('shell-exited').trim(), '0', "the shell's exit status");
    run.saveResults({ bootToShellMs: bootMs, totalMs: Date.now() - started, device: stats });
    if (stats !== null) {
      run.equal(
        [stats.badChains, stats.controlIgnored, stats.controlDropped],
        [0, 0, 0],
        'no malformed chains, ignored or dropped control messages',
      );
      if (backend.caps.namedPorts) {
        run.equal(stats.ports[1]!.rxBytes, 'hello from the host\n'.length, 'bytes delivered on port 1');
        run.equal(
          stats.ports[1]!.txBytes,
          `hello from the guest on ${PORT_NAME}\n`.length,
          'bytes written on port 1',
        );
      }
    }
  }),
);
