/**
 * `--http ADDR:PORT` and `--http-token-file FILE`, shared by vhost-device-can and
 * vhost-device-console: parsing (no I/O) and reading the token at start.
 */
import { readFileSync, statSync } from 'node:fs';
import type { Logger } from '../core/util/log.js';
import type { WebOptions } from '../node/http/can-web.js';
import { isLoopbackHost } from '../node/http/server.js';
import type { ArgValues } from './common-args.js';

export const HTTP_OPTIONS = {
  http: { type: 'string' },
  'http-token-file': { type: 'string' },
} as const;

export interface HttpCliOptions {
  host: string;
  port: number;
  tokenFile: string | null;
}

/** The --help lines of the two options; `changes` for a daemon whose API can change things (CAN). */
export function httpOptionsHelp(what: string, changes: boolean): string {
  return `    --http [ADDR:]PORT
        Serve ${what} (/), Prometheus metrics (/metrics) and a JSON API (/api/...)
        on ADDR:PORT. ADDR defaults to 127.0.0.1 ([::1]:PORT for IPv6); PORT 0 picks a free port,
        logged at start. Only loopback addresses unless --http-token-file is given.
    --http-token-file FILE
        Every HTTP request must carry the token in FILE (first line, 16 characters or more): the
        header "Authorization: Bearer TOKEN", or open the page once as
        http://ADDR:PORT/?token=TOKEN (it then keeps a cookie). Required for a non-loopback ADDR.
${
  changes
    ? `        Changes (frames, faults) are accepted only as JSON from the page's own origin.
`
    : ''
}`;
}

/** `--http` and `--http-token-file` from parsed values: null when absent, or a message. */
export function parseHttpOptions(values: ArgValues): HttpCliOptions | null | string {
  const v = values.http as string | undefined;
  const tokenFile = (values['http-token-file'] as string | undefined) ?? null;
  if (v === undefined) {
    return tokenFile === null ? null : '--http-token-file needs --http';
  }
  let host = '127.0.0.1';
  let portText = v;
  const m6 = /^\[([0-9A-Fa-f:.]+)\]:(.*)$/.exec(v);
  if (m6 !== null) {
    host = m6[1]!;
    portText = m6[2]!;
  } else if (v.includes(':')) {
    const i = v.lastIndexOf(':');
    host = v.slice(0, i);
    portText = v.slice(i + 1);
    if (host.includes(':')) return `--http ${v}: write an IPv6 address in brackets, e.g. [::1]:8080`;
  }
  if (host === '') return `--http ${v}: the address before ":" is empty`;
  if (!/^[0-9]{1,5}$/.test(portText) || Number(portText) > 65535) {
    return `--http expects [ADDR:]PORT with PORT 0..65535, got "${v}"`;
  }
  if (tokenFile === '') return '--http-token-file is empty';
  if (tokenFile === null && !isLoopbackHost(host)) {
    return `--http ${v}: binding a non-loopback address needs --http-token-file FILE (the monitor can inject frames)`;
  }
  return { host, port: Number(portText), tokenFile };
}

/** Reads the token (first line, trimmed); throws with a clear message. Warns when others may read the file. */
export function readHttpToken(file: string, log: Logger): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(
      `--http-token-file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
    );
  }
  const token = (text.split(/\r?\n/)[0] ?? '').trim();
  if (token.length < 16) {
    throw new Error(`--http-token-file ${file}: the token (first line) must have at least 16 characters`);
  }
  if ((statSync(file).mode & 0o077) !== 0) {
    log.warn('the HTTP token file can be read by other users (chmod 600 it)', { file });
  }
  return token;
}

/** What `serveHttp` hands the daemon runner: the web server (or null) and how to stop both. */
export interface HttpServing<W> {
  readonly web: W | null;
  /** Closes the web server (when there is one), then stops the daemon. */
  stop(): void;
  /** For the "started" log line. */
  readonly started: { http?: string };
}

/**
 * Starts a daemon's --http server when one was asked for, with the token read before (so a bad
 * token file fails start-up before any socket exists). A server that cannot start stops the daemon
 * and fails start-up. Shared by every daemon that has --http.
 */
export async function serveHttp<W extends { readonly url: string; close(): void }>(
  http: HttpCliOptions | null,
  token: string | null,
  log: Logger,
  version: string,
  stopDaemon: () => void,
  start: (opts: WebOptions) => Promise<W>,
): Promise<HttpServing<W>> {
  let web: W | null = null;
  if (http !== null) {
    try {
      web = await start({
        host: http.host,
        port: http.port,
        token,
        log: log.child({ http: `${http.host}:${http.port}` }),
        version,
      });
    } catch (err) {
      stopDaemon();
      throw err;
    }
  }
  return {
    web,
    stop: () => {
      web?.close();
      stopDaemon();
    },
    started: web === null ? {} : { http: `${web.url}/` },
  };
}

/** The token of --http-token-file, read at once (null without one). */
export function httpToken(http: HttpCliOptions | null, log: Logger): string | null {
  const file = http?.tokenFile ?? null;
  return file === null ? null : readHttpToken(file, log);
}
