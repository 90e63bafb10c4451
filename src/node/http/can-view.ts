/**
 * The CAN daemon as the API, the page and the metrics see it: every bus with its ports (guests, host
 * interfaces, links, captures, replays, the monitor's own), each guest's controller state and
 * counters. Built on demand from the live counters (allocates: once per request or scrape).
 */
import type { BusState, PortStats } from '../../core/bus/hub.js';
import type { CanDeviceStats } from '../../core/devices/can/can-device.js';
import { CanStatus } from '../../core/devices/can/constants.js';
import type { LogFields } from '../../core/util/log.js';
import type { CanDaemon } from '../can/can-daemon.js';

export type GuestController = 'stopped' | 'started' | 'bus-off';

/** What kind of thing a hub port is. */
export type PortKindName = 'guest' | 'monitor' | 'api' | 'other' | string;

export interface GuestView {
  /** Socket index. */
  readonly guest: number;
  readonly path: string;
  readonly bus: string;
  readonly connected: boolean;
  readonly connections: number;
  readonly refused: number;
  /** The controller as the guest sees it (bus-off: stopped with the bus-off status bit); null while disconnected. */
  readonly controller: GuestController | null;
  readonly status: number;
  /** The device's counters while connected (they restart with each connection). */
  readonly stats: Readonly<CanDeviceStats> | null;
  /** Its port on the bus while connected. */
  readonly port: string | null;
}

export interface PortView {
  readonly id: number;
  readonly name: string;
  readonly kind: PortKindName;
  readonly guest?: number;
  readonly busState: BusState;
  readonly receiving: boolean;
  readonly queued: number;
  readonly stats: Readonly<PortStats>;
}

export interface AttachmentView {
  readonly kind: string;
  readonly name: string;
  readonly stats: LogFields;
}

export interface BusView {
  readonly name: string;
  readonly kind: 'virtual' | 'host';
  readonly frames: number;
  readonly bytes: number;
  readonly bits: number;
  readonly droppedOverflow: number;
  readonly errorFrames: number;
  readonly busLoad: number;
  readonly connectedGuests: number;
  readonly ports: PortView[];
  readonly guests: GuestView[];
  readonly attachments: AttachmentView[];
}

/** Port names the web layer itself uses on every bus. */
export const MONITOR_PORT = 'web-monitor';
export const API_PORT = 'web';

export function guestViews(can: CanDaemon): GuestView[] {
  return can.daemon.status().map((s, i) => {
    const d = can.device(i);
    const busOff = d !== null && (d.configStatus & CanStatus.CTRL_BUSOFF) !== 0;
    return {
      guest: i,
      path: s.path,
      bus: can.hubFor(i).name,
      connected: s.connected,
      connections: s.connections,
      refused: s.refused,
      controller: d === null ? null : busOff ? 'bus-off' : d.controllerState,
      status: d?.configStatus ?? 0,
      stats: d === null ? null : { ...d.stats, txRejected: { ...d.stats.txRejected } },
      port: d?.port.name ?? null,
    };
  });
}

export function busViews(can: CanDaemon, only?: string): BusView[] {
  const guests = guestViews(can);
  const out: BusView[] = [];
  for (const [name, spec] of can.buses) {
    if (only !== undefined && name !== only) continue;
    if (!can.hubs.has(name)) continue; // the daemon stopped: do not create its buses again
    const hub = can.hubs.get(name);
    const st = hub.stats();
    const mine = guests.filter((g) => g.bus === name);
    const attachments = can.attachments.filter((a) => a.bus === name);
    const ports: PortView[] = hub.ports().map((p) => {
      const g = mine.find((x) => x.port === p.name && can.device(x.guest)?.port === p);
      const a = attachments.find((x) => x.name === p.name);
      const kind: PortKindName =
        g !== undefined
          ? 'guest'
          : a !== undefined
            ? a.kind
            : p.name === MONITOR_PORT
              ? 'monitor'
              : p.name === API_PORT
                ? 'api'
                : 'other';
      return {
        id: p.id,
        name: p.name,
        kind,
        ...(g === undefined ? {} : { guest: g.guest }),
        busState: p.busState,
        receiving: p.receiving,
        queued: p.queued,
        stats: { ...p.stats },
      };
    });
    out.push({
      name,
      kind: spec.kind,
      frames: st.frames,
      bytes: st.bytes,
      bits: st.bits,
      droppedOverflow: st.droppedOverflow,
      errorFrames: st.errorFrames,
      busLoad: st.busLoad,
      connectedGuests: mine.filter((g) => g.connected).length,
      ports,
      guests: mine,
      attachments: attachments.map((a) => ({ kind: a.kind, name: a.name, stats: a.stats() })),
    });
  }
  return out;
}
