/**
 * Capture file formats as a library: encoders and decoders for pcapng, candump logs, Vector ASC and
 * Vector BLF, plus whole-file helpers that work in memory (`writeCapture`, `readCapture`).
 */
import type { CanErrorFrame } from '../bus/can-error.js';
import type { CanFrame } from '../bus/can-frame.js';
import { AscDecoder, AscEncoder } from './asc.js';
import { BlfDecoder, BlfEncoder, type BlfInflate } from './blf.js';
import { concatBytes, MemoryChunks } from './bytes.js';
import { CandumpLogDecoder, CandumpLogEncoder } from './candump-log.js';
import { PcapngDecoder, PcapngEncoder } from './pcapng.js';
import type {
  CaptureDecoder,
  CaptureEncoder,
  CaptureEncoderOptions,
  CaptureEvent,
  CaptureFormat,
  Direction,
} from './types.js';

export { AscDecoder, AscEncoder, ascDate, parseAscDate } from './asc.js';
export {
  BLF_CONTAINER_SIZE,
  BLF_HEADER_SIZE,
  BlfDecoder,
  BlfEncoder,
  type BlfInflate,
  blfContainer,
} from './blf.js';
export { CandumpLogDecoder, CandumpLogEncoder } from './candump-log.js';
export { LINKTYPE_CAN_SOCKETCAN, PcapngDecoder, PcapngEncoder } from './pcapng.js';
export * from './types.js';

const EXTENSIONS: Record<string, CaptureFormat> = {
  '.pcapng': 'pcapng',
  '.log': 'log',
  '.asc': 'asc',
  '.blf': 'blf',
};

/** The format a file name's extension names (case-insensitive), or undefined. */
export function captureFormatOf(path: string): CaptureFormat | undefined {
  const base = path.slice(path.lastIndexOf('/') + 1);
  const dot = base.lastIndexOf('.');
  return dot <= 0 ? undefined : EXTENSIONS[base.slice(dot).toLowerCase()];
}

export function createCaptureEncoder(format: CaptureFormat, opts: CaptureEncoderOptions): CaptureEncoder {
  switch (format) {
    case 'pcapng':
      return new PcapngEncoder(opts);
    case 'log':
      return new CandumpLogEncoder(opts);
    case 'asc':
      return new AscEncoder(opts);
    case 'blf':
      return new BlfEncoder(opts);
  }
}

export function createCaptureDecoder(
  format: CaptureFormat,
  opts: { inflate?: BlfInflate | undefined } = {},
): CaptureDecoder {
  switch (format) {
    case 'pcapng':
      return new PcapngDecoder();
    case 'log':
      return new CandumpLogDecoder();
    case 'asc':
      return new AscDecoder();
    case 'blf':
      return new BlfDecoder(opts);
  }
}

/** One record for `writeCapture`. `frame.timestampNs` / `error.timestampNs` are wall-clock ns. */
export type CaptureRecord =
  | {
      readonly frame: CanFrame;
      readonly channel?: number | undefined;
      readonly direction?: Direction | undefined;
      readonly port?: string | undefined;
    }
  | {
      readonly error: CanErrorFrame;
      readonly channel?: number | undefined;
      readonly direction?: Direction | undefined;
      readonly port?: string | undefined;
    };

export interface WriteCaptureOptions {
  /** Channel (bus) names; default one channel, "can0". */
  readonly channels?: readonly string[] | undefined;
  /** Start of the recording (wall ns); default the earliest record's time. */
  readonly startNs?: bigint | undefined;
  /** BLF: zlib deflate (RFC 1950) for the containers; without it they are stored uncompressed. */
  readonly deflate?: ((data: Uint8Array) => Uint8Array) | undefined;
  /** Bytes per chunk / BLF container (default per format). */
  readonly chunkSize?: number | undefined;
}

/** A whole capture file in memory. */
export function writeCapture(
  format: CaptureFormat,
  records: Iterable<CaptureRecord>,
  opts: WriteCaptureOptions = {},
): Uint8Array {
  const list = [...records];
  let startNs = opts.startNs;
  if (startNs === undefined) {
    for (const r of list) {
      const t = 'frame' in r ? r.frame.timestampNs : r.error.timestampNs;
      if (startNs === undefined || t < startNs) startNs = t;
    }
  }
  const chunks = new MemoryChunks();
  const enc = createCaptureEncoder(format, {
    handler: chunks,
    startNs: startNs ?? 0n,
    chunkSize: opts.chunkSize,
  });
  for (const name of opts.channels ?? ['can0']) enc.addChannel(name);
  const tags = new Map<string, ReturnType<CaptureEncoder['tag']>>();
  let count = 0;
  let lastNs = 0n;
  for (const r of list) {
    const key = `${r.direction ?? ''}\u0000${r.port ?? ''}`;
    let tag = tags.get(key);
    if (tag === undefined) {
      tag = enc.tag(r.port, r.direction);
      tags.set(key, tag);
    }
    if ('frame' in r) {
      enc.frame(r.channel ?? 0, r.frame, r.frame.timestampNs, tag);
      lastNs = r.frame.timestampNs;
    } else {
      enc.errorFrame(r.channel ?? 0, r.error, r.error.timestampNs, tag);
      lastNs = r.error.timestampNs;
    }
    count++;
  }
  enc.flush();
  const body: Uint8Array[] = [];
  let uncompressed = 0;
  for (const c of chunks.chunks) {
    if (enc.wrap !== undefined) {
      const block = enc.wrap(c.bytes, opts.deflate === undefined ? null : opts.deflate(c.bytes));
      uncompressed += 32 + c.bytes.length;
      body.push(block);
    } else {
      uncompressed += c.bytes.length;
      body.push(c.bytes);
    }
  }
  const trailer = enc.fileTrailer();
  const probe = enc.fileHeader(0, { fileSize: 0, uncompressedSize: 0, records: 0, lastNs: 0n });
  const headerLen = enc.headerHasTotals ? probe.length : 0;
  let size = headerLen + trailer.length;
  for (const b of body) size += b.length;
  // The header declares the channels that exist before the first chunk; pcapng writes the others
  // in the stream, where they were added (here: none, all channels came first).
  const header = enc.fileHeader(chunks.chunks[0]?.channelsAtStart ?? enc.channels.length, {
    fileSize: size,
    uncompressedSize: headerLen + uncompressed,
    records: count,
    lastNs,
  });
  return concatBytes([header, ...body, trailer]);
}

export interface ReadCaptureOptions {
  /** BLF: zlib inflate for compressed containers. */
  readonly inflate?: BlfInflate | undefined;
}

/** Every record of a whole capture file in memory, bad lines and blocks included (kind 'bad'). */
export function readCapture(
  format: CaptureFormat,
  bytes: Uint8Array,
  opts: ReadCaptureOptions = {},
): CaptureEvent[] {
  const dec = createCaptureDecoder(format, opts);
  dec.push(bytes);
  dec.end();
  const out: CaptureEvent[] = [];
  for (let e = dec.next(); e !== undefined; e = dec.next()) out.push(e);
  return out;
}
