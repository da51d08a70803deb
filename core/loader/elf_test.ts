import assert from "node:assert/strict";
import { hasElfMagic, parseElf, programHeaderTypeName, readElfSymbols } from "./elf.ts";
import { buildElf, buildElfLayout, ByteBuilder } from "./_test_images.ts";

const CODE = [0xfa, 0xf4, 0xeb, 0xfd]; // cli; hlt; jmp $-3

function patch(bytes: Uint8Array, edit: (b: DataView) => void): Uint8Array {
  const copy = bytes.slice();
  edit(new DataView(copy.buffer));
  return copy;
}

Deno.test("parseElf() reads an ELF32 header, program headers and section names", () => {
  const bytes = buildElf({
    class: 32,
    entry: 0x100000,
    segments: [
      { paddr: 0x100000, data: CODE, memsz: 0x2000 },
      { type: 4, paddr: 0, data: [1, 2, 3, 4] },
    ],
    symbols: [{ name: "_start", value: 0x100000 }],
  });
  const elf = parseElf(bytes, "k.elf");
  assert.equal(elf.class, 32);
  assert.equal(elf.machine, 3);
  assert.equal(elf.type, 2);
  assert.equal(elf.entry, 0x100000n);
  assert.equal(elf.programHeaders.length, 2);
  const [text, note] = elf.programHeaders;
  assert.deepEqual(
    { type: text?.type, paddr: text?.paddr, vaddr: text?.vaddr, filesz: text?.filesz, memsz: text?.memsz },
    { type: 1, paddr: 0x100000n, vaddr: 0x100000n, filesz: 4, memsz: 0x2000 },
  );
  assert.equal(programHeaderTypeName(note?.type ?? 0), "PT_NOTE");
  assert.deepEqual(
    elf.sectionHeaders.map((s) => s.name),
    ["", ".text", ".symtab", ".strtab", ".shstrtab"],
  );
});

Deno.test("parseElf() reads 64-bit addresses of an ELF64 image as bigints", () => {
  const bytes = buildElf({
    class: 64,
    entry: 0xffffffff80100000n,
    segments: [{ paddr: 0x100000, vaddr: 0xffffffff80100000n, data: CODE }],
    symbols: [{ name: "start64", value: 0xffffffff80100000n, size: 4 }],
  });
  const elf = parseElf(bytes);
  assert.equal(elf.class, 64);
  assert.equal(elf.machine, 62);
  assert.equal(elf.entry, 0xffffffff80100000n);
  assert.equal(elf.programHeaders[0]?.vaddr, 0xffffffff80100000n);
  assert.equal(elf.programHeaders[0]?.paddr, 0x100000n);
  assert.deepEqual(elf.symbols.map((s) => [s.name, s.address, s.size]), [["start64", 0xffffffff80100000n, 4]]);
});

Deno.test("parseElf() returns named symbols with kinds, sorted, without section, file, undefined or duplicate ones", () => {
  const bytes = buildElf({
    class: 32,
    entry: 0x1000,
    segments: [{ paddr: 0x1000, data: CODE }],
    symbols: [
      { name: "main", value: 0x1010, size: 32, type: 2 },
      { name: "counter", value: 0x2000, size: 4, type: 1, bind: 0 },
      { name: "label", value: 0x1004, type: 0, bind: 2 },
      { name: "", value: 0x1000, type: 3 }, // section symbol
      { name: "kernel.c", value: 0, type: 4, shndx: 0xfff1 }, // file symbol
      { name: "printf", value: 0, type: 2, shndx: 0 }, // undefined
      { name: "", value: 0x1008, type: 2 }, // no name
    ],
    dynsym: [
      { name: "main", value: 0x1010, size: 32, type: 2 }, // duplicate of .symtab
      { name: "exported", value: 0x1020, type: 1 },
    ],
  });
  const symbols = readElfSymbols(bytes);
  assert.deepEqual(symbols, [
    { name: "label", address: 0x1004n, size: 0, kind: "other", binding: "weak", section: 1 },
    { name: "main", address: 0x1010n, size: 32, kind: "function", binding: "global", section: 1 },
    { name: "exported", address: 0x1020n, size: 0, kind: "object", binding: "global", section: 1 },
    { name: "counter", address: 0x2000n, size: 4, kind: "object", binding: "local", section: 1 },
  ]);
});

Deno.test("parseElf() parses an image without section headers", () => {
  const bytes = patch(buildElf({ class: 64, entry: 0x1000, segments: [{ paddr: 0x1000, data: CODE }] }), (v) => {
    v.setBigUint64(40, 0n, true); // e_shoff
    v.setUint16(60, 0, true); // e_shnum
    v.setUint16(62, 0, true); // e_shstrndx
  });
  const elf = parseElf(bytes);
  assert.deepEqual(elf.sectionHeaders, []);
  assert.deepEqual(elf.symbols, []);
  assert.equal(elf.programHeaders.length, 1);
});

Deno.test("hasElfMagic() checks the four magic bytes", () => {
  assert.equal(hasElfMagic(new Uint8Array([0x7f, 0x45, 0x4c, 0x46, 1])), true);
  assert.equal(hasElfMagic(new Uint8Array([0x7f, 0x45, 0x4c])), false);
  assert.equal(hasElfMagic(new Uint8Array([0x7f, 0x45, 0x4c, 0x47])), false);
});

Deno.test("parseElf() rejects an image without the ELF magic", () => {
  assert.throws(() => parseElf(new Uint8Array([0x4d, 0x5a, 0x90, 0]), "a.exe"), {
    name: "SyntaxError",
    message: 'Cannot parse ELF image "a.exe": no ELF magic (got 0x4d 0x5a 0x90 0x0, want 0x7f 0x45 0x4c 0x46)',
  });
  assert.throws(() => parseElf(new Uint8Array()), { name: "SyntaxError", message: /an empty file/ });
});

Deno.test("parseElf() rejects a truncated header", () => {
  const bytes = buildElf({ class: 64, entry: 0, segments: [] }).subarray(0, 40);
  assert.throws(() => parseElf(bytes), {
    name: "SyntaxError",
    message: "Cannot parse ELF image: the ELF64 header is truncated (0x28 bytes, want 0x40)",
  });
});

Deno.test("parseElf() rejects an invalid EI_CLASS", () => {
  const bytes = patch(buildElf({ class: 32, entry: 0, segments: [] }), (v) => v.setUint8(4, 3));
  assert.throws(() => parseElf(bytes), { name: "SyntaxError", message: /EI_CLASS is 3 / });
});

Deno.test("parseElf() rejects a big-endian image", () => {
  const bytes = patch(buildElf({ class: 32, entry: 0, segments: [] }), (v) => v.setUint8(5, 2));
  assert.throws(() => parseElf(bytes), { name: "TypeError", message: /EI_DATA is 2 \(big-endian\)/ });
});

Deno.test("parseElf() rejects a machine other than x86", () => {
  const bytes = buildElf({ class: 32, machine: 40, entry: 0, segments: [] });
  assert.throws(() => parseElf(bytes), {
    name: "TypeError",
    message: "Cannot parse ELF image: e_machine is 40 (want 3 (EM_386) or 62 (EM_X86_64))",
  });
});

Deno.test("parseElf() rejects a program header table outside the file", () => {
  const image = buildElfLayout({ class: 32, entry: 0x1000, segments: [{ paddr: 0x1000, data: CODE }] });
  const bytes = patch(image.bytes, (v) => v.setUint32(28, image.bytes.length - 8, true)); // e_phoff
  assert.throws(() => parseElf(bytes), {
    name: "SyntaxError",
    message: new RegExp(
      `the program header table \\(e_phoff 0x${
        (image.bytes.length - 8).toString(16)
      }, 1 entries\\) .* extends beyond the end of the file`,
    ),
  });
});

Deno.test("parseElf() rejects a too small e_phentsize", () => {
  const bytes = patch(
    buildElf({ class: 64, entry: 0x1000, segments: [{ paddr: 0x1000, data: CODE }] }),
    (v) => v.setUint16(54, 32, true),
  );
  assert.throws(() => parseElf(bytes), { name: "SyntaxError", message: /e_phentsize is 32 \(want at least 56\)/ });
});

Deno.test("parseElf() rejects a section header table outside the file", () => {
  const image = buildElfLayout({ class: 64, entry: 0x1000, segments: [{ paddr: 0x1000, data: CODE }] });
  const bytes = image.bytes.subarray(0, image.bytes.length - 10);
  assert.throws(() => parseElf(bytes), { name: "SyntaxError", message: /the section header table \(e_shoff 0x/ });
});

Deno.test("parseElf() rejects a symbol table whose sh_link is out of range", () => {
  const image = buildElfLayout({
    class: 32,
    entry: 0x1000,
    segments: [{ paddr: 0x1000, data: CODE }],
    symbols: [{ name: "x", value: 0x1000 }],
  });
  // Section 2 is .symtab; its sh_link is at +24.
  const bytes = patch(image.bytes, (v) => v.setUint32(image.shoff + 2 * image.shentsize + 24, 99, true));
  assert.throws(() => parseElf(bytes), {
    name: "SyntaxError",
    message: 'Cannot parse ELF image: section 2 (".symtab") sh_link is 99, beyond the 5 section headers',
  });
});

Deno.test("parseElf() rejects a symbol name outside its string table", () => {
  const image = buildElfLayout({
    class: 64,
    entry: 0x1000,
    segments: [{ paddr: 0x1000, data: CODE }],
    symbols: [{ name: "x", value: 0x1000 }],
  });
  const symtab = new DataView(image.bytes.buffer).getBigUint64(image.shoff + 2 * image.shentsize + 24, true);
  const bytes = patch(image.bytes, (v) => v.setUint32(Number(symtab) + 24, 0x999, true));
  assert.throws(() => parseElf(bytes), { name: "SyntaxError", message: /symbol 1 st_name is 0x999, beyond the end/ });
});

Deno.test("parseElf() reads extended section numbering from section 0", () => {
  const image = buildElfLayout({
    class: 32,
    entry: 0x1000,
    segments: [{ paddr: 0x1000, data: CODE }],
    symbols: [{ name: "x", value: 0x1000 }],
  });
  const bytes = patch(image.bytes, (v) => {
    v.setUint16(48, 0, true); // e_shnum = 0: count in section 0 sh_size
    v.setUint16(50, 0xffff, true); // e_shstrndx = SHN_XINDEX: index in section 0 sh_link
    v.setUint32(image.shoff + 20, 5, true);
    v.setUint32(image.shoff + 24, 4, true);
  });
  const elf = parseElf(bytes);
  assert.equal(elf.sectionHeaders.length, 5);
  assert.equal(elf.sectionHeaders[4]?.name, ".shstrtab");
  assert.equal(elf.symbols[0]?.name, "x");
});

Deno.test("ByteBuilder writes little-endian fields", () => {
  const bytes = new ByteBuilder().u16(0, 0x1234).u32(2, 0xdeadbeef).build();
  assert.deepEqual([...bytes], [0x34, 0x12, 0xef, 0xbe, 0xad, 0xde]);
});
