/** The MP table, decoded by an independent parser (MP specification 1.4, chapter 4). */

import assert from "node:assert/strict";
import { buildMpTable, type MpTableOptions } from "./mptable.ts";

const ENTRY_SIZE: Record<number, number> = { 0: 20, 1: 8, 2: 8, 3: 8, 4: 8 };

function sum(bytes: Uint8Array): number {
  return bytes.reduce((total, byte) => (total + byte) & 0xff, 0);
}

function decode(options: MpTableOptions) {
  const table = buildMpTable(options);
  const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
  const text = (at: number, length: number) => String.fromCharCode(...table.subarray(at, at + length));
  assert.equal(text(0, 4), "_MP_");
  assert.equal(sum(table.subarray(0, 16)), 0, "floating pointer checksum");
  assert.equal(table[8], 1); // length in paragraphs
  assert.equal(table[9], 4); // revision 1.4
  assert.equal(table[11], 0); // a configuration table follows, no default configuration
  const configAt = view.getUint32(4, true) - options.address;
  assert.equal(text(configAt, 4), "PCMP");
  const length = view.getUint16(configAt + 4, true);
  assert.equal(configAt + length, table.length);
  assert.equal(sum(table.subarray(configAt, configAt + length)), 0, "configuration table checksum");
  assert.equal(table[configAt + 6], 4);
  assert.equal(view.getUint32(configAt + 36, true), 0xfee0_0000);
  const count = view.getUint16(configAt + 34, true);
  const entries: Uint8Array[] = [];
  let at = configAt + 44;
  for (let i = 0; i < count; i++) {
    const size = ENTRY_SIZE[table[at]!];
    assert.ok(size !== undefined, `entry type ${table[at]} at ${at}`);
    entries.push(table.subarray(at, at + size));
    at += size;
  }
  assert.equal(at, table.length);
  const types = entries.map((e) => e[0]!);
  assert.deepEqual(types, [...types].sort((a, b) => a - b), "entries sorted by type");
  return { entries, ofType: (type: number) => entries.filter((e) => e[0] === type) };
}

Deno.test("buildMpTable() lists each CPU, with CPU 0 the enabled bootstrap processor", () => {
  const { ofType } = decode({ cpus: 4, address: 0xf5000 });
  const cpus = ofType(0);
  assert.deepEqual(cpus.map((e) => [e[1], e[3]]), [[0, 3], [1, 1], [2, 1], [3, 1]]);
});

Deno.test("buildMpTable() describes an ISA bus and the IOAPIC", () => {
  const { ofType } = decode({ cpus: 2, address: 0xf5000 });
  assert.deepEqual(ofType(1).map((e) => [e[1], String.fromCharCode(...e.subarray(2, 8))]), [[0, "ISA   "]]);
  const [ioapic] = ofType(2);
  assert.equal(ioapic![1], 2); // ID = cpus
  assert.equal(ioapic![3]! & 1, 1); // enabled
  assert.equal(new DataView(ioapic!.buffer, ioapic!.byteOffset + 4, 4).getUint32(0, true), 0xfec0_0000);
});

Deno.test("buildMpTable() routes ISA IRQ 0 to IOAPIC pin 2 and IRQ n to pin n", () => {
  const { ofType } = decode({ cpus: 1, address: 0xf5000 });
  const routes = ofType(3).map((e) => [e[5], e[7]]); // source IRQ, destination pin
  assert.deepEqual(routes, [[0, 2], [1, 1], ...Array.from({ length: 13 }, (_, i) => [i + 3, i + 3])]);
  for (const entry of ofType(3)) {
    assert.equal(entry[1], 0); // INT
    assert.equal(entry[4], 0); // the ISA bus
    assert.equal(entry[6], 1); // the IOAPIC
  }
});

Deno.test("buildMpTable() without the override routes all 16 IRQs straight through", () => {
  const { ofType } = decode({ cpus: 1, address: 0xf5000, irq0Override: false, ioapicId: 0 });
  assert.deepEqual(ofType(3).map((e) => [e[5], e[7]]), Array.from({ length: 16 }, (_, i) => [i, i]));
  assert.equal(ofType(2)[0]![1], 0);
});

Deno.test("buildMpTable() wires ExtINT to LINT0 and NMI to LINT1 on every local APIC", () => {
  const { ofType } = decode({ cpus: 2, address: 0xf5000 });
  assert.deepEqual(ofType(4).map((e) => [e[1], e[6], e[7]]), [[3, 0xff, 0], [1, 0xff, 1]]);
});

Deno.test("buildMpTable() rejects what it cannot describe", () => {
  assert.throws(() => buildMpTable({ cpus: 0, address: 0xf5000 }), /CPU count 0/);
  assert.throws(() => buildMpTable({ cpus: 1, address: 0xf5008 }), /address 0xf5008/);
});
