// Bus -> guest: frames a tap port puts on the daemon's virtual bus reach a real Linux guest's
// `candump -L` identically. VIRTIO 1.4 carries neither BRS nor ESI, and the guest's can-utils
// print CANFD_FDF in the FD flags nibble, so FD frames show as `##4`.

import { test } from 'node:test';
import {
  candumpFrames,
  guestCandumpOf,
  parseGuestStats,
  skipWithoutKit,
  withRun,
} from './helpers/can-scenarios.js';

const INJECTED: readonly string[] = [
  '123#DEADBEEF',
  '321#', // zero length
  '001#01',
  '002#0102',
  '003#010203',
  '004#01020304',
  '005#0102030405',
  '006#010203040506',
  '007#01020304050607',
  '7FF#0102030405060708',
  '1FFFFFFF#0102030405060708', // extended
  '00000001#', // extended, zero length
  '456##1112233445566778899AABBCC', // FD, BRS, 12 bytes
  '457##000112233445566778899AABBCCDDEEFF', // FD, 16 bytes
  `12345678##2${'5A'.repeat(64)}`, // FD, extended, ESI, 64 bytes
  `458##3${'C3'.repeat(64)}`, // FD, BRS+ESI, 64 bytes
  '459##0', // FD, zero length
  '7FF#R', // RTR, DLC 0
  '1AB#R4', // RTR, DLC 4
  '12345678#R8', // RTR, extended, DLC 8
];

test(
  'bus -> guest: injected frames appear in the guest candump identically',
  { skip: skipWithoutKit },
  withRun('bus-to-guest', async (run) => {
    run.startDaemon(1);
    const tap = run.tap();
    const g = run.startGuest({
      name: 'guest0',
      scenario: `
ip link set can0 up || fail "ip link set can0 up"
candump -L -n ${INJECTED.length} can0 > /tmp/dump.txt &
dump=$!
wait_rcv 1
signal ready
wait_pid 30 $dump || fail "candump did not get ${INJECTED.length} frames (rc $?)"
cp /tmp/dump.txt /mnt/dump.txt
sleep 0.5
save_stats stats.txt
`,
    });
    await run.waitFor(g, 'ready');
    const dev = run.device(0);
    for (const f of INJECTED) tap.transmit(f);
    run.note('frames injected', { count: INJECTED.length });
    const r = await g.done;
    run.guestFinished(r);

    run.equal(
      candumpFrames(r.files('dump.txt')),
      INJECTED.map(guestCandumpOf),
      'frames in the guest candump',
    );
    run.equal(
      [dev.stats.rxDelivered, dev.port.stats.rxDroppedOverflow],
      [INJECTED.length, 0],
      'device rxDelivered, drops',
    );
    const gs = parseGuestStats(r.files('stats.txt'));
    run.equal(
      [gs.rx_packets, gs.rx_dropped, gs.rx_errors],
      [INJECTED.length, 0, 0],
      'guest rx_packets/dropped/errors',
    );
    run.equal(tap.frames.length, 0, 'the guest sent nothing back (no echo of its own frames)');
    run.saveResults({ frames: INJECTED.length, guestMs: r.durationMs });
  }),
);
