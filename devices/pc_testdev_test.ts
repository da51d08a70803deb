/**
 * QEMU's pc-testdev: `ports` at 0xe0 (offset 0 = 0xe0), `irqPorts` at
 * 0x2000, `iomem` at 0xff000000.
 */

import assert from "node:assert/strict";
import { PcTestDev } from "./pc_testdev.ts";

Deno.test("PcTestDev scratch register at 0xe0 honours access size and byte lane", () => {
  const dev = new PcTestDev();
  dev.ports.write(0, 4, 0x1234_5678);
  assert.equal(dev.ports.read(0, 4), 0x1234_5678);
  assert.equal(dev.ports.read(2, 2), 0x1234);
  assert.equal(dev.ports.read(1, 1), 0x56);
  dev.ports.write(2, 1, 0xab);
  assert.equal(dev.scratch, 0x12ab_5678);
  dev.ports.write(3, 2, 0xcdef); // only the byte that fits in the register lands
  assert.equal(dev.scratch, 0xefab_5678);
  dev.ports.write(0, 2, 0x9999);
  assert.equal(dev.ports.read(0, 1), 0x99);
});

Deno.test("PcTestDev ports 0xe8-0xeb reach the same scratch register", () => {
  const dev = new PcTestDev();
  dev.ports.write(8, 4, 0xdead_beef);
  assert.equal(dev.ports.read(0, 4), 0xdead_beef);
  dev.ports.write(0, 1, 0x11);
  assert.equal(dev.ports.read(8, 1), 0x11);
  assert.equal(dev.ports.read(10, 2), 0xdead);
});

Deno.test("PcTestDev port 0xe4 hands dword writes to flushPage as a page address", () => {
  const pages: number[] = [];
  const dev = new PcTestDev({ flushPage: (address) => pages.push(address) });
  dev.ports.write(4, 4, 0x0012_3456);
  dev.ports.write(4, 1, 0x0001_0000); // not a dword: ignored
  dev.ports.write(4, 4, 0xffff_f000);
  assert.deepEqual(pages, [0x0012_3000, 0xffff_f000]);
  assert.equal(dev.ports.read(4, 4), 0);
  assert.equal(dev.scratch, 0);
});

Deno.test("PcTestDev byte writes to 0x2000 + n drive ISA IRQ n", () => {
  const lines: [number, boolean][] = [];
  const dev = new PcTestDev({ setIrq: (irq, level) => lines.push([irq, level]) });
  dev.irqPorts.write(0x0e, 1, 1);
  dev.irqPorts.write(0x0e, 1, 0);
  dev.irqPorts.write(0x17, 1, 0x80);
  dev.irqPorts.write(0x03, 2, 1); // not a byte: ignored
  assert.deepEqual(lines, [[14, true], [14, false], [23, true]]);
  assert.equal(dev.irqPorts.read(0x0e, 1), 0);
});

Deno.test("PcTestDev iomem is 64 KiB of little-endian scratch RAM", () => {
  const dev = new PcTestDev();
  dev.iomem.write(0x100n, 8, 0x0102_0304_0506_0708n);
  assert.equal(dev.iomem.read(0x100n, 8), 0x0102_0304_0506_0708n);
  assert.equal(dev.iomem.read(0x100n, 1), 0x08n);
  assert.equal(dev.iomem.read(0x104n, 4), 0x0102_0304n);
  dev.iomem.write(0xfffen, 4, 0xaabb_ccddn); // the bytes past the end are dropped
  assert.equal(dev.iomem.read(0xfffen, 4), 0xccddn);
  assert.equal(dev.state.iomem.length, 0x10000);
});
