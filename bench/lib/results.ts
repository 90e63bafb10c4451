/** The shapes of the benchmark's results (bench/results/*.json). */

import type { NetResult } from '../phases/net.js';
import type { ScdRow } from '../phases/socketcand.js';
import type { TimedResults } from '../phases/timed.js';
import type { WebResult } from '../phases/web.js';
import type { ConFlowResult, ConIdleResult, ConLatencyResult } from './console-bench.js';
import type { FrameName } from './context.js';
import type { CpuShares } from './harness.js';
import type { LatencySummary, PacedResult } from './latency.js';
import type { ProcMemory } from './proc.js';
import type { ProfileSummary } from './profile.js';

export type LoadMode = 'flood' | 'closed';

export interface FlowResult {
  mode: LoadMode;
  frame: FrameName;
  batch: number;
  lateTxAck: boolean;
  senderQueue: number;
  receiverQueue: number;
  seconds: number;
  acceptedPerS: number;
  deliveredPerS: number;
  droppedPerS: number;
  txNotOkPerS: number;
  guestSentPerS: number;
  guestReceivedPerS: number;
  kicksPerFrame: number;
  suppressedKicksPerFrame: number;
  txWakeupsPerS: number;
  rxWakeupsPerS: number;
  framesPerRxWakeup: number;
  cpu: CpuShares;
  saturated: string;
  /** Daemon RSS (kB) before the traffic and after it, and frames on the bus in between. */
  rssBeforeKb: number;
  rssAfterKb: number;
  busFramesTotal: number;
  senderDrained: boolean;
}

export interface BaselineFlow {
  mode: LoadMode;
  frame: FrameName;
  batch: number;
  seconds: number;
  sentPerS: number;
  deliveredPerS: number;
  writesPerS: number;
  cpu: CpuShares;
  saturated: string;
}

export interface LatencyResult {
  path: 'device' | 'baseline';
  mode: 'one-in-flight' | 'paced';
  /** Paced: the fraction of the best flood rate of phase 1. */
  loadFraction?: number;
  targetRate: number | null;
  achievedRate: number;
  summary: LatencySummary;
  paced?: PacedResult;
  received?: number;
  /** Frames sent but never received (device: the receiver's backlog overflowed). */
  lost: number;
  cpu: CpuShares;
}

export interface ScaleResult {
  guests: number;
  seconds: number;
  busFramesPerS: number;
  acceptedPerS: number;
  deliveredPerS: number;
  droppedPerS: number;
  daemonCpuPercent: number;
  daemonUsPerDelivered: number | null;
  daemonUsPerBusFrame: number | null;
  cpu: CpuShares;
  saturated: string;
}

export interface IdleResult {
  guests: number;
  seconds: number;
  daemonCpuSeconds: number;
  daemonCpuPercent: number;
  loadCpuPercent: number;
}

export interface MemoryRow {
  state: string;
  memory: ProcMemory;
  busFrames: number;
  deliveredFrames: number;
  /** The daemon's own figures (SIGUSR1 stats): V8 heap in use, bus frame copies ever allocated. */
  heapUsedKb: number | null;
  framesAllocated: number;
}

/** One flood of phase cap: which captures ran, the flow, and the files' bytes per frame. */
export interface CapResult {
  captures: string;
  /** Where the files were written, and that file system's type (the disk's part of the cost). */
  dir: string;
  fsType: string;
  flow: FlowResult;
  /** File bytes per frame put on the bus, by format. */
  bytesPerFrame: Record<string, number>;
  /** Frames each capture recorded and dropped (its backlog was full), from the final statistics. */
  recorded: Record<string, { frames: number; dropped: number }>;
}

export interface Results {
  env: Record<string, unknown>;
  tp: FlowResult[];
  baselineTp: BaselineFlow[];
  rx: FlowResult[];
  latency: LatencyResult[];
  scale: ScaleResult[];
  idle: IdleResult | null;
  memory: MemoryRow[];
  profile: (ProfileSummary & { flow: FlowResult }) | null;
  con: { flows: ConFlowResult[]; latency: ConLatencyResult[]; idle: ConIdleResult | null } | null;
  /** Phase socketcand (bench/phases/socketcand.ts). */
  socketcand?: ScdRow[];
  web: WebResult | null;
  /** Phase net: links between two daemons, and the in-process bus beside them. */
  net: NetResult[];
  netBus: FlowResult[];
  /** Phase cap: the flood with and without captures. */
  cap: CapResult[];
  /** Phase timed (bench/phases/timed.ts). */
  timed: TimedResults | null;
  errors: { phase: string; error: string }[];
  notes: string[];
}
