// Real-time scheduling in tests: reading a thread's class from /proc, and whether this machine lets
// the tests use SCHED_FIFO (root or CAP_SYS_NICE) and take that right away (util-linux setpriv and
// prlimit). The tests skip with the reason outside CI and fail in CI, which runs as root.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, readSync } from 'node:fs';

/** A thread's scheduling fields of /proc/PID/task/TID/stat: rt_priority (40) and policy (41). */
export interface ThreadSched {
  tid: number;
  rtPriority: number;
  /** 0 SCHED_OTHER, 1 SCHED_FIFO, 2 SCHED_RR, 3 SCHED_BATCH, 5 SCHED_IDLE. */
  policy: number;
}

export function threadSched(pid: number, tid: number): ThreadSched {
  const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
  // Field 2 (comm) is in parentheses and may hold spaces: count from the last ')', which ends
  // field 2, so the fields after it start at field 3.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const field = (n: number): number => Number(rest[n - 3]);
  return { tid, rtPriority: field(40), policy: field(41) };
}

/** Every thread of process `pid`. */
export function threadsOf(pid: number): ThreadSched[] {
  return readdirSync(`/proc/${pid}/task`).map((t) => threadSched(pid, Number(t)));
}

/** The command prefix that runs a program without CAP_SYS_NICE and with RLIMIT_RTPRIO 0. */
export const WITHOUT_SYS_NICE = [
  'prlimit',
  '--rtprio=0',
  'setpriv',
  '--inh-caps=-sys_nice',
  '--ambient-caps=-sys_nice',
  '--bounding-set=-sys_nice',
  '--',
];

function probe(): { fifo?: string; refuse?: string } {
  const out: { fifo?: string; refuse?: string } = {};
  const ok = spawnSync('chrt', ['-f', '1', 'true'], { encoding: 'utf8' });
  if (ok.error !== undefined || ok.status !== 0) {
    out.fifo = `SCHED_FIFO is refused here (needs root or CAP_SYS_NICE): ${ok.error?.message ?? ok.stderr.trim()}`;
  }
  if (process.getuid?.() !== 0) out.refuse = 'dropping CAP_SYS_NICE with setpriv needs root';
  else {
    const r = spawnSync(WITHOUT_SYS_NICE[0]!, [...WITHOUT_SYS_NICE.slice(1), 'true'], { encoding: 'utf8' });
    if (r.error !== undefined || r.status !== 0) {
      out.refuse = `util-linux prlimit/setpriv cannot drop CAP_SYS_NICE: ${r.error?.message ?? r.stderr.trim()}`;
    }
  }
  return out;
}

const why = probe();
if (process.env.CI && (why.fifo !== undefined || why.refuse !== undefined)) {
  throw new Error(`real-time tests must run under CI, but: ${why.fifo ?? why.refuse}`);
}
/** The `skip` option of tests that need SCHED_FIFO granted. */
export const fifoSkip: string | undefined = why.fifo;
/** The `skip` option of tests that need SCHED_FIFO refused by dropping CAP_SYS_NICE. */
export const refuseSkip: string | undefined = why.refuse;

/** The kernel's PM QoS CPU latency limit now (microseconds), as /dev/cpu_dma_latency reads. */
export function readCpuLatency(): number {
  const fd = openSync('/dev/cpu_dma_latency', 'r');
  try {
    const v = new Int32Array(1);
    assert.equal(readSync(fd, new Uint8Array(v.buffer), 0, 4, null), 4);
    return v[0]!;
  } finally {
    closeSync(fd);
  }
}

function cpuLatencyProbe(): string | undefined {
  if (process.getuid?.() !== 0) return "/dev/cpu_dma_latency is root's: these tests need root";
  if (!existsSync('/dev/cpu_dma_latency')) return 'this kernel has no /dev/cpu_dma_latency (CONFIG_CPU_IDLE)';
  return undefined;
}
const whyLatency = cpuLatencyProbe();
if (process.env.CI && whyLatency !== undefined) {
  throw new Error(`CPU latency tests must run under CI, but: ${whyLatency}`);
}
/** The `skip` option of tests that hold the real CPU latency limit (root, and the device present). */
export const cpuLatencySkip: string | undefined = whyLatency;
