/**
 * The KVM struct codecs against the byte layout of `<linux/kvm.h>` and
 * `<asm/kvm.h>` on x86-64: each field is placed at its C offset by hand
 * (DataView), decoded, and encoded back to the same bytes. The last tests
 * round-trip the same structs through a real vCPU, so the kernel agrees too.
 */

import assert from "node:assert/strict";
import {
  decodeCpuid,
  decodeDebugRegs,
  decodeFpu,
  decodeIrqchip,
  decodeMsrs,
  decodePitState,
  decodeRedirectionEntry,
  decodeRegs,
  decodeSregs,
  encodeCpuid,
  encodeDebugRegs,
  encodeFpu,
  encodeGuestDebug,
  encodeIrqchip,
  encodeMemoryRegion,
  encodeMsrs,
  encodePitState,
  encodeRedirectionEntry,
  encodeRegs,
  encodeSregs,
  type IrqchipState,
  KVM_CPUID_ENTRY2_SIZE,
  KVM_DEBUGREGS_SIZE,
  KVM_FPU_SIZE,
  KVM_GUEST_DEBUG_SIZE,
  KVM_IOAPIC_NUM_PINS,
  KVM_IOAPIC_STATE_SIZE,
  KVM_IRQCHIP_SIZE,
  KVM_PIC_STATE_SIZE,
  KVM_PIT_CHANNEL_STATE_SIZE,
  KVM_PIT_STATE2_SIZE,
  KVM_REGS_SIZE,
  KVM_SREGS_SIZE,
  type PicState,
  type PitState,
  REGISTER_NAMES,
  SEGMENT_NAMES,
} from "../core/kvm/structs.ts";
import { Vm } from "../core/vm.ts";
import { kvmAvailable } from "./_helpers.ts";

/** A buffer of `size` bytes preceded by `lead` junk bytes, to catch codecs that ignore byteOffset. */
function offsetBuffer(size: number, lead = 24): { bytes: Uint8Array<ArrayBuffer>; view: DataView } {
  const whole = new Uint8Array(lead + size).fill(0xee, 0, lead);
  const bytes = whole.subarray(lead);
  return { bytes, view: new DataView(whole.buffer, lead, size) };
}

Deno.test("struct sizes equal the C sizeof of <linux/kvm.h> on x86-64", () => {
  assert.equal(KVM_REGS_SIZE, 144);
  assert.equal(KVM_SREGS_SIZE, 312);
  assert.equal(KVM_FPU_SIZE, 416);
  assert.equal(KVM_DEBUGREGS_SIZE, 128);
  assert.equal(KVM_CPUID_ENTRY2_SIZE, 40);
  assert.equal(KVM_GUEST_DEBUG_SIZE, 72);
  assert.equal(KVM_IRQCHIP_SIZE, 520);
  assert.equal(KVM_PIC_STATE_SIZE, 16);
  assert.equal(KVM_IOAPIC_STATE_SIZE, 216);
  assert.equal(KVM_PIT_STATE2_SIZE, 112);
  assert.equal(KVM_PIT_CHANNEL_STATE_SIZE, 24);
  assert.equal(encodeIrqchip(decodeIrqchip(new Uint8Array(520))).length, 520);
  assert.equal(encodePitState(decodePitState(new Uint8Array(112))).length, 112);
  assert.equal(encodeRegs(decodeRegs(new Uint8Array(144))).length, 144);
  assert.equal(encodeSregs(decodeSregs(new Uint8Array(312))).length, 312);
  assert.equal(encodeFpu(decodeFpu(new Uint8Array(416))).length, 416);
  assert.equal(encodeDebugRegs(decodeDebugRegs(new Uint8Array(128))).length, 128);
});

Deno.test("decodeRegs() reads each register at 8 * its kvm_regs index and encodeRegs() writes it back", () => {
  const { bytes, view } = offsetBuffer(KVM_REGS_SIZE);
  REGISTER_NAMES.forEach((_, i) =>
    view.setBigUint64(i * 8, 0x1111_0000_0000_0000n * BigInt(i % 15 + 1) + BigInt(i), true)
  );
  const regs = decodeRegs(bytes);
  assert.equal(regs.rax, 0x1111_0000_0000_0000n);
  assert.equal(regs.rsp, view.getBigUint64(48, true)); // rsp is the 7th field
  assert.equal(regs.r8, view.getBigUint64(64, true));
  assert.equal(regs.rip, view.getBigUint64(128, true));
  assert.equal(regs.rflags, view.getBigUint64(136, true));
  assert.deepEqual(encodeRegs(regs), bytes.slice());
});

Deno.test("encodeRegs() stores negative bigints as their 64-bit two's complement", () => {
  const regs = decodeRegs(new Uint8Array(KVM_REGS_SIZE));
  regs.rbx = -2n;
  const view = new DataView(encodeRegs(regs).buffer);
  assert.equal(view.getBigUint64(8, true), 0xffff_ffff_ffff_fffen);
});

Deno.test("decodeSregs() reads segments (24 bytes each), dtables, CRs, efer and the interrupt bitmap at their C offsets", () => {
  const { bytes, view } = offsetBuffer(KVM_SREGS_SIZE);
  // struct kvm_segment: base@0 u64, limit@8 u32, selector@12 u16, type@14, present@15, dpl@16, db@17,
  // s@18, l@19, g@20, avl@21, unusable@22, padding@23 (u8 each).
  SEGMENT_NAMES.forEach((_, i) => {
    const at = i * 24;
    view.setBigUint64(at, 0x1000n * BigInt(i + 1), true);
    view.setUint32(at + 8, 0xfff0 + i, true);
    view.setUint16(at + 12, 0x08 * (i + 1), true);
    view.setUint8(at + 14, 0x3 + i);
    view.setUint8(at + 15, 1);
    view.setUint8(at + 16, i % 4);
    view.setUint8(at + 17, i & 1);
    view.setUint8(at + 18, (i >> 1) & 1);
    view.setUint8(at + 19, (i >> 2) & 1);
    view.setUint8(at + 20, 1);
    view.setUint8(at + 21, i === 7 ? 1 : 0);
    view.setUint8(at + 22, i === 6 ? 1 : 0);
  });
  view.setBigUint64(192, 0x500n, true); // gdt.base
  view.setUint16(200, 0x2f, true); // gdt.limit
  view.setBigUint64(208, 0x7000n, true); // idt.base
  view.setUint16(216, 0xfff, true); // idt.limit
  view.setBigUint64(224, 0x8000_0011n, true); // cr0
  view.setBigUint64(232, 0xdead_b000n, true); // cr2
  view.setBigUint64(240, 0x1000n, true); // cr3
  view.setBigUint64(248, 0x20n, true); // cr4
  view.setBigUint64(256, 0x5n, true); // cr8
  view.setBigUint64(264, 0x500n, true); // efer
  view.setBigUint64(272, 0xfee0_0900n, true); // apic_base
  [1n, 2n, 1n << 63n, 4n].forEach((word, i) => view.setBigUint64(280 + i * 8, word, true));

  const sregs = decodeSregs(bytes);
  assert.deepEqual(sregs.cs, {
    base: 0x1000n,
    limit: 0xfff0,
    selector: 0x08,
    type: 0x3,
    present: true,
    dpl: 0,
    db: false,
    s: false,
    l: false,
    g: true,
    avl: false,
    unusable: false,
  });
  assert.deepEqual(sregs.ss, { // index 5
    base: 0x6000n,
    limit: 0xfff5,
    selector: 0x30,
    type: 0x8,
    present: true,
    dpl: 1,
    db: true,
    s: false,
    l: true,
    g: true,
    avl: false,
    unusable: false,
  });
  assert.equal(sregs.tr.unusable, true);
  assert.equal(sregs.ldt.avl, true);
  assert.equal(sregs.ldt.selector, 0x40);
  assert.deepEqual(sregs.gdt, { base: 0x500n, limit: 0x2f });
  assert.deepEqual(sregs.idt, { base: 0x7000n, limit: 0xfff });
  assert.equal(sregs.cr0, 0x8000_0011n);
  assert.equal(sregs.cr2, 0xdead_b000n);
  assert.equal(sregs.cr3, 0x1000n);
  assert.equal(sregs.cr4, 0x20n);
  assert.equal(sregs.cr8, 0x5n);
  assert.equal(sregs.efer, 0x500n);
  assert.equal(sregs.apicBase, 0xfee0_0900n);
  assert.deepEqual(sregs.interruptBitmap, [1n, 2n, 1n << 63n, 4n]);
  assert.deepEqual(encodeSregs(sregs), bytes.slice());
});

Deno.test("encodeSregs() puts cr0 at 224, efer at 264 and a segment's fields at base@0 limit@8 selector@12 type@14 present@15", () => {
  const sregs = decodeSregs(new Uint8Array(KVM_SREGS_SIZE));
  sregs.cr0 = 0x11n;
  sregs.efer = 0xd01n;
  sregs.ds = { ...sregs.ds, base: 0x1234_5678_9abcn, limit: 0xffff_ffff, selector: 0x10, type: 3, present: true };
  const bytes = encodeSregs(sregs);
  const view = new DataView(bytes.buffer);
  assert.equal(view.getBigUint64(224, true), 0x11n);
  assert.equal(view.getBigUint64(264, true), 0xd01n);
  const ds = 24; // ds is the second segment
  assert.equal(view.getBigUint64(ds, true), 0x1234_5678_9abcn);
  assert.equal(view.getUint32(ds + 8, true), 0xffff_ffff);
  assert.equal(view.getUint16(ds + 12, true), 0x10);
  assert.equal(bytes[ds + 14], 3);
  assert.equal(bytes[ds + 15], 1);
  assert.equal(bytes[ds + 23], 0, "padding stays zero");
});

Deno.test("decodeFpu() reads fpr (16-byte slots, 10 bytes used), fcw@128, ftwx@132, last_ip@136, xmm@152, mxcsr@408", () => {
  const { bytes, view } = offsetBuffer(KVM_FPU_SIZE);
  for (let i = 0; i < 8; i++) for (let j = 0; j < 10; j++) bytes[i * 16 + j] = i * 16 + j;
  view.setUint16(128, 0x037f, true); // fcw
  view.setUint16(130, 0x3800, true); // fsw
  view.setUint8(132, 0xa5); // ftwx
  view.setUint16(134, 0x07df, true); // last_opcode
  view.setBigUint64(136, 0x1122_3344_5566_7788n, true); // last_ip
  view.setBigUint64(144, 0x99aa_bbcc_ddee_ff00n, true); // last_dp
  for (let i = 0; i < 16; i++) for (let j = 0; j < 16; j++) bytes[152 + i * 16 + j] = (i << 4) | j;
  view.setUint32(408, 0x1f80, true); // mxcsr

  const fpu = decodeFpu(bytes);
  assert.equal(fpu.fpr.length, 8);
  assert.deepEqual([...fpu.fpr[3]!], [48, 49, 50, 51, 52, 53, 54, 55, 56, 57]);
  assert.equal(fpu.fcw, 0x037f);
  assert.equal(fpu.fsw, 0x3800);
  assert.equal(fpu.ftwx, 0xa5);
  assert.equal(fpu.lastOpcode, 0x07df);
  assert.equal(fpu.lastIp, 0x1122_3344_5566_7788n);
  assert.equal(fpu.lastDp, 0x99aa_bbcc_ddee_ff00n);
  assert.equal(fpu.xmm.length, 16);
  assert.deepEqual([...fpu.xmm[0]!], Array.from({ length: 16 }, (_, j) => j));
  assert.deepEqual([...fpu.xmm[15]!], Array.from({ length: 16 }, (_, j) => 0xf0 | j));
  assert.equal(fpu.mxcsr, 0x1f80);
  assert.deepEqual(encodeFpu(fpu), bytes.slice());
});

Deno.test("decodeDebugRegs() reads db[0..3]@0, dr6@32, dr7@40 and encodeDebugRegs() leaves flags and reserved zero", () => {
  const { bytes, view } = offsetBuffer(KVM_DEBUGREGS_SIZE);
  [0x1000n, 0x2000n, 0x3000n, 0xffff_8000_0000_4000n].forEach((v, i) => view.setBigUint64(i * 8, v, true));
  view.setBigUint64(32, 0xffff_0ff0n, true);
  view.setBigUint64(40, 0x0000_0401n, true);
  const regs = decodeDebugRegs(bytes);
  assert.deepEqual(regs, { db: [0x1000n, 0x2000n, 0x3000n, 0xffff_8000_0000_4000n], dr6: 0xffff_0ff0n, dr7: 0x401n });
  assert.deepEqual(encodeDebugRegs(regs), bytes.slice());
});

Deno.test("decodeCpuid() reads nent@0 and 40-byte entries from offset 8; encodeCpuid() writes them back", () => {
  const { bytes, view } = offsetBuffer(8 + 2 * 40);
  view.setUint32(0, 2, true);
  const fields = [0x0000_0001, 0, 0, 0x000906ea, 0x0001_0800, 0xfeda_3203, 0x178b_fbff];
  fields.forEach((v, j) => view.setUint32(8 + j * 4, v, true));
  const second = [0x0000_0007, 1, 1, 0xa, 0xb, 0xc, 0xffff_ffff];
  second.forEach((v, j) => view.setUint32(48 + j * 4, v, true));
  const entries = decodeCpuid(bytes);
  assert.deepEqual(entries, [
    { function: 1, index: 0, flags: 0, eax: 0x000906ea, ebx: 0x0001_0800, ecx: 0xfeda_3203, edx: 0x178b_fbff },
    { function: 7, index: 1, flags: 1, eax: 0xa, ebx: 0xb, ecx: 0xc, edx: 0xffff_ffff },
  ]);
  assert.deepEqual(encodeCpuid(entries), bytes.slice());
});

Deno.test("encodeMsrs() writes nmsrs@0 and {index@0, data@8} 16-byte entries; decodeMsrs() reads them", () => {
  const bytes = encodeMsrs([{ index: 0xc000_0080, data: 0xd01n }, { index: 0x10, data: -1n }]);
  assert.equal(bytes.length, 8 + 2 * 16);
  const view = new DataView(bytes.buffer);
  assert.equal(view.getUint32(0, true), 2);
  assert.equal(view.getUint32(8, true), 0xc000_0080);
  assert.equal(view.getUint32(12, true), 0, "reserved");
  assert.equal(view.getBigUint64(16, true), 0xd01n);
  assert.equal(view.getUint32(24, true), 0x10);
  assert.equal(view.getBigUint64(32, true), 0xffff_ffff_ffff_ffffn);
  assert.deepEqual(decodeMsrs(bytes), [
    { index: 0xc000_0080, data: 0xd01n },
    { index: 0x10, data: 0xffff_ffff_ffff_ffffn },
  ]);
});

Deno.test("encodeGuestDebug() writes control@0 and debugreg[0..7] from offset 8", () => {
  const bytes = encodeGuestDebug(0x20003, [0x100000n, 0n, 0n, 0n, 0n, 0n, 0xffff0ff0n, 0x401n]);
  const view = new DataView(bytes.buffer);
  assert.equal(bytes.length, 72);
  assert.equal(view.getUint32(0, true), 0x20003);
  assert.equal(view.getBigUint64(8, true), 0x100000n);
  assert.equal(view.getBigUint64(8 + 6 * 8, true), 0xffff0ff0n);
  assert.equal(view.getBigUint64(8 + 7 * 8, true), 0x401n);
});

Deno.test("encodeMemoryRegion() writes slot@0 flags@4 guest_phys_addr@8 memory_size@16 userspace_addr@24", () => {
  const bytes = encodeMemoryRegion(3, 2, 0x1_0000_0000n, 0x2000_0000n, 0x7f00_1234_5000n);
  const view = new DataView(bytes.buffer);
  assert.equal(bytes.length, 32);
  assert.equal(view.getUint32(0, true), 3);
  assert.equal(view.getUint32(4, true), 2);
  assert.equal(view.getBigUint64(8, true), 0x1_0000_0000n);
  assert.equal(view.getBigUint64(16, true), 0x2000_0000n);
  assert.equal(view.getBigUint64(24, true), 0x7f00_1234_5000n);
});

// struct kvm_irqchip: chip_id@0 u32, pad@4 u32, the chip union@8 (512 bytes). struct kvm_pic_state: 16 u8 fields in
// order last_irr@0 irr@1 imr@2 isr@3 priority_add@4 irq_base@5 read_reg_select@6 poll@7 special_mask@8 init_state@9
// auto_eoi@10 rotate_on_auto_eoi@11 special_fully_nested_mode@12 init4@13 elcr@14 elcr_mask@15.
const PIC_C_ORDER: (keyof PicState)[] = [
  "lastIrr",
  "irr",
  "imr",
  "isr",
  "priorityAdd",
  "irqBase",
  "readRegSelect",
  "poll",
  "specialMask",
  "initState",
  "autoEoi",
  "rotateOnAutoEoi",
  "specialFullyNestedMode",
  "init4",
  "elcr",
  "elcrMask",
];

Deno.test("decodeIrqchip() reads chip_id@0 and each kvm_pic_state byte at 8 + its C offset; encodeIrqchip() writes them back", () => {
  for (const [chipId, chip] of [[0, "pic-master"], [1, "pic-slave"]] as const) {
    const { bytes, view } = offsetBuffer(KVM_IRQCHIP_SIZE);
    view.setUint32(0, chipId, true);
    PIC_C_ORDER.forEach((_, i) => view.setUint8(8 + i, 0xa0 + i));
    const state = decodeIrqchip(bytes);
    assert.equal(state.chip, chip);
    assert.equal(state.pic.lastIrr, 0xa0);
    assert.equal(state.pic.imr, 0xa2);
    assert.equal(state.pic.irqBase, 0xa5);
    assert.equal(state.pic.initState, 0xa9);
    assert.equal(state.pic.init4, 0xad);
    assert.equal(state.pic.elcrMask, 0xaf);
    PIC_C_ORDER.forEach((name, i) => assert.equal(state.pic[name], 0xa0 + i, name));
    assert.deepEqual(encodeIrqchip(state), bytes.slice());
  }
});

Deno.test("decodeIrqchip() reads kvm_ioapic_state: base_address@8 ioregsel@16 id@20 irr@24 redirtbl[24]@32 (u64 each)", () => {
  const { bytes, view } = offsetBuffer(KVM_IRQCHIP_SIZE);
  view.setUint32(0, 2, true);
  view.setBigUint64(8, 0xfec0_0000n, true);
  view.setUint32(16, 0x10, true);
  view.setUint32(20, 0x0100_0000, true);
  view.setUint32(24, 0x00ab_cdef, true);
  for (let pin = 0; pin < 24; pin++) {
    view.setBigUint64(32 + pin * 8, (BigInt(pin) << 56n) | 0x1_0000n | BigInt(0x20 + pin), true);
  }
  const state = decodeIrqchip(bytes);
  assert.ok(state.chip === "ioapic");
  assert.equal(state.ioapic.baseAddress, 0xfec0_0000n);
  assert.equal(state.ioapic.ioregsel, 0x10);
  assert.equal(state.ioapic.id, 0x0100_0000);
  assert.equal(state.ioapic.irr, 0x00ab_cdef);
  assert.equal(state.ioapic.redirtbl.length, KVM_IOAPIC_NUM_PINS);
  assert.equal(state.ioapic.redirtbl[0], 0x1_0020n);
  assert.equal(state.ioapic.redirtbl[23], (23n << 56n) | 0x1_0037n);
  assert.equal(24 + KVM_IOAPIC_NUM_PINS * 8, KVM_IOAPIC_STATE_SIZE, "redirtbl at 24 in the struct ends it");
  assert.deepEqual(encodeIrqchip(state), bytes.slice());
});

Deno.test("decodeIrqchip() and encodeIrqchip() refuse an unknown chip, a short buffer and values that do not fit", () => {
  const bytes = new Uint8Array(KVM_IRQCHIP_SIZE);
  bytes[0] = 3;
  assert.throws(() => decodeIrqchip(bytes), /chip_id 3 is not 0, 1 or 2/);
  assert.throws(() => decodeIrqchip(new Uint8Array(100)), /struct kvm_irqchip: 100 bytes given, 520 needed/);
  const pic = decodeIrqchip(new Uint8Array(KVM_IRQCHIP_SIZE));
  assert.ok(pic.chip === "pic-master");
  pic.pic.imr = 0x100;
  assert.throws(() => encodeIrqchip(pic), {
    name: "RangeError",
    message: "Cannot encode pic.imr: 256 is not an integer in 0-255",
  });
  const ioapic = {
    chip: "ioapic",
    ioapic: { baseAddress: 0n, ioregsel: 0, id: 0, irr: 0, redirtbl: [0n] },
  } as IrqchipState;
  assert.throws(() => encodeIrqchip(ioapic), /ioapic.redirtbl: 1 entries, not 24/);
});

Deno.test("decodeRedirectionEntry() names the bitfields as GCC lays out kvm_ioapic_state's redirtbl fields", () => {
  // From a C program: vector 0x31, delivery_mode 5, dest_mode 1, polarity 1, trig_mode 1, mask 1, dest_id 0xab.
  const bits = 0xab00_0000_0001_ad31n;
  const entry = decodeRedirectionEntry(bits);
  assert.deepEqual(entry, {
    vector: 0x31,
    deliveryMode: 5,
    destMode: 1,
    deliveryStatus: 0,
    polarity: 1,
    remoteIrr: 0,
    trigMode: 1,
    mask: 1,
    destId: 0xab,
  });
  assert.equal(encodeRedirectionEntry(entry), bits);
  // delivery_status and remote_irr alone: bits 12 and 14.
  assert.deepEqual(
    encodeRedirectionEntry({ ...decodeRedirectionEntry(0n), deliveryStatus: 1, remoteIrr: 1 }),
    0x5000n,
  );
});

Deno.test("decodePitState() reads 24-byte kvm_pit_channel_state entries, flags@72; encodePitState() leaves reserved zero", () => {
  const { bytes, view } = offsetBuffer(KVM_PIT_STATE2_SIZE);
  // struct kvm_pit_channel_state: count@0 u32, latched_count@4 u16, count_latched@6, status_latched@7, status@8,
  // read_state@9, write_state@10, write_latch@11, rw_mode@12, mode@13, bcd@14, gate@15 (u8), count_load_time@16 s64.
  for (let i = 0; i < 3; i++) {
    const at = i * 24;
    view.setUint32(at, 0x1_0000 + i, true);
    view.setUint16(at + 4, 0xbeef - i, true);
    for (let offset = 6; offset < 16; offset++) view.setUint8(at + offset, i * 16 + offset);
    view.setBigInt64(at + 16, -1_000_000_007n * BigInt(i + 1), true);
  }
  view.setUint32(72, 0x3, true);
  const pit = decodePitState(bytes);
  assert.equal(pit.channels.length, 3);
  const [c0, c1, c2] = pit.channels;
  assert.equal(c0!.count, 0x1_0000, "65536 as KVM reports it");
  assert.equal(c2!.count, 0x1_0002);
  assert.equal(c1!.latchedCount, 0xbeee);
  assert.deepEqual(
    [c1!.countLatched, c1!.statusLatched, c1!.status, c1!.readState, c1!.writeState],
    [22, 23, 24, 25, 26],
  );
  assert.deepEqual([c1!.writeLatch, c1!.rwMode, c1!.mode, c1!.bcd, c1!.gate], [27, 28, 29, 30, 31]);
  assert.equal(c2!.countLoadTime, -3_000_000_021n);
  assert.equal(pit.flags, 3);
  assert.deepEqual(encodePitState(pit), bytes.slice());
  view.setUint32(76, 0xffff_ffff, true); // reserved[0]: not carried
  assert.deepEqual(encodePitState(decodePitState(bytes)).subarray(76), new Uint8Array(36));
});

Deno.test("encodePitState() refuses other than 3 channels and fields that do not fit, naming them", () => {
  const pit: PitState = decodePitState(new Uint8Array(KVM_PIT_STATE2_SIZE));
  pit.channels[2]!.mode = 256;
  assert.throws(() => encodePitState(pit), {
    name: "RangeError",
    message: "Cannot encode channels[2].mode: 256 is not an integer in 0-255",
  });
  pit.channels[2]!.mode = 3;
  pit.flags = -1;
  assert.throws(() => encodePitState(pit), /flags: -1 is not an integer/);
  assert.throws(() => encodePitState({ channels: pit.channels.slice(1), flags: 0 }), /2 channels, not 3/);
});

Deno.test({
  name: "The irqchip and PIT codecs round-trip the in-kernel PIC, IOAPIC and PIT state through KVM",
  ignore: !kvmAvailable,
  async fn() {
    await using vm = await Vm.create({ memory: "2M", irqchip: true });

    const slave = decodeIrqchip(vm.kernelDeviceState("pic-slave"));
    assert.ok(slave.chip === "pic-slave");
    slave.pic.imr = 0xfb;
    slave.pic.irqBase = 0x70;
    slave.pic.elcr = 0x0e & slave.pic.elcrMask;
    vm.setKernelDeviceState("pic-slave", encodeIrqchip(slave));
    assert.deepEqual(decodeIrqchip(vm.kernelDeviceState("pic-slave")), slave);

    const ioapic = decodeIrqchip(vm.kernelDeviceState("ioapic"));
    assert.ok(ioapic.chip === "ioapic");
    assert.equal(ioapic.ioapic.baseAddress, 0xfec0_0000n);
    assert.equal(decodeRedirectionEntry(ioapic.ioapic.redirtbl[4]!).mask, 1, "pins start masked");
    ioapic.ioapic.redirtbl[4] = encodeRedirectionEntry({
      ...decodeRedirectionEntry(0n),
      vector: 0x24,
      trigMode: 0,
      destId: 0,
    });
    vm.setKernelDeviceState("ioapic", encodeIrqchip(ioapic));
    const back = decodeIrqchip(vm.kernelDeviceState("ioapic"));
    assert.ok(back.chip === "ioapic");
    assert.equal(decodeRedirectionEntry(back.ioapic.redirtbl[4]!).vector, 0x24);
    assert.equal(decodeRedirectionEntry(back.ioapic.redirtbl[4]!).mask, 0);

    const pit = decodePitState(vm.kernelDeviceState("pit"));
    const channel2 = pit.channels[2]!;
    Object.assign(channel2, { count: 0x1234, rwMode: 3, readState: 3, writeState: 3, mode: 2, gate: 1 });
    vm.setKernelDeviceState("pit", encodePitState(pit));
    const pitBack = decodePitState(vm.kernelDeviceState("pit"));
    const { countLoadTime: _loaded, ...rest } = pitBack.channels[2]!;
    const { countLoadTime: _written, ...wanted } = channel2;
    assert.deepEqual(rest, wanted, "KVM_SET_PIT2 reloads the count, so only count_load_time moves");
  },
});

Deno.test({
  name: "VcpuFd sregs, regs, fpu and debugregs survive a round trip through KVM",
  ignore: !kvmAvailable,
  async fn() {
    await using vm = await Vm.create({ memory: "2M" });
    const fd = vm.cpu(0).fd;

    const sregs = fd.getSregs();
    assert.equal(sregs.cs.selector, 0xf000, "reset state: CS = f000");
    assert.equal(sregs.cs.base, 0xffff_0000n, "reset state: CS base ffff0000");
    sregs.gdt = { base: 0x500n, limit: 0x2f };
    sregs.cr2 = 0xabc000n;
    fd.setSregs(sregs);
    assert.deepEqual(fd.getSregs(), sregs);

    const regs = fd.getRegs();
    assert.equal(regs.rip, 0xfff0n, "reset state: rip fff0");
    REGISTER_NAMES.forEach((name, i) => regs[name] = BigInt(i + 1) << 40n);
    regs.rflags = 0x2n;
    fd.setRegs(regs);
    assert.deepEqual(fd.getRegs(), regs);

    const fpu = fd.getFpu();
    fpu.xmm[3] = Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i);
    fpu.xmm[15] = new Uint8Array(16).fill(0x5a);
    fpu.fcw = 0x027f;
    fd.setFpu(fpu);
    const back = fd.getFpu();
    assert.deepEqual([...back.xmm[3]!], [...fpu.xmm[3]!]);
    assert.deepEqual([...back.xmm[15]!], [...fpu.xmm[15]!]);
    assert.equal(back.fcw, 0x027f);
    assert.equal(back.mxcsr, fpu.mxcsr);

    const debug = { db: [0x1000n, 0x2000n, 0x3000n, 0x4000n], dr6: 0xffff_0ff0n, dr7: 0x400n };
    fd.setDebugRegs(debug);
    assert.deepEqual(fd.getDebugRegs(), debug);
  },
});

Deno.test({
  name: "VcpuFd.getMsrs() and setMsrs() round-trip MSRs through KVM; an unknown MSR throws naming it",
  ignore: !kvmAvailable,
  async fn() {
    await using vm = await Vm.create({ memory: "2M" });
    const fd = vm.cpu(0).fd;
    fd.setMsrs([{ index: 0xc000_0082, data: 0xffff_ffff_8100_0000n }, { index: 0x174, data: 0x10n }]);
    const read = fd.getMsrs([0xc000_0082, 0x174]);
    assert.equal(read.get(0xc000_0082), 0xffff_ffff_8100_0000n);
    assert.equal(read.get(0x174), 0x10n);
    assert.throws(
      () => fd.getMsrs([0x174, 0xc0de_0001]),
      (e: Error) => e instanceof RangeError && /0xc0de0001/.test(e.message),
    );
  },
});
