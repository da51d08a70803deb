// Console automation on vm.serial: exec() against a toy shell guest (user space on this host cannot make system
// calls, so a real shell is out of reach; toy_shell.c answers like one: echo, prompt, output).

import assert from "node:assert/strict";
import { Vm } from "../core/vm.ts";
import { SerialWaitError } from "../devices/serial_reader.ts";
import { guest, kvmAvailable, kvmMissingReason } from "./_helpers.ts";

function kvmTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name: kvmAvailable ? name : `${name} (ignored: ${kvmMissingReason})`, ignore: !kvmAvailable, fn });
}

async function toyShell(): Promise<{ vm: Vm; running: Promise<unknown> }> {
  const vm = await Vm.create({ memory: "16M" });
  await vm.load(await guest("toy_shell.elf"));
  const running = vm.run({ timeout: 30_000 });
  await vm.serial.expect("toy$ ");
  return { vm, running };
}

kvmTest("vm.serial.exec() returns what a command printed between its echo and the next prompt", async () => {
  const { vm, running } = await toyShell();
  try {
    assert.equal(await vm.serial.exec("echo hello world"), "hello world");
    assert.equal(await vm.serial.exec("add 40 2", { prompt: "toy$ " }), "42");
    assert.equal(await vm.serial.exec("lines 3"), "line 1\nline 2\nline 3");
    assert.equal(await vm.serial.exec("frob"), "toy: frob: not found");
    assert.equal(await vm.serial.exec(""), "");
    // The transcript keeps the whole exchange, echoes and prompts included.
    assert.match(vm.serial.transcript, /toy\$ add 40 2\r\n42\ntoy\$ lines 3\r\nline 1\n/);
    await assert.rejects(vm.serial.exec("echo a\necho b"), /one line at a time/);
    vm.serial.send("exit\n");
    const stop = await running;
    assert.equal((stop as { reason: string }).reason, "exit");
  } finally {
    await vm.close();
  }
});

kvmTest("vm.serial.exec() rejects on a timeout with the output so far, and at once when the guest stops", async () => {
  const { vm, running } = await toyShell();
  try {
    // A prompt that never comes: the error carries what the command printed.
    const error = await vm.serial.exec("lines 2", { prompt: "never> ", timeout: 1_000 }).then(
      () => undefined,
      (e) => e,
    );
    assert.ok(error instanceof SerialWaitError, String(error));
    assert.equal(error.reason, "timeout");
    assert.match(error.message, /line 1\\nline 2/);
    // exit ends the guest before any prompt: the wait names the stop instead of waiting out its timeout.
    const stopped = await vm.serial.exec("exit", { timeout: 20_000 }).then(() => undefined, (e) => e);
    assert.ok(stopped instanceof SerialWaitError, String(stopped));
    assert.equal(stopped.reason, "stopped");
    assert.match(stopped.message, /exited with value 0/);
    await running;
  } finally {
    await vm.close();
  }
});
