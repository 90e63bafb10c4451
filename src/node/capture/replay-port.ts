/**
 * Playing a capture file into a bus: a hub port named `replay:<file>` that transmits the recorded
 * frames with their recorded spacing (divided by `speed`), optionally in a loop.
 *
 * Timing: each frame's due time is computed from the start of the pass (`start + (t - t0) / speed`),
 * never from the previous wake-up, so timer lateness does not accumulate; every frame due at a
 * wake-up is sent in that wake-up (a batch), and the timer is set for the next due frame. Frames
 * whose recorded time goes backwards are sent at once. With `loop`, the next pass starts when the
 * last frame of the previous one was due (as canplayer -l does).
 *
 * The file is read in 1 MiB pieces, asynchronously, ahead of time. A line or block that cannot be
 * read is logged with its position (the first 10; all are counted in `bad`) and skipped; the rest
 * plays. Recorded error frames are reported to the bus's observers (captures, monitors) as error
 * events, not transmitted. A frame the bus refuses is counted in `dropped`.
 */
import { closeSync, openSync, read } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { inflateSync } from 'node:zlib';
import type { CanHub, HubPort } from '../../core/bus/hub.js';
import {
  type CaptureDecoder,
  type CaptureEvent,
  type CaptureFormat,
  captureFormatOf,
  createCaptureDecoder,
} from '../../core/capture/index.js';
import { type LogFields, type Logger, nullLogger } from '../../core/util/log.js';
import type { BusAttachment, PortContext, PortFactory } from '../bus/port-registry.js';
import { CodedError } from '../errors.js';

export type ReplayErrorCode = 'ERR_REPLAY_OPEN' | 'ERR_REPLAY_OPTION';
export class ReplayError extends CodedError<ReplayErrorCode> {}

export interface ReplayOptions {
  /** Default: from the extension. */
  readonly format?: CaptureFormat | undefined;
  /** Time scale: 2 plays twice as fast. Default 1. */
  readonly speed?: number | undefined;
  readonly loop?: boolean | undefined;
  readonly log?: Logger | undefined;
  /** The port's name on the hub (default `replay:<path>`). */
  readonly portName?: string | undefined;
}

export type ReplayState = 'waiting' | 'playing' | 'done' | 'failed' | 'closed';

export interface ReplayStats {
  frames: number;
  errorFrames: number;
  /** Lines or blocks that could not be read. */
  bad: number;
  /** Frames the bus refused. */
  dropped: number;
  /** Passes completed. */
  passes: number;
}

const READ_SIZE = 1 << 20;
const LOOKAHEAD = 8192;
const MAX_BATCH = 10_000;
const LOGGED_BAD = 10;

export class Replay {
  readonly path: string;
  readonly format: CaptureFormat;
  readonly port: HubPort;
  readonly stats: ReplayStats = { frames: 0, errorFrames: 0, bad: 0, dropped: 0, passes: 0 };
  state: ReplayState = 'waiting';
  /** Resolves when the file has been played (not in loop mode) or the replay is closed. */
  readonly done: Promise<void>;
  readonly #hub: CanHub;
  readonly #speed: number;
  readonly #loop: boolean;
  readonly #log: Logger;
  #fd: number | null;
  #decoder: CaptureDecoder;
  #fileOffset = 0;
  #eof = false;
  #reading = false;
  readonly #ahead: CaptureEvent[] = [];
  #timer: ReturnType<typeof setTimeout> | null = null;
  /** Pass start (performance.now() ms) and the recorded time (ns) it corresponds to. */
  #startMs = 0;
  #baseNs: bigint | null = null;
  #lastDueMs = 0;
  #passFrames = 0;
  #resolveDone!: () => void;
  readonly #buf = Buffer.allocUnsafe(READ_SIZE);

  constructor(hub: CanHub, path: string, opts: ReplayOptions = {}) {
    const format = opts.format ?? captureFormatOf(path);
    if (format === undefined) {
      throw new ReplayError(
        'ERR_REPLAY_OPTION',
        `${path}: unknown capture format (expected .pcapng, .log, .asc or .blf)`,
      );
    }
    const speed = opts.speed ?? 1;
    if (!(Number.isFinite(speed) && speed > 0))
      throw new ReplayError('ERR_REPLAY_OPTION', `speed must be a positive number, got ${speed}`);
    this.path = path;
    this.format = format;
    this.#hub = hub;
    this.#speed = speed;
    this.#loop = opts.loop === true;
    this.#log = opts.log ?? nullLogger;
    try {
      this.#fd = openSync(path, 'r');
    } catch (err) {
      throw new ReplayError('ERR_REPLAY_OPEN', `cannot open ${path}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    this.#decoder = this.#newDecoder();
    this.done = new Promise((r) => {
      this.#resolveDone = r;
    });
    this.port = hub.attach(
      { onFramesAvailable: () => undefined },
      { name: opts.portName ?? `replay:${path}` },
    );
    this.port.setReceiving(false); // it only transmits
    this.#fill();
  }

  #newDecoder(): CaptureDecoder {
    return createCaptureDecoder(this.format, {
      inflate: (d, size) => inflateSync(d, { maxOutputLength: Math.max(size, 1) * 2 + 1024 }),
    });
  }

  /** Starts playing (idempotent). */
  start(): void {
    if (this.state !== 'waiting') return;
    this.state = 'playing';
    this.#startMs = performance.now();
    this.#lastDueMs = this.#startMs;
    this.#tick();
  }

  fields(): LogFields {
    return { state: this.state, ...this.stats };
  }

  // ---- reading ahead ------------------------------------------------------------------------

  #fill(): void {
    const dec = this.#decoder;
    while (this.#ahead.length < LOOKAHEAD) {
      const e = dec.next();
      if (e === undefined) break;
      if (e.kind === 'bad') {
        this.#bad(e);
        continue;
      }
      this.#ahead.push(e);
    }
    if (this.#ahead.length >= LOOKAHEAD / 2 || this.#eof || this.#reading || this.#fd === null) return;
    this.#reading = true;
    const fd = this.#fd;
    read(fd, this.#buf, 0, READ_SIZE, this.#fileOffset, (err, n) => {
      this.#reading = false;
      if (this.#fd !== fd) return; // closed meanwhile
      if (err !== null) {
        this.#log.error('replay stopped: reading failed', { file: this.path, reason: err.message });
        this.#finish('failed');
        return;
      }
      if (n === 0) {
        this.#eof = true;
        this.#decoder.end();
      } else {
        this.#fileOffset += n;
        this.#decoder.push(this.#buf.subarray(0, n));
      }
      this.#fill();
      if (this.state === 'playing' && this.#timer === null) this.#tick();
    });
  }

  #bad(e: Extract<CaptureEvent, { kind: 'bad' }>): void {
    this.stats.bad++;
    if (this.stats.passes > 0) return; // reported in the first pass already
    if (this.stats.bad <= LOGGED_BAD) {
      this.#log.warn('replay: skipped unreadable input', {
        file: this.path,
        at: e.position.text,
        reason: e.message,
      });
    } else if (this.stats.bad === LOGGED_BAD + 1) {
      this.#log.warn('replay: more unreadable input; counting it without logging (stats: bad)', {
        file: this.path,
      });
    }
  }

  // ---- playing ------------------------------------------------------------------------------

  #tick(): void {
    this.#timer = null;
    if (this.state !== 'playing') return;
    let sent = 0;
    for (;;) {
      const e = this.#ahead[0];
      if (e === undefined) {
        this.#fill();
        if (this.#ahead.length > 0) continue;
        if (!this.#eof || this.#reading) return; // the read in flight calls #tick again
        this.#endOfPass();
        return;
      }
      const ts =
        e.kind === 'frame' ? e.frame.timestampNs : e.kind === 'error-frame' ? e.error.timestampNs : 0n;
      if (this.#baseNs === null) this.#baseNs = ts;
      let due = this.#startMs + Number(ts - this.#baseNs) / 1e6 / this.#speed;
      if (due < this.#lastDueMs) due = this.#lastDueMs;
      const now = performance.now();
      if (due > now) {
        this.#timer = setTimeout(() => this.#tick(), due - now);
        return;
      }
      if (sent >= MAX_BATCH) {
        // A very dense stretch: let the rest of the daemon run, then go on.
        this.#timer = setTimeout(() => this.#tick(), 0);
        return;
      }
      this.#ahead.shift();
      this.#lastDueMs = due;
      this.#play(e);
      sent++;
    }
  }

  #play(e: CaptureEvent): void {
    if (e.kind === 'frame') {
      this.#passFrames++;
      if (this.port.transmit(e.frame) === 'sent') this.stats.frames++;
      else this.stats.dropped++;
    } else if (e.kind === 'error-frame') {
      this.#passFrames++;
      this.stats.errorFrames++;
      this.#hub.emitErrorFrame({ ...e.error, timestampNs: this.#hub.now(), origin: this.port.id });
    }
  }

  #endOfPass(): void {
    this.stats.passes++;
    if (!this.#loop || this.#passFrames === 0) {
      if (this.#loop) this.#log.warn('replay: the file has no frames; not looping', { file: this.path });
      this.#log.info('replay finished', { file: this.path, ...this.stats });
      this.#finish('done');
      return;
    }
    // Next pass: read the file again; its first frame is due when the last one was.
    this.#passFrames = 0;
    this.#eof = false;
    this.#fileOffset = 0;
    this.#decoder = this.#newDecoder();
    this.#baseNs = null;
    this.#startMs = this.#lastDueMs;
    this.#fill();
  }

  #finish(state: ReplayState): void {
    if (this.state === 'closed' || this.state === 'done' || this.state === 'failed') return;
    this.state = state;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    if (this.#fd !== null) closeSync(this.#fd);
    this.#fd = null;
    this.#resolveDone();
  }

  /** Stops playing, detaches and closes the file. Idempotent. */
  close(): void {
    this.#finish('closed');
    this.state = 'closed';
    this.port.detach();
  }
}

/** Plays the capture file at `path` into `hub`, starting now. */
export function replayFile(hub: CanHub, path: string, opts: ReplayOptions = {}): Replay {
  const r = new Replay(hub, path, opts);
  r.start();
  return r;
}

// ---------------------------------------------------------------------------------------------------
// The daemon's `--replay BUS=FILE`

export interface ReplaySpec {
  readonly path: string;
  readonly format: CaptureFormat;
}

/** `--replay-speed`: a positive number. */
export function parseReplaySpeed(v: string): number | string {
  const n = Number(v);
  if (!/^[0-9]*\.?[0-9]+(e[+-]?[0-9]+)?$/i.test(v) || !(n > 0) || n > 1e6) {
    return `expected a positive number (1 = recorded speed, 2 = twice as fast), at most 1000000, got "${v}"`;
  }
  return n;
}

export const REPLAY_STARTS = ['guest', 'now'] as const;

export const replayFactory: PortFactory<ReplaySpec> = {
  kind: 'replay',
  keys: ['.pcapng', '.log', '.asc', '.blf'],
  help:
    '          .pcapng .log .asc .blf  (all frames of the file, whatever its channels)\n' +
    '        From a port named replay:FILE, with the recorded spacing; by default once the first\n' +
    '        guest on BUS starts its controller (--replay-start). Unreadable lines or blocks are\n' +
    '        logged with their position and skipped.',
  parse(value: string): ReplaySpec | string {
    const format = captureFormatOf(value);
    if (format === undefined) return 'expected a .pcapng, .log, .asc or .blf file';
    return { path: value, format };
  },
  create(ctx: PortContext, spec: ReplaySpec): BusAttachment {
    const speedOpt = ctx.options['replay-speed'];
    const speed = typeof speedOpt === 'string' ? parseReplaySpeed(speedOpt) : 1;
    if (typeof speed === 'string') throw new ReplayError('ERR_REPLAY_OPTION', `--replay-speed: ${speed}`);
    const startOpt = ctx.options['replay-start'] ?? 'guest';
    if (startOpt !== 'guest' && startOpt !== 'now') {
      throw new ReplayError(
        'ERR_REPLAY_OPTION',
        `--replay-start: expected guest or now, got ${String(startOpt)}`,
      );
    }
    const replay = new Replay(ctx.hub, spec.path, {
      format: spec.format,
      speed,
      loop: ctx.options['replay-loop'] === true,
      log: ctx.log,
    });
    if (startOpt === 'now') replay.start();
    else ctx.onFirstGuestStart(() => replay.start());
    return {
      kind: 'replay',
      name: replay.port.name,
      bus: ctx.bus,
      stats: () => replay.fields(),
      close: () => replay.close(),
    };
  },
};
