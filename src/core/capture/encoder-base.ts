/**
 * What the four encoders share: the chunk they write into, and a frame's time given either as a
 * wall-clock bigint (`frame`) or as a number of ns after the recording's start (`frameAt`, the
 * recorder's path), converted into the format's time fields only when it changes (a batch of frames
 * shares one time).
 */
import type { CanFrame } from '../bus/can-frame.js';
import { ChunkWriter } from './bytes.js';
import type { CaptureEncoderOptions, CaptureTag } from './types.js';

export abstract class ChunkEncoder {
  readonly chunkSize: number;
  /** The `startNs` it was created with: the origin of `frameAt` times. */
  readonly startNs: bigint;
  protected readonly out: ChunkWriter;

  constructor(opts: CaptureEncoderOptions, defaultChunkSize: number) {
    this.chunkSize = opts.chunkSize ?? defaultChunkSize;
    this.startNs = opts.startNs;
    this.out = new ChunkWriter(opts.handler, this.chunkSize, opts.startNs);
  }

  frame(channel: number, f: CanFrame, wallNs: bigint, tag: CaptureTag): void {
    this.stamp(wallNs);
    this.encode(channel, f, tag);
  }

  frameAt(channel: number, f: CanFrame, atNs: number, tag: CaptureTag): void {
    if (this.out.at(atNs)) this.stampAt(atNs);
    this.encode(channel, f, tag);
  }

  /** Emits the partly filled chunk (if any). */
  flush(): void {
    this.out.flush();
  }

  /** Makes `wallNs` the time of the next records. */
  protected stamp(wallNs: bigint): void {
    if (this.out.wall(wallNs)) this.stampWall(wallNs);
  }

  /** Sets the format's time fields from a wall-clock time (it changed). */
  protected abstract stampWall(wallNs: bigint): void;
  /** Sets the format's time fields from ns after `startNs` (it changed). */
  protected abstract stampAt(atNs: number): void;
  /** Writes one frame at the time stamped last. */
  protected abstract encode(channel: number, f: CanFrame, tag: CaptureTag): void;
}
