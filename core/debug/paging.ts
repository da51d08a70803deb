/**
 * Guest-virtual to guest-physical translation by walking the guest's page
 * tables in hvsh (not KVM_TRANSLATE), so every level can be reported: real
 * mode, 32-bit paging (4 MiB pages with PSE), PAE, 4-level and 5-level
 * paging, with large pages.
 *
 * @module
 */

import type { SpecialRegisters } from "../kvm/structs.ts";
import { hex } from "../hex.ts";
import { CR0, CR4, EFER } from "../x86.ts";

/** Reads a 32- or 64-bit page-table entry at a physical address; throws when it is not RAM. */
export interface PhysicalReader {
  readU32(address: number): number;
  readU64(address: number): bigint;
}

/** One level of a walk. */
export interface WalkLevel {
  /** Level name: PML5E, PML4E, PDPTE, PDE, PTE. */
  name: string;
  /** Physical address of the entry. */
  entryAddress: bigint;
  /** The entry's value. */
  entry: bigint;
  present: boolean;
  writable: boolean;
  user: boolean;
  /** Executable (NX clear), where the mode has NX. */
  executable: boolean;
  /** Maps a large page (1 GiB, 4 MiB or 2 MiB) and ends the walk. */
  large: boolean;
}

/** The result of a translation. */
export interface Translation {
  /** The virtual (linear) address translated. */
  virtual: bigint;
  /** The physical address, when the walk reached a present page. */
  physical?: bigint;
  /** Paging mode: "none" (real mode or paging off), "32-bit", "pae", "4-level", "5-level". */
  paging: "none" | "32-bit" | "pae" | "4-level" | "5-level";
  /** Every level visited, in order. */
  levels: WalkLevel[];
  /** Page size in bytes when translated. */
  pageSize?: number;
  /** Why the walk stopped short, e.g. "PDE not present" or "PTE at 0x... is outside RAM". */
  fault?: string;
}

/**
 * Walks the page tables the special registers describe.
 *
 * @example
 * ```ts ignore
 * const t = translate(0x100000n, vm.cpu(0).sregs, vm.memory);
 * t.physical; // 0x100000n with identity tables
 * ```
 */
export function translate(virtual: bigint, sregs: SpecialRegisters, memory: PhysicalReader): Translation {
  if ((sregs.cr0 & CR0.PG) === 0n) {
    return { virtual, physical: virtual & 0xffff_ffffn, paging: "none", levels: [], pageSize: 0x1000 };
  }
  const nx = (sregs.efer & EFER.NXE) !== 0n;
  if ((sregs.efer & EFER.LMA) !== 0n) {
    const five = (sregs.cr4 & CR4.LA57) !== 0n;
    const names = five ? ["PML5E", "PML4E", "PDPTE", "PDE", "PTE"] : ["PML4E", "PDPTE", "PDE", "PTE"];
    const sign = virtual >> (five ? 56n : 47n); // bits 63..47 (63..56) must all equal the top address bit
    if (sign !== 0n && sign !== (five ? 0xffn : 0x1_ffffn)) {
      return { virtual, paging: five ? "5-level" : "4-level", levels: [], fault: "non-canonical address" };
    }
    return walk64(virtual, sregs.cr3, names, five ? "5-level" : "4-level", nx, memory);
  }
  if ((sregs.cr4 & CR4.PAE) !== 0n) {
    return walkPae(virtual & 0xffff_ffffn, sregs.cr3, nx, memory);
  }
  return walk32(virtual & 0xffff_ffffn, sregs.cr3, (sregs.cr4 & CR4.PSE) !== 0n, memory);
}

function level(name: string, entryAddress: bigint, entry: bigint, nx: boolean, large: boolean): WalkLevel {
  return {
    name,
    entryAddress,
    entry,
    present: (entry & 1n) !== 0n,
    writable: (entry & 2n) !== 0n,
    user: (entry & 4n) !== 0n,
    executable: !nx || (entry >> 63n) === 0n,
    large,
  };
}

function readEntry(memory: PhysicalReader, address: bigint, wide: boolean): bigint | undefined {
  try {
    return wide ? memory.readU64(Number(address)) : BigInt(memory.readU32(Number(address)));
  } catch {
    return undefined;
  }
}

const ADDRESS_MASK = 0x000f_ffff_ffff_f000n;

function walk64(
  virtual: bigint,
  cr3: bigint,
  names: string[],
  paging: "4-level" | "5-level",
  nx: boolean,
  memory: PhysicalReader,
): Translation {
  const levels: WalkLevel[] = [];
  let table = cr3 & ADDRESS_MASK;
  const top = names.length === 5 ? 48n : 39n;
  for (let i = 0; i < names.length; i++) {
    const shift = top - BigInt(i) * 9n;
    const index = (virtual >> shift) & 0x1ffn;
    const entryAddress = table + index * 8n;
    const entry = readEntry(memory, entryAddress, true);
    const name = names[i]!;
    if (entry === undefined) {
      return { virtual, paging, levels, fault: `${name} at ${hex(entryAddress)} is outside RAM` };
    }
    const isLeafLevel = i === names.length - 1;
    const large = !isLeafLevel && (name === "PDPTE" || name === "PDE") && (entry & 0x80n) !== 0n;
    const info = level(name, entryAddress, entry, nx, large);
    levels.push(info);
    if (!info.present) return { virtual, paging, levels, fault: `${name} not present` };
    if (large || isLeafLevel) {
      const pageSize = 1n << shift;
      const base = entry & ADDRESS_MASK & ~(pageSize - 1n);
      return { virtual, physical: base | (virtual & (pageSize - 1n)), paging, levels, pageSize: Number(pageSize) };
    }
    table = entry & ADDRESS_MASK;
  }
  return { virtual, paging, levels, fault: "walk did not end" };
}

function walkPae(virtual: bigint, cr3: bigint, nx: boolean, memory: PhysicalReader): Translation {
  const levels: WalkLevel[] = [];
  const paging = "pae";
  const pdpteAddress = (cr3 & 0xffff_ffe0n) + ((virtual >> 30n) & 3n) * 8n;
  let address = pdpteAddress;
  for (const [name, shift] of [["PDPTE", 30n], ["PDE", 21n], ["PTE", 12n]] as const) {
    const entry = readEntry(memory, address, true);
    if (entry === undefined) return { virtual, paging, levels, fault: `${name} at ${hex(address)} is outside RAM` };
    const large = name === "PDE" && (entry & 0x80n) !== 0n;
    const info = level(name, address, entry, nx && name !== "PDPTE", large);
    levels.push(info);
    if (!info.present) return { virtual, paging, levels, fault: `${name} not present` };
    if (large || name === "PTE") {
      const pageSize = 1n << shift;
      const base = entry & ADDRESS_MASK & ~(pageSize - 1n);
      return { virtual, physical: base | (virtual & (pageSize - 1n)), paging, levels, pageSize: Number(pageSize) };
    }
    const nextShift = name === "PDPTE" ? 21n : 12n;
    address = (entry & ADDRESS_MASK) + ((virtual >> nextShift) & 0x1ffn) * 8n;
  }
  return { virtual, paging, levels, fault: "walk did not end" };
}

function walk32(virtual: bigint, cr3: bigint, pse: boolean, memory: PhysicalReader): Translation {
  const levels: WalkLevel[] = [];
  const paging = "32-bit";
  const pdeAddress = (cr3 & 0xffff_f000n) + (virtual >> 22n) * 4n;
  const pde = readEntry(memory, pdeAddress, false);
  if (pde === undefined) return { virtual, paging, levels, fault: `PDE at ${hex(pdeAddress)} is outside RAM` };
  const large = pse && (pde & 0x80n) !== 0n;
  const pdeInfo = level("PDE", pdeAddress, pde, false, large);
  levels.push(pdeInfo);
  if (!pdeInfo.present) return { virtual, paging, levels, fault: "PDE not present" };
  if (large) {
    // PSE-36: bits 13-20 of a 4 MiB PDE hold physical address bits 32-39.
    const base = (pde & 0xffc0_0000n) | (((pde >> 13n) & 0xffn) << 32n);
    return { virtual, physical: base | (virtual & 0x3f_ffffn), paging, levels, pageSize: 4 << 20 };
  }
  const pteAddress = (pde & 0xffff_f000n) + ((virtual >> 12n) & 0x3ffn) * 4n;
  const pte = readEntry(memory, pteAddress, false);
  if (pte === undefined) return { virtual, paging, levels, fault: `PTE at ${hex(pteAddress)} is outside RAM` };
  const pteInfo = level("PTE", pteAddress, pte, false, false);
  levels.push(pteInfo);
  if (!pteInfo.present) return { virtual, paging, levels, fault: "PTE not present" };
  return { virtual, physical: (pte & 0xffff_f000n) | (virtual & 0xfffn), paging, levels, pageSize: 4096 };
}

/** A multi-line description of a walk, one line per level, as `.pt` prints it. */
export function formatTranslation(t: Translation): string {
  const lines = [`${hex(t.virtual)}: ${t.paging === "none" ? "paging off" : `${t.paging} paging`}`];
  for (const l of t.levels) {
    const flags = [l.present ? "P" : "-", l.writable ? "W" : "R", l.user ? "U" : "S", l.executable ? "X" : "NX"];
    if (l.large) flags.push("LARGE");
    lines.push(
      `  ${l.name.padEnd(6)} @ ${hex(l.entryAddress).padEnd(12)} = ${hex(l.entry).padEnd(20)} ${flags.join(" ")}`,
    );
  }
  if (t.physical !== undefined) {
    lines.push(
      `  -> physical ${hex(t.physical)} (${t.pageSize! >= 1 << 20 ? `${t.pageSize! >> 20} MiB` : "4 KiB"} page)`,
    );
  } else {
    lines.push(`  -> not mapped: ${t.fault}`);
  }
  return lines.join("\n");
}
