/**
 * ACPI tables for a PC guest booted without firmware: RSDP (revision 2),
 * RSDT, XSDT, FADT (revision 6), FACS, an empty DSDT and a MADT describing
 * the local APICs, one IOAPIC and the ISA interrupt overrides, the way
 * QEMU's `pc` machine describes them.
 *
 * The builder only produces bytes; the caller writes `rsdp` at
 * `rsdpAddress` (kernels scan 0xe0000-0xfffff on 16-byte boundaries for
 * it) and `tables` at `tablesAddress`, and keeps both ranges out of the
 * RAM it reports as usable.
 *
 * @module
 */

import { type DsdtVirtioMmio, virtioMmioAml } from "./dsdt.ts";
import { ByteWriter, checksum } from "./_bytes.ts";

/** The local APIC's physical address (every CPU sees its own there). */
export const LOCAL_APIC_ADDRESS = 0xfee0_0000;
/** The IOAPIC's physical address. */
export const IOAPIC_ADDRESS = 0xfec0_0000;

const OEM_ID = "HVSH";
const OEM_TABLE_ID = "HVSH";
const CREATOR_ID = "HVSH";
const HEADER_SIZE = 36;
const RSDP_SIZE = 36;
const FACS_SIZE = 64;

/** FADT flag bits used here (ACPI 6.5, table 5.10). */
export const FADT_FLAGS = {
  wbinvd: 1 << 0,
  procC1: 1 << 2,
  powerButton: 1 << 4,
  sleepButton: 1 << 5,
  resetRegisterSupported: 1 << 10,
  hardwareReduced: 1 << 20,
} as const;

/** MADT entry types used here. */
export const MADT_ENTRY = {
  localApic: 0,
  ioApic: 1,
  interruptOverride: 2,
  localApicNmi: 4,
} as const;

/** Options for {@link buildAcpiTables}. */
export interface AcpiOptions {
  /** CPUs (1-254): processor UID = APIC ID = index, all enabled. */
  cpus: number;
  /** Where the RSDP goes: 16-byte aligned, below 1 MiB for kernels that scan for it (e.g. 0xf0000). */
  rsdpAddress: number;
  /** Where the tables go, contiguously: below 4 GiB (the RSDT holds 32-bit pointers). */
  tablesAddress: number;
  /** The IOAPIC's ID (default `cpus`, the first ID after the CPUs'). */
  ioapicId?: number;
  /** Whether ISA IRQ 0 (the PIT) is overridden to GSI 2, as on QEMU (default true). */
  irq0Override?: boolean;
  /**
   * Base port of a PIIX4-style ACPI PM block (PM1a event at +0, 4 bytes;
   * PM1a control at +4, 2 bytes; PM timer at +8, 4 bytes; SCI on IRQ 9,
   * level-triggered). Without it the FADT declares a hardware-reduced ACPI
   * platform, which has no such registers.
   */
  pmBase?: number;
  /** Reset register: an I/O port and the byte to write there (default 0xcf9 and 0x06, the PIIX reset control). */
  reset?: { port: number; value: number };
  /** virtio-mmio windows to declare in the DSDT (`LNRO0005` devices). */
  virtioMmio?: readonly DsdtVirtioMmio[];
}

/** Where each table landed. */
export interface AcpiAddresses {
  rsdt: number;
  xsdt: number;
  fadt: number;
  facs: number;
  dsdt: number;
  madt: number;
}

/** What {@link buildAcpiTables} returns. */
export interface AcpiTables {
  /** The 36-byte RSDP, for `rsdpAddress`. */
  rsdp: Uint8Array;
  /** Every other table, for `tablesAddress`. */
  tables: Uint8Array;
  /** The physical address of each table. */
  addresses: AcpiAddresses;
}

function sdt(signature: string, revision: number, body: Uint8Array): Uint8Array {
  const writer = new ByteWriter()
    .ascii(signature, 4)
    .u32(HEADER_SIZE + body.length)
    .u8(revision)
    .u8(0) // checksum, below
    .ascii(OEM_ID, 6)
    .ascii(OEM_TABLE_ID + signature, 8)
    .u32(1) // OEM revision
    .ascii(CREATOR_ID, 4)
    .u32(1) // creator revision
    .bytes(body);
  const bytes = writer.finish();
  bytes[9] = checksum(bytes);
  return bytes;
}

/** A Generic Address Structure for a port in system I/O space. */
function ioGas(writer: ByteWriter, port: number, bytes: number): void {
  if (port === 0) {
    writer.zeros(12);
    return;
  }
  writer.u8(1).u8(bytes * 8).u8(0).u8(bytes === 4 ? 3 : bytes === 2 ? 2 : 1).u64(port);
}

function facs(): Uint8Array {
  return new ByteWriter()
    .ascii("FACS", 4)
    .u32(FACS_SIZE)
    .u32(0) // hardware signature
    .u32(0) // firmware waking vector
    .u32(0) // global lock
    .u32(0) // flags
    .u64(0) // X firmware waking vector
    .u8(2) // version
    .zeros(FACS_SIZE - 33)
    .finish();
}

function fadt(options: AcpiOptions, facsAddress: number, dsdtAddress: number): Uint8Array {
  const pm = options.pmBase;
  const reset = options.reset ?? { port: 0xcf9, value: 0x06 };
  const pm1Event = pm ?? 0;
  const pm1Control = pm === undefined ? 0 : pm + 4;
  const pmTimer = pm === undefined ? 0 : pm + 8;
  let flags = FADT_FLAGS.wbinvd | FADT_FLAGS.procC1 | FADT_FLAGS.powerButton | FADT_FLAGS.sleepButton |
    FADT_FLAGS.resetRegisterSupported;
  if (pm === undefined) flags |= FADT_FLAGS.hardwareReduced;
  const body = new ByteWriter()
    .u32(facsAddress) // FIRMWARE_CTRL
    .u32(dsdtAddress) // DSDT
    .u8(0) // reserved
    .u8(0) // preferred PM profile: unspecified
    .u16(pm === undefined ? 0 : 9) // SCI_INT
    .u32(0) // SMI_CMD: none, the platform is always in ACPI mode
    .u8(0) // ACPI_ENABLE
    .u8(0) // ACPI_DISABLE
    .u8(0) // S4BIOS_REQ
    .u8(0) // PSTATE_CNT
    .u32(pm1Event) // PM1a_EVT_BLK
    .u32(0) // PM1b_EVT_BLK
    .u32(pm1Control) // PM1a_CNT_BLK
    .u32(0) // PM1b_CNT_BLK
    .u32(0) // PM2_CNT_BLK
    .u32(pmTimer) // PM_TMR_BLK
    .u32(0) // GPE0_BLK
    .u32(0) // GPE1_BLK
    .u8(pm === undefined ? 0 : 4) // PM1_EVT_LEN
    .u8(pm === undefined ? 0 : 2) // PM1_CNT_LEN
    .u8(0) // PM2_CNT_LEN
    .u8(pm === undefined ? 0 : 4) // PM_TMR_LEN
    .u8(0) // GPE0_BLK_LEN
    .u8(0) // GPE1_BLK_LEN
    .u8(0) // GPE1_BASE
    .u8(0) // CST_CNT
    .u16(0x0fff) // P_LVL2_LAT: C2 not supported
    .u16(0x0fff) // P_LVL3_LAT: C3 not supported
    .u16(0) // FLUSH_SIZE
    .u16(0) // FLUSH_STRIDE
    .u8(0) // DUTY_OFFSET
    .u8(0) // DUTY_WIDTH
    .u8(0) // DAY_ALRM
    .u8(0) // MON_ALRM
    .u8(0x32) // CENTURY: the CMOS byte holding it
    .u16(0x0003) // IAPC_BOOT_ARCH: legacy (ISA) devices, 8042
    .u8(0) // reserved
    .u32(flags);
  ioGas(body, reset.port, 1); // RESET_REG
  body
    .u8(reset.value) // RESET_VALUE
    .u16(0) // ARM_BOOT_ARCH
    .u8(0) // FADT minor version: 6.0
    .u64(0) // X_FIRMWARE_CTRL: FIRMWARE_CTRL holds it
    .u64(dsdtAddress); // X_DSDT
  ioGas(body, pm1Event, 4); // X_PM1a_EVT_BLK
  ioGas(body, 0, 0); // X_PM1b_EVT_BLK
  ioGas(body, pm1Control, 2); // X_PM1a_CNT_BLK
  ioGas(body, 0, 0); // X_PM1b_CNT_BLK
  ioGas(body, 0, 0); // X_PM2_CNT_BLK
  ioGas(body, pmTimer, 4); // X_PM_TMR_BLK
  ioGas(body, 0, 0); // X_GPE0_BLK
  ioGas(body, 0, 0); // X_GPE1_BLK
  ioGas(body, 0, 0); // SLEEP_CONTROL_REG
  ioGas(body, 0, 0); // SLEEP_STATUS_REG
  body.ascii("HVSH", 8, "\0"); // hypervisor vendor identity
  return sdt("FACP", 6, body.finish());
}

function madt(options: AcpiOptions, ioapicId: number): Uint8Array {
  const body = new ByteWriter().u32(LOCAL_APIC_ADDRESS).u32(1); // flags: PCAT_COMPAT (8259s present)
  for (let cpu = 0; cpu < options.cpus; cpu++) {
    body.u8(MADT_ENTRY.localApic).u8(8).u8(cpu).u8(cpu).u32(1); // UID, APIC ID, enabled
  }
  body.u8(MADT_ENTRY.ioApic).u8(12).u8(ioapicId).u8(0).u32(IOAPIC_ADDRESS).u32(0); // GSI base 0
  if (options.irq0Override ?? true) {
    body.u8(MADT_ENTRY.interruptOverride).u8(10).u8(0).u8(0).u32(2).u16(0); // ISA IRQ 0 -> GSI 2, conforming
  }
  if (options.pmBase !== undefined) {
    body.u8(MADT_ENTRY.interruptOverride).u8(10).u8(0).u8(9).u32(9).u16(0x000d); // SCI: level, active high
  }
  body.u8(MADT_ENTRY.localApicNmi).u8(6).u8(0xff).u16(0).u8(1); // all CPUs: NMI on LINT1
  return sdt("APIC", 4, body.finish());
}

function checkAddress(what: string, value: number, alignment: number, limit: number): void {
  if (!Number.isSafeInteger(value) || value < 0 || value % alignment !== 0 || value >= limit) {
    throw new RangeError(
      `Cannot build ACPI tables: ${what} 0x${value.toString(16)} is not ${alignment}-byte aligned below 0x${
        limit.toString(16)
      }`,
    );
  }
}

/**
 * Builds the ACPI tables for a machine of `cpus` CPUs.
 *
 * @example
 * ```ts
 * import { buildAcpiTables } from "./acpi.ts";
 * import assert from "node:assert/strict";
 * const { rsdp, tables, addresses } = buildAcpiTables({ cpus: 2, rsdpAddress: 0xf0000, tablesAddress: 0xe0000 });
 * assert.equal(new TextDecoder().decode(rsdp.subarray(0, 8)), "RSD PTR ");
 * const madt = tables.subarray(addresses.madt - 0xe0000);
 * assert.equal(new TextDecoder().decode(madt.subarray(0, 4)), "APIC");
 * ```
 */
export function buildAcpiTables(options: AcpiOptions): AcpiTables {
  const { cpus } = options;
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > 254) {
    throw new RangeError(`Cannot build ACPI tables: CPU count ${cpus} is not in 1-254 (xAPIC IDs only)`);
  }
  const ioapicId = options.ioapicId ?? cpus;
  if (!Number.isInteger(ioapicId) || ioapicId < 0 || ioapicId > 0xff) {
    throw new RangeError(`Cannot build ACPI tables: IOAPIC ID ${ioapicId} is not in 0-255`);
  }
  checkAddress("RSDP address", options.rsdpAddress, 16, 2 ** 32);
  checkAddress("tables address", options.tablesAddress, 16, 2 ** 32);
  const base = options.tablesAddress;

  // Layout: FACS (64-byte aligned), DSDT, FADT, MADT, RSDT, XSDT, each on a 16-byte boundary.
  const writer = new ByteWriter();
  writer.zeros((64 - (base % 64)) % 64);
  const facsAddress = base + writer.length;
  writer.bytes(facs()).align(16);
  const dsdtAddress = base + writer.length;
  writer.bytes(sdt("DSDT", 2, virtioMmioAml(options.virtioMmio ?? []))).align(16);
  const fadtAddress = base + writer.length;
  writer.bytes(fadt(options, facsAddress, dsdtAddress)).align(16);
  const madtAddress = base + writer.length;
  writer.bytes(madt(options, ioapicId)).align(16);
  const pointed = [fadtAddress, madtAddress];
  const rsdtAddress = base + writer.length;
  const rsdtBody = new ByteWriter();
  for (const address of pointed) rsdtBody.u32(address);
  writer.bytes(sdt("RSDT", 1, rsdtBody.finish())).align(16);
  const xsdtAddress = base + writer.length;
  const xsdtBody = new ByteWriter();
  for (const address of pointed) xsdtBody.u64(address);
  const xsdt = sdt("XSDT", 1, xsdtBody.finish());
  writer.bytes(xsdt);
  const tables = writer.finish();
  if (base + tables.length > 2 ** 32) {
    throw new RangeError(
      `Cannot build ACPI tables: they end at 0x${(base + tables.length).toString(16)}, above 4 GiB`,
    );
  }

  const rsdp = new ByteWriter()
    .ascii("RSD PTR ", 8)
    .u8(0) // checksum of the first 20 bytes
    .ascii(OEM_ID, 6)
    .u8(2) // revision: ACPI 2.0+, has the XSDT
    .u32(rsdtAddress)
    .u32(RSDP_SIZE)
    .u64(xsdtAddress)
    .u8(0) // extended checksum
    .zeros(3)
    .finish();
  rsdp[8] = checksum(rsdp, 0, 20);
  rsdp[32] = checksum(rsdp);
  return {
    rsdp,
    tables,
    addresses: {
      rsdt: rsdtAddress,
      xsdt: xsdtAddress,
      fadt: fadtAddress,
      facs: facsAddress,
      dsdt: dsdtAddress,
      madt: madtAddress,
    },
  };
}
