/** The port-I/O and MMIO buses: lookup by address, overlap refusal, removal. */

import assert from "node:assert/strict";
import { IoBus, type IoDevice, MmioBus, type MmioDevice } from "../devices/bus.ts";

/** A device that records the offsets it is handed. */
class RecordingPort implements IoDevice {
  readonly reads: [number, number][] = [];
  readonly writes: [number, number, number][] = [];
  constructor(readonly answer: number) {}
  read(offset: number, size: number): number {
    this.reads.push([offset, size]);
    return this.answer;
  }
  write(offset: number, size: number, value: number): void {
    this.writes.push([offset, size, value]);
  }
}

const NULL_MMIO: MmioDevice = { read: () => 0n, write: () => {} };

Deno.test("IoBus.find() returns the range holding a port, from whose base the device offset follows", () => {
  const bus = new IoBus();
  const com1 = new RecordingPort(1);
  const exit = new RecordingPort(2);
  bus.insert(0x3f8, 8, "com1", com1);
  bus.insert(0xf4, 1, "debug-exit", exit);
  assert.equal(bus.find(0x3f8)?.name, "com1");
  const lsr = bus.find(0x3fd);
  assert.equal(lsr?.name, "com1");
  assert.equal(lsr?.base, 0x3f8);
  assert.equal(0x3fd - lsr!.base, 5);
  assert.equal(bus.find(0x3ff)?.device, com1, "last port of the range");
  assert.equal(bus.find(0x400), undefined, "one past the range");
  assert.equal(bus.find(0x3f7), undefined, "one before the range");
  assert.equal(bus.find(0xf4)?.device, exit);
  assert.equal(bus.find(0xf5), undefined);
  assert.deepEqual(bus.entries.map((e) => e.name), ["debug-exit", "com1"], "entries in address order");
});

Deno.test("IoBus.insert() accepts adjacent ranges and refuses overlaps with a RangeError naming both devices", () => {
  const bus = new IoBus();
  bus.insert(0x3f8, 8, "com1", new RecordingPort(0));
  bus.insert(0x400, 4, "after", new RecordingPort(0));
  bus.insert(0x3f0, 8, "before", new RecordingPort(0));
  assert.throws(
    () => bus.insert(0x3ff, 2, "clash", new RecordingPort(0)),
    (e: Error) =>
      e instanceof RangeError && /clash/.test(e.message) && /0x3ff-0x400/.test(e.message) &&
      /com1/.test(e.message) && /0x3f8-0x3ff/.test(e.message),
  );
  assert.throws(() => bus.insert(0x3e0, 0x100, "wide", new RecordingPort(0)), /wide.*overlaps before/);
  assert.throws(() => bus.insert(0x500, 0, "empty", new RecordingPort(0)), RangeError);
  assert.equal(bus.entries.length, 3, "a refused insert claims nothing");
  assert.equal(bus.find(0x3ff)?.name, "com1");
});

Deno.test("IoBus.remove() frees a range by entry or by name, and find() forgets it", () => {
  const bus = new IoBus();
  const entry = bus.insert(0x60, 1, "kbd", new RecordingPort(0));
  bus.insert(0x64, 1, "kbd-status", new RecordingPort(0));
  assert.equal(bus.find(0x60)?.name, "kbd"); // warms the lookup cache
  assert.equal(bus.remove(entry), true);
  assert.equal(bus.find(0x60), undefined);
  assert.equal(bus.remove(entry), false, "already removed");
  assert.equal(bus.remove("kbd-status"), true);
  assert.equal(bus.find(0x64), undefined);
  assert.equal(bus.remove("nothing"), false);
  bus.insert(0x60, 5, "kbd-again", new RecordingPort(0));
  assert.equal(bus.find(0x64)?.name, "kbd-again", "the freed range can be claimed again");
});

Deno.test("MmioBus.find() works on bigint addresses above 4 GiB", () => {
  const bus = new MmioBus();
  bus.insert(0xfee0_0000n, 0x1000n, "lapic", NULL_MMIO);
  bus.insert(0x1_0000_0000n, 0x200n, "virtio", NULL_MMIO);
  assert.equal(bus.find(0xfee0_0fffn)?.name, "lapic");
  assert.equal(bus.find(0xfee0_1000n), undefined);
  const hit = bus.find(0x1_0000_01f8n);
  assert.equal(hit?.name, "virtio");
  assert.equal(0x1_0000_01f8n - hit!.base, 0x1f8n);
});

// Regression (devices/bus.ts, Bus.insert, the overlap message): `end - 1` once subtracted a number from a
// bigint on the MMIO bus, so an overlap threw "TypeError: Cannot mix BigInt and other types" instead of
// the RangeError naming both devices.
Deno.test("MmioBus.insert() refuses overlaps with a RangeError naming both devices", () => {
  const bus = new MmioBus();
  bus.insert(0xfe00_0000n, 0x1000n, "mmio-a", NULL_MMIO);
  assert.throws(
    () => bus.insert(0xfe00_0800n, 0x1000n, "mmio-b", NULL_MMIO),
    (e: Error) => e instanceof RangeError && /mmio-a/.test(e.message) && /mmio-b/.test(e.message),
  );
  assert.equal(bus.entries.length, 1);
});
