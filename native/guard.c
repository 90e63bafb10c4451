/*
 * SIGBUS guard for guest memory mappings.
 *
 * Guest RAM is a file the front-end owns (a memfd, a file on /dev/shm or
 * hugetlbfs). If that file is shorter than the range we mapped, or shrinks
 * after we mapped it, the first touch of a page past its end raises SIGBUS,
 * and SIGBUS kills the whole process: every guest served by the daemon. The
 * touch can come from anywhere (V8's compiled code reading a Uint8Array, a
 * TypedArray.set in a builtin), so there is no single call to wrap.
 *
 * Instead, mappings made with mmap(..., guard=true) are registered here, and a
 * process-wide SIGBUS handler:
 *   1. looks the faulting address up in the registered ranges;
 *   2. if it is ours, maps private anonymous zero pages over the rest of that
 *      range (from the faulting page to its end: when a file shrinks, every
 *      page after the first missing one is missing too), counts the fault on
 *      the range and in a global counter, writes 1 to an eventfd, and returns:
 *      the faulting instruction runs again and now reads zeros;
 *   3. otherwise it hands the signal to whatever handler was installed before
 *      (the default action, a core dump, when there was none).
 * The JS side watches the eventfd and closes the connection whose memory
 * faulted: its guest memory is gone, but every other guest keeps running.
 *
 * Async-signal safety: the handler only reads atomics, calls mmap and write
 * (plain syscalls) and never allocates. The range table is a fixed array of
 * slots claimed with compare-and-swap, so mapping from a Worker thread cannot
 * corrupt it. A slot is cleared before its range is unmapped, so the handler
 * never replaces memory that has been handed to someone else.
 */
#include "vhost_native.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#define VN_GUARD_SLOTS 4096

typedef struct {
  atomic_uintptr_t start; /* 0 when the slot is free */
  atomic_uintptr_t end;
  atomic_uint faults;
} vn_guard_slot;

static vn_guard_slot slots[VN_GUARD_SLOTS];
static atomic_uint total_faults;
static atomic_int fault_fd = -1;
static uintptr_t page_mask;
static struct sigaction previous;
static bool installed;
/* Workers load the addon too: installation is serialised (never taken in the handler). */
static pthread_mutex_t install_lock = PTHREAD_MUTEX_INITIALIZER;

static void chain_previous(int sig, siginfo_t *info, void *ctx) {
  if ((previous.sa_flags & SA_SIGINFO) != 0 && previous.sa_sigaction != NULL) {
    previous.sa_sigaction(sig, info, ctx);
    return;
  }
  if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
    previous.sa_handler(sig);
    return;
  }
  /* Default action (an ignored synchronous SIGBUS would fault forever): restore
   * it and return; the access faults again and the process dies as it would
   * have without us. */
  signal(SIGBUS, SIG_DFL);
}

static void on_sigbus(int sig, siginfo_t *info, void *ctx) {
  int saved = errno;
  uintptr_t addr = (uintptr_t)info->si_addr;
  for (size_t i = 0; i < VN_GUARD_SLOTS; i++) {
    uintptr_t start = atomic_load(&slots[i].start);
    if (start == 0 || addr < start) continue;
    uintptr_t end = atomic_load(&slots[i].end);
    if (addr >= end) continue;
    uintptr_t page = addr & page_mask;
    void *r = mmap((void *)page, end - page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (r == MAP_FAILED) break;
    atomic_fetch_add(&slots[i].faults, 1);
    atomic_fetch_add(&total_faults, 1);
    int fd = atomic_load(&fault_fd);
    if (fd >= 0) {
      uint64_t one = 1;
      ssize_t w = write(fd, &one, sizeof one);
      (void)w; /* EAGAIN only when the counter is saturated: already signalled */
    }
    errno = saved;
    return;
  }
  errno = saved;
  chain_previous(sig, info, ctx);
}

/* Installs the handler and creates the eventfd, once. Throws and returns false on failure. */
static bool install_locked(napi_env env) {
  if (installed) return true;
  long page = sysconf(_SC_PAGESIZE);
  if (page <= 0) {
    vn_throw_errno(env, EINVAL, "sysconf");
    return false;
  }
  page_mask = ~((uintptr_t)page - 1);
  int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) {
    vn_throw_errno(env, errno, "eventfd");
    return false;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_sigbus;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGBUS, &sa, &previous) < 0) {
    int err = errno;
    close(fd);
    vn_throw_errno(env, err, "sigaction");
    return false;
  }
  atomic_store(&fault_fd, fd);
  installed = true;
  return true;
}

static bool ensure_installed(napi_env env) {
  pthread_mutex_lock(&install_lock);
  bool ok = install_locked(env);
  pthread_mutex_unlock(&install_lock);
  return ok;
}

int vn_guard_add(napi_env env, void *addr, size_t length) {
  if (!ensure_installed(env)) return -2;
  uintptr_t start = (uintptr_t)addr;
  for (int i = 0; i < VN_GUARD_SLOTS; i++) {
    uintptr_t expected = 0;
    /* Claim with a placeholder start, fill in end, then publish start: the
     * handler skips a slot whose range is not complete yet. */
    if (atomic_compare_exchange_strong(&slots[i].start, &expected, UINTPTR_MAX)) {
      atomic_store(&slots[i].faults, 0);
      atomic_store(&slots[i].end, start + length);
      atomic_store(&slots[i].start, start);
      return i;
    }
  }
  return -1;
}

void vn_guard_remove(int slot) {
  if (slot < 0 || slot >= VN_GUARD_SLOTS) return;
  atomic_store(&slots[slot].end, 0);
  atomic_store(&slots[slot].start, 0);
}

unsigned vn_guard_faults(int slot) {
  if (slot < 0 || slot >= VN_GUARD_SLOTS) return 0;
  return atomic_load(&slots[slot].faults);
}

/* memoryFaults(): total guarded faults since the process started. */
static napi_value js_memory_faults(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value out = NULL;
  VN_CALL(env, napi_create_uint32(env, atomic_load(&total_faults), &out));
  return out;
}

/* memoryFaultFd(): the eventfd the handler signals (installs the handler on first use). */
static napi_value js_memory_fault_fd(napi_env env, napi_callback_info info) {
  (void)info;
  if (!ensure_installed(env)) return NULL;
  napi_value out = NULL;
  VN_CALL(env, napi_create_int32(env, atomic_load(&fault_fd), &out));
  return out;
}

bool vn_init_guard(napi_env env, napi_value exports) {
  const napi_property_descriptor props[] = {
      {"memoryFaults", NULL, js_memory_faults, NULL, NULL, NULL, napi_enumerable, NULL},
      {"memoryFaultFd", NULL, js_memory_fault_fd, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  return napi_define_properties(env, exports, sizeof props / sizeof props[0], props) == napi_ok;
}
