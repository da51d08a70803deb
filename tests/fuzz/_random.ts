// A seeded random source for the fuzz targets: xorshift128+ over BigInt-free
// 32-bit halves (mulberry32 seeds the state), so a seed replays the same cases.

import type { FuzzRandom } from "./_target.ts";

function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

/** A deterministic {@linkcode FuzzRandom}: xorshift128 seeded from `seed` through mulberry32. */
export class SeededRandom implements FuzzRandom {
  #x: number;
  #y: number;
  #z: number;
  #w: number;

  constructor(seed: number) {
    const next = mulberry32(seed);
    this.#x = next();
    this.#y = next();
    this.#z = next();
    this.#w = next() | 1; // never all zero
  }

  /** A uniform 32-bit unsigned integer. */
  u32(): number {
    const t = this.#x ^ (this.#x << 11);
    this.#x = this.#y;
    this.#y = this.#z;
    this.#z = this.#w;
    this.#w = (this.#w ^ (this.#w >>> 19) ^ (t ^ (t >>> 8))) >>> 0;
    return this.#w;
  }

  int(bound: number): number {
    if (!(bound >= 1)) throw new RangeError(`Invalid bound ${bound}: expected an integer >= 1`);
    if (bound <= 0x1_0000_0000) return Math.floor((this.u32() / 0x1_0000_0000) * bound);
    return Math.floor(((this.u32() * 0x1_0000_0000 + this.u32()) / 2 ** 64) * bound);
  }

  bytes(length: number): Uint8Array {
    const out = new Uint8Array(length);
    for (let i = 0; i < length; i++) out[i] = this.u32() & 0xff;
    return out;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new RangeError("Cannot pick from an empty list");
    return items[this.int(items.length)]!;
  }

  /** True with probability `p`. */
  chance(p: number): boolean {
    return this.u32() / 0x1_0000_0000 < p;
  }

  /** A random source for case `index` of a run seeded `seed` (so one case replays alone). */
  static forCase(seed: number, index: number): SeededRandom {
    return new SeededRandom((Math.imul(seed, 0x9e3779b1) ^ Math.imul(index + 1, 0x85ebca6b)) >>> 0);
  }
}
