/**
 * Encoders and decoders for vhost-user messages (both directions, so the back-end and the
 * TypeScript front-end share one definition of the wire format). Native byte order is little-endian
 * on every host we run on; the node layer refuses to start on a big-endian host.
 *
 * Decoders validate sizes and ranges once, at the edge, and return typed values. Every u64 that
 * becomes an address or a size must be below 2^53 so that JS arithmetic on it is exact.
 */
import { VhostError } from '../util/errors.js';
import { HEADER_SIZE, HeaderFlag, VRING_IDX_MASK, VRING_NOFD_MASK } from './protocol.js';

export interface VhostUserMessage {
  readonly request: number;
  readonly flags: number;
  readonly payload: Uint8Array;
  /** File descriptors that arrived with this message; the receiver owns them. */
  readonly fds: number[];
}

export interface Header {
  request: number;
  flags: number;
  size: number;
}

export function decodeHeader(b: Uint8Array): Header {
  const dv = new DataView(b.buffer, b.byteOffset, HEADER_SIZE);
  return { request: dv.getUint32(0, true), flags: dv.getUint32(4, true), size: dv.getUint32(8, true) };
}

export function encodeMessage(request: number, flags: number, payload?: Uint8Array): Uint8Array {
  const size = payload?.byteLength ?? 0;
  const out = new Uint8Array(HEADER_SIZE + size);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, request, true);
  dv.setUint32(4, flags, true);
  dv.setUint32(8, size, true);
  if (payload) out.set(payload, HEADER_SIZE);
  return out;
}

export function needsReply(flags: number): boolean {
  return (flags & HeaderFlag.NEED_REPLY) !== 0;
}

function view(p: Uint8Array): DataView {
  return new DataView(p.buffer, p.byteOffset, p.byteLength);
}

function expectSize(p: Uint8Array, size: number, what: string): DataView {
  if (p.byteLength !== size) {
    throw new VhostError('ERR_VU_BAD_SIZE', `${what}: payload is ${p.byteLength} bytes, expected ${size}`);
  }
  return view(p);
}

/** Reads a u64 that must be an exact JS number (< 2^53). */
function safeU64(dv: DataView, off: number, what: string): number {
  const v = dv.getBigUint64(off, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new VhostError('ERR_VU_BAD_VALUE', `${what} 0x${v.toString(16)} is beyond 2^53`);
  }
  return Number(v);
}

// ---- u64 -------------------------------------------------------------------------------------

export function decodeU64(p: Uint8Array, what = 'u64'): bigint {
  return expectSize(p, 8, what).getBigUint64(0, true);
}

export function encodeU64(v: bigint | number): Uint8Array {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt(v), true);
  return out;
}

// ---- vring state / address / fd index ---------------------------------------------------------

export interface VringState {
  index: number;
  num: number;
}

export function decodeVringState(p: Uint8Array): VringState {
  const dv = expectSize(p, 8, 'vring state');
  return { index: dv.getUint32(0, true), num: dv.getUint32(4, true) };
}

export function encodeVringState(s: VringState): Uint8Array {
  const out = new Uint8Array(8);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, s.index, true);
  dv.setUint32(4, s.num, true);
  return out;
}

export interface VringAddr {
  index: number;
  flags: number;
  /** Front-end virtual addresses. Note the wire order: desc, used, avail, log. */
  desc: number;
  used: number;
  avail: number;
  log: number;
}

export const VRING_ADDR_SIZE = 40;

export function decodeVringAddr(p: Uint8Array): VringAddr {
  const dv = expectSize(p, VRING_ADDR_SIZE, 'vring address');
  return {
    index: dv.getUint32(0, true),
    flags: dv.getUint32(4, true),
    desc: safeU64(dv, 8, 'descriptor table address'),
    used: safeU64(dv, 16, 'used ring address'),
    avail: safeU64(dv, 24, 'avail ring address'),
    // The log address is only meaningful with dirty logging, which we never offer.
    log: Number(dv.getBigUint64(32, true) & BigInt(Number.MAX_SAFE_INTEGER)),
  };
}

export function encodeVringAddr(a: VringAddr): Uint8Array {
  const out = new Uint8Array(VRING_ADDR_SIZE);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, a.index, true);
  dv.setUint32(4, a.flags, true);
  dv.setBigUint64(8, BigInt(a.desc), true);
  dv.setBigUint64(16, BigInt(a.used), true);
  dv.setBigUint64(24, BigInt(a.avail), true);
  dv.setBigUint64(32, BigInt(a.log), true);
  return out;
}

export interface VringFdIndex {
  index: number;
  noFd: boolean;
}

export function decodeVringFdIndex(p: Uint8Array): VringFdIndex {
  const v = decodeU64(p, 'vring fd index');
  if (v & ~BigInt(VRING_IDX_MASK | VRING_NOFD_MASK)) {
    throw new VhostError('ERR_VU_BAD_VALUE', `vring fd index 0x${v.toString(16)} has unknown bits`);
  }
  return { index: Number(v & BigInt(VRING_IDX_MASK)), noFd: (v & BigInt(VRING_NOFD_MASK)) !== 0n };
}

export function encodeVringFdIndex(index: number, noFd: boolean): Uint8Array {
  return encodeU64(BigInt(index & VRING_IDX_MASK) | (noFd ? BigInt(VRING_NOFD_MASK) : 0n));
}

// ---- memory regions ---------------------------------------------------------------------------

export interface MemRegionDesc {
  guestPhysAddr: number;
  size: number;
  userAddr: number;
  mmapOffset: number;
}

const REGION_SIZE = 32;

function decodeRegion(dv: DataView, off: number): MemRegionDesc {
  return {
    guestPhysAddr: safeU64(dv, off, 'guest_phys_addr'),
    size: safeU64(dv, off + 8, 'memory_size'),
    userAddr: safeU64(dv, off + 16, 'userspace_addr'),
    mmapOffset: safeU64(dv, off + 24, 'mmap_offset'),
  };
}

function encodeRegion(dv: DataView, off: number, r: MemRegionDesc): void {
  dv.setBigUint64(off, BigInt(r.guestPhysAddr), true);
  dv.setBigUint64(off + 8, BigInt(r.size), true);
  dv.setBigUint64(off + 16, BigInt(r.userAddr), true);
  dv.setBigUint64(off + 24, BigInt(r.mmapOffset), true);
}

/** SET_MEM_TABLE: {u32 nregions, u32 padding, region[nregions]}. */
export function decodeMemTable(p: Uint8Array, maxRegions: number): MemRegionDesc[] {
  if (p.byteLength < 8) throw new VhostError('ERR_VU_BAD_SIZE', 'memory table shorter than 8 bytes');
  const dv = view(p);
  const n = dv.getUint32(0, true);
  if (n === 0 || n > maxRegions) {
    throw new VhostError('ERR_VU_BAD_VALUE', `memory table with ${n} regions (1..${maxRegions} allowed)`);
  }
  // QEMU sends exactly 8 + 32*n bytes; older front-ends send the full 8-region array. Accept both.
  if (p.byteLength < 8 + REGION_SIZE * n || p.byteLength > 8 + REGION_SIZE * maxRegions) {
    throw new VhostError('ERR_VU_BAD_SIZE', `memory table of ${n} regions in ${p.byteLength} bytes`);
  }
  const out: MemRegionDesc[] = [];
  for (let i = 0; i < n; i++) out.push(decodeRegion(dv, 8 + REGION_SIZE * i));
  return out;
}

export function encodeMemTable(regions: readonly MemRegionDesc[]): Uint8Array {
  const out = new Uint8Array(8 + REGION_SIZE * regions.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, regions.length, true);
  regions.forEach((r, i) => {
    encodeRegion(dv, 8 + REGION_SIZE * i, r);
  });
  return out;
}

/** ADD_MEM_REG / REM_MEM_REG: {u64 padding, region}. */
export function decodeSingleRegion(p: Uint8Array): MemRegionDesc {
  const dv = expectSize(p, 8 + REGION_SIZE, 'memory region');
  return decodeRegion(dv, 8);
}

export function encodeSingleRegion(r: MemRegionDesc): Uint8Array {
  const out = new Uint8Array(8 + REGION_SIZE);
  encodeRegion(new DataView(out.buffer), 8, r);
  return out;
}

// ---- device config ----------------------------------------------------------------------------

export interface ConfigMsg {
  offset: number;
  size: number;
  flags: number;
  data: Uint8Array;
}

export const CONFIG_HEADER_SIZE = 12;

export function decodeConfig(p: Uint8Array, maxSize: number): ConfigMsg {
  if (p.byteLength < CONFIG_HEADER_SIZE) {
    throw new VhostError('ERR_VU_BAD_SIZE', `config message of ${p.byteLength} bytes`);
  }
  const dv = view(p);
  const offset = dv.getUint32(0, true);
  const size = dv.getUint32(4, true);
  const flags = dv.getUint32(8, true);
  if (size > maxSize || p.byteLength !== CONFIG_HEADER_SIZE + size) {
    throw new VhostError('ERR_VU_BAD_SIZE', `config message: size ${size} in a ${p.byteLength}-byte payload`);
  }
  return { offset, size, flags, data: p.subarray(CONFIG_HEADER_SIZE) };
}

export function encodeConfig(m: {
  offset: number;
  size: number;
  flags: number;
  data?: Uint8Array;
}): Uint8Array {
  const out = new Uint8Array(CONFIG_HEADER_SIZE + m.size);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, m.offset, true);
  dv.setUint32(4, m.size, true);
  dv.setUint32(8, m.flags, true);
  if (m.data) out.set(m.data.subarray(0, m.size), CONFIG_HEADER_SIZE);
  return out;
}
