/**
 * The Linux x86 boot protocol (Documentation/arch/x86/boot.rst) for a
 * bzImage: the setup header is read and validated, the protected-mode
 * kernel is loaded where the header allows, and the zero page
 * (`struct boot_params`) gets the e820 map, the command line and the initrd.
 * The kernel is entered at its 64-bit entry (load address + 0x200) in long
 * mode, or at its 32-bit entry in protected mode when it has no 64-bit
 * entry, with `%rsi`/`%esi` pointing at the zero page and the GDT the
 * protocol asks for (`__BOOT_CS` 0x10, `__BOOT_DS` 0x18).
 *
 * The real-mode setup code is never run: like QEMU's, Firecracker's and
 * Cloud Hypervisor's direct kernel boot, hvsh does its job (the e820 map,
 * the command line) itself.
 *
 * @module
 */

import { BOOT_LAYOUT } from "../vcpu.ts";
import { E820_TYPE, type E820Entry, HIGH_MEMORY_START, highestFit, packE820 } from "./e820.ts";
import { errorPrefix, hex, LoadPlan } from "./_plan.ts";
import type { LoadedImage, LoadTarget } from "./types.ts";

/** Offsets of the setup header fields, in the bzImage file and in boot_params alike. */
export const SETUP_HEADER = {
  setupSects: 0x1f1,
  syssize: 0x1f4,
  bootFlag: 0x1fe,
  jump: 0x200,
  header: 0x202,
  version: 0x206,
  kernelVersion: 0x20e,
  typeOfLoader: 0x210,
  loadflags: 0x211,
  code32Start: 0x214,
  ramdiskImage: 0x218,
  ramdiskSize: 0x21c,
  heapEndPtr: 0x224,
  cmdLinePtr: 0x228,
  initrdAddrMax: 0x22c,
  kernelAlignment: 0x230,
  relocatableKernel: 0x234,
  minAlignment: 0x235,
  xloadflags: 0x236,
  cmdlineSize: 0x238,
  prefAddress: 0x258,
  initSize: 0x260,
} as const;

/** Offsets in `struct boot_params` outside the setup header (Documentation/arch/x86/zero-page.rst). */
export const BOOT_PARAMS = {
  size: 0x1000,
  acpiRsdpAddr: 0x070,
  extRamdiskImage: 0x0c0,
  extRamdiskSize: 0x0c4,
  extCmdLinePtr: 0x0c8,
  e820Entries: 0x1e8,
  e820Table: 0x2d0,
  e820Max: 128,
} as const;

/** "HdrS", the setup header's signature at 0x202. */
export const HDRS_MAGIC = 0x5372_6448;
/** The oldest boot protocol hvsh loads: 2.06 gives cmdline_size and initrd_addr_max that mean what they say. */
export const MIN_PROTOCOL = 0x0206;
/** loadflags bit 0: the protected-mode kernel is loaded at 0x100000 (a bzImage, not a zImage). */
const LOADED_HIGH = 0x01;
/** xloadflags bit 0: the kernel has the 64-bit entry at load address + 0x200. */
const XLF_KERNEL_64 = 0x01;
/** type_of_loader 0xff: a boot loader with no assigned id. */
const LOADER_UNDEFINED = 0xff;

/** Where the Linux loader puts the zero page, its GDT and the command line (below 1 MiB, as QEMU does). */
export const LINUX_LAYOUT = {
  /** The GDT the boot protocol asks for: null, unused, `__BOOT_CS`, `__BOOT_DS`. */
  gdt: 0x600,
  zeroPage: 0x7000,
  cmdline: 0x2_0000,
  /** Room for the command line: up to 0x2ffff. */
  cmdlineMax: 0x1_0000,
  /** The boot protocol's selectors. */
  bootCs: 0x10,
  bootDs: 0x18,
} as const;

/** The setup header of a bzImage, with the fields hvsh uses. */
export interface SetupHeader {
  /** The boot protocol version, e.g. 0x020f for 2.15. */
  version: number;
  /** "2.15". */
  protocol: string;
  /** 512-byte sectors of real-mode setup code (0 means 4). */
  setupSects: number;
  /** Size of the protected-mode kernel in 16-byte paragraphs. */
  syssize: number;
  loadflags: number;
  /** The highest address the initrd may occupy. */
  initrdAddrMax: number;
  /** Alignment a relocatable kernel needs. */
  kernelAlignment: number;
  relocatable: boolean;
  /** Minimum alignment, as a power of two (protocol 2.10+). */
  minAlignment: number;
  /** 2.12+: XLF_KERNEL_64 (bit 0), XLF_CAN_BE_LOADED_ABOVE_4G (bit 1)... */
  xloadflags: number;
  /** The longest command line, without its NUL. */
  cmdlineSize: number;
  /** Where a relocatable kernel prefers to be loaded (2.10+; else 0x100000). */
  prefAddress: number;
  /** Bytes the kernel needs from its load address to decompress and run (2.10+). */
  initSize: number;
  /** The kernel's version string ("6.1.0 (...) #1 ..."), when the header points at one. */
  kernelVersion: string;
  /** End of the setup header in the file: 0x202 + byte at 0x201. */
  headerEnd: number;
  /** File offset of the protected-mode kernel: (setup_sects + 1) * 512. */
  kernelOffset: number;
}

/**
 * True if `bytes` looks like a bzImage: 0xAA55 at 0x1fe and "HdrS" at 0x202.
 *
 * @example
 * ```ts
 * import { isBzImage } from "./linux.ts";
 * import assert from "node:assert/strict";
 * assert.equal(isBzImage(new Uint8Array(512)), false);
 * ```
 */
export function isBzImage(bytes: Uint8Array): boolean {
  if (bytes.length < SETUP_HEADER.header + 4) return false;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return view.getUint16(SETUP_HEADER.bootFlag, true) === 0xaa55 &&
    view.getUint32(SETUP_HEADER.header, true) === HDRS_MAGIC;
}

/**
 * Reads and validates a bzImage's setup header. Throws a `SyntaxError` for
 * a file that is not a bzImage or is truncated, and a `TypeError` for a
 * protocol older than 2.06 or a zImage; each message names the field and
 * the value found.
 *
 * @example
 * ```ts ignore
 * import { parseSetupHeader } from "./linux.ts";
 * const header = parseSetupHeader(Deno.readFileSync("bzImage"), "bzImage");
 * console.log(header.protocol, header.kernelVersion); // "2.15" "6.1.192 ..."
 * ```
 */
export function parseSetupHeader(bytes: Uint8Array, path?: string): SetupHeader {
  const prefix = errorPrefix("load", "bzImage", path);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < SETUP_HEADER.header + 4) {
    throw new SyntaxError(
      `${prefix}the file is ${bytes.length} bytes, too short for a setup header (the "HdrS" signature is at 0x202)`,
    );
  }
  const magic = view.getUint32(SETUP_HEADER.header, true);
  if (magic !== HDRS_MAGIC) {
    const found = new TextDecoder("latin1").decode(bytes.subarray(SETUP_HEADER.header, SETUP_HEADER.header + 4));
    throw new SyntaxError(
      `${prefix}not a bzImage: header at 0x202 is ${hex(magic, 8)} (${JSON.stringify(found)}), expected "HdrS"`,
    );
  }
  const bootFlag = view.getUint16(SETUP_HEADER.bootFlag, true);
  if (bootFlag !== 0xaa55) {
    throw new SyntaxError(`${prefix}boot_flag at 0x1fe is ${hex(bootFlag, 4)}, expected 0xaa55`);
  }
  const version = view.getUint16(SETUP_HEADER.version, true);
  const protocol = `${version >> 8}.${(version & 0xff).toString().padStart(2, "0")}`;
  if (version < MIN_PROTOCOL) {
    throw new TypeError(
      `${prefix}boot protocol version is ${hex(version, 4)} (${protocol}); hvsh needs 2.06 or later`,
    );
  }
  const headerEnd = 0x202 + bytes[0x201]!;
  if (bytes.length < headerEnd || headerEnd < SETUP_HEADER.cmdlineSize + 4) {
    throw new SyntaxError(
      `${prefix}the setup header ends at ${hex(headerEnd)} (0x202 + byte 0x201) but the file is ${
        hex(bytes.length)
      } bytes`,
    );
  }
  const u8 = (offset: number) => view.getUint8(offset);
  const u32 = (offset: number) => view.getUint32(offset, true);
  const at = (offset: number) => offset + 4 <= headerEnd;
  const loadflags = u8(SETUP_HEADER.loadflags);
  if ((loadflags & LOADED_HIGH) === 0) {
    throw new TypeError(`${prefix}loadflags is ${hex(loadflags, 2)} without LOADED_HIGH: a zImage, not a bzImage`);
  }
  const setupSects = u8(SETUP_HEADER.setupSects) || 4;
  const kernelOffset = (setupSects + 1) * 512;
  const syssize = u32(SETUP_HEADER.syssize);
  if (kernelOffset >= bytes.length) {
    throw new SyntaxError(
      `${prefix}setup_sects is ${setupSects}: the kernel would start at ${hex(kernelOffset)}, beyond the end of the ${
        hex(bytes.length)
      }-byte file`,
    );
  }
  if (syssize === 0 || kernelOffset + syssize * 16 > bytes.length + 15) {
    throw new SyntaxError(
      `${prefix}syssize is ${hex(syssize)} (${syssize * 16} bytes of protected-mode kernel) but the file has ${
        bytes.length - kernelOffset
      } after setup: truncated`,
    );
  }
  const kernelAlignment = u32(SETUP_HEADER.kernelAlignment);
  const relocatable = u8(SETUP_HEADER.relocatableKernel) !== 0;
  if (relocatable && (kernelAlignment === 0 || (kernelAlignment & (kernelAlignment - 1)) !== 0)) {
    throw new TypeError(`${prefix}kernel_alignment is ${hex(kernelAlignment)}, not a power of two`);
  }
  const has210 = version >= 0x020a;
  const versionPointer = view.getUint16(SETUP_HEADER.kernelVersion, true);
  let kernelVersion = "";
  if (versionPointer !== 0 && versionPointer + 0x200 < bytes.length) {
    const start = versionPointer + 0x200;
    const end = bytes.indexOf(0, start);
    kernelVersion = new TextDecoder().decode(
      bytes.subarray(start, end < 0 ? Math.min(start + 256, bytes.length) : end),
    );
  }
  return {
    version,
    protocol,
    setupSects,
    syssize,
    loadflags,
    initrdAddrMax: u32(SETUP_HEADER.initrdAddrMax),
    kernelAlignment,
    relocatable,
    minAlignment: has210 ? u8(SETUP_HEADER.minAlignment) : 0,
    xloadflags: version >= 0x020c ? view.getUint16(SETUP_HEADER.xloadflags, true) : 0,
    cmdlineSize: u32(SETUP_HEADER.cmdlineSize),
    prefAddress: has210 && at(SETUP_HEADER.prefAddress) ? Number(view.getBigUint64(SETUP_HEADER.prefAddress, true)) : 0,
    initSize: has210 && at(SETUP_HEADER.initSize) ? u32(SETUP_HEADER.initSize) : 0,
    kernelVersion,
    headerEnd,
    kernelOffset,
  };
}

/** Options of {@link loadBzImage} and the PVH loader. */
export interface LinuxLoadOptions {
  /** The guest's memory map, given to the kernel as its e820 table. */
  memoryMap: readonly E820Entry[];
  /** The kernel command line. */
  cmdline?: string | undefined;
  /** The initial ramdisk (a cpio archive, maybe compressed). */
  initrd?: Uint8Array | undefined;
  /** The image path, for messages. */
  path?: string | undefined;
  /** Where the ACPI RSDP is, when the platform wrote one. */
  rsdp?: number | undefined;
  /** Force the 32-bit entry of a kernel that has a 64-bit one (default: the 64-bit entry when there is one). */
  entry?: "64-bit" | "32-bit" | undefined;
}

/** What the Linux loaders report beyond {@link LoadedImage}. */
export interface LinuxBootInfo {
  /** The boot path taken. */
  protocol: "bzimage" | "pvh";
  /** The boot protocol version for a bzImage ("2.15"), "PVH" otherwise. */
  version: string;
  /** The kernel's version string, when the image has one. */
  kernelVersion: string;
  /** Where the kernel went (the protected-mode kernel's load address, or the lowest PVH segment). */
  loadAddress: number;
  /** Bytes reserved for the kernel from `loadAddress` (init_size for a bzImage). */
  reserved: number;
  /** boot_params or hvm_start_info. */
  bootParams: number;
  cmdline: { address: number; text: string };
  initrd: { address: number; size: number } | undefined;
  /** The memory map given to the kernel. */
  memoryMap: E820Entry[];
}

/** A loaded Linux kernel: how to enter it and what it was given. */
export interface LoadedLinux extends LoadedImage {
  linux: LinuxBootInfo;
}

/** The boot GDT the vCPU helpers write at {@link BOOT_LAYOUT}.gdt (six descriptors). */
const VCPU_BOOT_GDT_SIZE = 6 * 8;
/** The identity page tables `enterLongMode` writes: PML4, PDPT and four page directories. */
const VCPU_PAGE_TABLES = { start: BOOT_LAYOUT.pml4, end: BOOT_LAYOUT.pageDirectories + 4 * 0x1000 } as const;

/** The GDT of the boot protocol: `__BOOT_CS` (64-bit or 32-bit code) at 0x10, `__BOOT_DS` at 0x18. */
export function linuxBootGdt(bits: 32 | 64): Uint8Array {
  const gdt = new Uint8Array(32);
  const view = new DataView(gdt.buffer);
  view.setBigUint64(LINUX_LAYOUT.bootCs, bits === 64 ? 0x00af9b000000ffffn : 0x00cf9b000000ffffn, true);
  view.setBigUint64(LINUX_LAYOUT.bootDs, 0x00cf93000000ffffn, true);
  return gdt;
}

/** Reserves the areas the vCPU's mode switch writes (its GDT; its page tables for long mode). */
export function reserveVcpuBootAreas(plan: LoadPlan, longMode: boolean): void {
  plan.reserve("the vCPU boot GDT", BOOT_LAYOUT.gdt, VCPU_BOOT_GDT_SIZE);
  if (longMode) {
    plan.reserve("the identity page tables", VCPU_PAGE_TABLES.start, VCPU_PAGE_TABLES.end - VCPU_PAGE_TABLES.start);
  }
}

/** Checks the command line and queues it (NUL-terminated) at {@link LINUX_LAYOUT}.cmdline. */
export function planCmdline(plan: LoadPlan, cmdline: string, limit: number, field: string, prefix: string): number {
  const bytes = new TextEncoder().encode(cmdline + "\0");
  if (bytes.length - 1 > limit) {
    throw new RangeError(`${prefix}the command line is ${bytes.length - 1} bytes; ${field} is ${limit}`);
  }
  if (bytes.subarray(0, -1).includes(0)) throw new TypeError(`${prefix}the command line contains a NUL byte`);
  const address = plan.reserve("the command line", LINUX_LAYOUT.cmdline, bytes.length);
  plan.write(address, bytes);
  return address;
}

/**
 * Places `data` as high as it fits in RAM below `limit`, above 1 MiB and
 * clear of everything reserved so far, and queues it.
 */
export function planHighModule(
  plan: LoadPlan,
  map: readonly E820Entry[],
  data: Uint8Array,
  limit: number,
  label: string,
  prefix: string,
): number {
  const avoid = [{ start: 0, end: HIGH_MEMORY_START }, ...plan.regions];
  const address = highestFit(map, data.length, limit, avoid);
  if (address === undefined) {
    const ram = map.filter((e) => e.type === E820_TYPE.ram).reduce((n, e) => n + e.size, 0);
    throw new RangeError(
      `${prefix}${label} (${data.length} bytes) does not fit in RAM below ${
        hex(limit)
      } beside the kernel (${ram} bytes of RAM)`,
    );
  }
  plan.reserve(label, address, data.length);
  plan.write(address, data);
  return address;
}

/**
 * Loads a bzImage by the Linux boot protocol; see the module doc. Nothing is
 * written to `target` unless every check passes.
 *
 * @example
 * ```ts ignore
 * import { loadBzImage } from "./linux.ts";
 * import { e820Map } from "./e820.ts";
 * const image = loadBzImage(Deno.readFileSync("bzImage"), target, {
 *   memoryMap: e820Map([{ base: 0, size: 256 << 20 }]),
 *   cmdline: "console=ttyS0",
 * });
 * // image.mode === "long", image.entry === 0x1000200n, image.registers.rsi === 0x7000n
 * ```
 */
export function loadBzImage(bytes: Uint8Array, target: LoadTarget, options: LinuxLoadOptions): LoadedLinux {
  const header = parseSetupHeader(bytes, options.path);
  const prefix = errorPrefix("load", "bzImage", options.path);
  const plan = new LoadPlan(target, prefix);
  const kernel = bytes.subarray(header.kernelOffset);
  const has64 = (header.xloadflags & XLF_KERNEL_64) !== 0;
  if (options.entry === "64-bit" && !has64) {
    throw new TypeError(
      `${prefix}xloadflags is ${hex(header.xloadflags, 4)} without XLF_KERNEL_64: the kernel has no 64-bit entry`,
    );
  }
  const longMode = has64 && options.entry !== "32-bit";
  // The kernel needs init_size bytes from its runtime start (it decompresses there); older headers do not say.
  // A relocatable kernel runs where it is loaded; one that is not is loaded at 1 MiB and decompresses itself to
  // pref_address (LOAD_PHYSICAL_ADDR), which must then be free as well.
  const reserved = Math.max(header.initSize, kernel.length);
  const loadAddress = chooseLoadAddress(header, reserved, kernel.length, options.memoryMap, prefix);

  reserveVcpuBootAreas(plan, longMode);
  plan.reserve("the boot protocol GDT", LINUX_LAYOUT.gdt, 32);
  plan.write(LINUX_LAYOUT.gdt, linuxBootGdt(longMode ? 64 : 32));
  const zeroPage = plan.reserve("the zero page (boot_params)", LINUX_LAYOUT.zeroPage, BOOT_PARAMS.size);
  const cmdline = options.cmdline ?? "";
  const cmdlineAddress = planCmdline(plan, cmdline, header.cmdlineSize, "the kernel's cmdline_size", prefix);
  if (header.relocatable || header.prefAddress <= loadAddress) {
    plan.reserve(`the kernel (init_size ${hex(header.initSize)})`, loadAddress, reserved);
  } else {
    const runtimeEnd = header.prefAddress + header.initSize;
    const imageEnd = loadAddress + kernel.length;
    if (imageEnd >= header.prefAddress) {
      plan.reserve(
        `the kernel and its runtime area (init_size ${hex(header.initSize)} from pref_address)`,
        loadAddress,
        Math.max(runtimeEnd, imageEnd) - loadAddress,
      );
    } else {
      plan.reserve("the kernel", loadAddress, kernel.length);
      plan.reserve(
        `the kernel's runtime area (init_size ${hex(header.initSize)} from pref_address ${hex(header.prefAddress)})`,
        header.prefAddress,
        header.initSize,
      );
    }
  }
  plan.write(loadAddress, kernel);

  let initrd: LinuxBootInfo["initrd"];
  if (options.initrd !== undefined && options.initrd.length > 0) {
    // initrd_addr_max is the highest byte the initrd may occupy.
    const limit = Math.min(header.initrdAddrMax + 1, 0x1_0000_0000);
    const address = planHighModule(
      plan,
      options.memoryMap,
      options.initrd,
      limit,
      `the initrd (initrd_addr_max ${hex(header.initrdAddrMax)})`,
      prefix,
    );
    initrd = { address, size: options.initrd.length };
  }

  const memoryMap = [...options.memoryMap];
  if (memoryMap.length > BOOT_PARAMS.e820Max) {
    throw new RangeError(`${prefix}the memory map has ${memoryMap.length} entries; boot_params holds 128`);
  }
  const params = new Uint8Array(BOOT_PARAMS.size);
  const view = new DataView(params.buffer);
  params.set(bytes.subarray(SETUP_HEADER.setupSects, header.headerEnd), SETUP_HEADER.setupSects);
  view.setUint8(SETUP_HEADER.typeOfLoader, LOADER_UNDEFINED);
  view.setUint32(SETUP_HEADER.code32Start, loadAddress, true);
  view.setUint32(SETUP_HEADER.cmdLinePtr, cmdlineAddress, true);
  if (initrd !== undefined) {
    view.setUint32(SETUP_HEADER.ramdiskImage, initrd.address >>> 0, true);
    view.setUint32(SETUP_HEADER.ramdiskSize, initrd.size >>> 0, true);
    view.setUint32(BOOT_PARAMS.extRamdiskImage, Math.floor(initrd.address / 0x1_0000_0000), true);
    view.setUint32(BOOT_PARAMS.extRamdiskSize, Math.floor(initrd.size / 0x1_0000_0000), true);
  }
  if (options.rsdp !== undefined) view.setBigUint64(BOOT_PARAMS.acpiRsdpAddr, BigInt(options.rsdp), true);
  view.setUint8(BOOT_PARAMS.e820Entries, memoryMap.length);
  params.set(packE820(memoryMap), BOOT_PARAMS.e820Table);
  plan.write(zeroPage, params);
  plan.apply();

  return {
    format: "bzimage",
    mode: longMode ? "long" : "protected",
    entry: BigInt(longMode ? loadAddress + 0x200 : loadAddress),
    registers: { rsi: BigInt(zeroPage) },
    symbols: [],
    lowest: loadAddress,
    end: loadAddress + kernel.length,
    bootInfo: { address: zeroPage, size: BOOT_PARAMS.size },
    segments: {
      gdt: LINUX_LAYOUT.gdt,
      gdtLimit: 31,
      code: LINUX_LAYOUT.bootCs,
      data: LINUX_LAYOUT.bootDs,
    },
    linux: {
      protocol: "bzimage",
      version: header.protocol,
      kernelVersion: header.kernelVersion,
      loadAddress,
      reserved,
      bootParams: zeroPage,
      cmdline: { address: cmdlineAddress, text: cmdline },
      initrd,
      memoryMap,
    },
  };
}

/**
 * Where the protected-mode kernel goes: a relocatable kernel at
 * pref_address when [pref_address, + init_size) is RAM, else at the lowest
 * kernel_alignment-aligned RAM address above 1 MiB where it fits; a
 * kernel that is not relocatable at 0x100000 (it moves itself to
 * pref_address when it decompresses).
 */
function chooseLoadAddress(
  header: SetupHeader,
  size: number,
  imageSize: number,
  map: readonly E820Entry[],
  prefix: string,
): number {
  const ram = map.filter((e) => e.type === E820_TYPE.ram);
  const fitsSized = (address: number, length: number) =>
    ram.some((e) => address >= e.address && address + length <= e.address + e.size);
  const fits = (address: number) => fitsSized(address, size);
  if (!header.relocatable) {
    const runtime = Math.max(header.prefAddress, HIGH_MEMORY_START);
    if (!fitsSized(HIGH_MEMORY_START, imageSize) || !fitsSized(runtime, header.initSize)) {
      throw new RangeError(
        `${prefix}the kernel is not relocatable: it is loaded at 0x100000 and needs init_size ${
          hex(header.initSize)
        } bytes from pref_address ${hex(header.prefAddress)}: not enough RAM`,
      );
    }
    return HIGH_MEMORY_START;
  }
  const align = header.kernelAlignment;
  const preferred = header.prefAddress !== 0 ? header.prefAddress : HIGH_MEMORY_START;
  if (preferred % align === 0 && fits(preferred)) return preferred;
  for (const entry of ram) {
    const start = Math.ceil(Math.max(entry.address, HIGH_MEMORY_START) / align) * align;
    if (start + size <= entry.address + entry.size) return start;
  }
  throw new RangeError(
    `${prefix}no RAM for the kernel: init_size is ${hex(size)}, kernel_alignment ${hex(align)}, pref_address ${
      hex(header.prefAddress)
    }`,
  );
}
