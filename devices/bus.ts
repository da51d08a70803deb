/**
 * Address buses: the port-I/O bus and the MMIO bus. A device sees offsets
 * into its own range, never absolute addresses (as in Firecracker's bus),
 * and ranges may not overlap.
 *
 * @module
 */
import { hex } from "../core/hex.ts";

/** A device on the port-I/O bus. Values are at most 32 bits. */
export interface IoDevice {
  /** Reads `size` bytes (1, 2 or 4) at `offset` from the device's base port. */
  read(offset: number, size: number): number;
  /** Writes `size` bytes at `offset`. */
  write(offset: number, size: number, value: number): void;
}

/** A device on the MMIO bus. Values are up to 64 bits, as bigint. */
export interface MmioDevice {
  /** Reads `size` bytes (1, 2, 4 or 8) at `offset` from the device's base address. */
  read(offset: bigint, size: number): bigint;
  /** Writes `size` bytes at `offset`. */
  write(offset: bigint, size: number, value: bigint): void;
}

/** One claimed range of a bus. */
export interface BusEntry<D, A> {
  /** First address of the range. */
  readonly base: A;
  /** Number of addresses (ports or bytes). */
  readonly size: A;
  /** Who claimed it, for listings and error messages. */
  readonly name: string;
  /** The device. */
  readonly device: D;
}

/**
 * An address bus generic over the address type (number for ports, bigint
 * for physical addresses).
 *
 * @example
 * ```ts
 * import { IoBus } from "./bus.ts";
 * const bus = new IoBus();
 * bus.insert(0x3f8, 8, "com1", { read: () => 0, write: () => {} });
 * bus.find(0x3fd)?.name; // "com1"
 * ```
 */
export class Bus<D, A extends number | bigint> {
  #entries: BusEntry<D, A>[] = [];
  #last: BusEntry<D, A> | undefined;
  readonly #kind: string;

  constructor(kind: string) {
    this.#kind = kind;
  }

  /** Claims `[base, base + size)`; throws a RangeError when it overlaps a claimed range. */
  insert(base: A, size: A, name: string, device: D): BusEntry<D, A> {
    if (size <= 0) throw new RangeError(`Cannot insert ${name} on the ${this.#kind} bus: size ${size} is not positive`);
    const end = (base as bigint) + (size as bigint);
    for (const entry of this.#entries) {
      const entryEnd = (entry.base as bigint) + (entry.size as bigint);
      if (base < entryEnd && entry.base < end) {
        const last = (to: bigint | number) => typeof to === "bigint" ? to - 1n : to - 1;
        throw new RangeError(
          `Cannot insert ${name} at ${hex(base)}-${hex(last(end))} on the ${this.#kind} bus: ` +
            `it overlaps ${entry.name} at ${hex(entry.base)}-${hex(last(entryEnd))}`,
        );
      }
    }
    const entry = { base, size, name, device };
    this.#entries.push(entry);
    this.#entries.sort((a, b) => (a.base < b.base ? -1 : a.base > b.base ? 1 : 0));
    return entry;
  }

  /** Removes a claimed range (by its entry or its name). Returns whether one was removed. */
  remove(which: BusEntry<D, A> | string): boolean {
    const index = this.#entries.findIndex((e) => typeof which === "string" ? e.name === which : e === which);
    if (index < 0) return false;
    this.#entries.splice(index, 1);
    this.#last = undefined;
    return true;
  }

  /** The range claiming `address` (the device's offset is `address - entry.base`). */
  find(address: A): BusEntry<D, A> | undefined {
    const last = this.#last;
    if (last !== undefined && address >= last.base && address < (last.base as bigint) + (last.size as bigint)) {
      return last;
    }
    for (const entry of this.#entries) {
      if (address < entry.base) break;
      if (address < (entry.base as bigint) + (entry.size as bigint)) {
        this.#last = entry;
        return entry;
      }
    }
    return undefined;
  }

  /** Claimed ranges in address order. */
  get entries(): readonly BusEntry<D, A>[] {
    return this.#entries;
  }
}

/** The port-I/O bus (ports 0-0xffff). */
export class IoBus extends Bus<IoDevice, number> {
  constructor() {
    super("I/O");
  }
}

/** The MMIO bus (guest physical addresses not backed by RAM). */
export class MmioBus extends Bus<MmioDevice, bigint> {
  constructor() {
    super("MMIO");
  }
}
