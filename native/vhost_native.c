/*
 * Module entry point. Context-aware (NAPI_MODULE_INIT), so it can be loaded in
 * several Worker threads. Its only process-wide state is the SIGBUS guard
 * (guard.c), which is safe to share between threads.
 */
#include "vhost_native.h"

NAPI_MODULE_INIT() {
  if (!vn_init_fd(env, exports) || !vn_init_mmap(env, exports) || !vn_init_watcher(env, exports) ||
      !vn_init_can(env, exports) || !vn_init_guard(env, exports) ||
      !vn_init_timer(env, exports) || !vn_init_sched(env, exports)) {
    vn_throw_napi(env, napi_generic_failure, "vhost_native module init");
    return NULL;
  }
  return exports;
}
