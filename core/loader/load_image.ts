/**
 * Loading a kernel or boot image into guest memory: flat binaries, ELF
 * executables and Multiboot 1 kernels.
 *
 * @module
 */

import { detectFormat } from "./detect_format.ts";
import { type ElfImage, type ElfSymbol, EM_386, EM_X86_64, hasElfMagic, parseElf } from "./elf.ts";
import {
  findMultibootHeader,
  MULTIBOOT_BOOTLOADER_MAGIC,
  MULTIBOOT_HEADER_MAGIC,
  MULTIBOOT_SEARCH,
  type MultibootAddresses,
} from "./multiboot.ts";
import { planMultibootInfo } from "./_multiboot_info.ts";
import { planElfSegments } from "./_load_elf.ts";
import { errorPrefix, hex, LoadPlan } from "./_plan.ts";
import type { BootStructures, ImageFormat, LoadedImage, LoadOptions, LoadTarget, MultibootModule } from "./types.ts";
import { loadBzImage } from "./linux.ts";
import { loadPvh } from "./pvh.ts";
import { type E820Entry, e820Map } from "./e820.ts";
import { PCI_HOLE_START } from "../memory.ts";

/**
 * Where a flat image is loaded when no `loadAddress` is given.
 *
 * @example
 * ```ts
 * import { DEFAULT_FLAT_LOAD_ADDRESS } from "./load_image.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(DEFAULT_FLAT_LOAD_ADDRESS, 0x7c00);
 * ```
 */
export const DEFAULT_FLAT_LOAD_ADDRESS = 0x7c00;

const FORMATS: readonly string[] = ["auto", "flat", "elf", "multiboot", "bzimage", "pvh"];
const ET_EXEC = 2;
const ET_DYN = 3;
const ET_NAMES: Record<number, string> = {
  0: "ET_NONE",
  1: "ET_REL",
  2: "ET_EXEC",
  3: "ET_DYN",
  4: "ET_CORE",
};
const FOUR_GIB = 0x100000000;
/** Header flags bits 0-15 hvsh honours: page-align (0), memory info (1), video (2, ignored). */
const SUPPORTED_REQUIRED_FLAGS = 0b111;
const REAL_MODE_LIMIT = 0x100000;

const PREFIX_WHAT: Record<ImageFormat, string> = {
  flat: "flat image",
  elf: "ELF image",
  multiboot: "multiboot image",
  bzimage: "bzImage",
  pvh: "PVH kernel",
};

/**
 * Loads an image into guest memory and says how to enter it.
 *
 * Everything is validated before the first byte is written: an image that
 * is rejected leaves `target` untouched. Errors are a `SyntaxError` for an
 * unparsable image (truncated, bad magic or checksum, tables or segments
 * outside the file, inconsistent a.out kludge fields), a `TypeError` for a
 * well-formed image hvsh cannot boot (not x86, big-endian, an unsupported
 * multiboot flag, an option the format cannot use) and a `RangeError` for
 * placement (outside RAM, overlapping, entry outside the loaded image).
 *
 * - **flat**: copied to `loadAddress` (default 0x7c00, below 1 MiB), entered
 *   in real mode at `loadAddress`.
 * - **elf**: PT_LOAD segments copied to p_paddr (p_vaddr if every p_paddr is
 *   0), BSS zeroed; ELF32 is entered in protected mode, ELF64 in long mode, at
 *   e_entry (translated to a physical address when it lies in a segment's
 *   virtual range).
 * - **multiboot**: loaded by the a.out kludge fields (flags bit 16) or as
 *   ELF32/ELF64 (segments below 4 GiB); a multiboot info structure is built
 *   page-aligned above the image (never in page 0, 0x8000-0xd000 or
 *   0x9fc00-0x100000), followed by the modules; entered in protected mode
 *   with EAX = 0x2BADB002 and EBX = the info address.
 *
 * @param bytes The image file.
 * @param target Guest memory.
 * @param options Format, addresses, command line and modules.
 * @returns Where the image went and how to start it.
 *
 * @example A flat image in real mode
 * ```ts
 * import { loadImage } from "./load_image.ts";
 * import assert from "node:assert/strict";
 *
 * const ram = new Uint8Array(0x100000);
 * const target = {
 *   ramSize: ram.length,
 *   isRam: (addr: number, len: number) => addr + len <= ram.length,
 *   write: (addr: number, bytes: Uint8Array) => ram.set(bytes, addr),
 *   fill: (addr: number, len: number, value: number) =>
 *     ram.fill(value, addr, addr + len),
 * };
 *
 * const image = loadImage(new Uint8Array([0xf4]), target, { format: "flat" }); // hlt
 * assert.equal(image.format, "flat");
 * assert.equal(image.mode, "real");
 * assert.equal(image.entry, 0x7c00n);
 * assert.equal(ram[0x7c00], 0xf4);
 * ```
 *
 * @example A multiboot kernel with an initrd
 * ```ts ignore
 * import { loadImage } from "./load_image.ts";
 *
 * const image = loadImage(Deno.readFileSync("kernel.elf"), machine.memory, {
 *   path: "kernel.elf",
 *   cmdline: "console=ttyS0",
 *   modules: [{ data: Deno.readFileSync("initrd"), cmdline: "initrd" }],
 * });
 * // image.mode === "protected", image.registers.rax === 0x2BADB002n
 * ```
 */
export function loadImage(
  bytes: Uint8Array,
  target: LoadTarget,
  options: LoadOptions = {},
): LoadedImage {
  const requested = options.format ?? "auto";
  if (!FORMATS.includes(requested)) {
    throw new TypeError(
      `${errorPrefix("load", "image", options.path)}option format is ${
        JSON.stringify(requested)
      } (want "auto", "flat", "elf", "multiboot", "bzimage" or "pvh")`,
    );
  }
  const format = requested === "auto" ? detectFormat(bytes, options.path, options) : requested;
  const prefix = errorPrefix("load", PREFIX_WHAT[format], options.path);
  checkOptions(format, options, prefix);
  if (format === "bzimage" || format === "pvh") return loadLinuxImage(format, bytes, target, options);
  const plan = new LoadPlan(target, prefix);
  let image: LoadedImage;
  switch (format) {
    case "flat":
      image = planFlat(bytes, plan, options, prefix);
      break;
    case "elf":
      image = planElf(bytes, plan, options, prefix);
      break;
    case "multiboot":
      image = planMultiboot(bytes, plan, target.ramSize, options, prefix);
      break;
  }
  if (image.mode !== "real") image.bootStructures = planBootStructures(plan, image.mode, prefix);
  plan.apply();
  return image;
}

/** The boot GDT's size: six 8-byte descriptors (see Vcpu.enterProtectedMode). */
const BOOT_GDT_SIZE = 6 * 8;
/** PML4, PDPT and four page directories mapping the first 4 GiB with 2 MiB pages. */
const BOOT_PAGE_TABLES_SIZE = 6 * 0x1000;
/** Where boot structures go when the image leaves them free (the machine's long-standing layout). */
const USUAL_GDT = 0x500;
const USUAL_PAGE_TABLES = 0x1000;
/** The real-mode IVT and BDA below 0x500, and the EBDA, video and BIOS area: never used for boot structures. */
const KEEP_OUT: readonly [number, number][] = [[0, USUAL_GDT], [0x9fc00, REAL_MODE_LIMIT]];

/**
 * Reserves room for the boot GDT and (long mode) the page tables the machine
 * writes before entering the image: at the usual addresses when the image
 * and the machine leave them free, else at the lowest free RAM below 4 GiB.
 * Throws a RangeError naming what is in the way when there is no room.
 */
function planBootStructures(plan: LoadPlan, mode: "protected" | "long", prefix: string): BootStructures {
  const place = (label: string, size: number, align: number, usual: number): number => {
    const inWay = plan.overlapping(usual, usual + size);
    if (inWay === undefined && plan.findFree(size, align, usual, usual + size, KEEP_OUT) === usual) {
      return plan.reserve(label, usual, size);
    }
    const address = plan.findFree(size, align, USUAL_GDT, FOUR_GIB, KEEP_OUT);
    if (address === undefined) {
      const why = inWay === undefined ? "is not RAM" : `holds ${inWay.label} [${hex(inWay.start)}, ${hex(inWay.end)})`;
      throw new RangeError(
        `${prefix}no room for ${label} (${hex(size)} bytes): ${hex(usual)} ${why} and no other free RAM below 4 GiB`,
      );
    }
    return plan.reserve(label, address, size);
  };
  const gdt = place("the boot GDT", BOOT_GDT_SIZE, 8, USUAL_GDT);
  if (mode === "protected") return { gdt };
  return { gdt, pageTables: place("the boot page tables", BOOT_PAGE_TABLES_SIZE, 0x1000, USUAL_PAGE_TABLES) };
}

function checkOptions(format: ImageFormat, options: LoadOptions, prefix: string): void {
  if (options.loadAddress !== undefined && format !== "flat") {
    throw new TypeError(
      `${prefix}option loadAddress (${hex(options.loadAddress)}) applies only to flat images`,
    );
  }
  const takesCmdline = format === "multiboot" || format === "bzimage" || format === "pvh";
  if ((options.cmdline ?? "") !== "" && !takesCmdline) {
    throw new TypeError(
      `${prefix}option cmdline (${JSON.stringify(options.cmdline)}) applies only to multiboot, bzImage and PVH kernels`,
    );
  }
  const modules = options.modules ?? [];
  if (modules.length > 0 && format !== "multiboot" && format !== "pvh" && format !== "bzimage") {
    throw new TypeError(
      `${prefix}option modules (${modules.length}) applies only to multiboot, bzImage and PVH kernels`,
    );
  }
  if (modules.length > 1 && format === "bzimage") {
    throw new TypeError(`${prefix}option modules has ${modules.length} entries; a bzImage takes one, the initrd`);
  }
  for (const [i, m] of modules.entries()) {
    if (!(m.data instanceof Uint8Array)) {
      throw new TypeError(`${prefix}module ${i} data is not a Uint8Array`);
    }
    if (typeof m.cmdline !== "string") {
      throw new TypeError(`${prefix}module ${i} cmdline is not a string`);
    }
  }
}

/** The memory map of `ramSize` bytes of RAM from 0, split around the PCI hole as GuestMemory does. */
function defaultMemoryMap(ramSize: number): E820Entry[] {
  const regions = ramSize <= PCI_HOLE_START
    ? [{ base: 0, size: ramSize }]
    : [{ base: 0, size: PCI_HOLE_START }, { base: 0x1_0000_0000, size: ramSize - PCI_HOLE_START }];
  return e820Map(regions);
}

/** A bzImage or a PVH vmlinux: the first module is the initrd. */
function loadLinuxImage(
  format: "bzimage" | "pvh",
  bytes: Uint8Array,
  target: LoadTarget,
  options: LoadOptions,
): LoadedImage {
  const [initrd, ...rest] = options.modules ?? [];
  const linuxOptions = {
    memoryMap: options.memoryMap ?? defaultMemoryMap(target.ramSize),
    cmdline: options.cmdline,
    initrd: initrd?.data,
    path: options.path,
    rsdp: options.rsdp,
  };
  return format === "bzimage"
    ? loadBzImage(bytes, target, linuxOptions)
    : loadPvh(bytes, target, { ...linuxOptions, modules: rest });
}

function planFlat(
  bytes: Uint8Array,
  plan: LoadPlan,
  options: LoadOptions,
  prefix: string,
): LoadedImage {
  const address = options.loadAddress ?? DEFAULT_FLAT_LOAD_ADDRESS;
  if (!Number.isSafeInteger(address) || address < 0) {
    throw new RangeError(`${prefix}option loadAddress is ${address}, not an address`);
  }
  if (address >= REAL_MODE_LIMIT) {
    throw new RangeError(
      `${prefix}option loadAddress is ${hex(address)}, beyond the 1 MiB a real-mode entry can reach`,
    );
  }
  if (bytes.length === 0) {
    throw new SyntaxError(`${prefix}the image is empty (0 bytes)`);
  }
  plan.reserve("the image", address, bytes.length);
  plan.write(address, bytes);
  return {
    format: "flat",
    mode: "real",
    entry: BigInt(address),
    registers: {},
    symbols: [],
    lowest: address,
    end: address + bytes.length,
  };
}

/** Refuses an ELF whose class and machine disagree (ELF32 must be EM_386, ELF64 EM_X86_64). */
function checkElfMachine(elf: ElfImage, prefix: string): void {
  const want = elf.class === 64 ? EM_X86_64 : EM_386;
  if (elf.machine !== want) {
    throw new TypeError(
      `${prefix}e_machine is ${elf.machine} (${elf.machine === EM_386 ? "EM_386" : "EM_X86_64"}) but EI_CLASS is ${
        elf.class === 64 ? 2 : 1
      } (ELF${elf.class}); an ELF${elf.class} kernel must be ${want === EM_386 ? "EM_386 (3)" : "EM_X86_64 (62)"}`,
    );
  }
}

function checkElfType(elf: ElfImage, prefix: string): void {
  checkElfMachine(elf, prefix);
  if (elf.type !== ET_EXEC && elf.type !== ET_DYN) {
    throw new TypeError(
      `${prefix}e_type is ${elf.type} (${
        ET_NAMES[elf.type] ?? "unknown"
      }); only ET_EXEC (2) and ET_DYN (3) images can be loaded`,
    );
  }
}

function planElf(
  bytes: Uint8Array,
  plan: LoadPlan,
  options: LoadOptions,
  prefix: string,
): LoadedImage {
  const elf = parseElf(bytes, options.path);
  checkElfType(elf, prefix);
  const segments = planElfSegments(elf, bytes, plan, prefix);
  return {
    format: "elf",
    mode: elf.class === 64 ? "long" : "protected",
    entry: segments.entry,
    registers: {},
    symbols: elf.symbols,
    lowest: segments.lowest,
    end: segments.end,
  };
}

function planMultiboot(
  bytes: Uint8Array,
  plan: LoadPlan,
  ramSize: number,
  options: LoadOptions,
  prefix: string,
): LoadedImage {
  const header = findMultibootHeader(bytes, options.path);
  if (header === undefined) {
    throw new SyntaxError(
      `${prefix}no multiboot header (magic ${hex(MULTIBOOT_HEADER_MAGIC)}) in the first ${MULTIBOOT_SEARCH} bytes`,
    );
  }
  const unsupported = header.flags & 0xffff & ~SUPPORTED_REQUIRED_FLAGS;
  if (unsupported !== 0) {
    const bit = 31 - Math.clz32(unsupported & -unsupported);
    throw new TypeError(
      `${prefix}header flags ${hex(header.flags)} set bit ${bit}, a required feature hvsh does not support`,
    );
  }
  let loaded: { entry: bigint; lowest: number; end: number };
  let symbols: ElfSymbol[];
  if (header.addresses !== undefined) {
    loaded = planAout(bytes, header.offset, header.addresses, plan, prefix);
    symbols = hasElfMagic(bytes) ? symbolsOrNone(bytes) : [];
  } else {
    if (!hasElfMagic(bytes)) {
      throw new SyntaxError(
        `${prefix}header flags ${
          hex(header.flags)
        } leave bit 16 (a.out kludge) clear, so the image must be ELF, but it has no ELF magic`,
      );
    }
    const elf = parseElf(bytes, options.path);
    checkElfType(elf, prefix);
    loaded = planElfSegments(elf, bytes, plan, prefix, {
      address: BigInt(FOUR_GIB),
      why: "the 4 GiB a 32-bit multiboot kernel can address",
    });
    symbols = elf.symbols;
  }
  const path = options.path ?? "";
  const args = options.cmdline ?? "";
  const cmdline = path === "" ? args : args === "" ? path : `${path} ${args}`;
  const bootInfo = planMultibootInfo(plan, ramSize, prefix, {
    imageEnd: loaded.end,
    cmdline,
    modules: options.modules ?? ([] as MultibootModule[]),
  });
  return {
    format: "multiboot",
    mode: "protected",
    entry: loaded.entry,
    registers: {
      rax: BigInt(MULTIBOOT_BOOTLOADER_MAGIC),
      rbx: BigInt(bootInfo.address),
    },
    symbols,
    lowest: loaded.lowest,
    end: loaded.end,
    bootInfo,
  };
}

/** Symbols of an a.out-kludge kernel that is also an ELF file, if readable. */
function symbolsOrNone(bytes: Uint8Array): ElfSymbol[] {
  try {
    return parseElf(bytes).symbols;
  } catch {
    return [];
  }
}

function planAout(
  bytes: Uint8Array,
  headerOffset: number,
  a: MultibootAddresses,
  plan: LoadPlan,
  prefix: string,
): { entry: bigint; lowest: number; end: number } {
  if (a.headerAddr < a.loadAddr) {
    throw new SyntaxError(
      `${prefix}header_addr ${hex(a.headerAddr)} is below load_addr ${hex(a.loadAddr)}`,
    );
  }
  const loadOffset = headerOffset - (a.headerAddr - a.loadAddr);
  if (loadOffset < 0) {
    throw new SyntaxError(
      `${prefix}header_addr ${hex(a.headerAddr)} - load_addr ${hex(a.loadAddr)} = ${
        hex(a.headerAddr - a.loadAddr)
      } exceeds the header's file offset ${hex(headerOffset)}`,
    );
  }
  let loadSize: number;
  if (a.loadEndAddr === 0) {
    loadSize = bytes.length - loadOffset;
  } else {
    if (a.loadEndAddr < a.loadAddr) {
      throw new SyntaxError(
        `${prefix}load_end_addr ${hex(a.loadEndAddr)} is below load_addr ${hex(a.loadAddr)}`,
      );
    }
    loadSize = a.loadEndAddr - a.loadAddr;
    if (loadOffset + loadSize > bytes.length) {
      throw new SyntaxError(
        `${prefix}load_end_addr ${hex(a.loadEndAddr)} needs file bytes up to ${
          hex(loadOffset + loadSize)
        }, beyond the end of the file (${hex(bytes.length)} bytes)`,
      );
    }
  }
  const loadEnd = a.loadAddr + loadSize;
  if (loadEnd > FOUR_GIB) {
    throw new RangeError(
      `${prefix}the loaded data ends at ${hex(loadEnd)}, beyond the 4 GiB a 32-bit multiboot kernel can address`,
    );
  }
  let end = loadEnd;
  if (a.bssEndAddr !== 0) {
    if (a.bssEndAddr < loadEnd) {
      throw new SyntaxError(
        `${prefix}bss_end_addr ${hex(a.bssEndAddr)} is below the end of the loaded data (${hex(loadEnd)})`,
      );
    }
    end = a.bssEndAddr;
  }
  if (a.entryAddr < a.loadAddr || a.entryAddr >= loadEnd) {
    throw new RangeError(
      `${prefix}entry_addr ${hex(a.entryAddr)} is outside the loaded data [${hex(a.loadAddr)}, ${hex(loadEnd)})`,
    );
  }
  plan.reserve("the kernel (a.out kludge)", a.loadAddr, end - a.loadAddr);
  plan.write(a.loadAddr, bytes.subarray(loadOffset, loadOffset + loadSize));
  plan.fill(loadEnd, end - loadEnd, 0);
  return { entry: BigInt(a.entryAddr), lowest: a.loadAddr, end };
}
