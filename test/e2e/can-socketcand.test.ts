// A real Linux guest (mainline virtio_can) and python-can (Debian's python3-can, socketcand
// interface, unmodified) exchange frames through the daemon's --socketcand-listen: what python-can
// sends shows in the guest's candump, what the guest's cansend sends python-can receives.

import { test } from 'node:test';
import { type PyFrame, requirePythonCan, startPyPeer } from '../helpers/socketcand.js';
import { candumpFrames, guestCandumpOf, skipWithoutKit, until, withRun } from './helpers/can-scenarios.js';

// What python-can sends (its socketcand interface carries no flags: an FD message goes as FD
// without BRS) and the same frames as cansend/candump text.
const FROM_PY: readonly [PyFrame, string][] = [
  [{ id: 0x123, data: 'deadbeef' }, '123#DEADBEEF'],
  [{ id: 0x1abcdef0, ext: true, data: '0102' }, '1ABCDEF0#0102'],
  [{ id: 0x7ff, data: '0102030405060708' }, '7FF#0102030405060708'],
  [{ id: 0x5, data: '' }, '005#'],
  [{ id: 0x101, fd: true, data: '00112233445566778899aabb' }, '101##000112233445566778899AABB'],
];
// What the guest sends, and what python-can shows for it (identifier and data).
const FROM_GUEST: readonly [string, number, string][] = [
  ['321#CAFE', 0x321, 'cafe'],
  ['12345678#0011223344556677', 0x12345678, '0011223344556677'],
  ['000#', 0x0, ''],
  ['7FF#FF', 0x7ff, 'ff'],
];

test(
  'a real guest and python-can exchange frames through --socketcand-listen',
  { skip: skipWithoutKit },
  withRun('socketcand', async (run, t) => {
    const py = requirePythonCan(t, '4.1');
    if (py === null) return;
    run.startDaemon(1, { socketcand: { listen: { host: '127.0.0.1', port: 0 } } });
    await run.can.socketcand!.ready;
    const port = run.can.socketcand!.address.port;
    const g = run.startGuest({
      name: 'guest0',
      scenario: `
ip link set can0 up || fail "ip link set can0 up"
candump -L -n ${FROM_PY.length} can0 > /tmp/dump.txt &
dump=$!
wait_rcv 1
signal ready
await_host go
${FROM_GUEST.map(([f]) => `cansend can0 ${f} || fail "cansend ${f}"`).join('\n')}
wait_pid 30 $dump || fail "candump did not get ${FROM_PY.length} frames (rc $?)"
cp /tmp/dump.txt /mnt/dump.txt
`,
    });
    await run.waitFor(g, 'ready');
    // Stopped with the run (before the daemon), not after the test.
    const peer = await startPyPeer(
      { after: (fn: () => void) => run.onClose(fn) },
      py,
      '127.0.0.1',
      port,
      'default',
    );
    run.note('python-can connected', { version: peer.ready.version });
    run.equal(
      await peer.request({ op: 'send', frames: FROM_PY.map(([f]) => f) }),
      { sent: FROM_PY.length },
      'sent',
    );
    // The guest's own frames show in its candump too (local echo): let python-can's arrive first.
    await until(
      () => run.device(0).stats.rxDelivered >= FROM_PY.length,
      'python-can frames delivered to the guest',
    );
    run.tell(g, 'go');
    const got = (await peer.request({ op: 'recv', count: FROM_GUEST.length, timeout: 30 }, 40_000))
      .frames as PyFrame[];
    const r = await g.done;
    run.guestFinished(r);
    run.equal(
      candumpFrames(r.files('dump.txt')),
      FROM_PY.map(([, text]) => guestCandumpOf(text)),
      'python-can -> guest candump',
    );
    run.equal(
      got.map((f) => [f.id, f.data]),
      FROM_GUEST.map(([, id, data]) => [id, data]),
      'guest cansend -> python-can',
    );
    const server = run.can.socketcand!;
    run.equal(
      [server.counters.framesIn, server.counters.protocolErrors],
      [FROM_PY.length, 0],
      'server counters',
    );
    run.saveResults({ fromPython: FROM_PY.length, fromGuest: FROM_GUEST.length, guestMs: r.durationMs });
  }),
);
