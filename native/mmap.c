/*
 * mmap/munmap as external ArrayBuffers (guest RAM, test front-end memory).
 *
 * Ownership (docs/decisions.md "Native addon"):
 *   - Each mapping has a heap record `vn_mapping` with two references:
 *       1. the ArrayBuffer's backing-store finalizer (runs once V8 drops the
 *          backing store: on GC, or soon after an explicit detach);
 *       2. a napi_wrap on the ArrayBuffer object, which lets munmap() find the
 *          record and stays valid for as long as JS can pass the buffer to us.
 *     The record is freed when both are released, so a second munmap() after
 *     the backing-store finalizer already ran is still a safe no-op.
 *   - munmap() detaches first (views then see length 0 instead of faulting)
 *     and only then unmaps; the `unmapped` flag makes the finalizer a no-op.
 *     Unmapping twice can destroy an unrelated mapping that reused the range.
 *   - Once napi_create_external_arraybuffer has been called without a pending
 *     exception, Node owns the finalizer reference even if the call fails
 *     (Node 20 runs the finalizer for buffers over kMaxLength).
 * All of this runs on the env's JS thread, so the counters are plain ints.
 */
#include "vhost_native.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

/* Node 20 limit per ArrayBuffer (buffer.kMaxLength); Node 22 raised it. */
#define VN_MAX_MAPPING ((int64_t)1 << 32)

typedef struct {
  void *addr;
  size_t length;
  bool unmapped;
  int refs;
  int guard_slot; /* registered with the SIGBUS guard (guard.c), or -1 */
} vn_mapping;

/* Marks ArrayBuffers created by mmap() so munmap() can refuse foreign ones
 * (and never napi_unwrap a pointer some other addon stored). */
static const napi_type_tag kMappingTag = {0x7668f5a1c0de4d31ULL, 0x9a3e0b6f2d7c5e18ULL};

/* Leaves the SIGBUS guard first: the range must never be patched once it is unmapped. */
static void unguard(vn_mapping *m) {
  vn_guard_remove(m->guard_slot);
  m->guard_slot = -1;
}

static void mapping_unmap(vn_mapping *m) {
  if (!m->unmapped) {
    m->unmapped = true;
    unguard(m);
    munmap(m->addr, m->length);
  }
}

static void mapping_release(vn_mapping *m) {
  if (--m->refs == 0) {
    mapping_unmap(m);
    free(m);
  }
}

/* Backing store released: the memory can no longer be reached from JS. */
static void finalize_backing(napi_env env, void *data, void *hint) {
  (void)env;
  (void)data;
  vn_mapping *m = hint;
  mapping_unmap(m);
  mapping_release(m);
}

/* ArrayBuffer object collected: nobody can call munmap() with it any more. */
static void finalize_wrap(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  mapping_release(data);
}

/* Detach, then unmap. Only unmaps if the detach worked, so JS can never touch
 * unmapped memory through this buffer. */
static bool detach_and_unmap(napi_env env, napi_value ab, vn_mapping *m) {
  /* Claim the unmap before detaching: if a runtime ever ran the backing-store
   * finalizer synchronously inside the detach, it must not unmap as well. The
   * caller holds the wrap reference, so `m` outlives the finalizer. */
  m->unmapped = true;
  napi_status st = napi_detach_arraybuffer(env, ab);
  if (st != napi_ok) {
    m->unmapped = false; /* still mapped and reachable: leave it to the finalizer */
    vn_throw_napi(env, st, "napi_detach_arraybuffer");
    return false;
  }
  unguard(m);
  if (munmap(m->addr, m->length) < 0) {
    vn_throw_errno(env, errno, "munmap");
    return false;
  }
  return true;
}

static napi_value js_mmap(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4] = {NULL, NULL, NULL, NULL};
  VN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  for (size_t i = argc; i < 4; i++) argv[i] = vn_undefined(env);

  int fd;
  int64_t length, offset;
  bool guard = false;
  if (!vn_get_fd(env, argv[0], "fd", &fd)) return NULL;
  if (!vn_get_int64(env, argv[1], "length", 0, (int64_t)VN_MAX_SAFE_INTEGER, &length)) return NULL;
  if (!vn_get_int64(env, argv[2], "offset", 0, (int64_t)VN_MAX_SAFE_INTEGER, &offset)) return NULL;
  napi_valuetype guard_type = napi_undefined;
  VN_CALL(env, napi_typeof(env, argv[3], &guard_type));
  if (guard_type != napi_undefined && !vn_get_bool(env, argv[3], "guard", &guard)) return NULL;
  if (length > VN_MAX_MAPPING) {
    vn_throw_range(env, "ERR_MMAP_TOO_LARGE",
                   "mmap length exceeds the 4 GiB ArrayBuffer limit of this Node version; "
                   "map the region in several windows");
    return NULL;
  }
  long page = sysconf(_SC_PAGESIZE);
  if (length == 0 || page <= 0 || offset % page != 0) {
    vn_throw_errno(env, EINVAL, "mmap");
    return NULL;
  }

  void *addr = mmap(NULL, (size_t)length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)offset);
  if (addr == MAP_FAILED) {
    vn_throw_errno(env, errno, "mmap");
    return NULL;
  }
  vn_mapping *m = malloc(sizeof *m);
  if (m == NULL) {
    munmap(addr, (size_t)length);
    vn_throw_errno(env, ENOMEM, "mmap");
    return NULL;
  }
  *m = (vn_mapping){.addr = addr, .length = (size_t)length, .unmapped = false, .refs = 2, .guard_slot = -1};
  if (guard) {
    int slot = vn_guard_add(env, addr, (size_t)length);
    if (slot < 0) {
      munmap(addr, (size_t)length);
      free(m);
      if (slot == -1) {
        vn_throw_range(env, "ERR_TOO_MANY_GUARDED", "too many guarded mappings (SIGBUS guard table full)");
      }
      return NULL; /* -2: the guard could not be installed and has thrown */
    }
    m->guard_slot = slot;
  }

  bool pending = false;
  if (napi_is_exception_pending(env, &pending) != napi_ok || pending) {
    /* Node would refuse before taking ownership: clean up ourselves. */
    unguard(m);
    munmap(addr, (size_t)length);
    free(m);
    return NULL;
  }
  napi_value ab = NULL;
  napi_status st = napi_create_external_arraybuffer(env, addr, (size_t)length, finalize_backing, m, &ab);
  if (st == napi_no_external_buffers_allowed) {
    /* V8 sandbox builds (Electron) refuse before creating the finalizer. */
    unguard(m);
    munmap(addr, (size_t)length);
    free(m);
    vn_throw_plain(env, "ERR_NO_EXTERNAL_BUFFERS", "external ArrayBuffers are not allowed in this runtime");
    return NULL;
  }
  if (st != napi_ok) {
    /* The finalizer owns reference 1 (and the munmap) now; drop the wrap's. */
    mapping_release(m);
    vn_throw_napi(env, st, "napi_create_external_arraybuffer");
    return NULL;
  }
  st = napi_wrap(env, ab, m, finalize_wrap, NULL, NULL);
  if (st != napi_ok) {
    /* The buffer never reaches JS. Same order as detach_and_unmap; the
     * reference meant for the wrap keeps `m` alive until we are done. */
    m->unmapped = true;
    napi_detach_arraybuffer(env, ab);
    unguard(m);
    munmap(addr, (size_t)length);
    mapping_release(m);
    vn_throw_napi(env, st, "napi_wrap");
    return NULL;
  }
  st = napi_type_tag_object(env, ab, &kMappingTag);
  if (st != napi_ok) {
    detach_and_unmap(env, ab, m);
    vn_throw_napi(env, st, "napi_type_tag_object");
    return NULL;
  }
  return ab;
}

/* The mapping behind the one ArrayBuffer argument of munmap()/mappingFaults(), or NULL after
 * throwing (not an ArrayBuffer: ERR_INVALID_ARG_TYPE; not made by mmap(): ERR_NOT_MAPPED). */
static vn_mapping *mapping_arg(napi_env env, napi_callback_info info, napi_value *ab) {
  size_t argc = 1;
  napi_value arg = NULL;
  VN_CALL(env, napi_get_cb_info(env, info, &argc, &arg, NULL, NULL));
  bool is_ab = false;
  if (argc < 1 || napi_is_arraybuffer(env, arg, &is_ab) != napi_ok || !is_ab) {
    vn_throw_type(env, "ERR_INVALID_ARG_TYPE", "The \"buf\" argument must be an ArrayBuffer");
    return NULL;
  }
  bool tagged = false;
  VN_CALL(env, napi_check_object_type_tag(env, arg, &kMappingTag, &tagged));
  if (!tagged) {
    vn_throw_type(env, "ERR_NOT_MAPPED", "The ArrayBuffer was not created by mmap()");
    return NULL;
  }
  void *data = NULL;
  VN_CALL(env, napi_unwrap(env, arg, &data));
  *ab = arg;
  return data;
}

static napi_value js_munmap(napi_env env, napi_callback_info info) {
  napi_value ab = NULL;
  vn_mapping *m = mapping_arg(env, info, &ab);
  if (m == NULL) return NULL;
  if (m->unmapped) return vn_undefined(env);
  if (!detach_and_unmap(env, ab, m)) return NULL;
  return vn_undefined(env);
}

/* mappingFaults(buf): SIGBUS faults the guard absorbed in this mapping (0 if unguarded or unmapped). */
static napi_value js_mapping_faults(napi_env env, napi_callback_info info) {
  napi_value ab = NULL;
  vn_mapping *m = mapping_arg(env, info, &ab);
  if (m == NULL) return NULL;
  napi_value out = NULL;
  VN_CALL(env, napi_create_uint32(env, vn_guard_faults(m->guard_slot), &out));
  return out;
}

bool vn_init_mmap(napi_env env, napi_value exports) {
  const napi_property_descriptor props[] = {
      {"mmap", NULL, js_mmap, NULL, NULL, NULL, napi_enumerable, NULL},
      {"munmap", NULL, js_munmap, NULL, NULL, NULL, napi_enumerable, NULL},
      {"mappingFaults", NULL, js_mapping_faults, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  return napi_define_properties(env, exports, sizeof props / sizeof props[0], props) == napi_ok;
}
