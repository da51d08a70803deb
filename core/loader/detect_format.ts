/**
 * Guessing an image's format from its bytes.
 *
 * @module
 */

import { hasElfMagic } from "./elf.ts";
import { findMultibootHeader } from "./multiboot.ts";
import { errorPrefix } from "./_plan.ts";
import { isBzImage } from "./linux.ts";
import { findPvhEntry } from "./pvh.ts";
import type { ImageFormat } from "./types.ts";

/** Offset of the Linux boot protocol's "HdrS" magic in a bzImage (Documentation/arch/x86/boot.rst). */

/** What a file without a bootable signature holds, for the error message. */
function describeUnknown(bytes: Uint8Array): string {
  if (bytes.length === 0) return "an empty file";
  const head = bytes.subarray(0, Math.min(bytes.length, 512));
  let printable: boolean;
  try {
    const text = new TextDecoder("utf-8", { fatal: true }).decode(head);
    printable = ![...text].some((c) => (c < " " && c !== "\t" && c !== "\n" && c !== "\r") || c === "\u007f");
  } catch {
    printable = false; // not UTF-8: binary
  }
  const first = [...bytes.subarray(0, 8)].map((b) => b.toString(16).padStart(2, "0")).join(" ");
  return `${bytes.length} bytes${printable ? " of text" : ""}, starting ${first}`;
}

/** Whether the bytes look like a PC boot sector: at least 512 bytes with 55 AA at offset 510. */
export function hasBootSignature(bytes: Uint8Array): boolean {
  return bytes.length >= 512 && bytes[510] === 0x55 && bytes[511] === 0xaa;
}

/** What {@link detectFormat} may assume beyond the bytes. */
export interface DetectOptions {
  /** An address to load a flat image at: given, a file with no signature is taken as flat. */
  loadAddress?: number | undefined;
  /**
   * The bytes come from code, not from a file (`vm.load(bytes)`): without a
   * signature they are taken as flat code, as the caller wrote them.
   */
  fromCode?: boolean;
}

/**
 * Detects an image's format: `"bzimage"` for a Linux bzImage (0xAA55 at
 * 0x1fe and "HdrS" at 0x202), `"multiboot"` if it has a valid Multiboot 1
 * header (this beats the ELF magic: a multiboot ELF kernel is booted as
 * multiboot), `"bzimage"` for a Linux bzImage ("HdrS" at 0x202), `"pvh"`
 * for an ELF with a Xen PVH entry note (a Linux vmlinux: the PVH entry skips
 * decompression), else `"elf"` if it starts with the ELF magic, else
 * `"flat"` when it looks like a boot sector (512 bytes or more, 55 AA at
 * offset 510) or a `loadAddress` says where flat bytes go.
 *
 * Anything else is refused rather than run as code: a `SyntaxError` naming
 * what was found. `format: "flat"` loads any bytes.
 *
 * Throws a `SyntaxError` (from {@linkcode findMultibootHeader}) when the
 * image carries the multiboot magic but no valid header.
 *
 * @param bytes The image.
 * @param path The image path, for error messages.
 * @param options `loadAddress` when the caller gave one; `fromCode` for bytes a program handed over.
 *
 * @example
 * ```ts
 * import { detectFormat } from "./detect_format.ts";
 * import assert from "node:assert/strict";
 *
 * const bootSector = new Uint8Array(512);
 * bootSector.set([0xeb, 0xfe]);
 * bootSector.set([0x55, 0xaa], 510);
 * assert.equal(detectFormat(bootSector), "flat");
 * assert.equal(detectFormat(new Uint8Array([0x7f, 0x45, 0x4c, 0x46])), "elf");
 * assert.throws(() => detectFormat(new TextEncoder().encode("hello\n")), SyntaxError);
 * ```
 */
export function detectFormat(bytes: Uint8Array, path?: string, options: DetectOptions = {}): ImageFormat {
  // A bzImage also ends its first sector with 55 AA: look for its header first.
  if (isBzImage(bytes)) return "bzimage";
  if (findMultibootHeader(bytes, path) !== undefined) return "multiboot";
  if (hasElfMagic(bytes)) return findPvhEntry(bytes) === undefined ? "elf" : "pvh";
  if (hasBootSignature(bytes) || options.loadAddress !== undefined || options.fromCode) return "flat";
  throw new SyntaxError(
    `${errorPrefix("load", "image", path)}no ELF, multiboot or boot-sector signature ` +
      `(${describeUnknown(bytes)}); to run raw bytes as real-mode code, give --format flat ` +
      `(vm.load(file, { format: "flat" }))`,
  );
}
