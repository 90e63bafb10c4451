/** Asynchronous transmit confirmation (host interfaces, LATE_TX_ACK) on the hub. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { makeCanFrame } from '../../src/core/bus/can-frame.js';
import { CanHub, type HubPort } from '../../src/core/bus/hub.js';

function setup(opts: { hostLimit?: number } = {}) {
  const hub = new CanHub({ name: 't' });
  const done: [number, boolean][] = [];
  const guest = hub.attach(
    { onFramesAvailable() {}, onTxComplete: (tok, ok) => done.push([tok, ok]) },
    { name: 'g' },
  );
  const other = hub.attach({ onFramesAvailable() {} }, { name: 'o' });
  const host: HubPort = hub.attach(
    { onFramesAvailable() {} },
    {
      name: 'host',
      confirmsTransmit: true,
      queueLimit: opts.hostLimit,
    },
  );
  return { hub, guest, other, host, done };
}

const f = (id: number) => makeCanFrame({ id, data: [id & 0xff] });

test('with a confirming port, a transmit with a token is pending until confirmed', () => {
  const { guest, host, other, done } = setup();
  assert.equal(guest.transmit(f(1), 7), 'pending');
  assert.equal(other.queued, 1, 'other ports get the frame at once');
  assert.deepEqual(done, []);
  const taken = host.take()!;
  host.confirm(taken, true);
  assert.deepEqual(done, [[7, true]]);
  host.confirm(taken, true);
  assert.deepEqual(done, [[7, true]], 'a second report is ignored');
});

test('a transmit without a token is sent at once; a failed confirmation is reported', () => {
  const { guest, host, done } = setup();
  assert.equal(guest.transmit(f(1)), 'sent');
  host.take();
  assert.equal(guest.transmit(f(2), 3), 'pending');
  host.confirm(host.take()!, false);
  assert.deepEqual(done, [[3, false]]);
});

test('a full confirming port fails the transmit at once; detaching fails what it still holds', () => {
  const { guest, host, done } = setup({ hostLimit: 1 });
  assert.equal(guest.transmit(f(1), 1), 'pending');
  assert.equal(guest.transmit(f(2), 2), 'pending');
  assert.deepEqual(done, [[2, false]], 'overflow at the host port: not transmitted');
  host.detach();
  assert.deepEqual(done, [
    [2, false],
    [1, false],
  ]);
  assert.equal(guest.transmit(f(3), 3), 'sent', 'no confirming port any more');
});

test('a confirmation from inside onFramesAvailable completes the same transmit', () => {
  const hub = new CanHub({ name: 't' });
  const done: [number, boolean][] = [];
  const guest = hub.attach(
    { onFramesAvailable() {}, onTxComplete: (t, ok) => done.push([t, ok]) },
    { name: 'g' },
  );
  const host: HubPort = hub.attach(
    {
      onFramesAvailable() {
        for (let x = host.take(); x; x = host.take()) host.confirm(x, true);
      },
    },
    { name: 'host', confirmsTransmit: true },
  );
  assert.equal(guest.transmit(f(1), 9), 'pending');
  assert.deepEqual(done, [[9, true]]);
});

test('frames from the confirming port itself need no confirmation', () => {
  const { host, guest, done } = setup();
  assert.equal(host.transmit(f(5), 1), 'sent');
  assert.equal(guest.queued, 1);
  assert.deepEqual(done, []);
});

test('turning a confirming port off fails the frames it still held', () => {
  const { guest, host, done } = setup();
  assert.equal(guest.transmit(f(1), 1), 'pending');
  assert.equal(host.setReceiving(false), 1);
  assert.deepEqual(done, [[1, false]]);
  assert.equal(guest.transmit(f(2), 2), 'pending');
  assert.deepEqual(done.at(-1), [2, false], 'a port that does not receive cannot transmit the frame');
});
