// A CAN daemon in a child process, driven over the IPC channel: for tests that watch the daemon's
// own /proc entries (fds, mappings, RSS, CPU time) apart from the front-end's. Started by
// startChildDaemon() in vhost-user.ts as `node --import tsx --expose-gc daemon-child.ts PATH`.
import { closeSync, openSync } from 'node:fs';
import { getHeapStatistics } from 'node:v8';
import { makeCanFrame } from '../../src/core/bus/can-frame.js';
import type { HubPort } from '../../src/core/bus/hub.js';
import type { LogFields, Logger } from '../../src/core/util/log.js';
import { startCanDaemon } from '../../src/node/can/can-daemon.js';

export type ChildRequest =
  | { cmd: 'status' }
  /** Forces two full GCs, then reports. */
  | { cmd: 'gc' }
  /** Opens /dev/null until the fd table is full (EMFILE). */
  | { cmd: 'fill-fds' }
  | { cmd: 'free-fds' }
  /** Puts `n` classic frames on the bus from a host port (RX traffic for the guest). */
  | { cmd: 'inject'; n: number };

export interface ChildReply {
  status: ReturnType<ReturnType<typeof startCanDaemon>['daemon']['status']>;
  /** Log lines by message text (error and warn only). */
  logs: Record<string, number>;
  /** V8 heap in use (bytes). (RSS is read by the parent: the child may have no fd to spare.) */
  heapUsed: number;
  /** fds held by fill-fds. */
  filled: number;
}

const logs: Record<string, number> = {};
const count = (msg: string): void => {
  logs[msg] = (logs[msg] ?? 0) + 1;
};
const log: Logger = {
  debugEnabled: false,
  error: (msg: string, _f?: LogFields) => count(msg),
  warn: (msg: string, _f?: LogFields) => count(msg),
  info: () => {},
  debug: () => {},
  child: () => log,
};

const path = process.argv[2];
if (path === undefined || process.send === undefined) {
  throw new Error('usage: node --import tsx daemon-child.ts SOCKET_PATH (with an IPC channel)');
}
const can = startCanDaemon({ paths: [path], log });
const host: HubPort = can.hubFor(0).attach(
  {
    onFramesAvailable() {
      while (host.take() !== undefined) {
        /* guest frames: not needed */
      }
    },
  },
  { name: 'host' },
);
const filler: number[] = [];
const gc = (globalThis as { gc?: () => void }).gc;

function reply(): ChildReply {
  const heapUsed = getHeapStatistics().used_heap_size;
  return { status: can.daemon.status(), logs, heapUsed, filled: filler.length };
}

process.on('message', (req: ChildRequest) => {
  switch (req.cmd) {
    case 'gc':
      gc?.();
      gc?.();
      break;
    case 'fill-fds':
      for (let i = 0; i < 100_000; i++) {
        try {
          filler.push(openSync('/dev/null', 'r'));
        } catch {
          break;
        }
      }
      break;
    case 'free-fds':
      for (const fd of filler.splice(0)) closeSync(fd);
      break;
    case 'inject':
      for (let i = 0; i < req.n; i++) host.transmit(makeCanFrame({ id: i & 0x7ff, data: [i & 0xff] }));
      break;
  }
  process.send!(reply());
});
// The parent went away: stop (removes the socket file) and exit.
process.on('disconnect', () => {
  host.detach();
  can.stop();
  process.exit(0);
});
process.send(reply());
