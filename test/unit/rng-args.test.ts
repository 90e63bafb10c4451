import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseRngArgs, RNG_HELP } from '../../src/cli/rng-args.js';

function run(argv: string[]) {
  const r = parseRngArgs(argv);
  assert.equal(r.kind, 'run', JSON.stringify(r));
  return (r as Extract<typeof r, { kind: 'run' }>).options;
}

function error(argv: string[]): string {
  const r = parseRngArgs(argv);
  assert.equal(r.kind, 'error', JSON.stringify(r));
  return (r as { message: string }).message;
}

test('defaults: /dev/urandom, period 1000 ms, unlimited', () => {
  const o = run(['--socket-path', '/tmp/rng.sock']);
  assert.equal(o.socketPath, '/tmp/rng.sock');
  assert.equal(o.socketCount, 1);
  assert.equal(o.filename, '/dev/urandom');
  assert.equal(o.periodMs, 1000);
  assert.equal(o.maxBytes, null);
});

test("rust-vmm's options, long and short", () => {
  const o = run([
    '--socket-path=/tmp/r',
    '--socket-count',
    '2',
    '--period',
    '500',
    '--max-bytes',
    '4096',
    '--filename',
    '/dev/hwrng',
  ]);
  assert.deepEqual([o.socketCount, o.periodMs, o.maxBytes, o.filename], [2, 500, 4096, '/dev/hwrng']);
  const s = run(['-s', '/tmp/r', '-c', '3', '-p', '10', '-m', '30', '-f', '/tmp/f']);
  assert.deepEqual([s.socketCount, s.periodMs, s.maxBytes, s.filename], [3, 10, 30, '/tmp/f']);
});

test('bad values name the option', () => {
  assert.match(error(['-s', '/tmp/r', '--period', '0']), /--period must be between 1/);
  assert.match(error(['-s', '/tmp/r', '--period', 'x']), /--period expects an integer/);
  assert.match(error(['-s', '/tmp/r', '--max-bytes', '0']), /--max-bytes must be between 1/);
  assert.match(error(['-s', '/tmp/r', '--max-bytes', '-5']), /max-bytes/);
  assert.match(error(['-s', '/tmp/r', '-c', '4', '--max-bytes', '3']), /split between 4 guests/);
  assert.match(error(['-s', '/tmp/r', '--filename', '']), /--filename is empty/);
  assert.match(error(['--period', '5']), /--socket-path/);
  assert.match(error(['-s', '/tmp/r', '--bogus']), /bogus/);
});

test('help, version, capabilities', () => {
  assert.equal(parseRngArgs(['--help']).kind, 'help');
  assert.equal(parseRngArgs(['-V']).kind, 'version');
  assert.equal(parseRngArgs(['--print-capabilities', '--period', 'junk']).kind, 'capabilities');
  for (const opt of [
    '--socket-path',
    '--socket-count',
    '--period',
    '--max-bytes',
    '--filename',
    'virtio-id=4',
  ]) {
    assert.ok(RNG_HELP.includes(opt), opt);
  }
});
