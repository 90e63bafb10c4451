/**
 * Command-line parsing for vhost-device-console, free of side effects so it can be unit tested.
 * A drop-in for rust-vmm's CLI (--socket-path/-s, --socket-count/-c, --tcp-port/-p,
 * --backend/-b, --max-queue-size/-q, same meanings), plus our own options. Every bad input
 * yields a message naming the option and what is expected.
 */
import { MAX_PORT_NAME_BYTES } from '../core/devices/console/console-device.js';
import {
  COMMON_OPTIONS_HELP,
  type CommonOptions,
  type EarlyResult,
  intOption,
  parseDaemonArgs,
} from './common-args.js';
import { HTTP_OPTIONS, type HttpCliOptions, httpOptionsHelp, parseHttpOptions } from './http-args.js';

export type ConsoleBackendName = 'nested' | 'network' | 'unix';

export interface ConsoleCliOptions extends CommonOptions {
  backend: ConsoleBackendName;
  tcpHost: string;
  tcpPort: number;
  udsPath: string | null;
  portNames: string[];
  scrollback: number;
  logFile: string | null;
  size: boolean;
  multiport: boolean;
  emergWrite: boolean;
  legacyResizeOrder: boolean;
  cols: number;
  rows: number;
  /** --http (status page, metrics), null when absent. */
  http: HttpCliOptions | null;
}

export type ConsoleCliResult = { kind: 'run'; options: ConsoleCliOptions } | EarlyResult;

export const MAX_CONSOLE_SOCKETS = 64;
export const DEFAULT_TCP_PORT = 12345;
const PORT_NAME = /^[A-Za-z0-9_.:-]+$/;

export function parseConsoleArgs(argv: readonly string[]): ConsoleCliResult {
  const common = parseDaemonArgs(
    argv,
    {
      ...HTTP_OPTIONS,
      backend: { type: 'string', short: 'b' },
      'tcp-port': { type: 'string', short: 'p' },
      'tcp-host': { type: 'string' },
      'uds-path': { type: 'string' },
      'port-name': { type: 'string', multiple: true },
      scrollback: { type: 'string' },
      'log-file': { type: 'string' },
      'no-size': { type: 'boolean' },
      'no-multiport': { type: 'boolean' },
      'no-emerg-write': { type: 'boolean' },
      'legacy-resize-order': { type: 'boolean' },
      cols: { type: 'string' },
      rows: { type: 'string' },
    },
    MAX_CONSOLE_SOCKETS,
  );
  if (common.kind !== 'common') return common;
  const values = common.values;
  const count = common.options.socketCount;

  const backend = ((values.backend as string | undefined) ?? 'nested') as ConsoleBackendName;
  if (backend !== 'nested' && backend !== 'network' && backend !== 'unix') {
    return { kind: 'error', message: `--backend must be nested, network or unix, got "${values.backend}"` };
  }
  const portNames = (values['port-name'] as string[] | undefined) ?? [];
  for (const n of portNames) {
    if (!PORT_NAME.test(n) || Buffer.byteLength(n) > MAX_PORT_NAME_BYTES) {
      return {
        kind: 'error',
        message: `--port-name "${n}": 1..${MAX_PORT_NAME_BYTES} characters of letters, digits, _ . : -`,
      };
    }
  }
  if (new Set(portNames).size !== portNames.length)
    return { kind: 'error', message: '--port-name given twice with the same name' };
  if (backend === 'nested') {
    if (count !== 1) {
      return {
        kind: 'error',
        message: `the nested backend serves one guest: --socket-count must be 1, got ${count}`,
      };
    }
    if (portNames.length > 0) {
      return { kind: 'error', message: 'named ports (--port-name) need --backend network or unix' };
    }
  }
  if (values['no-multiport'] && portNames.length > 0) {
    return { kind: 'error', message: '--port-name needs MULTIPORT (drop --no-multiport)' };
  }
  const tcpPort = intOption(values['tcp-port'] as string | undefined, 'tcp-port', 1, 65535, DEFAULT_TCP_PORT);
  if (typeof tcpPort === 'string') return { kind: 'error', message: tcpPort };
  const lastPort = tcpPort + (portNames.length + 1) * count - 1;
  if (backend === 'network' && lastPort > 65535) {
    return {
      kind: 'error',
      message: `--tcp-port ${tcpPort} leaves no room for ${(portNames.length + 1) * count} ports`,
    };
  }
  const tcpHost = (values['tcp-host'] as string | undefined) ?? '127.0.0.1';
  if (tcpHost === '') return { kind: 'error', message: '--tcp-host is empty' };
  const udsPath = (values['uds-path'] as string | undefined) ?? null;
  if (backend === 'unix') {
    if (udsPath === null || udsPath === '')
      return { kind: 'error', message: 'the unix backend needs --uds-path PATH' };
    const longestName = portNames.reduce((a, n) => (n.length > a.length ? n : a), '');
    const longest = `${udsPath}${count - 1}${longestName === '' ? '' : `-${longestName}`}`;
    if (Buffer.byteLength(longest) > 107) {
      return {
        kind: 'error',
        message: `client socket path "${longest}" is longer than the 107 bytes a Unix socket allows`,
      };
    }
  } else if (udsPath !== null) {
    return { kind: 'error', message: '--uds-path is for --backend unix' };
  }
  if (backend !== 'network' && (values['tcp-host'] !== undefined || values['tcp-port'] !== undefined)) {
    return { kind: 'error', message: '--tcp-port and --tcp-host are for --backend network' };
  }
  const scrollback = intOption(
    values.scrollback as string | undefined,
    'scrollback',
    0,
    64 * 1024 * 1024,
    64 * 1024,
  );
  if (typeof scrollback === 'string') return { kind: 'error', message: scrollback };
  const logFile = (values['log-file'] as string | undefined) ?? null;
  if (logFile === '') return { kind: 'error', message: '--log-file is empty' };
  const cols = intOption(values.cols as string | undefined, 'cols', 1, 65535, 80);
  if (typeof cols === 'string') return { kind: 'error', message: cols };
  const rows = intOption(values.rows as string | undefined, 'rows', 1, 65535, 24);
  if (typeof rows === 'string') return { kind: 'error', message: rows };
  const http = parseHttpOptions(values);
  if (typeof http === 'string') return { kind: 'error', message: http };

  return {
    kind: 'run',
    options: {
      ...common.options,
      backend,
      tcpHost,
      tcpPort,
      udsPath,
      portNames,
      scrollback,
      logFile,
      size: !values['no-size'],
      multiport: !values['no-multiport'],
      emergWrite: !values['no-emerg-write'],
      legacyResizeOrder: Boolean(values['legacy-resize-order']),
      cols,
      rows,
      http,
    },
  };
}

export const CONSOLE_HELP = `NAME
    vhost-device-console - VirtIO console back-end (vhost-user): guest consoles over TCP, Unix
    sockets or this terminal

SYNOPSIS
    vhost-device-console --socket-path PATH [--socket-count N] [--backend nested|network|unix]
                         [--tcp-port PORT] [--tcp-host ADDR] [--uds-path PATH]
                         [--port-name NAME]... [OPTIONS]
    vhost-device-console --fd N [OPTIONS]
    vhost-device-console --print-capabilities

DESCRIPTION
    Serves N guests, one vhost-user Unix socket each, at PATH0 .. PATH{N-1}. Each guest gets a
    VirtIO console (device ID 3): port 0 is its console (hvc0 in a Linux guest, where getty gives
    a login prompt); --port-name adds named ports (/dev/virtio-ports/NAME in the guest).

    Guest output is consumed at once whether a client is connected or not, so a guest never
    stalls. While no client is connected it is kept in a scrollback (--scrollback bytes per port)
    that the next client receives first. Input is flow-controlled, never dropped. One client per
    port at a time; a second one is told why and closed.

BACKENDS
    -b, --backend nested (default)
        Guest 0's console on this terminal, in raw mode (Ctrl-C goes to the guest). Escape
        character Ctrl-]: Ctrl-] q quits the daemon, Ctrl-] Ctrl-] sends Ctrl-], Ctrl-] ? help.
        The terminal size follows window changes. Needs --socket-count 1 and no named ports.
    -b, --backend network
        One TCP listener per port: guest i's console on PORT+i; named port j (1-based, in
        --port-name order) of guest i on PORT + j*N + i. Connect with e.g.
        socat -,raw,echo=0 tcp:127.0.0.1:PORT
    -b, --backend unix
        One listening Unix socket per port: guest i's console on UDS_PATH+i, named port NAME on
        UDS_PATH+i-NAME. Connect with e.g. socat -,raw,echo=0 unix-connect:UDS_PATH0
    Every port's address is logged at start.

OPTIONS
    -s, --socket-path PATH
        Base path of the vhost-user sockets; the index 0..N-1 is appended.
    --fd N
        Serve one guest on an already-open listening Unix socket N instead of --socket-path.
    -c, --socket-count N
        Number of guests, 1..${MAX_CONSOLE_SOCKETS}. Default 1.
    -p, --tcp-port PORT
        First TCP port of the network backend. Default ${DEFAULT_TCP_PORT}.
    --tcp-host ADDR
        Address the network backend binds. Default 127.0.0.1. Consoles have no authentication:
        binding another address logs a warning.
    --uds-path PATH
        Base path of the unix backend's client sockets.
    --port-name NAME
        Add a named port to every guest (repeatable), e.g. org.qemu.guest_agent.0.
    --scrollback BYTES
        Output kept per port while no client is connected. Default 65536; 0 keeps nothing.
    --log-file PATH
        Also append everything each guest prints to PATH+i (named ports: PATH+i-NAME).
    --cols N, --rows N
        Terminal size reported to guests by the network and unix backends. Default 80 x 24.
    --legacy-resize-order
        Send RESIZE as rows, cols: what Linux guests before 6.15 expect (newer ones read cols first,
        as the VIRTIO spec says).
    --no-size, --no-multiport, --no-emerg-write
        Do not offer VIRTIO_CONSOLE_F_SIZE, _F_MULTIPORT (then only the console port exists), or
        _F_EMERG_WRITE.
${httpOptionsHelp('a status page', false)}${COMMON_OPTIONS_HELP}
QEMU
    Start the daemon first, then QEMU (10.2 or newer has vhost-user-test-device-pci):
      qemu-system-x86_64 ... \\
        -object memory-backend-memfd,id=mem,size=1G,share=on -machine memory-backend=mem \\
        -chardev socket,id=con0,path=PATH0 \\
        -device vhost-user-test-device-pci,chardev=con0,virtio-id=3,num_vqs=4,config_size=12
    With K named ports, num_vqs=2*(K+2) (one receive/transmit pair per port plus the control pair).

EXIT STATUS
    0 after SIGINT/SIGTERM or Ctrl-] q (sockets removed), 2 for a bad command line, 1 when start-up
    fails (path or TCP port in use, ...).
`;
