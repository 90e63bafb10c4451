// Bus-off injected on the hub: the device sets VIRTIO_CAN_S_CTRL_BUSOFF, stops, and sends a
// config-change notification; the guest's driver reads the status and `ip -details link show`
// reports BUS-OFF. `ip link set can0 down; up` (STOP, START) recovers: START clears the bit and
// traffic flows both ways again. Run with QEMU config_size=2 (the struct's size) and
// config_size=16 (what rust-vmm's README uses; the daemon zero-pads).

import { test } from 'node:test';
import {
  candumpFrames,
  canLinkState,
  type E2eRun,
  guestCandumpOf,
  parseGuestStats,
  skipWithoutKit,
  viaVirtio,
  withRun,
} from './helpers/can-scenarios.js';

const BEFORE = '1A1#0102';
const DURING = '2B2#DEAD';
const AFTER = '5A5#A55A';
// FD with BRS, 12 bytes: arrives as ##4 (no BRS in virtio, FDF printed by the guest's candump)
const TO_GUEST = '6B6##1B66B0102030405060708090A';

async function busOffScenario(run: E2eRun, configSize: number): Promise<void> {
  run.startDaemon(1);
  const tap = run.tap();
  const g = run.startGuest({
    name: 'guest0',
    configSize,
    scenario: `
ip link set can0 up || fail "ip link set can0 up"
ip -details link show can0 > /mnt/link-before.txt
cansend can0 ${BEFORE} || fail "cansend before"
wait_stat tx_packets 1
signal up
await_host busoff
# The config-change interrupt is asynchronous: poll until the driver has seen the status bit.
wait_busoff
signal seen-busoff
await_host during
ip link set can0 down || fail "ip link set can0 down"
ip link set can0 up || fail "ip link set can0 up (after bus-off)"
ip -details -statistics link show can0 > /mnt/link-after.txt
cansend can0 ${AFTER} || fail "cansend after"
wait_stat tx_packets 2
candump -L -n 1 can0 > /tmp/dump.txt &
dump=$!
wait_rcv 1
signal restarted
wait_pid 30 $dump || fail "no frame received after the restart"
cp /tmp/dump.txt /mnt/dump.txt
save_stats stats.txt
`,
  });

  await run.waitFor(g, 'up');
  const dev = run.device(0);
  await tap.waitFor(1);
  run.equal(tap.lines(), [BEFORE], 'frame before bus-off');
  run.equal([dev.configStatus, dev.controllerState], [0, 'started'], 'status before bus-off');

  run.can.hubFor(0).injectBusState('guest0', 'bus-off');
  run.note('bus-off injected');
  run.equal(
    { status: dev.configStatus, state: dev.controllerState, busOff: dev.stats.busOff },
    { status: 1, state: 'stopped', busOff: 1 },
    'device right after the bus-off injection',
  );
  run.tell(g, 'busoff');

  await run.waitFor(g, 'seen-busoff');
  // Stopped by the bus-off: frames on the bus are not delivered to this guest.
  const discarded = dev.port.stats.rxDiscardedClosed;
  tap.transmit(DURING);
  run.equal(dev.port.stats.rxDiscardedClosed - discarded, 1, 'frame discarded while bus-off');
  run.tell(g, 'during');

  await run.waitFor(g, 'restarted');
  run.equal(
    {
      status: dev.configStatus,
      state: dev.controllerState,
      start: dev.stats.ctrlStart,
      stop: dev.stats.ctrlStop,
    },
    { status: 0, state: 'started', start: 2, stop: 1 },
    'device after ip link set down/up: START cleared BUSOFF',
  );
  tap.transmit(TO_GUEST);

  const r = await g.done;
  run.guestFinished(r);
  run.equal(
    canLinkState(r.files('link-before.txt')),
    'ERROR-ACTIVE',
    `state before:\n${r.files('link-before.txt')}`,
  );
  const busOffText = r.files('link-busoff.txt');
  run.equal(canLinkState(busOffText), 'BUS-OFF', `state after the injection:\n${busOffText}`);
  // ip -statistics: "re-started bus-errors arbit-lost error-warn error-pass bus-off" and its values
  const counters =
    /re-started\s+bus-errors\s+arbit-lost\s+error-warn\s+error-pass\s+bus-off\s*\n\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)/.exec(
      busOffText,
    );
  run.ok(counters, `CAN statistics in ip -details -statistics:\n${busOffText}`);
  run.equal(counters![6], '1', `the guest counted one bus-off:\n${busOffText}`);
  run.equal(
    canLinkState(r.files('link-after.txt')),
    'ERROR-ACTIVE',
    `state after down/up:\n${r.files('link-after.txt')}`,
  );
  run.equal(
    tap.lines(),
    [BEFORE, AFTER].map(viaVirtio),
    'frames on the bus: before bus-off and after the restart',
  );
  run.equal(
    candumpFrames(r.files('dump.txt')),
    [guestCandumpOf(TO_GUEST)],
    'frame received after the restart',
  );
  const gs = parseGuestStats(r.files('stats.txt'));
  run.equal([gs.tx_packets, gs.rx_packets], [2, 1], 'guest tx_packets, rx_packets');
  run.equal(dev.stats.txNotOk, 0, 'no TX refused');
}

test(
  'bus-off (config_size=2): guest sees BUS-OFF, down/up recovers, traffic flows again',
  { skip: skipWithoutKit },
  withRun('bus-off-cfg2', (run) => busOffScenario(run, 2)),
);

test(
  'QEMU config_size=16 (rust-vmm README): traffic and bus-off status work',
  { skip: skipWithoutKit },
  withRun('bus-off-cfg16', (run) => busOffScenario(run, 16)),
);
