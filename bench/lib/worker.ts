/**
 * A load process of the benchmark: hosts benchmark guests (BenchGuest) or baseline socket peers
 * and runs what the orchestrator asks for over the fork() IPC channel (bench/lib/protocol.ts).
 * It exits when the orchestrator goes away (IPC disconnect), closing every guest first.
 */
import { BenchGuest } from './bench-guest.js';
import { ConsoleBenchGuest } from './console-guest.js';
import { ConRelay, ConStreamPeer } from './console-peers.js';
import { LatencyRecorder, type LatencySummary, pacedLoop } from './latency.js';
import type { WorkerCommand, WorkerCommands, WorkerReply, WorkerRequest } from './protocol.js';
import { SockReceiver, SockRelay, SockSender } from './sock-peer.js';

type Handlers = {
  [K in WorkerCommand]: (args: WorkerCommands[K][0]) => Promise<WorkerCommands[K][1]> | WorkerCommands[K][1];
};

const guests = new Map<string, BenchGuest>();
const recorders = new Map<string, LatencyRecorder>();
let sockSender: SockSender | null = null;
let sockReceiver: SockReceiver | null = null;
let sockRelay: SockRelay | null = null;
let sockRecorder: LatencyRecorder | null = null;
const conGuests = new Map<string, ConsoleBenchGuest>();
const conPeers = new Map<string, ConStreamPeer>();
let conRelay: ConRelay | null = null;

function conGuest(key: string): ConsoleBenchGuest {
  const g = conGuests.get(key);
  if (g === undefined) throw new Error(`no console guest "${key}" in worker ${process.pid}`);
  return g;
}

function conPeer(key: string): ConStreamPeer {
  const p = conPeers.get(key);
  if (p === undefined) throw new Error(`no console peer "${key}" in worker ${process.pid}`);
  return p;
}

function conClose(): number {
  const n = conGuests.size + conPeers.size + (conRelay === null ? 0 : 1);
  for (const g of conGuests.values()) g.close();
  for (const p of conPeers.values()) p.close();
  conRelay?.stop();
  conGuests.clear();
  conPeers.clear();
  conRelay = null;
  return n;
}

function guest(key: string): BenchGuest {
  const g = guests.get(key);
  if (g === undefined) throw new Error(`no guest "${key}" in worker ${process.pid}`);
  return g;
}

function flood(g: BenchGuest, batch: number): void {
  const fill = (): void => {
    while (g.txFree >= batch) {
      for (let i = 0; i < batch; i++) g.postSeq(g.counters.sent);
      g.kick();
    }
  };
  g.onTxSpace = fill;
  g.watchTx();
  fill();
}

/** Closed loop: `batch` frames, one kick, then nothing until every one of them completed. */
function closedLoop(g: BenchGuest, batch: number): void {
  const next = (): void => {
    if (g.txFree !== g.queueSize) return;
    for (let i = 0; i < batch; i++) g.postSeq(g.counters.sent);
    g.kick();
  };
  g.onTxSpace = next;
  g.watchTx();
  next();
}

const handlers: Handlers = {
  ping: () => ({ pid: process.pid }),

  async connect(a) {
    if (guests.has(a.key)) throw new Error(`guest "${a.key}" exists`);
    const g = await BenchGuest.connect({
      path: a.path,
      queueSize: a.queueSize,
      lateTxAck: a.lateTxAck,
      canId: a.canId,
    });
    guests.set(a.key, g);
    return { features: `0x${g.features.toString(16)}`, fdNegotiated: g.fdNegotiated };
  },

  close(a) {
    const keys = a.keys ?? [...guests.keys()];
    let n = 0;
    for (const k of keys) {
      const g = guests.get(k);
      if (g === undefined) continue;
      g.close();
      guests.delete(k);
      recorders.delete(k);
      n++;
    }
    return { closed: n };
  },

  'drain-start'(a) {
    for (const k of a.keys) guest(k).watchRx();
    return {};
  },

  'flood-start'(a) {
    for (const k of a.keys) {
      const g = guest(k);
      g.setFrame(a.frame.len, a.frame.fd);
      flood(g, a.batch);
    }
    return {};
  },

  'batch-start'(a) {
    for (const k of a.keys) {
      const g = guest(k);
      g.setFrame(a.frame.len, a.frame.fd);
      closedLoop(g, a.batch);
    }
    return {};
  },

  async 'flood-stop'(a) {
    for (const k of a.keys) guest(k).onTxSpace = null;
    const r = await Promise.all(a.keys.map((k) => guest(k).drainTx(5000)));
    return { drained: r.every(Boolean) };
  },

  counters() {
    const out: Record<string, BenchGuest['counters']> = {};
    for (const [k, g] of guests) out[k] = { ...g.counters };
    const s = sockSender ?? sockReceiver ?? sockRelay;
    const cg: Record<string, ConsoleBenchGuest['counters']> = {};
    for (const [k, g] of conGuests) cg[k] = { ...g.counters };
    const cp: Record<string, ConStreamPeer['counters']> = {};
    for (const [k, p] of conPeers) cp[k] = { ...p.counters };
    return { guests: out, sock: s === null ? null : { ...s.counters }, conGuests: cg, conPeers: cp };
  },

  pingpong(a) {
    const tx = guest(a.sender);
    const rx = guest(a.receiver);
    tx.unwatchTx();
    tx.setFrame(8, false);
    const rec = new LatencyRecorder(a.count, a.warmup);
    const total = a.count + a.warmup;
    const t0 = process.hrtime.bigint();
    return new Promise<LatencySummary & { seconds: number }>((resolve, reject) => {
      const sendOne = (): void => {
        tx.reapTx();
        tx.post(process.hrtime.bigint());
        tx.kick();
      };
      const timer = setTimeout(() => {
        rx.onFrame = null;
        reject(new Error(`ping-pong: ${rec.count} of ${total} frames within ${a.timeoutMs} ms`));
      }, a.timeoutMs);
      rx.onFrame = (gpa, _len, now) => {
        rec.add(Number(now - rx.stampAt(gpa)));
        if (rec.count < total) {
          sendOne();
          return;
        }
        rx.onFrame = null;
        clearTimeout(timer);
        resolve({ ...rec.summary(), seconds: Number(process.hrtime.bigint() - t0) / 1e9 });
      };
      rx.watchRx();
      sendOne();
    });
  },

  'latency-recv-start'(a) {
    const g = guest(a.key);
    const rec = new LatencyRecorder(a.capacity, a.warmup);
    recorders.set(a.key, rec);
    g.onFrame = (gpa, _len, now) => rec.add(Number(now - g.stampAt(gpa)));
    g.watchRx();
    return {};
  },

  'latency-recv-stop'(a) {
    const g = guest(a.key);
    g.onFrame = null;
    const rec = recorders.get(a.key);
    if (rec === undefined) throw new Error(`no latency recording on "${a.key}"`);
    recorders.delete(a.key);
    return { ...rec.summary(), received: rec.count };
  },

  'paced-send'(a) {
    const g = guest(a.key);
    g.unwatchTx();
    g.setFrame(8, false);
    const r = pacedLoop(
      a.rate,
      a.count,
      a.maxSeconds,
      (n) => {
        let k = 0;
        while (k < n && g.post(process.hrtime.bigint())) k++;
        if (k > 0) g.kick();
        return k;
      },
      () => g.reapTx(),
    );
    return r;
  },

  // ---- baseline ---------------------------------------------------------------------------------

  'sock-relay-start'(a) {
    sockRelay = new SockRelay(a.inFd, a.outFd, a.ack);
    sockRelay.start();
    return {};
  },

  'sock-recv-start'(a) {
    sockReceiver = new SockReceiver(a.fd);
    if (a.latency) {
      const rec = new LatencyRecorder(a.capacity, a.warmup);
      sockRecorder = rec;
      sockReceiver.onFrame = (stamp, now) => rec.add(Number(now - stamp));
    }
    sockReceiver.start();
    return {};
  },

  'sock-flood-start'(a) {
    sockSender = new SockSender(a.fd, a.frame.len, a.frame.fd);
    sockSender.startFlood(a.batch, a.frame.len, a.frame.fd);
    return {};
  },

  'sock-batch-start'(a) {
    sockSender = new SockSender(a.fd, a.frame.len, a.frame.fd);
    sockSender.startClosedLoop(a.batch, a.frame.len, a.frame.fd);
    return {};
  },

  'sock-paced-send'(a) {
    const s = new SockSender(a.fd, a.frame.len, a.frame.fd);
    sockSender = s;
    return pacedLoop(
      a.rate,
      a.count,
      a.maxSeconds,
      (n) => s.sendStamped(n),
      () => {},
    );
  },

  'sock-pingpong'(a) {
    const s = new SockSender(a.outFd, a.frame.len, a.frame.fd);
    const r = new SockReceiver(a.inFd);
    sockSender = s;
    sockReceiver = r;
    const rec = new LatencyRecorder(a.count, a.warmup);
    const total = a.count + a.warmup;
    const t0 = process.hrtime.bigint();
    return new Promise<LatencySummary & { seconds: number }>((resolve, reject) => {
      const timer = setTimeout(() => {
        r.onFrame = null;
        reject(new Error(`socket ping-pong: ${rec.count} of ${total} frames within ${a.timeoutMs} ms`));
      }, a.timeoutMs);
      r.onFrame = (stamp, now) => {
        rec.add(Number(now - stamp));
        if (rec.count < total) {
          s.sendStamped(1);
          return;
        }
        r.onFrame = null;
        clearTimeout(timer);
        resolve({ ...rec.summary(), seconds: Number(process.hrtime.bigint() - t0) / 1e9 });
      };
      r.start();
      s.sendStamped(1);
    });
  },

  'sock-latency'() {
    if (sockRecorder === null || sockReceiver === null) throw new Error('no socket latency recording');
    return { ...sockRecorder.summary(), received: sockReceiver.counters.received };
  },

  'sock-stop'() {
    const s = sockSender ?? sockReceiver ?? sockRelay;
    const c = s === null ? null : { ...s.counters };
    sockSender?.stop();
    sockReceiver?.stop();
    sockRelay?.stop();
    sockSender = null;
    sockReceiver = null;
    sockRelay = null;
    return c;
  },

  // ---- console ----------------------------------------------------------------------------------

  async 'con-connect'(a) {
    if (conGuests.has(a.key)) throw new Error(`console guest "${a.key}" exists`);
    const g = await ConsoleBenchGuest.connect({
      path: a.path,
      queueSize: a.queueSize,
      port: a.port ?? 0,
      ...(a.ports === undefined ? {} : { ports: a.ports }),
    });
    conGuests.set(a.key, g);
    return { features: `0x${g.drv.features.toString(16)}` };
  },

  'con-write-start'(a) {
    conGuest(a.key).writeStart(a.chunk);
    return {};
  },

  async 'con-write-stop'(a) {
    return { drained: await conGuest(a.key).writeStop(5000) };
  },

  'con-read-start'(a) {
    conGuest(a.key).readStart(a.mode);
    return {};
  },

  async 'con-peer-connect'(a) {
    if (conPeers.has(a.key)) throw new Error(`console peer "${a.key}" exists`);
    conPeers.set(a.key, await ConStreamPeer.connect(a.addr));
    return {};
  },

  'con-peer-read-start'(a) {
    conPeer(a.key).readStart(a.check);
    return {};
  },

  'con-peer-write-start'(a) {
    conPeer(a.key).writeStart(a.chunk);
    return {};
  },

  async 'con-peer-write-stop'(a) {
    return { drained: await conPeer(a.key).writeStop(5000) };
  },

  'con-peer-echo-start'(a) {
    conPeer(a.key).echoStart();
    return {};
  },

  'con-peer-ping'(a) {
    return conPeer(a.key).ping(a.count, a.warmup, a.timeoutMs);
  },

  async 'con-relay-start'(a) {
    if (conRelay !== null) throw new Error('a relay runs already');
    conRelay = new ConRelay();
    return { port: await conRelay.start(a.path) };
  },

  'con-close'() {
    return { closed: conClose() };
  },
};

function reply(r: WorkerReply): void {
  if (process.connected) process.send?.(r);
}

function shutdown(): void {
  for (const g of guests.values()) g.close();
  guests.clear();
  conClose();
  process.exit(0);
}

process.on('message', (raw: unknown) => {
  const m = raw as WorkerRequest;
  const h = handlers[m.cmd] as ((a: unknown) => unknown) | undefined;
  if (h === undefined) {
    reply({ id: m.id, ok: false, error: `unknown command ${String(m.cmd)}` });
    return;
  }
  Promise.resolve()
    .then(() => h(m.args))
    .then(
      (result) => reply({ id: m.id, ok: true, result: result ?? {} }),
      (err: unknown) => reply({ id: m.id, ok: false, error: (err as Error)?.stack ?? String(err) }),
    );
});
process.on('disconnect', shutdown);
process.on('SIGTERM', shutdown);
