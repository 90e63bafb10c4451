#!/usr/bin/env node
// Runs vhost-device-can in-process and prints every frame on the virtual bus in `candump -L`
// format; each line typed on stdin in cansend syntax (e.g. 123#DEADBEEF) is sent to the guests.
//   node examples/bus-monitor.mjs /tmp/can.sock 2
import { createInterface } from 'node:readline';
import { formatCandump, parseCandump, StructuredLogger, startCanDaemon } from 'vhost-device-ts';

const [base = '/tmp/can.sock', count = '1'] = process.argv.slice(2);
const paths = Array.from({ length: Number(count) }, (_, i) => `${base}${i}`);
const can = startCanDaemon({ paths, log: new StructuredLogger({ level: 'warn' }) });
const bus = can.hubFor(0);

// Each frame is printed at once and then handed back (releasesFrames), so the bus can reuse it.
const monitor = bus.attach(
  {
    onFramesAvailable() {
      for (let f = monitor.take(); f !== undefined; f = monitor.take()) {
        process.stdout.write(`${formatCandump(f, 'vbus0')}\n`);
        monitor.release(f);
      }
    },
  },
  { name: 'monitor', releasesFrames: true },
);

createInterface({ input: process.stdin }).on('line', (line) => {
  if (line.trim() === '') return;
  try {
    monitor.transmit(parseCandump(line.trim()));
  } catch (err) {
    process.stderr.write(`bad frame "${line}": ${err.code}\n`);
  }
});

process.stderr.write(`listening on ${paths.join(' ')}\n`);
const stop = () => {
  can.stop();
  process.exit(0);
};
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
