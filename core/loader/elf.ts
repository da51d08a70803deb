/**
 * A parser for x86 ELF32 and ELF64 little-endian images: header, program
 * headers, section headers and symbols. It reads only; loading is done by
 * {@linkcode loadImage}.
 *
 * @module
 */

import { errorPrefix, hex } from "./_plan.ts";
import type { ImageSymbol } from "./types.ts";

/**
 * e_machine of 32-bit x86.
 *
 * @example
 * ```ts
 * import { EM_386 } from "./elf.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(EM_386, 3);
 * ```
 */
export const EM_386 = 3;
/**
 * e_machine of x86-64.
 *
 * @example
 * ```ts
 * import { EM_X86_64 } from "./elf.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(EM_X86_64, 62);
 * ```
 */
export const EM_X86_64 = 62;
/**
 * p_type of a loadable segment.
 *
 * @example
 * ```ts
 * import { PT_LOAD } from "./elf.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(PT_LOAD, 1);
 * ```
 */
export const PT_LOAD = 1;

const SHT_SYMTAB = 2;
const SHT_NOBITS = 8;
const SHT_DYNSYM = 11;
const SHN_UNDEF = 0;
const SHN_XINDEX = 0xffff;
const PN_XNUM = 0xffff;
const STT_OBJECT = 1;
const STT_FUNC = 2;
const STT_SECTION = 3;
const STT_FILE = 4;

const PT_NAMES: Record<number, string> = {
  0: "PT_NULL",
  1: "PT_LOAD",
  2: "PT_DYNAMIC",
  3: "PT_INTERP",
  4: "PT_NOTE",
  5: "PT_SHLIB",
  6: "PT_PHDR",
  7: "PT_TLS",
  0x6474e550: "PT_GNU_EH_FRAME",
  0x6474e551: "PT_GNU_STACK",
  0x6474e552: "PT_GNU_RELRO",
  0x6474e553: "PT_GNU_PROPERTY",
};

/**
 * The name of a program header type, e.g. `"PT_LOAD"`, or its hex value.
 *
 * @example
 * ```ts
 * import { programHeaderTypeName } from "./elf.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(programHeaderTypeName(1), "PT_LOAD");
 * assert.equal(programHeaderTypeName(0x1234), "0x1234");
 * ```
 */
export function programHeaderTypeName(type: number): string {
  return PT_NAMES[type] ?? hex(type);
}

/**
 * One program header (segment) of an ELF image.
 *
 * @example
 * ```ts
 * import { type ElfProgramHeader, PT_LOAD } from "./elf.ts";
 *
 * function isBss(ph: ElfProgramHeader): boolean {
 *   return ph.type === PT_LOAD && ph.filesz === 0 && ph.memsz > 0;
 * }
 * ```
 */
export interface ElfProgramHeader {
  /** Index in the program header table. */
  index: number;
  /** p_type, e.g. {@linkcode PT_LOAD}. */
  type: number;
  /** p_flags (PF_X = 1, PF_W = 2, PF_R = 4). */
  flags: number;
  /** p_offset: where the segment's bytes start in the file. */
  offset: number;
  /** p_vaddr: the virtual address it is linked at. */
  vaddr: bigint;
  /** p_paddr: the physical address it is loaded at. */
  paddr: bigint;
  /** p_filesz: bytes taken from the file. */
  filesz: number;
  /** p_memsz: bytes occupied in memory (the rest after filesz is zeroed). */
  memsz: number;
  /** p_align. */
  align: number;
}

/**
 * One section header of an ELF image.
 *
 * @example
 * ```ts
 * import type { ElfSectionHeader } from "./elf.ts";
 *
 * function isText(sh: ElfSectionHeader): boolean {
 *   return sh.name === ".text";
 * }
 * ```
 */
export interface ElfSectionHeader {
  /** Index in the section header table. */
  index: number;
  /** The name, from the section name string table ("" if there is none). */
  name: string;
  /** sh_type (SHT_PROGBITS = 1, SHT_SYMTAB = 2, SHT_NOBITS = 8, ...). */
  type: number;
  /** sh_flags. */
  flags: number;
  /** sh_addr. */
  addr: bigint;
  /** sh_offset. */
  offset: number;
  /** sh_size. */
  size: number;
  /** sh_link. */
  link: number;
  /** sh_info. */
  info: number;
  /** sh_addralign. */
  addralign: number;
  /** sh_entsize. */
  entsize: number;
}

/**
 * A symbol of an ELF image: an {@linkcode ImageSymbol} plus its binding and
 * section.
 *
 * @example
 * ```ts
 * import type { ElfSymbol } from "./elf.ts";
 *
 * function isGlobalFunction(symbol: ElfSymbol): boolean {
 *   return symbol.kind === "function" && symbol.binding !== "local";
 * }
 * ```
 */
export interface ElfSymbol extends ImageSymbol {
  /** STB_LOCAL, STB_GLOBAL, STB_WEAK, or anything else. */
  binding: "local" | "global" | "weak" | "other";
  /** st_shndx: the index of the section the symbol is defined in. */
  section: number;
}

/**
 * A parsed ELF image.
 *
 * @example
 * ```ts ignore
 * import { parseElf } from "./elf.ts";
 *
 * const elf = parseElf(Deno.readFileSync("kernel.elf"), "kernel.elf");
 * console.log(elf.class, elf.entry, elf.programHeaders.length);
 * ```
 */
export interface ElfImage {
  /** EI_CLASS: 32 for ELF32, 64 for ELF64. */
  class: 32 | 64;
  /** e_machine: {@linkcode EM_386} or {@linkcode EM_X86_64}. */
  machine: number;
  /** e_type (ET_REL = 1, ET_EXEC = 2, ET_DYN = 3, ET_CORE = 4). */
  type: number;
  /** e_entry, as linked (a virtual address). */
  entry: bigint;
  /** The program header table. */
  programHeaders: ElfProgramHeader[];
  /** The section header table, names resolved. */
  sectionHeaders: ElfSectionHeader[];
  /**
   * Symbols of .symtab then .dynsym, without section and file symbols,
   * undefined symbols, empty names and duplicates, sorted by address.
   */
  symbols: ElfSymbol[];
}

/**
 * True if `bytes` starts with the ELF magic `\x7fELF`.
 *
 * @example
 * ```ts
 * import { hasElfMagic } from "./elf.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(hasElfMagic(new Uint8Array([0x7f, 0x45, 0x4c, 0x46])), true);
 * assert.equal(hasElfMagic(new Uint8Array([0xeb, 0xfe])), false);
 * ```
 */
export function hasElfMagic(bytes: Uint8Array): boolean {
  return bytes.length >= 4 && bytes[0] === 0x7f && bytes[1] === 0x45 &&
    bytes[2] === 0x4c && bytes[3] === 0x46;
}

/** Reads little-endian fields of one ELF file, 32- or 64-bit wide. */
class Reader {
  readonly is64: boolean;
  #view: DataView;
  #prefix: string;

  constructor(bytes: Uint8Array, is64: boolean, prefix: string) {
    this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
    this.is64 = is64;
    this.#prefix = prefix;
  }

  u8(offset: number): number {
    return this.#view.getUint8(offset);
  }

  u16(offset: number): number {
    return this.#view.getUint16(offset, true);
  }

  u32(offset: number): number {
    return this.#view.getUint32(offset, true);
  }

  /** A 64-bit field as a number, rounded if it exceeds 2^53. */
  u64Lossy(offset: number): number {
    return Number(this.#view.getBigUint64(offset, true));
  }

  /** An address-sized field as a bigint. */
  addr(offset: number): bigint {
    return this.is64 ? this.#view.getBigUint64(offset, true) : BigInt(this.u32(offset));
  }

  /** An address-sized offset or size field as a number. */
  size(offset: number, field: string): number {
    if (!this.is64) return this.u32(offset);
    const value = this.#view.getBigUint64(offset, true);
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new SyntaxError(`${this.#prefix}${field} is ${hex(value)}, too large`);
    }
    return Number(value);
  }
}

/** Throws a SyntaxError unless `[offset, offset + size)` lies in the file. */
function checkInFile(
  bytes: Uint8Array,
  offset: number,
  size: number,
  what: string,
  prefix: string,
): void {
  if (offset + size > bytes.length) {
    throw new SyntaxError(
      `${prefix}${what} [${hex(offset)}, ${hex(offset + size)}) extends beyond the end of the file (${
        hex(bytes.length)
      } bytes)`,
    );
  }
}

const decoder = new TextDecoder();

/** Reads the NUL-terminated string at `index` of a string table section. */
function readString(
  bytes: Uint8Array,
  table: ElfSectionHeader,
  index: number,
  what: string,
  prefix: string,
): string {
  if (index >= table.size) {
    throw new SyntaxError(
      `${prefix}${what} is ${hex(index)}, beyond the end of section ${JSON.stringify(table.name)} (${
        hex(table.size)
      } bytes)`,
    );
  }
  const start = table.offset + index;
  const limit = table.offset + table.size;
  let end = start;
  while (end < limit && bytes[end] !== 0) end++;
  return decoder.decode(bytes.subarray(start, end));
}

/**
 * Parses an x86 ELF image (ELF32 or ELF64, little-endian, EM_386 or
 * EM_X86_64). Only the tables are checked (the header, program and section
 * header tables, symbol and string tables lie in the file); segment contents
 * are checked when the image is loaded, so a debug-only ELF (whose segments
 * have no bytes in the file) still parses.
 *
 * Throws a `SyntaxError` for an unparsable image (no magic, truncated header,
 * invalid class, a table outside the file) and a `TypeError` for a valid ELF
 * that is not x86 little-endian.
 *
 * @param bytes The whole file.
 * @param path The file's path, for error messages.
 *
 * @example
 * ```ts
 * import { parseElf } from "./elf.ts";
 * import assert from "node:assert/strict";
 *
 * assert.throws(
 *   () => parseElf(new Uint8Array([0x7f, 0x45, 0x4c, 0x46, 2]), "k.elf"),
 *   SyntaxError,
 * );
 * ```
 *
 * @example Listing the loadable segments
 * ```ts ignore
 * import { parseElf, PT_LOAD } from "./elf.ts";
 *
 * const elf = parseElf(Deno.readFileSync("kernel.elf"), "kernel.elf");
 * for (const ph of elf.programHeaders) {
 *   if (ph.type === PT_LOAD) console.log(ph.paddr, ph.filesz, ph.memsz);
 * }
 * ```
 */
export function parseElf(bytes: Uint8Array, path?: string): ElfImage {
  const prefix = errorPrefix("parse", "ELF image", path);
  if (!hasElfMagic(bytes)) {
    const got = Array.from(bytes.subarray(0, 4), (b) => hex(b)).join(" ");
    throw new SyntaxError(
      `${prefix}no ELF magic (got ${got === "" ? "an empty file" : got}, want 0x7f 0x45 0x4c 0x46)`,
    );
  }
  if (bytes.length < 6) {
    throw new SyntaxError(
      `${prefix}the ELF header is truncated (${bytes.length} bytes)`,
    );
  }
  const eiClass = bytes[4] ?? 0;
  if (eiClass !== 1 && eiClass !== 2) {
    throw new SyntaxError(
      `${prefix}EI_CLASS is ${eiClass} (want 1 for ELF32 or 2 for ELF64)`,
    );
  }
  const eiData = bytes[5] ?? 0;
  if (eiData === 2) {
    throw new TypeError(
      `${prefix}EI_DATA is 2 (big-endian); x86 images are little-endian (1)`,
    );
  }
  if (eiData !== 1) {
    throw new SyntaxError(
      `${prefix}EI_DATA is ${eiData} (want 1 for little-endian)`,
    );
  }
  const is64 = eiClass === 2;
  const ehsize = is64 ? 64 : 52;
  if (bytes.length < ehsize) {
    throw new SyntaxError(
      `${prefix}the ELF${is64 ? 64 : 32} header is truncated (${hex(bytes.length)} bytes, want ${hex(ehsize)})`,
    );
  }
  const r = new Reader(bytes, is64, prefix);
  const type = r.u16(16);
  const machine = r.u16(18);
  if (machine !== EM_386 && machine !== EM_X86_64) {
    throw new TypeError(
      `${prefix}e_machine is ${machine} (want ${EM_386} (EM_386) or ${EM_X86_64} (EM_X86_64))`,
    );
  }
  const entry = r.addr(24);
  const phoff = r.size(is64 ? 32 : 28, "e_phoff");
  const shoff = r.size(is64 ? 40 : 32, "e_shoff");
  const phentsize = r.u16(is64 ? 54 : 42);
  let phnum = r.u16(is64 ? 56 : 44);
  const shentsize = r.u16(is64 ? 58 : 46);
  let shnum = r.u16(is64 ? 60 : 48);
  let shstrndx = r.u16(is64 ? 62 : 50);
  const shMin = is64 ? 64 : 40;
  const phMin = is64 ? 56 : 32;

  // Extended numbering: section 0 holds counts that overflow 16 bits.
  if (shoff !== 0 && (shnum === 0 || phnum === PN_XNUM || shstrndx === SHN_XINDEX)) {
    if (shentsize < shMin) {
      throw new SyntaxError(
        `${prefix}e_shentsize is ${shentsize} (want at least ${shMin})`,
      );
    }
    checkInFile(bytes, shoff, shMin, "section header 0", prefix);
    if (shnum === 0) shnum = r.size(shoff + (is64 ? 32 : 20), "sh_size of section 0");
    if (shstrndx === SHN_XINDEX) shstrndx = r.u32(shoff + (is64 ? 40 : 24));
    if (phnum === PN_XNUM) phnum = r.u32(shoff + (is64 ? 44 : 28));
  }

  const programHeaders: ElfProgramHeader[] = [];
  if (phnum > 0) {
    if (phentsize < phMin) {
      throw new SyntaxError(
        `${prefix}e_phentsize is ${phentsize} (want at least ${phMin})`,
      );
    }
    checkInFile(
      bytes,
      phoff,
      phnum * phentsize,
      `the program header table (e_phoff ${hex(phoff)}, ${phnum} entries)`,
      prefix,
    );
    for (let index = 0; index < phnum; index++) {
      const at = phoff + index * phentsize;
      const field = (name: string) => `program header ${index} ${name}`;
      programHeaders.push(
        is64
          ? {
            index,
            type: r.u32(at),
            flags: r.u32(at + 4),
            offset: r.size(at + 8, field("p_offset")),
            vaddr: r.addr(at + 16),
            paddr: r.addr(at + 24),
            filesz: r.size(at + 32, field("p_filesz")),
            memsz: r.size(at + 40, field("p_memsz")),
            align: r.size(at + 48, field("p_align")),
          }
          : {
            index,
            type: r.u32(at),
            offset: r.u32(at + 4),
            vaddr: r.addr(at + 8),
            paddr: r.addr(at + 12),
            filesz: r.u32(at + 16),
            memsz: r.u32(at + 20),
            flags: r.u32(at + 24),
            align: r.u32(at + 28),
          },
      );
    }
  }

  const sectionHeaders: ElfSectionHeader[] = [];
  if (shoff !== 0 && shnum > 0) {
    if (shentsize < shMin) {
      throw new SyntaxError(
        `${prefix}e_shentsize is ${shentsize} (want at least ${shMin})`,
      );
    }
    checkInFile(
      bytes,
      shoff,
      shnum * shentsize,
      `the section header table (e_shoff ${hex(shoff)}, ${shnum} entries)`,
      prefix,
    );
    const nameOffsets: number[] = [];
    for (let index = 0; index < shnum; index++) {
      const at = shoff + index * shentsize;
      const field = (name: string) => `section header ${index} ${name}`;
      nameOffsets.push(r.u32(at));
      sectionHeaders.push(
        is64
          ? {
            index,
            name: "",
            type: r.u32(at + 4),
            flags: r.size(at + 8, field("sh_flags")),
            addr: r.addr(at + 16),
            offset: r.size(at + 24, field("sh_offset")),
            size: r.size(at + 32, field("sh_size")),
            link: r.u32(at + 40),
            info: r.u32(at + 44),
            addralign: r.size(at + 48, field("sh_addralign")),
            entsize: r.size(at + 56, field("sh_entsize")),
          }
          : {
            index,
            name: "",
            type: r.u32(at + 4),
            flags: r.u32(at + 8),
            addr: r.addr(at + 12),
            offset: r.u32(at + 16),
            size: r.u32(at + 20),
            link: r.u32(at + 24),
            info: r.u32(at + 28),
            addralign: r.u32(at + 32),
            entsize: r.u32(at + 36),
          },
      );
    }
    if (shstrndx !== SHN_UNDEF) {
      const names = sectionTable(bytes, sectionHeaders, shstrndx, "e_shstrndx", prefix);
      for (const [index, header] of sectionHeaders.entries()) {
        header.name = readString(
          bytes,
          names,
          nameOffsets[index] ?? 0,
          `section header ${index} sh_name`,
          prefix,
        );
      }
    }
  }

  const symbols = readSymbols(bytes, r, sectionHeaders, prefix);
  return {
    class: is64 ? 64 : 32,
    machine,
    type,
    entry,
    programHeaders,
    sectionHeaders,
    symbols,
  };
}

/** The section `index` refers to, checked to lie in the file. */
function sectionTable(
  bytes: Uint8Array,
  sections: ElfSectionHeader[],
  index: number,
  field: string,
  prefix: string,
): ElfSectionHeader {
  const section = sections[index];
  if (section === undefined) {
    throw new SyntaxError(
      `${prefix}${field} is ${index}, beyond the ${sections.length} section headers`,
    );
  }
  if (section.type === SHT_NOBITS) {
    throw new SyntaxError(
      `${prefix}${field} is ${index}, a section with no bytes in the file (SHT_NOBITS)`,
    );
  }
  checkInFile(
    bytes,
    section.offset,
    section.size,
    `section ${index} (${JSON.stringify(section.name)})`,
    prefix,
  );
  return section;
}

const BINDINGS = ["local", "global", "weak"] as const;

function readSymbols(
  bytes: Uint8Array,
  r: Reader,
  sections: ElfSectionHeader[],
  prefix: string,
): ElfSymbol[] {
  const entsize = r.is64 ? 24 : 16;
  const symbols: ElfSymbol[] = [];
  const seen = new Set<string>();
  for (const wanted of [SHT_SYMTAB, SHT_DYNSYM]) {
    for (const table of sections) {
      if (table.type !== wanted) continue;
      const where = `section ${table.index} (${JSON.stringify(table.name)})`;
      const step = table.entsize === 0 ? entsize : table.entsize;
      if (step < entsize) {
        throw new SyntaxError(
          `${prefix}${where} sh_entsize is ${step} (want at least ${entsize})`,
        );
      }
      checkInFile(bytes, table.offset, table.size, where, prefix);
      const strings = sectionTable(
        bytes,
        sections,
        table.link,
        `${where} sh_link`,
        prefix,
      );
      const count = Math.floor(table.size / step);
      for (let i = 1; i < count; i++) { // entry 0 is the null symbol
        const at = table.offset + i * step;
        const nameIndex = r.u32(at);
        const info = r.u8(at + (r.is64 ? 4 : 12));
        const shndx = r.u16(at + (r.is64 ? 6 : 14));
        const address = r.addr(at + (r.is64 ? 8 : 4));
        const size = r.is64 ? r.u64Lossy(at + 16) : r.u32(at + 8);
        const stt = info & 0xf;
        if (stt === STT_SECTION || stt === STT_FILE || shndx === SHN_UNDEF) continue;
        const name = readString(bytes, strings, nameIndex, `${where} symbol ${i} st_name`, prefix);
        if (name === "") continue;
        const key = `${name}\0${address}`;
        if (seen.has(key)) continue;
        seen.add(key);
        symbols.push({
          name,
          address,
          size,
          kind: stt === STT_FUNC ? "function" : stt === STT_OBJECT ? "object" : "other",
          binding: BINDINGS[info >> 4] ?? "other",
          section: shndx,
        });
      }
    }
  }
  return symbols.sort((a, b) => a.address < b.address ? -1 : a.address > b.address ? 1 : 0);
}

/**
 * Reads the symbols of an ELF file, for example a kernel's separate debug
 * file, without loading it. Same rules as {@linkcode ElfImage.symbols}.
 *
 * @param bytes The whole ELF file.
 * @param path The file's path, for error messages.
 *
 * @example
 * ```ts ignore
 * import { readElfSymbols } from "./elf.ts";
 *
 * const symbols = readElfSymbols(Deno.readFileSync("vmlinux"), "vmlinux");
 * const start = symbols.find((s) => s.name === "startup_64");
 * ```
 *
 * @example An image that is not ELF
 * ```ts
 * import { readElfSymbols } from "./elf.ts";
 * import assert from "node:assert/strict";
 *
 * assert.throws(() => readElfSymbols(new Uint8Array(64)), SyntaxError);
 * ```
 */
export function readElfSymbols(bytes: Uint8Array, path?: string): ElfSymbol[] {
  return parseElf(bytes, path).symbols;
}
