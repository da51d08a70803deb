/**
 * The Multiboot 1 header: finding and validating it in a kernel image.
 *
 * @module
 */

import { errorPrefix, hex } from "./_plan.ts";

/**
 * The magic number that starts a Multiboot 1 header.
 *
 * @example
 * ```ts
 * import { MULTIBOOT_HEADER_MAGIC } from "./multiboot.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(MULTIBOOT_HEADER_MAGIC, 0x1badb002);
 * ```
 */
export const MULTIBOOT_HEADER_MAGIC = 0x1badb002;
/**
 * The value a Multiboot 1 loader leaves in EAX.
 *
 * @example
 * ```ts
 * import { MULTIBOOT_BOOTLOADER_MAGIC } from "./multiboot.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(MULTIBOOT_BOOTLOADER_MAGIC, 0x2badb002);
 * ```
 */
export const MULTIBOOT_BOOTLOADER_MAGIC = 0x2badb002;
/**
 * The header must lie entirely within this many bytes of the file start.
 *
 * @example
 * ```ts
 * import { MULTIBOOT_SEARCH } from "./multiboot.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(MULTIBOOT_SEARCH, 8192);
 * ```
 */
export const MULTIBOOT_SEARCH = 8192;
/**
 * Header flags bit 0: page-align modules.
 *
 * @example
 * ```ts
 * import { MULTIBOOT_PAGE_ALIGN } from "./multiboot.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(MULTIBOOT_PAGE_ALIGN, 0x1);
 * ```
 */
export const MULTIBOOT_PAGE_ALIGN = 1 << 0;
/**
 * Header flags bit 1: provide the memory map.
 *
 * @example
 * ```ts
 * import { MULTIBOOT_MEMORY_INFO } from "./multiboot.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(MULTIBOOT_MEMORY_INFO, 0x2);
 * ```
 */
export const MULTIBOOT_MEMORY_INFO = 1 << 1;
/**
 * Header flags bit 2: provide a video mode (hvsh ignores it).
 *
 * @example
 * ```ts
 * import { MULTIBOOT_VIDEO_MODE } from "./multiboot.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(MULTIBOOT_VIDEO_MODE, 0x4);
 * ```
 */
export const MULTIBOOT_VIDEO_MODE = 1 << 2;
/**
 * Header flags bit 16: the a.out kludge address fields are valid.
 *
 * @example
 * ```ts
 * import { MULTIBOOT_AOUT_KLUDGE } from "./multiboot.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(MULTIBOOT_AOUT_KLUDGE, 0x10000);
 * ```
 */
export const MULTIBOOT_AOUT_KLUDGE = 1 << 16;

/**
 * The address fields of a Multiboot header with flags bit 16 (the a.out
 * kludge) set.
 *
 * @example
 * ```ts
 * import type { MultibootAddresses } from "./multiboot.ts";
 *
 * function loadSize(a: MultibootAddresses, fileSize: number): number {
 *   return a.loadEndAddr === 0 ? fileSize : a.loadEndAddr - a.loadAddr;
 * }
 * ```
 */
export interface MultibootAddresses {
  /** header_addr: the physical address the header itself is loaded at. */
  headerAddr: number;
  /** load_addr: where the text segment (the file, from its load offset) starts. */
  loadAddr: number;
  /** load_end_addr: where the loaded data ends; 0 loads to the end of the file. */
  loadEndAddr: number;
  /** bss_end_addr: where the zeroed BSS ends; 0 means no BSS. */
  bssEndAddr: number;
  /** entry_addr: the physical entry point. */
  entryAddr: number;
}

/**
 * The graphics fields of a Multiboot header with flags bit 2 set.
 *
 * @example
 * ```ts
 * import type { MultibootVideo } from "./multiboot.ts";
 *
 * const text: MultibootVideo = { modeType: 1, width: 80, height: 25, depth: 0 };
 * ```
 */
export interface MultibootVideo {
  /** mode_type: 0 linear graphics, 1 EGA text. */
  modeType: number;
  /** width, in pixels or characters. */
  width: number;
  /** height, in pixels or characters. */
  height: number;
  /** depth, in bits per pixel (0 for text). */
  depth: number;
}

/**
 * A validated Multiboot 1 header.
 *
 * @example
 * ```ts
 * import { findMultibootHeader, type MultibootHeader } from "./multiboot.ts";
 *
 * const header: MultibootHeader | undefined = findMultibootHeader(
 *   new Uint8Array(16),
 * );
 * ```
 */
export interface MultibootHeader {
  /** The header's offset in the file (a multiple of 4, below 8192). */
  offset: number;
  /** The flags field. */
  flags: number;
  /** The checksum field (magic + flags + checksum is 0 mod 2^32). */
  checksum: number;
  /** The a.out kludge fields, present when flags bit 16 is set. */
  addresses?: MultibootAddresses;
  /** The video fields, present when flags bit 2 is set. */
  video?: MultibootVideo;
}

/**
 * Finds the Multiboot 1 header: the first 4-byte-aligned magic 0x1BADB002
 * within the first 8192 bytes whose checksum is valid (magic + flags +
 * checksum == 0 mod 2^32). Returns `undefined` if there is no magic at all.
 *
 * Throws a `SyntaxError` if the magic is present but no occurrence has a
 * valid checksum, or if the header is cut off before the fields its flags
 * announce (a.out kludge: 32 bytes; video: 48 bytes), by the end of the file
 * or by the end of the 8192-byte window.
 *
 * @param bytes The kernel image (at least its first 8192 bytes).
 * @param path The image path, for error messages.
 *
 * @example
 * ```ts
 * import { findMultibootHeader } from "./multiboot.ts";
 * import assert from "node:assert/strict";
 *
 * const image = new Uint8Array(64);
 * const view = new DataView(image.buffer);
 * view.setUint32(16, 0x1badb002, true); // magic
 * view.setUint32(20, 0x3, true); // flags: page-align, memory info
 * view.setUint32(24, -(0x1badb002 + 0x3) >>> 0, true); // checksum
 *
 * const header = findMultibootHeader(image);
 * assert.equal(header?.offset, 16);
 * assert.equal(header?.flags, 3);
 * assert.equal(findMultibootHeader(new Uint8Array(64)), undefined);
 * ```
 */
export function findMultibootHeader(
  bytes: Uint8Array,
  path?: string,
): MultibootHeader | undefined {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const limit = Math.min(bytes.length, MULTIBOOT_SEARCH) - 12;
  let bad: { offset: number; flags: number; checksum: number } | undefined;
  for (let offset = 0; offset <= limit; offset += 4) {
    if (view.getUint32(offset, true) !== MULTIBOOT_HEADER_MAGIC) continue;
    const flags = view.getUint32(offset + 4, true);
    const checksum = view.getUint32(offset + 8, true);
    if (((MULTIBOOT_HEADER_MAGIC + flags + checksum) >>> 0) !== 0) {
      bad ??= { offset, flags, checksum };
      continue;
    }
    const header: MultibootHeader = { offset, flags, checksum };
    const prefix = errorPrefix("parse", "multiboot header", path);
    const need = (size: number, what: string) => {
      if (offset + size > MULTIBOOT_SEARCH) {
        throw new SyntaxError(
          `${prefix}flags ${hex(flags)} announce ${what}, but the header at ${hex(offset)} would end at ${
            hex(offset + size)
          }, past the first ${MULTIBOOT_SEARCH} bytes where the header must lie entirely`,
        );
      }
      if (offset + size > bytes.length) {
        throw new SyntaxError(
          `${prefix}flags ${hex(flags)} announce ${what}, but the header at ${
            hex(offset)
          } is cut off by the end of the file (${hex(bytes.length)} bytes)`,
        );
      }
    };
    if (flags & MULTIBOOT_AOUT_KLUDGE) {
      need(32, "the a.out kludge address fields (bit 16)");
      header.addresses = {
        headerAddr: view.getUint32(offset + 12, true),
        loadAddr: view.getUint32(offset + 16, true),
        loadEndAddr: view.getUint32(offset + 20, true),
        bssEndAddr: view.getUint32(offset + 24, true),
        entryAddr: view.getUint32(offset + 28, true),
      };
    }
    if (flags & MULTIBOOT_VIDEO_MODE) {
      need(48, "the video mode fields (bit 2)");
      header.video = {
        modeType: view.getUint32(offset + 32, true),
        width: view.getUint32(offset + 36, true),
        height: view.getUint32(offset + 40, true),
        depth: view.getUint32(offset + 44, true),
      };
    }
    return header;
  }
  if (bad !== undefined) {
    const want = (-(MULTIBOOT_HEADER_MAGIC + bad.flags)) >>> 0;
    throw new SyntaxError(
      `${errorPrefix("parse", "multiboot header", path)}checksum at ${hex(bad.offset + 8)} is ${
        hex(bad.checksum)
      } (want ${hex(want)} for flags ${hex(bad.flags)})`,
    );
  }
  return undefined;
}
