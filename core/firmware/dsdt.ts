/**
 * The DSDT's definition block: AML (ACPI 6.5, chapter 20) for the devices
 * a kernel cannot find by itself. Today these are virtio-mmio windows,
 * declared as Linux's virtio-mmio driver expects them (`LNRO0005`, one
 * fixed memory range and one interrupt), under `\_SB`.
 *
 * @module
 */

/** One virtio-mmio window and its interrupt. */
export interface DsdtVirtioMmio {
  base: number;
  size: number;
  gsi: number;
}

/** AML PkgLength (20.2.4): the length counts its own bytes. */
function pkgLength(bodyLength: number): number[] {
  if (bodyLength + 1 < 0x40) return [bodyLength + 1];
  for (let extra = 1; extra <= 3; extra++) {
    const total = bodyLength + 1 + extra;
    if (total < 2 ** (4 + 8 * extra)) {
      const out = [(extra << 6) | (total & 0xf)];
      for (let i = 0; i < extra; i++) out.push((total >> (4 + 8 * i)) & 0xff);
      return out;
    }
  }
  throw new RangeError(`AML package of ${bodyLength} bytes is too long`);
}

function ascii(text: string): number[] {
  return [...text].map((c) => c.charCodeAt(0));
}

function u32(value: number): number[] {
  return [value & 0xff, (value >>> 8) & 0xff, (value >>> 16) & 0xff, value >>> 24];
}

/** `Name (NAME, integer)` with the shortest integer encoding. */
function nameInteger(name: string, value: number): number[] {
  const encoded = value === 0 ? [0x00] : value === 1 ? [0x01] : value < 0x100 ? [0x0a, value] : [0x0c, ...u32(value)];
  return [0x08, ...ascii(name), ...encoded];
}

/**
 * `Device (VRnn) { _HID "LNRO0005", _UID n, _CRS { Memory32Fixed, Interrupt } }`
 * for each window, inside `Scope (\_SB)`. Interrupts are declared edge,
 * active-high, exclusive: the ISA lines hvsh uses, as the MP table's ISA
 * entries describe them too.
 *
 * @example
 * ```ts
 * import { virtioMmioAml } from "./dsdt.ts";
 * import assert from "node:assert/strict";
 * const aml = virtioMmioAml([{ base: 0xfeb00000, size: 0x200, gsi: 5 }]);
 * assert.ok(new TextDecoder().decode(aml).includes("LNRO0005"));
 * ```
 */
export function virtioMmioAml(devices: readonly DsdtVirtioMmio[]): Uint8Array {
  if (devices.length === 0) return new Uint8Array(0);
  if (devices.length > 256) throw new RangeError(`Cannot declare ${devices.length} virtio-mmio devices: at most 256`);
  const body: number[] = [];
  devices.forEach((device, index) => {
    const resources = [
      0x86,
      0x09,
      0x00,
      0x01,
      ...u32(device.base),
      ...u32(device.size), // Memory32Fixed (ReadWrite)
      0x89,
      0x06,
      0x00,
      0x03,
      0x01,
      ...u32(device.gsi), // Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive)
      0x79,
      0x00, // End tag
    ];
    const buffer = [0x0a, resources.length, ...resources];
    const crs = [0x08, ...ascii("_CRS"), 0x11, ...pkgLength(buffer.length), ...buffer];
    const name = `VR${index.toString(16).toUpperCase().padStart(2, "0")}`;
    const deviceBody = [
      ...ascii(name),
      0x08,
      ...ascii("_HID"),
      0x0d,
      ...ascii("LNRO0005"),
      0x00,
      ...nameInteger("_UID", index),
      ...crs,
    ];
    body.push(0x5b, 0x82, ...pkgLength(deviceBody.length), ...deviceBody);
  });
  const scopeBody = [0x5c, ...ascii("_SB_"), ...body];
  return new Uint8Array([0x10, ...pkgLength(scopeBody.length), ...scopeBody]);
}
