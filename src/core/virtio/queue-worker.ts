/**
 * The two loops every device runs over its virtqueues, written once for all devices:
 *
 * - `drain`: take every chain the driver made available and hand it to the device (transmit and
 *   control queues). One publish (and at most one interrupt) per batch; with EVENT_IDX the kick is
 *   re-armed and the ring looked at again, closing the race with a chain added meanwhile
 *   (VIRTIO 1.x "Driver Notifications", `avail_event`). At most `budget` chains per call: a driver
 *   that refills as fast as we empty must not hold the event loop, so the caller is told to come
 *   back later.
 * - `fill`: take device-writable chains only while the device has something to put in them (receive
 *   queues): buffers are never popped and returned empty "just in case", and with data still
 *   waiting and no buffers left the kick is armed so the driver's next buffer wakes us.
 *
 * Both handle a chain that cannot be walked the same way: with a valid head it is returned with
 * used length 0 and counted (the device's `onBadChain` may complete it differently, e.g. CAN keeps
 * TX completions in submission order), and processing goes on; a corrupt ring (no usable head)
 * marks the device broken, after the device's `onCorrupt` finished what it had already taken.
 */
import { VhostError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import type { DeviceHost } from '../vhost-user/device.js';
import type { DescriptorChain } from './descriptor-chain.js';
import type { SplitQueue } from './split-queue.js';

export type DrainResult =
  /** The ring is empty (and the kick armed). */
  | 'empty'
  /** The budget ran out with chains left: call again later (host.schedule). */
  | 'budget'
  /** `more()` said stop: chains may be left in the ring, no kick armed. */
  | 'stopped'
  /** The ring is corrupt: the device was marked broken. */
  | 'broken';

export interface ChainHooks {
  /** A chain that cannot be walked (valid head). Default: returned with used length 0. */
  onBadChain?(q: SplitQueue, chain: DescriptorChain, err: VhostError): void;
  /** The ring is corrupt; called before the device is marked broken (finish what was taken). */
  onCorrupt?(q: SplitQueue): void;
  /** Called before every publish (e.g. move completed requests to the used ring first). */
  beforePublish?(q: SplitQueue): void;
}

export interface DrainOptions extends ChainHooks {
  budget?: number;
  /** Asked before each chain is taken: false leaves the rest in the ring (flow control). */
  more?(): boolean;
}

/** A chain handler: complete the chain (push its used entry) or keep it for later. */
export type ChainHandler = (chain: DescriptorChain, q: SplitQueue) => void;

const NO_HOOKS: ChainHooks = {};

export class QueueWorker {
  private readonly host: () => DeviceHost | null;
  private readonly log: () => Logger;
  /** The device's counters: `badChains` counts malformed chains returned (any queue). */
  private readonly counters: { badChains: number };

  constructor(host: () => DeviceHost | null, log: () => Logger, counters: { badChains: number }) {
    this.host = host;
    this.log = log;
    this.counters = counters;
  }

  drain(
    q: SplitQueue,
    chain: DescriptorChain,
    handle: ChainHandler,
    opts: DrainOptions = NO_HOOKS,
  ): DrainResult {
    let budget = opts.budget ?? Number.POSITIVE_INFINITY;
    const more = opts.more;
    do {
      for (;;) {
        if (more !== undefined && !more()) {
          this.publish(q, opts);
          return 'stopped';
        }
        if (budget-- <= 0) {
          this.publish(q, opts);
          return 'budget';
        }
        try {
          if (!q.next(chain)) break;
        } catch (err) {
          if (!this.badChain(q, chain, err, opts)) return 'broken';
          continue;
        }
        handle(chain, q);
      }
      this.publish(q, opts);
    } while (q.armKick());
    return 'empty';
  }

  /**
   * Fills chains from `q` while data waits: `pending()` says whether there is any, `handle` writes
   * one chain, pushes its used entry and returns whether more data waits (one call per chain on the
   * hot receive paths). Returns false when the ring turned out corrupt (the device is marked
   * broken).
   */
  fill(
    q: SplitQueue,
    chain: DescriptorChain,
    pending: () => boolean,
    handle: (chain: DescriptorChain, q: SplitQueue) => boolean,
    hooks: ChainHooks = NO_HOOKS,
  ): boolean {
    let wrote = false;
    for (;;) {
      let more = pending();
      while (more) {
        try {
          if (!q.next(chain)) break;
        } catch (err) {
          if (!this.badChain(q, chain, err, hooks)) return false;
          wrote = true;
          more = pending();
          continue;
        }
        wrote = true;
        more = handle(chain, q);
      }
      if (wrote) {
        this.publish(q, hooks);
        wrote = false;
      }
      // Data still waiting and no buffers: ask for a kick when the driver posts more, and look
      // again to close the race with a buffer added meanwhile.
      if (!pending() || !q.armKick()) return true;
    }
  }

  private publish(q: SplitQueue, hooks: ChainHooks): void {
    hooks.beforePublish?.(q);
    q.publish();
  }

  /** Returns false when the ring is corrupt (the device was marked broken). */
  private badChain(q: SplitQueue, chain: DescriptorChain, err: unknown, hooks: ChainHooks): boolean {
    if (!(err instanceof VhostError) || err.disposition !== 'mark-broken') throw err;
    if (chain.head < 0) {
      hooks.onCorrupt?.(q);
      this.host()?.markBroken(err);
      return false;
    }
    const n = ++this.counters.badChains;
    const log = this.log();
    if (n === 1 || log.debugEnabled) {
      log.warn('malformed descriptor chain returned unused', {
        queue: q.index,
        code: err.code,
        reason: err.message,
      });
    }
    if (hooks.onBadChain !== undefined) hooks.onBadChain(q, chain, err);
    else q.pushUsed(chain.head, 0);
    return true;
  }
}
