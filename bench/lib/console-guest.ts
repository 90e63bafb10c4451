/**
 * One console benchmark guest: the TypeScript front-end (VhostUserFrontend + GuestRam) and the
 * Linux virtio_console driver emulation (ConsoleTestDriver) for the probe (features, DRIVER_OK,
 * control buffers, DEVICE_READY, PORT_ADD / PORT_READY, CONSOLE_PORT / PORT_OPEN of the console
 * port; for a named port also its PORT_NAME and the guest's open(), PORT_OPEN(id, 1)), then lean
 * data paths straight on the rings of one port (port 0 = hvc0, or a named port /dev/vportNpM), as
 * Linux runs them:
 *
 * - Output (guest -> host): one buffer of at most 32 KiB at a time (the size port_fops_write
 *   chunks writes into), the bytes copied into it, kick, wait for the device to return it (Linux
 *   spins; we wait for the call eventfd instead, which frees the core for the daemon), next one.
 * - Input (host -> guest): the page-sized receive buffers the driver posted during probe are taken
 *   over (addresses read back from the descriptor table); every used buffer is read and re-posted
 *   at once, one kick per pass (Linux re-adds each buffer with a kick; EVENT_IDX suppresses most).
 * - Echo (a shell's echo): every byte read is written back as output.
 *
 * The driver's own pump is stopped after the probe (it would otherwise read the data buffers into
 * its log), and we own the call eventfd watchers of the port's two queues. Control messages the
 * device sends later (PORT_OPEN when a client connects) land in the control receiveq unread: the
 * probe posted a full ring of control buffers, far more than a benchmark run needs.
 *
 * Content: output and input are a fixed pattern (byte k of the stream is PATTERN[k % 251]), so the
 * receiving side checks every byte with a native memcmp (Buffer.compare) and counts mismatches.
 */
import { portRxQueue, portTxQueue } from '../../src/core/devices/console/constants.js';
import type { BufferSegment, DriverRing } from '../../src/core/virtio/driver-ring.js';
import { CONSOLE_WRITE_CHUNK, ConsoleTestDriver } from '../../src/node/frontend/console-driver.js';
import type { DriverQueue } from '../../src/node/frontend/driver-queue.js';
import { VhostUserFrontend } from '../../src/node/frontend/frontend.js';
import { GuestRam } from '../../src/node/frontend/guest-ram.js';
import { type NativeWatcher, native } from '../../src/node/native/addon.js';

/** Period of the content pattern (a prime, so it never lines up with buffer sizes). */
export const PATTERN_PERIOD = 251;
/** The pattern, long enough to compare any buffer of up to 256 KiB at any phase. */
export const PATTERN: Buffer = (() => {
  const b = Buffer.alloc(256 * 1024 + PATTERN_PERIOD);
  for (let i = 0; i < b.length; i++) b[i] = (i % PATTERN_PERIOD) * 7 + 13;
  return b;
})();

/** The pattern bytes for stream offset `off`, `len` bytes (len <= 256 KiB). */
export function patternAt(off: number, len: number): Buffer {
  const p = off % PATTERN_PERIOD;
  return PATTERN.subarray(p, p + len);
}

export interface ConsoleGuestCounters {
  /** Output bytes the device returned (written out). */
  bytesOut: number;
  /** Output buffers (write chunks) completed. */
  writes: number;
  /** Input bytes read from used RX buffers. */
  bytesIn: number;
  /** Used RX buffers read. */
  buffersIn: number;
  /** RX interrupts handled. */
  rxWakeups: number;
  /** Input bytes that did not match the pattern (or, echoing, nothing is checked). */
  mismatches: number;
  /** Echo: bytes that could not be echoed at once (TX ring full) and waited. */
  echoDeferred: number;
}

const EMPTY: readonly BufferSegment[] = Object.freeze([]);

export class ConsoleBenchGuest {
  readonly fe: VhostUserFrontend;
  readonly ram: GuestRam;
  readonly drv: ConsoleTestDriver;
  readonly counters: ConsoleGuestCounters = {
    bytesOut: 0,
    writes: 0,
    bytesIn: 0,
    buffersIn: 0,
    rxWakeups: 0,
    mismatches: 0,
    echoDeferred: 0,
  };
  private readonly bytes: Uint8Array;
  private readonly rxq: DriverQueue;
  private readonly txq: DriverQueue;
  private readonly rxRing: DriverRing;
  private readonly txRing: DriverRing;
  private readonly size: number;
  /** The port whose rings this guest drives (0: the console). */
  readonly port: number;

  // output: TX buffers (one per ring slot for echo; the writer uses slot 0 only)
  private readonly txGpa: number[] = [];
  private readonly freeTx: number[] = [];
  private readonly txOfHead: Int32Array;
  private txWatcher: NativeWatcher | null = null;
  private writing = false;
  private chunk = CONSOLE_WRITE_CHUNK;
  private writeResolve: (() => void) | null = null;

  // input
  private readonly rxSeg: BufferSegment[][] = [];
  private readonly rxGpa: number[] = [];
  private readonly bufOfHead: Int32Array;
  private readonly scratch: Int32Array;
  private readonly scratchLen: Uint32Array;
  private rxWatcher: NativeWatcher | null = null;
  private mode: 'read' | 'echo' = 'read';
  /** Echo bytes waiting for a free TX buffer. */
  private echoBacklog: Uint8Array[] = [];
  private closed = false;

  /**
   * Probes the device and takes `port`'s rings over (default 0, the console). A named port (the
   * daemon started with at least `port` --port-name options) is opened first, as a guest program
   * opening /dev/vportNpM does; its name must have arrived (PORT_NAME follows PORT_READY).
   * `ports`: the device's port count (max_nr_ports, the console and the named ports; default
   * port + 1), which sets how many queues init() prepares.
   */
  static async connect(opts: {
    path: string;
    queueSize: number;
    port?: number;
    ports?: number;
    timeoutMs?: number;
  }): Promise<ConsoleBenchGuest> {
    const timeoutMs = opts.timeoutMs ?? 10_000;
    const port = opts.port ?? 0;
    const fe = VhostUserFrontend.connect(opts.path, { timeoutMs });
    const ram = new GuestRam({ name: 'bench-console-guest' });
    try {
      const drv = await ConsoleTestDriver.create(fe, ram, {
        ports: opts.ports ?? port + 1,
        queueSize: opts.queueSize,
        timeoutMs,
      });
      const con = await drv.waitConsole();
      if (con !== 0) throw new Error(`console on port ${con}, expected 0`);
      if (port !== 0) {
        if (drv.maxNrPorts <= port) {
          throw new Error(`the device has ${drv.maxNrPorts} port(s), no named port ${port}`);
        }
        await drv.waitUntil(`the name of port ${port}`, () => drv.portName(port) !== undefined);
        await drv.openPort(port);
      }
      await drv.shutdown();
      const g = new ConsoleBenchGuest(fe, ram, drv, port);
      await g.takeOver(timeoutMs);
      return g;
    } catch (err) {
      fe.close();
      ram.close();
      throw err;
    }
  }

  private constructor(fe: VhostUserFrontend, ram: GuestRam, drv: ConsoleTestDriver, port: number) {
    this.fe = fe;
    this.ram = ram;
    this.drv = drv;
    this.port = port;
    const r0 = ram.memory.regions[0]!;
    if (r0.gpa !== 0) throw new Error('guest RAM region 0 must start at GPA 0');
    this.bytes = r0.bytes;
    this.rxq = drv.queue(portRxQueue(port));
    this.txq = drv.queue(portTxQueue(port));
    this.rxRing = this.rxq.ring;
    this.txRing = this.txq.ring;
    this.size = this.rxRing.size;
    this.txOfHead = new Int32Array(this.txRing.size).fill(-1);
    this.bufOfHead = new Int32Array(this.size).fill(-1);
    this.scratch = new Int32Array(this.size);
    this.scratchLen = new Uint32Array(this.size);
  }

  /**
   * Takes the port's rings over from the driver: waits until the driver's last wait on the receiveq
   * (a call eventfd watcher of the DriverQueue) ended, then maps the posted RX buffers.
   */
  private async takeOver(timeoutMs: number): Promise<void> {
    const end = Date.now() + timeoutMs;
    const watching = (q: DriverQueue): boolean => (q as unknown as { watching: boolean }).watching;
    while (watching(this.rxq) || watching(this.txq)) {
      if (Date.now() > end) throw new Error(`the console driver still waits on port ${this.port}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    if (this.rxq.hasUsed()) {
      throw new Error(`port ${this.port} received data before the benchmark started`);
    }
    for (let i = 0; i < this.size; i++) {
      const d = this.rxRing.readDesc(i);
      if ((d.flags & 2) === 0) throw new Error(`RX descriptor ${i} is not a posted buffer`);
      if (d.addr + d.len > this.bytes.byteLength) throw new Error('RX buffer outside guest RAM region 0');
      this.rxSeg.push([{ gpa: d.addr, len: d.len }]);
      this.rxGpa.push(d.addr);
      this.bufOfHead[i] = i;
    }
    if (this.rxRing.inFlight !== this.size)
      throw new Error(`expected ${this.size} RX buffers posted, ${this.rxRing.inFlight}`);
    for (let s = 0; s < this.txRing.size; s++) {
      // The writer's buffer is slot 0 (32 KiB); echo buffers are small.
      this.txGpa.push(this.ram.alloc(s === 0 ? CONSOLE_WRITE_CHUNK : 256, 8, 0));
      this.freeTx.push(this.txRing.size - 1 - s);
    }
  }

  // ---- output -----------------------------------------------------------------------------------

  private watchTx(): void {
    if (this.txWatcher !== null || this.closed) return;
    this.txRing.suppressInterrupts(false);
    const fd = this.txq.callFd;
    this.txWatcher = new native.Watcher(fd, (status) => {
      if (status < 0 || this.closed) return;
      native.eventfdRead(fd);
      this.reapTx();
    });
    this.txWatcher.start(native.READABLE);
  }

  private reapTx(): void {
    const ring = this.txRing;
    let any = false;
    do {
      const used = ring.takeUsed();
      for (let i = 0; i < used.length; i++) {
        const u = used[i]!;
        const s = this.txOfHead[u.head]!;
        if (s < 0) continue;
        this.txOfHead[u.head] = -1;
        this.freeTx.push(s);
        any = true;
      }
    } while (ring.hasUsed());
    if (!any) return;
    if (this.writing) this.writeNext();
    else if (this.writeResolve !== null && this.freeTx.length === this.txRing.size) {
      const r = this.writeResolve;
      this.writeResolve = null;
      r();
    }
    if (this.echoBacklog.length > 0) this.flushEcho();
  }

  /** Posts one output chain from TX slot `s` with `len` bytes already in its buffer; kicks. */
  private postTx(s: number, len: number): void {
    const head = this.txRing.add([{ gpa: this.txGpa[s]!, len }], EMPTY);
    this.txOfHead[head] = s;
    this.txq.kick();
  }

  /** The next output chunk, if the writer's buffer is free (one write in flight, like Linux). */
  private writeNext(): void {
    const i = this.freeTx.indexOf(0);
    if (i < 0) return;
    this.freeTx.splice(i, 1);
    const len = this.chunk;
    this.bytes.set(patternAt(this.counters.bytesOut, len), this.txGpa[0]!);
    this.counters.bytesOut += len;
    this.counters.writes++;
    this.postTx(0, len);
  }

  /** Writes `chunk`-byte buffers of the pattern back to back until writeStop(). */
  writeStart(chunk: number): void {
    if (chunk < 1 || chunk > CONSOLE_WRITE_CHUNK) throw new Error(`chunk ${chunk}`);
    this.chunk = chunk;
    this.writing = true;
    this.watchTx();
    this.writeNext();
  }

  /** Stops writing; resolves once the buffer in flight came back (false: not within `ms`). */
  writeStop(ms: number): Promise<boolean> {
    this.writing = false;
    if (this.freeTx.length === this.txRing.size) return Promise.resolve(true);
    return new Promise<boolean>((resolve) => {
      const t = setTimeout(() => {
        this.writeResolve = null;
        resolve(false);
      }, ms);
      this.writeResolve = () => {
        clearTimeout(t);
        resolve(true);
      };
    });
  }

  // ---- input ------------------------------------------------------------------------------------

  /** Reads every used RX buffer (checking the pattern, or echoing), re-posting it at once. */
  readStart(mode: 'read' | 'echo'): void {
    this.mode = mode;
    if (mode === 'echo') this.watchTx();
    if (this.rxWatcher !== null || this.closed) return;
    const fd = this.rxq.callFd;
    this.rxWatcher = new native.Watcher(fd, (status) => {
      if (status < 0 || this.closed) return;
      native.eventfdRead(fd);
      this.counters.rxWakeups++;
      this.pollRx();
    });
    this.rxWatcher.start(native.READABLE);
    this.pollRx();
  }

  private pollRx(): void {
    const ring = this.rxRing;
    for (;;) {
      const used = ring.takeUsed();
      const n = used.length;
      if (n === 0) break;
      // Resolve every head before re-posting: a re-post may reuse a head of this batch.
      for (let i = 0; i < n; i++) {
        const u = used[i]!;
        this.scratch[i] = this.bufOfHead[u.head]!;
        this.scratchLen[i] = u.len;
        this.bufOfHead[u.head] = -1;
      }
      for (let i = 0; i < n; i++) {
        const b = this.scratch[i]!;
        if (b < 0) continue;
        const len = this.scratchLen[i]!;
        const gpa = this.rxGpa[b]!;
        const data = this.bytes.subarray(gpa, gpa + len);
        if (this.mode === 'echo') this.echo(data);
        else if (Buffer.compare(data, patternAt(this.counters.bytesIn, len)) !== 0) {
          this.counters.mismatches += countMismatches(data, this.counters.bytesIn);
        }
        this.counters.bytesIn += len;
        this.counters.buffersIn++;
        const head = ring.add(EMPTY, this.rxSeg[b]!);
        this.bufOfHead[head] = b;
      }
      this.rxq.kick();
      if (!ring.hasUsed()) break;
    }
  }

  private echo(data: Uint8Array): void {
    if (data.byteLength === 0) return;
    this.echoBacklog.push(data.slice());
    this.flushEcho();
  }

  private flushEcho(): void {
    while (this.echoBacklog.length > 0) {
      // Slot 0 is the writer's 32 KiB buffer; echo uses the small ones.
      const k = this.freeTx.findIndex((s) => s !== 0);
      if (k < 0) {
        this.counters.echoDeferred++;
        return;
      }
      const s = this.freeTx.splice(k, 1)[0]!;
      let d = this.echoBacklog[0]!;
      if (d.byteLength > 256) {
        this.echoBacklog[0] = d.subarray(256);
        d = d.subarray(0, 256);
      } else {
        this.echoBacklog.shift();
      }
      this.bytes.set(d, this.txGpa[s]!);
      this.counters.bytesOut += d.byteLength;
      this.counters.writes++;
      this.postTx(s, d.byteLength);
    }
  }

  /** Closes watchers first, then the front-end (its queues close the eventfds) and guest RAM. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.txWatcher?.close();
    this.rxWatcher?.close();
    this.txWatcher = null;
    this.rxWatcher = null;
    this.fe.close();
    this.ram.close();
  }
}

/** Bytes of `data` (at stream offset `off`) that differ from the pattern. */
export function countMismatches(data: Uint8Array, off: number): number {
  let bad = 0;
  for (let i = 0; i < data.byteLength; i++) {
    if (data[i] !== PATTERN[(off + i) % PATTERN_PERIOD]) bad++;
  }
  return bad;
}
