/**
 * The kernel-test kit (testing.ts) in this process: assemble() with real gcc
 * and ld, bootKernel() with real guests under KVM, the failure messages of
 * its checks, and runSuite() with real `hvsh boot` processes.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import {
  assemble,
  assertExit,
  bootKernel,
  kernelTest,
  KernelTestError,
  kvmAvailable,
  kvmMissingReason,
  runSuite,
} from "../testing.ts";
import { guest } from "./_helpers.ts";

const TEMPLATE_KERNEL = new URL("../kit/template/boot.S", import.meta.url);

/** A message check: the error is a KernelTestError whose message matches every pattern. */
async function failureOf(action: () => Promise<unknown> | unknown): Promise<KernelTestError> {
  try {
    await action();
  } catch (error) {
    assert.ok(error instanceof KernelTestError, `expected a KernelTestError, got ${error}`);
    return error;
  }
  assert.fail("the check passed");
}

Deno.test("kvmAvailable and kvmMissingReason agree", () => {
  assert.equal(kvmAvailable, kvmMissingReason === undefined);
  if (!kvmAvailable) assert.match(kvmMissingReason!, /cannot use \/dev\/kvm/);
});

Deno.test("assemble() builds once per content: the same sources give the cached image, a changed header rebuilds", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hvsh-assemble-" });
  try {
    const cacheDir = join(dir, "cache");
    await Deno.writeTextFile(join(dir, "value.h"), "#define VALUE 7\n");
    const source = join(dir, "exit.S");
    await Deno.writeTextFile(
      source,
      `#include "value.h"\n.code32\n.globl _start\n_start: mov $VALUE, %al\nout %al, $0xf4\n1: hlt\njmp 1b\n` +
        `.section .note.GNU-stack, "", @progbits\n`,
    );
    const first = await assemble(source, { format: "elf32", cacheDir });
    const built = (await Deno.stat(first)).mtime;
    const again = await assemble(source, { format: "elf32", cacheDir });
    assert.equal(again, first);
    assert.deepEqual((await Deno.stat(again)).mtime, built, "the cached image was not rebuilt");
    await Deno.writeTextFile(join(dir, "value.h"), "#define VALUE 9\n");
    const rebuilt = await assemble(source, { format: "elf32", cacheDir });
    assert.equal(rebuilt, first, "same sources, same entry");
    if (kvmAvailable) {
      await using run = await bootKernel(rebuilt, { timeout: 5_000 });
      assertExit(await run.stop, 9);
    }
    const other = await assemble(source, { format: "elf64", cacheDir });
    assert.notEqual(other, first, "other options, another entry");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("assemble() errors name the source, the failing command and gcc's message", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hvsh-assemble-" });
  try {
    const broken = join(dir, "broken.S");
    await Deno.writeTextFile(broken, ".code32\n_start: movl %eax\n");
    await assert.rejects(
      assemble(broken, { cacheDir: join(dir, "cache") }),
      (error: Error) =>
        /Cannot assemble broken\.S: gcc exited with status 1/.test(error.message) &&
        /broken\.S:2: Error/.test(error.message),
    );
    const plain = join(dir, "plain.S");
    await Deno.writeTextFile(plain, '.code32\n.globl _start\n_start: hlt\n.section .note.GNU-stack, "", @progbits\n');
    await assert.rejects(
      assemble(plain, { format: "multiboot", cacheDir: join(dir, "cache") }),
      /Cannot assemble plain\.S as a multiboot kernel: it has no Multiboot header/,
    );
    await assert.rejects(
      assemble(join(dir, "missing.S"), { cacheDir: join(dir, "cache") }),
      /cannot read .*missing\.S/,
    );
    await assert.rejects(assemble("kernel.rs"), /expected a \.S or \.c source/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

kernelTest("bootKernel() runs the template kernel: banner, command line, ping/pong, exit 0", async () => {
  const kernel = await assemble(TEMPLATE_KERNEL, { format: "multiboot" });
  await using run = await bootKernel(kernel, { append: "verbose", timeout: 5_000, memory: "16M" });
  await run.serial.expect(/banner v\d+/);
  const line = await run.serial.readLine();
  assert.equal(line, "", "readLine() returns the rest of the banner's line");
  assert.equal(await run.serial.readLine(), `cmdline: ${kernel} verbose`);
  run.serial.send("ping\n");
  await run.serial.expect("pong");
  const stop = await run.stop;
  assertExit(stop, 0);
  assert.equal(stop.code, 1);
  assert.equal(run.serial.transcript, `mykernel banner v1\ncmdline: ${kernel} verbose\npong\n`);
});

kernelTest(
  "run.serial.expect() fails at once when the guest exits, with its output, stop, registers and code",
  async () => {
    const kernel = await assemble(TEMPLATE_KERNEL, { format: "multiboot" });
    await using run = await bootKernel(kernel, { timeout: 5_000 });
    run.serial.send("pang\n");
    const error = await failureOf(() => run.serial.expect("pong", { timeout: 60_000 }));
    assert.equal(error.stop?.reason, "exit");
    assert.match(
      error.message,
      /Cannot wait for \/pong\/ on the serial port: the VM stopped first: guest exited with value 1/,
    );
    assert.match(
      error.message,
      /guest output \(last 12 lines\):\n {2}\| mykernel banner v1\n.*\n {2}\| unknown command: pang/,
    );
    assert.match(error.message, /\nregisters:\nrax [0-9a-f]{16}/);
    assert.match(error.message, /\ncode at the stop:\n=> 0x[0-9a-f]+ <halt>: fa +cli/);
  },
);

kernelTest("run.serial.expect() that times out pauses the guest and shows where it was (spin.elf)", async () => {
  await using run = await bootKernel(await guest("spin.elf"), { timeout: 10_000 });
  await run.serial.expect("spinning\n");
  const error = await failureOf(() => run.serial.expect("never", { timeout: 100 }));
  assert.match(error.message, /Timed out after 100 ms waiting for \/never\//);
  assert.match(error.message, /stop: paused at rip 0x[0-9a-f]+ <spin_here> .*\(paused by the failed check/);
  assert.match(error.message, /=> 0x[0-9a-f]+ <spin_here>: eb fe +jmp short/);
  assert.equal((await run.stop).reason, "paused");
});

kernelTest(
  "assertExit() names the value the guest exited with and the one expected (exit42.elf, halt.elf)",
  async () => {
    await using run = await bootKernel(await guest("exit42.elf"), { timeout: 5_000 });
    const stop = await run.stop;
    assertExit(stop, 42);
    const error = await failureOf(() => assertExit(stop, 0));
    assert.match(
      error.message,
      /^guest exited with 42 \(expected 0\)\nguest output \(last 12 lines\):\n {2}\(none\)\n/,
    );
    assert.match(error.message, /stop: guest exited with value 42 \(status 85\)/);

    await using halting = await bootKernel(await guest("halt.elf"), { timeout: 5_000, vm: { irqchip: false } });
    const halted = await halting.stop;
    const notExit = await failureOf(() => assertExit(halted, 0));
    assert.match(notExit.message, /^guest did not exit \(expected exit 0\): guest halted at rip/);
    assert.match(notExit.message, /\| halting/);
  },
);

kernelTest("bootKernel() closes the VM at the end of an await using scope and throws for a bad image", async () => {
  let vm;
  {
    await using run = await bootKernel(await guest("echo.elf"), { timeout: 5_000 });
    vm = run.vm;
    run.serial.send("x");
    await run.serial.expect("x");
  }
  assert.equal(vm.state, "closed");
  await assert.rejects(bootKernel("/nonexistent/kernel.elf"), /Cannot read kernel image \/nonexistent\/kernel\.elf/);
  await assert.rejects(bootKernel(await guest("echo.elf"), { timeout: 0 }), /Invalid timeout 0/);
});

kernelTest(
  "runSuite() runs cases in parallel as hvsh boot processes: PASS on status 1, SKIP on 77, FAIL otherwise",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "hvsh-suite-" });
    try {
      const skipSource = join(dir, "skip.S");
      await Deno.writeTextFile(
        skipSource,
        ".code32\n.globl _start\n_start: mov $38, %al\nout %al, $0xf4\n1: hlt\njmp 1b\n" +
          '.section .note.GNU-stack, "", @progbits\n',
      );
      const skip = await assemble(skipSource, { format: "elf32", cacheDir: join(dir, "cache") });
      const lines: string[] = [];
      const summary = await runSuite([
        { name: "hello", kernel: await guest("hello32.elf") },
        { name: "exit42-expected", kernel: await guest("exit42.elf"), expect: 85 },
        { name: "exit42", kernel: await guest("exit42.elf") },
        { name: "skips", kernel: skip },
        { name: "spins", kernel: await guest("spin.elf"), timeout: 500 },
      ], { jobs: 3, logDir: join(dir, "logs"), print: (line) => lines.push(line) });
      assert.deepEqual(summary.results.map((r) => [r.name, r.status, r.exitStatus]), [
        ["hello", "PASS", 1],
        ["exit42-expected", "PASS", 85],
        ["exit42", "FAIL", 85],
        ["skips", "SKIP", 77],
        ["spins", "FAIL", 124],
      ]);
      assert.equal(summary.ok, false);
      assert.equal(lines.length, 6);
      assert.ok(
        lines.some((line) => /^FAIL exit42 \(exit status 85, expected 1; \d+\.\d\d s\)$/.test(line)),
        lines.join("\n"),
      );
      assert.ok(lines.some((line) => /^FAIL spins \(timed out after 0\.5 s; /.test(line)), lines.join("\n"));
      assert.ok(lines.some((line) => /^SKIP skips \(exit status 77; /.test(line)), lines.join("\n"));
      assert.equal(lines.at(-1), "SUMMARY: 2 passed, 2 failed, 1 skipped (5 cases)");
      assert.match(
        await Deno.readTextFile(join(dir, "logs", "hello.log")),
        /^\$ hvsh boot --kernel .*hello32\.elf.*\nhello\n/,
      );
      await assert.rejects(runSuite([{ name: "a/b", kernel: "k" }]), /Invalid suite case 0: name "a\/b"/);
      await assert.rejects(
        runSuite([{ name: "a", kernel: "k" }, { name: "a", kernel: "k" }]),
        /Invalid suite case 1: duplicate name a/,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);
