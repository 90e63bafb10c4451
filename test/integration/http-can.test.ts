/**
 * The CAN daemon's web side over real HTTP: the bus/port/guest listing, frames injected onto a bus
 * reaching a front-end guest, faults driving a guest's controller, /metrics through a Prometheus
 * parser, the frame stream (filter, CANopen, sampling, slow-viewer cutoff) and the request checks
 * (host, origin, content type, body size, token).
 */
import assert from 'node:assert/strict';
import { connect as tcpConnect } from 'node:net';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { makeCanFrame } from '../../src/core/bus/can-frame.js';
import { CanStatus } from '../../src/core/devices/can/constants.js';
import { HttpServer } from '../../src/node/http/server.js';
import { lintExposition, parseMetrics, req, sample, sendJson, sse, startWeb } from '../helpers/http.js';
import { frame, hostPort, startDriver, startTestDaemon, waitFor } from '../helpers/vhost-user.js';

test('buses, ports and guests are listed with their counters and controller states', async (t) => {
  const { can, paths } = startTestDaemon(t, {
    sockets: 3,
    buses: [
      { kind: 'virtual', name: 'default' },
      { kind: 'virtual', name: 'default' },
      { kind: 'virtual', name: 'body' },
    ],
  });
  const web = await startWeb(t, can);
  const a = (await startDriver(t, paths[0]!)).drv;
  const b = (await startDriver(t, paths[1]!)).drv;
  assert.equal(await a.startController(), 0);
  assert.equal(await b.startController(), 0);
  assert.equal(await a.send(frame(0x123, [1, 2, 3])), 0);
  await b.waitFrames(1);

  const r = await req(`${web.url}/api/buses`);
  assert.equal(r.status, 200);
  assert.match(String(r.headers['content-type']), /^application\/json/);
  const names = r.json.buses.map((x: { name: string }) => x.name);
  assert.deepEqual(names, ['default', 'body']);
  const def = r.json.buses[0];
  assert.equal(def.frames, 1);
  assert.equal(def.bytes, 3);
  assert.equal(def.connectedGuests, 2);
  const g0 = def.ports.find((p: { name: string }) => p.name === 'guest0');
  assert.equal(g0.kind, 'guest');
  assert.equal(g0.guest, 0);
  assert.equal(g0.stats.txFrames, 1);
  assert.equal(g0.busState, 'error-active');
  const g1 = def.ports.find((p: { name: string }) => p.name === 'guest1');
  assert.equal(g1.stats.rxFrames, 1);
  assert.deepEqual(
    def.guests.map((g: { guest: number; controller: string; connected: boolean }) => [
      g.guest,
      g.controller,
      g.connected,
    ]),
    [
      [0, 'started', true],
      [1, 'started', true],
    ],
  );
  assert.equal(def.guests[0].stats.txOk, 1);
  assert.equal(def.guests[1].stats.rxDelivered, 1);
  const body = r.json.buses[1];
  assert.deepEqual(
    body.guests.map((g: { guest: number; connected: boolean; controller: null }) => [
      g.guest,
      g.connected,
      g.controller,
    ]),
    [[2, false, null]],
  );

  const one = await req(`${web.url}/api/buses/body`);
  assert.equal(one.json.name, 'body');
  assert.equal((await req(`${web.url}/api/buses/nope`)).status, 404);
  const guests = await req(`${web.url}/api/guests`);
  assert.deepEqual(
    guests.json.guests.map((g: { bus: string }) => g.bus),
    ['default', 'default', 'body'],
  );
  const status = await req(`${web.url}/api/status`);
  assert.equal(status.json.daemon, 'can');
  assert.deepEqual(status.json.faultKinds, [
    'bus-state',
    'drop',
    'delay',
    'bitrate-mismatch',
    'no-ack',
    'error-frames',
  ]);
  assert.equal((await req(`${web.url}/nope`)).status, 404);
});

test('frames posted to a bus reach the guests on it, bad frames get a clear 400', async (t) => {
  const { can, paths } = startTestDaemon(t, { sockets: 1 });
  const web = await startWeb(t, can);
  const { drv } = await startDriver(t, paths[0]!);
  assert.equal(await drv.startController(), 0);

  const one = await sendJson(web, 'POST', '/api/buses/default/frames', { frame: '123#DEADBEEF' });
  assert.equal(one.status, 200);
  assert.deepEqual(one.json, { bus: 'default', sent: 1, dropped: 0 });
  const many = await sendJson(web, 'POST', '/api/buses/default/frames', {
    frames: [
      '12345678#0102',
      { id: 0x7ff, data: 'AABB' },
      { id: '100', data: [1, 2, 3], fd: true, brs: true },
    ],
  });
  assert.deepEqual(many.json, { bus: 'default', sent: 3, dropped: 0 });
  const got = await drv.waitFrames(4);
  assert.deepEqual(
    got.map((f) => [f.id, f.extended, f.fd, Buffer.from(f.data).toString('hex')]),
    [
      [0x123, false, false, 'deadbeef'],
      [0x12345678, true, false, '0102'],
      [0x7ff, false, false, 'aabb'],
      [0x100, false, true, '010203'],
    ],
  );
  // The request's port left the bus again: nothing stays attached between requests.
  assert.deepEqual(
    can.hubs
      .get('default')
      .ports()
      .map((p) => p.name),
    ['guest0'],
  );

  for (const bad of [
    {},
    { frame: '1234#00' },
    { frame: '123#112233445566778899' },
    { frames: [{ id: 0x800 }] },
    { frame: 5 },
  ]) {
    const r = await sendJson(web, 'POST', '/api/buses/default/frames', bad);
    assert.equal(r.status, 400, JSON.stringify(bad));
    assert.equal(r.json.error.code, 'ERR_HTTP_BAD_REQUEST');
    assert.ok(r.json.error.message.length > 10);
  }
  const tooMany = await sendJson(web, 'POST', '/api/buses/default/frames', {
    frames: Array.from({ length: 1001 }, () => '123#'),
  });
  assert.equal(tooMany.status, 400);
  assert.match(tooMany.json.error.message, /at most 1000/);
  assert.equal((await sendJson(web, 'POST', '/api/buses/nope/frames', { frame: '123#' })).status, 404);
  assert.equal(drv.received().length, 4, 'none of the refused requests put anything on the bus');
});

test('a bus-off fault stops a guest controller and shows; a timed fault ends by itself; other kinds are 501', async (t) => {
  const { can, paths } = startTestDaemon(t, { sockets: 2 });
  const web = await startWeb(t, can);
  const a = (await startDriver(t, paths[0]!)).drv;
  const b = (await startDriver(t, paths[1]!)).drv;
  assert.equal(await a.startController(), 0);
  assert.equal(await b.startController(), 0);

  const inj = await sendJson(web, 'POST', '/api/faults', {
    bus: 'default',
    port: 'guest0',
    fault: { kind: 'bus-state', state: 'bus-off' },
  });
  assert.equal(inj.status, 201);
  assert.equal(inj.json.fault.port, 'guest0');
  assert.equal(inj.json.fault.until, null);
  assert.equal((await a.readStatus()) & CanStatus.CTRL_BUSOFF, CanStatus.CTRL_BUSOFF);
  const g = await req(`${web.url}/api/guests`);
  assert.equal(g.json.guests[0].controller, 'bus-off');
  assert.equal(g.json.guests[0].stats.busOff, 1);
  assert.equal(g.json.guests[1].controller, 'started', 'the other guest is not affected');
  const list = await req(`${web.url}/api/faults`);
  assert.equal(list.json.faults.length, 1);
  const id = list.json.faults[0].id;
  assert.equal((await sendJson(web, 'DELETE', `/api/faults/${id}`, {})).status, 200);
  assert.equal((await sendJson(web, 'DELETE', `/api/faults/${id}`, {})).status, 404);
  // Cleared, the controller stays bus-off until its guest restarts it, as a real one would.
  const port0 = can.device(0)!.port;
  assert.equal(port0.busState, 'bus-off');
  assert.equal(await a.startController(), 0);
  assert.equal(port0.busState, 'error-active');
  assert.equal((await a.readStatus()) & CanStatus.CTRL_BUSOFF, 0);

  // A timed error-passive fault on guest1 ends by itself.
  const timed = await sendJson(web, 'POST', '/api/faults', {
    bus: 'default',
    port: 'guest1',
    fault: { kind: 'bus-state', state: 'error-passive' },
    durationMs: 150,
  });
  assert.equal(timed.status, 201);
  const port1 = can.device(1)!.port;
  assert.equal(port1.busState, 'error-passive');
  await waitFor('fault expiry', () => (port1.busState === 'error-active' ? true : undefined), 2000);
  assert.equal((await req(`${web.url}/api/faults`)).json.faults.length, 0);

  // Clear by port.
  await sendJson(web, 'POST', '/api/faults', {
    bus: 'default',
    port: 'guest1',
    fault: { kind: 'bus-state', state: 'error-warning' },
  });
  assert.equal(port1.busState, 'error-warning');
  const cleared = await sendJson(web, 'DELETE', '/api/faults', { bus: 'default', port: 'guest1' });
  assert.deepEqual(cleared.json, { cleared: 1 });
  assert.equal(port1.busState, 'error-active');

  const notHere = await sendJson(web, 'POST', '/api/faults', {
    bus: 'default',
    port: 'guest1',
    fault: { kind: 'no-ack' },
  });
  assert.equal(notHere.status, 501);
  assert.equal(notHere.json.error.code, 'ERR_FAULT_NOT_AVAILABLE');
  assert.match(notHere.json.error.message, /needs a timed bus/);
  const drop = await sendJson(web, 'POST', '/api/faults', {
    bus: 'default',
    port: 'guest1',
    fault: { kind: 'drop', ratio: 1 },
  });
  assert.equal(drop.status, 201, 'drops work on an untimed bus');
  assert.equal(await b.send(frame(0x42, [1])), 0, 'a dropped frame still completes for its sender');
  await waitFor('drop counted', () => (can.hubs.get('default').faults()[0]?.hits === 1 ? true : undefined));
  assert.equal((await req(`${web.url}/api/faults`)).json.faults[0].hits, 1);
  assert.equal(a.received().filter((f) => f.id === 0x42).length, 0, 'the other guest never got it');
  assert.equal((await sendJson(web, 'DELETE', '/api/faults', {})).json.cleared, 1);
  for (const [body, status, code] of [
    [
      { bus: 'default', port: 'guest9', fault: { kind: 'bus-state', state: 'bus-off' } },
      404,
      'ERR_FAULT_UNKNOWN_PORT',
    ],
    [
      { bus: 'nope', port: 'guest0', fault: { kind: 'bus-state', state: 'bus-off' } },
      404,
      'ERR_FAULT_UNKNOWN_BUS',
    ],
    [
      { bus: 'default', port: 'guest0', fault: { kind: 'bus-state', state: 'melted' } },
      400,
      'ERR_FAULT_INVALID',
    ],
    [
      { bus: 'default', port: 'guest0', fault: { kind: 'bus-state', state: 'bus-off' }, durationMs: -1 },
      400,
      'ERR_FAULT_INVALID',
    ],
    [{ bus: 'default', port: 'guest0', fault: { kind: 'teleport' } }, 400, 'ERR_FAULT_INVALID'],
  ] as const) {
    const r = await sendJson(web, 'POST', '/api/faults', body);
    assert.equal(r.status, status, JSON.stringify(body));
    assert.equal(r.json.error.code, code);
  }
});

test('/metrics: valid exposition text, counters and gauges that follow the traffic and faults', async (t) => {
  const { can, paths } = startTestDaemon(t, { sockets: 2 });
  const web = await startWeb(t, can, { processMetrics: true });
  const a = (await startDriver(t, paths[0]!)).drv;
  const b = (await startDriver(t, paths[1]!)).drv;
  assert.equal(await a.startController(), 0);
  for (let i = 0; i < 5; i++) assert.equal(await a.send(frame(0x100 + i, [i, i])), 0);
  // Guest 1 has not started its controller: the five frames are dropped for it (stopped), counted.
  await sendJson(web, 'POST', '/api/faults', {
    bus: 'default',
    port: 'guest0',
    fault: { kind: 'bus-state', state: 'bus-off' },
  });
  await sse(t, `${web.url}/api/stream`); // the monitor's tap joins the bus

  const r = await req(`${web.url}/metrics`);
  assert.equal(r.status, 200);
  assert.match(String(r.headers['content-type']), /^text\/plain; version=0\.0\.4/);
  assert.deepEqual(lintExposition(r.text), []);
  // The checker itself catches what it should.
  assert.deepEqual(lintExposition('# TYPE a counter\na 1\n'), ['counter not named _total, line 2: a 1']);
  assert.equal(lintExposition('x_total{l="a} 1\n').length, 1);
  assert.equal(lintExposition('# TYPE x gauge\nx 1').length, 1, 'no final newline');
  const m = parseMetrics(r.text);
  for (const [name, f] of m) {
    if (f.type === 'COUNTER') assert.ok(name.endsWith('_total'), `${name} is a counter without _total`);
  }
  assert.equal(m.get('vhost_can_bus_frames_total')?.type, 'COUNTER');
  assert.equal(m.get('vhost_can_bus_load_ratio')?.type, 'GAUGE');
  assert.equal(sample(m, 'vhost_can_build_info', { version: '0.0.0-test' }), 1);
  assert.equal(sample(m, 'vhost_can_bus_frames_total', { bus: 'default' }), 5);
  assert.equal(sample(m, 'vhost_can_bus_bytes_total', { bus: 'default' }), 10);
  assert.equal(sample(m, 'vhost_can_guest_frames_total', { guest: '0', dir: 'tx' }), 5);
  assert.equal(sample(m, 'vhost_can_guest_bytes_total', { guest: '0', dir: 'tx' }), 10);
  assert.equal(
    sample(m, 'vhost_can_guest_dropped_frames_total', { guest: '1', dir: 'rx', reason: 'stopped' }),
    5,
  );
  assert.equal(
    sample(m, 'vhost_can_guest_dropped_frames_total', { guest: '0', dir: 'tx', reason: 'bad_chain' }),
    0,
  );
  assert.equal(sample(m, 'vhost_can_guest_bus_off_total', { guest: '0' }), 1);
  assert.equal(sample(m, 'vhost_can_controller_state', { guest: '0', state: 'bus_off' }), 1);
  assert.equal(sample(m, 'vhost_can_controller_state', { guest: '0', state: 'started' }), 0);
  assert.equal(sample(m, 'vhost_can_controller_state', { guest: '1', state: 'stopped' }), 1);
  assert.equal(sample(m, 'vhost_can_port_state', { port: 'guest0', state: 'bus_off' }), 1);
  assert.equal(sample(m, 'vhost_can_port_frames_total', { port: 'guest0', kind: 'guest', dir: 'tx' }), 5);
  assert.equal(sample(m, 'vhost_can_port_dropped_frames_total', { port: 'guest1', reason: 'closed' }), 5);
  assert.equal(sample(m, 'vhost_can_bus_connected_guests', { bus: 'default' }), 2);
  assert.equal(sample(m, 'vhost_can_guest_connected', { guest: '1' }), 1);
  assert.equal(sample(m, 'vhost_can_faults_active', { kind: 'bus_state' }), 1);
  assert.equal(sample(m, 'vhost_can_faults_injected_total', { kind: 'bus_state' }), 1);
  assert.equal(sample(m, 'vhost_can_bus_error_frames_total', { bus: 'default' }), 1, 'the state change');
  assert.ok((sample(m, 'vhost_http_requests_total', { code: '201' }) ?? 0) >= 1);
  assert.ok(m.has('process_cpu_seconds_total'), 'process metrics are included');
  assert.equal(sample(m, 'vhost_can_monitor_streams'), 1);
  assert.equal(
    sample(m, 'vhost_can_port_frames_total', { port: 'web-monitor' }),
    undefined,
    'no per-port series for the tap',
  );
  assert.equal(sample(m, 'vhost_can_bus_ports', { bus: 'default' }), 2);
  void b;
});

test('the frame stream: a guest frame arrives decoded, the filter holds, error events come along', async (t) => {
  const { can, paths } = startTestDaemon(t, { sockets: 1 });
  const web = await startWeb(t, can);
  const { drv } = await startDriver(t, paths[0]!);
  assert.equal(await drv.startController(), 0);
  const all = await sse(t, `${web.url}/api/stream?decode=canopen`);
  assert.equal(all.status, 200);
  await all.waitFor('hello', (e) => e.event === 'hello', 1000, true);
  assert.equal(all.events[0]?.event, 'hello');
  assert.deepEqual(all.events[0]?.data.buses, ['default']);
  const only = await sse(t, `${web.url}/api/stream?id=700&mask=780&port=guest0&errors=0`);

  const sentAt = Date.now();
  assert.equal(await drv.send(frame(0x605, [0x40, 0x18, 0x10, 0x01, 0, 0, 0, 0])), 0);
  const ev = await all.waitFor('the SDO frame', (e) => e.event === 'frame' && e.data.id === 0x605, 1000);
  assert.ok(Date.now() - sentAt < 1000);
  assert.equal(ev.data.bus, 'default');
  assert.equal(ev.data.port, 'guest0');
  assert.equal(ev.data.text, '605#4018100100000000');
  assert.equal(ev.data.canopen.summary, 'SDO rx node 5: initiate upload 0x1018:01');
  assert.ok(Math.abs(ev.data.t * 1000 - Date.now()) < 5000, 'wall-clock time stamp');

  assert.equal(await drv.send(frame(0x701, [0x05])), 0);
  await sendJson(web, 'POST', '/api/buses/default/frames', { frame: '702#05' }); // sender "web": filtered out
  const viaApi = await all.waitFor(
    'the injected frame',
    (e) => e.event === 'frame' && e.data.id === 0x702,
    1000,
    true,
  );
  assert.equal(viaApi.data.port, 'web', 'the sender of an API frame is named although its port left');
  const hb = await only.waitFor('the heartbeat', (e) => e.event === 'frame', 1000, true);
  assert.equal(hb.data.id, 0x701);
  assert.equal(hb.data.canopen, undefined, 'no decoding unless asked');

  await sendJson(web, 'POST', '/api/faults', {
    bus: 'default',
    port: 'guest0',
    fault: { kind: 'bus-state', state: 'error-passive' },
  });
  const err = await all.waitFor(
    'the state change',
    (e) => e.event === 'frame' && e.data.error === true,
    1000,
  );
  assert.equal(err.data.text, 'error-passive');
  assert.equal(err.data.port, 'guest0');
  await sleep(300);
  assert.deepEqual(
    only.events.filter((e) => e.event === 'frame').map((e) => e.data.id),
    [0x701],
    'the filtered stream got nothing else',
  );
  for (const q of ['id=zz', 'rate=0', 'bus=nope', 'decode=j1939', 'ext=2']) {
    const r = await req(`${web.url}/api/stream?${q}`);
    assert.ok(r.status === 400 || r.status === 404, `${q}: ${r.status}`);
    assert.ok(r.json.error.code);
  }
});

test('the stream samples a flood: at most the rate, the rest counted skipped; the tap detaches after', async (t) => {
  const { can } = startTestDaemon(t, { sockets: 1 });
  const web = await startWeb(t, can);
  const hub = can.hubs.get('default');
  const src = hostPort(t, hub, 'flooder');
  const viewer = await sse(t, `${web.url}/api/stream?rate=50`);
  await sleep(50);
  assert.ok(
    hub.ports().some((p) => p.name === 'web-monitor'),
    'the tap joined the bus',
  );
  const start = Date.now();
  const total = 20_000;
  const f = makeCanFrame({ id: 0x10, data: [1, 2, 3, 4] });
  for (let i = 0; i < total; i += 500) {
    for (let k = 0; k < 500; k++) src.transmit(f);
    await sleep(5);
  }
  // Let the stats of the last tick arrive.
  const last = await viewer.waitFor(
    'stats covering the flood',
    (e) => e.event === 'stats' && e.data.sent + e.data.skipped + e.data.lost === total,
    5000,
  );
  const elapsed = (Date.now() - start) / 1000;
  const frames = viewer.events.filter((e) => e.event === 'frame').length;
  assert.equal(last.data.sent, frames);
  assert.ok(frames <= 50 * elapsed + 15, `${frames} frames in ${elapsed.toFixed(2)} s at 50/s`);
  assert.ok(frames >= 10, `${frames} frames sent`);
  assert.ok(last.data.skipped > total / 2, 'most were skipped and reported');
  viewer.close();
  await waitFor(
    'tap detached',
    () => (hub.ports().some((p) => p.name === 'web-monitor') ? undefined : true),
    2000,
  );
  assert.equal(web.streams.stats.streams, 0);
});

test('a viewer that does not read is cut off; the bus and other viewers go on', async (t) => {
  const { can, paths } = startTestDaemon(t, { sockets: 2 });
  const web = await startWeb(t, can, {
    streams: { maxRate: 100_000, maxBufferBytes: 256 * 1024, stallMs: 500 },
  });
  const a = (await startDriver(t, paths[0]!)).drv;
  const b = (await startDriver(t, paths[1]!)).drv;
  assert.equal(await a.startController(), 0);
  assert.equal(await b.startController(), 0);
  const hub = can.hubs.get('default');
  const src = hostPort(t, hub, 'flooder');
  // A raw client that sends the request and then never reads.
  const sock = tcpConnect(Number(new URL(web.url).port), '127.0.0.1');
  t.after(() => sock.destroy());
  await new Promise((r) => sock.once('connect', r));
  sock.write(`GET /api/stream?rate=100000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
  sock.pause();
  const good = await sse(t, `${web.url}/api/stream?rate=10&errors=0&port=guest0`);
  await waitFor('both streams', () => (web.streams.stats.streams === 2 ? true : undefined));
  const f = makeCanFrame({ id: 0x10, data: [1, 2, 3, 4, 5, 6, 7, 8] });
  const deadline = Date.now() + 20_000;
  while (web.streams.stats.cut === 0 && Date.now() < deadline) {
    for (let k = 0; k < 2000; k++) src.transmit(f);
    await sleep(2);
  }
  assert.equal(web.streams.stats.cut, 1, 'the slow viewer was cut off');
  assert.equal(web.streams.stats.streams, 1, 'the other stream stays');
  // The guests' path never waited: guest 1 received every flood frame (its backlog is large enough
  // or counted), and a frame from guest 0 still reaches the remaining viewer.
  assert.equal(await a.send(frame(0x321, [9])), 0);
  const ev = await good.waitFor(
    'a frame after the cutoff',
    (e) => e.event === 'frame' && e.data.id === 0x321,
    2000,
  );
  assert.equal(ev.data.port, 'guest0');
  const st = hub.stats();
  const g1 = st.ports.find((p) => p.name === 'guest1')!;
  assert.equal(
    g1.stats.rxFrames + g1.stats.rxDroppedOverflow,
    st.frames - g1.stats.txFrames,
    'every frame accounted for guest 1',
  );
  assert.equal((await req(`${web.url}/api/status`)).status, 200);
});

test('stream count is bounded: the one too many gets 503', async (t) => {
  const { can } = startTestDaemon(t, { sockets: 1 });
  const web = await startWeb(t, can, { streams: { maxStreams: 2 } });
  const s1 = await sse(t, `${web.url}/api/stream`);
  const s2 = await sse(t, `${web.url}/api/stream`);
  const r = await req(`${web.url}/api/stream`);
  assert.equal(r.status, 503);
  assert.equal(r.json.error.code, 'ERR_HTTP_TOO_MANY_STREAMS');
  s1.close();
  await waitFor('a slot free', () => (web.streams.stats.streams === 1 ? true : undefined));
  const s3 = await sse(t, `${web.url}/api/stream`);
  assert.equal(s3.status, 200);
  void s2;
});

test('changes need JSON from the same origin; foreign hosts, big bodies and bad JSON are refused', async (t) => {
  const { can, paths } = startTestDaemon(t, { sockets: 1 });
  const web = await startWeb(t, can, { maxBodyBytes: 1024 });
  const { drv } = await startDriver(t, paths[0]!);
  assert.equal(await drv.startController(), 0);
  const url = `${web.url}/api/buses/default/frames`;
  const body = JSON.stringify({ frame: '123#01' });
  const cases: [string, Record<string, string>, string | Buffer, number, string][] = [
    [
      'another origin',
      { 'Content-Type': 'application/json', Origin: 'http://evil.example' },
      body,
      403,
      'ERR_HTTP_ORIGIN',
    ],
    ['origin "null"', { 'Content-Type': 'application/json', Origin: 'null' }, body, 403, 'ERR_HTTP_ORIGIN'],
    [
      'cross-site fetch metadata',
      { 'Content-Type': 'application/json', 'Sec-Fetch-Site': 'cross-site' },
      body,
      403,
      'ERR_HTTP_ORIGIN',
    ],
    [
      'a form post',
      { 'Content-Type': 'application/x-www-form-urlencoded', Origin: web.url },
      'frame=123%2301',
      415,
      'ERR_HTTP_CONTENT_TYPE',
    ],
    ['text/plain (no preflight)', { 'Content-Type': 'text/plain' }, body, 415, 'ERR_HTTP_CONTENT_TYPE'],
    ['no content type', {}, body, 415, 'ERR_HTTP_CONTENT_TYPE'],
    ['bad JSON', { 'Content-Type': 'application/json' }, '{"frame":', 400, 'ERR_HTTP_BAD_REQUEST'],
    [
      'a big body',
      { 'Content-Type': 'application/json' },
      `{"frames":[${'"123#01",'.repeat(200)}"123#01"]}`,
      413,
      'ERR_HTTP_BODY_TOO_LARGE',
    ],
    [
      'another host name',
      { 'Content-Type': 'application/json', Host: 'rebound.example:80' },
      body,
      403,
      'ERR_HTTP_HOST',
    ],
  ];
  for (const [what, headers, b, status, code] of cases) {
    const r = await req(url, { method: 'POST', headers, body: b });
    assert.equal(r.status, status, what);
    assert.equal(r.json?.error?.code, code, what);
  }
  assert.equal((await req(`${web.url}/api/status`, { headers: { Host: 'rebound.example' } })).status, 403);
  assert.equal(
    (await req(url, { method: 'PUT', headers: { 'Content-Type': 'application/json' }, body })).status,
    405,
  );
  assert.equal((await req(`${web.url}/api/buses`, { method: 'OPTIONS' })).status, 405);
  assert.equal(
    (
      await req(`${web.url}/api/buses`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: '{}',
      })
    ).status,
    405,
  );
  await sleep(50);
  assert.equal(drv.received().length, 0, 'no refused request reached the bus');
  // Same origin, JSON: accepted; no Origin (curl, scripts): accepted.
  assert.equal(
    (
      await req(url, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Origin: web.url },
        body,
      })
    ).status,
    200,
  );
  assert.equal(
    (await req(url, { method: 'POST', headers: { 'Content-Type': 'application/json; charset=utf-8' }, body }))
      .status,
    200,
  );
  await drv.waitFrames(2);
  const m = parseMetrics((await req(`${web.url}/metrics`)).text);
  assert.equal(sample(m, 'vhost_http_refused_total', { reason: 'origin' }), 3);
  assert.equal(sample(m, 'vhost_http_refused_total', { reason: 'content_type' }), 3);
  // The page itself is served with a content security policy.
  const page = await req(`${web.url}/`);
  assert.equal(page.status, 200);
  assert.match(String(page.headers['content-security-policy']), /default-src 'self'/);
});

test('with a token every request needs it: header, or ?token= once then a cookie', async (t) => {
  const { can } = startTestDaemon(t, { sockets: 1 });
  const token = 'tok-0123456789abcdef';
  const web = await startWeb(t, can, { token });
  const none = await req(`${web.url}/api/status`);
  assert.equal(none.status, 401);
  assert.equal(none.json.error.code, 'ERR_HTTP_UNAUTHORIZED');
  assert.equal((await req(`${web.url}/metrics`)).status, 401);
  assert.equal((await req(`${web.url}/`)).status, 401);
  assert.equal(
    (await req(`${web.url}/api/status`, { headers: { Authorization: 'Bearer wrong-token-xxxxxxxx' } }))
      .status,
    401,
  );
  assert.equal(
    (await req(`${web.url}/api/status`, { headers: { Authorization: `Bearer ${token}` } })).status,
    200,
  );
  assert.equal(
    (await req(`${web.url}/metrics`, { headers: { Authorization: `Bearer ${token}` } })).status,
    200,
  );
  // Foreign Host names are fine with a token (it is the check then), changes still need the origin.
  assert.equal(
    (
      await req(`${web.url}/api/status`, {
        headers: { Authorization: `Bearer ${token}`, Host: 'can-box.lan:8080' },
      })
    ).status,
    200,
  );
  const post = (headers: Record<string, string>) =>
    req(`${web.url}/api/buses/default/frames`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', ...headers },
      body: '{"frame":"123#"}',
    });
  assert.equal((await post({})).status, 401);
  assert.equal((await post({ Authorization: `Bearer ${token}`, Origin: 'http://evil.example' })).status, 403);
  assert.equal((await post({ Authorization: `Bearer ${token}` })).status, 200);

  const wrong = await req(`${web.url}/?token=nope`);
  assert.equal(wrong.status, 401);
  const login = await req(`${web.url}/?token=${token}&x=1`);
  assert.equal(login.status, 303);
  assert.equal(login.headers.location, '/?x=1', 'the token leaves the URL');
  const cookie = String(login.headers['set-cookie']);
  assert.match(cookie, /HttpOnly/);
  assert.match(cookie, /SameSite=Strict/);
  const jar = cookie.split(';')[0]!;
  assert.equal((await req(`${web.url}/`, { headers: { Cookie: jar } })).status, 200);
  assert.equal((await post({ Cookie: jar, Origin: web.url })).status, 200);
  assert.equal((await post({ Cookie: 'vhost_token=bad' })).status, 401);
});

test('a non-loopback address without a token is refused before listening', () => {
  const make = (host: string, token: string | null) =>
    new HttpServer({ host, port: 0, token, log: { debugEnabled: false } as never, routes: [], files: [] });
  assert.throws(() => make('0.0.0.0', null), /needs a token/);
  assert.throws(() => make('192.0.2.1', null), /needs a token/);
  assert.throws(() => make('::', null), /needs a token/);
  assert.doesNotThrow(() => make('127.0.0.1', null));
  assert.doesNotThrow(() => make('::1', null));
  assert.doesNotThrow(() => make('0.0.0.0', 'a-token-of-16-chars'));
});
