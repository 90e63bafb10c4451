/*
 * fd-level syscalls: close, Unix stream sockets with SCM_RIGHTS, memfd,
 * eventfd, a full fence and an AF_CAN capability probe.
 */
#include "vhost_native.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef AF_CAN
#define AF_CAN 29
#endif
#define VN_CAN_RAW 1

/* Fixed-size control buffer for recvMsg: room for VN_MAX_FDS descriptors, with
 * cmsghdr alignment guaranteed by the union. */
typedef union {
  struct cmsghdr align;
  char buf[CMSG_SPACE(sizeof(int) * VN_MAX_FDS)];
} vn_cmsg_buf;

static napi_value make_int(napi_env env, int64_t v) {
  napi_value out = NULL;
  VN_CALL(env, napi_create_int64(env, v, &out));
  return out;
}

/* Closes fd without disturbing errno (cleanup paths that report another error). */
static void close_quietly(int fd) {
  int saved = errno;
  close(fd);
  errno = saved;
}

/* close(fd). EINTR is ignored: on Linux the descriptor is released anyway and
 * retrying could close an fd another thread just got. */
static napi_value js_close(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int fd;
  if (!vn_get_fd(env, argv[0], "fd", &fd)) return NULL;
  if (close(fd) < 0 && errno != EINTR) {
    vn_throw_errno(env, errno, "close");
    return NULL;
  }
  return vn_undefined(env);
}

/* Fills a sockaddr_un; ENAMETOOLONG if the path does not fit sun_path with its
 * NUL, EINVAL for an empty path. Returns false after throwing. */
static bool get_unix_addr(napi_env env, napi_value value, const char *syscall,
                          struct sockaddr_un *addr) {
  memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  size_t len = 0;
  bool too_long = false;
  if (!vn_get_string(env, value, "path", addr->sun_path, sizeof addr->sun_path, &len,
                     &too_long)) {
    return false;
  }
  if (too_long) {
    vn_throw_errno(env, ENAMETOOLONG, syscall);
    return false;
  }
  if (len == 0) {
    vn_throw_errno(env, EINVAL, syscall);
    return false;
  }
  return true;
}

static napi_value js_listen_unix(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  struct sockaddr_un addr;
  int64_t backlog;
  if (!get_unix_addr(env, argv[0], "bind", &addr)) return NULL;
  if (!vn_get_int64(env, argv[1], "backlog", 0, INT32_MAX, &backlog)) return NULL;

  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    vn_throw_errno(env, errno, "socket");
    return NULL;
  }
  if (bind(fd, (const struct sockaddr *)&addr, sizeof addr) < 0) {
    return vn_throw_errno_close(env, fd, "bind");
  }
  if (listen(fd, (int)backlog) < 0) {
    return vn_throw_errno_close(env, fd, "listen");
  }
  return make_int(env, fd);
}

static napi_value js_accept_unix(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int lfd;
  if (!vn_get_fd(env, argv[0], "listenFd", &lfd)) return NULL;
  for (;;) {
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) return make_int(env, fd);
    /* ECONNABORTED: that connection is gone but others may be queued. */
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return vn_null(env);
    vn_throw_errno(env, errno, "accept4");
    return NULL;
  }
}

/* Completes a connect() that was interrupted by a signal: the kernel carries on
 * asynchronously, so wait for writability and read the outcome. */
static int finish_interrupted_connect(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLOUT};
  for (;;) {
    int r = poll(&p, 1, -1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return errno;
    break;
  }
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) return errno;
  return err;
}

/* Blocking connect (Unix sockets connect at once unless the listener's backlog
 * is full), then switch the fd to non-blocking for the event loop. */
static napi_value js_connect_unix(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  struct sockaddr_un addr;
  if (!get_unix_addr(env, argv[0], "connect", &addr)) return NULL;

  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    vn_throw_errno(env, errno, "socket");
    return NULL;
  }
  int err = 0;
  if (connect(fd, (const struct sockaddr *)&addr, sizeof addr) < 0) {
    err = errno == EINTR ? finish_interrupted_connect(fd) : errno;
  }
  if (err != 0) {
    close(fd);
    vn_throw_errno(env, err, "connect");
    return NULL;
  }
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    err = errno;
    close(fd);
    vn_throw_errno(env, err, "fcntl");
    return NULL;
  }
  return make_int(env, fd);
}

static napi_value js_socketpair(napi_env env, napi_callback_info info) {
  (void)info;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) {
    vn_throw_errno(env, errno, "socketpair");
    return NULL;
  }
  napi_value arr = NULL, a = NULL, b = NULL;
  if (napi_create_array_with_length(env, 2, &arr) != napi_ok ||
      napi_create_int32(env, sv[0], &a) != napi_ok ||
      napi_create_int32(env, sv[1], &b) != napi_ok ||
      napi_set_element(env, arr, 0, a) != napi_ok ||
      napi_set_element(env, arr, 1, b) != napi_ok) {
    close(sv[0]);
    close(sv[1]);
    vn_throw_napi(env, napi_generic_failure, "socketpair result");
    return NULL;
  }
  return arr;
}

/* Builds { bytes, fds, truncated }. On failure closes every fd so none leaks. */
static napi_value make_recv_result(napi_env env, ssize_t bytes, const int *fds,
                                   size_t nfds, bool truncated) {
  napi_value result = NULL, js_bytes = NULL, js_fds = NULL, js_trunc = NULL;
  bool ok = napi_create_object(env, &result) == napi_ok &&
            napi_create_int64(env, (int64_t)bytes, &js_bytes) == napi_ok &&
            napi_create_array_with_length(env, nfds, &js_fds) == napi_ok &&
            napi_get_boolean(env, truncated, &js_trunc) == napi_ok;
  for (size_t i = 0; ok && i < nfds; i++) {
    napi_value v = NULL;
    ok = napi_create_int32(env, fds[i], &v) == napi_ok &&
         napi_set_element(env, js_fds, (uint32_t)i, v) == napi_ok;
  }
  ok = ok && napi_set_named_property(env, result, "bytes", js_bytes) == napi_ok &&
       napi_set_named_property(env, result, "fds", js_fds) == napi_ok &&
       napi_set_named_property(env, result, "truncated", js_trunc) == napi_ok;
  if (!ok) {
    for (size_t i = 0; i < nfds; i++) close(fds[i]);
    vn_throw_napi(env, napi_generic_failure, "recvMsg result");
    return NULL;
  }
  return result;
}

/*
 * One recvmsg(MSG_CMSG_CLOEXEC | MSG_DONTWAIT) into the whole view. On a
 * stream socket the kernel never merges data from *after* an skb carrying fds
 * into the same read, but does merge data before it; callers that need
 * per-message fd attribution read exactly one header at a time (vhost-user:
 * 12 bytes), see docs/protocol-notes.md 1.1.
 */
static napi_value js_recv_msg(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  int fd;
  void *data = NULL;
  size_t length = 0;
  int64_t max_fds;
  if (!vn_get_fd(env, argv[0], "fd", &fd)) return NULL;
  if (!vn_get_bytes(env, argv[1], "buf", &data, &length)) return NULL;
  if (!vn_get_int64(env, argv[2], "maxFds", 0, VN_MAX_FDS, &max_fds)) return NULL;
  if (length == 0) {
    /* A 0-byte read would be indistinguishable from EOF (also catches detached buffers). */
    vn_throw_range(env, "ERR_INVALID_ARG_VALUE", "The \"buf\" argument must not be empty");
    return NULL;
  }

  vn_cmsg_buf control;
  memset(&control, 0, sizeof control);
  struct iovec iov = {.iov_base = data, .iov_len = length};
  struct msghdr msg = {
      .msg_iov = &iov,
      .msg_iovlen = 1,
      .msg_control = control.buf,
      .msg_controllen = sizeof control.buf,
  };
  ssize_t n;
  do {
    n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return vn_null(env);
    vn_throw_errno(env, errno, "recvmsg");
    return NULL;
  }

  int kept[VN_MAX_FDS];
  size_t nkept = 0;
  bool truncated = (msg.msg_flags & MSG_CTRUNC) != 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    if (c->cmsg_len < CMSG_LEN(0)) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const unsigned char *p = CMSG_DATA(c);
    for (size_t i = 0; i < count; i++) {
      int rfd;
      memcpy(&rfd, p + i * sizeof(int), sizeof rfd); /* CMSG_DATA may be unaligned */
      if (nkept < (size_t)max_fds) {
        kept[nkept++] = rfd;
      } else {
        close(rfd); /* more than the caller allowed: do not leak it */
        truncated = true;
      }
    }
  }
  return make_recv_result(env, n, kept, nkept, truncated);
}

/* sendmsg(MSG_NOSIGNAL | MSG_DONTWAIT), with SCM_RIGHTS when fds is non-empty. */
static napi_value js_send_msg(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  int fd;
  void *data = NULL;
  size_t length = 0;
  if (!vn_get_fd(env, argv[0], "fd", &fd)) return NULL;
  if (!vn_get_bytes(env, argv[1], "buf", &data, &length)) return NULL;

  int fds[VN_MAX_FDS];
  uint32_t nfds = 0;
  napi_valuetype t;
  VN_CALL(env, napi_typeof(env, argv[2], &t));
  if (t != napi_undefined && t != napi_null) {
    bool is_array = false;
    VN_CALL(env, napi_is_array(env, argv[2], &is_array));
    if (!is_array) {
      vn_throw_type(env, "ERR_INVALID_ARG_TYPE", "The \"fds\" argument must be an array of fds");
      return NULL;
    }
    VN_CALL(env, napi_get_array_length(env, argv[2], &nfds));
    if (nfds > VN_MAX_FDS) {
      vn_throw_range(env, "ERR_OUT_OF_RANGE", "The \"fds\" argument must hold at most 64 fds");
      return NULL;
    }
    for (uint32_t i = 0; i < nfds; i++) {
      napi_value v = NULL;
      VN_CALL(env, napi_get_element(env, argv[2], i, &v));
      if (!vn_get_fd(env, v, "fds[i]", &fds[i])) return NULL;
    }
  }

  vn_cmsg_buf control;
  memset(&control, 0, sizeof control);
  struct iovec iov = {.iov_base = data, .iov_len = length};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
  if (nfds > 0) {
    msg.msg_control = control.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
  }
  ssize_t n;
  do {
    n = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    vn_throw_errno(env, errno, "sendmsg");
    return NULL;
  }
  return make_int(env, n);
}

/* memfd_create(MFD_CLOEXEC) + ftruncate(size). */
static napi_value js_memfd_create(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  char name[250]; /* the kernel limit: 249 bytes plus NUL */
  size_t len = 0;
  bool too_long = false;
  int64_t size;
  if (!vn_get_string(env, argv[0], "name", name, sizeof name, &len, &too_long)) return NULL;
  if (!vn_get_int64(env, argv[1], "size", 0, INT64_MAX, &size)) return NULL;
  if (too_long) {
    vn_throw_errno(env, EINVAL, "memfd_create");
    return NULL;
  }
  int fd = memfd_create(name, MFD_CLOEXEC);
  if (fd < 0) {
    vn_throw_errno(env, errno, "memfd_create");
    return NULL;
  }
  int r;
  do {
    r = ftruncate(fd, (off_t)size);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    return vn_throw_errno_close(env, fd, "ftruncate");
  }
  return make_int(env, fd);
}

static napi_value js_eventfd_create(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int64_t initval;
  bool nonblocking;
  if (!vn_get_int64(env, argv[0], "initval", 0, UINT32_MAX, &initval)) return NULL;
  if (!vn_get_bool(env, argv[1], "nonblocking", &nonblocking)) return NULL;
  int fd = eventfd((unsigned int)initval, EFD_CLOEXEC | (nonblocking ? EFD_NONBLOCK : 0));
  if (fd < 0) {
    vn_throw_errno(env, errno, "eventfd");
    return NULL;
  }
  return make_int(env, fd);
}

/* Reads (and resets) the 8-byte counter of an eventfd or timerfd. Values above 2^53 lose
 * precision in a JS number; counters that large do not occur for kick/call fds or timers. */
napi_value vn_js_read_counter(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int fd;
  if (!vn_get_fd(env, argv[0], "fd", &fd)) return NULL;
  uint64_t value = 0;
  ssize_t n;
  do {
    n = read(fd, &value, sizeof value);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return vn_null(env);
    vn_throw_errno(env, errno, "read");
    return NULL;
  }
  if (n != (ssize_t)sizeof value) {
    vn_throw_errno(env, EIO, "read"); /* not an eventfd or timerfd (short read) */
    return NULL;
  }
  napi_value out = NULL;
  VN_CALL(env, napi_create_double(env, (double)value, &out));
  return out;
}

static napi_value js_eventfd_write(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int fd;
  int64_t v;
  if (!vn_get_fd(env, argv[0], "fd", &fd)) return NULL;
  if (!vn_get_int64(env, argv[1], "value", 0, (int64_t)VN_MAX_SAFE_INTEGER, &v)) return NULL;
  uint64_t value = (uint64_t)v;
  ssize_t n;
  do {
    n = write(fd, &value, sizeof value);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    vn_throw_errno(env, errno, "write");
    return NULL;
  }
  if (n != (ssize_t)sizeof value) {
    vn_throw_errno(env, EIO, "write");
    return NULL;
  }
  return vn_undefined(env);
}

/* A full hardware + compiler barrier (virtio's mb()), for callers that want one
 * beyond what Atomics.load/store already give. */
static napi_value js_fence(napi_env env, napi_callback_info info) {
  (void)info;
  atomic_thread_fence(memory_order_seq_cst);
  return vn_undefined(env);
}

/* true if this kernel can open raw CAN sockets. EAFNOSUPPORT (no can.ko) and
 * EPROTONOSUPPORT (can.ko without can-raw.ko) mean "no"; anything else
 * (EMFILE, EACCES, ...) is an error the caller should see. */
static napi_value js_can_supported(napi_env env, napi_callback_info info) {
  (void)info;
  int fd = socket(AF_CAN, SOCK_RAW | SOCK_CLOEXEC, VN_CAN_RAW);
  bool supported = fd >= 0;
  if (fd >= 0) {
    close_quietly(fd);
  } else if (errno != EAFNOSUPPORT && errno != EPROTONOSUPPORT) {
    vn_throw_errno(env, errno, "socket");
    return NULL;
  }
  napi_value out = NULL;
  VN_CALL(env, napi_get_boolean(env, supported, &out));
  return out;
}

bool vn_init_fd(napi_env env, napi_value exports) {
  const napi_property_descriptor props[] = {
      {"close", NULL, js_close, NULL, NULL, NULL, napi_enumerable, NULL},
      {"listenUnix", NULL, js_listen_unix, NULL, NULL, NULL, napi_enumerable, NULL},
      {"acceptUnix", NULL, js_accept_unix, NULL, NULL, NULL, napi_enumerable, NULL},
      {"connectUnix", NULL, js_connect_unix, NULL, NULL, NULL, napi_enumerable, NULL},
      {"socketpair", NULL, js_socketpair, NULL, NULL, NULL, napi_enumerable, NULL},
      {"recvMsg", NULL, js_recv_msg, NULL, NULL, NULL, napi_enumerable, NULL},
      {"sendMsg", NULL, js_send_msg, NULL, NULL, NULL, napi_enumerable, NULL},
      {"memfdCreate", NULL, js_memfd_create, NULL, NULL, NULL, napi_enumerable, NULL},
      {"eventfdCreate", NULL, js_eventfd_create, NULL, NULL, NULL, napi_enumerable, NULL},
      {"eventfdRead", NULL, vn_js_read_counter, NULL, NULL, NULL, napi_enumerable, NULL},
      {"eventfdWrite", NULL, js_eventfd_write, NULL, NULL, NULL, napi_enumerable, NULL},
      {"fence", NULL, js_fence, NULL, NULL, NULL, napi_enumerable, NULL},
      {"canSupported", NULL, js_can_supported, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  return napi_define_properties(env, exports, sizeof props / sizeof props[0], props) == napi_ok;
}
