/**
 * One socketcand client connection as the server sees it: the mode state machine (no bus, BCM, raw,
 * control) and what each command does, including the broadcast manager's cyclic send jobs and
 * receive filters. Pure logic: the server (src/node/net/socketcand-server.ts) gives it the elements
 * read from the connection and carries out what it asks through a SessionHost (put a frame on the
 * bus, write a reply, change what the client is sent).
 *
 * Modes and commands follow socketcand (its protocol description and server code):
 * - no bus: `< open BUS >` -> `< ok >` and BCM mode; bus configuration (`< BUS B ... >`,
 *   `< BUS C ... >`) is not supported and answers an error.
 * - BCM (after open): `send`, `sendrtr`, `add`, `update`, `delete`, `filter`, `muxfilter`,
 *   `subscribe`, `unsubscribe`; received frames reach the client only through receive jobs.
 * - raw: every frame of the bus reaches the client; `send`, `sendrtr`, `fdsend`.
 * - control: `statistics MS` -> `< stat rbytes rpackets tbytes tpackets >` every MS ms while in
 *   control mode.
 * - every mode: `echo`; `rawmode`, `bcmmode`, `controlmode` switch (`< ok >`), `isotpmode` is not
 *   supported. Leaving BCM mode removes its jobs, as closing socketcand's BCM socket does.
 * Anything else, and any command that cannot be carried out, answers `< error TEXT >`: never
 * silence. (socketcand itself ignores many malformed commands without a word.)
 */
import { type CanFrame, type MutableCanFrame, makeCanFrame, scratchCanFrame } from '../bus/can-frame.js';
import {
  errorElement,
  parseFdSend,
  parseFrameWords,
  parseIdWord,
  parseSend,
  parseSendRtr,
  scratchPayloads,
  Words,
} from './socketcand-codec.js';

export type SocketcandMode = 'nobus' | 'bcm' | 'raw' | 'control';

/** Timers and a monotonic clock in milliseconds, from the host (the core has no timers). */
export interface SessionTimers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  now(): number;
}

export interface BusStatistics {
  rbytes: number;
  rpackets: number;
  tbytes: number;
  tpackets: number;
}

export interface SessionHost {
  /** Joins the named bus: null, or why not. */
  open(bus: string): string | null;
  /** Puts a frame on the bus: null, or why it was refused. */
  transmit(frame: CanFrame): string | null;
  /** Writes one element (`< ok >`, `< error ... >`...). */
  reply(element: string): void;
  /** The mode changed (the `< ok >` was already written). */
  modeChanged(mode: SocketcandMode, previous: SocketcandMode): void;
  /** A frame a BCM receive job lets through, to be sent to the client now. */
  bcmFrame(frame: CanFrame): void;
  /** Counters for `< stat ... >`. */
  statistics(): BusStatistics;
  /** The raw-mode error frame mask changed (our `< errormask HEX >` command). */
  errorMask(mask: number): void;
  /**
   * The client said which vhost-device-can daemon it is, which of its buses it links and a token
   * naming this connection (our `< vdc-peer ID BUS TOKEN >`); returns the reply element.
   */
  introduce(id: string, bus: string, token: string): string;
  readonly timers: SessionTimers;
}

export interface SessionLimits {
  /** Cyclic send jobs per connection (default 256). */
  maxTxJobs?: number;
  /** Receive jobs per connection (default 256). */
  maxRxJobs?: number;
}

export interface SessionCounters {
  /** Elements handled. */
  commands: number;
  /** Elements answered with an error. */
  errors: number;
  /** Frames the client put on the bus (send, sendrtr, fdsend). */
  framesIn: number;
  /** Frames of cyclic send jobs put on the bus. */
  cyclicFrames: number;
  /** Frames the bus refused (from any command or job). */
  txRejected: number;
  /** Frames receive jobs let through. */
  bcmForwarded: number;
  /** Frames receive jobs held back (unchanged content, or replaced while throttled). */
  bcmSuppressed: number;
  /** Send intervals under 1 ms raised to 1 ms. */
  intervalsRaised: number;
}

const MIN_INTERVAL_MS = 1;
/** socketcand's statistics thread looks every 10 ms, so shorter intervals mean 10 ms there too. */
const MIN_STAT_INTERVAL_MS = 10;

interface TxJob {
  frame: CanFrame;
  intervalMs: number;
  timer: unknown;
}

interface RxJob {
  /** null: subscription (every frame); else 8 mask bytes per filter frame (1, or 1 + n for mux). */
  masks: Uint8Array[] | null;
  mux: boolean;
  /** Last content seen per filter frame (8 bytes, zero padded), null until the first. */
  last: (Uint8Array | null)[];
  throttleMs: number;
  lastSentAt: number;
  pending: CanFrame | null;
  timer: unknown;
}

/** Hub frames are keyed by identifier and format: extended identifiers above 2^29. */
function keyOf(id: number, extended: boolean): number {
  return extended ? id + 0x20000000 : id;
}

export class SocketcandSession {
  readonly counters: SessionCounters = {
    commands: 0,
    errors: 0,
    framesIn: 0,
    cyclicFrames: 0,
    txRejected: 0,
    bcmForwarded: 0,
    bcmSuppressed: 0,
    intervalsRaised: 0,
  };
  #mode: SocketcandMode = 'nobus';
  bus = '';
  readonly #host: SessionHost;
  readonly #words = new Words();
  readonly #scratch: MutableCanFrame = scratchCanFrame();
  readonly #payloads = scratchPayloads();
  readonly #txJobs = new Map<number, TxJob>();
  readonly #rxJobs = new Map<number, RxJob>();
  readonly #maxTxJobs: number;
  readonly #maxRxJobs: number;
  #statIntervalMs = 0;
  #statTimer: unknown = null;
  #closed = false;

  constructor(host: SessionHost, limits: SessionLimits = {}) {
    this.#host = host;
    this.#maxTxJobs = limits.maxTxJobs ?? 256;
    this.#maxRxJobs = limits.maxRxJobs ?? 256;
  }

  get mode(): SocketcandMode {
    return this.#mode;
  }

  get txJobs(): number {
    return this.#txJobs.size;
  }

  get rxJobs(): number {
    return this.#rxJobs.size;
  }

  /** Handles one element `buf[start..end)` (from `<` to `>`). Returns false when it was an error. */
  element(buf: Uint8Array, start: number, end: number): boolean {
    if (this.#closed) return false;
    this.counters.commands++;
    const w = this.#words;
    if (!w.split(buf, start, end)) return this.#error('too many words in one element');
    if (w.count === 0) return this.#error('empty element');
    // The hot path first: frames from a client in raw mode.
    if (w.is(0, 'send')) return this.#sendFrame(parseSend(w, this.#scratch, this.#payloads), 'send');
    return this.#command(w);
  }

  #command(w: Words): boolean {
    const cmd = w.text(0);
    switch (cmd) {
      case 'echo':
        if (w.count !== 1) return this.#error('echo takes no arguments');
        this.#host.reply('< echo >');
        return true;
      case 'open':
        return this.#open(w);
      case 'rawmode':
      case 'bcmmode':
      case 'controlmode':
        if (w.count !== 1) return this.#error(`${cmd} takes no arguments`);
        return this.#switch(cmd === 'rawmode' ? 'raw' : cmd === 'bcmmode' ? 'bcm' : 'control');
      case 'isotpmode':
        return this.#error('ISO-TP mode is not supported');
      case 'sendrtr':
        return this.#sendFrame(parseSendRtr(w, this.#scratch, this.#payloads), cmd);
      case 'fdsend':
        return this.#sendFrame(parseFdSend(w, this.#scratch, this.#payloads), cmd);
      case 'add':
      case 'update':
      case 'delete':
      case 'filter':
      case 'muxfilter':
      case 'subscribe':
      case 'unsubscribe':
        if (this.#mode !== 'bcm') return this.#wrongMode(cmd, 'BCM', '< bcmmode >');
        return this.#bcm(cmd, w);
      case 'statistics':
        if (this.#mode !== 'control') return this.#wrongMode(cmd, 'control', '< controlmode >');
        return this.#statistics(w);
      case 'errormask':
        return this.#errorMask(w);
      case 'vdc-peer':
        if (this.#mode === 'nobus') return this.#noBus(cmd);
        if (w.count !== 4) return this.#error('vdc-peer needs < vdc-peer ID BUS TOKEN >');
        this.#host.reply(this.#host.introduce(w.text(1), w.text(2), w.text(3)));
        return true;
      default:
        if (this.#mode === 'nobus' && w.count >= 2 && (w.is(1, 'B') || w.is(1, 'C'))) {
          return this.#error('bus configuration (bit timing, control modes) is not supported');
        }
        return this.#error(`unknown command "${cmd.slice(0, 32)}"`);
    }
  }

  #error(text: string): boolean {
    this.counters.errors++;
    this.#host.reply(errorElement(text));
    return false;
  }

  #noBus(cmd: string): boolean {
    return this.#error(`${cmd}: no bus is open (send < open BUS > first)`);
  }

  #wrongMode(cmd: string, mode: string, how: string): boolean {
    if (this.#mode === 'nobus') return this.#noBus(cmd);
    return this.#error(`${cmd} is a ${mode} mode command (switch with ${how})`);
  }

  #open(w: Words): boolean {
    if (this.#mode !== 'nobus') return this.#error(`bus ${this.bus} is already open`);
    if (w.count !== 2) return this.#error('open needs one bus name: < open BUS >');
    const name = w.text(1);
    const why = this.#host.open(name);
    if (why !== null) return this.#error(`could not open bus ${name.slice(0, 64)}: ${why}`);
    this.bus = name;
    this.#host.reply('< ok >');
    this.#setMode('bcm');
    return true;
  }

  #switch(mode: SocketcandMode): boolean {
    if (this.#mode === 'nobus') return this.#noBus(`${mode}mode`);
    this.#host.reply('< ok >');
    if (mode !== this.#mode) this.#setMode(mode);
    return true;
  }

  #setMode(mode: SocketcandMode): void {
    const previous = this.#mode;
    if (previous === 'bcm') this.#clearBcm();
    if (previous === 'control') this.#stopStatistics();
    this.#mode = mode;
    if (mode === 'control' && this.#statIntervalMs > 0) this.#startStatistics();
    this.#host.modeChanged(mode, previous);
  }

  /** A parsed frame (or the parse error) from send, sendrtr or fdsend. */
  #sendFrame(parseError: string | null, cmd: string): boolean {
    if (this.#mode !== 'raw' && this.#mode !== 'bcm') {
      if (this.#mode === 'nobus') return this.#noBus(cmd);
      return this.#error(`${cmd} is a raw or BCM mode command (switch with < rawmode >)`);
    }
    if (parseError !== null) return this.#error(parseError);
    const why = this.#host.transmit(this.#scratch);
    if (why !== null) {
      this.counters.txRejected++;
      return this.#error(`${cmd}: ${why}`);
    }
    this.counters.framesIn++;
    return true;
  }

  // ---- broadcast manager ------------------------------------------------------------------------

  #bcm(cmd: string, w: Words): boolean {
    switch (cmd) {
      case 'add':
        return this.#add(w);
      case 'update':
        return this.#update(w);
      case 'delete':
        return this.#delete(w);
      case 'filter':
        return this.#filter(w);
      case 'muxfilter':
        return this.#muxfilter(w);
      case 'subscribe':
        return this.#subscribe(w);
      default:
        return this.#unsubscribe(w);
    }
  }

  /** `secs usecs` words at `i`, `i + 1` in ms; a message when bad. */
  #interval(w: Words, i: number, cmd: string): number | string {
    const s = w.dec(i);
    const us = w.dec(i + 1);
    if (s < 0 || us < 0)
      return `${cmd}: bad interval "${w.text(i)} ${w.text(i + 1)}" (decimal seconds and microseconds)`;
    return s * 1000 + us / 1000;
  }

  /** A classic frame for a job, owned (the scratch is reused). */
  #jobFrame(w: Words, first: number, cmd: string): CanFrame | string {
    const err = parseFrameWords(w, first, this.#scratch, this.#payloads);
    if (err !== null) return `${cmd}: ${err}`;
    const f = this.#scratch;
    if (f.fd) return `${cmd}: the broadcast manager takes classic frames (0..8 bytes)`;
    return makeCanFrame({ ...f, data: f.data });
  }

  #add(w: Words): boolean {
    if (w.count < 5) return this.#error('add needs < add SECS USECS ID DLC B0 ... >');
    const ival = this.#interval(w, 1, 'add');
    if (typeof ival === 'string') return this.#error(ival);
    const frame = this.#jobFrame(w, 3, 'add');
    if (typeof frame === 'string') return this.#error(frame);
    const key = keyOf(frame.id, frame.extended);
    const old = this.#txJobs.get(key);
    if (old === undefined && this.#txJobs.size >= this.#maxTxJobs) {
      return this.#error(`add: at most ${this.#maxTxJobs} send jobs`);
    }
    if (old !== undefined) this.#host.timers.clearTimeout(old.timer);
    let intervalMs = ival;
    if (intervalMs > 0 && intervalMs < MIN_INTERVAL_MS) {
      intervalMs = MIN_INTERVAL_MS;
      this.counters.intervalsRaised++;
    }
    const job: TxJob = { frame, intervalMs, timer: null };
    this.#txJobs.set(key, job);
    // As the kernel's broadcast manager with SETTIMER|STARTTIMER: the first frame goes out after
    // one interval; an interval of 0 registers the job without sending.
    if (intervalMs > 0) this.#armTx(key, job);
    return true;
  }

  #armTx(key: number, job: TxJob): void {
    job.timer = this.#host.timers.setTimeout(() => {
      if (this.#txJobs.get(key) !== job || this.#closed) return;
      const why = this.#host.transmit(job.frame);
      if (why === null) this.counters.cyclicFrames++;
      else this.counters.txRejected++;
      this.#armTx(key, job);
    }, job.intervalMs);
  }

  #update(w: Words): boolean {
    if (w.count < 3) return this.#error('update needs < update ID DLC B0 ... >');
    const frame = this.#jobFrame(w, 1, 'update');
    if (typeof frame === 'string') return this.#error(frame);
    const job = this.#txJobs.get(keyOf(frame.id, frame.extended));
    if (job === undefined) return this.#error(`update: no send job for ${w.text(1)}`);
    job.frame = frame;
    return true;
  }

  #delete(w: Words): boolean {
    if (w.count !== 2) return this.#error('delete needs < delete ID >');
    const err = parseIdWord(w, 1, this.#scratch);
    if (err !== null) return this.#error(`delete: ${err}`);
    const key = keyOf(this.#scratch.id, this.#scratch.extended);
    const job = this.#txJobs.get(key);
    if (job === undefined) return this.#error(`delete: no send job for ${w.text(1)}`);
    this.#host.timers.clearTimeout(job.timer);
    this.#txJobs.delete(key);
    return true;
  }

  #addRx(key: number, job: RxJob, cmd: string): boolean {
    const old = this.#rxJobs.get(key);
    if (old === undefined && this.#rxJobs.size >= this.#maxRxJobs) {
      return this.#error(`${cmd}: at most ${this.#maxRxJobs} receive jobs`);
    }
    if (old !== undefined) this.#host.timers.clearTimeout(old.timer);
    this.#rxJobs.set(key, job);
    return true;
  }

  #rxJob(masks: Uint8Array[] | null, mux: boolean, throttleMs: number): RxJob {
    const n = masks === null ? 1 : masks.length;
    return {
      masks,
      mux,
      last: Array.from({ length: n }, () => null),
      throttleMs,
      lastSentAt: Number.NEGATIVE_INFINITY,
      pending: null,
      timer: null,
    };
  }

  #filter(w: Words): boolean {
    if (w.count < 5) return this.#error('filter needs < filter SECS USECS ID DLC MASK0 ... >');
    const ival = this.#interval(w, 1, 'filter');
    if (typeof ival === 'string') return this.#error(ival);
    const err = parseFrameWords(w, 3, this.#scratch, this.#payloads);
    if (err !== null) return this.#error(`filter: ${err}`);
    const f = this.#scratch;
    if (f.fd || f.len8Dlc !== 0) return this.#error('filter: the mask has 0..8 bytes');
    const mask = new Uint8Array(8);
    mask.set(f.data);
    return this.#addRx(keyOf(f.id, f.extended), this.#rxJob([mask], false, ival), 'filter');
  }

  #muxfilter(w: Words): boolean {
    if (w.count < 6) return this.#error('muxfilter needs < muxfilter SECS USECS ID NFRAMES B0 ... >');
    const ival = this.#interval(w, 1, 'muxfilter');
    if (typeof ival === 'string') return this.#error(ival);
    const idErr = parseIdWord(w, 3, this.#scratch);
    if (idErr !== null) return this.#error(`muxfilter: ${idErr}`);
    const { id, extended } = this.#scratch;
    const n = w.dec(4);
    if (n < 2 || n > 257) return this.#error(`muxfilter: bad frame count "${w.text(4)}" (2..257)`);
    if (w.count - 5 !== n * 8)
      return this.#error(`muxfilter: ${n} frames need ${n * 8} bytes, got ${w.count - 5}`);
    const masks: Uint8Array[] = [];
    for (let i = 0; i < n; i++) {
      const m = new Uint8Array(8);
      for (let k = 0; k < 8; k++) {
        const v = w.hex(5 + i * 8 + k);
        if (v < 0 || v > 0xff || w.length(5 + i * 8 + k) > 2) {
          return this.#error(`muxfilter: bad byte "${w.text(5 + i * 8 + k)}"`);
        }
        m[k] = v;
      }
      masks.push(m);
    }
    return this.#addRx(keyOf(id, extended), this.#rxJob(masks, true, ival), 'muxfilter');
  }

  #subscribe(w: Words): boolean {
    if (w.count !== 4) return this.#error('subscribe needs < subscribe SECS USECS ID >');
    const ival = this.#interval(w, 1, 'subscribe');
    if (typeof ival === 'string') return this.#error(ival);
    const err = parseIdWord(w, 3, this.#scratch);
    if (err !== null) return this.#error(`subscribe: ${err}`);
    const key = keyOf(this.#scratch.id, this.#scratch.extended);
    return this.#addRx(key, this.#rxJob(null, false, ival), 'subscribe');
  }

  #unsubscribe(w: Words): boolean {
    if (w.count !== 2) return this.#error('unsubscribe needs < unsubscribe ID >');
    const err = parseIdWord(w, 1, this.#scratch);
    if (err !== null) return this.#error(`unsubscribe: ${err}`);
    const key = keyOf(this.#scratch.id, this.#scratch.extended);
    const job = this.#rxJobs.get(key);
    if (job === undefined) return this.#error(`unsubscribe: no subscription or filter for ${w.text(1)}`);
    this.#host.timers.clearTimeout(job.timer);
    this.#rxJobs.delete(key);
    return true;
  }

  /** True while BCM receive jobs exist (the server offers frames only then). */
  get wantsBcmFrames(): boolean {
    return this.#mode === 'bcm' && this.#rxJobs.size > 0;
  }

  /**
   * A frame from the bus in BCM mode: passed to the host (bcmFrame) when a receive job lets it
   * through, now or when its throttle expires. Classic data frames only, like the kernel's
   * broadcast manager without CAN FD. The frame is only read during the call.
   */
  offerBcm(f: CanFrame): void {
    if (this.#mode !== 'bcm' || f.rtr || f.fd) return;
    const job = this.#rxJobs.get(keyOf(f.id, f.extended));
    if (job === undefined) return;
    if (job.masks !== null && !this.#changed(job, f)) {
      this.counters.bcmSuppressed++;
      return;
    }
    if (job.throttleMs <= 0) {
      this.counters.bcmForwarded++;
      this.#host.bcmFrame(f);
      return;
    }
    const timers = this.#host.timers;
    const now = timers.now();
    if (job.timer === null && now - job.lastSentAt >= job.throttleMs) {
      job.lastSentAt = now;
      this.counters.bcmForwarded++;
      this.#host.bcmFrame(f);
      return;
    }
    // Throttled: keep the latest, send it when the interval since the last one is over.
    if (job.pending !== null) this.counters.bcmSuppressed++;
    job.pending = makeCanFrame({ ...f, data: f.data });
    if (job.timer === null) {
      job.timer = timers.setTimeout(
        () => {
          job.timer = null;
          const p = job.pending;
          job.pending = null;
          if (p === null || this.#closed || this.#rxJobs.get(keyOf(p.id, p.extended)) !== job) return;
          job.lastSentAt = timers.now();
          this.counters.bcmForwarded++;
          this.#host.bcmFrame(p);
        },
        Math.max(0, job.throttleMs - (now - job.lastSentAt)),
      );
    }
  }

  /** Content filter: did the masked bytes change since the last frame (the first always does)? */
  #changed(job: RxJob, f: CanFrame): boolean {
    const masks = job.masks!;
    let index = 0;
    if (job.mux) {
      // The first mask selects the multiplexer bits; the filter frame whose value there matches
      // the frame's is the one to compare with (its bytes are also its mask).
      const sel = masks[0]!;
      index = -1;
      for (let i = 1; i < masks.length && index < 0; i++) {
        let match = true;
        for (let k = 0; k < 8; k++) {
          if ((((f.data[k] ?? 0) ^ masks[i]![k]!) & sel[k]!) !== 0) {
            match = false;
            break;
          }
        }
        if (match) index = i;
      }
      if (index < 0) return false;
    }
    const mask = masks[index]!;
    const last = job.last[index];
    let changed = last === null || last === undefined;
    const next = new Uint8Array(8);
    for (let k = 0; k < 8; k++) {
      next[k] = (f.data[k] ?? 0) & mask[k]!;
      if (!changed && next[k] !== last![k]) changed = true;
    }
    if (changed) job.last[index] = next;
    return changed;
  }

  #clearBcm(): void {
    for (const j of this.#txJobs.values()) this.#host.timers.clearTimeout(j.timer);
    for (const j of this.#rxJobs.values()) this.#host.timers.clearTimeout(j.timer);
    this.#txJobs.clear();
    this.#rxJobs.clear();
  }

  // ---- control mode -----------------------------------------------------------------------------

  #statistics(w: Words): boolean {
    if (w.count !== 2) return this.#error('statistics needs < statistics MS >');
    const ms = w.dec(1);
    if (ms < 0) return this.#error(`statistics: bad interval "${w.text(1)}" (decimal milliseconds, 0 = off)`);
    this.#stopStatistics();
    this.#statIntervalMs = ms === 0 ? 0 : Math.max(ms, MIN_STAT_INTERVAL_MS);
    if (this.#statIntervalMs > 0) this.#startStatistics();
    return true;
  }

  #startStatistics(): void {
    this.#statTimer = this.#host.timers.setTimeout(() => {
      this.#statTimer = null;
      if (this.#closed || this.#mode !== 'control') return;
      const s = this.#host.statistics();
      this.#host.reply(`< stat ${s.rbytes} ${s.rpackets} ${s.tbytes} ${s.tpackets} >`);
      this.#startStatistics();
    }, this.#statIntervalMs);
  }

  #stopStatistics(): void {
    if (this.#statTimer !== null) this.#host.timers.clearTimeout(this.#statTimer);
    this.#statTimer = null;
  }

  // ---- extensions -------------------------------------------------------------------------------

  #errorMask(w: Words): boolean {
    if (this.#mode !== 'raw') return this.#wrongMode('errormask', 'raw', '< rawmode >');
    if (w.count !== 2) return this.#error('errormask needs < errormask HEX >');
    const mask = w.hex(1);
    if (mask < 0 || mask > 0x1fffffff)
      return this.#error(`errormask: bad mask "${w.text(1)}" (hex, 0..1FFFFFFF)`);
    this.#host.errorMask(mask);
    this.#host.reply('< ok >');
    return true;
  }

  /** Stops every timer; the session does nothing afterwards. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#clearBcm();
    this.#stopStatistics();
    this.#closed = true;
  }
}
