/**
 * One process of the socketcand benchmark (bench/phases/socketcand.ts), driven over IPC: a
 * vhost-device-can daemon composition (startCanDaemon, no guests) with a socketcand server and/or a
 * socketcand link on bus "default", plus two bus ports of its own: a generator that puts classic
 * 8-byte frames on the bus as fast as the way out (the link's or the server client's port queue)
 * takes them, and a counter that takes every frame the bus delivers.
 *
 * Requests (process.send): {op:'start', listen?:true, link?:URL} -> {port};
 * {op:'up'} -> resolves once the link or a server client is in raw mode; {op:'window', ms, gen} ->
 * {sent, received, ms, cpuUs, dropped} over the window (cpuUs: the whole process, user + system);
 * {op:'inproc', ms} -> the same for generator -> counter on an in-process bus with nothing else.
 */
import { makeCanFrame } from '../../src/core/bus/can-frame.js';
import { type CanHub, type HubPort, HubRegistry } from '../../src/core/bus/hub.js';
import { type CanDaemon, startCanDaemon } from '../../src/node/can/can-daemon.js';
import { batchClock } from '../../src/node/clock.js';
import type { SocketcandLink } from '../../src/node/net/socketcand-link.js';

let can: CanDaemon | null = null;
let gen: HubPort | null = null;
let counted = 0;

function attachPorts(hub: CanHub): HubPort {
  const counter: HubPort = hub.attach(
    {
      onFramesAvailable() {
        for (let f = counter.take(); f !== undefined; f = counter.take()) {
          counted++;
          counter.release(f);
        }
      },
    },
    { name: 'bench-counter', releasesFrames: true, queueLimit: 65536 },
  );
  const g = hub.attach({ onFramesAvailable() {} }, { name: 'bench-gen' });
  g.setReceiving(false); // it only sends
  return g;
}

/** The queue the generator must not overrun: the link's port, or the server client's. */
function outQueue(hub: CanHub): HubPort | undefined {
  return hub.ports().find((p) => p.name.startsWith('socketcand:'));
}

const frame = makeCanFrame({ id: 0x123, data: [1, 2, 3, 4, 5, 6, 7, 8] });

/** Generates for `ms` (keeping the way out's queue from overflowing); resolves with frames sent. */
function generate(port: HubPort, ms: number, limit: () => number): Promise<number> {
  return new Promise((resolve) => {
    const end = performance.now() + ms;
    let sent = 0;
    const burst = (): void => {
      if (performance.now() >= end) {
        resolve(sent);
        return;
      }
      const room = limit();
      for (let i = 0; i < room && i < 1024; i++) {
        port.transmit(frame);
        sent++;
      }
      setImmediate(burst);
    };
    burst();
  });
}

async function window(ms: number, doGen: boolean, hub: CanHub, limit: () => number): Promise<object> {
  counted = 0;
  const d0 = hub.stats().droppedOverflow;
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  let sent = 0;
  if (doGen) sent = await generate(gen!, ms, limit);
  else await new Promise((r) => setTimeout(r, ms));
  const elapsed = performance.now() - t0;
  const c = process.cpuUsage(c0);
  return {
    sent,
    received: counted,
    ms: elapsed,
    cpuUs: c.user + c.system,
    dropped: hub.stats().droppedOverflow - d0,
  };
}

process.on(
  'message',
  async (m: { op: string; listen?: boolean; link?: string; ms?: number; gen?: boolean }) => {
    try {
      if (m.op === 'start') {
        can = startCanDaemon({
          paths: [],
          buses: [],
          ...(m.listen ? { socketcand: { listen: { host: '127.0.0.1', port: 0 } } } : {}),
          ports: m.link ? [{ kind: 'link', bus: 'default', value: m.link }] : [],
        });
        if (can.socketcand !== null) await can.socketcand.ready;
        gen = attachPorts(can.hubs.get('default'));
        process.send!({ port: can.socketcand?.address.port ?? 0 });
      } else if (m.op === 'up') {
        const hub = can!.hubs.get('default');
        for (let i = 0; i < 1000; i++) {
          const link = can!.attachments.find((a) => a.kind === 'link') as SocketcandLink | undefined;
          const ok = link ? link.state === 'up' : can!.socketcand!.clients().some((c) => c.mode === 'raw');
          if (ok && outQueue(hub) !== undefined) break;
          await new Promise((r) => setTimeout(r, 10));
        }
        await new Promise((r) => setTimeout(r, 200)); // past the server's hold after rawmode
        process.send!({ up: true });
      } else if (m.op === 'window') {
        const hub = can!.hubs.get('default');
        const q = outQueue(hub)!;
        process.send!(await window(m.ms!, m.gen!, hub, () => q.queueLimit - q.queued - 1));
      } else if (m.op === 'inproc') {
        const hubs = new HubRegistry({ clock: batchClock() });
        const hub = hubs.get('default');
        gen = attachPorts(hub);
        const counter = hub.ports().find((p) => p.name === 'bench-counter')!;
        process.send!(await window(m.ms!, true, hub, () => counter.queueLimit - counter.queued - 1));
        hubs.closeAll();
      } else if (m.op === 'stop') {
        can?.stop();
        process.send!({ stopped: true });
        setTimeout(() => process.exit(0), 50);
      }
    } catch (err) {
      process.send!({ error: (err as Error).stack ?? String(err) });
    }
  },
);
