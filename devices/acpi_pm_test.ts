import assert from "node:assert/strict";
import { AcpiPm, PM1_STATUS } from "./acpi_pm.ts";

Deno.test("AcpiPm calls onSleep with SLP_TYP when SLP_EN is written, and SLP_EN reads back clear", () => {
  const sleeps: number[] = [];
  const pm = new AcpiPm({ onSleep: (type) => sleeps.push(type) });
  pm.write(4, 2, 0x0401); // SCI_EN, SLP_TYP 1, no SLP_EN: no sleep
  assert.deepEqual(sleeps, []);
  pm.write(4, 2, 0x2400);
  pm.write(4, 2, 0x3c00); // SLP_TYP 7
  assert.deepEqual(sleeps, [1, 7]);
  assert.equal(pm.read(4, 2) & 0x2000, 0);
  assert.equal(pm.read(4, 2), 0x1c00);
});

Deno.test("AcpiPm status bits are raised by the machine and cleared by writing 1", () => {
  const pm = new AcpiPm({ onSleep: () => {} });
  pm.raise(PM1_STATUS.wake | PM1_STATUS.rtc);
  assert.equal(pm.read(0, 2), 0x8400);
  pm.write(0, 2, 0x0400);
  assert.equal(pm.read(0, 2), 0x8000);
  pm.write(2, 2, 0x0100);
  assert.equal(pm.read(2, 2), 0x0100);
});

Deno.test("AcpiPm's PM timer counts at 3.579545 MHz in 24 bits", () => {
  let now = 1000;
  const pm = new AcpiPm({ onSleep: () => {}, now: () => now });
  const first = pm.read(8, 4);
  now += 1; // 1 ms
  const second = pm.read(8, 4);
  assert.equal((second - first) & 0xff_ffff, 3579);
  assert.ok(second <= 0xff_ffff);
  assert.equal(pm.read(12, 4), 0xffffffff, "past the block reads all-ones");
});
