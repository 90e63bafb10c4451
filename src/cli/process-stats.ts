import type { LogFields } from '../core/util/log.js';

/**
 * The process line every daemon's statistics start with: RSS and the JavaScript heap, to tell a
 * leak from a heap still settling.
 */
export function processStats(): LogFields {
  const mem = process.memoryUsage();
  const kb = (n: number): number => Math.round(n / 1024);
  return {
    process: process.pid,
    rssKb: kb(mem.rss),
    heapUsedKb: kb(mem.heapUsed),
    heapTotalKb: kb(mem.heapTotal),
    externalKb: kb(mem.external),
  };
}
