import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type ConsoleCliOptions, parseConsoleArgs } from '../../src/cli/console-args.js';

function run(args: string[]): ConsoleCliOptions {
  const r = parseConsoleArgs(args);
  assert.equal(r.kind, 'run', JSON.stringify(r));
  return (r as { options: ConsoleCliOptions }).options;
}
function error(args: string[]): string {
  const r = parseConsoleArgs(args);
  assert.equal(r.kind, 'error', JSON.stringify(r));
  return (r as { message: string }).message;
}

test('drop-in command line: rust-vmm options, short forms and defaults', () => {
  const o = run(['-s', '/tmp/con.sock', '-c', '3', '-b', 'network', '-p', '20000', '-q', '256']);
  assert.equal(o.socketPath, '/tmp/con.sock');
  assert.equal(o.socketCount, 3);
  assert.equal(o.backend, 'network');
  assert.equal(o.tcpPort, 20000);
  assert.equal(o.tcpHost, '127.0.0.1');
  assert.equal(o.maxQueueSize, 256);
  const d = run(['--socket-path', '/tmp/x']);
  assert.equal(d.backend, 'nested');
  assert.equal(d.socketCount, 1);
  assert.equal(d.tcpPort, 12345);
  assert.equal(d.scrollback, 65536);
  assert.deepEqual([d.size, d.multiport, d.emergWrite, d.legacyResizeOrder], [true, true, true, false]);
});

test('nested needs exactly one guest and no named ports', () => {
  assert.match(error(['-s', '/tmp/x', '-c', '2']), /nested backend serves one guest/);
  assert.match(error(['-s', '/tmp/x', '--port-name', 'a.b']), /need --backend network or unix/);
});

test('unix backend: --uds-path required, path length checked', () => {
  assert.match(error(['-s', '/tmp/x', '-b', 'unix']), /needs --uds-path/);
  const o = run([
    '-s',
    '/tmp/x',
    '-b',
    'unix',
    '--uds-path',
    '/tmp/c',
    '--port-name',
    'org.qemu.guest_agent.0',
  ]);
  assert.equal(o.udsPath, '/tmp/c');
  assert.deepEqual(o.portNames, ['org.qemu.guest_agent.0']);
  assert.match(error(['-s', '/tmp/x', '-b', 'unix', '--uds-path', `/tmp/${'a'.repeat(110)}`]), /107 bytes/);
});

test('bad values name the option', () => {
  assert.match(error(['-s', '/tmp/x', '-b', 'serial']), /--backend must be nested, network or unix/);
  assert.match(error(['-s', '/tmp/x', '-b', 'network', '-p', '0']), /--tcp-port must be between 1 and 65535/);
  assert.match(error(['-s', '/tmp/x', '-b', 'network', '-p', '65535', '-c', '2']), /leaves no room/);
  assert.match(error(['-s', '/tmp/x', '-q', '100']), /power of two/);
  assert.match(error(['-s', '/tmp/x', '-b', 'network', '--port-name', 'bad name']), /--port-name "bad name"/);
  assert.match(error(['-s', '/tmp/x', '-b', 'network', '--port-name', 'a', '--port-name', 'a']), /twice/);
  assert.match(error(['-s', '/tmp/x', '-b', 'network', '--port-name', 'a', '--no-multiport']), /MULTIPORT/);
  assert.match(error(['-s', '/tmp/x', '--tcp-port', '5000']), /for --backend network/);
  assert.match(error(['-s', '/tmp/x', '--uds-path', '/tmp/u']), /for --backend unix/);
  assert.match(error([]), /--socket-path PATH \(or --fd N\) is missing/);
  assert.match(error(['-s', '/tmp/x', '--fd', '3']), /exclude each other/);
  assert.match(error(['--fd', '3', '-c', '2', '-b', 'network']), /--socket-count must be 1/);
  assert.match(error(['-s', '/tmp/x', '--bogus']), /bogus/);
});

test('--print-capabilities ignores everything else', () => {
  assert.equal(parseConsoleArgs(['--print-capabilities', '-c', '99']).kind, 'capabilities');
  assert.equal(parseConsoleArgs(['--print-capabilities']).kind, 'capabilities');
});

test('--fd serves one already-open socket', () => {
  const o = run(['--fd', '7', '-b', 'network']);
  assert.equal(o.fd, 7);
  assert.equal(o.socketPath, null);
});
