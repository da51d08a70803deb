// The Linux loaders without KVM: synthetic bzImages (a setup header as
// Documentation/arch/x86/boot.rst lays it out) and ELF kernels with a Xen PVH
// note, loaded into a fake target; the zero page and hvm_start_info are read
// back field by field.

import assert from "node:assert/strict";
import { gunzipSync } from "node:zlib";
import { buildElf, FakeTarget } from "./_test_images.ts";
import { BOOT_PARAMS, isBzImage, LINUX_LAYOUT, loadBzImage, parseSetupHeader, SETUP_HEADER } from "./linux.ts";
import { findPvhEntry, loadPvh, XEN_ELFNOTE_PHYS32_ENTRY, XEN_HVM_START_MAGIC } from "./pvh.ts";
import { E820_TYPE, e820Map } from "./e820.ts";
import { detectFormat } from "./detect_format.ts";
import { loadImage } from "./load_image.ts";
import { initramfs } from "./initramfs.ts";
import { linuxLoadOptions } from "./linux_boot.ts";

const MIB = 0x10_0000;

interface FakeBzImage {
  version?: number;
  setupSects?: number;
  kernelBytes?: number;
  relocatable?: boolean;
  prefAddress?: number;
  initSize?: number;
  kernelAlignment?: number;
  initrdAddrMax?: number;
  cmdlineSize?: number;
  xloadflags?: number;
  loadflags?: number;
}

/** A bzImage-shaped file: boot sector with the setup header, setup sectors, a protected-mode "kernel" of a byte pattern. */
function fakeBzImage(spec: FakeBzImage = {}): Uint8Array {
  const setupSects = spec.setupSects ?? 4;
  const kernelBytes = spec.kernelBytes ?? 0x3000;
  const bytes = new Uint8Array((setupSects + 1) * 512 + kernelBytes);
  const view = new DataView(bytes.buffer);
  view.setUint8(SETUP_HEADER.setupSects, setupSects);
  view.setUint32(SETUP_HEADER.syssize, Math.ceil(kernelBytes / 16), true);
  view.setUint16(SETUP_HEADER.bootFlag, 0xaa55, true);
  view.setUint8(0x201, 0x6a); // header ends at 0x26c, as 2.15's does
  view.setUint32(SETUP_HEADER.header, 0x53726448, true);
  view.setUint16(SETUP_HEADER.version, spec.version ?? 0x020f, true);
  view.setUint16(SETUP_HEADER.kernelVersion, 0x100, true); // string at 0x300
  bytes.set(new TextEncoder().encode("6.1.0-test (hvsh) #1\0"), 0x300);
  view.setUint8(SETUP_HEADER.loadflags, spec.loadflags ?? 0x01);
  view.setUint32(SETUP_HEADER.code32Start, MIB, true);
  view.setUint32(SETUP_HEADER.initrdAddrMax, spec.initrdAddrMax ?? 0x7fff_ffff, true);
  view.setUint32(SETUP_HEADER.kernelAlignment, spec.kernelAlignment ?? 0x20_0000, true);
  view.setUint8(SETUP_HEADER.relocatableKernel, spec.relocatable === false ? 0 : 1);
  view.setUint8(SETUP_HEADER.minAlignment, 21);
  view.setUint16(SETUP_HEADER.xloadflags, spec.xloadflags ?? 0x03, true);
  view.setUint32(SETUP_HEADER.cmdlineSize, spec.cmdlineSize ?? 2047, true);
  view.setBigUint64(SETUP_HEADER.prefAddress, BigInt(spec.prefAddress ?? 0x100_0000), true);
  view.setUint32(SETUP_HEADER.initSize, spec.initSize ?? 0x8_0000, true);
  for (let i = (setupSects + 1) * 512; i < bytes.length; i++) bytes[i] = i & 0xff;
  return bytes;
}

const RAM = 64 * MIB;
const memoryMap = e820Map([{ base: 0, size: RAM }]);

Deno.test("a bzImage's setup header is read field by field", () => {
  const bytes = fakeBzImage();
  assert.equal(isBzImage(bytes), true);
  assert.equal(detectFormat(bytes), "bzimage");
  const header = parseSetupHeader(bytes);
  assert.equal(header.protocol, "2.15");
  assert.equal(header.kernelOffset, 5 * 512);
  assert.equal(header.prefAddress, 0x100_0000);
  assert.equal(header.initSize, 0x8_0000);
  assert.equal(header.cmdlineSize, 2047);
  assert.equal(header.kernelVersion, "6.1.0-test (hvsh) #1");
});

Deno.test("a bzImage loads at pref_address with the zero page, e820, command line and initrd as the protocol says", () => {
  const bytes = fakeBzImage();
  const target = new FakeTarget(RAM);
  const initrd = new Uint8Array(0x2345).fill(0x5a);
  const image = loadBzImage(bytes, target, { memoryMap, cmdline: "console=ttyS0 panic=-1", initrd });
  assert.equal(image.format, "bzimage");
  assert.equal(image.mode, "long");
  assert.equal(image.entry, 0x100_0200n);
  assert.equal(image.registers.rsi, BigInt(LINUX_LAYOUT.zeroPage));
  assert.deepEqual(image.segments, { gdt: LINUX_LAYOUT.gdt, gdtLimit: 31, code: 0x10, data: 0x18 });
  // The protected-mode kernel is copied from (setup_sects + 1) * 512.
  assert.deepEqual(target.memory.subarray(0x100_0000, 0x100_0000 + 0x3000), bytes.subarray(5 * 512));

  const zp = new DataView(target.memory.buffer, LINUX_LAYOUT.zeroPage, BOOT_PARAMS.size);
  assert.equal(zp.getUint32(SETUP_HEADER.header, true), 0x53726448, "the setup header is copied in");
  assert.equal(zp.getUint8(SETUP_HEADER.typeOfLoader), 0xff);
  assert.equal(zp.getUint32(SETUP_HEADER.code32Start, true), 0x100_0000);
  const cmdlinePtr = zp.getUint32(SETUP_HEADER.cmdLinePtr, true);
  assert.equal(cmdlinePtr, LINUX_LAYOUT.cmdline);
  const cmdline = target.memory.subarray(cmdlinePtr, target.memory.indexOf(0, cmdlinePtr));
  assert.equal(new TextDecoder().decode(cmdline), "console=ttyS0 panic=-1");

  const ramdisk = zp.getUint32(SETUP_HEADER.ramdiskImage, true);
  assert.equal(zp.getUint32(SETUP_HEADER.ramdiskSize, true), initrd.length);
  assert.equal(ramdisk % 0x1000, 0, "page aligned");
  assert.equal(ramdisk + initrd.length <= RAM, true);
  assert.equal(ramdisk >= 0x100_0000 + 0x8_0000, true, "clear of the kernel's init_size");
  assert.deepEqual(target.memory.subarray(ramdisk, ramdisk + initrd.length), initrd);

  assert.equal(zp.getUint8(BOOT_PARAMS.e820Entries), memoryMap.length);
  memoryMap.forEach((entry, i) => {
    const at = BOOT_PARAMS.e820Table + i * 20;
    assert.equal(Number(zp.getBigUint64(at, true)), entry.address);
    assert.equal(Number(zp.getBigUint64(at + 8, true)), entry.size);
    assert.equal(zp.getUint32(at + 16, true), entry.type);
  });
  assert.deepEqual(memoryMap.at(-1), { address: MIB, size: RAM - MIB, type: E820_TYPE.ram });
  // __BOOT_CS is a 64-bit code descriptor, __BOOT_DS a flat data one.
  const gdt = new DataView(target.memory.buffer, LINUX_LAYOUT.gdt, 32);
  assert.equal(gdt.getBigUint64(0x10, true), 0x00af9b000000ffffn);
  assert.equal(gdt.getBigUint64(0x18, true), 0x00cf93000000ffffn);
});

Deno.test("the initrd respects initrd_addr_max; a kernel without 64-bit entry gets the 32-bit one", () => {
  const target = new FakeTarget(RAM);
  const image = loadBzImage(fakeBzImage({ initrdAddrMax: 0x1ff_ffff, xloadflags: 0 }), target, {
    memoryMap,
    initrd: new Uint8Array(0x1000),
  });
  assert.equal(image.mode, "protected");
  assert.equal(image.entry, 0x100_0000n);
  assert.equal(image.linux.initrd!.address + 0x1000 - 1 <= 0x1ff_ffff, true);
  assert.equal(new DataView(target.memory.buffer).getBigUint64(LINUX_LAYOUT.gdt + 0x10, true), 0x00cf9b000000ffffn);
});

Deno.test("a kernel that is not relocatable loads at 1 MiB; one whose pref_address does not fit moves to an aligned address", () => {
  const fixed = loadBzImage(fakeBzImage({ relocatable: false }), new FakeTarget(RAM), {
    memoryMap,
    initrd: new Uint8Array(0x1000),
    // initrd_addr_max in the kernel's runtime area: the initrd must go below it, not inside it.
  });
  assert.equal(fixed.linux.loadAddress, MIB);
  assert.equal(fixed.entry, 0x10_0200n);
  const initrdAt = fixed.linux.initrd!.address;
  assert.ok(initrdAt >= 0x100_0000 + 0x8_0000 || initrdAt + 0x1000 <= 0x100_0000, "clear of pref_address + init_size");
  const pinned = loadBzImage(fakeBzImage({ relocatable: false, initrdAddrMax: 0x104_ffff }), new FakeTarget(RAM), {
    memoryMap,
    initrd: new Uint8Array(0x1000),
  });
  assert.ok(pinned.linux.initrd!.address + 0x1000 <= 0x100_0000, "below the runtime area [16 MiB, +init_size)");
  const small = 12 * MIB;
  const moved = loadBzImage(fakeBzImage({ prefAddress: 0x100_0000 }), new FakeTarget(small), {
    memoryMap: e820Map([{ base: 0, size: small }]),
  });
  assert.equal(moved.linux.loadAddress, 0x20_0000, "the first 2 MiB-aligned address above 1 MiB");
});

Deno.test("bad bzImages are refused with the field and the value found, and nothing is written", () => {
  const cases: [Uint8Array, RegExp, string?][] = [
    [fakeBzImage({ version: 0x0204 }), /boot protocol version is 0x0204 \(2\.04\); hvsh needs 2\.06/],
    [fakeBzImage().subarray(0, 0x1000), /syssize is 0x300 .* truncated/],
    [fakeBzImage().subarray(0, 0x100), /the file is 256 bytes, too short for a setup header/],
    [fakeBzImage({ loadflags: 0 }), /loadflags is 0x00 without LOADED_HIGH: a zImage/],
    [new Uint8Array(0x1000), /not a bzImage: header at 0x202 is 0x00000000/],
    [fakeBzImage({ cmdlineSize: 8 }), /the command line is 13 bytes; the kernel's cmdline_size is 8/, "console=ttyS0"],
    [fakeBzImage({ kernelAlignment: 0x30_0000 }), /kernel_alignment is 0x300000, not a power of two/],
  ];
  for (const [bytes, pattern, cmdline] of cases) {
    const target = new FakeTarget(RAM);
    assert.throws(() => loadBzImage(bytes, target, { memoryMap, cmdline, path: "bzImage" }), pattern);
    assert.equal(target.writes.length, 0, `nothing written for ${pattern}`);
  }
  const target = new FakeTarget(RAM);
  assert.throws(
    () =>
      loadBzImage(fakeBzImage({ initrdAddrMax: 0x1ff_ffff }), target, { memoryMap, initrd: new Uint8Array(20 * MIB) }),
    /the initrd \(initrd_addr_max 0x1ffffff\) \(20971520 bytes\) does not fit in RAM below 0x2000000/,
  );
  assert.equal(target.writes.length, 0);
});

/** A Xen ELF note: namesz, descsz, type, "Xen\0", an 8-byte descriptor. */
function xenNote(type: number, value: bigint): Uint8Array {
  const note = new Uint8Array(12 + 4 + 8);
  const view = new DataView(note.buffer);
  view.setUint32(0, 4, true);
  view.setUint32(4, 8, true);
  view.setUint32(8, type, true);
  note.set(new TextEncoder().encode("Xen\0"), 12);
  view.setBigUint64(16, value, true);
  return note;
}

function fakeVmlinux(withNote = true): Uint8Array {
  const code = new Uint8Array(0x2000).fill(0x90);
  return buildElf({
    class: 64,
    entry: 0xffff_ffff_8100_0000n,
    segments: [
      { paddr: 0x100_0000, vaddr: 0xffff_ffff_8100_0000n, data: code, memsz: 0x4000 },
      ...(withNote ? [{ type: 4, paddr: 0, data: xenNote(XEN_ELFNOTE_PHYS32_ENTRY, 0x100_0100n) }] : []),
    ],
  });
}

Deno.test("a vmlinux with a PVH note loads for its 32-bit entry with hvm_start_info, command line, initrd and memory map", () => {
  const bytes = fakeVmlinux();
  assert.equal(findPvhEntry(bytes), 0x100_0100);
  assert.equal(detectFormat(bytes), "pvh");
  const target = new FakeTarget(RAM);
  const initrd = new Uint8Array(0x1800).fill(7);
  const image = loadPvh(bytes, target, { memoryMap, cmdline: "console=ttyS0", initrd, rsdp: 0xf0000 });
  assert.equal(image.mode, "protected");
  assert.equal(image.entry, 0x100_0100n);
  const info = new DataView(target.memory.buffer, Number(image.registers.rbx));
  assert.equal(info.getUint32(0, true), XEN_HVM_START_MAGIC);
  assert.equal(info.getUint32(4, true), 1);
  assert.equal(info.getUint32(12, true), 1, "one module: the initrd");
  const cmdline = Number(info.getBigUint64(24, true));
  assert.equal(new TextDecoder().decode(target.memory.subarray(cmdline, cmdline + 13)), "console=ttyS0");
  assert.equal(target.memory[cmdline + 13], 0);
  assert.equal(info.getBigUint64(32, true), 0xf0000n);
  const modlist = new DataView(target.memory.buffer, Number(info.getBigUint64(16, true)));
  const initrdAt = Number(modlist.getBigUint64(0, true));
  assert.equal(Number(modlist.getBigUint64(8, true)), initrd.length);
  assert.deepEqual(target.memory.subarray(initrdAt, initrdAt + initrd.length), initrd);
  const memmap = new DataView(target.memory.buffer, Number(info.getBigUint64(40, true)));
  assert.equal(info.getUint32(48, true), memoryMap.length);
  memoryMap.forEach((entry, i) => {
    assert.equal(Number(memmap.getBigUint64(i * 24, true)), entry.address);
    assert.equal(Number(memmap.getBigUint64(i * 24 + 8, true)), entry.size);
    assert.equal(memmap.getUint32(i * 24 + 16, true), entry.type);
  });
});

Deno.test("a vmlinux without a PVH note is refused when PVH is asked; auto-detection calls it an ELF", async () => {
  const bytes = fakeVmlinux(false);
  assert.equal(detectFormat(bytes), "elf");
  const target = new FakeTarget(RAM);
  assert.throws(
    () => loadImage(bytes, target, { format: "pvh", path: "vmlinux" }),
    /Cannot load PVH kernel "vmlinux": no Xen PVH note \(XEN_ELFNOTE_PHYS32_ENTRY, type 18\)/,
  );
  assert.equal(target.writes.length, 0);
  // vm.loadLinux's resolution sends an ELF to the PVH loader, whose error says what is missing.
  const { options } = await linuxLoadOptions({ kernel: bytes });
  assert.equal(options.format, "pvh");
});

Deno.test("loadImage boots a bzImage with its first module as the initrd and refuses a second", () => {
  const target = new FakeTarget(RAM);
  const image = loadImage(fakeBzImage(), target, {
    cmdline: "quiet",
    modules: [{ data: new Uint8Array(16), cmdline: "initrd" }],
  });
  assert.equal(image.format, "bzimage");
  assert.throws(
    () =>
      loadImage(fakeBzImage(), new FakeTarget(RAM), {
        modules: [{ data: new Uint8Array(1), cmdline: "a" }, { data: new Uint8Array(1), cmdline: "b" }],
      }),
    /option modules has 2 entries; a bzImage takes one, the initrd/,
  );
});

/** Parses a cpio newc archive into { name: { mode, data, rdev } }. */
function readCpio(archive: Uint8Array): Map<string, { mode: number; data: Uint8Array; rdev: [number, number] }> {
  const out = new Map<string, { mode: number; data: Uint8Array; rdev: [number, number] }>();
  const text = new TextDecoder();
  let at = 0;
  const align = (n: number) => (n + 3) & ~3;
  for (;;) {
    assert.equal(text.decode(archive.subarray(at, at + 6)), "070701");
    const field = (i: number) => parseInt(text.decode(archive.subarray(at + 6 + i * 8, at + 14 + i * 8)), 16);
    const mode = field(1);
    const size = field(6);
    const nameSize = field(11);
    const name = text.decode(archive.subarray(at + 110, at + 110 + nameSize - 1));
    const dataAt = align(at + 110 + nameSize);
    if (name === "TRAILER!!!") return out;
    out.set(name, { mode, data: archive.subarray(dataAt, dataAt + size), rdev: [field(9), field(10)] });
    at = align(dataAt + size);
  }
}

Deno.test("initramfs builds cpio newc from a map: parents first, modes, symlinks, /dev/console, gzip", async () => {
  const plain = await initramfs({
    "/init": { mode: 0o755, data: "#!/bin/sh\n" },
    "/etc/motd": "hi\n",
    "/bin/sh": { symlink: "busybox" },
    "/dev/null": { device: "char", major: 1, minor: 3, mode: 0o666 },
  });
  const entries = readCpio(plain);
  assert.deepEqual([...entries.keys()], ["bin", "bin/sh", "dev", "dev/console", "dev/null", "etc", "etc/motd", "init"]);
  assert.equal(entries.get("init")!.mode, 0o100755);
  assert.equal(new TextDecoder().decode(entries.get("etc/motd")!.data), "hi\n");
  assert.equal(entries.get("bin/sh")!.mode, 0o120777);
  assert.equal(new TextDecoder().decode(entries.get("bin/sh")!.data), "busybox");
  assert.equal(entries.get("dev")!.mode, 0o040755);
  assert.deepEqual(entries.get("dev/console")!.rdev, [5, 1]);
  assert.equal(entries.get("dev/console")!.mode, 0o020600);
  assert.deepEqual(entries.get("dev/null")!.rdev, [1, 3]);

  const gzipped = await initramfs({ "/init": "x" }, { gzip: true, console: false });
  assert.deepEqual([gzipped[0], gzipped[1]], [0x1f, 0x8b]);
  assert.deepEqual([...readCpio(new Uint8Array(gunzipSync(gzipped))).keys()], ["init"]);
  await assert.rejects(() => initramfs({ "/a/../b": "x" }), /contains "\.\."/);
  await assert.rejects(() => initramfs({ "/f": "x", "/f/g": "y" }), /\/f is not a directory but \/f\/g is inside it/);
  await assert.rejects(
    () => initramfs({ "/x": { file: "/nonexistent/hvsh" } }),
    /cannot read \/nonexistent\/hvsh for \/x/,
  );
});

Deno.test("initramfs packs a host folder with its modes and symlinks", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hvsh-initramfs-" });
  try {
    await Deno.mkdir(`${dir}/sbin`);
    await Deno.writeTextFile(`${dir}/init`, "#!/bin/sh\n");
    await Deno.chmod(`${dir}/init`, 0o750);
    await Deno.symlink("../init", `${dir}/sbin/init`);
    const entries = readCpio(await initramfs(dir));
    assert.deepEqual([...entries.keys()], ["dev", "dev/console", "init", "sbin", "sbin/init"]);
    assert.equal(entries.get("init")!.mode, 0o100750);
    assert.equal(new TextDecoder().decode(entries.get("sbin/init")!.data), "../init");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
