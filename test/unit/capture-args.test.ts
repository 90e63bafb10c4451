/** The command line of captures and replays: kinds by extension, kind options checked at parse time. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseCanArgs, portKindsHelp } from '../../src/cli/can-args.js';
import { rotatedPath } from '../../src/node/capture/capture-file.js';
import { parseByteSize } from '../../src/node/capture/capture-port.js';
import { parseReplaySpeed } from '../../src/node/capture/replay-port.js';

const base = ['-s', '/tmp/x'];

function error(args: string[]): string {
  const r = parseCanArgs([...base, ...args]);
  assert.equal(r.kind, 'error', JSON.stringify(r));
  return (r as { message: string }).message;
}

test('every capture format is a --capture and --replay kind; anything else is refused with the list', () => {
  for (const ext of ['pcapng', 'log', 'asc', 'blf', 'PCAPNG']) {
    const r = parseCanArgs([...base, '--capture', `default=/tmp/t.${ext}`, '--replay', `lab=/tmp/r.${ext}`]);
    assert.equal(r.kind, 'run', ext);
  }
  assert.match(
    error(['--capture', 'default=/tmp/t.pcap']),
    /unknown file extension "\.pcap" \(expected \.pcapng, \.log, \.asc, \.blf\)/,
  );
  assert.match(error(['--replay', 'default=/tmp/noext']), /unknown file extension \(expected/);
  assert.match(portKindsHelp(), /--capture-max-size VALUE/);
  assert.match(portKindsHelp(), /--replay-start VALUE/);
});

test('kind options are validated at parse time and reach the ports', () => {
  const r = parseCanArgs([
    ...base,
    '--capture',
    'default=/tmp/t.blf',
    '--capture-max-size',
    '10M',
    '--replay-speed',
    '2.5',
    '--replay-loop',
    '--replay-start',
    'now',
  ]);
  assert.equal(r.kind, 'run');
  if (r.kind !== 'run') return;
  assert.deepEqual(r.options.portOptions, {
    'capture-max-size': '10M',
    'replay-speed': '2.5',
    'replay-loop': true,
    'replay-start': 'now',
  });
  assert.match(error(['--capture-max-size', '1000']), /--capture-max-size: must be at least 64K/);
  assert.match(error(['--capture-max-size', '12X']), /--capture-max-size: expected a byte count/);
  assert.match(error(['--replay-speed', '0']), /--replay-speed: expected a positive number/);
  assert.match(error(['--replay-speed', 'fast']), /--replay-speed: expected a positive number/);
  assert.match(error(['--replay-start', 'later']), /--replay-start: expected guest or now/);
});

test('helpers: byte sizes, speeds, rotated file names', () => {
  assert.equal(parseByteSize('64K'), 65536);
  assert.equal(parseByteSize('3m'), 3 << 20);
  assert.equal(typeof parseByteSize('-1'), 'string');
  assert.equal(parseReplaySpeed('0.5'), 0.5);
  assert.equal(parseReplaySpeed('1e3'), 1000);
  assert.equal(typeof parseReplaySpeed('2e7'), 'string');
  assert.equal(rotatedPath('/tmp/a/trace.pcapng', 1), '/tmp/a/trace.1.pcapng');
  assert.equal(rotatedPath('/tmp/a.b/trace', 2), '/tmp/a.b/trace.2');
  assert.equal(rotatedPath('rel.log', 12), 'rel.12.log');
});
