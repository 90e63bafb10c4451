/**
 * CANopen (CiA 301) decoding for monitors: what a frame means under the predefined connection set,
 * from its 11-bit COB-ID (function code in bits 10..7, node-ID 1..127 in bits 6..0) and payload.
 *
 * This is a display aid, not a protocol stack: it names the service, the node, and the fields a
 * person reads (NMT command, SDO command specifier with index/sub-index, EMCY code, heartbeat
 * state, TIME of day), and falls back to `null` for frames the predefined set does not cover
 * (extended identifiers, node-ID 0 where a node is required). A short or odd payload never throws:
 * it is decoded as far as it goes and says so.
 */

export type CanOpenService =
  | 'nmt'
  | 'sync'
  | 'emcy'
  | 'time'
  | 'tpdo'
  | 'rpdo'
  | 'sdo-tx'
  | 'sdo-rx'
  | 'heartbeat'
  | 'node-guarding'
  | 'lss';

/** The frame fields the decoder reads (a CanFrame has them all). */
export interface CanOpenFrameLike {
  readonly id: number;
  readonly extended: boolean;
  readonly rtr: boolean;
  readonly len: number;
  readonly data: Uint8Array;
}

export interface CanOpenMessage {
  readonly service: CanOpenService;
  /** Node-ID 1..127 the COB-ID belongs to; for NMT the addressed node (0 = all); absent for SYNC/TIME/LSS. */
  readonly node?: number;
  /** PDO number 1..4 for TPDO/RPDO. */
  readonly pdo?: number;
  /** One line for a person, e.g. `SDO rx node 5: initiate upload 0x1018:01`. */
  readonly summary: string;
  /** Decoded fields, for programs (numbers, strings). */
  readonly fields: Readonly<Record<string, number | string | boolean>>;
}

/** NMT command specifiers (COB-ID 0x000, byte 0). */
export const NMT_COMMANDS: Readonly<Record<number, string>> = Object.freeze({
  1: 'start',
  2: 'stop',
  128: 'enter pre-operational',
  129: 'reset node',
  130: 'reset communication',
});

/** NMT states in heartbeat / boot-up messages (byte 0 without the node-guarding toggle bit). */
export const NMT_STATES: Readonly<Record<number, string>> = Object.freeze({
  0: 'boot-up',
  4: 'stopped',
  5: 'operational',
  127: 'pre-operational',
});

/** Some SDO abort codes (CiA 301 "SDO abort codes"), for the summary; others are shown in hex. */
export const SDO_ABORT_CODES: Readonly<Record<number, string>> = Object.freeze({
  84082688: 'toggle bit not alternated',
  84148224: 'SDO protocol timed out',
  84148225: 'command specifier not valid or unknown',
  84148229: 'out of memory',
  100728832: 'unsupported access to an object',
  100728833: 'attempt to read a write only object',
  100728834: 'attempt to write a read only object',
  100794368: 'object does not exist in the object dictionary',
  100925505: 'object cannot be mapped to the PDO',
  101122064: 'data type does not match, length of service parameter does not match',
  101253137: 'sub-index does not exist',
  101253168: 'invalid value for parameter',
  134217728: 'general error',
  134217760: 'data cannot be transferred or stored to the application',
  134217762: 'data cannot be transferred or stored because of the present device state',
});

const HEX = '0123456789ABCDEF';

function hexBytes(b: Uint8Array, from: number, to: number): string {
  let s = '';
  for (let i = from; i < to && i < b.length; i++) s += HEX[b[i]! >> 4]! + HEX[b[i]! & 15]!;
  return s;
}

function h(n: number, digits: number): string {
  return `0x${n.toString(16).toUpperCase().padStart(digits, '0')}`;
}

function u16(b: Uint8Array, o: number): number {
  return b[o]! | (b[o + 1]! << 8);
}

function u32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

function msg(
  service: CanOpenService,
  summary: string,
  fields: Record<string, number | string | boolean>,
  extra: { node?: number; pdo?: number } = {},
): CanOpenMessage {
  return { service, ...extra, summary, fields };
}

/** Index and sub-index of an SDO frame as `0x1018:01`. */
function objectRef(d: Uint8Array): string {
  return `${h(u16(d, 1), 4)}:${d[3]!.toString(16).toUpperCase().padStart(2, '0')}`;
}

/**
 * An SDO frame (always 8 bytes). `fromClient` is true for client -> server (COB-ID 0x600+n, the
 * server's receive SDO), false for server -> client (0x580+n).
 */
function decodeSdo(f: CanOpenFrameLike, node: number, fromClient: boolean): CanOpenMessage {
  const service: CanOpenService = fromClient ? 'sdo-rx' : 'sdo-tx';
  const head = `SDO ${fromClient ? 'rx' : 'tx'} node ${node}`;
  const d = f.data;
  if (f.rtr || d.length < 1) return msg(service, `${head}: empty`, {}, { node });
  const b0 = d[0]!;
  const cs = b0 >> 5;
  const fields: Record<string, number | string | boolean> = { cs };
  const full = d.length >= 8;
  const withIndex = (what: string): string => {
    if (d.length < 4) return `${head}: ${what} (short frame)`;
    fields.index = u16(d, 1);
    fields.subIndex = d[3]!;
    return `${head}: ${what} ${objectRef(d)}`;
  };
  // Abort is command specifier 4 in both directions.
  if (cs === 4) {
    const base = withIndex('abort');
    if (d.length < 8) return msg(service, base, fields, { node });
    const code = u32(d, 4);
    fields.abortCode = code;
    const why = SDO_ABORT_CODES[code];
    return msg(service, `${base} code ${h(code, 8)}${why === undefined ? '' : ` (${why})`}`, fields, {
      node,
    });
  }
  // Expedited initiate (download request from the client, upload response from the server): e=bit1,
  // s=bit0, n=bits 3..2 unused bytes of 4..7.
  const expedited = (what: string): string => {
    const base = withIndex(what);
    const e = (b0 & 0x02) !== 0;
    const s = (b0 & 0x01) !== 0;
    fields.expedited = e;
    if (!e) {
      if (s && full) {
        fields.size = u32(d, 4);
        return `${base} size ${fields.size}`;
      }
      return `${base} segmented`;
    }
    const n = s ? (b0 >> 2) & 3 : 0;
    const bytes = hexBytes(d, 4, 8 - n);
    fields.data = bytes;
    return `${base} = ${bytes || '(none)'}`;
  };
  // Segment: t=bit4 toggle, n=bits 3..1 unused bytes of 1..7, c=bit0 last.
  const segment = (what: string): string => {
    const t = (b0 >> 4) & 1;
    const n = (b0 >> 1) & 7;
    const c = (b0 & 1) !== 0;
    const bytes = hexBytes(d, 1, 8 - n);
    fields.toggle = t;
    fields.last = c;
    fields.data = bytes;
    return `${head}: ${what} t=${t}${c ? ' last' : ''} ${bytes}`;
  };
  let summary: string;
  if (fromClient) {
    switch (cs) {
      case 0:
        summary = segment('download segment');
        break;
      case 1:
        summary = expedited('initiate download');
        break;
      case 2:
        summary = withIndex('initiate upload');
        break;
      case 3:
        fields.toggle = (b0 >> 4) & 1;
        summary = `${head}: upload segment request t=${fields.toggle}`;
        break;
      case 5:
        summary = withIndex('block upload');
        break;
      case 6:
        summary = withIndex('block download');
        break;
      default:
        summary = `${head}: command ${h(b0, 2)}`;
    }
  } else {
    switch (cs) {
      case 0:
        summary = segment('upload segment');
        break;
      case 1:
        fields.toggle = (b0 >> 4) & 1;
        summary = `${head}: download segment response t=${fields.toggle}`;
        break;
      case 2:
        summary = expedited('initiate upload response');
        break;
      case 3:
        summary = withIndex('initiate download response');
        break;
      case 5:
        summary = withIndex('block download');
        break;
      case 6:
        summary = withIndex('block upload');
        break;
      default:
        summary = `${head}: command ${h(b0, 2)}`;
    }
  }
  if (!full && cs !== 3) summary += ' (short frame)';
  return msg(service, summary, fields, { node });
}

/** Milliseconds of 1984-01-01T00:00:00Z since the Unix epoch (CANopen TIME_OF_DAY's day zero). */
const CANOPEN_EPOCH_MS = Date.UTC(1984, 0, 1);

function decodeTime(f: CanOpenFrameLike): CanOpenMessage {
  const d = f.data;
  if (d.length < 6) return msg('time', `TIME (short frame: ${d.length} bytes)`, {});
  const ms = u32(d, 0) & 0x0fffffff;
  const days = u16(d, 4);
  const iso = new Date(CANOPEN_EPOCH_MS + days * 86_400_000 + ms).toISOString();
  return msg('time', `TIME ${iso}`, { ms, days, iso });
}

function decodeEmcy(f: CanOpenFrameLike, node: number): CanOpenMessage {
  const d = f.data;
  const head = `EMCY node ${node}`;
  if (d.length < 3) return msg('emcy', `${head} (short frame: ${d.length} bytes)`, {}, { node });
  const code = u16(d, 0);
  const register = d[2]!;
  const vendor = hexBytes(d, 3, 8);
  const what = code === 0 ? 'error reset' : `error ${h(code, 4)}`;
  return msg(
    'emcy',
    `${head}: ${what} register ${h(register, 2)}${vendor ? ` data ${vendor}` : ''}`,
    { code, register, vendor },
    { node },
  );
}

function decodeNmt(f: CanOpenFrameLike): CanOpenMessage {
  const d = f.data;
  if (d.length < 2) return msg('nmt', `NMT (short frame: ${d.length} bytes)`, {});
  const cs = d[0]!;
  const node = d[1]!;
  const name = NMT_COMMANDS[cs] ?? `command ${h(cs, 2)}`;
  return msg(
    'nmt',
    `NMT ${name} ${node === 0 ? 'all nodes' : `node ${node}`}`,
    { cs, command: name },
    { node },
  );
}

function decodeHeartbeat(f: CanOpenFrameLike, node: number): CanOpenMessage {
  if (f.rtr) return msg('node-guarding', `node guarding request node ${node}`, {}, { node });
  const d = f.data;
  if (d.length < 1) return msg('heartbeat', `heartbeat node ${node} (empty)`, {}, { node });
  const raw = d[0]!;
  if (raw === 0) return msg('heartbeat', `boot-up node ${node}`, { state: 0, name: 'boot-up' }, { node });
  const state = raw & 0x7f;
  const toggle = raw >> 7;
  const name = NMT_STATES[state] ?? `state ${h(state, 2)}`;
  return msg(
    'heartbeat',
    `heartbeat node ${node}: ${name}${toggle ? ' (toggle 1)' : ''}`,
    { state, name, toggle },
    { node },
  );
}

/** PDO function codes: COB-ID base -> [service, number]. */
const PDO_BASES: ReadonlyMap<number, readonly ['tpdo' | 'rpdo', number]> = new Map([
  [0x180, ['tpdo', 1]],
  [0x200, ['rpdo', 1]],
  [0x280, ['tpdo', 2]],
  [0x300, ['rpdo', 2]],
  [0x380, ['tpdo', 3]],
  [0x400, ['rpdo', 3]],
  [0x480, ['tpdo', 4]],
  [0x500, ['rpdo', 4]],
]);

/**
 * The CANopen meaning of a frame under the predefined connection set, or null when it has none
 * (extended identifier, or a COB-ID that the set leaves to the application).
 */
export function decodeCanOpen(f: CanOpenFrameLike): CanOpenMessage | null {
  if (f.extended || f.id > 0x7ff || f.id < 0) return null;
  const id = f.id;
  if (id === 0x000) return decodeNmt(f);
  if (id === 0x080)
    return msg('sync', f.data.length >= 1 ? `SYNC counter ${f.data[0]}` : 'SYNC', {
      ...(f.data.length >= 1 ? { counter: f.data[0]! } : {}),
    });
  if (id === 0x100) return decodeTime(f);
  if (id === 0x7e4 || id === 0x7e5) {
    const dir = id === 0x7e5 ? 'request' : 'response';
    const cs = f.data.length >= 1 ? f.data[0]! : -1;
    return msg('lss', `LSS ${dir}${cs >= 0 ? ` command ${h(cs, 2)}` : ''}`, cs >= 0 ? { cs, dir } : { dir });
  }
  const base = id & 0x780;
  const node = id & 0x7f;
  if (node === 0) return null;
  if (base === 0x080) return decodeEmcy(f, node);
  if (base === 0x580) return decodeSdo(f, node, false);
  if (base === 0x600) return decodeSdo(f, node, true);
  if (base === 0x700) return decodeHeartbeat(f, node);
  const pdo = PDO_BASES.get(base);
  if (pdo !== undefined) {
    const [service, n] = pdo;
    const name = `${service === 'tpdo' ? 'TPDO' : 'RPDO'}${n} node ${node}`;
    if (f.rtr) return msg(service, `${name} request`, { rtr: true }, { node, pdo: n });
    const bytes = hexBytes(f.data, 0, f.data.length);
    return msg(service, `${name}: ${bytes || '(empty)'}`, { data: bytes }, { node, pdo: n });
  }
  return null;
}
