{
  "targets": [
    {
      "target_name": "vhost_native",
      "sources": [
        "native/vhost_native.c",
        "native/errors.c",
        "native/fd.c",
        "native/mmap.c",
        "native/watcher.c",
        "native/can.c",
        "native/guard.c",
        "native/timer.c",
        "native/sched.c"
      ],
      "defines": ["NAPI_VERSION=8"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-O2"],
      "libraries": ["-lm"],
      "configurations": {
        "Release": {
          "cflags!": ["-O3"]
        }
      }
    }
  ]
}
