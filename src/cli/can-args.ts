/**
 * Command-line parsing for vhost-device-can, kept free of side effects so it can be unit tested.
 * A drop-in for rust-vmm's CLI (--socket-path/-s, --socket-count/-c, --can-devices/-d), plus our
 * own options. Every bad input yields a message naming the option and what is expected.
 */

import type { BusTiming } from '../core/bus/faults.js';
import { type CanFeatureSwitches, DEFAULT_RX_BACKLOG } from '../core/devices/can/can-device.js';
import { builtinPorts, PORT_KIND_OPTIONS } from '../node/bus/builtin-ports.js';
import type { BusPortRequest, PortKind, PortRegistry } from '../node/bus/port-registry.js';
import { DEFAULT_SOCKETCAN_RCVBUF } from '../node/bus/socketcan-port.js';
import { type BusSpec, busesOf, type CanDaemonOptions, type FaultRequest } from '../node/can/can-daemon.js';
import { parseCidr, parseHostPort } from '../node/net/addresses.js';
import {
  DEFAULT_REALTIME_PRIORITY,
  MAX_CPU_LATENCY_US,
  MAX_REALTIME_PRIORITY,
  MIN_REALTIME_PRIORITY,
} from '../node/realtime.js';
import { type CommonOptions, type EarlyResult, intOption, parseDaemonArgs } from './common-args.js';
import { HTTP_OPTIONS, type HttpCliOptions, httpOptionsHelp, parseHttpOptions } from './http-args.js';
import { parseTimingOptions, TIMING_HELP } from './timing-args.js';

export { socketPaths } from './common-args.js';

export interface CanCliOptions extends CommonOptions {
  /** One per socket. */
  buses: BusSpec[];
  /** True when --can-devices was omitted (everything on the embedded virtual bus). */
  defaultBus: boolean;
  features: CanFeatureSwitches;
  rxBacklog: number;
  /** Receive buffer of each host SocketCAN socket, bytes; 0 = the kernel's default. */
  socketcanRcvbuf: number;
  /** --link, --capture, --replay, in command-line order per kind (links, then captures, then replays). */
  ports: BusPortRequest[];
  /** Values of the port kinds' shared options (PORT_KIND_OPTIONS), by option name. */
  portOptions: Record<string, string | boolean | undefined>;
  /** --socketcand-listen and its options; null without it. */
  socketcand: NonNullable<CanDaemonOptions['socketcand']> | null;
  /** --http (the monitor, metrics and API), null when absent. */
  http: HttpCliOptions | null;
  /** Timed buses by name (--bitrate, --ack). */
  timing: Record<string, BusTiming>;
  /** --fault, in command-line order. */
  faults: FaultRequest[];
  /** --realtime[=N]: the main thread's SCHED_FIFO priority once serving; null without it. */
  realtime: number | null;
  /** --cpu-latency=US: the CPU wake-up latency limit held once serving; null without it. */
  cpuLatency: number | null;
}

export type CanCliResult = { kind: 'run'; options: CanCliOptions } | EarlyResult;

export const MAX_SOCKET_COUNT = 64;

const IFNAME = /^[A-Za-z0-9_.:-]{1,15}$/;
const BUSNAME = /^[A-Za-z0-9_.-]{1,64}$/;

const PORT_KINDS: readonly PortKind[] = ['link', 'capture', 'replay'];

/** Parses one `BUS=VALUE` of --link/--capture/--replay. */
export function parsePortRequest(kind: PortKind, entry: string): BusPortRequest | string {
  const eq = entry.indexOf('=');
  if (eq < 0) return `--${kind} expects BUS=${kind === 'link' ? 'URL' : 'FILE'}, got "${entry}"`;
  const bus = entry.slice(0, eq);
  const value = entry.slice(eq + 1);
  if (!BUSNAME.test(bus)) {
    return `--${kind} ${entry}: bad bus name "${bus}" (default, a virtual bus's NAME or an interface name)`;
  }
  if (value === '') return `--${kind} ${entry}: nothing after "="`;
  return { kind, bus, value };
}

/** Parses one --can-devices entry. */
export function parseBusEntry(entry: string): BusSpec | string {
  if (entry === 'virtual') return { kind: 'virtual', name: 'default' };
  if (entry.startsWith('virtual:')) {
    const name = entry.slice('virtual:'.length);
    if (!BUSNAME.test(name))
      return `bad virtual bus name "${name}" (letters, digits, _ . -; 1..64 characters)`;
    return { kind: 'virtual', name };
  }
  if (entry.includes(':'))
    return `unknown CAN device entry "${entry}" (expected IFNAME, virtual or virtual:NAME)`;
  if (!IFNAME.test(entry))
    return `bad host interface name "${entry}" (1..15 characters, no spaces or slashes)`;
  return { kind: 'host', ifname: entry };
}

/** A byte count with an optional binary suffix (K, M, G); a message for anything else. */
function bytesOption(v: string | undefined, name: string, max: number, dflt: number): number | string {
  if (v === undefined) return dflt;
  const m = /^([0-9]+)([KMG]?)$/i.exec(v);
  if (m === null) return `--${name} expects a byte count (an integer, optionally with K, M or G), got "${v}"`;
  const shift = { '': 0, K: 10, M: 20, G: 30 }[m[2]!.toUpperCase() as '' | 'K' | 'M' | 'G'];
  const n = Number(m[1]) * 2 ** shift;
  if (n > max) return `--${name} must be at most ${max} bytes, got ${n}`;
  return n;
}

/**
 * `--realtime` takes an optional value, which parseArgs does not know: a bare `--realtime` (before
 * a `--`) becomes `--realtime=DEFAULT`; the value is only ever given as `--realtime=N`.
 */
function expandRealtime(argv: readonly string[]): string[] | string {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      out.push(...argv.slice(i));
      break;
    }
    if (a !== '--realtime') {
      out.push(a);
      continue;
    }
    const next = argv[i + 1];
    if (next !== undefined && /^[0-9]+$/.test(next)) {
      return `--realtime takes its priority as --realtime=N (got "--realtime ${next}")`;
    }
    out.push(`--realtime=${DEFAULT_REALTIME_PRIORITY}`);
  }
  return out;
}

export function parseCanArgs(argv: readonly string[], registry: PortRegistry = builtinPorts): CanCliResult {
  const expanded = expandRealtime(argv);
  if (typeof expanded === 'string') return { kind: 'error', message: expanded };
  const kindOptions: Record<string, { type: 'string' | 'boolean' }> = {};
  for (const [name, o] of Object.entries(PORT_KIND_OPTIONS)) kindOptions[name] = { type: o.type };
  const common = parseDaemonArgs(
    expanded,
    {
      ...kindOptions,
      ...HTTP_OPTIONS,
      link: { type: 'string', multiple: true },
      capture: { type: 'string', multiple: true },
      replay: { type: 'string', multiple: true },
      'can-devices': { type: 'string', short: 'd' },
      'no-can-classic': { type: 'boolean' },
      'no-can-fd': { type: 'boolean' },
      'no-rtr': { type: 'boolean' },
      'no-late-tx-ack': { type: 'boolean' },
      'rx-backlog': { type: 'string' },
      'socketcan-rcvbuf': { type: 'string' },
      'socketcand-listen': { type: 'string' },
      'socketcand-allow': { type: 'string', multiple: true },
      'socketcand-max-clients': { type: 'string' },
      'socketcand-error-mask': { type: 'string' },
      bitrate: { type: 'string', multiple: true },
      ack: { type: 'string', multiple: true },
      fault: { type: 'string', multiple: true },
      realtime: { type: 'string' },
      'cpu-latency': { type: 'string' },
    },
    MAX_SOCKET_COUNT,
  );
  if (common.kind !== 'common') return common;
  const values = common.values;
  const count = common.options.socketCount;

  let buses: BusSpec[];
  const devs = values['can-devices'] as string | undefined;
  const defaultBus = devs === undefined;
  if (devs === undefined) {
    buses = Array.from({ length: count }, () => ({ kind: 'virtual', name: 'default' }) as const);
  } else {
    const entries = devs.split(/\s+/).filter((e) => e !== '');
    if (entries.length === 0) return { kind: 'error', message: '--can-devices is empty' };
    if (entries.length !== count) {
      return {
        kind: 'error',
        message: `--can-devices lists ${entries.length} device(s) but --socket-count is ${count}: give one entry per socket`,
      };
    }
    buses = [];
    for (const e of entries) {
      const b = parseBusEntry(e);
      if (typeof b === 'string') return { kind: 'error', message: `--can-devices: ${b}` };
      buses.push(b);
    }
  }

  const ports: BusPortRequest[] = [];
  for (const kind of PORT_KINDS) {
    for (const entry of (values[kind] as string[] | undefined) ?? []) {
      const r = parsePortRequest(kind, entry);
      if (typeof r === 'string') return { kind: 'error', message: r };
      const resolved = registry.resolve(r);
      if (typeof resolved === 'string') return { kind: 'error', message: resolved };
      ports.push(r);
    }
  }
  const named = busesOf(
    buses,
    ports.map((p) => p.bus),
  );
  if (typeof named === 'string') return { kind: 'error', message: named };
  const timed = parseTimingOptions(
    (values.bitrate as string[] | undefined) ?? [],
    (values.ack as string[] | undefined) ?? [],
    (values.fault as string[] | undefined) ?? [],
    named,
  );
  if (typeof timed === 'string') return { kind: 'error', message: timed };
  const portOptions: Record<string, string | boolean | undefined> = {};
  for (const [name, o] of Object.entries(PORT_KIND_OPTIONS)) {
    const v = values[name] as string | boolean | undefined;
    if (v === undefined) continue;
    const bad = o.check?.(v);
    if (bad !== undefined) return { kind: 'error', message: `--${name}: ${bad}` };
    portOptions[name] = v;
  }

  const features: CanFeatureSwitches = {
    classic: !values['no-can-classic'],
    fd: !values['no-can-fd'],
    rtr: !values['no-rtr'],
    lateTxAck: !values['no-late-tx-ack'],
  };
  if (!features.classic && !features.fd) {
    return {
      kind: 'error',
      message: '--no-can-classic and --no-can-fd together leave no frame type to offer',
    };
  }
  if (!features.classic && values['no-rtr'] === undefined) features.rtr = false; // RTR needs classic CAN

  const backlog = intOption(
    values['rx-backlog'] as string | undefined,
    'rx-backlog',
    1,
    1 << 20,
    DEFAULT_RX_BACKLOG,
  );
  if (typeof backlog === 'string') return { kind: 'error', message: backlog };
  const rcvbuf = bytesOption(
    values['socketcan-rcvbuf'] as string | undefined,
    'socketcan-rcvbuf',
    0x7fffffff,
    DEFAULT_SOCKETCAN_RCVBUF,
  );
  if (typeof rcvbuf === 'string') return { kind: 'error', message: rcvbuf };
  const socketcand = parseSocketcandOptions(values);
  if (typeof socketcand === 'string') return { kind: 'error', message: socketcand };
  const http = parseHttpOptions(values);
  if (typeof http === 'string') return { kind: 'error', message: http };
  const rtArg = values.realtime as string | undefined;
  const realtime =
    rtArg === undefined
      ? null
      : intOption(rtArg, 'realtime', MIN_REALTIME_PRIORITY, MAX_REALTIME_PRIORITY, DEFAULT_REALTIME_PRIORITY);
  if (typeof realtime === 'string') return { kind: 'error', message: realtime };
  const latArg = values['cpu-latency'] as string | undefined;
  const cpuLatency = latArg === undefined ? null : intOption(latArg, 'cpu-latency', 0, MAX_CPU_LATENCY_US, 0);
  if (typeof cpuLatency === 'string') return { kind: 'error', message: cpuLatency };
  return {
    kind: 'run',
    options: {
      ...common.options,
      buses,
      defaultBus,
      features,
      rxBacklog: backlog,
      socketcanRcvbuf: rcvbuf,
      ports,
      portOptions,
      socketcand,
      http,
      timing: timed.timing,
      faults: timed.faults,
      realtime,
      cpuLatency,
    },
  };
}

/** The --socketcand-* options: the server's settings, null without --socketcand-listen, or a message. */
function parseSocketcandOptions(
  values: Record<string, unknown>,
): NonNullable<CanDaemonOptions['socketcand']> | null | string {
  const listenArg = values['socketcand-listen'] as string | undefined;
  const allowArgs = (values['socketcand-allow'] as string[] | undefined) ?? [];
  const maxArg = values['socketcand-max-clients'] as string | undefined;
  const maskArg = values['socketcand-error-mask'] as string | undefined;
  if (listenArg === undefined) {
    const stray = [
      allowArgs.length > 0 ? '--socketcand-allow' : '',
      maxArg !== undefined ? '--socketcand-max-clients' : '',
      maskArg !== undefined ? '--socketcand-error-mask' : '',
    ].filter((x) => x !== '');
    return stray.length === 0 ? null : `${stray.join(', ')} need --socketcand-listen ADDR:PORT`;
  }
  const listen = parseHostPort(listenArg, '--socketcand-listen');
  if (typeof listen === 'string') return listen;
  const allow: string[] = [];
  for (const a of allowArgs) {
    const c = parseCidr(a, '--socketcand-allow');
    if (c.startsWith('--')) return c;
    allow.push(c);
  }
  const maxClients = intOption(maxArg, 'socketcand-max-clients', 1, 4096, 64);
  if (typeof maxClients === 'string') return maxClients;
  let errorMask = 0;
  if (maskArg !== undefined) {
    if (
      !/^(0x)?[0-9A-Fa-f]{1,8}$/.test(maskArg) ||
      Number.parseInt(maskArg.replace(/^0x/, ''), 16) > 0x1fffffff
    ) {
      return `--socketcand-error-mask expects error class bits in hex (0..1FFFFFFF), got "${maskArg}"`;
    }
    errorMask = Number.parseInt(maskArg.replace(/^0x/, ''), 16);
  }
  return { listen, allow, maxClients, errorMask };
}

/** The help of the registered port kinds and their options, generated from the registry. */
export function portKindsHelp(registry: PortRegistry = builtinPorts): string {
  const out: string[] = [];
  const heads: Record<PortKind, string> = {
    link: '--link BUS=URL  (repeatable)\n        Joins BUS to another CAN network. URL schemes:',
    capture:
      '--capture BUS=FILE  (repeatable, several files per bus allowed)\n        Records BUS; the format follows the extension:',
    replay:
      '--replay BUS=FILE  (repeatable)\n        Plays a recording into BUS; the format follows the extension:',
  };
  for (const kind of PORT_KINDS) {
    const fs = registry.factories(kind);
    if (fs.length === 0) continue;
    out.push(`    ${heads[kind]}`);
    for (const f of fs) out.push(f.help.replace(/\n+$/, ''));
  }
  for (const [name, o] of Object.entries(PORT_KIND_OPTIONS)) {
    // An option named after a kind (--replay-speed) is shown only when that kind has factories.
    const kind = PORT_KINDS.find((k) => name.startsWith(`${k}-`));
    if (kind !== undefined && registry.factories(kind).length === 0) continue;
    out.push(`    --${name}${o.type === 'string' ? ' VALUE' : ''}`);
    out.push(o.help.replace(/\n+$/, ''));
  }
  return out.length === 0 ? '' : `${out.join('\n')}\n`;
}

export const CAN_HELP = `NAME
    vhost-device-can - VirtIO CAN device back-end (vhost-user) with an in-process virtual CAN bus

SYNOPSIS
    vhost-device-can --socket-path PATH [--socket-count N] [--can-devices "DEV ..."] [OPTIONS]
    vhost-device-can --fd N [--can-devices DEV] [OPTIONS]
    vhost-device-can --print-capabilities

DESCRIPTION
    Serves N guests, one vhost-user Unix socket each, at PATH0 .. PATH{N-1}. Each guest gets a
    VIRTIO CAN device (VIRTIO 1.4, device ID 36); the Linux virtio_can driver shows it as a CAN
    netdev. Frames a guest sends go to its CAN bus and reach every other node on that bus; a guest
    never receives its own frames back (the driver echoes locally).

    Without --can-devices every guest joins one in-process virtual bus: no kernel modules, no root.

BUS NAMES
    Every option that names a bus (--link, --capture, --replay, --bitrate, --ack, --fault,
    socketcand's "open") uses one name per bus: "default" for the default virtual bus, NAME for
    virtual:NAME, the interface name (vcan0, can0) for a host interface. A virtual bus named
    like a host interface in use is an error. A bus that only --link, --capture or --replay
    name (no guest on it) is a virtual bus; --bitrate, --ack and --fault need a bus that a
    guest or one of those uses.

OPTIONS
    -s, --socket-path PATH
        Base path of the vhost-user sockets; the socket index 0..N-1 is appended (PATH0, PATH1...).
    --fd N
        Serve one guest on an already-open listening Unix socket N (inherited from the program
        that started the daemon) instead of --socket-path.
    -c, --socket-count N
        Number of guests (sockets), 1..${MAX_SOCKET_COUNT}. Default 1.
    -d, --can-devices "DEV ..."
        One entry per socket, separated by spaces:
          virtual          the shared default in-process bus
          virtual:NAME     an in-process bus called NAME (guests naming the same bus share it)
          IFNAME           a host SocketCAN interface (vcan0, can0); guests naming the
                           same interface share it and also reach each other directly
        Default: every guest on the default virtual bus. A host interface must exist, be a CAN
        interface and be up (ip link set IFNAME up); CAN FD is offered only when its MTU is 72.
        Losing the interface shows in the guests as bus-off; they restart once it is back.
    --no-can-classic, --no-can-fd, --no-rtr, --no-late-tx-ack
        Do not offer that CAN feature (VIRTIO_CAN_F_CAN_CLASSIC, _CAN_FD, _RTR_FRAMES,
        _LATE_TX_ACK). RTR needs classic CAN and is dropped with --no-can-classic.
    --no-event-idx, --no-indirect-desc
        Do not offer VIRTIO_RING_F_EVENT_IDX / VIRTIO_RING_F_INDIRECT_DESC.
    -q, --max-queue-size N
        Largest virtqueue size accepted (power of two, default 1024; QEMU's default is 64).
    --rx-backlog N
        Frames kept per guest while it has no RX buffers (default ${DEFAULT_RX_BACKLOG}); beyond it frames
        are dropped and counted (rxDroppedOverflow). A waiting frame costs about 360 bytes (410 for
        64-byte FD frames), so the default bounds a guest that falls behind at about 12-13 MiB; it
        holds what the default socket receive buffer absorbs of a host-interface flood.
    --socketcan-rcvbuf BYTES
        Receive buffer of each host SocketCAN socket (K, M, G suffixes; default ${DEFAULT_SOCKETCAN_RCVBUF >> 20}M;
        0 = the kernel's default, net.core.rmem_default). Frames a flood brings while the daemon is
        busy wait there; when it is full the kernel drops them (counted: rxKernelDrops). Set with
        SO_RCVBUFFORCE when the daemon has CAP_NET_ADMIN (root), else with SO_RCVBUF, which the
        kernel caps at net.core.rmem_max (raise it with sysctl). The kernel doubles the value for
        its bookkeeping and charges about 960 bytes per queued CAN frame: 16M holds about 35,000
        frames. The size granted is logged at start.
${portKindsHelp()}${TIMING_HELP}    --realtime[=N]
        Once serving, put the daemon's main thread (event loop, guest I/O, timed-bus wake-ups)
        under SCHED_FIFO at priority N (1..${MAX_REALTIME_PRIORITY}, default ${DEFAULT_REALTIME_PRIORITY}), as \`chrt -f -p N PID\` does: a timed
        bus's wake-ups then preempt every normally scheduled task, so frames stay on time while
        other processes keep the cores busy (docs/timed-bus.md). libuv's thread pool and the
        other threads stay at normal priority. Needs root, CAP_SYS_NICE or \`ulimit -r N\`;
        refused, the daemon exits with status 1. A flood on an untimed bus keeps a core busy at
        real-time priority (warned at start). This command runs node with --single-threaded-gc,
        without which garbage collection can stall the real-time thread (warned at start).
    --cpu-latency US
        Once serving, hold the kernel's CPU latency limit (/dev/cpu_dma_latency) at US
        microseconds (0..2000000000) while the daemon runs: idle CPUs then only enter idle
        states they leave within US. With --realtime on a timed bus, 0 gives the tightest
        timing: idle CPUs poll instead of sleeping, so a wake-up does not wait for a CPU (or, in
        a virtual machine, a halted vCPU) to come back (docs/timed-bus.md); the price is cores
        that never rest. The limit is system-wide and ends with the process. Needs root (the
        device is root's); refused, the daemon exits with status 1.
    --socketcand-listen ADDR:PORT
        Serves every bus over the socketcand protocol (TCP; ADDR an IPv4 address, [IPv6] or
        localhost; socketcand's port is 29536). Clients such as python-can's socketcand
        interface open a bus by its name (BUS NAMES above). Raw mode, broadcast manager mode
        and control mode; details in docs/socketcand.md. socketcand has no authentication:
        listening on anything but loopback logs a warning; restrict it with --socketcand-allow.
    --socketcand-allow CIDR  (repeatable)
        Only peers in these address ranges may connect (ADDR/PREFIX or one address, IPv4 or
        IPv6). Default: everyone who can reach ADDR:PORT.
    --socketcand-max-clients N
        Connections at once (default 64); more are refused with an error.
    --socketcand-error-mask HEX
        Error frame classes (linux/can/error.h class bits) sent to raw-mode clients as
        < error ... > unless they choose with < errormask HEX >. Default 0: none.
${httpOptionsHelp('the live monitor page', true)}    --stats-interval SECONDS
        Log every device's and bus's counters every SECONDS (0 = never; default). SIGUSR1 logs
        them at any time.
    --log-level error|warn|info|debug
        Default info. debug traces every vhost-user message.
    -v, --verbose
        Same as --log-level debug.
    --log-format text|json
        Log lines for a terminal (default) or JSON lines. Logs go to stderr.
    --print-capabilities
        Print the back-end's capabilities as JSON ({"type":"can"}) and exit. No description
        file for QEMU's vhost-user discovery is shipped for this daemon: "can" is not a type
        in QEMU's vhost-user.json, and libvirt rejects every file when one has an unknown type.
    -h, --help      This text.
    -V, --version   The version.

QEMU
    Start the daemon first, then QEMU (11.x has vhost-user-test-device-pci):
      qemu-system-x86_64 ... \\
        -object memory-backend-memfd,id=mem,size=1G,share=on -machine memory-backend=mem \\
        -chardev socket,id=can0,path=PATH0 \\
        -device vhost-user-test-device-pci,chardev=can0,virtio-id=36,num_vqs=3,config_size=2

EXIT STATUS
    0 after SIGINT/SIGTERM (socket files removed), 2 for a bad command line, 1 when start-up fails
    (path in use, directory missing or not writable, --realtime refused, ...).
`;
