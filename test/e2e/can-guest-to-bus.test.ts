// Guest -> bus: a real Linux guest (mainline virtio_can) sends frames with cansend; a tap port on
// the daemon's virtual bus must see exactly those frames, in order. VIRTIO 1.4 has no BRS/ESI bits,
// so an FD frame sent with BRS (`##1`) arrives without it (`##0`).

import { test } from 'node:test';
import {
  canLinkState,
  parseGuestStats,
  skipWithoutKit,
  viaVirtio,
  withRun,
} from './helpers/can-scenarios.js';

// Classic 0..8 bytes, extended, FD with and without BRS (12, 16, 64 bytes), RTR with DLC 0 and 4.
const SENT: readonly string[] = [
  '123#',
  '124#11',
  '125#1122',
  '126#112233',
  '127#11223344',
  '128#1122334455',
  '129#112233445566',
  '12A#11223344556677',
  '12B#1122334455667788',
  '000#00',
  '7FF#FF',
  '12345678#DEADBEEF',
  '1FFFFFFF#0102030405060708',
  '00000000#',
  '456##1112233445566778899AABBCC', // FD, BRS, 12 bytes
  '457##000112233445566778899AABBCCDDEEFF', // FD, no BRS, 16 bytes
  `458##1${'A5'.repeat(64)}`, // FD, BRS, 64 bytes
  `1ABCDEF0##0${Array.from({ length: 64 }, (_, i) => i.toString(16).padStart(2, '0').toUpperCase()).join('')}`, // FD ext, 64
  '459##0', // FD, zero length
  '7FF#R', // RTR, DLC 0
  '1AB#R4', // RTR, DLC 4
  '12345678#R8', // RTR, extended, DLC 8
];

test(
  'guest -> bus: cansend frames reach the bus exactly (classic, extended, FD, RTR)',
  { skip: skipWithoutKit },
  withRun('guest-to-bus', async (run) => {
    run.startDaemon(1);
    const tap = run.tap();
    const g = run.startGuest({
      name: 'guest0',
      scenario: `
ip link set can0 up || fail "ip link set can0 up"
ip -details link show can0 > /mnt/link.txt
signal up
${SENT.map((f) => `cansend can0 ${f} || fail "cansend ${f}"`).join('\n')}
wait_stat tx_packets ${SENT.length}
save_stats stats.txt
`,
    });
    await run.waitFor(g, 'up');
    const dev = run.device(0);
    const r = await g.done;
    run.guestFinished(r);

    const expected = SENT.map(viaVirtio);
    run.equal(tap.lines(), expected, 'frames on the bus, in order');
    run.equal(
      tap.frames.map((f) => f.origin),
      SENT.map(() => dev.port.id),
      'every frame came from the guest port',
    );
    run.equal(dev.port.name, 'guest0', 'hub port name');
    run.equal([dev.stats.txOk, dev.stats.txNotOk], [SENT.length, 0], 'device txOk/txNotOk');
    run.equal(dev.stats.ctrlStart, 1, 'one START');
    const gs = parseGuestStats(r.files('stats.txt'));
    run.equal(
      [gs.tx_packets, gs.tx_dropped, gs.tx_errors],
      [SENT.length, 0, 0],
      'guest tx_packets/dropped/errors',
    );
    const link = r.files('link.txt');
    run.ok(/\bmtu 72\b/.test(link), `the virtio_can netdev is CAN FD capable (mtu 72):\n${link}`);
    run.equal(canLinkState(link), 'ERROR-ACTIVE', `CAN state in ip -details:\n${link}`);
    run.saveResults({ frames: SENT.length, guestMs: r.durationMs });
  }),
);
