/**
 * The daemons' HTTP server (`--http ADDR:PORT`): the monitor page, `/metrics` and the `/api` routes
 * of one daemon, behind the same checks for every request:
 *
 * - Host: without a token, only loopback names (`localhost`, 127.0.0.0/8, `[::1]`) and the bound
 *   address are answered, so a web page that rebinds its own host name to 127.0.0.1 gets nothing.
 * - Token (with `--http-token-file`, required for a non-loopback address): every request carries it,
 *   as `Authorization: Bearer TOKEN` or the `vhost_token` cookie; a page opened once with
 *   `?token=TOKEN` gets the cookie (HttpOnly, SameSite=Strict) and is redirected to the same URL
 *   without it.
 * - Changes (POST, DELETE): a JSON content type and an Origin that is absent or this server's own,
 *   so neither a form nor a script on another site can inject frames or faults (a JSON body also
 *   needs a CORS preflight, which this server never grants). Bodies are bounded.
 * Errors are JSON `{"error": {"code", "message"}}` with a fitting status.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from '../../core/util/log.js';
import { CodedError } from '../errors.js';

export type HttpErrorCode =
  | 'ERR_HTTP_BAD_REQUEST'
  | 'ERR_HTTP_UNAUTHORIZED'
  | 'ERR_HTTP_HOST'
  | 'ERR_HTTP_ORIGIN'
  | 'ERR_HTTP_NOT_FOUND'
  | 'ERR_HTTP_METHOD'
  | 'ERR_HTTP_CONTENT_TYPE'
  | 'ERR_HTTP_BODY_TOO_LARGE'
  | 'ERR_HTTP_TOO_MANY_STREAMS'
  | 'ERR_HTTP_NOT_AVAILABLE'
  | 'ERR_HTTP_INTERNAL'
  | 'ERR_HTTP_LISTEN';

/** An error a route throws to answer with `status` and a JSON error body. */
export class HttpError extends CodedError<HttpErrorCode | string> {
  readonly status: number;
  constructor(status: number, code: HttpErrorCode | string, message: string) {
    super(code, message);
    this.status = status;
  }
}

export type Method = 'GET' | 'POST' | 'DELETE';

export interface RouteContext {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly url: URL;
  /** Named groups of the route's pattern, decoded. */
  readonly params: Readonly<Record<string, string>>;
  /** The parsed JSON body of a POST/DELETE (undefined when empty). */
  readonly body: unknown;
}

export interface Route {
  readonly method: Method;
  /** Matched against the whole path; named groups become `params`. */
  readonly path: RegExp;
  /**
   * Answers with `json(ctx, ...)`, throws HttpError, or takes over the response (streams) and
   * returns 'taken'.
   */
  handle(ctx: RouteContext): unknown | Promise<unknown>;
}

/** A static file served from memory. */
export interface StaticFile {
  readonly path: string;
  readonly type: string;
  readonly body: Buffer;
}

export interface HttpServerOptions {
  host: string;
  port: number;
  /** Required when `host` is not a loopback address. */
  token?: string | null | undefined;
  log: Logger;
  routes: readonly Route[];
  files: readonly StaticFile[];
  /** Largest request body (default 64 KiB). */
  maxBodyBytes?: number | undefined;
  /** Largest number of open connections (default 64). */
  maxConnections?: number | undefined;
}

export interface HttpServerStats {
  /** Answered requests by status code. */
  requests: Record<string, number>;
  /** Requests refused by a check, by reason. */
  refused: Record<string, number>;
}

export const DEFAULT_MAX_BODY_BYTES = 64 * 1024;
export const TOKEN_COOKIE = 'vhost_token';

/** True for `localhost`, 127.0.0.0/8 and ::1 (with or without brackets). */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/** The host name part of a Host header (`[::1]:8080` -> `::1`, `localhost:80` -> `localhost`). */
function hostName(header: string): string {
  const m = /^\[([^\]]*)\](?::\d+)?$/.exec(header);
  if (m !== null) return m[1]!.toLowerCase();
  const colon = header.lastIndexOf(':');
  return (colon >= 0 ? header.slice(0, colon) : header).toLowerCase();
}

function digest(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

function cookieValue(header: string | undefined, name: string): string | undefined {
  if (header === undefined) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return decodeURIComponent(part.slice(eq + 1).trim());
  }
  return undefined;
}

const SECURITY_HEADERS: Readonly<Record<string, string>> = {
  'X-Content-Type-Options': 'nosniff',
  'Cache-Control': 'no-store',
  'Referrer-Policy': 'no-referrer',
  'X-Frame-Options': 'DENY',
};

const PAGE_CSP =
  "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/** Answers with a JSON body. */
export function json(res: ServerResponse, status: number, body: unknown): void {
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(status, {
    ...SECURITY_HEADERS,
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
  });
  res.end(text);
}

function errorBody(code: string, message: string): unknown {
  return { error: { code, message } };
}

export class HttpServer {
  readonly #opts: HttpServerOptions;
  readonly #server: Server;
  readonly #tokenDigest: Buffer | null;
  readonly #files: Map<string, StaticFile>;
  readonly #maxBody: number;
  readonly stats: HttpServerStats = { requests: {}, refused: {} };
  #address: AddressInfo | null = null;

  constructor(opts: HttpServerOptions) {
    this.#opts = opts;
    const token = opts.token ?? null;
    if (token !== null && token.length === 0)
      throw new HttpError(500, 'ERR_HTTP_LISTEN', 'the token is empty');
    if (token === null && !isLoopbackHost(opts.host)) {
      throw new HttpError(
        500,
        'ERR_HTTP_LISTEN',
        `binding ${opts.host} (not loopback) needs a token (--http-token-file)`,
      );
    }
    this.#tokenDigest = token === null ? null : digest(token);
    this.#files = new Map(opts.files.map((f) => [f.path, f]));
    this.#maxBody = opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
    this.#server = createServer((req, res) => {
      this.#handle(req, res).catch((err: unknown) => this.#fail(res, err));
    });
    this.#server.maxConnections = opts.maxConnections ?? 64;
    this.#server.headersTimeout = 10_000;
    this.#server.requestTimeout = 30_000;
    this.#server.maxHeadersCount = 64;
  }

  /** Listens; rejects with ERR_HTTP_LISTEN (address in use, bad address...). */
  listen(): Promise<AddressInfo> {
    return new Promise((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException): void => {
        reject(
          new HttpError(
            500,
            'ERR_HTTP_LISTEN',
            `cannot listen on ${this.#opts.host}:${this.#opts.port}: ${err.code ?? err.message}`,
          ),
        );
      };
      this.#server.once('error', onError);
      this.#server.listen({ host: this.#opts.host, port: this.#opts.port }, () => {
        this.#server.off('error', onError);
        this.#server.on('error', (err) => this.#opts.log.warn('http server error', { reason: err.message }));
        this.#address = this.#server.address() as AddressInfo;
        resolve(this.#address);
      });
    });
  }

  /** The bound address (after listen). */
  get address(): AddressInfo | null {
    return this.#address;
  }

  /** `http://host:port` of the bound address. */
  get url(): string {
    const a = this.#address;
    if (a === null) return '';
    const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
    return `http://${host}:${a.port}`;
  }

  /** Stops listening and closes every connection (streams included). */
  close(): void {
    this.#server.close();
    this.#server.closeAllConnections();
  }

  #count(status: number): void {
    const k = String(status);
    this.stats.requests[k] = (this.stats.requests[k] ?? 0) + 1;
  }

  #refuse(res: ServerResponse, status: number, code: HttpErrorCode, reason: string, message: string): void {
    this.stats.refused[reason] = (this.stats.refused[reason] ?? 0) + 1;
    this.#count(status);
    json(res, status, errorBody(code, message));
  }

  #fail(res: ServerResponse, err: unknown): void {
    if (err instanceof HttpError) {
      if (!res.headersSent) {
        this.#count(err.status);
        json(res, err.status, errorBody(err.code, err.message));
      } else res.destroy();
      return;
    }
    this.#opts.log.warn('http request failed', { reason: (err as Error)?.message ?? String(err) });
    if (!res.headersSent) {
      this.#count(500);
      json(res, 500, errorBody('ERR_HTTP_INTERNAL', 'internal error (see the daemon log)'));
    } else res.destroy();
  }

  #tokenOk(candidate: string | undefined): boolean {
    if (this.#tokenDigest === null) return true;
    if (candidate === undefined || candidate === '') return false;
    return timingSafeEqual(digest(candidate), this.#tokenDigest);
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const hostHeader = req.headers.host;
    if (hostHeader === undefined || hostHeader === '') {
      return this.#refuse(res, 400, 'ERR_HTTP_HOST', 'host', 'the Host header is missing');
    }
    if (this.#tokenDigest === null) {
      const name = hostName(hostHeader);
      const bound = this.#address?.address.toLowerCase();
      if (!isLoopbackHost(name) && name !== bound && name !== this.#opts.host.toLowerCase()) {
        return this.#refuse(
          res,
          403,
          'ERR_HTTP_HOST',
          'host',
          `this server answers loopback host names only, not "${hostHeader}"`,
        );
      }
    }
    let url: URL;
    try {
      url = new URL(req.url ?? '/', `http://${hostHeader}`);
    } catch {
      return this.#refuse(res, 400, 'ERR_HTTP_BAD_REQUEST', 'url', 'malformed request URL');
    }
    const method = req.method ?? 'GET';

    // Token: header, cookie, or ?token= once on a page (then a cookie and a redirect without it).
    if (this.#tokenDigest !== null) {
      const auth = req.headers.authorization;
      const bearer = auth?.startsWith('Bearer ') ? auth.slice(7).trim() : undefined;
      const cookie = cookieValue(req.headers.cookie, TOKEN_COOKIE);
      const query = url.searchParams.get('token') ?? undefined;
      if (query !== undefined && method === 'GET' && this.#tokenOk(query)) {
        url.searchParams.delete('token');
        this.#count(303);
        res.writeHead(303, {
          ...SECURITY_HEADERS,
          Location: `${url.pathname}${url.search}`,
          'Set-Cookie': `${TOKEN_COOKIE}=${encodeURIComponent(query)}; HttpOnly; SameSite=Strict; Path=/`,
        });
        res.end();
        return;
      }
      if (!this.#tokenOk(bearer) && !this.#tokenOk(cookie)) {
        return this.#refuse(
          res,
          401,
          'ERR_HTTP_UNAUTHORIZED',
          'token',
          'this server needs its token: "Authorization: Bearer TOKEN", or open the page once with ?token=TOKEN',
        );
      }
    }

    let body: unknown;
    if (method === 'POST' || method === 'DELETE') {
      const origin = req.headers.origin;
      if (origin !== undefined && origin !== `http://${hostHeader}`) {
        return this.#refuse(
          res,
          403,
          'ERR_HTTP_ORIGIN',
          'origin',
          `requests that change something are refused from another origin (${origin})`,
        );
      }
      if (req.headers['sec-fetch-site'] === 'cross-site') {
        return this.#refuse(res, 403, 'ERR_HTTP_ORIGIN', 'origin', 'cross-site request refused');
      }
      const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
      if (type !== 'application/json') {
        return this.#refuse(
          res,
          415,
          'ERR_HTTP_CONTENT_TYPE',
          'content_type',
          'requests that change something need "Content-Type: application/json"',
        );
      }
      const read = await this.#readBody(req);
      if (read === null) {
        res.setHeader('Connection', 'close');
        return this.#refuse(
          res,
          413,
          'ERR_HTTP_BODY_TOO_LARGE',
          'body_size',
          `the request body is larger than ${this.#maxBody} bytes`,
        );
      }
      if (read.length > 0) {
        try {
          body = JSON.parse(read.toString('utf8'));
        } catch (err) {
          return this.#refuse(
            res,
            400,
            'ERR_HTTP_BAD_REQUEST',
            'json',
            `the body is not JSON: ${(err as Error).message}`,
          );
        }
      }
    } else if (method !== 'GET' && method !== 'HEAD') {
      return this.#refuse(res, 405, 'ERR_HTTP_METHOD', 'method', `method ${method} is not allowed`);
    }

    const path = url.pathname;
    if (path === '/favicon.ico') {
      this.#count(204);
      res.writeHead(204, SECURITY_HEADERS);
      res.end();
      return;
    }
    const file = this.#files.get(path);
    if (file !== undefined && (method === 'GET' || method === 'HEAD')) {
      this.#count(200);
      res.writeHead(200, {
        ...SECURITY_HEADERS,
        'Content-Type': file.type,
        'Content-Length': file.body.length,
        'Content-Security-Policy': PAGE_CSP,
      });
      res.end(method === 'HEAD' ? undefined : file.body);
      return;
    }
    let pathMatched = false;
    for (const r of this.#opts.routes) {
      const m = r.path.exec(path);
      if (m === null) continue;
      pathMatched = true;
      if (r.method !== method && !(r.method === 'GET' && method === 'HEAD')) continue;
      const params: Record<string, string> = {};
      for (const [k, v] of Object.entries(m.groups ?? {})) {
        try {
          params[k] = decodeURIComponent(v);
        } catch {
          throw new HttpError(400, 'ERR_HTTP_BAD_REQUEST', `bad escape in ${k}`);
        }
      }
      const before = res.headersSent;
      await r.handle({ req, res, url, params, body });
      if (!before && res.headersSent) this.#count(res.statusCode);
      return;
    }
    if (pathMatched) {
      return this.#refuse(res, 405, 'ERR_HTTP_METHOD', 'method', `${method} is not allowed on ${path}`);
    }
    this.#count(404);
    json(res, 404, errorBody('ERR_HTTP_NOT_FOUND', `nothing at ${path}`));
  }

  /** The body, or null when it is larger than the bound (the rest is not read). */
  #readBody(req: IncomingMessage): Promise<Buffer | null> {
    const declared = Number(req.headers['content-length'] ?? '0');
    if (Number.isFinite(declared) && declared > this.#maxBody) {
      req.resume();
      return Promise.resolve(null);
    }
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      let size = 0;
      let done = false;
      req.on('data', (c: Buffer) => {
        if (done) return;
        size += c.length;
        if (size > this.#maxBody) {
          done = true;
          resolve(null);
          return;
        }
        chunks.push(c);
      });
      req.on('end', () => {
        if (!done) resolve(Buffer.concat(chunks));
      });
      req.on('error', (err) => {
        if (!done) reject(err);
      });
    });
  }
}

/** The monitor page's files (the page, its script and style, the chart library). */
export function pageFiles(kind: 'can' | 'console'): StaticFile[] {
  const web = new URL('../../../web/', import.meta.url);
  const read = (name: string): Buffer => readFileSync(new URL(name, web));
  const files: StaticFile[] = [
    { path: '/', type: 'text/html; charset=utf-8', body: read('index.html') },
    { path: '/monitor.css', type: 'text/css; charset=utf-8', body: read('monitor.css') },
    { path: '/monitor.js', type: 'text/javascript; charset=utf-8', body: read('monitor.js') },
  ];
  if (kind === 'can') {
    files.push(
      { path: '/can.js', type: 'text/javascript; charset=utf-8', body: read('can.js') },
      {
        path: '/vendor/uPlot.iife.min.js',
        type: 'text/javascript; charset=utf-8',
        body: readFileSync(new URL(import.meta.resolve('uplot/dist/uPlot.iife.min.js'))),
      },
      {
        path: '/vendor/uPlot.min.css',
        type: 'text/css; charset=utf-8',
        body: readFileSync(new URL(import.meta.resolve('uplot/dist/uPlot.min.css'))),
      },
    );
  } else {
    files.push({ path: '/console.js', type: 'text/javascript; charset=utf-8', body: read('console.js') });
  }
  return files;
}
