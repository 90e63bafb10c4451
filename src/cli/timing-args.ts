/**
 * Command-line syntax of the timed bus and faults (docs/timed-bus.md), without side effects:
 *   --bitrate BUS=NOMINAL[/DATA]     e.g. default=500k/2M, bus1=125000
 *   --ack BUS=nodes|always|never
 *   --fault BUS:PORT:KIND[=ARG][@DURATION]
 *       e.g. default:guest0:bitrate-mismatch, default:guest1:drop=10%@30s, ecu:host:vcan0:delay=5ms
 * Every bad value yields a message naming the option and what is expected.
 */
import {
  ACK_MODES,
  type AckMode,
  type BusTiming,
  BusTimingLimits,
  checkFault,
  MAX_FAULT_DURATION_MS,
  type PortFault,
  TIMED_FAULT_KINDS,
} from '../core/bus/faults.js';
import { BUS_STATES, type BusState } from '../core/bus/hub.js';
import type { BusSpec, FaultRequest } from '../node/can/can-daemon.js';

/** A bit rate: an integer with an optional k or M (500000, 500k, 1M, 2.5M). */
export function parseBitrateValue(v: string): number | null {
  const m = /^([0-9]+(?:\.[0-9]+)?)([kKmM]?)$/.exec(v);
  if (m === null) return null;
  const mult = m[2] === '' ? 1 : m[2]!.toLowerCase() === 'k' ? 1e3 : 1e6;
  const n = Math.round(Number(m[1]) * mult * 1e6) / 1e6;
  return Number.isInteger(n) ? n : null;
}

/** A duration with its unit: 250ms, 5s, 2m (also fractions: 0.5s). */
export function parseDurationMs(v: string): number | null {
  const m = /^([0-9]+(?:\.[0-9]+)?)(ms|s|m)$/.exec(v);
  if (m === null) return null;
  const n = Number(m[1]) * (m[2] === 'ms' ? 1 : m[2] === 's' ? 1000 : 60_000);
  return n > 0 ? n : null;
}

/** One `--bitrate BUS=NOMINAL[/DATA]`. */
export function parseBitrateEntry(
  entry: string,
): { bus: string; bitrate: number; dataBitrate?: number } | string {
  const eq = entry.indexOf('=');
  if (eq <= 0) return `--bitrate expects BUS=NOMINAL[/DATA] (e.g. default=500k/2M), got "${entry}"`;
  const bus = entry.slice(0, eq);
  const [nom, data, extra] = entry.slice(eq + 1).split('/');
  const L = BusTimingLimits;
  const bitrate = parseBitrateValue(nom ?? '');
  if (bitrate === null || extra !== undefined) {
    return `--bitrate ${entry}: expected NOMINAL[/DATA] bit rates such as 500000, 500k or 1M`;
  }
  if (bitrate < L.MIN_BITRATE || bitrate > L.MAX_BITRATE) {
    return `--bitrate ${entry}: the nominal bit rate must be ${L.MIN_BITRATE}..${L.MAX_BITRATE} bit/s`;
  }
  if (data === undefined) return { bus, bitrate };
  const dataBitrate = parseBitrateValue(data);
  if (dataBitrate === null || dataBitrate < bitrate || dataBitrate > L.MAX_DATA_BITRATE) {
    return `--bitrate ${entry}: the data bit rate must be from the nominal rate to ${L.MAX_DATA_BITRATE} bit/s`;
  }
  return { bus, bitrate, dataBitrate };
}

/** One `--ack BUS=MODE`. */
export function parseAckEntry(entry: string): { bus: string; ack: AckMode } | string {
  const eq = entry.indexOf('=');
  const mode = entry.slice(eq + 1);
  if (eq <= 0 || !ACK_MODES.includes(mode as AckMode)) {
    return `--ack expects BUS=${ACK_MODES.join('|')}, got "${entry}"`;
  }
  return { bus: entry.slice(0, eq), ack: mode as AckMode };
}

function kindArg(kind: string, arg: string | undefined): PortFault | string {
  const need = (what: string): string => `${kind} needs =${what}`;
  switch (kind) {
    case 'bus-off':
    case 'error-passive':
    case 'error-warning':
      if (arg !== undefined) return `${kind} takes no argument`;
      return { kind: 'bus-state', state: kind };
    case 'bus-state':
      if (!BUS_STATES.includes(arg as BusState)) return `bus-state needs =${BUS_STATES.join('|')}`;
      return { kind: 'bus-state', state: arg as BusState };
    case 'drop': {
      if (arg === undefined) return need('RATIO (0.1 or 10%)');
      const pct = arg.endsWith('%');
      const n = Number(pct ? arg.slice(0, -1) : arg);
      if (arg === '' || !Number.isFinite(n)) return `drop=${arg}: expected a ratio such as 0.1 or 10%`;
      return { kind: 'drop', ratio: pct ? n / 100 : n };
    }
    case 'delay': {
      if (arg === undefined) return need('TIME (5ms, 0.5s; a bare number is ms)');
      const ms = /^[0-9]+(\.[0-9]+)?$/.test(arg) ? Number(arg) : parseDurationMs(arg);
      if (ms === null) return `delay=${arg}: expected a time such as 5ms or 0.5s`;
      return { kind: 'delay', ms };
    }
    case 'bitrate-mismatch':
    case 'no-ack':
      if (arg !== undefined) return `${kind} takes no argument`;
      return { kind };
    case 'error-frames': {
      if (arg === undefined) return need('PER_SECOND');
      const n = Number(arg);
      if (arg === '' || !Number.isFinite(n)) return `error-frames=${arg}: expected a rate per second`;
      return { kind: 'error-frames', perSecond: n };
    }
    default:
      return `unknown fault kind "${kind}" (bus-off, error-passive, error-warning, bus-state=STATE, drop=RATIO, delay=TIME, bitrate-mismatch, no-ack, error-frames=PER_SECOND)`;
  }
}

/**
 * One `--fault BUS:PORT:KIND[=ARG][@DURATION]`. BUS is up to the first ':', KIND from the last ':'
 * on, PORT in between (so port names with ':' such as host:vcan0 work).
 */
export function parseFaultEntry(entry: string): FaultRequest | string {
  const first = entry.indexOf(':');
  const last = entry.lastIndexOf(':');
  const usage = `--fault expects BUS:PORT:KIND[=ARG][@DURATION] (e.g. default:guest0:bitrate-mismatch@10s), got "${entry}"`;
  if (first <= 0 || last <= first + 1 || last === entry.length - 1) return usage;
  const bus = entry.slice(0, first);
  const port = entry.slice(first + 1, last);
  if (/\s/.test(port)) return `--fault ${entry}: bad port name "${port}"`;
  let spec = entry.slice(last + 1);
  let durationMs: number | undefined;
  const at = spec.indexOf('@');
  if (at >= 0) {
    const d = parseDurationMs(spec.slice(at + 1));
    if (d === null || d > MAX_FAULT_DURATION_MS) {
      return `--fault ${entry}: bad duration "${spec.slice(at + 1)}" (e.g. 500ms, 10s, 2m; at most a day)`;
    }
    durationMs = d;
    spec = spec.slice(0, at);
  }
  const eq = spec.indexOf('=');
  const kind = eq < 0 ? spec : spec.slice(0, eq);
  const arg = eq < 0 ? undefined : spec.slice(eq + 1);
  const f = kindArg(kind, arg);
  if (typeof f === 'string') return `--fault ${entry}: ${f}`;
  const checked = checkFault(f);
  if (typeof checked === 'string') return `--fault ${entry}: ${checked}`;
  return { bus, port, fault: checked, ...(durationMs === undefined ? {} : { durationMs }) };
}

/** The timing and faults of a command line, checked against its buses. */
export interface TimingOptions {
  timing: Record<string, BusTiming>;
  faults: FaultRequest[];
}

export function parseTimingOptions(
  bitrates: readonly string[],
  acks: readonly string[],
  faults: readonly string[],
  buses: ReadonlyMap<string, BusSpec>,
): TimingOptions | string {
  const known = (bus: string, opt: string): string | null => {
    const b = buses.get(bus);
    if (b === undefined) {
      return `${opt}: no guest or port uses bus "${bus}" (buses: ${[...buses.keys()].join(', ')})`;
    }
    if (b.kind === 'host' && opt !== '--fault') {
      return `${opt}: bus "${bus}" is a host interface; only virtual buses can be timed`;
    }
    return null;
  };
  const timing: Record<string, BusTiming> = {};
  for (const e of bitrates) {
    const r = parseBitrateEntry(e);
    if (typeof r === 'string') return r;
    const bad = known(r.bus, '--bitrate');
    if (bad !== null) return bad;
    if (timing[r.bus] !== undefined) return `--bitrate: bus "${r.bus}" given twice`;
    timing[r.bus] = {
      bitrate: r.bitrate,
      ...(r.dataBitrate === undefined ? {} : { dataBitrate: r.dataBitrate }),
    };
  }
  for (const e of acks) {
    const r = parseAckEntry(e);
    if (typeof r === 'string') return r;
    const bad = known(r.bus, '--ack');
    if (bad !== null) return bad;
    const t = timing[r.bus];
    if (t === undefined) return `--ack ${e}: bus "${r.bus}" is not timed (give it a --bitrate)`;
    timing[r.bus] = { ...t, ack: r.ack };
  }
  const out: FaultRequest[] = [];
  for (const e of faults) {
    const r = parseFaultEntry(e);
    if (typeof r === 'string') return r;
    const bad = known(r.bus, '--fault');
    if (bad !== null) return bad;
    if (TIMED_FAULT_KINDS.has(r.fault.kind) && timing[r.bus] === undefined) {
      return `--fault ${e}: ${r.fault.kind} needs a timed bus (--bitrate ${r.bus}=...)`;
    }
    out.push(r);
  }
  return { timing, faults: out };
}

export const TIMING_HELP = `    --bitrate BUS=NOMINAL[/DATA]  (repeatable)
        Makes virtual bus BUS a timed bus: every frame occupies it for its exact length in bits
        (bit stuffing included) at NOMINAL bit/s (1k..1M), the CAN FD data phase at DATA
        (virtio-can frames carry no BRS bit: with DATA every FD frame switches, without it FD
        frames go at NOMINAL). Frames wait for the bus and arbitrate by identifier; a guest's
        transmission completes (LATE_TX_ACK) when its frame has left the bus. Each port has
        error counters and error-active/warning/passive/bus-off states. 500k, 1M, 2.5M work.
        Example: --bitrate default=500k/2M
    --ack BUS=nodes|always|never
        Who acknowledges frames on timed bus BUS: another node on the bus (nodes, the default:
        a lone sender gets ACK errors and goes error-passive, as on a real bus), always, never.
    --fault BUS:PORT:KIND[=ARG][@DURATION]  (repeatable)
        Injects a fault on port PORT (guest0, guest1..., host:IFNAME, a link's name) of BUS
        from the start, for DURATION (500ms, 10s, 2m) or for good. A port not connected yet
        gets it when it connects. KIND:
          bus-off, error-passive, error-warning  hold the port in that state (bus-state=STATE)
          drop=RATIO         that share of its frames is lost (0.1 or 10%)
          delay=TIME         its frames reach the bus TIME later (5ms; a number is ms)
          bitrate-mismatch   timed bus: its frames are destroyed (error frames); it goes
                             error-passive, then bus-off; the others carry on
          no-ack             timed bus: nobody acknowledges its frames
          error-frames=N     timed bus: it sends N error flags a second, destroying frames
        Example: --fault default:guest1:bitrate-mismatch@5s
`;
