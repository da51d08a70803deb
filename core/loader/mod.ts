/**
 * Image loaders: put a flat binary, an x86 ELF executable or a Multiboot 1
 * kernel into guest memory and say how to enter it. Pure TypeScript: the
 * loaders see guest memory only through {@linkcode LoadTarget}.
 *
 * | error | when |
 * | --- | --- |
 * | `SyntaxError` | unparsable image: bad magic or checksum, truncated header, a table or segment outside the file, p_filesz > p_memsz, inconsistent a.out kludge fields |
 * | `TypeError` | well-formed but not bootable here: not x86, big-endian, ET_REL, an unsupported required multiboot flag, an option the format cannot use |
 * | `RangeError` | placement: outside RAM, overlapping segments, entry outside the loaded image, info area beyond RAM |
 *
 * A rejected image leaves guest memory untouched.
 *
 * @example
 * ```ts
 * import { loadImage } from "./mod.ts";
 * import assert from "node:assert/strict";
 *
 * const ram = new Uint8Array(0x100000);
 * const image = loadImage(new Uint8Array([0xeb, 0xfe]), {
 *   ramSize: ram.length,
 *   isRam: (addr, len) => addr + len <= ram.length,
 *   write: (addr, bytes) => ram.set(bytes, addr),
 *   fill: (addr, len, value) => ram.fill(value, addr, addr + len),
 * }, { loadAddress: 0x1000 });
 * assert.equal(image.entry, 0x1000n);
 * ```
 *
 * @module
 */

export * from "./types.ts";
export * from "./elf.ts";
export * from "./multiboot.ts";
export * from "./detect_format.ts";
export * from "./load_image.ts";
export * from "./read_image_file.ts";
export * from "./e820.ts";
export * from "./linux.ts";
export * from "./pvh.ts";
export * from "./initramfs.ts";
export * from "./linux_boot.ts";
