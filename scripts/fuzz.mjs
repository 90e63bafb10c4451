#!/usr/bin/env node
// Long seeded fuzz runs on demand: `npm run fuzz -- --time 600 --seed 42`.
// Targets: the vhost-user message stream driving a CAN device (session) and the memory table /
// guest memory (memory). Prints cases run per target and every crash; a crashing input is saved
// under fuzz-crashes/ and replays with `npm run fuzz -- --replay fuzz-crashes/FILE`.
// Exit status 1 when anything crashed. Options: see test/fuzz/run.ts.
import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';

const root = resolve(import.meta.dirname, '..');
const r = spawnSync(process.execPath, ['--import', 'tsx', 'test/fuzz/run.ts', ...process.argv.slice(2)], {
  stdio: 'inherit',
  cwd: root,
});
process.exit(r.status ?? 1);
