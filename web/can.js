// The CAN daemon's view: buses and ports with counters and fault buttons, a chart of frame rate
// and bus load, a form to send a frame, the active faults, and a rolling frame table fed by the
// daemon's frame stream (Server-Sent Events), with an optional CANopen column.
import { el, fmt, getJson, sendJson, setConn } from './monitor.js';

const MAX_ROWS = 500;
const FAULT_STATES = ['bus-off', 'error-passive', 'error-warning'];
let buses = [];
let source = null;
let paused = false;
let chart = null;

function section(id, title, ...children) {
  return el('section', { id: `${id}-section` }, el('h2', {}, title), ...children);
}

function option(value, text, selected) {
  return el('option', { value, selected: Boolean(selected) }, text ?? value);
}

function fillBusSelect(sel, withAll) {
  const keep = sel.value;
  sel.replaceChildren(...(withAll ? [option('', 'all buses')] : []), ...buses.map((b) => option(b.name)));
  if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
}

// ---- buses and ports ---------------------------------------------------------------------------

function portState(port, guest) {
  if (guest !== undefined) {
    if (!guest.connected) return 'disconnected';
    const ctl = guest.controller ?? 'stopped';
    return port && port.busState !== 'error-active' && ctl !== 'bus-off' ? `${ctl} (${port.busState})` : ctl;
  }
  return port.busState;
}

function stateClass(state) {
  return `state state-${state.split(' ')[0]}`;
}

// Faults that need no timed bus, besides the controller states: a share of the port's frames lost,
// its frames late (the API takes any ratio and delay; the buttons offer one of each).
const OTHER_FAULTS = [
  { name: 'drop 50%', fault: { kind: 'drop', ratio: 0.5 } },
  { name: 'delay 20 ms', fault: { kind: 'delay', ms: 20 } },
];

function faultButtons(bus, portName) {
  const td = el('td', { class: 'faults' });
  const button = (key, label, fault) =>
    el(
      'button',
      {
        class: 'fault',
        'data-fault': key,
        'data-bus': bus,
        'data-port': portName,
        title: `inject ${label} on ${portName}`,
        onclick: () => injectFault(bus, portName, fault, label),
      },
      label,
    );
  for (const s of FAULT_STATES) td.append(button(s, s, { kind: 'bus-state', state: s }));
  for (const f of OTHER_FAULTS) td.append(button(f.fault.kind, f.name, f.fault));
  td.append(
    el(
      'button',
      {
        class: 'fault',
        'data-fault': 'clear',
        'data-bus': bus,
        'data-port': portName,
        onclick: () => clearFaults(bus, portName),
      },
      'clear',
    ),
  );
  return td;
}

/** Rows keyed by `key`: kept between refreshes (so a button is never replaced under the pointer). */
function syncRows(tbody, items, key, build, update) {
  const seen = new Set();
  for (const it of items) {
    const k = key(it);
    seen.add(k);
    let tr = tbody.querySelector(`tr[data-key="${CSS.escape(k)}"]`);
    if (tr === null) {
      tr = build(it);
      tr.setAttribute('data-key', k);
      tbody.append(tr);
    }
    update(tr, it);
  }
  for (const tr of [...tbody.children]) if (!seen.has(tr.getAttribute('data-key'))) tr.remove();
}

function renderBuses(container) {
  for (const b of buses) {
    let card = container.querySelector(`div.bus[data-bus="${CSS.escape(b.name)}"]`);
    if (card === null) {
      card = el(
        'div',
        { class: 'bus', 'data-bus': b.name },
        el(
          'div',
          { class: 'bus-head' },
          el('h3', {}, b.name),
          el('span', { class: 'muted' }, b.kind === 'host' ? 'host interface' : 'virtual bus'),
          el('span', {}, 'frames ', el('b', { class: 'frames' })),
          el('span', {}, 'load ', el('b', { class: 'load' })),
          el('span', {}, 'guests ', el('b', { class: 'guests' })),
          el('span', {}, 'overflow drops ', el('b', { class: 'drops' })),
        ),
        el(
          'table',
          { class: 'ports' },
          el(
            'thead',
            {},
            el(
              'tr',
              {},
              el('th', {}, 'port'),
              el('th', {}, 'kind'),
              el('th', {}, 'state'),
              el('th', { class: 'num' }, 'tx frames'),
              el('th', { class: 'num' }, 'rx frames'),
              el('th', { class: 'num' }, 'dropped'),
              el('th', {}, 'faults'),
            ),
          ),
          el('tbody'),
        ),
      );
      container.append(card);
    }
    card.querySelector('.frames').textContent = fmt(b.frames);
    card.querySelector('.load').textContent = `${(b.busLoad * 100).toFixed(1)} %`;
    card.querySelector('.guests').textContent = `${b.connectedGuests}/${b.guests.length}`;
    card.querySelector('.drops').textContent = fmt(b.droppedOverflow);
    // One row per port, plus one per guest socket with no front-end (it has no port then).
    const rows = b.ports.map((p) => ({
      port: p,
      guest: p.guest === undefined ? undefined : b.guests.find((g) => g.guest === p.guest),
    }));
    for (const g of b.guests)
      if (!rows.some((r) => r.guest?.guest === g.guest)) rows.push({ port: null, guest: g });
    syncRows(
      card.querySelector('tbody'),
      rows,
      (r) => (r.port ? `port:${r.port.name}` : `guest:${r.guest.guest}`),
      (r) => {
        const name = r.port ? r.port.name : `guest${r.guest.guest}`;
        const tr = el(
          'tr',
          { 'data-bus': b.name, 'data-port': name, ...(r.guest ? { 'data-guest': r.guest.guest } : {}) },
          el('td', { class: 'name' }, name),
          el('td', { class: 'kind' }),
          el('td', { class: 'state' }),
          el('td', { class: 'num tx' }),
          el('td', { class: 'num rx' }),
          el('td', { class: 'num dropped' }),
        );
        tr.append(
          r.port && r.port.kind !== 'monitor' && r.port.kind !== 'api'
            ? faultButtons(b.name, name)
            : el('td'),
        );
        return tr;
      },
      (tr, r) => {
        const st = portState(r.port, r.guest);
        const stTd = tr.querySelector('.state');
        stTd.textContent = st;
        stTd.className = stateClass(st);
        tr.querySelector('.kind').textContent = r.port ? r.port.kind : 'guest';
        const ps = r.port?.stats;
        const gs = r.guest?.stats;
        tr.querySelector('.tx').textContent = fmt(ps?.txFrames ?? gs?.txOk);
        tr.querySelector('.rx').textContent = fmt(gs?.rxDelivered ?? ps?.rxFrames);
        const dropped = ps ? ps.rxDroppedOverflow + ps.txRejected : undefined;
        tr.querySelector('.dropped').textContent = fmt(dropped);
        tr.title = r.guest?.path ?? '';
      },
    );
  }
  for (const card of [...container.querySelectorAll('div.bus')]) {
    if (!buses.some((b) => b.name === card.getAttribute('data-bus'))) card.remove();
  }
}

// ---- faults ------------------------------------------------------------------------------------

function faultDuration() {
  const v = document.getElementById('fault-duration').value.trim();
  return v === '' ? undefined : Number(v);
}

async function injectFault(bus, port, fault, label) {
  const out = document.getElementById('fault-result');
  try {
    const durationMs = faultDuration();
    const r = await sendJson('POST', '/api/faults', {
      bus,
      port,
      fault,
      ...(durationMs === undefined ? {} : { durationMs }),
    });
    out.className = '';
    out.textContent = `fault ${r.fault.id}: ${label} on ${bus}/${port}`;
  } catch (err) {
    out.className = 'error';
    out.textContent = err.message;
  }
  refresh();
}

async function clearFaults(bus, port) {
  const out = document.getElementById('fault-result');
  try {
    const r = await sendJson('DELETE', '/api/faults', { bus, port });
    out.className = '';
    out.textContent = `cleared ${r.cleared} fault(s) on ${bus}/${port}`;
  } catch (err) {
    out.className = 'error';
    out.textContent = err.message;
  }
  refresh();
}

function renderFaults(list) {
  const tbody = document.querySelector('#fault-list tbody');
  syncRows(
    tbody,
    list,
    (f) => String(f.id),
    (f) =>
      el(
        'tr',
        { 'data-fault-id': f.id },
        el('td', {}, String(f.id)),
        el('td', {}, `${f.bus}/${f.port}`),
        el('td', {}, f.fault.kind === 'bus-state' ? f.fault.state : f.fault.kind),
        el('td', { class: 'until' }),
        el(
          'td',
          {},
          el(
            'button',
            { onclick: () => sendJson('DELETE', `/api/faults/${f.id}`).then(refresh, refresh) },
            'clear',
          ),
        ),
      ),
    (tr, f) => {
      tr.querySelector('.until').textContent =
        f.until === null
          ? 'until cleared'
          : `${Math.max(0, Math.ceil((f.until - Date.now()) / 1000))} s left`;
    },
  );
  document.getElementById('fault-none').hidden = list.length > 0;
}

// ---- chart -------------------------------------------------------------------------------------

function loadUplot() {
  if (globalThis.uPlot) return Promise.resolve();
  return new Promise((resolve, reject) => {
    document.head.append(el('link', { rel: 'stylesheet', href: '/vendor/uPlot.min.css' }));
    const s = el('script', { src: '/vendor/uPlot.iife.min.js', onload: resolve, onerror: reject });
    document.head.append(s);
  });
}

function makeChart(target) {
  const opts = {
    width: Math.max(300, target.clientWidth - 10),
    height: 200,
    scales: { x: { time: true }, fps: {}, load: { range: [0, 100] } },
    series: [
      {},
      { label: 'frames/s', scale: 'fps', stroke: '#0969da', width: 1.5 },
      { label: 'load %', scale: 'load', stroke: '#cf222e', width: 1.5 },
    ],
    axes: [
      {},
      { scale: 'fps', label: 'frames/s' },
      { scale: 'load', side: 1, label: 'load %', grid: { show: false } },
    ],
  };
  return new globalThis.uPlot(opts, [[], [], []], target);
}

async function refreshChart() {
  const bus = document.getElementById('chart-bus').value;
  if (!bus || chart === null) return;
  const h = await getJson(`/api/buses/${encodeURIComponent(bus)}/history`);
  chart.setData([h.samples.map((s) => s.t), h.samples.map((s) => s.fps), h.samples.map((s) => s.load * 100)]);
  const last = h.samples.at(-1);
  document.getElementById('chart-now').textContent = last
    ? `${fmt(Math.round(last.fps))} frames/s, load ${(last.load * 100).toFixed(1)} %`
    : '';
}

// ---- frames ------------------------------------------------------------------------------------

function flagsOf(f) {
  if (f.error) return 'ERR';
  return [f.ext ? 'EXT' : '', f.fd ? 'FD' : '', f.brs ? 'BRS' : '', f.esi ? 'ESI' : '', f.rtr ? 'RTR' : '']
    .filter(Boolean)
    .join(' ');
}

function timeOf(t) {
  const d = new Date(t * 1000);
  const us = Math.round((t % 1) * 1e6)
    .toString()
    .padStart(6, '0');
  return `${d.toTimeString().slice(0, 8)}.${us}`;
}

function addFrame(f) {
  if (paused) return;
  const tbody = document.querySelector('#frames tbody');
  const idText = f.error
    ? '-'
    : f.id
        .toString(16)
        .toUpperCase()
        .padStart(f.ext ? 8 : 3, '0');
  const tr = el(
    'tr',
    {
      class: f.error ? 'frame err' : 'frame',
      'data-bus': f.bus,
      'data-id': f.error ? '' : idText,
      'data-port': f.port,
    },
    el('td', {}, timeOf(f.t)),
    el('td', {}, f.bus),
    el('td', {}, f.port),
    el('td', { class: 'id' }, idText),
    el('td', {}, flagsOf(f)),
    el('td', { class: 'num' }, f.error ? '' : String(f.len)),
    el('td', { class: 'data' }, f.error ? f.text : f.data),
    el('td', { class: 'co' }, f.canopen ? f.canopen.summary : ''),
  );
  tbody.prepend(tr);
  while (tbody.children.length > MAX_ROWS) tbody.lastElementChild.remove();
}

function streamUrl() {
  const q = new URLSearchParams();
  const v = (id) => document.getElementById(id).value.trim();
  if (v('f-bus')) q.set('bus', v('f-bus'));
  if (v('f-id')) q.set('id', v('f-id'));
  if (v('f-mask')) q.set('mask', v('f-mask'));
  if (v('f-port')) q.set('port', v('f-port'));
  if (v('f-rate')) q.set('rate', v('f-rate'));
  q.set('errors', document.getElementById('f-errors').checked ? '1' : '0');
  q.set('decode', 'canopen');
  return `/api/stream?${q}`;
}

function openStream() {
  source?.close();
  const out = document.getElementById('stream-stats');
  source = new EventSource(streamUrl());
  source.addEventListener('hello', () => setConn('live', true));
  source.addEventListener('frame', (ev) => addFrame(JSON.parse(ev.data)));
  source.addEventListener('stats', (ev) => {
    const s = JSON.parse(ev.data);
    out.textContent = `sent ${fmt(s.sent)} · skipped ${fmt(s.skipped)} · lost ${fmt(s.lost)} (at most ${fmt(s.rate)} frames/s)`;
  });
  source.onerror = () => setConn('reconnecting', false);
}

// ---- send --------------------------------------------------------------------------------------

async function sendFrame(ev) {
  ev.preventDefault();
  const out = document.getElementById('send-result');
  const bus = document.getElementById('send-bus').value;
  const frame = document.getElementById('send-frame').value.trim();
  try {
    const r = await sendJson('POST', `/api/buses/${encodeURIComponent(bus)}/frames`, { frame });
    out.className = r.dropped > 0 ? 'error' : '';
    out.textContent = r.dropped > 0 ? `dropped by the bus` : `sent ${frame} on ${bus}`;
  } catch (err) {
    out.className = 'error';
    out.textContent = err.message;
  }
}

// ---- layout and refresh --------------------------------------------------------------------------

async function refresh() {
  try {
    const [b, f] = await Promise.all([getJson('/api/buses'), getJson('/api/faults')]);
    buses = b.buses;
    renderBuses(document.getElementById('bus-list'));
    for (const id of ['send-bus', 'chart-bus']) fillBusSelect(document.getElementById(id), false);
    fillBusSelect(document.getElementById('f-bus'), true);
    renderFaults(f.faults);
    await refreshChart();
    if (source !== null && source.readyState === EventSource.OPEN) setConn('live', true);
  } catch (err) {
    setConn(`error: ${err.message}`, false);
  }
}

export async function start(main) {
  const chartDiv = el('div', { id: 'chart' });
  main.append(
    section('buses', 'Buses and ports', el('div', { id: 'bus-list' })),
    el(
      'div',
      { class: 'grid2' },
      section(
        'chart',
        'Frame rate and bus load, last minute',
        el(
          'div',
          { class: 'row' },
          el('select', { id: 'chart-bus', onchange: refreshChart }),
          el('span', { id: 'chart-now', class: 'muted' }),
        ),
        chartDiv,
      ),
      el(
        'div',
        {},
        section(
          'send',
          'Send a frame',
          el(
            'form',
            { id: 'send-form', class: 'row', onsubmit: sendFrame },
            el('select', { id: 'send-bus' }),
            el('input', {
              id: 'send-frame',
              type: 'text',
              value: '123#DEADBEEF',
              title: 'cansend syntax: 123#DEADBEEF, 12345678#00, 123#R, 123##1AABB',
            }),
            el('button', { id: 'send-button', type: 'submit' }, 'Send'),
            el('span', { id: 'send-result' }),
          ),
        ),
        section(
          'faults',
          'Faults',
          el(
            'div',
            { class: 'row' },
            el('label', { for: 'fault-duration' }, 'duration (ms, empty = until cleared)'),
            el('input', { id: 'fault-duration', type: 'text', class: 'short', value: '' }),
            el('span', { id: 'fault-result' }),
          ),
          el('p', { id: 'fault-none', class: 'muted' }, 'No active faults. Use the buttons next to a port.'),
          el('table', { id: 'fault-list' }, el('tbody')),
        ),
      ),
    ),
    section(
      'frames',
      'Frames',
      el(
        'form',
        {
          class: 'row',
          onsubmit: (ev) => {
            ev.preventDefault();
            openStream();
          },
        },
        el('select', { id: 'f-bus' }),
        el('input', { id: 'f-id', type: 'text', class: 'short', placeholder: 'id (hex)' }),
        el('input', { id: 'f-mask', type: 'text', class: 'short', placeholder: 'mask (hex)' }),
        el('input', { id: 'f-port', type: 'text', class: 'short', placeholder: 'sender port' }),
        el('input', { id: 'f-rate', type: 'text', class: 'tiny', placeholder: 'rate/s' }),
        el('label', {}, el('input', { id: 'f-errors', type: 'checkbox', checked: true }), ' error events'),
        el('button', { id: 'f-apply', type: 'submit' }, 'Apply filter'),
        el(
          'label',
          {},
          el('input', {
            id: 'canopen',
            type: 'checkbox',
            onchange: (ev) => document.body.classList.toggle('show-canopen', ev.target.checked),
          }),
          ' CANopen',
        ),
        el(
          'button',
          {
            id: 'pause',
            type: 'button',
            onclick: (ev) => {
              paused = !paused;
              ev.target.textContent = paused ? 'Resume' : 'Pause';
            },
          },
          'Pause',
        ),
        el(
          'button',
          {
            id: 'clear-frames',
            type: 'button',
            onclick: () => document.querySelector('#frames tbody').replaceChildren(),
          },
          'Clear',
        ),
        el('span', { id: 'stream-stats', class: 'muted' }),
      ),
      el(
        'div',
        { id: 'frames-wrap' },
        el(
          'table',
          { id: 'frames' },
          el(
            'thead',
            {},
            el(
              'tr',
              {},
              el('th', {}, 'time'),
              el('th', {}, 'bus'),
              el('th', {}, 'port'),
              el('th', {}, 'id'),
              el('th', {}, 'flags'),
              el('th', { class: 'num' }, 'len'),
              el('th', {}, 'data'),
              el('th', { class: 'co' }, 'CANopen'),
            ),
          ),
          el('tbody'),
        ),
      ),
    ),
  );
  await refresh();
  try {
    await loadUplot();
    chart = makeChart(chartDiv);
  } catch {
    chartDiv.textContent = 'chart library not available';
  }
  openStream();
  setInterval(refresh, 1000);
}
