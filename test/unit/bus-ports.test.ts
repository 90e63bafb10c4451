/**
 * Bus names and pluggable bus ports: the registry that finds a port kind by URL scheme or file
 * extension, the command line's BUS=VALUE options, the name clash rule, and the hub's error-frame
 * reports to observers.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseCanArgs, parsePortRequest, portKindsHelp } from '../../src/cli/can-args.js';
import { CanErr, type CanErrorFrame, errorFrameCanId } from '../../src/core/bus/can-error.js';
import { CanHub } from '../../src/core/bus/hub.js';
import { type BusAttachment, type PortFactory, PortRegistry } from '../../src/node/bus/port-registry.js';
import { busesOf } from '../../src/node/can/can-daemon.js';

function fakeFactory(kind: 'link' | 'capture' | 'replay', keys: string[]): PortFactory<{ v: string }> {
  return {
    kind,
    keys,
    help: `        ${keys.join(', ')}  a test kind`,
    parse: (v) => (v.includes('bad') ? 'this value is bad' : { v }),
    create: (ctx, spec): BusAttachment => ({
      kind,
      name: `${kind}:${spec.v}`,
      bus: ctx.bus,
      stats: () => ({ state: 'up' }),
      close: () => {},
    }),
  };
}

test('the registry finds a kind by URL scheme or by extension, case-insensitively', () => {
  const r = new PortRegistry()
    .register(fakeFactory('link', ['socketcand']))
    .register(fakeFactory('capture', ['.pcapng', '.log']));
  const link = r.resolve({ kind: 'link', bus: 'default', value: 'SocketCAND://h:1/can0' });
  assert.equal(typeof link, 'object');
  assert.deepEqual((link as { spec: unknown }).spec, { v: 'SocketCAND://h:1/can0' });
  assert.equal(typeof r.resolve({ kind: 'capture', bus: 'b', value: '/tmp/x.d/Trace.PCAPNG' }), 'object');
  const unknown = r.resolve({ kind: 'link', bus: 'b', value: 'ftp://x' });
  assert.match(String(unknown), /--link b=ftp:\/\/x: unknown URL scheme "ftp" \(expected socketcand\)/);
  const noExt = r.resolve({ kind: 'capture', bus: 'b', value: '/tmp/a.b/trace' });
  assert.match(String(noExt), /unknown file extension \(expected \.pcapng, \.log\)/);
  assert.match(String(r.resolve({ kind: 'replay', bus: 'b', value: 'x.log' })), /none is available/);
  assert.match(String(r.resolve({ kind: 'link', bus: 'b', value: 'socketcand://bad' })), /this value is bad/);
  assert.throws(() => r.register(fakeFactory('capture', ['.LOG'])), /registered twice/);
});

test('BUS=VALUE requests: bus name rules and clear errors', () => {
  assert.deepEqual(parsePortRequest('capture', 'default=/tmp/a=b.log'), {
    kind: 'capture',
    bus: 'default',
    value: '/tmp/a=b.log',
  });
  assert.match(String(parsePortRequest('link', 'nourl')), /expects BUS=URL/);
  assert.match(String(parsePortRequest('capture', 'a b=x.log')), /bad bus name "a b"/);
  assert.match(String(parsePortRequest('replay', 'default=')), /nothing after/);
});

test('a virtual bus named like a host interface in use is an error; port-only buses are virtual', () => {
  assert.match(
    String(
      busesOf([
        { kind: 'host', ifname: 'vcan0' },
        { kind: 'virtual', name: 'vcan0' },
      ]),
    ),
    /both a virtual bus and a host interface/,
  );
  const m = busesOf([{ kind: 'host', ifname: 'vcan0' }], ['vcan0', 'lab']);
  assert.ok(m instanceof Map);
  assert.deepEqual(
    [...m.entries()],
    [
      ['vcan0', { kind: 'host', ifname: 'vcan0' }],
      ['lab', { kind: 'virtual', name: 'lab' }],
    ],
  );
  const r = parseCanArgs(['-s', '/tmp/x', '-c', '2', '-d', 'vcan0 virtual:vcan0']);
  assert.equal(r.kind, 'error');
  assert.match((r as { message: string }).message, /both a virtual bus and a host interface/);
});

test('the CLI takes --link/--capture/--replay through the registry and lists the kinds in --help', () => {
  const reg = new PortRegistry()
    .register(fakeFactory('link', ['tcpx']))
    .register(fakeFactory('capture', ['.cap']));
  const ok = parseCanArgs(['-s', '/tmp/x', '--link', 'lab=tcpx://h', '--capture', 'default=a.cap'], reg);
  assert.equal(ok.kind, 'run');
  if (ok.kind !== 'run') return;
  assert.deepEqual(ok.options.ports, [
    { kind: 'link', bus: 'lab', value: 'tcpx://h' },
    { kind: 'capture', bus: 'default', value: 'a.cap' },
  ]);
  const bad = parseCanArgs(['-s', '/tmp/x', '--capture', 'default=a.pcap'], reg);
  assert.equal(bad.kind, 'error');
  assert.match((bad as { message: string }).message, /unknown file extension "\.pcap" \(expected \.cap\)/);
  const help = portKindsHelp(reg);
  assert.match(help, /--link BUS=URL/);
  assert.match(help, /tcpx {2}a test kind/);
  assert.doesNotMatch(help, /--replay/, 'kinds with no factory are not advertised');
});

test('observers get error frames for controller state changes and emitted errors; others do not', () => {
  let now = 5n;
  const hub = new CanHub({ name: 'b', clock: () => now });
  const seen: CanErrorFrame[] = [];
  const states: string[] = [];
  hub.attach(
    { onFramesAvailable() {}, onErrorFrame: (f) => seen.push(f) },
    { name: 'obs', errorFrames: true },
  );
  hub.attach({ onFramesAvailable() {}, onErrorFrame: () => assert.fail('not asked for') }, { name: 'quiet' });
  const g = hub.attach({ onFramesAvailable() {}, onBusState: (s) => states.push(s) }, { name: 'g' });
  hub.injectBusState('g', 'error-passive');
  now = 9n;
  hub.injectBusState('g', 'bus-off');
  hub.injectBusState('g', 'bus-off'); // no change: no second report
  hub.injectBusState('g', 'error-active');
  assert.deepEqual(states, ['error-passive', 'bus-off', 'bus-off', 'error-active']);
  assert.equal(seen.length, 3);
  assert.equal(errorFrameCanId(seen[0]!), (CanErr.FLAG | CanErr.CRTL) >>> 0);
  assert.equal(seen[0]!.data[1], CanErr.CRTL_RX_PASSIVE | CanErr.CRTL_TX_PASSIVE);
  assert.equal(seen[0]!.origin, g.id);
  assert.equal(seen[0]!.timestampNs, 5n);
  assert.equal(seen[1]!.classBits, CanErr.BUSOFF);
  assert.equal(seen[1]!.timestampNs, 9n);
  assert.equal(seen[2]!.classBits, CanErr.RESTARTED, 'leaving bus-off is a restart');
  hub.emitErrorFrame({ classBits: CanErr.PROT, data: new Uint8Array(8), timestampNs: 1n, origin: 0 });
  assert.equal(seen.length, 4);
  assert.equal(hub.stats().errorFrames, 4);
});
