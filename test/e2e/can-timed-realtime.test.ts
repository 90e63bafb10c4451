// The timed bus with a real Linux guest and the daemon tuned for timing, as `--realtime
// --cpu-latency=0` tunes it: the daemon's thread (this process's main thread: the e2e runs embed
// the daemon) under SCHED_FIFO 10 and the kernel's CPU latency limit held at 0.
// - a guest flooding a 500 kbit/s bus still gets exactly the bus's rate;
// - QEMU, started after the switch, and every one of its threads run under SCHED_OTHER
//   (SCHED_RESET_ON_FORK): a TCG guest at real-time priority would starve the machine;
// - the limit reads 0 while held and is back once released.
// In its own file: the switch lasts as long as the test process. This process must run with the
// command's node options (--single-threaded-gc): without it, in 6 of 9 runs the guest's flood
// stopped once for 36-111 ms, the real-time main thread busy with V8's incremental marking and
// sweeping tasks while the helper threads they wait for queued behind it on its CPU.
import { test } from 'node:test';
import { enterRealtime, holdCpuLatency, REALTIME_NODE_FLAGS } from '../../src/node/realtime.js';
import {
  cpuLatencySkip,
  fifoSkip,
  readCpuLatency,
  type ThreadSched,
  threadSched,
  threadsOf,
} from '../helpers/realtime.js';
import { skipWithoutKit, withRun } from './helpers/can-scenarios.js';
import { floodTimedBus } from './helpers/timed-flood.js';

test(
  'timed bus under SCHED_FIFO with idle CPUs polling: a real guest flooding 500 kbit/s gets the exact rate; QEMU stays SCHED_OTHER',
  { skip: skipWithoutKit ?? fifoSkip ?? cpuLatencySkip },
  withRun('timed-realtime-500k', async (run, t) => {
    // Run as the command runs node (scripts/run-tests.mjs passes the options to every test file).
    for (const f of REALTIME_NODE_FLAGS) run.ok(process.execArgv.includes(f), `this process runs with ${f}`);
    const before = readCpuLatency();
    run.startDaemon(1, { timing: { default: { bitrate: 500_000 } } });
    run.equal(enterRealtime(10), { policy: 'SCHED_FIFO', priority: 10 }, 'the main thread switched');
    const hold = holdCpuLatency(0);
    try {
      run.equal(readCpuLatency(), 0, 'the CPU latency limit is held at 0');
      const qemu: { pid: number; threads: ThreadSched[] }[] = [];
      const figures = await floodTimedBus(run, t, 500_000, 10_000, (g) => {
        qemu.push({ pid: g.pid!, threads: threadsOf(g.pid!) });
      });
      run.equal(threadSched(process.pid, process.pid).policy, 1, 'still SCHED_FIFO after the flood');
      run.ok(qemu.length === 1 && qemu[0]!.threads.length > 1, 'QEMU and its threads were seen');
      run.equal(
        qemu[0]!.threads.filter((x) => x.policy !== 0 || x.rtPriority !== 0),
        [],
        `every QEMU thread is SCHED_OTHER (pid ${qemu[0]!.pid})`,
      );
      run.ok(
        Math.abs(figures.deliveredOverExact - 1) < 0.01,
        `delivered/exact rate ${figures.deliveredOverExact} (within 1 %)`,
      );
    } finally {
      hold.release();
    }
    run.equal(readCpuLatency(), before, 'the limit is back once released');
  }),
);
