import assert from "node:assert/strict";
import { detectFormat } from "./detect_format.ts";
import { buildAoutKernel, buildElf, concat, multibootHeader } from "./_test_images.ts";

Deno.test("detectFormat() calls a file without magic flat", () => {
  assert.equal(detectFormat(new Uint8Array([0xfa, 0xf4])), "flat");
  assert.equal(detectFormat(new Uint8Array()), "flat");
});

Deno.test("detectFormat() calls an ELF file without a multiboot header elf", () => {
  assert.equal(
    detectFormat(buildElf({ class: 64, entry: 0x1000, segments: [{ paddr: 0x1000, data: [0xf4] }] })),
    "elf",
  );
});

Deno.test("detectFormat() prefers a multiboot header over the ELF magic", () => {
  const bytes = buildElf({
    class: 32,
    entry: 0x10000c,
    segments: [{ paddr: 0x100000, data: concat(multibootHeader(), [0xf4]) }],
  });
  assert.equal(detectFormat(bytes), "multiboot");
});

Deno.test("detectFormat() calls an a.out kludge kernel multiboot", () => {
  assert.equal(detectFormat(buildAoutKernel({ loadAddr: 0x100000, code: [0xf4] }).bytes), "multiboot");
});

Deno.test("detectFormat() rejects a multiboot magic with a bad checksum", () => {
  assert.throws(() => detectFormat(multibootHeader({ checksum: 0 })), SyntaxError);
});
