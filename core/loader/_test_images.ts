// Test-only: builders for small ELF32/ELF64, multiboot and a.out-kludge
// images, and a fake LoadTarget backed by a Uint8Array that records writes.

import type { LoadTarget } from "./types.ts";

/** One recorded call on a {@linkcode FakeTarget}. */
export interface TargetWrite {
  kind: "write" | "fill";
  addr: number;
  len: number;
  value?: number;
}

/** Options of {@linkcode FakeTarget}. */
export interface FakeTargetOptions {
  /** Holes in RAM, as [start, end) pairs. */
  holes?: [number, number][];
  /** Bytes actually backed by memory (default: all of RAM); lets tests claim GiBs of RAM. */
  backing?: number;
}

/** Guest memory as a Uint8Array pre-filled with 0xAA, recording every write and fill. */
export class FakeTarget implements LoadTarget {
  readonly ramSize: number;
  readonly memory: Uint8Array;
  readonly writes: TargetWrite[] = [];
  #holes: [number, number][];

  constructor(ramSize: number, options: FakeTargetOptions = {}) {
    this.ramSize = ramSize;
    this.memory = new Uint8Array(options.backing ?? ramSize).fill(0xaa);
    this.#holes = options.holes ?? [];
  }

  isRam(addr: number, len: number): boolean {
    if (addr < 0 || len < 0 || addr + len > this.ramSize) return false;
    return this.#holes.every(([start, end]) => addr + len <= start || addr >= end);
  }

  write(addr: number, bytes: Uint8Array): void {
    this.#check(addr, bytes.length);
    this.writes.push({ kind: "write", addr, len: bytes.length });
    this.memory.set(bytes, addr);
  }

  fill(addr: number, len: number, value: number): void {
    this.#check(addr, len);
    this.writes.push({ kind: "fill", addr, len, value });
    this.memory.fill(value, addr, addr + len);
  }

  #check(addr: number, len: number): void {
    if (!this.isRam(addr, len)) {
      throw new RangeError(`write [0x${addr.toString(16)}, +0x${len.toString(16)}) outside RAM`);
    }
    if (addr + len > this.memory.length) {
      throw new Error(`test target has no backing for [0x${addr.toString(16)}, +0x${len.toString(16)})`);
    }
  }

  /** Reads `len` bytes at `addr`. */
  read(addr: number, len: number): Uint8Array {
    return this.memory.slice(addr, addr + len);
  }

  /** Reads a little-endian u32 at `addr`. */
  u32(addr: number): number {
    return new DataView(this.memory.buffer).getUint32(addr, true);
  }

  /** Reads a little-endian u64 at `addr`. */
  u64(addr: number): bigint {
    return new DataView(this.memory.buffer).getBigUint64(addr, true);
  }

  /** Reads a NUL-terminated string at `addr`. */
  cstring(addr: number): string {
    let end = addr;
    while (this.memory[end] !== 0) end++;
    return new TextDecoder().decode(this.memory.subarray(addr, end));
  }
}

/** Little-endian byte writer that grows as needed. */
export class ByteBuilder {
  #bytes = new Uint8Array(256);
  #view = new DataView(this.#bytes.buffer);
  length = 0;

  #ensure(end: number): void {
    if (end > this.#bytes.length) {
      const bigger = new Uint8Array(Math.max(end, this.#bytes.length * 2));
      bigger.set(this.#bytes);
      this.#bytes = bigger;
      this.#view = new DataView(bigger.buffer);
    }
    this.length = Math.max(this.length, end);
  }

  u8(at: number, value: number): this {
    this.#ensure(at + 1);
    this.#view.setUint8(at, value);
    return this;
  }

  u16(at: number, value: number): this {
    this.#ensure(at + 2);
    this.#view.setUint16(at, value, true);
    return this;
  }

  u32(at: number, value: number): this {
    this.#ensure(at + 4);
    this.#view.setUint32(at, value >>> 0, true);
    return this;
  }

  u64(at: number, value: bigint | number): this {
    this.#ensure(at + 8);
    this.#view.setBigUint64(at, BigInt(value), true);
    return this;
  }

  /** An address-sized field: u32 for ELF32, u64 for ELF64. */
  word(is64: boolean, at: number, value: bigint | number): this {
    return is64 ? this.u64(at, value) : this.u32(at, Number(value));
  }

  bytes(at: number, data: Uint8Array | readonly number[]): this {
    this.#ensure(at + data.length);
    this.#bytes.set(data, at);
    return this;
  }

  build(): Uint8Array {
    return this.#bytes.slice(0, this.length);
  }
}

/** A program header to build. */
export interface SegmentSpec {
  /** p_type; default PT_LOAD (1). */
  type?: number;
  paddr: bigint | number;
  /** p_vaddr; default paddr. */
  vaddr?: bigint | number;
  data: Uint8Array | readonly number[];
  /** p_memsz; default data.length. */
  memsz?: number;
  /** Overrides p_filesz (default data.length). */
  filesz?: number;
  /** Overrides p_offset (default where data is placed). */
  offset?: number;
  flags?: number;
}

/** A symbol to build. */
export interface SymbolSpec {
  name: string;
  value: bigint | number;
  size?: number;
  /** STT_*: default STT_FUNC (2). */
  type?: number;
  /** STB_*: default STB_GLOBAL (1). */
  bind?: number;
  /** st_shndx: default 1 (.text). */
  shndx?: number;
}

/** An ELF image to build. */
export interface ElfSpec {
  class: 32 | 64;
  /** e_machine; default EM_386 for ELF32, EM_X86_64 for ELF64. */
  machine?: number;
  /** e_type; default ET_EXEC (2). */
  type?: number;
  entry: bigint | number;
  segments: SegmentSpec[];
  symbols?: SymbolSpec[];
  dynsym?: SymbolSpec[];
}

/** Where the builder put things, for tests that corrupt a field. */
export interface ElfLayout {
  bytes: Uint8Array;
  phoff: number;
  phentsize: number;
  shoff: number;
  shentsize: number;
  /** File offset of each segment's data. */
  dataOffsets: number[];
}

const encoder = new TextEncoder();

function stringTable(names: string[]): { bytes: Uint8Array; index: Map<string, number> } {
  const index = new Map<string, number>();
  const parts: number[] = [0];
  for (const name of names) {
    if (index.has(name)) continue;
    index.set(name, parts.length);
    parts.push(...encoder.encode(name), 0);
  }
  return { bytes: new Uint8Array(parts), index };
}

/** Builds an x86 ELF image; see {@linkcode ElfSpec}. */
export function buildElfLayout(spec: ElfSpec): ElfLayout {
  const is64 = spec.class === 64;
  const b = new ByteBuilder();
  const ehsize = is64 ? 64 : 52;
  const phentsize = is64 ? 56 : 32;
  const shentsize = is64 ? 64 : 40;
  const phoff = ehsize;
  let at = phoff + spec.segments.length * phentsize;

  const dataOffsets: number[] = [];
  for (const seg of spec.segments) {
    at = Math.ceil(at / 16) * 16;
    dataOffsets.push(at);
    b.bytes(at, seg.data);
    at += seg.data.length;
  }

  // Sections: null, .text (over segment 0), .symtab, .strtab, [.dynsym, .dynstr], .shstrtab.
  interface Section {
    name: string;
    type: number;
    offset: number;
    size: number;
    link: number;
    entsize: number;
    addr: bigint;
  }
  const sections: Section[] = [{ name: "", type: 0, offset: 0, size: 0, link: 0, entsize: 0, addr: 0n }];
  const first = spec.segments[0];
  sections.push({
    name: ".text",
    type: 1,
    offset: dataOffsets[0] ?? 0,
    size: first?.data.length ?? 0,
    link: 0,
    entsize: 0,
    addr: BigInt(first?.vaddr ?? first?.paddr ?? 0),
  });
  const symSize = is64 ? 24 : 16;
  const addSymbols = (symbols: SymbolSpec[], tableName: string, stringsName: string, type: number) => {
    const strings = stringTable(symbols.map((s) => s.name));
    at = Math.ceil(at / 8) * 8;
    const tableAt = at;
    symbols.forEach((s, i) => {
      const e = tableAt + (i + 1) * symSize; // entry 0 stays the null symbol
      const info = ((s.bind ?? 1) << 4) | (s.type ?? 2);
      const name = s.name === "" ? 0 : strings.index.get(s.name) ?? 0;
      if (is64) {
        b.u32(e, name).u8(e + 4, info).u8(e + 5, 0).u16(e + 6, s.shndx ?? 1).u64(e + 8, s.value).u64(
          e + 16,
          s.size ?? 0,
        );
      } else {
        b.u32(e, name).u32(e + 4, Number(s.value)).u32(e + 8, s.size ?? 0).u8(e + 12, info).u8(e + 13, 0).u16(
          e + 14,
          s.shndx ?? 1,
        );
      }
    });
    const tableSize = (symbols.length + 1) * symSize;
    b.bytes(tableAt, new Uint8Array(symSize)); // the null symbol
    at = tableAt + tableSize;
    const stringsAt = at;
    b.bytes(stringsAt, strings.bytes);
    at += strings.bytes.length;
    const stringsIndex = sections.length + 1;
    sections.push({
      name: tableName,
      type,
      offset: tableAt,
      size: tableSize,
      link: stringsIndex,
      entsize: symSize,
      addr: 0n,
    });
    sections.push({
      name: stringsName,
      type: 3,
      offset: stringsAt,
      size: strings.bytes.length,
      link: 0,
      entsize: 0,
      addr: 0n,
    });
  };
  if (spec.symbols !== undefined) addSymbols(spec.symbols, ".symtab", ".strtab", 2);
  if (spec.dynsym !== undefined) addSymbols(spec.dynsym, ".dynsym", ".dynstr", 11);
  const shstrtab = stringTable([...sections.map((s) => s.name), ".shstrtab"]);
  sections.push({
    name: ".shstrtab",
    type: 3,
    offset: at,
    size: shstrtab.bytes.length,
    link: 0,
    entsize: 0,
    addr: 0n,
  });
  b.bytes(at, shstrtab.bytes);
  at += shstrtab.bytes.length;
  at = Math.ceil(at / 8) * 8;
  const shoff = at;
  sections.forEach((s, i) => {
    const e = shoff + i * shentsize;
    const name = s.name === "" ? 0 : shstrtab.index.get(s.name) ?? 0;
    b.u32(e, name).u32(e + 4, s.type);
    if (is64) {
      b.u64(e + 8, 0).u64(e + 16, s.addr).u64(e + 24, s.offset).u64(e + 32, s.size).u32(e + 40, s.link)
        .u32(e + 44, 0).u64(e + 48, 1).u64(e + 56, s.entsize);
    } else {
      b.u32(e + 8, 0).u32(e + 12, Number(s.addr)).u32(e + 16, s.offset).u32(e + 20, s.size).u32(e + 24, s.link)
        .u32(e + 28, 0).u32(e + 32, 1).u32(e + 36, s.entsize);
    }
  });

  // ELF header.
  b.bytes(0, [0x7f, 0x45, 0x4c, 0x46, is64 ? 2 : 1, 1, 1, 0]);
  b.bytes(8, new Uint8Array(8));
  b.u16(16, spec.type ?? 2).u16(18, spec.machine ?? (is64 ? 62 : 3)).u32(20, 1);
  b.word(is64, 24, spec.entry);
  if (is64) {
    b.u64(32, phoff).u64(40, shoff).u32(48, 0).u16(52, ehsize).u16(54, phentsize).u16(56, spec.segments.length)
      .u16(58, shentsize).u16(60, sections.length).u16(62, sections.length - 1);
  } else {
    b.u32(28, phoff).u32(32, shoff).u32(36, 0).u16(40, ehsize).u16(42, phentsize).u16(44, spec.segments.length)
      .u16(46, shentsize).u16(48, sections.length).u16(50, sections.length - 1);
  }

  // Program headers.
  spec.segments.forEach((seg, i) => {
    const e = phoff + i * phentsize;
    const offset = seg.offset ?? dataOffsets[i] ?? 0;
    const filesz = seg.filesz ?? seg.data.length;
    const memsz = seg.memsz ?? seg.data.length;
    const vaddr = seg.vaddr ?? seg.paddr;
    const flags = seg.flags ?? 5;
    if (is64) {
      b.u32(e, seg.type ?? 1).u32(e + 4, flags).u64(e + 8, offset).u64(e + 16, vaddr).u64(e + 24, seg.paddr)
        .u64(e + 32, filesz).u64(e + 40, memsz).u64(e + 48, 0x1000);
    } else {
      b.u32(e, seg.type ?? 1).u32(e + 4, offset).u32(e + 8, Number(vaddr)).u32(e + 12, Number(seg.paddr))
        .u32(e + 16, filesz).u32(e + 20, memsz).u32(e + 24, flags).u32(e + 28, 0x1000);
    }
  });
  return { bytes: b.build(), phoff, phentsize, shoff, shentsize, dataOffsets };
}

/** Builds an x86 ELF image; see {@linkcode ElfSpec}. */
export function buildElf(spec: ElfSpec): Uint8Array {
  return buildElfLayout(spec).bytes;
}

/** The a.out kludge fields of a multiboot header. */
export interface AoutSpec {
  headerAddr: number;
  loadAddr: number;
  loadEndAddr: number;
  bssEndAddr: number;
  entryAddr: number;
}

/** A multiboot header: 12 bytes, 32 with the a.out fields, 48 with video fields. */
export function multibootHeader(
  options: { flags?: number; checksum?: number; aout?: AoutSpec; video?: boolean } = {},
): Uint8Array {
  let flags = options.flags ?? 0x3;
  if (options.aout !== undefined) flags |= 1 << 16;
  const b = new ByteBuilder();
  b.u32(0, 0x1badb002).u32(4, flags).u32(8, options.checksum ?? -(0x1badb002 + flags));
  if (options.aout !== undefined || options.video === true) {
    const a = options.aout;
    b.u32(12, a?.headerAddr ?? 0).u32(16, a?.loadAddr ?? 0).u32(20, a?.loadEndAddr ?? 0).u32(24, a?.bssEndAddr ?? 0)
      .u32(28, a?.entryAddr ?? 0);
  }
  if (options.video === true) b.u32(32, 1).u32(36, 80).u32(40, 25).u32(44, 0);
  return b.build();
}

/** An a.out-kludge kernel to build: file offset 0 is loaded at `loadAddr`. */
export interface AoutKernelSpec {
  loadAddr: number;
  /** Offset of the multiboot header in the file; default 0x10. */
  headerOffset?: number;
  /** Body placed after the header (at headerOffset + 32). */
  code: readonly number[];
  /** Total file size (padding with 0x90); default just past the code. */
  fileSize?: number;
  /** Field overrides; by default load_end_addr = 0 (to file end), bss_end_addr = 0, entry after the header. */
  fields?: Partial<AoutSpec>;
  flags?: number;
}

/** Builds a flat kernel with a multiboot header using the a.out kludge. */
export function buildAoutKernel(spec: AoutKernelSpec): { bytes: Uint8Array; fields: AoutSpec } {
  const headerOffset = spec.headerOffset ?? 0x10;
  const codeAt = headerOffset + 32;
  const fields: AoutSpec = {
    headerAddr: spec.loadAddr + headerOffset,
    loadAddr: spec.loadAddr,
    loadEndAddr: 0,
    bssEndAddr: 0,
    entryAddr: spec.loadAddr + codeAt,
    ...spec.fields,
  };
  const size = Math.max(spec.fileSize ?? 0, codeAt + spec.code.length);
  const b = new ByteBuilder();
  b.bytes(0, new Uint8Array(size).fill(0x90));
  b.bytes(headerOffset, multibootHeader({ aout: fields, ...(spec.flags === undefined ? {} : { flags: spec.flags }) }));
  b.bytes(codeAt, spec.code);
  return { bytes: b.build(), fields };
}

/** Concatenates byte arrays. */
export function concat(...parts: (Uint8Array | readonly number[])[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
