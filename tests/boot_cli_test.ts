/**
 * `./hvsh boot` as a user runs it: real processes, real guests, the exit
 * statuses the issue fixes ((V << 1) | 1 for the debug-exit port, 0 for a
 * final halt, 4 for a crash with a one-line diagnosis, 124 for --timeout, 2 for
 * a usage or image error) and COM1 on stdout/stdin.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { guest, kvmAvailable } from "./_helpers.ts";

const HVSH = new URL("../hvsh", import.meta.url).pathname;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function boot(args: string[], input = ""): Promise<Run> {
  const child = new Deno.Command(HVSH, {
    args: ["boot", ...args],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(30_000),
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(input));
  await writer.close();
  const out = await child.output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

function kvmTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, ignore: !kvmAvailable, fn });
}

for (const [name, mode] of [["hello16.bin", "real"], ["hello32.elf", "ELF32"], ["hello64.elf", "ELF64"]]) {
  kvmTest(`hvsh boot runs ${name} (${mode}): "hello" on stdout, status 1 for debug-exit value 0`, async () => {
    const run = await boot(["--kernel", await guest(name!)]);
    assert.equal(run.stdout, "hello\n");
    assert.equal(run.stderr, "");
    assert.equal(run.code, 1);
  });
}

kvmTest("hvsh boot passes --append and --initrd to a multiboot kernel as its command line and module 1", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const initrd = join(dir, "initrd.txt");
    await Deno.writeTextFile(initrd, "initrd-bytes\n");
    const kernel = await guest("mb_hello.elf");
    const run = await boot(["--kernel", kernel, "--append", "console=ttyS0 x=1", "--initrd", initrd]);
    assert.equal(run.code, 1, run.stderr);
    assert.match(run.stdout, /^multiboot ok$/m);
    assert.match(run.stdout, new RegExp(`^cmdline=${kernel} console=ttyS0 x=1$`, "m"));
    assert.match(run.stdout, /^mods=1$/m);
    assert.match(run.stdout, /^mod0=initrd-bytes$/m);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

kvmTest("hvsh boot exits with (V << 1) | 1 = 85 when the guest writes 42 to port 0xf4", async () => {
  assert.equal((await boot(["--kernel", await guest("exit42.elf")])).code, 85);
});

kvmTest("hvsh boot exits 0 when the guest halts for good", async () => {
  const run = await boot(["--kernel", await guest("halt.elf")]);
  assert.equal(run.code, 0);
  assert.equal(run.stdout, "halting\n");
});

kvmTest("hvsh boot exits 4 on a triple fault with a one-line diagnosis naming rip and mode", async () => {
  const run = await boot(["--kernel", await guest("triple_fault.elf")]);
  assert.equal(run.code, 4);
  assert.match(
    run.stderr,
    /^hvsh: guest crashed: triple fault \(KVM_EXIT_SHUTDOWN\) at rip 0x[0-9a-f]+ <fault_here> \(long mode, vCPU 0\)\n$/,
  );
});

kvmTest("hvsh boot exits 124 on --timeout for a guest that spins without exits", async () => {
  const run = await boot(["--kernel", await guest("spin.elf"), "--timeout", "0.3"]);
  assert.equal(run.code, 124);
  assert.equal(run.stdout, "spinning\n");
  assert.match(run.stderr, /^hvsh: timed out at rip 0x[0-9a-f]+ <spin_here> /);
});

kvmTest("hvsh boot feeds stdin (a pipe) to the guest's serial port", async () => {
  const run = await boot(["--kernel", await guest("echo.elf")], "abq");
  assert.equal(run.code, 1);
  assert.equal(run.stdout, "abq\nbye\n");
});

kvmTest("hvsh boot exits 2 with a message naming what was wrong for usage and image errors", async () => {
  const missing = await boot(["--kernel", "/nonexistent/kernel.elf"]);
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /Cannot read kernel image \/nonexistent\/kernel\.elf/);
  const usage = await boot([]);
  assert.equal(usage.code, 2);
  assert.match(usage.stderr, /^hvsh boot: Missing --kernel FILE\nusage: hvsh boot/);
  const dir = await Deno.makeTempDir();
  try {
    const truncated = join(dir, "truncated.elf");
    await Deno.writeFile(truncated, new Uint8Array([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0]));
    const bad = await boot(["--kernel", truncated, "--mem", "16M"]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /^hvsh boot: Cannot (load|parse) ELF/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  const mem = await boot(["--kernel", "x", "--mem", "12Q"]);
  assert.equal(mem.code, 2);
  assert.match(mem.stderr, /Invalid memory size: "12Q"/);
});

kvmTest("hvsh boot --boot-timer prints the phases it saw on stderr, and a dash for those it did not", async () => {
  const run = await boot(["--kernel", await guest("hello64.elf"), "--boot-timer"]);
  assert.equal(run.code, 1, run.stderr);
  assert.equal(run.stdout, "hello\n");
  const lines = run.stderr.trimEnd().split("\n");
  assert.equal(lines[0], "hvsh boot timer (ms since process start, +ms since the previous phase):");
  const seen = ["hvsh start", "vm created", "image loaded", "first guest instruction"];
  const at = seen.map((phase) => {
    const line = lines.find((l) => l.startsWith(`  ${phase} `));
    assert.ok(line, `${phase} in:\n${run.stderr}`);
    return Number(/ (\d+\.\d) +\+/.exec(line)![1]);
  });
  assert.deepEqual([...at].sort((a, b) => a - b), at, "phases in time order");
  for (const phase of ["kernel banner", "Run /init", "user space", "guest mark"]) {
    assert.ok(lines.some((l) => new RegExp(`^  ${phase.replace("/", "\\/")} +—$`).test(l)), `${phase} not seen`);
  }
});
