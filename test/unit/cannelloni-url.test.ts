import assert from 'node:assert/strict';
import { test } from 'node:test';
import { portKindsHelp } from '../../src/cli/can-args.js';
import { builtinPorts } from '../../src/node/bus/builtin-ports.js';
import { parseCannelloniUrl } from '../../src/node/net/cannelloni-url.js';

test('cannelloni URLs: remote, local, defaults, parameters', () => {
  assert.deepEqual(parseCannelloniUrl('cannelloni://192.0.2.2:20000?local=192.0.2.1:20001'), {
    remoteHost: '192.0.2.2',
    remotePort: 20000,
    localAddress: '192.0.2.1',
    localPort: 20001,
    family: 4,
    keepaliveMs: 1000,
    timeoutMs: 3000,
    maxDatagram: 1472,
  });
  // Without local: the any-address of the remote's family and the remote's port.
  assert.deepEqual(parseCannelloniUrl('cannelloni://192.0.2.2:20000'), {
    remoteHost: '192.0.2.2',
    remotePort: 20000,
    localAddress: '0.0.0.0',
    localPort: 20000,
    family: 4,
    keepaliveMs: 1000,
    timeoutMs: 3000,
    maxDatagram: 1472,
  });
  const v6 = parseCannelloniUrl('cannelloni://[2001:db8::2]:20000/?local=[2001:db8::1]:20001&keepalive=200');
  assert.ok(typeof v6 !== 'string');
  assert.deepEqual(
    [v6.remoteHost, v6.localAddress, v6.localPort, v6.family, v6.keepaliveMs, v6.timeoutMs],
    ['2001:db8::2', '2001:db8::1', 20001, 6, 200, 600],
  );
  const any6 = parseCannelloniUrl('cannelloni://[::1]:5?local=:6');
  assert.ok(typeof any6 !== 'string');
  assert.deepEqual([any6.localAddress, any6.localPort, any6.family], ['::', 6, 6]);
  const named = parseCannelloniUrl(
    'CANNELLONI://bench-pc.example:20000?keepalive=0&timeout=5000&datagram=9000',
  );
  assert.ok(typeof named !== 'string');
  assert.deepEqual(
    [named.remoteHost, named.family, named.keepaliveMs, named.timeoutMs, named.maxDatagram],
    ['bench-pc.example', 4, 0, 5000, 9000],
  );
  const named6 = parseCannelloniUrl('cannelloni://peer:1?local=[::]:2');
  assert.ok(typeof named6 !== 'string');
  assert.equal(named6.family, 6, 'a host name takes the family of the local address');
});

test('cannelloni URLs: every mistake is named', () => {
  const bad: [string, RegExp][] = [
    ['cannelloni://', /remote host is missing/],
    ['cannelloni://192.0.2.2', /remote port is missing/],
    ['cannelloni://192.0.2.2:0', /"0" is not a number 1\.\.65535/],
    ['cannelloni://192.0.2.2:65536', /"65536" is not a number/],
    ['cannelloni://192.0.2.2:2x', /"2x" is not a number/],
    ['cannelloni://192.0.2.256:1', /not an IPv4 address/],
    ['cannelloni://[192.0.2.1]:1', /not an IPv6 address/],
    ['cannelloni://2001:db8::1:1', /IPv6 address goes in brackets/],
    ['cannelloni://under_score:1', /not a host name or address/],
    ['cannelloni://h:1/can0', /no path/],
    ['cannelloni://h:1?lokal=1.2.3.4:5', /unknown parameter "lokal"/],
    ['cannelloni://h:1?local=:1&local=:2', /"local" is given twice/],
    ['cannelloni://h:1?local=1.2.3.4', /is not LADDR:LPORT/],
    ['cannelloni://h:1?local=host:5', /not an IPv4 address .*a local address must be a literal/],
    ['cannelloni://h:1?local=1.2.3.4:70000', /local port "70000"/],
    ['cannelloni://h:1?local=[zz]:1', /not an IPv6 address/],
    ['cannelloni://[::1]:1?local=127.0.0.1:1', /IPv4 but the remote ::1 is IPv6/],
    ['cannelloni://127.0.0.1:1?local=[::1]:1', /IPv6 but the remote 127\.0\.0\.1 is IPv4/],
    ['cannelloni://h:1?keepalive=-1', /keepalive must be milliseconds/],
    ['cannelloni://h:1?keepalive=5', /at least 10 ms/],
    ['cannelloni://h:1?timeout=10', /at least 20 ms/],
    ['cannelloni://h:1?keepalive=500&timeout=500', /longer than keepalive/],
    ['cannelloni://h:1?datagram=74', /integer 75\.\.65507, got 74/],
    ['cannelloni://h:1?datagram=big', /got "big"/],
  ];
  for (const [url, re] of bad) {
    const r = parseCannelloniUrl(url);
    assert.equal(typeof r, 'string', url);
    assert.match(r as string, re, url);
  }
});

test('the cannelloni kind is registered and described in --help', () => {
  const r = builtinPorts.resolve({ kind: 'link', bus: 'default', value: 'cannelloni://192.0.2.2:20000' });
  assert.ok(typeof r !== 'string');
  assert.equal(r.factory.keys[0], 'cannelloni');
  const err = builtinPorts.resolve({ kind: 'link', bus: 'lab', value: 'cannelloni://192.0.2.2' });
  assert.equal(err, '--link lab=cannelloni://192.0.2.2: the remote port is missing');
  assert.match(portKindsHelp(), /cannelloni:\/\/RHOST:RPORT\[\?local=LADDR:LPORT\]/);
});
