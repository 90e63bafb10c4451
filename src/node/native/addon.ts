// Typed binding for the in-repo C addon (native/*.c, built by scripts/build-native.mjs).
//
// `NativeAddon` is the one description of everything the addon exports. Code that needs
// syscalls takes a `NativeAddon` (or the parts it uses) as a parameter, so tests can pass a
// fake of the same shape (docs/decisions.md "Native addon"); only composition roots and
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

/** The result of `NativeAddon.canIfInfo()`. */
export interface CanIfInfo {
  /** The interface index (what `sockaddr_can.can_ifindex` takes). */
  index: number;
  /** MTU: 16 = classic CAN only, 72 = CAN FD capable (vcan: `ip link set vcan0 mtu 72`). */
  mtu: number;
  /** IFF_UP: administratively up. */
  up: boolean;
  /** IFF_RUNNING: operationally up (a CAN controller in bus-off is not running). */
  running: boolean;
  /** The hardware type is ARPHRD_CAN (280). */
  isCan: boolean;
}

/** Options of `NativeAddon.canOpen()`. */
export interface CanOpenOptions {
  /** CAN_RAW_FD_FRAMES: send and receive CAN FD frames too (set only when true). */
  fd: boolean;
  /** CAN_RAW_LOOPBACK: frames sent go to the other sockets of this host too (kernel default: on). */
  loopback: boolean;
  /**
   * CAN_RAW_RECV_OWN_MSGS: this socket receives its own frames back, flagged MSG_CONFIRM
   * (needs `loopback`; on a real controller the echo comes after the bus ACK).
   */
  recvOwnMsgs: boolean;
  /** CAN_RAW_ERR_FILTER: error classes to receive as error frames (0 = none, CAN_ERR_MASK = all). */
  errMask: number;
  /**
   * CAN_RAW_FILTER: receive a frame when `(frame.can_id & mask) === (id & mask)` for any entry
   * (`id | CAN_INV_FILTER` inverts an entry). At most 512. `[]` receives no data frames;
   * omitted = receive everything.
   */
  filters?: readonly { id: number; mask: number }[];
  /**
   * Receive buffer in bytes: SO_RCVBUFFORCE when the process has CAP_NET_ADMIN (no upper limit),
   * otherwise SO_RCVBUF (silently capped at net.core.rmem_max). The kernel doubles the value and
   * applies a minimum; `canSocketBuffers()` tells what it granted.
   */
  rcvbuf?: number;
  /** SO_SNDBUF in bytes (the kernel doubles it and applies a minimum). */
  sndbuf?: number;
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
   * - Touching bytes beyond the end of the file raises SIGBUS, as in C, unless `guard` is true:
   *   then the addon's SIGBUS handler replaces the missing pages (from the faulting one to the
   *   end of this mapping) with private zero pages, counts the fault (`mappingFaults()`,
   *   `memoryFaults()`), signals `memoryFaultFd()`, and the access carries on reading zeros.
   *   Use it for memory a peer owns and may truncate (guest RAM); see native/guard.c.
   *
   * Release it with `munmap()`. If it is dropped instead, the mapping is unmapped once the
   * ArrayBuffer is garbage collected; that is a safety net, not a resource strategy.
   */
  mmap(fd: number, length: number, offset: number, guard?: boolean): ArrayBuffer;

  /** SIGBUS faults absorbed in a guarded mapping so far (0 for unguarded or unmapped ones). */
  mappingFaults(buf: ArrayBuffer): number;

  /** SIGBUS faults absorbed in all guarded mappings since the process started. */
  memoryFaults(): number;

  /**
   * A non-blocking eventfd that the SIGBUS handler signals after each absorbed fault (installs
   * the handler if no guarded mapping did yet). Watch it to learn which memory went bad; never
   * close it.
   */
  memoryFaultFd(): number;

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

  /**
   * timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK): a timer on the clock of
   * `process.hrtime`, with the kernel's high-resolution timers (libuv's timers count whole
   * milliseconds). Watch it with a Watcher: readable once the deadline passed.
   */
  timerfdCreate(): number;

  /**
   * Arms the timer once at the absolute CLOCK_MONOTONIC time `deadlineNs` (nanoseconds, as
   * `process.hrtime.bigint()` counts them; a deadline already past fires at once); 0 disarms.
   */
  timerfdArm(fd: number, deadlineNs: number): void;

  /** Reads and resets the expiration count; `null` when the timer has not fired (EAGAIN). */
  timerfdRead(fd: number): number | null;

  /**
   * sched_setscheduler(0, SCHED_FIFO, priority): puts the CALLING thread (not the process: Linux
   * applies it to the thread id 0 stands for) under the real-time FIFO class at `priority`
   * (1..99, RangeError otherwise). With `resetOnFork`, SCHED_RESET_ON_FORK is set too: threads
   * and processes this thread creates afterwards start under SCHED_OTHER instead of inheriting
   * the class. Throws EPERM (syscall 'sched_setscheduler') without CAP_SYS_NICE when `priority`
   * is above RLIMIT_RTPRIO (or the cgroup has no real-time budget), EINVAL when refused as invalid.
   */
  schedSetFifo(priority: number, resetOnFork: boolean): void;

  /**
   * The calling thread's scheduling class (sched_getscheduler(0), sched_getparam(0)): `policy`
   * 'SCHED_OTHER', 'SCHED_FIFO', 'SCHED_RR', 'SCHED_BATCH', 'SCHED_IDLE', 'SCHED_DEADLINE' (or
   * 'unknown'), its static `priority` (0 outside FIFO/RR) and whether SCHED_RESET_ON_FORK is set.
   */
  schedGet(): { policy: string; priority: number; resetOnFork: boolean };

  /** A full sequentially consistent fence: atomic_thread_fence(memory_order_seq_cst). */
  fence(): void;

  /**
   * Whether this kernel can open raw CAN sockets: socket(AF_CAN, SOCK_RAW, CAN_RAW) works.
   * `false` on EAFNOSUPPORT (no can.ko) or EPROTONOSUPPORT (no can-raw.ko); other errors
   * (EMFILE, ...) throw.
   */
  canSupported(): boolean;

  /**
   * Facts about a network interface, from SIOCGIFINDEX / SIOCGIFMTU / SIOCGIFFLAGS /
   * SIOCGIFHWADDR on an AF_UNIX socket, so it also works on kernels without AF_CAN.
   * `isCan` is "the hardware type is ARPHRD_CAN (280)": true for vcan, vxcan and real CAN
   * controllers. `up` is IFF_UP (administratively up), `running` IFF_RUNNING (carrier; a
   * CAN controller in bus-off is up but not running).
   * Throws ENODEV (syscall 'if_nametoindex') for a missing interface, an empty name or one
   * longer than 15 bytes.
   */
  canIfInfo(ifname: string): CanIfInfo;

  /**
   * A CAN_RAW socket bound to `ifname` (non-blocking, close-on-exec), configured in this
   * order: CAN_RAW_FD_FRAMES (only when `opts.fd`), CAN_RAW_LOOPBACK, CAN_RAW_RECV_OWN_MSGS,
   * CAN_RAW_ERR_FILTER, CAN_RAW_FILTER (only when `opts.filters` is given), SO_TIMESTAMPNS,
   * SO_RXQ_OVFL, SO_RCVBUFFORCE or SO_RCVBUF / SO_SNDBUF (only when given), then bind. The socket is closed on
   * any failure. Errors: EAFNOSUPPORT/EPROTONOSUPPORT (syscall 'socket') without AF_CAN,
   * ENODEV ('if_nametoindex') for a missing interface, ENODEV ('bind') for a non-CAN one,
   * 'setsockopt' for a refused option. Options are validated before any syscall.
   */
  canOpen(ifname: string, opts: CanOpenOptions): number;

  /**
   * The socket's buffer sizes as the kernel uses them (getsockopt SO_RCVBUF / SO_SNDBUF: twice
   * the values set, at least the kernel's minimum). Works on any socket; throws EBADF/ENOTSOCK
   * (syscall 'getsockopt').
   */
  canSocketBuffers(fd: number): { rcvbuf: number; sndbuf: number };

  /**
   * One recvmmsg(MSG_DONTWAIT) of up to `min(maxFrames, buf.byteLength / 88, 64)` frames
   * straight into the records of `buf` (layout: src/node/native/can-records.ts; no
   * allocation per frame). Returns the number of records filled, or `null` when nothing is
   * queued (EAGAIN). Each record gets the frame (bytes 0..71; a classic frame's unused bytes
   * 16..71 are zeroed), its wire size (16 or 72), the message's `msg_flags` (MSG_CONFIRM:
   * echo of a frame this socket sent, with `recvOwnMsgs`; MSG_DONTROUTE: sent by another
   * socket of this host; MSG_CTRUNC: control data truncated) and the SO_TIMESTAMPNS time
   * in ns (0 when absent).
   *
   * `meta` (at least 2 elements) is updated in place: `meta[0]` = the socket's cumulative
   * SO_RXQ_OVFL drop counter as last reported. The kernel attaches it to a frame only once
   * the counter is non-zero (it is the value at the time the frame was queued), so `meta[0]`
   * is left unchanged when no frame of this batch carried it: start it at 0, and expect drops
   * to show up with the first frame queued after them. `meta[1]` = how many messages of this
   * batch had their control data truncated (MSG_CTRUNC; not expected).
   * `buf` must hold at least one record and `maxFrames` must be at least 1 (RangeError).
   *
   * Pending socket errors are reported once, as a throw (syscall 'recvmmsg'), even with
   * frames queued: ENETDOWN after the interface went down (or when the socket was bound
   * while it was down), ENODEV after it was deleted (the socket is then unbound for good).
   */
  canRecvBatch(fd: number, buf: Uint8Array, maxFrames: number, meta: Uint32Array): number | null;

  /**
   * One sendmmsg(MSG_DONTWAIT) of the first `min(count, 64)` records of `buf`, each sent as
   * its wire size (bytes 72..75: 16 = classic, 72 = FD; anything else in one of those records
   * is a RangeError with code 'ERR_INVALID_ARG_VALUE' before any syscall). `count` is
   * 0..buf.byteLength / 88; 0 makes no syscall. Bytes 76..87 are ignored.
   *
   * Returns how many frames were queued, which may be fewer than asked: at most 64 per call,
   * and the kernel stops at the first frame that fails after at least one succeeded (that
   * error is not reported; the next call meets it again). Returns 0 when the *first* frame
   * meets EAGAIN (socket send buffer full) or ENOBUFS (interface TX queue full): that is
   * back-pressure, not an error, and which of the two it was is not reported. Every other
   * error of the first frame throws (syscall 'sendmmsg'): ENETDOWN (interface down), EINVAL
   * (an FD frame on a socket without `fd`, or a frame longer than the interface MTU), ...
   */
  canSendBatch(fd: number, buf: Uint8Array, count: number): number;

  /** Bytes per record of canRecvBatch/canSendBatch (see src/node/native/can-records.ts). */
  readonly CAN_RECORD_SIZE: 88;
  /** Offset of the frame payload (`canfd_frame.data`) inside a record. */
  readonly CAN_RECORD_DATA_OFFSET: 8;
  /** Offset of the u32 wire size inside a record. */
  readonly CAN_RECORD_WIRE_SIZE_OFFSET: 72;
  /** Offset of the u32 msg_flags inside a record. */
  readonly CAN_RECORD_MSG_FLAGS_OFFSET: 76;
  /** Offset of the u64 timestamp (ns) inside a record. */
  readonly CAN_RECORD_TIMESTAMP_OFFSET: 80;
  /** Most frames one canRecvBatch/canSendBatch call handles. */
  readonly CAN_MAX_BATCH: 64;
  /** `can_id` flag: 29-bit extended identifier. */
  readonly CAN_EFF_FLAG: 0x80000000;
  /** `can_id` flag: remote transmission request (classic frames only). */
  readonly CAN_RTR_FLAG: 0x40000000;
  /** `can_id` flag: error frame (class bits in the id, details in data[0..7]). */
  readonly CAN_ERR_FLAG: 0x20000000;
  /** 11-bit standard identifier mask. */
  readonly CAN_SFF_MASK: 0x7ff;
  /** 29-bit extended identifier mask. */
  readonly CAN_EFF_MASK: 0x1fffffff;
  /** All error classes (the value for `errMask` that receives every error frame). */
  readonly CAN_ERR_MASK: 0x1fffffff;
  /** Filter `id` flag: invert the filter (receive what does not match). */
  readonly CAN_INV_FILTER: 0x20000000;
  /** canfd_frame.flags: bit rate switch. */
  readonly CANFD_BRS: 0x01;
  /** canfd_frame.flags: error state indicator of the transmitter. */
  readonly CANFD_ESI: 0x02;
  /** canfd_frame.flags: FD frame marker (set by Linux >= 5.19 on every received FD frame). */
  readonly CANFD_FDF: 0x04;
  /** Wire size of a classic frame (struct can_frame). */
  readonly CAN_MTU: 16;
  /** Wire size of a CAN FD frame (struct canfd_frame). */
  readonly CANFD_MTU: 72;
  /** msg_flags: the echo of a frame this socket sent (needs `recvOwnMsgs`). */
  readonly MSG_CONFIRM: 0x800;
  /** msg_flags: the frame was sent by another socket on this host (local loopback). */
  readonly MSG_DONTROUTE: 0x4;
  /** Error class (can_id of an error frame): TX timeout (by netdevice driver). */
  readonly CAN_ERR_TX_TIMEOUT: 0x1;
  /** Error class: lost arbitration, bit number in data[0]. */
  readonly CAN_ERR_LOSTARB: 0x2;
  /** Error class: controller problems, details in data[1] (CAN_ERR_CRTL_*). */
  readonly CAN_ERR_CRTL: 0x4;
  /** Error class: protocol violations, details in data[2], data[3]. */
  readonly CAN_ERR_PROT: 0x8;
  /** Error class: transceiver status, details in data[4]. */
  readonly CAN_ERR_TRX: 0x10;
  /** Error class: no ACK on transmission. */
  readonly CAN_ERR_ACK: 0x20;
  /** Error class: bus off. */
  readonly CAN_ERR_BUSOFF: 0x40;
  /** Error class: bus error (may flood!). */
  readonly CAN_ERR_BUSERROR: 0x80;
  /** Error class: controller restarted (after bus-off). */
  readonly CAN_ERR_RESTARTED: 0x100;
  /** Error class: TX/RX error counters are valid in data[6], data[7]. */
  readonly CAN_ERR_CNT: 0x200;
  /** data[1] of a CAN_ERR_CRTL frame: RX buffer overflow. */
  readonly CAN_ERR_CRTL_RX_OVERFLOW: 0x01;
  /** data[1]: TX buffer overflow. */
  readonly CAN_ERR_CRTL_TX_OVERFLOW: 0x02;
  /** data[1]: reached warning level for RX errors. */
  readonly CAN_ERR_CRTL_RX_WARNING: 0x04;
  /** data[1]: reached warning level for TX errors. */
  readonly CAN_ERR_CRTL_TX_WARNING: 0x08;
  /** data[1]: reached error passive status RX. */
  readonly CAN_ERR_CRTL_RX_PASSIVE: 0x10;
  /** data[1]: reached error passive status TX. */
  readonly CAN_ERR_CRTL_TX_PASSIVE: 0x20;
  /** data[1]: recovered to error active state. */
  readonly CAN_ERR_CRTL_ACTIVE: 0x40;

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
