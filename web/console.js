// The console daemon's view: each guest (front-end connected or not) and each of its ports
// (client connected or not, guest port open or not, bytes each way, losses).
import { el, fmt, getJson, setConn } from './monitor.js';

function render(container, guests) {
  container.replaceChildren(
    ...guests.map((g) =>
      el(
        'div',
        { class: 'guest', 'data-guest': g.guest },
        el(
          'div',
          { class: 'bus-head' },
          el('h3', {}, `guest ${g.guest}`),
          el(
            'span',
            { class: `state ${g.connected ? 'state-connected' : 'state-disconnected'}` },
            g.connected ? 'connected' : 'disconnected',
          ),
          el('span', { class: 'muted' }, g.socket),
          el('span', {}, 'connections ', el('b', {}, fmt(g.connections))),
        ),
        el(
          'table',
          {},
          el(
            'thead',
            {},
            el(
              'tr',
              {},
              el('th', {}, 'port'),
              el('th', {}, 'clients at'),
              el('th', {}, 'client'),
              el('th', {}, 'guest'),
              el('th', { class: 'num' }, 'from guest (bytes)'),
              el('th', { class: 'num' }, 'to guest (bytes)'),
              el('th', { class: 'num' }, 'to client (bytes)'),
              el('th', { class: 'num' }, 'dropped (bytes)'),
            ),
          ),
          el(
            'tbody',
            {},
            ...g.ports.map((p) =>
              el(
                'tr',
                { 'data-port': p.label },
                el('td', {}, p.label),
                el('td', { class: 'mono' }, p.address || '-'),
                el('td', { class: p.client ? 'state-connected' : 'muted' }, p.client ? 'connected' : 'none'),
                el('td', {}, p.guestOpen ? 'open' : 'closed'),
                el('td', { class: 'num' }, fmt(p.stats.outputBytes)),
                el('td', { class: 'num' }, fmt(p.stats.clientBytesIn)),
                el('td', { class: 'num' }, fmt(p.stats.clientBytesOut)),
                el('td', { class: 'num' }, fmt(p.stats.scrollbackDropped + p.stats.clientDropped)),
              ),
            ),
          ),
        ),
      ),
    ),
  );
}

export async function start(main) {
  const list = el('div', { id: 'guest-list' });
  main.append(el('section', { id: 'guests-section' }, el('h2', {}, 'Guests and ports'), list));
  const refresh = async () => {
    try {
      const r = await getJson('/api/guests');
      render(list, r.guests);
      setConn('live', true);
    } catch (err) {
      setConn(`error: ${err.message}`, false);
    }
  };
  await refresh();
  setInterval(refresh, 1000);
}
