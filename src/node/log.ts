/**
 * A small structured logger: one line per event, readable on a terminal
 * (`2026-11-21T06:00:00.000Z INFO  listening path=/tmp/can.sock0`) or JSON lines for collectors.
 * Written to stderr so stdout stays free for tools. No dependency: pino's transports run worker
 * threads, which a daemon that must stay small and predictable does not need.
 */
import type { LogFields, Logger } from '../core/util/log.js';

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';
export const LOG_LEVELS: readonly LogLevel[] = ['error', 'warn', 'info', 'debug'];
export function isLogLevel(s: string): s is LogLevel {
  return (LOG_LEVELS as readonly string[]).includes(s);
}
const RANK: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };

export interface LoggerOptions {
  level?: LogLevel;
  format?: 'text' | 'json';
  write?: (line: string) => void;
  fields?: LogFields;
}

function fmtValue(v: LogFields[string]): string {
  if (v === undefined || v === null) return String(v);
  const s = typeof v === 'string' ? v : String(v);
  return /[\s"=]/.test(s) || s === '' ? JSON.stringify(s) : s;
}

export class StructuredLogger implements Logger {
  private readonly rank: number;
  private readonly level: LogLevel;
  private readonly format: 'text' | 'json';
  private readonly write: (line: string) => void;
  private readonly fields: LogFields;
  readonly debugEnabled: boolean;

  constructor(opts: LoggerOptions = {}) {
    this.level = opts.level ?? 'info';
    this.rank = RANK[this.level];
    this.format = opts.format ?? 'text';
    this.write = opts.write ?? ((l) => process.stderr.write(`${l}\n`));
    this.fields = opts.fields ?? {};
    this.debugEnabled = this.rank >= RANK.debug;
  }

  private emit(level: LogLevel, msg: string, fields?: LogFields): void {
    if (RANK[level] > this.rank) return;
    const all: LogFields = { ...this.fields, ...fields };
    const time = new Date().toISOString();
    if (this.format === 'json') {
      const o: Record<string, unknown> = { time, level, msg };
      for (const [k, v] of Object.entries(all)) o[k] = typeof v === 'bigint' ? v.toString() : v;
      this.write(JSON.stringify(o));
      return;
    }
    let line = `${time} ${level.toUpperCase().padEnd(5)} ${msg}`;
    for (const [k, v] of Object.entries(all)) if (v !== undefined) line += ` ${k}=${fmtValue(v)}`;
    this.write(line);
  }

  error(msg: string, fields?: LogFields): void {
    this.emit('error', msg, fields);
  }
  warn(msg: string, fields?: LogFields): void {
    this.emit('warn', msg, fields);
  }
  info(msg: string, fields?: LogFields): void {
    this.emit('info', msg, fields);
  }
  debug(msg: string, fields?: LogFields): void {
    this.emit('debug', msg, fields);
  }

  child(fields: LogFields): Logger {
    return new StructuredLogger({
      level: this.level,
      format: this.format,
      write: this.write,
      fields: { ...this.fields, ...fields },
    });
  }
}
