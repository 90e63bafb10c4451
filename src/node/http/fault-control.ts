/**
 * Faults on bus ports, as the control API and the monitor page drive them: inject one on a port of a
 * bus (for a duration or until cleared), clear one or all, list the active ones.
 *
 * `FaultControl` is the seam: the web layer only talks to it. `BusStateFaultControl` implements the
 * controller-state faults (bus-off, error-passive, error-warning) with the hub's `injectBusState`;
 * every other kind answers `ERR_FAULT_NOT_AVAILABLE`, for a build whose hub has no fault model of its
 * own. Overlapping state faults on one port: the port shows the most severe active one, and returns
 * to error-active when none is left. A fault ends by itself when its port leaves the bus.
 */
import { BUS_STATES, type BusState, type CanHub, type HubPort } from '../../core/bus/hub.js';
import { CodedError } from '../errors.js';

export type PortFault =
  | { kind: 'bus-state'; state: BusState }
  | { kind: 'drop'; ratio: number }
  | { kind: 'delay'; ms: number }
  | { kind: 'bitrate-mismatch' }
  | { kind: 'no-ack' }
  | { kind: 'error-frames'; perSecond: number };

export type PortFaultKind = PortFault['kind'];

export const PORT_FAULT_KINDS: readonly PortFaultKind[] = Object.freeze([
  'bus-state',
  'drop',
  'delay',
  'bitrate-mismatch',
  'no-ack',
  'error-frames',
]);

export interface ActiveFault {
  readonly id: number;
  readonly bus: string;
  /** The port's name and hub id when the fault was injected. */
  readonly port: string;
  readonly portId: number;
  readonly fault: PortFault;
  /** Wall-clock milliseconds. */
  readonly since: number;
  /** When it ends by itself (wall-clock ms), or null: until cleared. */
  readonly until: number | null;
}

export type FaultErrorCode =
  | 'ERR_FAULT_INVALID'
  | 'ERR_FAULT_NOT_AVAILABLE'
  | 'ERR_FAULT_UNKNOWN_BUS'
  | 'ERR_FAULT_UNKNOWN_PORT';

export class FaultError extends CodedError<FaultErrorCode> {}

export interface FaultOptions {
  /** Ends the fault after this many milliseconds (1 .. MAX_FAULT_DURATION_MS); default: until cleared. */
  durationMs?: number | undefined;
}

export interface FaultControl {
  /** The fault kinds this build can inject. */
  readonly kinds: readonly PortFaultKind[];
  /** Throws FaultError (unknown bus or port, invalid fault, kind not available). */
  inject(bus: string, port: number | string, fault: PortFault, opts?: FaultOptions): ActiveFault;
  /** Ends one fault; false when no such fault is active. */
  clear(id: number): boolean;
  /** Ends every fault (of one bus, of one port of it); how many were ended. */
  clearAll(filter?: { bus?: string | undefined; port?: number | string | undefined }): number;
  list(): ActiveFault[];
  /** Ends every fault and timer. */
  close(): void;
}

export const MAX_FAULT_DURATION_MS = 24 * 3600 * 1000;

/** Severity order for overlapping state faults on one port. */
const SEVERITY: Readonly<Record<BusState, number>> = {
  'error-active': 0,
  'error-warning': 1,
  'error-passive': 2,
  'bus-off': 3,
};

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Checks a fault given as JSON: the PortFault, or a message saying what is wrong. */
export function parseFault(v: unknown): PortFault | string {
  if (!isObject(v)) return 'fault must be an object with a "kind"';
  const kind = v.kind;
  const num = (name: string, min: number, max: number): number | string => {
    const n = v[name];
    if (typeof n !== 'number' || !Number.isFinite(n) || n < min || n > max) {
      return `fault ${String(kind)} needs "${name}" between ${min} and ${max}`;
    }
    return n;
  };
  switch (kind) {
    case 'bus-state': {
      const s = v.state;
      if (typeof s !== 'string' || !(BUS_STATES as readonly string[]).includes(s)) {
        return `fault bus-state needs "state": one of ${BUS_STATES.join(', ')}`;
      }
      return { kind, state: s as BusState };
    }
    case 'drop': {
      const r = num('ratio', 0, 1);
      return typeof r === 'string' ? r : { kind, ratio: r };
    }
    case 'delay': {
      const ms = num('ms', 0, 60_000);
      return typeof ms === 'string' ? ms : { kind, ms };
    }
    case 'error-frames': {
      const n = num('perSecond', 0, 100_000);
      return typeof n === 'string' ? n : { kind, perSecond: n };
    }
    case 'bitrate-mismatch':
    case 'no-ack':
      return { kind };
    default:
      return `unknown fault kind ${JSON.stringify(kind)} (known: ${PORT_FAULT_KINDS.join(', ')})`;
  }
}

interface Entry {
  view: ActiveFault;
  hub: CanHub;
  port: HubPort;
  state: BusState;
  timer: ReturnType<typeof setTimeout> | null;
}

/**
 * Controller-state faults through `CanHub.injectBusState`. `hubOf(bus)` returns the bus's hub or
 * undefined for an unknown name.
 */
export class BusStateFaultControl implements FaultControl {
  readonly kinds: readonly PortFaultKind[] = Object.freeze(['bus-state'] as PortFaultKind[]);
  readonly #hubOf: (bus: string) => CanHub | undefined;
  readonly #faults = new Map<number, Entry>();
  #nextId = 1;
  /** Faults injected since start, by kind (for the metrics). */
  readonly injected: Record<string, number> = {};

  constructor(hubOf: (bus: string) => CanHub | undefined) {
    this.#hubOf = hubOf;
  }

  inject(bus: string, port: number | string, fault: PortFault, opts: FaultOptions = {}): ActiveFault {
    const checked = parseFault(fault);
    if (typeof checked === 'string') throw new FaultError('ERR_FAULT_INVALID', checked);
    const d = opts.durationMs;
    if (d !== undefined && (!Number.isInteger(d) || d < 1 || d > MAX_FAULT_DURATION_MS)) {
      throw new FaultError(
        'ERR_FAULT_INVALID',
        `durationMs must be an integer 1..${MAX_FAULT_DURATION_MS} (or absent: until cleared)`,
      );
    }
    const hub = this.#hubOf(bus);
    if (hub === undefined) throw new FaultError('ERR_FAULT_UNKNOWN_BUS', `no bus called "${bus}"`);
    const p = hub.ports().find((x) => (typeof port === 'number' ? x.id === port : x.name === port));
    if (p === undefined) {
      throw new FaultError('ERR_FAULT_UNKNOWN_PORT', `bus "${bus}" has no port ${JSON.stringify(port)}`);
    }
    if (checked.kind !== 'bus-state') {
      throw new FaultError(
        'ERR_FAULT_NOT_AVAILABLE',
        `fault kind ${checked.kind} is not available in this build (available: ${this.kinds.join(', ')})`,
      );
    }
    this.#prune();
    const now = Date.now();
    const id = this.#nextId++;
    const view: ActiveFault = {
      id,
      bus,
      port: p.name,
      portId: p.id,
      fault: checked,
      since: now,
      until: d === undefined ? null : now + d,
    };
    const e: Entry = { view, hub, port: p, state: checked.state, timer: null };
    if (d !== undefined) {
      e.timer = setTimeout(() => this.clear(id), d);
      e.timer.unref?.();
    }
    this.#faults.set(id, e);
    this.injected[checked.kind] = (this.injected[checked.kind] ?? 0) + 1;
    this.#apply(hub, p);
    return view;
  }

  clear(id: number): boolean {
    const e = this.#faults.get(id);
    if (e === undefined) return false;
    this.#faults.delete(id);
    if (e.timer !== null) clearTimeout(e.timer);
    this.#apply(e.hub, e.port);
    return true;
  }

  clearAll(filter: { bus?: string | undefined; port?: number | string | undefined } = {}): number {
    let n = 0;
    for (const [id, e] of [...this.#faults]) {
      if (filter.bus !== undefined && e.view.bus !== filter.bus) continue;
      if (filter.port !== undefined && e.view.port !== filter.port && e.view.portId !== filter.port) continue;
      if (this.clear(id)) n++;
    }
    return n;
  }

  list(): ActiveFault[] {
    this.#prune();
    return [...this.#faults.values()].map((e) => e.view);
  }

  close(): void {
    for (const e of this.#faults.values()) if (e.timer !== null) clearTimeout(e.timer);
    this.#faults.clear();
  }

  /** Forgets faults whose port left the bus (a guest that disconnected): nothing to restore. */
  #prune(): void {
    for (const [id, e] of this.#faults) {
      if (!e.port.attached) {
        if (e.timer !== null) clearTimeout(e.timer);
        this.#faults.delete(id);
      }
    }
  }

  /** Puts the port in the most severe state its active faults ask for (error-active when none). */
  #apply(hub: CanHub, port: HubPort): void {
    if (!port.attached) return;
    let state: BusState = 'error-active';
    for (const e of this.#faults.values()) {
      if (e.port === port && SEVERITY[e.state] > SEVERITY[state]) state = e.state;
    }
    if (port.busState !== state) hub.injectBusState(port.id, state);
  }
}
