// Internal helpers of the loaders: number formatting, error prefixes and the
// load plan that validates every range before anything is written.

import type { LoadTarget } from "./types.ts";
import { hex } from "../hex.ts";

export { hex };

/** The start of an error message: `Cannot load ELF image "a.elf": `. */
export function errorPrefix(
  verb: "load" | "parse",
  what: string,
  path: string | undefined,
): string {
  return path === undefined || path === "" ? `Cannot ${verb} ${what}: ` : `Cannot ${verb} ${what} "${path}": `;
}

/** Rounds `value` up to a multiple of `align` (a power of two). */
export function alignUp(value: number, align: number): number {
  return Math.ceil(value / align) * align;
}

interface Region {
  label: string;
  start: number;
  end: number;
}

type Op =
  | { kind: "write"; addr: number; bytes: Uint8Array }
  | { kind: "fill"; addr: number; len: number; value: number };

/**
 * Collects the regions an image occupies and the writes that fill them.
 * {@linkcode LoadPlan.reserve} throws on anything outside RAM or overlapping;
 * nothing reaches the target until {@linkcode LoadPlan.apply}.
 */
export class LoadPlan {
  #target: LoadTarget;
  #prefix: string;
  #regions: Region[] = [];
  #ops: Op[] = [];

  constructor(target: LoadTarget, prefix: string) {
    this.#target = target;
    this.#prefix = prefix;
  }

  /** The regions reserved so far, in order of reservation. */
  get regions(): readonly Readonly<Region>[] {
    return this.#regions;
  }

  /**
   * Reserves `[start, start + size)` for `label`; throws a RangeError if it is
   * not entirely in guest RAM or overlaps a region reserved before.
   * Returns `start` as a number.
   */
  reserve(label: string, start: bigint | number, size: number): number {
    const ramSize = this.#target.ramSize;
    const first = BigInt(start);
    const last = first + BigInt(size);
    if (first < 0n) {
      throw new RangeError(
        `${this.#prefix}${label} starts at ${hex(first)}, below guest RAM`,
      );
    }
    if (first >= BigInt(ramSize)) {
      throw new RangeError(
        `${this.#prefix}${label} starts at ${hex(first)}, beyond guest RAM (${hex(ramSize)})`,
      );
    }
    if (last > BigInt(ramSize)) {
      throw new RangeError(
        `${this.#prefix}${label} ends at ${hex(last)}, beyond guest RAM (${hex(ramSize)})`,
      );
    }
    const begin = Number(first);
    const end = Number(last);
    if (!this.#target.isRam(begin, size)) {
      throw new RangeError(
        `${this.#prefix}${label} [${hex(begin)}, ${hex(end)}) is not entirely in guest RAM (it crosses a hole)`,
      );
    }
    if (size > 0) {
      for (const other of this.#regions) {
        if (begin < other.end && other.start < end) {
          throw new RangeError(
            `${this.#prefix}${label} [${hex(begin)}, ${hex(end)}) overlaps ${other.label} [${hex(other.start)}, ${
              hex(other.end)
            })`,
          );
        }
      }
      this.#regions.push({ label, start: begin, end });
    }
    return begin;
  }

  /** Queues a copy of `bytes` to `addr` (inside a reserved region). */
  write(addr: number, bytes: Uint8Array): void {
    if (bytes.length > 0) this.#ops.push({ kind: "write", addr, bytes });
  }

  /** Queues a fill of `[addr, addr + len)` with `value`. */
  fill(addr: number, len: number, value: number): void {
    if (len > 0) this.#ops.push({ kind: "fill", addr, len, value });
  }

  /** Performs the queued writes and fills, in order. */
  apply(): void {
    for (const op of this.#ops) {
      if (op.kind === "write") this.#target.write(op.addr, op.bytes);
      else this.#target.fill(op.addr, op.len, op.value);
    }
  }
}
