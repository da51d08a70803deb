import assert from "node:assert/strict";
import { Vm } from "../vm.ts";
import { guest, kvmAvailable, RUN_TIMEOUT_MS } from "../../tests/_helpers.ts";

function kvmTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, ignore: !kvmAvailable, fn });
}

kvmTest("Debugger.hook() runs onEnter and onLeave for every call of bump and never stops the guest", async () => {
  await using vm = await Vm.create({ memory: "16M" });
  await vm.load(await guest("dbg64.elf"));
  const seen: { arg: bigint; result?: bigint | undefined; sameData: boolean }[] = [];
  const hook = vm.debug.hook("bump", {
    onEnter(ctx) {
      ctx.data.index = seen.length;
      seen.push({ arg: ctx.arg(0), sameData: false });
      assert.equal(ctx.returnValue, undefined);
      assert.equal(vm.debug.symbolize(ctx.returnAddress)?.startsWith("level3+"), true);
    },
    onLeave(ctx) {
      const record = seen[ctx.data.index as number]!;
      record.result = ctx.returnValue;
      record.sameData = true;
    },
  });
  const stop = await vm.run({ timeout: RUN_TIMEOUT_MS });
  assert.equal(stop.reason, "exit", "the hooks never stopped the guest");
  assert.equal(vm.serial.output, "dbg done counter=15\n");
  assert.equal(hook.calls, 15);
  assert.deepEqual(seen.map((s) => s.arg), Array(15).fill(1n), "bump(1), 15 times");
  assert.deepEqual(
    seen.map((s) => s.result),
    Array.from({ length: 15 }, (_, i) => BigInt(i + 1)),
    "counter after each",
  );
  assert.ok(seen.every((s) => s.sameData), "onLeave sees the data its onEnter left");
  assert.deepEqual(
    vm.debug.breakpoints.map((b) => b.conditionText),
    ["hook onEnter bump"],
    "no return breakpoint is left once every call returned",
  );
  hook.detach();
  assert.deepEqual(vm.debug.breakpoints, []);
});

kvmTest(
  "Debugger.hook() on nested calls pairs each onLeave with its own call (level1 -> level2 -> level3)",
  async () => {
    await using vm = await Vm.create({ memory: "16M" });
    await vm.load(await guest("dbg64.elf"));
    const events: string[] = [];
    for (const name of ["level1", "level2", "level3"]) {
      vm.debug.hook(name, {
        onEnter: (ctx) => void (ctx.data.sp = ctx.entryStackPointer, events.push(`>${name}`)),
        onLeave: (ctx) => {
          assert.equal(ctx.regs.rsp, (ctx.data.sp as bigint) + 8n, "rsp just past the popped return address");
          events.push(`<${name}`);
        },
      });
    }
    const stop = await vm.run({ timeout: RUN_TIMEOUT_MS });
    assert.equal(stop.reason, "exit");
    const once = [">level1", ">level2", ">level3", "<level3", "<level2", "<level1"];
    assert.deepEqual(events, [...once, ...once, ...once]);
  },
);

kvmTest("Debugger.hook() refuses no callbacks; a throwing callback stops the run naming the hook", async () => {
  await using vm = await Vm.create({ memory: "16M" });
  await vm.load(await guest("dbg64.elf"));
  assert.throws(() => vm.debug.hook("bump", {}), { name: "TypeError", message: /give onEnter, onLeave or both/ });
  vm.debug.hook("bump", {
    onEnter() {
      throw new Error("boom");
    },
  });
  await assert.rejects(() => vm.run({ timeout: RUN_TIMEOUT_MS }), /The onEnter hook of bump threw: boom/);
});
