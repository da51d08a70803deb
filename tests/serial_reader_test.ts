/**
 * The serial port's expect reader: a cursor over the output, and waits that
 * end as soon as the VM stops. The first tests drive the UART through its
 * registers as a guest would; the rest run real guests under KVM.
 */

import assert from "node:assert/strict";
import { Serial16550 } from "../devices/serial.ts";
import { SerialWaitError } from "../devices/serial_reader.ts";
import { Vm } from "../core/vm.ts";
import { guest, kvmAvailable, RUN_TIMEOUT_MS } from "./_helpers.ts";

function transmit(uart: Serial16550, text: string): void {
  for (const byte of new TextEncoder().encode(text)) uart.write(0, 1, byte);
}

function kvmTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, ignore: !kvmAvailable, fn });
}

/** What a wait rejected with, as a SerialWaitError (fails the test when it resolved or threw something else). */
async function waitError(wait: Promise<unknown>): Promise<SerialWaitError> {
  try {
    await wait;
  } catch (error) {
    assert.ok(error instanceof SerialWaitError, `expected a SerialWaitError, got ${error}`);
    return error;
  }
  assert.fail("the wait resolved");
}

Deno.test("Serial16550.expect() consumes what it matched: the same text is matched again only when sent again", async () => {
  const uart = new Serial16550();
  transmit(uart, "ab");
  assert.equal((await uart.expect("ab"))[0], "ab");
  const second = uart.expect("ab");
  let resolved = false;
  void second.then(() => resolved = true);
  await Promise.resolve();
  assert.equal(resolved, false, "the old echo is consumed");
  transmit(uart, "xab");
  const match = await second;
  assert.equal(match.index, 1, "the match is found in the text after the cursor");
  assert.equal(uart.unread, "");
  assert.equal(uart.transcript, "abxab");
  assert.equal((await uart.waitFor("ab")).index, 0, "waitFor() still matches the whole output");
});

Deno.test("Serial16550.readLine() returns lines after the cursor without their line ends", async () => {
  const uart = new Serial16550();
  transmit(uart, "banner v3\r\nsecond line\npartial");
  await uart.expect("banner");
  assert.equal(await uart.readLine(), " v3");
  assert.equal(await uart.readLine(), "second line");
  const third = uart.readLine();
  transmit(uart, " line\n");
  assert.equal(await third, "partial line");
});

Deno.test("Serial16550.expectAll() matches each pattern from the cursor in any order and consumes up to the last", async () => {
  const uart = new Serial16550();
  transmit(uart, "cpu1 up\ncpu0 up\n");
  const all = uart.expectAll([/cpu0 up/, "cpu1 up", /cpu\d up/g]);
  transmit(uart, "done\n");
  const [cpu0, cpu1, any] = await all;
  assert.equal(cpu0!.index, 8);
  assert.equal(cpu1!.index, 0);
  assert.equal(any![0], "cpu1 up", "a global regex is matched from the cursor, not from its lastIndex");
  assert.equal(uart.unread, "\ndone\n");
});

Deno.test("Serial16550.expect() rejects after its timeout naming the pattern and the unread output", async () => {
  const uart = new Serial16550();
  transmit(uart, "consumed|");
  await uart.expect("|");
  transmit(uart, "login: ");
  const error = await waitError(uart.expect(/password/, { timeout: 20 }));
  assert.equal(error.reason, "timeout");
  assert.equal(error.unread, "login: ");
  assert.match(
    error.message,
    /Timed out after 20 ms waiting for \/password\/ on the serial port; unread output: "login: "/,
  );
  await assert.rejects(uart.expect("x", { timeout: -1 }), /Invalid timeout -1/);
});

kvmTest("Vm.serial.expect() sees only new echoes of the echo guest (echo.elf)", async () => {
  await using vm = await Vm.create({ memory: "16M" });
  await vm.load(await guest("echo.elf"));
  const running = vm.run({ timeout: RUN_TIMEOUT_MS });
  vm.serial.send("ab");
  await vm.serial.expect("ab");
  const none = await waitError(vm.serial.expect("ab", { timeout: 50 }));
  assert.equal(none.reason, "timeout", "nothing new was echoed");
  vm.serial.send("ab");
  await vm.serial.expect("ab");
  vm.serial.send("q");
  await vm.serial.expect("bye\n");
  assert.equal((await running).reason, "exit");
  assert.equal(vm.serial.transcript, "abab" + "q\nbye\n");
});

kvmTest("Vm.serial waits reject as soon as the guest stops, naming the stop (exit42.elf, halt.elf)", async () => {
  await using vm = await Vm.create({ memory: "16M" });
  await vm.load(await guest("exit42.elf"));
  // Long timeouts: a wait that did not end at the stop would fail on reason "timeout".
  const waits = [
    vm.serial.expect(/never/, { timeout: 60_000 }),
    vm.serial.waitFor(/never/, { timeout: 60_000 }),
    vm.serial.readLine({ timeout: 60_000 }),
  ].map(waitError);
  const stop = await vm.run({ timeout: RUN_TIMEOUT_MS });
  for (const error of await Promise.all(waits)) {
    assert.equal(error.reason, "stopped");
    assert.equal(error.stop, stop);
    assert.match(error.message, /the VM stopped first: guest exited with value 42 \(status 85\)/);
  }
  const late = await waitError(vm.serial.expect("anything", { timeout: 60_000 }));
  assert.equal(late.reason, "stopped", "a wait begun after the stop rejects at once");
  assert.match(late.message, /the VM has stopped: guest exited with value 42/);

  await using halting = await Vm.create({ memory: "16M", irqchip: false });
  await halting.load(await guest("halt.elf"));
  const matched = halting.serial.expect("halting\n", { timeout: 60_000 });
  await halting.run({ timeout: RUN_TIMEOUT_MS });
  assert.equal((await matched)[0], "halting\n", "text printed just before the stop completes the wait");
  assert.equal(
    await halting.serial.waitFor("halting").then((m) => m[0]),
    "halting",
    "text already there still matches",
  );
});

kvmTest("Vm.serial waits reject when the VM is closed (echo.elf)", async () => {
  const vm = await Vm.create({ memory: "16M" });
  await vm.load(await guest("echo.elf"));
  const pending = waitError(vm.serial.expect("never", { timeout: 60_000 }));
  await vm.close();
  const error = await pending;
  assert.equal(error.reason, "closed");
  assert.match(error.message, /the VM was closed/);
});
