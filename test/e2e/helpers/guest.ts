// Boots real Linux guests under QEMU for the end-to-end tests.
//
// The guest kit (scripts/guest/build-kit.sh, run once as root) provides a Debian
// trixie-backports Linux 7.x kernel, an initramfs with busybox, can-utils, iproute2 and the
// mainline virtio_can driver, and QEMU 11 (which has vhost-user-test-device-pci). The
// initramfs' /init loads the modules, mounts a per-run 9p share (tag "kit") at /mnt, runs
// /mnt/scenario.sh, writes its exit status to /mnt/exit-status and powers off.
//
// Devices: `canDevices` (VirtIO CAN, device 36) and `consoleDevices` (VirtIO console, device 3:
// /dev/hvc0 plus named ports under /sys/class/virtio-ports in the guest), each a
// vhost-user-test-device-pci on a vhost-user socket whose back-end must already listen.
//
// QEMU is the kit chroot's binary, started on the host through the chroot's dynamic loader
// (the argv prefix in GuestKit.qemu), so vhost-user socket paths and the share directory are
// ordinary host paths. TCG only: KVM does not work on the project's machines.
//
// Process hygiene: QEMU is started under `setpriv --pdeathsig KILL` (it dies with this process
// even when this process is killed by a signal), is SIGKILLed from an 'exit' hook, and on
// timeout or abort gets SIGTERM and then SIGKILL.

import { spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freshWorkDir, gracefulStop, track } from './child.js';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const BUILD_HINT = 'build it with: sudo scripts/guest/build-kit.sh';

export interface GuestKit {
  dir: string;
  kernel: string;
  initrd: string;
  /** argv prefix that runs the kit's qemu-system-x86_64 on the host */
  qemu: string[];
  kernelVersion: string;
  qemuVersion: string;
}

export interface CanDeviceSpec {
  /** vhost-user socket; the back-end must already be listening on it */
  socketPath: string;
  /** QEMU config_size; default 2 (the virtio-can config space: a 16-bit status) */
  configSize?: number;
  /** QEMU vq_size (every queue); QEMU's default is 64 */
  vqSize?: number;
}

/** A VirtIO console (device 3) served over vhost-user; in the guest: /dev/hvc0 plus named ports. */
export interface ConsoleDeviceSpec {
  /** vhost-user socket; the back-end must already be listening on it */
  socketPath: string;
  /**
   * Named ports besides the console port: the back-end's max_nr_ports must be 1 + namedPorts.
   * QEMU's num_vqs is then 2 * (2 + namedPorts): a receiveq/transmitq pair per port (console
   * included) plus the control pair (MULTIPORT). Default 0: 4 queues. A count that does not match
   * the device makes the guest driver fail its probe ("Error -22 initializing vqs").
   */
  namedPorts?: number;
  /** QEMU vq_size (every queue); QEMU's default is 64 */
  vqSize?: number;
}

export interface GuestRunOptions {
  kit: GuestKit;
  /** sh script run in the guest as /mnt/scenario.sh; its exit status is the run's exitStatus */
  scenario: string;
  /** CAN devices (chardev ids can0, can1, ...), in this order on the PCI bus; default none */
  canDevices?: CanDeviceSpec[];
  /** console devices (chardev ids con0, con1, ...), after the CAN devices; default none */
  consoleDevices?: ConsoleDeviceSpec[];
  /** guest RAM, default 512 */
  memoryMiB?: number;
  /** default 120 s; on expiry QEMU is killed and timedOut is set */
  timeoutMs?: number;
  /** console.log and share/ go here; default: a fresh directory under <repo>/.test-artifacts/ */
  workDir?: string;
  /** appended to QEMU's command line */
  extraQemuArgs?: string[];
  /** appended to the kernel command line (e.g. 'kit.shell=1', 'loglevel=7') */
  kernelArgs?: string[];
  /** aborting kills QEMU (the result then has timedOut false and exitStatus null) */
  signal?: AbortSignal;
}

export interface GuestResult {
  /** the scenario's exit status as written by /init to /mnt/exit-status; null if never written */
  exitStatus: number | null;
  /** everything QEMU wrote to stdout/stderr (the guest's ttyS0 plus QEMU's own messages) */
  consoleLog: string;
  workDir: string;
  /** the 9p share mounted at /mnt in the guest */
  shareDir: string;
  timedOut: boolean;
  /** QEMU's own exit code / signal (0 after a clean guest poweroff) */
  qemuExitCode: number | null;
  qemuSignal: NodeJS.Signals | null;
  durationMs: number;
  /** contents of a file the scenario wrote into /mnt (throws if it does not exist) */
  files: (name: string) => string;
}

export interface RunningGuest {
  done: Promise<GuestResult>;
  /** SIGTERM, then SIGKILL after a grace period; idempotent */
  kill(): void;
  /** QEMU's pid (undefined if it could not be started) */
  pid: number | undefined;
  workDir: string;
  shareDir: string;
  /**
   * Resolves with the contents of /mnt/NAME once the guest has created it; rejects on timeout
   * or if QEMU exits first. The guest should create the file with its final contents in one
   * step (e.g. `echo ok > /mnt/ready.tmp && mv /mnt/ready.tmp /mnt/ready`) if contents matter.
   */
  waitForFile(name: string, timeoutMs?: number): Promise<string>;
}

interface Manifest {
  kernelVersion: string;
  qemuVersion: string;
  kernel: string;
  initrd: string;
  rootfs: string;
  qemuBinary: string;
  qemuLoader: string;
  qemuLibraryDirs: string[];
  qemuModuleDir: string;
  qemuFirmwareDirs: string[];
}

function parseManifest(text: string): Manifest {
  const raw: unknown = JSON.parse(text);
  if (typeof raw !== 'object' || raw === null) throw new Error('manifest is not an object');
  const obj = raw as Record<string, unknown>;
  const str = (key: string): string => {
    const v = obj[key];
    if (typeof v !== 'string' || v === '') throw new Error(`manifest: "${key}" must be a non-empty string`);
    return v;
  };
  const strs = (key: string): string[] => {
    const v = obj[key];
    if (!Array.isArray(v) || v.length === 0 || !v.every((x) => typeof x === 'string')) {
      throw new Error(`manifest: "${key}" must be a non-empty array of strings`);
    }
    return v as string[];
  };
  return {
    kernelVersion: str('kernelVersion'),
    qemuVersion: str('qemuVersion'),
    kernel: str('kernel'),
    initrd: str('initrd'),
    rootfs: str('rootfs'),
    qemuBinary: str('qemuBinary'),
    qemuLoader: str('qemuLoader'),
    qemuLibraryDirs: strs('qemuLibraryDirs'),
    qemuModuleDir: str('qemuModuleDir'),
    qemuFirmwareDirs: strs('qemuFirmwareDirs'),
  };
}

/** The kit in $GUEST_KIT_DIR or <repo>/.guest-kit. Never builds anything; says why it is unusable. */
export function findGuestKit(): GuestKit | { missing: string } {
  const dir = resolve(process.env.GUEST_KIT_DIR ?? join(REPO_ROOT, '.guest-kit'));
  const manifestPath = join(dir, 'manifest.json');
  if (!existsSync(manifestPath))
    return { missing: `no guest kit in ${dir} (no manifest.json); ${BUILD_HINT}` };
  let m: Manifest;
  try {
    m = parseManifest(readFileSync(manifestPath, 'utf8'));
  } catch (err) {
    return {
      missing: `unreadable ${manifestPath} (${(err as Error).message}); rebuild: ${BUILD_HINT} --from install`,
    };
  }
  const rootfs = join(dir, m.rootfs);
  const kernel = join(dir, m.kernel);
  const initrd = join(dir, m.initrd);
  const loader = join(rootfs, m.qemuLoader);
  const qemuBin = join(rootfs, m.qemuBinary);
  for (const p of [kernel, initrd, loader, qemuBin]) {
    if (!existsSync(p))
      return { missing: `guest kit in ${dir} is incomplete: ${p} is missing; ${BUILD_HINT}` };
  }
  const qemu = [
    '/usr/bin/env',
    // QEMU dlopens optional modules from a compiled-in /usr/lib/... path: point it at the kit's.
    `QEMU_MODULE_DIR=${join(rootfs, m.qemuModuleDir)}`,
    loader,
    '--library-path',
    m.qemuLibraryDirs.map((d) => join(rootfs, d)).join(':'),
    qemuBin,
    ...m.qemuFirmwareDirs.flatMap((d) => ['-L', join(rootfs, d)]),
  ];
  return { dir, kernel, initrd, qemu, kernelVersion: m.kernelVersion, qemuVersion: m.qemuVersion };
}

/** QEMU's option syntax: a comma inside a value is written as two commas. */
function optValue(value: string): string {
  return value.replaceAll(',', ',,');
}

function positiveInt(name: string, value: number): number {
  if (!Number.isInteger(value) || value <= 0)
    throw new RangeError(`${name} must be a positive integer, got ${value}`);
  return value;
}

/** QEMU's command line (after the kit's argv prefix) for one run. Exported for tests and logs. */
export function buildQemuArgs(opts: GuestRunOptions, shareDir: string): string[] {
  const mem = positiveInt('memoryMiB', opts.memoryMiB ?? 512);
  const args = [
    '-accel',
    'tcg',
    '-m',
    `${mem}`,
    // vhost-user needs guest RAM the back-end can map: a shared memfd.
    '-object',
    `memory-backend-memfd,id=mem,size=${mem}M,share=on`,
    '-machine',
    'q35,memory-backend=mem',
    '-nographic',
    '-no-reboot',
    // No default NIC or VGA: nothing uses them and they only slow the boot down.
    '-nic',
    'none',
    '-vga',
    'none',
    '-kernel',
    opts.kit.kernel,
    '-initrd',
    opts.kit.initrd,
    '-append',
    ['console=ttyS0', 'quiet', 'panic=-1', ...(opts.kernelArgs ?? [])].join(' '),
    '-virtfs',
    `local,path=${optValue(shareDir)},mount_tag=kit,security_model=none`,
  ];
  (opts.canDevices ?? []).forEach((dev, i) => {
    const configSize = dev.configSize ?? 2;
    if (!Number.isInteger(configSize) || configSize < 0 || configSize > 256) {
      throw new RangeError(`canDevices[${i}].configSize must be 0..256, got ${configSize}`);
    }
    let device = `vhost-user-test-device-pci,chardev=can${i},virtio-id=36,num_vqs=3,config_size=${configSize}`;
    if (dev.vqSize !== undefined) device += `,vq_size=${positiveInt(`canDevices[${i}].vqSize`, dev.vqSize)}`;
    args.push('-chardev', `socket,id=can${i},path=${optValue(dev.socketPath)}`, '-device', device);
  });
  (opts.consoleDevices ?? []).forEach((dev, i) => {
    const named = dev.namedPorts ?? 0;
    if (!Number.isInteger(named) || named < 0 || named > 1000) {
      throw new RangeError(`consoleDevices[${i}].namedPorts must be 0..1000, got ${named}`);
    }
    // config: le16 cols, le16 rows, le32 max_nr_ports, le32 emerg_wr (VIRTIO "Console Device").
    let device = `vhost-user-test-device-pci,chardev=con${i},virtio-id=3,num_vqs=${2 * (2 + named)},config_size=12`;
    if (dev.vqSize !== undefined)
      device += `,vq_size=${positiveInt(`consoleDevices[${i}].vqSize`, dev.vqSize)}`;
    args.push('-chardev', `socket,id=con${i},path=${optValue(dev.socketPath)}`, '-device', device);
  });
  args.push(...(opts.extraQemuArgs ?? []));
  return args;
}

const SETPRIV = '/usr/bin/setpriv';
const KILL_GRACE_MS = 3000;
const POLL_MS = 50;

function fileInShare(shareDir: string, name: string): string {
  const p = resolve(shareDir, name);
  const rel = relative(shareDir, p);
  if (rel === '' || rel.startsWith('..') || isAbsolute(rel))
    throw new Error(`${name} is not a file in the share`);
  return p;
}

function readExitStatus(shareDir: string): number | null {
  const p = join(shareDir, 'exit-status');
  if (!existsSync(p)) return null;
  const text = readFileSync(p, 'utf8').trim();
  return /^\d+$/.test(text) ? Number(text) : null;
}

/** Boots a guest and returns at once; see RunningGuest. */
export function startGuest(opts: GuestRunOptions): RunningGuest {
  const sockets = [
    ...(opts.canDevices ?? []).map((d, i) => [`canDevices[${i}]`, d.socketPath] as const),
    ...(opts.consoleDevices ?? []).map((d, i) => [`consoleDevices[${i}]`, d.socketPath] as const),
  ];
  for (const [what, socketPath] of sockets) {
    // Without reconnect-ms QEMU connects once at start-up and exits if nobody listens.
    if (!existsSync(socketPath)) {
      throw new Error(`${what}: ${socketPath} does not exist (start the back-end first)`);
    }
  }
  const workDir = resolve(opts.workDir ?? freshWorkDir(REPO_ROOT, 'guest'));
  const shareDir = join(workDir, 'share');
  rmSync(shareDir, { recursive: true, force: true });
  mkdirSync(shareDir, { recursive: true });
  writeFileSync(join(shareDir, 'scenario.sh'), opts.scenario, { mode: 0o755 });

  const argv = [...opts.kit.qemu, ...buildQemuArgs(opts, shareDir)];
  if (existsSync(SETPRIV)) argv.unshift(SETPRIV, '--pdeathsig', 'KILL', '--');
  writeFileSync(join(workDir, 'qemu-cmdline.txt'), `${argv.map((a) => JSON.stringify(a)).join(' ')}\n`);

  const started = Date.now();
  const consolePath = join(workDir, 'console.log');
  const consoleFile = createWriteStream(consolePath);
  const chunks: Buffer[] = [];
  const [cmd, ...args] = argv as [string, ...string[]];
  // stdin is a pipe nobody writes to: QEMU's -nographic stdio stays quiet and closes with us.
  const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], cwd: workDir });
  track(child);
  const onData = (b: Buffer): void => {
    chunks.push(b);
    consoleFile.write(b);
  };
  child.stdout?.on('data', onData);
  child.stderr?.on('data', onData);

  let timedOut = false;
  const life = gracefulStop(child, KILL_GRACE_MS);
  const kill = life.stop;

  const timeoutMs = opts.timeoutMs ?? 120_000;
  const timer = setTimeout(() => {
    timedOut = true;
    onData(Buffer.from(`\n[guest.ts] timeout after ${timeoutMs} ms: killing QEMU\n`));
    kill();
  }, timeoutMs);
  const onAbort = (): void => {
    onData(Buffer.from('\n[guest.ts] aborted: killing QEMU\n'));
    kill();
  };
  if (opts.signal?.aborted) onAbort();
  else opts.signal?.addEventListener('abort', onAbort, { once: true });

  const done = new Promise<GuestResult>((resolveDone, rejectDone) => {
    let settled = false;
    const settle = (finish: () => void): void => {
      if (settled) return;
      settled = true;
      life.exited();
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      consoleFile.end(finish);
    };
    child.once('error', (err) => {
      // Only a failed spawn ends the run here; a failed kill() leaves QEMU to 'close'.
      if (child.pid !== undefined) return;
      settle(() => rejectDone(new Error(`cannot start QEMU (${cmd}): ${err.message}`, { cause: err })));
    });
    // 'close' comes after 'exit' once stdout/stderr are drained, so the log is complete.
    child.once('close', (code, sig) => {
      settle(() =>
        resolveDone({
          exitStatus: readExitStatus(shareDir),
          consoleLog: Buffer.concat(chunks).toString('utf8'),
          workDir,
          shareDir,
          timedOut,
          qemuExitCode: code,
          qemuSignal: sig,
          durationMs: Date.now() - started,
          files: (name) => readFileSync(fileInShare(shareDir, name), 'utf8'),
        }),
      );
    });
  });

  const waitForFile = (name: string, waitMs = 60_000): Promise<string> => {
    const path = fileInShare(shareDir, name);
    const deadline = Date.now() + waitMs;
    return new Promise<string>((resolveWait, rejectWait) => {
      const poll = (): void => {
        if (existsSync(path)) {
          resolveWait(readFileSync(path, 'utf8'));
        } else if (life.hasExited) {
          rejectWait(new Error(`guest exited before creating /mnt/${name} (see ${consolePath})`));
        } else if (Date.now() >= deadline) {
          rejectWait(new Error(`guest did not create /mnt/${name} within ${waitMs} ms (see ${consolePath})`));
        } else {
          setTimeout(poll, POLL_MS);
        }
      };
      poll();
    });
  };

  return { done, kill, pid: child.pid, workDir, shareDir, waitForFile };
}

/** Boots a guest, runs the scenario and resolves once QEMU is gone (poweroff, timeout or abort). */
export async function runGuest(opts: GuestRunOptions): Promise<GuestResult> {
  return startGuest(opts).done;
}
