// Watchpoints name the exact instruction that made the access, checked
// against the guest's own listing from objdump (not hvsh's disassembler):
// a store, a push by `call`, `rep movsb`, and a read from a page the guest
// also executes from (watch_sites.S keeps code and data in one page).

import assert from "node:assert/strict";
import { Vm } from "../core/vm.ts";
import { type DebugStop, describeStop, type StopEvent } from "../core/stop.ts";
import { guest, kvmAvailable, kvmMissingReason } from "./_helpers.ts";

function kvmTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name: kvmAvailable ? name : `${name} (ignored: ${kvmMissingReason})`, ignore: !kvmAvailable, fn });
}

/** The address of the first instruction under each label in `objdump -d`'s listing. */
async function objdumpLabels(path: string): Promise<Map<string, bigint>> {
  const output = await new Deno.Command("objdump", { args: ["-d", path], stdout: "piped" }).output();
  assert.ok(output.success, "objdump -d failed");
  const labels = new Map<string, bigint>();
  let label: string | undefined;
  for (const line of new TextDecoder().decode(output.stdout).split("\n")) {
    const heading = /^[0-9a-f]+ <([\w.]+)>:$/.exec(line);
    if (heading !== null) {
      label = heading[1];
      continue;
    }
    const instruction = /^\s+([0-9a-f]+):\t/.exec(line);
    if (instruction !== null && label !== undefined) {
      labels.set(label, BigInt(`0x${instruction[1]}`));
      label = undefined;
    }
  }
  return labels;
}

/** Runs the guest with one watchpoint; returns its watchpoint stops and checks the guest still ends normally. */
async function watchStops(symbol: string, length: number, access: "read" | "write" | "access"): Promise<DebugStop[]> {
  await using vm = await Vm.create({ memory: "16M" });
  await vm.load(await guest("watch_sites.elf"));
  vm.debug.watch(symbol, length, access);
  const stops: DebugStop[] = [];
  for (;;) {
    const stop: StopEvent = await vm.debug.cont({ timeout: 10_000 });
    if (stop.reason !== "watchpoint") {
      assert.equal(stop.reason, "exit", `the guest ends normally, not with ${describeStop(stop)}`);
      break;
    }
    stops.push(stop);
    assert.ok(stops.length <= 64, "too many stops");
  }
  assert.equal(vm.serial.output, "sites done\n");
  return stops;
}

const sites = kvmAvailable ? await objdumpLabels(await guest("watch_sites.elf")) : new Map<string, bigint>();
const site = (name: string) => {
  const address = sites.get(name);
  assert.ok(address !== undefined, `objdump lists ${name}`);
  return address;
};

kvmTest("a write watchpoint names the storing instruction objdump lists at site_store", async () => {
  const stops = await watchStops("value", 8, "write");
  assert.deepEqual(stops.map((s) => [s.access, s.pc, s.newValue]), [["write", site("site_store"), 0x1234n]]);
});

kvmTest(
  "a write watchpoint on a stack slot names the call that pushed its return address, not the callee",
  async () => {
    const stops = await watchStops("slot", 8, "write");
    assert.equal(stops.length, 1);
    assert.equal(stops[0]!.pc, site("site_call"));
    assert.equal(stops[0]!.rip, site("callee"), "rip is already at the call's target");
    assert.ok(stops[0]!.newValue! > site("site_call"), "the value written is the return address");
  },
);

kvmTest("a write watchpoint on a buffer names rep movsb for each byte it copies", async () => {
  const stops = await watchStops("buffer", 16, "write");
  assert.equal(stops.length, 16);
  for (const stop of stops) assert.equal(stop.pc, site("site_movs"));
  assert.deepEqual(
    stops.map((s) => Number(s.dataAddress! - stops[0]!.dataAddress!)),
    Array.from({ length: 16 }, (_, i) => i),
  );
});

kvmTest(
  "a read watchpoint on a page the guest executes from reports the load at site_read and lets code run",
  async () => {
    const stops = await watchStops("value", 8, "read");
    assert.deepEqual(stops.map((s) => [s.access, s.pc, s.oldValue]), [["read", site("site_read"), 0x1234n]]);
  },
);

kvmTest("an access watchpoint on a code page reports the store and the load, each at its instruction", async () => {
  const stops = await watchStops("value", 8, "access");
  assert.deepEqual(stops.map((s) => [s.access, s.pc]), [["write", site("site_store")], ["read", site("site_read")]]);
});
