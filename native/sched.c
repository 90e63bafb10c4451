/*
 * Scheduling class of the calling thread. On Linux, sched_setscheduler(0, ...) and
 * sched_getscheduler(0) act on the calling thread only (0 = the caller's thread id), not on
 * the whole process: a daemon can put its event-loop thread under SCHED_FIFO and leave every
 * other thread where it is. No policy here: the caller chooses the priority and whether
 * SCHED_RESET_ON_FORK is set (threads and processes created later by this thread then start
 * under SCHED_OTHER instead of inheriting the real-time class).
 */
#include "vhost_native.h"

#include <errno.h>
#include <sched.h>

#ifndef SCHED_RESET_ON_FORK
#define SCHED_RESET_ON_FORK 0x40000000
#endif

/* schedSetFifo(priority 1..99, resetOnFork): sched_setscheduler(0, SCHED_FIFO[|RESET_ON_FORK]). */
static napi_value js_sched_set_fifo(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int64_t prio;
  bool reset;
  if (!vn_get_int64(env, argv[0], "priority", 1, 99, &prio)) return NULL;
  if (!vn_get_bool(env, argv[1], "resetOnFork", &reset)) return NULL;
  struct sched_param param = {.sched_priority = (int)prio};
  int policy = SCHED_FIFO | (reset ? SCHED_RESET_ON_FORK : 0);
  if (sched_setscheduler(0, policy, &param) < 0) {
    vn_throw_errno(env, errno, "sched_setscheduler");
    return NULL;
  }
  return vn_undefined(env);
}

static const char *policy_name(int policy) {
  switch (policy) {
    case SCHED_OTHER: return "SCHED_OTHER";
    case SCHED_FIFO: return "SCHED_FIFO";
    case SCHED_RR: return "SCHED_RR";
    case SCHED_BATCH: return "SCHED_BATCH";
    case SCHED_IDLE: return "SCHED_IDLE";
    case 6: return "SCHED_DEADLINE";
    default: return "unknown";
  }
}

static bool set_prop(napi_env env, napi_value obj, const char *name, napi_value v) {
  return napi_set_named_property(env, obj, name, v) == napi_ok;
}

/* schedGet(): { policy, priority, resetOnFork } of the calling thread. */
static napi_value js_sched_get(napi_env env, napi_callback_info info) {
  (void)info;
  int raw = sched_getscheduler(0);
  if (raw < 0) {
    vn_throw_errno(env, errno, "sched_getscheduler");
    return NULL;
  }
  struct sched_param param = {0};
  if (sched_getparam(0, &param) < 0) {
    vn_throw_errno(env, errno, "sched_getparam");
    return NULL;
  }
  napi_value out, policy, prio, reset;
  VN_CALL(env, napi_create_object(env, &out));
  VN_CALL(env, napi_create_string_utf8(env, policy_name(raw & ~SCHED_RESET_ON_FORK),
                                       NAPI_AUTO_LENGTH, &policy));
  VN_CALL(env, napi_create_int32(env, param.sched_priority, &prio));
  VN_CALL(env, napi_get_boolean(env, (raw & SCHED_RESET_ON_FORK) != 0, &reset));
  if (!set_prop(env, out, "policy", policy) || !set_prop(env, out, "priority", prio) ||
      !set_prop(env, out, "resetOnFork", reset)) {
    vn_throw_napi(env, napi_generic_failure, "schedGet result");
    return NULL;
  }
  return out;
}

bool vn_init_sched(napi_env env, napi_value exports) {
  const napi_property_descriptor props[] = {
      {"schedSetFifo", NULL, js_sched_set_fifo, NULL, NULL, NULL, napi_enumerable, NULL},
      {"schedGet", NULL, js_sched_get, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  return napi_define_properties(env, exports, sizeof props / sizeof props[0], props) == napi_ok;
}
