/**
 * Recording buses: a capture port is a hub observer (attached with `observes` and `errorFrames`)
 * that copies each frame into its file's stage during the fan-out; the batch is encoded right after
 * the bus delivered it (FileStage), and the CaptureFile writes it. Several buses may record into one
 * file (one channel / pcapng interface each).
 *
 * Time: frames carry the bus clock (CLOCK_MONOTONIC ns); the file gets wall-clock time
 * `epochOffsetNs + frame.timestampNs`, the offset taken once when the daemon starts (so a wall-clock
 * step while running does not reorder the file). The time goes to the encoder as a number of ns
 * after the file's start (`frameAt`): one bigint subtraction per batch of frames sharing a time.
 *
 * Direction: frames a guest sent (ports named `guest<N>`) are marked outbound, all others (host
 * interfaces, links, replays, library ports) inbound; error frames inbound. pcapng also names the
 * sending port in a packet comment.
 */
import { resolve } from 'node:path';
import type { CanErrorFrame } from '../../core/bus/can-error.js';
import type { CanFrame } from '../../core/bus/can-frame.js';
import type { CanHub, HubPort, HubRegistry } from '../../core/bus/hub.js';
import {
  AT_NS_LIMIT,
  type CaptureFormat,
  type CaptureTag,
  captureFormatOf,
  type Direction,
} from '../../core/capture/index.js';
import { FrameStage } from '../../core/capture/stage.js';
import { type LogFields, type Logger, nullLogger } from '../../core/util/log.js';
import type { BusAttachment, PortContext, PortFactory } from '../bus/port-registry.js';
import { CaptureFile, CaptureFileError } from './capture-file.js';

/** Direction of a frame by the name of the port that sent it: guests' frames are outbound. */
export function guestDirection(portName: string): Direction {
  return /^guest\d+$/.test(portName) ? 'outbound' : 'inbound';
}

export interface CapturePortStats {
  frames: number;
  errorFrames: number;
}

export interface CapturePortOptions {
  /** Wall-clock ns of the bus clock's zero (default: now minus `hub.now()`). */
  readonly epochOffsetNs?: bigint | undefined;
  /** The port's name on the hub (default `capture:<file path>`). */
  readonly portName?: string | undefined;
  /** Direction of frames by sending port name (default guestDirection). */
  readonly direction?: ((portName: string) => Direction | undefined) | undefined;
}

/** Frames a capture file sets aside before it encodes them in one go (64 bytes of payload each). */
const STAGE_FRAMES = 4096;

/**
 * The frames of a file's capture ports copied aside during the fan-out and encoded right after the
 * bus delivered them (one setImmediate per batch), so guests get their frames and completions
 * without waiting for the encoder; one stage per file keeps its buses' frames in bus order. A full
 * stage is encoded at once.
 */
class FileStage {
  readonly #stage = new FrameStage(STAGE_FRAMES);
  readonly #file: CaptureFile;
  #scheduled = false;
  readonly #encode: (f: CanFrame, channel: number, atNs: number, tag: CaptureTag) => void;
  /** Encodes what is staged (also what the setImmediate calls). */
  readonly drain: () => void;

  constructor(file: CaptureFile) {
    this.#file = file;
    const enc = file.encoder;
    this.#encode = (f, channel, atNs, tag) => enc.frameAt(channel, f, atNs, tag);
    this.drain = () => {
      this.#scheduled = false;
      const stage = this.#stage;
      if (stage.size === 0) return;
      if (enc.encodeStaged === undefined) {
        stage.drain(this.#encode);
      } else {
        try {
          enc.encodeStaged(stage);
        } finally {
          stage.clear();
        }
      }
      this.#file.touch();
    };
  }

  add(f: CanFrame, channel: number, atNs: number, tag: CaptureTag): void {
    if (!this.#stage.push(f, channel, atNs, tag)) {
      this.drain();
      this.#stage.push(f, channel, atNs, tag);
    }
    if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(this.drain);
    }
  }
}

const fileStages = new WeakMap<CaptureFile, FileStage>();

/** The default epoch offset for a hub: wall clock now minus the hub's clock now. */
export function epochOffsetOf(hub: CanHub): bigint {
  return BigInt(Date.now()) * 1_000_000n - hub.now();
}

/** One bus recorded into one channel of a CaptureFile. */
export class CapturePort {
  readonly port: HubPort;
  readonly channel: number;
  readonly stats: CapturePortStats = { frames: 0, errorFrames: 0 };
  readonly #file: CaptureFile;
  readonly #hub: CanHub;
  readonly #epoch: bigint;
  readonly #direction: (portName: string) => Direction | undefined;
  readonly #tags = new Map<number, CaptureTag>();
  readonly #errorTags = new Map<number, CaptureTag>();
  #lastOrigin = -1;
  #lastTag: CaptureTag | undefined;
  readonly #stage: FileStage;

  constructor(file: CaptureFile, hub: CanHub, channelName: string, opts: CapturePortOptions = {}) {
    this.#file = file;
    this.#hub = hub;
    this.#epoch = opts.epochOffsetNs ?? epochOffsetOf(hub);
    this.#direction = opts.direction ?? guestDirection;
    this.channel = file.encoder.addChannel(channelName);
    file.touch();
    const enc = file.encoder;
    const epoch = this.#epoch;
    // The bus clock's reading at the file's start: `frameAt` times are `timestampNs - base`.
    const base = enc.startNs - epoch;
    const channel = this.channel;
    const stats = this.stats;
    let lastTs = -1n;
    let at = 0;
    let stage = fileStages.get(file);
    if (stage === undefined) {
      stage = new FileStage(file);
      fileStages.set(file, stage);
    }
    this.#stage = stage;
    const staged = stage;
    this.port = hub.attach(
      {
        onFramesAvailable: () => {}, // an observer: frames come to onFrame
        onFrame: (f: CanFrame) => {
          if (f.origin !== this.#lastOrigin) {
            this.#lastOrigin = f.origin;
            this.#lastTag = this.#tags.get(f.origin) ?? this.#tagOf(f.origin, false);
          }
          const ts = f.timestampNs;
          // Frames of one batch share a time stamp (the daemon's clock reads once per wake-up).
          if (ts !== lastTs) {
            lastTs = ts;
            at = Number(ts - base);
          }
          stats.frames++;
          if (at < AT_NS_LIMIT && at > -AT_NS_LIMIT) {
            staged.add(f, channel, at, this.#lastTag!);
            return;
          }
          staged.drain(); // keeps the file's order
          enc.frame(channel, f, epoch + ts, this.#lastTag!);
          file.touch();
        },
        onErrorFrame: (e: CanErrorFrame) => {
          staged.drain(); // the frames before it go first
          const tag = this.#errorTags.get(e.origin) ?? this.#tagOf(e.origin, true);
          enc.errorFrame(this.channel, e, this.#epoch + e.timestampNs, tag);
          this.stats.errorFrames++;
          file.touch();
        },
      },
      { name: opts.portName ?? `capture:${file.path}`, observes: true, errorFrames: true },
    );
  }

  #tagOf(origin: number, error: boolean): CaptureTag {
    let name: string | undefined;
    for (const p of this.#hub.ports()) {
      if (p.id === origin) {
        name = p.name;
        break;
      }
    }
    const direction = error ? 'inbound' : name === undefined ? undefined : this.#direction(name);
    const tag = this.#file.encoder.tag(error && name === undefined ? 'bus' : name, direction);
    // Port ids are never reused, so a tag found by name stays right; unknown ids are looked up again.
    if (name !== undefined || error) (error ? this.#errorTags : this.#tags).set(origin, tag);
    return tag;
  }

  /** Encodes the frames still set aside (the file then has every frame recorded so far). */
  flush(): void {
    this.#stage.drain();
  }

  close(): void {
    this.#stage.drain();
    this.port.detach();
  }
}

/** A recording of one or more buses into one file (`recordBuses`). */
export interface BusRecording {
  readonly file: CaptureFile;
  readonly ports: readonly CapturePort[];
  /** Counters of the file and its ports. */
  stats(): LogFields;
  /** Detaches from the buses and writes the rest of the file (synchronously). Idempotent. */
  close(): void;
}

export interface RecordBusesOptions extends Omit<CapturePortOptions, 'portName'> {
  /** Default: from the extension (.pcapng, .log, .asc, .blf). */
  readonly format?: CaptureFormat | undefined;
  readonly log?: Logger | undefined;
  /** Rotate files at this size (bytes, >= 65536). */
  readonly maxSize?: number | undefined;
  /** Longest time data waits in memory before it is written (ms, default 500). */
  readonly flushMs?: number | undefined;
}

/**
 * Records `buses` (a hub, or hubs by channel name) into the capture file at `path`, in-process:
 * `const rec = recordBuses('/tmp/bus.pcapng', can.hubs.get('default')); ...; rec.close();`.
 */
export function recordBuses(
  path: string,
  buses: CanHub | Readonly<Record<string, CanHub>>,
  opts: RecordBusesOptions = {},
): BusRecording {
  const format = opts.format ?? captureFormatOf(path);
  if (format === undefined) {
    throw new CaptureFileError(
      'ERR_CAPTURE_OPTION',
      `${path}: unknown capture format (expected .pcapng, .log, .asc or .blf)`,
    );
  }
  const hubs: [string, CanHub][] =
    'attach' in buses && typeof buses.attach === 'function'
      ? [[(buses as CanHub).name, buses as CanHub]]
      : Object.entries(buses);
  const first = hubs[0]?.[1];
  const epoch =
    opts.epochOffsetNs ?? (first === undefined ? BigInt(Date.now()) * 1_000_000n : epochOffsetOf(first));
  const ports: CapturePort[] = [];
  const file = new CaptureFile({
    path,
    format,
    startNs: epoch + (first?.now() ?? 0n),
    log: opts.log ?? nullLogger,
    maxSize: opts.maxSize,
    flushMs: opts.flushMs,
    onFailed: () => {
      for (const p of ports) p.close();
    },
  });
  try {
    for (const [name, hub] of hubs) {
      ports.push(new CapturePort(file, hub, name, { epochOffsetNs: epoch, direction: opts.direction }));
    }
  } catch (err) {
    for (const p of ports) p.close();
    file.close();
    throw err;
  }
  file.encoder.flush();
  return {
    file,
    ports,
    stats: () => {
      let frames = 0;
      let errorFrames = 0;
      for (const p of ports) {
        frames += p.stats.frames;
        errorFrames += p.stats.errorFrames;
      }
      return { frames, errorFrames, ...file.fields() };
    },
    close: () => {
      for (const p of ports) p.close();
      file.close();
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// The daemon's `--capture BUS=FILE`

export interface CaptureSpec {
  readonly path: string;
  readonly format: CaptureFormat;
}

/** A byte count with an optional binary suffix (K, M, G), or a message. */
export function parseByteSize(v: string): number | string {
  const m = /^([0-9]+)([KMG]?)$/i.exec(v);
  if (m === null) return `expected a byte count (an integer, optionally with K, M or G), got "${v}"`;
  const shift = { '': 0, K: 10, M: 20, G: 30 }[m[2]!.toUpperCase() as '' | 'K' | 'M' | 'G'];
  const n = Number(m[1]) * 2 ** shift;
  if (!Number.isSafeInteger(n)) return `${v} is too large`;
  return n;
}

interface SharedFile {
  readonly file: CaptureFile;
  readonly attachments: Set<string>;
}

/** Open capture files per daemon (its bus registry), by absolute path: several buses, one file. */
const openFiles = new WeakMap<HubRegistry, Map<string, SharedFile>>();
/** The capture ports of each file (they detach when it fails). */
const allPorts = new WeakMap<CaptureFile, CapturePort[]>();

export const captureFactory: PortFactory<CaptureSpec> = {
  kind: 'capture',
  keys: ['.pcapng', '.log', '.asc', '.blf'],
  help:
    '          .pcapng  Wireshark/tshark (SocketCAN link type, ns time stamps, direction, sending port)\n' +
    '          .log     candump -l log (canplayer, log2asc, python-can)\n' +
    '          .asc     Vector ASCII log\n' +
    '          .blf     Vector binary log (zlib-compressed containers)\n' +
    '        Wall-clock time stamps; data reaches the file within a second, in whole blocks. FILE\n' +
    '        may be a FIFO (wireshark -k -i FIFO). Several buses may name one file. A write error\n' +
    '        stops that capture (logged, counted); the guests are not affected.',
  parse(value: string): CaptureSpec | string {
    const format = captureFormatOf(value);
    if (format === undefined) return 'expected a .pcapng, .log, .asc or .blf file';
    if (value.endsWith('/')) return 'is a directory';
    return { path: value, format };
  },
  create(ctx: PortContext, spec: CaptureSpec): BusAttachment {
    const abs = resolve(spec.path);
    let files = openFiles.get(ctx.hubs);
    if (files === undefined) {
      files = new Map();
      openFiles.set(ctx.hubs, files);
    }
    let shared = files.get(abs);
    const maxOpt = ctx.options['capture-max-size'];
    const maxSize = typeof maxOpt === 'string' ? parseByteSize(maxOpt) : undefined;
    if (typeof maxSize === 'string')
      throw new CaptureFileError('ERR_CAPTURE_OPTION', `--capture-max-size: ${maxSize}`);
    if (shared === undefined) {
      const file = new CaptureFile({
        path: spec.path,
        format: spec.format,
        startNs: ctx.epochOffsetNs + ctx.hub.now(),
        log: ctx.log,
        maxSize,
        onFailed: () => {
          for (const p of allPorts.get(file) ?? []) p.close();
        },
      });
      shared = { file, attachments: new Set() };
      files.set(abs, shared);
    }
    const file = shared.file;
    if (shared.attachments.has(ctx.bus)) {
      throw new CaptureFileError(
        'ERR_CAPTURE_OPTION',
        `--capture ${ctx.bus}=${spec.path}: that file already records bus ${ctx.bus}`,
      );
    }
    let port: CapturePort;
    try {
      port = new CapturePort(file, ctx.hub, ctx.bus, { epochOffsetNs: ctx.epochOffsetNs });
    } catch (err) {
      if (shared.attachments.size === 0) {
        file.close();
        files.delete(abs);
      }
      throw err;
    }
    const list = allPorts.get(file) ?? [];
    list.push(port);
    allPorts.set(file, list);
    shared.attachments.add(ctx.bus);
    if (file.state === 'failed') port.close();
    file.encoder.flush(); // the interface block goes out now (a FIFO reader sees the bus at once)
    const entry = shared;
    const filesOfDaemon = files;
    let closed = false;
    return {
      kind: 'capture',
      name: port.port.name,
      bus: ctx.bus,
      stats: () => ({ ...port.stats, ...file.fields() }),
      close: () => {
        if (closed) return;
        closed = true;
        port.close();
        entry.attachments.delete(ctx.bus);
        if (entry.attachments.size === 0) {
          file.close();
          filesOfDaemon.delete(abs);
          allPorts.delete(file);
        }
      },
    };
  },
};
