// Shared pieces of the end-to-end console scenarios (test/e2e/console-*.test.ts): real Linux guests
// (helpers/guest.ts, through E2eRun of helpers/can-scenarios.ts) with a VirtIO console served by
// one of two back-ends behind one small interface, ConsoleBackend:
//
// - 'in-process' (the default): VhostUserDaemon + ConsoleDevice in this process; a "client" is
//   an object that collects the device's output for a port and types with device.input().
// - 'cli' (CONSOLE_E2E_BACKEND=cli): the vhost-device-console CLI as a child process with
//   `--backend network`; a client is a TCP connection: guest i's console on 127.0.0.1:(P + i),
//   its named port j (1-based) on P + j * N + i. That back-end has no resize channel (the
//   terminal size is --cols/--rows) and no device counters: the tests check `backend.caps` and
//   skip those parts (saying so).
//
// Guest side: CONSOLE_PRELUDE (shell functions for the scenario) starts an interactive shell on
// /dev/hvc0 and finds named ports through /sys/class/virtio-ports/*/name (no udev in the guest).

import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { createServer, type Socket, connect as tcpConnect } from 'node:net';
import { join } from 'node:path';
import { ConsoleDevice, type ConsoleDeviceStats } from '../../../src/core/devices/console/console-device.js';
import type { Logger } from '../../../src/core/util/log.js';
import { native } from '../../../src/node/native/addon.js';
import { VhostUserDaemon } from '../../../src/node/vhost-user/daemon.js';
import { type E2eRun, sleep, until } from './can-scenarios.js';
import { REPO_ROOT } from './guest.js';

// ---------------------------------------------------------------------------------------------
// Clients and back-ends

/** One host-side connection to a guest's console port. */
export interface ConsoleClient {
  /** Types bytes (strings as UTF-8). Never drops: what the device cannot take yet is kept. */
  write(data: string | Uint8Array): void;
  /** Everything received on this client so far, decoded as UTF-8 (raw: CRLF as the tty sends). */
  text(): string;
  /** Bytes received so far. */
  readonly received: number;
  /** Everything received so far, as bytes. */
  bytes(): Buffer;
  /** True once the back-end (or close()) ended this client. */
  readonly closed: boolean;
  /** Resolves with the first match of `re` in text() from character `from` on. */
  waitFor(re: RegExp, timeoutMs?: number, from?: number): Promise<RegExpExecArray>;
  close(): Promise<void>;
}

export interface ConsoleBackendCaps {
  /** resize() exists (the in-process harness drives the device directly). */
  resize: boolean;
  /** connect() accepts ports other than 0. */
  namedPorts: boolean;
  /** deviceStats() exists. */
  stats: boolean;
}

export interface ConsoleBackend {
  readonly kind: 'in-process' | 'cli';
  readonly caps: ConsoleBackendCaps;
  /** The vhost-user socket of guest `guest`. */
  socketPath(guest: number): string;
  /** Connects a client to `port` (0: the console) of guest `guest`. */
  connect(guest: number, port?: number): Promise<ConsoleClient>;
  /** Whether a front-end (QEMU) is connected on the guest's socket. */
  frontEndConnected(guest: number): boolean;
  /** Front-end connections accepted so far on the guest's socket. */
  frontEndConnections(guest: number): number;
  /** caps.resize only. */
  resize(guest: number, cols: number, rows: number): void;
  /** caps.stats only: the counters of the guest's current device (null: no front-end). */
  deviceStats(guest: number): ConsoleDeviceStats | null;
  /** caps.stats only: guest output bytes nobody was connected to read, per port. */
  unreadOutput(guest: number): number[];
  stop(): Promise<void>;
}

export interface ConsoleBackendOptions {
  guests: number;
  /** Names of ports 1..n (the same for every guest). */
  portNames?: string[];
}

/** Which back-end CONSOLE_E2E_BACKEND asks for, and why it cannot run (for the test's `skip`). */
export function consoleBackendKind(): { kind: 'in-process' | 'cli'; skip?: string } {
  const want = process.env.CONSOLE_E2E_BACKEND ?? 'in-process';
  if (want === 'in-process') return { kind: 'in-process' };
  if (want !== 'cli')
    return { kind: 'in-process', skip: `CONSOLE_E2E_BACKEND=${want}: use in-process or cli` };
  if (!existsSync(CLI_ENTRY))
    return { kind: 'cli', skip: `CONSOLE_E2E_BACKEND=cli but ${CLI_ENTRY} does not exist` };
  return { kind: 'cli' };
}

/** Starts the back-end CONSOLE_E2E_BACKEND selects; E2eRun.close() stops it. */
export async function startConsoleBackend(run: E2eRun, opts: ConsoleBackendOptions): Promise<ConsoleBackend> {
  const { kind } = consoleBackendKind();
  const b =
    kind === 'cli' ? await CliConsoleBackend.start(run, opts) : new InProcessConsoleBackend(run, opts);
  run.onClose(() => b.stop());
  run.note('console back-end started', {
    kind,
    guests: opts.guests,
    ports: (opts.portNames ?? []).join(' '),
  });
  return b;
}

/** Common client side: received bytes, waiters, pending input. */
abstract class ClientBase implements ConsoleClient {
  private readonly chunks: Buffer[] = [];
  private decoded = '';
  private decodedChunks = 0;
  received = 0;
  closed = false;
  private readonly waiters = new Set<() => void>();

  protected readonly label: string;

  constructor(label: string) {
    this.label = label;
  }

  protected onData(bytes: Uint8Array): void {
    this.chunks.push(Buffer.from(bytes));
    this.received += bytes.byteLength;
    for (const w of [...this.waiters]) w();
  }

  protected onEnd(): void {
    this.closed = true;
    for (const w of [...this.waiters]) w();
  }

  bytes(): Buffer {
    return Buffer.concat(this.chunks);
  }

  text(): string {
    if (this.decodedChunks !== this.chunks.length) {
      this.decoded = Buffer.concat(this.chunks).toString('utf8');
      this.decodedChunks = this.chunks.length;
    }
    return this.decoded;
  }

  waitFor(re: RegExp, timeoutMs = 20_000, from = 0): Promise<RegExpExecArray> {
    const find = (): RegExpExecArray | null => {
      const m = re.exec(this.text().slice(from));
      if (m) m.index += from;
      return m;
    };
    const now = find();
    if (now) return Promise.resolve(now);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(check);
        const tail = this.text().slice(-600);
        reject(
          new Error(`${this.label}: no ${re} within ${timeoutMs} ms; last output: ${JSON.stringify(tail)}`),
        );
      }, timeoutMs);
      const check = (): void => {
        const m = find();
        if (m || this.closed) {
          clearTimeout(timer);
          this.waiters.delete(check);
          if (m) resolve(m);
          else reject(new Error(`${this.label}: closed while waiting for ${re}`));
        }
      };
      this.waiters.add(check);
    });
  }

  abstract write(data: string | Uint8Array): void;
  abstract close(): Promise<void>;
}

function toBytes(data: string | Uint8Array): Uint8Array {
  return typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
}

// ---- in-process -----------------------------------------------------------------------------

class InProcessClient extends ClientBase {
  private pending: Buffer[] = [];
  private readonly backend: InProcessConsoleBackend;
  readonly guest: number;
  readonly port: number;

  constructor(backend: InProcessConsoleBackend, guest: number, port: number) {
    super(`console client guest ${guest} port ${port}`);
    this.backend = backend;
    this.guest = guest;
    this.port = port;
  }

  output(bytes: Uint8Array): void {
    this.onData(bytes);
  }

  write(data: string | Uint8Array): void {
    if (this.closed) throw new Error(`${this.label}: write after close`);
    this.pending.push(Buffer.from(toBytes(data)));
    this.flush();
  }

  /** Hands pending input to the current device, as much as it takes (inputSpace calls again). */
  flush(): void {
    const dev = this.backend.device(this.guest);
    while (dev !== null && this.pending.length > 0) {
      const head = this.pending[0]!;
      const n = dev.input(this.port, head);
      if (n === head.byteLength) this.pending.shift();
      else {
        this.pending[0] = head.subarray(n);
        return;
      }
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.onEnd();
    this.backend.detach(this);
  }
}

class InProcessConsoleBackend implements ConsoleBackend {
  readonly kind = 'in-process' as const;
  readonly caps = { resize: true, namedPorts: true, stats: true };
  private readonly daemon: VhostUserDaemon;
  private readonly devices: (ConsoleDevice | null)[];
  private readonly clients = new Map<string, InProcessClient>();
  private readonly unread: number[][];
  private readonly paths: string[];
  private readonly portNames: string[];
  private readonly run: E2eRun;

  constructor(run: E2eRun, opts: ConsoleBackendOptions) {
    this.run = run;
    this.portNames = opts.portNames ?? [];
    this.paths = Array.from({ length: opts.guests }, (_, i) => run.socketPathFor(`con.sock${i}`));
    this.devices = this.paths.map(() => null);
    this.unread = this.paths.map(() => Array.from({ length: 1 + this.portNames.length }, () => 0));
    this.daemon = new VhostUserDaemon({
      native,
      paths: this.paths,
      log: run.log,
      makeDevice: (i, log) => this.makeDevice(i, log),
    });
    this.daemon.start();
  }

  private makeDevice(guest: number, log: Logger): ConsoleDevice {
    const dev = new ConsoleDevice({
      portNames: this.portNames,
      log,
      handler: {
        output: (port, bytes) => {
          const c = this.clients.get(`${guest}:${port}`);
          if (c) c.output(bytes);
          else this.unread[guest]![port]! += bytes.byteLength;
        },
        guestOpen: (port, open) => log.info('guest port state', { port, open }),
        inputSpace: (port) => this.clients.get(`${guest}:${port}`)?.flush(),
      },
    });
    this.devices[guest] = dev;
    const destroy = dev.destroy.bind(dev);
    dev.destroy = () => {
      if (this.devices[guest] === dev) this.devices[guest] = null;
      log.info('console device statistics at disconnect', { stats: JSON.stringify(dev.stats) });
      destroy();
    };
    // Clients outlive front-ends: the new device learns who is connected and gets what is pending.
    for (const c of this.clients.values()) {
      if (c.guest !== guest) continue;
      dev.setHostConnected(c.port, true);
      setImmediate(() => c.flush());
    }
    return dev;
  }

  device(guest: number): ConsoleDevice | null {
    return this.devices[guest] ?? null;
  }

  socketPath(guest: number): string {
    const p = this.paths[guest];
    if (p === undefined) throw new RangeError(`no guest ${guest}`);
    return p;
  }

  async connect(guest: number, port = 0): Promise<ConsoleClient> {
    this.socketPath(guest);
    if (port < 0 || port > this.portNames.length) throw new RangeError(`no port ${port}`);
    const key = `${guest}:${port}`;
    if (this.clients.has(key))
      throw new Error(`a client is already connected to guest ${guest} port ${port}`);
    const c = new InProcessClient(this, guest, port);
    this.clients.set(key, c);
    this.device(guest)?.setHostConnected(port, true);
    this.run.note('console client connected', { guest, port });
    return c;
  }

  detach(c: InProcessClient): void {
    this.clients.delete(`${c.guest}:${c.port}`);
    this.device(c.guest)?.setHostConnected(c.port, false);
    this.run.note('console client closed', { guest: c.guest, port: c.port });
  }

  frontEndConnected(guest: number): boolean {
    return this.daemon.connection(guest) !== null;
  }

  frontEndConnections(guest: number): number {
    return this.daemon.status()[guest]?.connections ?? 0;
  }

  resize(guest: number, cols: number, rows: number): void {
    const d = this.device(guest);
    if (d === null) throw new Error(`guest ${guest} has no front-end to resize`);
    d.resize(cols, rows);
    this.run.note('console resized', { guest, cols, rows });
  }

  deviceStats(guest: number): ConsoleDeviceStats | null {
    const d = this.device(guest);
    return d === null ? null : structuredClone(d.stats);
  }

  unreadOutput(guest: number): number[] {
    return [...(this.unread[guest] ?? [])];
  }

  async stop(): Promise<void> {
    for (const c of [...this.clients.values()]) await c.close();
    this.daemon.stop();
  }
}

// ---- the CLI (vhost-device-console --backend network) ------------------------------------------

const CLI_ENTRY = join(REPO_ROOT, 'src/cli/vhost-device-console.ts');

class TcpClient extends ClientBase {
  private readonly sock: Socket;

  constructor(sock: Socket, label: string) {
    super(label);
    this.sock = sock;
    sock.on('data', (b: Buffer) => this.onData(b));
    sock.on('close', () => this.onEnd());
    sock.on('error', () => {});
  }

  write(data: string | Uint8Array): void {
    if (this.closed) throw new Error(`${this.label}: write after close`);
    this.sock.write(toBytes(data));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await new Promise<void>((resolve) => {
      this.sock.once('close', () => resolve());
      this.sock.end();
      setTimeout(() => this.sock.destroy(), 2000).unref();
    });
  }
}

/** `count` consecutive free loopback TCP ports (checked by listening on each). */
async function freePortRange(count: number): Promise<number> {
  const free = (port: number): Promise<boolean> =>
    new Promise((resolve) => {
      const s = createServer();
      s.once('error', () => resolve(false));
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
    });
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20_000 + Math.floor(Math.random() * 30_000);
    let ok = true;
    for (let i = 0; i < count && ok; i++) ok = await free(base + i);
    if (ok) return base;
  }
  throw new Error(`no ${count} consecutive free TCP ports found`);
}

class CliConsoleBackend implements ConsoleBackend {
  readonly kind = 'cli' as const;
  readonly caps = { resize: false, namedPorts: true, stats: false };

  private readonly run: E2eRun;
  private readonly base: string;
  private readonly tcpPort: number;
  private readonly guests: number;
  private readonly ports: number;
  private readonly child: ChildProcess;
  private readonly logPath: string;
  private readonly logFd: number;
  private readonly exited: Promise<unknown>;

  private constructor(
    run: E2eRun,
    base: string,
    tcpPort: number,
    guests: number,
    ports: number,
    child: ChildProcess,
    logPath: string,
    logFd: number,
    exited: Promise<unknown>,
  ) {
    this.run = run;
    this.base = base;
    this.tcpPort = tcpPort;
    this.guests = guests;
    this.ports = ports;
    this.child = child;
    this.logPath = logPath;
    this.logFd = logFd;
    this.exited = exited;
  }

  static async start(run: E2eRun, opts: ConsoleBackendOptions): Promise<CliConsoleBackend> {
    const base = run.socketPathFor('con.sock');
    const ports = 1 + (opts.portNames ?? []).length;
    const tcpPort = await freePortRange(ports * opts.guests);
    const logPath = join(run.workDir, 'daemon-cli.log');
    const logFd = openSync(logPath, 'a');
    const args = [
      '--import',
      'tsx',
      CLI_ENTRY,
      '--socket-path',
      base,
      '-c',
      `${opts.guests}`,
      '--backend',
      'network',
      '--tcp-port',
      `${tcpPort}`,
      ...(opts.portNames ?? []).flatMap((n) => ['--port-name', n]),
    ];
    const child = spawn(process.execPath, args, { cwd: REPO_ROOT, stdio: ['ignore', logFd, logFd] });
    const exited = new Promise((resolve) => child.once('exit', resolve));
    const b = new CliConsoleBackend(run, base, tcpPort, opts.guests, ports, child, logPath, logFd, exited);
    run.note('console CLI started', { pid: child.pid ?? -1, args: args.join(' ') });
    const sockets = Array.from({ length: opts.guests }, (_, i) => b.socketPath(i));
    await until(
      () => sockets.every((p) => existsSync(p)) || child.exitCode !== null,
      'the console CLI to listen',
      30_000,
    );
    if (child.exitCode !== null) {
      throw new Error(
        `the console CLI exited with ${child.exitCode}: ${readFileSync(logPath, 'utf8').slice(-2000)}`,
      );
    }
    return b;
  }

  socketPath(guest: number): string {
    return `${this.base}${guest}`;
  }

  async connect(guest: number, port = 0): Promise<ConsoleClient> {
    if (guest < 0 || guest >= this.guests) throw new RangeError(`no guest ${guest}`);
    if (port < 0 || port >= this.ports) throw new RangeError(`no port ${port}`);
    const tcp = this.tcpPort + port * this.guests + guest;
    for (let attempt = 0; ; attempt++) {
      try {
        const sock = await new Promise<Socket>((resolve, reject) => {
          const s = tcpConnect(tcp, '127.0.0.1');
          s.once('connect', () => resolve(s));
          s.once('error', reject);
        });
        this.run.note('console TCP client connected', { guest, port, tcp });
        return new TcpClient(sock, `console TCP client guest ${guest} port ${port} (127.0.0.1:${tcp})`);
      } catch (err) {
        if (attempt >= 50) throw err;
        await sleep(100);
      }
    }
  }

  private logLines(re: RegExp): number {
    return readFileSync(this.logPath, 'utf8')
      .split('\n')
      .filter((l) => re.test(l)).length;
  }

  frontEndConnected(guest: number): boolean {
    return (
      this.frontEndConnections(guest) >
      this.logLines(new RegExp(`front-end disconnected.* socket=${guest}\\b`))
    );
  }

  frontEndConnections(guest: number): number {
    return this.logLines(new RegExp(`front-end connected.* socket=${guest}\\b`));
  }

  resize(): void {
    throw new Error('the CLI back-end has no resize channel');
  }

  deviceStats(): ConsoleDeviceStats | null {
    throw new Error('the CLI back-end has no statistics channel here');
  }

  unreadOutput(): number[] {
    throw new Error('the CLI back-end has no statistics channel here');
  }

  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGTERM');
      const t = setTimeout(() => this.child.kill('SIGKILL'), 5000);
      await this.exited;
      clearTimeout(t);
    }
    closeSync(this.logFd);
  }
}

// ---------------------------------------------------------------------------------------------
// Talking to the guest's shell

let commandSeq = 0;

/**
 * Types `cmd` into the shell on `client` and returns what it printed (CRLF as LF, without the
 * trailing newline). The command is framed by two echo commands whose output (`:B7:`) differs from
 * their echoed input (`:B$((7)):`), so the tty's echo of the typed line never matches.
 */
export async function shellRun(client: ConsoleClient, cmd: string, timeoutMs = 20_000): Promise<string> {
  const n = ++commandSeq;
  const from = client.text().length;
  client.write(`echo ":B$((${n})):"; ${cmd}; echo ":E$((${n})):"\n`);
  const m = await client.waitFor(new RegExp(`:B${n}:\\r?\\n([\\s\\S]*?):E${n}:`), timeoutMs, from);
  return m[1]!.replace(/\r\n/g, '\n').replace(/\n$/, '');
}

/**
 * Guest-side shell functions for console scenarios (after GUEST_PRELUDE):
 * - `console_shell TAG`: starts an interactive sh in its own session with /dev/hvc0 as its
 *   controlling terminal and stdin/stdout/stderr, and signals TAG (/mnt/TAG) once it runs; its pid
 *   is in $shell_pid (`wait $shell_pid` keeps the scenario alive until the shell exits).
 * - `port_dev NAME [SECONDS]`: prints /dev/vportXpY of the port named NAME once it exists.
 */
export const CONSOLE_PRELUDE = `
wait_dev() {
  _n=0; _s=30; [ $# -lt 2 ] || _s=$2
  until [ -c "$1" ]; do
    _n=$((_n + 1)); [ $_n -le $((_s * 20)) ] || fail "$1 did not appear within $_s s"
    sleep 0.05
  done
}
console_shell() {
  wait_dev /dev/hvc0
  setsid sh -c 'exec 0<>/dev/hvc0 1>&0 2>&0
echo ok > "/mnt/$1.tmp" && mv "/mnt/$1.tmp" "/mnt/$1"
PS1="hvc# " exec sh -i' console-shell "$1" &
  shell_pid=$!
}
port_dev() {
  _n=0; _s=30; [ $# -lt 2 ] || _s=$2
  while :; do
    for _p in /sys/class/virtio-ports/*; do
      [ "$(cat "$_p/name" 2>/dev/null)" = "$1" ] || continue
      wait_dev "/dev/\${_p##*/}" 10
      echo "/dev/\${_p##*/}"
      return 0
    done
    _n=$((_n + 1)); [ $_n -le $((_s * 20)) ] || return 1
    sleep 0.05
  done
}
`;
