/**
 * The nested backend as a person uses it: vhost-device-console running in a real terminal (tmux),
 * a guest (the Linux console driver emulation) on its socket. Keys typed in the terminal reach
 * the guest, guest output shows on the terminal, the window size follows tmux resizes, Ctrl-C goes
 * to the guest, Ctrl-] q quits and the terminal is back in cooked mode.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { ConsoleTestDriver } from '../../src/node/frontend/console-driver.js';
import { VhostUserFrontend } from '../../src/node/frontend/frontend.js';
import { GuestRam } from '../../src/node/frontend/guest-ram.js';

const ROOT = resolve(import.meta.dirname, '../..');
const hasTmux = spawnSync('tmux', ['-V']).status === 0;
const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);

function tmux(...args: string[]): string {
  return execFileSync('tmux', ['-L', 'vdc-test', ...args], { encoding: 'utf8' });
}
function screen(session: string): string {
  return tmux('capture-pane', '-p', '-t', session);
}
async function until(what: string, cond: () => boolean, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

test('nested backend in a real terminal', { skip: hasTmux ? false : 'tmux is not installed' }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vdc-nested-'));
  const sock = join(dir, 'con.sock');
  const session = `nested${process.pid}`;
  const log = join(dir, 'daemon.log');
  // A shell in tmux runs the daemon; when it exits the shell reports the terminal mode.
  tmux('new-session', '-d', '-s', session, '-x', '90', '-y', '30', 'sh');
  t.after(() => {
    try {
      tmux('kill-server');
    } catch {
      /* already gone */
    }
    rmSync(dir, { recursive: true, force: true });
  });
  const cmd = `node --import tsx ${join(ROOT, 'src/cli/vhost-device-console.ts')} -s ${sock} 2>${log}; echo EXIT=$?; stty -a | grep -o -- '-icanon\\|icanon' | head -1`;
  tmux('send-keys', '-t', session, cmd, 'Enter');
  await until('the daemon socket', () => existsSync(`${sock}0`));
  await until('the escape help', () => screen(session).includes('Ctrl-] q quits'));

  const fe = VhostUserFrontend.connect(`${sock}0`, { timeoutMs: 5000 });
  const ram = new GuestRam();
  t.after(() => {
    fe.close();
    ram.close();
  });
  const drv = await ConsoleTestDriver.create(fe, ram, { timeoutMs: 5000 });
  await drv.waitConsole();
  // The terminal's size reached the guest (RESIZE after the console port was ready).
  await drv.waitUntil('size 90x30', () => drv.size?.cols === 90 && drv.size?.rows === 30);

  // Guest output appears on the terminal.
  await drv.write(0, enc('login: guest-output-1\r\n'));
  await until('guest output on screen', () => screen(session).includes('login: guest-output-1'));

  // Keys typed in the terminal reach the guest raw: no echo by the terminal, no line buffering,
  // and Ctrl-C is a byte for the guest, not a signal for the daemon.
  tmux('send-keys', '-t', session, '-l', 'ls -l');
  tmux('send-keys', '-t', session, 'C-c');
  const got = await drv.waitOutput(0, 6);
  assert.equal(dec(got), 'ls -l\x03');
  assert.ok(!screen(session).includes('ls -l'), 'raw mode: the terminal does not echo');

  // A window-size change follows.
  tmux('resize-window', '-t', session, '-x', '120', '-y', '40');
  await drv.waitUntil('size 120x40', () => drv.size?.cols === 120 && drv.size?.rows === 40);

  // Ctrl-] Ctrl-] sends one Ctrl-]; Ctrl-] q quits, exit status 0, terminal restored (icanon).
  tmux('send-keys', '-t', session, 'C-]', 'C-]');
  assert.deepEqual([...(await drv.waitOutput(0, 1))], [0x1d]);
  tmux('send-keys', '-t', session, 'C-]', 'q');
  await until('daemon exit', () => /EXIT=\d+/.test(screen(session)));
  const s = screen(session);
  assert.match(s, /EXIT=0/);
  await until('stty report', () => /^(-?icanon)$/m.test(screen(session)));
  assert.match(screen(session), /^icanon$/m, 'the terminal is back in canonical (cooked) mode');
});
