/**
 * The Xen PVH direct boot of an ELF kernel (a Linux `vmlinux` built with
 * CONFIG_PVH): the image's `XEN_ELFNOTE_PHYS32_ENTRY` note gives a 32-bit
 * entry point, entered in flat protected mode with paging off and `%ebx`
 * pointing at a `struct hvm_start_info` (xen/include/public/arch-x86/hvm/
 * start_info.h, version 1) that carries the command line, the modules (the
 * initrd) and the memory map. It skips the bzImage's decompression, so it
 * is the fast way to boot Linux.
 *
 * @module
 */

import { parseElf } from "./elf.ts";
import { packE820 } from "./e820.ts";
import { planElfSegments } from "./_load_elf.ts";
import { errorPrefix, hex, LoadPlan } from "./_plan.ts";
import {
  LINUX_LAYOUT,
  type LinuxLoadOptions,
  type LoadedLinux,
  planCmdline,
  planHighModule,
  reserveVcpuBootAreas,
} from "./linux.ts";
import type { LoadTarget, MultibootModule } from "./types.ts";

/** The note type of the 32-bit PVH entry point (xen/include/public/elfnote.h). */
export const XEN_ELFNOTE_PHYS32_ENTRY = 18;
/** `hvm_start_info.magic`: "xEn3" with the 0x80 bit of the "E" set. */
export const XEN_HVM_START_MAGIC = 0x336e_c578;
/** hvm_start_info (version 1) is 56 bytes; a module entry 32, a memory map entry 24. */
const START_INFO_SIZE = 56;
const MODLIST_ENTRY_SIZE = 32;
const MEMMAP_ENTRY_SIZE = 24;
const PT_NOTE = 4;
const SHT_NOTE = 7;

/** Where the PVH loader puts hvm_start_info, the module list and the memory map: one page. */
export const PVH_LAYOUT = { startInfo: 0x7000, size: 0x1000 } as const;

/** A note of an ELF image. */
interface ElfNote {
  name: string;
  type: number;
  desc: Uint8Array;
}

/** The notes in `[offset, offset + size)` of the file (4-byte aligned names and descriptors). */
function* notesIn(bytes: Uint8Array, offset: number, size: number): Generator<ElfNote> {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const end = Math.min(offset + size, bytes.length);
  let at = offset;
  const align4 = (n: number) => (n + 3) & ~3;
  while (at + 12 <= end) {
    const namesz = view.getUint32(at, true);
    const descsz = view.getUint32(at + 4, true);
    const type = view.getUint32(at + 8, true);
    const nameAt = at + 12;
    const descAt = nameAt + align4(namesz);
    const next = descAt + align4(descsz);
    if (next > end || namesz > 256) return;
    const name = new TextDecoder().decode(bytes.subarray(nameAt, nameAt + Math.max(0, namesz - 1)));
    yield { name, type, desc: bytes.subarray(descAt, descAt + descsz) };
    at = next;
  }
}

/**
 * The physical PVH entry point of an ELF image (from its `Xen` note of type
 * XEN_ELFNOTE_PHYS32_ENTRY, in a PT_NOTE segment or an SHT_NOTE section), or
 * undefined when the image is not an x86 ELF or has no such note. Reads only
 * the ELF, program and section headers and the notes, so it is cheap on a
 * 12 MB vmlinux.
 *
 * @example
 * ```ts
 * import { findPvhEntry } from "./pvh.ts";
 * import assert from "node:assert/strict";
 * assert.equal(findPvhEntry(new Uint8Array(64)), undefined);
 * ```
 */
export function findPvhEntry(bytes: Uint8Array): number | undefined {
  if (bytes.length < 52 || bytes[0] !== 0x7f || bytes[1] !== 0x45 || bytes[2] !== 0x4c || bytes[3] !== 0x46) {
    return undefined;
  }
  const is64 = bytes[4] === 2;
  if (bytes[5] !== 1 || (is64 && bytes.length < 64)) return undefined;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const word = (at: number) => is64 ? Number(view.getBigUint64(at, true)) : view.getUint32(at, true);
  const ranges: [number, number][] = [];
  const phoff = word(is64 ? 0x20 : 0x1c);
  const phentsize = view.getUint16(is64 ? 0x36 : 0x2a, true);
  const phnum = view.getUint16(is64 ? 0x38 : 0x2c, true);
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    if (at + (is64 ? 56 : 32) > bytes.length) break;
    if (view.getUint32(at, true) !== PT_NOTE) continue;
    ranges.push(is64 ? [word(at + 8), word(at + 32)] : [word(at + 4), word(at + 16)]);
  }
  if (ranges.length === 0) {
    const shoff = word(is64 ? 0x28 : 0x20);
    const shentsize = view.getUint16(is64 ? 0x3a : 0x2e, true);
    const shnum = view.getUint16(is64 ? 0x3c : 0x30, true);
    for (let i = 0; i < shnum; i++) {
      const at = shoff + i * shentsize;
      if (at + (is64 ? 64 : 40) > bytes.length) break;
      if (view.getUint32(at + 4, true) !== SHT_NOTE) continue;
      ranges.push(is64 ? [word(at + 24), word(at + 32)] : [word(at + 16), word(at + 20)]);
    }
  }
  for (const [offset, size] of ranges) {
    for (const note of notesIn(bytes, offset, size)) {
      if (note.name !== "Xen" || note.type !== XEN_ELFNOTE_PHYS32_ENTRY) continue;
      const desc = new DataView(note.desc.buffer, note.desc.byteOffset, note.desc.byteLength);
      if (note.desc.length >= 8) return Number(desc.getBigUint64(0, true));
      if (note.desc.length >= 4) return desc.getUint32(0, true);
    }
  }
  return undefined;
}

/**
 * Loads an ELF kernel for its PVH entry: segments at their physical
 * addresses, the command line, each module placed high below 4 GiB (the
 * first is the initrd for Linux), and hvm_start_info with the memory map.
 * Throws a `TypeError` when the image has no PVH note.
 *
 * @example
 * ```ts ignore
 * import { loadPvh } from "./pvh.ts";
 * import { e820Map } from "./e820.ts";
 * const image = loadPvh(Deno.readFileSync("vmlinux"), target, {
 *   memoryMap: e820Map([{ base: 0, size: 256 << 20 }]),
 *   cmdline: "console=ttyS0",
 * });
 * // image.mode === "protected", image.registers.rbx === 0x7000n
 * ```
 */
export function loadPvh(
  bytes: Uint8Array,
  target: LoadTarget,
  options: LinuxLoadOptions & { modules?: readonly MultibootModule[] | undefined },
): LoadedLinux {
  const prefix = errorPrefix("load", "PVH kernel", options.path);
  const entry = findPvhEntry(bytes);
  if (entry === undefined) {
    throw new TypeError(
      `${prefix}no Xen PVH note (XEN_ELFNOTE_PHYS32_ENTRY, type 18) in the ELF notes: ` +
        `not a vmlinux built with CONFIG_PVH (boot its bzImage instead)`,
    );
  }
  if (entry >= 0x1_0000_0000) throw new RangeError(`${prefix}the PVH entry ${hex(entry)} is above 4 GiB`);
  const elf = parseElf(bytes, options.path);
  const plan = new LoadPlan(target, prefix);
  reserveVcpuBootAreas(plan, false);
  const segments = planElfSegments(elf, bytes, plan, prefix);
  if (entry < segments.lowest || entry >= segments.end) {
    throw new RangeError(
      `${prefix}the PVH entry ${hex(entry)} is outside the loaded kernel [${hex(segments.lowest)}, ${
        hex(segments.end)
      })`,
    );
  }
  const modules = [...(options.modules ?? [])];
  if (options.initrd !== undefined && options.initrd.length > 0) {
    modules.unshift({ data: options.initrd, cmdline: "initrd" });
  }
  const memoryMap = [...options.memoryMap];
  const infoSize = START_INFO_SIZE + modules.length * MODLIST_ENTRY_SIZE + memoryMap.length * MEMMAP_ENTRY_SIZE;
  if (infoSize > PVH_LAYOUT.size) {
    throw new RangeError(
      `${prefix}hvm_start_info with ${modules.length} modules and ${memoryMap.length} memory map entries needs ${infoSize} bytes, more than a page`,
    );
  }
  const startInfo = plan.reserve("hvm_start_info", PVH_LAYOUT.startInfo, PVH_LAYOUT.size);
  const cmdline = options.cmdline ?? "";
  const cmdlineAddress = planCmdline(plan, cmdline, LINUX_LAYOUT.cmdlineMax - 1, "hvsh's limit", prefix);

  // Module command lines follow the kernel's, 16-byte aligned.
  const encoder = new TextEncoder();
  let stringAt = cmdlineAddress + encoder.encode(cmdline).length + 1;
  const placed: { address: number; size: number; cmdline: number }[] = [];
  for (const [i, module] of modules.entries()) {
    let cmdlineField = 0;
    if (module.cmdline !== "") {
      const text = encoder.encode(module.cmdline + "\0");
      stringAt = (stringAt + 15) & ~15;
      cmdlineField = plan.reserve(`module ${i}'s command line`, stringAt, text.length);
      plan.write(cmdlineField, text);
      stringAt += text.length;
    }
    const address = planHighModule(
      plan,
      memoryMap,
      module.data,
      0x1_0000_0000,
      i === 0 && options.initrd !== undefined ? "the initrd" : `module ${i}`,
      prefix,
    );
    placed.push({ address, size: module.data.length, cmdline: cmdlineField });
  }

  const info = new Uint8Array(infoSize);
  const view = new DataView(info.buffer);
  const modlistAt = START_INFO_SIZE;
  const memmapAt = modlistAt + placed.length * MODLIST_ENTRY_SIZE;
  view.setUint32(0, XEN_HVM_START_MAGIC, true);
  view.setUint32(4, 1, true); // version 1: with the memory map
  view.setUint32(8, 0, true); // flags
  view.setUint32(12, placed.length, true);
  view.setBigUint64(16, placed.length > 0 ? BigInt(startInfo + modlistAt) : 0n, true);
  view.setBigUint64(24, BigInt(cmdlineAddress), true);
  view.setBigUint64(32, BigInt(options.rsdp ?? 0), true);
  view.setBigUint64(40, BigInt(startInfo + memmapAt), true);
  view.setUint32(48, memoryMap.length, true);
  placed.forEach((m, i) => {
    const at = modlistAt + i * MODLIST_ENTRY_SIZE;
    view.setBigUint64(at, BigInt(m.address), true);
    view.setBigUint64(at + 8, BigInt(m.size), true);
    view.setBigUint64(at + 16, BigInt(m.cmdline), true);
  });
  // hvm_memmap_table_entry is the e820 entry with 4 bytes of padding.
  const e820 = packE820(memoryMap);
  memoryMap.forEach((_, i) => info.set(e820.subarray(i * 20, i * 20 + 20), memmapAt + i * MEMMAP_ENTRY_SIZE));
  plan.write(startInfo, info);
  plan.apply();

  const initrd = options.initrd !== undefined && placed[0] !== undefined
    ? { address: placed[0].address, size: placed[0].size }
    : undefined;
  return {
    format: "pvh",
    mode: "protected",
    entry: BigInt(entry),
    registers: { rbx: BigInt(startInfo) },
    symbols: elf.symbols,
    lowest: segments.lowest,
    end: segments.end,
    bootInfo: { address: startInfo, size: infoSize },
    linux: {
      protocol: "pvh",
      version: "PVH",
      kernelVersion: "",
      loadAddress: segments.lowest,
      reserved: segments.end - segments.lowest,
      bootParams: startInfo,
      cmdline: { address: cmdlineAddress, text: cmdline },
      initrd,
      memoryMap,
    },
  };
}
