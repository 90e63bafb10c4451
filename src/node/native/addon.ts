// Typed binding for the in-repo C addon (native/*.c, built by scripts/build-native.mjs).
//
// `NativeAddon` is the one description of everything the addon exports. Code that needs
// syscalls takes a `NativeAddon` (or the parts it uses) as a parameter, so tests can pass a
// fake of the same shape (architecture.md principle 9); only composition roots and
// integration tests use the loaded `native` instance directly.
//
// Conventions of the addon (all of them hold for every function below):
// - Syscalls only, no policy. Every fd it creates is close-on-exec, and sockets are
//   non-blocking.
// - A failed syscall throws a Node-style system error: an `Error` with `code` ('EAGAIN',
//   'ENOENT', ...), a positive `errno`, `syscall` ('recvmsg', ...) and a message like
//   "recvmsg: Resource temporarily unavailable". See `NativeSystemError`.
// - Bad arguments throw a `TypeError` with code 'ERR_INVALID_ARG_TYPE' or a `RangeError` with
//   code 'ERR_OUT_OF_RANGE' before any syscall is made.
// - "Would block" is a normal result (`null`) for reads and accepts, and an error (code
//   'EAGAIN') for writes, because a partial or refused write needs the caller's decision.
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

/** The shape of errors thrown for failed syscalls. */
export interface NativeSystemError extends Error {
  /** Symbolic errno name, e.g. 'EAGAIN', 'ENOENT', 'EBADF'. */
  code: string;
  /** The positive errno value, e.g. 11 for EAGAIN on Linux. */
  errno: number;
  /** The syscall that failed, e.g. 'recvmsg', 'connect', 'mmap'. */
  syscall: string;
}

/** Everything `build/Release/vhost_native.node` exports. */
export interface NativeAddon {
  /**
   * close(2). EINTR is ignored (Linux releases the fd anyway, and retrying could close a
   * reused number). Throws EBADF for an fd that is not open.
   */
  close(fd: number): void;

  /**
   * A listening AF_UNIX SOCK_STREAM socket bound to `path` (non-blocking, close-on-exec).
   * Does not unlink an existing path: that is policy (throws EADDRINUSE). Throws
   * ENAMETOOLONG when `path` does not fit `sun_path` (107 bytes plus NUL).
   */
  listenUnix(path: string, backlog: number): number;

  /**
   * accept4(SOCK_NONBLOCK | SOCK_CLOEXEC) on a listening socket. Returns `null` when no
   * connection is pending (EAGAIN), so a readiness callback can loop until `null`.
   */
  acceptUnix(listenFd: number): number | null;

  /**
   * Connects a new AF_UNIX stream socket to `path` with a *blocking* connect (immediate for
   * Unix sockets unless the listener's backlog is full), then makes it non-blocking.
   * Throws ENOENT / ECONNREFUSED with syscall 'connect'.
   */
  connectUnix(path: string): number;

  /** A connected pair of AF_UNIX stream sockets, both non-blocking and close-on-exec. */
  socketpair(): [number, number];

  /**
   * One recvmsg(MSG_CMSG_CLOEXEC | MSG_DONTWAIT) into all of `buf` (its byteOffset and
   * byteLength are honoured; `buf` must not be empty).
   *
   * - `null`: nothing to read (EAGAIN).
   * - `bytes === 0`: end of stream (the peer closed).
   * - `fds`: the SCM_RIGHTS descriptors that arrived with this read (close-on-exec), at most
   *   `maxFds` (0..64). Extra ones are closed and `truncated` is set; `truncated` is also set
   *   when the kernel dropped fds for lack of control-buffer space (MSG_CTRUNC, more than 64
   *   fds). The fds that did arrive are still returned: the caller owns them and decides.
   *
   * On a stream socket the kernel merges data that precedes an fd-carrying message into
   * the same read, so read exactly one message header at a time (vhost-user: 12 bytes) to
   * attribute fds to the right message.
   */
  recvMsg(
    fd: number,
    buf: Uint8Array,
    maxFds: number,
  ): { bytes: number; fds: number[]; truncated: boolean } | null;

  /**
   * One sendmsg(MSG_NOSIGNAL | MSG_DONTWAIT) of all of `buf`, with `fds` (at most 64) as
   * SCM_RIGHTS when given and non-empty. Returns the bytes sent, which may be fewer than
   * `buf.byteLength` on a stream socket. Throws on every error, including EAGAIN (code
   * 'EAGAIN') and EPIPE (no SIGPIPE is raised).
   */
  sendMsg(fd: number, buf: Uint8Array, fds?: readonly number[]): number;

  /**
   * memfd_create(name, MFD_CLOEXEC) then ftruncate(size). `name` is at most 249 bytes
   * (EINVAL otherwise) and shows up in /proc/<pid>/maps as "/memfd:<name>".
   */
  memfdCreate(name: string, size: number): number;

  /**
   * mmap(PROT_READ | PROT_WRITE, MAP_SHARED) of `length` bytes of `fd` at `offset`, as an
   * external ArrayBuffer over the mapping (no copy).
   *
   * - `offset` must be a multiple of the page size (EINVAL otherwise, syscall 'mmap').
   * - `length` is 1..2^32 (Node 20's ArrayBuffer limit); larger throws a RangeError with code
   *   'ERR_MMAP_TOO_LARGE': map big regions in several windows.
   * - Touching bytes beyond the end of the file raises SIGBUS, as in C.
   *
   * Release it with `munmap()`. If it is dropped instead, the mapping is unmapped once the
   * ArrayBuffer is garbage collected; that is a safety net, not a resource strategy.
   */
  mmap(fd: number, length: number, offset: number): ArrayBuffer;

  /**
   * Detaches `buf` (every view of it then has length 0 and reads give `undefined` instead
   * of faulting), then unmaps it. Idempotent: a second call is a no-op. Throws a TypeError
   * with code 'ERR_NOT_MAPPED' for an ArrayBuffer that `mmap()` did not create.
   */
  munmap(buf: ArrayBuffer): void;

  /** eventfd(initval, EFD_CLOEXEC | (nonblocking ? EFD_NONBLOCK : 0)); initval is 0..2^32-1. */
  eventfdCreate(initval: number, nonblocking: boolean): number;

  /**
   * Reads and resets the 8-byte eventfd counter. Returns `null` when it is zero on a
   * non-blocking fd (EAGAIN). Blocks on a blocking eventfd with a zero counter. Counters
   * above 2^53 lose precision.
   */
  eventfdRead(fd: number): number | null;

  /**
   * Adds `value` (0..2^53-1) to the eventfd counter. Throws code 'EAGAIN' if the counter
   * would overflow on a non-blocking fd.
   */
  eventfdWrite(fd: number, value: number): void;

  /** A full sequentially consistent fence: atomic_thread_fence(memory_order_seq_cst). */
  fence(): void;

  /**
   * Whether this kernel can open raw CAN sockets: socket(AF_CAN, SOCK_RAW, CAN_RAW) works.
   * `false` on EAFNOSUPPORT (no can.ko) or EPROTONOSUPPORT (no can-raw.ko); other errors
   * (EMFILE, ...) throw.
   */
  canSupported(): boolean;

  /** Bit for `Watcher.start()`: notify when the fd is readable (UV_READABLE). */
  readonly READABLE: 1;
  /** Bit for `Watcher.start()`: notify when the fd is writable (UV_WRITABLE). */
  readonly WRITABLE: 2;

  /**
   * Readiness notifications for any fd, on the libuv loop of the calling thread (uv_poll).
   *
   * - Level-triggered: the callback must drain the fd (read until `null`/EAGAIN) or stop the
   *   watcher, or it fires again at once.
   * - The constructor puts `fd` into non-blocking mode; libuv allows one watcher per fd per
   *   thread (EEXIST, syscall 'uv_poll_init'). It does not own or close the fd: close the
   *   watcher first, then the fd.
   * - The callback gets `status` (0, or a negative libuv error code such as -9 = UV_EBADF,
   *   after which the watcher is stopped) and `events` (READABLE | WRITABLE bits). `this` in
   *   the callback is the watcher. An exception thrown by the callback becomes an
   *   'uncaughtException', like any throwing I/O callback.
   * - A started watcher keeps the event loop (and itself) alive; a stopped one does not.
   */
  Watcher: new (
    fd: number,
    callback: (status: number, events: number) => void,
  ) => {
    /**
     * Starts watching for `events` (READABLE, WRITABLE or both); calling it again replaces
     * the mask. Throws code 'ERR_WATCHER_CLOSED' after `close()`.
     */
    start(events: number): void;
    /** Stops notifications; the watcher can be started again. No-op when stopped or closed. */
    stop(): void;
    /**
     * Stops for good and releases the callback; idempotent, and safe inside the callback.
     * No callback runs after it returns.
     */
    close(): void;
  };
}

/** The result of a successful `recvMsg()`. */
export type RecvMsgResult = NonNullable<ReturnType<NativeAddon['recvMsg']>>;
/** An instance of `NativeAddon['Watcher']`. */
export type NativeWatcher = InstanceType<NativeAddon['Watcher']>;
/** The callback given to the `Watcher` constructor. */
export type WatcherCallback = ConstructorParameters<NativeAddon['Watcher']>[1];

// Both src/node/native/addon.ts (run by tsx) and dist/node/native/addon.js (after tsc) sit
// three directories below the repository root.
const addonPath = fileURLToPath(new URL('../../../build/Release/vhost_native.node', import.meta.url));

function loadAddon(): NativeAddon {
  try {
    return createRequire(import.meta.url)(addonPath) as NativeAddon;
  } catch (cause) {
    const err = new Error(
      `cannot load the native addon ${addonPath}; build it with \`node scripts/build-native.mjs\``,
      { cause },
    );
    throw Object.assign(err, { code: 'ERR_NATIVE_ADDON_LOAD' });
  }
}

/** The addon, loaded once per thread on first import. */
export const native: NativeAddon = loadAddon();
