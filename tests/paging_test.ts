/**
 * The page walker (core/debug/paging.ts) over page tables the tests write
 * into real guest RAM: 4-level with non-identity mappings, 2 MiB and 1 GiB
 * pages, missing levels, PAE, 32-bit paging with 4 MiB pages (PSE, PSE-36),
 * 5-level (CR4.LA57), paging off, and the `.pt` text.
 *
 * The walker tests use a GuestMemory of their own (no KVM needed); the
 * `vm.debug` tests load the tables into a VM, point the vCPU's CR3 at them,
 * and compare with KVM's own KVM_TRANSLATE where the host can run that mode.
 */

import assert from "node:assert/strict";
import { GuestMemory } from "../core/memory.ts";
import { formatTranslation, translate, type Translation } from "../core/debug/paging.ts";
import type { SpecialRegisters } from "../core/kvm/structs.ts";
import { Vm } from "../core/vm.ts";
import { guest, kvmAvailable, kvmMissingReason, toHex } from "./_helpers.ts";

function kvmTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, ignore: !kvmAvailable, fn });
}

const P = 1n;
const W = 2n;
const U = 4n;
const PS = 0x80n;
const PAT_LARGE = 0x1000n; // bit 12 of a large-page entry: PAT, not an address bit
const NX = 1n << 63n;

const CR0_PE = 1n;
const CR0_PG = 1n << 31n;
const CR4_PSE = 1n << 4n;
const CR4_PAE = 1n << 5n;
const CR4_LA57 = 1n << 12n;
const EFER_LME = 1n << 8n;
const EFER_LMA = 1n << 10n;
const EFER_NXE = 1n << 11n;

const KIB4 = 0x1000;
const MIB2 = 0x20_0000;
const GIB1 = 0x4000_0000;

type PagingRegisters = Pick<SpecialRegisters, "cr0" | "cr3" | "cr4" | "efer">;

/** Special registers for the walker: only the paging fields matter. */
function sregs(values: PagingRegisters): SpecialRegisters {
  return values as SpecialRegisters;
}

const LONG = { cr0: CR0_PE | CR0_PG, cr4: CR4_PAE, efer: EFER_LME | EFER_LMA };

/** Page tables allocated from a bump pointer in guest RAM (each table zeroed). */
class TableBuilder {
  #next: number;
  constructor(readonly memory: GuestMemory, base: number) {
    this.#next = base;
  }

  table(): number {
    const at = this.#next;
    this.#next += KIB4;
    this.memory.fill(at, KIB4, 0);
    return at;
  }

  /**
   * Maps one page in 4- or 5-level tables rooted at `root`, creating the
   * tables on the way; returns the leaf entry's physical address.
   */
  map64(
    root: number,
    virtual: bigint,
    physical: bigint,
    options: { levels?: 4 | 5; pageSize?: number; flags?: bigint } = {},
  ): number {
    const levels = options.levels ?? 4;
    const pageSize = options.pageSize ?? KIB4;
    const flags = options.flags ?? (P | W);
    const leafShift = pageSize === GIB1 ? 30n : pageSize === MIB2 ? 21n : 12n;
    let table = root;
    for (let shift = levels === 5 ? 48n : 39n; shift >= 12n; shift -= 9n) {
      const entryAddress = table + Number((virtual >> shift) & 0x1ffn) * 8;
      if (shift === leafShift) {
        this.memory.writeU64(entryAddress, physical | flags | (shift > 12n ? PS : 0n));
        return entryAddress;
      }
      let entry = this.memory.readU64(entryAddress);
      if ((entry & P) === 0n) {
        entry = BigInt(this.table()) | P | W | U;
        this.memory.writeU64(entryAddress, entry);
      }
      table = Number(entry & 0x000f_ffff_ffff_f000n);
    }
    throw new Error("unreachable");
  }
}

function withMemory(fn: (memory: GuestMemory) => void): () => void {
  return () => {
    const memory = GuestMemory.allocate(16 << 20);
    try {
      fn(memory);
    } finally {
      memory.close();
    }
  };
}

function hex(value: bigint | number): string {
  return `0x${value.toString(16)}`;
}

function mapped(t: Translation): bigint {
  assert.ok(t.physical !== undefined, `not mapped: ${t.fault}`);
  return t.physical;
}

// ---------------------------------------------------------------- 4-level

Deno.test(
  "translate() walks 4-level tables to a non-identity 4 KiB page, reporting every level",
  withMemory((memory) => {
    const virtual = 0xffff_8000_1234_5678n;
    const cr3 = 0x10000;
    // The tables by hand: indices 256 (PML4), 0 (PDPT), 0x91 (PD), 0x145 (PT).
    const index = (shift: bigint) => Number((virtual >> shift) & 0x1ffn);
    assert.deepEqual([index(39n), index(30n), index(21n), index(12n)], [256, 0, 0x91, 0x145]);
    memory.fill(cr3, 4 * KIB4, 0);
    memory.writeU64(cr3 + 256 * 8, 0x11000n | P | W | U);
    memory.writeU64(0x11000 + 0 * 8, 0x12000n | P | W | U);
    memory.writeU64(0x12000 + 0x91 * 8, 0x13000n | P | W);
    memory.writeU64(0x13000 + 0x145 * 8, 0x0076_5000n | P | NX);

    const t = translate(virtual, sregs({ ...LONG, cr3: BigInt(cr3) | 0x18n, efer: LONG.efer | EFER_NXE }), memory);
    assert.equal(t.paging, "4-level");
    assert.equal(t.physical, 0x76_5678n);
    assert.equal(t.pageSize, KIB4);
    assert.equal(t.fault, undefined);
    assert.equal(t.virtual, virtual);
    assert.deepEqual(t.levels.map((l) => l.name), ["PML4E", "PDPTE", "PDE", "PTE"]);
    assert.deepEqual(t.levels.map((l) => l.entryAddress), [
      BigInt(cr3 + 256 * 8),
      0x11000n,
      BigInt(0x12000 + 0x91 * 8),
      BigInt(0x13000 + 0x145 * 8),
    ]);
    assert.deepEqual(t.levels.map((l) => l.present), [true, true, true, true]);
    assert.deepEqual(t.levels.map((l) => l.writable), [true, true, true, false]);
    assert.deepEqual(t.levels.map((l) => l.user), [true, true, false, false]);
    assert.deepEqual(t.levels.map((l) => l.executable), [true, true, true, false], "NX on the PTE");
    assert.deepEqual(t.levels.map((l) => l.large), [false, false, false, false]);
    assert.equal(t.levels[3]!.entry, 0x0076_5000n | P | NX);

    // Without EFER.NXE bit 63 means nothing: the page is executable.
    const noNx = translate(virtual, sregs({ ...LONG, cr3: BigInt(cr3) }), memory);
    assert.equal(noNx.levels[3]!.executable, true);
    assert.equal(noNx.physical, 0x76_5678n);
  }),
);

Deno.test(
  "translate() maps 2 MiB pages from a PDE with PS, ignoring the PAT bit in the address",
  withMemory((memory) => {
    const tables = new TableBuilder(memory, 0x10000);
    const root = tables.table();
    const virtual = 0x0000_7f00_0034_5678n; // 0x345678 is an offset inside its 2 MiB page
    tables.map64(root, virtual & ~0x1f_ffffn, 0x4000_0000n, { pageSize: MIB2, flags: P | W | PAT_LARGE });
    const t = translate(virtual, sregs({ ...LONG, cr3: BigInt(root) }), memory);
    assert.equal(t.physical, 0x4000_0000n + (virtual & 0x1f_ffffn));
    assert.equal(t.pageSize, MIB2);
    assert.deepEqual(t.levels.map((l) => [l.name, l.large]), [["PML4E", false], ["PDPTE", false], ["PDE", true]]);
    assert.match(formatTranslation(t), /-> physical 0x40145678 \(2 MiB page\)$/);
  }),
);

Deno.test(
  "translate() maps 1 GiB pages from a PDPTE with PS, beyond the end of RAM",
  withMemory((memory) => {
    const tables = new TableBuilder(memory, 0x10000);
    const root = tables.table();
    const virtual = 0xffff_ff80_3abc_def0n;
    tables.map64(root, virtual & ~0x3fff_ffffn, 0x1_c000_0000n, { pageSize: GIB1, flags: P | PAT_LARGE });
    const t = translate(virtual, sregs({ ...LONG, cr3: BigInt(root) }), memory);
    assert.equal(t.physical, 0x1_c000_0000n | 0x3abc_def0n);
    assert.equal(t.pageSize, GIB1);
    assert.deepEqual(t.levels.map((l) => l.name), ["PML4E", "PDPTE"]);
    assert.equal(t.levels[1]!.large, true);
    assert.equal(t.levels[1]!.writable, false);
  }),
);

Deno.test(
  "translate() names the level that is not present",
  withMemory((memory) => {
    const tables = new TableBuilder(memory, 0x10000);
    const root = tables.table();
    const virtual = 0x0000_1234_5678_9000n;
    const regs = sregs({ ...LONG, cr3: BigInt(root) });

    let t = translate(virtual, regs, memory);
    assert.equal(t.physical, undefined);
    assert.equal(t.fault, "PML4E not present");
    assert.deepEqual(t.levels.map((l) => [l.name, l.present]), [["PML4E", false]]);

    const pte = tables.map64(root, virtual, 0x5000n);
    memory.writeU64(pte, 0n); // the PTE exists but is not present
    t = translate(virtual, regs, memory);
    assert.equal(t.fault, "PTE not present");
    assert.equal(t.levels.length, 4);

    // A neighbour in another PD: PDE not present there.
    t = translate(virtual + 0x20_0000n, regs, memory);
    assert.equal(t.fault, "PDE not present");
    assert.deepEqual(t.levels.map((l) => l.present), [true, true, false]);

    // Another PDPT slot: PDPTE not present.
    t = translate(virtual + (1n << 30n), regs, memory);
    assert.equal(t.fault, "PDPTE not present");
    assert.match(formatTranslation(t), /-> not mapped: PDPTE not present$/);

    // A present entry pointing at a table outside RAM.
    memory.writeU64(pte, 0n);
    const pdeAddress = translate(virtual, regs, memory).levels[2]!.entryAddress;
    memory.writeU64(Number(pdeAddress), 0x7_0000_0000n | P | W);
    t = translate(virtual, regs, memory);
    assert.equal(t.physical, undefined);
    const pteAddress = 0x7_0000_0000n + ((virtual >> 12n) & 0x1ffn) * 8n;
    assert.equal(t.fault, `PTE at ${hex(pteAddress)} is outside RAM`);
  }),
);

Deno.test(
  "translate() with CR3 outside RAM faults at the first level",
  withMemory((memory) => {
    const t = translate(0x1000n, sregs({ ...LONG, cr3: 0x8000_0000n }), memory);
    assert.equal(t.physical, undefined);
    assert.equal(t.fault, "PML4E at 0x80000000 is outside RAM");
    assert.deepEqual(t.levels, []);
  }),
);

// ---------------------------------------------------------------- 5-level

Deno.test(
  "translate() walks 5-level tables when CR4.LA57 is set",
  withMemory((memory) => {
    const tables = new TableBuilder(memory, 0x10000);
    const root = tables.table();
    // A 57-bit canonical address above the 48-bit range: PML5 index 0xab.
    const virtual = 0x00ab_cdef_1234_5678n;
    tables.map64(root, virtual & ~0xfffn, 0x9000n, { levels: 5 });
    const t = translate(virtual, sregs({ ...LONG, cr4: CR4_PAE | CR4_LA57, cr3: BigInt(root) }), memory);
    assert.equal(t.paging, "5-level");
    assert.equal(t.physical, 0x9678n);
    assert.deepEqual(t.levels.map((l) => l.name), ["PML5E", "PML4E", "PDPTE", "PDE", "PTE"]);
    assert.equal(t.levels[0]!.entryAddress, BigInt(root + 0xab * 8));

    // The same tables read as 4-level start one level down: a different walk.
    const four = translate(virtual, sregs({ ...LONG, cr3: BigInt(root) }), memory);
    assert.equal(four.paging, "4-level");
    assert.notEqual(four.physical, 0x9678n);

    // A 2 MiB page under 5-level paging.
    const big = 0xfffe_0000_0060_0000n; // canonical under LA57: bits 63..56 copy bit 56
    tables.map64(root, big, 0x80_0000n, { levels: 5, pageSize: MIB2 });
    const t2 = translate(big + 0x1234n, sregs({ ...LONG, cr4: CR4_PAE | CR4_LA57, cr3: BigInt(root) }), memory);
    assert.equal(t2.physical, 0x80_1234n);
    assert.equal(t2.pageSize, MIB2);
    assert.equal(t2.levels.length, 4);
  }),
);

// ---------------------------------------------------------------- PAE and 32-bit

Deno.test(
  "translate() walks PAE tables (32-byte aligned CR3) to 4 KiB and 2 MiB pages",
  withMemory((memory) => {
    const pdpt = 0x10020; // PAE CR3 is 32-byte aligned
    memory.fill(0x10000, 0x4000, 0);
    const pd = 0x11000;
    const pt = 0x12000;
    const virtual = 0xc040_1234n; // PDPTE 3, PDE 2, PTE 1
    memory.writeU64(pdpt + 3 * 8, BigInt(pd) | P);
    memory.writeU64(pd + 2 * 8, BigInt(pt) | P | W | U);
    memory.writeU64(pt + 1 * 8, 0x0abc_d000n | P | W | NX);
    memory.writeU64(pd + 5 * 8, 0x0160_0000n | P | PS | PAT_LARGE); // 2 MiB page at 0xc0a00000

    const regs = sregs({ cr0: CR0_PE | CR0_PG, cr4: CR4_PAE, efer: EFER_NXE, cr3: BigInt(pdpt) });
    const t = translate(virtual, regs, memory);
    assert.equal(t.paging, "pae");
    assert.equal(t.physical, 0x0abc_d234n);
    assert.equal(t.pageSize, KIB4);
    assert.deepEqual(t.levels.map((l) => l.name), ["PDPTE", "PDE", "PTE"]);
    assert.deepEqual(t.levels.map((l) => l.entryAddress), [BigInt(pdpt + 24), BigInt(pd + 16), BigInt(pt + 8)]);
    assert.equal(t.levels[2]!.executable, false);

    const large = translate(0xc0a5_4321n, regs, memory);
    assert.equal(large.physical, 0x0165_4321n);
    assert.equal(large.pageSize, MIB2);
    assert.equal(large.levels[1]!.large, true);

    const missing = translate(0x4000_0000n, regs, memory); // PDPTE 1
    assert.equal(missing.fault, "PDPTE not present");
    // Bits above 31 of a PAE linear address are ignored.
    assert.equal(translate(0x1_c040_1234n, regs, memory).physical, 0x0abc_d234n);
  }),
);

Deno.test(
  "translate() walks 32-bit tables: 4 KiB pages, 4 MiB pages with CR4.PSE, PSE-36 high bits",
  withMemory((memory) => {
    const pd = 0x10000;
    const pt = 0x11000;
    memory.fill(pd, 0x2000, 0);
    const pde = (virtual: number) => pd + (virtual >>> 22) * 4;
    // 4 KiB: 0x00403abc -> 0x00055abc
    memory.writeU32(pde(0x0040_3abc), pt | 0x7);
    memory.writeU32(pt + 3 * 4, 0x0005_5000 | 0x3);
    // 4 MiB: 0x80000000.. -> 0x00c00000..
    memory.writeU32(pde(0x8000_0000), 0x00c0_0000 | 0x83);
    // 4 MiB with PSE-36: bits 13-20 of the PDE are physical bits 32-39 (0x12 -> 0x12_0000_0000).
    memory.writeU32(pde(0x9000_0000), 0x0180_0000 | (0x12 << 13) | 0x83);

    const pse = sregs({ cr0: CR0_PE | CR0_PG, cr4: CR4_PSE, efer: 0n, cr3: BigInt(pd) });
    const small = translate(0x0040_3abcn, pse, memory);
    assert.equal(small.paging, "32-bit");
    assert.equal(small.physical, 0x0005_5abcn);
    assert.deepEqual(small.levels.map((l) => [l.name, l.entryAddress]), [["PDE", BigInt(pd + 4)], [
      "PTE",
      BigInt(pt + 12),
    ]]);
    assert.equal(small.levels[0]!.user, true);

    const big = translate(0x8012_3456n, pse, memory);
    assert.equal(big.physical, 0x00d2_3456n);
    assert.equal(big.pageSize, 4 << 20);
    assert.equal(big.levels.length, 1);
    assert.equal(big.levels[0]!.large, true);
    assert.match(formatTranslation(big), /-> physical 0xd23456 \(4 MiB page\)$/);

    assert.equal(mapped(translate(0x9000_0010n, pse, memory)), 0x12_0180_0010n);

    // Without CR4.PSE the PS bit is ignored: the PDE points at a page table (zeroed RAM: not present).
    const noPse = translate(0x8012_3456n, sregs({ ...pse, cr4: 0n }), memory);
    assert.equal(noPse.physical, undefined);
    assert.equal(noPse.fault, "PTE not present");
    assert.equal(noPse.levels[0]!.large, false);
    assert.equal(noPse.levels[1]!.entryAddress, 0x00c0_0000n + 0x123n * 4n);

    assert.equal(translate(0x4000_0000n, pse, memory).fault, "PDE not present");
  }),
);

Deno.test(
  "translate() with paging off returns the address itself (32 bits) and no levels",
  withMemory((memory) => {
    const t = translate(0x1_0012_3456n, sregs({ cr0: CR0_PE, cr4: 0n, efer: 0n, cr3: 0x5000n }), memory);
    assert.equal(t.paging, "none");
    assert.equal(t.physical, 0x0012_3456n);
    assert.deepEqual(t.levels, []);
    assert.match(formatTranslation(t), /^0x100123456: paging off\n {2}-> physical 0x123456 \(4 KiB page\)$/);
  }),
);

Deno.test(
  "formatTranslation() prints one line per level with its flags",
  withMemory((memory) => {
    const tables = new TableBuilder(memory, 0x10000);
    const root = tables.table();
    tables.map64(root, 0x4000_0000n, 0x20_0000n, { pageSize: MIB2, flags: P | U | NX });
    const text = formatTranslation(
      translate(0x4000_0010n, sregs({ ...LONG, efer: LONG.efer | EFER_NXE, cr3: BigInt(root) }), memory),
    );
    const lines = text.split("\n");
    assert.equal(lines[0], "0x40000010: 4-level paging");
    assert.match(lines[1]!, /^ {2}PML4E {2}@ 0x10000 +=.* P W U X$/);
    assert.match(lines[2]!, /^ {2}PDPTE {2}@ 0x11008 +=.* P W U X$/);
    assert.match(lines[3]!, /^ {2}PDE {4}@ 0x12000 +=.* P R U NX LARGE$/);
    assert.equal(lines[4], "  -> physical 0x200010 (2 MiB page)");
    assert.equal(lines.length, 5);
  }),
);

// ---------------------------------------------------------------- through vm.debug and KVM

/** A VM with dbg64.elf loaded (long mode, identity tables at 0x1000). */
async function dbgVm(): Promise<Vm> {
  const vm = await Vm.create({ memory: "16M" });
  try {
    await vm.load(await guest("dbg64.elf"));
  } catch (error) {
    await vm.close();
    throw error;
  }
  return vm;
}

kvmTest("Debugger.translate() walks the loader's identity tables (2 MiB pages)", async () => {
  await using vm = await dbgVm();
  const bump = vm.debug.symbol("bump");
  const t = vm.debug.translate("bump");
  assert.equal(t.paging, "4-level");
  assert.equal(t.physical, bump);
  assert.equal(t.pageSize, MIB2);
  assert.equal(vm.debug.physical(bump), Number(bump));
  assert.equal(vm.cpu(0).fd.translate(bump)?.physical, bump, "KVM agrees");
});

kvmTest(
  "Debugger.translate(), readVirtual() and instructions() follow a non-identity 4-level mapping set in CR3",
  async () => {
    await using vm = await dbgVm();
    const cpu = vm.cpu(0);
    const bump = vm.debug.symbol("bump");
    const tables = new TableBuilder(vm.memory, 0x80_0000);
    const root = tables.table();
    // Higher-half alias of the code page, and two adjacent virtual pages on swapped physical pages.
    const alias = 0xffff_ffff_8000_0000n;
    tables.map64(root, alias, bump & ~0xfffn);
    const split = 0xffff_c000_0000_0000n;
    tables.map64(root, split, 0x90_2000n);
    tables.map64(root, split + 0x1000n, 0x90_0000n);
    vm.memory.fill(0x90_0000, 0x3000, 0);
    vm.memory.write(0x90_2ffe, [0x11, 0x22]);
    vm.memory.write(0x90_0000, [0x33, 0x44]);
    cpu.setSregs({ cr3: BigInt(root) });

    const at = alias + (bump & 0xfffn);
    const t = vm.debug.translate(at);
    assert.equal(t.physical, bump);
    assert.equal(t.pageSize, KIB4);
    assert.equal(vm.debug.physical(at), Number(bump));
    assert.equal(cpu.fd.translate(at)?.physical, bump, "KVM_TRANSLATE agrees");
    assert.equal(vm.debug.instructions(at, 1)[0]!.text, "push rbp");
    assert.deepEqual(vm.debug.readVirtual(at, 4), vm.memory.read(Number(bump), 4));

    // A read across the page boundary stitches the two physical pages.
    assert.equal(toHex(vm.debug.readVirtual(split + 0xffen, 4)), "11223344");
    vm.debug.writeVirtual(split + 0xfffn, new Uint8Array([0xaa, 0xbb]));
    assert.equal(vm.memory.readU8(0x90_2fff), 0xaa);
    assert.equal(vm.memory.readU8(0x90_0000), 0xbb);

    // The identity mapping is gone with the new CR3: bump itself is not mapped.
    assert.throws(() => vm.debug.physical(bump), (error: Error) => {
      assert.ok(error instanceof RangeError);
      assert.match(error.message, /PML4E not present/);
      assert.match(error.message, new RegExp(hex(bump)));
      return true;
    });
    assert.throws(() => vm.debug.readVirtual(split + 0x1ff0n, 0x20), /Cannot read virtual 0xffffc00000002000: PTE/);
    assert.equal(cpu.fd.translate(bump), undefined, "KVM agrees it is unmapped");
  },
);

/**
 * Sets up 32-bit and then PAE page tables in a fresh VM's vCPU 0 (protected
 * mode) and calls `check` in each mode with hand-computed translations.
 */
async function withLegacyPaging(
  check: (vm: Vm, mode: "32-bit" | "pae", expected: [bigint, bigint | undefined][]) => void,
): Promise<void> {
  await using vm = await Vm.create({ memory: "16M" });
  const cpu = vm.cpu(0);
  const memory = vm.memory;
  cpu.enterProtectedMode({ entry: 0x10_0000 });

  // 32-bit tables at 0x20000 with one 4 KiB and one 4 MiB mapping.
  const pd = 0x2_0000;
  const pt = 0x2_1000;
  memory.fill(pd, 0x2000, 0);
  memory.writeU32(pd + (0x0040_3abc >>> 22) * 4, pt | 0x7);
  memory.writeU32(pt + 3 * 4, 0x0005_5000 | 0x3);
  memory.writeU32(pd + (0x8000_0000 >>> 22) * 4, 0x00c0_0000 | 0x83);
  cpu.setSregs({ cr3: BigInt(pd), cr4: CR4_PSE, cr0: cpu.sregs.cr0 | CR0_PG });
  check(vm, "32-bit", [[0x0040_3abcn, 0x0005_5abcn], [0x8012_3456n, 0x00d2_3456n], [0x4000_0000n, undefined]]);

  // PAE tables at 0x30000.
  const pdpt = 0x3_0000;
  const paePd = 0x3_1000;
  const paePt = 0x3_2000;
  memory.fill(pdpt, 0x3000, 0);
  memory.writeU64(pdpt + 3 * 8, BigInt(paePd) | P);
  memory.writeU64(paePd + 2 * 8, BigInt(paePt) | P | W);
  memory.writeU64(paePt + 1 * 8, 0x0abc_d000n | P | W);
  memory.writeU64(paePd + 5 * 8, 0x0060_0000n | P | PS);
  cpu.setSregs({ cr3: BigInt(pdpt), cr4: CR4_PAE });
  check(vm, "pae", [
    [0xc040_1234n, 0x0abc_d234n],
    [0xc0a5_4321n, 0x0065_4321n],
    [0x4000_0000n, undefined],
    [0xc000_0000n, undefined],
  ]);
}

kvmTest("Debugger.translate() follows PAE and 32-bit paging set in the vCPU", async () => {
  await withLegacyPaging((vm, mode, expected) => {
    assert.equal(vm.debug.translate(expected[0]![0]).paging, mode);
    for (const [address, physical] of expected) {
      assert.equal(vm.debug.translate(address).physical, physical, `${mode} ${hex(address)}`);
    }
  });
});

/**
 * Why KVM_TRANSLATE cannot be compared here, or undefined when it can: on
 * this project's nested/emulated KVM host, KVM_SET_SREGS silently drops
 * CR0.PG outside long mode (it reads back as paging off).
 */
async function legacyPagingMissingReason(): Promise<string | undefined> {
  if (!kvmAvailable) return kvmMissingReason;
  await using vm = await Vm.create({ memory: "16M" });
  const cpu = vm.cpu(0);
  cpu.enterProtectedMode({ entry: 0x10_0000 });
  vm.memory.fill(0x2_0000, 0x1000, 0);
  cpu.setSregs({ cr3: 0x2_0000n, cr4: CR4_PSE, cr0: cpu.sregs.cr0 | CR0_PG });
  return (cpu.fd.getSregs().cr0 & CR0_PG) !== 0n
    ? undefined
    : "this host's KVM drops CR0.PG outside long mode (KVM_SET_SREGS reads back paging off)";
}

const kvmTranslateIgnored = await legacyPagingMissingReason();
if (kvmAvailable && kvmTranslateIgnored !== undefined) {
  console.log(`KVM_TRANSLATE cross-check of 32-bit/PAE paging ignored: ${kvmTranslateIgnored}`);
}

Deno.test({
  name: "KVM_TRANSLATE agrees with Debugger.translate() under PAE and 32-bit paging",
  ignore: kvmTranslateIgnored !== undefined,
  fn: async () => {
    await withLegacyPaging((vm, mode, expected) => {
      const cpu = vm.cpu(0);
      assert.notEqual(cpu.fd.getSregs().cr0 & CR0_PG, 0n, "paging is on in KVM");
      for (const [address, physical] of expected) {
        assert.equal(cpu.fd.translate(address)?.physical, physical, `KVM, ${mode} ${hex(address)}`);
      }
    });
  },
});

// Regression: translate() does not check that a 64-bit linear address is canonical
// (core/debug/paging.ts, translate(): bits 63..47, or 63..56 with LA57, must be equal);
// it walks with bits 47..12 only, so a non-canonical address, on which the CPU raises
// #GP, "translates" like its canonical twin and readVirtual() reads through it.
Deno.test(
  "translate() refuses a non-canonical 64-bit address",
  withMemory((memory) => {
    const tables = new TableBuilder(memory, 0x10000);
    const root = tables.table();
    tables.map64(root, 0x0000_0000_0040_0000n, 0x5000n);
    const regs = sregs({ ...LONG, cr3: BigInt(root) });
    assert.equal(translate(0x0000_0000_0040_0123n, regs, memory).physical, 0x5123n);
    for (const address of [0x1234_0000_0040_0123n, 0x0000_8000_0040_0123n, 0xffff_0000_0040_0123n]) {
      const t = translate(address, regs, memory);
      assert.equal(t.physical, undefined, `${hex(address)} is not canonical under 4-level paging`);
      assert.match(t.fault ?? "", /canonical/);
    }
    // Under 5-level paging bit 56 is the sign bit: 0x0000_8000_... is canonical there, 0x0100_... is not.
    const five = sregs({ ...LONG, cr4: CR4_PAE | CR4_LA57, cr3: BigInt(root) });
    assert.match(translate(0x0100_0000_0040_0123n, five, memory).fault ?? "", /canonical/);
    assert.match(translate(0x0000_8000_0040_0123n, five, memory).fault ?? "", /not present/);
  }),
);
