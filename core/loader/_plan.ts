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

/** A reserved range of guest physical memory. */
export interface Region {
  label: string;
  start: number;
  end: number;
}

/** A range to reserve: `size` bytes at `start`, named `label` in errors. */
export interface Reservation {
  label: string;
  start: bigint | number;
  size: number;
}

type Op =
  | { kind: "write"; addr: number; bytes: Uint8Array }
  | { kind: "fill"; addr: number; len: number; value: number };

/** Index of the first region in `sorted` whose end lies above `address` (sorted.length if none). */
function firstEndingAbove(sorted: readonly Region[], address: number): number {
  let low = 0;
  let high = sorted.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (sorted[middle]!.end > address) high = middle;
    else low = middle + 1;
  }
  return low;
}

/**
 * Collects the regions an image occupies and the writes that fill them.
 * {@linkcode LoadPlan.reserve} throws on anything outside RAM or overlapping;
 * nothing reaches the target until {@linkcode LoadPlan.apply}. Regions are
 * kept sorted, so checking n segments costs O(n log n), not O(n²).
 */
export class LoadPlan {
  #target: LoadTarget;
  #prefix: string;
  /** Non-overlapping, sorted by start. */
  #sorted: Region[] = [];
  #ops: Op[] = [];

  constructor(target: LoadTarget, prefix: string) {
    this.#target = target;
    this.#prefix = prefix;
    // What the machine already holds (firmware tables): an image must not land on it.
    const held = (target.reserved ?? []).filter((r) =>
      r.size > 0 && r.start >= 0 && r.start + r.size <= target.ramSize
    );
    this.reserveAll(held);
  }

  /** The regions reserved so far, sorted by address. */
  get regions(): readonly Readonly<Region>[] {
    return this.#sorted;
  }

  /** Throws a RangeError unless `[start, start + size)` lies in guest RAM; returns start as a number. */
  #checkRange(label: string, start: bigint | number, size: number): number {
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
    if (!this.#target.isRam(begin, size)) {
      throw new RangeError(
        `${this.#prefix}${label} [${hex(begin)}, ${
          hex(Number(last))
        }) is not entirely in guest RAM (it crosses a hole)`,
      );
    }
    return begin;
  }

  #overlapError(region: Region, other: Region): RangeError {
    return new RangeError(
      `${this.#prefix}${region.label} [${hex(region.start)}, ${hex(region.end)}) overlaps ${other.label} [${
        hex(other.start)
      }, ${hex(other.end)})`,
    );
  }

  /** The reserved region that overlaps `[start, end)`, if any. */
  overlapping(start: number, end: number): Readonly<Region> | undefined {
    const candidate = this.#sorted[firstEndingAbove(this.#sorted, start)];
    return candidate !== undefined && candidate.start < end && start < end ? candidate : undefined;
  }

  /**
   * Reserves `[start, start + size)` for `label`; throws a RangeError if it is
   * not entirely in guest RAM or overlaps a region reserved before.
   * Returns `start` as a number.
   */
  reserve(label: string, start: bigint | number, size: number): number {
    return this.reserveAll([{ label, start, size }])[0]!;
  }

  /**
   * Reserves several ranges at once (each as {@linkcode LoadPlan.reserve}
   * would, in O(n log n)); nothing is reserved if one of them fails. Returns
   * their starts as numbers, in the order given.
   */
  reserveAll(items: readonly Reservation[]): number[] {
    const starts = items.map((item) => this.#checkRange(item.label, item.start, item.size));
    const added: (Region & { order: number })[] = [];
    items.forEach((item, order) => {
      const start = starts[order]!;
      if (item.size > 0) added.push({ label: item.label, start, end: start + item.size, order });
    });
    added.sort((a, b) => a.start - b.start || a.order - b.order);
    // Sorted by start, a region overlaps an earlier one exactly when it starts below the furthest end so far.
    let furthest: (Region & { order: number }) | undefined;
    for (const region of added) {
      if (furthest !== undefined && region.start < furthest.end) {
        const [later, earlier] = region.order > furthest.order ? [region, furthest] : [furthest, region];
        throw this.#overlapError(later, earlier);
      }
      if (furthest === undefined || region.end > furthest.end) furthest = region;
    }
    for (const region of added) {
      const other = this.overlapping(region.start, region.end);
      if (other !== undefined) throw this.#overlapError(region, other);
    }
    const merged: Region[] = [];
    let i = 0;
    for (const region of added) {
      while (i < this.#sorted.length && this.#sorted[i]!.start < region.start) merged.push(this.#sorted[i++]!);
      merged.push({ label: region.label, start: region.start, end: region.end });
    }
    while (i < this.#sorted.length) merged.push(this.#sorted[i++]!);
    this.#sorted = merged;
    return starts;
  }

  /**
   * The lowest `align`-aligned address in `[from, below)` where `size` bytes
   * are RAM, reserve nothing yet and avoid `avoid`; undefined when there is none.
   */
  findFree(
    size: number,
    align: number,
    from: number,
    below: number,
    avoid: readonly [number, number][] = [],
  ): number | undefined {
    let address = alignUp(from, align);
    while (address + size <= below) {
      const blocker = this.overlapping(address, address + size) ??
        avoid.map(([start, end]) => ({ start, end })).find((r) => r.start < address + size && address < r.end);
      if (blocker !== undefined) {
        address = alignUp(blocker.end, align);
        continue;
      }
      if (this.#target.isRam(address, size)) return address;
      // A hole: step a page at a time until RAM resumes (holes are page-aligned).
      address = alignUp(address + 1, Math.max(align, 0x1000));
    }
    return undefined;
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
