// OwnedFd: close-once ownership of a real fd.
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { test } from 'node:test';
import { native } from '../../src/node/native/addon.js';
import { OwnedFd } from '../../src/node/native/owned-fd.js';

function fdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

const isFdClosed = (err: unknown) => (err as { code?: string }).code === 'ERR_FD_CLOSED';

test('OwnedFd closes a real fd exactly once', () => {
  const before = fdCount();
  const owned = new OwnedFd(native.eventfdCreate(0, true));
  assert.equal(fdCount(), before + 1);
  native.eventfdWrite(owned.fd, 1);
  assert.equal(native.eventfdRead(owned.fd), 1);
  assert.equal(owned.closed, false);

  owned.close();
  assert.equal(owned.closed, true);
  assert.equal(fdCount(), before);
  owned.close(); // no EBADF: the number may already belong to someone else
  assert.equal(fdCount(), before);
  assert.throws(() => owned.fd, isFdClosed);
  assert.throws(() => owned.release(), isFdClosed);
});

test('OwnedFd.release() hands the fd over without closing it', () => {
  const before = fdCount();
  const owned = new OwnedFd(native.eventfdCreate(0, true));
  const raw = owned.release();
  assert.equal(owned.closed, true);
  assert.throws(() => owned.fd, isFdClosed);
  owned.close(); // does not close the released fd
  assert.equal(fdCount(), before + 1);
  native.close(raw);
  assert.equal(fdCount(), before);
});

test('OwnedFd counts as closed even if close(2) throws, and uses an injected closer', () => {
  const closed: number[] = [];
  const owned = new OwnedFd(42, (fd) => {
    closed.push(fd);
    throw Object.assign(new Error('close: Input/output error'), { code: 'EIO' });
  });
  assert.throws(
    () => owned.close(),
    (e: unknown) => (e as { code?: string }).code === 'EIO',
  );
  assert.equal(owned.closed, true);
  owned.close();
  assert.deepEqual(closed, [42], 'never closed twice');
});

test('OwnedFd rejects invalid fd numbers', () => {
  for (const bad of [-1, 1.5, Number.NaN]) {
    assert.throws(
      () => new OwnedFd(bad, () => {}),
      (e: unknown) => e instanceof RangeError && (e as { code?: string }).code === 'ERR_OUT_OF_RANGE',
    );
  }
});
