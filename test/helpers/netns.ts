// Several "hosts" on one machine for the network tests: a network namespace per host, all on one
// LAN (a bridge in a namespace of its own, a veth pair from each host to it), with addresses from
// the documentation ranges (192.0.2.0/24, 2001:db8::/64) that exist only inside these namespaces.
// Nothing is added to the namespace the tests run in. Daemons run inside a host with
// `ip netns exec`; their vhost-user sockets are files, so front-ends in the test process reach them.
//
// Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and iproute2. `netnsSkip` says why the tests skip
// without them; under CI (CI set) they must not skip and fail instead.
//
// Cleanup always runs: t.after() kills what runs in the namespaces (by pid) and deletes them (their
// veths go with them), and a process exit hook does the same if the test process dies first.
// Namespaces are named vdt-PID-N-ROLE; ones left by a test process that no longer runs (killed
// with SIGKILL) are removed by the next lab.

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { TestContext } from 'node:test';
import { cli, ROOT } from './cli.js';

const IP = '/usr/sbin/ip';
const SETPRIV = '/usr/bin/setpriv';
const PREFIX = 'vdt-';

function ip(args: string[]): { ok: boolean; out: string } {
  const r = spawnSync(IP, args, { encoding: 'utf8', timeout: 10_000 });
  return {
    ok: r.status === 0,
    out: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? String(r.error) : ''}`.trim(),
  };
}

function mustIp(args: string[]): string {
  const r = ip(args);
  if (!r.ok) throw new Error(`ip ${args.join(' ')}: ${r.out}`);
  return r.out;
}

/** Why network-namespace tests cannot run here (undefined when they can). */
function probe(): string | undefined {
  if (process.getuid?.() !== 0) return 'network namespaces need root';
  const r = spawnSync(IP, ['-V'], { encoding: 'utf8' });
  if (r.status !== 0) return `iproute2 "ip" is not available (${r.error?.message ?? r.stderr})`;
  const name = `${PREFIX}${process.pid}-probe`;
  const add = ip(['netns', 'add', name]);
  if (!add.ok) return `cannot create a network namespace: ${add.out}`;
  ip(['netns', 'del', name]);
  return undefined;
}

const why = probe();
if (why !== undefined && process.env.CI) {
  throw new Error(`network-namespace tests must run under CI, but: ${why}`);
}
/** The test's `skip` option: a reason, or undefined when namespaces work. */
export const netnsSkip: string | undefined = why;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function deleteNamespace(name: string): void {
  // Kill what still runs inside (by pid), then delete: the veth ends inside go with it.
  const pids = ip(['netns', 'pids', name])
    .out.split(/\s+/)
    .filter((p) => /^\d+$/.test(p));
  for (const p of pids) {
    try {
      process.kill(Number(p), 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  ip(['netns', 'del', name]);
}

/** Removes namespaces left behind by test processes that died without cleaning up. */
function removeStale(): void {
  for (const line of ip(['netns', 'list']).out.split('\n')) {
    const m = /^(vdt-(\d+)-\S+)/.exec(line);
    if (m && !alive(Number(m[2]))) deleteNamespace(m[1]!);
  }
}

const live = new Set<string>();
let hooked = false;
function track(name: string): void {
  live.add(name);
  if (hooked) return;
  hooked = true;
  process.on('exit', () => {
    for (const n of live) deleteNamespace(n);
  });
}

let labs = 0;

export interface NetHost {
  /** Index in the lab, 0.. */
  readonly index: number;
  /** The namespace's name (for `ip netns exec`). */
  readonly ns: string;
  readonly ipv4: string;
  readonly ipv6: string;
}

export interface NetLab {
  readonly hosts: readonly NetHost[];
  /** Runs a command in host `i` and waits for it (10 s at most). */
  exec(i: number, argv: string[]): { status: number | null; stdout: string; stderr: string };
  /** Starts a command in host `i` (it dies with the test process: parent-death signal KILL). */
  spawn(i: number, argv: string[]): ChildProcess;
  /** Kills everything in the namespaces and deletes them (also done after the test). */
  close(): void;
}

/**
 * `n` hosts on one LAN: host i has 192.0.2.(10+i)/24 and 2001:db8::(10+i)/64 on its eth0, and its
 * loopback up.
 */
export function createNetLab(t: TestContext, n: number): NetLab {
  if (netnsSkip !== undefined) throw new Error(netnsSkip);
  removeStale();
  const tag = `${PREFIX}${process.pid}-${labs++}`;
  const sw = `${tag}-sw`;
  const names: string[] = [];
  const close = (): void => {
    for (const name of [...names, sw]) {
      if (!live.delete(name)) continue;
      deleteNamespace(name);
    }
  };
  t.after(close);
  mustIp(['netns', 'add', sw]);
  track(sw);
  mustIp(['-n', sw, 'link', 'add', 'br0', 'type', 'bridge']);
  mustIp(['-n', sw, 'link', 'set', 'br0', 'up']);
  const hosts: NetHost[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const ns = `${tag}-h${i}`;
      mustIp(['netns', 'add', ns]);
      names.push(ns);
      track(ns);
      // Both ends are created inside their namespaces: nothing appears in ours, even briefly.
      mustIp(['link', 'add', 'eth0', 'netns', ns, 'type', 'veth', 'peer', 'name', `p${i}`, 'netns', sw]);
      mustIp(['-n', sw, 'link', 'set', `p${i}`, 'master', 'br0']);
      mustIp(['-n', sw, 'link', 'set', `p${i}`, 'up']);
      const ipv4 = `192.0.2.${10 + i}`;
      const ipv6 = `2001:db8::${10 + i}`;
      mustIp(['-n', ns, 'addr', 'add', `${ipv4}/24`, 'dev', 'eth0']);
      mustIp(['-n', ns, 'addr', 'add', `${ipv6}/64`, 'dev', 'eth0', 'nodad']);
      mustIp(['-n', ns, 'link', 'set', 'eth0', 'up']);
      mustIp(['-n', ns, 'link', 'set', 'lo', 'up']);
      hosts.push({ index: i, ns, ipv4, ipv6 });
    }
  } catch (err) {
    close();
    throw err;
  }
  const inNs = (i: number, argv: string[]): string[] => {
    const h = hosts[i];
    if (h === undefined) throw new Error(`no host ${i}`);
    return ['netns', 'exec', h.ns, SETPRIV, '--pdeathsig', 'KILL', '--', ...argv];
  };
  return {
    hosts,
    exec(i, argv) {
      const r = spawnSync(IP, inNs(i, argv), { encoding: 'utf8', timeout: 10_000, cwd: ROOT });
      return {
        status: r.status,
        stdout: r.stdout ?? '',
        stderr: `${r.stderr ?? ''}${r.error ? String(r.error) : ''}`,
      };
    },
    spawn(i, argv) {
      // `ip netns exec` and setpriv exec: the child's pid is the command's own.
      return spawn(IP, inNs(i, argv), { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    },
    close,
  };
}

/** One stats dump of a daemon: its JSON lines (process, sockets, attachments, buses). */
export type StatsLine = Record<string, unknown>;

/**
 * vhost-device-can (the TypeScript sources, through tsx) running in a lab host, with JSON logs on
 * stderr: it is ready when it logged "started"; `stats()` asks for a SIGUSR1 dump.
 */
export class NetDaemon {
  readonly lab: NetLab;
  readonly host: number;
  readonly args: readonly string[];
  readonly dir: string;
  readonly sockets: number;
  child: ChildProcess;
  readonly lines: string[] = [];
  #started!: Promise<void>;
  #exited!: Promise<number | null>;
  #dump: { lines: StatsLine[]; buses: number; resolve(l: StatsLine[]): void } | null = null;
  readonly #buses: number;

  /** Starts the daemon in `host` with `sockets` sockets (paths: `path(i)`) and `args`. */
  constructor(
    t: TestContext,
    lab: NetLab,
    host: number,
    opts: { sockets?: number; args?: string[]; buses?: number } = {},
  ) {
    this.lab = lab;
    this.host = host;
    this.sockets = opts.sockets ?? 1;
    this.args = opts.args ?? [];
    this.#buses = opts.buses ?? 1;
    this.dir = mkdtempSync(join(tmpdir(), 'vdt-net-'));
    this.child = this.#spawn();
    t.after(() => {
      this.child.kill('SIGKILL');
      rmSync(this.dir, { recursive: true, force: true });
    });
  }

  path(i: number): string {
    return join(this.dir, `can.sock${i}`);
  }

  #spawn(): ChildProcess {
    const argv = [
      process.execPath,
      ...cli('vhost-device-can.ts').argv,
      '-s',
      join(this.dir, 'can.sock'),
      '-c',
      String(this.sockets),
      '--log-format',
      'json',
      ...this.args,
    ];
    const child = this.lab.spawn(this.host, argv);
    let ready: () => void = () => {};
    this.#started = new Promise<void>((resolve, reject) => {
      ready = resolve;
      child.once('exit', (code, sig) =>
        reject(
          new Error(
            `daemon in host ${this.host} exited (${code ?? sig}): ${this.lines.slice(-5).join('\n')}`,
          ),
        ),
      );
    });
    this.#started.catch(() => {});
    this.#exited = new Promise((r) => child.once('exit', (code) => r(code)));
    createInterface({ input: child.stdout! }).on('line', (l) => this.lines.push(l));
    createInterface({ input: child.stderr! }).on('line', (line) => {
      this.lines.push(line);
      let o: StatsLine;
      try {
        o = JSON.parse(line) as StatsLine;
      } catch {
        return;
      }
      if (o.msg === 'vhost-device-can started') ready();
      const d = this.#dump;
      if (o.msg === 'stats' && d !== null) {
        d.lines.push(o);
        // The bus lines come last, one per bus (they alone have busLoad).
        if (o.busLoad !== undefined && d.lines.filter((l) => l.busLoad !== undefined).length >= d.buses) {
          this.#dump = null;
          d.resolve(d.lines);
        }
      }
    });
    return child;
  }

  /** Resolves when the daemon serves (rejects if it exits first or takes over 30 s). */
  async ready(): Promise<this> {
    await withTimeout(this.#started, 30_000, `daemon in host ${this.host} to start`);
    return this;
  }

  /** One SIGUSR1 statistics dump. */
  stats(): Promise<StatsLine[]> {
    if (this.#dump !== null) return Promise.reject(new Error('a dump is already being collected'));
    const p = new Promise<StatsLine[]>((resolve) => {
      this.#dump = { lines: [], buses: this.#buses, resolve };
    });
    this.child.kill('SIGUSR1');
    const what = `stats of the daemon in host ${this.host} (pid ${this.child.pid}, exit ${this.child.exitCode ?? this.child.signalCode}); last lines: ${this.lines.slice(-4).join('\n')}`;
    return withTimeout(p, 10_000, what).finally(() => {
      this.#dump = null;
    });
  }

  /** The stats line of the link called `name` (the only link when omitted). */
  async link(name?: string): Promise<StatsLine> {
    const links = (await this.stats()).filter((l) => typeof l.link === 'string');
    const l = name === undefined ? links[0] : links.find((x) => x.link === name);
    if (l === undefined || (name === undefined && links.length !== 1)) {
      throw new Error(`no single link ${name ?? ''} in ${JSON.stringify(links)}`);
    }
    return l;
  }

  /** The stats line of bus `name`. */
  async bus(name = 'default'): Promise<StatsLine> {
    const l = (await this.stats()).find((x) => x.bus === name && x.busLoad !== undefined);
    if (l === undefined) throw new Error(`no bus ${name}`);
    return l;
  }

  /** Kills the daemon (SIGKILL: no goodbye) and waits until it is gone. */
  async kill(): Promise<void> {
    this.child.kill('SIGKILL');
    await this.#exited;
  }

  /** Starts it again with the same arguments (after kill()). */
  async restart(): Promise<this> {
    rmSync(this.dir, { recursive: true, force: true }); // a killed daemon leaves its socket files
    mkdirSync(this.dir);
    this.child = this.#spawn();
    return this.ready();
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
    p.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(timer);
        reject(e);
      },
    );
  });
}

/** Polls `pick` until it returns a value other than undefined (async allowed); rejects after `ms`. */
export async function waitUntil<T>(
  what: string,
  pick: () => Promise<T | undefined> | T | undefined,
  ms = 10_000,
): Promise<T> {
  const end = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await pick();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// ---- Network link kinds: the same scenario over cannelloni and over socketcand ------------------

/** A daemon's end of a network link, the same fields whatever the kind (see `linkEnds`). */
export interface LinkEnd {
  /** 'link' (a --link) or 'server' (the socketcand server, all its clients together). */
  readonly role: 'link' | 'server';
  readonly name: string;
  /** A link: state up. The server: at least one client connected. */
  readonly up: boolean;
  /** Frames sent to / received from the other daemon. */
  readonly tx: number;
  readonly rx: number;
  /** Frames for the other daemon dropped while the link was down. */
  readonly droppedDown: number;
  /** Frames for the other daemon dropped because its queue was full (or it read too slowly). */
  readonly droppedOverflow: number;
  /** Malformed or unexpected input from the network (by any sender). */
  readonly bad: number;
  /** Datagrams missing in the sequence (cannelloni) or frames dropped on a muted path (socketcand). */
  readonly lost: number;
  readonly lastError: string;
  /** The stats line it was made from. */
  readonly line: StatsLine;
}

const num = (l: StatsLine, ...keys: string[]): number => keys.reduce((s, k) => s + Number(l[k] ?? 0), 0);

/** The link ends in one statistics dump: each --link, and the socketcand server when it listens. */
export function linkEnds(lines: readonly StatsLine[]): LinkEnd[] {
  const out: LinkEnd[] = [];
  for (const l of lines) {
    if (typeof l.link === 'string' && l.link.startsWith('cannelloni:')) {
      out.push({
        role: 'link',
        name: l.link,
        up: l.state === 'up',
        tx: num(l, 'txFrames'),
        rx: num(l, 'rxFrames'),
        droppedDown: num(l, 'txDroppedDown'),
        droppedOverflow: num(l, 'txDroppedOverflow'),
        bad: num(l, 'rxMalformed', 'rxForeign'),
        lost: num(l, 'rxLost'),
        lastError: String(l.lastError ?? ''),
        line: l,
      });
    } else if (typeof l.link === 'string' && l.link.startsWith('socketcand:')) {
      out.push({
        role: 'link',
        name: l.link,
        up: l.state === 'up',
        tx: num(l, 'framesOut'),
        rx: num(l, 'framesIn'),
        droppedDown: num(l, 'droppedWhileDown'),
        droppedOverflow: num(l, 'droppedOverflow'),
        bad: num(l, 'badElements', 'remoteErrors'),
        lost: num(l, 'droppedMuted'),
        lastError: String(l.lastError ?? ''),
        line: l,
      });
    } else if (typeof l['socketcand-server'] === 'string') {
      out.push({
        role: 'server',
        name: l['socketcand-server'],
        up: l.state === 'listening' && num(l, 'clients') > 0,
        tx: num(l, 'framesOut'),
        rx: num(l, 'framesIn'),
        droppedDown: 0,
        droppedOverflow: num(l, 'droppedSlowClient'),
        bad: num(l, 'protocolErrors'),
        lost: num(l, 'droppedMuted'),
        lastError: '',
        line: l,
      });
    } else if (typeof l.link === 'string') {
      throw new Error(`a link of unknown kind: ${JSON.stringify(l)}`);
    }
  }
  return out;
}

/** The only link end of daemon `d` (a pair: its link, or its socketcand server). */
export async function linkEnd(d: NetDaemon): Promise<LinkEnd> {
  const ends = linkEnds(await d.stats());
  if (ends.length !== 1) throw new Error(`host ${d.host}: not one link end: ${JSON.stringify(ends)}`);
  return ends[0]!;
}

/** Waits until every link end of every daemon is up. */
export async function linksUp(daemons: readonly NetDaemon[], ms = 15_000): Promise<void> {
  await Promise.all(
    daemons.map((d) =>
      waitUntil(
        `the link ends of host ${d.host} up`,
        async () => {
          const ends = linkEnds(await d.stats());
          return ends.length > 0 && ends.every((e) => e.up) ? true : undefined;
        },
        ms,
      ),
    ),
  );
}

/**
 * One kind of network link between daemons of a lab. `args` gives each host's daemon arguments for
 * a tree of `edges` [i, j] joining bus `default` of hosts i and j (the k-th edge on port PORT + k;
 * for socketcand, host i runs the server and host j links to it).
 */
export interface NetLinkKind {
  readonly name: 'cannelloni' | 'socketcand';
  args(lab: NetLab, edges: readonly (readonly [number, number])[], opts?: LinkArgsOptions): string[][];
  /** What the surviving end's lastError says once the daemon at the other end was killed. */
  readonly peerGone: RegExp;
}

export interface LinkArgsOptions {
  /** IPv6 addresses instead of IPv4. */
  v6?: boolean;
  /** Quick failure detection where the kind has settings for it (cannelloni keepalives). */
  fast?: boolean;
}

/** The first port the link kinds use in a lab. */
export const LINK_PORT = 20000;

function hostAddr(lab: NetLab, i: number, v6: boolean): string {
  const h = lab.hosts[i];
  if (h === undefined) throw new Error(`no host ${i}`);
  return v6 ? `[${h.ipv6}]` : h.ipv4;
}

export const CANNELLONI: NetLinkKind = {
  name: 'cannelloni',
  args(lab, edges, opts = {}) {
    const v6 = opts.v6 === true;
    const q = opts.fast === true ? '&keepalive=100&timeout=500' : '';
    const out: string[][] = lab.hosts.map(() => []);
    edges.forEach(([i, j], k) => {
      const port = LINK_PORT + k;
      const [ai, aj] = [hostAddr(lab, i, v6), hostAddr(lab, j, v6)];
      out[i]!.push('--link', `default=cannelloni://${aj}:${port}?local=${ai}:${port}${q}`);
      out[j]!.push('--link', `default=cannelloni://${ai}:${port}?local=${aj}:${port}${q}`);
    });
    return out;
  },
  // Port unreachable (ICMP) for the next datagram, or keepalives that stopped.
  peerGone: /refused|no datagram/,
};

export const SOCKETCAND: NetLinkKind = {
  name: 'socketcand',
  args(lab, edges, opts = {}) {
    const v6 = opts.v6 === true;
    const out: string[][] = lab.hosts.map(() => []);
    const servers = new Map<number, number>();
    edges.forEach(([i, j], k) => {
      if (!servers.has(i)) {
        servers.set(i, LINK_PORT + k);
        // A server on the LAN, open to the lab's subnets only.
        out[i]!.push(
          '--socketcand-listen',
          `${hostAddr(lab, i, v6)}:${LINK_PORT + k}`,
          '--socketcand-allow',
          '192.0.2.0/24',
          '--socketcand-allow',
          '2001:db8::/64',
        );
      }
      out[j]!.push('--link', `default=socketcand://${hostAddr(lab, i, v6)}:${servers.get(i)}/default`);
    });
    return out;
  },
  // The server's connection closed, then connections refused until it listens again.
  peerGone: /closed|ECONNREFUSED|ECONNRESET/,
};

/** Both kinds, for tests that run the same body over each. */
export const LINK_KINDS: readonly NetLinkKind[] = [CANNELLONI, SOCKETCAND];
