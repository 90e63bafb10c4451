/*
 * AF_CAN raw sockets: interface queries, open, and batched receive/send of
 * fixed-size records (recvmmsg/sendmmsg), so JS handles no object per frame.
 *
 * Record layout (VN_CAN_RECORD_SIZE = 88 bytes per frame; mirrored by
 * src/node/native/can-records.ts, test/socketcan/native-can.test.ts checks
 * that both agree):
 *    0..71  struct canfd_frame exactly as the kernel reads/writes it (a
 *           classic frame is its first 16 bytes, struct can_frame)
 *   72..75  u32 wire size: 16 (CAN_MTU, classic) or 72 (CANFD_MTU, FD)
 *   76..79  u32 msg_flags of recvmmsg (MSG_CONFIRM, MSG_DONTROUTE, ...)
 *   80..87  u64 SO_TIMESTAMPNS receive time in ns (0 when absent)
 * All fields are in host byte order. The buffer need not be aligned: every
 * field is accessed with memcpy.
 *
 * The host this project is developed on has no AF_CAN; canIfInfo uses an
 * AF_UNIX socket for its ioctls so that it works there too.
 */
#include "vhost_native.h"

#include <errno.h>
#include <linux/can.h>
#include <linux/can/error.h>
#include <linux/can/raw.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Added to linux/can/error.h in Linux 6.0; the value is fixed UAPI. */
#ifndef CAN_ERR_CNT
#define CAN_ERR_CNT 0x00000200U
#endif

#define VN_CAN_RECORD_SIZE 88
#define VN_CAN_RECORD_WIRE_SIZE 72
#define VN_CAN_RECORD_MSG_FLAGS 76
#define VN_CAN_RECORD_TIMESTAMP 80
/* Largest number of frames per recvmmsg/sendmmsg call (bounds the stack arrays). */
#define VN_CAN_MAX_BATCH 64

/* The record is defined by this struct; the JS side uses the offsets only. */
typedef struct {
  struct canfd_frame frame;
  uint32_t wire_size;
  uint32_t msg_flags;
  uint64_t timestamp_ns;
} vn_can_record;

_Static_assert(sizeof(struct can_frame) == CAN_MTU, "can_frame is 16 bytes");
_Static_assert(sizeof(struct canfd_frame) == CANFD_MTU, "canfd_frame is 72 bytes");
_Static_assert(offsetof(struct canfd_frame, data) == 8, "data at byte 8");
_Static_assert(offsetof(struct can_frame, len8_dlc) == 7, "len8_dlc at byte 7");
_Static_assert(offsetof(struct canfd_frame, flags) == 5, "flags at byte 5");
_Static_assert(sizeof(vn_can_record) == VN_CAN_RECORD_SIZE, "record size");
_Static_assert(offsetof(vn_can_record, wire_size) == VN_CAN_RECORD_WIRE_SIZE, "wire size offset");
_Static_assert(offsetof(vn_can_record, msg_flags) == VN_CAN_RECORD_MSG_FLAGS, "msg_flags offset");
_Static_assert(offsetof(vn_can_record, timestamp_ns) == VN_CAN_RECORD_TIMESTAMP, "timestamp offset");

/* Room per message for SCM_TIMESTAMPNS (old or new layout) plus SO_RXQ_OVFL,
 * with slack for one unexpected cmsg. */
#define VN_CAN_CMSG_SPACE                                                      \
  (CMSG_SPACE(sizeof(struct timespec)) + CMSG_SPACE(sizeof(uint32_t)) + CMSG_SPACE(16))

typedef union {
  struct cmsghdr align;
  char buf[VN_CAN_CMSG_SPACE];
} vn_can_cmsg;

/* Closes fd without disturbing errno. */
static void close_quietly(int fd) {
  int saved = errno;
  close(fd);
  errno = saved;
}

/*
 * Copies the interface name into ifr. Returns false after throwing for a
 * non-string. Sets *bad_name for a name that cannot be an interface (empty,
 * or too long for IFNAMSIZ): callers report it as the kernel reports unknown
 * names, ENODEV, once all their other arguments are validated.
 */
static bool get_ifname(napi_env env, napi_value value, struct ifreq *ifr, bool *bad_name) {
  memset(ifr, 0, sizeof *ifr);
  size_t len = 0;
  bool too_long = false;
  if (!vn_get_string(env, value, "ifname", ifr->ifr_name, sizeof ifr->ifr_name, &len,
                     &too_long)) {
    return false;
  }
  *bad_name = too_long || len == 0;
  return true;
}

static int ioctl_retry(int fd, unsigned long req, struct ifreq *ifr) {
  int r;
  do {
    r = ioctl(fd, req, ifr);
  } while (r < 0 && errno == EINTR);
  return r;
}

static bool set_prop_int(napi_env env, napi_value obj, const char *name, int64_t v) {
  napi_value js = NULL;
  if (napi_create_int64(env, v, &js) != napi_ok ||
      napi_set_named_property(env, obj, name, js) != napi_ok) {
    vn_throw_napi(env, napi_generic_failure, name);
    return false;
  }
  return true;
}

static bool set_prop_bool(napi_env env, napi_value obj, const char *name, bool v) {
  napi_value js = NULL;
  if (napi_get_boolean(env, v, &js) != napi_ok ||
      napi_set_named_property(env, obj, name, js) != napi_ok) {
    vn_throw_napi(env, napi_generic_failure, name);
    return false;
  }
  return true;
}

/*
 * canIfInfo(ifname) -> { index, mtu, up, running, isCan }: SIOCGIFINDEX,
 * SIOCGIFMTU, SIOCGIFFLAGS, SIOCGIFHWADDR on an AF_UNIX datagram socket (the
 * kernel falls back to the generic netdev ioctls for any socket family).
 */
static napi_value js_can_if_info(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  struct ifreq ifr;
  bool bad_name = false;
  if (!get_ifname(env, argv[0], &ifr, &bad_name)) return NULL;
  if (bad_name) {
    vn_throw_errno(env, ENODEV, "if_nametoindex");
    return NULL;
  }

  int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s < 0) {
    vn_throw_errno(env, errno, "socket");
    return NULL;
  }
  if (ioctl_retry(s, SIOCGIFINDEX, &ifr) < 0) {
    return vn_throw_errno_close(env, s, "if_nametoindex");
  }
  int index = ifr.ifr_ifindex;
  int mtu = 0;
  unsigned short flags = 0;
  sa_family_t hw_family = 0;
  int r = ioctl_retry(s, SIOCGIFMTU, &ifr);
  if (r == 0) {
    mtu = ifr.ifr_mtu;
    r = ioctl_retry(s, SIOCGIFFLAGS, &ifr);
  }
  if (r == 0) {
    flags = (unsigned short)ifr.ifr_flags;
    r = ioctl_retry(s, SIOCGIFHWADDR, &ifr);
  }
  if (r < 0) {
    return vn_throw_errno_close(env, s, "ioctl");
  }
  hw_family = ifr.ifr_hwaddr.sa_family;
  close(s);

  napi_value out = NULL;
  VN_CALL(env, napi_create_object(env, &out));
  if (!set_prop_int(env, out, "index", index) || !set_prop_int(env, out, "mtu", mtu) ||
      !set_prop_bool(env, out, "up", (flags & IFF_UP) != 0) ||
      !set_prop_bool(env, out, "running", (flags & IFF_RUNNING) != 0) ||
      !set_prop_bool(env, out, "isCan", hw_family == ARPHRD_CAN)) {
    return NULL;
  }
  return out;
}

/* opts[name] as a boolean (required). */
static bool get_opt_bool(napi_env env, napi_value opts, const char *name, bool *out) {
  napi_value v = NULL;
  if (napi_get_named_property(env, opts, name, &v) != napi_ok) {
    vn_throw_napi(env, napi_generic_failure, name);
    return false;
  }
  return vn_get_bool(env, v, name, out);
}

/* opts[name] as an integer in [min, max]; *present is false for undefined. */
static bool get_opt_int(napi_env env, napi_value opts, const char *name, bool optional,
                        int64_t min, int64_t max, int64_t *out, bool *present) {
  napi_value v = NULL;
  napi_valuetype t;
  if (napi_get_named_property(env, opts, name, &v) != napi_ok ||
      napi_typeof(env, v, &t) != napi_ok) {
    vn_throw_napi(env, napi_generic_failure, name);
    return false;
  }
  *present = t != napi_undefined;
  if (!*present && optional) return true;
  return vn_get_int64(env, v, name, min, max, out);
}

typedef struct {
  bool fd;
  bool loopback;
  bool recv_own_msgs;
  uint32_t err_mask;
  bool has_filters;
  uint32_t nfilters;
  struct can_filter filters[CAN_RAW_FILTER_MAX];
  bool has_rcvbuf;
  int rcvbuf;
  bool has_sndbuf;
  int sndbuf;
} vn_can_opts;

/* Reads and validates every option before any syscall. */
static bool get_can_opts(napi_env env, napi_value opts, vn_can_opts *o) {
  napi_valuetype t;
  if (napi_typeof(env, opts, &t) != napi_ok || t != napi_object) {
    vn_throw_type(env, "ERR_INVALID_ARG_TYPE", "The \"opts\" argument must be of type object");
    return false;
  }
  int64_t v = 0;
  bool present = false;
  if (!get_opt_bool(env, opts, "fd", &o->fd) || !get_opt_bool(env, opts, "loopback", &o->loopback) ||
      !get_opt_bool(env, opts, "recvOwnMsgs", &o->recv_own_msgs)) {
    return false;
  }
  if (!get_opt_int(env, opts, "errMask", false, 0, CAN_ERR_MASK, &v, &present)) return false;
  o->err_mask = (uint32_t)v;
  if (!get_opt_int(env, opts, "rcvbuf", true, 1, INT32_MAX, &v, &present)) return false;
  o->has_rcvbuf = present;
  o->rcvbuf = (int)v;
  if (!get_opt_int(env, opts, "sndbuf", true, 1, INT32_MAX, &v, &present)) return false;
  o->has_sndbuf = present;
  o->sndbuf = (int)v;

  napi_value filters = NULL;
  if (napi_get_named_property(env, opts, "filters", &filters) != napi_ok ||
      napi_typeof(env, filters, &t) != napi_ok) {
    vn_throw_napi(env, napi_generic_failure, "filters");
    return false;
  }
  o->has_filters = t != napi_undefined;
  o->nfilters = 0;
  if (!o->has_filters) return true;
  bool is_array = false;
  if (napi_is_array(env, filters, &is_array) != napi_ok || !is_array) {
    vn_throw_type(env, "ERR_INVALID_ARG_TYPE",
                  "The \"filters\" option must be an array of { id, mask }");
    return false;
  }
  uint32_t n = 0;
  if (napi_get_array_length(env, filters, &n) != napi_ok) {
    vn_throw_napi(env, napi_generic_failure, "napi_get_array_length(filters)");
    return false;
  }
  if (n > CAN_RAW_FILTER_MAX) {
    vn_throw_range(env, "ERR_OUT_OF_RANGE", "The \"filters\" option must hold at most 512 filters");
    return false;
  }
  for (uint32_t i = 0; i < n; i++) {
    napi_value f = NULL;
    if (napi_get_element(env, filters, i, &f) != napi_ok || napi_typeof(env, f, &t) != napi_ok) {
      vn_throw_napi(env, napi_generic_failure, "filters[i]");
      return false;
    }
    if (t != napi_object) {
      vn_throw_type(env, "ERR_INVALID_ARG_TYPE", "The \"filters[i]\" entries must be { id, mask }");
      return false;
    }
    int64_t id = 0, mask = 0;
    if (!get_opt_int(env, f, "id", false, 0, UINT32_MAX, &id, &present) ||
        !get_opt_int(env, f, "mask", false, 0, UINT32_MAX, &mask, &present)) {
      return false;
    }
    o->filters[i].can_id = (canid_t)id;
    o->filters[i].can_mask = (canid_t)mask;
  }
  o->nfilters = n;
  return true;
}

static int set_int_opt(int fd, int level, int name, int value) {
  return setsockopt(fd, level, name, &value, sizeof value);
}

/*
 * SO_RCVBUFFORCE when the process may use it (CAP_NET_ADMIN: not capped by
 * net.core.rmem_max), otherwise SO_RCVBUF (capped at rmem_max). The kernel
 * doubles either value for its bookkeeping.
 */
static int set_rcvbuf(int fd, int value) {
  if (set_int_opt(fd, SOL_SOCKET, SO_RCVBUFFORCE, value) == 0) return 0;
  if (errno != EPERM) return -1;
  return set_int_opt(fd, SOL_SOCKET, SO_RCVBUF, value);
}

/*
 * canOpen(ifname, opts) -> fd: a bound CAN_RAW socket (non-blocking,
 * close-on-exec). The socket is closed on every failure.
 */
static napi_value js_can_open(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  struct ifreq ifr;
  /* Large (4 KiB of filters), so static per call would not be reentrant
   * across Workers; the stack is fine for this size. */
  vn_can_opts o;
  bool bad_name = false;
  if (!get_ifname(env, argv[0], &ifr, &bad_name)) return NULL;
  if (!get_can_opts(env, argv[1], &o)) return NULL;
  if (bad_name) {
    vn_throw_errno(env, ENODEV, "if_nametoindex");
    return NULL;
  }

  int fd = socket(PF_CAN, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, CAN_RAW);
  if (fd < 0) {
    vn_throw_errno(env, errno, "socket");
    return NULL;
  }
  /* SIOCGIFINDEX on the CAN socket itself: CAN_RAW has no ioctls of its own,
   * so the kernel answers with the generic netdev ioctl. */
  if (ioctl_retry(fd, SIOCGIFINDEX, &ifr) < 0) {
    return vn_throw_errno_close(env, fd, "if_nametoindex");
  }
  int ifindex = ifr.ifr_ifindex;

  bool ok = (!o.fd || set_int_opt(fd, SOL_CAN_RAW, CAN_RAW_FD_FRAMES, 1) == 0) &&
            set_int_opt(fd, SOL_CAN_RAW, CAN_RAW_LOOPBACK, o.loopback) == 0 &&
            set_int_opt(fd, SOL_CAN_RAW, CAN_RAW_RECV_OWN_MSGS, o.recv_own_msgs) == 0 &&
            setsockopt(fd, SOL_CAN_RAW, CAN_RAW_ERR_FILTER, &o.err_mask, sizeof o.err_mask) == 0 &&
            (!o.has_filters ||
             setsockopt(fd, SOL_CAN_RAW, CAN_RAW_FILTER, o.nfilters ? o.filters : NULL,
                        (socklen_t)(o.nfilters * sizeof(struct can_filter))) == 0) &&
            set_int_opt(fd, SOL_SOCKET, SO_TIMESTAMPNS, 1) == 0 &&
            set_int_opt(fd, SOL_SOCKET, SO_RXQ_OVFL, 1) == 0 &&
            (!o.has_rcvbuf || set_rcvbuf(fd, o.rcvbuf) == 0) &&
            (!o.has_sndbuf || set_int_opt(fd, SOL_SOCKET, SO_SNDBUF, o.sndbuf) == 0);
  if (!ok) {
    return vn_throw_errno_close(env, fd, "setsockopt");
  }
  struct sockaddr_can addr;
  memset(&addr, 0, sizeof addr);
  addr.can_family = AF_CAN;
  addr.can_ifindex = ifindex;
  if (bind(fd, (const struct sockaddr *)&addr, sizeof addr) < 0) {
    return vn_throw_errno_close(env, fd, "bind");
  }
  napi_value out = NULL;
  if (napi_create_int32(env, fd, &out) != napi_ok) {
    close_quietly(fd);
    vn_throw_napi(env, napi_generic_failure, "canOpen result");
    return NULL;
  }
  return out;
}

/*
 * canSocketBuffers(fd) -> { rcvbuf, sndbuf }: getsockopt SO_RCVBUF and
 * SO_SNDBUF, the sizes the kernel uses (twice the values set).
 */
static napi_value js_can_socket_buffers(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int fd;
  if (!vn_get_fd(env, argv[0], "fd", &fd)) return NULL;
  int rcv = 0, snd = 0;
  socklen_t len = sizeof rcv;
  if (getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, &len) < 0) {
    vn_throw_errno(env, errno, "getsockopt");
    return NULL;
  }
  len = sizeof snd;
  if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &snd, &len) < 0) {
    vn_throw_errno(env, errno, "getsockopt");
    return NULL;
  }
  napi_value out = NULL;
  VN_CALL(env, napi_create_object(env, &out));
  if (!set_prop_int(env, out, "rcvbuf", rcv) || !set_prop_int(env, out, "sndbuf", snd)) return NULL;
  return out;
}

/* Gets a Uint32Array argument with at least `min_len` elements. */
static bool get_u32_array(napi_env env, napi_value value, const char *name, size_t min_len,
                          uint32_t **data) {
  bool is_typedarray = false;
  napi_typedarray_type type;
  size_t count = 0;
  void *ptr = NULL;
  char msg[160];
  if (napi_is_typedarray(env, value, &is_typedarray) != napi_ok || !is_typedarray ||
      napi_get_typedarray_info(env, value, &type, &count, &ptr, NULL, NULL) != napi_ok ||
      type != napi_uint32_array) {
    snprintf(msg, sizeof msg, "The \"%s\" argument must be a Uint32Array", name);
    vn_throw_type(env, "ERR_INVALID_ARG_TYPE", msg);
    return false;
  }
  if (count < min_len) {
    snprintf(msg, sizeof msg, "The \"%s\" argument must have at least %zu elements", name, min_len);
    vn_throw_range(env, "ERR_INVALID_ARG_VALUE", msg);
    return false;
  }
  *data = ptr;
  return true;
}

/*
 * canRecvBatch(fd, buf, maxFrames, meta) -> count | null: one
 * recvmmsg(MSG_DONTWAIT) straight into the records of `buf`.
 * meta[0]: latest SO_RXQ_OVFL drop counter (kept when no message carried one);
 * meta[1]: messages of this call whose control data was truncated.
 */
static napi_value js_can_recv_batch(napi_env env, napi_callback_info info) {
  GET_ARGS(4);
  int fd;
  void *data = NULL;
  size_t length = 0;
  int64_t max_frames;
  uint32_t *meta = NULL;
  if (!vn_get_fd(env, argv[0], "fd", &fd)) return NULL;
  if (!vn_get_bytes(env, argv[1], "buf", &data, &length)) return NULL;
  if (!vn_get_int64(env, argv[2], "maxFrames", 1, INT32_MAX, &max_frames)) return NULL;
  if (!get_u32_array(env, argv[3], "meta", 2, &meta)) return NULL;
  size_t n = length / VN_CAN_RECORD_SIZE;
  if (n == 0) {
    vn_throw_range(env, "ERR_INVALID_ARG_VALUE",
                   "The \"buf\" argument must hold at least one 88-byte record");
    return NULL;
  }
  if (n > (size_t)max_frames) n = (size_t)max_frames;
  if (n > VN_CAN_MAX_BATCH) n = VN_CAN_MAX_BATCH;

  unsigned char *base = data;
  struct mmsghdr msgs[VN_CAN_MAX_BATCH];
  struct iovec iov[VN_CAN_MAX_BATCH];
  vn_can_cmsg control[VN_CAN_MAX_BATCH];
  for (size_t i = 0; i < n; i++) {
    iov[i].iov_base = base + i * VN_CAN_RECORD_SIZE;
    iov[i].iov_len = CANFD_MTU;
    memset(&msgs[i], 0, sizeof msgs[i]);
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
    msgs[i].msg_hdr.msg_control = control[i].buf;
    msgs[i].msg_hdr.msg_controllen = sizeof control[i].buf;
  }
  int got;
  do {
    got = recvmmsg(fd, msgs, (unsigned int)n, MSG_DONTWAIT, NULL);
  } while (got < 0 && errno == EINTR);
  if (got < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return vn_null(env);
    vn_throw_errno(env, errno, "recvmmsg");
    return NULL;
  }

  uint32_t truncated = 0;
  for (int i = 0; i < got; i++) {
    unsigned char *rec = base + (size_t)i * VN_CAN_RECORD_SIZE;
    struct msghdr *mh = &msgs[i].msg_hdr;
    uint32_t wire = msgs[i].msg_len;
    uint32_t flags = (uint32_t)mh->msg_flags;
    uint64_t ts = 0;
    /* A classic frame fills 16 bytes: clear the rest so records never show
     * bytes of an older frame. */
    if (wire < CANFD_MTU) memset(rec + wire, 0, CANFD_MTU - wire);
    if (mh->msg_flags & MSG_CTRUNC) truncated++;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c != NULL; c = CMSG_NXTHDR(mh, c)) {
      if (c->cmsg_level != SOL_SOCKET) continue;
      if (c->cmsg_type == SCM_TIMESTAMPNS && c->cmsg_len >= CMSG_LEN(sizeof(struct timespec))) {
        struct timespec tv;
        memcpy(&tv, CMSG_DATA(c), sizeof tv);
        ts = (uint64_t)tv.tv_sec * 1000000000u + (uint64_t)tv.tv_nsec;
      }
#if defined(SO_TIMESTAMPNS_NEW) && defined(SO_TIMESTAMPNS_OLD) && SO_TIMESTAMPNS_NEW != SO_TIMESTAMPNS_OLD
      else if (c->cmsg_type == SO_TIMESTAMPNS_NEW && c->cmsg_len >= CMSG_LEN(2 * sizeof(int64_t))) {
        int64_t tv[2];
        memcpy(tv, CMSG_DATA(c), sizeof tv);
        ts = (uint64_t)tv[0] * 1000000000u + (uint64_t)tv[1];
      }
#endif
      else if (c->cmsg_type == SO_RXQ_OVFL && c->cmsg_len >= CMSG_LEN(sizeof(uint32_t))) {
        memcpy(&meta[0], CMSG_DATA(c), sizeof(uint32_t));
      }
    }
    memcpy(rec + VN_CAN_RECORD_WIRE_SIZE, &wire, sizeof wire);
    memcpy(rec + VN_CAN_RECORD_MSG_FLAGS, &flags, sizeof flags);
    memcpy(rec + VN_CAN_RECORD_TIMESTAMP, &ts, sizeof ts);
  }
  meta[1] = truncated;
  napi_value out = NULL;
  VN_CALL(env, napi_create_int32(env, got, &out));
  return out;
}

/*
 * canSendBatch(fd, buf, count) -> sent: one sendmmsg(MSG_DONTWAIT) of the
 * first min(count, 64) records, each as its wire size (16 or 72 bytes).
 * Returns 0 when the first frame meets EAGAIN or ENOBUFS (back-pressure);
 * throws for other errors of the first frame. Errors after the first frame
 * end the batch early (the kernel reports them as a short count).
 */
static napi_value js_can_send_batch(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  int fd;
  void *data = NULL;
  size_t length = 0;
  int64_t count;
  if (!vn_get_fd(env, argv[0], "fd", &fd)) return NULL;
  if (!vn_get_bytes(env, argv[1], "buf", &data, &length)) return NULL;
  if (!vn_get_int64(env, argv[2], "count", 0, (int64_t)(length / VN_CAN_RECORD_SIZE), &count)) {
    return NULL;
  }
  size_t n = (size_t)count;
  if (n > VN_CAN_MAX_BATCH) n = VN_CAN_MAX_BATCH;

  unsigned char *base = data;
  struct mmsghdr msgs[VN_CAN_MAX_BATCH];
  struct iovec iov[VN_CAN_MAX_BATCH];
  for (size_t i = 0; i < n; i++) {
    unsigned char *rec = base + i * VN_CAN_RECORD_SIZE;
    uint32_t wire;
    memcpy(&wire, rec + VN_CAN_RECORD_WIRE_SIZE, sizeof wire);
    if (wire != CAN_MTU && wire != CANFD_MTU) {
      char msg[160];
      snprintf(msg, sizeof msg,
               "The wire size of record %zu must be 16 (CAN_MTU) or 72 (CANFD_MTU). Received %u", i,
               wire);
      vn_throw_range(env, "ERR_INVALID_ARG_VALUE", msg);
      return NULL;
    }
    iov[i].iov_base = rec;
    iov[i].iov_len = wire;
    memset(&msgs[i], 0, sizeof msgs[i]);
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  if (n == 0) {
    napi_value zero = NULL;
    VN_CALL(env, napi_create_int32(env, 0, &zero));
    return zero;
  }
  int sent;
  do {
    sent = sendmmsg(fd, msgs, (unsigned int)n, MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (sent < 0 && errno == EINTR);
  if (sent < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
      sent = 0;
    } else {
      vn_throw_errno(env, errno, "sendmmsg");
      return NULL;
    }
  }
  napi_value out = NULL;
  VN_CALL(env, napi_create_int32(env, sent, &out));
  return out;
}

static bool define_u32(napi_env env, napi_value exports, const char *name, uint32_t value) {
  napi_value v = NULL;
  napi_property_descriptor d = {name, NULL, NULL, NULL, NULL, NULL, napi_enumerable, NULL};
  if (napi_create_uint32(env, value, &v) != napi_ok) return false;
  d.value = v;
  return napi_define_properties(env, exports, 1, &d) == napi_ok;
}

bool vn_init_can(napi_env env, napi_value exports) {
  const napi_property_descriptor props[] = {
      {"canIfInfo", NULL, js_can_if_info, NULL, NULL, NULL, napi_enumerable, NULL},
      {"canOpen", NULL, js_can_open, NULL, NULL, NULL, napi_enumerable, NULL},
      {"canRecvBatch", NULL, js_can_recv_batch, NULL, NULL, NULL, napi_enumerable, NULL},
      {"canSendBatch", NULL, js_can_send_batch, NULL, NULL, NULL, napi_enumerable, NULL},
      {"canSocketBuffers", NULL, js_can_socket_buffers, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) {
    return false;
  }
  static const struct {
    const char *name;
    uint32_t value;
  } constants[] = {
      {"CAN_RECORD_SIZE", VN_CAN_RECORD_SIZE},
      {"CAN_RECORD_DATA_OFFSET", offsetof(struct canfd_frame, data)},
      {"CAN_RECORD_WIRE_SIZE_OFFSET", VN_CAN_RECORD_WIRE_SIZE},
      {"CAN_RECORD_MSG_FLAGS_OFFSET", VN_CAN_RECORD_MSG_FLAGS},
      {"CAN_RECORD_TIMESTAMP_OFFSET", VN_CAN_RECORD_TIMESTAMP},
      {"CAN_MAX_BATCH", VN_CAN_MAX_BATCH},
      {"CAN_EFF_FLAG", CAN_EFF_FLAG},
      {"CAN_RTR_FLAG", CAN_RTR_FLAG},
      {"CAN_ERR_FLAG", CAN_ERR_FLAG},
      {"CAN_SFF_MASK", CAN_SFF_MASK},
      {"CAN_EFF_MASK", CAN_EFF_MASK},
      {"CAN_ERR_MASK", CAN_ERR_MASK},
      {"CAN_INV_FILTER", CAN_INV_FILTER},
      {"CANFD_BRS", CANFD_BRS},
      {"CANFD_ESI", CANFD_ESI},
      {"CANFD_FDF", CANFD_FDF},
      {"CAN_MTU", CAN_MTU},
      {"CANFD_MTU", CANFD_MTU},
      {"MSG_CONFIRM", MSG_CONFIRM},
      {"MSG_DONTROUTE", MSG_DONTROUTE},
      {"CAN_ERR_TX_TIMEOUT", CAN_ERR_TX_TIMEOUT},
      {"CAN_ERR_LOSTARB", CAN_ERR_LOSTARB},
      {"CAN_ERR_CRTL", CAN_ERR_CRTL},
      {"CAN_ERR_PROT", CAN_ERR_PROT},
      {"CAN_ERR_TRX", CAN_ERR_TRX},
      {"CAN_ERR_ACK", CAN_ERR_ACK},
      {"CAN_ERR_BUSOFF", CAN_ERR_BUSOFF},
      {"CAN_ERR_BUSERROR", CAN_ERR_BUSERROR},
      {"CAN_ERR_RESTARTED", CAN_ERR_RESTARTED},
      {"CAN_ERR_CNT", CAN_ERR_CNT},
      {"CAN_ERR_CRTL_RX_OVERFLOW", CAN_ERR_CRTL_RX_OVERFLOW},
      {"CAN_ERR_CRTL_TX_OVERFLOW", CAN_ERR_CRTL_TX_OVERFLOW},
      {"CAN_ERR_CRTL_RX_WARNING", CAN_ERR_CRTL_RX_WARNING},
      {"CAN_ERR_CRTL_TX_WARNING", CAN_ERR_CRTL_TX_WARNING},
      {"CAN_ERR_CRTL_RX_PASSIVE", CAN_ERR_CRTL_RX_PASSIVE},
      {"CAN_ERR_CRTL_TX_PASSIVE", CAN_ERR_CRTL_TX_PASSIVE},
      {"CAN_ERR_CRTL_ACTIVE", CAN_ERR_CRTL_ACTIVE},
  };
  for (size_t i = 0; i < sizeof constants / sizeof constants[0]; i++) {
    if (!define_u32(env, exports, constants[i].name, constants[i].value)) return false;
  }
  return true;
}
