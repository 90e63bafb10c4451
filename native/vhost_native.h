/*
 * vhost_native: a small Node-API addon exposing the Linux syscalls a vhost-user
 * back-end needs (fd passing, memfd/mmap, eventfd, readiness polling, AF_CAN
 * raw sockets with batched frame records, timerfd, the calling thread's
 * scheduling class).
 *
 * Rules for everything in native/:
 *   - syscalls only, no policy: callers in TypeScript decide what a failure means;
 *   - every fd we create is O_CLOEXEC;
 *   - every syscall failure becomes a Node-style Error { code, errno, syscall }
 *     (see vn_throw_errno), never a process abort;
 *   - everything runs on the JS thread of the env that created it (Workers each
 *     get their own env), so no locking is needed.
 */
#ifndef VHOST_NATIVE_H
#define VHOST_NATIVE_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <node_api.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Largest fd count accepted by sendMsg and the size of recvMsg's cmsg buffer. */
#define VN_MAX_FDS 64

/* Largest integer a JS number represents exactly (2^53 - 1). */
#define VN_MAX_SAFE_INTEGER 9007199254740991.0

/* ---- errors.c: exceptions and argument parsing ------------------------- */

/* Throws Error(`${syscall}: ${strerror(err)}`) with code/errno/syscall set. */
void vn_throw_errno(napi_env env, int err, const char *syscall);
/* After a failed syscall on a freshly made fd: closes `fd` (keeping errno for
 * the message), throws as vn_throw_errno and returns NULL for the caller to return. */
napi_value vn_throw_errno_close(napi_env env, int fd, const char *syscall);
/* Throws a TypeError / RangeError / Error with the given `code` property. */
void vn_throw_type(napi_env env, const char *code, const char *msg);
void vn_throw_range(napi_env env, const char *code, const char *msg);
void vn_throw_plain(napi_env env, const char *code, const char *msg);
/*
 * Called after a failed napi_* call: if no JS exception is pending, throws an
 * Error describing the failed N-API call so that the failure is never silent.
 */
void vn_throw_napi(napi_env env, napi_status status, const char *what);

/*
 * Evaluates a napi_* call; on failure makes sure an exception is pending and
 * returns NULL from the enclosing napi_callback.
 */
#define VN_CALL(env, call)                                                     \
  do {                                                                         \
    napi_status vn_status_ = (call);                                           \
    if (vn_status_ != napi_ok) {                                               \
      vn_throw_napi((env), vn_status_, #call);                                 \
      return NULL;                                                             \
    }                                                                          \
  } while (0)

/*
 * Reads argument `value` as an integer in [min, max]. Throws TypeError
 * ERR_INVALID_ARG_TYPE for non-numbers and RangeError ERR_OUT_OF_RANGE for
 * non-integers or values out of range. Returns false if it threw.
 */
bool vn_get_int64(napi_env env, napi_value value, const char *name, int64_t min,
                  int64_t max, int64_t *out);
/* Same for an fd: an integer in [0, INT32_MAX]. */
bool vn_get_fd(napi_env env, napi_value value, const char *name, int *out);
/* Same for a boolean. */
bool vn_get_bool(napi_env env, napi_value value, const char *name, bool *out);
/*
 * Copies a JS string as UTF-8 into buf (size bytes including the NUL). Throws
 * TypeError ERR_INVALID_ARG_TYPE for non-strings and ERR_INVALID_ARG_VALUE for
 * strings with an embedded NUL (the kernel would silently cut them short).
 * Sets *too_long (without throwing, buf then holds nothing useful) when the
 * string does not fit, so the caller can report the errno it prefers.
 */
bool vn_get_string(napi_env env, napi_value value, const char *name, char *buf,
                   size_t size, size_t *len, bool *too_long);
/*
 * Gets the bytes of an ArrayBufferView (any TypedArray or DataView), honouring
 * its byteOffset and byteLength. Throws TypeError ERR_INVALID_ARG_TYPE otherwise.
 */
bool vn_get_bytes(napi_env env, napi_value value, const char *name, void **data,
                  size_t *length);

/* Returns `undefined` / `null` (helpers for returning from callbacks). */
napi_value vn_undefined(napi_env env);

/*
 * Fills argv[0..want-1] with the call's arguments, `undefined` for missing ones. Returns NULL
 * (with an exception pending) when the arguments cannot be read.
 */
napi_value vn_get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv);

/* Declares `argv` with n arguments of the current call (returns NULL from the caller on failure). */
#define GET_ARGS(n)                                                            \
  napi_value argv[n];                                                          \
  if (vn_get_args(env, info, (n), argv) == NULL) return NULL
napi_value vn_null(napi_env env);

/*
 * readCounter(fd): reads (and resets) the 8-byte counter of an eventfd or timerfd; null when it is
 * zero (EAGAIN, non-blocking fds). Shared by eventfdRead and timerfdRead (fd.c).
 */
napi_value vn_js_read_counter(napi_env env, napi_callback_info info);

/* ---- per-file initialisers: add their exports to `exports` ------------- */

bool vn_init_fd(napi_env env, napi_value exports);
bool vn_init_mmap(napi_env env, napi_value exports);
bool vn_init_watcher(napi_env env, napi_value exports);
bool vn_init_can(napi_env env, napi_value exports);
bool vn_init_guard(napi_env env, napi_value exports);
bool vn_init_timer(napi_env env, napi_value exports);
bool vn_init_sched(napi_env env, napi_value exports);

/* ---- guard.c: SIGBUS guard for mappings of files the peer may shrink --- */

/* Registers [addr, addr+length): returns its slot, -1 when the table is full
 * (nothing thrown), -2 when the handler could not be installed (thrown). */
int vn_guard_add(napi_env env, void *addr, size_t length);
/* Unregisters a slot (no-op for -1). Call before unmapping the range. */
void vn_guard_remove(int slot);
/* Faults absorbed in a slot's range since it was registered (0 for -1). */
unsigned vn_guard_faults(int slot);

#endif /* VHOST_NATIVE_H */
