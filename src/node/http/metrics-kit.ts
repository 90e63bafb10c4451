/**
 * Prometheus metrics on prom-client, filled from the daemon's live counters at scrape time.
 *
 * The daemons already count everything (plain numbers in their stats objects); a scrape takes one
 * snapshot of them and every metric reads that snapshot in its `collect`, so nothing is counted
 * twice and the data path has no metrics code at all. Counters end in `_total`; names and labels
 * follow the Prometheus naming practices (base units, ratio 0..1, `_info` for build data).
 */
import { Counter, collectDefaultMetrics, Gauge, Registry } from 'prom-client';

import type { Route } from './server.js';

export type Labels = Record<string, string>;
export type Emit = (labels: Labels, value: number) => void;

export class MetricsKit<S> {
  readonly registry = new Registry();
  #snapshot: S | null = null;
  #queue: Promise<string> = Promise.resolve('');
  readonly #take: () => S;

  /** `take` builds the snapshot of one scrape. Process and Node.js metrics are included. */
  constructor(take: () => S, opts: { processMetrics?: boolean } = {}) {
    this.#take = take;
    if (opts.processMetrics !== false) collectDefaultMetrics({ register: this.registry });
  }

  /** A counter whose samples `fill` emits from the snapshot (values are totals, not increments). */
  counter(name: string, help: string, labelNames: readonly string[], fill: (s: S, emit: Emit) => void): void {
    if (!name.endsWith('_total')) throw new Error(`counter ${name} must end in _total`);
    const kit = this;
    new Counter({
      name,
      help,
      labelNames: [...labelNames],
      registers: [this.registry],
      collect(this: Counter) {
        this.reset();
        const s = kit.#snapshot;
        if (s !== null) fill(s, (l, v) => this.inc(l, v));
      },
    });
  }

  gauge(name: string, help: string, labelNames: readonly string[], fill: (s: S, emit: Emit) => void): void {
    const kit = this;
    new Gauge({
      name,
      help,
      labelNames: [...labelNames],
      registers: [this.registry],
      collect(this: Gauge) {
        this.reset();
        const s = kit.#snapshot;
        if (s !== null) fill(s, (l, v) => this.set(l, v));
      },
    });
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** The exposition text of one scrape (concurrent scrapes run one after the other). */
  scrape(): Promise<string> {
    const run = async (): Promise<string> => {
      this.#snapshot = this.#take();
      try {
        return await this.registry.metrics();
      } finally {
        this.#snapshot = null;
      }
    };
    const p = this.#queue.then(run, run);
    this.#queue = p.catch(() => '');
    return p;
  }
}

/** `camelCase` / `kebab-case` -> `snake_case` for label values that name counters or reasons. */
export function snake(s: string): string {
  return s
    .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
    .replace(/[^A-Za-z0-9]+/g, '_')
    .toLowerCase();
}

/** `GET /metrics`: a fresh scrape in the Prometheus text format, never cached. */
export function metricsRoute(metrics: { scrape(): Promise<string>; readonly contentType: string }): Route {
  return {
    method: 'GET',
    path: /^\/metrics$/,
    async handle({ res }) {
      const text = await metrics.scrape();
      res.writeHead(200, {
        'Content-Type': metrics.contentType,
        'Cache-Control': 'no-store',
        'Content-Length': Buffer.byteLength(text),
      });
      res.end(text);
    },
  };
}
