/**
 * The host side of one console port of one guest: it outlives vhost-user connections (a guest
 * reboot or a QEMU restart binds a new device to the same endpoint) and client connections.
 *
 * - Guest output goes to the connected client; with no client it goes to a bounded scrollback
 *   that is replayed to the next client (the login prompt printed before anyone connected is
 *   there when someone does). Bytes that fall out of the scrollback are counted.
 * - On a named port, a connected client that reads slower than the guest writes holds the guest
 *   back, like a serial line's flow control: once `pauseAt` bytes wait in its send queue the device
 *   pauses the port's output (the guest's writer sleeps until its buffer returns) and resumes when
 *   the queue drained. A client that makes no progress for `stallMs` no longer holds the guest:
 *   output flows again, and what exceeds the bounded send queue is dropped and counted, until the
 *   client drains its queue. The console port (port 0) is never held (the device does not ask: a
 *   Linux guest spins on it), so there only the send-queue bound applies.
 * - `--log-file` also appends everything the guest prints to a file (bounded write queue, counted).
 * - Client input is flow-controlled: what the device cannot take yet stays here and the client
 *   stream is paused until the device reports room (back-pressure reaches the client's socket).
 * - One client at a time; the caller tells a second one why and closes it.
 */
import { createWriteStream, type WriteStream } from 'node:fs';
import type { Duplex } from 'node:stream';
import type { ConsoleDevice } from '../../core/devices/console/console-device.js';
import type { Logger } from '../../core/util/log.js';

export interface PortEndpointOptions {
  /** For logs: "guest0 console", "guest1 org.qemu.guest_agent.0". */
  label: string;
  port: number;
  /** Scrollback bytes kept while no client is connected (0: none). */
  scrollback: number;
  /** Append guest output to this file. */
  logFile?: string;
  /** Bytes queued to a client (or the log file) before output is dropped and counted. */
  sendLimit?: number;
  /** Bytes queued to a client before the guest's output is paused (default 1 MiB). */
  pauseAt?: number;
  /** A client that takes nothing from its queue for this long stops holding the guest (ms). */
  stallMs?: number;
  log: Logger;
}

export interface PortEndpointStats {
  /** Bytes the guest printed on this port. */
  outputBytes: number;
  /** Bytes written to clients (live and replayed). */
  clientBytesOut: number;
  /** Bytes clients typed that reached the device. */
  clientBytesIn: number;
  /** Output lost because the scrollback was full while no client was connected (oldest first). */
  scrollbackDropped: number;
  /** Output lost because a connected client's send queue was full (console port, or a stalled client). */
  clientDropped: number;
  /** Times the guest's output was paused for a client that read slower than the guest printed. */
  outputPauses: number;
  /** Times a client made no progress for `stallMs` and the guest's output was let go again. */
  stalledClients: number;
  logBytes: number;
  /** Output not logged: the log file's write queue was full, or the file failed. */
  logDropped: number;
  clients: number;
  refusedClients: number;
}

const DEFAULT_SEND_LIMIT = 4 * 1024 * 1024;
const DEFAULT_PAUSE_AT = 1024 * 1024;
const DEFAULT_STALL_MS = 2000;

export class ConsolePortEndpoint {
  readonly label: string;
  readonly port: number;
  readonly stats: PortEndpointStats = {
    outputBytes: 0,
    clientBytesOut: 0,
    clientBytesIn: 0,
    scrollbackDropped: 0,
    clientDropped: 0,
    outputPauses: 0,
    stalledClients: 0,
    logBytes: 0,
    logDropped: 0,
    clients: 0,
    refusedClients: 0,
  };
  private readonly log: Logger;
  private readonly sendLimit: number;
  private readonly pauseAt: number;
  private readonly stallMs: number;
  /** Output flow control towards the client: none, holding the guest, or given up (stalled client). */
  private hold: 'none' | 'holding' | 'released' = 'none';
  /** Send queue length when the hold started or last made progress. */
  private heldAt = 0;
  private stallTimer: ReturnType<typeof setTimeout> | null = null;
  private device: ConsoleDevice | null = null;
  private client: Duplex | null = null;
  private pendingIn: Uint8Array | null = null;
  // Scrollback: a ring of the newest `scroll.byteLength` bytes.
  private readonly scroll: Uint8Array;
  private scrollStart = 0;
  private scrollCount = 0;
  private logStream: WriteStream | null = null;
  private closed = false;

  constructor(opts: PortEndpointOptions) {
    this.label = opts.label;
    this.port = opts.port;
    this.log = opts.log;
    this.sendLimit = opts.sendLimit ?? DEFAULT_SEND_LIMIT;
    this.pauseAt = Math.min(opts.pauseAt ?? DEFAULT_PAUSE_AT, this.sendLimit);
    this.stallMs = opts.stallMs ?? DEFAULT_STALL_MS;
    this.scroll = new Uint8Array(opts.scrollback);
    if (opts.logFile !== undefined) {
      const s = createWriteStream(opts.logFile, { flags: 'a' });
      s.on('error', (err) => {
        this.log.error('console log file failed; no longer logging', {
          port: this.label,
          file: opts.logFile,
          reason: err.message,
        });
        this.logStream = null;
      });
      this.logStream = s;
    }
  }

  get hasClient(): boolean {
    return this.client !== null;
  }

  /** Bytes waiting in the scrollback. */
  get scrollbackBytes(): number {
    return this.scrollCount;
  }

  // ---- guest side (the device handler calls these) ----------------------------------------------

  /** A device serves this port now (a front-end connected). */
  bind(device: ConsoleDevice): void {
    this.device = device;
    if (this.client !== null) device.setHostConnected(this.port, true);
    this.pushInput();
  }

  /** The device is gone (front-end disconnected). Input waits for the next one. */
  unbind(device: ConsoleDevice): void {
    if (this.device === device) this.device = null;
  }

  output(bytes: Uint8Array): void {
    this.stats.outputBytes += bytes.byteLength;
    if (this.logStream !== null) {
      if (this.logStream.writableLength + bytes.byteLength > this.sendLimit) {
        this.stats.logDropped += bytes.byteLength;
      } else {
        this.logStream.write(Buffer.from(bytes));
        this.stats.logBytes += bytes.byteLength;
      }
    }
    const c = this.client;
    if (c !== null) {
      if (c.writableLength + bytes.byteLength > this.sendLimit) {
        this.stats.clientDropped += bytes.byteLength;
        return;
      }
      c.write(Buffer.from(bytes)); // a copy: `bytes` is the device's scratch buffer
      this.stats.clientBytesOut += bytes.byteLength;
      return;
    }
    this.toScrollback(bytes);
  }

  inputSpace(): void {
    this.pushInput();
  }

  /**
   * Whether the guest's output may go on (asked by the device before each transmit chain): false
   * while a connected client has `pauseAt` bytes or more waiting, unless it stalled.
   */
  canOutput(): boolean {
    const c = this.client;
    if (c === null || this.hold === 'released' || c.writableLength < this.pauseAt) return true;
    if (this.hold === 'none') {
      this.hold = 'holding';
      this.heldAt = c.writableLength;
      this.stats.outputPauses++;
      this.armStall();
    }
    return false;
  }

  private armStall(): void {
    if (this.stallTimer !== null) clearTimeout(this.stallTimer);
    this.stallTimer = setTimeout(() => this.onStallTimer(), this.stallMs);
  }

  private onStallTimer(): void {
    this.stallTimer = null;
    const c = this.client;
    if (c === null || this.hold !== 'holding') return;
    const queued = c.writableLength;
    if (queued < this.pauseAt) {
      this.releaseHold();
      return;
    }
    if (queued < this.heldAt) {
      // The client is reading, just slowly: keep holding.
      this.heldAt = queued;
      this.armStall();
      return;
    }
    this.hold = 'released';
    this.stats.stalledClients++;
    this.log.warn('console client reads nothing; guest output is no longer held for it (excess dropped)', {
      port: this.label,
      queued,
    });
    this.device?.outputSpace(this.port);
  }

  /** Ends a hold (the client drained its queue or left): the device resumes the port's output. */
  private releaseHold(): void {
    if (this.stallTimer !== null) clearTimeout(this.stallTimer);
    this.stallTimer = null;
    if (this.hold === 'none') return;
    this.hold = 'none';
    this.device?.outputSpace(this.port);
  }

  // ---- client side -------------------------------------------------------------------------------

  /** Attaches a client stream; false when another client is connected (the caller refuses it). */
  attachClient(stream: Duplex): boolean {
    if (this.closed) return false;
    if (this.client !== null) {
      this.stats.refusedClients++;
      return false;
    }
    this.client = stream;
    this.stats.clients++;
    // The scrollback first, in order, then live output.
    if (this.scrollCount > 0) {
      const cap = this.scroll.byteLength;
      const first = Math.min(this.scrollCount, cap - this.scrollStart);
      stream.write(Buffer.from(this.scroll.subarray(this.scrollStart, this.scrollStart + first)));
      if (first < this.scrollCount)
        stream.write(Buffer.from(this.scroll.subarray(0, this.scrollCount - first)));
      this.stats.clientBytesOut += this.scrollCount;
      this.scrollStart = 0;
      this.scrollCount = 0;
    }
    stream.on('data', (chunk: Buffer) => this.onClientData(stream, chunk));
    stream.on('drain', () => {
      if (this.client === stream) this.releaseHold();
    });
    const gone = (): void => this.detachClient(stream);
    stream.once('close', gone);
    stream.once('end', gone);
    stream.on('error', (err) => {
      this.log.debug('console client error', { port: this.label, reason: err.message });
      gone();
    });
    this.device?.setHostConnected(this.port, true);
    this.pushInput();
    return true;
  }

  detachClient(stream: Duplex): void {
    if (this.client !== stream) return;
    this.client = null;
    this.pendingIn = null; // typed but undelivered bytes of a client that left are not replayed
    this.releaseHold(); // output goes to the scrollback now
    this.device?.setHostConnected(this.port, false);
    if (!stream.destroyed) stream.destroy();
  }

  private onClientData(stream: Duplex, chunk: Buffer): void {
    if (this.client !== stream) return;
    const bytes = new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    if (this.pendingIn !== null) {
      // Cannot happen while paused, but a stream may deliver one chunk after pause(): keep order.
      const merged = new Uint8Array(this.pendingIn.byteLength + bytes.byteLength);
      merged.set(this.pendingIn);
      merged.set(bytes, this.pendingIn.byteLength);
      this.pendingIn = merged;
    } else {
      this.pendingIn = bytes;
    }
    this.pushInput();
  }

  /** Hands pending client bytes to the device; pauses the client while some remain. */
  private pushInput(): void {
    const c = this.client;
    const d = this.device;
    const p = this.pendingIn;
    if (c === null) return;
    if (p !== null && d !== null) {
      const n = d.input(this.port, p);
      this.stats.clientBytesIn += n;
      this.pendingIn = n === p.byteLength ? null : p.subarray(n);
    }
    if (this.pendingIn === null) {
      if (c.isPaused()) c.resume();
    } else if (!c.isPaused()) {
      c.pause();
    }
  }

  private toScrollback(bytes: Uint8Array): void {
    const cap = this.scroll.byteLength;
    let src = bytes;
    if (src.byteLength >= cap) {
      // Only the newest `cap` bytes can stay.
      this.stats.scrollbackDropped += this.scrollCount + src.byteLength - cap;
      src = src.subarray(src.byteLength - cap);
      this.scrollStart = 0;
      this.scrollCount = 0;
    }
    const over = this.scrollCount + src.byteLength - cap;
    if (over > 0) {
      this.scrollStart = (this.scrollStart + over) % cap;
      this.scrollCount -= over;
      this.stats.scrollbackDropped += over;
    }
    let w = (this.scrollStart + this.scrollCount) % cap;
    for (let i = 0; i < src.byteLength; ) {
      const run = Math.min(src.byteLength - i, cap - w);
      this.scroll.set(src.subarray(i, i + run), w);
      i += run;
      w = (w + run) % cap;
    }
    this.scrollCount += src.byteLength;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.client !== null) this.detachClient(this.client);
    this.releaseHold();
    this.logStream?.end();
    this.logStream = null;
  }
}
