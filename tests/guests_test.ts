/**
 * Vm end to end with the tiny guest kernels of tests/guests/ (each source's
 * header says what it does and what the host should see).
 */

import assert from "node:assert/strict";
import { Vm } from "../core/vm.ts";
import { describeStop } from "../core/stop.ts";
import { guest, kvmAvailable, RUN_TIMEOUT_MS, symbol, toHex } from "./_helpers.ts";

const MIB = 0x10_0000;

function kvmTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, ignore: !kvmAvailable, fn });
}

for (
  const [file, mode, hasSymbols] of [
    ["hello16.bin", "real", false],
    ["hello32.elf", "protected", true],
    ["hello64.elf", "long", true],
  ] as const
) {
  kvmTest(
    `Vm.run() prints "hello\\n" and stops with reason exit, value 0, code 1 in ${mode} mode (${file})`,
    async () => {
      await using vm = await Vm.create({ memory: "16M" });
      const image = await vm.load(await guest(file));
      assert.equal(image.mode, mode);
      const stop = await vm.run({ timeout: RUN_TIMEOUT_MS });
      assert.equal(vm.serial.output, "hello\n");
      assert.equal(stop.reason, "exit");
      if (stop.reason !== "exit") return;
      assert.deepEqual([stop.value, stop.code, stop.mode, stop.cpu], [0, 1, mode, 0]);
      if (hasSymbols) {
        // GUEST_EXIT is `mov al, 0; out 0xf4, al`: rip is past the out, inside _start.
        const offset = stop.rip - symbol(vm, "_start");
        assert.ok(offset > 0n && offset < 0x80n, `rip 0x${stop.rip.toString(16)}`);
        assert.equal(stop.symbol, `_start+${offset}`);
      } else {
        assert.ok(stop.rip > 0x7c00n && stop.rip < 0x7e00n, "rip inside the boot sector");
        assert.equal(stop.symbol, undefined, "a flat image has no symbols");
      }
      assert.equal(vm.lastStop, stop);
      assert.equal(vm.state, "stopped");
    },
  );
}

kvmTest("Vm.run() stops with reason exit and code 85 when the guest writes 42 to port 0xf4 (exit42.elf)", async () => {
  await using vm = await Vm.create({ memory: "16M" });
  await vm.load(await guest("exit42.elf"));
  const stop = await vm.run({ timeout: RUN_TIMEOUT_MS });
  assert.equal(stop.reason, "exit");
  assert.equal(stop.reason === "exit" && stop.value, 42);
  assert.equal(stop.reason === "exit" && stop.code, 85);
  assert.equal(vm.serial.output, "");
  assert.match(describeStop(stop), /value 42 \(status 85\)/);
});

kvmTest("Vm.run() stops with reason shutdown when the guest triple-faults (triple_fault.elf)", async () => {
  await using vm = await Vm.create({ memory: "16M" });
  await vm.load(await guest("triple_fault.elf"));
  const stop = await vm.run({ timeout: RUN_TIMEOUT_MS });
  assert.equal(stop.reason, "shutdown");
  assert.match(stop.reason === "shutdown" ? stop.detail : "", /triple fault/);
  assert.equal(stop.mode, "long");
  assert.equal(vm.serial.output, "");
});

kvmTest(
  "Vm.run() stops with reason halt, rip past the hlt, when the guest halts with interrupts off (halt.elf)",
  async () => {
    await using vm = await Vm.create({ memory: "16M" });
    await vm.load(await guest("halt.elf"));
    const stop = await vm.run({ timeout: RUN_TIMEOUT_MS });
    assert.equal(stop.reason, "halt");
    assert.equal(vm.serial.output, "halting\n");
    assert.equal(stop.rip, symbol(vm, "halt_here") + 2n, "halt_here: cli (1 byte); hlt (1 byte)");
    assert.equal(stop.symbol, "halt_here+2");
    assert.equal(stop.mode, "protected");
  },
);

kvmTest('Vm.serial.send("abq") is read by the echo guest, which answers "abq\\nbye\\n" (echo.elf)', async () => {
  await using vm = await Vm.create({ memory: "16M" });
  await vm.load(await guest("echo.elf"));
  vm.serial.send("abq");
  const stop = await vm.run({ timeout: RUN_TIMEOUT_MS });
  assert.equal(vm.serial.output, "abq\nbye\n");
  assert.equal(stop.reason === "exit" && stop.code, 1);
  assert.equal(vm.serial.pendingInput, 0);
});

kvmTest("Vm.run() keeps the event loop live: input sent after the guest echoes earlier input reaches it", async () => {
  await using vm = await Vm.create({ memory: "16M" });
  await vm.load(await guest("echo.elf"));
  const running = vm.run({ timeout: RUN_TIMEOUT_MS });
  assert.equal(vm.running, true);
  vm.serial.send("x");
  await vm.serial.waitFor("x", { timeout: RUN_TIMEOUT_MS });
  assert.equal(vm.state, "running");
  vm.serial.send("yq");
  const stop = await running;
  assert.equal(stop.reason, "exit");
  assert.equal(vm.serial.output, "xyq\nbye\n");
});

kvmTest(
  "Vm.run() of pattern.elf fills 64 KiB at 0x200000 with i*0x9E3779B1 and prints the 16 host-written seed bytes",
  async () => {
    await using vm = await Vm.create({ memory: "16M" });
    await vm.load(await guest("pattern.elf"));
    const seed = crypto.getRandomValues(new Uint8Array(16));
    vm.memory.write(0x30_0000, seed);
    const stop = await vm.run({ timeout: RUN_TIMEOUT_MS });
    assert.equal(stop.reason === "exit" && stop.code, 1);
    assert.equal(vm.serial.output, `seed=${toHex(seed)}\n`);
    const words = new Uint32Array(vm.memory.read(0x20_0000, 0x1_0000).buffer);
    let mismatches = 0;
    for (let i = 0; i < words.length; i++) if (words[i] !== Math.imul(i, 0x9e37_79b1) >>> 0) mismatches++;
    assert.equal(mismatches, 0);
    assert.equal(words[1], 0x9e37_79b1);
    assert.equal(vm.memory.readU32(0x21_0000), 0, "nothing written past the 64 KiB");
  },
);

kvmTest(
  "Vm.pause() stops a guest spinning without exits, at the spin loop, and the guest runs again",
  async () => {
    await using vm = await Vm.create({ memory: "16M" });
    await vm.load(await guest("spin.elf"));
    const spinHere = symbol(vm, "spin_here");
    assert.equal(await vm.pause(), undefined, "pause() with nothing running resolves undefined");

    for (let round = 0; round < 2; round++) {
      const running = vm.run();
      // Round 0 pauses once the guest reached its loop; round 1 at once, in the loop it resumed in.
      if (round === 0) await vm.serial.waitFor("spinning\n", { timeout: RUN_TIMEOUT_MS });
      const stop = await vm.pause();
      assert.equal(stop?.reason, "paused");
      assert.equal(stop?.rip, spinHere, "spin_here: jmp spin_here");
      assert.equal(stop?.symbol, "spin_here");
      assert.equal(stop?.mode, "long");
      assert.equal(await running, stop, "run() resolves with the same stop");
      assert.equal(vm.state, "stopped");
    }
    assert.equal(vm.serial.output, "spinning\n", "the guest resumed in place and did not restart");
  },
);

kvmTest("Vm.run({ timeout: 100 }) stops a spinning guest with reason timeout, not before 100 ms", async () => {
  await using vm = await Vm.create({ memory: "16M" });
  await vm.load(await guest("spin.elf"));
  const started = performance.now();
  const stop = await vm.run({ timeout: 100 });
  const elapsed = performance.now() - started;
  assert.equal(stop.reason, "timeout");
  assert.equal(stop.rip, symbol(vm, "spin_here"));
  // The API's promise (never before the timeout), not a speed: how much later depends on the host.
  assert.ok(elapsed >= 100, `stopped after ${elapsed.toFixed(1)} ms`);
});

kvmTest('Vm.load() hands a multiboot kernel "<path> <cmdline>" (mb_hello.elf)', async () => {
  await using vm = await Vm.create({ memory: "64M" });
  const path = await guest("mb_hello.elf");
  const image = await vm.load(path, { cmdline: "x y" });
  assert.equal(image.format, "multiboot");
  const stop = await vm.run({ timeout: RUN_TIMEOUT_MS });
  assert.equal(stop.reason === "exit" && stop.code, 1);
  assert.equal(vm.serial.output, `multiboot ok\ncmdline=${path} x y\nmem_upper=64512\nmods=0\n`);
});

kvmTest("Vm.load() hands a multiboot kernel its modules (mb_hello.elf)", async () => {
  await using vm = await Vm.create({ memory: "16M" });
  const content = `m${toHex(crypto.getRandomValues(new Uint8Array(6)))}`; // 13 chars: the guest prints up to 16
  await vm.load(await guest("mb_hello.elf"), {
    modules: [{ data: new TextEncoder().encode(`${content}\nignored`), cmdline: "initrd" }],
  });
  const stop = await vm.run({ timeout: RUN_TIMEOUT_MS });
  assert.equal(stop.reason === "exit" && stop.code, 1);
  assert.match(vm.serial.output, /\nmods=1\n/);
  assert.ok(vm.serial.output.endsWith(`\nmod0=${content}\n`), vm.serial.output);
});

kvmTest("Vm.load() loads an a.out-kludge multiboot image and zeroes its bss (mb_aout.bin)", async () => {
  await using vm = await Vm.create({ memory: "16M" });
  vm.memory.fill(MIB, 0x2_0000, 0xcc); // dirty RAM, so a bss the loader forgot to zero shows
  const image = await vm.load(await guest("mb_aout.bin"));
  assert.equal(image.format, "multiboot");
  const stop = await vm.run({ timeout: RUN_TIMEOUT_MS });
  assert.equal(vm.serial.output, "aout ok\nbss ok\n");
  assert.equal(stop.reason === "exit" && stop.code, 1);
});

kvmTest(
  "Vm.load() rejects a truncated ELF, leaves RAM and the vCPU untouched, and the VM still loads and runs",
  async () => {
    await using vm = await Vm.create({ memory: "16M" });
    const path = await guest("hello64.elf");
    const bytes = await Deno.readFile(path);
    const ripBefore = vm.cpu(0).regs.rip;
    await assert.rejects(vm.load(bytes.subarray(0, 0x1010)), SyntaxError);
    assert.ok(vm.memory.read(MIB, 0x1000).every((b) => b === 0), "nothing written at 1 MiB");
    // Below 0x400 lies the real-mode IVT the platform writes at creation; the boot GDT and page tables start at 0x500.
    assert.ok(vm.memory.read(0x400, 0xfc00).every((b) => b === 0), "no boot GDT or page tables written");
    assert.equal(vm.image, undefined);
    assert.equal(vm.cpu(0).regs.rip, ripBefore);
    await vm.load(bytes);
    const stop = await vm.run({ timeout: RUN_TIMEOUT_MS });
    assert.equal(stop.reason, "exit");
    assert.equal(vm.serial.output, "hello\n");
  },
);

kvmTest("Vm.load() of a missing file rejects with a message naming it", async () => {
  await using vm = await Vm.create({ memory: "16M" });
  await assert.rejects(vm.load("/nonexistent/kernel.elf"), /Cannot read kernel image \/nonexistent\/kernel\.elf/);
});

kvmTest("Vm.run() stops with reason internal-error when the guest executes from an address with no RAM", async () => {
  await using vm = await Vm.create();
  await vm.load(await guest("hello32.elf"));
  // mov eax, 0xfe000000; jmp eax — KVM cannot fetch instructions from MMIO on any host.
  vm.memory.write(0x100000, [0xb8, 0x00, 0x00, 0x00, 0xfe, 0xff, 0xe0]);
  const stop = await vm.run({ timeout: RUN_TIMEOUT_MS });
  assert.equal(stop.reason, "internal-error");
  assert.equal(stop.rip, 0xfe00_0000n);
  assert.match(
    describeStop(stop),
    /^guest crashed: KVM internal error: .* at rip 0xfe000000 \(protected mode, vCPU 0\)/,
  );
  // The VM stays usable: load and run again.
  await vm.load(await guest("hello32.elf"));
  assert.equal((await vm.run({ timeout: RUN_TIMEOUT_MS })).reason, "exit");
});
