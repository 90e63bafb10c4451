import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CAN_HELP, parseBusEntry, parseCanArgs, socketPaths } from '../../src/cli/can-args.js';
import { err, run } from './support/can-args.js';

test('reference command lines parse the same way (drop-in)', () => {
  const a = run(['--socket-path=can.sock', '--can-devices=vcan0']);
  assert.equal(a.socketCount, 1);
  assert.deepEqual(a.buses, [{ kind: 'host', ifname: 'vcan0' }]);
  const b = run(['-s', '/tmp/can.sock', '-c', '2', '-d', 'vcan0 vcan1']);
  assert.deepEqual(socketPaths(b.socketPath!, b.socketCount), ['/tmp/can.sock0', '/tmp/can.sock1']);
  assert.deepEqual(
    b.buses.map((x) => (x.kind === 'host' ? x.ifname : x.name)),
    ['vcan0', 'vcan1'],
  );
});

test('without --can-devices every guest shares the default virtual bus', () => {
  const o = run(['-s', '/tmp/x', '-c', '3']);
  assert.equal(o.defaultBus, true);
  assert.deepEqual(o.buses, Array(3).fill({ kind: 'virtual', name: 'default' }));
  assert.deepEqual(o.features, { classic: true, fd: true, rtr: true, lateTxAck: true });
});

test('virtual:NAME entries put sockets on named buses', () => {
  const o = run(['-s', '/tmp/x', '-c', '4', '-d', 'virtual:a virtual:a virtual:b  virtual']);
  assert.deepEqual(o.buses, [
    { kind: 'virtual', name: 'a' },
    { kind: 'virtual', name: 'a' },
    { kind: 'virtual', name: 'b' },
    { kind: 'virtual', name: 'default' },
  ]);
  assert.equal(typeof parseBusEntry('virtual:'), 'string');
  assert.equal(typeof parseBusEntry('udp:1.2.3.4'), 'string');
  assert.equal(typeof parseBusEntry('way-too-long-ifname0'), 'string');
});

test('every bad input is an error naming the problem', () => {
  assert.match(err([]), /--socket-path/);
  assert.match(err(['-s', '/tmp/x', '-c', '2', '-d', 'vcan0']), /1 device\(s\) but --socket-count is 2/);
  assert.match(err(['-s', '/tmp/x', '-c', '0']), /socket-count/);
  assert.match(err(['-s', '/tmp/x', '-c', 'two']), /integer/);
  assert.match(err(['-s', '/tmp/x', '--bogus']), /bogus/);
  assert.match(err(['-s', '/tmp/x', '-q', '100']), /power of two/);
  assert.match(err(['-s', '/tmp/x', '--no-can-classic', '--no-can-fd']), /no frame type/);
  assert.match(err(['-s', '/tmp/x', '--log-level', 'loud']), /log-level/);
  assert.match(err(['-s', `/tmp/${'x'.repeat(120)}`]), /107 bytes/);
  assert.match(err(['-s', '/tmp/x', '-d', '']), /empty/);
  assert.match(err(['-s', '/tmp/x', 'extra']), /unexpected argument/);
});

test('feature switches; RTR follows classic', () => {
  const o = run(['-s', '/x', '--no-can-fd', '--no-late-tx-ack', '--no-event-idx']);
  assert.deepEqual(o.features, { classic: true, fd: false, rtr: true, lateTxAck: false });
  assert.equal(o.eventIdx, false);
  assert.equal(run(['-s', '/x', '--no-can-classic']).features.rtr, false);
});

test('help and version', () => {
  assert.equal(parseCanArgs(['--help']).kind, 'help');
  assert.equal(parseCanArgs(['-V']).kind, 'version');
  for (const opt of ['--socket-path', '--socket-count', '--can-devices', 'virtual:NAME', 'config_size=2']) {
    assert.ok(CAN_HELP.includes(opt), opt);
  }
});

test('--socketcand-listen and its options', () => {
  assert.equal(run(['-s', '/tmp/x']).socketcand, null);
  const o = run([
    '-s',
    '/tmp/x',
    '--socketcand-listen',
    '[::1]:29536',
    '--socketcand-allow',
    '10.0.0.0/8',
    '--socketcand-allow',
    'fd00::1',
    '--socketcand-max-clients',
    '8',
    '--socketcand-error-mask',
    '0x1FF',
  ]);
  assert.deepEqual(o.socketcand, {
    listen: { host: '::1', port: 29536 },
    allow: ['10.0.0.0/8', 'fd00::1/128'],
    maxClients: 8,
    errorMask: 0x1ff,
  });
  assert.deepEqual(run(['-s', '/tmp/x', '--socketcand-listen', 'localhost:0']).socketcand?.listen, {
    host: 'localhost',
    port: 0,
  });
  assert.match(err(['-s', '/tmp/x', '--socketcand-listen', '29536']), /expected ADDR:PORT/);
  assert.match(err(['-s', '/tmp/x', '--socketcand-listen', 'example.org:1']), /is not an IP address/);
  assert.match(err(['-s', '/tmp/x', '--socketcand-listen', '1.2.3.4:70000']), /out of range/);
  assert.match(
    err(['-s', '/tmp/x', '--socketcand-listen', ':1', '--socketcand-allow', '10.0.0.0/33']),
    /expected ADDR:PORT/,
  );
  const l = ['-s', '/tmp/x', '--socketcand-listen', '127.0.0.1:1'];
  assert.match(err([...l, '--socketcand-allow', '10.0.0.0/33']), /prefix \/33 is longer than 32 bits/);
  assert.match(err([...l, '--socketcand-allow', 'nope']), /expected an address or ADDR\/PREFIX/);
  assert.match(err([...l, '--socketcand-max-clients', '0']), /between 1 and 4096/);
  assert.match(err([...l, '--socketcand-error-mask', 'zz']), /error class bits in hex/);
  assert.match(err(['-s', '/tmp/x', '--socketcand-allow', '10.0.0.0/8']), /need --socketcand-listen/);
  assert.match(CAN_HELP, /--socketcand-listen ADDR:PORT/);
});

test('--link socketcand:// URLs are checked at parse time', () => {
  const o = run([
    '-s',
    '/tmp/x',
    '--link',
    'lab=socketcand://10.0.0.2/can0',
    '--link',
    'default=socketcand://[::1]:1234/lab',
  ]);
  assert.deepEqual(
    o.ports.map((p) => [p.bus, p.value]),
    [
      ['lab', 'socketcand://10.0.0.2/can0'],
      ['default', 'socketcand://[::1]:1234/lab'],
    ],
  );
  assert.match(
    err(['-s', '/tmp/x', '--link', 'lab=socketcand://10.0.0.2:1']),
    /expected socketcand:\/\/HOST:PORT\/CHANNEL/,
  );
  assert.match(err(['-s', '/tmp/x', '--link', 'lab=socketcand://10.0.0.2:0/x']), /port 0 is out of range/);
  assert.match(err(['-s', '/tmp/x', '--link', 'lab=socketcand://h/bad name']), /bad channel/);
  assert.match(err(['-s', '/tmp/x', '--link', 'lab=socketcand://[zz]:1/x']), /expected ADDR:PORT/);
  assert.match(err(['-s', '/tmp/x', '--link', 'lab=socketcand://[1::2::3]:1/x']), /not an IP address/);
});

test('--help describes each option once', () => {
  const heads = CAN_HELP.split('\n').filter((l) => /^ {4}-/.test(l));
  const seen = new Map<string, number>();
  for (const h of heads) seen.set(h.trim(), (seen.get(h.trim()) ?? 0) + 1);
  const twice = [...seen].filter(([, n]) => n > 1).map(([h]) => h);
  assert.deepEqual(twice, []);
  assert.ok(heads.length > 20, `${heads.length} option lines`);
});

test('--realtime[=N]: bare is priority 10, =1..=99 accepted, anything else an error naming it', () => {
  assert.equal(run(['-s', '/tmp/x']).realtime, null);
  assert.equal(run(['-s', '/tmp/x', '--realtime']).realtime, 10);
  assert.equal(run(['--realtime', '-s', '/tmp/x']).realtime, 10, 'bare, before another option');
  assert.equal(run(['-s', '/tmp/x', '--realtime=1']).realtime, 1);
  assert.equal(run(['-s', '/tmp/x', '--realtime=99']).realtime, 99);
  assert.equal(run(['-s', '/tmp/x', '--realtime=012']).realtime, 12);
  assert.match(err(['-s', '/tmp/x', '--realtime=0']), /^--realtime must be between 1 and 99, got 0$/);
  assert.match(err(['-s', '/tmp/x', '--realtime=100']), /^--realtime must be between 1 and 99, got 100$/);
  assert.match(err(['-s', '/tmp/x', '--realtime=abc']), /^--realtime expects an integer, got "abc"$/);
  assert.match(err(['-s', '/tmp/x', '--realtime=1.5']), /^--realtime expects an integer, got "1\.5"$/);
  assert.match(err(['-s', '/tmp/x', '--realtime=-5']), /^--realtime expects an integer, got "-5"$/);
  assert.match(err(['-s', '/tmp/x', '--realtime', '12']), /--realtime takes its priority as --realtime=N/);
  // After "--" it is an argument, not an option.
  assert.match(err(['-s', '/tmp/x', '--', '--realtime']), /unexpected argument "--realtime"/);
});

test('--cpu-latency US: 0..2000000000 microseconds, independent of --realtime', () => {
  assert.equal(run(['-s', '/tmp/x']).cpuLatency, null);
  assert.equal(run(['-s', '/tmp/x', '--realtime']).cpuLatency, null, 'not implied by --realtime');
  assert.equal(run(['-s', '/tmp/x', '--cpu-latency', '0']).cpuLatency, 0);
  assert.equal(run(['-s', '/tmp/x', '--cpu-latency=20']).cpuLatency, 20);
  assert.equal(run(['-s', '/tmp/x', '--cpu-latency=2000000000']).cpuLatency, 2_000_000_000);
  assert.match(err(['-s', '/tmp/x', '--cpu-latency=-1']), /^--cpu-latency expects an integer, got "-1"$/);
  assert.match(
    err(['-s', '/tmp/x', '--cpu-latency=2000000001']),
    /^--cpu-latency must be between 0 and 2000000000, got 2000000001$/,
  );
  assert.match(err(['-s', '/tmp/x', '--cpu-latency=off']), /^--cpu-latency expects an integer, got "off"$/);
});
