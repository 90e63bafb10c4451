/**
 * vhost-device-can and vhost-device-console benchmarks (not tests):
 * `npm run bench [-- --quick] [--only=LIST] [--tsx]`.
 *
 * The daemon runs in its own process (compiled dist/cli/vhost-device-can.js, rebuilt when src/ is
 * newer), driven over real vhost-user sockets, memfd guest RAM and eventfds by the TypeScript
 * front-end running in two load processes (bench/lib/worker.ts), so that neither side shares an
 * event loop with the other. Phases:
 *   tp     guest -> bus throughput: 8-byte classic / 64-byte FD, 1/16/64 frames per kick, with and
 *          without LATE_TX_ACK; a second guest drains its RX ring. Baseline: the same frames through
 *          a do-nothing relay process over socketpairs.
 *   rx     bus -> guest throughput against the receiver's RX ring size.
 *   lat    guest -> guest latency, one frame in flight and paced at 50% of the tp maximum, with the
 *          socket-relay baseline at the same rate.
 *   scale  1, 4, 16 guests on one bus, all sending and receiving; daemon CPU per frame; the 16-guest
 *          daemon also gives the idle CPU and the memory figures.
 *   prof   the tp 8-byte / 64-per-kick scenario with the daemon under --cpu-prof; top self time.
 *   socketcand  frames/s over a socketcand link between two daemons on loopback (bench/phases/
 *          socketcand.ts), daemon CPU per frame, beside the in-process bus.
 *   web    the tp flood without --http beside the same flood with one monitor page's requests and
 *          /metrics scraped every second (the cost of watching).
 *   timed  the timed bus (--bitrate): delivered/exact rate at 125k/500k/1M, per-frame timing error,
 *          idle CPU, how many guests on 1 Mbit/s buses one daemon keeps on time; untimed baseline.
 *   con    vhost-device-console (bench/lib/console-bench.ts): guest -> TCP client and client -> guest
 *          throughput, keystroke echo round trip, each beside a Unix<->TCP relay process; idle CPU
 *          with 16 guests.
 *   net    guest -> guest over a network link (cannelloni, socketcand) between two daemons on loopback, frames/s
 *          and daemon CPU per frame, beside the in-process bus.
 *   cap    the tp flood (8-byte frames, 64 per kick) with --capture to pcapng, BLF and both, beside
 *          the same flood without capture; file bytes per frame.
 * Results: a table on stdout, JSON in bench/results/<timestamp>.json and bench/results/latest.json.
 * Layout: this file parses the options, runs the phases and writes the results; each phase's
 * measurements and its tables are in bench/phases/<phase>.ts, shared pieces in bench/lib.
 */
import { mkdirSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { loadNative, prepareBuild, REPO_ROOT } from './lib/build.js';
import { sleep, withTimeout } from './lib/children.js';
import { type Config, Ctx, log, OTHER_LIMIT, PHASES, type Phase } from './lib/context.js';
import { cpuCount, loadAverage } from './lib/proc.js';
import type { Results } from './lib/results.js';
import { writeJson } from './lib/write-json.js';
import { measureCap, reportCap } from './phases/cap.js';
import { measureCon, reportCon } from './phases/con.js';
import { measureLat, reportLat } from './phases/lat.js';
import { measureNet, reportNet } from './phases/net.js';
import { measureProf, reportProf } from './phases/prof.js';
import { measureRx, reportRx } from './phases/rx.js';
import { measureScale, reportScale } from './phases/scale.js';
import { measureSocketcand, reportSocketcand } from './phases/socketcand.js';
import { measureTimed, reportTimed } from './phases/timed.js';
import { measureTp, reportTp } from './phases/tp.js';
import { measureWeb, reportWeb } from './phases/web.js';

// ---- configuration --------------------------------------------------------------------------------

function parseConfig(argv: readonly string[]): Config | null {
  let quick = false;
  let forceTsx = false;
  let phases = new Set<Phase>(PHASES);
  for (const a of argv) {
    if (a === '--quick') quick = true;
    else if (a === '--tsx') forceTsx = true;
    else if (a.startsWith('--only=')) {
      const list = a.slice(7).split(',').filter(Boolean);
      const bad = list.filter((p) => !(PHASES as readonly string[]).includes(p));
      if (bad.length > 0)
        throw new Error(`--only: unknown phase(s) ${bad.join(', ')} (known: ${PHASES.join(', ')})`);
      phases = new Set(list as Phase[]);
    } else if (a === '--help' || a === '-h') return null;
    else throw new Error(`unknown option ${a}`);
  }
  return {
    quick,
    phases,
    forceTsx,
    warmMs: quick ? 250 : 500,
    measureMs: quick ? 800 : 3000,
    latCount: quick ? 20_000 : 100_000,
    latWarmup: quick ? 500 : 2000,
    pacedSeconds: quick ? 1 : 3,
    pacedFractions: quick ? [0.5] : [0.1, 0.5],
    idleMs: quick ? 3000 : 10_000,
    memFrames: quick ? 200_000 : 1_000_000,
    profMs: quick ? 1500 : 4000,
    queueSize: 256,
    rxSizes: quick ? [64, 1024] : [64, 256, 1024],
    rxFrames: quick ? ['classic8'] : ['classic8', 'fd64'],
    scaleGuests: [1, 4, 16],
    con: {
      warmMs: quick ? 250 : 500,
      measureMs: quick ? 1000 : 3000,
      queueSize: 256,
      writeChunk: 32 * 1024,
      clientChunk: 64 * 1024,
      pingCount: quick ? 3000 : 10_000,
      pingWarmup: quick ? 300 : 1000,
      idleGuests: 16,
      idleMs: quick ? 3000 : 10_000,
    },
    phaseLimitMs: quick
      ? {
          tp: 120_000,
          rx: 60_000,
          lat: 60_000,
          scale: 60_000,
          prof: 60_000,
          con: 60_000,
          socketcand: 60_000,
          web: 90_000,
          net: 90_000,
          cap: 90_000,
          timed: 90_000,
        }
      : {
          tp: 420_000,
          rx: 150_000,
          lat: 180_000,
          scale: 180_000,
          prof: 90_000,
          con: 120_000,
          socketcand: 90_000,
          web: 150_000,
          net: 360_000,
          cap: 180_000,
          timed: 180_000,
        },
    gateMs: quick ? 1000 : 5000,
    phaseGateMs: quick ? 3000 : 30_000,
  };
}

const HELP = `usage: npm run bench [-- OPTIONS]
  --quick        short runs (about a minute in total)
  --only=LIST    phases to run, comma separated: ${PHASES.join(',')} (default: all)
  --tsx          run the daemon through tsx instead of the compiled dist/
`;

// ---- report ----------------------------------------------------------------------------------------

function report(res: Results): string {
  const out: string[] = [];
  const env = res.env;
  out.push(
    `vhost-device-can benchmarks  ${String(env.startedAt)}  ${env.quick ? 'QUICK' : 'full'} run`,
    `node ${String(env.node)}, ${String(env.cores)} x ${String(env.cpuModel)}, code under test: ${String(env.build)}`,
    `load average before: ${String(env.loadAverageBefore)}, after: ${String(env.loadAverageAfter)}`,
    'CPU columns: % of one core over the measured window (daemon / load processes / other = the rest of',
    'the machine, i.e. processes that are not part of this benchmark).',
  );
  reportTp(res, out);
  reportRx(res, out);
  reportLat(res, out);
  reportScale(res, out);
  reportProf(res, out);
  reportCon(res, out);
  reportSocketcand(res, out);
  reportWeb(res, out);
  reportNet(res, out);
  reportCap(res, out);
  reportTimed(res, out);
  const spoilt = [
    ...res.tp,
    ...res.baselineTp,
    ...res.rx,
    ...res.latency,
    ...res.scale,
    ...(res.con?.flows ?? []),
    ...(res.con?.latency ?? []),
    ...(res.web?.runs.map((r) => r.flow) ?? []),
    ...res.net,
    ...res.netBus,
    ...res.cap.map((c) => c.flow),
    ...(res.timed?.rates ?? []),
    ...(res.timed?.scale ?? []),
  ].filter((r) => r.cpu.other > OTHER_LIMIT).length;
  if (spoilt > 0) {
    out.push(
      `note: ${spoilt} measurement(s) ran while other processes used more than ${OTHER_LIMIT}% of a core (column "other"),`,
      '      even after waiting and measuring again: treat those rows as pessimistic.',
    );
  }
  for (const n of res.notes) out.push(`note: ${n}`);
  for (const e of res.errors) out.push(`ERROR in ${e.phase}: ${e.error}`);
  return out.join('\n');
}

// ---- main ------------------------------------------------------------------------------------------

const stamp = new Date().toISOString().replace(/[:.]/g, '-');

async function main(): Promise<number> {
  let cfg: Config | null;
  try {
    cfg = parseConfig(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`bench: ${(err as Error).message}\n${HELP}`);
    return 2;
  }
  if (cfg === null) {
    process.stdout.write(HELP);
    return 0;
  }
  const started = Date.now();
  // Whatever happens, the run ends: the exit hook kills every child process.
  const watchdog = setTimeout(
    () => {
      log('watchdog: the run took too long; killing everything');
      process.exit(1);
    },
    cfg.quick ? 4 * 60_000 : 15 * 60_000,
  );
  watchdog.unref();

  const build = await prepareBuild({ tsx: cfg.forceTsx, log });
  const native = await loadNative(build);
  const cores = cpuCount();
  const res: Results = {
    env: {
      startedAt: new Date().toISOString(),
      quick: cfg.quick,
      node: process.version,
      cores,
      cpuModel: cpus()[0]?.model ?? '?',
      build: build.note,
      loadAverageBefore: loadAverage().join(' '),
      queueSize: cfg.queueSize,
      warmMs: cfg.warmMs,
      measureMs: cfg.measureMs,
      phases: [...cfg.phases],
    },
    tp: [],
    baselineTp: [],
    rx: [],
    latency: [],
    scale: [],
    idle: null,
    memory: [],
    profile: null,
    con: null,
    web: null,
    net: [],
    netBus: [],
    cap: [],
    timed: null,
    errors: [],
    notes: [],
  };
  const ctx = new Ctx(cfg, build, native, cores, stamp);
  // Re-measuring spoilt windows must not stretch a run past its budget (~8 min full, ~1.5 quick).
  ctx.retryUntil = started + (cfg.quick ? 60_000 : 5 * 60_000);
  await ctx.startWorkers();
  const phases: Record<Phase, (c: Ctx, r: Results) => Promise<void>> = {
    tp: measureTp,
    rx: measureRx,
    lat: measureLat,
    scale: measureScale,
    prof: measureProf,
    con: measureCon,
    socketcand: measureSocketcand,
    web: measureWeb,
    net: measureNet,
    cap: measureCap,
    timed: measureTimed,
  };
  for (const p of PHASES) {
    if (!cfg.phases.has(p)) continue;
    // Other sessions run QEMU guests on the same cores: wait a while for a quieter machine.
    const quiet = await ctx.quietGate(cfg.phaseGateMs, 1000);
    res.env[`otherLoadBefore_${p}`] = quiet;
    if (quiet > 25) {
      const w = `phase ${p} started with the machine ${quiet}% busy (of ${cores * 100}%) without us: figures are pessimistic and noisy`;
      log(`WARNING: ${w}`);
      res.notes.push(w);
    }
    const t0 = Date.now();
    const running = phases[p](ctx, res);
    try {
      await withTimeout(running, cfg.phaseLimitMs[p], `phase ${p}`);
    } catch (err) {
      // A timed-out phase is still running: make its next step throw and let it unwind first.
      ctx.cancelled = true;
      await Promise.race([running.catch(() => undefined), sleep(30_000)]);
      ctx.cancelled = false;
      const msg = (err as Error)?.message ?? String(err);
      log(`phase ${p} failed: ${msg}`);
      res.errors.push({ phase: p, error: msg });
      try {
        await ctx.reset();
      } catch (e) {
        res.errors.push({ phase: p, error: `cannot restart the load processes: ${(e as Error).message}` });
        log(`${(e as Error).message}: skipping the remaining phases`);
        break;
      }
    }
    log(`phase ${p}: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  }
  await ctx.stopDaemons();
  await ctx.stopWorkers();
  res.env.loadAverageAfter = loadAverage().join(' ');
  res.env.durationS = Math.round((Date.now() - started) / 1000);
  res.env.remeasured = ctx.retries;

  process.stdout.write(`${report(res)}\n`);
  const dir = join(REPO_ROOT, 'bench/results');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${stamp}.json`);
  writeJson([file, join(dir, 'latest.json')], res);
  log(`results: ${file} (and bench/results/latest.json); ${res.env.durationS} s`);
  return res.errors.length === 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`bench: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exit(1);
  },
);
