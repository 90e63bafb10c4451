/**
 * Where console clients come from: a TCP or Unix-socket listener per port endpoint (the `network`
 * and `unix` backends), or the daemon's own terminal (`nested`, see nested-terminal.ts).
 *
 * One client per port at a time: a second one gets a one-line reason and is closed.
 */
import { lstatSync, unlinkSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import type { Logger } from '../../core/util/log.js';
import type { ConsolePortEndpoint } from './port-endpoint.js';

export type ListenAddress = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

export function describeAddress(a: ListenAddress): string {
  if (a.kind === 'unix') return `unix:${a.path}`;
  return a.host.includes(':') ? `tcp:[${a.host}]:${a.port}` : `tcp:${a.host}:${a.port}`;
}

export class ListenerError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ListenerError';
    this.code = code;
  }
}

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

export class PortListener {
  readonly endpoint: ConsolePortEndpoint;
  readonly address: ListenAddress;
  private readonly log: Logger;
  private server: Server | null = null;

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
    const peer = s.remoteAddress !== undefined ? `${s.remoteAddress}:${s.remotePort}` : 'unix';
    if (!this.endpoint.attachClient(s)) {
      this.log.warn('refusing a second console client', { port: this.endpoint.label, peer });
      s.on('error', () => {});
      s.end(`vhost-device-console: ${this.endpoint.label} already has a client; try again later\r\n`, () =>
        s.destroy(),
      );
      return;
    }
    this.log.info('console client connected', { port: this.endpoint.label, peer });
    s.once('close', () => this.log.info('console client disconnected', { port: this.endpoint.label, peer }));
  }

  stop(): void {
    this.server?.close();
    this.server = null;
    if (this.address.kind === 'unix') {
      try {
        unlinkSync(this.address.path);
      } catch {
        /* already gone */
      }
    }
  }
}
