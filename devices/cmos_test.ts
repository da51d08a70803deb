/**
 * The CMOS/RTC model, driven through ports 0x70 (offset 0) and 0x71 (offset 1).
 */

import assert from "node:assert/strict";
import { Cmos, type CmosState, type RtcTime } from "./cmos.ts";

function readCmos(cmos: Cmos, index: number): number {
  cmos.write(0, 1, index);
  return cmos.read(1, 1);
}

function writeCmos(cmos: Cmos, index: number, value: number): void {
  cmos.write(0, 1, index);
  cmos.write(1, 1, value);
}

/** A host clock the test moves by hand. */
function clock(start: string): { now: () => Date; advance: (ms: number) => void } {
  let ms = Date.parse(start);
  return { now: () => new Date(ms), advance: (by) => ms += by };
}

Deno.test("Cmos reads the host time in BCD, 24-hour mode by default", () => {
  const cmos = new Cmos({ now: () => new Date("2024-05-06T17:08:59Z") }); // a Monday
  assert.equal(readCmos(cmos, 0x00), 0x59);
  assert.equal(readCmos(cmos, 0x02), 0x08);
  assert.equal(readCmos(cmos, 0x04), 0x17);
  assert.equal(readCmos(cmos, 0x06), 0x02); // Sunday = 1
  assert.equal(readCmos(cmos, 0x07), 0x06);
  assert.equal(readCmos(cmos, 0x08), 0x05);
  assert.equal(readCmos(cmos, 0x09), 0x24);
  assert.equal(readCmos(cmos, 0x32), 0x20);
  assert.equal(readCmos(cmos, 0x0b), 0x02);
});

Deno.test("Cmos reads binary values when register B bit 2 is set", () => {
  const cmos = new Cmos({ now: () => new Date("2024-05-06T17:08:59Z") });
  writeCmos(cmos, 0x0b, 0x06);
  assert.equal(readCmos(cmos, 0x00), 59);
  assert.equal(readCmos(cmos, 0x04), 17);
  assert.equal(readCmos(cmos, 0x09), 24);
  assert.equal(readCmos(cmos, 0x32), 20);
});

Deno.test("Cmos reads 12-hour time with the PM bit when register B bit 1 is clear", () => {
  const host = clock("2024-05-06T15:00:00Z");
  const cmos = new Cmos({ now: host.now });
  writeCmos(cmos, 0x0b, 0x00); // BCD, 12-hour
  assert.equal(readCmos(cmos, 0x04), 0x83);
  host.advance(9 * 3600_000); // 00:00
  assert.equal(readCmos(cmos, 0x04), 0x12);
  host.advance(3600_000); // 01:00
  assert.equal(readCmos(cmos, 0x04), 0x01);
});

Deno.test("Cmos status registers: A keeps its rate bits (UIP is read-only), C reads 0, D reports valid RAM", () => {
  const cmos = new Cmos({ now: () => new Date("2026-11-26T12:00:00.500Z") }); // mid-second: UIP clear
  assert.equal(readCmos(cmos, 0x0a), 0x26);
  writeCmos(cmos, 0x0a, 0xa6);
  assert.equal(readCmos(cmos, 0x0a), 0x26);
  assert.equal(readCmos(cmos, 0x0c), 0x00);
  assert.equal(readCmos(cmos, 0x0d), 0x80);
  writeCmos(cmos, 0x0d, 0x00);
  assert.equal(readCmos(cmos, 0x0d), 0x80);
});

Deno.test("Cmos fills the memory-size bytes from a small RAM size", () => {
  const cmos = new Cmos({ ramSize: 64 << 20, cpus: 4 });
  const word = (index: number) => readCmos(cmos, index) | (readCmos(cmos, index + 1) << 8);
  assert.equal(word(0x15), 640);
  assert.equal(word(0x17), 63 * 1024);
  assert.equal(word(0x30), 63 * 1024);
  assert.equal(word(0x34), 48 * 16); // 48 MiB above 16 MiB in 64 KiB blocks
  assert.equal(readCmos(cmos, 0x5b) | readCmos(cmos, 0x5c) | readCmos(cmos, 0x5d), 0);
  assert.equal(readCmos(cmos, 0x5f), 3);
});

Deno.test("Cmos caps extended memory and counts RAM above 4 GiB", () => {
  const cmos = new Cmos({ ramSize: 4 * 2 ** 30 }); // 3 GiB below the PCI hole, 1 GiB above 4 GiB
  const word = (index: number) => readCmos(cmos, index) | (readCmos(cmos, index + 1) << 8);
  assert.equal(word(0x17), 0xffff);
  assert.equal(word(0x30), 0xffff);
  assert.equal(word(0x34), (3 * 2 ** 30 - 16 * 2 ** 20) / 65536);
  assert.equal(word(0x5b) | (readCmos(cmos, 0x5d) << 16), 2 ** 30 / 65536);
  assert.equal(readCmos(cmos, 0x5f), 0); // no CPU count given
});

Deno.test("Cmos remembers the NMI-disable bit and keeps RAM bytes across all 128", () => {
  const cmos = new Cmos();
  cmos.write(0, 1, 0x80 | 0x0f);
  assert.equal(cmos.nmiDisabled, true);
  cmos.write(1, 1, 0x0a); // shutdown status
  cmos.write(0, 1, 0x7f);
  assert.equal(cmos.nmiDisabled, false);
  cmos.write(1, 1, 0xa5);
  assert.equal(readCmos(cmos, 0x0f), 0x0a);
  assert.equal(readCmos(cmos, 0x7f), 0xa5);
  assert.equal(cmos.read(0, 1), 0xff);
  assert.equal(cmos.state.ram[0x7f], 0xa5);
});

Deno.test("Cmos holds the clock while SET and applies the written date when SET clears", () => {
  const host = clock("2024-01-31T10:00:00Z");
  const cmos = new Cmos({ now: host.now });
  writeCmos(cmos, 0x0b, 0x82); // SET, BCD, 24-hour
  // Month first: 31 February is passed through on the way to 28 February.
  writeCmos(cmos, 0x08, 0x02);
  writeCmos(cmos, 0x07, 0x28);
  writeCmos(cmos, 0x09, 0x99);
  writeCmos(cmos, 0x32, 0x19);
  writeCmos(cmos, 0x04, 0x23);
  writeCmos(cmos, 0x02, 0x59);
  writeCmos(cmos, 0x00, 0x30);
  host.advance(5000); // held: no time passes for the guest
  assert.equal(readCmos(cmos, 0x00), 0x30);
  writeCmos(cmos, 0x0b, 0x02);
  assert.deepEqual(cmos.time, { year: 1999, month: 2, day: 28, hours: 23, minutes: 59, seconds: 30 });
  host.advance(31_000);
  assert.deepEqual(cmos.time, { year: 1999, month: 3, day: 1, hours: 0, minutes: 0, seconds: 1 });
});

Deno.test("Cmos applies a single field written while the clock runs", () => {
  const host = clock("2024-05-06T17:08:59Z");
  const cmos = new Cmos({ now: host.now });
  writeCmos(cmos, 0x0b, 0x06); // binary, 24-hour
  writeCmos(cmos, 0x04, 3);
  assert.equal(readCmos(cmos, 0x04), 3);
  host.advance(60_000);
  assert.equal(readCmos(cmos, 0x02), 9);
  assert.equal(readCmos(cmos, 0x04), 3);
  writeCmos(cmos, 0x0b, 0x04); // 12-hour: write 11 PM
  writeCmos(cmos, 0x04, 0x80 | 11);
  assert.equal(cmos.time.hours, 23);
});

Deno.test("Cmos rejects a bad RAM size or CPU count", () => {
  assert.throws(() => new Cmos({ ramSize: -1 }), /RAM size -1/);
  assert.throws(() => new Cmos({ cpus: 0 }), /CPU count 0/);
});

Deno.test("Cmos register A shows UIP in the last 2 ms before each second's update", () => {
  const time = clock("2026-11-26T12:00:00.500Z");
  const cmos = new Cmos({ now: time.now });
  assert.equal(readCmos(cmos, 0x0a) & 0x80, 0);
  time.advance(499); // .999
  assert.equal(readCmos(cmos, 0x0a) & 0x80, 0x80);
  time.advance(2); // 01.001
  assert.equal(readCmos(cmos, 0x0a) & 0x80, 0);
});

Deno.test("Cmos.alarmDelay() follows the alarm registers and AIE; fireAlarm() flags status C once", () => {
  const time = clock("2026-11-26T12:00:10.250Z");
  const cmos = new Cmos({ now: time.now });
  writeCmos(cmos, 0x01, 0xc0);
  writeCmos(cmos, 0x03, 0xc0);
  writeCmos(cmos, 0x05, 0xc0);
  assert.equal(cmos.alarmDelay(), undefined, "AIE is off");
  writeCmos(cmos, 0x0b, readCmos(cmos, 0x0b) | 0x20);
  assert.equal(cmos.alarmDelay(), 750, "every byte don't care: the next second");
  writeCmos(cmos, 0x01, 0x15); // BCD 15 seconds
  assert.equal(cmos.alarmDelay(), 4750);
  writeCmos(cmos, 0x03, 0x01); // at 12:01:15
  assert.equal(cmos.alarmDelay(), 64750);
  assert.equal(readCmos(cmos, 0x0c), 0);
  cmos.fireAlarm();
  assert.equal(readCmos(cmos, 0x0c), 0xa0);
  assert.equal(readCmos(cmos, 0x0c), 0);
});

/** Through JSON, as a snapshot file would carry it. */
function viaJson<T>(state: T): T {
  return JSON.parse(JSON.stringify(state));
}

/** Every register as a guest reads it, index by index (status C last: reading it clears the alarm flags). */
function readAll(cmos: Cmos): number[] {
  const order = [...Array(128).keys()].filter((i) => i !== 0x0c).concat(0x0c, 0x0c);
  return order.map((index) => readCmos(cmos, index));
}

Deno.test("Cmos state with the alarm armed and fired restores into a fresh CMOS that reads the same", () => {
  const host = clock("2026-11-26T12:00:10.250Z");
  const cmos = new Cmos({ ramSize: 256 << 20, cpus: 2, now: host.now });
  writeCmos(cmos, 0x0b, 0x02 | 0x20); // BCD, 24-hour, AIE
  writeCmos(cmos, 0x05, 0xc0);
  writeCmos(cmos, 0x03, 0x30);
  writeCmos(cmos, 0x01, 0x00); // at hh:30:00
  writeCmos(cmos, 0x04, 0x08); // the guest moved its clock to 08:00:10
  writeCmos(cmos, 0x40, 0x5a);
  cmos.fireAlarm();
  cmos.write(0, 1, 0x80 | 0x0f); // NMI off, shutdown status selected
  const state = cmos.state;
  assert.equal(state.alarmFired, true);

  // Another process: its own clock, reading the same wall time, and no memory-size options.
  const otherHost = clock("2026-11-26T12:00:10.250Z");
  const copy = Cmos.fromState(viaJson(state), { now: otherHost.now });
  assert.deepEqual(copy.state, state);
  assert.equal(copy.nmiDisabled, true);
  assert.equal(copy.read(1, 1), cmos.read(1, 1), "the selected index was kept");
  assert.equal(copy.alarmDelay(), cmos.alarmDelay());
  assert.equal(cmos.alarmDelay(), 29 * 60_000 + 50_000, "the guest's clock was set to a whole second");
  const expected = readAll(cmos);
  assert.deepEqual(readAll(copy), expected);
  assert.equal(expected.at(-2), 0xa0, "the fired alarm reads once from status C");
  host.advance(3_600_000);
  otherHost.advance(3_600_000);
  assert.deepEqual(copy.time, cmos.time);
  assert.equal(copy.time.hours, 9);
  assert.equal(copy.alarmDelay(), cmos.alarmDelay());
});

Deno.test("Cmos state taken while SET holds the clock keeps the fields written so far", () => {
  const host = clock("2024-01-31T10:00:00Z");
  const cmos = new Cmos({ now: host.now });
  writeCmos(cmos, 0x0b, 0x82); // SET
  writeCmos(cmos, 0x08, 0x02); // 31 February, on the way to a valid date
  const copy = Cmos.fromState(viaJson(cmos.state), { now: host.now });
  for (const device of [cmos, copy]) {
    writeCmos(device, 0x07, 0x28);
    writeCmos(device, 0x0b, 0x02);
  }
  assert.deepEqual(copy.time, { year: 2024, month: 2, day: 28, hours: 10, minutes: 0, seconds: 0 });
  assert.deepEqual(copy.time, cmos.time);
});

Deno.test("Cmos.restore() refuses a corrupt state, naming the field, and leaves the CMOS as it was", () => {
  const host = clock("2026-11-26T12:00:10.250Z");
  const cmos = new Cmos({ ramSize: 64 << 20, now: host.now });
  writeCmos(cmos, 0x0b, 0x82);
  writeCmos(cmos, 0x40, 0x11);
  const before = cmos.state;
  const corrupt = (edit: (state: Record<string, unknown>) => void) => {
    const state = viaJson(before) as unknown as Record<string, unknown>;
    edit(state);
    return () => cmos.restore(state as unknown as CmosState);
  };
  assert.throws(corrupt((s) => s.index = 128), {
    name: "RangeError",
    message: "Cannot restore the CMOS state: index is 0x80, not an integer in 0x0-0x7f",
  });
  assert.throws(corrupt((s) => s.ram = [1, 2, 3]), /CMOS state: ram has 3 elements, not 128/);
  assert.throws(corrupt((s) => s.offsetMs = NaN), /CMOS state: offsetMs is NaN, not a finite number/);
  assert.throws(corrupt((s) => (s.held as RtcTime).month = 300), /CMOS state: held.month is 0x12c/);
  assert.throws(corrupt((s) => s.held = "noon"), { name: "TypeError", message: /held is "noon", not an object/ });
  assert.throws(corrupt((s) => delete s.alarmFired), /alarmFired is undefined, not a boolean/);
  assert.deepEqual(cmos.state, before);
  assert.equal(readCmos(cmos, 0x40), 0x11);
});
