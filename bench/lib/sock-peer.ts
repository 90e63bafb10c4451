/**
 * The baseline: the same 16+N byte virtio-can frames, moved by the same native addon primitives
 * (non-blocking AF_UNIX stream sockets, sendmsg/recvmsg, uv_poll watchers) with no device in
 * between. Topology: sender process -> relay process -> receiver process, over two socketpairs;
 * the relay plays the daemon's part with no logic at all (read what is there, write it on).
 *
 * Framing: a stream of virtio_can_tx_out messages; the receiver walks the `length` field of every
 * header to find frame boundaries (a little per-frame work, as the device receiver has).
 */
import { CAN_HEADER_SIZE, CanFlag, CanHdr, CanMsgType } from '../../src/core/devices/can/constants.js';
import { type NativeWatcher, native } from '../../src/node/native/addon.js';

const READ_CHUNK = 256 * 1024;

function isEagain(err: unknown): boolean {
  return (err as { code?: string }).code === 'EAGAIN';
}

export interface SockCounters {
  sent: number;
  writes: number;
  received: number;
  readWakeups: number;
  relayed: number;
}

/** Writes frames to a socket; a partial write is finished before anything else is written. */
export class SockSender {
  readonly counters: SockCounters = { sent: 0, writes: 0, received: 0, readWakeups: 0, relayed: 0 };
  private readonly fd: number;
  private frameSize: number;
  private batchBuf: Uint8Array;
  private batchDv: DataView;
  private batch = 1;
  private pending: Uint8Array | null = null;
  private watcher: NativeWatcher | null = null;
  private flooding = false;
  private seq = 0n;
  private readonly one: Uint8Array;
  private readonly oneDv: DataView;

  constructor(fd: number, len: number, fdFrame: boolean) {
    this.fd = fd;
    this.frameSize = CAN_HEADER_SIZE + len;
    this.batchBuf = new Uint8Array(0);
    this.batchDv = new DataView(this.batchBuf.buffer);
    this.one = encodeFrames(1, len, fdFrame);
    this.oneDv = new DataView(this.one.buffer);
    this.setBatch(1, len, fdFrame);
  }

  private setBatch(batch: number, len: number, fd: boolean): void {
    this.batch = batch;
    this.frameSize = CAN_HEADER_SIZE + len;
    this.batchBuf = encodeFrames(batch, len, fd);
    this.batchDv = new DataView(this.batchBuf.buffer);
  }

  /** Tries to write `bytes`; keeps the unwritten tail as pending. Returns false on EAGAIN/partial. */
  private write(bytes: Uint8Array): boolean {
    let n: number;
    try {
      n = native.sendMsg(this.fd, bytes);
    } catch (err) {
      if (!isEagain(err)) throw err;
      n = 0;
    }
    this.counters.writes++;
    if (n === bytes.byteLength) return true;
    this.pending = bytes.slice(n);
    return false;
  }

  /** Writes what is left of a partial write; true when nothing is pending any more. */
  flushPending(): boolean {
    const p = this.pending;
    if (p === null) return true;
    this.pending = null;
    return this.write(p);
  }

  /**
   * Sends up to `n` frames in one write, each stamped with the current time; returns how many
   * frames were accepted (0 while an earlier partial write is still pending).
   */
  sendStamped(n: number): number {
    if (!this.flushPending()) return 0;
    const fs = this.frameSize;
    const buf = n === 1 ? this.one : new Uint8Array(n * fs);
    if (n > 1) for (let i = 0; i < n; i++) buf.set(this.one, i * fs);
    const dv = n === 1 ? this.oneDv : new DataView(buf.buffer);
    for (let i = 0; i < n; i++) dv.setBigUint64(i * fs + CAN_HEADER_SIZE, process.hrtime.bigint(), true);
    this.write(buf); // a partial write is finished later; the frames are sent either way
    this.counters.sent += n;
    return n;
  }

  /** Flat out: batches of `batch` frames (sequence-numbered), one write each. */
  startFlood(batch: number, len: number, fd: boolean): void {
    this.setBatch(batch, len, fd);
    this.flooding = true;
    this.loop();
  }

  private readonly loop = (): void => {
    if (!this.flooding) return;
    // Bounded work per turn so IPC ('stop') is still served when the socket never fills.
    for (let k = 0; k < 64; k++) {
      if (!this.flushPending()) {
        this.waitWritable();
        return;
      }
      const fs = this.frameSize;
      for (let i = 0; i < this.batch; i++)
        this.batchDv.setBigUint64(i * fs + CAN_HEADER_SIZE, this.seq++, true);
      this.counters.sent += this.batch;
      if (!this.write(this.batchBuf)) {
        this.waitWritable();
        return;
      }
    }
    setImmediate(this.loop);
  };

  /**
   * Closed loop against an acknowledging relay: write `batch` frames, wait until the relay has
   * acknowledged every byte (u32 counts on the same socket), repeat.
   */
  startClosedLoop(batch: number, len: number, fd: boolean): void {
    this.setBatch(batch, len, fd);
    this.flooding = true;
    let outstanding = 0;
    const ack = new Uint8Array(4096);
    const ackDv = new DataView(ack.buffer);
    let ackHave = 0;
    const send = (): void => {
      const fs = this.frameSize;
      for (let i = 0; i < this.batch; i++)
        this.batchDv.setBigUint64(i * fs + CAN_HEADER_SIZE, this.seq++, true);
      this.counters.sent += this.batch;
      outstanding += this.batchBuf.byteLength;
      // A few KiB into an empty socket: a short write here would be a broken socket.
      if (!this.write(this.batchBuf)) throw new Error('closed loop: short write');
    };
    this.watcher = new native.Watcher(this.fd, (status) => {
      if (status < 0 || !this.flooding) return;
      for (;;) {
        const r = native.recvMsg(this.fd, ack.subarray(ackHave), 0);
        if (r === null || r.bytes === 0) break;
        ackHave += r.bytes;
        let off = 0;
        for (; ackHave - off >= 4; off += 4) outstanding -= ackDv.getUint32(off, true);
        ack.copyWithin(0, off, ackHave);
        ackHave -= off;
      }
      if (outstanding === 0 && this.flooding) send();
    });
    this.watcher.start(native.READABLE);
    send();
  }

  private waitWritable(): void {
    if (this.watcher === null) {
      this.watcher = new native.Watcher(this.fd, (status) => {
        if (status < 0) return;
        this.watcher?.stop();
        this.loop();
      });
    }
    this.watcher.start(native.WRITABLE);
  }

  stop(): void {
    this.flooding = false;
    this.watcher?.close();
    this.watcher = null;
  }
}

/** Reads frames from a socket, counts them and passes each one's stamp to `onFrame`. */
export class SockReceiver {
  readonly counters: SockCounters = { sent: 0, writes: 0, received: 0, readWakeups: 0, relayed: 0 };
  onFrame: ((stamp: bigint, nowNs: bigint) => void) | null = null;
  private readonly fd: number;
  private readonly acc = new Uint8Array(READ_CHUNK + 128);
  private readonly dv = new DataView(this.acc.buffer);
  private have = 0;
  private watcher: NativeWatcher | null = null;

  constructor(fd: number) {
    this.fd = fd;
  }

  start(): void {
    this.watcher = new native.Watcher(this.fd, (status) => {
      if (status < 0) return;
      this.counters.readWakeups++;
      this.readAll();
    });
    this.watcher.start(native.READABLE);
  }

  private readAll(): void {
    for (;;) {
      const r = native.recvMsg(this.fd, this.acc.subarray(this.have, this.have + READ_CHUNK), 0);
      if (r === null || r.bytes === 0) return;
      this.have += r.bytes;
      const now = this.onFrame === null ? 0n : process.hrtime.bigint();
      let off = 0;
      while (this.have - off >= CAN_HEADER_SIZE) {
        const size = CAN_HEADER_SIZE + this.dv.getUint16(off + CanHdr.LENGTH, true);
        if (this.have - off < size) break;
        if (this.onFrame !== null) this.onFrame(this.dv.getBigUint64(off + CAN_HEADER_SIZE, true), now);
        this.counters.received++;
        off += size;
      }
      this.acc.copyWithin(0, off, this.have);
      this.have -= off;
    }
  }

  stop(): void {
    this.watcher?.close();
    this.watcher = null;
  }
}

/** Forwards bytes from one socket to another; stops reading while the output is full. */
export class SockRelay {
  readonly counters: SockCounters = { sent: 0, writes: 0, received: 0, readWakeups: 0, relayed: 0 };
  private readonly inFd: number;
  private readonly outFd: number;
  private readonly ack: boolean;
  private readonly ackBuf = new Uint8Array(4);
  private readonly ackDv = new DataView(this.ackBuf.buffer);
  private readonly buf = new Uint8Array(READ_CHUNK);
  private pending: Uint8Array | null = null;
  private inWatch: NativeWatcher | null = null;
  private outWatch: NativeWatcher | null = null;

  constructor(inFd: number, outFd: number, ack = false) {
    this.inFd = inFd;
    this.outFd = outFd;
    this.ack = ack;
  }

  /** Closed-loop mode: tells the sender how many bytes went on (one small write, never blocks). */
  private acknowledge(n: number): void {
    if (!this.ack || n === 0) return;
    this.ackDv.setUint32(0, n, true);
    native.sendMsg(this.inFd, this.ackBuf);
  }

  start(): void {
    this.inWatch = new native.Watcher(this.inFd, (status) => {
      if (status < 0) return;
      this.counters.readWakeups++;
      this.pump();
    });
    this.outWatch = new native.Watcher(this.outFd, (status) => {
      if (status < 0) return;
      if (this.flush()) {
        this.outWatch?.stop();
        this.inWatch?.start(native.READABLE);
        this.pump();
      }
    });
    this.inWatch.start(native.READABLE);
  }

  /** Writes the pending tail; true when it is all out. */
  private flush(): boolean {
    const p = this.pending;
    if (p === null) return true;
    let n = 0;
    try {
      n = native.sendMsg(this.outFd, p);
    } catch (err) {
      if (!isEagain(err)) throw err;
    }
    this.counters.writes++;
    this.counters.relayed += n;
    this.acknowledge(n);
    this.pending = n === p.byteLength ? null : p.subarray(n);
    return this.pending === null;
  }

  private pump(): void {
    for (;;) {
      const r = native.recvMsg(this.inFd, this.buf, 0);
      if (r === null || r.bytes === 0) return;
      let n = 0;
      try {
        n = native.sendMsg(this.outFd, this.buf.subarray(0, r.bytes));
      } catch (err) {
        if (!isEagain(err)) throw err;
      }
      this.counters.writes++;
      this.counters.relayed += n;
      this.acknowledge(n);
      if (n < r.bytes) {
        // Output full: stop reading until it drains. This is back-pressure to the sender; the
        // device drops instead once a receiver's backlog is full (see the report's notes).
        this.pending = this.buf.slice(n, r.bytes);
        this.inWatch?.stop();
        this.outWatch?.start(native.WRITABLE);
        return;
      }
    }
  }

  stop(): void {
    this.inWatch?.close();
    this.outWatch?.close();
    this.inWatch = null;
    this.outWatch = null;
  }
}

/** `count` copies of a virtio_can_tx_out message with `len` payload bytes (payload zero). */
export function encodeFrames(count: number, len: number, fd: boolean): Uint8Array {
  const size = CAN_HEADER_SIZE + len;
  const out = new Uint8Array(count * size);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < count; i++) {
    const o = i * size;
    dv.setUint16(o + CanHdr.MSG_TYPE, CanMsgType.TX, true);
    dv.setUint16(o + CanHdr.LENGTH, len, true);
    dv.setUint32(o + CanHdr.FLAGS, fd ? CanFlag.FD : 0, true);
    dv.setUint32(o + CanHdr.CAN_ID, 0x100, true);
  }
  return out;
}
