/**
 * The device contract: what a virtio device implements so that the vhost-user layer can drive it.
 * Device code never sees vhost-user messages (the rust-vmm split): the session decodes the protocol
 * and calls these hooks; the device reaches its queues, memory and the front-end through DeviceHost.
 */
import type { GuestMemory } from '../memory/guest-memory.js';
import type { VhostError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import type { SplitQueue } from '../virtio/split-queue.js';

export interface VirtioDevice {
  /** Short name for logs, e.g. "can". */
  readonly name: string;
  /** Virtio device id (36 for CAN). */
  readonly deviceId: number;
  readonly numQueues: number;
  /** Largest queue size the device accepts in SET_VRING_NUM (a power of two). */
  readonly maxQueueSize: number;
  /** Virtio feature bits offered, including VERSION_1 and ring features (not bit 30: the session adds it). */
  readonly features: bigint;
  /** Size of the real config struct. Reads beyond it are zero-padded by the session, up to 256 bytes. */
  readonly configSize: number;

  /** Called once, before any other hook, with the connection's environment. */
  attach(host: DeviceHost): void;
  /** Fills `dst` (exactly configSize bytes) with the current config space. */
  readConfig(dst: Uint8Array): void;
  /** A driver write to config space. Return false to refuse it (read-only field). */
  writeConfig(offset: number, data: Uint8Array): boolean;
  /** The driver's accepted features (SET_FEATURES, bit 30 removed). */
  setFeatures(acked: bigint): void;
  /** Queue `index` can now be processed (started and enabled). Scan it: buffers may predate the kick. */
  queueStarted(index: number): void;
  /** Queue `index` is about to stop or be disabled: finish or fail every chain taken from it, now. */
  queueStopping(index: number): void;
  /** The driver kicked queue `index`. */
  queueNotified(index: number): void;
  /**
   * Queue `index` is started but disabled (vhost-user.rst "Ring states"): process it without side
   * effects. Take what the driver made available and return it failed, acting on none of it (a
   * network device discards TX and supplies no RX); re-arm kicks (EVENT_IDX) so later ones come.
   * Called on kicks of such a ring, when a started ring is disabled and when a ring starts
   * disabled. Without this hook such a ring is left alone until it is enabled.
   */
  queueDiscard?(index: number): void;
  /** Drop every in-flight chain without touching guest memory (the device was marked broken). */
  halt(): void;
  /** Back to the power-on state (guest reset / RESET_DEVICE). Queues are all stopped when called. */
  reset(): void;
  /** The connection is gone; release everything (bus ports, timers). Idempotent. */
  destroy(): void;
  /** The device's counters, flat, for the statistics log lines (and the disconnect line). */
  statsFields(): Record<string, number | string | boolean>;
}

export interface DeviceHost {
  /** The queue when it is started, enabled and the device is not broken; otherwise null. */
  queue(index: number): SplitQueue | null;
  /** The queue when it is started but disabled and the device is not broken (for queueDiscard). */
  disabledQueue(index: number): SplitQueue | null;
  /** Current guest memory (replaced when the front-end sends a new table). */
  readonly memory: GuestMemory;
  /** Driver-acked virtio features (0 before SET_FEATURES). */
  readonly ackedFeatures: bigint;
  /**
   * Asks the front-end to re-read config space (VHOST_USER_BACKEND_CONFIG_CHANGE_MSG). While the
   * device is suspended (no ring started) the notification is deferred until a ring starts again.
   * Returns false when no back-end channel was negotiated.
   */
  notifyConfigChange(): boolean;
  /** Unrecoverable guest misbehaviour: stop touching this device's rings until reset. */
  markBroken(err: VhostError): void;
  /**
   * Runs `fn` soon, after the current work (the next event-loop turn): deferred queue work, e.g.
   * a budget that ran out, or RX batched after a burst from the bus. A failure inside `fn` marks
   * this device broken, like any device hook; nothing runs once the connection is gone.
   */
  schedule(fn: () => void): void;
  readonly log: Logger;
}
