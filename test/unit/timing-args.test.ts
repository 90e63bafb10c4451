// --bitrate, --ack and --fault: syntax, checks against the buses, messages.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CAN_HELP } from '../../src/cli/can-args.js';
import {
  parseBitrateEntry,
  parseBitrateValue,
  parseDurationMs,
  parseFaultEntry,
} from '../../src/cli/timing-args.js';
import { err, run } from './support/can-args.js';

test('bit rates and durations', () => {
  assert.equal(parseBitrateValue('500000'), 500_000);
  assert.equal(parseBitrateValue('500k'), 500_000);
  assert.equal(parseBitrateValue('1M'), 1_000_000);
  assert.equal(parseBitrateValue('2.5M'), 2_500_000);
  assert.equal(parseBitrateValue('83.3k'), 83_300);
  assert.equal(parseBitrateValue('1.5'), null, 'not a whole number of bit/s');
  assert.equal(parseBitrateValue('fast'), null);
  assert.equal(parseDurationMs('250ms'), 250);
  assert.equal(parseDurationMs('1.5s'), 1500);
  assert.equal(parseDurationMs('2m'), 120_000);
  assert.equal(parseDurationMs('10'), null, 'a duration needs its unit');
  assert.deepEqual(parseBitrateEntry('default=500k/2M'), {
    bus: 'default',
    bitrate: 500_000,
    dataBitrate: 2_000_000,
  });
  assert.match(parseBitrateEntry('default=2M') as string, /nominal bit rate must be 1000\.\.1000000/);
  assert.match(parseBitrateEntry('default=1M/500k') as string, /data bit rate/);
  assert.match(parseBitrateEntry('500k') as string, /BUS=NOMINAL/);
});

test('fault syntax: BUS:PORT:KIND[=ARG][@DURATION], ports with colons', () => {
  assert.deepEqual(parseFaultEntry('default:guest0:bitrate-mismatch'), {
    bus: 'default',
    port: 'guest0',
    fault: { kind: 'bitrate-mismatch' },
  });
  assert.deepEqual(parseFaultEntry('ecu:host:vcan0:drop=10%@30s'), {
    bus: 'ecu',
    port: 'host:vcan0',
    fault: { kind: 'drop', ratio: 0.1 },
    durationMs: 30_000,
  });
  assert.deepEqual(parseFaultEntry('b:guest1:delay=5ms').valueOf(), {
    bus: 'b',
    port: 'guest1',
    fault: { kind: 'delay', ms: 5 },
  });
  assert.deepEqual((parseFaultEntry('b:guest1:delay=2') as { fault: unknown }).fault, {
    kind: 'delay',
    ms: 2,
  });
  assert.deepEqual((parseFaultEntry('b:g:bus-off@500ms') as { fault: unknown }).fault, {
    kind: 'bus-state',
    state: 'bus-off',
  });
  assert.deepEqual((parseFaultEntry('b:g:bus-state=error-warning') as { fault: unknown }).fault, {
    kind: 'bus-state',
    state: 'error-warning',
  });
  assert.deepEqual((parseFaultEntry('b:g:error-frames=50') as { fault: unknown }).fault, {
    kind: 'error-frames',
    perSecond: 50,
  });
  assert.match(parseFaultEntry('b:g:drop=1.5') as string, /ratio must be a number in \(0, 1\]/);
  assert.match(parseFaultEntry('b:g:drop') as string, /drop needs =RATIO/);
  assert.match(parseFaultEntry('b:g:no-ack=1') as string, /takes no argument/);
  assert.match(parseFaultEntry('b:g:melt') as string, /unknown fault kind "melt"/);
  assert.match(parseFaultEntry('b:g:no-ack@soon') as string, /bad duration "soon"/);
  assert.match(parseFaultEntry('b:no-ack') as string, /BUS:PORT:KIND/);
  assert.match(parseFaultEntry('b::no-ack') as string, /BUS:PORT:KIND/);
});

test('the daemon command line: timing per bus, faults, checked against the buses', () => {
  const o = run([
    '-s',
    '/tmp/x',
    '-c',
    '3',
    '-d',
    'virtual virtual:slow virtual:slow',
    '--bitrate',
    'default=500k/2M',
    '--bitrate',
    'slow=125k',
    '--ack',
    'slow=always',
    '--fault',
    'slow:guest2:no-ack@5s',
    '--fault',
    'default:guest0:drop=0.5',
  ]);
  assert.deepEqual(o.timing, {
    default: { bitrate: 500_000, dataBitrate: 2_000_000 },
    slow: { bitrate: 125_000, ack: 'always' },
  });
  assert.equal(o.faults.length, 2);
  assert.match(err(['-s', '/tmp/x', '--bitrate', 'nope=500k']), /no guest or port uses bus "nope"/);
  assert.match(err(['-s', '/tmp/x', '-d', 'vcan0', '--bitrate', 'vcan0=500k']), /host interface/);
  assert.match(err(['-s', '/tmp/x', '--ack', 'default=always']), /not timed/);
  assert.match(err(['-s', '/tmp/x', '--fault', 'default:guest0:no-ack']), /needs a timed bus/);
  assert.match(err(['-s', '/tmp/x', '--bitrate', 'default=500k', '--bitrate', 'default=1M']), /given twice/);
  // Generic faults need no timing; host interfaces may get them too.
  assert.equal(run(['-s', '/tmp/x', '--fault', 'default:guest0:delay=5ms']).faults.length, 1);
  assert.match(CAN_HELP, /--bitrate BUS=NOMINAL\[\/DATA\]/);
  assert.match(CAN_HELP, /--fault BUS:PORT:KIND\[=ARG\]\[@DURATION\]/);
  assert.match(CAN_HELP, /--ack BUS=nodes\|always\|never/);
});
