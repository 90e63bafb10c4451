// parseCanArgs for the argument tests: the options of a command line that must parse, or the
// message of one that must not.
import assert from 'node:assert/strict';
import { parseCanArgs } from '../../../src/cli/can-args.js';

export function run(argv: string[]) {
  const r = parseCanArgs(argv);
  assert.equal(r.kind, 'run', r.kind === 'error' ? r.message : r.kind);
  return (r as Extract<typeof r, { kind: 'run' }>).options;
}

export function err(argv: string[]): string {
  const r = parseCanArgs(argv);
  assert.equal(r.kind, 'error');
  return (r as { message: string }).message;
}
