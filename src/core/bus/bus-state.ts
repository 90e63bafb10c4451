/** Controller state of one port, as a CAN controller would report it (ISO 11898-1 fault confinement). */
export type BusState = 'error-active' | 'error-warning' | 'error-passive' | 'bus-off';
export const BUS_STATES: readonly BusState[] = Object.freeze([
  'error-active',
  'error-warning',
  'error-passive',
  'bus-off',
]);
