/**
 * The `nested` backend: the guest's console on the terminal that started the daemon.
 *
 * - The terminal is put in raw mode (every key goes to the guest, Ctrl-C included) and restored on
 *   every way out: normal exit, signals handled by the daemon, uncaught errors (all end in
 *   process 'exit').
 * - Escape character Ctrl-] (0x1d), as telnet's: Ctrl-] then `q` (or `.`) quits the daemon,
 *   Ctrl-] Ctrl-] sends one Ctrl-] to the guest, Ctrl-] `?` prints this help. Anything else after
 *   Ctrl-] is sent as typed.
 * - The terminal size reaches the guest and follows window-size changes (SIGWINCH).
 * - Back-pressure: when the guest has no room for input, stdin is paused.
 */
import { Duplex } from 'node:stream';

export const ESCAPE = 0x1d;
export const ESCAPE_HELP =
  '\r\n[vhost-device-console: Ctrl-] q quits the daemon, Ctrl-] Ctrl-] sends Ctrl-], Ctrl-] ? this help]\r\n';

/** The escape-sequence filter, separate so it can be unit tested. */
export class EscapeFilter {
  private armed = false;
  /** Returns the bytes for the guest and what the user asked for. */
  feed(bytes: Uint8Array): { data: Uint8Array; quit: boolean; help: boolean } {
    const out: number[] = [];
    let quit = false;
    let help = false;
    for (const b of bytes) {
      if (quit) break;
      if (!this.armed) {
        if (b === ESCAPE) this.armed = true;
        else out.push(b);
        continue;
      }
      this.armed = false;
      if (b === 0x71 /* q */ || b === 0x51 /* Q */ || b === 0x2e /* . */) quit = true;
      else if (b === ESCAPE) out.push(ESCAPE);
      else if (b === 0x3f /* ? */ || b === 0x68 /* h */) help = true;
      else out.push(ESCAPE, b);
    }
    return { data: Uint8Array.from(out), quit, help };
  }
}

export interface TerminalIo {
  input: NodeJS.ReadableStream & { isTTY?: boolean; setRawMode?: (on: boolean) => unknown };
  output: NodeJS.WritableStream & {
    columns?: number;
    rows?: number;
    on(ev: 'resize', fn: () => void): unknown;
  };
}

export class NestedTerminal {
  /** The client stream handed to the port endpoint. */
  readonly stream: Duplex;
  private readonly io: TerminalIo;
  private readonly filter = new EscapeFilter();
  private readonly onQuit: () => void;
  private readonly onResize: (cols: number, rows: number) => void;
  private raw = false;
  private readonly restore = (): void => this.setRaw(false);

  constructor(io: TerminalIo, hooks: { quit: () => void; resize: (cols: number, rows: number) => void }) {
    this.io = io;
    this.onQuit = hooks.quit;
    this.onResize = hooks.resize;
    const input = io.input;
    this.stream = new Duplex({
      read: () => {
        input.resume();
      },
      write: (chunk: Buffer, _enc, cb) => {
        io.output.write(chunk);
        cb();
      },
    });
    input.on('data', (chunk: Buffer) => {
      const r = this.filter.feed(chunk);
      if (r.help) io.output.write(ESCAPE_HELP);
      if (r.data.byteLength > 0 && !this.stream.push(Buffer.from(r.data))) input.pause();
      if (r.quit) this.onQuit();
    });
    input.on('end', () => this.onQuit());
    io.output.on('resize', () => this.reportSize());
  }

  start(): void {
    this.setRaw(true);
    process.once('exit', this.restore);
    this.io.input.resume();
    this.io.output.write(ESCAPE_HELP.slice(2)); // without the leading line break
  }

  /** Current terminal size, when the output is a terminal. */
  size(): { cols: number; rows: number } | null {
    const { columns, rows } = this.io.output;
    return columns !== undefined && rows !== undefined && columns > 0 && rows > 0
      ? { cols: columns, rows }
      : null;
  }

  reportSize(): void {
    const s = this.size();
    if (s !== null) this.onResize(s.cols, s.rows);
  }

  private setRaw(on: boolean): void {
    const i = this.io.input;
    if (!i.isTTY || i.setRawMode === undefined || this.raw === on) return;
    i.setRawMode(on);
    this.raw = on;
  }

  stop(): void {
    this.setRaw(false);
    process.removeListener('exit', this.restore);
    this.io.input.pause();
  }
}
