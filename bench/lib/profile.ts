/**
 * Summary of a V8 .cpuprofile (what `node --cpu-prof` writes): self time per function, where a
 * function is its name + source file + line (so two anonymous closures stay apart). Compiled
 * frames are mapped back to the TypeScript line through tsc's source maps.
 */
import { readFileSync } from 'node:fs';
import { dirname, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileEntry {
  function: string;
  location: string;
  selfMs: number;
  selfPercent: number;
  /** Share of the non-idle time. */
  busyPercent: number;
}

export interface ProfileSummary {
  file: string;
  totalMs: number;
  idleMs: number;
  samples: number;
  top: ProfileEntry[];
  /** Self time grouped by source area (src/core/bus, node:internal, (garbage collector), ...). */
  byArea: { area: string; selfMs: number; busyPercent: number }[];
}

// ---- source maps (tsc output -> .ts line) -----------------------------------------------------------

const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';

/** Per generated line: sorted [generatedColumn, sourceIndex, originalLine] triples. */
interface DecodedMap {
  sources: string[];
  lines: number[][][];
}

function decodeMappings(mappings: string): number[][][] {
  const lines: number[][][] = [];
  let src = 0;
  let oLine = 0;
  for (const line of mappings.split(';')) {
    const segs: number[][] = [];
    let gCol = 0;
    for (const seg of line.split(',')) {
      if (seg === '') continue;
      const v: number[] = [];
      let shift = 0;
      let value = 0;
      for (const ch of seg) {
        const d = B64.indexOf(ch);
        value += (d & 31) << shift;
        if (d & 32) shift += 5;
        else {
          v.push(value & 1 ? -(value >>> 1) : value >>> 1);
          value = 0;
          shift = 0;
        }
      }
      gCol += v[0] ?? 0;
      if (v.length >= 4) {
        src += v[1]!;
        oLine += v[2]!; // v[3], the original column, is not needed
        segs.push([gCol, src, oLine]);
      }
    }
    lines.push(segs);
  }
  return lines;
}

const maps = new Map<string, DecodedMap | null>();

function loadMap(jsFile: string): DecodedMap | null {
  if (maps.has(jsFile)) return maps.get(jsFile)!;
  let m: DecodedMap | null = null;
  try {
    const raw = JSON.parse(readFileSync(`${jsFile}.map`, 'utf8')) as { sources: string[]; mappings: string };
    m = { sources: raw.sources.map((x) => resolve(dirname(jsFile), x)), lines: decodeMappings(raw.mappings) };
  } catch {
    m = null;
  }
  maps.set(jsFile, m);
  return m;
}

/** File and 1-based line of a profile call frame, through the source map when there is one. */
function locate(url: string, line0: number, col0: number, root: string): string {
  if (url === '') return '';
  if (!url.startsWith('file://')) return `${url}:${line0 + 1}`;
  let file: string;
  try {
    file = fileURLToPath(url);
  } catch {
    return url;
  }
  const m = loadMap(file);
  const segs = m?.lines[line0];
  if (m && segs && segs.length > 0) {
    let best = segs[0]!;
    for (const s of segs) if (s[0]! <= col0) best = s;
    return `${relative(root, m.sources[best[1]!]!)}:${best[2]! + 1}`;
  }
  return `${relative(root, file)}:${line0 + 1}`;
}

function areaOf(fn: string, loc: string): string {
  if (loc === '') return fn.startsWith('(') ? fn : '(native/V8 builtins)';
  if (loc.startsWith('node:')) return 'node: internals';
  const m = /^(?:dist|src)\/(core\/[^/]+|node\/[^/]+|cli)\//.exec(loc);
  if (m) return m[1]!;
  return loc.split('/').slice(0, 2).join('/');
}

export function summarizeProfile(file: string, root: string, topN = 15): ProfileSummary {
  const p = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map<number, ProfileNode>();
  for (const n of p.nodes) byId.set(n.id, n);
  const selfUs = new Map<number, number>();
  // timeDeltas[i] is the time since the previous sample; attribute it to sample i (as DevTools does).
  for (let i = 0; i < p.samples.length; i++) {
    const id = p.samples[i]!;
    selfUs.set(id, (selfUs.get(id) ?? 0) + Math.max(0, p.timeDeltas[i] ?? 0));
  }
  const agg = new Map<string, { fn: string; loc: string; us: number }>();
  let total = 0;
  let idle = 0;
  for (const [id, us] of selfUs) {
    const cf = byId.get(id)!.callFrame;
    const fn = cf.functionName === '' ? '(anonymous)' : cf.functionName;
    const loc = locate(cf.url, cf.lineNumber, cf.columnNumber, root);
    total += us;
    if (fn === '(idle)') idle += us;
    const key = `${fn}\u0000${loc}`;
    const e = agg.get(key);
    if (e) e.us += us;
    else agg.set(key, { fn, loc, us });
  }
  const busy = Math.max(1, total - idle);
  const entries = [...agg.values()].sort((a, b) => b.us - a.us);
  const r2 = (v: number): number => Math.round(v * 100) / 100;
  const areas = new Map<string, number>();
  for (const e of entries) {
    if (e.fn === '(idle)') continue;
    const a = areaOf(e.fn, e.loc);
    areas.set(a, (areas.get(a) ?? 0) + e.us);
  }
  return {
    file,
    totalMs: r2(total / 1000),
    idleMs: r2(idle / 1000),
    samples: p.samples.length,
    top: entries.slice(0, topN).map((e) => ({
      function: e.fn,
      location: e.loc,
      selfMs: r2(e.us / 1000),
      selfPercent: r2((100 * e.us) / Math.max(1, total)),
      busyPercent: e.fn === '(idle)' ? 0 : r2((100 * e.us) / busy),
    })),
    byArea: [...areas.entries()]
      .sort((a, b) => b[1] - a[1])
      .map(([area, us]) => ({ area, selfMs: r2(us / 1000), busyPercent: r2((100 * us) / busy) })),
  };
}
