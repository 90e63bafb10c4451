/** vhost-device-can --bitrate/--fault as a user runs it: a child process, a guest front-end, stats. */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { cli, exited, waitFor } from '../helpers/cli.js';
import { startDriver } from '../helpers/vhost-user.js';

const { runSync, start } = cli('vhost-device-can.ts');

const dir = mkdtempSync(join(tmpdir(), 'vdc-timed-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));

test('bad --bitrate/--ack/--fault exit 2 naming the problem', () => {
  const s = ['-s', join(dir, 'x')];
  const cases: [string[], RegExp][] = [
    [['--bitrate', 'default=2M'], /--bitrate default=2M: the nominal bit rate must be 1000\.\.1000000/],
    [['--bitrate', 'other=500k'], /no guest or port uses bus "other"/],
    [['--fault', 'default:guest0:bitrate-mismatch'], /needs a timed bus/],
    [['--bitrate', 'default=500k', '--fault', 'default:guest0:drop=3'], /ratio must be a number in \(0, 1\]/],
    [['--bitrate', 'default=500k', '--ack', 'default=sometimes'], /--ack expects BUS=nodes\|always\|never/],
  ];
  for (const [args, re] of cases) {
    const r = runSync([...s, ...args]);
    assert.equal(r.status, 2, args.join(' '));
    assert.match(r.stderr, re);
  }
});

test('a guest with a mismatched bit rate goes bus-off; SIGUSR1 shows the bus timing and the port state', async (t) => {
  const base = join(dir, 'can.sock');
  const d = start([
    '-s',
    base,
    '--bitrate',
    'default=500k/2M',
    '--fault',
    'default:guest0:bitrate-mismatch@20s',
  ]);
  t.after(() => d.child.kill('SIGKILL'));
  await waitFor(() => d.output().includes('vhost-device-can started'));
  const { drv } = await startDriver(t, `${base}0`);
  assert.equal(await drv.startController(), 0);
  assert.equal(await drv.send({ id: 0x123, data: [1] }), 1, 'NOT_OK: bus-off');
  assert.equal(await drv.readStatus(), 1);
  d.child.kill('SIGUSR1');
  await waitFor(() => /stats busPort=guest0/.test(d.output()));
  assert.match(
    d.output(),
    /stats bus=default .*faults=1 bitrate=500000 dataBitrate=2000000 busyS=\S+ busTimeS=\S+ clockS=\S+ busErrors=32/,
  );
  assert.match(d.output(), /stats busPort=guest0 onBus=default state=bus-off tec=256 rec=0 txBusErrors=32/);
  d.child.kill('SIGTERM');
  assert.equal(await exited(d.child), 0);
});
