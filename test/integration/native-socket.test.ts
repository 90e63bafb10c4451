// The addon's Unix-socket and fd-passing syscalls, against real kernel objects.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { type NativeSystemError, native } from '../../src/node/native/addon.js';

const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;

function fdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

/** The open-file flags of `fd` as the kernel reports them (octal in fdinfo). */
function fdFlags(fd: number): number {
  const line = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('flags:'));
  assert.ok(line, `no flags line for fd ${fd}`);
  return Number.parseInt(line.slice('flags:'.length).trim(), 8);
}

function assertCloexecNonblock(fd: number): void {
  const flags = fdFlags(fd);
  assert.equal(flags & O_CLOEXEC, O_CLOEXEC, `fd ${fd} must be close-on-exec`);
  assert.equal(flags & O_NONBLOCK, O_NONBLOCK, `fd ${fd} must be non-blocking`);
}

function assertSystemError(code: string, errno: number, syscall: string): (err: unknown) => boolean {
  return (err: unknown) => {
    assert.ok(err instanceof Error);
    const e = err as NativeSystemError;
    assert.equal(e.code, code);
    assert.equal(e.errno, errno);
    assert.equal(e.syscall, syscall);
    assert.ok(e.message.startsWith(`${syscall}: `), e.message);
    return true;
  };
}

function closeAll(fds: readonly number[]): void {
  for (const fd of fds) native.close(fd);
}

const bytes = (s: string) => new TextEncoder().encode(s);
const text = (u: Uint8Array, n: number) => new TextDecoder().decode(u.subarray(0, n));

test('socketpair: both ends are non-blocking and close-on-exec, data round-trips', () => {
  const before = fdCount();
  const [a, b] = native.socketpair();
  assert.equal(fdCount(), before + 2);
  assertCloexecNonblock(a);
  assertCloexecNonblock(b);

  assert.equal(native.sendMsg(a, bytes('ping')), 4);
  const buf = new Uint8Array(16);
  const r = native.recvMsg(b, buf, 8);
  assert.deepEqual(r, { bytes: 4, fds: [], truncated: false });
  assert.equal(text(buf, 4), 'ping');

  closeAll([a, b]);
  assert.equal(fdCount(), before);
});

test('a memfd sent over the socket maps the same memory on both ends', () => {
  const before = fdCount();
  const [a, b] = native.socketpair();
  const memfd = native.memfdCreate('vn-socket-roundtrip', 8192);
  assert.equal(native.sendMsg(a, bytes('mem!'), [memfd]), 4);

  const buf = new Uint8Array(4);
  const r = native.recvMsg(b, buf, 8);
  assert.ok(r);
  assert.equal(r.bytes, 4);
  assert.equal(r.truncated, false);
  assert.equal(r.fds.length, 1);
  const received = r.fds[0]!;
  assert.notEqual(received, memfd, 'the receiver gets its own descriptor');
  assert.equal(fdFlags(received) & O_CLOEXEC, O_CLOEXEC, 'MSG_CMSG_CLOEXEC applies to received fds');

  const mine = native.mmap(memfd, 8192, 0);
  const theirs = native.mmap(received, 8192, 0);
  new Uint8Array(mine).set(bytes('written through the sender mapping'), 4000);
  assert.equal(text(new Uint8Array(theirs, 4000), 34), 'written through the sender mapping');
  new DataView(theirs).setUint32(8188, 0xdeadbeef, true);
  assert.equal(new DataView(mine).getUint32(8188, true), 0xdeadbeef);

  native.munmap(mine);
  native.munmap(theirs);
  closeAll([a, b, memfd, received]);
  assert.equal(fdCount(), before);
});

test('reading exactly one 12-byte header at a time attributes fds to the right message', () => {
  const before = fdCount();
  const [a, b] = native.socketpair();
  const kick = native.eventfdCreate(0, true);
  const call = native.eventfdCreate(0, true);

  native.sendMsg(a, bytes('first-msg-12')); // no fds
  native.sendMsg(a, bytes('second-hdr12'), [kick, call]); // header with 2 fds
  native.sendMsg(a, bytes('body8byt')); // its 8-byte body

  const hdr = new Uint8Array(12);
  const r1 = native.recvMsg(b, hdr, 8);
  assert.deepEqual(r1, { bytes: 12, fds: [], truncated: false });
  assert.equal(text(hdr, 12), 'first-msg-12');

  const r2 = native.recvMsg(b, hdr, 8);
  assert.ok(r2);
  assert.equal(r2.bytes, 12);
  assert.equal(text(hdr, 12), 'second-hdr12');
  assert.equal(r2.fds.length, 2);
  assert.equal(r2.truncated, false);

  const body = new Uint8Array(8);
  const r3 = native.recvMsg(b, body, 8);
  assert.deepEqual(r3, { bytes: 8, fds: [], truncated: false });
  assert.equal(text(body, 8), 'body8byt');
  assert.equal(native.recvMsg(b, hdr, 8), null);

  // The received fds are the same eventfds, in order.
  native.eventfdWrite(r2.fds[0]!, 3);
  native.eventfdWrite(r2.fds[1]!, 5);
  assert.equal(native.eventfdRead(kick), 3);
  assert.equal(native.eventfdRead(call), 5);

  closeAll([a, b, kick, call, ...r2.fds]);
  assert.equal(fdCount(), before);
});

test('a large read merges data that precedes an fd-carrying message (why we read headers exactly)', () => {
  const before = fdCount();
  const [a, b] = native.socketpair();
  const efd = native.eventfdCreate(0, true);
  native.sendMsg(a, bytes('first-msg-12'));
  native.sendMsg(a, bytes('second-hdr12'), [efd, efd]);
  native.sendMsg(a, bytes('body8byt'));

  const big = new Uint8Array(256);
  const r1 = native.recvMsg(b, big, 8);
  assert.ok(r1);
  assert.equal(r1.bytes, 24, 'both headers merged into one read');
  assert.equal(r1.fds.length, 2);
  assert.equal(text(big, 24), 'first-msg-12second-hdr12');
  const r2 = native.recvMsg(b, big, 8);
  assert.deepEqual(r2, { bytes: 8, fds: [], truncated: false }, 'the kernel stops after the fd skb');

  closeAll([a, b, efd, ...r1.fds]);
  assert.equal(fdCount(), before);
});

test('more fds than maxFds: the extra ones are closed and truncated is set', () => {
  const [a, b] = native.socketpair();
  const efd = native.eventfdCreate(0, true);
  const before = fdCount();

  native.sendMsg(a, bytes('four'), [efd, efd, efd, efd]);
  const r = native.recvMsg(b, new Uint8Array(4), 2);
  assert.ok(r);
  assert.equal(r.bytes, 4);
  assert.equal(r.fds.length, 2);
  assert.equal(r.truncated, true);
  assert.equal(fdCount(), before + 2, 'only the 2 kept fds stay open');
  closeAll(r.fds);
  assert.equal(fdCount(), before);

  native.sendMsg(a, bytes('none'), [efd, efd]);
  const none = native.recvMsg(b, new Uint8Array(4), 0);
  assert.deepEqual(none, { bytes: 4, fds: [], truncated: true });
  assert.equal(fdCount(), before);

  closeAll([a, b, efd]);
});

test('MSG_CTRUNC: more than 64 fds from a peer are reported as truncated without leaks', (t) => {
  const [a, b] = native.socketpair();
  const before = fdCount();
  // Our sendMsg refuses more than 64 fds, so a python3 peer sends 70 (SCM_MAX_FD is 253).
  const py = spawnSync(
    'python3',
    [
      '-c',
      'import os, socket\n' +
        's = socket.socket(fileno=3)\n' +
        'r = os.open("/dev/null", os.O_RDONLY)\n' +
        'socket.send_fds(s, [b"x" * 12], [r] * 70)\n',
    ],
    { stdio: ['ignore', 'inherit', 'pipe', a], timeout: 10_000 },
  );
  if (py.error || py.status !== 0) {
    closeAll([a, b]);
    t.skip(`python3 with socket.send_fds is not available: ${py.error?.message ?? py.stderr}`);
    return;
  }
  const r = native.recvMsg(b, new Uint8Array(12), 64);
  assert.ok(r);
  assert.equal(r.bytes, 12);
  assert.equal(r.truncated, true);
  assert.equal(r.fds.length, 64, 'the 64 fds that fit the control buffer are returned');
  assert.equal(fdCount(), before + 64);
  closeAll(r.fds);
  assert.equal(fdCount(), before);
  closeAll([a, b]);
});

test('recvMsg: null on EAGAIN, 0 bytes on EOF, byteOffset honoured', () => {
  const before = fdCount();
  const [a, b] = native.socketpair();
  const backing = new Uint8Array(16).fill(0xee);
  const view = new Uint8Array(backing.buffer, 5, 3);

  assert.equal(native.recvMsg(b, view, 8), null, 'empty socket');
  native.sendMsg(a, bytes('abcdef'));
  assert.deepEqual(native.recvMsg(b, view, 8), { bytes: 3, fds: [], truncated: false });
  assert.deepEqual([...backing.subarray(4, 9)], [0xee, 0x61, 0x62, 0x63, 0xee]);
  assert.deepEqual(native.recvMsg(b, view, 8), { bytes: 3, fds: [], truncated: false });
  assert.equal(text(view, 3), 'def');

  native.close(a);
  assert.deepEqual(native.recvMsg(b, view, 8), { bytes: 0, fds: [], truncated: false }, 'EOF');
  native.close(b);
  assert.equal(fdCount(), before);
});

test('sendMsg: EAGAIN when the socket buffer is full, EPIPE after the peer closed', () => {
  const [a, b] = native.socketpair();
  const chunk = new Uint8Array(65536);
  let sent = 0;
  let error: unknown;
  for (let i = 0; i < 10_000 && error === undefined; i++) {
    try {
      sent += native.sendMsg(a, chunk);
    } catch (e) {
      error = e;
    }
  }
  assert.ok(sent > 0);
  assert.ok(assertSystemError('EAGAIN', 11, 'sendmsg')(error));
  assert.equal((error as Error).message, 'sendmsg: Resource temporarily unavailable');

  native.close(b);
  assert.throws(() => native.sendMsg(a, chunk), assertSystemError('EPIPE', 32, 'sendmsg'));
  native.close(a);
});

test('listenUnix / connectUnix / acceptUnix on a path', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vn-sock-'));
  const before = fdCount();
  try {
    const path = join(dir, 'vhost.sock');
    const lfd = native.listenUnix(path, 8);
    assertCloexecNonblock(lfd);
    assert.equal(native.acceptUnix(lfd), null, 'nothing pending');

    const client = native.connectUnix(path);
    assertCloexecNonblock(client);
    const server = native.acceptUnix(lfd);
    assert.equal(typeof server, 'number');
    assertCloexecNonblock(server!);
    assert.equal(native.acceptUnix(lfd), null);

    native.sendMsg(client, bytes('hello'));
    const buf = new Uint8Array(8);
    assert.equal(native.recvMsg(server!, buf, 0)?.bytes, 5);
    assert.equal(text(buf, 5), 'hello');
    native.sendMsg(server!, bytes('back'));
    assert.equal(native.recvMsg(client, buf, 0)?.bytes, 4);
    assert.equal(text(buf, 4), 'back');

    assert.throws(() => native.listenUnix(path, 8), assertSystemError('EADDRINUSE', 98, 'bind'));
    closeAll([client, server!, lfd]);
    // The path still exists but nobody listens: ECONNREFUSED.
    assert.throws(() => native.connectUnix(path), assertSystemError('ECONNREFUSED', 111, 'connect'));
    assert.equal(fdCount(), before, 'failed calls leak no fds');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('connectUnix to a missing path throws ENOENT with errno and syscall', () => {
  const before = fdCount();
  const missing = join(tmpdir(), `vn-missing-${process.pid}-${Date.now()}.sock`);
  assert.throws(
    () => native.connectUnix(missing),
    (err: unknown) => {
      assertSystemError('ENOENT', 2, 'connect')(err);
      assert.equal((err as Error).message, 'connect: No such file or directory');
      return true;
    },
  );
  assert.equal(fdCount(), before);
});

test('paths longer than sun_path throw ENAMETOOLONG', () => {
  const long = `/tmp/${'x'.repeat(200)}`;
  assert.throws(() => native.listenUnix(long, 1), assertSystemError('ENAMETOOLONG', 36, 'bind'));
  assert.throws(() => native.connectUnix(long), assertSystemError('ENAMETOOLONG', 36, 'connect'));
  // 107 bytes plus the NUL fit exactly.
  assert.throws(
    () => native.connectUnix(`/tmp/${'y'.repeat(102)}`),
    assertSystemError('ENOENT', 2, 'connect'),
  );
});

test('bad arguments are rejected before any syscall', () => {
  const [a, b] = native.socketpair();
  const bad = (code: string, ctor: ErrorConstructor | RangeErrorConstructor | TypeErrorConstructor) => {
    return (err: unknown) => {
      assert.ok(err instanceof ctor);
      assert.equal((err as NativeSystemError).code, code);
      return true;
    };
  };
  assert.throws(() => native.recvMsg(a, new Uint8Array(0), 1), bad('ERR_INVALID_ARG_VALUE', RangeError));
  assert.throws(() => native.recvMsg(a, new Uint8Array(4), 65), bad('ERR_OUT_OF_RANGE', RangeError));
  assert.throws(() => native.recvMsg(a, new Uint8Array(4), -1), bad('ERR_OUT_OF_RANGE', RangeError));
  assert.throws(
    () => native.recvMsg(a, [1, 2] as unknown as Uint8Array, 1),
    bad('ERR_INVALID_ARG_TYPE', TypeError),
  );
  assert.throws(
    () => native.sendMsg(a, bytes('x'), new Array<number>(65).fill(a)),
    bad('ERR_OUT_OF_RANGE', RangeError),
  );
  assert.throws(() => native.sendMsg(a, bytes('x'), [1.5]), bad('ERR_OUT_OF_RANGE', RangeError));
  assert.throws(() => native.close(-1), bad('ERR_OUT_OF_RANGE', RangeError));
  assert.throws(() => native.close('3' as unknown as number), bad('ERR_INVALID_ARG_TYPE', TypeError));
  assert.throws(() => native.connectUnix('/tmp/a\0b'), bad('ERR_INVALID_ARG_VALUE', TypeError));
  assert.equal(native.recvMsg(a, new Uint8Array(4), 1), null, 'nothing was sent by the rejected calls');
  closeAll([a, b]);
});

test('close: EBADF for a closed fd', () => {
  const [a, b] = native.socketpair();
  native.close(a);
  assert.throws(() => native.close(a), assertSystemError('EBADF', 9, 'close'));
  native.close(b);
});

test('canSupported answers without leaking a socket', () => {
  const before = fdCount();
  const supported = native.canSupported();
  assert.equal(typeof supported, 'boolean');
  assert.equal(native.canSupported(), supported, 'stable answer');
  assert.equal(fdCount(), before);
});
