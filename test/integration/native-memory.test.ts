// memfd + mmap/munmap through the addon: offsets, detach semantics, finalizer safety under GC.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { ftruncateSync, readdirSync, readFileSync } from 'node:fs';
import { test } from 'node:test';
import { setImmediate as nextImmediate } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { type NativeSystemError, native } from '../../src/node/native/addon.js';

const gc: (() => void) | undefined = (globalThis as { gc?: () => void }).gc;

function pageSize(): number {
  try {
    return Number(execFileSync('getconf', ['PAGESIZE'], { encoding: 'utf8' }).trim()) || 4096;
  } catch {
    return 4096;
  }
}
const PAGE = pageSize();
const addonPath = fileURLToPath(new URL('../../build/Release/vhost_native.node', import.meta.url));

function fdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

/**
 * Pages of memfds called `name` mapped in this process, from /proc/self/maps (shown as
 * "/memfd:name (deleted)"). Counts pages, not lines: the kernel merges adjacent mappings of
 * consecutive file offsets into one line (it happens under valgrind's placement).
 */
function mappedPages(name: string): number {
  let bytes = 0;
  for (const line of readFileSync('/proc/self/maps', 'utf8').split('\n')) {
    if (!line.includes(`/memfd:${name} `)) continue;
    const [start, end] = line.split(' ', 1)[0]!.split('-');
    bytes += Number.parseInt(end!, 16) - Number.parseInt(start!, 16);
  }
  return bytes / PAGE;
}

/** Lets pending N-API finalizers (they run from setImmediate) and GC happen. */
async function settle(rounds = 3): Promise<void> {
  for (let i = 0; i < rounds; i++) {
    gc?.();
    await nextImmediate();
  }
}

function systemError(code: string, syscall: string): (err: unknown) => boolean {
  return (err: unknown) => {
    assert.ok(err instanceof Error);
    assert.equal((err as NativeSystemError).code, code);
    assert.equal((err as NativeSystemError).syscall, syscall);
    return true;
  };
}

test('memfdCreate gives a close-on-exec fd of the requested size', () => {
  const fd = native.memfdCreate('vn-mem-size', 3 * PAGE);
  const flags = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8').match(/flags:\s*(\d+)/);
  assert.ok(flags);
  assert.equal(Number.parseInt(flags[1]!, 8) & 0o2000000, 0o2000000);
  const ab = native.mmap(fd, 3 * PAGE, 0);
  assert.equal(ab.byteLength, 3 * PAGE);
  assert.ok(
    new Uint8Array(ab).every((b) => b === 0),
    'a fresh memfd reads as zeros',
  );
  native.munmap(ab);
  native.close(fd);
  assert.throws(() => native.memfdCreate('x'.repeat(250), 1), systemError('EINVAL', 'memfd_create'));
});

test('mmap at a page offset sees the bytes of that page', () => {
  const name = 'vn-mem-offset';
  const fd = native.memfdCreate(name, 3 * PAGE);
  const whole = native.mmap(fd, 3 * PAGE, 0);
  const u8 = new Uint8Array(whole);
  for (let page = 0; page < 3; page++) u8.fill(0x10 + page, page * PAGE, (page + 1) * PAGE);
  u8[PAGE + 7] = 0x99;

  const second = native.mmap(fd, PAGE, PAGE);
  const third = native.mmap(fd, 2 * PAGE, PAGE);
  assert.equal(second.byteLength, PAGE);
  assert.equal(new Uint8Array(second)[0], 0x11);
  assert.equal(new Uint8Array(second)[7], 0x99);
  assert.equal(new Uint8Array(third)[PAGE], 0x12);
  assert.equal(mappedPages(name), 3 + 1 + 2);

  // Writes through the window land in the right place of the whole mapping.
  new Uint8Array(second)[8] = 0x42;
  assert.equal(u8[PAGE + 8], 0x42);

  for (const ab of [whole, second, third]) native.munmap(ab);
  assert.equal(mappedPages(name), 0);
  native.close(fd);
});

test('mmap argument errors: unaligned offset, zero length, too large, bad fd', () => {
  const fd = native.memfdCreate('vn-mem-errors', 2 * PAGE);
  assert.throws(
    () => native.mmap(fd, PAGE, 100),
    (err: unknown) => {
      systemError('EINVAL', 'mmap')(err);
      assert.equal((err as NativeSystemError).errno, 22);
      assert.equal((err as Error).message, 'mmap: Invalid argument');
      return true;
    },
  );
  assert.throws(() => native.mmap(fd, 0, 0), systemError('EINVAL', 'mmap'));
  assert.throws(
    () => native.mmap(fd, 2 ** 32 + 1, 0),
    (err: unknown) => {
      assert.ok(err instanceof RangeError);
      assert.equal((err as NativeSystemError).code, 'ERR_MMAP_TOO_LARGE');
      return true;
    },
  );
  assert.throws(
    () => native.mmap(fd, PAGE, -PAGE),
    (err: unknown) => err instanceof RangeError,
  );
  native.close(fd);
  assert.throws(() => native.mmap(fd, PAGE, 0), systemError('EBADF', 'mmap'));
});

test('a 4 GiB mapping (the Node 20 maximum) works and unmaps', () => {
  const name = 'vn-mem-4g';
  const fd = native.memfdCreate(name, 2 ** 32); // sparse: no memory is used until touched
  const ab = native.mmap(fd, 2 ** 32, 0);
  assert.equal(ab.byteLength, 2 ** 32);
  const dv = new DataView(ab);
  dv.setUint32(2 ** 32 - 4, 0x01020304, true);
  assert.equal(dv.getUint32(2 ** 32 - 4, true), 0x01020304);
  assert.equal(mappedPages(name), 2 ** 32 / PAGE);
  native.munmap(ab);
  assert.equal(mappedPages(name), 0);
  assert.equal(ab.byteLength, 0);
  native.close(fd);
});

test('munmap detaches: views report length 0, reads give undefined; a second munmap is a no-op', async () => {
  const name = 'vn-mem-detach';
  const fd = native.memfdCreate(name, PAGE);
  const ab = native.mmap(fd, PAGE, 0);
  const view = new Uint8Array(ab);
  const u32 = new Uint32Array(ab, 16, 4);
  view[0] = 7;
  assert.equal(mappedPages(name), 1);

  native.munmap(ab);
  assert.equal(mappedPages(name), 0);
  assert.equal(ab.byteLength, 0);
  assert.equal(view.length, 0);
  assert.equal(u32.length, 0);
  assert.equal(view[0], undefined);
  assert.throws(() => new Uint8Array(ab), TypeError, 'no new views on a detached buffer');

  native.munmap(ab); // no-op
  // After the detached backing store's finalizer has run (setImmediate), munmap must still be
  // a safe no-op: the record it looks at must not have been freed.
  await settle();
  native.munmap(ab);
  assert.equal(mappedPages(name), 0);

  // The data is still in the memfd.
  const again = native.mmap(fd, PAGE, 0);
  assert.equal(new Uint8Array(again)[0], 7);
  native.munmap(again);
  native.close(fd);
});

test('munmap rejects buffers that mmap did not create', () => {
  const code = (c: string) => (err: unknown) => {
    assert.ok(err instanceof TypeError);
    assert.equal((err as NativeSystemError).code, c);
    return true;
  };
  assert.throws(() => native.munmap(new ArrayBuffer(16)), code('ERR_NOT_MAPPED'));
  assert.throws(() => native.munmap(Buffer.alloc(16).buffer as ArrayBuffer), code('ERR_NOT_MAPPED'));
  assert.throws(
    () => native.munmap(new Uint8Array(4) as unknown as ArrayBuffer),
    code('ERR_INVALID_ARG_TYPE'),
  );
  assert.throws(
    () => native.munmap(new SharedArrayBuffer(8) as unknown as ArrayBuffer),
    code('ERR_INVALID_ARG_TYPE'),
  );
  // A detached ordinary ArrayBuffer is still not ours.
  const plain = new ArrayBuffer(8);
  structuredClone(plain, { transfer: [plain] });
  assert.throws(() => native.munmap(plain), code('ERR_NOT_MAPPED'));
});

test('GC stress: 200 map/write/munmap cycles, then mappings left to the finalizer', async () => {
  const name = 'vn-mem-gc';
  const fdsBefore = fdCount();
  assert.equal(mappedPages(name), 0);

  for (let i = 0; i < 200; i++) {
    const fd = native.memfdCreate(name, 2 * PAGE);
    const ab = native.mmap(fd, 2 * PAGE, 0);
    const dv = new DataView(ab);
    dv.setUint32(PAGE + 4, i, true);
    assert.equal(dv.getUint32(PAGE + 4, true), i);
    native.munmap(ab);
    native.close(fd);
    if (i % 10 === 0) gc?.();
    if (i % 50 === 0) await nextImmediate(); // let queued finalizers of detached buffers run
  }
  await settle();
  assert.equal(mappedPages(name), 0);
  assert.equal(fdCount(), fdsBefore);

  // Mappings that are dropped without munmap: only the finalizer can unmap them.
  const kept = native.memfdCreate(name, 4 * PAGE);
  (function mapAndDrop() {
    for (let i = 0; i < 50; i++) {
      const ab = native.mmap(kept, PAGE, (i % 4) * PAGE);
      new Uint8Array(ab)[i] = i + 1;
    }
  })();
  assert.equal(mappedPages(name), 50);
  if (gc) {
    for (let round = 0; round < 20 && mappedPages(name) > 0; round++) await settle(1);
    assert.equal(mappedPages(name), 0, 'the finalizer unmapped every dropped mapping');
  }

  // Map again (new mappings may reuse the freed address ranges) and check the data survived.
  const views = [0, 1, 2, 3].map((page) => native.mmap(kept, PAGE, page * PAGE));
  for (let i = 0; i < 50; i++) assert.equal(new Uint8Array(views[i % 4]!)[i], i + 1);
  await settle();
  for (let i = 0; i < 50; i++) assert.equal(new Uint8Array(views[i % 4]!)[i], i + 1, 'still intact after GC');
  for (const ab of views) native.munmap(ab);
  assert.equal(mappedPages(name), 0);
  native.close(kept);
  assert.equal(fdCount(), fdsBefore);
});

test('mappings and watchers left open in a Worker are cleaned up when it exits or is terminated', async () => {
  const name = 'vn-mem-worker';
  const fd = native.memfdCreate(name, PAGE);
  const workerCode = `
    const { parentPort, workerData } = require('node:worker_threads');
    const native = require(workerData.addonPath);
    const ab = native.mmap(workerData.fd, 4096, 0);
    new Uint8Array(ab).set(new TextEncoder().encode('hello from worker ' + workerData.id));
    const efd = native.eventfdCreate(0, true);
    const w = new native.Watcher(efd, () => { native.eventfdRead(efd); });
    w.start(native.READABLE);
    globalThis.keep = { ab, w };
    parentPort.postMessage('ready');
    if (workerData.exitItself) setTimeout(() => process.exit(0), 10);
  `;
  for (const [id, exitItself] of [
    [1, false],
    [2, true],
  ] as const) {
    const worker = new Worker(workerCode, { eval: true, workerData: { addonPath, fd, id, exitItself } });
    const exited = new Promise<number>((resolve) => worker.once('exit', resolve));
    const message = await new Promise((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    assert.equal(message, 'ready');
    if (!exitItself) await worker.terminate();
    assert.equal(await exited, exitItself ? 0 : 1);

    const ab = native.mmap(fd, PAGE, 0);
    assert.equal(new TextDecoder().decode(new Uint8Array(ab, 0, 19)), `hello from worker ${id}`);
    native.munmap(ab);
  }
  native.close(fd);
});

test('guarded mapping: pages past the end of the file read as zeros, counted and signalled', () => {
  const fd = native.memfdCreate('guarded', 2 * PAGE);
  const efd = native.memoryFaultFd();
  while (native.eventfdRead(efd) !== null) {
    /* drain what earlier tests left */
  }
  const ab = native.mmap(fd, 8 * PAGE, 0, true);
  const u = new Uint8Array(ab);
  u[0] = 0x5a;
  u[2 * PAGE - 1] = 0xa5;
  const before = native.memoryFaults();
  assert.equal(native.mappingFaults(ab), 0);
  // Page 4 is past EOF: without the guard this is SIGBUS (see the next test).
  assert.equal(u[4 * PAGE + 7], 0);
  assert.equal(native.mappingFaults(ab), 1);
  assert.equal(native.memoryFaults(), before + 1);
  assert.equal(native.eventfdRead(efd), 1, 'the fault eventfd was signalled once');
  // Everything from the faulting page on was replaced at once: no second fault for page 6.
  u[6 * PAGE] = 3;
  assert.equal(u[6 * PAGE], 3);
  assert.equal(native.mappingFaults(ab), 1);
  // Page 3 (before the faulting one, also past EOF) faults separately; the file's pages are intact.
  u.fill(1, 3 * PAGE, 4 * PAGE);
  assert.equal(native.mappingFaults(ab), 2);
  assert.equal(u[0], 0x5a);
  assert.equal(u[2 * PAGE - 1], 0xa5);
  native.munmap(ab);
  assert.equal(native.mappingFaults(ab), 0, 'an unmapped buffer reports no faults');
  native.close(fd);
});

test('guarded mapping: a file shrunk after mapping faults into zeros, the shared part stays shared', () => {
  const fd = native.memfdCreate('shrunk', 4 * PAGE);
  const ab = native.mmap(fd, 4 * PAGE, 0, true);
  const other = native.mmap(fd, PAGE, 0);
  const u = new Uint8Array(ab);
  u[3 * PAGE] = 9;
  ftruncateSync(fd, PAGE);
  assert.equal(u[3 * PAGE], 0, 'the truncated page reads as zero');
  assert.equal(native.mappingFaults(ab), 1);
  u[10] = 42;
  assert.equal(new Uint8Array(other)[10], 42, 'page 0 is still the shared file page');
  native.munmap(other);
  native.munmap(ab);
  native.close(fd);
});

test('the guard leaves other SIGBUS alone: an unguarded mapping past EOF still kills (default action)', () => {
  const script = `
    const native = require(${JSON.stringify(addonPath)});
    const fd = native.memfdCreate('x', 4096);
    const guarded = native.mmap(fd, 4096, 0, true); // installs the handler
    const plain = new Uint8Array(native.mmap(fd, 4 * 4096, 0));
    process.stdout.write('touching\\n');
    plain[3 * 4096] = 1;
    process.stdout.write('survived\\n');
  `;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 20_000 });
  assert.equal(r.stdout, 'touching\n');
  assert.equal(r.signal, 'SIGBUS');
});

test('guarded mappings are independent of the order they are unmapped in', () => {
  const fd = native.memfdCreate('order', PAGE);
  const maps = Array.from({ length: 8 }, () => native.mmap(fd, 4 * PAGE, 0, true));
  for (const i of [3, 0, 7, 5]) native.munmap(maps[i]!);
  for (const i of [1, 2, 4, 6]) {
    assert.equal(new Uint8Array(maps[i]!)[2 * PAGE], 0);
    assert.equal(native.mappingFaults(maps[i]!), 1);
    native.munmap(maps[i]!);
  }
  native.close(fd);
});
