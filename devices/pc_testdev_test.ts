/**
 * QEMU's pc-testdev: `ports` at 0xe0 (offset 0 = 0xe0), `irqPorts` at
 * 0x2000, `iomem` at 0xff000000.
 */

import assert from "node:assert/strict";
import { PcTestDev, type PcTestDevState } from "./pc_testdev.ts";

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
  assert.equal(atob(dev.state.iomem).length, 0x10000);
});

/** Through JSON, as a snapshot file would carry it. */
function viaJson<T>(state: T): T {
  return JSON.parse(JSON.stringify(state));
}

Deno.test("PcTestDev state with iomem, scratch and raised IRQs restores into a fresh device", () => {
  const dev = new PcTestDev();
  dev.ports.write(0, 4, 0xcafe_f00d);
  dev.iomem.write(0x0n, 8, 0x1122_3344_5566_7788n);
  dev.iomem.write(0xfff8n, 8, 0x0102_0304_0506_0708n);
  dev.irqPorts.write(0x0a, 1, 1);
  dev.irqPorts.write(0x05, 1, 1);
  dev.irqPorts.write(0x0a, 1, 0); // raised, then lowered again
  dev.irqPorts.write(0x17, 1, 0xff);
  const state = dev.state;
  assert.equal(state.irqLevels, (1 << 5) | (1 << 23));

  const lines: [number, boolean][] = [];
  const copy = PcTestDev.fromState(viaJson(state), { setIrq: (irq, level) => lines.push([irq, level]) });
  assert.deepEqual(lines, [[5, true], [23, true]], "the raised lines are raised on the new machine");
  assert.deepEqual(copy.state, state);
  const guest = (d: PcTestDev) => [
    d.ports.read(0, 4),
    d.ports.read(10, 2),
    d.iomem.read(0x0n, 8),
    d.iomem.read(0xfffcn, 4),
    d.iomem.read(0x8000n, 8),
  ];
  assert.deepEqual(guest(copy), guest(dev));
  assert.equal(guest(copy)[2], 0x1122_3344_5566_7788n);
});

Deno.test("PcTestDev.restore() lowers the lines it had raised that the state has not", () => {
  const lines: [number, boolean][] = [];
  const dev = new PcTestDev({ setIrq: (irq, level) => lines.push([irq, level]) });
  const idle = dev.state;
  dev.irqPorts.write(0x03, 1, 1);
  lines.length = 0;
  dev.restore(idle);
  assert.deepEqual(lines, [[3, false]]);
  dev.restore(idle);
  assert.deepEqual(lines, [[3, false]], "lines this device never raised are left alone: other devices share them");
});

Deno.test("PcTestDev.restore() refuses a corrupt state, naming the field, and changes nothing", () => {
  const dev = new PcTestDev();
  dev.ports.write(0, 4, 0x1234_5678);
  dev.iomem.write(0x10n, 1, 0x99n);
  const before = dev.state;
  const corrupt = (edit: (state: Record<string, unknown>) => void) => {
    const state = viaJson(before) as unknown as Record<string, unknown>;
    edit(state);
    return () => dev.restore(state as unknown as PcTestDevState);
  };
  assert.throws(corrupt((s) => s.iomem = btoa("short")), {
    name: "RangeError",
    message: "Cannot restore the pc-testdev state: iomem holds 5 bytes, not 65536",
  });
  assert.throws(corrupt((s) => s.iomem = [1, 2, 3]), {
    name: "TypeError",
    message: /iomem is an array of 3, not a string/,
  });
  assert.throws(corrupt((s) => s.scratch = 2 ** 32), /scratch is 0x100000000, not an integer in 0x0-0xffffffff/);
  assert.throws(corrupt((s) => s.irqLevels = 1 << 24), /irqLevels is 0x1000000/);
  assert.deepEqual(dev.state, before);
  assert.equal(dev.ports.read(0, 4), 0x1234_5678);
});
