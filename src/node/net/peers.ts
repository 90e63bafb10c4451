/**
 * Loop and duplicate protection between vhost-device-can daemons linked by socketcand.
 *
 * Two daemons A and B that link the same pair of buses both ways (A has `--link` to B's
 * `--socketcand-listen`, and B one to A's) would send every frame twice and bounce it back and
 * forth forever: each hop is legitimate on its own. So our link client introduces itself after the
 * handshake with `< vdc-peer DAEMON BUS TOKEN >` and our server answers `< vdc-peer DAEMON >`
 * (a plain socketcand answers `< error unknown command >`, and nothing changes). Each daemon then
 * knows, for every connection, which daemon is at the other end and which two buses it joins.
 *
 * Connections that join the same two buses of the same two daemons are redundant: on both ends
 * exactly one of them carries frames, the one opened by the daemon with the smaller id (then the
 * smaller token); the others are muted (they stay connected, send nothing, and drop what they
 * receive, counted) and take over when the carrying one goes away. A connection from a daemon to
 * itself is always muted. Longer cycles (A -> B -> C -> A) are not detected: link daemons as a
 * tree, as one bridges CAN segments.
 */
import { randomBytes } from 'node:crypto';
import type { HubRegistry } from '../../core/bus/hub.js';

export interface PeerConnection {
  /** The other daemon's id. */
  readonly peerDaemon: string;
  /** Our bus and the peer's bus. */
  readonly localBus: string;
  readonly remoteBus: string;
  /** The daemon that opened the connection, and the token it chose for it. */
  readonly initiator: string;
  readonly token: string;
  /** Told whether this connection must stay silent. */
  setMuted(muted: boolean): void;
}

export class PeerRegistry {
  /** This daemon's id: 16 hex digits, new at every start. */
  readonly selfId = randomBytes(8).toString('hex');
  readonly #groups = new Map<string, Set<PeerConnection>>();

  static keyOf(c: PeerConnection): string {
    return `${c.peerDaemon}|${c.localBus}|${c.remoteBus}`;
  }

  /** A new connection token. */
  token(): string {
    return randomBytes(8).toString('hex');
  }

  join(c: PeerConnection): void {
    const key = PeerRegistry.keyOf(c);
    let g = this.#groups.get(key);
    if (g === undefined) {
      g = new Set();
      this.#groups.set(key, g);
    }
    g.add(c);
    this.#decide(g);
  }

  leave(c: PeerConnection): void {
    const key = PeerRegistry.keyOf(c);
    const g = this.#groups.get(key);
    if (g === undefined || !g.delete(c)) return;
    if (g.size === 0) this.#groups.delete(key);
    else this.#decide(g);
  }

  #decide(g: Set<PeerConnection>): void {
    let best: PeerConnection | null = null;
    for (const c of g) {
      if (c.peerDaemon === this.selfId) continue;
      if (
        best === null ||
        c.initiator < best.initiator ||
        (c.initiator === best.initiator && c.token < best.token)
      ) {
        best = c;
      }
    }
    for (const c of g) c.setMuted(c !== best);
  }
}

const registries = new WeakMap<HubRegistry, PeerRegistry>();

/** The peer registry of the daemon that owns `hubs` (one per daemon, made on first use). */
export function peersOf(hubs: HubRegistry): PeerRegistry {
  let r = registries.get(hubs);
  if (r === undefined) {
    r = new PeerRegistry();
    registries.set(hubs, r);
  }
  return r;
}

/** Peer ids and tokens are hex words; anything else in a vdc-peer element is refused. */
export function isPeerWord(s: string): boolean {
  return /^[0-9a-f]{1,32}$/.test(s);
}
