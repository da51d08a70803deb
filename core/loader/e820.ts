/**
 * The guest's physical memory map as PC firmware reports it (BIOS e820):
 * one table shared by the Linux boot protocol (boot_params.e820_table), the
 * PVH start info (its memmap), the multiboot memory map and fw_cfg's
 * `etc/e820` file, so every way into the guest sees the same map.
 *
 * @module
 */

/** E820 entry types (ACPI's address range types). */
export const E820_TYPE = {
  ram: 1,
  reserved: 2,
  acpi: 3,
  nvs: 4,
  unusable: 5,
} as const;

/**
 * One e820 entry: `[address, address + size)` of `type`.
 *
 * @example
 * ```ts
 * import { type E820Entry, E820_TYPE } from "./e820.ts";
 * const lowRam: E820Entry = { address: 0, size: 0x9fc00, type: E820_TYPE.ram };
 * ```
 */
export interface E820Entry {
  address: number;
  size: number;
  type: number;
}

/** Where low RAM ends and the EBDA begins (640 KiB less the 1 KiB EBDA, as SeaBIOS leaves it). */
export const EBDA_START = 0x9_fc00;
/** The BIOS area at the top of the first MiB, reserved. */
export const BIOS_AREA = { address: 0xf_0000, size: 0x1_0000 } as const;
/** The first address above the legacy hole. */
export const HIGH_MEMORY_START = 0x10_0000;

/**
 * The e820 map of guest RAM laid out as `regions`: low RAM up to the EBDA,
 * the EBDA and the BIOS area reserved, RAM from 1 MiB, and RAM above 4 GiB
 * when there is any. The legacy hole 0xa0000-0xeffff is left out (not RAM).
 *
 * @example
 * ```ts
 * import { e820Map } from "./e820.ts";
 * import assert from "node:assert/strict";
 *
 * const map = e820Map([{ base: 0, size: 64 << 20 }]);
 * assert.deepEqual(map.at(-1), { address: 0x100000, size: (64 << 20) - 0x100000, type: 1 });
 * ```
 */
export function e820Map(regions: readonly { base: number; size: number }[]): E820Entry[] {
  const entries: E820Entry[] = [
    { address: 0, size: EBDA_START, type: E820_TYPE.ram },
    { address: EBDA_START, size: 0xa_0000 - EBDA_START, type: E820_TYPE.reserved },
    { address: BIOS_AREA.address, size: BIOS_AREA.size, type: E820_TYPE.reserved },
  ];
  for (const region of regions) {
    const start = Math.max(region.base, HIGH_MEMORY_START);
    const end = region.base + region.size;
    if (end > start) entries.push({ address: start, size: end - start, type: E820_TYPE.ram });
  }
  return entries;
}

/**
 * Packs entries as the BIOS's e820 call and boot_params do: `{ u64 address,
 * u64 size, u32 type }`, 20 bytes each.
 */
export function packE820(entries: readonly E820Entry[]): Uint8Array {
  const out = new Uint8Array(entries.length * 20);
  const view = new DataView(out.buffer);
  entries.forEach(({ address, size, type }, i) => {
    view.setBigUint64(i * 20, BigInt(address), true);
    view.setBigUint64(i * 20 + 8, BigInt(size), true);
    view.setUint32(i * 20 + 16, type, true);
  });
  return out;
}

/**
 * The highest page-aligned address where `size` bytes fit in RAM below
 * `limit` (exclusive) and outside every range of `avoid`, or undefined.
 * Loaders put an initrd there, as boot loaders do: high, out of the
 * kernel's way.
 */
export function highestFit(
  map: readonly E820Entry[],
  size: number,
  limit: number,
  avoid: readonly { start: number; end: number }[],
  align = 0x1000,
): number | undefined {
  const ram = map.filter((e) => e.type === E820_TYPE.ram).sort((a, b) => b.address - a.address);
  for (const entry of ram) {
    let top = Math.min(entry.address + entry.size, limit);
    for (;;) {
      const start = Math.floor((top - size) / align) * align;
      if (start < entry.address || size > top) break;
      const clash = avoid.find((r) => start < r.end && r.start < start + size);
      if (clash === undefined) return start;
      top = clash.start;
    }
  }
  return undefined;
}
