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

/**
 * True when a 4 KiB page (or any byte array) holds only zero bytes. Plain
 * JavaScript, ~0.35 µs a page: node:buffer's native compare (~0.15 µs) would
 * load Deno's Node compatibility layer into every process (~6 ms and 6 MiB at
 * start). The snapshot code, which scans many pages and loads node:zlib
 * anyway, uses that one (core/snapshot/format.ts).
 */
export function isZeroPage(page: Uint8Array): boolean {
  const length = page.byteLength;
  if ((page.byteOffset & 3) !== 0 || (length & 63) !== 0) {
    for (let i = 0; i < length; i++) if (page[i] !== 0) return false;
    return true;
  }
  const words = new Int32Array(page.buffer, page.byteOffset, length >>> 2);
  let any = 0;
  for (let i = 0; i < words.length; i += 16) {
    any |= words[i]! | words[i + 1]! | words[i + 2]! | words[i + 3]! | words[i + 4]! | words[i + 5]! |
      words[i + 6]! | words[i + 7]! | words[i + 8]! | words[i + 9]! | words[i + 10]! | words[i + 11]! |
      words[i + 12]! | words[i + 13]! | words[i + 14]! | words[i + 15]!;
    if (any !== 0) return false;
  }
  return true;
}

/**
 * The pages of `[address, address + pages * 4096)` of this process that are
 * present in its page tables (/proc/self/pagemap bit 63), as indices from
 * `address`; undefined when the page map cannot be read.
 */
function presentPages(address: bigint, pages: number): number[] | undefined {
  let file: Deno.FsFile | undefined;
  try {
    file = Deno.openSync("/proc/self/pagemap", { read: true });
    file.seekSync(Number(address / 4096n) * 8, Deno.SeekMode.Start);
    const entries = new Uint8Array(pages * 8);
    let read = 0;
    while (read < entries.length) {
      const n = file.readSync(entries.subarray(read));
      if (n === null || n === 0) return undefined;
      read += n;
    }
    const words = new Uint32Array(entries.buffer);
    const present: number[] = [];
    // Bit 63 (present) and 62 (swapped) are in the high 32-bit word of each little-endian entry.
    for (let i = 0; i < pages; i++) if ((words[i * 2 + 1]! & 0xc000_0000) !== 0) present.push(i);
    return present;
  } catch {
    return undefined;
  } finally {
    file?.close();
  }
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
    const layout = GuestMemory.layout(size);
    // memfd-backed (shared), so that fork() can share it copy-on-write without copying.
    const mappings: HostMapping[] = [];
    try {
      for (const region of layout) mappings.push(HostMapping.memfd(region.size));
    } catch (error) {
      for (const mapping of mappings) mapping.close();
      throw error;
    }
    return new GuestMemory(mappings, layout.map((r) => r.base));
  }

  /** Where `size` bytes of RAM go: from 0, and above 4 GiB for what does not fit below the PCI hole. */
  static layout(size: number): { base: number; size: number }[] {
    if (size % 4096 !== 0) throw new RangeError(`Guest memory size ${size} is not a multiple of 4 KiB`);
    checkHostCanHold(size);
    const low = Math.min(size, PCI_HOLE_START);
    return size > low ? [{ base: 0, size: low }, { base: FOUR_GIB, size: size - low }] : [{ base: 0, size: low }];
  }

  /**
   * Maps RAM copy-on-write from a file (a snapshot's memory area):
   * `regions[i]` at guest `base` comes from `fileOffset` (page-aligned).
   * Every mapping of the same file shares the pages nobody has written.
   * `storedPages(i)` lists the region's pages that hold data in the file
   * (the rest read as zero), so snapshots of this memory skip the others.
   */
  static mapFile(
    path: string,
    regions: readonly { base: number; size: number; fileOffset: number }[],
    storedPages: (region: number) => Iterable<number>,
  ): GuestMemory {
    const mappings: HostMapping[] = [];
    try {
      for (const region of regions) mappings.push(HostMapping.privateFile(path, region.fileOffset, region.size));
    } catch (error) {
      for (const mapping of mappings) mapping.close();
      throw error;
    }
    const memory = new GuestMemory(mappings, regions.map((r) => r.base));
    memory.#fileStored = regions.map((_, i) => [...storedPages(i)]);
    return memory;
  }

  /** Pages each file-backed region holds in its file (see {@link mapFile}). */
  #fileStored: number[][] | undefined;
  /** False once anything may have written the memory since it was last frozen as a fork base. */
  #baseCurrent = false;
  /** Pages written by the host (devices, loaders, scripts) while {@link trackHostWrites} is on. */
  #hostDirty: Set<number> | undefined;

  /**
   * Records that the guest may write the memory (the machine calls it
   * before each run), so the next {@link fork} knows the frozen base is old.
   */
  noteGuestWrites(): void {
    this.#baseCurrent = false;
  }

  /**
   * Starts (or stops) recording the guest pages the host writes through this
   * object; migration adds them to KVM's dirty log, which sees only the
   * guest's own writes. Live views from {@link view} are not tracked.
   */
  trackHostWrites(on: boolean): void {
    this.#hostDirty = on ? new Set() : undefined;
  }

  /** Guest page numbers (address / 4096) the host wrote since the last call; empties the record. */
  takeHostWrites(): number[] {
    const pages = [...(this.#hostDirty ?? [])];
    this.#hostDirty?.clear();
    return pages;
  }

  #noteHostWrite(address: number, length: number): void {
    this.#baseCurrent = false;
    const dirty = this.#hostDirty;
    if (dirty === undefined) return;
    for (let page = Math.floor(address / 4096); page * 4096 < address + length; page++) dirty.add(page);
  }

  /**
   * The page indices (within region `index`) that may hold non-zero bytes;
   * every other page of the region reads as zero. Exact for memfd-backed RAM
   * (lseek SEEK_DATA); otherwise the pages present in this process's page
   * tables (/proc/self/pagemap) plus those of the backing file or memfd.
   * When the page map cannot be read, every page.
   */
  possiblyNonZeroPages(index: number): number[] {
    const mapping = this.#mappings[index];
    if (mapping === undefined) throw new RangeError(`No memory region ${index}`);
    const pageCount = mapping.size / 4096;
    const pages = new Set<number>();
    const addRanges = (ranges: [number, number][]) => {
      for (const [start, end] of ranges) {
        for (let page = Math.floor(start / 4096); page * 4096 < end; page++) pages.add(page);
      }
    };
    const memfdRanges = mapping.memfdDataRanges();
    if (mapping.backing === "memfd" && memfdRanges !== undefined) {
      addRanges(memfdRanges);
      return [...pages].sort((a, b) => a - b);
    }
    if (memfdRanges !== undefined) addRanges(memfdRanges);
    for (const page of this.#fileStored?.[index] ?? []) pages.add(page);
    const present = presentPages(mapping.address, pageCount);
    if (present === undefined) return Array.from({ length: pageCount }, (_, i) => i);
    for (const page of present) pages.add(page);
    return [...pages].sort((a, b) => a - b);
  }

  /** What backs each region (see HostMapping.backing). */
  get backings(): string[] {
    return this.#mappings.map((m) => m.backing);
  }

  /**
   * A copy of this memory that shares its pages copy-on-write: both map the
   * same frozen memfd MAP_PRIVATE, so a page is copied only when one of them
   * writes it. The first fork of memfd-backed RAM costs a remap and no copy;
   * a fork of memory that changed since its last fork (or of memory that is
   * not memfd-backed) first copies the non-zero pages into a new memfd.
   * Bytes planted by the debugger are not copied: the fork holds the
   * originals (this memory keeps its planted bytes).
   */
  fork(): GuestMemory {
    if (this.#mappings.length === 0) throw new Error("Cannot fork guest memory: the VM is closed");
    this.withOriginalBytes(() => {
      this.#mappings.forEach((mapping, index) => {
        if (mapping.backing === "memfd") {
          mapping.freeze();
        } else if (mapping.backing !== "memfd-private" || !this.#baseCurrent) {
          this.#rebase(index);
        }
      });
    });
    // Planted bytes went back into this memory's private pages; the base holds the originals, as forks need.
    this.#baseCurrent = true;
    const forked = this.#mappings.map((m) => m.forkPrivate());
    const copy = new GuestMemory(forked, this.regions.map((r) => r.base));
    copy.#baseCurrent = true;
    return copy;
  }

  /** Copies region `index`'s non-zero pages into a new memfd and maps this region copy-on-write over it. */
  #rebase(index: number): void {
    const mapping = this.#mappings[index]!;
    const base = HostMapping.memfd(mapping.size);
    try {
      for (const page of this.possiblyNonZeroPages(index)) {
        const at = page * 4096;
        const bytes = mapping.bytes.subarray(at, at + 4096);
        if (!isZeroPage(bytes)) base.bytes.set(bytes, at);
      }
      mapping.rebaseOnto(base);
    } finally {
      base.close();
    }
    this.#fileStored = undefined;
  }

  /**
   * Runs `action` with the debugger's planted bytes taken out (the guest's
   * original bytes in place), then plants them again: for code that copies
   * guest memory wholesale (snapshots, forks) through the region views.
   */
  withOriginalBytes<T>(action: () => T): T {
    const planted = [...this.#planted.keys()];
    for (const address of planted) this.#rawSet(address, this.#patches.get(address)!);
    try {
      return action();
    } finally {
      for (const address of planted) this.#rawSet(address, this.#planted.get(address)!);
    }
  }

  #rawSet(address: number, byte: number): void {
    const { region, offset } = this.#region(address, 1, "write");
    region.bytes[offset] = byte;
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
    this.#noteHostWrite(Number(address), length); // the caller may write through it
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
    this.#noteHostWrite(address, 1);
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
    this.#noteHostWrite(address, 1);
    region.bytes[offset] = original;
    this.#patches.delete(address);
    this.#planted.delete(address);
  }

  /** Copies bytes into guest memory (writes over planted bytes update the originals they hide). */
  write(address: Address, bytes: Uint8Array | readonly number[]): void {
    const { region, offset } = this.#region(address, bytes.length, "write");
    this.#noteHostWrite(Number(address), bytes.length);
    region.bytes.set(bytes, offset);
    if (this.#patches.size > 0) this.#repatch(Number(address), bytes.length, region);
  }

  /** Fills `[address, address + length)` with `value`. */
  fill(address: Address, length: number, value = 0): void {
    const { region, offset } = this.#region(address, length, "fill");
    this.#noteHostWrite(Number(address), length);
    region.bytes.fill(value, offset, offset + length);
    if (this.#patches.size > 0) this.#repatch(Number(address), length, region);
  }

  /** A DataView over each region's bytes, made once (page walks read entries on every breakpoint hit). */
  #views = new WeakMap<Uint8Array, DataView>();
  /** Where {@link #readView}'s view starts for the address asked. */
  #viewOffset = 0;

  /**
   * A view to read `length` bytes at `address` from, at {@link #viewOffset}:
   * the region's own (no copy) unless a planted byte hides among them.
   */
  #readView(address: Address, length: number): DataView {
    const { region, offset } = this.#region(address, length, "read");
    if (this.#patches.size > 0 && this.#plantedWithin(Number(address), length)) {
      const bytes = this.read(address, length);
      this.#viewOffset = 0;
      return new DataView(bytes.buffer, 0, length);
    }
    let view = this.#views.get(region.bytes);
    if (view === undefined) {
      view = new DataView(region.bytes.buffer, region.bytes.byteOffset, region.bytes.byteLength);
      this.#views.set(region.bytes, view);
    }
    this.#viewOffset = offset;
    return view;
  }

  #plantedWithin(address: number, length: number): boolean {
    for (const at of this.#patches.keys()) if (at >= address && at < address + length) return true;
    return false;
  }

  #writeScalar(address: Address, length: number, set: (view: DataView) => void): void {
    const bytes = new Uint8Array(length);
    set(new DataView(bytes.buffer));
    this.write(address, bytes);
  }

  /** Reads a byte. */
  readU8(address: Address): number {
    const view = this.#readView(address, 1);
    return view.getUint8(this.#viewOffset);
  }
  /** Reads a little-endian 16-bit value. */
  readU16(address: Address): number {
    const view = this.#readView(address, 2);
    return view.getUint16(this.#viewOffset, true);
  }
  /** Reads a little-endian 32-bit value. */
  readU32(address: Address): number {
    const view = this.#readView(address, 4);
    return view.getUint32(this.#viewOffset, true);
  }
  /** Reads a little-endian 64-bit value. */
  readU64(address: Address): bigint {
    const view = this.#readView(address, 8);
    return view.getBigUint64(this.#viewOffset, true);
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
