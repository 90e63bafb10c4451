#!/usr/bin/env node
// Builds the in-repo Node-API addon (binding.gyp -> build/Release/vhost_native.node).
// Runs as the package's "install" script (npm install / npm ci) and standalone.
//
// node-gyp must be given --nodedir: without it, it tries to download the Node headers
// from nodejs.org, which fails offline (docs/decisions.md "Native addon"). We pick, in order:
//   1. npm_config_nodedir (npm exports it from ~/.npmrc `nodedir=` or --nodedir),
//   2. <dirname(node)>/../include/node when it holds node_api.h (official tarballs, nvm, NodeSource),
//   3. /usr/include/node -> nodedir /usr (Debian/NodeSource packages).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';

const root = resolve(import.meta.dirname, '..');

function pickNodedir() {
  const fromNpm = process.env.npm_config_nodedir;
  if (fromNpm) return fromNpm;
  const prefix = resolve(dirname(process.execPath), '..');
  if (existsSync(join(prefix, 'include', 'node', 'node_api.h'))) return prefix;
  if (existsSync('/usr/include/node/node_api.h')) return '/usr';
  return undefined;
}

function pickNodeGyp() {
  const fromNpm = process.env.npm_config_node_gyp;
  if (fromNpm && existsSync(fromNpm)) return fromNpm;
  const bundled = '/usr/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js';
  if (existsSync(bundled)) return bundled;
  // npm's own copy next to this node binary (official tarballs, nvm).
  const nextToNode = resolve(
    dirname(process.execPath),
    '..',
    'lib',
    'node_modules',
    'npm',
    'node_modules',
    'node-gyp',
    'bin',
    'node-gyp.js',
  );
  if (existsSync(nextToNode)) return nextToNode;
  try {
    return createRequire(import.meta.url).resolve('node-gyp/bin/node-gyp.js');
  } catch {
    return undefined;
  }
}

function fail(message) {
  console.error(`build-native: ${message}`);
  process.exit(1);
}

const nodedir = pickNodedir();
const hint = `needs python3, make, a C compiler and Node headers (nodedir=${nodedir ?? 'not found'})`;
if (nodedir === undefined) {
  fail(`no Node headers found (set npm_config_nodedir or install them); the addon ${hint}`);
}
const nodeGyp = pickNodeGyp();
if (nodeGyp === undefined) {
  fail(`node-gyp not found (set npm_config_node_gyp); the addon ${hint}`);
}

const args = [nodeGyp, 'rebuild', `--nodedir=${nodedir}`];
if (process.env.JOBS) args.push(`--jobs=${process.env.JOBS}`);
const result = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' });
if (result.error) fail(`could not run node-gyp (${result.error.message}); the addon ${hint}`);
if (result.status !== 0) {
  fail(`node-gyp rebuild failed (exit ${result.status ?? result.signal}); the addon ${hint}`);
}
const output = join(root, 'build', 'Release', 'vhost_native.node');
if (!existsSync(output)) fail(`node-gyp succeeded but ${output} is missing; the addon ${hint}`);
console.log(`build-native: built ${output}`);
