/**
 * `/metrics` of vhost-device-can: per guest, per bus and per bus port; the monitor's own streams;
 * faults; HTTP requests; the build. The names are listed in the README ("Metrics").
 */
import { BUS_STATES } from '../../core/bus/hub.js';
import { TxReject } from '../../core/devices/can/tx-request.js';
import type { BusView, GuestView } from './can-view.js';
import type { ActiveFault } from './fault-control.js';
import type { FrameStreamsStats } from './frame-streams.js';
import { MetricsKit, snake } from './metrics-kit.js';
import type { HttpServerStats } from './server.js';

export interface CanSnapshot {
  readonly buses: readonly BusView[];
  readonly guests: readonly GuestView[];
  readonly streams: Readonly<FrameStreamsStats>;
  readonly tapFrames: ReadonlyMap<string, number>;
  readonly faults: readonly ActiveFault[];
  readonly faultsInjected: Readonly<Record<string, number>>;
  readonly http: Readonly<HttpServerStats>;
  readonly version: string;
}

const CONTROLLER_STATES = ['stopped', 'started', 'bus-off'] as const;

export function canMetrics(
  take: () => CanSnapshot,
  opts: { processMetrics?: boolean } = {},
): MetricsKit<CanSnapshot> {
  const m = new MetricsKit(take, opts);
  const gl = (g: GuestView): Record<string, string> => ({ guest: String(g.guest), bus: g.bus });
  const connected = (s: CanSnapshot): GuestView[] => s.guests.filter((g) => g.stats !== null);

  m.gauge('vhost_can_build_info', 'Build of the daemon (always 1).', ['version', 'node'], (s, e) =>
    e({ version: s.version, node: process.versions.node }, 1),
  );

  // ---- guests (one vhost-user socket each; counters restart with each connection) ----
  m.gauge(
    'vhost_can_guest_connected',
    'Whether a front-end is connected to the guest socket (0/1).',
    ['guest', 'bus'],
    (s, e) => {
      for (const g of s.guests) e(gl(g), g.connected ? 1 : 0);
    },
  );
  m.counter(
    'vhost_can_guest_connections_total',
    'Front-end connections accepted on the guest socket.',
    ['guest', 'bus'],
    (s, e) => {
      for (const g of s.guests) e(gl(g), g.connections);
    },
  );
  m.counter(
    'vhost_can_guest_refused_connections_total',
    'Connections refused because the guest socket already had a front-end.',
    ['guest', 'bus'],
    (s, e) => {
      for (const g of s.guests) e(gl(g), g.refused);
    },
  );
  m.gauge(
    'vhost_can_controller_state',
    'Controller state of the guest (1 for the current state; all 0 while disconnected).',
    ['guest', 'bus', 'state'],
    (s, e) => {
      for (const g of s.guests) {
        for (const st of CONTROLLER_STATES) e({ ...gl(g), state: snake(st) }, g.controller === st ? 1 : 0);
      }
    },
  );
  m.counter(
    'vhost_can_guest_frames_total',
    'Frames the guest sent onto the bus (dir=tx, completed OK) and received from it (dir=rx, delivered).',
    ['guest', 'bus', 'dir'],
    (s, e) => {
      for (const g of connected(s)) {
        e({ ...gl(g), dir: 'tx' }, g.stats!.txOk);
        e({ ...gl(g), dir: 'rx' }, g.stats!.rxDelivered);
      }
    },
  );
  m.counter(
    'vhost_can_guest_bytes_total',
    'Payload bytes of those frames.',
    ['guest', 'bus', 'dir'],
    (s, e) => {
      for (const g of connected(s)) {
        e({ ...gl(g), dir: 'tx' }, g.stats!.txBytes);
        e({ ...gl(g), dir: 'rx' }, g.stats!.rxBytes);
      }
    },
  );
  m.counter(
    'vhost_can_guest_dropped_frames_total',
    'Frames of the guest not sent (dir=tx: answered NOT_OK, by reason; abandoned: never answered) or not delivered (dir=rx: overflow of the backlog, filtered by the negotiated features, stopped controller, short RX buffer).',
    ['guest', 'bus', 'dir', 'reason'],
    (s, e) => {
      for (const g of connected(s)) {
        const st = g.stats!;
        for (const r of Object.values(TxReject))
          e({ ...gl(g), dir: 'tx', reason: snake(r) }, st.txRejected[r]);
        e({ ...gl(g), dir: 'tx', reason: 'abandoned' }, st.txAbandoned);
        const port = s.buses.find((b) => b.name === g.bus)?.ports.find((p) => p.guest === g.guest);
        e({ ...gl(g), dir: 'rx', reason: 'overflow' }, port?.stats.rxDroppedOverflow ?? 0);
        e({ ...gl(g), dir: 'rx', reason: 'filtered' }, port?.stats.rxFiltered ?? 0);
        e({ ...gl(g), dir: 'rx', reason: 'stopped' }, port?.stats.rxDiscardedClosed ?? 0);
        e({ ...gl(g), dir: 'rx', reason: 'short_buffer' }, st.rxShortBuffer);
      }
    },
  );
  m.counter(
    'vhost_can_guest_bad_chains_total',
    'Malformed descriptor chains returned unused.',
    ['guest', 'bus'],
    (s, e) => {
      for (const g of connected(s)) e(gl(g), g.stats!.badChains);
    },
  );
  m.counter(
    'vhost_can_guest_bus_off_total',
    'Times the guest controller went bus-off.',
    ['guest', 'bus'],
    (s, e) => {
      for (const g of connected(s)) e(gl(g), g.stats!.busOff);
    },
  );
  m.counter(
    'vhost_can_guest_control_requests_total',
    'Controller start/stop requests of the guest.',
    ['guest', 'bus', 'request'],
    (s, e) => {
      for (const g of connected(s)) {
        e({ ...gl(g), request: 'start' }, g.stats!.ctrlStart);
        e({ ...gl(g), request: 'stop' }, g.stats!.ctrlStop);
      }
    },
  );
  m.counter(
    'vhost_can_guest_control_failed_total',
    'Control requests answered NOT_OK (unknown type, short request, disabled ring).',
    ['guest', 'bus'],
    (s, e) => {
      for (const g of connected(s)) e(gl(g), g.stats!.ctrlNotOk);
    },
  );

  // ---- buses ----
  const perBus = (name: string, help: string, pick: (b: BusView) => number): void =>
    m.counter(name, help, ['bus'], (s, e) => {
      for (const b of s.buses) e({ bus: b.name }, pick(b));
    });
  perBus('vhost_can_bus_frames_total', 'Frames put on the bus.', (b) => b.frames);
  perBus('vhost_can_bus_bytes_total', 'Payload bytes of the frames put on the bus.', (b) => b.bytes);
  perBus('vhost_can_bus_bits_total', 'On-wire bits of those frames (no stuffing).', (b) => b.bits);
  perBus(
    'vhost_can_bus_error_frames_total',
    'Error events reported on the bus (controller state changes, error frames).',
    (b) => b.errorFrames,
  );
  m.counter(
    'vhost_can_bus_dropped_frames_total',
    'Frames a port of the bus could not queue (its receive queue was full), all ports together.',
    ['bus', 'reason'],
    (s, e) => {
      for (const b of s.buses) e({ bus: b.name, reason: 'overflow' }, b.droppedOverflow);
    },
  );
  m.gauge(
    'vhost_can_bus_load_ratio',
    'Bus load over the last second, 0..1 (no stuffing).',
    ['bus'],
    (s, e) => {
      for (const b of s.buses) e({ bus: b.name }, b.busLoad);
    },
  );
  m.gauge(
    'vhost_can_bus_ports',
    "Ports attached to the bus (the monitor's own not counted).",
    ['bus'],
    (s, e) => {
      for (const b of s.buses)
        e({ bus: b.name }, b.ports.filter((p) => p.kind !== 'monitor' && p.kind !== 'api').length);
    },
  );
  m.gauge(
    'vhost_can_bus_connected_guests',
    'Guests on the bus with a connected front-end.',
    ['bus'],
    (s, e) => {
      for (const b of s.buses) e({ bus: b.name }, b.connectedGuests);
    },
  );

  // ---- bus ports (guests, host interfaces, links, captures, replays) ----
  // The monitor's own ports are left out: the tap rejoins the bus as a new port during floods and
  // the API's port lives for one request, so their counters would restart all the time (the
  // monitor has its own metrics below).
  const own = (p: BusView['ports'][number]): boolean => p.kind === 'monitor' || p.kind === 'api';
  const portsOf = (b: BusView): BusView['ports'] => b.ports.filter((p) => !own(p));
  const pl = (b: BusView, p: BusView['ports'][number]): Record<string, string> => ({
    bus: b.name,
    port: p.name,
    kind: p.kind,
  });
  m.counter(
    'vhost_can_port_frames_total',
    'Frames the port put on the bus (dir=tx) and frames queued for it (dir=rx).',
    ['bus', 'port', 'kind', 'dir'],
    (s, e) => {
      for (const b of s.buses)
        for (const p of portsOf(b)) {
          e({ ...pl(b, p), dir: 'tx' }, p.stats.txFrames);
          e({ ...pl(b, p), dir: 'rx' }, p.stats.rxFrames);
        }
    },
  );
  m.counter(
    'vhost_can_port_bytes_total',
    'Payload bytes of those frames.',
    ['bus', 'port', 'kind', 'dir'],
    (s, e) => {
      for (const b of s.buses)
        for (const p of portsOf(b)) {
          e({ ...pl(b, p), dir: 'tx' }, p.stats.txBytes);
          e({ ...pl(b, p), dir: 'rx' }, p.stats.rxBytes);
        }
    },
  );
  m.counter(
    'vhost_can_port_dropped_frames_total',
    'Frames not queued for the port (overflow: queue full; filtered: a type it does not accept; closed: not receiving) and transmits the bus refused (tx_rejected).',
    ['bus', 'port', 'kind', 'reason'],
    (s, e) => {
      for (const b of s.buses)
        for (const p of portsOf(b)) {
          e({ ...pl(b, p), reason: 'overflow' }, p.stats.rxDroppedOverflow);
          e({ ...pl(b, p), reason: 'filtered' }, p.stats.rxFiltered);
          e({ ...pl(b, p), reason: 'closed' }, p.stats.rxDiscardedClosed);
          e({ ...pl(b, p), reason: 'tx_rejected' }, p.stats.txRejected);
        }
    },
  );
  m.gauge(
    'vhost_can_port_queued_frames',
    'Frames waiting in the port queue.',
    ['bus', 'port', 'kind'],
    (s, e) => {
      for (const b of s.buses) for (const p of portsOf(b)) e(pl(b, p), p.queued);
    },
  );
  m.gauge(
    'vhost_can_port_state',
    'Controller state of the port on the bus (1 for the current state).',
    ['bus', 'port', 'kind', 'state'],
    (s, e) => {
      for (const b of s.buses)
        for (const p of portsOf(b))
          for (const st of BUS_STATES) e({ ...pl(b, p), state: snake(st) }, p.busState === st ? 1 : 0);
    },
  );
  m.counter(
    'vhost_can_attachment_counter_total',
    'Counters of host interfaces, links, captures and replays, by name (as in their --stats-interval lines).',
    ['bus', 'port', 'kind', 'counter'],
    (s, e) => {
      for (const b of s.buses)
        for (const a of b.attachments)
          for (const [k, v] of Object.entries(a.stats)) {
            if (typeof v === 'number' && Number.isFinite(v) && v >= 0) {
              e({ bus: b.name, port: a.name, kind: a.kind, counter: snake(k) }, v);
            }
          }
    },
  );
  m.gauge(
    'vhost_can_attachment_state',
    'State word of a host interface, link, capture or replay (1 for the current one).',
    ['bus', 'port', 'kind', 'state'],
    (s, e) => {
      for (const b of s.buses)
        for (const a of b.attachments) {
          const st = a.stats.state;
          if (typeof st === 'string') e({ bus: b.name, port: a.name, kind: a.kind, state: st }, 1);
        }
    },
  );

  // ---- faults and the monitor ----
  m.gauge('vhost_can_faults_active', 'Faults active on bus ports.', ['kind'], (s, e) => {
    const by: Record<string, number> = { 'bus-state': 0 };
    for (const f of s.faults) by[f.fault.kind] = (by[f.fault.kind] ?? 0) + 1;
    for (const [k, n] of Object.entries(by)) e({ kind: snake(k) }, n);
  });
  m.counter('vhost_can_faults_injected_total', 'Faults injected through the API.', ['kind'], (s, e) => {
    const by: Record<string, number> = { 'bus-state': 0, ...s.faultsInjected };
    for (const [k, n] of Object.entries(by)) e({ kind: snake(k) }, n);
  });
  m.gauge('vhost_can_monitor_streams', 'Frame streams open now.', [], (s, e) => e({}, s.streams.streams));
  m.counter('vhost_can_monitor_streams_opened_total', 'Frame streams opened.', [], (s, e) =>
    e({}, s.streams.opened),
  );
  m.counter(
    'vhost_can_monitor_streams_cut_total',
    'Frame streams cut off because the viewer did not read.',
    [],
    (s, e) => e({}, s.streams.cut),
  );
  m.counter(
    'vhost_can_monitor_streams_refused_total',
    'Frame streams refused because the most allowed were open.',
    [],
    (s, e) => e({}, s.streams.refused),
  );
  m.counter(
    'vhost_can_monitor_stream_frames_total',
    'Frames matching a viewer filter: sent, skipped (rate limit or congested viewer), lost (overwritten in the tap before the viewer read them).',
    ['result'],
    (s, e) => {
      e({ result: 'sent' }, s.streams.sent);
      e({ result: 'skipped' }, s.streams.skipped);
      e({ result: 'lost' }, s.streams.lost);
    },
  );
  m.counter(
    'vhost_can_monitor_tap_frames_total',
    'Frames and error events the monitor tap of a bus copied.',
    ['bus'],
    (s, e) => {
      for (const [bus, n] of s.tapFrames) e({ bus }, n);
    },
  );
  httpMetrics(m);
  return m;
}

/** HTTP request counters, shared by both daemons. */
export function httpMetrics<S extends { readonly http: Readonly<HttpServerStats> }>(m: MetricsKit<S>): void {
  m.counter('vhost_http_requests_total', 'HTTP requests answered, by status code.', ['code'], (s, e) => {
    for (const [code, n] of Object.entries(s.http.requests)) e({ code }, n);
  });
  m.counter(
    'vhost_http_refused_total',
    'HTTP requests refused by a check (host, token, origin, content_type, body_size, json, method, url).',
    ['reason'],
    (s, e) => {
      for (const [reason, n] of Object.entries(s.http.refused)) e({ reason }, n);
    },
  );
}
