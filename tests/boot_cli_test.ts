/**
 * `./hvsh boot` as a user runs it: real processes, real guests, the exit
 * statuses the issue fixes ((V << 1) | 1 for the debug-exit port, 0 for a
 * final halt, 4 for a crash with a one-line diagnosis, 124 for --timeout, 2 for
 * a usage or image error) and COM1 on stdout/stdin.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { guest, kvmAvailable, runHvsh } from "./_helpers.ts";

const HVSH = new URL("../hvsh", import.meta.url).pathname;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function boot(args: string[], input = ""): Promise<Run> {
  return await runHvsh(["boot", ...args], { input, timeoutMs: 30_000 });
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

kvmTest(
  "hvsh boot exits 4 on a triple fault with a diagnosis naming rip, mode and the IDT that cannot deliver",
  async () => {
    const run = await boot(["--kernel", await guest("triple_fault.elf")]);
    assert.equal(run.code, 4);
    assert.match(
      run.stderr,
      /^hvsh: guest crashed: triple fault \(KVM_EXIT_SHUTDOWN\) at rip 0x[0-9a-f]+ <fault_here> \(long mode, vCPU 0\)\n/,
    );
    // The guest loaded an IDT with limit 0 before its ud2: KVM_GET_VCPU_EVENTS and the IDT say why it died.
    assert.match(
      run.stderr,
      /^hvsh: {3}IDT base 0x0 limit 0x0: no vector can be delivered \(an exception becomes #GP, then #DF, then a triple fault\)$/m,
    );
    assert.ok(run.stderr.split("\n").slice(1, -1).every((line) => line.startsWith("hvsh:   ")), run.stderr);
  },
);

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

// ------------------------------------------------------------ issue 12: CLI polish and unknown formats

/** `./hvsh ARGS` with nothing on stdin. */
async function hvsh(args: string[]): Promise<Run> {
  const out = await new Deno.Command(HVSH, {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(30_000),
  }).output();
  return { code: out.code, stdout: new TextDecoder().decode(out.stdout), stderr: new TextDecoder().decode(out.stderr) };
}

Deno.test("hvsh --help lists test and bench; run --help and bench --help print usage; a typo is an unknown command", async () => {
  const help = await hvsh(["--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /^ +hvsh test \[FILES\]/m);
  assert.match(help.stdout, /^ +hvsh bench \[OPTIONS\]/m);
  const run = await hvsh(["run", "--help"]);
  assert.equal(run.code, 0);
  assert.match(run.stdout, /^usage: hvsh run (\[--no-check\] )?SCRIPT\.ts/);
  assert.equal(run.stderr, "");
  const bench = await hvsh(["bench", "--help"]);
  assert.equal(bench.code, 0, bench.stderr);
  assert.match(bench.stdout, /^usage: hvsh bench /);
  assert.equal(bench.stderr, "", "no stack trace");
  assert.ok(!(bench.stdout + bench.stderr).includes("\x1b"), "no colour escapes into a pipe");
  assert.doesNotMatch(bench.stdout + bench.stderr, /TypeError/);
  const typo = await hvsh(["frobnicate"]);
  assert.equal(typo.code, 2);
  assert.match(
    typo.stderr,
    /^hvsh: unknown command "frobnicate" \(commands: boot, [\w, -]*run, [\w, -]*test, bench, [\w, -]*help; /,
  );
  assert.doesNotMatch(typo.stderr, /Cannot read kernel image/);
});

kvmTest("hvsh boot --append takes a value starting with - (kvm-unit-tests' -vmx_test)", async () => {
  const kernel = await guest("mb_hello.elf");
  const run = await boot(["--kernel", kernel, "--append", "-vmx_test"]);
  assert.equal(run.code, 1, run.stderr);
  assert.match(run.stdout, new RegExp(`^cmdline=${kernel.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")} -vmx_test$`, "m"));
});

kvmTest("hvsh boot --mem 1T is refused before any guest memory is set up", async () => {
  const run = await boot(["--kernel", await guest("hello64.elf"), "--mem", "1T"]);
  assert.equal(run.code, 2);
  assert.match(run.stderr, /^hvsh boot: Cannot give the guest 1024 GiB of RAM: this host has \d+ GiB of memory/m);
  assert.equal(run.stdout, "");
});

kvmTest(
  "hvsh boot refuses files without a bootable signature (text, random bytes, a bzImage) with status 2",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "hvsh-format-" });
    try {
      const text = join(dir, "notes.txt");
      await Deno.writeTextFile(text, "These are notes, not a kernel.\n");
      const noise = join(dir, "noise.bin");
      await Deno.writeFile(noise, new Uint8Array(8192).map((_, i) => (i * 151 + 7) & 0xff));
      const bzImage = join(dir, "bzImage");
      const bz = new Uint8Array(0x4000);
      bz.set([0x55, 0xaa], 510);
      bz.set(new TextEncoder().encode("HdrS"), 0x202);
      await Deno.writeFile(bzImage, bz);

      const textRun = await boot(["--kernel", text, "--timeout", "5"]);
      assert.equal(textRun.code, 2, textRun.stderr);
      assert.match(
        textRun.stderr,
        /^hvsh boot: Cannot load image ".*notes\.txt": no ELF, multiboot or boot-sector signature \(31 bytes of text, starting 54 68 65 73/m,
      );
      const noiseRun = await boot(["--kernel", noise, "--timeout", "5"]);
      assert.equal(noiseRun.code, 2, noiseRun.stderr);
      assert.match(noiseRun.stderr, /no ELF, multiboot or boot-sector signature \(8192 bytes, starting 07 9e/);
      const bzRun = await boot(["--kernel", bzImage, "--timeout", "5"]);
      assert.equal(bzRun.code, 2, bzRun.stderr);
      // "HdrS" alone makes it a bzImage; the Linux loader refuses it naming the field and value.
      assert.match(
        bzRun.stderr,
        /Cannot load bzImage ".*bzImage": boot protocol version is 0x0000 \(0\.00\); hvsh needs 2\.06/,
      );
      // Asked for, any bytes run as a flat image: the text's first bytes are code that ends in a crash or the timeout.
      const flatRun = await boot(["--kernel", text, "--format", "flat", "--timeout", "1"]);
      assert.ok([4, 124].includes(flatRun.code), `status ${flatRun.code}: ${flatRun.stderr}`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);
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
