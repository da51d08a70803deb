import assert from "node:assert/strict";
import { AcpiPm, type AcpiPmState, PM1_STATUS } from "./acpi_pm.ts";

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

/** Through JSON, as a snapshot file would carry it. */
function viaJson<T>(state: T): T {
  return JSON.parse(JSON.stringify(state));
}

/** Every register at every size a guest uses. */
function readAll(pm: AcpiPm): number[] {
  return [pm.read(0, 2), pm.read(2, 2), pm.read(4, 2), pm.read(0, 4), pm.read(8, 4), pm.read(8, 1), pm.read(10, 1)];
}

Deno.test("AcpiPm state restores into a block on another clock whose timer counts on from the same value", () => {
  let now = 5_000; // whole seconds on both clocks: whole ticks, so both round alike
  const sleeps: number[] = [];
  const pm = new AcpiPm({ onSleep: (type) => sleeps.push(type), now: () => now });
  pm.raise(PM1_STATUS.wake | PM1_STATUS.rtc | PM1_STATUS.powerButton);
  pm.write(0, 2, PM1_STATUS.powerButton); // the guest acknowledged the button
  pm.write(2, 2, 0x0521); // enables
  pm.write(4, 2, 0x0401); // SCI_EN with a sleep type, no request
  const state = pm.state;
  assert.deepEqual({ ...state, timer: 0 }, { status: 0x8400, enable: 0x0521, control: 0x0401, timer: 0 });

  // Another process: its clock started elsewhere.
  let otherNow = 123_000;
  const otherSleeps: number[] = [];
  const copy = AcpiPm.fromState(viaJson(state), { onSleep: (type) => otherSleeps.push(type), now: () => otherNow });
  assert.deepEqual(copy.state, state);
  assert.deepEqual(readAll(copy), readAll(pm));
  now += 2.5;
  otherNow += 2.5;
  assert.deepEqual(readAll(copy), readAll(pm));
  assert.equal((copy.read(8, 4) - state.timer) & 0xff_ffff, 8948, "2.5 ms of ticks since the snapshot");
  for (const device of [pm, copy]) {
    device.write(0, 2, 0x8000);
    device.write(4, 2, 0x2401);
  }
  assert.deepEqual(readAll(copy), readAll(pm));
  assert.deepEqual(otherSleeps, sleeps);
  assert.deepEqual(sleeps, [1]);
});

Deno.test("AcpiPm.restore() refuses a corrupt state, naming the field, and leaves the block as it was", () => {
  let now = 1_000;
  const pm = new AcpiPm({ onSleep: () => {}, now: () => now });
  pm.raise(PM1_STATUS.wake);
  pm.write(2, 2, 0x0100);
  const before = pm.state;
  const corrupt = (edit: (state: Record<string, unknown>) => void) => {
    const state = viaJson(before) as unknown as Record<string, unknown>;
    edit(state);
    return () => pm.restore(state as unknown as AcpiPmState);
  };
  assert.throws(corrupt((s) => s.timer = 0x100_0000), {
    name: "RangeError",
    message: "Cannot restore the ACPI PM state: timer is 0x1000000, not an integer in 0x0-0xffffff",
  });
  assert.throws(corrupt((s) => s.control = 0x2401), /ACPI PM state: control is 9217, not a value without SLP_EN/);
  assert.throws(corrupt((s) => s.enable = "on"), { name: "TypeError", message: /enable is "on"/ });
  assert.throws(corrupt((s) => delete s.status), /status is undefined/);
  assert.deepEqual(pm.state, before);
  now += 1;
  assert.equal((pm.read(8, 4) - before.timer) & 0xff_ffff, 3579, "the timer did not jump");
});
