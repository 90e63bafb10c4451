/**
 * /proc readers for the benchmarks: CPU time of a process (utime + stime), the machine's CPU
 * counters (to see how busy the rest of the machine was) and the memory lines of
 * /proc/<pid>/status. Linux only, like the daemon.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

/** Clock ticks per second of /proc/<pid>/stat (USER_HZ); 100 on every usual Linux build. */
export const CLK_TCK: number = (() => {
  try {
    const n = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    return Number.isInteger(n) && n > 0 ? n : 100;
  } catch {
    return 100;
  }
})();

/** utime + stime of `pid` in seconds (resolution 1 / CLK_TCK), or NaN once the process is gone. */
export function procCpuSeconds(pid: number): number {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return Number.NaN;
  }
  // The command name (field 2) is in parentheses and may contain spaces: split after the last ')'.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
  return (Number(rest[11]) + Number(rest[12])) / CLK_TCK;
}

export interface MachineCpu {
  /** Seconds of CPU time spent busy (all cores), and in total (busy + idle + iowait). */
  busy: number;
  total: number;
}

/** The aggregate "cpu" line of /proc/stat, in seconds. */
export function machineCpu(): MachineCpu {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!;
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest and guest_nice are inside user/nice)
  const idle = (v[3] ?? 0) + (v[4] ?? 0);
  let total = 0;
  for (let i = 0; i < Math.min(v.length, 8); i++) total += v[i]!;
  return { busy: (total - idle) / CLK_TCK, total: total / CLK_TCK };
}

export interface ProcMemory {
  /** kB, from /proc/<pid>/status */
  vmRss: number;
  vmHwm: number;
  rssAnon: number;
  rssFile: number;
  rssShmem: number;
}

export function procMemory(pid: number): ProcMemory {
  const text = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key: string): number => {
    const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text);
    return m ? Number(m[1]) : Number.NaN;
  };
  return {
    vmRss: kb('VmRSS'),
    vmHwm: kb('VmHWM'),
    rssAnon: kb('RssAnon'),
    rssFile: kb('RssFile'),
    rssShmem: kb('RssShmem'),
  };
}

export function loadAverage(): number[] {
  return readFileSync('/proc/loadavg', 'utf8').trim().split(/\s+/).slice(0, 3).map(Number);
}

export function cpuCount(): number {
  return readFileSync('/proc/stat', 'utf8')
    .split('\n')
    .filter((l) => /^cpu\d+ /.test(l)).length;
}
