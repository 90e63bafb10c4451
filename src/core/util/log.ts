/**
 * The logging contract of the core. The core never writes to a terminal itself: the node layer
 * injects a Logger (src/node/log.ts) that prints structured lines. Fields are flat key/value pairs.
 */
export type LogFields = Record<string, string | number | bigint | boolean | undefined | null>;

export interface Logger {
  error(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  debug(msg: string, fields?: LogFields): void;
  /** True when debug lines are printed; lets hot paths skip building fields. */
  readonly debugEnabled: boolean;
  child(fields: LogFields): Logger;
}

class NullLogger implements Logger {
  readonly debugEnabled = false;
  error(): void {}
  warn(): void {}
  info(): void {}
  debug(): void {}
  child(): Logger {
    return this;
  }
}

export const nullLogger: Logger = new NullLogger();
