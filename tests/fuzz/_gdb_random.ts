/**
 * A small seeded random source for fuzz targets: xorshift32 over a state
 * scrambled from the seed, so the same seed gives the same cases on every
 * run and machine.
 *
 * @module
 */

import type { FuzzRandom } from "./_target.ts";

/**
 * A deterministic {@link FuzzRandom}.
 *
 * @example
 * ```ts
 * import { SeededRandom } from "./_gdb_random.ts";
 * const a = new SeededRandom(7), b = new SeededRandom(7);
 * console.assert(a.int(1000) === b.int(1000));
 * ```
 */
export class SeededRandom implements FuzzRandom {
  /** The seed this source started from (for failure reports). */
  readonly seed: number;
  #state: number;

  constructor(seed: number) {
    if (!Number.isSafeInteger(seed)) throw new RangeError(`Invalid seed ${seed}: expected an integer`);
    this.seed = seed;
    // Spread nearby seeds apart (a multiplicative hash) and keep the state non-zero, which xorshift needs.
    this.#state = (Math.imul((seed ^ 0x5bd1e995) >>> 0, 0x9e3779b1) >>> 0) || 0x6d2b79f5;
    for (let i = 0; i < 8; i++) this.#next();
  }

  #next(): number {
    let x = this.#state;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.#state = x >>> 0;
    return this.#state;
  }

  int(bound: number): number {
    if (!Number.isInteger(bound) || bound < 1) throw new RangeError(`Invalid bound ${bound}: expected an integer >= 1`);
    // Two draws make 53 bits, so large bounds stay uniform enough for fuzzing.
    const value = (this.#next() * 0x200000 + (this.#next() >>> 11)) / 2 ** 53;
    return Math.floor(value * bound);
  }

  bytes(length: number): Uint8Array {
    const out = new Uint8Array(length);
    for (let i = 0; i < length; i++) out[i] = this.#next() & 0xff;
    return out;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new RangeError("Cannot pick from an empty list");
    return items[this.int(items.length)]!;
  }
}
