// Internal: validates an ELF image's PT_LOAD segments and queues them in a
// load plan. Shared by the plain ELF and the multiboot ELF loaders.

import { type ElfImage, programHeaderTypeName, PT_LOAD } from "./elf.ts";
import { hex, type LoadPlan } from "./_plan.ts";

/** The result of planning an ELF image's segments. */
export interface ElfPlan {
  /** The physical entry point. */
  entry: bigint;
  /** Lowest physical address loaded. */
  lowest: number;
  /** End (exclusive) of the highest segment, BSS included. */
  end: number;
}

/**
 * Checks every PT_LOAD segment (its bytes lie in the file, p_filesz <=
 * p_memsz, it lies in RAM below `limit` and overlaps no other) and queues its
 * bytes and zeroed BSS. Segments load at p_paddr, or at p_vaddr when every
 * p_paddr is 0. The entry point is e_entry; when e_entry lies in a segment's
 * virtual range and that segment is loaded elsewhere, it is translated to the
 * physical address (as GRUB and QEMU do), else it must lie in a loaded
 * segment's physical range.
 */
export function planElfSegments(
  elf: ElfImage,
  bytes: Uint8Array,
  plan: LoadPlan,
  prefix: string,
  limit?: { address: bigint; why: string },
): ElfPlan {
  const loads = elf.programHeaders.filter((ph) => ph.type === PT_LOAD && ph.memsz > 0);
  if (loads.length === 0) {
    throw new SyntaxError(
      `${prefix}no program header is PT_LOAD with p_memsz > 0 (${elf.programHeaders.length} program headers)`,
    );
  }
  for (const ph of loads) {
    const label = `program header ${ph.index} (${programHeaderTypeName(ph.type)})`;
    if (ph.filesz > ph.memsz) {
      throw new SyntaxError(
        `${prefix}${label} p_filesz ${hex(ph.filesz)} exceeds p_memsz ${hex(ph.memsz)}`,
      );
    }
    if (ph.offset + ph.filesz > bytes.length) {
      throw new SyntaxError(
        `${prefix}${label} file bytes [${hex(ph.offset)}, ${
          hex(ph.offset + ph.filesz)
        }) extend beyond the end of the file (${hex(bytes.length)} bytes)`,
      );
    }
  }
  const byPaddr = loads.some((ph) => ph.paddr !== 0n) ||
    loads.every((ph) => ph.vaddr === 0n);
  const reservations = loads.map((ph) => {
    const label = `program header ${ph.index} (${programHeaderTypeName(ph.type)})`;
    const start = byPaddr ? ph.paddr : ph.vaddr;
    if (limit !== undefined && start + BigInt(ph.memsz) > limit.address) {
      throw new RangeError(
        `${prefix}${label} ends at ${hex(start + BigInt(ph.memsz))}, beyond ${limit.why}`,
      );
    }
    return { label, start, size: ph.memsz };
  });
  // One batch: 200k segments are checked against each other in O(n log n).
  const addresses = plan.reserveAll(reservations);
  const placed: { vaddr: bigint; address: number; memsz: number }[] = [];
  let lowest = Number.POSITIVE_INFINITY;
  let end = 0;
  loads.forEach((ph, i) => {
    const address = addresses[i]!;
    plan.write(address, bytes.subarray(ph.offset, ph.offset + ph.filesz));
    plan.fill(address + ph.filesz, ph.memsz - ph.filesz, 0);
    placed.push({ vaddr: ph.vaddr, address, memsz: ph.memsz });
    lowest = Math.min(lowest, address);
    end = Math.max(end, address + ph.memsz);
  });

  let entry: bigint | undefined;
  for (const p of placed) {
    const physical = BigInt(p.address);
    if (
      p.vaddr !== physical && elf.entry >= p.vaddr &&
      elf.entry < p.vaddr + BigInt(p.memsz)
    ) {
      entry = elf.entry - p.vaddr + physical;
      break;
    }
  }
  entry ??= placed.some((p) =>
      elf.entry >= BigInt(p.address) &&
      elf.entry < BigInt(p.address + p.memsz)
    )
    ? elf.entry
    : undefined;
  if (entry === undefined) {
    throw new RangeError(
      `${prefix}e_entry ${hex(elf.entry)} is outside all loaded segments`,
    );
  }
  return { entry, lowest, end };
}
