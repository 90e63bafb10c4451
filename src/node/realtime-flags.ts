// Kept apart from realtime.ts, which loads the native addon: the bench reads it before any addon
// is built.
/**
 * The node options the vhost-device-can command runs with (its `#!` line, `npm start`).
 * `--single-threaded-gc`: V8 collects garbage on the main thread alone. Otherwise its incremental
 * marking and sweeping tasks on the main thread wait for helper threads that stay at normal
 * priority; under SCHED_FIFO the main thread then keeps its CPU while the helpers it woke queue
 * behind it, until the kernel moves them to another CPU: stalls of tens of milliseconds. The
 * option can only be given when node starts (V8 aborts when it is changed later).
 */
export const REALTIME_NODE_FLAGS: readonly string[] = ['--single-threaded-gc'];
