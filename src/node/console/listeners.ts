/**
 * Where console clients come from: a TCP or Unix-socket listener per port endpoint (the `network`
 * and `unix` backends), or the daemon's own terminal (`nested`, see nested-terminal.ts).
 *
 * One client per port at a time: a second one gets a one-line reason and is closed.
 */
import { lstatSync, unlinkSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import type { Logger } from '../../core/util/log.js';
import { CodedError } from '../errors.js';
import type { ConsolePortEndpoint } from './port-endpoint.js';

export type ListenAddress = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

export function describeAddress(a: ListenAddress): string {
  if (a.kind === 'unix') return `unix:${a.path}`;
  return a.host.includes(':') ? `tcp:[${a.host}]:${a.port}` : `tcp:${a.host}:${a.port}`;
}

export type ListenerErrorCode =
  | 'ERR_PATH'
  | 'ERR_PATH_NOT_SOCKET'
  | 'ERR_PATH_IN_USE'
  | 'ERR_ADDR_IN_USE'
  | 'ERR_LISTEN';

export class ListenerError extends CodedError<ListenerErrorCode> {}

/**
 * Makes sure a Unix listener path can be used: a stale socket nobody answers on is removed; a
 * live one, or anything that is not a socket, is an error.
 */
async function prepareUnixPath(path: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch (err) {
    if ((err as { code?: string }).code === 'ENOENT') return;
    throw new ListenerError('ERR_PATH', `cannot inspect ${path}: ${(err as Error).message}`, { cause: err });
  }
  if (!isSocket) throw new ListenerError('ERR_PATH_NOT_SOCKET', `${path} exists and is not a socket`);
  const live = await new Promise<boolean>((resolve) => {
    const s = createConnection(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
  if (live) throw new ListenerError('ERR_PATH_IN_USE', `${path} is in use by a running program`);
  unlinkSync(path);
}

/** How long a newcomer waits for a busy port's client to turn out to be gone, and how often it looks. */
const BUSY_WAIT_MS = 200;
const BUSY_RETRY_MS = 25;

export class PortListener {
  readonly endpoint: ConsolePortEndpoint;
  readonly address: ListenAddress;
  private readonly log: Logger;
  private server: Server | null = null;
  private readonly waiting: { s: Socket; since: number }[] = [];
  private retry: ReturnType<typeof setTimeout> | null = null;

  constructor(endpoint: ConsolePortEndpoint, address: ListenAddress, log: Logger) {
    this.endpoint = endpoint;
    this.address = address;
    this.log = log;
  }

  async start(): Promise<void> {
    const a = this.address;
    if (a.kind === 'unix') await prepareUnixPath(a.path);
    const server = createServer({ pauseOnConnect: false, noDelay: true }, (s) => this.onClient(s));
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) => {
        reject(
          new ListenerError(
            err.code === 'EADDRINUSE' ? 'ERR_ADDR_IN_USE' : 'ERR_LISTEN',
            `cannot listen on ${describeAddress(a)} for ${this.endpoint.label}: ${err.message}`,
            { cause: err },
          ),
        );
      });
      if (a.kind === 'unix') server.listen(a.path, resolve);
      else server.listen({ host: a.host, port: a.port, exclusive: true }, resolve);
    });
    server.on('error', (err) =>
      this.log.error('console listener error', { port: this.endpoint.label, reason: err.message }),
    );
    this.server = server;
  }

  private onClient(s: Socket): void {
    s.pause();
    this.waiting.push({ s, since: Date.now() });
    this.serveWaiting();
  }

  /**
   * Newcomers are served in arrival order. A busy port may only look busy: its client can be gone
   * with the close not yet read (a client that connects right after the previous one left), so a
   * newcomer waits up to BUSY_WAIT_MS for the port to free up before it is refused.
   */
  private serveWaiting(): void {
    while (this.waiting.length > 0) {
      const { s, since } = this.waiting[0]!;
      if (s.destroyed) {
        this.waiting.shift();
        continue;
      }
      if (this.endpoint.hasClient && Date.now() - since < BUSY_WAIT_MS && this.server !== null) break;
      this.waiting.shift();
      this.admit(s);
    }
    if (this.waiting.length > 0 && this.retry === null) {
      this.retry = setTimeout(() => {
        this.retry = null;
        this.serveWaiting();
      }, BUSY_RETRY_MS);
    }
  }

  private admit(s: Socket): void {
    const peer = s.remoteAddress !== undefined ? `${s.remoteAddress}:${s.remotePort}` : 'unix';
    if (!this.endpoint.attachClient(s)) {
      this.log.warn('refusing a second console client', { port: this.endpoint.label, peer });
      s.on('error', () => {});
      s.end(`vhost-device-console: ${this.endpoint.label} already has a client; try again later\r\n`, () =>
        s.destroy(),
      );
      return;
    }
    s.resume();
    this.log.info('console client connected', { port: this.endpoint.label, peer });
    s.once('close', () => {
      this.log.info('console client disconnected', { port: this.endpoint.label, peer });
      this.serveWaiting();
    });
  }

  stop(): void {
    this.server?.close();
    this.server = null;
    if (this.retry !== null) clearTimeout(this.retry);
    this.retry = null;
    for (const { s } of this.waiting.splice(0)) s.destroy();
    if (this.address.kind === 'unix') {
      try {
        unlinkSync(this.address.path);
      } catch {
        /* already gone */
      }
    }
  }
}
