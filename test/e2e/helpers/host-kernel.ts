// Runs commands of this project on a CAN-capable kernel: the "host-kernel runner".
//
// The host kernel has no AF_CAN. scripts/guest/host-kernel-run.sh boots the guest kit's Debian
// Linux (CAN, CAN_RAW, vcan, vxcan, can-gw, sja1000/kvaser_pci as modules) under QEMU/TCG with
// the HOST's own root filesystem shared read-only over 9p, chroots into it and runs the command
// there, so node, this checkout and can-utils run unchanged. Inside, the environment has
// VHOST_TS_IN_GUEST=1 (see inHostKernelGuest), VHOST_TS_GUEST_ARTIFACTS (a writable directory
// the host reads afterwards) and VHOST_TS_GUEST_KVASER (how many emulated Kvaser PCI
// controllers, can0..canN-1, the guest has). Writable in the guest: /tmp, /run, /var/tmp,
// /dev/shm (tmpfs, HOME=/tmp/home), <repo>/.test-artifacts and the `rw` directories (9p,
// read-write, written straight through to the host); everything else is read-only.
//
// This module only drives the script (one implementation of the QEMU command line): it is
// started under `setpriv --pdeathsig KILL`, and the script runs QEMU the same way, so QEMU never
// outlives this process; on timeout or abort the script gets SIGTERM (it stops QEMU), then SIGKILL.

import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { freshWorkDir, gracefulStop, track } from './child.js';
import { findGuestKit, REPO_ROOT } from './guest.js';

export const HOST_KERNEL_RUNNER = join(REPO_ROOT, 'scripts/guest/host-kernel-run.sh');
const SETPRIV = '/usr/bin/setpriv';
const KILL_GRACE_MS = 5000;
/** Extra time the script gets beyond its own --timeout before this module kills it. */
const BACKSTOP_MS = 20_000;

/** True inside a guest started by host-kernel-run.sh (it sets VHOST_TS_IN_GUEST=1). */
export function inHostKernelGuest(): boolean {
  return process.env.VHOST_TS_IN_GUEST === '1';
}

/** `true` when runInHostKernel can work here, else the reason it cannot (for `skip`). */
export function hostKernelAvailable(): true | string {
  if (inHostKernelGuest()) return 'already inside a host-kernel guest (nested guests are not supported)';
  if (process.platform !== 'linux') return `host-kernel guests need Linux (this is ${process.platform})`;
  const kit = findGuestKit();
  if ('missing' in kit) return kit.missing;
  if (!existsSync(HOST_KERNEL_RUNNER)) return `${HOST_KERNEL_RUNNER} is missing`;
  if (!existsSync(SETPRIV)) return `${SETPRIV} (util-linux) is missing`;
  return true;
}

export interface HostKernelOptions {
  /** emulated Kvaser PCI (SJA1000) controllers on one QEMU can-bus: can0..canN-1; default 0 */
  kvaser?: number;
  /** whole run, boot included; default 600 s. On expiry QEMU is killed and timedOut is set */
  timeoutMs?: number;
  /** guest RAM; default 2048 */
  memoryMiB?: number;
  /** vCPUs; default 2 */
  cpus?: number;
  /** extra environment variables for the command (the guest starts from an empty environment) */
  env?: Record<string, string>;
  /** host directories shared read-write at the same path (besides <repo>/.test-artifacts) */
  rw?: string[];
  /** the command's working directory; default the repository root */
  cwd?: string;
  /** where the run's files go (must be empty or absent); default a fresh <repo>/.test-artifacts/host-kernel-* */
  workDir?: string;
  /** copy the output to this process's stderr as it arrives (debugging) */
  echo?: boolean;
  /** aborting stops the guest (exitStatus null unless the command had already finished) */
  signal?: AbortSignal;
}

export interface HostKernelResult {
  /** the command's exit status inside the guest; null if it never finished (timeout, boot failure, abort) */
  exitStatus: number | null;
  /** the runner script's exit code (the command's status, 124 timeout, 125 guest failure, 2 usage) */
  runnerExitCode: number | null;
  runnerSignal: NodeJS.Signals | null;
  timedOut: boolean;
  /** everything the runner printed, stdout and stderr interleaved as received (the command's output plus `host-kernel-run:` lines) */
  output: string;
  /** the command's own stdout and stderr (workDir/stdout.log, workDir/stderr.log) */
  stdout: string;
  stderr: string;
  /** console.log (kernel + init), scenario files, command.sh, qemu-cmdline.txt, artifacts/ */
  workDir: string;
  /** the command's VHOST_TS_GUEST_ARTIFACTS */
  artifactsDir: string;
  /** guest uptime when the command started (boot + mounts), in seconds */
  bootSeconds: number | null;
  /** how long the command ran inside the guest, in seconds */
  commandSeconds: number | null;
  durationMs: number;
}

// The runner is tracked (child.ts): SIGKILLed if this process exits first; its QEMU follows
// through pdeathsig.

function readText(path: string): string {
  return existsSync(path) ? readFileSync(path, 'utf8') : '';
}

function readNumber(path: string): number | null {
  const text = readText(path).trim();
  return text === '' || Number.isNaN(Number(text)) ? null : Number(text);
}

function nonNegativeInt(name: string, value: number, min: number): string {
  if (!Number.isInteger(value) || value < min)
    throw new RangeError(`${name} must be an integer >= ${min}, got ${value}`);
  return String(value);
}

/** The runner's argv (after `bash`), exported for logs and tests. */
export function hostKernelRunnerArgs(cmd: string[], opts: HostKernelOptions, workDir: string): string[] {
  if (cmd.length === 0) throw new Error('runInHostKernel: empty command');
  const timeoutMs = opts.timeoutMs ?? 600_000;
  const args = [HOST_KERNEL_RUNNER, '--work-dir', workDir];
  args.push('--timeout', nonNegativeInt('timeoutMs', Math.ceil(timeoutMs / 1000), 1));
  if (opts.kvaser !== undefined) args.push('--kvaser', nonNegativeInt('kvaser', opts.kvaser, 0));
  if (opts.memoryMiB !== undefined) args.push('--mem', nonNegativeInt('memoryMiB', opts.memoryMiB, 256));
  if (opts.cpus !== undefined) args.push('--cpus', nonNegativeInt('cpus', opts.cpus, 1));
  for (const dir of opts.rw ?? []) args.push('--rw', dir);
  for (const [k, v] of Object.entries(opts.env ?? {})) args.push('--env', `${k}=${v}`);
  args.push('--', ...cmd);
  return args;
}

/**
 * Runs `cmd` (argv, looked up in PATH inside the guest) in a host-kernel guest and resolves once
 * the guest is gone. Never rejects for a failing command: check exitStatus (and timedOut).
 */
export function runInHostKernel(cmd: string[], opts: HostKernelOptions = {}): Promise<HostKernelResult> {
  const workDir = resolve(opts.workDir ?? freshWorkDir(REPO_ROOT, 'host-kernel'));
  const args = hostKernelRunnerArgs(cmd, opts, workDir);
  const argv = ['bash', ...args];
  if (existsSync(SETPRIV)) argv.unshift(SETPRIV, '--pdeathsig', 'KILL', '--');
  const [exe, ...rest] = argv as [string, ...string[]];
  const started = Date.now();
  const child = spawn(exe, rest, { stdio: ['ignore', 'pipe', 'pipe'], cwd: resolve(opts.cwd ?? REPO_ROOT) });
  track(child);

  const chunks: Buffer[] = [];
  const onData = (b: Buffer): void => {
    chunks.push(b);
    if (opts.echo) process.stderr.write(b);
  };
  child.stdout?.on('data', onData);
  child.stderr?.on('data', onData);

  let backstopFired = false;
  const life = gracefulStop(child, KILL_GRACE_MS);
  const stop = life.stop;
  const backstop = setTimeout(
    () => {
      backstopFired = true;
      onData(Buffer.from('\n[host-kernel.ts] the runner outlived its timeout: stopping it\n'));
      stop();
    },
    (opts.timeoutMs ?? 600_000) + BACKSTOP_MS,
  );
  const onAbort = (): void => {
    onData(Buffer.from('\n[host-kernel.ts] aborted: stopping the guest\n'));
    stop();
  };
  if (opts.signal?.aborted) onAbort();
  else opts.signal?.addEventListener('abort', onAbort, { once: true });

  return new Promise<HostKernelResult>((resolveRun, rejectRun) => {
    let settled = false;
    const finish = (): void => {
      settled = true;
      life.exited();
      clearTimeout(backstop);
      opts.signal?.removeEventListener('abort', onAbort);
    };
    child.once('error', (err) => {
      if (settled || child.pid !== undefined) return;
      finish();
      rejectRun(new Error(`cannot start ${HOST_KERNEL_RUNNER}: ${err.message}`, { cause: err }));
    });
    // 'close' comes after 'exit' once stdout/stderr are drained.
    child.once('close', (code, sig) => {
      if (settled) return;
      finish();
      const status = readNumber(join(workDir, 'command-status'));
      const startedAt = readNumber(join(workDir, 'command-started'));
      const endedAt = readNumber(join(workDir, 'command-ended'));
      resolveRun({
        exitStatus: status,
        runnerExitCode: code,
        runnerSignal: sig,
        timedOut: status === null && (code === 124 || backstopFired),
        output: Buffer.concat(chunks).toString('utf8'),
        stdout: readText(join(workDir, 'stdout.log')),
        stderr: readText(join(workDir, 'stderr.log')),
        workDir,
        artifactsDir: join(workDir, 'artifacts'),
        bootSeconds: startedAt,
        commandSeconds:
          startedAt !== null && endedAt !== null ? Math.round((endedAt - startedAt) * 100) / 100 : null,
        durationMs: Date.now() - started,
      });
    });
  });
}
