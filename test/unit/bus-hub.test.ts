import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type CanFrame, makeCanFrame } from '../../src/core/bus/can-frame.js';
import { BusError, CanHubError } from '../../src/core/bus/errors.js';
import {
  type AttachOptions,
  type BusPortHandler,
  type BusState,
  CanHub,
  type CanHubOptions,
  type HubPort,
  HubRegistry,
} from '../../src/core/bus/hub.js';
import { RingQueue } from '../../src/core/bus/ring-queue.js';

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof BusError, `expected a BusError, got ${String(err)}`);
    return err.code;
  }
  assert.fail('expected a throw');
}

interface Node {
  port: HubPort;
  got: CanFrame[];
  states: BusState[];
  notified: number;
  /** Runs inside onFramesAvailable, after draining (when draining). */
  onFrame?: (f: CanFrame) => void;
}

/** Attaches a port whose handler records (and, with drain, takes) every frame. */
function node(hub: CanHub, name: string, opts: Partial<AttachOptions> & { drain?: boolean } = {}): Node {
  const { drain = true, ...attachOpts } = opts;
  const n = { got: [], states: [], notified: 0 } as unknown as Node;
  const handler: BusPortHandler = {
    onFramesAvailable() {
      n.notified++;
      if (!drain) return;
      for (let f = n.port.take(); f !== undefined; f = n.port.take()) {
        n.got.push(f);
        n.onFrame?.(f);
      }
    },
    onBusState(s) {
      n.states.push(s);
    },
  };
  n.port = hub.attach(handler, { name, ...attachOpts });
  return n;
}

function counter(start = 0n, step = 1n): () => bigint {
  let t = start - step;
  return () => {
    t += step;
    return t;
  };
}

const f1 = makeCanFrame({ id: 0x100, data: [1, 2, 3] });
const f2 = makeCanFrame({ id: 0x200, data: [4] });
const fdFrame = makeCanFrame({ id: 0x300, fd: true, brs: true, data: new Uint8Array(12) });
const rtrFrame = makeCanFrame({ id: 0x400, rtr: true, len: 2 });

describe('CanHub fan-out', () => {
  it('delivers to every other port in attach order, never back to the sender', () => {
    const hub = new CanHub({ name: 'b', clock: counter(1000n) });
    const order: string[] = [];
    const a = node(hub, 'a');
    const b = node(hub, 'b');
    const c = node(hub, 'c');
    for (const n of [a, b, c]) n.onFrame = () => order.push(n.port.name);
    assert.equal(b.port.transmit(f1), 'sent');
    assert.deepEqual(order, ['a', 'c']);
    assert.equal(b.got.length, 0);
    assert.equal(a.got.length, 1);
    // One stamped object, shared by all receivers; the data is a copy, not the sender's buffer.
    assert.equal(a.got[0], c.got[0]);
    const got = a.got[0]!;
    assert.notEqual(got.data, f1.data);
    assert.deepEqual(got.data, f1.data);
    assert.equal(got.timestampNs, 1000n);
    assert.equal(got.origin, b.port.id);
    assert.equal(f1.timestampNs, 0n, 'the sender frame is not modified');
    assert.deepEqual({ ...got, timestampNs: 0n, origin: 0 }, f1);
  });

  it('port ids start at 1 and are never reused', () => {
    const hub = new CanHub({ name: 'ids' });
    const a = node(hub, 'a');
    const b = node(hub, 'b');
    b.port.detach();
    const c = node(hub, 'b');
    assert.deepEqual([a.port.id, b.port.id, c.port.id], [1, 2, 3]);
  });

  it('notifies after the frame was queued to all receivers, once per frame', () => {
    const hub = new CanHub({ name: 'n' });
    const seen: number[] = [];
    let second: Node | undefined;
    // The first receiver in attach order already sees the frame queued at the second one.
    const first = hub.attach(
      {
        onFramesAvailable() {
          seen.push(second!.port.queued);
        },
      },
      { name: 'first' },
    );
    second = node(hub, 'second', { drain: false });
    const sender = node(hub, 'sender');
    sender.port.transmit(f1);
    sender.port.transmit(f2);
    assert.deepEqual(seen, [1, 2]);
    assert.equal(second.notified, 2);
    assert.equal(first.queued, 2);
  });

  it('keeps FIFO order across ring wrap-around and growth', () => {
    const hub = new CanHub({ name: 'w', queueLimit: 100 });
    const tx = node(hub, 'tx');
    const rx = node(hub, 'rx', { drain: false });
    const frames = Array.from({ length: 150 }, (_, i) => makeCanFrame({ id: i, data: [i & 0xff] }));
    const taken: number[] = [];
    for (let i = 0; i < 50; i++) tx.port.transmit(frames[i]!);
    for (let i = 0; i < 30; i++) taken.push(rx.port.take()!.id);
    for (let i = 50; i < 120; i++) tx.port.transmit(frames[i]!);
    assert.equal(rx.port.queued, 90);
    assert.equal(rx.port.peek()!.id, 30);
    for (let f = rx.port.take(); f !== undefined; f = rx.port.take()) taken.push(f.id);
    assert.deepEqual(
      taken,
      Array.from({ length: 120 }, (_, i) => i),
    );
    assert.equal(rx.port.take(), undefined);
    assert.equal(rx.port.peek(), undefined);
  });
});

describe('CanHub receive policies', () => {
  it('a full queue drops for that receiver only; the sender still gets sent', () => {
    const hub = new CanHub({ name: 'o', queueLimit: 8 });
    const tx = node(hub, 'tx');
    const slow = node(hub, 'slow', { drain: false, queueLimit: 2 });
    const fast = node(hub, 'fast');
    for (let i = 0; i < 5; i++) assert.equal(tx.port.transmit(makeCanFrame({ id: i })), 'sent');
    assert.equal(slow.port.queued, 2);
    assert.equal(slow.port.queueLimit, 2);
    assert.equal(slow.port.stats.rxDroppedOverflow, 3);
    assert.equal(slow.port.stats.rxFrames, 2);
    assert.equal(slow.notified, 2);
    assert.deepEqual([slow.port.take()!.id, slow.port.take()!.id], [0, 1]);
    assert.equal(fast.got.length, 5);
    assert.equal(fast.port.queueLimit, 8);
    assert.equal(hub.stats().droppedOverflow, 3);
  });

  it('the accept policy filters frame types (RTR needs classic and rtr)', () => {
    const hub = new CanHub({ name: 'p' });
    const tx = node(hub, 'tx');
    const classicOnly = node(hub, 'classic', { accept: { classic: true, fd: false, rtr: false } });
    const fdOnly = node(hub, 'fd', { accept: { classic: false, fd: true, rtr: true } });
    const all = node(hub, 'all');
    for (const f of [f1, fdFrame, rtrFrame]) tx.port.transmit(f);
    assert.deepEqual(
      classicOnly.got.map((f) => f.id),
      [0x100],
    );
    assert.equal(classicOnly.port.stats.rxFiltered, 2);
    assert.deepEqual(
      fdOnly.got.map((f) => f.id),
      [0x300],
    );
    assert.equal(fdOnly.port.stats.rxFiltered, 2);
    assert.equal(all.got.length, 3);
    all.port.setAcceptPolicy({ classic: true, fd: true, rtr: false });
    assert.deepEqual(all.port.acceptPolicy, { classic: true, fd: true, rtr: false });
    tx.port.transmit(rtrFrame);
    assert.equal(all.port.stats.rxFiltered, 1);
    assert.equal(
      code(() => all.port.setAcceptPolicy({ classic: true } as never)),
      'ERR_BUS_INVALID_OPTION',
    );
  });

  it('setReceiving(false) flushes and discards; true resumes', () => {
    const hub = new CanHub({ name: 'r' });
    const tx = node(hub, 'tx');
    const rx = node(hub, 'rx', { drain: false });
    tx.port.transmit(f1);
    tx.port.transmit(f2);
    assert.equal(rx.port.setReceiving(false), 2);
    assert.equal(rx.port.receiving, false);
    assert.equal(rx.port.queued, 0);
    tx.port.transmit(f1);
    assert.equal(rx.notified, 2, 'no notification while not receiving');
    assert.equal(rx.port.stats.rxDiscardedClosed, 3);
    assert.equal(rx.port.setReceiving(false), 0);
    assert.equal(rx.port.setReceiving(true), 0);
    tx.port.transmit(f2);
    assert.equal(rx.port.take()!.id, 0x200);
    assert.equal(rx.port.stats.rxFrames, 3);
  });

  it('refuses invalid frames at the edge', () => {
    const hub = new CanHub({ name: 'v' });
    const tx = node(hub, 'tx');
    const rx = node(hub, 'rx');
    assert.equal(tx.port.transmit({ ...f1, len: 7 }), 'dropped');
    assert.equal(tx.port.transmit({ ...f1, id: 0x800 }), 'dropped');
    assert.equal(tx.port.stats.txRejected, 2);
    assert.equal(tx.port.stats.txFrames, 0);
    assert.equal(rx.got.length, 0);
    assert.equal(hub.stats().frames, 0);
  });
});

describe('CanHub detach and close', () => {
  it('a detached port is refused, flushed, and skipped', () => {
    const hub = new CanHub({ name: 'd' });
    const a = node(hub, 'a');
    const b = node(hub, 'b', { drain: false });
    a.port.transmit(f1);
    b.port.detach();
    b.port.detach();
    assert.equal(b.port.attached, false);
    assert.equal(b.port.stats.rxDiscardedClosed, 1);
    assert.equal(b.port.take(), undefined);
    assert.equal(b.port.transmit(f1), 'dropped');
    assert.equal(b.port.stats.txRejected, 1);
    assert.equal(b.port.setReceiving(true), 0);
    a.port.transmit(f2);
    assert.equal(b.port.stats.rxFrames, 1);
    assert.deepEqual(
      hub.ports().map((p) => p.name),
      ['a'],
    );
    // The name is free again.
    node(hub, 'b');
  });

  it('close detaches everything, is idempotent and refuses attach', () => {
    const hub = new CanHub({ name: 'c' });
    const a = node(hub, 'a');
    const b = node(hub, 'b', { drain: false });
    a.port.transmit(f1);
    hub.close();
    hub.close();
    assert.equal(hub.closed, true);
    assert.equal(hub.ports().length, 0);
    assert.equal(a.port.attached, false);
    assert.equal(b.port.stats.rxDiscardedClosed, 1);
    assert.equal(a.port.transmit(f1), 'dropped');
    assert.equal(
      code(() => node(hub, 'z')),
      'ERR_BUS_CLOSED',
    );
  });
});

describe('CanHub re-entrancy', () => {
  it('a transmit from inside a handler is deferred, FIFO, and returns sent', () => {
    const hub = new CanHub({ name: 'e', clock: counter(1n) });
    const a = node(hub, 'a');
    const b = node(hub, 'b');
    const c = node(hub, 'c');
    const d = node(hub, 'd');
    const log: string[] = [];
    const reply = (n: Node, id: number) => (f: CanFrame) => {
      if (f.id !== 0x100) return;
      const r = n.port.transmit(makeCanFrame({ id }));
      // Deferred: nobody has the reply yet when transmit returns.
      log.push(`${n.port.name}:${r}:${d.got.length + d.port.queued}`);
    };
    b.onFrame = reply(b, 0x1b);
    c.onFrame = reply(c, 0x1c);
    assert.equal(a.port.transmit(f1), 'sent');
    assert.deepEqual(log, ['b:sent:1', 'c:sent:1']);
    assert.deepEqual(
      d.got.map((f) => f.id),
      [0x100, 0x1b, 0x1c],
    );
    assert.deepEqual(
      a.got.map((f) => f.id),
      [0x1b, 0x1c],
    );
    assert.deepEqual(
      b.got.map((f) => f.id),
      [0x100, 0x1c],
    );
    assert.deepEqual(
      c.got.map((f) => f.id),
      [0x100, 0x1b],
    );
    // Timestamps are taken at transmit time, so they increase along every receiver's queue.
    assert.deepEqual(
      d.got.map((f) => f.timestampNs),
      [1n, 2n, 3n],
    );
  });

  it('chains of replies run iteratively, not recursively', () => {
    const hub = new CanHub({ name: 'chain', queueLimit: 4 });
    const a = node(hub, 'a');
    const b = node(hub, 'b');
    let depth = 0;
    let maxDepth = 0;
    const bounce = (n: Node) => (f: CanFrame) => {
      depth++;
      maxDepth = Math.max(maxDepth, depth);
      if (f.id < 5000) n.port.transmit(makeCanFrame({ id: f.id + 1, extended: true }));
      depth--;
    };
    a.onFrame = bounce(a);
    b.onFrame = bounce(b);
    a.port.transmit(makeCanFrame({ id: 0, extended: true }));
    assert.equal(maxDepth, 1);
    assert.equal(a.got.length + b.got.length, 5001);
    assert.equal(b.got.at(-1)!.id, 5000);
  });

  it('a port attached during fan-out misses the current frame but gets later ones', () => {
    const hub = new CanHub({ name: 'late' });
    const a = node(hub, 'a');
    const b = node(hub, 'b');
    let late: Node | undefined;
    b.onFrame = (f) => {
      if (f.id !== 0x100) return;
      late = node(hub, 'late');
      b.port.transmit(f2);
    };
    node(hub, 'c');
    a.port.transmit(f1);
    assert.deepEqual(
      late!.got.map((f) => f.id),
      [0x200],
    );
  });

  it('a port detached by an earlier handler is not notified', () => {
    const hub = new CanHub({ name: 'det' });
    const a = node(hub, 'a');
    const b = node(hub, 'b');
    const c = node(hub, 'c', { drain: false });
    b.onFrame = () => c.port.detach();
    a.port.transmit(f1);
    assert.equal(c.notified, 0);
    assert.equal(c.port.stats.rxFrames, 1);
    assert.equal(c.port.stats.rxDiscardedClosed, 1);
  });

  it('a handler may close the hub mid fan-out', () => {
    const hub = new CanHub({ name: 'cl' });
    const a = node(hub, 'a');
    const b = node(hub, 'b');
    const c = node(hub, 'c');
    b.onFrame = () => {
      b.port.transmit(f2);
      hub.close();
    };
    assert.equal(a.port.transmit(f1), 'sent');
    assert.equal(c.notified, 0);
    assert.equal(hub.closed, true);
  });
});

describe('CanHub handler errors', () => {
  it('by default: fan-out completes, then transmit throws ERR_BUS_HANDLER_FAILED with the cause', () => {
    const hub = new CanHub({ name: 'err' });
    const a = node(hub, 'a');
    const boom = new Error('boom');
    hub.attach(
      {
        onFramesAvailable() {
          throw boom;
        },
      },
      { name: 'bad' },
    );
    const c = node(hub, 'c');
    try {
      a.port.transmit(f1);
      assert.fail('expected a throw');
    } catch (err) {
      assert.ok(err instanceof CanHubError);
      assert.equal(err.code, 'ERR_BUS_HANDLER_FAILED');
      assert.equal(err.cause, boom);
      assert.equal(err.disposition, 'fatal');
    }
    assert.equal(c.got.length, 1);
    // The hub is consistent afterwards.
    hub.ports()[1]!.detach();
    assert.equal(a.port.transmit(f2), 'sent');
    assert.equal(c.got.length, 2);
  });

  it('with onHandlerError: reported, and transmit returns sent', () => {
    const reported: [unknown, string][] = [];
    const hub = new CanHub({ name: 'err2', onHandlerError: (e, p) => reported.push([e, p.name]) });
    const a = node(hub, 'a');
    const boom = new Error('boom');
    hub.attach(
      {
        onFramesAvailable() {
          throw boom;
        },
      },
      { name: 'bad' },
    );
    assert.equal(a.port.transmit(f1), 'sent');
    assert.deepEqual(reported, [[boom, 'bad']]);
  });
});

describe('CanHub bus state injection', () => {
  it('calls onBusState of the addressed port (by id or name)', () => {
    const hub = new CanHub({ name: 's' });
    const a = node(hub, 'a');
    const b = node(hub, 'b');
    hub.injectBusState('b', 'bus-off');
    hub.injectBusState(a.port.id, 'error-passive');
    assert.deepEqual(b.states, ['bus-off']);
    assert.deepEqual(a.states, ['error-passive']);
    assert.equal(b.port.busState, 'bus-off');
    assert.equal(a.port.busState, 'error-passive');
    // A handler without onBusState is fine.
    hub.attach({ onFramesAvailable() {} }, { name: 'quiet' });
    hub.injectBusState('quiet', 'error-warning');
    assert.equal(
      code(() => hub.injectBusState('nope', 'bus-off')),
      'ERR_BUS_UNKNOWN_PORT',
    );
    assert.equal(
      code(() => hub.injectBusState(99, 'bus-off')),
      'ERR_BUS_UNKNOWN_PORT',
    );
    assert.equal(
      code(() => hub.injectBusState('a', 'broken' as BusState)),
      'ERR_BUS_INVALID_OPTION',
    );
  });
});

describe('CanHub options', () => {
  const bad: [string, CanHubOptions][] = [
    ['empty name', { name: '' }],
    ['queueLimit 0', { name: 'x', queueLimit: 0 }],
    ['queueLimit 1.5', { name: 'x', queueLimit: 1.5 }],
    ['bitrate 0', { name: 'x', bitrate: 0 }],
    ['dataBitrate NaN', { name: 'x', dataBitrate: Number.NaN }],
  ];
  for (const [what, opts] of bad) {
    it(`rejects ${what}`, () => {
      assert.equal(
        code(() => new CanHub(opts)),
        'ERR_BUS_INVALID_OPTION',
      );
    });
  }

  it('rejects bad attach options', () => {
    const hub = new CanHub({ name: 'x' });
    const h: BusPortHandler = { onFramesAvailable() {} };
    hub.attach(h, { name: 'a' });
    assert.equal(
      code(() => hub.attach(h, { name: 'a' })),
      'ERR_BUS_PORT_NAME_IN_USE',
    );
    assert.equal(
      code(() => hub.attach(h, { name: '' })),
      'ERR_BUS_INVALID_OPTION',
    );
    assert.equal(
      code(() => hub.attach(h, { name: 'q', queueLimit: 0 })),
      'ERR_BUS_INVALID_OPTION',
    );
    assert.equal(
      code(() => hub.attach(h, { name: 'e', receiveOwn: true as never })),
      'ERR_BUS_INVALID_OPTION',
    );
    assert.equal(
      code(() => hub.attach({} as BusPortHandler, { name: 'h' })),
      'ERR_BUS_INVALID_OPTION',
    );
    assert.equal(hub.attach(h, { name: 'ok', receiveOwn: false }).name, 'ok');
  });
});

describe('CanHub stats and bus load', () => {
  it('counts frames, payload bytes and bits; snapshots port counters', () => {
    const hub = new CanHub({ name: 'st' });
    const a = node(hub, 'a');
    const b = node(hub, 'b');
    a.port.transmit(f1); // 3 bytes, 47 + 24 bits
    a.port.transmit(rtrFrame); // RTR: no payload, 47 bits
    b.port.transmit(fdFrame); // 12 bytes FD, 17 + 32 + 96 + 13 bits
    const s = hub.stats();
    assert.equal(s.frames, 3);
    assert.equal(s.bytes, 15);
    assert.equal(s.bits, 71 + 47 + 158);
    assert.deepEqual(
      s.ports.map((p) => [
        p.id,
        p.name,
        p.stats.txFrames,
        p.stats.txBytes,
        p.stats.rxFrames,
        p.stats.rxBytes,
      ]),
      [
        [a.port.id, 'a', 2, 3, 1, 12],
        [b.port.id, 'b', 1, 12, 2, 3],
      ],
    );
    a.port.transmit(f1);
    assert.equal(s.ports[0]!.stats.txFrames, 2, 'a snapshot, not the live object');
    assert.equal(a.port.stats.txFrames, 3, 'port.stats is live');
  });

  it('estimates the load over a sliding one-second window', () => {
    let now = 0n;
    const hub = new CanHub({ name: 'load', bitrate: 500_000, dataBitrate: 2_000_000, clock: () => now });
    const a = node(hub, 'a');
    node(hub, 'b');
    assert.equal(hub.stats().busLoad, 0);
    now = 500_000_000n;
    const f8 = makeCanFrame({ id: 1, data: new Uint8Array(8) }); // 111 bits
    for (let i = 0; i < 1000; i++) a.port.transmit(f8);
    now = 950_000_000n;
    // 111000 bits at 500 kbit/s = 0.222 s over a 0.95 s window (0.9 s + 50 ms into the current bucket).
    assert.ok(Math.abs(hub.stats().busLoad - 0.222 / 0.95) < 1e-9);
    now = 1_450_000_000n;
    assert.ok(Math.abs(hub.stats().busLoad - 0.222 / 0.95) < 1e-9, 'still in the window');
    now = 1_500_000_000n;
    assert.equal(hub.stats().busLoad, 0, 'the bucket has left the window');
    // FD with BRS: the data phase runs at dataBitrate.
    now = 10_000_000_000n;
    const fd64 = makeCanFrame({ id: 1, fd: true, brs: true, data: new Uint8Array(64) });
    a.port.transmit(fd64); // 17 + 13 = 30 nominal bits, 549 data-phase bits
    const expected = (30 / 500_000 + 549 / 2_000_000) / 0.9;
    assert.ok(Math.abs(hub.stats().busLoad - expected) < 1e-9);
    // Saturation is clamped to 1.
    for (let i = 0; i < 10_000; i++) a.port.transmit(f8);
    assert.equal(hub.stats().busLoad, 1);
  });
});

describe('CanHub frame reuse (releasesFrames)', () => {
  /** A port that takes frames on demand and releases them when told. */
  function lazy(hub: CanHub, name: string, releasesFrames: boolean): HubPort {
    return hub.attach({ onFramesAvailable() {} }, { name, releasesFrames });
  }
  const frame = (id: number, bytes: number[]): CanFrame => makeCanFrame({ id, data: bytes });
  const plain = (f: CanFrame): object => ({ ...f, data: Array.from(f.data) });

  it('copies the data: the sender may rewrite its buffer after transmit returns', () => {
    const hub = new CanHub({ name: 'copy' });
    const tx = lazy(hub, 'tx', false);
    const rx = lazy(hub, 'rx', true);
    const buf = new Uint8Array([1, 2, 3]);
    tx.transmit({ ...frame(0x10, [0, 0, 0]), data: buf });
    buf.fill(9);
    assert.deepEqual(Array.from(rx.take()!.data), [1, 2, 3]);
  });

  it('reuses a frame only after every releasing receiver released it', () => {
    const hub = new CanHub({ name: 'holds' });
    const tx = lazy(hub, 'tx', false);
    const a = lazy(hub, 'a', true);
    const b = lazy(hub, 'b', true);
    tx.transmit(frame(0x1, [1]));
    const fa = a.take()!;
    a.release(fa);
    a.release(fa); // a stray second release must not give back b's hold
    // b still holds it: new frames must not overwrite it.
    tx.transmit(frame(0x2, [2]));
    tx.transmit(frame(0x3, [3]));
    const fb = b.take()!;
    assert.equal(fb, fa, 'both receivers got the same object');
    assert.deepEqual([fb.id, fb.data[0]], [0x1, 1]);
    assert.equal(hub.stats().framePool.created, 3);
    b.release(fb);
    // Now it is free: the next frame of that length reuses it.
    tx.transmit(frame(0x4, [4]));
    assert.equal(hub.stats().framePool.created, 3);
    assert.equal(hub.stats().framePool.reused, 1);
    for (const p of [a, b]) {
      assert.deepEqual(
        [p.take(), p.take(), p.take()].map((f) => (f === undefined ? null : [f.id, f.data[0]])),
        [
          [0x2, 2],
          [0x3, 3],
          [0x4, 4],
        ],
      );
    }
  });

  it('never reuses a frame a non-releasing receiver may still hold', () => {
    const hub = new CanHub({ name: 'pin' });
    const tx = lazy(hub, 'tx', false);
    const rel = lazy(hub, 'rel', true);
    const keep = lazy(hub, 'keep', false);
    const kept: [CanFrame, object][] = [];
    for (let i = 0; i < 50; i++) {
      tx.transmit(frame(i, [i, i + 1]));
      const f = rel.take()!;
      rel.release(f);
      rel.release(f); // a stray second release is ignored
      const k = keep.take()!;
      kept.push([k, plain(k)]);
    }
    for (const [f, snapshot] of kept) assert.deepEqual(plain(f), snapshot);
    assert.equal(hub.stats().framePool.reused, 0);
  });

  it('allocates nothing once warm, also with lengths that vary, and recycles flushed frames', () => {
    const hub = new CanHub({ name: 'warm' });
    const tx = lazy(hub, 'tx', false);
    const rx = lazy(hub, 'rx', true);
    const lens = [0, 8, 3, 8, 1];
    const round = (n: number): void => {
      for (let i = 0; i < n; i++) {
        const len = lens[i % lens.length]!;
        tx.transmit(makeCanFrame({ id: i & 0x7ff, data: new Uint8Array(len).fill(i & 0xff) }));
        if (i % 4 === 3) {
          for (let f = rx.take(); f !== undefined; f = rx.take()) {
            assert.equal(f.data.length, f.len);
            rx.release(f);
          }
        }
      }
    };
    round(100);
    const warm = hub.stats().framePool.created;
    round(1000);
    assert.equal(hub.stats().framePool.created, warm, 'no new frames once warm');
    // Frames flushed by setReceiving(false) and detach are given back too.
    round(3);
    assert.ok(rx.queued > 0);
    rx.setReceiving(false);
    rx.setReceiving(true);
    round(3);
    rx.detach();
    round(1000);
    const s = hub.stats().framePool;
    assert.ok(s.free > 0 && s.free <= warm);
  });

  it('keeps as many free frames as the releasing queues can hold, so a full backlog is recycled too', () => {
    const hub = new CanHub({ name: 'deep' });
    const tx = lazy(hub, 'tx', false);
    const rx = hub.attach({ onFramesAvailable() {} }, { name: 'rx', releasesFrames: true, queueLimit: 6000 });
    const f = frame(0x7, [7]);
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < 6000; i++) tx.transmit(f);
      assert.equal(rx.queued, 6000);
      for (let g = rx.take(); g !== undefined; g = rx.take()) rx.release(g);
    }
    assert.equal(hub.stats().framePool.created, 6000, 'the second and third rounds reuse all 6000');
    assert.equal(hub.stats().framePool.free, 6000);
  });

  it('refuses releasesFrames together with confirmsTransmit, or as a non-boolean', () => {
    assert.equal(
      code(() =>
        new CanHub({ name: 'type' }).attach(
          { onFramesAvailable() {} },
          { name: 'x', releasesFrames: 'yes' as unknown as boolean },
        ),
      ),
      'ERR_BUS_INVALID_OPTION',
    );
    const hub = new CanHub({ name: 'excl' });
    assert.equal(
      code(() =>
        hub.attach({ onFramesAvailable() {} }, { name: 'x', releasesFrames: true, confirmsTransmit: true }),
      ),
      'ERR_BUS_INVALID_OPTION',
    );
  });
});

describe('HubRegistry', () => {
  it('creates hubs on demand with the defaults and closes them all', () => {
    const reg = new HubRegistry({ queueLimit: 3 });
    assert.equal(reg.has('bus0'), false);
    const h = reg.get('bus0');
    assert.equal(reg.get('bus0'), h);
    assert.equal(h.name, 'bus0');
    reg.get('bus1');
    assert.deepEqual(reg.names(), ['bus0', 'bus1']);
    assert.equal(reg.has('bus0'), true);
    const p = h.attach({ onFramesAvailable() {} }, { name: 'p' });
    assert.equal(p.queueLimit, 3);
    h.close();
    assert.equal(reg.has('bus0'), false);
    assert.deepEqual(reg.names(), ['bus1']);
    const h2 = reg.get('bus0');
    assert.notEqual(h2, h);
    reg.closeAll();
    reg.closeAll();
    assert.equal(h2.closed, true);
    assert.deepEqual(reg.names(), []);
    assert.equal(
      code(() => reg.get('')),
      'ERR_BUS_INVALID_OPTION',
    );
  });
});

describe('RingQueue', () => {
  it('is a FIFO that grows and wraps', () => {
    const q = new RingQueue<number>(2);
    assert.equal(q.capacity, 2);
    const out: number[] = [];
    let next = 0;
    for (let round = 0; round < 50; round++) {
      for (let k = 0; k < (round % 7) + 1; k++) q.push(next++);
      for (let k = 0; k < (round % 5) + 1; k++) {
        const v = q.shift();
        if (v !== undefined) out.push(v);
      }
    }
    for (let v = q.shift(); v !== undefined; v = q.shift()) out.push(v);
    assert.deepEqual(
      out,
      Array.from({ length: next }, (_, i) => i),
    );
    q.push(1);
    q.push(2);
    assert.equal(q.peek(), 1);
    assert.equal(q.clear(), 2);
    assert.equal(q.size, 0);
    assert.equal(q.shift(), undefined);
  });
});

describe('observers (observes: true)', () => {
  it('see every frame of the others in bus order, counted, never queued, never their own', () => {
    const hub = new CanHub({ name: 'obs', clock: () => 7n });
    const seen: string[] = [];
    const obs = hub.attach(
      {
        onFramesAvailable: () => assert.fail('an observer is never notified'),
        onFrame: (f) => seen.push(`${f.id.toString(16)}@${f.timestampNs}/${f.origin}`),
      },
      { name: 'cap', observes: true },
    );
    const a = node(hub, 'a');
    const b = node(hub, 'b');
    a.port.transmit(makeCanFrame({ id: 0x10, data: [1, 2] }));
    b.port.transmit(makeCanFrame({ id: 0x20, data: [3] }));
    a.port.transmit(makeCanFrame({ id: 0x30, rtr: true, len: 4 }));
    assert.deepEqual(seen, [`10@7/${a.port.id}`, `20@7/${b.port.id}`, `30@7/${a.port.id}`]);
    assert.equal(obs.observes, true);
    assert.equal(obs.queued, 0);
    assert.equal(obs.take(), undefined);
    assert.equal(obs.stats.rxFrames, 3);
    assert.equal(obs.stats.rxBytes, 3); // payload bytes: 2 + 1 + 0 (RTR)
    // The observer's own transmit reaches the others, not itself.
    obs.transmit(makeCanFrame({ id: 0x40 }));
    assert.equal(seen.length, 3);
    assert.equal(a.got.at(-1)?.id, 0x40);
  });

  it('keep their accept policy; a detached observer sees nothing more', () => {
    const hub = new CanHub({ name: 'obs2' });
    const seen: number[] = [];
    const obs = hub.attach(
      { onFramesAvailable: () => {}, onFrame: (f) => seen.push(f.id) },
      { name: 'cap', observes: true, accept: { classic: true, fd: false, rtr: false } },
    );
    const a = node(hub, 'a');
    a.port.transmit(makeCanFrame({ id: 1, fd: true, data: new Uint8Array(12) }));
    a.port.transmit(makeCanFrame({ id: 2, rtr: true }));
    a.port.transmit(makeCanFrame({ id: 3 }));
    assert.deepEqual(seen, [3]);
    assert.equal(obs.stats.rxFiltered, 2);
    obs.detach();
    a.port.transmit(makeCanFrame({ id: 4 }));
    assert.deepEqual(seen, [3]);
  });

  it('a throwing observer is reported like a failing handler; the others still get the frame', () => {
    const reported: string[] = [];
    const hub = new CanHub({ name: 'obs3', onHandlerError: (_e, p) => reported.push(p.name) });
    hub.attach(
      {
        onFramesAvailable: () => {},
        onFrame: () => {
          throw new Error('boom');
        },
      },
      { name: 'bad', observes: true },
    );
    const a = node(hub, 'a');
    const b = node(hub, 'b');
    assert.equal(a.port.transmit(makeCanFrame({ id: 5 })), 'sent');
    assert.deepEqual(reported, ['bad']);
    assert.deepEqual(
      b.got.map((f) => f.id),
      [5],
    );
  });

  it('need onFrame and exclude releasesFrames and confirmsTransmit', () => {
    const hub = new CanHub({ name: 'obs4' });
    const h = { onFramesAvailable: () => {} };
    assert.equal(
      code(() => hub.attach(h, { name: 'x', observes: true })),
      'ERR_BUS_INVALID_OPTION',
    );
    const o = { onFramesAvailable: () => {}, onFrame: () => {} };
    assert.equal(
      code(() => hub.attach(o, { name: 'y', observes: true, releasesFrames: true })),
      'ERR_BUS_INVALID_OPTION',
    );
    assert.equal(
      code(() => hub.attach(o, { name: 'z', observes: true, confirmsTransmit: true })),
      'ERR_BUS_INVALID_OPTION',
    );
    assert.equal(
      code(() => hub.attach(o, { name: 'w', observes: 1 as unknown as boolean })),
      'ERR_BUS_INVALID_OPTION',
    );
  });
});
