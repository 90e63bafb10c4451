/**
 * One capture file being written: an encoder (src/core/capture) whose chunks of complete blocks are
 * written to a regular file or a FIFO, without ever blocking the event loop.
 *
 * - Flushing: a partly filled chunk is written at most `flushMs` (500) after its first record, a full
 *   one at once, so a reader of the growing file sees data within a second, and a SIGKILL loses at
 *   most that. Every write carries whole blocks (pcapng blocks, text lines, BLF containers).
 * - Regular files: written with positional asynchronous writes (libuv's thread pool), one at a time,
 *   in order. `close()` writes what is left synchronously, so the file is complete when it returns.
 *   BLF containers are deflated (zlib level 1) asynchronously too, in order; the BLF header's totals
 *   are rewritten on every flush and at the end.
 * - FIFOs: opened O_WRONLY | O_NONBLOCK. Without a reader, opening fails (ENXIO): the capture waits,
 *   retrying every 250 ms, and drops (and counts) what is recorded meanwhile. When a reader opens
 *   the FIFO, it gets a fresh file header (pcapng section and interfaces, ASC header...) and the data
 *   from then on. Writes never block: what the pipe cannot take waits (up to `maxBacklog` bytes, then
 *   whole chunks are dropped and counted) and is retried every 10 ms. A reader that goes away (EPIPE)
 *   sends the capture back to waiting for the next one.
 * - Errors: a failed write or open (ENOSPC, EIO, ...) stops this capture: one log line, the counter
 *   `writeErrors`, the file cut back to its last complete block, `onFailed` told (the capture ports
 *   detach); guests and the rest of the daemon go on.
 * - Rotation (`maxSize`): before a block would make the file larger than `maxSize` bytes, the file
 *   is finished (ASC trailer, BLF totals) and the capture goes on in `NAME.1.EXT`, `NAME.2.EXT`...
 *   (next to the first file, which keeps its name), each a complete file with its own header.
 */
import { closeSync, constants, ftruncateSync, openSync, statSync, write, writeSync } from 'node:fs';
import { deflate, deflateSync } from 'node:zlib';
import {
  type CaptureEncoder,
  type CaptureFormat,
  type ChunkHandler,
  createCaptureEncoder,
  type EncodedChunk,
} from '../../core/capture/index.js';
import type { LogFields, Logger } from '../../core/util/log.js';
import { CodedError } from '../errors.js';

export type CaptureFileErrorCode = 'ERR_CAPTURE_OPEN' | 'ERR_CAPTURE_OPTION';
export class CaptureFileError extends CodedError<CaptureFileErrorCode> {}

export interface CaptureFileOptions {
  readonly path: string;
  readonly format: CaptureFormat;
  /** Wall-clock start of the recording (ns since the epoch). */
  readonly startNs: bigint;
  readonly log: Logger;
  /** Rotate before a file would exceed this many bytes (at least 65536); default: never. */
  readonly maxSize?: number | undefined;
  /** Longest time data waits in memory (ms), default 500. */
  readonly flushMs?: number | undefined;
  /** Bytes allowed to wait for a slow disk or FIFO reader before chunks are dropped; default 32 MiB. */
  readonly maxBacklog?: number | undefined;
  /** Told once when the capture stops for an error. */
  readonly onFailed?: (() => void) | undefined;
}

export type CaptureState = 'writing' | 'waiting-reader' | 'failed' | 'closed';

export interface CaptureFileStats {
  /** Frames and error frames written to files. */
  recordsWritten: number;
  /** Frames and error frames dropped: no FIFO reader, backlog full, or after a failure. */
  recordsDropped: number;
  bytesWritten: number;
  /** Files started (1 + rotations). */
  files: number;
  writeErrors: number;
  /** FIFO readers that connected / went away. */
  readersConnected: number;
  readersGone: number;
}

interface Entry {
  readonly chunk: EncodedChunk;
  /** The bytes to write once known (BLF: after deflating). */
  block: Uint8Array | null;
}

const MIN_MAX_SIZE = 65536;
const FIFO_RETRY_MS = 250;
const PIPE_RETRY_MS = 10;
/**
 * BLF containers: zlib level 1 (the fastest level; about 18:1 on busy traffic) with the largest hash
 * table (memLevel 9), a fifth faster than the default 8 on our containers.
 */
const BLF_DEFLATE = { level: 1, memLevel: 9 } as const;

/** `trace.pcapng` -> `trace.N.pcapng` (N >= 1); without an extension, `PATH.N`. */
export function rotatedPath(path: string, n: number): string {
  const slash = path.lastIndexOf('/');
  const dot = path.lastIndexOf('.');
  if (dot <= slash + 1) return `${path}.${n}`;
  return `${path.slice(0, dot)}.${n}${path.slice(dot)}`;
}

export class CaptureFile implements ChunkHandler {
  readonly path: string;
  readonly format: CaptureFormat;
  readonly encoder: CaptureEncoder;
  readonly stats: CaptureFileStats = {
    recordsWritten: 0,
    recordsDropped: 0,
    bytesWritten: 0,
    files: 0,
    writeErrors: 0,
    readersConnected: 0,
    readersGone: 0,
  };
  state: CaptureState = 'writing';
  readonly #log: Logger;
  readonly #fifo: boolean;
  readonly #maxSize: number;
  readonly #flushMs: number;
  readonly #maxBacklog: number;
  readonly #onFailed: (() => void) | undefined;
  #fd: number | null = null;
  /** The file now written (the path, or a rotated name). */
  #current: string;
  #rotations = 0;
  /** Next write position (regular files) / bytes of this file so far. */
  #offset = 0;
  #headerLen = 0;
  #uncompressed = 0;
  #fileRecords = 0;
  #lastNs = 0n;
  /** A file header must precede the next block (after a rotation or a FIFO reader's arrival). */
  #needHeader = false;
  readonly #queue: Entry[] = [];
  #queuedBytes = 0;
  #writing = false;
  /** The fd an asynchronous write is using (it must not be closed, and its number not reused, before). */
  #inflight: number | null = null;
  #closeAfterWrite = false;
  /** FIFO: bytes handed to the pipe partly, waiting for room. */
  #pipeRest: Uint8Array | null = null;
  #flushTimer: ReturnType<typeof setTimeout> | null = null;
  #retryTimer: ReturnType<typeof setTimeout> | null = null;
  readonly #free: Uint8Array[] = [];

  constructor(opts: CaptureFileOptions) {
    this.path = opts.path;
    this.#current = opts.path;
    this.format = opts.format;
    this.#log = opts.log;
    this.#flushMs = opts.flushMs ?? 500;
    this.#maxBacklog = opts.maxBacklog ?? 32 << 20;
    this.#onFailed = opts.onFailed;
    const max = opts.maxSize ?? 0;
    if (max !== 0 && !(Number.isSafeInteger(max) && max >= MIN_MAX_SIZE)) {
      throw new CaptureFileError(
        'ERR_CAPTURE_OPTION',
        `the largest file size must be at least ${MIN_MAX_SIZE} bytes, got ${max}`,
      );
    }
    this.#maxSize = max;
    // Chunks small enough that a file never has to exceed maxSize by more than one block.
    const base = opts.format === 'blf' ? 128 * 1024 : 256 * 1024;
    const chunkSize = max === 0 ? base : Math.min(base, Math.floor(max / 8));
    this.encoder = createCaptureEncoder(opts.format, { handler: this, startNs: opts.startNs, chunkSize });
    let isFifo = false;
    try {
      isFifo = statSync(opts.path).isFIFO();
    } catch {
      // does not exist yet: a regular file
    }
    this.#fifo = isFifo;
    if (isFifo) {
      this.#openFifo();
    } else {
      try {
        this.#openRegular(opts.path);
      } catch (err) {
        throw new CaptureFileError(
          'ERR_CAPTURE_OPEN',
          `cannot create ${opts.path}: ${(err as Error).message}`,
          { cause: err },
        );
      }
    }
  }

  get isFifo(): boolean {
    return this.#fifo;
  }

  /** The file being written now (differs from `path` after a rotation). */
  get currentPath(): string {
    return this.#current;
  }

  /** Fields for a stats line. */
  fields(): LogFields {
    return { state: this.state, ...this.stats, backlogBytes: this.#queuedBytes };
  }

  // ---- ChunkHandler ---------------------------------------------------------------------------

  allocate(size: number): Uint8Array {
    const b = this.#free.pop();
    if (b !== undefined && b.length >= size) return b;
    return Buffer.allocUnsafe(size);
  }

  emit(chunk: EncodedChunk): void {
    if (this.state === 'failed' || this.state === 'closed') {
      this.stats.recordsDropped += chunk.records;
      this.#recycle(chunk.buffer);
      return;
    }
    if (this.#queuedBytes + chunk.bytes.length > this.#maxBacklog || (this.#fifo && this.#fd === null)) {
      // No FIFO reader, or the disk / reader cannot keep up: drop whole chunks, counted.
      this.stats.recordsDropped += chunk.records;
      this.#recycle(chunk.buffer);
      return;
    }
    const entry: Entry = { chunk, block: null };
    this.#queue.push(entry);
    this.#queuedBytes += chunk.bytes.length;
    if (this.encoder.wrap === undefined) {
      entry.block = chunk.bytes;
    } else {
      deflate(chunk.bytes, BLF_DEFLATE, (err, out) => {
        if (entry.block !== null) return; // close() already did it synchronously
        entry.block = this.encoder.wrap!(chunk.bytes, err ? null : out);
        this.#pump();
      });
    }
    this.#pump();
  }

  #recycle(buf: Uint8Array): void {
    if (this.#free.length < 4 && buf.length === this.encoder.chunkSize) this.#free.push(buf);
  }

  /** Call after recording: makes sure the data is written within flushMs. */
  touch(): void {
    if (this.#flushTimer !== null || this.state === 'closed' || this.state === 'failed') return;
    this.#flushTimer = setTimeout(() => {
      this.#flushTimer = null;
      this.encoder.flush();
    }, this.#flushMs);
    this.#flushTimer.unref?.();
  }

  // ---- files --------------------------------------------------------------------------------

  #openRegular(path: string): void {
    const fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC, 0o644);
    this.#fd = fd;
    this.#current = path;
    this.#offset = 0;
    this.#uncompressed = 0;
    this.#fileRecords = 0;
    this.#lastNs = 0n;
    this.stats.files++;
    // A valid (empty) file from the start: channels added later come with the first chunk.
    const header = this.encoder.fileHeader(0, this.#totals());
    this.#writeAllSync(header, 0);
    this.#setHeader(header);
  }

  /** Bookkeeping for a header just written at offset 0 of a file that holds nothing else yet. */
  #setHeader(header: Uint8Array): void {
    this.stats.bytesWritten += header.length - this.#offset;
    this.#offset = header.length;
    this.#headerLen = header.length;
    this.#uncompressed = header.length;
  }

  /** Writes the header the next block needs (after a rotation): it declares the channels before it. */
  #writeHeaderFor(e: Entry): void {
    this.#needHeader = false;
    const header = this.encoder.fileHeader(e.chunk.channelsAtStart, this.#totals());
    this.#writeAllSync(header, 0);
    this.#setHeader(header);
  }

  /** Closes `fd` now, or once the asynchronous write using it has finished. */
  #closeFd(fd: number): void {
    if (this.#inflight === fd) {
      this.#closeAfterWrite = true;
      return;
    }
    try {
      closeSync(fd);
    } catch {}
  }

  #totals(): { fileSize: number; uncompressedSize: number; records: number; lastNs: bigint } {
    return {
      fileSize: this.#offset,
      uncompressedSize: this.#uncompressed,
      records: this.#fileRecords,
      lastNs: this.#lastNs,
    };
  }

  #writeAllSync(b: Uint8Array, position: number): void {
    let done = 0;
    while (done < b.length) done += writeSync(this.#fd!, b, done, b.length - done, position + done);
  }

  #rewriteHeader(): void {
    try {
      const h = this.encoder.fileHeader(0, this.#totals());
      this.#writeAllSync(h, 0);
    } catch (err) {
      this.#fail('rewriting the file header', err);
    }
  }

  /** Ends the current file (trailer, totals) and starts the next one. Synchronous. */
  #rotate(): void {
    this.#finishFile();
    this.#rotations++;
    const next = rotatedPath(this.path, this.#rotations);
    this.#openRegular(next);
    this.#needHeader = true; // the next block's header declares the channels before it
    this.#log.info('capture continues in a new file', { file: next, files: this.stats.files });
  }

  #finishFile(): void {
    if (this.#fd === null) return;
    const trailer = this.encoder.fileTrailer();
    if (trailer.length > 0) {
      this.#writeAllSync(trailer, this.#offset);
      this.#offset += trailer.length;
      this.stats.bytesWritten += trailer.length;
    }
    if (this.encoder.headerHasTotals) this.#rewriteHeader();
    this.#closeFd(this.#fd);
    this.#fd = null;
  }

  #openFifo(): void {
    try {
      this.#fd = openSync(this.path, constants.O_WRONLY | constants.O_NONBLOCK);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENXIO') {
        throw new CaptureFileError(
          'ERR_CAPTURE_OPEN',
          `cannot open FIFO ${this.path}: ${(err as Error).message}`,
          { cause: err },
        );
      }
      this.#fd = null;
      this.state = 'waiting-reader';
      this.#retryTimer = setTimeout(() => {
        this.#retryTimer = null;
        try {
          this.#openFifo();
        } catch (e) {
          this.#fail('opening the FIFO', e);
        }
      }, FIFO_RETRY_MS);
      this.#retryTimer.unref?.();
      return;
    }
    this.state = 'writing';
    this.stats.readersConnected++;
    this.stats.files++;
    this.#needHeader = true;
    this.#log.info('capture FIFO has a reader', { file: this.path });
  }

  #readerGone(): void {
    if (this.#fd !== null) closeSync(this.#fd);
    this.#fd = null;
    this.#pipeRest = null;
    this.stats.readersGone++;
    this.#log.info('capture FIFO reader went away; waiting for the next one', { file: this.path });
    for (const e of this.#queue.splice(0)) this.#drop(e);
    this.#queuedBytes = 0;
    this.#openFifo();
  }

  #drop(e: Entry): void {
    this.stats.recordsDropped += e.chunk.records;
    this.#recycle(e.chunk.buffer);
  }

  // ---- the write loop -----------------------------------------------------------------------

  #pump(): void {
    if (this.#writing || this.state === 'closed' || this.state === 'failed') return;
    if (this.#fifo) {
      this.#pumpFifo();
      return;
    }
    const e = this.#queue[0];
    if (e === undefined || e.block === null || this.#fd === null) return;
    let block = e.block;
    try {
      if (this.#maxSize > 0) {
        const trailer = this.encoder.fileTrailer().length;
        if (this.#offset + block.length + trailer > this.#maxSize && this.#offset > this.#headerLen)
          this.#rotate();
      }
      if (this.#needHeader) this.#writeHeaderFor(e);
    } catch (err) {
      this.#fail('starting a new file', err);
      return;
    }
    this.#writing = true;
    const fd = this.#fd;
    this.#inflight = fd;
    const at = this.#offset;
    const onWritten = (err: NodeJS.ErrnoException | null, n: number): void => {
      if (this.#fd !== fd || this.state === 'closed') {
        // close() (or a rotation during it) wrote this block again synchronously.
        this.#inflight = null;
        if (this.#closeAfterWrite) {
          this.#closeAfterWrite = false;
          try {
            closeSync(fd);
          } catch {}
        }
        return;
      }
      if (err !== null) {
        this.#inflight = null;
        this.#writing = false;
        this.#fail('writing', err, at);
        return;
      }
      if (n < block.length) {
        // Short write (rare on regular files): write the rest.
        block = block.subarray(n);
        const pos = at + (e.block!.length - block.length);
        write(fd, block, 0, block.length, pos, onWritten);
        return;
      }
      this.#writing = false;
      this.#inflight = null;
      this.#written(e);
      if (this.#queue.length === 0 && this.encoder.headerHasTotals) this.#rewriteHeader();
      this.#pump();
    };
    write(fd, block, 0, block.length, at, onWritten);
  }

  /** Bookkeeping once `e` is in the file. */
  #written(e: Entry): void {
    this.#queue.shift();
    const n = e.block!.length;
    this.#queuedBytes -= e.chunk.bytes.length;
    this.#offset += n;
    this.#uncompressed += this.encoder.wrap === undefined ? n : 32 + e.chunk.bytes.length;
    this.#fileRecords += e.chunk.records;
    if (e.chunk.records > 0) this.#lastNs = e.chunk.lastNs;
    this.stats.bytesWritten += n;
    this.stats.recordsWritten += e.chunk.records;
    this.#recycle(e.chunk.buffer);
  }

  #pumpFifo(): void {
    for (;;) {
      if (this.#fd === null) return;
      let bytes = this.#pipeRest;
      const e = this.#queue[0];
      if (bytes === null) {
        if (e === undefined || e.block === null) return;
        if (this.#needHeader) {
          this.#needHeader = false;
          const header = this.encoder.fileHeader(e.chunk.channelsAtStart, this.#totals());
          bytes = new Uint8Array(header.length + e.block.length);
          bytes.set(header);
          bytes.set(e.block, header.length);
        } else {
          bytes = e.block;
        }
      }
      let n = 0;
      try {
        n = writeSync(this.#fd, bytes);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'EAGAIN') {
          this.#pipeRest = bytes;
          this.#retryPipe();
          return;
        }
        if (code === 'EPIPE') {
          this.#readerGone();
          return;
        }
        this.#fail('writing to the FIFO', err);
        return;
      }
      if (n < bytes.length) {
        this.#pipeRest = bytes.subarray(n);
        this.#retryPipe();
        return;
      }
      this.#pipeRest = null;
      this.#written(e!);
    }
  }

  #retryPipe(): void {
    if (this.#retryTimer !== null) return;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      this.#pump();
    }, PIPE_RETRY_MS);
    this.#retryTimer.unref?.();
  }

  #fail(what: string, err: unknown, goodOffset?: number): void {
    if (this.state === 'failed' || this.state === 'closed') return;
    this.state = 'failed';
    this.stats.writeErrors++;
    const code = (err as NodeJS.ErrnoException)?.code ?? 'ERR';
    this.#log.error('capture stopped', {
      file: this.#current,
      while: what,
      code,
      reason: String((err as Error)?.message ?? err),
    });
    if (this.#fd !== null && !this.#fifo) {
      try {
        // Keep the file readable: cut a partly written block.
        if (goodOffset !== undefined) ftruncateSync(this.#fd, goodOffset);
      } catch {
        // nothing more to do
      }
    }
    for (const e of this.#queue.splice(0)) this.#drop(e);
    this.#queuedBytes = 0;
    this.#stopTimers();
    if (this.#fd !== null) this.#closeFd(this.#fd);
    this.#fd = null;
    this.#onFailed?.();
  }

  #stopTimers(): void {
    if (this.#flushTimer !== null) clearTimeout(this.#flushTimer);
    if (this.#retryTimer !== null) clearTimeout(this.#retryTimer);
    this.#flushTimer = null;
    this.#retryTimer = null;
  }

  /**
   * Writes everything recorded so far (synchronously: the file is complete when this returns, even
   * if the process exits right after) and closes the file. Idempotent.
   */
  close(): void {
    if (this.state === 'closed') return;
    const failed = this.state === 'failed';
    this.#stopTimers();
    if (!failed) this.encoder.flush();
    if (failed || this.#fd === null) {
      for (const e of this.#queue.splice(0)) this.#drop(e);
      this.state = 'closed';
      if (this.#fd !== null) this.#closeFd(this.#fd);
      this.#fd = null;
      return;
    }
    try {
      if (this.#fifo) {
        // Best effort: a pipe that is full now stays so; what does not fit is dropped (counted).
        this.#finishFifo();
      } else {
        // The write in flight (if any) is the queue's head: write it again, positional writes are
        // idempotent. BLF payloads still being deflated are deflated here.
        this.#writing = false;
        for (const e of this.#queue) {
          if (e.block === null)
            e.block = this.encoder.wrap!(e.chunk.bytes, deflateSync(e.chunk.bytes, BLF_DEFLATE));
        }
        while (this.#queue.length > 0) {
          const e = this.#queue[0]!;
          if (
            this.#maxSize > 0 &&
            this.#offset + e.block!.length + this.encoder.fileTrailer().length > this.#maxSize &&
            this.#offset > this.#headerLen
          ) {
            this.#rotate();
          }
          if (this.#needHeader) this.#writeHeaderFor(e);
          this.#writeAllSync(e.block!, this.#offset);
          this.#written(e);
        }
        this.#finishFile();
      }
    } catch (err) {
      this.#fail('writing the end of the capture', err);
    }
    this.state = 'closed';
    if (this.#fd !== null) this.#closeFd(this.#fd);
    this.#fd = null;
  }

  #finishFifo(): void {
    for (const e of this.#queue) {
      if (e.block === null)
        e.block = this.encoder.wrap!(e.chunk.bytes, deflateSync(e.chunk.bytes, BLF_DEFLATE));
    }
    const trailer = this.encoder.fileTrailer();
    this.#pumpFifo();
    if (this.#fd !== null && this.#queue.length === 0 && this.#pipeRest === null && trailer.length > 0) {
      try {
        writeSync(this.#fd, trailer);
      } catch {}
    }
    for (const e of this.#queue.splice(0)) this.#drop(e);
  }
}
