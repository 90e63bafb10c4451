/**
 * Fuzz input: a byte string read as a sequence of decisions. Every target is a pure function of its
 * input bytes, so a failing input saved to a file reproduces the failure exactly. Reads past the end
 * return 0 (and `done` turns true), so any byte string is a valid input.
 */
export class FuzzInput {
  private pos = 0;
  readonly bytes: Uint8Array;
  constructor(bytes: Uint8Array) {
    this.bytes = bytes;
  }

  get done(): boolean {
    return this.pos >= this.bytes.length;
  }

  u8(): number {
    const b = this.pos < this.bytes.length ? this.bytes[this.pos]! : 0;
    this.pos++;
    return b;
  }

  u16(): number {
    return this.u8() | (this.u8() << 8);
  }

  u32(): number {
    return (this.u16() | (this.u16() << 16)) >>> 0;
  }

  /** 0..n-1 (n <= 256 uses one byte). */
  int(n: number): number {
    if (n <= 1) return 0;
    return (n <= 256 ? this.u8() : this.u32()) % n;
  }

  bool(): boolean {
    return (this.u8() & 1) === 1;
  }

  /** True with probability about k/256. */
  chance(k: number): boolean {
    if (this.done) return false;
    return this.u8() < k;
  }

  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }

  take(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.u8();
    return out;
  }
}

/** Deterministic pseudo-random bytes for a seed (mulberry32, 4 bytes per step). */
export function seededBytes(seed: number, length: number): Uint8Array {
  let a = (seed ^ 0x5bd1e995) >>> 0;
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i += 4) {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    t = (t ^ (t >>> 14)) >>> 0;
    for (let j = 0; j < 4 && i + j < length; j++) out[i + j] = (t >>> (8 * j)) & 0xff;
  }
  return out;
}

/** Thrown by a target when an invariant fails (as opposed to an unexpected exception). */
export class InvariantError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'InvariantError';
  }
}

export function check(cond: boolean, message: string): asserts cond {
  if (!cond) throw new InvariantError(message);
}
