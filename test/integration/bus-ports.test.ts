/**
 * Port kinds plugged into the CAN daemon through a registry: created at start on buses that exist
 * before any guest connects, told when the first guest starts its controller, closed at stop, and
 * shown in the daemon's attachment list with their counters.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { CanFrame } from '../../src/core/bus/can-frame.js';
import type { BusPortHandler } from '../../src/core/bus/hub.js';
import { type BusAttachment, type PortContext, PortRegistry } from '../../src/node/bus/port-registry.js';
import { frame, startDriver, startTestDaemon, waitFor } from '../helpers/vhost-user.js';

test('a registered kind is created per request, sees guests start and traffic, and is closed at stop', async (t) => {
  const events: string[] = [];
  const registry = new PortRegistry().register({
    kind: 'capture',
    keys: ['.mem'],
    help: '        .mem  test recorder',
    parse: (v) => ({ file: v }),
    create(ctx: PortContext, spec: { file: string }): BusAttachment {
      const got: CanFrame[] = [];
      const handler: BusPortHandler = {
        onFramesAvailable() {
          for (let f = port.take(); f !== undefined; f = port.take()) got.push(f);
        },
      };
      const port = ctx.hub.attach(handler, { name: `capture:${spec.file}` });
      events.push(`create ${ctx.bus} ${spec.file} ${String(ctx.options.flag)}`);
      ctx.onFirstGuestStart(() => events.push(`started ${ctx.bus}`));
      assert.ok(ctx.epochOffsetNs > 1_600_000_000n * 1_000_000_000n, 'epoch offset is wall-clock based');
      return {
        kind: 'capture',
        name: port.name,
        bus: ctx.bus,
        stats: () => ({ frames: got.length }),
        close: () => {
          events.push(`close ${spec.file}`);
          port.detach();
        },
      };
    },
  });
  const { can, paths } = startTestDaemon(t, {
    sockets: 2,
    buses: [
      { kind: 'virtual', name: 'default' },
      { kind: 'virtual', name: 'lab' },
    ],
    ports: [
      { kind: 'capture', bus: 'lab', value: 'a.mem' },
      { kind: 'capture', bus: 'spare', value: 'b.mem' },
    ],
    portRegistry: registry,
    portOptions: { flag: true },
  });
  assert.deepEqual([...can.buses.keys()], ['default', 'lab', 'spare']);
  assert.deepEqual(can.hubs.names(), ['default', 'lab', 'spare'], 'every bus exists before any guest');
  assert.deepEqual(events, ['create lab a.mem true', 'create spare b.mem true']);
  const { drv } = await startDriver(t, paths[1]!);
  assert.ok(!events.includes('started lab'), 'connecting is not starting');
  assert.equal(await drv.startController(), 0);
  await waitFor('start seen', () => (events.includes('started lab') ? true : undefined));
  assert.ok(!events.includes('started spare'));
  assert.equal(await drv.send(frame(0x123, [1, 2])), 0);
  const a = can.attachments.find((x) => x.name === 'capture:a.mem')!;
  await waitFor('frame recorded', () => (a.stats().frames === 1 ? true : undefined));
  can.stop();
  assert.deepEqual(events.slice(-2), ['close b.mem', 'close a.mem'], 'closed in reverse order');
});

test('a bad request fails start-up with the registry message', (t) => {
  assert.throws(
    () =>
      startTestDaemon(t, {
        ports: [{ kind: 'link', bus: 'default', value: 'nope://x' }],
        portRegistry: new PortRegistry(),
      }),
    /unknown URL scheme "nope" \(none is available\)/,
  );
});
