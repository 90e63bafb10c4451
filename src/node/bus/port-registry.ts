/**
 * Bus port kinds that plug in by name: network links by URL scheme (`--link BUS=socketcand://...`),
 * captures and replays by file extension (`--capture BUS=trace.pcapng`, `--replay BUS=trace.log`).
 *
 * A kind is one `PortFactory` registered once (see builtin-ports.ts). The command line validates
 * each value with the factory's `parse` (no I/O, so a bad URL is a usage error, exit 2) and the
 * daemon calls `create` once its buses exist. Neither the CLI parser nor the daemon knows the
 * kinds: adding one is a new module and one `register` line.
 */
import type { CanHub, HubRegistry } from '../../core/bus/hub.js';
import type { LogFields, Logger } from '../../core/util/log.js';
import { CodedError } from '../errors.js';
import type { NativeAddon } from '../native/addon.js';

/** Something attached to a bus for the daemon's lifetime: a host interface, a link, a capture... */
export interface BusAttachment {
  /** 'host', 'link', 'capture', 'replay', ... (the factory's kind for registered ones). */
  readonly kind: string;
  /** Its port name on the hub (unique on that bus), e.g. `socketcand:10.0.0.2:29536/can0`. */
  readonly name: string;
  /** The bus it is attached to. */
  readonly bus: string;
  /**
   * Its state and counters now, flat (one `--stats-interval` log line; the monitor and metrics read
   * the same). Counters are numbers that only grow; `state` (when present) is a short word.
   */
  stats(): LogFields;
  /** Detaches and releases everything (sockets, files, timers). Idempotent. */
  close(): void;
}

/** What a factory's `create` gets. */
export interface PortContext {
  readonly bus: string;
  readonly hub: CanHub;
  /** Every bus of the daemon (a factory may need another one's name or clock). */
  readonly hubs: HubRegistry;
  readonly log: Logger;
  readonly native: NativeAddon;
  /**
   * Wall-clock time of the bus clock's zero, in nanoseconds since the Unix epoch, taken once at
   * start: `wallNs = epochOffsetNs + frame.timestampNs` (the bus clock is monotonic).
   */
  readonly epochOffsetNs: bigint;
  /**
   * Registers `fn` to run once, when the first guest on this bus starts its controller (or at once
   * if one already has). Used by replays that wait for a listener.
   */
  onFirstGuestStart(fn: () => void): void;
  /** Options of the port's kind from the command line (for example `--replay-speed`), by name. */
  readonly options: Readonly<Record<string, string | boolean | undefined>>;
}

export type PortKind = 'link' | 'capture' | 'replay';

export interface PortFactory<S = unknown> {
  readonly kind: PortKind;
  /** URL schemes for links (`socketcand`), lower-case file extensions with the dot for files (`.pcapng`). */
  readonly keys: readonly string[];
  /** Help text, indented like the rest of `--help` (one short paragraph). */
  readonly help: string;
  /** Validates a value (URL or path) without I/O: the spec for `create`, or an error message. */
  parse(value: string): S | string;
  create(ctx: PortContext, spec: S): BusAttachment;
}

/** One `--link/--capture/--replay BUS=VALUE` as the command line gave it. */
export interface BusPortRequest {
  readonly kind: PortKind;
  readonly bus: string;
  readonly value: string;
}

export type PortRegistryErrorCode = 'ERR_PORT_KIND' | 'ERR_PORT_SPEC';

export class PortRegistryError extends CodedError<PortRegistryErrorCode> {}

/** A factory found for a request, with its parsed spec. */
export interface ResolvedPort {
  readonly request: BusPortRequest;
  readonly factory: PortFactory;
  readonly spec: unknown;
}

export class PortRegistry {
  readonly #factories = new Map<string, PortFactory>();

  /** Throws when a key of `factory` is already taken for its kind. */
  register<S>(factory: PortFactory<S>): this {
    for (const key of factory.keys) {
      const k = `${factory.kind}:${key.toLowerCase()}`;
      if (this.#factories.has(k)) throw new PortRegistryError('ERR_PORT_KIND', `${k} is registered twice`);
      this.#factories.set(k, factory as PortFactory);
    }
    return this;
  }

  /** The registered factories of one kind, in registration order. */
  factories(kind: PortKind): PortFactory[] {
    return [...new Set([...this.#factories.values()].filter((f) => f.kind === kind))];
  }

  /** The key a value is looked up by: a URL's scheme, or a file's extension. */
  static keyOf(kind: PortKind, value: string): string {
    if (kind === 'link') {
      const m = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(value);
      return m === null ? '' : m[1]!.toLowerCase();
    }
    const base = value.slice(value.lastIndexOf('/') + 1);
    const dot = base.lastIndexOf('.');
    return dot <= 0 ? '' : base.slice(dot).toLowerCase();
  }

  /** The factory and parsed spec for a request, or a message saying what is accepted. */
  resolve(request: BusPortRequest): ResolvedPort | string {
    const key = PortRegistry.keyOf(request.kind, request.value);
    const factory = this.#factories.get(`${request.kind}:${key}`);
    if (factory === undefined) {
      const known = this.factories(request.kind).flatMap((f) => f.keys);
      const what = request.kind === 'link' ? 'URL scheme' : 'file extension';
      const list = known.length === 0 ? 'none is available' : `expected ${known.join(', ')}`;
      return `--${request.kind} ${request.bus}=${request.value}: unknown ${what}${key === '' ? '' : ` "${key}"`} (${list})`;
    }
    const spec = factory.parse(request.value);
    if (typeof spec === 'string') return `--${request.kind} ${request.bus}=${request.value}: ${spec}`;
    return { request, factory, spec };
  }
}
