/**
 * The PC platform with real guests: interrupts from the PIT, the LAPIC timer
 * and the UART through the in-kernel irqchip; application processors started
 * with INIT/SIPI; fw_cfg and the ACPI/MP tables checked against what the host
 * configured; the i8042 reset line. Guests: tests/guests/{smp,pit_irq,
 * lapic_timer,serial_irq,fwcfg,madt,reset}.c.
 */

import assert from "node:assert/strict";
import { Vm } from "../mod.ts";
import { guest, kvmAvailable, symbol, waitUntil } from "./_helpers.ts";

const TIMEOUT = 20_000;

function kvmTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, ignore: !kvmAvailable, fn });
}

for (const cpus of [2, 4]) {
  kvmTest(
    `Vm.create({ cpus: ${cpus} }) lets the guest start ${cpus - 1} APs with INIT/SIPI, each printing its APIC id`,
    async () => {
      await using vm = await Vm.create({ cpus });
      await vm.load(await guest("smp.elf"));
      const stop = await vm.run({ timeout: TIMEOUT });
      assert.equal(stop.reason, "exit", vm.serial.output);
      assert.equal(stop.reason === "exit" ? stop.value : -1, 0);
      const ids = [...vm.serial.output.matchAll(/^ap (\d+)$/gm)].map((m) => Number(m[1])).sort();
      assert.deepEqual(ids, Array.from({ length: cpus - 1 }, (_, i) => i + 1));
      assert.match(vm.serial.output, new RegExp(`^bsp 0 saw ${cpus - 1} aps$`, "m"));
    },
  );
}

kvmTest("Vm.pause() stops every vCPU of an SMP guest and run() resumes them", async () => {
  await using vm = await Vm.create({ cpus: 2 });
  await vm.load(await guest("smp.elf"));
  // keep_running: the AP counts in ap_spins[1] and the BSP in bsp_spins for ever (see smp.c).
  vm.memory.writeU32(Number(symbol(vm, "keep_running")), 1);
  const apSpins = Number(symbol(vm, "ap_spins")) + 4 * 1;
  const bspSpins = Number(symbol(vm, "bsp_spins"));
  for (let round = 0; round < 2; round++) {
    const running = vm.run({ timeout: TIMEOUT });
    const counted = [vm.memory.readU32(apSpins), vm.memory.readU32(bspSpins)];
    await waitUntil(
      () => vm.memory.readU32(apSpins) !== counted[0] && vm.memory.readU32(bspSpins) !== counted[1],
      "both vCPUs counting",
      TIMEOUT,
    );
    await vm.pause();
    const stop = await running;
    assert.equal(stop.reason, "paused", vm.serial.output);
    // Stopped means the counters hold still. A vCPU left in KVM_RUN adds millions a second, so a few
    // event-loop turns spanning 50 ms show it; this watches for a change, it does not time anything.
    const held = [vm.memory.readU32(apSpins), vm.memory.readU32(bspSpins)];
    const until = performance.now() + 50;
    while (performance.now() < until) await new Promise((resolve) => setTimeout(resolve, 5));
    assert.deepEqual([vm.memory.readU32(apSpins), vm.memory.readU32(bspSpins)], held, "[AP, BSP] counters moved");
    // The AP is out of KVM_RUN (its registers read without blocking) and stopped inside ap_main's loop.
    const apRip = vm.cpu(1).regs.rip;
    const apMain = symbol(vm, "ap_main");
    const after = vm.image!.symbols.map((s) => s.address).filter((a) => a > apMain).reduce((a, b) => a < b ? a : b);
    assert.ok(apRip >= apMain && apRip < after, `AP rip 0x${apRip.toString(16)} in ap_main`);
  }
  assert.match(vm.serial.output, /^bsp 0 saw 1 aps$/m);
});

kvmTest("the PIT interrupts the guest through the in-kernel PIC (IRQ 0)", async () => {
  await using vm = await Vm.create();
  await vm.load(await guest("pit_irq.elf"));
  const stop = await vm.run({ timeout: TIMEOUT });
  assert.equal(stop.reason === "exit" ? stop.value : stop.reason, 0, vm.serial.output);
  assert.match(vm.serial.output, /pit ticks 5/);
});

kvmTest("the LAPIC timer interrupts the guest", async () => {
  await using vm = await Vm.create();
  await vm.load(await guest("lapic_timer.elf"));
  const stop = await vm.run({ timeout: TIMEOUT });
  assert.equal(stop.reason === "exit" ? stop.value : stop.reason, 0, vm.serial.output);
  assert.match(vm.serial.output, /lapic ticks 3/);
});

kvmTest("a received serial byte raises IRQ 4 and wakes a guest waiting with sti; hlt", async () => {
  await using vm = await Vm.create();
  await vm.load(await guest("serial_irq.elf"));
  const running = vm.run({ timeout: TIMEOUT });
  await vm.serial.waitFor("ready\n", { timeout: TIMEOUT });
  vm.serial.send("xy");
  await vm.serial.waitFor("xy", { timeout: TIMEOUT });
  vm.serial.send("q");
  const stop = await running;
  assert.equal(stop.reason === "exit" ? stop.value : stop.reason, 0, vm.serial.output);
  assert.equal(vm.serial.output, "ready\nxyq\nirq bye\n");
});

kvmTest("fw_cfg tells the guest the signature, RAM size, CPU count and command line the host configured", async () => {
  await using vm = await Vm.create({ memory: "96M", cpus: 3 });
  await vm.load(await guest("fwcfg.elf"), { cmdline: "console=ttyS0 answer=42" });
  const stop = await vm.run({ timeout: TIMEOUT });
  assert.equal(stop.reason === "exit" ? stop.value : stop.reason, 0, vm.serial.output);
  assert.equal(vm.serial.output.trim(), "sig=QEMU ram=96 cpus=3 cmdline=console=ttyS0 answer=42");
});

for (const cpus of [1, 3]) {
  kvmTest(`the ACPI MADT and the MP table list ${cpus} CPU(s) and the IOAPIC`, async () => {
    await using vm = await Vm.create({ cpus });
    await vm.load(await guest("madt.elf"));
    const stop = await vm.run({ timeout: TIMEOUT });
    assert.equal(stop.reason === "exit" ? stop.value : stop.reason, 0, vm.serial.output);
    assert.match(vm.serial.output, new RegExp(`^madt cpus=${cpus} ioapic=1 lapic=fee00000$`, "m"));
    assert.match(vm.serial.output, new RegExp(`^mp cpus=${cpus}$`, "m"));
  });
}

kvmTest("the i8042 reset command stops the VM with a shutdown of cause reset", async () => {
  await using vm = await Vm.create();
  await vm.load(await guest("reset.elf"));
  const stop = await vm.run({ timeout: TIMEOUT });
  assert.equal(stop.reason, "shutdown");
  assert.equal(stop.reason === "shutdown" ? stop.cause : "", "reset");
  assert.match(vm.serial.output, /resetting/);
});

kvmTest("Vm.create({ onReset: 'reset' }) reloads the image on an i8042 reset and runs it again", async () => {
  await using vm = await Vm.create({ onReset: "reset" });
  await vm.load(await guest("reset.elf"));
  const running = vm.run({ timeout: TIMEOUT });
  await vm.serial.waitFor("resetting\nresetting\n", { timeout: TIMEOUT });
  await vm.pause();
  const stop = await running;
  assert.equal(stop.reason, "paused");
});

kvmTest("unknown ports read all-ones and the PCI host answers 'no device' past the host bridge", async () => {
  await using vm = await Vm.create();
  // 32-bit: mov eax, 0x80000800 (bus 0, dev 1, fn 0); mov dx, 0xcf8; out dx, eax; mov dx, 0xcfc;
  // in eax, dx; cmp eax, -1; sete al; out 0xf4, al
  const code = [0x66, 0xb8, 0x00, 0x08, 0x00, 0x80, 0xba, 0xf8, 0x0c, 0x66, 0xef, 0xba, 0xfc, 0x0c, 0x66, 0xed];
  const tail = [0x66, 0x83, 0xf8, 0xff, 0x0f, 0x94, 0xc0, 0xe6, 0xf4];
  await vm.load(new Uint8Array([...code, ...tail]), { format: "flat" });
  const stop = await vm.run({ timeout: TIMEOUT });
  assert.equal(stop.reason === "exit" ? stop.value : stop.reason, 1);
});

kvmTest(
  "a real-mode guest waiting with sti; hlt is woken by the BIOS-state timer tick (IRQ 0 at vector 8)",
  async () => {
    await using vm = await Vm.create();
    // sti; hlt; mov al, 7; out 0xf4, al — as SeaBIOS leaves a PC: PIT at 18.2 Hz, IVT stubs that EOI.
    await vm.load(new Uint8Array([0xfb, 0xf4, 0xb0, 0x07, 0xe6, 0xf4]), { format: "flat" });
    const stop = await vm.run({ timeout: TIMEOUT });
    assert.equal(stop.reason === "exit" ? stop.value : stop.reason, 7);
    assert.equal(vm.memory.readU32(0x08 * 4), 0xf000_fea5, "IRQ 0's vector points at the EOI stub");
  },
);

kvmTest("ACPI S3: the guest sleeps, the RTC alarm wakes it, and it resumes at the FACS waking vector", async () => {
  await using vm = await Vm.create();
  await vm.load(await guest("sleep.bin"), { format: "flat" }); // no boot signature: flat on request
  assert.ok(vm.platform?.facs !== undefined);
  vm.cpu(0).setRegs({ rbx: vm.platform.facs });
  const stop = await vm.run({ timeout: TIMEOUT });
  // Exit value 0 means the resume code found WAK_STS and RTC_STS set in PM1a_STS: the alarm woke it.
  assert.equal(stop.reason === "exit" ? stop.value : stop.reason, 0, vm.serial.output);
  assert.equal(vm.serial.output, "sleeping\nawake\n");
});

kvmTest("ACPI S5 (SLP_TYP 0) powers the VM off: a shutdown of cause power-off", async () => {
  await using vm = await Vm.create();
  // mov dx, 0x604; mov ax, 0x2000 (SLP_EN, SLP_TYP 0); out dx, ax; mov al, 1; out 0xf4, al
  await vm.load(new Uint8Array([0xba, 0x04, 0x06, 0xb8, 0x00, 0x20, 0xef, 0xb0, 0x01, 0xe6, 0xf4]), { format: "flat" });
  const stop = await vm.run({ timeout: TIMEOUT });
  assert.equal(stop.reason, "shutdown");
  assert.equal(stop.reason === "shutdown" ? stop.cause : "", "power-off");
});

kvmTest("fw_cfg's file directory lists etc/e820, whose entries match the RAM present", async () => {
  await using vm = await Vm.create({ memory: "48M" });
  const fwCfg = vm.platform!.fwCfg;
  const file = fwCfg.files.find((f) => f.name === "etc/e820");
  assert.ok(file !== undefined, JSON.stringify(fwCfg.files));
  // Read it the way a guest does: select the key with a 16-bit write to 0x510, then byte reads from 0x511.
  const selector = vm.io.find(0x510)!;
  selector.device.write(0, 2, file.select);
  const bytes = Uint8Array.from({ length: file.size }, () => vm.io.find(0x511)!.device.read(1, 1));
  const view = new DataView(bytes.buffer);
  const entries = Array.from({ length: bytes.length / 20 }, (_, i) => ({
    address: view.getBigUint64(i * 20, true),
    length: view.getBigUint64(i * 20 + 8, true),
    type: view.getUint32(i * 20 + 16, true),
  }));
  assert.deepEqual(entries.at(-1), { address: 0x10_0000n, length: BigInt((48 << 20) - 0x10_0000), type: 1 });
  assert.deepEqual(entries[0], { address: 0n, length: 0x9_fc00n, type: 1 });
});
