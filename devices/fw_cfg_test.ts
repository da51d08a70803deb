/**
 * fw_cfg through its x86 ports: offset 0 of the device is the selector
 * (0x510), offset 1 the data port (0x511); `dmaPort` is 0x514-0x51b.
 */

import assert from "node:assert/strict";
import { FW_CFG_DMA, FwCfg, type FwCfgMemory, type FwCfgOptions, type FwCfgState } from "./fw_cfg.ts";

/** What kvm-unit-tests' fwcfg_get_u does: a 16-bit OUT of the key, then byte INs. */
function readItem(fwcfg: FwCfg, key: number, length: number): Uint8Array {
  fwcfg.write(0, 2, key);
  return Uint8Array.from({ length }, () => fwcfg.read(1, 1));
}

function readLe(fwcfg: FwCfg, key: number, length: number): bigint {
  return readItem(fwcfg, key, length).reduceRight((value, byte) => (value << 8n) | BigInt(byte), 0n);
}

/** Decodes the file directory (key 0x19) independently of the model. */
function decodeDirectory(bytes: Uint8Array): { name: string; select: number; size: number }[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const count = view.getUint32(0, false);
  assert.equal(bytes.length, 4 + 64 * count);
  return Array.from({ length: count }, (_, i) => {
    const at = 4 + 64 * i;
    const nameBytes = bytes.subarray(at + 8, at + 64);
    const end = nameBytes.indexOf(0);
    assert.equal(view.getUint16(at + 6, false), 0); // reserved
    return {
      name: new TextDecoder().decode(nameBytes.subarray(0, end)),
      select: view.getUint16(at + 4, false),
      size: view.getUint32(at, false),
    };
  });
}

Deno.test("FwCfg streams the signature QEMU, then zeros past its end", () => {
  const fwcfg = new FwCfg({ ramSize: 1 << 20, cpus: 1 });
  fwcfg.write(0, 2, 0x0000);
  const bytes = [0, 1, 2, 3].map(() => fwcfg.read(1, 1));
  assert.equal(String.fromCharCode(...bytes), "QEMU");
  assert.equal(fwcfg.read(1, 1), 0);
  fwcfg.write(0, 2, 0x0000); // reselecting rewinds
  assert.equal(fwcfg.read(1, 1), 0x51);
});

Deno.test("FwCfg reports RAM size, CPU counts and an unlimited memory limit as kvm-unit-tests reads them", () => {
  const fwcfg = new FwCfg({ ramSize: 5n * 2n ** 30n, cpus: 3, maxCpus: 8 });
  assert.equal(readLe(fwcfg, 0x01, 4), 1n); // traditional interface, no DMA
  assert.equal(readLe(fwcfg, 0x03, 8), 5n * 2n ** 30n);
  assert.equal(readLe(fwcfg, 0x05, 2), 3n);
  assert.equal(readLe(fwcfg, 0x0f, 2), 8n);
  assert.equal(readLe(fwcfg, 0x11, 8), 0n); // FW_CFG_MAX_RAM to kvm-unit-tests: no limit
  assert.equal(readLe(fwcfg, 0x8002, 4), 1n); // IRQ 0 override
  assert.equal(readLe(fwcfg, 0x4005, 2), 3n); // the write-channel bit selects the same item
  assert.equal(readLe(fwcfg, 0x1234, 4), 0n); // no such item
});

Deno.test("FwCfg serves the command line and initrd keys", () => {
  const initrd = Uint8Array.of(1, 2, 3, 4, 5);
  const fwcfg = new FwCfg({
    ramSize: 64 << 20,
    cpus: 1,
    cmdline: "console=ttyS0",
    cmdlineAddress: 0x20000,
    initrd,
    initrdAddress: 0x800000,
  });
  assert.equal(readLe(fwcfg, 0x13, 4), 0x20000n);
  assert.equal(readLe(fwcfg, 0x14, 4), 14n); // with the NUL
  assert.equal(new TextDecoder().decode(readItem(fwcfg, 0x15, 14)), "console=ttyS0\0");
  assert.equal(readLe(fwcfg, 0x0a, 4), 0x800000n);
  assert.equal(readLe(fwcfg, 0x0b, 4), 5n);
  assert.deepEqual(readItem(fwcfg, 0x12, 6), Uint8Array.of(1, 2, 3, 4, 5, 0));
});

Deno.test("FwCfg lists added files in the directory at key 0x19", () => {
  const fwcfg = new FwCfg({ ramSize: 1 << 20, cpus: 1 });
  assert.deepEqual(decodeDirectory(readItem(fwcfg, 0x19, 4)), []);
  const tables = new Uint8Array(300).fill(7);
  assert.equal(fwcfg.addFile("etc/acpi/tables", tables), 0x20);
  assert.equal(fwcfg.addFile("opt/org.hvsh/x", Uint8Array.of(9)), 0x21);
  const directory = decodeDirectory(readItem(fwcfg, 0x19, 4 + 2 * 64));
  assert.deepEqual(directory, [
    { name: "etc/acpi/tables", select: 0x20, size: 300 },
    { name: "opt/org.hvsh/x", select: 0x21, size: 1 },
  ]);
  assert.deepEqual(readItem(fwcfg, directory[0]!.select, 300), tables);
  assert.deepEqual(fwcfg.files, directory);
});

Deno.test("FwCfg.addFile() refuses empty, too long and duplicate names", () => {
  const fwcfg = new FwCfg({ ramSize: 1 << 20, cpus: 1 });
  fwcfg.addFile("a", new Uint8Array(1));
  assert.throws(() => fwcfg.addFile("a", new Uint8Array(1)), /"a": a file of that name exists/);
  assert.throws(() => fwcfg.addFile("", new Uint8Array(1)), /0 bytes/);
  assert.throws(() => fwcfg.addFile("x".repeat(56), new Uint8Array(1)), /56 bytes/);
});

Deno.test("FwCfg.setItem() replaces an item, even the selected one, and refuses directory keys", () => {
  const fwcfg = new FwCfg({ ramSize: 1 << 20, cpus: 1 });
  fwcfg.write(0, 2, 0x05);
  fwcfg.setItem(0x05, Uint8Array.of(4, 0));
  assert.equal(fwcfg.read(1, 1), 4);
  fwcfg.setItem(0x8003, Uint8Array.of(0xaa));
  assert.equal(readLe(fwcfg, 0x8003, 1), 0xaan);
  assert.throws(() => fwcfg.setItem(0x19, new Uint8Array(4)), /file directory/);
  assert.throws(() => fwcfg.setItem(0x20, new Uint8Array(4)), /addFile/);
  assert.throws(() => fwcfg.setItem(0x4005, new Uint8Array(4)), /not a key/);
});

Deno.test("FwCfg rejects CPU counts it cannot report", () => {
  assert.throws(() => new FwCfg({ ramSize: 0, cpus: 0 }), /CPU count 0/);
  assert.throws(() => new FwCfg({ ramSize: 0, cpus: 4, maxCpus: 2 }), /maximum CPU count 2 is below the CPU count 4/);
});

/** 64 KiB of guest RAM at address 0. */
function fakeMemory(): FwCfgMemory & { ram: Uint8Array } {
  const ram = new Uint8Array(0x10000);
  const range = (address: bigint, length: number) => {
    const start = Number(address);
    if (start + length > ram.length) throw new RangeError(`0x${address.toString(16)} is not RAM`);
    return start;
  };
  return {
    ram,
    read: (address, length) => ram.slice(range(address, length), Number(address) + length),
    write: (address, bytes) => ram.set(bytes, range(address, bytes.length)),
  };
}

function descriptor(ram: Uint8Array, at: number, control: number, length: number, address: number): void {
  const view = new DataView(ram.buffer, at, 16);
  view.setUint32(0, control, false);
  view.setUint32(4, length, false);
  view.setBigUint64(8, BigInt(address), false);
}

/** What SeaBIOS does: two 32-bit OUTs of the big-endian halves, high first. */
function startDma(fwcfg: FwCfg, address: number): void {
  const bswap = (v: number) => ((v >>> 24) | ((v >>> 8) & 0xff00) | ((v << 8) & 0xff0000) | (v << 24)) >>> 0;
  fwcfg.dmaPort!.write(0, 4, 0);
  fwcfg.dmaPort!.write(4, 4, bswap(address));
}

function control(ram: Uint8Array, at: number): number {
  return new DataView(ram.buffer).getUint32(at, false);
}

Deno.test("FwCfg DMA: ID bit 1 set, the register reads QEMU CFG", () => {
  const fwcfg = new FwCfg({ ramSize: 1 << 20, cpus: 1, memory: fakeMemory() });
  assert.equal(readLe(fwcfg, 0x01, 4), 3n);
  const bytes = Array.from({ length: 8 }, (_, i) => fwcfg.dmaPort!.read(i, 1));
  assert.equal(String.fromCharCode(...bytes), "QEMU CFG");
  assert.equal(fwcfg.dmaPort!.read(0, 4), 0x554d_4551); // "QEMU" as an inl sees it
  assert.equal(new FwCfg({ ramSize: 0, cpus: 1 }).dmaPort, undefined);
});

Deno.test("FwCfg DMA: select and read copies the item, zero-filling past its end", () => {
  const memory = fakeMemory();
  const fwcfg = new FwCfg({ ramSize: 1 << 20, cpus: 1, memory });
  fwcfg.addFile("etc/x", Uint8Array.of(1, 2, 3));
  memory.ram.fill(0xee, 0x2000, 0x2010);
  descriptor(memory.ram, 0x1000, (0x20 << 16) | FW_CFG_DMA.select | FW_CFG_DMA.read, 5, 0x2000);
  startDma(fwcfg, 0x1000);
  assert.equal(control(memory.ram, 0x1000), 0);
  assert.deepEqual(memory.ram.subarray(0x2000, 0x2006), Uint8Array.of(1, 2, 3, 0, 0, 0xee));
  assert.equal(fwcfg.state.dmaAddress, "0x0000000000000000");
});

Deno.test("FwCfg DMA: skip advances the offset, then a port read continues from there", () => {
  const memory = fakeMemory();
  const fwcfg = new FwCfg({ ramSize: 1 << 20, cpus: 1, memory });
  descriptor(memory.ram, 0x1000, (0x00 << 16) | FW_CFG_DMA.select | FW_CFG_DMA.skip, 2, 0);
  startDma(fwcfg, 0x1000);
  assert.equal(control(memory.ram, 0x1000), 0);
  assert.equal(String.fromCharCode(fwcfg.read(1, 1), fwcfg.read(1, 1)), "MU");
});

Deno.test("FwCfg DMA: a write, or a read into non-RAM, sets the error bit", () => {
  const memory = fakeMemory();
  const fwcfg = new FwCfg({ ramSize: 1 << 20, cpus: 1, memory });
  descriptor(memory.ram, 0x1000, (0x05 << 16) | FW_CFG_DMA.select | FW_CFG_DMA.write, 2, 0x2000);
  startDma(fwcfg, 0x1000);
  assert.equal(control(memory.ram, 0x1000), FW_CFG_DMA.error);
  descriptor(memory.ram, 0x1000, (0x05 << 16) | FW_CFG_DMA.select | FW_CFG_DMA.read, 2, 0x1_0000_0000);
  startDma(fwcfg, 0x1000);
  assert.equal(control(memory.ram, 0x1000), FW_CFG_DMA.error);
});

Deno.test("FwCfg DMA: a 64-bit descriptor address is assembled from both halves", () => {
  const memory = fakeMemory();
  const fwcfg = new FwCfg({ ramSize: 1 << 20, cpus: 1, memory });
  fwcfg.dmaPort!.write(0, 4, 0x0100_0000); // high half = 1, big-endian
  assert.equal(fwcfg.state.dmaAddress, "0x0000000100000000");
  fwcfg.dmaPort!.write(4, 4, 0); // starts: the descriptor at 4 GiB is not RAM, nothing happens
  assert.equal(fwcfg.state.dmaAddress, "0x0000000000000000");
});

/** Through JSON, as a snapshot file would carry it. */
function viaJson<T>(state: T): T {
  return JSON.parse(JSON.stringify(state));
}

/** The same machine configuration built twice, each with its own guest RAM. */
function configured(): { fwcfg: FwCfg; memory: ReturnType<typeof fakeMemory>; options: FwCfgOptions } {
  const memory = fakeMemory();
  const options = { ramSize: 1 << 20, cpus: 2, cmdline: "console=ttyS0", memory };
  const fwcfg = new FwCfg(options);
  fwcfg.addFile("etc/a", new TextEncoder().encode("first file"));
  fwcfg.addFile("etc/b", new TextEncoder().encode("second file, longer"));
  return { fwcfg, memory, options };
}

Deno.test("FwCfg state mid-read of a file with half a DMA address written restores into a fresh device", () => {
  const original = configured();
  original.fwcfg.write(0, 2, 0x21); // etc/b
  const head = [0, 1, 2, 3].map(() => original.fwcfg.read(1, 1));
  assert.equal(String.fromCharCode(...head), "seco");
  descriptor(original.memory.ram, 0x1000, FW_CFG_DMA.read, 6, 0x2000); // read on, without selecting
  original.fwcfg.dmaPort!.write(0, 4, 0); // the high half of 0x1000: the transfer waits for the low half
  const state = original.fwcfg.state;
  assert.deepEqual(state, { selector: 0x21, offset: 4, dmaAddress: "0x0000000000000000" });

  const copy = configured(); // another process builds the same machine, its RAM arrives with the snapshot
  copy.memory.ram.set(original.memory.ram);
  copy.fwcfg.restore(viaJson(state));
  assert.deepEqual(copy.fwcfg.state, state);
  for (const { fwcfg } of [original, copy]) {
    fwcfg.dmaPort!.write(4, 4, 0x0010_0000); // low half, big-endian 0x1000: DMA from offset 4
  }
  assert.deepEqual(copy.memory.ram, original.memory.ram);
  assert.equal(new TextDecoder().decode(original.memory.ram.subarray(0x2000, 0x2006)), "nd fil");
  const rest = (fwcfg: FwCfg) => Array.from({ length: 12 }, () => fwcfg.read(1, 1));
  assert.deepEqual(rest(copy.fwcfg), rest(original.fwcfg));
});

Deno.test("FwCfg state keeps a DMA address whose high half waits for the low one", () => {
  const original = configured();
  original.fwcfg.dmaPort!.write(0, 4, 0x0100_0000); // high half = 1
  const state = original.fwcfg.state;
  assert.equal(state.dmaAddress, "0x0000000100000000");
  const copy = FwCfg.fromState(viaJson(state), configured().options);
  assert.equal(copy.state.dmaAddress, "0x0000000100000000");
  copy.dmaPort!.write(4, 4, 0);
  assert.equal(copy.state.dmaAddress, "0x0000000000000000", "the low half started the transfer (not RAM: nothing)");
});

Deno.test("FwCfg.restore() refuses a corrupt state, naming the field, and changes nothing", () => {
  const { fwcfg } = configured();
  fwcfg.write(0, 2, 0x20);
  fwcfg.read(1, 1);
  const before = fwcfg.state;
  const corrupt = (edit: (state: Record<string, unknown>) => void) => {
    const state = viaJson(before) as unknown as Record<string, unknown>;
    edit(state);
    return () => fwcfg.restore(state as unknown as FwCfgState);
  };
  assert.throws(corrupt((s) => s.selector = 0x10000), {
    name: "RangeError",
    message: "Cannot restore the fw_cfg state: selector is 0x10000, not an integer in 0x0-0xffff",
  });
  assert.throws(corrupt((s) => s.offset = -1), /fw_cfg state: offset is -1/);
  assert.throws(corrupt((s) => s.dmaAddress = "0x1g"), /dmaAddress is "0x1g", not 0x and 1-16 hex digits/);
  assert.throws(corrupt((s) => s.dmaAddress = 4096), {
    name: "TypeError",
    message: /dmaAddress is 4096, not a string/,
  });
  assert.throws(
    () => new FwCfg({ ramSize: 0, cpus: 1 }).restore({ selector: 0, offset: 0, dmaAddress: "0x1000" }),
    /dmaAddress is "0x1000", not 0x0: this fw_cfg has no DMA interface/,
  );
  assert.deepEqual(fwcfg.state, before);
  assert.equal(String.fromCharCode(fwcfg.read(1, 1)), "i", "still mid-read of etc/a");
});
