// The SocketCAN port's receive path (records -> bus frames) and its socket set-up, on a scripted
// stand-in for the addon: the kernel side runs in test/socketcan (inside a CAN-capable kernel).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { CanFrame } from '../../src/core/bus/can-frame.js';
import { CanHub, type HubPort } from '../../src/core/bus/hub.js';
import type { LogFields, Logger } from '../../src/core/util/log.js';
import {
  DEFAULT_SOCKETCAN_RCVBUF,
  type SocketCanNative,
  SocketCanPort,
} from '../../src/node/bus/socketcan-port.js';
import {
  CAN_RECORD_DATA_OFFSET,
  CAN_RECORD_SIZE,
  type CanRecordInput,
  writeRecord,
} from '../../src/node/native/can-records.js';

const EFF = 0x80000000;
const RTR = 0x40000000;
const FDF = 0x04;
const BRS = 0x01;

interface Scripted {
  native: SocketCanNative;
  /** Records the next canRecvBatch calls return, in order; `garbage` fills data past len. */
  queue: { rec: CanRecordInput; garbage?: number; lenByte?: number }[];
  opens: Record<string, unknown>[];
  recvCalls: number;
  /** What getsockopt(SO_RCVBUF) reports; default: twice what was asked. */
  granted: number | null;
  readable(): void;
}

function scripted(): Scripted {
  let cb: ((status: number, events: number) => void) | null = null;
  const s: Scripted = {
    queue: [],
    opens: [],
    recvCalls: 0,
    granted: null,
    readable: () => cb?.(0, 1),
    native: {
      READABLE: 1,
      canSupported: () => true,
      canIfInfo: () => ({ index: 3, mtu: 72, up: true, running: true, isCan: true }),
      canOpen: (_ifname, opts) => {
        s.opens.push({ ...opts });
        return 42;
      },
      canSocketBuffers: () => ({
        rcvbuf: s.granted ?? 2 * ((s.opens.at(-1)?.rcvbuf as number | undefined) ?? 106496),
        sndbuf: 0,
      }),
      canRecvBatch: (_fd, buf, maxFrames) => {
        s.recvCalls++;
        if (s.queue.length === 0) return null;
        const n = Math.min(maxFrames, Math.floor(buf.byteLength / CAN_RECORD_SIZE), 64, s.queue.length);
        for (let i = 0; i < n; i++) {
          const { rec, garbage, lenByte } = s.queue.shift()!;
          writeRecord(buf, i, rec);
          if (lenByte !== undefined) buf[i * CAN_RECORD_SIZE + 4] = lenByte; // what writeRecord refuses
          if (garbage !== undefined) {
            const from = i * CAN_RECORD_SIZE + CAN_RECORD_DATA_OFFSET + rec.len;
            buf.fill(garbage, from, i * CAN_RECORD_SIZE + CAN_RECORD_DATA_OFFSET + 64);
          }
        }
        return n;
      },
      canSendBatch: (_fd, _buf, count) => count,
      close: () => {},
      Watcher: class {
        constructor(_fd: number, f: (status: number, events: number) => void) {
          cb = f;
        }
        start(): void {}
        stop(): void {}
        close(): void {
          cb = null;
        }
      },
    },
  };
  return s;
}

function recordingLog(): Logger & { lines: [string, string, LogFields | undefined][] } {
  const lines: [string, string, LogFields | undefined][] = [];
  const log = {
    lines,
    debugEnabled: false,
    error: (m: string, f?: LogFields) => lines.push(['error', m, f]),
    warn: (m: string, f?: LogFields) => lines.push(['warn', m, f]),
    info: (m: string, f?: LogFields) => lines.push(['info', m, f]),
    debug: () => {},
    child: () => log,
  };
  return log;
}

function setup(opts: { rcvbuf?: number } = {}): {
  s: Scripted;
  hub: CanHub;
  port: SocketCanPort;
  guest: HubPort;
  log: ReturnType<typeof recordingLog>;
} {
  const s = scripted();
  const hub = new CanHub({ name: 'sc', queueLimit: 1 << 16 });
  const log = recordingLog();
  const port = new SocketCanPort({
    native: s.native,
    hub,
    ifname: 'vcan0',
    log,
    checkIntervalMs: 0,
    ...(opts.rcvbuf === undefined ? {} : { rcvbuf: opts.rcvbuf }),
  });
  // A guest-like receiver that keeps what it takes (frames stay valid: never recycled).
  const guest = hub.attach({ onFramesAvailable() {} }, { name: 'guest' });
  return { s, hub, port, guest, log };
}

function takeAll(p: HubPort): CanFrame[] {
  const out: CanFrame[] = [];
  for (let f = p.take(); f !== undefined; f = p.take()) out.push(f);
  return out;
}

const view = (f: CanFrame) => ({
  id: f.id,
  extended: f.extended,
  rtr: f.rtr,
  fd: f.fd,
  brs: f.brs,
  len: f.len,
  len8Dlc: f.len8Dlc,
  data: [...f.data],
});

describe('SocketCanPort receive path', () => {
  it('decodes classic, extended, RTR, len8_dlc and FD records; pads odd FD lengths with zeros', () => {
    const { s, port, guest } = setup();
    const bytes = (n: number, v: number) => new Uint8Array(n).fill(v);
    s.queue.push(
      { rec: { canId: 0x123, len: 3, data: Uint8Array.of(1, 2, 3) }, garbage: 0xee },
      { rec: { canId: (0x1abcdef0 | EFF) >>> 0, len: 8, data: bytes(8, 7), len8Dlc: 12 } },
      { rec: { canId: (0x7ff | RTR) >>> 0, len: 4 }, garbage: 0xee },
      { rec: { canId: 0x456, len: 13, flags: FDF | BRS, data: bytes(13, 0xab) }, garbage: 0xee },
      { rec: { canId: 0x10, len: 8, data: bytes(8, 5) }, lenByte: 12 }, // classic len > 8: cut to 8
    );
    s.readable();
    const got = takeAll(guest).map(view);
    assert.deepEqual(got, [
      { id: 0x123, extended: false, rtr: false, fd: false, brs: false, len: 3, len8Dlc: 0, data: [1, 2, 3] },
      {
        id: 0x1abcdef0,
        extended: true,
        rtr: false,
        fd: false,
        brs: false,
        len: 8,
        len8Dlc: 12,
        data: [7, 7, 7, 7, 7, 7, 7, 7],
      },
      { id: 0x7ff, extended: false, rtr: true, fd: false, brs: false, len: 4, len8Dlc: 0, data: [] },
      {
        id: 0x456,
        extended: false,
        rtr: false,
        fd: true,
        brs: true,
        len: 16,
        len8Dlc: 0,
        data: [...new Array(13).fill(0xab), 0, 0, 0],
      },
      {
        id: 0x10,
        extended: false,
        rtr: false,
        fd: false,
        brs: false,
        len: 8,
        len8Dlc: 0,
        data: [5, 5, 5, 5, 5, 5, 5, 5],
      },
    ]);
    assert.equal(port.stats.rxFrames, 5);
    assert.equal(port.stats.rxPadded, 1);
    port.close();
  });

  it('allocates no frame or payload per record: one scratch frame, one payload per length', () => {
    const { s, port, guest } = setup();
    const frames = new Set<object>();
    const payloads = new Set<object>();
    const transmit = port.port.transmit.bind(port.port);
    (port.port as { transmit: HubPort['transmit'] }).transmit = (f, token) => {
      frames.add(f);
      payloads.add(f.data);
      return transmit(f, token);
    };
    const lens = [0, 1, 8, 3, 8];
    for (let i = 0; i < 500; i++) {
      const len = lens[i % lens.length]!;
      s.queue.push({ rec: { canId: i & 0x7ff, len, data: new Uint8Array(len).fill(i & 0xff) } });
    }
    for (let k = 0; k < 10 && s.queue.length > 0; k++) s.readable();
    assert.equal(port.stats.rxFrames, 500);
    assert.equal(frames.size, 1, 'the same frame object carries every record');
    assert.equal(payloads.size, 4, 'one payload array per length (0, 1, 3, 8)');
    // The bus copies: what the guest got is intact although the scratch was rewritten 500 times.
    const got = takeAll(guest);
    assert.equal(got.length, 500);
    got.forEach((f, i) => {
      assert.equal(f.id, i & 0x7ff);
      assert.equal(f.len, lens[i % lens.length]);
      assert.ok(f.data.every((b) => b === (i & 0xff)));
    });
    port.close();
  });

  it('reads at most 4 batches of 64 per readiness callback, and stops at a short batch', () => {
    const { s, port, guest } = setup();
    for (let i = 0; i < 1000; i++)
      s.queue.push({ rec: { canId: i & 0x7ff, len: 1, data: Uint8Array.of(i & 0xff) } });
    s.readable();
    assert.equal(port.stats.rxFrames, 256, 'the event loop gets control back after 256 frames');
    assert.equal(s.recvCalls, 4);
    s.readable();
    s.readable();
    s.readable();
    assert.equal(port.stats.rxFrames, 1000);
    assert.equal(s.recvCalls, 16, 'the batch of 232 ended the fourth callback after 4 calls');
    s.readable();
    assert.equal(s.recvCalls, 17, 'an empty socket: one call that returns null');
    assert.equal(takeAll(guest).length, 1000);
    port.close();
  });
});

describe('SocketCanPort receive buffer', () => {
  it('asks for 16 MiB by default and logs what the kernel granted', () => {
    const { s, port, log } = setup();
    assert.equal(DEFAULT_SOCKETCAN_RCVBUF, 16 << 20);
    assert.equal(s.opens[0]!.rcvbuf, 16 << 20);
    assert.equal(port.rcvbufBytes, 32 << 20);
    const line = log.lines.find(([, m]) => m === 'socket receive buffer');
    assert.deepEqual(line?.[2], { requested: 16 << 20, effective: 32 << 20 });
    port.close();
  });

  it('warns when the kernel granted less (SO_RCVBUF capped by rmem_max)', () => {
    const s0 = scripted();
    s0.granted = 425984;
    const log = recordingLog();
    const hub = new CanHub({ name: 'cap' });
    const port = new SocketCanPort({
      native: s0.native,
      hub,
      ifname: 'vcan0',
      log,
      checkIntervalMs: 0,
      rcvbuf: 1 << 20,
    });
    assert.equal(port.rcvbufBytes, 425984);
    const warn = log.lines.find(([lvl]) => lvl === 'warn');
    assert.match(warn?.[1] ?? '', /rmem_max/);
    assert.deepEqual(warn?.[2], { requested: 1 << 20, effective: 425984 });
    port.close();
  });

  it('rcvbuf 0 leaves the kernel default; a bad value is refused before any socket exists', () => {
    const { s, port } = setup({ rcvbuf: 0 });
    assert.equal('rcvbuf' in s.opens[0]!, false);
    port.close();
    for (const bad of [-1, 1.5, 2 ** 31]) {
      const s1 = scripted();
      assert.throws(
        () =>
          new SocketCanPort({
            native: s1.native,
            hub: new CanHub({ name: 'bad' }),
            ifname: 'vcan0',
            log: recordingLog(),
            checkIntervalMs: 0,
            rcvbuf: bad,
          }),
        { code: 'ERR_HOST_CAN_OPTION' },
      );
      assert.equal(s1.opens.length, 0);
    }
  });
});
