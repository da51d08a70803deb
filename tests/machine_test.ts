// The machine's seams: one debugger per VM, exit interception, the platform
// builder's layout, and the gdb target's typed errors as the stub answers them.

import assert from "node:assert/strict";
import { Vm } from "../core/vm.ts";
import { Debugger } from "../core/debug/debugger.ts";
import { GdbStub } from "../core/gdb/stub.ts";
import { VmTarget } from "../core/gdb/target.ts";
import { encodePacket } from "../core/gdb/protocol.ts";
import { PC_LAYOUT } from "../core/platform.ts";
import { guest, kvmAvailable, kvmMissingReason, symbol } from "./_helpers.ts";

function kvmTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name: kvmAvailable ? name : `${name} (ignored: ${kvmMissingReason})`, ignore: !kvmAvailable, fn });
}

kvmTest("Debugger.for() shares one debugger per VM; a second new Debugger() is refused by name", async () => {
  await using vm = await Vm.create({ memory: "16M" });
  const debug = vm.debug;
  assert.equal(Debugger.for(vm), debug);
  assert.throws(() => new Debugger(vm), /Cannot intercept the exits of vm\d+: a debugger is already attached/);
  debug.detach();
  const replacement = new Debugger(vm);
  assert.equal(vm.debug, replacement, "after a detach, vm.debug is the new debugger");
});

kvmTest("Vm.interceptExits() refuses a second interceptor and the undo function lets the next one in", async () => {
  await using vm = await Vm.create({ memory: "16M", platform: "none" });
  await vm.load(await guest("hello64.elf"));
  assert.throws(() => vm.interceptExits({ onExit: () => undefined }), /already attached \(share it: vm.debug\)/);
  vm.debug.detach();
  const seen: string[] = [];
  const undo = vm.interceptExits({ onExit: (_cpu, exit) => void seen.push(exit.kind) });
  assert.throws(() => vm.interceptExits({ onExit: () => undefined }), /already attached/);
  const stop = await vm.run({ timeout: 10_000 });
  assert.equal(stop.reason, "exit");
  assert.deepEqual(seen, [], "port I/O never reaches an interceptor");
  undo();
  assert.equal(vm.debug.symbolize(symbol(vm, "_start")), "_start", "a debugger attached again has the image's symbols");
});

kvmTest("the platform builder places COM1, debug-exit and POST from PC_LAYOUT on both platforms", async () => {
  for (const platform of ["pc", "none"] as const) {
    await using vm = await Vm.create({ memory: "16M", platform });
    for (
      const [name, place] of [["com1", PC_LAYOUT.com1], ["debug-exit", PC_LAYOUT.debugExit], [
        "post",
        PC_LAYOUT.post,
      ]] as const
    ) {
      const entry = vm.io.find(place.port);
      assert.equal(entry?.name, name, `${name} on the ${platform} platform`);
      assert.equal(entry.base, place.port);
    }
    assert.equal(vm.io.find(PC_LAYOUT.fwCfg.port)?.name, platform === "pc" ? "fw_cfg" : undefined);
  }
});

/** Runs packets through a stub on a real target and returns the replies' bodies. */
async function ask(stub: GdbStub, sent: Uint8Array[], packets: string[]): Promise<string[]> {
  const decoder = new TextDecoder();
  const replies: string[] = [];
  for (const packet of packets) {
    sent.length = 0;
    stub.receive(encodePacket(packet));
    await stub.settled();
    const text = sent.map((b) => decoder.decode(b)).join("");
    const body = /\$([^#]*)#/.exec(text);
    replies.push(body?.[1] ?? text);
  }
  return replies;
}

kvmTest("the gdb target's typed errors reach gdb as ENOSPC, EFAULT and EINVAL replies", async () => {
  await using vm = await Vm.create({ memory: "16M" });
  await vm.load(await guest("dbg64.elf"));
  const sent: Uint8Array[] = [];
  const stub = new GdbStub(new VmTarget(vm), { send: (bytes) => void sent.push(bytes) });
  await ask(stub, sent, ["QStartNoAckMode"]);
  const base = symbol(vm, "level1");
  const inserts = [0, 1, 2, 3, 4].map((i) => `Z1,${(base + BigInt(i)).toString(16)},1`);
  const replies = await ask(stub, sent, [
    ...inserts,
    "m7fff00000000,8", // unmapped virtual memory
    "P99=00", // no register 0x99
    `Z2,${(0x7fff_0000_0000n).toString(16)},8`, // a watchpoint outside RAM
  ]);
  assert.deepEqual(replies, ["OK", "OK", "OK", "OK", "E1c", "E0e", "E16", "E0e"]);
  await stub.disconnect();
});
