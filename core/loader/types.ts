/**
 * Types shared by the image loaders: the memory a loader writes into
 * ({@linkcode LoadTarget}), the options of {@linkcode loadImage} and what it
 * reports back ({@linkcode LoadedImage}).
 *
 * @module
 */

import type { E820Entry } from "./e820.ts";

/**
 * Guest physical memory as a loader sees it. The machine implements it; a
 * loader only asks which ranges are RAM and copies or fills bytes.
 *
 * Loaders validate every range with {@linkcode LoadTarget.isRam} before they
 * call {@linkcode LoadTarget.write} or {@linkcode LoadTarget.fill}, so a
 * rejected image leaves the target untouched.
 *
 * @example A target backed by a plain buffer
 * ```ts
 * import type { LoadTarget } from "./types.ts";
 *
 * const ram = new Uint8Array(0x10000);
 * const target: LoadTarget = {
 *   ramSize: ram.length,
 *   isRam: (addr, len) => addr >= 0 && len >= 0 && addr + len <= ram.length,
 *   write: (addr, bytes) => ram.set(bytes, addr),
 *   fill: (addr, len, value) => ram.fill(value, addr, addr + len),
 * };
 * target.write(0x7c00, new Uint8Array([0xf4]));
 * ```
 */
export interface LoadTarget {
  /** Bytes of RAM present; RAM is [0, ramSize) except holes reported by isRam. */
  readonly ramSize: number;
  /** True if [addr, addr+len) lies entirely in guest RAM. */
  isRam(addr: number, len: number): boolean;
  /** Copy bytes into guest physical memory (throws RangeError outside RAM). */
  write(addr: number, bytes: Uint8Array): void;
  /** Fill [addr, addr+len) with `value` (loaders pass 0 to zero BSS). */
  fill(addr: number, len: number, value: number): void;
  /**
   * Ranges the machine already uses (firmware tables such as ACPI and the MP
   * table): an image that would overwrite one is refused with an error naming it,
   * and boot structures are placed elsewhere.
   */
  readonly reserved?: readonly ReservedRange[];
}

/**
 * A range of guest RAM the machine holds, which a loader must not overwrite.
 *
 * @example
 * ```ts
 * import type { ReservedRange } from "./types.ts";
 *
 * const acpi: ReservedRange = { label: "the ACPI tables", start: 0xe0000, size: 0x1000 };
 * ```
 */
export interface ReservedRange {
  /** What it holds, as error messages name it ("the ACPI tables"). */
  label: string;
  /** Its first address. */
  start: number;
  /** Its size in bytes. */
  size: number;
}

/**
 * Where the loader placed the structures the machine writes to enter the
 * image: the boot GDT (protected and long mode) and the identity-mapping page
 * tables (long mode: PML4, PDPT and four page directories, 0x6000 bytes).
 * They sit at the usual addresses (GDT 0x500, page tables 0x1000) unless the
 * image occupies those, in which case they go to the lowest free RAM.
 *
 * @example
 * ```ts
 * import type { BootStructures } from "./types.ts";
 *
 * const usual: BootStructures = { gdt: 0x500, pageTables: 0x1000 };
 * ```
 */
export interface BootStructures {
  /** Address of the 48-byte boot GDT. */
  gdt: number;
  /** Address of the 0x6000 bytes of page tables (long mode only). */
  pageTables?: number;
}

/**
 * The kinds of image {@linkcode loadImage} understands.
 *
 * - `"flat"`: raw bytes copied to one address and entered in real mode.
 * - `"elf"`: an ELF32 or ELF64 x86 executable, loaded by its PT_LOAD segments.
 * - `"multiboot"`: a Multiboot 1 kernel (ELF or a.out kludge).
 * - `"bzimage"`: a Linux bzImage, booted by the Linux x86 boot protocol.
 * - `"pvh"`: an ELF kernel with a Xen PVH entry note (a Linux vmlinux), entered at that note.
 *
 * @example
 * ```ts
 * import type { ImageFormat } from "./types.ts";
 *
 * const format: ImageFormat = "multiboot";
 * ```
 */
export type ImageFormat = "flat" | "elf" | "multiboot" | "bzimage" | "pvh";

/**
 * The CPU mode an image must be entered in.
 *
 * @example
 * ```ts
 * import type { CpuMode } from "./types.ts";
 *
 * const mode: CpuMode = "long";
 * ```
 */
export type CpuMode = "real" | "protected" | "long";

/**
 * One Multiboot module (for example an initrd), handed to the kernel through
 * the multiboot info structure.
 *
 * @example
 * ```ts
 * import type { MultibootModule } from "./types.ts";
 *
 * const initrd: MultibootModule = {
 *   data: new Uint8Array([1, 2, 3]),
 *   cmdline: "initrd.img",
 * };
 * ```
 */
export interface MultibootModule {
  /** The module's contents, copied page-aligned into guest RAM. */
  data: Uint8Array;
  /** The module's command line (the `string` field of its mods entry). */
  cmdline: string;
}

/**
 * Options of {@linkcode loadImage}.
 *
 * Options that the chosen format cannot use (`loadAddress` for anything but
 * a flat image, a non-empty `cmdline` or `modules` for anything but a
 * multiboot image) are rejected with a `TypeError` rather than ignored.
 *
 * @example
 * ```ts
 * import type { LoadOptions } from "./types.ts";
 *
 * const options: LoadOptions = {
 *   format: "auto",
 *   path: "kernel.elf",
 *   cmdline: "console=ttyS0",
 * };
 * ```
 */
export interface LoadOptions {
  /**
   * The image format; `"auto"` (the default) picks `"multiboot"` when a valid
   * multiboot header is present, else `"elf"` on the ELF magic, else `"flat"`.
   */
  format?: ImageFormat | "auto" | undefined;
  /** Where a flat image is loaded and entered; default 0x7c00. Flat only. */
  loadAddress?: number | undefined;
  /**
   * The kernel command line. Multiboot hands the kernel `"<path> <cmdline>"`
   * (argv[0] is the image path, as QEMU does); a bzImage gets it through
   * boot_params, a PVH kernel through hvm_start_info.
   */
  cmdline?: string | undefined;
  /** The image path, used in error messages and as multiboot argv[0]. */
  path?: string | undefined;
  /** Multiboot or PVH modules, in order; for a bzImage, at most one: the initrd. */
  modules?: readonly MultibootModule[] | undefined;
  /**
   * The memory map a Linux kernel is given (bzImage and PVH); by default the
   * map of `ramSize` bytes of RAM from address 0 ({@linkcode e820Map}).
   */
  memoryMap?: readonly E820Entry[] | undefined;
  /** Where the platform put the ACPI RSDP, for a Linux kernel (bzImage and PVH). */
  rsdp?: number | undefined;
}

/**
 * A symbol of an ELF image, for the debugger.
 *
 * @example
 * ```ts
 * import type { ImageSymbol } from "./types.ts";
 *
 * const start: ImageSymbol = {
 *   name: "_start",
 *   address: 0x100000n,
 *   size: 16,
 *   kind: "function",
 * };
 * ```
 */
export interface ImageSymbol {
  /** The symbol's name (never empty). */
  name: string;
  /** Its value: a (virtual) address, as linked. */
  address: bigint;
  /** Its size in bytes (0 when unknown). */
  size: number;
  /** STT_FUNC is `"function"`, STT_OBJECT is `"object"`, anything else `"other"`. */
  kind: "function" | "object" | "other";
}

/**
 * What {@linkcode loadImage} loaded and how the machine must start it.
 *
 * @example
 * ```ts
 * import type { LoadedImage } from "./types.ts";
 *
 * function describe(image: LoadedImage): string {
 *   return `${image.format} image, ${image.mode} mode, entry 0x${
 *     image.entry.toString(16)
 *   }`;
 * }
 * ```
 */
export interface LoadedImage {
  /** The format the image was loaded as. */
  format: ImageFormat;
  /** The CPU mode the image must be entered in. */
  mode: CpuMode;
  /**
   * The physical address to start at. In real mode a linear address: the
   * machine sets CS:IP = 0:entry below 0x10000, else CS = entry >> 4 and
   * IP = entry & 0xf. Always below 1 MiB for real mode and below 4 GiB for
   * protected mode.
   */
  entry: bigint;
  /** Extra initial registers, e.g. `{ rax: 0x2BADB002n, rbx: infoAddr }`. */
  registers: Record<string, bigint>;
  /** Symbols of an ELF image (.symtab, then .dynsym), sorted by address. */
  symbols: ImageSymbol[];
  /** Lowest physical address written by the image itself. */
  lowest: number;
  /** End (exclusive) of the image in physical memory, BSS included. */
  end: number;
  /** The multiboot info area (struct, strings, memory map and modules), or Linux's boot_params / hvm_start_info. */
  bootInfo?: { address: number; size: number };
  /** Where the machine must write its boot GDT and page tables (absent for real mode). */
  bootStructures?: BootStructures;
  /**
   * A GDT the entry needs in place of the vCPU's boot GDT (the Linux boot
   * protocol's `__BOOT_CS` 0x10 and `__BOOT_DS` 0x18): its address and limit
   * and the code and data selectors to load.
   */
  segments?: { gdt: number; gdtLimit: number; code: number; data: number };
}
