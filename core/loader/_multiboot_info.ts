// Internal: lays out and queues the Multiboot 1 information structure, its
// strings, its memory map and the modules, above the loaded kernel.

import { alignUp, hex, type LoadPlan } from "./_plan.ts";
import type { MultibootModule } from "./types.ts";

const PAGE = 0x1000;
/** Size of struct multiboot_info up to and including color_info. */
export const INFO_STRUCT_SIZE = 116;
/** Size of one memory map entry, its leading size field included. */
export const MMAP_ENTRY_SIZE = 24;
/** Size of one module entry. */
export const MODULE_ENTRY_SIZE = 16;

/** Info flags hvsh sets: mem (0), cmdline (2), mods (3), mmap (6), loader name (9). */
export const INFO_FLAGS = (1 << 0) | (1 << 2) | (1 << 3) | (1 << 6) | (1 << 9);

/** Start of the EBDA / legacy hole reported as reserved. */
const LOW_RAM_TOP = 0x9fc00;
/** The first hole in guest RAM the machine guarantees: 3 GiB. */
const HOLE_START = 0xc0000000;
const FOUR_GIB = 0x100000000;

/** Ranges the info area must never touch: page 0, the machine's 0x8000-0xd000 area, the legacy hole. */
const FORBIDDEN: readonly [number, number][] = [
  [0, PAGE],
  [0x8000, 0xd000],
  [LOW_RAM_TOP, 0x100000],
];

interface MemoryRegion {
  base: number;
  length: number;
  type: 1 | 2;
}

/** The BIOS-style memory map reported to the kernel for `ramSize` bytes of RAM. */
export function memoryMap(ramSize: number): MemoryRegion[] {
  const map: MemoryRegion[] = [];
  const low = Math.min(ramSize, LOW_RAM_TOP);
  if (low > 0) map.push({ base: 0, length: low, type: 1 });
  map.push({ base: LOW_RAM_TOP, length: 0xa0000 - LOW_RAM_TOP, type: 2 });
  map.push({ base: 0xf0000, length: 0x10000, type: 2 });
  const belowHole = Math.min(ramSize, HOLE_START);
  if (belowHole > 0x100000) {
    map.push({ base: 0x100000, length: belowHole - 0x100000, type: 1 });
  }
  if (ramSize > HOLE_START) {
    map.push({ base: FOUR_GIB, length: ramSize - HOLE_START, type: 1 });
  }
  return map;
}

/** What the kernel is told besides the memory layout. */
export interface MultibootInfoInput {
  /** End (exclusive) of everything the kernel image occupies. */
  imageEnd: number;
  /** The full command line, argv[0] included. */
  cmdline: string;
  /** Modules, in order. */
  modules: readonly MultibootModule[];
}

/**
 * Places the info area above the image, reserves it in `plan` (which checks
 * RAM and overlaps) and queues its contents. Returns its address and size.
 */
export function planMultibootInfo(
  plan: LoadPlan,
  ramSize: number,
  prefix: string,
  input: MultibootInfoInput,
): { address: number; size: number } {
  const encoder = new TextEncoder();
  const map = memoryMap(ramSize);
  const cmdline = encoder.encode(`${input.cmdline}\0`);
  const loaderName = encoder.encode("hvsh\0");
  const moduleStrings = input.modules.map((m) => encoder.encode(`${m.cmdline}\0`));

  // Offsets relative to the (page-aligned) start of the area.
  const mmapAt = alignUp(INFO_STRUCT_SIZE, 8);
  const modsAt = mmapAt + map.length * MMAP_ENTRY_SIZE;
  const cmdlineAt = modsAt + input.modules.length * MODULE_ENTRY_SIZE;
  const loaderNameAt = cmdlineAt + cmdline.length;
  const stringsAt: number[] = [];
  let headerEnd = loaderNameAt + loaderName.length;
  for (const s of moduleStrings) {
    stringsAt.push(headerEnd);
    headerEnd += s.length;
  }
  const dataAt: number[] = [];
  let size = headerEnd;
  for (const m of input.modules) {
    const at = alignUp(size, PAGE);
    dataAt.push(at);
    size = at + m.data.length;
  }

  // Lowest page-aligned address above the image clear of forbidden ranges.
  let address = alignUp(input.imageEnd, PAGE);
  for (let moved = true; moved;) {
    moved = false;
    for (const [start, end] of FORBIDDEN) {
      if (address < end && start < address + size) {
        address = alignUp(end, PAGE);
        moved = true;
      }
    }
  }
  const what = input.modules.length === 0
    ? "multiboot info area"
    : `multiboot info area (with ${input.modules.length} module${input.modules.length === 1 ? "" : "s"})`;
  if (address + size > FOUR_GIB) {
    throw new RangeError(
      `${prefix}${what} would end at ${hex(address + size)}, beyond the 4 GiB a 32-bit kernel can address`,
    );
  }
  plan.reserve(what, address, size);

  const header = new Uint8Array(headerEnd);
  const view = new DataView(header.buffer);
  const u32 = (at: number, value: number) => view.setUint32(at, value, true);
  const lowKiB = Math.floor(Math.min(ramSize, LOW_RAM_TOP) / 1024);
  const upperKiB = Math.max(0, Math.floor((Math.min(ramSize, HOLE_START) - 0x100000) / 1024));
  u32(0, INFO_FLAGS);
  u32(4, lowKiB); // mem_lower
  u32(8, upperKiB); // mem_upper
  u32(16, address + cmdlineAt); // cmdline
  u32(20, input.modules.length); // mods_count
  u32(24, address + modsAt); // mods_addr
  u32(44, map.length * MMAP_ENTRY_SIZE); // mmap_length
  u32(48, address + mmapAt); // mmap_addr
  u32(64, address + loaderNameAt); // boot_loader_name
  for (const [i, region] of map.entries()) {
    const at = mmapAt + i * MMAP_ENTRY_SIZE;
    u32(at, MMAP_ENTRY_SIZE - 4);
    view.setBigUint64(at + 4, BigInt(region.base), true);
    view.setBigUint64(at + 12, BigInt(region.length), true);
    u32(at + 20, region.type);
  }
  for (const [i, m] of input.modules.entries()) {
    const at = modsAt + i * MODULE_ENTRY_SIZE;
    const start = address + (dataAt[i] ?? 0);
    u32(at, start); // mod_start
    u32(at + 4, start + m.data.length); // mod_end
    u32(at + 8, address + (stringsAt[i] ?? 0)); // string
    u32(at + 12, 0); // reserved
  }
  header.set(cmdline, cmdlineAt);
  header.set(loaderName, loaderNameAt);
  for (const [i, s] of moduleStrings.entries()) header.set(s, stringsAt[i] ?? 0);

  plan.write(address, header);
  for (const [i, m] of input.modules.entries()) {
    const at = address + (dataAt[i] ?? 0);
    // Zero the padding before each module so no stale bytes sit in the area.
    const previousEnd = i === 0
      ? address + headerEnd
      : address + (dataAt[i - 1] ?? 0) + (input.modules[i - 1]?.data.length ?? 0);
    plan.fill(previousEnd, at - previousEnd, 0);
    plan.write(at, m.data);
  }
  return { address, size };
}
