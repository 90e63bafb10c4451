/**
 * Tells connections when the addon's SIGBUS guard absorbed a fault in guest memory.
 *
 * The guard (native/guard.c) keeps the process alive when a front-end shrinks the file behind its
 * guest RAM: the missing pages read as zeros and the handler signals an eventfd. This module
 * watches that eventfd on the event loop and calls every subscriber, which checks its own regions
 * (`MappedRegion.faults()`) and closes its connection if they went bad. The other guests never
 * notice. The watcher runs only while someone is subscribed, so it never keeps an idle process
 * (a test, a library user) alive.
 */
import type { NativeAddon, NativeWatcher } from '../native/addon.js';

type FaultAddon = Pick<NativeAddon, 'memoryFaultFd' | 'eventfdRead' | 'Watcher' | 'READABLE'>;

export class MemoryFaultMonitor {
  private readonly native: FaultAddon;
  private readonly subscribers = new Set<() => void>();
  private watcher: NativeWatcher | null = null;
  private fd = -1;

  constructor(native: FaultAddon) {
    this.native = native;
  }

  /** Calls `onFault` after any guarded fault in the process; returns the unsubscribe function. */
  subscribe(onFault: () => void): () => void {
    this.subscribers.add(onFault);
    if (this.watcher === null) this.start();
    return () => {
      this.subscribers.delete(onFault);
      if (this.subscribers.size === 0) this.stop();
    };
  }

  private start(): void {
    const n = this.native;
    if (this.fd < 0) this.fd = n.memoryFaultFd();
    const w = new n.Watcher(this.fd, () => this.onSignalled());
    w.start(n.READABLE);
    this.watcher = w;
  }

  private stop(): void {
    this.watcher?.close();
    this.watcher = null; // the eventfd stays open: the signal handler keeps writing to it
  }

  private onSignalled(): void {
    // Drained (non-blocking: "empty" is null, never an error), then every subscriber looks. A
    // subscriber is a connection that closes itself; it must not throw (this is a loop callback).
    while (this.native.eventfdRead(this.fd) !== null) {
      /* drained */
    }
    for (const s of [...this.subscribers]) s();
  }
}

const monitors = new WeakMap<object, MemoryFaultMonitor>();

/** The process-wide monitor for an addon instance. */
export function faultMonitorFor(native: FaultAddon): MemoryFaultMonitor {
  let m = monitors.get(native);
  if (m === undefined) {
    m = new MemoryFaultMonitor(native);
    monitors.set(native, m);
  }
  return m;
}
