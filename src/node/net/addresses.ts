/** TCP addresses and address ranges of the network ports: `ADDR:PORT`, `CIDR`, loopback checks. */
import { BlockList, isIP } from 'node:net';

export interface HostPort {
  host: string;
  port: number;
}

/**
 * `HOST:PORT` with an IPv4 address, `[IPv6]:PORT`, or `localhost:PORT`; PORT 0..65535 (0: any free
 * port). Returns the address or a message.
 */
export function parseHostPort(text: string, what: string): HostPort | string {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]]+)):([0-9]{1,5})$/.exec(text);
  if (m === null) return `${what}: expected ADDR:PORT (an IPv4 address, [IPv6] or localhost), got "${text}"`;
  const host = m[1] ?? m[2]!;
  const port = Number(m[3]);
  if (port > 65535) return `${what}: port ${port} is out of range (0..65535)`;
  if (m[1] !== undefined ? isIP(host) !== 6 : host !== 'localhost' && isIP(host) !== 4) {
    return `${what}: "${host}" is not an IP address (IPv4, [IPv6] or localhost)`;
  }
  return { host, port };
}

export function formatHostPort(a: HostPort): string {
  return a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

/** True for 127.0.0.0/8, ::1, ::ffff:127.x.y.z and localhost. */
export function isLoopback(host: string): boolean {
  const h = host.startsWith('::ffff:') && isIP(host.slice(7)) === 4 ? host.slice(7) : host;
  return h === 'localhost' || h === '::1' || (isIP(h) === 4 && h.startsWith('127.'));
}

/** Parses `ADDR/PREFIX` or a single address (IPv4 or IPv6): normalised text, or a message. */
export function parseCidr(text: string, what: string): string {
  const m = /^([^/]+)(?:\/([0-9]{1,3}))?$/.exec(text);
  const fam = m === null ? 0 : isIP(m[1]!);
  if (m === null || fam === 0)
    return `${what}: expected an address or ADDR/PREFIX (IPv4 or IPv6), got "${text}"`;
  const max = fam === 4 ? 32 : 128;
  const prefix = m[2] === undefined ? max : Number(m[2]);
  if (prefix > max) return `${what}: prefix /${prefix} is longer than ${max} bits`;
  return `${m[1]}/${prefix}`;
}

/** A set of address ranges (from parseCidr) that connecting peers are checked against. */
export class AllowList {
  readonly #list = new BlockList();
  readonly size: number;

  constructor(cidrs: readonly string[]) {
    for (const c of cidrs) {
      const slash = c.indexOf('/');
      const addr = c.slice(0, slash);
      const family = isIP(addr) === 4 ? 'ipv4' : 'ipv6';
      this.#list.addSubnet(addr, Number(c.slice(slash + 1)), family);
    }
    this.size = cidrs.length;
  }

  /** True when `address` (as a socket reports it, IPv4-mapped IPv6 included) is in a range. */
  allows(address: string): boolean {
    const v4 = address.startsWith('::ffff:') && isIP(address.slice(7)) === 4 ? address.slice(7) : address;
    const fam = isIP(v4);
    if (fam === 0) return false;
    return this.#list.check(v4, fam === 4 ? 'ipv4' : 'ipv6');
  }
}
