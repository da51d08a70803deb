/**
 * ACPI tables, decoded here by a small independent parser that follows the
 * pointers the way a kernel does: RSDP -> XSDT/RSDT -> FADT, MADT -> DSDT, FACS.
 */

import assert from "node:assert/strict";
import { type AcpiOptions, buildAcpiTables } from "./acpi.ts";

const RSDP_AT = 0xf0000;
const TABLES_AT = 0xe0000;

/** A guest physical address space holding the RSDP and the tables. */
class Image {
  readonly #ranges: { base: number; bytes: Uint8Array }[] = [];

  constructor(options: AcpiOptions) {
    const { rsdp, tables } = buildAcpiTables(options);
    this.#ranges.push({ base: options.rsdpAddress, bytes: rsdp }, { base: options.tablesAddress, bytes: tables });
  }

  at(address: number, length: number): Uint8Array {
    for (const { base, bytes } of this.#ranges) {
      if (address >= base && address + length <= base + bytes.length) {
        return bytes.subarray(address - base, address - base + length);
      }
    }
    throw new RangeError(`nothing at 0x${address.toString(16)}+${length}`);
  }

  view(address: number, length: number): DataView {
    const bytes = this.at(address, length);
    return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  text(address: number, length: number): string {
    return String.fromCharCode(...this.at(address, length));
  }

  /** A table with a standard header: checks signature and checksum, returns its bytes. */
  table(address: number, signature: string): { bytes: Uint8Array; view: DataView; revision: number } {
    assert.equal(this.text(address, 4), signature);
    const length = this.view(address, 8).getUint32(4, true);
    const bytes = this.at(address, length);
    assert.equal(sum(bytes), 0, `${signature} checksum`);
    return { bytes, view: new DataView(bytes.buffer, bytes.byteOffset, length), revision: bytes[8]! };
  }
}

function sum(bytes: Uint8Array): number {
  return bytes.reduce((total, byte) => (total + byte) & 0xff, 0);
}

interface MadtEntry {
  type: number;
  bytes: Uint8Array;
}

function walk(image: Image, options: AcpiOptions) {
  const rsdpView = image.view(options.rsdpAddress, 36);
  assert.equal(image.text(options.rsdpAddress, 8), "RSD PTR ");
  assert.equal(sum(image.at(options.rsdpAddress, 20)), 0, "RSDP checksum");
  assert.equal(sum(image.at(options.rsdpAddress, 36)), 0, "RSDP extended checksum");
  assert.equal(rsdpView.getUint8(15), 2);
  assert.equal(rsdpView.getUint32(20, true), 36);
  const rsdt = image.table(rsdpView.getUint32(16, true), "RSDT");
  const xsdt = image.table(Number(rsdpView.getBigUint64(24, true)), "XSDT");
  const rsdtEntries = Array.from(
    { length: (rsdt.bytes.length - 36) / 4 },
    (_, i) => rsdt.view.getUint32(36 + 4 * i, true),
  );
  const xsdtEntries = Array.from(
    { length: (xsdt.bytes.length - 36) / 8 },
    (_, i) => Number(xsdt.view.getBigUint64(36 + 8 * i, true)),
  );
  assert.deepEqual(rsdtEntries, xsdtEntries);
  const bySignature = new Map(xsdtEntries.map((address) => [image.text(address, 4), address]));
  assert.deepEqual([...bySignature.keys()].sort(), ["APIC", "FACP"]);

  const fadt = image.table(bySignature.get("FACP")!, "FACP");
  const dsdtAddress = fadt.view.getUint32(40, true);
  assert.equal(Number(fadt.view.getBigUint64(140, true)), dsdtAddress); // X_DSDT
  const dsdt = image.table(dsdtAddress, "DSDT");
  const facsAddress = fadt.view.getUint32(36, true);
  assert.equal(facsAddress % 64, 0, "FACS alignment");
  assert.equal(image.text(facsAddress, 4), "FACS");
  assert.equal(image.view(facsAddress, 8).getUint32(4, true), 64);

  const madt = image.table(bySignature.get("APIC")!, "APIC");
  const entries: MadtEntry[] = [];
  for (let at = 44; at < madt.bytes.length;) {
    const length = madt.bytes[at + 1]!;
    assert.ok(length >= 2, `MADT entry at ${at} has length ${length}`);
    entries.push({ type: madt.bytes[at]!, bytes: madt.bytes.subarray(at, at + length) });
    at += length;
  }
  return { fadt, dsdt, madt, entries };
}

function le(bytes: Uint8Array, at: number, size: 2 | 4): number {
  const view = new DataView(bytes.buffer, bytes.byteOffset + at, size);
  return size === 2 ? view.getUint16(0, true) : view.getUint32(0, true);
}

Deno.test("buildAcpiTables() links RSDP, RSDT and XSDT to a FADT and MADT with valid checksums", () => {
  const options = { cpus: 4, rsdpAddress: RSDP_AT, tablesAddress: TABLES_AT };
  const { fadt, dsdt } = walk(new Image(options), options);
  assert.equal(fadt.bytes.length, 276);
  assert.equal(fadt.revision, 6);
  assert.equal(dsdt.bytes.length, 36); // an empty definition block
  assert.equal(dsdt.revision, 2);
});

Deno.test("buildAcpiTables() MADT lists one enabled local APIC per CPU, the IOAPIC and the IRQ 0 override", () => {
  const cpus = 3;
  const options = { cpus, rsdpAddress: RSDP_AT, tablesAddress: TABLES_AT };
  const { madt, entries } = walk(new Image(options), options);
  assert.equal(madt.view.getUint32(36, true), 0xfee0_0000);
  assert.equal(madt.view.getUint32(40, true) & 1, 1); // PCAT_COMPAT
  const localApics = entries.filter((e) => e.type === 0);
  const ioApics = entries.filter((e) => e.type === 1);
  const overrides = entries.filter((e) => e.type === 2);
  const nmis = entries.filter((e) => e.type === 4);
  assert.equal(entries.length, cpus + 1 + overrides.length + nmis.length);
  assert.deepEqual(
    localApics.map((e) => [e.bytes[2], e.bytes[3], le(e.bytes, 4, 4)]),
    [[0, 0, 1], [1, 1, 1], [2, 2, 1]],
  );
  assert.equal(ioApics.length, 1);
  const [ioApic] = ioApics;
  assert.equal(ioApic!.bytes[2], cpus); // ID
  assert.equal(le(ioApic!.bytes, 4, 4), 0xfec0_0000);
  assert.equal(le(ioApic!.bytes, 8, 4), 0); // GSI base
  assert.equal(overrides.length, 1);
  assert.deepEqual([overrides[0]!.bytes[2], overrides[0]!.bytes[3], le(overrides[0]!.bytes, 4, 4)], [0, 0, 2]);
  assert.deepEqual([...nmis[0]!.bytes], [4, 6, 0xff, 0, 0, 1]); // all CPUs, LINT1
});

Deno.test("buildAcpiTables() without a PM block declares hardware-reduced ACPI and the 0xcf9 reset register", () => {
  const options = { cpus: 1, rsdpAddress: RSDP_AT, tablesAddress: TABLES_AT };
  const { fadt } = walk(new Image(options), options);
  const flags = fadt.view.getUint32(112, true);
  assert.equal(flags & (1 << 20), 1 << 20);
  assert.equal(flags & (1 << 10), 1 << 10);
  assert.deepEqual([...fadt.bytes.subarray(116, 120)], [1, 8, 0, 1]); // system I/O, 8 bits, byte access
  assert.equal(Number(fadt.view.getBigUint64(120, true)), 0xcf9);
  assert.equal(fadt.bytes[128], 0x06);
  assert.equal(fadt.view.getUint32(76, true), 0); // no PM timer
  assert.equal(fadt.bytes[108], 0x32); // CMOS century byte
});

Deno.test("buildAcpiTables() with a PM block fills the PM registers and adds the SCI override", () => {
  const options = { cpus: 2, rsdpAddress: RSDP_AT, tablesAddress: TABLES_AT, pmBase: 0x600 };
  const { fadt, entries } = walk(new Image(options), options);
  assert.equal(fadt.view.getUint32(112, true) & (1 << 20), 0);
  assert.equal(fadt.view.getUint16(46, true), 9); // SCI_INT
  assert.equal(fadt.view.getUint32(56, true), 0x600); // PM1a_EVT_BLK
  assert.equal(fadt.view.getUint32(64, true), 0x604); // PM1a_CNT_BLK
  assert.equal(fadt.view.getUint32(76, true), 0x608); // PM_TMR_BLK
  assert.equal(Number(fadt.view.getBigUint64(208 + 4, true)), 0x608); // X_PM_TMR_BLK address
  const sci = entries.find((e) => e.type === 2 && e.bytes[3] === 9);
  assert.ok(sci);
  assert.equal(le(sci.bytes, 8, 2), 0x000d);
});

Deno.test("buildAcpiTables() can leave out the IRQ 0 override and pick the IOAPIC ID", () => {
  const options = { cpus: 2, rsdpAddress: RSDP_AT, tablesAddress: TABLES_AT, irq0Override: false, ioapicId: 0 };
  const { entries } = walk(new Image(options), options);
  assert.equal(entries.filter((e) => e.type === 2).length, 0);
  assert.equal(entries.find((e) => e.type === 1)!.bytes[2], 0);
});

Deno.test("buildAcpiTables() keeps the FACS 64-byte aligned at any 16-byte aligned base", () => {
  const options = { cpus: 1, rsdpAddress: RSDP_AT, tablesAddress: 0x9_0010 };
  const { addresses, tables } = buildAcpiTables(options);
  assert.equal(addresses.facs % 64, 0);
  assert.ok(addresses.xsdt + 36 + 16 <= options.tablesAddress + tables.length);
  walk(new Image(options), options);
});

Deno.test("buildAcpiTables() rejects CPU counts and addresses it cannot describe", () => {
  const base = { rsdpAddress: RSDP_AT, tablesAddress: TABLES_AT };
  assert.throws(() => buildAcpiTables({ ...base, cpus: 0 }), /CPU count 0/);
  assert.throws(() => buildAcpiTables({ ...base, cpus: 255 }), /CPU count 255/);
  assert.throws(() => buildAcpiTables({ ...base, cpus: 1, rsdpAddress: 0xf0008 }), /RSDP address 0xf0008/);
  assert.throws(() => buildAcpiTables({ ...base, cpus: 1, tablesAddress: 0xffff_fff0 }), /above 4 GiB/);
});
