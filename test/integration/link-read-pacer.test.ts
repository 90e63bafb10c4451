/**
 * ReadPacer on a real TCP connection (loopback): a peer in another process writes megabytes as
 * fast as it can to a reader that spends time on every byte (as a parser does); the reader gets a
 * bounded amount per event-loop turn, every byte still arrives in order, and the socket is resumed
 * each turn. Without the pacer the same reader takes much larger runs per turn (shown as a
 * diagnostic, not asserted: it depends on the kernel's buffers).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer, type Socket } from 'node:net';
import { test } from 'node:test';
import { READ_BUDGET_BYTES, ReadPacer } from '../../src/node/bus/link-kit.js';

const TOTAL = 8 * 1024 * 1024;

/** The writer: connects, writes TOTAL bytes of a counting pattern, closes. */
const WRITER = `
  const s = require('node:net').connect(Number(process.argv[1]), '127.0.0.1');
  const b = Buffer.alloc(${TOTAL});
  for (let i = 0; i < b.length; i++) b[i] = (i * 7) & 0xff;
  s.end(b);`;

/** Busy time per byte received, as a parser spends it (about 10 ns a byte). */
function work(bytes: number): void {
  const until = process.hrtime.bigint() + BigInt(bytes * 10);
  while (process.hrtime.bigint() < until) {}
}

/** Accepts the writer's connection and reads it all; measures the bytes handled per turn. */
async function readAll(paced: boolean): Promise<{ maxPerTurn: number; turns: number; pauses: number }> {
  let accepted: (s: Socket) => void = () => {};
  const got = new Promise<Socket>((r) => {
    accepted = r;
  });
  const server = createServer((s) => accepted(s));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  const writer = spawn(process.execPath, ['-e', WRITER, String(port)], { stdio: 'inherit' });
  try {
    const s = await got;
    const pacer = paced ? new ReadPacer(s) : null;
    let received = 0;
    let turnBytes = 0;
    let maxPerTurn = 0;
    let turns = 0;
    let mismatch = -1;
    let done = false;
    const tick = (): void => {
      if (turnBytes > 0) turns++;
      maxPerTurn = Math.max(maxPerTurn, turnBytes);
      turnBytes = 0;
      if (!done) setImmediate(tick);
    };
    setImmediate(tick);
    s.on('data', (chunk: Buffer) => {
      for (let i = 0; i < chunk.length && mismatch < 0; i++) {
        const want = ((received + i) * 7) & 0xff;
        if (chunk[i] !== want) mismatch = received + i;
      }
      received += chunk.length;
      turnBytes += chunk.length;
      work(chunk.length);
      pacer?.consumed(chunk.length);
    });
    await new Promise<void>((resolve, reject) => {
      s.on('end', resolve);
      s.on('error', reject);
    });
    done = true;
    assert.equal(mismatch, -1, 'every byte in order');
    assert.equal(received, TOTAL, 'every byte arrived');
    return { maxPerTurn: Math.max(maxPerTurn, turnBytes), turns, pauses: pacer?.pauses ?? 0 };
  } finally {
    writer.kill();
    server.close();
  }
}

test('ReadPacer: a flood is read a bounded amount per event-loop turn, complete and in order', async (t) => {
  const paced = await readAll(true);
  const free = await readAll(false);
  t.diagnostic(`paced: ${JSON.stringify(paced)}; unpaced: ${JSON.stringify(free)}`);
  // One budget, plus the chunk that crossed it, plus what Node had buffered when paused.
  assert.ok(
    paced.maxPerTurn <= 4 * READ_BUDGET_BYTES,
    `at most about one budget per turn (got ${paced.maxPerTurn} bytes)`,
  );
  assert.ok(paced.pauses > 0, 'the socket was paused');
  assert.ok(paced.turns >= TOTAL / (4 * READ_BUDGET_BYTES), `spread over many turns (${paced.turns})`);
});
