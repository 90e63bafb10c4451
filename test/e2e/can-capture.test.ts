// Capture with a real guest: a Linux guest (mainline virtio_can) sends classic, extended, RTR and
// FD frames with cansend while the daemon records the bus with --capture (pcapng and BLF); tshark
// decodes the pcapng while the daemon still runs (the guest waits) and again after it stopped.
// VIRTIO 1.4 has no BRS/ESI bits, so FD frames arrive without them.

import { join } from 'node:path';
import { test } from 'node:test';
import { parseCandump } from '../../src/core/bus/can-frame.js';
import { missingTool, pythonCanRead, type TsharkPacket, tsharkRead } from '../helpers/capture-tools.js';
import { skipWithoutKit, withRun } from './helpers/can-scenarios.js';

const SENT: readonly string[] = [
  '123#',
  '124#11',
  '12B#1122334455667788',
  '7FF#FF',
  '12345678#DEADBEEF',
  '1FFFFFFF#0102030405060708',
  '456##1112233445566778899AABBCC', // FD, 12 bytes (BRS requested, not carried by virtio)
  `458##1${'A5'.repeat(64)}`, // FD, 64 bytes
  `1ABCDEF0##0${Array.from({ length: 64 }, (_, i) => i.toString(16).padStart(2, '0').toUpperCase()).join('')}`,
  '459##0', // FD, zero length
  '7FF#R', // RTR, DLC 0
  '1AB#R4', // RTR, DLC 4
  '12345678#R8', // RTR, extended, DLC 8
];

/** What tshark shows for a frame (FD frames have no BRS after virtio). */
function expectedPacket(text: string): unknown[] {
  const f = parseCandump(text);
  return [
    f.id,
    f.extended,
    f.rtr,
    f.fd,
    f.len,
    f.rtr ? '' : Buffer.from(f.data).toString('hex'),
    'guest0',
    2,
  ];
}

function shown(p: TsharkPacket): unknown[] {
  return [p.id, p.xtd, p.rtr, p.fd, p.len, p.rtr ? '' : p.data, p.comment, p.direction];
}

const skip = skipWithoutKit ?? missingTool('tshark') ?? missingTool('python-can');

test(
  'capture: a real guest’s classic, extended, RTR and FD frames are in the pcapng while the daemon runs and after it stops',
  { skip },
  withRun('capture', async (run) => {
    const pcapng = join(run.workDir, 'bus.pcapng');
    const blf = join(run.workDir, 'bus.blf');
    run.startDaemon(1, {
      ports: [
        { kind: 'capture', bus: 'default', value: pcapng },
        { kind: 'capture', bus: 'default', value: blf },
      ],
    });
    const g = run.startGuest({
      name: 'guest0',
      scenario: `
ip link set can0 up || fail "ip link set can0 up"
${SENT.map((f) => `cansend can0 ${f} || fail "cansend ${f}"`).join('\n')}
wait_stat tx_packets ${SENT.length}
signal sent
await_host checked 120
`,
    });
    await run.waitFor(g, 'sent');
    const want = SENT.map(expectedPacket);
    // While the daemon runs (the guest waits): everything is in the file within a second.
    await run.until(() => {
      try {
        return tsharkRead(pcapng).length >= SENT.length;
      } catch {
        return false;
      }
    }, `${SENT.length} packets in ${pcapng}`);
    const live = tsharkRead(pcapng);
    run.equal(live.map(shown), want, 'tshark while the daemon runs');
    run.ok(
      live.every((p) => p.iface === 'default'),
      'interface named after the bus',
    );
    const wall = Number(live[0]!.epoch) * 1000;
    run.ok(Math.abs(wall - Date.now()) < 120_000, `wall-clock time stamps (${live[0]!.epoch})`);
    run.tell(g, 'checked');
    run.guestFinished(await g.done);
    run.can.stop();
    run.equal(tsharkRead(pcapng).map(shown), want, 'tshark after the daemon stopped');
    const m = pythonCanRead(blf, 'blf');
    run.equal(
      m.map((x) => [x.id, x.ext, x.rtr, x.fd, x.dlc, x.rtr ? '' : x.data, x.rx]),
      SENT.map((s) => {
        const f = parseCandump(s);
        return [
          f.id,
          f.extended,
          f.rtr,
          f.fd,
          f.len,
          f.rtr ? '' : Buffer.from(f.data).toString('hex'),
          false,
        ];
      }),
      'python-can reads the BLF capture',
    );
    run.saveResults({ frames: SENT.length, packetsWhileRunning: live.length });
  }),
);
