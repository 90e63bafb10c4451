// Peers for the socketcand tests: python-can (Debian bookworm's 4.1 and trixie's 4.5) driven over
// stdin/stdout, and a plain TCP client that speaks the protocol by hand.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

const REPO = new URL('../..', import.meta.url).pathname;
const PEER_SCRIPT = new URL('./python-can-peer.py', import.meta.url).pathname;

export interface PythonCan {
  version: string;
  python: string;
  env: NodeJS.ProcessEnv;
}

/**
 * python-can of the given Debian release, or a reason it is not there. 4.1 is bookworm's
 * python3-can (installed by scripts/deps/host-packages.sh); 4.5 is trixie's, fetched into
 * .cache/python-can-4.5 by scripts/deps/python-can-trixie.sh (run here, cached after the first run).
 */
export function findPythonCan(which: '4.1' | '4.5'): PythonCan | string {
  const python = '/usr/bin/python3';
  if (!existsSync(python)) return `${python} is missing`;
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env.PYTHONPATH;
  delete env.PYTHONHOME;
  if (which === '4.5') {
    const r = spawnSync('bash', [join(REPO, 'scripts/deps/python-can-trixie.sh')], {
      encoding: 'utf8',
      timeout: 180_000,
    });
    if (r.status !== 0)
      return `scripts/deps/python-can-trixie.sh failed: ${(r.stderr || r.error?.message || '').trim()}`;
    const dir = r.stdout.trim().split('\n').pop()!;
    env.PYTHONPATH = join(dir, 'usr/lib/python3/dist-packages');
    const deb = readFileSync(join(dir, '.done'), 'utf8').trim();
    if (!deb.startsWith('4.5')) return `trixie has python3-can ${deb}, not 4.5`;
  }
  const probe = spawnSync(
    python,
    ['-c', 'import can, can.interfaces.socketcand, importlib.metadata as m, os; print(can.__file__)'],
    { encoding: 'utf8', env, timeout: 30_000 },
  );
  if (probe.status !== 0)
    return `python-can ${which} does not import: ${probe.stderr.trim().split('\n').pop()}`;
  const file = probe.stdout.trim();
  const wantTrixie = which === '4.5';
  if (wantTrixie !== file.includes('.cache/python-can-4.5')) return `python-can ${which} resolved to ${file}`;
  if (!wantTrixie) {
    const v = spawnSync(python, ['-c', 'import can; print(can.__version__)'], { encoding: 'utf8', env });
    if (!v.stdout.trim().startsWith('4.1')) return `bookworm's python-can is ${v.stdout.trim()}, not 4.1`;
  }
  return { version: which, python, env };
}

/** The python-can of `which`, or skips the test (fails it under CI=true) with the reason. */
export function requirePythonCan(t: TestContext, which: '4.1' | '4.5'): PythonCan | null {
  const p = findPythonCan(which);
  if (typeof p !== 'string') return p;
  if (process.env.CI) throw new Error(`python-can ${which} is needed: ${p}`);
  t.skip(`python-can ${which}: ${p}`);
  return null;
}

export interface PyFrame {
  id: number;
  ext?: boolean;
  data?: string;
  fd?: boolean;
  dlc?: number | null;
  ts?: number;
}

export interface PyPeer {
  child: ChildProcess;
  ready: { version: string };
  request(req: Record<string, unknown>, timeoutMs?: number): Promise<Record<string, unknown>>;
  stderr(): string;
}

/** Starts the python-can peer (test/helpers/python-can-peer.py) against HOST:PORT CHANNEL. */
export async function startPyPeer(
  t: { after(fn: () => void): void },
  py: PythonCan,
  host: string,
  port: number,
  channel: string,
  filters?: { can_id: number; can_mask: number; extended?: boolean }[],
): Promise<PyPeer> {
  const args = [PEER_SCRIPT, host, String(port), channel];
  if (filters !== undefined) args.push(JSON.stringify(filters));
  const child = spawn(py.python, args, { env: py.env, stdio: ['pipe', 'pipe', 'pipe'] });
  t.after(() => {
    child.kill('SIGKILL');
  });
  let err = '';
  child.stderr!.on('data', (b: Buffer) => {
    err += b.toString();
  });
  const lines: string[] = [];
  const waiting: ((l: string) => void)[] = [];
  let buf = '';
  child.stdout!.on('data', (b: Buffer) => {
    buf += b.toString();
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      const l = buf.slice(0, i);
      buf = buf.slice(i + 1);
      const w = waiting.shift();
      if (w) w(l);
      else lines.push(l);
    }
  });
  const next = (ms: number): Promise<string> =>
    new Promise((resolve, reject) => {
      const l = lines.shift();
      if (l !== undefined) {
        resolve(l);
        return;
      }
      const timer = setTimeout(
        () => reject(new Error(`python-can peer: no answer in ${ms} ms; stderr: ${err}`)),
        ms,
      );
      waiting.push((line) => {
        clearTimeout(timer);
        resolve(line);
      });
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`python-can peer exited with ${code}; stderr: ${err}`));
      });
    });
  const ready = JSON.parse(await next(15_000)) as { version: string };
  return {
    child,
    ready,
    async request(req, timeoutMs = 15_000) {
      child.stdin!.write(`${JSON.stringify(req)}\n`);
      return JSON.parse(await next(timeoutMs)) as Record<string, unknown>;
    },
    stderr: () => err,
  };
}

/** A socketcand client that speaks the protocol by hand and keeps everything it receives. */
export class RawClient {
  readonly socket: Socket;
  text = '';
  closed = false;

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (b: Buffer) => {
      this.text += b.toString('latin1');
    });
    socket.on('close', () => {
      this.closed = true;
    });
    socket.on('error', () => {});
  }

  static async connect(t: TestContext, port: number, host = '127.0.0.1'): Promise<RawClient> {
    const s = connect({ host, port });
    await new Promise<void>((resolve, reject) => {
      s.once('connect', resolve);
      s.once('error', reject);
    });
    const c = new RawClient(s);
    t.after(() => s.destroy());
    return c;
  }

  send(text: string | Uint8Array): void {
    this.socket.write(text);
  }

  /** Every `< ... >` element received so far, trimmed. */
  elements(): string[] {
    return this.text.match(/<[^<>]*>/g) ?? [];
  }

  /** Waits until `pick` finds something in the elements received (or fails after ms). */
  async waitFor<T>(what: string, pick: (els: string[]) => T | undefined, ms = 3000): Promise<T> {
    const end = Date.now() + ms;
    for (;;) {
      const v = pick(this.elements());
      if (v !== undefined) return v;
      if (Date.now() > end)
        throw new Error(`timed out waiting for ${what}; received: ${this.text.slice(-600)}`);
      await sleep(5);
    }
  }

  /** Waits for the element count to reach `n` and returns the elements from index `from`. */
  async waitCount(n: number, ms = 3000): Promise<string[]> {
    return this.waitFor(`${n} elements`, (els) => (els.length >= n ? els : undefined), ms);
  }

  /** Sends `cmd` and waits for the next element, which it returns. */
  async command(cmd: string, ms = 3000): Promise<string> {
    const before = this.elements().length;
    this.send(cmd);
    const els = await this.waitCount(before + 1, ms);
    return els[before]!;
  }

  async waitClosed(ms = 3000): Promise<void> {
    await this.waitFor('the connection to close', () => (this.closed ? true : undefined), ms);
  }
}
