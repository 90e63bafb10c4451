// `ip link set can0 down` / `up` in a real guest: the driver's STOP and START control requests
// reach the device (counters and controller state checked from the host between the steps), and
// frames put on the bus while the guest's controller is stopped are discarded, never delivered
// after it starts again (VIRTIO 1.4 5.22 controller modes; docs/protocol-notes.md 3).

import { test } from 'node:test';
import { candumpFrames, parseGuestStats, skipWithoutKit, withRun } from './helpers/can-scenarios.js';

const WHILE_UP = '101#A1';
const WHILE_DOWN = ['102#B2', '103#', '1FFFFFFF#C3C3', '104##0D4D4D4D4D4D4D4D4D4D4D4D4'];
const AFTER_UP = '105#E5';

test(
  'link down/up: STOP/START reach the device; frames sent while down are not delivered later',
  { skip: skipWithoutKit },
  withRun('link-down-up', async (run) => {
    run.startDaemon(1);
    const tap = run.tap();
    const g = run.startGuest({
      name: 'guest0',
      scenario: `
ip link set can0 up || fail "ip link set can0 up"
candump -L -n 1 can0 > /tmp/d1.txt &
dump=$!
wait_rcv 1
signal up1
wait_pid 30 $dump || fail "no frame while up"
ip link set can0 down || fail "ip link set can0 down"
ip -details link show can0 > /mnt/link-down.txt
signal down
await_host injected
ip link set can0 up || fail "ip link set can0 up (2)"
ip -details link show can0 > /mnt/link-up.txt
candump -L -n 1 can0 > /tmp/d2.txt &
dump=$!
wait_rcv 1
signal up2
wait_pid 30 $dump || fail "no frame after up"
sleep 0.5
cp /tmp/d1.txt /mnt/d1.txt
cp /tmp/d2.txt /mnt/d2.txt
save_stats stats.txt
`,
    });

    await run.waitFor(g, 'up1');
    const dev = run.device(0);
    const ctl = () => ({
      state: dev.controllerState,
      start: dev.stats.ctrlStart,
      stop: dev.stats.ctrlStop,
      notOk: dev.stats.ctrlNotOk,
    });
    run.equal(ctl(), { state: 'started', start: 1, stop: 0, notOk: 0 }, 'after ip link set up');
    tap.transmit(WHILE_UP);

    await run.waitFor(g, 'down');
    run.equal(ctl(), { state: 'stopped', start: 1, stop: 1, notOk: 0 }, 'after ip link set down');
    run.equal(dev.stats.rxDelivered, 1, 'the frame sent while up was delivered');
    const discardedBefore = dev.port.stats.rxDiscardedClosed;
    for (const f of WHILE_DOWN) tap.transmit(f);
    run.equal(
      dev.port.stats.rxDiscardedClosed - discardedBefore,
      WHILE_DOWN.length,
      'frames discarded while stopped',
    );
    run.equal(dev.port.queued, 0, 'nothing queued for the stopped guest');
    run.tell(g, 'injected');

    await run.waitFor(g, 'up2');
    run.equal(ctl(), { state: 'started', start: 2, stop: 1, notOk: 0 }, 'after the second ip link set up');
    tap.transmit(AFTER_UP);

    const r = await g.done;
    run.guestFinished(r);
    run.equal(candumpFrames(r.files('d1.txt')), [WHILE_UP], 'received while up');
    run.equal(
      candumpFrames(r.files('d2.txt')),
      [AFTER_UP],
      'received after the second up (nothing stale first)',
    );
    const gs = parseGuestStats(r.files('stats.txt'));
    run.equal([gs.rx_packets, gs.rx_dropped], [2, 0], 'guest rx_packets: only the two frames sent while up');
    run.equal(dev.stats.rxDelivered, 2, 'device rxDelivered');
    run.equal(tap.frames.length, 0, 'the guest sent nothing');
    run.ok(/state DOWN\b/.test(r.files('link-down.txt')), `link down:\n${r.files('link-down.txt')}`);
    run.ok(/state UP\b/.test(r.files('link-up.txt')), `link up:\n${r.files('link-up.txt')}`);
  }),
);
