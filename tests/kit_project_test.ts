/**
 * What a kernel developer does, with real processes: `./hvsh init` into a
 * temporary folder outside the checkout, then `deno check` and `deno test -A`
 * there with hvsh's pinned Deno; a deliberately failing kernel test shows
 * the guest's output; `HVSH_DEBUG=1` serves gdb for the failing test's VM;
 * the README's example runs as written; `./hvsh test-suite` runs a table;
 * a test importing the kit by path reports itself ignored where /dev/kvm is
 * not KVM.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { guest, kvmAvailable } from "./_helpers.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const HVSH = join(ROOT, "hvsh");
const DENO = join(ROOT, "node_modules", ".bin", "deno");
/** Generous: the first `deno check` in a new folder may fetch iced-x86's types from npm into Deno's cache. */
const PROCESS_TIMEOUT_MS = 180_000;

interface Finished {
  code: number;
  output: string;
}

async function run(command: string, args: string[], cwd: string, env: Record<string, string> = {}): Promise<Finished> {
  const result = await new Deno.Command(command, {
    args,
    cwd,
    env: { NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(PROCESS_TIMEOUT_MS),
  }).output();
  const output = new TextDecoder().decode(result.stdout) + new TextDecoder().decode(result.stderr);
  return { code: result.code, output };
}

function kvmTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, ignore: !kvmAvailable, fn });
}

async function onPath(command: string): Promise<boolean> {
  try {
    return (await new Deno.Command("sh", { args: ["-c", `command -v ${command}`], stdout: "null" }).output()).success;
  } catch {
    return false;
  }
}

/** A project made by `./hvsh init` in a new temporary folder (outside the checkout); removed by the caller. */
async function initProject(): Promise<string> {
  const parent = await Deno.makeTempDir({ prefix: "hvsh-kernel-project-" });
  assert.ok(!parent.startsWith(ROOT), `${parent} must lie outside the checkout ${ROOT}`);
  const dir = join(parent, "mykernel");
  const init = await run(HVSH, ["init", dir], parent);
  assert.equal(init.code, 0, init.output);
  assert.match(init.output, /hvsh init: made .*mykernel: boot\.S, kernel_test\.ts, deno\.json, README\.md/);
  return dir;
}

const FAILING_TEST = `import { assemble, bootKernel, kernelTest } from "hvsh/testing.ts";
const kernel = await assemble("boot.S", { format: "multiboot" });
kernelTest("pang is not a command the kernel knows", async () => {
  await using run = await bootKernel(kernel, { timeout: 5_000 });
  run.serial.send("pang\\n");
  await run.serial.expect("pong");
});
`;

kvmTest("hvsh init makes a project outside the checkout where deno check and deno test -A pass", async () => {
  const dir = await initProject();
  try {
    const config = JSON.parse(await Deno.readTextFile(join(dir, "deno.json")));
    assert.equal(config.imports["hvsh/"], `file://${ROOT}`);
    const check = await run(DENO, ["check", "kernel_test.ts"], dir);
    assert.equal(check.code, 0, check.output);
    const test = await run(DENO, ["test", "-A"], dir);
    assert.equal(test.code, 0, test.output);
    assert.match(test.output, /boot prints the banner and exits 0 \.\.\. ok/);
    assert.match(test.output, /ok \| 2 passed \| 0 failed/);

    await Deno.writeTextFile(join(dir, "failing_test.ts"), FAILING_TEST);
    const failing = await run(DENO, ["test", "-A", "failing_test.ts"], dir);
    assert.equal(failing.code, 1, failing.output);
    assert.match(failing.output, /pang is not a command the kernel knows \.\.\. FAILED/);
    assert.match(failing.output, /KernelTestError: Cannot wait for \/pong\/ on the serial port: the VM stopped first/);
    assert.match(
      failing.output,
      /guest output \(last 12 lines\):\n {2}\| mykernel banner v1\n.*\n {2}\| unknown command: pang/,
    );
    assert.match(failing.output, /registers:\nrax /);
    assert.match(failing.output, /code at the stop:\n=> 0x[0-9a-f]+ <halt>/);

    const again = await run(HVSH, ["init", dir], dir);
    assert.equal(again.code, 2);
    assert.match(again.output, /hvsh init: .*mykernel is not empty/);
  } finally {
    await Deno.remove(join(dir, ".."), { recursive: true });
  }
});

kvmTest("the README's kernel test example runs as written in a project made by hvsh init", async () => {
  const readme = await Deno.readTextFile(join(ROOT, "README.md"));
  const section = readme.slice(readme.indexOf("## Testing your kernel"));
  const example = /```ts\n([\s\S]*?)```/.exec(section)?.[1];
  assert.ok(example !== undefined && example.includes("kernelTest("), "README has a Testing your kernel example");
  const dir = await initProject();
  try {
    await Deno.writeTextFile(join(dir, "readme_test.ts"), example);
    const test = await run(DENO, ["test", "-A", "readme_test.ts"], dir);
    assert.equal(test.code, 0, test.output);
    assert.match(test.output, /ok \| 1 passed \| 0 failed/);
  } finally {
    await Deno.remove(join(dir, ".."), { recursive: true });
  }
});

Deno.test({
  name: "HVSH_DEBUG=1 keeps a failing kernel test's VM open and serves gdb on the port it prints",
  ignore: !kvmAvailable || !(await onPath("gdb")),
  fn: async () => {
    const dir = await initProject();
    try {
      await Deno.writeTextFile(join(dir, "failing_test.ts"), FAILING_TEST);
      const child = new Deno.Command(DENO, {
        args: ["test", "-A", "failing_test.ts"],
        cwd: dir,
        env: { NO_COLOR: "1", HVSH_DEBUG: "1" },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
        signal: AbortSignal.timeout(PROCESS_TIMEOUT_MS),
      }).spawn();
      const stdout = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
      const stderr = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
      let seen = "";
      let rest = "";
      const pump = async (reader: ReadableStreamDefaultReader<string>) => {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) return;
          seen += value;
          rest += value;
        }
      };
      const pumps = Promise.all([pump(stdout), pump(stderr)]);
      let address: string | undefined;
      while (address === undefined) {
        address = /target remote (127\.0\.0\.1:\d+)'/.exec(seen)?.[1];
        if (address !== undefined) break;
        const status = await Promise.race([child.status, new Promise((r) => setTimeout(r, 50, undefined))]);
        assert.equal(status, undefined, `deno test ended before serving gdb:\n${seen}`);
      }
      rest = "";
      const gdb = await run("gdb", [
        "-batch",
        "-nx",
        "-ex",
        "set architecture i386:x86-64",
        "-ex",
        `target remote ${address}`,
        "-ex",
        "info symbol $pc",
        "-ex",
        "detach",
      ], dir);
      assert.equal(gdb.code, 0, gdb.output);
      assert.match(gdb.output, /Detaching from program|detached/);
      const status = await child.status;
      await pumps;
      assert.equal(status.code, 1, seen);
      assert.match(seen, /hvsh: kernel test "pang is not a command the kernel knows" failed; its VM stays open/);
      assert.match(rest, /unknown command: pang/, "the failure is reported after gdb left");
    } finally {
      await Deno.remove(join(dir, ".."), { recursive: true });
    }
  },
});

kvmTest(
  "hvsh test-suite FILE --jobs 2 prints a line per case and a summary; exit status 1 when a case fails",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "hvsh-suite-" });
    try {
      const table = [
        { name: "hello", kernel: await guest("hello32.elf") },
        { name: "exit42", kernel: await guest("exit42.elf"), expect: 85 },
      ];
      await Deno.writeTextFile(join(dir, "suite.json"), JSON.stringify(table));
      const passing = await run(HVSH, ["test-suite", "suite.json", "--jobs", "2", "--log-dir", "logs"], dir);
      assert.equal(passing.code, 0, passing.output);
      assert.match(passing.output, /^PASS hello \(\d+\.\d\d s\)$/m);
      assert.match(passing.output, /^PASS exit42 \(/m);
      assert.match(passing.output, /^SUMMARY: 2 passed, 0 failed, 0 skipped \(2 cases\)$/m);
      assert.match(await Deno.readTextFile(join(dir, "logs", "hello.log")), /\nhello\n/);

      await Deno.writeTextFile(join(dir, "failing.json"), JSON.stringify({ cases: [{ ...table[1], expect: 1 }] }));
      const failing = await run(HVSH, ["test-suite", "failing.json"], dir);
      assert.equal(failing.code, 1, failing.output);
      assert.match(failing.output, /^FAIL exit42 \(exit status 85, expected 1; /m);

      await Deno.writeTextFile(join(dir, "bad.json"), "{ not json");
      const bad = await run(HVSH, ["test-suite", "bad.json"], dir);
      assert.equal(bad.code, 2);
      assert.match(bad.output, /hvsh test-suite: cannot parse .*bad\.json as JSON/);
      const usage = await run(HVSH, ["test-suite", "suite.json", "--jobs", "0"], dir);
      assert.equal(usage.code, 2);
      assert.match(usage.output, /invalid --jobs "0"/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

/** True when this process may hide /dev/kvm from a child (a private mount namespace with /dev/null bound over it). */
async function canHideKvm(): Promise<boolean> {
  try {
    const probe = new Deno.Command("unshare", {
      args: ["-m", "sh", "-c", "mount --bind /dev/null /dev/kvm"],
      stdout: "null",
      stderr: "null",
    });
    return (await probe.output()).success;
  } catch {
    return false;
  }
}

Deno.test({
  name:
    "kernelTest() is reported as ignored, with the reason, where /dev/kvm is not KVM (a test importing hvsh by path)",
  ignore: !(await canHideKvm()),
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "hvsh-no-kvm-" });
    try {
      await Deno.writeTextFile(
        join(dir, "by_path_test.ts"),
        `import { bootKernel, kernelTest, kvmAvailable } from "${join(ROOT, "testing.ts")}";\n` +
          `kernelTest("needs kvm", async () => {\n  await using run = await bootKernel("k.elf");\n});\n` +
          `Deno.test("kvmAvailable is false", () => { if (kvmAvailable) throw new Error("KVM seen"); });\n`,
      );
      const check = await run(DENO, ["check", "by_path_test.ts"], dir);
      assert.equal(check.code, 0, check.output);
      const test = await run("unshare", [
        "-m",
        "sh",
        "-c",
        `mount --bind /dev/null /dev/kvm && exec "${DENO}" test -A by_path_test.ts`,
      ], dir);
      assert.equal(test.code, 0, test.output);
      assert.match(test.output, /KVM tests ignored: cannot use \/dev\/kvm \(.+\)/);
      assert.match(test.output, /needs kvm \.\.\. ignored/);
      assert.match(test.output, /ok \| 1 passed \| 0 failed \| 1 ignored/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
