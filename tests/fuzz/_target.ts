/**
 * One fuzz target of `./hvsh fuzz`: generates cases from a seeded random source and checks that hvsh
 * handles each one as documented (a clear error, a clean stop, no crash, no hang, nothing leaked).
 *
 * @module
 */

/** A deterministic random source (same seed, same cases). */
export interface FuzzRandom {
  /** An integer in [0, bound). */
  int(bound: number): number;
  /** `length` random bytes. */
  bytes(length: number): Uint8Array;
  /** One element of `items`. */
  pick<T>(items: readonly T[]): T;
}

/** What a fuzz run found. */
export interface FuzzReport {
  /** Cases run. */
  cases: number;
  /** One line per case that broke a rule: what was generated (seed and case index) and what went wrong. */
  failures: string[];
}

/** A fuzz target. */
export interface FuzzTarget {
  /** Short name for `--only` (e.g. "images", "guests", "gdb-packets"). */
  name: string;
  /** One line for `./hvsh fuzz --help`. */
  description: string;
  /** Runs cases until `maxCases` have run or the clock passes `deadline` (performance.now() ms). */
  run(random: FuzzRandom, options: { maxCases: number; deadline: number }): Promise<FuzzReport>;
}
