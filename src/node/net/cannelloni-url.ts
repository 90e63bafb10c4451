/**
 * `--link BUS=cannelloni://RHOST:RPORT[?local=LADDR:LPORT&keepalive=MS&timeout=MS&datagram=BYTES]`:
 * validated without I/O (a bad value is a usage error before anything starts).
 *
 * - RHOST: an IPv4 address, an IPv6 address in brackets (`[fd00::2]`), or a host name (looked up
 *   each time the link binds; IPv4 unless the local address is IPv6). RPORT: 1..65535.
 * - local: the address and port this end binds, `LADDR:LPORT`, `[V6]:LPORT` or `:LPORT` (any
 *   address). Optional: by default the link binds the any-address of the remote's family and the
 *   remote's port, the symmetric setup cannelloni's own examples use (both ends on 20000). Its
 *   family must match the remote's.
 * - keepalive: milliseconds between the empty datagrams this end sends while it has nothing else
 *   to send (default 1000; 0 = none). They tell a peer that it is heard; a real cannelloni ignores them.
 * - timeout: a peer that sends keepalives and is silent this long (milliseconds, default three
 *   keepalive periods, 3000 with no keepalive of our own) is considered down.
 * - datagram: the largest datagram sent, in bytes (default 1472, what cannelloni sends and reads;
 *   a larger one only between two instances of this daemon).
 */
import { isIP } from 'node:net';
import { CANNELLONI_DEFAULT_DATAGRAM, checkMaxDatagram } from '../../core/net/cannelloni.js';

export interface CannelloniLinkSpec {
  /** The remote host as written, without brackets. */
  readonly remoteHost: string;
  readonly remotePort: number;
  /** The local address to bind (a literal; the family's any-address by default). */
  readonly localAddress: string;
  readonly localPort: number;
  readonly family: 4 | 6;
  /** 0 = no keepalives. */
  readonly keepaliveMs: number;
  readonly timeoutMs: number;
  readonly maxDatagram: number;
}

export const CANNELLONI_DEFAULT_KEEPALIVE_MS = 1000;
const MAX_MS = 3_600_000;
const HOSTNAME =
  /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
const URL_RE = /^cannelloni:\/\/(?:\[([^\]]*)\]|([^[\]/:?#]*))(?::([^/?#]*))?\/?(?:\?([^#]*))?$/i;
const KEYS = new Set(['local', 'keepalive', 'timeout', 'datagram']);

/** `host:port` with brackets around an IPv6 address. */
export function hostPort(host: string, port: number): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`;
}

function parsePort(s: string | undefined, what: string): number | string {
  if (s === undefined || s === '') return `${what} port is missing`;
  if (!/^\d{1,5}$/.test(s) || Number(s) < 1 || Number(s) > 65535) {
    return `${what} port "${s}" is not a number 1..65535`;
  }
  return Number(s);
}

function parseMs(s: string, what: string): number | string {
  if (!/^\d+$/.test(s) || Number(s) > MAX_MS) return `${what} must be milliseconds 0..${MAX_MS}, got "${s}"`;
  return Number(s);
}

/** The spec for a link URL, or a message saying what is wrong with it. */
export function parseCannelloniUrl(value: string): CannelloniLinkSpec | string {
  const m = URL_RE.exec(value);
  if (m === null) {
    return 'expected cannelloni://RHOST:RPORT[?local=LADDR:LPORT] (IPv6 addresses in brackets, no path)';
  }
  const [, v6, name, portText, query] = m;
  if (v6 === undefined && portText?.includes(':')) {
    return 'an IPv6 address goes in brackets: cannelloni://[ADDR]:PORT';
  }
  let remoteHost: string;
  let family: 4 | 6 | 0;
  if (v6 !== undefined) {
    if (isIP(v6) !== 6) return `"[${v6}]" is not an IPv6 address`;
    remoteHost = v6;
    family = 6;
  } else {
    remoteHost = name ?? '';
    if (remoteHost === '') return 'the remote host is missing';
    const ip = isIP(remoteHost);
    if (ip === 4) family = 4;
    else if (/^[\d.]+$/.test(remoteHost)) return `"${remoteHost}" is not an IPv4 address`;
    else if (!HOSTNAME.test(remoteHost)) return `"${remoteHost}" is not a host name or address`;
    else family = 0;
  }
  const remotePort = parsePort(portText, 'the remote');
  if (typeof remotePort === 'string') return remotePort;

  const params = new URLSearchParams(query ?? '');
  for (const key of new Set(params.keys())) {
    if (!KEYS.has(key)) return `unknown parameter "${key}" (known: ${[...KEYS].join(', ')})`;
    if (params.getAll(key).length > 1) return `parameter "${key}" is given twice`;
  }
  let localAddress = '';
  let localPort = remotePort;
  const local = params.get('local');
  if (local !== null) {
    const lm = /^(?:\[([^\]]*)\]|([^[\]:]*)):([^:]*)$/.exec(local);
    if (lm === null) return `local "${local}" is not LADDR:LPORT, [LADDR]:LPORT or :LPORT`;
    const addr = lm[1] ?? lm[2] ?? '';
    if (lm[1] !== undefined && isIP(addr) !== 6) return `local "[${addr}]" is not an IPv6 address`;
    if (lm[1] === undefined && addr !== '' && isIP(addr) !== 4) {
      return `local address "${addr}" is not an IPv4 address (a local address must be a literal; IPv6 in brackets)`;
    }
    const p = parsePort(lm[3], 'the local');
    if (typeof p === 'string') return p;
    localPort = p;
    if (addr !== '') {
      const lf = isIP(addr) as 4 | 6;
      if (family !== 0 && lf !== family) {
        return `local address ${addr} is IPv${lf} but the remote ${remoteHost} is IPv${family}`;
      }
      family = lf;
      localAddress = addr;
    }
  }
  const fam: 4 | 6 = family === 0 ? 4 : family;
  if (localAddress === '') localAddress = fam === 6 ? '::' : '0.0.0.0';

  let keepaliveMs = CANNELLONI_DEFAULT_KEEPALIVE_MS;
  const ka = params.get('keepalive');
  if (ka !== null) {
    const v = parseMs(ka, 'keepalive');
    if (typeof v === 'string') return v;
    if (v !== 0 && v < 10) return `keepalive must be 0 (none) or at least 10 ms, got ${v}`;
    keepaliveMs = v;
  }
  let timeoutMs = keepaliveMs > 0 ? 3 * keepaliveMs : 3 * CANNELLONI_DEFAULT_KEEPALIVE_MS;
  const to = params.get('timeout');
  if (to !== null) {
    const v = parseMs(to, 'timeout');
    if (typeof v === 'string') return v;
    if (v < 20) return `timeout must be at least 20 ms, got ${v}`;
    if (keepaliveMs > 0 && v <= keepaliveMs)
      return `timeout (${v} ms) must be longer than keepalive (${keepaliveMs} ms)`;
    timeoutMs = v;
  }
  let maxDatagram = CANNELLONI_DEFAULT_DATAGRAM;
  const dg = params.get('datagram');
  if (dg !== null) {
    const v = /^\d+$/.test(dg) ? Number(dg) : Number.NaN;
    const bad = checkMaxDatagram(v);
    if (bad !== undefined) return `datagram: ${bad.replace(/got NaN$/, `got "${dg}"`)}`;
    maxDatagram = v;
  }
  return {
    remoteHost,
    remotePort,
    localAddress,
    localPort,
    family: fam,
    keepaliveMs,
    timeoutMs,
    maxDatagram,
  };
}
