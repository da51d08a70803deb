/**
 * Guest physical memory: RAM regions backed by host mappings, with holes.
 * Every access is bounds-checked and fails with a RangeError naming the
 * guest address.
 *
 * @module
 */

import { HostMapping } from "./kvm/kvm.ts";
import { hex } from "./hex.ts";

/** A guest address as a number or bigint. */
export type Address = number | bigint;

/** One RAM region of guest physical memory. */
export interface MemoryRegion {
  /** Guest physical address of its first byte. */
  readonly base: number;
  /** Size in bytes. */
  readonly size: number;
  /** The bytes, viewed over the host mapping. */
  readonly bytes: Uint8Array;
  /** Host virtual address of the mapping (for the KVM memory slot). */
  readonly hostAddress: bigint;
}

/** Start of the PCI hole: RAM above it moves to 4 GiB, as on a PC. */
export const PCI_HOLE_START = 0xc000_0000;
const FOUR_GIB = 0x1_0000_0000;

/** Parses a memory size such as `64M`, `1G`, `512K`, `65536` or a number of bytes. */
export function parseSize(size: string | number): number {
  if (typeof size === "number") {
    if (!Number.isSafeInteger(size) || size <= 0) throw new RangeError(`Invalid memory size: ${size}`);
    return size;
  }
  const match = /^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$/i.exec(size);
  if (match === null) {
    throw new SyntaxError(`Invalid memory size: ${JSON.stringify(size)} (expected e.g. 64M, 1G, 512K)`);
  }
  const units: Record<string, number> = { "": 1, k: 1 << 10, m: 1 << 20, g: 1 << 30, t: 2 ** 40 };
  const bytes = Number(match[1]) * units[match[2]!.toLowerCase()]!;
  if (bytes <= 0) throw new RangeError(`Invalid memory size: ${JSON.stringify(size)} is zero`);
  return bytes;
}

/**
 * Refuses guest RAM larger than the host's memory and swap together: such a
 * guest could never use it, and KVM would spend seconds (~4 s for 1 TiB
 * here) building its tables before the guest even starts.
 */
function checkHostCanHold(size: number): void {
  let host: { total: number; swapTotal: number };
  try {
    host = Deno.systemMemoryInfo();
  } catch {
    return; // without --allow-sys the host's size is unknown: let the allocation decide
  }
  const limit = host.total + host.swapTotal;
  if (size > limit) {
    const gib = (bytes: number) => `${(bytes / 2 ** 30).toFixed(bytes < 2 ** 30 ? 2 : 0)} GiB`;
    throw new RangeError(
      `Cannot give the guest ${gib(size)} of RAM: this host has ${gib(host.total)} of memory and ${
        host.swapTotal === 0 ? "no swap" : `${gib(host.swapTotal)} of swap`
      }`,
    );
  }
}

/**
 * Guest physical RAM.
 *
 * @example
 * ```ts ignore
 * const memory = GuestMemory.allocate(64 << 20);
 * memory.writeU32(0x1000, 0xdeadbeef);
 * memory.readU32(0x1000); // 0xdeadbeef
 * memory.close();
 * ```
 */
export class GuestMemory {
  /** RAM regions in address order. */
  readonly regions: readonly MemoryRegion[];
  /** Bytes of RAM in all regions. */
  readonly ramSize: number;
  #mappings: HostMapping[];
  /** Planted bytes (debugger breakpoints): physical address -> the original byte they hide. */
  #patches = new Map<number, number>();

  private constructor(mappings: HostMapping[], bases: number[]) {
    this.#mappings = mappings;
    this.regions = mappings.map((mapping, i) => ({
      base: bases[i]!,
      size: mapping.size,
      bytes: mapping.bytes,
      hostAddress: mapping.address,
    }));
    this.ramSize = mappings.reduce((total, m) => total + m.size, 0);
  }

  /**
   * Allocates `size` bytes of RAM at guest address 0, split around the PCI hole
   * (RAM above 3 GiB is placed from 4 GiB on, as on a PC).
   */
  static allocate(size: number): GuestMemory {
    if (size % 4096 !== 0) throw new RangeError(`Guest memory size ${size} is not a multiple of 4 KiB`);
    checkHostCanHold(size);
    const low = Math.min(size, PCI_HOLE_START);
    const mappings = [HostMapping.anonymous(low)];
    const bases = [0];
    if (size > low) {
      mappings.push(HostMapping.anonymous(size - low));
      bases.push(FOUR_GIB);
    }
    return new GuestMemory(mappings, bases);
  }

  /** Where the RAM ends: the first address above every region. */
  get end(): number {
    const last = this.regions[this.regions.length - 1]!;
    return last.base + last.size;
  }

  /** True when `[address, address + length)` is RAM, in one region. */
  isRam(address: Address, length = 1): boolean {
    return this.#locate(Number(address), length) !== undefined;
  }

  #locate(address: number, length: number): MemoryRegion | undefined {
    for (const region of this.regions) {
      if (address >= region.base && address + length <= region.base + region.size) return region;
    }
    return undefined;
  }

  #region(address: Address, length: number, verb: string): { region: MemoryRegion; offset: number } {
    if (this.#mappings.length === 0) throw new Error(`Cannot ${verb} guest memory: the VM is closed`);
    const at = Number(address);
    const region = Number.isSafeInteger(at) && at >= 0 && length >= 0 ? this.#locate(at, length) : undefined;
    if (region === undefined) {
      const ranges = this.regions.map((r) => `${hex(r.base)}-${hex(r.base + r.size - 1)}`).join(", ");
      throw new RangeError(
        `Cannot ${verb} ${length} bytes at guest physical ${hex(address)}: not in RAM (${ranges})`,
      );
    }
    return { region, offset: at - region.base };
  }

  /**
   * A live view of guest bytes (no copy): writes through it reach the guest.
   * The range must lie in one RAM region. It shows planted breakpoint bytes as
   * they are; use {@link read} for the guest's original bytes.
   */
  view(address: Address, length: number): Uint8Array {
    const { region, offset } = this.#region(address, length, "access");
    return region.bytes.subarray(offset, offset + length);
  }

  /**
   * Copies `length` bytes out of guest memory. Bytes planted by the debugger
   * read as the originals they hide.
   */
  read(address: Address, length: number): Uint8Array {
    const { region, offset } = this.#region(address, length, "read");
    const bytes = region.bytes.slice(offset, offset + length);
    if (this.#patches.size > 0) this.#unpatch(Number(address), bytes);
    return bytes;
  }

  /** Copies `length` bytes as the guest sees them, planted bytes included. */
  readRaw(address: Address, length: number): Uint8Array {
    const { region, offset } = this.#region(address, length, "read");
    return region.bytes.slice(offset, offset + length);
  }

  #unpatch(address: number, bytes: Uint8Array): void {
    for (const [at, original] of this.#patches) {
      if (at >= address && at < address + bytes.length) bytes[at - address] = original;
    }
  }

  /** After a write over planted bytes: the write lands in the originals and the planted bytes stay. */
  #repatch(address: number, length: number, region: MemoryRegion): void {
    for (const [at, original] of this.#patches) {
      if (at >= address && at < address + length) {
        const index = at - region.base;
        const written = region.bytes[index]!;
        this.#patches.set(at, written);
        region.bytes[index] = this.#planted.get(at) ?? original;
      }
    }
  }

  #planted = new Map<number, number>();

  /**
   * Plants `byte` at a physical address (a software breakpoint), hiding the
   * original from every read through this object. Returns the original.
   */
  plant(address: number, byte: number): number {
    const { region, offset } = this.#region(address, 1, "plant a byte at");
    const original = this.#patches.get(address) ?? region.bytes[offset]!;
    this.#patches.set(address, original);
    this.#planted.set(address, byte);
    region.bytes[offset] = byte;
    return original;
  }

  /** Restores the original byte under a planted one. */
  unplant(address: number): void {
    const original = this.#patches.get(address);
    if (original === undefined) return;
    const { region, offset } = this.#region(address, 1, "unplant a byte at");
    region.bytes[offset] = original;
    this.#patches.delete(address);
    this.#planted.delete(address);
  }

  /** Copies bytes into guest memory (writes over planted bytes update the originals they hide). */
  write(address: Address, bytes: Uint8Array | readonly number[]): void {
    const { region, offset } = this.#region(address, bytes.length, "write");
    region.bytes.set(bytes, offset);
    if (this.#patches.size > 0) this.#repatch(Number(address), bytes.length, region);
  }

  /** Fills `[address, address + length)` with `value`. */
  fill(address: Address, length: number, value = 0): void {
    const { region, offset } = this.#region(address, length, "fill");
    region.bytes.fill(value, offset, offset + length);
    if (this.#patches.size > 0) this.#repatch(Number(address), length, region);
  }

  #readView(address: Address, length: number): DataView {
    if (this.#patches.size > 0) {
      const bytes = this.read(address, length);
      return new DataView(bytes.buffer, 0, length);
    }
    const { region, offset } = this.#region(address, length, "read");
    return new DataView(region.bytes.buffer, region.bytes.byteOffset + offset, length);
  }

  #writeScalar(address: Address, length: number, set: (view: DataView) => void): void {
    const bytes = new Uint8Array(length);
    set(new DataView(bytes.buffer));
    this.write(address, bytes);
  }

  /** Reads a byte. */
  readU8(address: Address): number {
    return this.#readView(address, 1).getUint8(0);
  }
  /** Reads a little-endian 16-bit value. */
  readU16(address: Address): number {
    return this.#readView(address, 2).getUint16(0, true);
  }
  /** Reads a little-endian 32-bit value. */
  readU32(address: Address): number {
    return this.#readView(address, 4).getUint32(0, true);
  }
  /** Reads a little-endian 64-bit value. */
  readU64(address: Address): bigint {
    return this.#readView(address, 8).getBigUint64(0, true);
  }
  /** Writes a byte. */
  writeU8(address: Address, value: number): void {
    this.#writeScalar(address, 1, (view) => view.setUint8(0, value));
  }
  /** Writes a little-endian 16-bit value. */
  writeU16(address: Address, value: number): void {
    this.#writeScalar(address, 2, (view) => view.setUint16(0, value, true));
  }
  /** Writes a little-endian 32-bit value. */
  writeU32(address: Address, value: number): void {
    this.#writeScalar(address, 4, (view) => view.setUint32(0, value >>> 0, true));
  }
  /** Writes a little-endian 64-bit value (number or bigint). */
  writeU64(address: Address, value: number | bigint): void {
    this.#writeScalar(address, 8, (view) => view.setBigUint64(0, BigInt.asUintN(64, BigInt(value)), true));
  }

  /** Reads a NUL-terminated string (UTF-8), at most `maxLength` bytes. */
  readCString(address: Address, maxLength = 4096): string {
    const { region, offset } = this.#region(address, 1, "read");
    const limit = Math.min(region.size, offset + maxLength);
    const bytes = this.read(address, limit - offset);
    const end = bytes.indexOf(0);
    return new TextDecoder().decode(end < 0 ? bytes : bytes.subarray(0, end));
  }

  /** Writes a NUL-terminated string (UTF-8). */
  writeCString(address: Address, text: string): void {
    const encoded = new TextEncoder().encode(text);
    const bytes = new Uint8Array(encoded.length + 1);
    bytes.set(encoded);
    this.write(address, bytes);
  }

  /** True once {@link close} has run. */
  get closed(): boolean {
    return this.#mappings.length === 0;
  }

  /** Unmaps the RAM. Idempotent; later accesses throw. */
  close(): void {
    for (const mapping of this.#mappings) mapping.close();
    this.#mappings = [];
    (this as { regions: readonly MemoryRegion[] }).regions = [];
  }

  /** `using memory = GuestMemory.allocate(n)` unmaps it at scope exit. */
  [Symbol.dispose](): void {
    this.close();
  }
}
