#!/usr/bin/env node
// Runs the node:test suites named on the command line (unit, property, integration, e2e).
// Node 20's --test does not expand globs and does not pick up .ts files from a directory,
// so we list the files ourselves and load them through tsx.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';

const root = resolve(import.meta.dirname, '..');
const suites = process.argv.slice(2);
if (suites.length === 0) {
  console.error('usage: run-tests.mjs SUITE... (unit property integration e2e)');
  process.exit(2);
}

function walk(dir) {
  if (!existsSync(dir)) return [];
  const out = [];
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...walk(p));
    else if (name.endsWith('.test.ts')) out.push(p);
  }
  return out;
}

const files = suites.flatMap((s) => walk(join(root, 'test', s)));
if (files.length === 0) {
  console.error(`no test files found for: ${suites.join(' ')}`);
  process.exit(1);
}
// --single-threaded-gc: the e2e tests embed the daemon, and the vhost-device-can command runs node
// with it (src/node/realtime-flags.ts); node --test passes it on to each test file's process.
const args = ['--single-threaded-gc', '--import', 'tsx', '--expose-gc', '--test', '--test-reporter=spec'];
if (process.env.TEST_CONCURRENCY) args.push(`--test-concurrency=${process.env.TEST_CONCURRENCY}`);
const r = spawnSync(process.execPath, [...args, ...files], { stdio: 'inherit', cwd: root });
process.exit(r.status ?? 1);
