// HTTP plumbing for the web monitor tests: raw requests with exact headers (node:http, so nothing
// adds or hides an Origin), a Server-Sent Events reader, and the Prometheus text parser.
import { request as httpRequest, type IncomingMessage } from 'node:http';
import type { TestContext } from 'node:test';
import parsePrometheus from 'parse-prometheus-text-format';
import { nullLogger } from '../../src/core/util/log.js';
import type { CanDaemon } from '../../src/node/can/can-daemon.js';
import { type CanWeb, startCanWeb, type WebOptions } from '../../src/node/http/can-web.js';

export interface Reply {
  status: number;
  headers: IncomingMessage['headers'];
  text: string;
  /** The body as JSON (undefined when it is not JSON); tests read it loosely. */
  // biome-ignore lint/suspicious/noExplicitAny: parsed JSON of many shapes, checked by the assertions
  json: any;
}

export function req(
  url: string,
  opts: { method?: string; headers?: Record<string, string>; body?: string | Buffer } = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { ...opts.headers };
    // Node sends a DELETE body without framing unless told its length.
    if (opts.body !== undefined && !Object.keys(headers).some((k) => k.toLowerCase() === 'content-length')) {
      headers['Content-Length'] = String(Buffer.byteLength(opts.body));
    }
    const r = httpRequest(url, { method: opts.method ?? 'GET', headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json: unknown;
        try {
          json = JSON.parse(text);
        } catch {
          json = undefined;
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json });
      });
      res.on('error', reject);
    });
    r.on('error', reject);
    r.setTimeout(10_000, () => r.destroy(new Error(`request to ${url} timed out`)));
    if (opts.body !== undefined) r.write(opts.body);
    r.end();
  });
}

/** A same-origin JSON POST/DELETE, as the page sends it. */
export function sendJson(
  web: { url: string },
  method: 'POST' | 'DELETE',
  path: string,
  body: unknown,
): Promise<Reply> {
  return req(`${web.url}${path}`, {
    method,
    headers: { 'Content-Type': 'application/json', Origin: web.url },
    body: JSON.stringify(body),
  });
}

export interface SseEvent {
  event: string;
  // biome-ignore lint/suspicious/noExplicitAny: parsed JSON of many shapes, checked by the assertions
  data: any;
}

/** An open Server-Sent Events stream: events arrive in `events`; `close()` ends it. */
export interface SseClient {
  readonly status: number;
  readonly events: SseEvent[];
  /** Resolves with the first event (from now on, or already received when `fromStart`) that `pick` accepts. */
  waitFor(what: string, pick: (e: SseEvent) => boolean, ms?: number, fromStart?: boolean): Promise<SseEvent>;
  readonly ended: Promise<void>;
  close(): void;
}

export function sse(t: TestContext, url: string, headers: Record<string, string> = {}): Promise<SseClient> {
  return new Promise((resolve, reject) => {
    const r = httpRequest(url, { headers: { Accept: 'text/event-stream', ...headers } }, (res) => {
      const events: SseEvent[] = [];
      let buf = '';
      let onEvent: (() => void) | null = null;
      let endResolve!: () => void;
      const ended = new Promise<void>((r2) => {
        endResolve = r2;
      });
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buf += chunk;
        for (let i = buf.indexOf('\n\n'); i >= 0; i = buf.indexOf('\n\n')) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          let event = 'message';
          let data = '';
          for (const line of block.split('\n')) {
            if (line.startsWith('event: ')) event = line.slice(7);
            else if (line.startsWith('data: ')) data += line.slice(6);
          }
          if (data === '') continue;
          let parsed: unknown = data;
          try {
            parsed = JSON.parse(data);
          } catch {}
          events.push({ event, data: parsed });
          onEvent?.();
        }
      });
      res.on('end', endResolve);
      res.on('close', endResolve);
      const client: SseClient = {
        status: res.statusCode ?? 0,
        events,
        ended,
        waitFor(what, pick, ms = 3000, fromStart = false) {
          return new Promise((ok, fail) => {
            const start = fromStart ? 0 : events.length;
            const check = (): boolean => {
              for (let k = start; k < events.length; k++) {
                if (pick(events[k]!)) {
                  onEvent = null;
                  clearTimeout(timer);
                  ok(events[k]!);
                  return true;
                }
              }
              return false;
            };
            const timer = setTimeout(() => {
              onEvent = null;
              fail(new Error(`timed out waiting for ${what} (${events.length - start} events came)`));
            }, ms);
            if (!check()) onEvent = check;
          });
        },
        close: () => r.destroy(),
      };
      t.after(() => r.destroy());
      resolve(client);
    });
    r.on('error', reject);
    r.end();
  });
}

export interface PromSample {
  labels: Record<string, string>;
  value: number;
}
export interface PromFamily {
  name: string;
  help: string;
  type: string;
  metrics: { labels?: Record<string, string>; value?: string }[];
}

/** Parses exposition text with parse-prometheus-text-format (throws on malformed input). */
export function parseMetrics(text: string): Map<string, PromFamily> {
  const families = parsePrometheus(text) as PromFamily[];
  return new Map(families.map((f) => [f.name, f]));
}

/** The value of one sample whose labels include `labels`; undefined when absent. */
export function sample(
  fams: Map<string, PromFamily>,
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  const f = fams.get(name);
  if (f === undefined) return undefined;
  for (const m of f.metrics) {
    const l = m.labels ?? {};
    if (Object.entries(labels).every(([k, v]) => l[k] === v)) return Number(m.value);
  }
  return undefined;
}

/** Starts the web side of `can` on an ephemeral loopback port; closed after the test. */
export async function startWeb(
  t: TestContext,
  can: CanDaemon,
  opts: Partial<WebOptions> = {},
): Promise<CanWeb> {
  const web = await startCanWeb(can, {
    host: '127.0.0.1',
    port: 0,
    log: nullLogger,
    version: '0.0.0-test',
    processMetrics: false,
    ...opts,
  });
  t.after(() => web.close());
  return web;
}

const NAME = '[a-zA-Z_:][a-zA-Z0-9_:]*';
const LABEL = '[a-zA-Z_][a-zA-Z0-9_]*';
const LABEL_VALUE = '"(?:[^"\\\\\\n]|\\\\[\\\\"n])*"';
// Prometheus reads values with Go's ParseFloat: NaN and Inf in any case (prom-client writes "Nan").
const VALUE = '(?:[+-]?(?:[0-9]*\\.?[0-9]+(?:[eE][+-]?[0-9]+)?|[Ii]nf)|[Nn]a[Nn])';
const SAMPLE = new RegExp(
  `^(${NAME})(?:\\{(?:${LABEL}=${LABEL_VALUE}(?:,${LABEL}=${LABEL_VALUE})*,?)?\\})? ${VALUE}(?: -?[0-9]+)?$`,
);

/**
 * Checks the text exposition format line by line, beyond what the parser enforces: HELP/TYPE syntax,
 * one TYPE per family before its samples, sample syntax (names, label escapes, values), counters
 * named `_total`, a final newline. Returns the problems found (empty when none).
 */
export function lintExposition(text: string): string[] {
  const problems: string[] = [];
  if (!text.endsWith('\n')) problems.push('does not end with a newline');
  const types = new Map<string, string>();
  const sampled = new Set<string>();
  const lines = text.split('\n').slice(0, -1);
  for (const [i, line] of lines.entries()) {
    const at = `line ${i + 1}: ${line.slice(0, 120)}`;
    if (line.startsWith('# HELP ')) {
      if (!new RegExp(`^# HELP ${NAME} .*$`).test(line)) problems.push(`bad HELP, ${at}`);
      continue;
    }
    if (line.startsWith('# TYPE ')) {
      const m = new RegExp(`^# TYPE (${NAME}) (counter|gauge|histogram|summary|untyped)$`).exec(line);
      if (m === null) problems.push(`bad TYPE, ${at}`);
      else if (types.has(m[1]!)) problems.push(`second TYPE for ${m[1]}, ${at}`);
      else if (sampled.has(m[1]!)) problems.push(`TYPE after samples of ${m[1]}, ${at}`);
      else types.set(m[1]!, m[2]!);
      continue;
    }
    if (line.startsWith('#') || line === '') continue;
    const m = SAMPLE.exec(line);
    if (m === null) {
      problems.push(`bad sample, ${at}`);
      continue;
    }
    const name = m[1]!;
    const family = [...types.keys()].find(
      (f) =>
        name === f || (/_(bucket|sum|count)$/.test(name) && name.replace(/_(bucket|sum|count)$/, '') === f),
    );
    if (family === undefined) problems.push(`sample without TYPE, ${at}`);
    else {
      sampled.add(family);
      if (types.get(family) === 'counter' && !name.endsWith('_total'))
        problems.push(`counter not named _total, ${at}`);
    }
  }
  return problems;
}
