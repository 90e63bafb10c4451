/**
 * The bus port kinds this build knows, by URL scheme (`--link`) and file extension (`--capture`,
 * `--replay`). A new kind is a module exporting a PortFactory and one `register` line here.
 */
import { captureFactory, parseByteSize } from '../capture/capture-port.js';
import { parseReplaySpeed, replayFactory } from '../capture/replay-port.js';
import { cannelloniPortFactory } from '../net/cannelloni-link.js';
import { socketcandLinkFactory } from '../net/socketcand-link.js';
import { PortRegistry } from './port-registry.js';

export const builtinPorts = new PortRegistry()
  .register(socketcandLinkFactory)
  .register(cannelloniPortFactory)
  .register(captureFactory)
  .register(replayFactory);

/**
 * Options shared by the port kinds (for example `--replay-speed`), declared once here so the command
 * line accepts them and hands them to every port of that kind (PortContext.options). `check`
 * validates a value at parse time (a message for a bad one).
 */
export interface PortKindOption {
  readonly type: 'string' | 'boolean';
  readonly help: string;
  check?(value: string | boolean): string | undefined;
}

export const PORT_KIND_OPTIONS: Readonly<Record<string, PortKindOption>> = {
  'capture-max-size': {
    type: 'string',
    help:
      '        Start a new capture file before one would exceed BYTES (K, M, G suffixes; at least 64K):\n' +
      '        trace.pcapng, then trace.1.pcapng, trace.2.pcapng... each complete in itself.',
    check(v) {
      const n = parseByteSize(String(v));
      if (typeof n === 'string') return n;
      return n < 65536 ? `must be at least 64K (65536 bytes), got ${n}` : undefined;
    },
  },
  'replay-speed': {
    type: 'string',
    help: '        Replay time scale: 1 = as recorded (default), 2 = twice as fast, 0.5 = half speed.',
    check(v) {
      const n = parseReplaySpeed(String(v));
      return typeof n === 'string' ? n : undefined;
    },
  },
  'replay-loop': {
    type: 'boolean',
    help: '        Play replays again from the start when they end, for as long as the daemon runs.',
  },
  'replay-start': {
    type: 'string',
    help:
      '        guest (default): a replay starts when the first guest on its bus starts its\n' +
      '        controller (ip link set can0 up); now: at once.',
    check(v) {
      return v === 'guest' || v === 'now' ? undefined : `expected guest or now, got "${String(v)}"`;
    },
  },
};
