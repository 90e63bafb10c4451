/**
 * Commands the bench orchestrator (bench/run.ts) sends to its load processes (bench/lib/worker.ts)
 * over the fork() IPC channel: [arguments, result] per command.
 */
import type { GuestCounters } from './bench-guest.js';
import type { ConsoleGuestCounters } from './console-guest.js';
import type { ConAddress, ConPeerCounters } from './console-peers.js';
import type { LatencySummary, PacedResult } from './latency.js';
import type { SockCounters } from './sock-peer.js';

export interface FrameSpec {
  /** Payload bytes: 8 (classic) or 64 (FD). */
  len: number;
  fd: boolean;
}

export interface WorkerCommands {
  ping: [Record<string, never>, { pid: number }];
  /** Connects a guest (vhost-user handshake, RX buffers posted, controller started). */
  connect: [
    { key: string; path: string; queueSize: number; lateTxAck: boolean; canId: number },
    { features: string; fdNegotiated: boolean },
  ];
  /** Disconnects the given guests (all when omitted). */
  close: [{ keys?: string[] }, { closed: number }];
  /** Every guest drains its RX ring (counting only). */
  'drain-start': [{ keys: string[] }, Record<string, never>];
  /** Flat-out senders: whenever `batch` TX slots are free, post `batch` frames and kick once. */
  'flood-start': [{ keys: string[]; frame: FrameSpec; batch: number }, Record<string, never>];
  /**
   * Closed loop: post `batch` frames, kick once, wait until all of them completed, repeat; so every
   * kick carries exactly `batch` frames and the rate is batch / round trip.
   */
  'batch-start': [{ keys: string[]; frame: FrameSpec; batch: number }, Record<string, never>];
  /** Stops posting and waits for every TX frame in flight to complete. */
  'flood-stop': [{ keys: string[] }, { drained: boolean }];
  counters: [
    Record<string, never>,
    {
      guests: Record<string, GuestCounters>;
      sock: SockCounters | null;
      conGuests: Record<string, ConsoleGuestCounters>;
      conPeers: Record<string, ConPeerCounters>;
    },
  ];
  /** One frame in flight: send, wait until the other guest received it, send the next. */
  pingpong: [
    { sender: string; receiver: string; count: number; warmup: number; timeoutMs: number },
    LatencySummary & { seconds: number },
  ];
  'latency-recv-start': [{ key: string; capacity: number; warmup: number }, Record<string, never>];
  'latency-recv-stop': [{ key: string }, LatencySummary & { received: number }];
  /** Paced sender (blocks this process's event loop for the duration). */
  'paced-send': [{ key: string; rate: number; count: number; maxSeconds: number }, PacedResult];

  // ---- baseline: sockets given at spawn time as fds 4 and 5 --------------------------------------
  /** With `ack`, the relay writes back a u32 byte count for everything it forwarded (closed loop). */
  'sock-relay-start': [{ inFd: number; outFd: number; ack: boolean }, Record<string, never>];
  'sock-recv-start': [
    { fd: number; latency: boolean; capacity: number; warmup: number },
    Record<string, never>,
  ];
  'sock-flood-start': [{ fd: number; frame: FrameSpec; batch: number }, Record<string, never>];
  /** Closed loop: write `batch` frames, wait for the relay's acknowledgement, repeat. */
  'sock-batch-start': [{ fd: number; frame: FrameSpec; batch: number }, Record<string, never>];
  'sock-paced-send': [
    { fd: number; frame: FrameSpec; rate: number; count: number; maxSeconds: number },
    PacedResult,
  ];
  'sock-pingpong': [
    { outFd: number; inFd: number; frame: FrameSpec; count: number; warmup: number; timeoutMs: number },
    LatencySummary & { seconds: number },
  ];
  'sock-latency': [Record<string, never>, LatencySummary & { received: number }];
  'sock-stop': [Record<string, never>, SockCounters | null];

  // ---- console (bench/lib/console-guest.ts, bench/lib/console-peers.ts) ---------------------------
  /** A console guest: probe through ConsoleTestDriver, then lean loops on port 0's rings. */
  'con-connect': [
    { key: string; path: string; queueSize: number; port?: number; ports?: number },
    { features: string },
  ];
  /** The guest writes `chunk`-byte output buffers back to back, one in flight. */
  'con-write-start': [{ key: string; chunk: number }, Record<string, never>];
  'con-write-stop': [{ key: string }, { drained: boolean }];
  /** The guest reads its RX buffers (checking the pattern) or echoes them. */
  'con-read-start': [{ key: string; mode: 'read' | 'echo' }, Record<string, never>];
  /** A stream peer: a TCP client of a console port, or a peer of the baseline relay. */
  'con-peer-connect': [{ key: string; addr: ConAddress }, Record<string, never>];
  'con-peer-read-start': [{ key: string; check: boolean }, Record<string, never>];
  'con-peer-write-start': [{ key: string; chunk: number }, Record<string, never>];
  'con-peer-write-stop': [{ key: string }, { drained: boolean }];
  'con-peer-echo-start': [{ key: string }, Record<string, never>];
  'con-peer-ping': [
    { key: string; count: number; warmup: number; timeoutMs: number },
    LatencySummary & { seconds: number; wrong: number },
  ];
  /** The baseline relay: listens on `path` (Unix) and an ephemeral TCP port, which it returns. */
  'con-relay-start': [{ path: string }, { port: number }];
  /** Closes every console guest, stream peer and relay of this process. */
  'con-close': [Record<string, never>, { closed: number }];
}

export type WorkerCommand = keyof WorkerCommands;

export interface WorkerRequest {
  id: number;
  cmd: WorkerCommand;
  args: unknown;
}

export type WorkerReply =
  | { id: number; ok: true; result: unknown }
  | { id: number; ok: false; error: string };
