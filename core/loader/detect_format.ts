/**
 * Guessing an image's format from its bytes.
 *
 * @module
 */

import { hasElfMagic } from "./elf.ts";
import { findMultibootHeader } from "./multiboot.ts";
import { isBzImage } from "./linux.ts";
import { findPvhEntry } from "./pvh.ts";
import type { ImageFormat } from "./types.ts";

/**
 * Detects an image's format: `"bzimage"` for a Linux bzImage (0xAA55 at
 * 0x1fe and "HdrS" at 0x202), `"multiboot"` if it has a valid Multiboot 1
 * header (this beats the ELF magic: a multiboot ELF kernel is booted as
 * multiboot), `"pvh"` for an ELF with a Xen PVH entry note (a Linux vmlinux:
 * the PVH entry skips decompression), else `"elf"` if it starts with the ELF
 * magic, else `"flat"`.
 *
 * Throws a `SyntaxError` (from {@linkcode findMultibootHeader}) when the
 * image carries the multiboot magic but no valid header.
 *
 * @param bytes The image.
 * @param path The image path, for error messages.
 *
 * @example
 * ```ts
 * import { detectFormat } from "./detect_format.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(detectFormat(new Uint8Array([0xeb, 0xfe])), "flat");
 * assert.equal(detectFormat(new Uint8Array([0x7f, 0x45, 0x4c, 0x46])), "elf");
 * ```
 */
export function detectFormat(bytes: Uint8Array, path?: string): ImageFormat {
  if (isBzImage(bytes)) return "bzimage";
  if (findMultibootHeader(bytes, path) !== undefined) return "multiboot";
  if (!hasElfMagic(bytes)) return "flat";
  return findPvhEntry(bytes) === undefined ? "elf" : "pvh";
}
