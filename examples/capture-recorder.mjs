#!/usr/bin/env node
// Runs vhost-device-can in-process and records its bus into a capture file (.pcapng, .log, .asc
// or .blf); Ctrl-C stops, completes the file and reads it back.
//   node examples/capture-recorder.mjs /tmp/can.sock 2 /tmp/bus.pcapng
import { readCaptureFile, recordBuses, StructuredLogger, startCanDaemon } from 'vhost-device-ts';

const [base = '/tmp/can.sock', count = '1', file = '/tmp/bus.pcapng'] = process.argv.slice(2);
const paths = Array.from({ length: Number(count) }, (_, i) => `${base}${i}`);
const log = new StructuredLogger({ level: 'warn' });
const can = startCanDaemon({ paths, log });

// Frames reach the file within half a second, with wall-clock time stamps; a guest's frames are
// marked outbound and named (pcapng comment "guest0").
const recording = recordBuses(file, can.hubFor(0), { log });
process.stderr.write(`listening on ${paths.join(' ')}, recording into ${file}\n`);

process.on('SIGINT', () => {
  recording.close(); // writes the rest synchronously: the file is complete now
  can.stop();
  const frames = readCaptureFile(file).filter((e) => e.kind === 'frame');
  process.stdout.write(`${frames.length} frames in ${file}\n`);
  process.exit(0);
});
