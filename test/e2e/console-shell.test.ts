// A real Linux guest with a VirtIO console (device 3, MULTIPORT, one named port) served by our
// console device: a shell on /dev/hvc0 driven from the host, the terminal size following
// resize(), and a named port found by name under /sys/class/virtio-ports and used in both
// directions, plus a CAN device in the same guest. One boot for all of it (TCG boots are slow).

import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { skipWithoutKit, sleep, viaVirtio, withRun } from './helpers/can-scenarios.js';
import {
  CONSOLE_PRELUDE,
  consoleBackendKind,
  shellRun,
  startConsoleBackend,
} from './helpers/console-scenarios.js';

const PORT_NAME = 'org.test.port0';
/**
 * Bulk transfer size each way on the named port. Host to guest it exceeds what one input() call
 * can place (the guest's posted RX buffers, 64 x 4 KiB with QEMU's default queue size, plus the
 * device's 64 KiB input buffer), so flow control (refuse, inputSpace, resend) is exercised.
 */
const BULK = 1024 * 1024;

function md5(b: Uint8Array): string {
  return createHash('md5').update(b).digest('hex');
}
const backendKind = consoleBackendKind();

test(
  'console: shell on hvc0, resize, named port in both directions',
  { skip: skipWithoutKit ?? backendKind.skip, timeout: 180_000 },
  withRun('console-shell', async (run, t) => {
    const backend = await startConsoleBackend(run, { guests: 1, portNames: [PORT_NAME] });
    // The guest has a CAN device too (before the console on the PCI bus): both served at once.
    run.startDaemon(1);
    const tap = run.tap();
    const started = Date.now();
    const g = run.startGuest({
      name: 'guest',
      sockets: [0],
      consoles: [{ socketPath: backend.socketPath(0), namedPorts: 1 }],
      scenario: `${CONSOLE_PRELUDE}
console_shell shell-up
dev=$(port_dev ${PORT_NAME}) || fail "no port named ${PORT_NAME} under /sys/class/virtio-ports"
signal port-found "$dev"
# The host connects its side first: with the host side closed, Linux returns EOF to readers.
await_host port-connected 120
# A port can be open only once (EBUSY): one read-write descriptor for all that follows.
exec 3<>"$dev" || fail "cannot open $dev"
echo "hello from the guest on ${PORT_NAME}" >&3 || fail "write to $dev"
signal port-written
timeout 30 head -n 1 <&3 > /mnt/from-host.txt || fail "no line from the host on $dev"
signal port-read
timeout 60 head -c ${BULK} <&3 > /tmp/bulk-in || fail "reading the bulk data from $dev"
signal bulk-in "$(wc -c < /tmp/bulk-in) $(md5sum < /tmp/bulk-in | cut -d' ' -f1)"
head -c ${BULK} /dev/urandom > /tmp/bulk-out
signal bulk-out-md5 "$(md5sum < /tmp/bulk-out | cut -d' ' -f1)"
cat /tmp/bulk-out >&3 || fail "writing the bulk data to $dev"
# The host closes its side: a blocked reader gets end-of-file.
cat <&3 > /tmp/rest &
reader=$!
sleep 0.5
signal reader-started
wait_pid 30 $reader || fail "the reader did not end when the host side closed"
exec 3>&-
signal port-eof "$(wc -c < /tmp/rest)"
wait $shell_pid
signal shell-exited "$?"
`,
    });

    const con = await backend.connect(0, 0);
    await run.waitFor(g, 'shell-up', 90_000);
    const bootMs = Date.now() - started;
    const bulkFigures: Record<string, number> = {};

    await t.test('a shell on hvc0 runs commands typed by the host', async () => {
      run.equal(await shellRun(con, 'echo $((6*7))'), '42', 'echo $((6*7))');
      run.equal(await shellRun(con, 'tty'), '/dev/hvc0', "the shell's terminal");
      // A line longer than one typical read, arriving whole.
      const long = 'x'.repeat(300);
      run.equal(await shellRun(con, `echo ${long} | wc -c`), '301', 'a 300-character line');
    });

    await t.test('the same guest uses its CAN device, commanded over the console', async () => {
      run.equal(
        await shellRun(con, 'ip link set can0 up && cansend can0 123#C0DE && echo sent'),
        'sent',
        'cansend typed over the console',
      );
      await tap.waitFor(1);
      run.equal(tap.lines(), [viaVirtio('123#C0DE')], 'the frame on the bus');
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
      'the named port carries data both ways (bulk too) and the host closing it gives the guest EOF',
      { skip: !backend.caps.namedPorts && 'this back-end cannot reach named ports' },
      async () => {
        const port = await backend.connect(0, 1);
        run.tell(g, 'port-connected');
        const hello = `hello from the guest on ${PORT_NAME}\n`;
        await port.waitFor(/hello from the guest on org\.test\.port0\n/, 30_000);
        await run.waitFor(g, 'port-written');
        port.write('hello from the host\n');
        await run.waitFor(g, 'port-read', 30_000);
        run.equal(
          readFileSync(join(g.shareDir, 'from-host.txt'), 'utf8'),
          'hello from the host\n',
          'line read by the guest',
        );

        // More than the device's per-port input buffer: flow control must hold, not drop.
        const bulkIn = randomBytes(BULK);
        const tIn = Date.now();
        port.write(bulkIn);
        const [count, sum] = (await run.waitFor(g, 'bulk-in', 60_000)).trim().split(' ');
        bulkFigures.hostToGuestMs = Date.now() - tIn;
        run.equal([Number(count), sum], [BULK, md5(bulkIn)], 'bulk host -> guest: byte count and MD5');

        const sumOut = (await run.waitFor(g, 'bulk-out-md5', 30_000)).trim();
        const tOut = Date.now();
        await run.until(() => port.received >= hello.length + BULK, `${BULK} bytes from the guest`, 60_000);
        bulkFigures.guestToHostMs = Date.now() - tOut;
        const got = port.bytes();
        run.equal(got.byteLength, hello.length + BULK, 'bytes received on the port');
        run.equal(md5(got.subarray(hello.length)), sumOut, 'bulk guest -> host: MD5');

        await run.waitFor(g, 'reader-started', 30_000);
        await port.close();
        run.equal(
          (await run.waitFor(g, 'port-eof', 40_000)).trim(),
          '0',
          'bytes the last reader got before EOF',
        );
      },
    );

    const stats = backend.caps.stats ? backend.deviceStats(0) : null;
    // Done: the shell exits, the scenario ends and the guest powers off.
    con.write('exit\n');
    const r = await g.done;
    run.guestFinished(r);
    run.equal(r.files('shell-exited').trim(), '0', "the shell's exit status");
    run.saveResults({
      bootToShellMs: bootMs,
      totalMs: Date.now() - started,
      bulk: bulkFigures,
      device: stats,
    });
    if (stats !== null) {
      run.equal(
        [stats.badChains, stats.controlIgnored, stats.controlDropped],
        [0, 0, 0],
        'no malformed chains, ignored or dropped control messages',
      );
      if (backend.caps.namedPorts) {
        const p1 = stats.ports[1]!;
        run.equal(p1.rxBytes, 'hello from the host\n'.length + BULK, 'bytes delivered on port 1');
        run.equal(
          p1.txBytes,
          `hello from the guest on ${PORT_NAME}\n`.length + BULK,
          'bytes written on port 1',
        );
        // The bulk write did not fit at once: refused, held by the client and resent.
        run.ok(p1.inputRefused > 0, `input beyond the port's buffer was refused (${p1.inputRefused} bytes)`);
      }
    }
  }),
);
