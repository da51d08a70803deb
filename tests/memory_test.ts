/** GuestMemory over real anonymous mappings (no KVM needed), and parseSize. */

import assert from "node:assert/strict";
import { GuestMemory, parseSize, PCI_HOLE_START } from "../core/memory.ts";

const MIB = 1 << 20;

Deno.test("GuestMemory reads back u8, u16, u32 and u64 little-endian at the bytes written", () => {
  using memory = disposable(GuestMemory.allocate(MIB));
  memory.writeU8(0x10, 0xab);
  memory.writeU16(0x20, 0xbeef);
  memory.writeU32(0x30, 0xdead_beef);
  memory.writeU64(0x40, 0x0123_4567_89ab_cdefn);
  memory.writeU64(0x50n, -1); // a number, two's complement
  assert.equal(memory.readU8(0x10), 0xab);
  assert.equal(memory.readU16(0x20), 0xbeef);
  assert.equal(memory.readU32(0x30n), 0xdead_beef);
  assert.equal(memory.readU64(0x40), 0x0123_4567_89ab_cdefn);
  assert.equal(memory.readU64(0x50), 0xffff_ffff_ffff_ffffn);
  assert.deepEqual([...memory.read(0x20, 2)], [0xef, 0xbe]);
  assert.deepEqual([...memory.read(0x40, 8)], [0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01]);
  memory.writeU32(MIB - 4, -2); // the last word of RAM; negative numbers wrap
  assert.equal(memory.readU32(MIB - 4), 0xffff_fffe);
});

Deno.test("GuestMemory.view() is live in both directions while read() copies", () => {
  using memory = disposable(GuestMemory.allocate(MIB));
  const view = memory.view(0x1000, 16);
  view[3] = 0x77;
  assert.equal(memory.readU8(0x1003), 0x77);
  const copy = memory.read(0x1000, 16);
  memory.write(0x1000, [1, 2, 3, 4]);
  assert.equal(view[2], 3);
  assert.equal(copy[2], 0);
  memory.fill(0x1000, 16, 0x5a);
  assert.deepEqual([...view], new Array(16).fill(0x5a));
});

Deno.test("GuestMemory reads and writes NUL-terminated UTF-8 strings", () => {
  using memory = disposable(GuestMemory.allocate(MIB));
  memory.writeCString(0x2000, "console=ttyS0 é");
  assert.equal(memory.readCString(0x2000), "console=ttyS0 é");
  assert.equal(memory.readU8(0x2000 + new TextEncoder().encode("console=ttyS0 é").length), 0, "NUL written");
  assert.equal(memory.readCString(0x2000, 7), "console", "maxLength bounds the read");
  memory.write(MIB - 3, [0x61, 0x62, 0x63]); // no NUL before the end of RAM
  assert.equal(memory.readCString(MIB - 3), "abc");
});

Deno.test("GuestMemory throws a RangeError naming the guest address for accesses outside RAM", () => {
  using memory = disposable(GuestMemory.allocate(MIB));
  assert.throws(() => memory.readU8(MIB), (e: Error) => e instanceof RangeError && /0x100000\b/.test(e.message));
  assert.throws(() => memory.readU32(MIB - 2), (e: Error) => e instanceof RangeError && /0xffffe\b/.test(e.message));
  assert.throws(() => memory.writeU64(0x2000_0000n, 1n), /write 8 bytes at guest physical 0x20000000/);
  assert.throws(() => memory.write(MIB - 1, [1, 2]), RangeError);
  assert.throws(() => memory.readU8(-1), RangeError);
  assert.throws(() => memory.readU8(1n << 64n), RangeError);
  assert.throws(() => memory.view(0, MIB + 1), RangeError);
  assert.equal(memory.readU8(MIB - 1), 0, "a failed write changed nothing");
});

Deno.test("GuestMemory.allocate() splits RAM above 3 GiB around the PCI hole, placing the rest at 4 GiB", () => {
  const size = 3.5 * 1024 * MIB; // reserved lazily (MAP_NORESERVE): only touched pages cost memory
  using memory = disposable(GuestMemory.allocate(size));
  assert.equal(PCI_HOLE_START, 0xc000_0000);
  assert.deepEqual(memory.regions.map((r) => [r.base, r.size]), [[0, 0xc000_0000], [0x1_0000_0000, 0x2000_0000]]);
  assert.equal(memory.ramSize, size);
  assert.equal(memory.end, 0x1_2000_0000);
  assert.equal(memory.isRam(0xbfff_ffff), true);
  assert.equal(memory.isRam(0xc000_0000), false);
  assert.equal(memory.isRam(0xffff_ffff), false);
  assert.equal(memory.isRam(0x1_0000_0000), true);
  assert.equal(memory.isRam(0x1_1fff_ffffn), true);
  assert.equal(memory.isRam(0x1_2000_0000), false);
  assert.equal(memory.isRam(0xbfff_fff0, 0x20), false, "a range may not straddle the hole");
  memory.writeU32(0x1_0000_0000, 0x1234_5678);
  assert.equal(memory.readU32(0x1_0000_0000n), 0x1234_5678);
  assert.equal(memory.regions[1]!.bytes[0], 0x78, "the high region's own view holds it");
  assert.throws(() => memory.readU8(0xd000_0000), /0xd0000000/);
});

Deno.test("GuestMemory.allocate() refuses a size that is not a multiple of 4 KiB", () => {
  assert.throws(
    () => GuestMemory.allocate(MIB + 1),
    (e: Error) => e instanceof RangeError && /1048577/.test(e.message),
  );
});

Deno.test("GuestMemory.close() is idempotent and later accesses throw a clear error", () => {
  const memory = GuestMemory.allocate(MIB);
  memory.close();
  memory.close();
  assert.equal(memory.closed, true);
  assert.throws(() => memory.readU8(0), /closed/);
  assert.throws(() => memory.writeU8(0, 1), /closed/);
});

Deno.test("parseSize() understands K/M/G/T suffixes with optional iB/B, and plain byte counts", () => {
  assert.equal(parseSize("64M"), 64 * MIB);
  assert.equal(parseSize("1G"), 1024 * MIB);
  assert.equal(parseSize("512K"), 512 * 1024);
  assert.equal(parseSize("512k"), 512 * 1024);
  assert.equal(parseSize("2GiB"), 2048 * MIB);
  assert.equal(parseSize("16MB"), 16 * MIB);
  assert.equal(parseSize("1T"), 2 ** 40);
  assert.equal(parseSize("65536"), 65536);
  assert.equal(parseSize(" 8 M "), 8 * MIB);
  assert.equal(parseSize(4096), 4096);
});

Deno.test("parseSize() rejects unparsable text with a SyntaxError and zero or fractional sizes with a RangeError", () => {
  assert.throws(() => parseSize("1.5G"), (e: Error) => e instanceof SyntaxError && /"1.5G"/.test(e.message));
  assert.throws(() => parseSize("lots"), SyntaxError);
  assert.throws(() => parseSize("64X"), SyntaxError);
  assert.throws(() => parseSize(""), SyntaxError);
  assert.throws(() => parseSize("0M"), RangeError);
  assert.throws(() => parseSize(0), RangeError);
  assert.throws(() => parseSize(-4096), RangeError);
  assert.throws(() => parseSize(1.5), RangeError);
});

/** Lets `using` close a GuestMemory at the end of a test. */
function disposable(memory: GuestMemory): GuestMemory & Disposable {
  return Object.assign(memory, { [Symbol.dispose]: () => memory.close() });
}
