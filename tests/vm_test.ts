/**
 * The Vm's scripting surface: port and MMIO hooks, unclaimed accesses, the
 * vCPU register API, CPUID options, several VMs at once and the VM life
 * cycle. Where no built guest fits, a few bytes of real-mode code are
 * assembled here, each line commented with its instruction.
 */

import assert from "node:assert/strict";
import { type IoAccess, type MmioAccess, Vm } from "../core/vm.ts";
import { describeStop } from "../core/stop.ts";
import { guest, kvmAvailable, RUN_TIMEOUT_MS, symbol } from "./_helpers.ts";

function kvmTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, ignore: !kvmAvailable, fn });
}

/** A flat real-mode image (loaded at 0x7c00) from its instructions' bytes. */
function flat(...instructions: number[][]): Uint8Array {
  return Uint8Array.from(instructions.flat());
}

const CODE = {
  /** Reads port 0x99 (claimed by nobody) and exits with the byte read. */
  inByte: flat(
    [0xe4, 0x99], // in   al, 0x99
    [0xe6, 0xf4], // out  0xf4, al
    [0xf4], //       hlt
  ),
  /** The same with a 16-bit read. */
  inWord: flat(
    [0xe5, 0x99], // in   ax, 0x99
    [0xe7, 0xf4], // out  0xf4, ax
    [0xf4], //       hlt
  ),
  /** The same with a 32-bit read. */
  inDword: flat(
    [0x66, 0xe5, 0x99], // in   eax, 0x99
    [0x66, 0xe7, 0xf4], // out  0xf4, eax
    [0xf4], //             hlt
  ),
  /** Writes 7 to port 0x98 (claimed by nobody), then exits with 1. */
  outByte: flat(
    [0xb0, 0x07], // mov  al, 7
    [0xe6, 0x98], // out  0x98, al
    [0xb0, 0x01], // mov  al, 1
    [0xe6, 0xf4], // out  0xf4, al
    [0xf4], //       hlt
  ),
  /** With 512 KiB of RAM, 0x90000 is unbacked: reads a dword there (MMIO) and exits with it. */
  mmioRead: flat(
    [0xb8, 0x00, 0x90], //       mov  ax, 0x9000
    [0x8e, 0xd8], //             mov  ds, ax
    [0x66, 0xa1, 0x00, 0x00], // mov  eax, [0]      ; physical 0x90000
    [0x66, 0xe7, 0xf4], //       out  0xf4, eax
    [0xf4], //                   hlt
  ),
};

// ---------------------------------------------------------------- port hooks

kvmTest(
  'Vm.onIo(0x3f8, hook) sees the bytes of "hello\\n" written out, and the serial port still gets them',
  async () => {
    await using vm = await Vm.create({ memory: "16M" });
    await vm.load(await guest("hello64.elf"));
    const seen: IoAccess[] = [];
    const remove = vm.onIo(0x3f8, (access) => void seen.push(access));
    const stop = await vm.run({ timeout: RUN_TIMEOUT_MS });
    assert.equal(stop.reason, "exit");
    assert.equal(String.fromCharCode(...seen.map((a) => a.data ?? -1)), "hello\n");
    assert.ok(seen.every((a) => a.port === 0x3f8 && a.size === 1 && a.direction === "out"));
    assert.equal(vm.serial.output, "hello\n");

    remove();
    await vm.load(await guest("hello64.elf"));
    await vm.run({ timeout: RUN_TIMEOUT_MS });
    assert.equal(vm.serial.output, "hello\nhello\n");
    assert.equal(seen.length, 6, "a removed hook sees nothing");
  },
);

kvmTest("Vm.onIo([lo, hi], hook) sees the LSR polls of the serial driver as reads inside its range", async () => {
  await using vm = await Vm.create({ memory: "16M" });
  await vm.load(await guest("hello32.elf"));
  const ports = new Set<string>();
  vm.onIo([0x3f8, 0x3ff], (a) => void ports.add(`${a.direction} 0x${a.port.toString(16)}`));
  await vm.run({ timeout: RUN_TIMEOUT_MS });
  assert.deepEqual([...ports].sort(), ["in 0x3fd", "out 0x3f8"]);
  assert.throws(() => vm.onIo([0x10, 0x1_0000], () => {}), RangeError);
});

kvmTest("Vm.onIo() answers an in from an unclaimed port with the hook's value", async () => {
  await using vm = await Vm.create({ memory: "2M" });
  await vm.load(CODE.inByte);
  const seen: IoAccess[] = [];
  vm.onIo(0x99, (access) => {
    seen.push(access);
    return 42;
  });
  const stop = await vm.run({ timeout: RUN_TIMEOUT_MS });
  assert.deepEqual(seen, [{ port: 0x99, size: 1, direction: "in" }]);
  assert.equal(stop.reason === "exit" && stop.value, 42);
  assert.equal(stop.reason === "exit" && stop.code, 85);
});

kvmTest("Vm.run() answers reads of unclaimed ports with all-ones of the access size", async () => {
  await using vm = await Vm.create({ memory: "2M" });
  const cases = [["byte", CODE.inByte, 0xff], ["word", CODE.inWord, 0xffff], [
    "dword",
    CODE.inDword,
    0xffff_ffff,
  ]] as const;
  for (const [size, code, ones] of cases) {
    await vm.load(code);
    const stop = await vm.run({ timeout: RUN_TIMEOUT_MS });
    assert.equal(stop.reason, "exit");
    assert.equal(stop.reason === "exit" && stop.value, ones, `in of a ${size}`);
    assert.equal(stop.mode, "real");
  }
});

kvmTest(
  'Vm.create({ unhandled: "stop" }) stops with reason unhandled-io naming the port, and the guest resumes',
  async () => {
    await using vm = await Vm.create({ memory: "2M", unhandled: "stop" });
    await vm.load(CODE.inByte);
    const stop = await vm.run({ timeout: RUN_TIMEOUT_MS });
    assert.equal(stop.reason, "unhandled-io");
    if (stop.reason !== "unhandled-io") return;
    assert.deepEqual({ port: stop.port, size: stop.size, direction: stop.direction }, {
      port: 0x99,
      size: 1,
      direction: "in",
    });
    assert.equal(stop.rip, 0x7c02n, "past the in");
    assert.match(describeStop(stop), /unhandled port in 0x99/);
    const next = await vm.run({ timeout: RUN_TIMEOUT_MS });
    assert.equal(next.reason === "exit" && next.value, 0xff, "the read completed with all-ones");

    await vm.load(CODE.outByte);
    const out = await vm.run({ timeout: RUN_TIMEOUT_MS });
    assert.equal(out.reason, "unhandled-io");
    assert.equal(out.reason === "unhandled-io" && out.direction, "out");
    assert.equal(out.reason === "unhandled-io" && out.port, 0x98);
    assert.equal(out.reason === "unhandled-io" && out.data, 7);
    assert.equal((await vm.run({ timeout: RUN_TIMEOUT_MS })).reason, "exit");
  },
);

kvmTest(
  'Vm.run({ unhandled: "ignore" }) overrides the VM\'s "stop", and a hooked port is never unhandled',
  async () => {
    await using vm = await Vm.create({ memory: "2M", unhandled: "stop" });
    await vm.load(CODE.inByte);
    assert.equal((await vm.run({ timeout: RUN_TIMEOUT_MS, unhandled: "ignore" })).reason, "exit");
    await vm.load(CODE.inByte);
    vm.onIo(0x99, () => {}); // watches without answering
    const stop = await vm.run({ timeout: RUN_TIMEOUT_MS });
    assert.equal(stop.reason === "exit" && stop.value, 0xff);
  },
);

// ---------------------------------------------------------------- MMIO hooks

kvmTest(
  "Vm.onMmio([0xfe000000, 0xfe000fff]) sees each 4-byte write of bench_mmio.elf with the value of eax",
  async () => {
    await using vm = await Vm.create({ memory: "16M" });
    await vm.load(await guest("bench_mmio.elf"));
    vm.cpu(0).setRegs({ rcx: 3, rax: 0xcafe_f00d });
    const seen: MmioAccess[] = [];
    vm.onMmio([0xfe00_0000, 0xfe00_0fff], (access) => void seen.push(access));
    const stop = await vm.run({ timeout: RUN_TIMEOUT_MS });
    assert.equal(stop.reason === "exit" && stop.code, 1);
    assert.deepEqual(
      seen,
      new Array(3).fill({ address: 0xfe00_0000n, size: 4, direction: "write", data: 0xcafe_f00dn }),
    );
  },
);

kvmTest(
  'Vm.create({ unhandled: "stop" }) stops with reason unhandled-mmio for each unclaimed write, then the guest goes on',
  async () => {
    await using vm = await Vm.create({ memory: "16M", unhandled: "stop" });
    await vm.load(await guest("bench_mmio.elf"));
    vm.cpu(0).setRegs({ rcx: 2, rax: 0x1234 });
    const loop = symbol(vm, "mmio_loop");
    for (let i = 0; i < 2; i++) {
      const stop = await vm.run({ timeout: RUN_TIMEOUT_MS });
      assert.equal(stop.reason, "unhandled-mmio");
      if (stop.reason !== "unhandled-mmio") return;
      assert.deepEqual(
        { address: stop.address, size: stop.size, direction: stop.direction, data: stop.data },
        { address: 0xfe00_0000n, size: 4, direction: "write", data: 0x1234n },
      );
      assert.ok(stop.rip > loop && stop.rip < loop + 16n, "rip past the mov in mmio_loop");
      assert.match(describeStop(stop), /unhandled MMIO write at 0xfe000000/);
    }
    const last = await vm.run({ timeout: RUN_TIMEOUT_MS });
    assert.equal(last.reason === "exit" && last.code, 1);
  },
);

kvmTest("Vm.onMmio() answers an MMIO read; unanswered reads see all-ones or stop when asked to", async () => {
  await using vm = await Vm.create({ memory: "512K" });
  await vm.load(CODE.mmioRead);
  const remove = vm.onMmio([0x9_0000n, 0x9_0fffn], (access) => {
    assert.deepEqual(access, { address: 0x9_0000n, size: 4, direction: "read" });
    return 0x1234_5678;
  });
  const answered = await vm.run({ timeout: RUN_TIMEOUT_MS });
  assert.equal(answered.reason === "exit" && answered.value, 0x1234_5678);

  remove();
  await vm.load(CODE.mmioRead);
  const ones = await vm.run({ timeout: RUN_TIMEOUT_MS });
  assert.equal(ones.reason === "exit" && ones.value, 0xffff_ffff);

  await vm.load(CODE.mmioRead);
  const stop = await vm.run({ timeout: RUN_TIMEOUT_MS, unhandled: "stop" });
  assert.equal(stop.reason, "unhandled-mmio");
  assert.equal(stop.reason === "unhandled-mmio" && stop.direction, "read");
  assert.equal(stop.reason === "unhandled-mmio" && stop.address, 0x9_0000n);
  const after = await vm.run({ timeout: RUN_TIMEOUT_MS });
  assert.equal(after.reason === "exit" && after.value, 0xffff_ffff);
});

// ---------------------------------------------------------------- hooks that throw

kvmTest("Vm.run() rejects with the error a hook throws, and the VM runs on from the next instruction", async () => {
  await using vm = await Vm.create({ memory: "16M" });
  await vm.load(await guest("hello64.elf"));
  const boom = new Error("hook failed");
  const remove = vm.onIo(0x3f8, () => {
    throw boom;
  });
  await assert.rejects(vm.run({ timeout: RUN_TIMEOUT_MS }), (e) => e === boom);
  assert.equal(vm.state, "stopped");
  assert.equal(vm.running, false);
  remove();
  const stop = await vm.run({ timeout: RUN_TIMEOUT_MS });
  assert.equal(stop.reason, "exit");
  // Hooks run before the device: the access whose hook threw is dropped, the guest is not restarted.
  assert.equal(vm.serial.output, "ello\n");
});

// ---------------------------------------------------------------- vCPU API

kvmTest("Vcpu.regs property assignment writes the register through to KVM", async () => {
  await using vm = await Vm.create({ memory: "2M" });
  const cpu = vm.cpu(0);
  cpu.regs.rax = 5n;
  assert.equal(cpu.regs.rax, 5n);
  assert.equal(cpu.fd.getRegs().rax, 5n, "KVM holds it");
  // Numbers work too (from JavaScript; Registers types the properties as bigint).
  (cpu.regs as unknown as Record<string, number>).r15 = -1;
  assert.equal(cpu.fd.getRegs().r15, 0xffff_ffff_ffff_ffffn);
  cpu.regs.rbx = 0x1_0000_0000_0000n;
  assert.equal(cpu.regs.rbx, 0x1_0000_0000_0000n);
  assert.equal(cpu.regs.rax, 5n, "other registers kept");
  assert.throws(() => {
    (cpu.regs as unknown as Record<string, number>).eax = 1;
  }, (e: Error) => e instanceof RangeError && /eax/.test(e.message));
  assert.throws(() => {
    (cpu.regs as unknown as Record<string, unknown>).rcx = "9";
  }, (e: Error) => e instanceof TypeError && /rcx/.test(e.message));
});

kvmTest(
  "Vcpu.setRegs() writes the named registers, and names a bad register or value without writing any",
  async () => {
    await using vm = await Vm.create({ memory: "2M" });
    const cpu = vm.cpu(0);
    cpu.setRegs({ rsi: 0x10, rdi: 0x20n });
    const rip = cpu.regs.rip;
    assert.deepEqual([cpu.fd.getRegs().rsi, cpu.fd.getRegs().rdi, cpu.fd.getRegs().rip], [0x10n, 0x20n, rip]);
    assert.throws(
      () => cpu.setRegs({ rsi: 1, rxx: 2 } as unknown as Record<string, number>),
      (e: Error) => e instanceof RangeError && /rxx/.test(e.message),
    );
    assert.throws(
      () => cpu.setRegs({ rdi: 1.5 }),
      (e: Error) => e instanceof TypeError && /rdi/.test(e.message) && /1\.5/.test(e.message),
    );
    assert.equal(cpu.fd.getRegs().rsi, 0x10n, "nothing written by a refused call");
    assert.equal(cpu.fd.getRegs().rdi, 0x20n);
  },
);

kvmTest("Vcpu.sregs and mode follow the loader's mode: real, protected and long", async () => {
  await using vm = await Vm.create({ memory: "16M" });
  const cpu = vm.cpu(0);

  await vm.load(await guest("hello16.bin"));
  let sregs = cpu.sregs;
  assert.equal(cpu.mode, "real");
  assert.equal(cpu.bitness, 16);
  assert.equal(sregs.cr0 & 1n, 0n, "CR0.PE clear");
  assert.deepEqual([sregs.cs.selector, sregs.cs.base, cpu.regs.rip], [0, 0n, 0x7c00n]);

  await vm.load(await guest("hello32.elf"));
  sregs = cpu.sregs;
  assert.equal(cpu.mode, "protected");
  assert.equal(cpu.bitness, 32);
  assert.equal(sregs.cr0 & 0x8000_0001n, 1n, "CR0.PE set, PG clear");
  assert.equal(sregs.cs.db, true);
  assert.equal(sregs.efer, 0n);
  assert.equal(cpu.regs.rip, symbol(vm, "_start"));

  await vm.load(await guest("hello64.elf"));
  sregs = cpu.sregs;
  assert.equal(cpu.mode, "long");
  assert.equal(cpu.bitness, 64);
  assert.equal(sregs.cr0 & 0x8000_0001n, 0x8000_0001n, "CR0.PE and PG set");
  assert.equal(sregs.cr4 & 0x20n, 0x20n, "CR4.PAE");
  assert.equal(sregs.efer & 0x500n, 0x500n, "EFER.LME and LMA");
  assert.equal(sregs.cs.l, true);
  assert.equal(cpu.getMsr("efer"), sregs.efer);
  assert.equal(cpu.getMsr("EFER"), sregs.efer);
  assert.equal(cpu.getMsr(0xc000_0080), sregs.efer);
  assert.throws(() => cpu.getMsr("nope"), (e: Error) => e instanceof RangeError && /"nope"/.test(e.message));

  const copy = cpu.sregs;
  copy.cr3 = 0x1234_5000n;
  assert.notEqual(cpu.sregs.cr3, 0x1234_5000n, "sregs is a copy; only setSregs() writes");
});

kvmTest("Vcpu.setMsr() writes an MSR by name that getMsr() and KVM read back", async () => {
  await using vm = await Vm.create({ memory: "2M" });
  const cpu = vm.cpu(0);
  cpu.setMsr("lstar", 0xffff_ffff_8100_0000n);
  assert.equal(cpu.getMsr("lstar"), 0xffff_ffff_8100_0000n);
  assert.equal(cpu.fd.getMsrs([0xc000_0082]).get(0xc000_0082), 0xffff_ffff_8100_0000n);
});

kvmTest('Vm.create({ cpuid: { hide: ["cx16"] } }) clears leaf 1 ECX bit 13 in the vCPU\'s CPUID', async () => {
  const leaf1Ecx = (vm: Vm) => vm.cpu(0).fd.getCpuid().find((e) => e.function === 1)?.ecx ?? 0;
  {
    await using plain = await Vm.create({ memory: "2M" });
    assert.notEqual(leaf1Ecx(plain) & (1 << 13), 0, "precondition: this host offers CX16");
  }
  await using hidden = await Vm.create({ memory: "2M", cpuid: { hide: ["cx16"] } });
  assert.equal(leaf1Ecx(hidden) & (1 << 13), 0);
  assert.notEqual(leaf1Ecx(hidden) & (1 << 0), 0, "SSE3 (bit 0) is still offered");
});

kvmTest("Vm.create() refuses an unknown CPUID feature with a RangeError naming it", async () => {
  await assert.rejects(
    async () => await Vm.create({ memory: "2M", cpuid: { hide: ["cx16", "warp-drive"] } }),
    (e: Error) => e instanceof RangeError && /"warp-drive"/.test(e.message),
  );
});

kvmTest(
  "Vm.create({ cpus: 2 }) gives each vCPU its APIC id in CPUID leaf 1 and vm.cpu() refuses a missing one",
  async () => {
    await using vm = await Vm.create({ memory: "2M", cpus: 2 });
    assert.equal(vm.cpus.length, 2);
    const apicId = (i: number) => (vm.cpu(i).fd.getCpuid().find((e) => e.function === 1)?.ebx ?? 0) >>> 24;
    assert.deepEqual([apicId(0), apicId(1)], [0, 1]);
    assert.throws(() => vm.cpu(2), (e: Error) => e instanceof RangeError && /No vCPU 2/.test(e.message));
    await assert.rejects(async () => await Vm.create({ cpus: 0 }), RangeError);
  },
);

// ---------------------------------------------------------------- several VMs, life cycle

kvmTest("Several VMs run at once, each with its own memory, serial port and stop", async () => {
  await using a = await Vm.create({ memory: "16M" });
  await using b = await Vm.create({ memory: "16M" });
  await using c = await Vm.create({ memory: "16M" });
  await using spinner = await Vm.create({ memory: "16M" });
  await a.load(await guest("hello16.bin"));
  await b.load(await guest("hello32.elf"));
  await c.load(await guest("exit42.elf"));
  await spinner.load(await guest("spin.elf"));
  const spinning = spinner.run();
  const stops = await Promise.all([a, b, c].map((vm) => vm.run({ timeout: RUN_TIMEOUT_MS })));
  assert.deepEqual(stops.map((s) => [s.reason, s.mode, s.reason === "exit" && s.code]), [
    ["exit", "real", 1],
    ["exit", "protected", 1],
    ["exit", "protected", 85],
  ]);
  assert.deepEqual([a.serial.output, b.serial.output, c.serial.output], ["hello\n", "hello\n", ""]);
  assert.equal(spinner.running, true, "the spinning VM kept running meanwhile");
  await spinner.serial.waitFor("spinning\n", { timeout: RUN_TIMEOUT_MS });
  assert.equal((await spinner.pause())?.reason, "paused");
  assert.equal((await spinning).reason, "paused");
  a.memory.writeU32(0x8000, 0xaaaa_aaaa);
  assert.equal(b.memory.readU32(0x8000), 0, "memories are separate");
});

kvmTest("Vm.run() and Vm.load() refuse while the VM runs, naming the reason", async () => {
  await using vm = await Vm.create({ memory: "16M" });
  await vm.load(await guest("spin.elf"));
  const running = vm.run();
  await assert.rejects(vm.run(), /Cannot run: the VM vm\d+ is running/);
  await assert.rejects(vm.load(await guest("hello64.elf")), /Cannot load an image: the VM vm\d+ is running/);
  await vm.pause();
  assert.equal((await running).reason, "paused");
});

kvmTest("Vm.onStop() observers see every stop until unsubscribed", async () => {
  await using vm = await Vm.create({ memory: "2M" });
  const reasons: string[] = [];
  const unsubscribe = vm.onStop((stop) => reasons.push(stop.reason));
  await vm.load(CODE.inByte);
  await vm.run({ timeout: RUN_TIMEOUT_MS });
  unsubscribe();
  await vm.load(CODE.inByte);
  await vm.run({ timeout: RUN_TIMEOUT_MS });
  assert.deepEqual(reasons, ["exit"]);
});

kvmTest("Vm.close() twice is fine, and a closed VM refuses use with a clear error", async () => {
  const vm = await Vm.create({ memory: "2M", name: "tiny" });
  await vm.load(CODE.inByte);
  await vm.close();
  await vm.close();
  assert.equal(vm.state, "closed");
  await assert.rejects(vm.run(), /Cannot run: the VM tiny is closed/);
  await assert.rejects(vm.load(CODE.inByte), /Cannot load an image: the VM tiny is closed/);
  assert.throws(() => vm.memory.readU8(0x7c00), /closed/);
});

kvmTest("Vm.close() of a running VM pauses it first and run() resolves", async () => {
  const vm = await Vm.create({ memory: "16M" });
  await vm.load(await guest("spin.elf"));
  const running = vm.run();
  await vm.serial.waitFor("spinning\n", { timeout: RUN_TIMEOUT_MS });
  await vm.close();
  assert.equal((await running).reason, "paused");
  assert.equal(vm.state, "closed");
});

// Regression (core/vcpu.ts Vcpu / core/kvm/kvm.ts VcpuFd): after Vm.close() the vCPU once still issued
// ioctls on its closed fd number; once another VM reused that number, `closed.cpu(0).regs` read (and setRegs
// wrote) the other VM's vCPU. VcpuFd methods check #closed and throw "vCPU 0 is closed".
kvmTest("Vcpu of a closed VM throws instead of reaching another VM's vCPU through a reused fd", async () => {
  const closed = await Vm.create({ memory: "2M" });
  await closed.close();
  await using other = await Vm.create({ memory: "2M" });
  other.cpu(0).setRegs({ rax: 0x0bad_cafe });
  const cpu = closed.cpu(0);
  cpu.invalidate();
  assert.throws(() => cpu.regs, /closed/);
  assert.throws(() => cpu.setRegs({ rax: 1 }), /closed/);
  assert.equal(other.cpu(0).fd.getRegs().rax, 0x0bad_cafen, "the other VM's registers are untouched");
});

Deno.test({
  name: "Vm.create({ cpuid: (index) => ... }) gives each vCPU its own APIC id and vendor in CPUID",
  ignore: !kvmAvailable,
  fn: async () => {
    await using vm = await Vm.create({
      cpus: 2,
      cpuid: (index) => ({ apicId: 10 + index, vendor: index === 0 ? "GenuineIntel" : "AuthenticAMD" }),
    });
    const leaf = (index: number, fn: number) => vm.cpu(index).cpuid.find((e) => e.function === fn)!;
    assert.equal(leaf(0, 1).ebx >>> 24, 10);
    assert.equal(leaf(1, 1).ebx >>> 24, 11);
    const vendor = (index: number) => {
      const e = leaf(index, 0);
      const bytes = new Uint8Array(new Uint32Array([e.ebx, e.edx, e.ecx]).buffer);
      return new TextDecoder().decode(bytes);
    };
    assert.equal(vendor(0), "GenuineIntel");
    assert.equal(vendor(1), "AuthenticAMD");
    await assert.rejects(() => Vm.create({ cpuid: { apicId: 300 } }), /Invalid APIC id 300/);
  },
});
