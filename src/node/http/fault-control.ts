/**
 * Faults on bus ports, as the control API and the monitor page drive them: inject one on a port of a
 * bus (for a duration or until cleared), clear one or all, list the active ones.
 *
 * `FaultControl` is the seam: the web layer only talks to it. `HubFaultControl` is the daemon's: it
 * hands every fault to the bus's own fault model (`CanHub.injectFault`, which applies drops, delays,
 * controller states and, on a timed bus, bit-rate mismatches, missing acknowledgements and error
 * frames) and numbers the faults of all buses in one sequence for the API. Faults given on the
 * command line (`--fault`) are the hubs' too, so they show here and can be cleared here.
 */
import { CanHubError } from '../../core/bus/errors.js';
import {
  MAX_FAULT_DURATION_MS,
  PORT_FAULT_KINDS,
  type PortFault,
  type PortFaultKind,
} from '../../core/bus/faults.js';
import { BUS_STATES, type BusState, type CanHub } from '../../core/bus/hub.js';
import { CodedError } from '../errors.js';

export { PORT_FAULT_KINDS, type PortFault, type PortFaultKind } from '../../core/bus/faults.js';

export interface ActiveFault {
  readonly id: number;
  readonly bus: string;
  /** The port's name, and its hub id while a port of that name is attached (null: the fault waits). */
  readonly port: string;
  readonly portId: number | null;
  readonly fault: PortFault;
  /** Wall-clock milliseconds. */
  readonly since: number;
  /** When it ends by itself (wall-clock ms), or null: until cleared. */
  readonly until: number | null;
  /** What it did so far: frames dropped, delayed or destroyed, error flags sent. */
  readonly hits: number;
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

export { MAX_FAULT_DURATION_MS };

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

/**
 * The daemon's FaultControl: every fault goes to its bus's fault model. `hubOf(bus)` returns the
 * bus's hub or undefined for an unknown name; `buses()` lists the bus names.
 */
export class HubFaultControl implements FaultControl {
  readonly kinds: readonly PortFaultKind[] = PORT_FAULT_KINDS;
  readonly #hubOf: (bus: string) => CanHub | undefined;
  readonly #buses: () => readonly string[];
  /** API id -> (bus, the hub's own id), and back. */
  readonly #byId = new Map<number, { bus: string; hubId: number }>();
  readonly #byHub = new Map<string, number>();
  #nextId = 1;
  /** Faults injected through this control since start, by kind (for the metrics). */
  readonly injected: Record<string, number> = {};

  constructor(hubOf: (bus: string) => CanHub | undefined, buses: () => readonly string[]) {
    this.#hubOf = hubOf;
    this.#buses = buses;
  }

  #idOf(bus: string, hubId: number): number {
    const key = `${bus}\u0000${hubId}`;
    let id = this.#byHub.get(key);
    if (id === undefined) {
      id = this.#nextId++;
      this.#byHub.set(key, id);
      this.#byId.set(id, { bus, hubId });
    }
    return id;
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
    // The API injects on ports that are there (a typo is an error, not a fault waiting forever);
    // the hub keeps the fault on that port name across reconnects.
    const p = hub.ports().find((x) => (typeof port === 'number' ? x.id === port : x.name === port));
    if (p === undefined) {
      throw new FaultError('ERR_FAULT_UNKNOWN_PORT', `bus "${bus}" has no port ${JSON.stringify(port)}`);
    }
    let hubId: number;
    try {
      hubId = hub.injectFault(p.name, checked, d === undefined ? {} : { durationMs: d });
    } catch (err) {
      if (err instanceof CanHubError) {
        throw new FaultError(
          err.code === 'ERR_BUS_NOT_TIMED' ? 'ERR_FAULT_NOT_AVAILABLE' : 'ERR_FAULT_INVALID',
          err.message,
        );
      }
      throw err;
    }
    this.injected[checked.kind] = (this.injected[checked.kind] ?? 0) + 1;
    const id = this.#idOf(bus, hubId);
    const view = this.list().find((f) => f.id === id);
    if (view === undefined) throw new FaultError('ERR_FAULT_INVALID', 'the fault ended at once');
    return view;
  }

  clear(id: number): boolean {
    const ref = this.#byId.get(id);
    if (ref === undefined) return false;
    return this.#hubOf(ref.bus)?.clearFault(ref.hubId) ?? false;
  }

  clearAll(filter: { bus?: string | undefined; port?: number | string | undefined } = {}): number {
    let n = 0;
    for (const f of this.list()) {
      if (filter.bus !== undefined && f.bus !== filter.bus) continue;
      if (filter.port !== undefined && f.port !== filter.port && f.portId !== filter.port) continue;
      if (this.clear(f.id)) n++;
    }
    return n;
  }

  list(): ActiveFault[] {
    const out: ActiveFault[] = [];
    const nowMs = Date.now();
    for (const bus of this.#buses()) {
      const hub = this.#hubOf(bus);
      if (hub === undefined) continue;
      const nowNs = hub.now();
      const wall = (ns: bigint | null): number | null =>
        ns === null ? null : Math.round(nowMs - Number(nowNs - ns) / 1e6);
      for (const f of hub.faults()) {
        out.push({
          id: this.#idOf(bus, f.id),
          bus,
          port: f.port,
          portId: f.portId,
          fault: f.fault,
          since: wall(f.sinceNs) ?? nowMs,
          until: wall(f.untilNs),
          hits: f.hits,
        });
      }
    }
    return out;
  }

  /** The faults belong to the buses: they outlive the web server. */
  close(): void {}
}
