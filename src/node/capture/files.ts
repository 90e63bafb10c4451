/** Whole capture files on disk, for tests and tools (BLF compression with Node's zlib). */
import { readFileSync, writeFileSync } from 'node:fs';
import { deflateSync, inflateSync } from 'node:zlib';
import {
  type CaptureEvent,
  type CaptureFormat,
  type CaptureRecord,
  captureFormatOf,
  readCapture,
  type WriteCaptureOptions,
  writeCapture,
} from '../../core/capture/index.js';

function formatOf(path: string, format: CaptureFormat | undefined): CaptureFormat {
  const f = format ?? captureFormatOf(path);
  if (f === undefined)
    throw new Error(`${path}: unknown capture format (expected .pcapng, .log, .asc or .blf)`);
  return f;
}

/** Every record of the capture file at `path` (format from the extension unless given). */
export function readCaptureFile(path: string, format?: CaptureFormat): CaptureEvent[] {
  return readCapture(formatOf(path, format), readFileSync(path), { inflate: (d) => inflateSync(d) });
}

/** Writes `records` as a complete capture file (BLF containers zlib-compressed). */
export function writeCaptureFile(
  path: string,
  records: Iterable<CaptureRecord>,
  opts: WriteCaptureOptions & { format?: CaptureFormat } = {},
): void {
  const { format, ...rest } = opts;
  writeFileSync(
    path,
    writeCapture(formatOf(path, format), records, { deflate: (d) => deflateSync(d), ...rest }),
  );
}
