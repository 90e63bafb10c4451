/**
 * Phase web: what watching costs. The tp flood (classic8, 64 per kick, LATE_TX_ACK on) through a
 * daemon without --http, beside the same flood through a daemon with --http, one monitor page's
 * worth of requests (the frame stream with CANopen decoding at the page's default rate, plus the
 * page's once-a-second polls of /api/buses, /api/faults and the chart history) and /metrics scraped
 * every second. The page's requests come from an HTTP client in the bench process rather than a
 * browser, so a browser's own CPU use does not blur the daemon's figures on a 2-core machine.
 * Runs alternate (without, with, without, with...) so a drift of the machine's load hits both.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeCanFrame } from '../../src/core/bus/can-frame.js';
import { nullLogger } from '../../src/core/util/log.js';
import { startCanDaemon } from '../../src/node/can/can-daemon.js';
import { startCanWeb } from '../../src/node/http/can-web.js';
import { sleep } from '../lib/children.js';
import { type Ctx, log } from '../lib/context.js';
import type { DaemonProcess } from '../lib/daemon-process.js';
import { flow } from '../lib/flow.js';
import type { FlowResult, Results } from '../lib/results.js';
import { fixed, int, pct, table } from '../lib/table.js';

export interface WebLoadStats {
  /** Frames the stream delivered, and the skipped count it reported. */
  streamFrames: number;
  streamSkipped: number;
  /** Frames the tap's ring overwrote before the viewer looked (the flood outruns a 100 ms tick). */
  streamLost: number;
  scrapes: number;
  /** Mean /metrics response time (ms) and body size (bytes). */
  scrapeMs: number;
  scrapeBytes: number;
  polls: number;
  errors: number;
}

export interface WebRun {
  web: boolean;
  flow: FlowResult;
  load: WebLoadStats | null;
}

/** The in-process measurement: CPU per frame through the bus alone, and with the web load. */
export interface WebInProcess {
  rounds: number;
  /** Median CPU ns per frame without and with a stream viewer and a scraper (other processes). */
  plainNsPerFrame: number;
  webNsPerFrame: number;
  addedNsPerFrame: number;
  /** Frames per second the single producer reached (medians). */
  plainPerS: number;
  webPerS: number;
}

export interface WebResult {
  runs: WebRun[];
  inProcess: WebInProcess | null;
  /** Mean delivered frames/s without and with the web load, and the cost in percent. */
  withoutPerS: number;
  withPerS: number;
  costPercent: number;
  /** Mean daemon CPU per delivered frame (ns) without and with, and that cost in percent. */
  withoutNsPerFrame: number;
  withNsPerFrame: number;
  cpuCostPercent: number;
}

/** Daemon CPU time per delivered frame, ns (the CPU share is % of one core). */
function nsPerFrame(f: FlowResult): number {
  return f.deliveredPerS > 0 ? ((f.cpu.perRole.daemon ?? 0) * 1e7) / f.deliveredPerS : Number.NaN;
}

function urlOf(d: DaemonProcess): string {
  for (const line of d.logLines()) {
    const m = /"http":"(http:\/\/[^"]+)\/"/.exec(line);
    if (m !== null) return m[1]!;
  }
  throw new Error('the daemon did not log its HTTP address');
}

function get(url: string): Promise<{ status: number; bytes: number }> {
  return new Promise((resolve, reject) => {
    const r = request(url, (res) => {
      let bytes = 0;
      res.on('data', (c: Buffer) => {
        bytes += c.length;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, bytes }));
      res.on('error', reject);
    });
    r.on('error', reject);
    r.setTimeout(5000, () => r.destroy(new Error('timeout')));
    r.end();
  });
}

/** One page's worth of requests and a Prometheus scraper, until the returned function is called. */
async function startWebLoad(base: string, stats: WebLoadStats): Promise<() => Promise<void>> {
  let stopped = false;
  const stream = request(`${base}/api/stream?decode=canopen`, { headers: { Accept: 'text/event-stream' } });
  const opened = new Promise<void>((resolve, reject) => {
    stream.on('response', (res) => {
      res.setEncoding('utf8');
      let buf = '';
      res.on('data', (chunk: string) => {
        buf += chunk;
        for (let i = buf.indexOf('\n\n'); i >= 0; i = buf.indexOf('\n\n')) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          if (block.startsWith('event: frame')) stats.streamFrames++;
          else if (block.startsWith('event: stats')) {
            const st = JSON.parse(block.slice(block.indexOf('data: ') + 6)) as {
              skipped: number;
              lost: number;
            };
            stats.streamSkipped = st.skipped;
            stats.streamLost = st.lost;
          } else if (block.includes('event: hello')) resolve();
        }
      });
      res.on('error', () => {
        if (!stopped) stats.errors++;
      });
    });
    stream.on('error', (e) => {
      if (!stopped) reject(e);
    });
  });
  stream.end();
  await opened;
  const loop = async (): Promise<void> => {
    let scrapeMs = 0;
    let scrapeBytes = 0;
    while (!stopped) {
      const t0 = performance.now();
      try {
        const m = await get(`${base}/metrics`);
        if (m.status !== 200) stats.errors++;
        scrapeMs += performance.now() - t0;
        scrapeBytes += m.bytes;
        stats.scrapes++;
        stats.scrapeMs = scrapeMs / stats.scrapes;
        stats.scrapeBytes = scrapeBytes / stats.scrapes;
        await Promise.all(
          ['/api/buses', '/api/faults', '/api/buses/default/history'].map(async (p) => {
            if ((await get(`${base}${p}`)).status !== 200) stats.errors++;
            stats.polls++;
          }),
        );
      } catch {
        stats.errors++;
      }
      await sleep(Math.max(0, 1000 - (performance.now() - t0)));
    }
  };
  const running = loop();
  // Let the first scrape and polls happen before the measured window.
  await sleep(300);
  return async () => {
    stopped = true;
    stream.destroy();
    await running;
  };
}

export async function measureWeb(ctx: Ctx, res: Results): Promise<void> {
  const pairs = ctx.cfg.quick ? 2 : 3;
  const runs: WebRun[] = [];
  for (let i = 0; i < pairs; i++) {
    for (const web of [false, true]) {
      log(
        `web: flood classic8 64 per kick, ${web ? 'with a page and /metrics every second' : 'no --http'} (${i + 1}/${pairs})`,
      );
      await ctx.quietGate(ctx.cfg.gateMs);
      const load: WebLoadStats | null = web
        ? {
            streamFrames: 0,
            streamSkipped: 0,
            streamLost: 0,
            scrapes: 0,
            scrapeMs: 0,
            scrapeBytes: 0,
            polls: 0,
            errors: 0,
          }
        : null;
      const f = await flow(ctx, {
        mode: 'flood',
        frame: 'classic8',
        batch: 64,
        lateTxAck: true,
        senderQueue: ctx.cfg.queueSize,
        receiverQueue: ctx.cfg.queueSize,
        // Long enough for several scrapes in the window.
        measureMs: Math.max(ctx.cfg.measureMs, 2500),
        label: `web-${web ? 'on' : 'off'}-${i}`,
        ...(web
          ? {
              daemonArgs: ['--http', '127.0.0.1:0'],
              during: (d: DaemonProcess) => startWebLoad(urlOf(d), load!),
            }
          : {}),
      });
      runs.push({ web, flow: f, load });
    }
  }
  const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
  const without = mean(runs.filter((r) => !r.web).map((r) => r.flow.deliveredPerS));
  const withWeb = mean(runs.filter((r) => r.web).map((r) => r.flow.deliveredPerS));
  const inProcess = await measureInProcess(ctx);
  const nsWithout = mean(runs.filter((r) => !r.web).map((r) => nsPerFrame(r.flow)));
  const nsWith = mean(runs.filter((r) => r.web).map((r) => nsPerFrame(r.flow)));
  res.web = {
    runs,
    inProcess,
    withoutPerS: Math.round(without),
    withPerS: Math.round(withWeb),
    costPercent: without > 0 ? Math.round((1000 * (without - withWeb)) / without) / 10 : 0,
    withoutNsPerFrame: Math.round(nsWithout),
    withNsPerFrame: Math.round(nsWith),
    cpuCostPercent: nsWithout > 0 ? Math.round((1000 * (nsWith - nsWithout)) / nsWithout) / 10 : 0,
  };
}

const median = (xs: number[]): number => {
  const a = [...xs].sort((x, y) => x - y);
  return a.length === 0 ? Number.NaN : a[a.length >> 1]!;
};

/**
 * The bus's own cost per frame in this process (a producer port, a receiving port that consumes
 * every frame as a guest's device does), in alternating 1 s rounds: alone, then with a frame stream
 * open (curl, the page's default rate, CANopen decoding) and /metrics scraped every second (curl):
 * process CPU time per frame, so the viewers' own CPU (other processes) is not counted, and a
 * busy machine moves both kinds of rounds alike. The daemon's guests and virtio rings are not in it:
 * the added ns are what the web side costs per frame; the flood rows above give the daemon's whole
 * cost per frame to compare with.
 */
async function measureInProcess(ctx: Ctx): Promise<WebInProcess | null> {
  const dir = mkdtempSync(join(tmpdir(), 'vdc-bench-web-'));
  const can = startCanDaemon({ paths: [join(dir, 'can.sock0')], native: ctx.native, log: nullLogger });
  const web = await startCanWeb(can, { host: '127.0.0.1', port: 0, log: nullLogger, version: 'bench' });
  const hub = can.hubs.get('default');
  const rx = hub.attach(
    {
      onFramesAvailable() {
        for (let f = rx.take(); f !== undefined; f = rx.take()) rx.release(f);
      },
    },
    { name: 'consumer', releasesFrames: true },
  );
  const tx = hub.attach({ onFramesAvailable() {} }, { name: 'producer' });
  tx.setReceiving(false);
  const frame = makeCanFrame({ id: 0x181, data: [1, 2, 3, 4, 5, 6, 7, 8] });
  const rounds = ctx.cfg.quick ? 6 : 10;
  const plain: { ns: number; perS: number }[] = [];
  const withWeb: { ns: number; perS: number }[] = [];
  const round = async (): Promise<{ ns: number; perS: number }> => {
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    let n = 0;
    while (performance.now() - t0 < 1000) {
      for (let i = 0; i < 2000; i++) tx.transmit(frame);
      n += 2000;
      await new Promise((r) => setImmediate(r));
    }
    const c = process.cpuUsage(c0);
    const wall = (performance.now() - t0) / 1000;
    return { ns: ((c.user + c.system) * 1000) / n, perS: n / wall };
  };
  const kids: ChildProcess[] = [];
  try {
    for (let r = 0; r < rounds; r++) {
      const on = r % 2 === 1;
      if (on) {
        kids.push(
          spawn('curl', ['-sN', '-o', '/dev/null', `${web.url}/api/stream?decode=canopen`], {
            stdio: 'ignore',
          }),
          spawn('sh', ['-c', `while :; do curl -s -o /dev/null ${web.url}/metrics; sleep 1; done`], {
            stdio: 'ignore',
          }),
        );
        await sleep(300);
      }
      (on ? withWeb : plain).push(await round());
      for (const k of kids.splice(0)) k.kill('SIGKILL');
      await sleep(200);
    }
  } catch (err) {
    log(`web in-process: ${(err as Error).message}`);
    return null;
  } finally {
    for (const k of kids) k.kill('SIGKILL');
    web.close();
    can.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  const p = median(plain.map((x) => x.ns));
  const w = median(withWeb.map((x) => x.ns));
  return {
    rounds,
    plainNsPerFrame: Math.round(p),
    webNsPerFrame: Math.round(w),
    addedNsPerFrame: Math.round(w - p),
    plainPerS: Math.round(median(plain.map((x) => x.perS))),
    webPerS: Math.round(median(withWeb.map((x) => x.perS))),
  };
}

/** Table 9. */
export function reportWeb(res: Results, out: string[]): void {
  const w = res.web;
  if (!w) return;
  out.push(
    table(
      '9. web monitor cost: tp flood (classic8, 64 per kick) without --http vs with a page open and /metrics every second',
      [
        'run',
        'delivered/s',
        'daemon CPU',
        'ns/frame',
        'stream frames',
        'skipped',
        'lost',
        'scrapes',
        'scrape ms',
        'scrape kB',
        'polls',
        'errors',
        'other',
      ],
      w.runs.map((r) => [
        r.web ? 'with web' : 'without',
        int(r.flow.deliveredPerS),
        pct(r.flow.cpu.perRole.daemon),
        int(nsPerFrame(r.flow)),
        r.load ? int(r.load.streamFrames) : '-',
        r.load ? int(r.load.streamSkipped) : '-',
        r.load ? int(r.load.streamLost) : '-',
        r.load ? int(r.load.scrapes) : '-',
        r.load ? fixed(r.load.scrapeMs, 1) : '-',
        r.load ? fixed(r.load.scrapeBytes / 1024, 1) : '-',
        r.load ? int(r.load.polls) : '-',
        r.load ? int(r.load.errors) : '-',
        pct(r.flow.cpu.other),
      ]),
      [
        `mean delivered/s: without ${int(w.withoutPerS)}, with ${int(w.withPerS)}: cost ${fixed(w.costPercent, 1)} % (goal < 5 %);`,
        `daemon CPU per delivered frame: without ${int(w.withoutNsPerFrame)} ns, with ${int(w.withNsPerFrame)} ns (${fixed(w.cpuCostPercent, 1)} %).`,
        'The page is emulated by an HTTP client (the stream at its default 200 frames/s with CANopen decoding,',
        'and its polls); stream frames, skipped and lost are the viewer counts over the whole run (lost: frames the',
        "monitor's tap sat out during the flood, sampling at the source, or its ring overwrote).",
        ...(w.inProcess === null
          ? []
          : [
              `In process (bus alone, ${w.inProcess.rounds} alternating 1 s rounds, medians): ${int(w.inProcess.plainNsPerFrame)} ns CPU per frame alone,`,
              `${int(w.inProcess.webNsPerFrame)} ns with a stream and a scraper: ${w.inProcess.addedNsPerFrame >= 0 ? '+' : ''}${int(w.inProcess.addedNsPerFrame)} ns per frame (${int(w.inProcess.plainPerS)} vs ${int(w.inProcess.webPerS)} frames/s);`,
              `against the daemon's ${int(w.withoutNsPerFrame)} ns per delivered frame above: ${fixed((100 * w.inProcess.addedNsPerFrame) / Math.max(1, w.withoutNsPerFrame), 1)} %.`,
            ]),
      ],
    ),
  );
}
