/**
 * vhost-device-ts as a library: run the CAN or rng daemon in-process, reach its buses, attach your own bus
 * ports, or drive any vhost-user back-end with the TypeScript front-end.
 */
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
export { CanTestDriver } from './node/frontend/can-driver.js';
export { VhostUserFrontend } from './node/frontend/frontend.js';
export { GuestRam } from './node/frontend/guest-ram.js';
export { StructuredLogger } from './node/log.js';
export { type RngDaemon, type RngDaemonOptions, startRngDaemon } from './node/rng/rng-daemon.js';
export { VhostUserDaemon } from './node/vhost-user/daemon.js';
