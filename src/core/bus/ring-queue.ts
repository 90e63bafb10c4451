/**
 * Unbounded FIFO on a power-of-two ring buffer: O(1) push and shift (Array#shift is O(n) once V8 leaves
 * its fast path), no allocation except when the ring doubles. Bounds are the owner's business (a hub
 * port checks its queue limit before pushing), which keeps this class policy-free.
 */
export class RingQueue<T> {
  #buf: (T | undefined)[];
  #mask: number;
  #head = 0;
  #size = 0;

  /** @param initialCapacity rounded up to a power of two (at least 2). */
  constructor(initialCapacity = 16) {
    let cap = 2;
    while (cap < initialCapacity) cap *= 2;
    this.#buf = new Array<T | undefined>(cap).fill(undefined);
    this.#mask = cap - 1;
  }

  get size(): number {
    return this.#size;
  }

  /** Current slot count (grows by doubling; never shrinks). */
  get capacity(): number {
    return this.#buf.length;
  }

  push(value: T): void {
    if (this.#size === this.#buf.length) this.#grow();
    this.#buf[(this.#head + this.#size) & this.#mask] = value;
    this.#size++;
  }

  shift(): T | undefined {
    if (this.#size === 0) return undefined;
    const i = this.#head;
    const value = this.#buf[i];
    this.#buf[i] = undefined; // release the reference for the GC
    this.#head = (i + 1) & this.#mask;
    this.#size--;
    return value;
  }

  peek(): T | undefined {
    return this.#size === 0 ? undefined : this.#buf[this.#head];
  }

  /** Drops every element; returns how many there were. */
  clear(): number {
    const n = this.#size;
    for (let k = 0; k < n; k++) this.#buf[(this.#head + k) & this.#mask] = undefined;
    this.#head = 0;
    this.#size = 0;
    return n;
  }

  #grow(): void {
    const old = this.#buf;
    const cap = old.length * 2;
    const buf = new Array<T | undefined>(cap).fill(undefined);
    for (let k = 0; k < this.#size; k++) buf[k] = old[(this.#head + k) & this.#mask];
    this.#buf = buf;
    this.#mask = cap - 1;
    this.#head = 0;
  }
}
