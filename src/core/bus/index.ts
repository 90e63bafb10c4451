/** The CAN bus layer as a library: frame model + candump codec, the virtual hub, and their errors. */
export { BusLoadMeter } from './bus-load.js';
export {
  busErrorFrame,
  CanErr,
  CanErrLoc,
  type CanErrorFrame,
  CanErrThreshold,
  errorFrameCanId,
  stateErrorFrame,
} from './can-error.js';
export {
  assertValidCanFrame,
  CAN_FD_LENGTHS,
  type CandumpLine,
  type CanFrame,
  type CanFrameInit,
  CanIdMax,
  CanLength,
  canFdDlcToLen,
  canFdLenToDlc,
  canFrameBits,
  canFrameDataPhaseBits,
  formatCandump,
  isValidFdLength,
  makeCanFrame,
  parseCandump,
  parseCandumpLine,
  stampCanFrame,
  validateCanFrame,
} from './can-frame.js';
export {
  BUS_ERROR_DISPOSITION,
  BusError,
  type BusErrorCode,
  type BusErrorDisposition,
  CanFrameError,
  type CanFrameErrorCode,
  CanHubError,
  type CanHubErrorCode,
} from './errors.js';
export {
  ACK_MODES,
  type AckMode,
  type ActiveFault,
  type BusTiming,
  type FaultOptions,
  PORT_FAULT_KINDS,
  type PortFault,
  type PortFaultKind,
  TIMED_FAULT_KINDS,
} from './faults.js';
export type { FramePoolStats } from './frame-pool.js';
export { type FrameBits, frameBitCount, frameBits } from './frame-timing.js';
export {
  type AttachOptions,
  BUS_STATES,
  type BusPortHandler,
  type BusState,
  type BusStats,
  CanHub,
  CanHubDefaults,
  type CanHubOptions,
  type HubPort,
  HubRegistry,
  type HubTimer,
  type HubTimerFactory,
  type PortAcceptPolicy,
  type PortStats,
  type PortStatsSnapshot,
  type TxResult,
} from './hub.js';
export { RingQueue } from './ring-queue.js';
export { arbitrationKey, stateOf, type TimedBusStats } from './timed-bus.js';
