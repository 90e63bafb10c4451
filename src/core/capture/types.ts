/**
 * What the capture encoders and decoders share: the four file formats, the records a decoder yields,
 * and the chunk plumbing an encoder writes through.
 *
 * Timestamps in this module are wall-clock nanoseconds since the Unix epoch (`bigint`), in the
 * `timestampNs` field of the frames and error frames a decoder yields and in the `wallNs` argument of
 * the encoders (the daemon adds its epoch offset to the bus clock once per frame).
 */
import type { CanErrorFrame } from '../bus/can-error.js';
import type { CanFrame } from '../bus/can-frame.js';
import type { FrameStage } from './stage.js';

/** The capture file formats, named like their usual file extensions. */
export type CaptureFormat = 'pcapng' | 'log' | 'asc' | 'blf';

export const CAPTURE_FORMATS: readonly CaptureFormat[] = Object.freeze(['pcapng', 'log', 'asc', 'blf']);

/**
 * Which way a frame went, from the guests' side of the bus: `outbound` = a guest sent it, `inbound` =
 * anything else put it on the bus (a host interface, a link, a replay, a library port). Formats
 * store it as pcapng `epb_flags` direction (outbound/inbound), candump `T`/`R`, ASC and BLF `Tx`/`Rx`.
 */
export type Direction = 'inbound' | 'outbound';

/** Where a decoder met bad input: a line number (text formats) or a byte offset (binary formats). */
export interface CapturePosition {
  /** 1-based line number (text formats). */
  readonly line?: number;
  /** Byte offset from the start of the file (binary formats), of the block that is bad. */
  readonly offset?: number;
  /** For display: `line 12`, `byte 4096`, `byte 4096 (object at 160 in the container)`. */
  readonly text: string;
}

export type CaptureEvent =
  | {
      readonly kind: 'frame';
      /** `timestampNs` is wall-clock nanoseconds since the epoch; `origin` is 0. */
      readonly frame: CanFrame;
      /** 0-based channel (pcapng interface, candump interface by first appearance, ASC/BLF channel - 1). */
      readonly channel: number;
      readonly direction: Direction | undefined;
      /** The sending port's name when the file records it (our pcapng comments). */
      readonly port: string | undefined;
    }
  | {
      readonly kind: 'error-frame';
      /** `timestampNs` is wall-clock nanoseconds since the epoch; `origin` is 0. */
      readonly error: CanErrorFrame;
      readonly channel: number;
      readonly direction: Direction | undefined;
      readonly port: string | undefined;
    }
  | {
      /** A line or block that could not be read: reported, skipped, and reading goes on after it. */
      readonly kind: 'bad';
      readonly position: CapturePosition;
      readonly message: string;
    };

/** A pull decoder over bytes that arrive in pieces (a file read in chunks). */
export interface CaptureDecoder {
  readonly format: CaptureFormat;
  /** Appends the next bytes of the file (the decoder copies what it keeps). */
  push(bytes: Uint8Array): void;
  /** No more bytes will come: a truncated last line or block is then reported as bad. */
  end(): void;
  /** The next record, or undefined when more bytes are needed (or, after end(), when done). */
  next(): CaptureEvent | undefined;
  /** Channel names known so far, by channel number (pcapng if_name, candump interface). */
  readonly channelNames: readonly string[];
}

/** A filled buffer of complete blocks, handed from an encoder to whoever writes the file. */
export interface EncodedChunk {
  /** Exactly the encoded bytes (a view of `buffer`). */
  readonly bytes: Uint8Array;
  /** The whole buffer the handler allocated, to be recycled once `bytes` are written. */
  readonly buffer: Uint8Array;
  /** Frames and error frames in the chunk. */
  readonly records: number;
  /** Channels declared before the chunk's first byte (a file started before it declares these). */
  readonly channelsAtStart: number;
  /** Wall-clock time of the chunk's last record (ns), 0n when it has none. */
  readonly lastNs: bigint;
}

/** Where an encoder gets buffers and puts full ones. */
export interface ChunkHandler {
  /** A buffer of at least `size` bytes (may be recycled: the encoder overwrites what it uses). */
  allocate(size: number): Uint8Array;
  emit(chunk: EncodedChunk): void;
}

/** Per-port information an encoder prepares once (the bytes it puts in every record of that port). */
export interface CaptureTag {
  readonly port: string | undefined;
  readonly direction: Direction | undefined;
}

/** What a file's header needs to know about the file (BLF keeps sizes and counts there). */
export interface FileTotals {
  /** Bytes in the file, header included. */
  readonly fileSize: number;
  /** Bytes of the file had nothing been compressed (BLF), header included. */
  readonly uncompressedSize: number;
  /** Frames and error frames in the file. */
  readonly records: number;
  /** Wall-clock time of the last record (ns), 0n when none. */
  readonly lastNs: bigint;
}

/** The largest |atNs| `CaptureEncoder.frameAt` takes (2^52 ns, about 52 days). */
export const AT_NS_LIMIT = 2 ** 52;

export interface CaptureEncoder {
  readonly format: CaptureFormat;
  /** The `startNs` it was created with: the origin of `frameAt` times. */
  readonly startNs: bigint;
  /** Channel names by number, in the order they were added. */
  readonly channels: readonly string[];
  /** Declares a channel (a bus); returns its number. pcapng writes its interface block here. */
  addChannel(name: string): number;
  /** The per-record marks of a port, prepared once. */
  tag(port: string | undefined, direction: Direction | undefined): CaptureTag;
  frame(channel: number, frame: CanFrame, wallNs: bigint, tag: CaptureTag): void;
  /**
   * `frame` with the time as nanoseconds after `startNs`, a number: the recorder's per-frame path,
   * free of bigint arithmetic. Exact for |atNs| up to AT_NS_LIMIT (52 days); past it use `frame`.
   */
  frameAt(channel: number, frame: CanFrame, atNs: number, tag: CaptureTag): void;
  /**
   * Encodes the frames of a recorder's batch (`FrameStage`, slots 0 .. size - 1) as `frameAt` would,
   * reading them from the stage's arrays. Optional: the recorder otherwise drains the stage into
   * `frameAt`.
   */
  encodeStaged?(stage: FrameStage): void;
  errorFrame(channel: number, error: CanErrorFrame, wallNs: bigint, tag: CaptureTag): void;
  /** Emits the partly filled chunk (if any). */
  flush(): void;
  /** Bytes a chunk may hold (a block never spans chunks). */
  readonly chunkSize: number;
  /** The beginning of a file that declares the first `channels` channels. */
  fileHeader(channels: number, totals: FileTotals): Uint8Array;
  /** The end of a file (ASC's `End TriggerBlock`; empty for the others). */
  fileTrailer(): Uint8Array;
  /** True when the header holds totals and should be rewritten once they are known (BLF). */
  readonly headerHasTotals: boolean;
  /**
   * Formats whose chunks are not file blocks yet (BLF: a chunk is the payload of one log container)
   * turn a chunk into blocks here; `compressed` is the payload deflated with zlib (RFC 1950), or null
   * to store it uncompressed.
   */
  wrap?(payload: Uint8Array, compressed: Uint8Array | null): Uint8Array;
}

/** Shared encoder options. */
export interface CaptureEncoderOptions {
  readonly handler: ChunkHandler;
  /** Wall-clock start of the recording (ns since the epoch): ASC's and BLF's time base. */
  readonly startNs: bigint;
  /** Bytes per chunk (default per format). */
  readonly chunkSize?: number | undefined;
  /** The recording program's name (pcapng shb_userappl). */
  readonly application?: string | undefined;
}
