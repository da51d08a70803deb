/**
 * PCI configuration mechanism #1: offsets 0-3 are port 0xcf8, 4-7 are
 * 0xcfc-0xcff.
 */

import assert from "node:assert/strict";
import { PciHost, type PciHostState } from "./pci_host.ts";

function configAddress(bus: number, device: number, fn: number, register: number): number {
  return (0x8000_0000 | (bus << 16) | (device << 11) | (fn << 8) | (register & 0xfc)) >>> 0;
}

function readConfig(pci: PciHost, bus: number, device: number, fn: number, register: number, size: number): number {
  pci.write(0, 4, configAddress(bus, device, fn, register));
  return pci.read(4 + (register & 3), size);
}

Deno.test("PciHost reads back the address register", () => {
  const pci = new PciHost();
  pci.write(3, 1, 0x01); // Linux's type-1 probe writes 0xcfb first: ignored
  pci.write(0, 4, 0x8000_0000);
  assert.equal(pci.read(0, 4), 0x8000_0000);
  pci.write(0, 4, configAddress(0, 31, 7, 0xfc));
  assert.equal(pci.read(0, 4), 0x8000_fffc);
  assert.equal(pci.read(2, 2), 0x8000);
});

Deno.test("PciHost reads all-ones for every absent function", () => {
  const pci = new PciHost();
  for (const [bus, device, fn] of [[0, 1, 0], [0, 0, 1], [0, 31, 7], [1, 0, 0], [255, 31, 7]]) {
    assert.equal(readConfig(pci, bus!, device!, fn!, 0, 4), 0xffff_ffff, `${bus}:${device}.${fn}`);
    assert.equal(readConfig(pci, bus!, device!, fn!, 0, 2), 0xffff);
    assert.equal(readConfig(pci, bus!, device!, fn!, 0x0e, 1), 0xff);
  }
});

Deno.test("PciHost presents an i440FX host bridge at 00:00.0", () => {
  const pci = new PciHost();
  assert.equal(readConfig(pci, 0, 0, 0, 0x00, 4), 0x1237_8086);
  assert.equal(readConfig(pci, 0, 0, 0, 0x00, 2), 0x8086);
  assert.equal(readConfig(pci, 0, 0, 0, 0x02, 2), 0x1237);
  assert.equal(readConfig(pci, 0, 0, 0, 0x01, 1), 0x80);
  assert.equal(readConfig(pci, 0, 0, 0, 0x08, 4) >>> 8, 0x060000); // class: host bridge
  assert.equal(readConfig(pci, 0, 0, 0, 0x0b, 1), 0x06);
  assert.equal(readConfig(pci, 0, 0, 0, 0x0a, 2), 0x0600);
  assert.equal(readConfig(pci, 0, 0, 0, 0x0e, 1), 0x00);
});

Deno.test("PciHost without a host bridge has nothing at 00:00.0", () => {
  const pci = new PciHost({ hostBridge: false });
  assert.equal(readConfig(pci, 0, 0, 0, 0, 2), 0xffff);
});

Deno.test("PciHost reads all-ones while the enable bit is clear", () => {
  const pci = new PciHost();
  pci.write(0, 4, 0);
  assert.equal(pci.read(4, 4), 0xffff_ffff);
  assert.equal(pci.read(6, 2), 0xffff);
  assert.equal(pci.read(7, 1), 0xff);
});

Deno.test("PciHost ignores writes to absent functions and read-only registers", () => {
  const pci = new PciHost();
  pci.write(0, 4, configAddress(0, 3, 0, 0));
  pci.write(4, 4, 0x1234_5678);
  assert.equal(pci.read(4, 4), 0xffff_ffff);
  pci.write(0, 4, configAddress(0, 0, 0, 0));
  pci.write(4, 4, 0x1234_5678); // vendor and device IDs are read-only
  assert.equal(pci.read(4, 4), 0x1237_8086);
  pci.write(0, 4, configAddress(0, 0, 0, 0x58));
  pci.write(5, 1, 0x33); // PAM0 at 0x59 is kept
  assert.equal(pci.read(5, 1), 0x33);
  assert.equal(pci.read(4, 4), 0x3300);
});

Deno.test("PciHost resets through the reset control register at 0xcf9", () => {
  let resets = 0;
  const pci = new PciHost({ onReset: () => resets++ });
  pci.write(0, 4, 0x8000_0000);
  pci.write(1, 1, 0x02); // hard reset selected, not yet triggered
  assert.equal(resets, 0);
  assert.equal(pci.read(1, 1), 0x02);
  assert.equal(pci.read(0, 4), 0x8000_0000); // the address register is untouched
  pci.write(1, 1, 0x06);
  assert.equal(resets, 1);
});

/** Through JSON, as a snapshot file would carry it. */
function viaJson<T>(state: T): T {
  return JSON.parse(JSON.stringify(state));
}

Deno.test("PciHost state with an address latched and chipset registers written restores into a fresh host", () => {
  const pci = new PciHost();
  pci.write(0, 4, configAddress(0, 0, 0, 0x58));
  pci.write(5, 1, 0x33); // PAM0
  pci.write(0, 4, configAddress(0, 0, 0, 0x04));
  pci.write(4, 2, 0x0007); // command: I/O, memory, bus master
  pci.write(1, 1, 0x02); // SYS_RST selected
  pci.write(0, 4, configAddress(0, 0, 0, 0x0c)); // latched: the next data access reaches 0x0c-0x0f
  const state = pci.state;

  let resets = 0;
  const copy = PciHost.fromState(viaJson(state), { onReset: () => resets++ });
  assert.deepEqual(copy.state, state);
  const guest = (host: PciHost) => [
    host.read(0, 4),
    host.read(1, 1),
    host.read(4, 4), // through the latched address, before the guest writes it again
    host.read(5, 1),
    readConfig(host, 0, 0, 0, 0x58, 4),
    readConfig(host, 0, 0, 0, 0x04, 2),
  ];
  const expected = guest(pci);
  assert.deepEqual(guest(copy), expected);
  assert.equal(expected[0], 0x8000_000c);
  assert.equal(expected[4], 0x3300);
  assert.equal(expected[5], 0x0007);
  copy.write(1, 1, 0x06);
  assert.equal(resets, 1);
});

Deno.test("PciHost.restore() refuses a corrupt state or other functions, naming the field, and changes nothing", () => {
  const pci = new PciHost();
  pci.write(0, 4, configAddress(0, 0, 0, 0x58));
  pci.write(5, 1, 0x44);
  const before = pci.state;
  const corrupt = (edit: (state: PciHostState) => void) => {
    const state = viaJson(before);
    edit(state);
    return () => pci.restore(state);
  };
  assert.throws(corrupt((s) => s.address = 2 ** 32), {
    name: "RangeError",
    message: "Cannot restore the PCI host state: address is 0x100000000, not an integer in 0x0-0xffffffff",
  });
  assert.throws(corrupt((s) => s.resetControl = 0x04), /resetControl is 4, not 0 or 2/);
  assert.throws(corrupt((s) => s.functions["00:00.0"]![0x58] = 0x100), /functions.00:00.0\[88\] is 256, not a byte/);
  assert.throws(corrupt((s) => s.functions["00:00.0"] = s.functions["00:00.0"]!.slice(1)), /has 255 elements, not 256/);
  assert.throws(
    corrupt((s) => s.functions["00:01.0"] = s.functions["00:00.0"]!),
    /functions has "00:01.0", a function this host does not have \(it has 00:00.0\)/,
  );
  assert.throws(() => new PciHost({ hostBridge: false }).restore(viaJson(before)), /\(it has none\)/);
  assert.throws(corrupt((s) => delete (s as Partial<PciHostState>).functions), { name: "TypeError" });
  assert.deepEqual(pci.state, before);
  assert.equal(pci.read(5, 1), 0x44);
});
