/* Exceptions and argument parsing shared by all files in native/. */
#include "vhost_native.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

napi_value vn_undefined(napi_env env) {
  napi_value v = NULL;
  napi_get_undefined(env, &v);
  return v;
}

napi_value vn_get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  for (size_t i = 0; i < want; i++) argv[i] = NULL;
  VN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  napi_value undef = vn_undefined(env);
  for (size_t i = argc; i < want; i++) argv[i] = undef;
  return undef;
}

napi_value vn_null(napi_env env) {
  napi_value v = NULL;
  napi_get_null(env, &v);
  return v;
}

static bool exception_pending(napi_env env) {
  bool pending = false;
  return napi_is_exception_pending(env, &pending) != napi_ok || pending;
}

static napi_value make_string(napi_env env, const char *s) {
  napi_value v = NULL;
  if (napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &v) != napi_ok) return NULL;
  return v;
}

napi_value vn_throw_errno_close(napi_env env, int fd, const char *syscall) {
  int err = errno;
  close(fd);
  vn_throw_errno(env, err, syscall);
  return NULL;
}

void vn_throw_errno(napi_env env, int err, const char *syscall) {
  if (exception_pending(env)) return;
  char code[64];
  /* libuv's codes are -errno on Linux and give Node's own names ('EAGAIN');
   * uv_err_name_r (unlike uv_err_name) does not leak on unknown values. */
  uv_err_name_r(-err, code, sizeof code);
  char text[256];
  /* GNU strerror_r: returns a pointer that may or may not be `text`. */
  const char *desc = strerror_r(err, text, sizeof text);
  char msg[384];
  snprintf(msg, sizeof msg, "%s: %s", syscall, desc);

  napi_value js_code = make_string(env, code);
  napi_value js_msg = make_string(env, msg);
  napi_value js_syscall = make_string(env, syscall);
  napi_value js_errno = NULL;
  napi_value error = NULL;
  if (js_code == NULL || js_msg == NULL || js_syscall == NULL ||
      napi_create_int32(env, err, &js_errno) != napi_ok ||
      napi_create_error(env, js_code, js_msg, &error) != napi_ok ||
      napi_set_named_property(env, error, "errno", js_errno) != napi_ok ||
      napi_set_named_property(env, error, "syscall", js_syscall) != napi_ok) {
    /* Out of memory or similar: still throw something. */
    if (!exception_pending(env)) napi_throw_error(env, code, msg);
    return;
  }
  napi_throw(env, error);
}

void vn_throw_type(napi_env env, const char *code, const char *msg) {
  if (!exception_pending(env)) napi_throw_type_error(env, code, msg);
}

void vn_throw_range(napi_env env, const char *code, const char *msg) {
  if (!exception_pending(env)) napi_throw_range_error(env, code, msg);
}

void vn_throw_plain(napi_env env, const char *code, const char *msg) {
  if (!exception_pending(env)) napi_throw_error(env, code, msg);
}

void vn_throw_napi(napi_env env, napi_status status, const char *what) {
  if (exception_pending(env)) return;
  const napi_extended_error_info *info = NULL;
  const char *detail = NULL;
  if (napi_get_last_error_info(env, &info) == napi_ok && info != NULL) {
    detail = info->error_message;
  }
  char msg[512];
  snprintf(msg, sizeof msg, "N-API call failed (status %d%s%s): %s", (int)status,
           detail ? ", " : "", detail ? detail : "", what);
  napi_throw_error(env, "ERR_NAPI", msg);
}

bool vn_get_int64(napi_env env, napi_value value, const char *name, int64_t min,
                  int64_t max, int64_t *out) {
  char msg[256];
  napi_valuetype type;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_number) {
    snprintf(msg, sizeof msg, "The \"%s\" argument must be of type number", name);
    vn_throw_type(env, "ERR_INVALID_ARG_TYPE", msg);
    return false;
  }
  double d = 0;
  if (napi_get_value_double(env, value, &d) != napi_ok) {
    vn_throw_napi(env, napi_number_expected, "napi_get_value_double");
    return false;
  }
  /* Compare as doubles first: casting an out-of-range double is undefined. */
  if (!isfinite(d) || floor(d) != d || d < (double)min || d > (double)max ||
      fabs(d) > VN_MAX_SAFE_INTEGER) {
    /* Only safe integers are accepted, so report the effective bounds. */
    long long lo = min < -(int64_t)VN_MAX_SAFE_INTEGER ? -(long long)VN_MAX_SAFE_INTEGER : (long long)min;
    long long hi = max > (int64_t)VN_MAX_SAFE_INTEGER ? (long long)VN_MAX_SAFE_INTEGER : (long long)max;
    snprintf(msg, sizeof msg,
             "The value of \"%s\" is out of range. It must be an integer >= %lld and <= %lld. "
             "Received %.17g",
             name, lo, hi, d);
    vn_throw_range(env, "ERR_OUT_OF_RANGE", msg);
    return false;
  }
  *out = (int64_t)d;
  /* (double)max may round up (e.g. INT64_MAX); re-check in integer space. */
  if (*out < min || *out > max) {
    snprintf(msg, sizeof msg, "The value of \"%s\" is out of range", name);
    vn_throw_range(env, "ERR_OUT_OF_RANGE", msg);
    return false;
  }
  return true;
}

bool vn_get_fd(napi_env env, napi_value value, const char *name, int *out) {
  int64_t v = 0;
  if (!vn_get_int64(env, value, name, 0, INT32_MAX, &v)) return false;
  *out = (int)v;
  return true;
}

bool vn_get_bool(napi_env env, napi_value value, const char *name, bool *out) {
  napi_valuetype type;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_boolean ||
      napi_get_value_bool(env, value, out) != napi_ok) {
    char msg[256];
    snprintf(msg, sizeof msg, "The \"%s\" argument must be of type boolean", name);
    vn_throw_type(env, "ERR_INVALID_ARG_TYPE", msg);
    return false;
  }
  return true;
}

bool vn_get_string(napi_env env, napi_value value, const char *name, char *buf,
                   size_t size, size_t *len, bool *too_long) {
  char msg[256];
  napi_valuetype type;
  size_t needed = 0;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_string ||
      napi_get_value_string_utf8(env, value, NULL, 0, &needed) != napi_ok) {
    snprintf(msg, sizeof msg, "The \"%s\" argument must be of type string", name);
    vn_throw_type(env, "ERR_INVALID_ARG_TYPE", msg);
    return false;
  }
  *too_long = needed + 1 > size;
  *len = needed;
  buf[0] = '\0';
  if (*too_long) return true;
  size_t copied = 0;
  if (napi_get_value_string_utf8(env, value, buf, size, &copied) != napi_ok) {
    vn_throw_napi(env, napi_string_expected, "napi_get_value_string_utf8");
    return false;
  }
  if (strlen(buf) != copied) {
    snprintf(msg, sizeof msg, "The \"%s\" argument must not contain NUL bytes", name);
    vn_throw_type(env, "ERR_INVALID_ARG_VALUE", msg);
    return false;
  }
  *len = copied;
  return true;
}

bool vn_get_bytes(napi_env env, napi_value value, const char *name, void **data,
                  size_t *length) {
  bool is_typedarray = false;
  bool is_dataview = false;
  if (napi_is_typedarray(env, value, &is_typedarray) == napi_ok && is_typedarray) {
    napi_typedarray_type type;
    size_t count = 0;
    void *ptr = NULL;
    if (napi_get_typedarray_info(env, value, &type, &count, &ptr, NULL, NULL) != napi_ok) {
      vn_throw_napi(env, napi_invalid_arg, "napi_get_typedarray_info");
      return false;
    }
    size_t elem = 1;
    switch (type) {
    case napi_int16_array:
    case napi_uint16_array:
      elem = 2;
      break;
    case napi_int32_array:
    case napi_uint32_array:
    case napi_float32_array:
      elem = 4;
      break;
    case napi_float64_array:
    case napi_bigint64_array:
    case napi_biguint64_array:
      elem = 8;
      break;
    case napi_int8_array:
    case napi_uint8_array:
    case napi_uint8_clamped_array:
      elem = 1;
      break;
    default: {
      /* A TypedArray kind newer than this file: refuse rather than guess its size. */
      char tmsg[256];
      snprintf(tmsg, sizeof tmsg, "The \"%s\" argument has an unsupported TypedArray type", name);
      vn_throw_type(env, "ERR_INVALID_ARG_TYPE", tmsg);
      return false;
    }
    }
    /* `ptr` already includes byteOffset (documented N-API behaviour). */
    *data = ptr;
    *length = count * elem;
    return true;
  }
  if (napi_is_dataview(env, value, &is_dataview) == napi_ok && is_dataview) {
    if (napi_get_dataview_info(env, value, length, data, NULL, NULL) != napi_ok) {
      vn_throw_napi(env, napi_invalid_arg, "napi_get_dataview_info");
      return false;
    }
    return true;
  }
  char msg[256];
  snprintf(msg, sizeof msg, "The \"%s\" argument must be a TypedArray or DataView", name);
  vn_throw_type(env, "ERR_INVALID_ARG_TYPE", msg);
  return false;
}
