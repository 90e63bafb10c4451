/**
 * The stream side of the console benchmarks, on Node's own sockets (as the daemon's network
 * backend uses them):
 *
 * - ConStreamPeer: a TCP client of a console port (or of the baseline relay), or the baseline's
 *   stand-in for the guest on the relay's Unix socket. It reads (checking the content pattern),
 *   writes as fast as the socket takes it (back-pressure from write() / 'drain'), echoes, or
 *   measures keystroke round trips (1 byte out, wait for 1 byte back).
 * - ConRelay: the baseline, a do-nothing relay process: one Unix-socket peer and one TCP peer,
 *   piped to each other in both directions (stream.pipe, so back-pressure holds both ways).
 */
import { unlinkSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { countMismatches, patternAt } from './console-guest.js';
import { LatencyRecorder, type LatencySummary } from './latency.js';

export interface ConPeerCounters {
  bytesIn: number;
  bytesOut: number;
  /** 'data' events (reads). */
  reads: number;
  /** write() calls. */
  writes: number;
  /** Bytes of the first read that did not match the pattern (checking stops there). */
  mismatches: number;
}

export type ConAddress = { host: string; port: number } | { path: string };

export class ConStreamPeer {
  readonly counters: ConPeerCounters = { bytesIn: 0, bytesOut: 0, reads: 0, writes: 0, mismatches: 0 };
  private readonly sock: Socket;
  private writing = false;
  private onData: ((b: Buffer) => void) | null = null;

  private constructor(sock: Socket) {
    this.sock = sock;
    sock.setNoDelay(true);
    sock.on('data', (b: Buffer) => {
      this.counters.reads++;
      this.onData?.(b);
      this.counters.bytesIn += b.length;
    });
    sock.on('error', () => {});
  }

  static connect(addr: ConAddress, timeoutMs = 10_000): Promise<ConStreamPeer> {
    return new Promise((resolve, reject) => {
      const s = 'path' in addr ? createConnection(addr.path) : createConnection(addr.port, addr.host);
      const t = setTimeout(() => {
        s.destroy();
        reject(new Error(`connect ${JSON.stringify(addr)}: no connection within ${timeoutMs} ms`));
      }, timeoutMs);
      s.once('error', (err) => {
        clearTimeout(t);
        reject(err);
      });
      s.once('connect', () => {
        clearTimeout(t);
        resolve(new ConStreamPeer(s));
      });
    });
  }

  /** Counts what arrives; with `check`, compares it with the pattern (stream offset = bytesIn). */
  readStart(check: boolean): void {
    // After the first bad read the stream is out of step (bytes lost): stop checking, so a broken
    // run does not turn the reader into the bottleneck.
    let inStep = true;
    this.onData = check
      ? (b) => {
          if (inStep && b.compare(patternAt(this.counters.bytesIn, b.length)) !== 0) {
            this.counters.mismatches += countMismatches(b, this.counters.bytesIn);
            inStep = false;
          }
        }
      : null;
    this.sock.resume();
  }

  /** Writes `chunk`-byte pieces of the pattern as fast as the socket takes them. */
  writeStart(chunk: number): void {
    this.writing = true;
    const pump = (): void => {
      while (this.writing) {
        const b = patternAt(this.counters.bytesOut, chunk);
        this.counters.bytesOut += chunk;
        this.counters.writes++;
        if (!this.sock.write(b)) {
          this.sock.once('drain', pump);
          return;
        }
      }
    };
    pump();
  }

  /** Stops writing; resolves once everything written left our send queue (false: not in `ms`). */
  writeStop(ms: number): Promise<boolean> {
    this.writing = false;
    const end = Date.now() + ms;
    return new Promise((resolve) => {
      const check = (): void => {
        if (this.sock.writableLength === 0) resolve(true);
        else if (Date.now() > end) resolve(false);
        else setTimeout(check, 5);
      };
      check();
    });
  }

  /** Writes back everything it reads (the baseline's guest playing a shell's echo). */
  echoStart(): void {
    this.onData = (b) => {
      this.counters.bytesOut += b.length;
      this.counters.writes++;
      this.sock.write(b);
    };
  }

  /**
   * Keystroke round trips: 1 byte out, wait until 1 byte came back (it must be the same), next.
   * The first `warmup` samples are dropped.
   */
  ping(
    count: number,
    warmup: number,
    timeoutMs: number,
  ): Promise<LatencySummary & { seconds: number; wrong: number }> {
    const rec = new LatencyRecorder(count, warmup);
    const total = count + warmup;
    let wrong = 0;
    let sentAt = 0n;
    let expect = 0;
    const one = Buffer.alloc(1);
    const t0 = process.hrtime.bigint();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.onData = null;
        reject(new Error(`keystroke ping: ${rec.count} of ${total} echoes within ${timeoutMs} ms`));
      }, timeoutMs);
      const send = (): void => {
        expect = (expect + 1) % 96;
        one[0] = 32 + expect; // printable, as typed
        sentAt = process.hrtime.bigint();
        this.counters.bytesOut++;
        this.counters.writes++;
        this.sock.write(one);
      };
      let got = 0;
      this.onData = (b) => {
        const now = process.hrtime.bigint();
        for (let i = 0; i < b.length; i++) if (b[i] !== 32 + expect) wrong++;
        got += b.length;
        if (got < 1) return;
        got = 0;
        rec.add(Number(now - sentAt));
        if (rec.count < total) {
          send();
          return;
        }
        this.onData = null;
        clearTimeout(timer);
        resolve({ ...rec.summary(), seconds: Number(process.hrtime.bigint() - t0) / 1e9, wrong });
      };
      send();
    });
  }

  close(): void {
    this.writing = false;
    this.onData = null;
    this.sock.destroy();
  }
}

/** The baseline relay: Unix socket <-> TCP, nothing else. */
export class ConRelay {
  private unixServer: Server | null = null;
  private tcpServer: Server | null = null;
  private readonly peers: Socket[] = [];
  private unixPeer: Socket | null = null;
  private tcpPeer: Socket | null = null;
  private path = '';

  /** Listens on `path` and on an ephemeral TCP port of 127.0.0.1; returns that port. */
  async start(path: string): Promise<number> {
    this.path = path;
    const listen = (srv: Server, arg: string | { host: string; port: number }): Promise<void> =>
      new Promise((resolve, reject) => {
        srv.once('error', reject);
        if (typeof arg === 'string') srv.listen(arg, resolve);
        else srv.listen(arg, resolve);
      });
    this.unixServer = createServer({ noDelay: true }, (s) => this.accept(s, 'unix'));
    this.tcpServer = createServer({ noDelay: true }, (s) => this.accept(s, 'tcp'));
    await listen(this.unixServer, path);
    await listen(this.tcpServer, { host: '127.0.0.1', port: 0 });
    const a = this.tcpServer.address();
    if (a === null || typeof a === 'string') throw new Error('relay: no TCP address');
    return a.port;
  }

  private accept(s: Socket, kind: 'unix' | 'tcp'): void {
    s.setNoDelay(true);
    s.on('error', () => {});
    this.peers.push(s);
    if (kind === 'unix') this.unixPeer = s;
    else this.tcpPeer = s;
    s.pause();
    const u = this.unixPeer;
    const t = this.tcpPeer;
    if (u !== null && t !== null) {
      u.pipe(t);
      t.pipe(u);
      u.resume();
      t.resume();
    }
  }

  stop(): void {
    for (const s of this.peers) s.destroy();
    this.unixServer?.close();
    this.tcpServer?.close();
    try {
      unlinkSync(this.path);
    } catch {
      /* gone */
    }
  }
}
