/**
 * Faults a bus can be told to inject on one of its ports (`CanHub.injectFault`), and the timing of
 * a timed bus (`CanHubOptions.timing`). Types and validation only; the hub applies them.
 *
 * Faults belong to a port *name*: a fault injected for a port that is not attached yet (a guest
 * that has not connected) waits for it, and a guest that reconnects under the same name keeps its
 * faults. A port has at most one fault of each kind: injecting another replaces it.
 */
import { BUS_STATES, type BusState } from './bus-state.js';

/**
 * Who acknowledges frames on a timed bus:
 * - `nodes` (default): another node that takes part in the bus (attached, receiving, not bus-off,
 *   its bit rate right) must be there, as on a real bus; a lone sender gets ACK errors.
 * - `always`: every frame is acknowledged (as if a silent node were always there).
 * - `never`: no frame is acknowledged (every transmission fails with an ACK error).
 */
export type AckMode = 'nodes' | 'always' | 'never';
export const ACK_MODES: readonly AckMode[] = Object.freeze(['nodes', 'always', 'never']);

/** A timed bus: frames take their exact time on the wire, arbitration, error counters. */
export interface BusTiming {
  /** Nominal bit rate, bit/s (1000 .. 1 000 000). */
  readonly bitrate: number;
  /**
   * CAN FD data-phase bit rate, bit/s (bitrate .. 12 000 000). When given, every FD frame is timed
   * with a bit-rate switch (virtio-can frames carry no BRS bit, so the bus assumes it); without it,
   * FD frames go entirely at the nominal rate.
   */
  readonly dataBitrate?: number | undefined;
  /** Default `nodes`. */
  readonly ack?: AckMode | undefined;
}

export const BusTimingLimits = {
  MIN_BITRATE: 1000,
  MAX_BITRATE: 1_000_000,
  MAX_DATA_BITRATE: 12_000_000,
} as const;

export type PortFault =
  /** Puts the port in this controller state (and holds it there; see docs/timed-bus.md). */
  | { readonly kind: 'bus-state'; readonly state: BusState }
  /** A share (0 < ratio <= 1) of the port's frames is lost before reaching the bus. */
  | { readonly kind: 'drop'; readonly ratio: number }
  /** The port's frames reach the bus `ms` later (0 < ms <= 60000), in order. */
  | { readonly kind: 'delay'; readonly ms: number }
  /**
   * Timed buses: the port's bit rate differs from the bus's. Its frames are destroyed (error
   * frames, TEC +8 per attempt: error-passive, then bus-off), and it cannot decode the others'
   * frames (REC rises).
   */
  | { readonly kind: 'bitrate-mismatch' }
  /** Timed buses: nobody acknowledges the port's frames (ACK errors; it stays error-passive). */
  | { readonly kind: 'no-ack' }
  /**
   * Timed buses: the port sends error flags `perSecond` times a second (0 < perSecond <= 10000),
   * destroying the frame on the bus at that moment (or occupying an idle bus).
   */
  | { readonly kind: 'error-frames'; readonly perSecond: number };

export type PortFaultKind = PortFault['kind'];
export const PORT_FAULT_KINDS: readonly PortFaultKind[] = Object.freeze([
  'bus-state',
  'drop',
  'delay',
  'bitrate-mismatch',
  'no-ack',
  'error-frames',
]);

/** Kinds that only make sense on a timed bus (they are about bit timing and acknowledgement). */
export const TIMED_FAULT_KINDS: ReadonlySet<PortFaultKind> = new Set([
  'bitrate-mismatch',
  'no-ack',
  'error-frames',
]);

export interface FaultOptions {
  /** The fault ends by itself this long after it took effect; default: until cleared. */
  readonly durationMs?: number | undefined;
}

/** A fault as `CanHub.faults()` lists it. */
export interface ActiveFault {
  readonly id: number;
  /** The port's name. */
  readonly port: string;
  /** The attached port's id; null while no port of that name is attached (the fault waits). */
  readonly portId: number | null;
  readonly fault: PortFault;
  readonly durationMs: number | null;
  /** Hub clock (ns) when it took effect; null while it waits for its port. */
  readonly sinceNs: bigint | null;
  /** Hub clock (ns) when it ends by itself; null without a duration (or while it waits). */
  readonly untilNs: bigint | null;
  /** What it did so far: frames dropped, delayed or destroyed, error flags sent, frames refused. */
  readonly hits: number;
}

export const MAX_DELAY_MS = 60_000;
export const MAX_ERROR_FRAMES_PER_SECOND = 10_000;
/** Longest fault duration accepted (one day). */
export const MAX_FAULT_DURATION_MS = 86_400_000;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null;
}

function positive(v: unknown, max: number): v is number {
  return typeof v === 'number' && Number.isFinite(v) && v > 0 && v <= max;
}

/** A copy of `f` checked field by field (frozen), or a message saying what is wrong. */
export function checkFault(f: unknown): PortFault | string {
  if (!isObject(f) || typeof f.kind !== 'string') {
    return `a fault needs a kind (${PORT_FAULT_KINDS.join(', ')})`;
  }
  switch (f.kind) {
    case 'bus-state':
      if (!BUS_STATES.includes(f.state as BusState)) {
        return `bus-state fault: state must be one of ${BUS_STATES.join(', ')}, got ${String(f.state)}`;
      }
      return Object.freeze({ kind: 'bus-state', state: f.state as BusState });
    case 'drop':
      if (!positive(f.ratio, 1))
        return `drop fault: ratio must be a number in (0, 1], got ${String(f.ratio)}`;
      return Object.freeze({ kind: 'drop', ratio: f.ratio });
    case 'delay':
      if (!positive(f.ms, MAX_DELAY_MS)) {
        return `delay fault: ms must be a number in (0, ${MAX_DELAY_MS}], got ${String(f.ms)}`;
      }
      return Object.freeze({ kind: 'delay', ms: f.ms });
    case 'bitrate-mismatch':
      return Object.freeze({ kind: 'bitrate-mismatch' });
    case 'no-ack':
      return Object.freeze({ kind: 'no-ack' });
    case 'error-frames':
      if (!positive(f.perSecond, MAX_ERROR_FRAMES_PER_SECOND)) {
        return `error-frames fault: perSecond must be a number in (0, ${MAX_ERROR_FRAMES_PER_SECOND}], got ${String(f.perSecond)}`;
      }
      return Object.freeze({ kind: 'error-frames', perSecond: f.perSecond });
    default:
      return `unknown fault kind ${JSON.stringify(f.kind)} (${PORT_FAULT_KINDS.join(', ')})`;
  }
}

/** Checks a BusTiming; a message for a bad one. */
/** A checked BusTiming: `dataBitrate` 0 = none. */
export interface ResolvedTiming {
  readonly bitrate: number;
  readonly dataBitrate: number;
  readonly ack: AckMode;
}

export function checkTiming(t: unknown): ResolvedTiming | string {
  if (!isObject(t)) return 'timing must be an object with a bitrate';
  const { bitrate, dataBitrate, ack } = t;
  const L = BusTimingLimits;
  if (
    typeof bitrate !== 'number' ||
    !Number.isInteger(bitrate) ||
    bitrate < L.MIN_BITRATE ||
    bitrate > L.MAX_BITRATE
  ) {
    return `bit rate must be an integer ${L.MIN_BITRATE}..${L.MAX_BITRATE} bit/s, got ${String(bitrate)}`;
  }
  if (
    dataBitrate !== undefined &&
    (typeof dataBitrate !== 'number' ||
      !Number.isInteger(dataBitrate) ||
      dataBitrate < bitrate ||
      dataBitrate > L.MAX_DATA_BITRATE)
  ) {
    return `data bit rate must be an integer from the nominal rate (${bitrate}) to ${L.MAX_DATA_BITRATE} bit/s, got ${String(dataBitrate)}`;
  }
  if (ack !== undefined && !ACK_MODES.includes(ack as AckMode)) {
    return `ack must be one of ${ACK_MODES.join(', ')}, got ${String(ack)}`;
  }
  return {
    bitrate,
    dataBitrate: (dataBitrate as number | undefined) ?? 0,
    ack: (ack as AckMode | undefined) ?? 'nodes',
  };
}
