/**
 * The VIRTIO console device (device ID 3), one per guest connection. It implements the device
 * contract; the vhost-user layer drives it, and a backend (TCP client, Unix socket, terminal)
 * attaches through `ConsoleHandler` and the `input` / `setHostConnected` / `resize` calls.
 *
 * Port 0 is the console port (the guest's hvc0); ports 1..n are named generic ports
 * (`/dev/virtio-ports/NAME` in a Linux guest), present only when MULTIPORT is negotiated.
 *
 * Decisions beyond the spec text, with the reasoning:
 * - Console output (port 0) is consumed at once, always, client or not: Linux writes hvc output
 *   with the port's lock held and interrupts off and spins until the device returns the buffer,
 *   so holding it would freeze a guest vCPU (QEMU never throttles console ports either). What to
 *   do with bytes nobody reads is the backend's business (scrollback, log file, counted drops).
 * - Named ports (1..n) may be paced: when the backend asks (`ConsoleHandler.canOutput` false: a
 *   connected client reads slower than the guest writes) their transmit chains stay in the ring
 *   until `outputSpace(port)`, like a serial line's flow control. A Linux writer on a generic port
 *   sleeps until the device returns buffers, so this costs the guest nothing but waiting.
 * - Input is flow-controlled, never dropped: `input()` takes what fits in a bounded per-port
 *   buffer and says how much; `ConsoleHandler.inputSpace` tells the backend when to resume. RX
 *   buffers are taken from the ring only when there are bytes to put in them.
 * - With MULTIPORT, bytes reach a port only once the guest opened it (PORT_OPEN 1): Linux discards
 *   data for generic ports nobody has open, and the console port opens itself on CONSOLE_PORT.
 * - Control messages from the guest are handled in order and each chain returns with used length
 *   0; an unknown event or a bad port id is counted and ignored (it never stops the device).
 * - Control messages to the guest wait, in order and bounded, for control receiveq buffers; each
 *   uses exactly one buffer.
 * - PORT_READY for the console port is answered with CONSOLE_PORT, then RESIZE (with F_SIZE: with
 *   MULTIPORT Linux never reads the size from config space, so without it the guest would run with
 *   a wrong size until the first change), then PORT_NAME, then PORT_OPEN if the host side is
 *   connected. A repeated PORT_READY (guest resume) gets the same answers again.
 * - RESIZE carries `cols, rows` as the spec says; `legacyResizeOrder` sends `rows, cols` for Linux
 *   guests before 6.15, which read them swapped.
 * - `emerg_wr` may be written at any time, negotiated or not (the spec's MUST): its low byte is
 *   console output.
 */
import type { GuestMemory } from '../../memory/guest-memory.js';
import { deviceFailure } from '../../util/errors.js';
import type { Logger } from '../../util/log.js';
import { nullLogger } from '../../util/log.js';
import { encodeUtf8 } from '../../util/utf8.js';
import type { DeviceHost, VirtioDevice } from '../../vhost-user/device.js';
import { DescriptorChain } from '../../virtio/descriptor-chain.js';
import {
  featureBit,
  hasFeature,
  maxQueueSizeOf,
  type RingOptions,
  ringFeatures,
} from '../../virtio/features.js';
import { type ChainHandler, QueueWorker } from '../../virtio/queue-worker.js';
import type { SplitQueue } from '../../virtio/split-queue.js';
import {
  CONSOLE_CONTROL_SIZE,
  CONSOLE_MAX_PORTS,
  ConsoleConfig,
  ConsoleEvent,
  ConsoleFeature,
  ConsoleQueue,
  consoleQueueCount,
  portRxQueue,
  portTxQueue,
  VIRTIO_ID_CONSOLE,
} from './constants.js';

/** What the backend side provides. Calls come from inside queue processing: do not throw. */
export interface ConsoleHandler {
  /** Guest output on `port`. `bytes` is valid only during the call: copy what you keep. */
  output(port: number, bytes: Uint8Array): void;
  /** The guest opened (PORT_OPEN 1) or closed a port, or the device was reset (all closed). */
  guestOpen?(port: number, open: boolean): void;
  /** `input(port)` refused bytes earlier and there is room again. */
  inputSpace?(port: number): void;
  /**
   * Asked before each transmit chain of a named port (never for port 0, the console): false pauses
   * the port's output (the chains stay in the ring) until the backend calls `outputSpace(port)`.
   * Absent: always true.
   */
  canOutput?(port: number): boolean;
}

export interface ConsoleFeatureSwitches {
  size: boolean;
  multiport: boolean;
  emergWrite: boolean;
}

export const DEFAULT_CONSOLE_FEATURES: Readonly<ConsoleFeatureSwitches> = Object.freeze({
  size: true,
  multiport: true,
  emergWrite: true,
});

/** Longest port name sent in PORT_NAME (Linux copies it into a page-sized buffer). */
export const MAX_PORT_NAME_BYTES = 255;

export interface ConsoleDeviceOptions extends RingOptions {
  handler: ConsoleHandler;
  /**
   * Names of ports 1..n (port 0, the console, has no name unless `consoleName` is set). The number
   * of ports (max_nr_ports) is 1 + names.length.
   */
  portNames?: readonly string[];
  consoleName?: string;
  features?: Partial<ConsoleFeatureSwitches>;
  /** Initial terminal size (default 80 x 24). */
  cols?: number;
  rows?: number;
  /** RESIZE payload as rows, cols (Linux guests before 6.15). */
  legacyResizeOrder?: boolean;
  /** Bytes of input held per port while the guest has no RX buffers (default 64 KiB). */
  inputLimit?: number;
  /** Control messages held for the guest while it has no control buffers (default 1024). */
  controlBacklog?: number;
  log?: Logger;
}

export interface ConsolePortStats {
  /** Guest output bytes. */
  txBytes: number;
  /** Input bytes written into guest buffers. */
  rxBytes: number;
  /** RX buffers used. */
  rxBuffers: number;
  /** Bytes refused by input() because the port's input buffer was full (the backend keeps them). */
  inputRefused: number;
  /** Times output was paused because the backend could not take more (canOutput false). */
  txPauses: number;
}

export interface ConsoleDeviceStats {
  ports: ConsolePortStats[];
  controlIn: number;
  controlOut: number;
  /** Control messages from the guest with an unknown event, bad port id or short length. */
  controlIgnored: number;
  /** Control messages to the guest dropped: backlog full, or a buffer too short for them. */
  controlDropped: number;
  emergBytes: number;
  /** Malformed chains returned with used length 0 (any queue). */
  badChains: number;
}

interface PortState {
  readonly name: string | undefined;
  /** PORT_ADD was sent since the last reset (never twice, spec). */
  added: boolean;
  /** The guest answered PORT_READY(1). */
  ready: boolean;
  /** The guest has the port open (PORT_OPEN 1; port 0 without MULTIPORT: always). */
  guestOpen: boolean;
  hostConnected: boolean;
  /** Pending input, a ring of `inputLimit` bytes. */
  readonly inBuf: Uint8Array;
  inStart: number;
  inCount: number;
  /** input() refused bytes since the last inputSpace() call. */
  refused: boolean;
}

const TX_BUDGET = 256;
const TX_SCRATCH = 64 * 1024;

export class ConsoleDevice implements VirtioDevice {
  readonly name = 'console';
  readonly deviceId = VIRTIO_ID_CONSOLE;
  readonly numQueues: number;
  readonly configSize = ConsoleConfig.SIZE;
  readonly maxQueueSize: number;
  readonly features: bigint;
  readonly stats: ConsoleDeviceStats;
  readonly portCount: number;

  private host: DeviceHost | null = null;
  private log: Logger;
  private readonly handler: ConsoleHandler;
  private readonly ports: PortState[];
  private readonly legacyResize: boolean;
  private readonly controlBacklog: number;
  private cols: number;
  private rows: number;
  private multiport = false;
  private sizeOn = false;
  private readonly controlQueue: Uint8Array[] = [];
  // One chain object per kind of work: output and control callbacks may re-enter the device
  // (a backend answering output with input), and must not overwrite a chain still being handled.
  private readonly txChain = new DescriptorChain(16);
  private readonly rxChain = new DescriptorChain(16);
  private readonly ctlTxChain = new DescriptorChain(4);
  private readonly ctlRxChain = new DescriptorChain(4);
  private readonly scratch = new Uint8Array(TX_SCRATCH);
  private readonly ctl = new Uint8Array(CONSOLE_CONTROL_SIZE);
  private readonly ctlView = new DataView(this.ctl.buffer);
  private readonly pendingTx = new Set<number>();
  private readonly pausedTx = new Set<number>();
  private txScheduled = false;
  private destroyed = false;
  private readonly worker: QueueWorker;
  // The chain handlers, made once (no closure per chain); the port being served is in a field.
  private txPort = 0;
  private rxPort: PortState | null = null;
  private rxStats: ConsolePortStats | null = null;
  private readonly handleTx: ChainHandler = (chain, q) => this.txChainDone(chain, q);
  private readonly handleRx = (chain: DescriptorChain, q: SplitQueue): boolean => this.rxChainFill(chain, q);
  private readonly handleControlTx: ChainHandler = (chain, q) => this.controlTxChain(chain, q);
  private readonly handleControlRx = (chain: DescriptorChain, q: SplitQueue): boolean =>
    this.controlRxChain(chain, q);
  private readonly inputWaiting = (): boolean => (this.rxPort?.inCount ?? 0) > 0;
  private readonly controlWaiting = (): boolean => this.controlQueue.length > 0;

  constructor(opts: ConsoleDeviceOptions) {
    const sw = { ...DEFAULT_CONSOLE_FEATURES, ...opts.features };
    const names = opts.portNames ?? [];
    const count = 1 + names.length;
    if (count > CONSOLE_MAX_PORTS) throw new RangeError(`${count} ports (at most ${CONSOLE_MAX_PORTS})`);
    if (names.length > 0 && !sw.multiport) throw new RangeError('named ports need MULTIPORT');
    for (const n of [...names, ...(opts.consoleName === undefined ? [] : [opts.consoleName])]) {
      const len = encodeUtf8(n).byteLength;
      if (len === 0 || len > MAX_PORT_NAME_BYTES) {
        throw new RangeError(`port name "${n}" must be 1..${MAX_PORT_NAME_BYTES} bytes of UTF-8`);
      }
    }
    this.portCount = count;
    this.numQueues = sw.multiport ? consoleQueueCount(count) : 2;
    let f = ringFeatures(opts);
    if (sw.size) f |= featureBit(ConsoleFeature.SIZE);
    if (sw.multiport) f |= featureBit(ConsoleFeature.MULTIPORT);
    if (sw.emergWrite) f |= featureBit(ConsoleFeature.EMERG_WRITE);
    this.features = f;
    this.maxQueueSize = maxQueueSizeOf(opts);
    const limit = opts.inputLimit ?? 64 * 1024;
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`input limit ${limit}`);
    this.controlBacklog = opts.controlBacklog ?? 1024;
    this.handler = opts.handler;
    this.log = opts.log ?? nullLogger;
    this.legacyResize = opts.legacyResizeOrder ?? false;
    this.cols = clampU16(opts.cols ?? 80);
    this.rows = clampU16(opts.rows ?? 24);
    this.ports = Array.from({ length: count }, (_, i) => ({
      name: i === 0 ? opts.consoleName : names[i - 1],
      added: false,
      ready: false,
      guestOpen: false,
      hostConnected: false,
      inBuf: new Uint8Array(limit),
      inStart: 0,
      inCount: 0,
      refused: false,
    }));
    this.stats = {
      ports: this.ports.map(() => ({ txBytes: 0, rxBytes: 0, rxBuffers: 0, inputRefused: 0, txPauses: 0 })),
      controlIn: 0,
      controlOut: 0,
      controlIgnored: 0,
      controlDropped: 0,
      emergBytes: 0,
      badChains: 0,
    };
    this.worker = new QueueWorker(
      () => this.host,
      () => this.log,
      this.stats,
    );
  }

  statsFields(): Record<string, number | string | boolean> {
    const st = this.stats;
    const f: Record<string, number | string | boolean> = {
      controlIn: st.controlIn,
      controlOut: st.controlOut,
      controlIgnored: st.controlIgnored,
      controlDropped: st.controlDropped,
      emergBytes: st.emergBytes,
      badChains: st.badChains,
    };
    st.ports.forEach((p, i) => {
      f[`port${i}TxBytes`] = p.txBytes;
      f[`port${i}RxBytes`] = p.rxBytes;
      f[`port${i}InputWaiting`] = this.ports[i]!.inCount;
    });
    return f;
  }

  /** Whether the guest has `port` open (bytes can reach it). */
  isGuestOpen(port: number): boolean {
    return this.ports[port]?.guestOpen ?? false;
  }

  /** Input bytes waiting for guest buffers on `port`. */
  pendingInput(port: number): number {
    return this.ports[port]?.inCount ?? 0;
  }

  // ---- backend side ---------------------------------------------------------------------------

  /**
   * Queues input for the guest on `port` and delivers what guest buffers allow. Returns the number
   * of bytes taken (from the start of `bytes`); the rest is the caller's to keep until
   * `inputSpace(port)`.
   */
  input(port: number, bytes: Uint8Array): number {
    const p = this.ports[port];
    if (p === undefined || this.destroyed) return 0;
    const cap = p.inBuf.byteLength;
    // The caller learns about a refusal from the return value: inputSpace() is never called from
    // inside input() (a caller that still holds `bytes` as pending would hand them over twice).
    p.refused = false;
    let taken = 0;
    for (;;) {
      const n = Math.min(bytes.byteLength - taken, cap - p.inCount);
      if (n === 0) break;
      let w = (p.inStart + p.inCount) % cap;
      for (let i = taken; i < taken + n; ) {
        const run = Math.min(taken + n - i, cap - w);
        p.inBuf.set(bytes.subarray(i, i + run), w);
        i += run;
        w = (w + run) % cap;
      }
      p.inCount += n;
      taken += n;
      this.guarded(() => this.deliverInput(port));
      // Delivery may have made room (and armed no kick when it emptied the buffer): go on.
      if (taken === bytes.byteLength || p.inCount === cap) break;
    }
    if (taken < bytes.byteLength) {
      p.refused = true;
      this.stats.ports[port]!.inputRefused += bytes.byteLength - taken;
    }
    return taken;
  }

  /** The backend can take output on `port` again (after `canOutput` said no): resume it. */
  outputSpace(port: number): void {
    if (!this.pausedTx.delete(port) || this.destroyed) return;
    this.scheduleTx(port);
  }

  /** Ports whose output is paused (the backend's `canOutput` said no). */
  outputPaused(port: number): boolean {
    return this.pausedTx.has(port);
  }

  /** The host side of `port` connected or disconnected (a client): PORT_OPEN to the guest. */
  setHostConnected(port: number, connected: boolean): void {
    const p = this.ports[port];
    if (p === undefined || p.hostConnected === connected) return;
    p.hostConnected = connected;
    if (this.multiport && p.ready) {
      this.sendControl(port, ConsoleEvent.PORT_OPEN, connected ? 1 : 0);
    }
  }

  /** The terminal size changed: RESIZE for port 0 (MULTIPORT) or a config-change notification. */
  resize(cols: number, rows: number): void {
    const c = clampU16(cols);
    const r = clampU16(rows);
    if (c === this.cols && r === this.rows) return;
    this.cols = c;
    this.rows = r;
    if (!this.sizeOn) return;
    if (this.multiport) {
      if (this.ports[0]!.ready) this.sendResize();
    } else {
      this.host?.notifyConfigChange();
    }
  }

  get size(): { cols: number; rows: number } {
    return { cols: this.cols, rows: this.rows };
  }

  // ---- device contract ------------------------------------------------------------------------

  attach(host: DeviceHost): void {
    this.host = host;
    this.log = host.log;
  }

  readConfig(dst: Uint8Array): void {
    const dv = new DataView(dst.buffer, dst.byteOffset, dst.byteLength);
    dv.setUint16(ConsoleConfig.COLS, this.cols, true);
    dv.setUint16(ConsoleConfig.ROWS, this.rows, true);
    dv.setUint32(ConsoleConfig.MAX_NR_PORTS, this.portCount, true);
    dv.setUint32(ConsoleConfig.EMERG_WR, 0, true); // write-only for the driver
  }

  writeConfig(offset: number, data: Uint8Array): boolean {
    // Only emerg_wr is writable. QEMU forwards a 4-byte write at offset 8; accept any write that
    // covers its low byte.
    if (offset > ConsoleConfig.EMERG_WR || offset + data.byteLength <= ConsoleConfig.EMERG_WR) return false;
    const low = data[ConsoleConfig.EMERG_WR - offset]!;
    this.stats.emergBytes++;
    this.stats.ports[0]!.txBytes++;
    this.handler.output(0, Uint8Array.of(low));
    return true;
  }

  setFeatures(acked: bigint): void {
    this.multiport = hasFeature(acked, ConsoleFeature.MULTIPORT);
    this.sizeOn = hasFeature(acked, ConsoleFeature.SIZE);
  }

  queueStarted(index: number): void {
    if (!this.multiport && index === ConsoleQueue.PORT0_RX) {
      // Without MULTIPORT the guest cannot say it opened port 0: it is open once the rings run.
      this.setGuestOpen(0, true);
    }
    this.queueNotified(index);
  }

  queueStopping(): void {
    // Every queue completes its chains within the call that took them.
  }

  queueNotified(index: number): void {
    this.guarded(() => this.process(index));
  }

  halt(): void {
    this.pendingTx.clear();
    this.pausedTx.clear();
  }

  reset(): void {
    this.halt();
    this.multiport = false;
    this.sizeOn = false;
    this.controlQueue.length = 0;
    for (let i = 0; i < this.ports.length; i++) {
      const p = this.ports[i]!;
      p.added = false;
      p.ready = false;
      this.setGuestOpen(i, false);
      // Input already accepted stays queued for the next driver (flow control kept the rest out).
    }
  }

  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.halt();
  }

  // ---- queue processing -----------------------------------------------------------------------

  private process(index: number): void {
    if (index === ConsoleQueue.CTRL_TX && this.multiport) this.processControlTx();
    else if (index === ConsoleQueue.CTRL_RX && this.multiport) this.flushControl();
    else {
      const port = portOfQueue(index);
      if (port < 0 || port >= this.ports.length) return;
      if (port > 0 && !this.multiport) return;
      if (index === portTxQueue(port)) this.processTx(port);
      else this.deliverInput(port);
    }
  }

  private guarded(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      const e = deviceFailure(err);
      if (this.host !== null) this.host.markBroken(e);
      else this.log.error('console device failure outside a connection', { code: e.code, reason: e.message });
    }
  }

  /** Guest output: consumed at once, whatever the backend does with it (named ports may be paced). */
  private processTx(port: number): void {
    const q = this.host?.queue(portTxQueue(port)) ?? null;
    if (q === null) return;
    const handler = this.handler;
    // Never the console port: the guest spins on it (see the header).
    const paces = handler.canOutput !== undefined && port !== 0;
    this.txPort = port;
    const r = this.worker.drain(q, this.txChain, this.handleTx, {
      budget: TX_BUDGET,
      ...(paces ? { more: () => handler.canOutput!(port) } : {}),
    });
    if (r === 'stopped') {
      // Paused: the chains stay in the ring (no kick asked for) until outputSpace(port).
      if (!this.pausedTx.has(port)) {
        this.pausedTx.add(port);
        this.stats.ports[port]!.txPauses++;
      }
    } else if (r === 'budget') {
      // Fairness: a guest printing nonstop must not starve the event loop; continue next turn.
      this.scheduleTx(port);
    }
  }

  private txChainDone(chain: DescriptorChain, q: SplitQueue): void {
    const port = this.txPort;
    const stats = this.stats.ports[port]!;
    const mem = this.host!.memory;
    const len = chain.readableLength;
    if (len > this.scratch.byteLength) {
      this.emit(port, chain, mem, stats);
      // The device writes nothing into transmit buffers: used length 0.
      q.pushUsed(chain.head, 0);
      return;
    }
    // Copy out, return the buffer, then hand the bytes over: the guest's writer (which waits
    // for its buffer) goes on while the backend writes to its client.
    const n = len === 0 ? 0 : chain.read(mem, 0, this.scratch, 0, len);
    q.pushUsed(chain.head, 0);
    q.publish();
    if (len > 0 && n <= 0) {
      this.stats.badChains++;
      return;
    }
    if (n > 0) {
      stats.txBytes += n;
      this.handler.output(port, this.scratch.subarray(0, n));
    }
  }

  private emit(port: number, chain: DescriptorChain, mem: GuestMemory, stats: ConsolePortStats): void {
    let off = 0;
    const total = chain.readableLength;
    while (off < total) {
      const want = Math.min(total - off, this.scratch.byteLength);
      const n = chain.read(mem, off, this.scratch, 0, want);
      if (n <= 0) {
        this.stats.badChains++;
        return;
      }
      stats.txBytes += n;
      this.handler.output(port, this.scratch.subarray(0, n));
      off += n;
    }
  }

  private scheduleTx(port: number): void {
    this.pendingTx.add(port);
    if (this.txScheduled) return;
    this.txScheduled = true;
    if (this.host === null) {
      this.txScheduled = false;
      return;
    }
    this.host.schedule(() => {
      this.txScheduled = false;
      const ports = [...this.pendingTx];
      this.pendingTx.clear();
      for (const p of ports) this.processTx(p);
    });
  }

  /** Writes pending input into RX buffers: one used entry per buffer, length = bytes written. */
  private deliverInput(port: number): void {
    const p = this.ports[port]!;
    const host = this.host;
    if (p.inCount === 0 || host === null || !p.guestOpen) return;
    const q = host.queue(portRxQueue(port));
    if (q === null) return;
    this.rxPort = p;
    this.rxStats = this.stats.ports[port]!;
    // Buffers are taken only while bytes wait; with bytes left and no buffers the kick is armed.
    if (!this.worker.fill(q, this.rxChain, this.inputWaiting, this.handleRx)) return;
    if (p.refused && p.inCount < p.inBuf.byteLength) {
      p.refused = false;
      this.handler.inputSpace?.(port);
    }
  }

  private rxChainFill(chain: DescriptorChain, q: SplitQueue): boolean {
    const p = this.rxPort!;
    const stats = this.rxStats!;
    const cap = p.inBuf.byteLength;
    const room = chain.writableLength;
    if (room === 0) {
      // Nothing to write into: malformed for a receiveq (counted like a chain that cannot be walked).
      this.stats.badChains++;
      q.pushUsed(chain.head, 0);
      return p.inCount > 0;
    }
    const mem = this.host!.memory;
    let done = 0;
    while (done < room && p.inCount > 0) {
      const run = Math.min(room - done, p.inCount, cap - p.inStart);
      const n = chain.write(mem, done, p.inBuf, p.inStart, run);
      if (n !== run) {
        this.stats.badChains++;
        break;
      }
      done += n;
      p.inStart = (p.inStart + n) % cap;
      p.inCount -= n;
    }
    q.pushUsed(chain.head, done);
    stats.rxBytes += done;
    stats.rxBuffers++;
    return p.inCount > 0;
  }

  // ---- control ----------------------------------------------------------------------------------

  private processControlTx(): void {
    const q = this.host?.queue(ConsoleQueue.CTRL_TX) ?? null;
    if (q === null) return;
    this.worker.drain(q, this.ctlTxChain, this.handleControlTx);
    this.flushControl();
  }

  private controlTxChain(chain: DescriptorChain, q: SplitQueue): void {
    const head = chain.head;
    this.stats.controlIn++;
    if (
      chain.readableLength >= CONSOLE_CONTROL_SIZE &&
      chain.read(this.host!.memory, 0, this.ctl, 0, 8) === 8
    ) {
      this.control(
        this.ctlView.getUint32(0, true),
        this.ctlView.getUint16(4, true),
        this.ctlView.getUint16(6, true),
      );
    } else {
      this.stats.controlIgnored++;
    }
    // Linux spins on the control transmitq: return each chain at once.
    q.pushUsed(head, 0);
  }

  private control(id: number, event: number, value: number): void {
    if (event === ConsoleEvent.DEVICE_READY) {
      if (value !== 1) {
        this.log.warn('guest console driver reports a failed probe (DEVICE_READY 0)');
        return;
      }
      for (let i = 0; i < this.ports.length; i++) {
        const p = this.ports[i]!;
        if (p.added) continue; // never PORT_ADD an existing port (spec)
        p.added = true;
        this.sendControl(i, ConsoleEvent.PORT_ADD, 1);
      }
      return;
    }
    const p = this.ports[id];
    if (p === undefined || !p.added) {
      this.stats.controlIgnored++;
      if (this.stats.controlIgnored === 1 || this.log.debugEnabled) {
        this.log.warn('control message for an unknown port ignored', { id, event, value });
      }
      return;
    }
    switch (event) {
      case ConsoleEvent.PORT_READY:
        if (value !== 1) {
          p.ready = false;
          this.log.warn('guest could not set up a console port', { port: id });
          return;
        }
        p.ready = true;
        if (id === 0) {
          this.sendControl(0, ConsoleEvent.CONSOLE_PORT, 1);
          if (this.sizeOn) this.sendResize();
        }
        if (p.name !== undefined) this.sendName(id, p.name);
        if (p.hostConnected) this.sendControl(id, ConsoleEvent.PORT_OPEN, 1);
        return;
      case ConsoleEvent.PORT_OPEN:
        this.setGuestOpen(id, value === 1);
        return;
      default:
        this.stats.controlIgnored++;
        if (this.log.debugEnabled)
          this.log.debug('unknown console control event ignored', { id, event, value });
    }
  }

  private setGuestOpen(port: number, open: boolean): void {
    const p = this.ports[port]!;
    if (p.guestOpen === open) return;
    p.guestOpen = open;
    this.handler.guestOpen?.(port, open);
    if (open) this.deliverInput(port);
  }

  private sendResize(): void {
    const m = controlMessage(0, ConsoleEvent.RESIZE, 0, 4);
    const dv = new DataView(m.buffer);
    dv.setUint16(8, this.legacyResize ? this.rows : this.cols, true);
    dv.setUint16(10, this.legacyResize ? this.cols : this.rows, true);
    this.queueControl(m);
  }

  private sendName(port: number, name: string): void {
    const bytes = encodeUtf8(name);
    const m = controlMessage(port, ConsoleEvent.PORT_NAME, 1, bytes.byteLength);
    m.set(bytes, CONSOLE_CONTROL_SIZE);
    this.queueControl(m);
  }

  private sendControl(port: number, event: number, value: number): void {
    this.queueControl(controlMessage(port, event, value, 0));
  }

  private queueControl(m: Uint8Array): void {
    if (!this.multiport) return;
    if (this.controlQueue.length >= this.controlBacklog) {
      this.stats.controlDropped++;
      this.log.warn('control message dropped: the guest posts no control buffers');
      return;
    }
    this.controlQueue.push(m);
    this.guarded(() => this.flushControl());
  }

  /** Delivers queued control messages, in order, one buffer each. */
  private flushControl(): void {
    const host = this.host;
    if (this.controlQueue.length === 0 || host === null) return;
    const q = host.queue(ConsoleQueue.CTRL_RX);
    if (q === null) return;
    this.worker.fill(q, this.ctlRxChain, this.controlWaiting, this.handleControlRx);
  }

  private controlRxChain(chain: DescriptorChain, q: SplitQueue): boolean {
    const m = this.controlQueue.shift()!;
    if (chain.writableLength < m.byteLength) {
      // Linux posts page-sized buffers; a shorter one cannot carry this message.
      this.stats.controlDropped++;
      q.pushUsed(chain.head, 0);
      return this.controlQueue.length > 0;
    }
    const n = chain.write(this.host!.memory, 0, m, 0, m.byteLength);
    q.pushUsed(chain.head, n === m.byteLength ? n : 0);
    this.stats.controlOut++;
    return this.controlQueue.length > 0;
  }
}

function controlMessage(id: number, event: number, value: number, extra: number): Uint8Array {
  const m = new Uint8Array(CONSOLE_CONTROL_SIZE + extra);
  const dv = new DataView(m.buffer);
  dv.setUint32(0, id, true);
  dv.setUint16(4, event, true);
  dv.setUint16(6, value, true);
  return m;
}

/** The port a data queue belongs to, or -1 for the control queues. */
function portOfQueue(index: number): number {
  if (index === 0 || index === 1) return 0;
  if (index === 2 || index === 3) return -1;
  return (index >> 1) - 1;
}

function clampU16(n: number): number {
  return Math.max(0, Math.min(0xffff, Math.trunc(n) || 0));
}
