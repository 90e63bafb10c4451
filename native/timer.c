/*
 * timerfd on CLOCK_MONOTONIC (the clock of process.hrtime and uv_hrtime): wake-ups at an
 * absolute deadline with the kernel's high-resolution timers. libuv's own timers count whole
 * milliseconds; a timed CAN bus needs deadlines a few microseconds apart. The fd is watched with
 * a Watcher (readable when the deadline passed); no policy here.
 */
#include "vhost_native.h"

#include <errno.h>
#include <math.h>
#include <sys/timerfd.h>
#include <time.h>

/* timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK). */
static napi_value js_timerfd_create(napi_env env, napi_callback_info info) {
  (void)info;
  int fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  if (fd < 0) {
    vn_throw_errno(env, errno, "timerfd_create");
    return NULL;
  }
  napi_value out = NULL;
  VN_CALL(env, napi_create_int32(env, fd, &out));
  return out;
}

/* Arms the timer once at the absolute CLOCK_MONOTONIC time `deadlineNs` (a number of
 * nanoseconds; a deadline already past fires at once); 0 disarms it. */
static napi_value js_timerfd_arm(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int fd;
  double ns;
  if (!vn_get_fd(env, argv[0], "fd", &fd)) return NULL;
  napi_valuetype t;
  VN_CALL(env, napi_typeof(env, argv[1], &t));
  if (t != napi_number) {
    vn_throw_type(env, "ERR_INVALID_ARG_TYPE", "deadlineNs must be a number");
    return NULL;
  }
  VN_CALL(env, napi_get_value_double(env, argv[1], &ns));
  if (!isfinite(ns) || ns < 0 || ns > VN_MAX_SAFE_INTEGER) {
    vn_throw_range(env, "ERR_OUT_OF_RANGE", "deadlineNs must be 0..2^53-1");
    return NULL;
  }
  struct itimerspec spec = {0};
  if (ns > 0) {
    uint64_t v = (uint64_t)ns;
    if (v == 0) v = 1; /* 0 would disarm: a deadline in (0, 1) ns is "now" */
    spec.it_value.tv_sec = (time_t)(v / 1000000000ULL);
    spec.it_value.tv_nsec = (long)(v % 1000000000ULL);
  }
  if (timerfd_settime(fd, TFD_TIMER_ABSTIME, &spec, NULL) < 0) {
    vn_throw_errno(env, errno, "timerfd_settime");
    return NULL;
  }
  return vn_undefined(env);
}

bool vn_init_timer(napi_env env, napi_value exports) {
  const napi_property_descriptor props[] = {
      {"timerfdCreate", NULL, js_timerfd_create, NULL, NULL, NULL, napi_enumerable, NULL},
      {"timerfdArm", NULL, js_timerfd_arm, NULL, NULL, NULL, napi_enumerable, NULL},
      {"timerfdRead", NULL, vn_js_read_counter, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  return napi_define_properties(env, exports, sizeof props / sizeof props[0], props) == napi_ok;
}
