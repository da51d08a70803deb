/**
 * Reverse execution on KVM (`vm.debug.record()` and the reverse commands),
 * through the scripting API and the REPL, on tests/guests/rloop.c: a loop
 * that adds to `total`, calls `tick(i)` and prints a line each round, every
 * character a port read of the line status and a port write. Real gdb drives
 * the same guest in tests/gdb_reverse_test.ts.
 *
 * What a user sees is compared with what a plain forward run shows: the
 * registers and memory of the same moment reached forwards by single steps,
 * the output and exit of an unrecorded run.
 *
 * Ignored without /dev/kvm.
 */

import assert from "node:assert/strict";
import { ReplayDivergenceError, Vm } from "../mod.ts";
import type { DebugStop, StopEvent } from "../core/stop.ts";
import { guest, kvmAvailable, replPiped, RUN_TIMEOUT_MS } from "./_helpers.ts";

function kvmTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, ignore: !kvmAvailable, fn });
}

async function rloop(): Promise<Vm> {
  const vm = await Vm.create({ memory: "16M" });
  await vm.load(await guest("rloop.elf"));
  return vm;
}

function u64(vm: Vm, name: string, index = 0): bigint {
  const bytes = vm.memory.read(Number(vm.debug.symbol(name)) + index * 8, 8);
  return new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true);
}

function expectDebugStop(stop: StopEvent, reason: DebugStop["reason"]): DebugStop {
  assert.equal(stop.reason, reason, `expected a ${reason} stop, got ${JSON.stringify(stop, (_, v) => String(v))}`);
  return stop as DebugStop;
}

/** What an unrecorded run of rloop prints and how it ends. */
async function plainRun(): Promise<{ output: string; code: number }> {
  await using vm = await rloop();
  const stop = await vm.run({ timeout: RUN_TIMEOUT_MS });
  assert.equal(stop.reason, "exit");
  return { output: vm.serial.output, code: stop.reason === "exit" ? stop.code : -1 };
}

kvmTest(
  "reverseContinue from the third hit of a breakpoint lands on the second, memory as it was; forward again reaches the same exit and output",
  async () => {
    const plain = await plainRun();
    await using vm = await rloop();
    vm.debug.record();
    const bp = vm.debug.break("tick");
    for (let i = 0; i < 3; i++) expectDebugStop(await vm.run({ timeout: RUN_TIMEOUT_MS }), "breakpoint");
    assert.equal(vm.cpu(0).regs.rdi, 2n);
    assert.equal(u64(vm, "total"), 8n);
    assert.deepEqual([0, 1, 2].map((i) => u64(vm, "ticks", i)), [1n, 3n, 0n]);
    const outputAtThird = vm.serial.output;

    const back = expectDebugStop(await vm.debug.reverseContinue(), "breakpoint");
    assert.equal(back.id, bp.id);
    assert.equal(back.symbol, "tick");
    assert.equal(vm.cpu(0).regs.rdi, 1n, "tick(1): the second hit");
    assert.equal(u64(vm, "total"), 3n, "total as it was at the second hit");
    assert.deepEqual([0, 1, 2].map((i) => u64(vm, "ticks", i)), [1n, 0n, 0n], "ticks[1] not written yet");
    assert.equal(vm.serial.output, outputAtThird, "going back prints nothing");
    assert.equal(vm.debug.recording?.replaying, true);

    // Forward again: the third hit, then the end, as an unrecorded run.
    const again = expectDebugStop(await vm.run({ timeout: RUN_TIMEOUT_MS }), "breakpoint");
    assert.equal(again.rip, back.rip);
    assert.equal(vm.cpu(0).regs.rdi, 2n);
    assert.equal(u64(vm, "total"), 8n);
    vm.debug.delete(bp.id);
    const end = await vm.run({ timeout: RUN_TIMEOUT_MS });
    assert.equal(end.reason, "exit");
    assert.equal(end.reason === "exit" ? end.code : -1, plain.code);
    assert.equal(vm.serial.output, plain.output, "the same output, each line once");
  },
);

kvmTest(
  "reverseStep restores the previous instruction's registers and memory, moment by moment, across port reads and writes",
  async () => {
    await using vm = await rloop();
    vm.debug.record();
    const cpu = vm.cpu(0);
    const seen = new Map<string, { regs: string; total: bigint; ticks0: bigint }>();
    const key = () => {
      const p = vm.debug.recording!.position!;
      return `${p.events}.${p.steps}`;
    };
    const snapshot = () => ({
      regs: JSON.stringify(cpu.regs, (_, v) => String(v)),
      total: u64(vm, "total"),
      ticks0: u64(vm, "ticks"),
    });
    seen.set(key(), snapshot());
    // Far enough to pass the first total update, tick(0) and a few characters of output.
    for (let i = 0; i < 160; i++) {
      expectDebugStop(await vm.debug.step(), "step");
      seen.set(key(), snapshot());
    }
    assert.ok(vm.debug.recording!.position!.events >= 4, "the steps went through port reads and writes");
    let compared = 0;
    for (let i = 0; i < 60; i++) {
      expectDebugStop(await vm.debug.reverseStep(), "step");
      const expected = seen.get(key());
      // The moment right after a port write has no single step of its own (KVM steps past it): not in `seen`.
      if (expected === undefined) continue;
      assert.deepEqual(snapshot(), expected, `the moment ${key()}`);
      compared++;
    }
    assert.ok(compared >= 50, `compared ${compared} moments`);
    // Back to the very start, then no further.
    await vm.debug.reverseStep(200);
    const begin = await vm.debug.reverseStep();
    assert.equal(begin.reason, "history");
    assert.equal(begin.symbol, "_start");
    assert.deepEqual(vm.debug.recording!.position, { events: 0, steps: 0 });
  },
);

kvmTest(
  "a write watchpoint and reverseContinue answer who last wrote it: rip on the writing instruction, memory before the write",
  async () => {
    await using vm = await rloop();
    vm.debug.record();
    vm.debug.break("tick");
    for (let i = 0; i < 3; i++) await vm.run({ timeout: RUN_TIMEOUT_MS });
    vm.debug.clear();
    const wp = vm.debug.watch("total", 8, "write");
    const stop = expectDebugStop(await vm.debug.reverseContinue(), "watchpoint");
    assert.equal(stop.id, wp.id);
    assert.equal(stop.oldValue, 3n);
    assert.equal(stop.newValue, 8n);
    assert.equal(u64(vm, "total"), 3n, "the write has not happened yet");
    assert.equal(stop.pc, stop.rip);
    assert.match(vm.debug.disassemble(stop.rip, 1), /mov \[0x[0-9a-f]+ <total>\], rax/, "rip is on the store to total");
    // One step forward makes the write again.
    await vm.debug.step();
    assert.equal(u64(vm, "total"), 8n);
    // Earlier writes, back to the first (0 -> 1).
    assert.equal(expectDebugStop(await vm.debug.reverseContinue(), "watchpoint").newValue, 8n);
    assert.equal(expectDebugStop(await vm.debug.reverseContinue(), "watchpoint").newValue, 3n);
    assert.equal(expectDebugStop(await vm.debug.reverseContinue(), "watchpoint").newValue, 1n);
    assert.equal((await vm.debug.reverseContinue()).reason, "history", "no write before the first");
    // A read watchpoint cannot be found backwards: refused, not ignored.
    vm.debug.watch("ticks", 8, "read");
    await assert.rejects(() => vm.debug.reverseContinue(), /finds writes only/);
  },
);

kvmTest("reverseFinish goes back to the call; reverseNext steps back over a call", async () => {
  await using vm = await rloop();
  vm.debug.record();
  vm.debug.break("tick");
  await vm.run({ timeout: RUN_TIMEOUT_MS });
  await vm.run({ timeout: RUN_TIMEOUT_MS }); // tick(1)
  vm.debug.clear();
  const entryRsp = vm.cpu(0).regs.rsp;
  await vm.debug.step(3); // into tick's body
  const finish = await vm.debug.reverseFinish();
  assert.equal(finish.symbol, "main+56");
  assert.match(vm.debug.disassemble(undefined, 1), /call .*tick/);
  assert.equal(vm.cpu(0).regs.rsp, entryRsp + 8n, "the caller's stack pointer");
  assert.equal(vm.cpu(0).regs.rdi, 1n);
  // Forward over the call with next, then back over it with reverseNext.
  const after = await vm.debug.next();
  assert.equal(after.symbol, "main+61");
  const back = await vm.debug.reverseNext();
  assert.equal(back.symbol, "main+56", "back at the call, not inside tick");
});

kvmTest(
  "a long run takes checkpoints as it goes; going back and forth keeps the guest's three copies of its count in step",
  async () => {
    await using vm = await Vm.create({ memory: "16M" });
    await vm.load(await guest("counter.elf"));
    vm.debug.record({ checkpointMs: 5 });
    assert.equal((await vm.run({ timeout: 400 })).reason, "timeout");
    const info = vm.debug.recording!;
    assert.ok(info.checkpoints >= 5, `${info.checkpoints} checkpoints`);
    const printed = vm.serial.output;
    const count = () => u64(vm, "count");
    vm.debug.break("next_count");
    const back = expectDebugStop(await vm.debug.reverseContinue(), "breakpoint");
    assert.equal(back.symbol, "next_count");
    const then = count();
    assert.equal(vm.cpu(0).regs.r12, then, "r12 and the memory word agree");
    assert.equal(vm.cpu(0).regs.r13, then + 1000n);
    const earlier = expectDebugStop(await vm.debug.reverseContinue(), "breakpoint");
    assert.equal(earlier.symbol, "next_count");
    assert.equal(count(), then - 1n, "the count before");
    expectDebugStop(await vm.run({ timeout: RUN_TIMEOUT_MS }), "breakpoint");
    assert.equal(count(), then);
    vm.debug.clear();
    assert.equal((await vm.run({ timeout: 300 })).reason, "timeout");
    // The run ended at a timeout, maybe in the middle of a line: only whole lines count.
    const lines = vm.serial.output.split("\n").slice(0, -1);
    assert.ok(vm.serial.output.startsWith(printed));
    assert.deepEqual(lines, lines.map((_, i) => String(i)), "every count once, in order, none MISMATCH");
    assert.ok(lines.length > printed.split("\n").length, "the guest went on live past the recording's end");
  },
);

kvmTest(
  "reverseContinue to a conditional breakpoint many checkpoints back replays at full speed and lands on the right arrival",
  async () => {
    await using vm = await Vm.create({ memory: "16M" });
    await vm.load(await guest("counter.elf"));
    vm.debug.record({ checkpointMs: 5 });
    assert.equal((await vm.run({ timeout: 400 })).reason, "timeout");
    const lines = vm.serial.output.trim().split("\n").length;
    assert.ok(lines > 8, `${lines} counts printed`);
    assert.ok(vm.debug.recording!.checkpoints >= 5);
    // next_count runs once per count; the condition holds once, far back.
    const bp = vm.debug.break("next_count", { condition: (cpu) => cpu.regs.r12 === 3n });
    const stop = expectDebugStop(await vm.debug.reverseContinue(), "breakpoint");
    assert.equal(stop.id, bp.id);
    assert.equal(vm.cpu(0).regs.r12, 3n);
    assert.equal(u64(vm, "count"), 3n, "memory of the same moment");
    assert.equal((await vm.debug.reverseContinue()).reason, "history", "no earlier hit with r12 = 3");
    assert.equal(vm.cpu(0).regs.r12, 0n);
  },
);

kvmTest(
  "checkpoints over their byte budget are thinned (every other merged, the interval doubled) and going back stays exact",
  async () => {
    await using vm = await Vm.create({ memory: "16M" });
    await vm.load(await guest("counter.elf"));
    vm.debug.record({ checkpointMs: 1, maxCheckpointBytes: 96 * 1024 });
    assert.equal((await vm.run({ timeout: 400 })).reason, "timeout");
    const info = vm.debug.recording!;
    assert.ok(info.checkpointMs > 1, `the interval grew to ${info.checkpointMs} ms`);
    assert.ok(info.checkpointBytes <= 2 * 96 * 1024, `${info.checkpointBytes} bytes kept`);
    vm.debug.break("next_count", { condition: (cpu) => cpu.regs.r12 === 5n });
    expectDebugStop(await vm.debug.reverseContinue(), "breakpoint");
    assert.equal(vm.cpu(0).regs.r12, 5n);
    assert.equal(u64(vm, "count"), 5n);
    await vm.debug.reverseStep(3);
    await vm.debug.step(3);
    assert.equal(vm.cpu(0).regs.rip, vm.debug.symbol("next_count"));
    assert.equal(u64(vm, "count"), 5n);
  },
);

kvmTest("what cannot be recorded or replayed is refused with the reason, and the VM stays usable", async () => {
  {
    await using smp = await Vm.create({ cpus: 2 });
    assert.throws(() => smp.debug.record(), /2 vCPUs/);
  }
  await using vm = await rloop();
  await assert.rejects(() => vm.debug.reverseStep(), /not being recorded/);
  vm.debug.record();
  assert.throws(() => vm.debug.record(), /Already recording/);
  vm.debug.break("tick");
  await vm.run({ timeout: RUN_TIMEOUT_MS });
  await vm.run({ timeout: RUN_TIMEOUT_MS });
  await vm.debug.reverseContinue();
  // Changing the past: the guest then prints something else than the log says.
  vm.memory.write(Number(vm.debug.symbol("total")), new Uint8Array([99, 0, 0, 0, 0, 0, 0, 0]));
  vm.debug.clear();
  await assert.rejects(() => vm.run({ timeout: RUN_TIMEOUT_MS }), (error: Error) => {
    assert.ok(error instanceof ReplayDivergenceError, String(error));
    assert.match(error.message, /replay diverged at access #\d+: recorded port out 0x3f8/);
    return true;
  });
  await assert.rejects(() => vm.debug.reverseStep(), /Cannot run .* backwards: replay diverged/);
  // Stopping the recording puts the guest back where the recording ended; it runs on from there.
  vm.debug.stopRecording();
  assert.equal(vm.debug.recording, undefined);
  const end = await vm.run({ timeout: RUN_TIMEOUT_MS });
  assert.equal(end.reason, "exit");
  assert.match(vm.serial.output, /tick 4 total=35\nrloop done total=35\n$/);
});

kvmTest(
  "an interrupt hvsh raises while the guest runs (serial input) ends the recording's use, with the reason",
  async () => {
    await using vm = await Vm.create({ memory: "16M" });
    await vm.load(await guest("serial_irq.elf"));
    vm.debug.record();
    const running = vm.run({ timeout: RUN_TIMEOUT_MS });
    await vm.serial.waitFor("ready\n", { timeout: RUN_TIMEOUT_MS });
    vm.serial.send("abq"); // IRQ 4 at a moment of the host's choosing
    assert.equal((await running).reason, "exit");
    assert.equal(vm.serial.output, "ready\nabq\nirq bye\n", "the guest ran as without recording");
    assert.match(vm.debug.recording!.broken ?? "", /hvsh raised IRQ 4 while the guest ran/);
    await assert.rejects(() => vm.debug.reverseStep(), /Cannot run .* backwards: hvsh raised IRQ 4/);
  },
);

// ---------------------------------------------------------------- the REPL

kvmTest("REPL: .record, .rcont, .rstep, .rnext and .record status, as a user types them", async () => {
  const out = await replPiped(["--kernel", await guest("rloop.elf")], [
    ".context off",
    ".rstep",
    ".record",
    ".break tick",
    ".cont",
    ".cont",
    ".cont",
    ".rcont",
    ".regs rdi",
    ".rstep",
    ".rnext",
    ".record status",
    ".delete 1",
    ".cont",
  ]);
  const { stdout, stderr } = out;
  assert.match(stdout + stderr, /not being recorded/);
  assert.match(stdout, /recording: 0 port\/MMIO accesses logged, 1 checkpoints/);
  const hits = [...stdout.matchAll(/\[breakpoint 1 at rip 0x[0-9a-f]+ <tick>/g)];
  assert.equal(hits.length, 4, stdout);
  assert.match(stdout, /^rdi = 0x1$/m);
  assert.match(stdout, /\[step at rip 0x[0-9a-f]+ <main\+56>/);
  assert.match(stdout, /\[step at rip 0x[0-9a-f]+ <main\+53>/);
  assert.match(stdout, /the guest is in the past \(going forward replays the log\), at #30\.8/);
  assert.match(stdout, /rloop done total=35/);
  assert.match(stdout, /exited with value 0 \(status 1\)/);
});
