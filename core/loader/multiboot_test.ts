import assert from "node:assert/strict";
import { findMultibootHeader } from "./multiboot.ts";
import { buildAoutKernel, concat, multibootHeader } from "./_test_images.ts";

Deno.test("findMultibootHeader() finds a 4-byte-aligned header and reads its flags", () => {
  const bytes = concat(new Uint8Array(0x40), multibootHeader({ flags: 0x3 }), new Uint8Array(16));
  assert.deepEqual(findMultibootHeader(bytes), { offset: 0x40, flags: 0x3, checksum: (-(0x1badb002 + 3)) >>> 0 });
});

Deno.test("findMultibootHeader() returns undefined without the magic", () => {
  assert.equal(findMultibootHeader(new Uint8Array(0x4000)), undefined);
  assert.equal(findMultibootHeader(new Uint8Array(0)), undefined);
});

Deno.test("findMultibootHeader() ignores a magic that is unaligned or not within the first 8192 bytes", () => {
  const unaligned = concat(new Uint8Array(0x42), multibootHeader(), new Uint8Array(16));
  assert.equal(findMultibootHeader(unaligned), undefined);
  const late = concat(new Uint8Array(8192 - 8), multibootHeader(), new Uint8Array(16));
  assert.equal(findMultibootHeader(late), undefined);
  const last = concat(new Uint8Array(8192 - 12), multibootHeader());
  assert.equal(findMultibootHeader(last)?.offset, 8192 - 12);
});

Deno.test("findMultibootHeader() rejects a header with an invalid checksum", () => {
  const bytes = concat(new Uint8Array(8), multibootHeader({ flags: 0x3, checksum: 0x12345678 }), new Uint8Array(4));
  assert.throws(() => findMultibootHeader(bytes, "bad.bin"), {
    name: "SyntaxError",
    message: 'Cannot parse multiboot header "bad.bin": checksum at 0x10 is 0x12345678 (want 0xe4524ffb for flags 0x3)',
  });
});

Deno.test("findMultibootHeader() skips an invalid magic when a later header is valid", () => {
  const bytes = concat(multibootHeader({ checksum: 1 }), multibootHeader({ flags: 0 }));
  assert.equal(findMultibootHeader(bytes)?.offset, 12);
});

Deno.test("findMultibootHeader() reads the a.out kludge and video fields", () => {
  const { bytes, fields } = buildAoutKernel({ loadAddr: 0x100000, code: [0xf4], fields: { bssEndAddr: 0x102000 } });
  const header = findMultibootHeader(bytes);
  assert.equal(header?.flags, 0x10003);
  assert.deepEqual(header?.addresses, fields);
  assert.equal(header?.video, undefined);
  const video = findMultibootHeader(concat(multibootHeader({ flags: 0x7, video: true })));
  assert.deepEqual(video?.video, { modeType: 1, width: 80, height: 25, depth: 0 });
});

Deno.test("findMultibootHeader() rejects a.out kludge fields cut off by the end of the file", () => {
  const bytes = multibootHeader({ flags: 0x10003 }).subarray(0, 12);
  assert.throws(() => findMultibootHeader(bytes), {
    name: "SyntaxError",
    message: /flags 0x10003 announce the a\.out kludge address fields \(bit 16\), but the header at 0x0 is cut off/,
  });
});
