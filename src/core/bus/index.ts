/** The CAN bus layer as a library: frame model + candump codec, the virtual hub, and their errors. */
export { BusLoadMeter } from './bus-load.js';
export { CanErr, type CanErrorFrame, errorFrameCanId, stateErrorFrame } from './can-error.js';
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
export type { FramePoolStats } from './frame-pool.js';
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
  type PortAcceptPolicy,
  type PortStats,
  type PortStatsSnapshot,
  type TxResult,
} from './hub.js';
export { RingQueue } from './ring-queue.js';
