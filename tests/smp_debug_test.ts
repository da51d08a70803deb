/**
 * Debugging every vCPU of an SMP guest (all-stop), through the scripting API
 * (`vm.debug`) and the REPL (`./hvsh --kernel ... --cpus N` with stdin
 * piped). The guest is tests/guests/smp_calls.c: like kvm-unit-tests'
 * smptest, every vCPU calls `ipi_test(n)` with its own number, one after the
 * other, and the run exits with status 1 when each call ran on the vCPU it
 * names. Real gdb drives the same guest in tests/gdb_smp_test.ts.
 *
 * Ignored without /dev/kvm.
 */

import assert from "node:assert/strict";
import { Vm } from "../mod.ts";
import type { DebugStop, ExitStop, StopEvent } from "../core/stop.ts";
import { KVM_CAP } from "../core/kvm/ioctls.ts";
import { guest, kvmAvailable, replPiped, RUN_TIMEOUT_MS } from "./_helpers.ts";

function kvmTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, ignore: !kvmAvailable, fn });
}

async function smpVm(cpus: number): Promise<Vm> {
  const vm = await Vm.create({ cpus });
  await vm.load(await guest("smp_calls.elf"));
  return vm;
}

function expectStop(stop: StopEvent, reason: "exit"): ExitStop;
function expectStop(stop: StopEvent, reason: DebugStop["reason"]): DebugStop;
function expectStop(stop: StopEvent, reason: StopEvent["reason"]): StopEvent {
  assert.equal(stop.reason, reason, `expected a ${reason} stop, got ${JSON.stringify(stop, (_, v) => String(v))}`);
  return stop;
}

/** The exit every run of smp_calls ends with when each ipi_test ran on its own vCPU. */
function expectPassed(vm: Vm, stop: StopEvent, cpus: number): void {
  assert.equal(expectStop(stop, "exit").code, 1, vm.serial.output);
  const calls = [...vm.serial.output.matchAll(/^ipi called, cpu (\d+)$/gm)].map((m) => Number(m[1]));
  assert.deepEqual(calls, Array.from({ length: cpus }, (_, i) => i));
  assert.match(vm.serial.output, new RegExp(`^nipis ${cpus}$`, "m"));
  assert.doesNotMatch(vm.serial.output, /wrong cpu/);
}

for (const cpus of [2, 3]) {
  kvmTest(
    `vm.debug with ${cpus} vCPUs: a breakpoint in ipi_test stops on every vCPU with its argument, selects it, and a step steps it alone`,
    async () => {
      await using vm = await smpVm(cpus);
      const ipiTest = vm.debug.symbol("ipi_test");
      const bp = vm.debug.break("ipi_test");
      for (let n = 0; n < cpus; n++) {
        const stop = expectStop(await vm.run({ timeout: RUN_TIMEOUT_MS }), "breakpoint");
        assert.equal(stop.cpu, n, "the stop names the vCPU that hit it");
        assert.equal(stop.rip, ipiTest);
        assert.equal(stop.symbol, "ipi_test");
        assert.equal(vm.debug.cpu.index, n, "the stop selects that vCPU");
        assert.equal(vm.cpu(n).regs.rdi, BigInt(n), "ipi_test(n) with n = the vCPU's number");
        // The step steps the selected vCPU only; every other vCPU stays where it stopped.
        const others = vm.cpus.filter((c) => c.index !== n).map((c) => ({ c, rip: c.regs.rip, rsp: c.regs.rsp }));
        const rsp = vm.cpu(n).regs.rsp;
        const step = expectStop(await vm.debug.step(), "step");
        assert.equal(step.cpu, n);
        assert.equal(step.rip, ipiTest + 1n, "push rbp executed");
        assert.equal(vm.cpu(n).regs.rsp, rsp - 8n);
        for (const other of others) {
          assert.equal(other.c.regs.rip, other.rip, `vCPU ${other.c.index} did not move`);
          assert.equal(other.c.regs.rsp, other.rsp, `vCPU ${other.c.index} did not move`);
        }
        const frames = vm.debug.backtrace().map((f) => f.symbol);
        assert.equal(frames[0], "ipi_test+1");
        assert.match(frames[1] ?? "", n === 0 ? /^main\+/ : /^ap_main\+/, "the selected vCPU's own stack");
        assert.equal(bp.hits, n + 1);
      }
      vm.debug.delete(bp.id);
      expectPassed(vm, await vm.run({ timeout: RUN_TIMEOUT_MS }), cpus);
    },
  );
}

kvmTest(
  "vm.debug.select(N) picks the vCPU that step, registers and translation act on; a bad index is refused",
  async () => {
    await using vm = await smpVm(2);
    vm.debug.break("ipi_test");
    expectStop(await vm.run({ timeout: RUN_TIMEOUT_MS }), "breakpoint");
    expectStop(await vm.run({ timeout: RUN_TIMEOUT_MS }), "breakpoint");
    assert.equal(vm.debug.cpu.index, 1);
    const vcpu0 = vm.cpu(0).regs.rip;
    vm.debug.select(0);
    assert.equal(vm.debug.cpu, vm.cpu(0));
    const [insn] = vm.debug.instructions(undefined, 1);
    assert.equal(insn!.address, vcpu0, "disassembly starts at the selected vCPU's rip");
    const step = expectStop(await vm.debug.step(), "step");
    assert.equal(step.cpu, 0);
    // vCPU 0 spins in `while (turn < cpus) cpu_pause();`: the next instruction, or the loop's jump target.
    if (!/^j/.test(insn!.text)) assert.equal(step.rip, vcpu0 + BigInt(insn!.length), insn!.text);
    assert.match(step.symbol ?? "", /^main\+/);
    assert.equal(vm.cpu(1).regs.rip, vm.debug.symbol("ipi_test"), "vCPU 1 stayed at its breakpoint");
    assert.throws(() => vm.debug.select(2), { name: "RangeError", message: /No vCPU 2: this VM has 2 \(0-1\)/ });
    // vCPU 1 resumes from its breakpoint (it stopped there) without hitting it again.
    vm.debug.clear();
    expectPassed(vm, await vm.run({ timeout: RUN_TIMEOUT_MS }), 2);
  },
);

kvmTest("a hardware breakpoint is set on every vCPU: each one stops at it", async () => {
  await using vm = await smpVm(3);
  vm.debug.hbreak("ipi_test");
  const stopped: number[] = [];
  for (let n = 0; n < 3; n++) {
    const stop = expectStop(await vm.run({ timeout: RUN_TIMEOUT_MS }), "breakpoint");
    assert.equal(stop.kind, "hardware");
    stopped.push(stop.cpu);
  }
  assert.deepEqual(stopped, [0, 1, 2]);
  vm.debug.clear();
  expectPassed(vm, await vm.run({ timeout: RUN_TIMEOUT_MS }), 3);
});

kvmTest("a conditional breakpoint stops only where its condition holds; the other vCPUs pass it", async () => {
  await using vm = await smpVm(3);
  const bp = vm.debug.break("ipi_test", { condition: (cpu) => cpu.index === 2 });
  const stop = expectStop(await vm.run({ timeout: RUN_TIMEOUT_MS }), "breakpoint");
  assert.equal(stop.cpu, 2);
  assert.equal(vm.cpu(2).regs.rdi, 2n);
  assert.equal(bp.hits, 1);
  assert.match(vm.serial.output, /ipi called, cpu 0\nipi called, cpu 1\n/, "vCPUs 0 and 1 ran through it");
  expectPassed(vm, await vm.run({ timeout: RUN_TIMEOUT_MS }), 3);
});

kvmTest("a write watchpoint catches an application processor's store and names that vCPU", async () => {
  await using vm = await smpVm(2);
  const wp = vm.debug.watch("nipis", 4, "write", { condition: (cpu) => cpu.index === 1 });
  const stop = expectStop(await vm.run({ timeout: RUN_TIMEOUT_MS }), "watchpoint");
  assert.equal(stop.cpu, 1);
  assert.equal(stop.id, wp.id);
  assert.equal(stop.oldValue, 1n, "vCPU 0 counted its call first");
  assert.equal(stop.newValue, 2n);
  assert.equal(vm.debug.symbolize(stop.pc!)?.startsWith("ipi_test+"), true, `store in ipi_test, pc ${stop.pc}`);
  vm.debug.clear();
  expectPassed(vm, await vm.run({ timeout: RUN_TIMEOUT_MS }), 2);
});

kvmTest("Debugger.finish() on an application processor returns into its caller on that vCPU", async () => {
  await using vm = await smpVm(2);
  vm.debug.break("ipi_test");
  expectStop(await vm.run({ timeout: RUN_TIMEOUT_MS }), "breakpoint");
  expectStop(await vm.run({ timeout: RUN_TIMEOUT_MS }), "breakpoint");
  vm.debug.clear();
  const stop = expectStop(await vm.debug.finish(), "step");
  assert.equal(stop.cpu, 1);
  assert.match(stop.symbol ?? "", /^ap_main\+/);
  assert.match(vm.serial.output, /ipi called, cpu 1\n/);
  expectPassed(vm, await vm.run({ timeout: RUN_TIMEOUT_MS }), 2);
});

kvmTest(
  "run({ only: 1 }) runs one application processor; its registers are refused while it runs, readable once paused",
  async () => {
    await using vm = await smpVm(2);
    // vCPU 1 waits for INIT/SIPI inside KVM_RUN: only vCPU 0 could wake it, and it is held.
    const running = vm.run({ only: 1, timeout: RUN_TIMEOUT_MS });
    while (!vm.running) await new Promise((resolve) => setTimeout(resolve, 1));
    assert.throws(() => vm.cpu(1).regs, { message: /Cannot access vCPU 1's state: it is running \(pause the VM/ });
    const rip0 = vm.cpu(0).regs.rip; // vCPU 0 is held: its state can be read
    const paused = await vm.pause("test");
    assert.equal(paused?.reason, "paused");
    assert.equal(paused?.cpu, 1, "the pause names the vCPU that ran");
    assert.equal((await running).reason, "paused");
    assert.equal(typeof vm.cpu(1).regs.rip, "bigint");
    assert.equal(vm.cpu(0).regs.rip, rip0, "vCPU 0 never ran");
    assert.equal(vm.serial.output, "");
    expectPassed(vm, await vm.run({ timeout: RUN_TIMEOUT_MS }), 2);
  },
);

kvmTest("KVM_KVMCLOCK_CTRL is answered for a stopped vCPU (refused: this guest has no kvm-clock)", async () => {
  await using vm = await smpVm(2);
  if (vm.checkExtension(KVM_CAP.KVMCLOCK_CTRL) <= 0) return; // the host has no such ioctl: nothing to check
  expectStop(await vm.run({ timeout: RUN_TIMEOUT_MS }), "exit");
  // A wrong ioctl number would throw (ENOTTY); a guest without kvm-clock gets EINVAL, reported as false.
  assert.equal(vm.cpu(1).fd.kvmclockCtrl(), false);
});

// ---------------------------------------------------------------- the REPL

/** `./hvsh --kernel smp_calls.elf --cpus N` with `lines` on stdin; plain output. */
async function repl(cpus: number, lines: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return await replPiped(["--kernel", await guest("smp_calls.elf"), "--cpus", String(cpus)], lines);
}

kvmTest(
  "REPL: .cpu lists and selects vCPUs; .regs, .step and .bt act on the selected one; stops select theirs",
  async () => {
    const run = await repl(2, [
      ".context off",
      ".break ipi_test",
      ".cont",
      ".cont",
      ".cpu",
      ".regs rdi",
      ".step",
      ".bt",
      ".cpu 0",
      ".regs rdi",
      ".cpu 5",
      ".delete 1",
      ".cont",
    ]);
    const out = run.stdout;
    assert.match(out, /\[breakpoint 1 at rip 0x[0-9a-f]+ <ipi_test> \(long mode, vCPU 0\)\]/);
    assert.match(out, /\[breakpoint 1 at rip 0x[0-9a-f]+ <ipi_test> \(long mode, vCPU 1\)\]/);
    assert.match(
      out,
      /^ {2}vCPU 0 {2}0x[0-9a-f]+ <main\+\d+> {2}long mode\n\* vCPU 1 {2}0x[0-9a-f]+ <ipi_test> {2}long mode$/m,
    );
    const rdis = [...out.matchAll(/^rdi = (0x[0-9a-f]+)$/gm)].map((m) => m[1]);
    assert.equal(rdis[0], "0x1", ".regs shows vCPU 1's argument");
    assert.match(out, /\[step at rip 0x[0-9a-f]+ <ipi_test\+1> \(long mode, vCPU 1\)\]/);
    assert.match(out, /^#0 {2}0x[0-9a-f]+ in ipi_test\+1\n#1 {2}0x[0-9a-f]+ in ap_main\+\d+$/m, ".bt of vCPU 1");
    assert.match(out, /^\* vCPU 0 {2}0x[0-9a-f]+ <main\+\d+> {2}long mode\n {2}vCPU 1 {2}0x[0-9a-f]+ <ipi_test\+1>/m);
    assert.notEqual(rdis[1], "0x1", "vCPU 0's rdi is its own");
    assert.match(run.stdout + run.stderr, /No vCPU 5: this VM has 2 \(0-1\)/);
    assert.match(out, /\[guest exited with value 0 \(status 1\)/);
    assert.match(out, /ipi called, cpu 0\n[^]*ipi called, cpu 1\n[^]*nipis 2/);
  },
);
