/**
 * Frame rate and bus load of every bus over the last minute, one sample per second, for the
 * monitor page's chart. Reads the hubs' counters once a second (no per-frame work).
 */
import type { CanHub } from '../../core/bus/hub.js';

export interface BusSample {
  /** Wall-clock seconds at the end of the interval. */
  readonly t: number;
  /** Frames per second over the interval. */
  readonly fps: number;
  /** Payload bytes per second. */
  readonly bps: number;
  /** The hub's bus-load estimate (0..1) at the end of the interval. */
  readonly load: number;
}

interface Track {
  frames: number;
  bytes: number;
  at: number;
  samples: BusSample[];
}

export const HISTORY_SECONDS = 60;

export class BusHistory {
  readonly #hubs: () => ReadonlyMap<string, CanHub>;
  readonly #tracks = new Map<string, Track>();
  readonly #timer: ReturnType<typeof setInterval>;
  readonly #keep: number;

  constructor(hubs: () => ReadonlyMap<string, CanHub>, intervalMs = 1000, keep = HISTORY_SECONDS) {
    this.#hubs = hubs;
    this.#keep = keep;
    this.sample();
    this.#timer = setInterval(() => this.sample(), intervalMs);
    this.#timer.unref?.();
  }

  /** Takes one sample of every bus now (the timer calls it; tests may too). */
  sample(): void {
    const now = Date.now();
    for (const [name, hub] of this.#hubs()) {
      const s = hub.stats();
      const tr = this.#tracks.get(name);
      if (tr === undefined) {
        this.#tracks.set(name, { frames: s.frames, bytes: s.bytes, at: now, samples: [] });
        continue;
      }
      const dt = (now - tr.at) / 1000;
      if (dt <= 0) continue;
      // A bus recreated with fresh counters: restart its deltas rather than showing negative rates.
      const df = s.frames >= tr.frames ? s.frames - tr.frames : s.frames;
      const db = s.bytes >= tr.bytes ? s.bytes - tr.bytes : s.bytes;
      tr.samples.push({ t: now / 1000, fps: df / dt, bps: db / dt, load: s.busLoad });
      if (tr.samples.length > this.#keep) tr.samples.splice(0, tr.samples.length - this.#keep);
      tr.frames = s.frames;
      tr.bytes = s.bytes;
      tr.at = now;
    }
  }

  /** The samples of one bus, oldest first (empty for an unknown bus). */
  of(bus: string): readonly BusSample[] {
    return this.#tracks.get(bus)?.samples ?? [];
  }

  close(): void {
    clearInterval(this.#timer);
  }
}
