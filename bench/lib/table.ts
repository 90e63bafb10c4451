/** Plain-text tables and number formatting for the bench reports. */

export type Cell = string | number | null | undefined;

/** Thousands-separated integer ("1 234 567"), or "-" for missing values. */
export function int(v: number | null | undefined): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return '-';
  return Math.round(v)
    .toString()
    .replace(/\B(?=(\d{3})+(?!\d))/g, ' ');
}

export function fixed(v: number | null | undefined, digits = 1): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return '-';
  return v.toFixed(digits);
}

export function pct(v: number | null | undefined): string {
  return v === null || v === undefined || !Number.isFinite(v) ? '-' : `${v.toFixed(0)}%`;
}

export function table(title: string, head: string[], rows: Cell[][], notes: string[] = []): string {
  const cells = rows.map((r) => r.map((c) => (c === null || c === undefined ? '-' : String(c))));
  const w = head.map((h, i) => Math.max(h.length, ...cells.map((r) => (r[i] ?? '').length)));
  // First column left-aligned, the others right-aligned (numbers).
  const fmt = (r: string[]): string =>
    r
      .map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!)))
      .join('  ')
      .trimEnd();
  const out = [`\n${title}`, fmt(head), w.map((n) => '-'.repeat(n)).join('  ')];
  for (const r of cells) out.push(fmt(r));
  for (const n of notes) out.push(`  ${n}`);
  return out.join('\n');
}
