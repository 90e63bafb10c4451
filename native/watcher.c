/*
 * Watcher: readiness notifications for an arbitrary fd on the env's libuv
 * loop (uv_poll_t), the equivalent of libvhost-user's set_watch.
 *
 * - Uses napi_get_uv_event_loop(env), not uv_default_loop(), so it also works
 *   in Worker threads.
 * - uv_poll is level-triggered: the JS callback must drain the fd (read until
 *   EAGAIN) or stop the watcher, or it is called again immediately
 *   (docs/decisions.md "Native addon").
 * - uv_poll_init puts the fd in non-blocking mode, and libuv allows only one
 *   poll handle per fd per loop (UV_EEXIST otherwise).
 * - Stop or close the watcher before closing its fd: epoll forgets a closed fd
 *   silently, so the callback would simply never fire again.
 *
 * Lifetime of the C struct: it is freed once both the uv handle has finished
 * closing (on_closed) and the JS object has been finalized (finalize_watcher),
 * whichever comes last. While started, the JS object is held by a strong
 * reference, so an active watcher keeps working (and keeps the loop alive)
 * even if JS drops it; a stopped or closed one is an ordinary GC candidate.
 * An async cleanup hook closes the handle when the env is torn down (process
 * exit, Worker termination) so the loop can be closed cleanly.
 */
#include "vhost_native.h"

#include <errno.h>
#include <stdlib.h>
#include <uv.h>

#define VN_READABLE UV_READABLE
#define VN_WRITABLE UV_WRITABLE

typedef struct {
  uv_poll_t poll;
  napi_env env;
  napi_ref callback;   /* strong until close */
  napi_ref self;       /* 0 (weak) while stopped, 1 (strong) while started */
  napi_async_context async;
  napi_async_cleanup_hook_handle cleanup;
  int events;          /* current uv_poll mask, 0 when stopped */
  bool closing;        /* uv_close has been called */
  bool handle_closed;  /* on_closed has run */
  bool js_gone;        /* finalize_watcher has run */
} vn_watcher;

static const napi_type_tag kWatcherTag = {0x2f8e1c5b7a3d4e69ULL, 0xb41d0c9e6a5f3872ULL};

static void on_closed(uv_handle_t *handle) {
  vn_watcher *w = handle->data;
  w->handle_closed = true;
  napi_async_cleanup_hook_handle hook = w->cleanup;
  w->cleanup = NULL;
  if (w->js_gone) free(w);
  /* Last, and without touching `w`: removing the hook may tear down the napi
   * env synchronously, which runs finalize_watcher, which frees `w`. */
  if (hook != NULL) napi_remove_async_cleanup_hook(hook);
}

/* Drops the JS-side resources; after this no callback can reach JS. */
static void release_js(vn_watcher *w) {
  napi_env env = w->env;
  if (w->self != NULL) {
    napi_delete_reference(env, w->self);
    w->self = NULL;
  }
  if (w->callback != NULL) {
    napi_delete_reference(env, w->callback);
    w->callback = NULL;
  }
  if (w->async != NULL) {
    napi_async_destroy(env, w->async);
    w->async = NULL;
  }
}

/* Idempotent. uv_close also stops the poll, which un-refs the loop. */
static void begin_close(vn_watcher *w) {
  if (w->closing) return;
  w->closing = true;
  w->events = 0;
  release_js(w);
  uv_close((uv_handle_t *)&w->poll, on_closed);
}

static void finalize_watcher(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  vn_watcher *w = data;
  w->js_gone = true;
  if (w->handle_closed) {
    free(w);
    return;
  }
  begin_close(w); /* on_closed (now or already pending) frees */
}

static void teardown_hook(napi_async_cleanup_hook_handle handle, void *arg) {
  (void)handle;
  vn_watcher *w = arg;
  /* If a close is already pending, on_closed removes the hook when it runs,
   * which tells Node this hook is done. */
  begin_close(w);
}

static void on_poll(uv_poll_t *handle, int status, int events) {
  vn_watcher *w = handle->data;
  if (w->closing || w->callback == NULL) return;
  napi_env env = w->env;
  if (status < 0 && w->events != 0) {
    /* libuv stops the handle itself before reporting an error (POLLERR). */
    w->events = 0;
    napi_reference_unref(env, w->self, NULL);
  }

  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value cb = NULL, recv = NULL, argv[2] = {NULL, NULL};
  napi_get_reference_value(env, w->callback, &cb);
  if (w->self != NULL) napi_get_reference_value(env, w->self, &recv);
  /* Node 20 rejects an undefined receiver in napi_make_callback. */
  if (recv == NULL) napi_get_global(env, &recv);
  if (cb != NULL && recv != NULL && napi_create_int32(env, status, &argv[0]) == napi_ok &&
      napi_create_int32(env, events, &argv[1]) == napi_ok) {
    napi_status st = napi_make_callback(env, w->async, recv, cb, 2, argv, NULL);
    if (st == napi_pending_exception) {
      /* napi_make_callback leaves a throwing callback's exception pending on
       * the env; nobody up the (native) stack would rethrow it, so report it
       * the way Node reports any throwing callback: 'uncaughtException'. */
      napi_value err = NULL;
      if (napi_get_and_clear_last_exception(env, &err) == napi_ok && err != NULL) {
        napi_fatal_exception(env, err);
      }
    }
  }
  napi_close_handle_scope(env, scope);
}

/* Finds the watcher behind `this`; throws unless it is a Watcher. */
static vn_watcher *unwrap_this(napi_env env, napi_callback_info info, size_t *argc,
                               napi_value *argv) {
  napi_value self = NULL;
  if (napi_get_cb_info(env, info, argc, argv, &self, NULL) != napi_ok) {
    vn_throw_napi(env, napi_generic_failure, "napi_get_cb_info");
    return NULL;
  }
  bool tagged = false;
  napi_valuetype type;
  if (napi_typeof(env, self, &type) != napi_ok || type != napi_object ||
      napi_check_object_type_tag(env, self, &kWatcherTag, &tagged) != napi_ok || !tagged) {
    vn_throw_type(env, "ERR_INVALID_THIS", "Value of \"this\" must be of type Watcher");
    return NULL;
  }
  void *data = NULL;
  if (napi_unwrap(env, self, &data) != napi_ok || data == NULL) {
    vn_throw_napi(env, napi_invalid_arg, "napi_unwrap");
    return NULL;
  }
  return data;
}

static napi_value watcher_new(napi_env env, napi_callback_info info) {
  napi_value new_target = NULL;
  VN_CALL(env, napi_get_new_target(env, info, &new_target));
  if (new_target == NULL) {
    vn_throw_type(env, "ERR_CONSTRUCT_CALL_REQUIRED", "Class constructor Watcher cannot be invoked without 'new'");
    return NULL;
  }
  size_t argc = 2;
  napi_value argv[2] = {NULL, NULL};
  napi_value self = NULL;
  VN_CALL(env, napi_get_cb_info(env, info, &argc, argv, &self, NULL));
  if (argc < 2) argv[1] = vn_undefined(env);
  if (argc < 1) argv[0] = vn_undefined(env);
  int fd;
  if (!vn_get_fd(env, argv[0], "fd", &fd)) return NULL;
  napi_valuetype type;
  VN_CALL(env, napi_typeof(env, argv[1], &type));
  if (type != napi_function) {
    vn_throw_type(env, "ERR_INVALID_ARG_TYPE", "The \"callback\" argument must be of type function");
    return NULL;
  }
  uv_loop_t *loop = NULL;
  VN_CALL(env, napi_get_uv_event_loop(env, &loop));

  vn_watcher *w = calloc(1, sizeof *w);
  if (w == NULL) {
    vn_throw_errno(env, ENOMEM, "uv_poll_init");
    return NULL;
  }
  w->env = env;
  int r = uv_poll_init(loop, &w->poll, fd);
  if (r < 0) {
    free(w); /* not initialised: no uv_close needed */
    vn_throw_errno(env, -r, "uv_poll_init");
    return NULL;
  }
  w->poll.data = w;

  napi_status st = napi_wrap(env, self, w, finalize_watcher, NULL, NULL);
  if (st != napi_ok) {
    w->js_gone = true; /* no finalizer will run: on_closed frees */
    begin_close(w);
    vn_throw_napi(env, st, "napi_wrap");
    return NULL;
  }
  /* From here on finalize_watcher owns the JS side; on failure just close. */
  napi_value name = NULL;
  if ((st = napi_type_tag_object(env, self, &kWatcherTag)) != napi_ok ||
      (st = napi_create_reference(env, argv[1], 1, &w->callback)) != napi_ok ||
      (st = napi_create_reference(env, self, 0, &w->self)) != napi_ok ||
      (st = napi_create_string_utf8(env, "VhostNativeWatcher", NAPI_AUTO_LENGTH, &name)) != napi_ok ||
      (st = napi_async_init(env, self, name, &w->async)) != napi_ok ||
      (st = napi_add_async_cleanup_hook(env, teardown_hook, w, &w->cleanup)) != napi_ok) {
    begin_close(w);
    vn_throw_napi(env, st, "Watcher constructor");
    return NULL;
  }
  return self;
}

static napi_value watcher_start(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value arg = NULL;
  vn_watcher *w = unwrap_this(env, info, &argc, &arg);
  if (w == NULL) return NULL;
  if (argc < 1) arg = vn_undefined(env);
  int64_t events;
  /* libuv asserts on unknown bits, so validate before calling it. */
  if (!vn_get_int64(env, arg, "events", 1, VN_READABLE | VN_WRITABLE, &events)) return NULL;
  if (w->closing) {
    vn_throw_plain(env, "ERR_WATCHER_CLOSED", "Watcher is closed");
    return NULL;
  }
  int r = uv_poll_start(&w->poll, (int)events, on_poll);
  if (r < 0) {
    vn_throw_errno(env, -r, "uv_poll_start");
    return NULL;
  }
  if (w->events == 0) VN_CALL(env, napi_reference_ref(env, w->self, NULL));
  w->events = (int)events;
  return vn_undefined(env);
}

static napi_value watcher_stop(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  vn_watcher *w = unwrap_this(env, info, &argc, NULL);
  if (w == NULL) return NULL;
  if (!w->closing && w->events != 0) {
    uv_poll_stop(&w->poll);
    w->events = 0;
    VN_CALL(env, napi_reference_unref(env, w->self, NULL));
  }
  return vn_undefined(env);
}

static napi_value watcher_close(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  vn_watcher *w = unwrap_this(env, info, &argc, NULL);
  if (w == NULL) return NULL;
  begin_close(w);
  return vn_undefined(env);
}

bool vn_init_watcher(napi_env env, napi_value exports) {
  const napi_property_descriptor methods[] = {
      {"start", NULL, watcher_start, NULL, NULL, NULL, napi_default_method, NULL},
      {"stop", NULL, watcher_stop, NULL, NULL, NULL, napi_default_method, NULL},
      {"close", NULL, watcher_close, NULL, NULL, NULL, napi_default_method, NULL},
  };
  napi_value cls = NULL, readable = NULL, writable = NULL;
  if (napi_define_class(env, "Watcher", NAPI_AUTO_LENGTH, watcher_new, NULL,
                        sizeof methods / sizeof methods[0], methods, &cls) != napi_ok ||
      napi_create_int32(env, VN_READABLE, &readable) != napi_ok ||
      napi_create_int32(env, VN_WRITABLE, &writable) != napi_ok) {
    return false;
  }
  const napi_property_descriptor props[] = {
      {"Watcher", NULL, NULL, NULL, NULL, cls, napi_enumerable, NULL},
      {"READABLE", NULL, NULL, NULL, NULL, readable, napi_enumerable, NULL},
      {"WRITABLE", NULL, NULL, NULL, NULL, writable, napi_enumerable, NULL},
  };
  return napi_define_properties(env, exports, sizeof props / sizeof props[0], props) == napi_ok;
}
