/**
 * An Intel MultiProcessor Specification 1.4 table: the 16-byte floating
 * pointer ("_MP_") followed by the configuration table ("PCMP") with one
 * processor entry per CPU, an ISA bus, one IOAPIC, the ISA interrupt
 * assignments and the local interrupts of virtual-wire mode, as SeaBIOS
 * builds them for QEMU's `pc` machine. Older kernels (and those booted with
 * `acpi=off`) find their CPUs here.
 *
 * The caller writes the result at `address`: kernels scan the first KiB of
 * the EBDA, the last KiB of base memory and 0xf0000-0xfffff for the
 * floating pointer, on 16-byte boundaries.
 *
 * @module
 */

import { ByteWriter, checksum } from "./_bytes.ts";
import { IOAPIC_ADDRESS, LOCAL_APIC_ADDRESS } from "./acpi.ts";

/** Configuration-table entry types. */
export const MP_ENTRY = {
  processor: 0,
  bus: 1,
  ioApic: 2,
  ioInterrupt: 3,
  localInterrupt: 4,
} as const;

/** Interrupt types of I/O and local interrupt entries. */
export const MP_INTERRUPT = {
  int: 0,
  nmi: 1,
  smi: 2,
  extInt: 3,
} as const;

const FLOATING_SIZE = 16;
const HEADER_SIZE = 44;
const SPEC_REVISION = 4; // 1.4
const LOCAL_APIC_VERSION = 0x14;
const IOAPIC_VERSION = 0x11;
const CPU_SIGNATURE = 0x0000_0600; // family 6
const CPU_FEATURES = 0x0000_0201; // FPU, APIC

/** Options for {@link buildMpTable}. */
export interface MpTableOptions {
  /** CPUs (1-254); CPU 0 is the bootstrap processor, local APIC ID = index. */
  cpus: number;
  /** Guest physical address of the floating pointer, 16-byte aligned; the configuration table follows it. */
  address: number;
  /** The IOAPIC's ID (default `cpus`). */
  ioapicId?: number;
  /** Route ISA IRQ 0 to IOAPIC pin 2 (and leave IRQ 2 out), as QEMU and SeaBIOS do (default true). */
  irq0Override?: boolean;
}

/**
 * Builds the floating pointer and configuration table, contiguous, for `address`.
 *
 * @example
 * ```ts
 * import { buildMpTable } from "./mptable.ts";
 * import assert from "node:assert/strict";
 * const table = buildMpTable({ cpus: 2, address: 0xf5000 });
 * assert.equal(new TextDecoder().decode(table.subarray(0, 4)), "_MP_");
 * assert.equal(new TextDecoder().decode(table.subarray(16, 20)), "PCMP");
 * ```
 */
export function buildMpTable(options: MpTableOptions): Uint8Array {
  const { cpus, address } = options;
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > 254) {
    throw new RangeError(`Cannot build the MP table: CPU count ${cpus} is not in 1-254`);
  }
  if (!Number.isSafeInteger(address) || address < 0 || address % 16 !== 0 || address >= 2 ** 32) {
    throw new RangeError(
      `Cannot build the MP table: address 0x${address.toString(16)} is not 16-byte aligned below 4 GiB`,
    );
  }
  const ioapicId = options.ioapicId ?? cpus;
  if (!Number.isInteger(ioapicId) || ioapicId < 0 || ioapicId > 0xff) {
    throw new RangeError(`Cannot build the MP table: IOAPIC ID ${ioapicId} is not in 0-255`);
  }
  const override = options.irq0Override ?? true;

  const entries = new ByteWriter();
  let count = 0;
  for (let cpu = 0; cpu < cpus; cpu++) {
    entries
      .u8(MP_ENTRY.processor)
      .u8(cpu) // local APIC ID
      .u8(LOCAL_APIC_VERSION)
      .u8(cpu === 0 ? 0x03 : 0x01) // enabled, bootstrap processor
      .u32(CPU_SIGNATURE)
      .u32(CPU_FEATURES)
      .zeros(8);
    count++;
  }
  entries.u8(MP_ENTRY.bus).u8(0).ascii("ISA", 6);
  count++;
  entries.u8(MP_ENTRY.ioApic).u8(ioapicId).u8(IOAPIC_VERSION).u8(0x01).u32(IOAPIC_ADDRESS); // enabled
  count++;
  for (let irq = 0; irq < 16; irq++) {
    if (override && irq === 2) continue; // pin 2 carries IRQ 0; the cascade has no pin
    const pin = override && irq === 0 ? 2 : irq;
    entries.u8(MP_ENTRY.ioInterrupt).u8(MP_INTERRUPT.int).u16(0).u8(0).u8(irq).u8(ioapicId).u8(pin); // conforming
    count++;
  }
  for (const [type, lint] of [[MP_INTERRUPT.extInt, 0], [MP_INTERRUPT.nmi, 1]] as const) {
    entries.u8(MP_ENTRY.localInterrupt).u8(type).u16(0).u8(0).u8(0).u8(0xff).u8(lint); // all local APICs
    count++;
  }
  const body = entries.finish();

  const config = new ByteWriter()
    .ascii("PCMP", 4)
    .u16(HEADER_SIZE + body.length)
    .u8(SPEC_REVISION)
    .u8(0) // checksum
    .ascii("HVSH", 8)
    .ascii("PC", 12)
    .u32(0) // OEM table pointer
    .u16(0) // OEM table size
    .u16(count)
    .u32(LOCAL_APIC_ADDRESS)
    .u16(0) // extended table length
    .u8(0) // extended table checksum
    .u8(0)
    .bytes(body)
    .finish();
  config[7] = checksum(config);

  const floating = new ByteWriter()
    .ascii("_MP_", 4)
    .u32(address + FLOATING_SIZE) // the configuration table
    .u8(1) // length in 16-byte units
    .u8(SPEC_REVISION)
    .u8(0) // checksum
    .u8(0) // feature 1: a configuration table is present
    .u8(0) // feature 2: no IMCR, virtual-wire mode
    .zeros(3)
    .finish();
  floating[10] = checksum(floating);

  const table = new Uint8Array(FLOATING_SIZE + config.length);
  table.set(floating);
  table.set(config, FLOATING_SIZE);
  if (address + table.length > 2 ** 32) {
    throw new RangeError(
      `Cannot build the MP table: it ends at 0x${(address + table.length).toString(16)}, above 4 GiB`,
    );
  }
  return table;
}
