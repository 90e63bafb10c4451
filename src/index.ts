/**
 * vhost-device-ts as a library: run the CAN or rng daemon in-process, reach its buses, attach your own bus
 * ports, or drive any vhost-user back-end with the TypeScript front-end.
 */
export type { CanErrorFrame } from './core/bus/can-error.js';
export { type CanFrame, formatCandump, makeCanFrame, parseCandump } from './core/bus/can-frame.js';
export type { AckMode, ActiveFault, BusTiming, FaultOptions, PortFault } from './core/bus/faults.js';
export type { FramePoolStats } from './core/bus/frame-pool.js';
export {
  type AttachOptions,
  type BusPortHandler,
  type BusState,
  type BusStats,
  CanHub,
  type HubPort,
  HubRegistry,
  type PortStats,
} from './core/bus/hub.js';
export {
  type CaptureDecoder,
  type CaptureEncoder,
  type CaptureEvent,
  type CaptureFormat,
  type CapturePosition,
  type CaptureRecord,
  captureFormatOf,
  createCaptureDecoder,
  createCaptureEncoder,
  type Direction,
  readCapture,
  type WriteCaptureOptions,
  writeCapture,
} from './core/capture/index.js';
export { CanDevice, type CanDeviceStats, type CanFeatureSwitches } from './core/devices/can/can-device.js';
export { CanFeature, CanMsgType, CanStatus, VIRTIO_ID_CAN } from './core/devices/can/constants.js';
export {
  type EntropySource,
  RngDevice,
  type RngDeviceOptions,
  type RngDeviceStats,
  VIRTIO_ID_RNG,
} from './core/devices/rng/rng-device.js';
export type { Logger } from './core/util/log.js';
export type { DeviceHost, VirtioDevice } from './core/vhost-user/device.js';
export {
  type BusSpec,
  type CanDaemon,
  type CanDaemonOptions,
  type FaultRequest,
  startCanDaemon,
} from './node/can/can-daemon.js';
export { CaptureFile, type CaptureFileOptions, type CaptureFileStats } from './node/capture/capture-file.js';
export {
  type BusRecording,
  CapturePort,
  guestDirection,
  type RecordBusesOptions,
  recordBuses,
} from './node/capture/capture-port.js';
export { readCaptureFile, writeCaptureFile } from './node/capture/files.js';
export { Replay, type ReplayOptions, type ReplayStats, replayFile } from './node/capture/replay-port.js';
export { CanTestDriver } from './node/frontend/can-driver.js';
export { VhostUserFrontend } from './node/frontend/frontend.js';
export { GuestRam } from './node/frontend/guest-ram.js';
export { type CanWeb, startCanWeb, type WebOptions } from './node/http/can-web.js';
export { type ConsoleWeb, startConsoleWeb } from './node/http/console-web.js';
export type { FaultControl } from './node/http/fault-control.js';
export { StructuredLogger } from './node/log.js';
export {
  CPU_LATENCY_DEVICE,
  type CpuLatencyHold,
  type CpuLatencyOptions,
  DEFAULT_REALTIME_PRIORITY,
  enterRealtime,
  holdCpuLatency,
  REALTIME_NODE_FLAGS,
  RealtimeError,
  type RealtimeOptions,
  type RealtimeState,
} from './node/realtime.js';
export { type RngDaemon, type RngDaemonOptions, startRngDaemon } from './node/rng/rng-daemon.js';
export { VhostUserDaemon } from './node/vhost-user/daemon.js';
