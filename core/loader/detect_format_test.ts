import assert from "node:assert/strict";
import { detectFormat } from "./detect_format.ts";
import { buildAoutKernel, buildElf, concat, multibootHeader } from "./_test_images.ts";

function bootSector(size = 512): Uint8Array {
  const bytes = new Uint8Array(size);
  bytes.set([0xfa, 0xf4]); // cli; hlt
  bytes.set([0x55, 0xaa], 510);
  return bytes;
}

Deno.test("detectFormat() calls a boot sector (55 AA at 510) flat, and bytes with a loadAddress", () => {
  assert.equal(detectFormat(bootSector()), "flat");
  assert.equal(detectFormat(bootSector(1024)), "flat", "a boot image longer than one sector");
  assert.equal(detectFormat(new Uint8Array([0xfa, 0xf4]), "x.bin", { loadAddress: 0x1000 }), "flat");
});

Deno.test("detectFormat() refuses text, random bytes and empty files, naming what it found", () => {
  assert.throws(() => detectFormat(new TextEncoder().encode("just some notes\n"), "notes.txt"), {
    name: "SyntaxError",
    message:
      /^Cannot load image "notes\.txt": no ELF, multiboot or boot-sector signature \(16 bytes of text, starting 6a 75 73 74 20 73 6f 6d\); to run raw bytes as real-mode code, give --format flat/,
  });
  const noise = new Uint8Array(4096).map((_, i) => (i * 151 + 7) & 0xff);
  assert.throws(() => detectFormat(noise), {
    name: "SyntaxError",
    message: /no ELF, multiboot or boot-sector signature \(4096 bytes, starting 07 9e 35 cc/,
  });
  assert.throws(() => detectFormat(new Uint8Array()), { name: "SyntaxError", message: /\(an empty file\)/ });
  const unsigned = bootSector();
  unsigned[511] = 0;
  assert.throws(() => detectFormat(unsigned), SyntaxError, "512 bytes without 55 AA");
});

Deno.test("detectFormat() calls a Linux bzImage (HdrS at 0x202) bzimage instead of running it as a boot sector", () => {
  const bzImage = bootSector(0x4000);
  bzImage.set(new TextEncoder().encode("HdrS"), 0x202);
  assert.equal(detectFormat(bzImage, "bzImage"), "bzimage");
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
