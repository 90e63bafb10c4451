/**
 * Generic virtio feature bits (virtio 1.x section 6, "Reserved Feature Bits"). Values are bit
 * numbers; use `featureMask()` to build the 64-bit mask. Device-specific bits live with the device.
 */
export const VirtioFeature = {
  NOTIFY_ON_EMPTY: 24,
  ANY_LAYOUT: 27,
  RING_INDIRECT_DESC: 28,
  RING_EVENT_IDX: 29,
  /** vhost-user's VHOST_USER_F_PROTOCOL_FEATURES shares bit 30 with the virtio feature space. */
  PROTOCOL_FEATURES: 30,
  VERSION_1: 32,
  ACCESS_PLATFORM: 33,
  RING_PACKED: 34,
  IN_ORDER: 35,
} as const;

export function featureBit(bit: number): bigint {
  return 1n << BigInt(bit);
}

export function featureMask(...bits: readonly number[]): bigint {
  let m = 0n;
  for (const b of bits) m |= 1n << BigInt(b);
  return m;
}

export function hasFeature(features: bigint, bit: number): boolean {
  return ((features >> BigInt(bit)) & 1n) === 1n;
}

/** Split-ring layout constants (virtio 1.x 2.7). */
export const Desc = {
  SIZE: 16,
  F_NEXT: 1,
  F_WRITE: 2,
  F_INDIRECT: 4,
} as const;

export const VRING_AVAIL_F_NO_INTERRUPT = 1;
export const VRING_USED_F_NO_NOTIFY = 1;

/** The largest queue a split ring can have (virtio 1.x: Queue Size is at most 32768). */
export const MAX_QUEUE_SIZE = 32768;

/** Indirect tables larger than this are refused (Linux never builds tables near it). */
export const MAX_INDIRECT_DESCRIPTORS = 4096;

/** The transport options every device offers the same way (its constructor options). */
export interface RingOptions {
  /** Offer VIRTIO_RING_F_EVENT_IDX (default true). */
  eventIdx?: boolean;
  /** Offer VIRTIO_RING_F_INDIRECT_DESC (default true). */
  indirectDesc?: boolean;
  /** Largest queue size accepted in SET_VRING_NUM (power of two, default 1024). */
  maxQueueSize?: number;
}

/** Just the ring options of a larger options object (to hand a daemon's options to its device). */
export function ringOptionsOf(opts: RingOptions): RingOptions {
  const r: { -readonly [K in keyof RingOptions]: RingOptions[K] } = {};
  if (opts.eventIdx !== undefined) r.eventIdx = opts.eventIdx;
  if (opts.indirectDesc !== undefined) r.indirectDesc = opts.indirectDesc;
  if (opts.maxQueueSize !== undefined) r.maxQueueSize = opts.maxQueueSize;
  return r;
}

/** VERSION_1 plus the ring features `opts` asks for: the device-independent part of `features`. */
export function ringFeatures(opts: RingOptions): bigint {
  let f = featureBit(VirtioFeature.VERSION_1);
  if (opts.eventIdx ?? true) f |= featureBit(VirtioFeature.RING_EVENT_IDX);
  if (opts.indirectDesc ?? true) f |= featureBit(VirtioFeature.RING_INDIRECT_DESC);
  return f;
}

/** The checked `maxQueueSize` of `opts` (RangeError unless a power of two in 1..MAX_QUEUE_SIZE). */
export function maxQueueSizeOf(opts: RingOptions): number {
  const max = opts.maxQueueSize ?? 1024;
  if (!Number.isInteger(max) || max < 1 || max > MAX_QUEUE_SIZE || (max & (max - 1)) !== 0) {
    throw new RangeError(`max queue size ${max}`);
  }
  return max;
}
