/**
 * Seeded fuzz runner (see scripts/fuzz.mjs). Each case is `seededBytes(seed + i, length)` fed to a
 * target; a failing input is written to `--out` (default fuzz-crashes/) as raw bytes, named after the
 * target, seed and case, and can be replayed with `--replay FILE`.
 *
 * Options: --time S (default 60), --seed N (default: time-based), --target session|memory|all,
 * --cases N (stop after N cases per target), --out DIR, --replay FILE, --max-crashes N (default 5).
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { seededBytes } from './input.js';
import { TARGETS, type TargetName } from './targets.js';

interface Options {
  time: number;
  seed: number;
  targets: TargetName[];
  cases: number;
  out: string;
  replay: string | null;
  maxCrashes: number;
}

function parse(argv: string[]): Options {
  const o: Options = {
    time: 60,
    seed: Date.now() % 1_000_000_000,
    targets: ['session', 'memory'],
    cases: Number.POSITIVE_INFINITY,
    out: 'fuzz-crashes',
    replay: null,
    maxCrashes: 5,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const v = (): string => {
      const x = argv[++i];
      if (x === undefined) throw new Error(`${a} needs a value`);
      return x;
    };
    if (a === '--time') o.time = Number(v());
    else if (a === '--seed') o.seed = Number(v());
    else if (a === '--cases') o.cases = Number(v());
    else if (a === '--out') o.out = v();
    else if (a === '--replay') o.replay = v();
    else if (a === '--max-crashes') o.maxCrashes = Number(v());
    else if (a === '--target') {
      const t = v();
      o.targets = t === 'all' ? ['session', 'memory'] : [t as TargetName];
      if (!o.targets.every((x) => x in TARGETS)) throw new Error(`unknown target ${t}`);
    } else if (a === '--') continue;
    else throw new Error(`unknown option ${a}`);
  }
  if (!Number.isFinite(o.time) || o.time <= 0) throw new Error('--time must be a positive number of seconds');
  if (!Number.isSafeInteger(o.seed)) throw new Error('--seed must be an integer');
  return o;
}

function main(): number {
  const o = parse(process.argv.slice(2));
  if (o.replay !== null) {
    const bytes = new Uint8Array(readFileSync(o.replay));
    const name = (
      o.targets.length === 1 ? o.targets[0] : o.replay.split('/').pop()!.split('-')[0]
    ) as TargetName;
    const target = TARGETS[name];
    if (!target) throw new Error(`cannot tell the target of ${o.replay}: pass --target`);
    target.run(bytes);
    console.log(`replay ${o.replay} on ${name}: no failure`);
    return 0;
  }
  let crashes = 0;
  const share = (o.time * 1000) / o.targets.length;
  console.log(`fuzz: seed ${o.seed}, ${o.time} s, targets ${o.targets.join(', ')}`);
  for (const name of o.targets) {
    const target = TARGETS[name];
    const end = Date.now() + share;
    let n = 0;
    while (Date.now() < end && n < o.cases && crashes < o.maxCrashes) {
      const seed = o.seed + n;
      const bytes = seededBytes(seed, target.inputLength);
      n++;
      try {
        target.run(bytes);
      } catch (err) {
        crashes++;
        mkdirSync(o.out, { recursive: true });
        const file = join(o.out, `${name}-seed${o.seed}-case${n - 1}.bin`);
        writeFileSync(file, bytes);
        console.log(`CRASH ${name} seed ${seed} -> ${file}`);
        console.log(err instanceof Error ? (err.stack ?? err.message) : String(err));
      }
    }
    console.log(`${name}: ${n} cases`);
  }
  console.log(crashes === 0 ? 'fuzz: no crash' : `fuzz: ${crashes} crash(es)`);
  return crashes === 0 ? 0 : 1;
}

process.exitCode = main();
