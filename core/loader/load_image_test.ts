import assert from "node:assert/strict";
import { loadImage } from "./load_image.ts";
import type { LoadOptions } from "./types.ts";
import { buildAoutKernel, buildElf, buildElfLayout, concat, FakeTarget, multibootHeader } from "./_test_images.ts";

const MiB = 0x100000;
const CODE = [0xfa, 0xf4, 0xeb, 0xfd]; // cli; hlt; jmp $-3

/** Asserts that `load` throws the expected error and wrote nothing into `target`. */
function assertLoadsNothing(
  target: FakeTarget,
  load: () => unknown,
  expected: { name: string; message: string | RegExp },
): void {
  assert.throws(load, expected);
  assert.deepEqual(target.writes, [], "the loader wrote into guest memory before failing");
  assert.ok(target.memory.every((b) => b === 0xaa), "guest memory changed");
}

interface DecodedInfo {
  flags: number;
  memLower: number;
  memUpper: number;
  cmdline: string;
  bootLoaderName: string;
  mmap: { base: bigint; length: bigint; type: number; size: number }[];
  modules: { start: number; end: number; cmdline: string; data: number[] }[];
}

/** Decodes a multiboot info structure back from guest memory, per the Multiboot 1 spec. */
function decodeInfo(t: FakeTarget, address: number): DecodedInfo {
  const mmap: DecodedInfo["mmap"] = [];
  const mmapAddr = t.u32(address + 48);
  for (let at = mmapAddr; at < mmapAddr + t.u32(address + 44);) {
    const size = t.u32(at);
    mmap.push({ size, base: t.u64(at + 4), length: t.u64(at + 12), type: t.u32(at + 20) });
    at += size + 4;
  }
  const modules: DecodedInfo["modules"] = [];
  for (let i = 0; i < t.u32(address + 20); i++) {
    const at = t.u32(address + 24) + 16 * i;
    const start = t.u32(at);
    const end = t.u32(at + 4);
    modules.push({ start, end, cmdline: t.cstring(t.u32(at + 8)), data: [...t.read(start, end - start)] });
  }
  return {
    flags: t.u32(address),
    memLower: t.u32(address + 4),
    memUpper: t.u32(address + 8),
    cmdline: t.cstring(t.u32(address + 16)),
    bootLoaderName: t.cstring(t.u32(address + 64)),
    mmap,
    modules,
  };
}

function multibootElf32(options: { entry?: number; flags?: number; bssSize?: number } = {}): Uint8Array {
  const body = concat(multibootHeader({ flags: options.flags ?? 0x3 }), CODE);
  return buildElf({
    class: 32,
    entry: options.entry ?? 0x10000c,
    segments: [{ paddr: 0x100000, data: body, memsz: body.length + (options.bssSize ?? 0x1000) }],
    symbols: [{ name: "_start", value: 0x10000c, size: 4 }, { name: "stack", value: 0x100100, type: 1 }],
  });
}

// --- flat -------------------------------------------------------------------

Deno.test("loadImage() loads a flat image at 0x7c00 in real mode", () => {
  const target = new FakeTarget(MiB);
  const image = loadImage(new Uint8Array(CODE), target, { format: "flat" });
  assert.deepEqual(image, {
    format: "flat",
    mode: "real",
    entry: 0x7c00n,
    registers: {},
    symbols: [],
    lowest: 0x7c00,
    end: 0x7c04,
  });
  assert.deepEqual([...target.read(0x7c00, 4)], CODE);
  assert.equal(target.memory[0x7bff], 0xaa);
  assert.equal(target.memory[0x7c04], 0xaa);
});

Deno.test("loadImage() loads a flat image at loadAddress", () => {
  const target = new FakeTarget(MiB);
  const image = loadImage(new Uint8Array(CODE), target, { loadAddress: 0x10000 });
  assert.equal(image.entry, 0x10000n);
  assert.equal(image.lowest, 0x10000);
  assert.deepEqual([...target.read(0x10000, 4)], CODE);
  assert.deepEqual(target.writes, [{ kind: "write", addr: 0x10000, len: 4 }]);
});

Deno.test("loadImage() rejects a flat image beyond RAM", () => {
  const target = new FakeTarget(0x8000);
  assertLoadsNothing(target, () => loadImage(new Uint8Array(0x1000), target, { path: "boot.bin", format: "flat" }), {
    name: "RangeError",
    message: 'Cannot load flat image "boot.bin": the image ends at 0x8c00, beyond guest RAM (0x8000)',
  });
});

Deno.test("loadImage() rejects a flat loadAddress beyond 1 MiB", () => {
  const target = new FakeTarget(2 * MiB);
  assertLoadsNothing(target, () => loadImage(new Uint8Array(CODE), target, { loadAddress: 0x100000 }), {
    name: "RangeError",
    message: "Cannot load flat image: option loadAddress is 0x100000, beyond the 1 MiB a real-mode entry can reach",
  });
  assertLoadsNothing(target, () => loadImage(new Uint8Array(CODE), target, { loadAddress: -1 }), {
    name: "RangeError",
    message: /option loadAddress is -1, not an address/,
  });
});

Deno.test("loadImage() rejects an empty flat image", () => {
  const target = new FakeTarget(MiB);
  assertLoadsNothing(target, () => loadImage(new Uint8Array(), target, { format: "flat" }), {
    name: "SyntaxError",
    message: "Cannot load flat image: the image is empty (0 bytes)",
  });
});

// --- ELF --------------------------------------------------------------------

Deno.test("loadImage() loads ELF32 segments at p_paddr and zeroes BSS", () => {
  const target = new FakeTarget(4 * MiB);
  const data = [1, 2, 3, 4, 5, 6, 7, 8];
  const bytes = buildElf({
    class: 32,
    entry: 0x100000,
    segments: [
      { paddr: 0x100000, data: CODE },
      { paddr: 0x200000, data, memsz: 0x1000 },
    ],
    symbols: [{ name: "_start", value: 0x100000, size: 4 }, { name: "table", value: 0x200000, size: 8, type: 1 }],
  });
  const image = loadImage(bytes, target, { path: "k32.elf" });
  assert.equal(image.format, "elf");
  assert.equal(image.mode, "protected");
  assert.equal(image.entry, 0x100000n);
  assert.deepEqual(image.registers, {});
  assert.equal(image.lowest, 0x100000);
  assert.equal(image.end, 0x201000);
  assert.equal(image.bootInfo, undefined);
  assert.deepEqual([...target.read(0x100000, 4)], CODE);
  assert.equal(target.memory[0x100004], 0xaa, "bytes past a segment without BSS are untouched");
  assert.deepEqual([...target.read(0x200000, 8)], data);
  assert.ok(target.read(0x200008, 0x1000 - 8).every((b) => b === 0), "BSS is zeroed");
  assert.equal(target.memory[0x201000], 0xaa);
  assert.deepEqual(
    image.symbols.map(({ name, address, size, kind }) => ({ name, address, size, kind })),
    [
      { name: "_start", address: 0x100000n, size: 4, kind: "function" },
      { name: "table", address: 0x200000n, size: 8, kind: "object" },
    ],
  );
});

Deno.test("loadImage() enters an ELF64 image in long mode at e_entry", () => {
  const target = new FakeTarget(4 * MiB);
  const bytes = buildElf({ class: 64, entry: 0x100002, segments: [{ paddr: 0x100000, data: CODE }] });
  const image = loadImage(bytes, target);
  assert.equal(image.format, "elf");
  assert.equal(image.mode, "long");
  assert.equal(image.entry, 0x100002n);
  assert.deepEqual([...target.read(0x100000, 4)], CODE);
});

Deno.test("loadImage() translates a virtual e_entry to the segment's physical address", () => {
  const target = new FakeTarget(4 * MiB);
  const bytes = buildElf({
    class: 64,
    entry: 0xffffffff80000002n,
    segments: [{ paddr: 0x200000, vaddr: 0xffffffff80000000n, data: CODE }],
    symbols: [{ name: "start", value: 0xffffffff80000002n }],
  });
  const image = loadImage(bytes, target);
  assert.equal(image.entry, 0x200002n);
  assert.equal(image.symbols[0]?.address, 0xffffffff80000002n, "symbols keep their linked addresses");
  assert.deepEqual([...target.read(0x200000, 4)], CODE);
});

Deno.test("loadImage() loads at p_vaddr when every p_paddr is 0", () => {
  const target = new FakeTarget(4 * MiB);
  const bytes = buildElf({
    class: 32,
    entry: 0x300000,
    segments: [{ paddr: 0, vaddr: 0x300000, data: CODE }, { paddr: 0, vaddr: 0x301000, data: [9], memsz: 16 }],
  });
  const image = loadImage(bytes, target);
  assert.equal(image.lowest, 0x300000);
  assert.equal(image.end, 0x301010);
  assert.deepEqual([...target.read(0x300000, 4)], CODE);
  assert.equal(target.memory[0x301000], 9);
});

Deno.test("loadImage() skips program headers that are not PT_LOAD or are empty", () => {
  const target = new FakeTarget(4 * MiB);
  const bytes = buildElf({
    class: 32,
    entry: 0x100000,
    segments: [
      { type: 4, paddr: 0x3fffff00, data: [1, 2, 3, 4] }, // PT_NOTE far outside RAM
      { paddr: 0x100000, data: CODE },
      { paddr: 0x3fffff00, data: [], memsz: 0 }, // empty PT_LOAD
    ],
  });
  loadImage(bytes, target);
  assert.deepEqual(target.writes, [{ kind: "write", addr: 0x100000, len: 4 }]);
});

Deno.test("loadImage() rejects an ELF segment beyond RAM", () => {
  const target = new FakeTarget(0x4000000, { backing: 0x10000 });
  const bytes = buildElf({
    class: 32,
    entry: 0x100000,
    segments: [
      { paddr: 0x100000, data: CODE },
      { type: 4, paddr: 0, data: [0] },
      { paddr: 0x3000000, data: [1], memsz: 0x2000000 },
    ],
  });
  assertLoadsNothing(target, () => loadImage(bytes, target), {
    name: "RangeError",
    message: "Cannot load ELF image: program header 2 (PT_LOAD) ends at 0x5000000, beyond guest RAM (0x4000000)",
  });
});

Deno.test("loadImage() rejects an ELF segment at a physical address beyond RAM", () => {
  const target = new FakeTarget(4 * MiB);
  const bytes = buildElf({
    class: 64,
    entry: 0xffffffff81000000n,
    segments: [{ paddr: 0xffffffff81000000n, data: CODE }],
  });
  assertLoadsNothing(target, () => loadImage(bytes, target, { path: "vmlinux" }), {
    name: "RangeError",
    message:
      'Cannot load ELF image "vmlinux": program header 0 (PT_LOAD) starts at 0xffffffff81000000, beyond guest RAM (0x400000)',
  });
});

Deno.test("loadImage() rejects an ELF segment in a hole of guest RAM", () => {
  const target = new FakeTarget(4 * MiB, { holes: [[0x200000, 0x210000]] });
  const bytes = buildElf({ class: 32, entry: 0x1ff000, segments: [{ paddr: 0x1ff000, data: CODE, memsz: 0x2000 }] });
  assertLoadsNothing(target, () => loadImage(bytes, target), {
    name: "RangeError",
    message: /program header 0 \(PT_LOAD\) \[0x1ff000, 0x201000\) is not entirely in guest RAM/,
  });
});

Deno.test("loadImage() rejects overlapping ELF segments", () => {
  const target = new FakeTarget(4 * MiB);
  const bytes = buildElf({
    class: 32,
    entry: 0x100000,
    segments: [{ paddr: 0x100000, data: CODE, memsz: 0x1000 }, { paddr: 0x100800, data: CODE }],
  });
  assertLoadsNothing(target, () => loadImage(bytes, target), {
    name: "RangeError",
    message:
      "Cannot load ELF image: program header 1 (PT_LOAD) [0x100800, 0x100804) overlaps program header 0 (PT_LOAD) [0x100000, 0x101000)",
  });
});

Deno.test("loadImage() rejects an ELF segment whose p_filesz exceeds p_memsz", () => {
  const target = new FakeTarget(4 * MiB);
  const bytes = buildElf({ class: 64, entry: 0x100000, segments: [{ paddr: 0x100000, data: CODE, memsz: 2 }] });
  assertLoadsNothing(target, () => loadImage(bytes, target), {
    name: "SyntaxError",
    message: "Cannot load ELF image: program header 0 (PT_LOAD) p_filesz 0x4 exceeds p_memsz 0x2",
  });
});

Deno.test("loadImage() rejects an ELF segment whose bytes lie beyond the end of the file", () => {
  const target = new FakeTarget(4 * MiB);
  const bytes = buildElf({
    class: 32,
    entry: 0x100000,
    segments: [{ paddr: 0x100000, data: CODE, offset: 0x10000, filesz: 0x100, memsz: 0x100 }],
  });
  assertLoadsNothing(target, () => loadImage(bytes, target), {
    name: "SyntaxError",
    message: new RegExp(
      `program header 0 \\(PT_LOAD\\) file bytes \\[0x10000, 0x10100\\) extend beyond the end of the file \\(0x${
        bytes.length.toString(16)
      } bytes\\)`,
    ),
  });
});

Deno.test("loadImage() rejects an ELF entry outside all loaded segments", () => {
  const target = new FakeTarget(4 * MiB);
  const bytes = buildElf({ class: 32, entry: 0x400000, segments: [{ paddr: 0x100000, data: CODE, memsz: 0x1000 }] });
  assertLoadsNothing(target, () => loadImage(bytes, target), {
    name: "RangeError",
    message: "Cannot load ELF image: e_entry 0x400000 is outside all loaded segments",
  });
});

Deno.test("loadImage() rejects an ELF image with no PT_LOAD segment", () => {
  const target = new FakeTarget(4 * MiB);
  const bytes = buildElf({ class: 32, entry: 0x100000, segments: [{ type: 4, paddr: 0x100000, data: CODE }] });
  assertLoadsNothing(target, () => loadImage(bytes, target), {
    name: "SyntaxError",
    message: "Cannot load ELF image: no program header is PT_LOAD with p_memsz > 0 (1 program headers)",
  });
});

Deno.test("loadImage() rejects a relocatable ELF object", () => {
  const target = new FakeTarget(4 * MiB);
  const bytes = buildElf({ class: 64, type: 1, entry: 0, segments: [{ paddr: 0x100000, data: CODE }] });
  assertLoadsNothing(target, () => loadImage(bytes, target, { path: "k.o" }), {
    name: "TypeError",
    message: 'Cannot load ELF image "k.o": e_type is 1 (ET_REL); only ET_EXEC (2) and ET_DYN (3) images can be loaded',
  });
});

Deno.test("loadImage() rejects malformed or foreign ELF headers and loads nothing", () => {
  const target = new FakeTarget(4 * MiB);
  const layout = buildElfLayout({ class: 32, entry: 0x100000, segments: [{ paddr: 0x100000, data: CODE }] });
  const edit = (f: (v: DataView) => void) => {
    const copy = layout.bytes.slice();
    f(new DataView(copy.buffer));
    return copy;
  };
  const cases: [Uint8Array, string, RegExp][] = [
    [layout.bytes.subarray(0, 30), "SyntaxError", /the ELF32 header is truncated \(0x1e bytes, want 0x34\)/],
    [edit((v) => v.setUint8(4, 0)), "SyntaxError", /EI_CLASS is 0 /],
    [edit((v) => v.setUint8(5, 2)), "TypeError", /EI_DATA is 2 \(big-endian\)/],
    [edit((v) => v.setUint16(18, 0x28, true)), "TypeError", /e_machine is 40 /],
    [edit((v) => v.setUint32(28, 0xfff0, true)), "SyntaxError", /program header table \(e_phoff 0xfff0, 1 entries\)/],
  ];
  for (const [bytes, name, message] of cases) {
    assertLoadsNothing(target, () => loadImage(bytes, target, { format: "elf" }), { name, message });
  }
});

// --- options ----------------------------------------------------------------

Deno.test("loadImage() rejects options the image format cannot use", () => {
  const target = new FakeTarget(4 * MiB);
  const elf = buildElf({ class: 32, entry: 0x100000, segments: [{ paddr: 0x100000, data: CODE }] });
  const cases: [Uint8Array, LoadOptions, RegExp][] = [
    [
      elf,
      { loadAddress: 0x7c00 },
      /^Cannot load ELF image: option loadAddress \(0x7c00\) applies only to flat images$/,
    ],
    [
      elf,
      { cmdline: "quiet" },
      /^Cannot load ELF image: option cmdline \("quiet"\) applies only to multiboot, bzImage and PVH kernels$/,
    ],
    [
      new Uint8Array(CODE),
      { format: "flat", modules: [{ data: new Uint8Array(1), cmdline: "m" }] },
      /option modules \(1\)/,
    ],
    [new Uint8Array(CODE), { format: "bzImage" as "flat" }, /option format is "bzImage"/],
  ];
  for (const [bytes, options, message] of cases) {
    assertLoadsNothing(target, () => loadImage(bytes, target, options), { name: "TypeError", message });
  }
  // An empty cmdline is no cmdline.
  assert.equal(loadImage(elf, target, { cmdline: "", modules: [] }).format, "elf");
});

Deno.test("loadImage() loads a multiboot ELF as plain ELF when format is elf", () => {
  const target = new FakeTarget(4 * MiB);
  const image = loadImage(multibootElf32(), target, { format: "elf" });
  assert.equal(image.format, "elf");
  assert.deepEqual(image.registers, {});
  assert.equal(image.bootInfo, undefined);
});

Deno.test("loadImage() loads any file as flat bytes when format is flat", () => {
  const target = new FakeTarget(4 * MiB);
  const bytes = multibootElf32();
  const image = loadImage(bytes, target, { format: "flat", loadAddress: 0x1000 });
  assert.equal(image.mode, "real");
  assert.deepEqual(target.read(0x1000, bytes.length), bytes);
});

Deno.test("loadImage() rejects format multiboot for an image without a multiboot header", () => {
  const target = new FakeTarget(4 * MiB);
  const bytes = buildElf({ class: 32, entry: 0x100000, segments: [{ paddr: 0x100000, data: CODE }] });
  assertLoadsNothing(target, () => loadImage(bytes, target, { format: "multiboot" }), {
    name: "SyntaxError",
    message: "Cannot load multiboot image: no multiboot header (magic 0x1badb002) in the first 8192 bytes",
  });
});

// --- multiboot --------------------------------------------------------------

Deno.test("loadImage() boots a multiboot ELF32 kernel in protected mode with EAX and EBX set", () => {
  const target = new FakeTarget(16 * MiB);
  const image = loadImage(multibootElf32(), target, { path: "kernel.elf" });
  assert.equal(image.format, "multiboot");
  assert.equal(image.mode, "protected");
  assert.equal(image.entry, 0x10000cn);
  assert.equal(image.lowest, 0x100000);
  assert.equal(image.end, 0x101010);
  assert.deepEqual(image.registers, { rax: 0x2badb002n, rbx: BigInt(image.bootInfo?.address ?? -1) });
  assert.deepEqual(image.symbols.map((s) => [s.name, s.kind]), [["_start", "function"], ["stack", "object"]]);
  assert.deepEqual([...target.read(0x10000c, 4)], CODE);
  assert.ok(target.read(0x100010, 0x1000).every((b) => b === 0), "BSS is zeroed");
});

Deno.test("loadImage() builds the multiboot info above the image with memory map, cmdline and loader name", () => {
  const target = new FakeTarget(16 * MiB);
  const image = loadImage(multibootElf32(), target, { path: "kernel.elf", cmdline: "console=ttyS0 debug" });
  const info = image.bootInfo;
  assert.ok(info !== undefined);
  assert.equal(info.address, 0x102000, "page-aligned just above the image end (0x101010)");
  assert.ok(info.address >= image.end);
  const decoded = decodeInfo(target, info.address);
  assert.equal(decoded.flags, 0x24d, "bits 0, 2, 3, 6 and 9");
  assert.equal(decoded.memLower, 639);
  assert.equal(decoded.memUpper, (16 * MiB - MiB) / 1024);
  assert.equal(decoded.cmdline, "kernel.elf console=ttyS0 debug");
  assert.equal(decoded.bootLoaderName, "hvsh");
  assert.deepEqual(decoded.modules, []);
  assert.deepEqual(decoded.mmap, [
    { size: 20, base: 0n, length: 0x9fc00n, type: 1 },
    { size: 20, base: 0x9fc00n, length: 0x400n, type: 2 },
    { size: 20, base: 0xf0000n, length: 0x10000n, type: 2 },
    { size: 20, base: 0x100000n, length: BigInt(15 * MiB), type: 1 },
  ]);
  // Everything the struct points at lies inside the reported area.
  for (const field of [16, 48, 64]) {
    const pointer = target.u32(info.address + field);
    assert.ok(pointer >= info.address && pointer < info.address + info.size, `field at +${field}`);
  }
});

Deno.test("loadImage() passes multiboot modules page-aligned with their command lines", () => {
  const target = new FakeTarget(16 * MiB);
  const initrd = new Uint8Array(0x1800).map((_, i) => i & 0xff);
  const image = loadImage(multibootElf32(), target, {
    path: "kernel.elf",
    modules: [{ data: initrd, cmdline: "initrd.img" }, { data: new Uint8Array([7, 7, 7]), cmdline: "second arg=1" }],
  });
  const info = image.bootInfo;
  assert.ok(info !== undefined);
  const decoded = decodeInfo(target, info.address);
  assert.equal(decoded.modules.length, 2);
  const [first, second] = decoded.modules;
  assert.equal(first?.cmdline, "initrd.img");
  assert.deepEqual(first?.data, [...initrd]);
  assert.equal(second?.cmdline, "second arg=1");
  assert.deepEqual(second?.data, [7, 7, 7]);
  for (const m of decoded.modules) {
    assert.equal(m.start % 0x1000, 0, "module start is page-aligned");
    assert.ok(m.start > info.address && m.end <= info.address + info.size, "module inside bootInfo");
  }
  assert.ok((first?.end ?? Infinity) <= (second?.start ?? 0));
  assert.equal(info.address + info.size, second?.end, "bootInfo ends with the last module");
});

Deno.test("loadImage() builds the multiboot cmdline from path and cmdline", () => {
  const cases: [LoadOptions, string][] = [
    [{ path: "/boot/k.elf", cmdline: "a b" }, "/boot/k.elf a b"],
    [{ path: "/boot/k.elf" }, "/boot/k.elf"],
    [{ cmdline: "a b" }, "a b"],
    [{}, ""],
  ];
  for (const [options, expected] of cases) {
    const target = new FakeTarget(4 * MiB);
    const image = loadImage(multibootElf32(), target, options);
    assert.equal(decodeInfo(target, image.bootInfo?.address ?? 0).cmdline, expected);
  }
});

Deno.test("loadImage() keeps the multiboot info out of 0x8000-0xd000", () => {
  const target = new FakeTarget(4 * MiB);
  const { bytes } = buildAoutKernel({ loadAddr: 0x7000, code: CODE, fileSize: 0x100 });
  const image = loadImage(bytes, target);
  assert.equal(image.end, 0x7100);
  assert.equal(image.bootInfo?.address, 0xd000);
  assert.deepEqual(target.writes.filter((w) => w.addr < 0xd000 && w.addr + w.len > 0x8000), []);
});

Deno.test("loadImage() keeps the multiboot info and modules out of the legacy hole below 1 MiB", () => {
  const target = new FakeTarget(4 * MiB);
  const { bytes } = buildAoutKernel({ loadAddr: 0x90000, code: CODE });
  const image = loadImage(bytes, target, { modules: [{ data: new Uint8Array(0x10000), cmdline: "big" }] });
  assert.equal(image.bootInfo?.address, 0x100000);
});

Deno.test("loadImage() reports RAM above 4 GiB in the multiboot memory map", () => {
  const target = new FakeTarget(0x140000000, { backing: 4 * MiB }); // 5 GiB
  const image = loadImage(multibootElf32(), target);
  const decoded = decodeInfo(target, image.bootInfo?.address ?? 0);
  assert.equal(decoded.memUpper, (0xc0000000 - MiB) / 1024);
  assert.deepEqual(decoded.mmap.filter((e) => e.type === 1).map((e) => [e.base, e.length]), [
    [0n, 0x9fc00n],
    [0x100000n, 0xc0000000n - 0x100000n],
    [0x100000000n, 0x80000000n],
  ]);
});

Deno.test("loadImage() boots a multiboot ELF64 kernel in protected mode at its 32-bit entry", () => {
  const target = new FakeTarget(4 * MiB);
  const body = concat(multibootHeader(), CODE);
  const bytes = buildElf({ class: 64, entry: 0x20000c, segments: [{ paddr: 0x200000, data: body, memsz: 0x100 }] });
  const image = loadImage(bytes, target);
  assert.equal(image.format, "multiboot");
  assert.equal(image.mode, "protected");
  assert.equal(image.entry, 0x20000cn);
  assert.deepEqual([...target.read(0x20000c, 4)], CODE);
});

Deno.test("loadImage() rejects a multiboot ELF64 segment above 4 GiB", () => {
  const target = new FakeTarget(0x140000000, { backing: 0x1000 });
  const body = concat(multibootHeader(), CODE);
  const bytes = buildElf({ class: 64, entry: 0x10000000c, segments: [{ paddr: 0x100000000, data: body }] });
  assertLoadsNothing(target, () => loadImage(bytes, target), {
    name: "RangeError",
    message:
      "Cannot load multiboot image: program header 0 (PT_LOAD) ends at 0x100000010, beyond the 4 GiB a 32-bit multiboot kernel can address",
  });
});

Deno.test("loadImage() loads an a.out kludge kernel by its header addresses and zeroes BSS", () => {
  const target = new FakeTarget(4 * MiB);
  const { bytes } = buildAoutKernel({
    loadAddr: 0x100000,
    headerOffset: 0x20,
    code: CODE,
    fileSize: 0x200,
    fields: { bssEndAddr: 0x101000 },
  });
  const image = loadImage(bytes, target, { path: "aout.bin" });
  assert.equal(image.format, "multiboot");
  assert.equal(image.mode, "protected");
  assert.equal(image.entry, 0x100040n);
  assert.equal(image.lowest, 0x100000);
  assert.equal(image.end, 0x101000);
  assert.deepEqual(target.read(0x100000, 0x200), bytes, "load_end_addr 0 loads the whole file");
  assert.ok(target.read(0x100200, 0xe00).every((b) => b === 0), "BSS up to bss_end_addr is zeroed");
  assert.equal(image.bootInfo?.address, 0x101000);
  assert.deepEqual(image.symbols, []);
});

Deno.test("loadImage() loads an a.out kludge kernel from its load offset up to load_end_addr", () => {
  const target = new FakeTarget(4 * MiB);
  // The header sits 0x1000 into the file but only 0x10 past load_addr: loading starts at file offset 0xff0.
  const { bytes } = buildAoutKernel({
    loadAddr: 0x100000,
    headerOffset: 0x1000,
    code: CODE,
    fileSize: 0x1100,
    fields: { headerAddr: 0x100010, loadEndAddr: 0x100080, entryAddr: 0x100030 },
  });
  const image = loadImage(bytes, target);
  assert.deepEqual(target.read(0x100000, 0x80), bytes.subarray(0xff0, 0x1070));
  assert.equal(target.memory[0x100080], 0xaa, "nothing past load_end_addr without BSS");
  assert.equal(image.end, 0x100080);
  assert.equal(image.entry, 0x100030n);
});

Deno.test("loadImage() ignores the multiboot video flag", () => {
  const target = new FakeTarget(4 * MiB);
  const body = concat(multibootHeader({ flags: 0x7, video: true }), CODE);
  const bytes = buildElf({ class: 32, entry: 0x100030, segments: [{ paddr: 0x100000, data: body }] });
  assert.equal(loadImage(bytes, target).format, "multiboot");
});

Deno.test("loadImage() rejects an unsupported required multiboot flag", () => {
  const target = new FakeTarget(4 * MiB);
  assertLoadsNothing(target, () => loadImage(multibootElf32({ flags: 0xb }), target), {
    name: "TypeError",
    message: "Cannot load multiboot image: header flags 0xb set bit 3, a required feature hvsh does not support",
  });
});

Deno.test("loadImage() rejects a multiboot header with an invalid checksum", () => {
  const target = new FakeTarget(4 * MiB);
  const body = concat(multibootHeader({ checksum: 0xdeadbeef }), CODE);
  const bytes = buildElf({ class: 32, entry: 0x10000c, segments: [{ paddr: 0x100000, data: body }] });
  assertLoadsNothing(target, () => loadImage(bytes, target, { path: "k.elf" }), {
    name: "SyntaxError",
    message: /^Cannot parse multiboot header "k\.elf": checksum at 0x[0-9a-f]+ is 0xdeadbeef \(want 0xe4524ffb/,
  });
});

Deno.test("loadImage() rejects a multiboot image that is neither ELF nor a.out kludge", () => {
  const target = new FakeTarget(4 * MiB);
  assertLoadsNothing(target, () => loadImage(concat(multibootHeader(), CODE), target), {
    name: "SyntaxError",
    message:
      "Cannot load multiboot image: header flags 0x3 leave bit 16 (a.out kludge) clear, so the image must be ELF, but it has no ELF magic",
  });
});

Deno.test("loadImage() rejects inconsistent a.out kludge fields", () => {
  const target = new FakeTarget(4 * MiB);
  const cases: [Parameters<typeof buildAoutKernel>[0]["fields"], string, string][] = [
    [{ headerAddr: 0xff000 }, "SyntaxError", "header_addr 0xff000 is below load_addr 0x100000"],
    [
      { headerAddr: 0x100100 },
      "SyntaxError",
      "header_addr 0x100100 - load_addr 0x100000 = 0x100 exceeds the header's file offset 0x10",
    ],
    [{ loadEndAddr: 0xfff00 }, "SyntaxError", "load_end_addr 0xfff00 is below load_addr 0x100000"],
    [
      { loadEndAddr: 0x101000 },
      "SyntaxError",
      "load_end_addr 0x101000 needs file bytes up to 0x1000, beyond the end of the file (0x100 bytes)",
    ],
    [{ bssEndAddr: 0x100080 }, "SyntaxError", "bss_end_addr 0x100080 is below the end of the loaded data (0x100100)"],
    [{ entryAddr: 0x100100 }, "RangeError", "entry_addr 0x100100 is outside the loaded data [0x100000, 0x100100)"],
    [{ entryAddr: 0xf0000 }, "RangeError", "entry_addr 0xf0000 is outside the loaded data [0x100000, 0x100100)"],
  ];
  for (const [fields, name, message] of cases) {
    const { bytes } = buildAoutKernel({ loadAddr: 0x100000, code: CODE, fileSize: 0x100, fields: fields ?? {} });
    assertLoadsNothing(target, () => loadImage(bytes, target), {
      name,
      message: `Cannot load multiboot image: ${message}`,
    });
  }
});

Deno.test("loadImage() rejects an a.out kludge kernel beyond RAM", () => {
  const target = new FakeTarget(2 * MiB);
  const { bytes } = buildAoutKernel({ loadAddr: 0x100000, code: CODE, fields: { bssEndAddr: 0x300000 } });
  assertLoadsNothing(target, () => loadImage(bytes, target), {
    name: "RangeError",
    message: "Cannot load multiboot image: the kernel (a.out kludge) ends at 0x300000, beyond guest RAM (0x200000)",
  });
});

Deno.test("loadImage() rejects multiboot modules that do not fit in RAM", () => {
  const target = new FakeTarget(2 * MiB);
  assertLoadsNothing(
    target,
    () => loadImage(multibootElf32(), target, { modules: [{ data: new Uint8Array(MiB), cmdline: "initrd" }] }),
    {
      name: "RangeError",
      message:
        "Cannot load multiboot image: multiboot info area (with 1 module) ends at 0x203000, beyond guest RAM (0x200000)",
    },
  );
});

Deno.test("loadImage() rejects a multiboot info area that would cross a hole in RAM", () => {
  const target = new FakeTarget(4 * MiB, { holes: [[0x102000, 0x103000]] });
  assertLoadsNothing(target, () => loadImage(multibootElf32(), target), {
    name: "RangeError",
    message: /multiboot info area \[0x102000, 0x102[0-9a-f]{3}\) is not entirely in guest RAM/,
  });
});
