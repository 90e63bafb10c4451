/**
 * Writes JSON result files the way the repository's formatter wants them. bench/results is
 * git-ignored but Biome (biome.json: files.includes has bench/**, no VCS integration) still checks
 * it, and JSON.stringify's layout is not Biome's: unformatted files there would fail `npm run lint`.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from './build.js';

export function writeJson(files: readonly string[], value: unknown): void {
  const text = `${JSON.stringify(value, null, 2)}\n`;
  for (const f of files) writeFileSync(f, text);
  const biome = join(REPO_ROOT, 'node_modules/.bin/biome');
  if (existsSync(biome)) {
    spawnSync(biome, ['format', '--write', ...files], { cwd: REPO_ROOT, stdio: 'ignore', timeout: 60_000 });
  }
}
