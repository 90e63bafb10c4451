// enterRealtime (src/node/realtime.ts) with a stand-in for the addon's two scheduling calls: what it
// asks the kernel for, the one log line, and the refusal's message (cause and fix).
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import type { LogFields, Logger } from '../../src/core/util/log.js';
import {
  cpuLatencyRefusal,
  enterRealtime,
  holdCpuLatency,
  REALTIME_NODE_FLAGS,
  RealtimeError,
  realtimeRefusal,
} from '../../src/node/realtime.js';

function recorder(): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  const at =
    (level: string) =>
    (msg: string, f?: LogFields): void => {
      lines.push(`${level} ${msg}${f === undefined ? '' : ` ${JSON.stringify(f)}`}`);
    };
  const log: Logger = {
    error: at('error'),
    warn: at('warn'),
    info: at('info'),
    debug: at('debug'),
    debugEnabled: false,
    child: () => log,
  };
  return { log, lines };
}

function sysErr(code: string, errno: number, text: string): Error {
  return Object.assign(new Error(`sched_setscheduler: ${text}`), {
    code,
    errno,
    syscall: 'sched_setscheduler',
  });
}

test('asks for SCHED_FIFO with reset-on-fork and logs what the kernel reports afterwards', () => {
  const calls: [number, boolean][] = [];
  const { log, lines } = recorder();
  const state = { policy: 'SCHED_OTHER', priority: 0, resetOnFork: false };
  const stub = {
    schedSetFifo(p: number, r: boolean) {
      calls.push([p, r]);
      Object.assign(state, { policy: 'SCHED_FIFO', priority: p, resetOnFork: r });
    },
    schedGet: () => ({ ...state }),
  };
  const execArgv = ['--single-threaded-gc'];
  assert.deepEqual(enterRealtime(42, { native: stub, log, execArgv }), {
    policy: 'SCHED_FIFO',
    priority: 42,
  });
  assert.deepEqual(calls, [[42, true]]);
  assert.deepEqual(lines, ['info realtime: main thread SCHED_FIFO priority 42 {"resetOnFork":true}']);
});

test('node started without --single-threaded-gc: a warning naming the option and the stall', () => {
  const { log, lines } = recorder();
  const state = { policy: 'SCHED_OTHER', priority: 0, resetOnFork: false };
  const stub = {
    schedSetFifo(p: number, r: boolean) {
      Object.assign(state, { policy: 'SCHED_FIFO', priority: p, resetOnFork: r });
    },
    schedGet: () => ({ ...state }),
  };
  enterRealtime(10, { native: stub, log, execArgv: ['--enable-source-maps'] });
  assert.equal(lines.length, 2);
  assert.match(
    lines[1]!,
    /^warn realtime: node was started without --single-threaded-gc: V8's garbage collector then makes the real-time main thread wait for helper threads at normal priority, which can stall it for tens of milliseconds/,
  );
  assert.deepEqual(REALTIME_NODE_FLAGS, ['--single-threaded-gc']);
});

test('the vhost-device-can command and npm start run node with REALTIME_NODE_FLAGS', () => {
  const root = join(import.meta.dirname, '../..');
  const shebang = readFileSync(join(root, 'src/cli/vhost-device-can.ts'), 'utf8').split('\n')[0]!;
  assert.equal(shebang, `#!/usr/bin/env -S node ${REALTIME_NODE_FLAGS.join(' ')}`);
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as {
    scripts: Record<string, string>;
  };
  for (const f of REALTIME_NODE_FLAGS)
    assert.ok(pkg.scripts.start!.split(' ').includes(f), pkg.scripts.start);
});

test('a refusal becomes an ERR_REALTIME error with the cause and the fix; nothing is logged', () => {
  const { log, lines } = recorder();
  const cause = sysErr('EPERM', 1, 'Operation not permitted');
  const stub = {
    schedSetFifo() {
      throw cause;
    },
    schedGet: () => assert.fail('not read after a refusal'),
  };
  const e = (() => {
    try {
      enterRealtime(12, { native: stub, log });
    } catch (x) {
      return x as RealtimeError;
    }
    return assert.fail('no error');
  })();
  assert.ok(e instanceof RealtimeError);
  assert.equal(e.code, 'ERR_REALTIME');
  assert.equal(e.cause, cause);
  assert.match(
    e.message,
    /^--realtime=12: the kernel refused SCHED_FIFO priority 12 for the main thread \(sched_setscheduler: Operation not permitted\): it needs root or CAP_SYS_NICE/,
  );
  assert.match(e.message, /`ulimit -r 12`/);
  assert.deepEqual(lines, []);
});

test('a priority outside 1..99 is a RangeError before the kernel is asked', () => {
  const stub = {
    schedSetFifo: () => assert.fail('not called'),
    schedGet: () => assert.fail('not called'),
  };
  for (const p of [0, 100, 1.5, Number.NaN]) {
    assert.throws(() => enterRealtime(p, { native: stub }), RangeError, String(p));
  }
});

test('EINVAL and other errors name the reason too', () => {
  assert.match(
    realtimeRefusal(sysErr('EINVAL', 22, 'Invalid argument'), 99),
    /^--realtime=99: .*\(sched_setscheduler: Invalid argument\): this kernel does not accept that policy or priority/,
  );
  assert.equal(
    realtimeRefusal(sysErr('ESRCH', 3, 'No such process'), 5),
    '--realtime=5: the kernel refused SCHED_FIFO priority 5 for the main thread (sched_setscheduler: No such process)',
  );
  assert.match(realtimeRefusal('odd', 5), /\(odd\)$/);
});

// holdCpuLatency against a plain file standing in for the device (the real one is covered by
// test/integration/cli-can-realtime.test.ts): what it writes, the line it logs, its errors.
test('holdCpuLatency writes the limit as one binary s32 in host byte order and logs one line', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vdc-lat-'));
  try {
    const device = join(dir, 'dev');
    writeFileSync(device, '');
    const { log, lines } = recorder();
    const hold = holdCpuLatency(1234567, { device, log });
    const bytes = readFileSync(device);
    assert.equal(bytes.length, 4);
    assert.equal(new Int32Array(new Uint8Array(bytes).buffer)[0], 1234567);
    // A plain file reads nothing back after the write: the effective limit is the one asked.
    assert.equal(hold.requestedUs, 1234567);
    assert.equal(hold.effectiveUs, 1234567);
    assert.deepEqual(lines, [
      `info cpu-latency: idle CPUs held to a wake-up latency of at most 1234567 us {"device":"${device}","effectiveUs":1234567}`,
    ]);
    hold.release();
    hold.release();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('holdCpuLatency: a limit outside 0..2000000000 is a RangeError; a missing device an ERR_CPU_LATENCY naming it', () => {
  for (const us of [-1, 2_000_000_001, 0.5, Number.NaN]) {
    assert.throws(() => holdCpuLatency(us, { device: '/nonexistent' }), RangeError, String(us));
  }
  const { log, lines } = recorder();
  assert.throws(
    () => holdCpuLatency(0, { device: '/nonexistent/cpu_dma_latency', log }),
    (e: RealtimeError) => {
      assert.ok(e instanceof RealtimeError);
      assert.equal(e.code, 'ERR_CPU_LATENCY');
      assert.equal((e.cause as { code?: string }).code, 'ENOENT');
      assert.match(
        e.message,
        /^--cpu-latency=0: cannot hold the CPU latency limit through \/nonexistent\/cpu_dma_latency \(ENOENT: .*\): this kernel has no PM QoS CPU latency device/,
      );
      return true;
    },
  );
  assert.deepEqual(lines, []);
  const eacces = Object.assign(new Error("EACCES: permission denied, open '/dev/cpu_dma_latency'"), {
    code: 'EACCES',
  });
  assert.match(cpuLatencyRefusal(eacces, 0, '/dev/cpu_dma_latency'), /: the device is root's/);
  assert.equal(
    cpuLatencyRefusal(Object.assign(new Error('EIO: i/o error'), { code: 'EIO' }), 7, '/d'),
    '--cpu-latency=7: cannot hold the CPU latency limit through /d (EIO: i/o error)',
  );
});
