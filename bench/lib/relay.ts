/**
 * The baseline: the same frames through a do-nothing relay process over socketpairs (sender ->
 * relay -> receiver), using the same addon primitives as the device path (sock-peer.ts).
 */
import type { Ctx } from './context.js';
import type { WorkerClient } from './worker-client.js';

export interface BaselineProcs {
  procs: WorkerClient[];
  stop(): Promise<void>;
}

/** Spawns load processes with socket fds (as their fds 4, 5); our copies are closed at once. */
export async function spawnWithSockets(
  ctx: Ctx,
  specs: { name: string; fds: number[] }[],
): Promise<BaselineProcs> {
  const all = specs.flatMap((s) => s.fds);
  let procs: WorkerClient[] = [];
  try {
    procs = await Promise.all(specs.map((s) => ctx.worker(s.name, s.fds)));
  } finally {
    for (const fd of all) ctx.native.close(fd);
  }
  return { procs, stop: async () => void (await Promise.allSettled(procs.map((p) => p.stop()))) };
}

/**
 * The baseline's three processes, sender -> relay -> receiver over two socketpairs (each child sees
 * its sockets as fds 4 and 5), with the receiver and the relay already running; the caller starts
 * the sender and must call `stop()`.
 */
export async function startBaselineRelay(
  ctx: Ctx,
  recv: { latency: boolean; capacity: number; warmup: number },
  ack: boolean,
): Promise<{ snd: WorkerClient; procs: WorkerClient[]; stop: () => Promise<void> }> {
  const [a0, a1] = ctx.native.socketpair();
  const [b0, b1] = ctx.native.socketpair();
  const bp = await spawnWithSockets(ctx, [
    { name: 'blSender', fds: [a0] },
    { name: 'blRelay', fds: [a1, b0] },
    { name: 'blReceiver', fds: [b1] },
  ]);
  const [snd, rly, rcv] = bp.procs as [WorkerClient, WorkerClient, WorkerClient];
  try {
    await rcv.call('sock-recv-start', { fd: 4, ...recv });
    await rly.call('sock-relay-start', { inFd: 4, outFd: 5, ack });
  } catch (err) {
    await bp.stop();
    throw err;
  }
  return { snd, procs: bp.procs, stop: bp.stop };
}
