/**
 * The REPL with stdin piped (transcripts): `./hvsh` is spawned as a real
 * process, lines are written to its stdin, and its plain output (NO_COLOR,
 * no prompt) is checked. Every dot command, TypeScript evaluation, error
 * recovery, `.save` replayed by `./hvsh run`, and the launcher's options.
 *
 * Each spawned REPL gets HVSH_HISTORY in a temporary folder (never the
 * user's ~/.hvsh_history) and a time limit. Tests that need `/dev/kvm` are
 * ignored without it. Tests marked `// Regression:` guard bugs that were found and
 * fixed.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { readElfSymbols } from "../core/loader/elf.ts";
import { guest, kvmAvailable, kvmMissingReason, runHvsh } from "./_helpers.ts";
import { loadedOccurrences, returnSite } from "./_elf_facts.ts";
import { findTinyKernel } from "../scripts/build_linux.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const HVSH = join(ROOT, "hvsh");
/** Longest a spawned REPL may run before the test calls it hung (the slowest here takes ~1 s). */
const PROCESS_TIMEOUT_MS = 20_000;
/** A line the REPL prints between the outputs of two input lines (see `steps`). */
const MARK = "@@hvsh-step@@";

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function kvmTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, ignore: !kvmAvailable, fn });
}

async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "hvsh-repl-test-" });
  try {
    return await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Runs `./hvsh ARGS` (or another launcher command line) with `input` on stdin; bounded in time. */
async function hvsh(args: string[], input: string, options: { env?: Record<string, string> } = {}): Promise<Run> {
  return await withTempDir(async (dir) => {
    const history = join(dir, "history");
    const out = await runHvsh(args, {
      input,
      env: { HVSH_HISTORY: history, ...options.env },
      timeoutMs: PROCESS_TIMEOUT_MS,
    });
    const run = { code: out.code, stdout: out.stdout, stderr: out.stderr };
    assert.equal(out.signal, null, `./hvsh ${args.join(" ")} was killed (${out.signal}): hung?\n${run.stdout}`);
    // Piped sessions never write history.
    assert.equal(await exists(history), false, "a piped session wrote HVSH_HISTORY");
    return run;
  });
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Runs the lines in one REPL and returns what each line printed: after each
 * line the REPL runs `console.log(MARK)`, and stdout is split at the marks.
 * (The marks join the session's transcript, so `.save` tests do without.)
 */
async function steps(args: string[], lines: string[]): Promise<{ out: string[]; run: Run }> {
  const input = lines.flatMap((line) => [line, `console.log(${JSON.stringify(MARK)})`]).join("\n") + "\n";
  const run = await hvsh(args, input);
  assert.equal(run.code, 0, `exit status ${run.code}\nstdout:\n${run.stdout}\nstderr:\n${run.stderr}`);
  assert.equal(run.stderr, "");
  const parts = run.stdout.split(`${MARK}\n`);
  assert.equal(parts.length, lines.length + 1, `expected ${lines.length} marks in:\n${run.stdout}`);
  return { out: parts.slice(0, lines.length).map((p) => p.replace(/\n$/, "")), run };
}

/** `steps` on the dbg64 guest (`./hvsh --kernel dbg64.elf`). */
async function dbg(lines: string[]): Promise<string[]> {
  return (await steps(["--kernel", await guest("dbg64.elf")], lines)).out;
}

let dbgSymbols: Map<string, bigint> | undefined;
/** The address of a dbg64 symbol, read from the ELF file itself. */
async function dbgSymbol(name: string): Promise<bigint> {
  dbgSymbols ??= new Map(readElfSymbols(await Deno.readFile(await guest("dbg64.elf"))).map((s) => [s.name, s.address]));
  const address = dbgSymbols.get(name);
  if (address === undefined) throw new Error(`dbg64.elf has no symbol ${name}`);
  return address;
}

const hex = (value: bigint) => `0x${value.toString(16)}`;
const escape = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/** The first line of a context view: `[REASON ... rip 0x... <SYMBOL> (long mode, vCPU 0)]`. */
function stopLine(text: string): string {
  const line = text.split("\n").find((l) => /^\[.*\brip 0x[0-9a-f]+ .*\]$/.test(l));
  assert.ok(line !== undefined, `no stop line in:\n${text}`);
  return line;
}

/** Asserts a full context view: stop line, registers, code with the `=>` marker, stack. */
function assertContext(text: string, reason: RegExp, symbol: string): void {
  assert.match(stopLine(text), reason);
  assert.match(stopLine(text), new RegExp(`<${escape(symbol)}> \\(long mode, vCPU 0\\)\\]$`));
  assert.match(text, /^rax [0-9a-f]{16} {2}rbx [0-9a-f]{16} {2}rcx [0-9a-f]{16}$/m);
  assert.match(text, /rip [0-9a-f]{16}$/m);
  assert.match(text, /^rflags [0-9a-f]{8} \[/m);
  assert.match(text, /^code:$/m);
  assert.match(text, new RegExp(`^=> 0x[0-9a-f]+ <${escape(symbol)}>: `, "m"));
  assert.match(text, /^stack:$/m);
}

// ------------------------------------------------------------ no KVM needed

Deno.test(".help lists every dot command with its usage; .help CMD shows one; unknown topics say so", async () => {
  const out = (await steps(["--empty"], [".help", ".help break", ".help .step", ".help nosuch"])).out;
  assert.match(out[0]!, /^Dot commands \(anything else is TypeScript/);
  for (
    const usage of [
      ".help [COMMAND]",
      ".vm new [MEMORY]|list|use NAME|close [NAME]",
      ".load FILE [ADDR] [--initrd FILE|DIR] [--symbols System.map] [--append CMDLINE]",
      ".regs [NAME...|NAME=VALUE]",
      ".sregs",
      ".x/NFU [ADDR]",
      ".hexdump ADDR [LEN]",
      ".dis [ADDR] [N]",
      ".break ADDR|SYMBOL [if EXPR]",
      ".hbreak ADDR|SYMBOL [if EXPR]",
      ".watch ADDR|SYMBOL [LEN] [r|w|rw]",
      ".delete N",
      ".info breakpoints",
      ".step [N]",
      ".next",
      ".finish",
      ".cont [SECONDS]",
      ".until ADDR|SYMBOL",
      ".pause",
      ".bt",
      ".sym NAME|EXPR",
      ".pt ADDR",
      ".context [on|off|N]",
      ".console",
      ".gdb [PORT]",
      ".save FILE",
      ".load-script FILE",
      ".exit",
    ]
  ) {
    assert.match(out[0]!, new RegExp(`^ {2}${escape(usage)} +\\S`, "m"), `.help lacks ${usage}`);
  }
  assert.match(out[1]!, /^\.break ADDR\|SYMBOL \[if EXPR\]\n {2}software breakpoint/);
  assert.match(out[2]!, /^\.step \[N\]\n {2}execute N instructions/);
  assert.equal(out[3], "Unknown command .nosuch\nusage: .help [COMMAND]");
});

Deno.test("TypeScript: declarations persist across lines, top-level await, types stripped, bigints in hex", async () => {
  const out = (await steps(["--empty"], [
    "const a = 2",
    "a * 21",
    "let s: string = `x${a}`, unset",
    "s",
    "unset",
    "function twice(n: number): number { return n * 2 }",
    "twice(a)",
    "class Box { v = 7 }",
    "new Box().v",
    "const { p, q: [r] } = { p: 1, q: [3] }",
    "p + r",
    "await new Promise((resolve) => setTimeout(() => resolve('late'), 10))",
    "const later = await Promise.resolve(40); later + a",
    "1n << 40n",
    "-255n",
    "({ big: 16n, list: [1n, 2], nested: { deep: 255n } })",
    "interface Pt { x: number } const pt: Pt = { x: 5 }; pt.x",
    "null",
    "undefined",
  ])).out;
  assert.deepEqual(out, [
    "",
    "42",
    "",
    '"x2"',
    "",
    "",
    "4",
    "",
    "7",
    "",
    "4",
    '"late"',
    "42",
    "0x10000000000n",
    "-0xffn",
    "{ big: 0x10n, list: [ 0x1n, 2 ], nested: { deep: 0xffn } }",
    "5",
    "null",
    "",
  ]);
});

Deno.test("errors print one message and the session goes on (no VM)", async () => {
  const out = (await steps(["--empty"], [
    "const kept = 1",
    "1 + )",
    "throw new Error('boom')",
    "throw 'plain'",
    "nosuch.prop",
    ".nosuch",
    ".sta",
    ".regs",
    ".vm bogus",
    ".vm use nope",
    "kept + 1",
  ])).out;
  assert.equal(out[0], "");
  assert.match(out[1]!, /^SyntaxError: Unexpected "\)" \(column \d+\)$/);
  assert.equal(out[2], "Error: boom");
  assert.equal(out[3], "Uncaught plain");
  assert.equal(out[4], "ReferenceError: nosuch is not defined");
  assert.equal(out[5], "Unknown command .nosuch; .help lists them");
  assert.equal(out[6], "Unknown command .sta (did you mean .step?); .help lists them");
  assert.equal(out[7], "Error: No VM: create one with .vm new [MEMORY] or `vm = await Vm.create()`");
  assert.equal(out[8], 'Unknown .vm verb "bogus"\nusage: .vm new [MEMORY]|list|use NAME|close [NAME]');
  assert.equal(out[9], 'RangeError: No VM named "nope" (VMs: none)');
  assert.equal(out[10], "2");
});

Deno.test("./hvsh with bad options exits 2 with a message and the usage", async () => {
  for (const args of [["--bogus"], ["--kernel"], ["--kernel", "x.elf", "--format", "nope"]]) {
    const run = await hvsh(args, "");
    assert.equal(run.code, 2, `./hvsh ${args.join(" ")}`);
    assert.equal(run.stdout, "");
    assert.match(run.stderr, /^hvsh: .+\nusage: hvsh \[--kernel FILE \[boot options\] \| --empty\]\n$/);
  }
});

// ------------------------------------------------------------------ VMs

kvmTest("./hvsh --kernel with a missing file exits 2 with one message naming it", async () => {
  const run = await hvsh(["--kernel", "/nonexistent/kernel.elf"], ".regs rip\n");
  assert.equal(run.code, 2);
  assert.equal(run.stdout, "");
  assert.match(run.stderr, /^hvsh: Cannot read kernel image \/nonexistent\/kernel\.elf: .*\n$/);
});

kvmTest("./hvsh --empty, then .vm new / .load / .vm list; .vm new/list/use/close with two VMs", async () => {
  const dbg64 = await guest("dbg64.elf");
  const entry = await dbgSymbol("_start");
  const out = (await steps(["--empty"], [
    ".vm",
    ".vm new",
    ".regs rip",
    ".load " + dbg64,
    ".regs rip",
    ".vm new 16M",
    ".vm list",
    ".regs rip",
    ".vm use vm1",
    ".vm list",
    ".regs rip",
    ".vm close vm2",
    ".vm list",
    ".vm close",
    ".vm list",
    ".regs",
    ".vm new 1G",
    ".vm list",
    ".vm new 12Q",
  ])).out;
  assert.equal(out[0], "no VMs");
  assert.equal(out[1], "vm1: new VM with 64M RAM (current)");
  assert.equal(out[2], "rip = 0xfff0", "a new VM starts at the reset vector");
  assert.match(out[3]!, new RegExp(`^loaded ${escape(dbg64)}: elf, long mode, entry ${hex(entry)}, \\d+ symbols$`));
  assert.equal(out[4], `rip = ${hex(entry)}`);
  assert.equal(out[5], "vm2: new VM with 16M RAM (current)");
  assert.equal(out[6], "  vm1  stopped  64 MiB  elf\n* vm2  stopped  16 MiB  no image");
  assert.equal(out[7], "rip = 0xfff0");
  assert.equal(out[8], "vm1 is current");
  assert.equal(out[9], "* vm1  stopped  64 MiB  elf\n  vm2  stopped  16 MiB  no image");
  assert.equal(out[10], `rip = ${hex(entry)}`);
  assert.equal(out[11], "closed vm2");
  assert.equal(out[12], "* vm1  stopped  64 MiB  elf");
  assert.equal(out[13], "closed the VM");
  assert.equal(out[14], "no VMs");
  assert.match(out[15]!, /^Error: No VM/);
  assert.equal(out[16], "vm3: new VM with 1G RAM (current)");
  assert.equal(out[17], "* vm3  stopped  1024 MiB  no image");
  assert.match(out[18]!, /12Q/);
  assert.equal(out[18]!.split("\n").length, 1);
});

kvmTest(".regs, .regs NAME=VALUE, .regs NAME; cpu.regs from TypeScript agrees", async () => {
  const entry = await dbgSymbol("_start");
  const out = await dbg([
    ".regs",
    ".regs rax=0x10",
    ".regs rax",
    ".regs rbx=42",
    "cpu.regs.rbx",
    ".regs rip",
    "cpu.regs.rip",
  ]);
  const regs = out[0]!.split("\n");
  assert.equal(regs.length, 7);
  assert.equal(regs[0], "rax 0000000000000000  rbx 0000000000000000  rcx 0000000000000000");
  assert.equal(regs[5], `r15 0000000000000000  rip ${entry.toString(16).padStart(16, "0")}`);
  assert.match(regs[6]!, /^rflags 00000002 \[ {2}\]$/);
  assert.equal(out[1], "rax = 0x10");
  assert.equal(out[2], "rax = 0x10");
  assert.equal(out[3], "rbx = 0x2a");
  assert.equal(out[4], "0x2an");
  assert.equal(out[5], `rip = ${hex(entry)}`);
  assert.equal(out[6], `${hex(entry)}n`);
});

kvmTest(".sregs decodes segments, CR0 and EFER of a long-mode guest", async () => {
  const [sregs] = await dbg([".sregs"]);
  assert.match(sregs!, /^cs {3}0x8 +base 0x0 +limit 0xffffffff +dpl 0 code 64-bit$/m);
  assert.match(sregs!, /^ss {3}0x10 +base 0x0 .* data /m);
  assert.match(sregs!, /^cr0 {2}0x[0-9a-f]+ +PE .*\bPG$/m);
  assert.match(sregs!, /^cr4 {2}0x[0-9a-f]+ +.*\bPAE\b/m);
  assert.match(sregs!, /^efer 0x[0-9a-f]+ +.*\bLME LMA\b/m);
  assert.match(sregs!, /^gdt {2}base 0x[0-9a-f]+ limit 0x[0-9a-f]+$/m);
});

kvmTest(".x/NFU, .dis, .hexdump and .sym read the guest by symbol and address", async () => {
  const bump = await dbgSymbol("bump");
  const answer = await dbgSymbol("answer");
  const out = await dbg([
    ".x/4xb bump",
    ".x/2i bump",
    ".x/1xg answer",
    ".x/1dg answer",
    ".dis bump 3",
    ".dis",
    ".hexdump answer 16",
    ".hexdump answer",
    ".sym level1",
    `.sym ${hex(bump + 4n)}`,
    ".sym 0x999999999",
    ".x/2xg $rsp",
  ]);
  // Every dbg64 function starts with `push rbp; mov rbp, rsp` (55 48 89 e5).
  assert.equal(out[0], `${hex(bump)} <bump>:\t0x55\t0x48\t0x89\t0xe5`);
  const two = out[1]!.split("\n");
  assert.equal(two.length, 2);
  assert.match(two[0]!, new RegExp(`^ {3}${hex(bump)} <bump>: +55 +push rbp$`));
  assert.match(two[1]!, new RegExp(`^ {3}${hex(bump + 1n)} <bump\\+1>: +48 89 e5 +mov rbp, rsp$`));
  assert.equal(out[2], `${hex(answer)} <answer>:\t0x000000000000002a`);
  assert.equal(out[3], `${hex(answer)} <answer>:\t42`);
  const dis = out[4]!.split("\n");
  assert.equal(dis.length, 3);
  assert.match(dis[0]!, /<bump>: +55 +push rbp$/);
  assert.match(dis[2]!, /<bump\+4>: /);
  const atRip = out[5]!.split("\n");
  assert.equal(atRip.length, 10, ".dis shows 10 instructions by default");
  assert.match(atRip[0]!, /^=> 0x[0-9a-f]+ <_start>: /);
  assert.equal(
    out[6],
    `${answer.toString(16).padStart(16, "0")}  2a 00 00 00 00 00 00 00 ${"00 ".repeat(8).trimEnd()}  *...............`,
  );
  assert.equal(out[7]!.split("\n").length, 4, ".hexdump shows 64 bytes by default");
  assert.equal(out[8], `level1 = ${hex(await dbgSymbol("level1"))}`);
  assert.equal(out[9], `${hex(bump + 4n)} = bump+4`);
  assert.equal(out[10], "0x999999999 = (no symbol)");
  assert.match(out[11]!, /^0x0:\t0x[0-9a-f]{16}\t0x[0-9a-f]{16}$/, "$rsp is 0 at the entry");
});

kvmTest(".pt walks the four paging levels of a mapped and of an unmapped address", async () => {
  const bump = await dbgSymbol("bump");
  const out = await dbg([".pt bump", ".pt 0xffffffffffff0000"]);
  const lines = out[0]!.split("\n");
  assert.equal(lines[0], `${hex(bump)}: 4-level paging`);
  assert.match(lines[1]!, /^ {2}PML4E {2}@ 0x[0-9a-f]+ += 0x[0-9a-f]+ +P /);
  assert.match(lines[2]!, /^ {2}PDPTE {2}@ /);
  assert.match(lines[3]!, /^ {2}PDE {4}@ /);
  assert.match(lines.at(-1)!, new RegExp(`^ {2}-> physical ${hex(bump)} `));
  assert.match(out[1]!, /-> not mapped: PML4E not present$/);
});

kvmTest(".break with a condition, .cont, .info breakpoints, .bt, .delete; the guest then runs to its end", async () => {
  const bump = await dbgSymbol("bump");
  const out = await dbg([
    ".break bump if regs.rdi === 1n",
    ".break level1 if regs.rdi === 99n",
    ".cont",
    ".regs rdi",
    ".bt",
    ".cont",
    ".info breakpoints",
    ".delete 1",
    ".info b",
    ".delete 2",
    ".info breakpoints",
    ".cont",
  ]);
  assert.equal(out[0], `Breakpoint 1 at ${hex(bump)} <bump> if regs.rdi === 1n`);
  assert.match(out[1]!, /^Breakpoint 2 at 0x[0-9a-f]+ <level1> if regs\.rdi === 99n$/);
  assertContext(out[2]!, new RegExp(`^\\[breakpoint 1 at rip ${hex(bump)} <bump>`), "bump");
  assert.equal(out[3], "rdi = 0x1");
  const frames = out[4]!.split("\n");
  // The return addresses of the calls, as objdump decodes them (not copied from hvsh's output).
  const elf = await guest("dbg64.elf");
  assert.deepEqual(frames.map((f) => f.replace(/^#(\d+) +0x[0-9a-f]+ in /, "$1 ")), [
    "0 bump",
    `1 ${returnSite(elf, "level3", "bump")}`,
    `2 ${returnSite(elf, "level2", "level3")}`,
    `3 ${returnSite(elf, "level1", "level2")}`,
    `4 ${returnSite(elf, "main", "level1")}`,
    `5 ${returnSite(elf, "_start", "main")}`,
  ]);
  assert.match(stopLine(out[5]!), /^\[breakpoint 1 at rip/);
  assert.equal(
    out[6],
    [
      "Id  Type    En  Address     What            Hits",
      `1   break   y   ${hex(bump).padEnd(12)}bump            hits 2  if regs.rdi === 1n`,
      `2   break   y   ${hex(await dbgSymbol("level1")).padEnd(12)}level1          hits 0  if regs.rdi === 99n`,
    ].join("\n"),
  );
  assert.equal(out[7], "deleted 1");
  assert.equal(out[8]!.split("\n").length, 2);
  assert.equal(out[9], "deleted 2");
  assert.equal(out[10], "No breakpoints or watchpoints.");
  assert.match(out[11]!, /^dbg done counter=15\n\[guest exited with value 0 \(status 1\) at rip /);
});

kvmTest(".hbreak stops at a hardware breakpoint; a fifth one is refused with one message", async () => {
  const out = await dbg([
    ".hbreak level2",
    ".cont",
    ".hbreak level3",
    ".hbreak bump",
    ".hbreak main",
    ".hbreak use_stack",
    ".info breakpoints",
  ]);
  assert.equal(out[0], `Hardware breakpoint 1 at ${hex(await dbgSymbol("level2"))} <level2>`);
  assertContext(out[1]!, /^\[breakpoint 1 at rip 0x[0-9a-f]+ <level2>/, "level2");
  assert.match(out[4]!, /^Hardware breakpoint 4 at /);
  assert.match(out[5]!, /^RangeError: Cannot set a hardware breakpoint: all 4 debug registers/);
  assert.equal(out[5]!.split("\n").length, 1);
  assert.match(out[6]!, /^1 +hbreak +y +0x[0-9a-f]+ +level2 +hits 1$/m);
  assert.equal(out[6]!.split("\n").length, 5);
});

kvmTest(".watch counter stops on each write with old and new values; .delete removes it", async () => {
  const counter = await dbgSymbol("counter");
  const out = await dbg([
    ".watch counter",
    ".cont",
    ".cont",
    "mem.readU64(debug.symbol('counter'))",
    ".info breakpoints",
    ".delete 1",
    ".cont",
    ".watch answer 8 r",
    ".watch counter 4 rw",
  ]);
  assert.equal(out[0], `Watchpoint 1: write of 8 bytes at ${hex(counter)} <counter>`);
  assertContext(
    out[1]!,
    new RegExp(`^\\[watchpoint 1: write of 8 bytes at ${hex(counter)}: 0x0 -> 0x1 by the instruction at 0x`),
    stopLine(out[1]!).match(/<([^>]+)> \(long mode/)![1]!,
  );
  assert.match(stopLine(out[1]!), /<bump\+\d+> \(long mode/);
  assert.match(stopLine(out[2]!), /: 0x1 -> 0x2 by /);
  assert.equal(out[3], "0x2n");
  assert.match(out[4]!, new RegExp(`^1 +watch-w +y +${hex(counter)} +counter +hits 2 +len 8$`, "m"));
  assert.equal(out[5], "deleted 1");
  assert.match(out[6]!, /^dbg done counter=15\n/);
  assert.match(out[7]!, /^Watchpoint 2: read of 8 bytes at 0x[0-9a-f]+ <answer>$/);
  assert.match(out[8]!, /^Watchpoint 3: access of 4 bytes at 0x[0-9a-f]+ <counter>$/);
});

kvmTest(".step N, .next over a call, .finish out of a function, .until; each prints the context view", async () => {
  const out = await dbg([
    ".break level2",
    ".cont",
    ".step 2",
    ".next",
    "mem.readU64(debug.symbol('counter'))",
    ".finish",
    ".delete 1",
    ".until bump",
    ".step",
    "vm.debug.symbolize(cpu.regs.rip)",
  ]);
  assertContext(out[1]!, /^\[breakpoint 1 at rip/, "level2");
  assertContext(out[2]!, /^\[step at rip 0x[0-9a-f]+ <level2\+4> /, "level2+4");
  assert.match(out[2]!, /^=> 0x[0-9a-f]+ <level2\+4>: +e8 .*call .*<level3>$/m);
  assertContext(out[3]!, /^\[step at rip 0x[0-9a-f]+ <level2\+9> /, "level2+9");
  assert.equal(out[4], "0x5n", ".next ran level3's five bump(1) calls");
  assertContext(out[5]!, /^\[step at rip 0x[0-9a-f]+ <level1\+9> /, "level1+9");
  assertContext(out[7]!, /^\[step at rip 0x[0-9a-f]+ <bump> /, "bump");
  assertContext(out[8]!, /^\[step at rip 0x[0-9a-f]+ <bump\+1> /, "bump+1");
  assert.equal(out[9], '"bump+1"');
});

kvmTest(".context shows the view now; off prints only the stop line; N sets the instructions shown", async () => {
  const out = await dbg([".context", ".context off", ".step", ".context on", ".context 2", ".step", ".context x"]);
  assert.equal(out[0]!.split("\n").length, 7 + 1 + 4 + 1 + 4);
  assert.match(out[0]!, /^rax /);
  assert.match(out[0]!, /^code:\n=> 0x[0-9a-f]+ <_start>: /m);
  // rsp is 0: the stack view shows the real-mode IVT, every vector at F000:FF53 (the BIOS-state iret stub).
  assert.match(out[0]!, /^stack:\n {2}0x0: 0xf000ff53f000ff53$/m);
  assert.equal(out[1], "");
  assert.match(out[2]!, /^\[step at rip 0x[0-9a-f]+ <_start\+1> \(long mode, vCPU 0\)\]$/);
  assert.equal(out[3], "");
  assert.equal(out[4], "");
  const code = out[5]!.split("\n");
  const at = code.indexOf("code:");
  assert.match(code[at + 1]!, /^=> .*<_start\+2>/);
  assert.match(code[at + 2]!, /^ {3}0x/);
  assert.equal(code[at + 3], "stack:");
  assert.equal(out[6], 'Invalid argument "x": expected on, off or a number\nusage: .context [on|off|N]');
});

kvmTest(".until, .pause, .console and .gdb when nothing is running or there is no terminal", async () => {
  const out = await dbg([".pause", ".console", ".gdb 0", ".until level2", ".regs rip"]);
  assert.equal(out[0], "the guest is not running");
  assert.equal(out[1], "The console needs an interactive terminal\nusage: .console");
  assert.match(out[2]!, /^gdb: target remote 127\.0\.0\.1:[1-9]\d* /, "the port the system chose");
  assert.match(stopLine(out[3]!), /<level2> /);
  assert.equal(out[4], `rip = ${hex(await dbgSymbol("level2"))}`);
});

kvmTest("bad arguments, thrown errors and syntax errors print one message; the VM is untouched", async () => {
  const entry = await dbgSymbol("_start");
  const lines = [
    ".regs foo",
    ".regs rax=abc",
    ".step x",
    ".step 0",
    ".dis bump 0",
    ".x/4zz bump",
    ".x/4xg nosuchsym",
    ".break",
    ".break nosuchsym",
    ".break bump if regs.rdi ===",
    ".watch counter 8 q",
    ".info watchpoints-please",
    ".sym",
    ".load /nonexistent.elf",
    ".nosuch",
    "1 + )",
    "throw new RangeError('thrown')",
    "cpu.regs.rip",
  ];
  const out = await dbg(lines);
  const expected: (string | RegExp)[] = [
    "Unknown register foo\nusage: .regs [NAME...|NAME=VALUE]",
    'Invalid value "abc" for rax: expected a number like 0x10 or 16\nusage: .regs [NAME...|NAME=VALUE]',
    'Invalid count "x": expected a positive integer\nusage: .step [N]',
    'Invalid count "0": expected a positive integer\nusage: .step [N]',
    'Invalid count "0": expected a positive integer\nusage: .dis [ADDR] [N]',
    /^SyntaxError: Cannot parse examine format "\/4zz"/,
    /^RangeError: Unknown symbol "nosuchsym"/,
    "Missing an address or symbol\nusage: .break ADDR|SYMBOL [if EXPR]",
    /^RangeError: Unknown symbol "nosuchsym"/,
    /^SyntaxError: /,
    'Invalid access "q": expected r, w or rw\nusage: .watch ADDR|SYMBOL [LEN] [r|w|rw]',
    'Unknown .info topic "watchpoints-please": expected breakpoints\nusage: .info breakpoints',
    "Missing NAME or ADDR\nusage: .sym NAME|EXPR",
    /^Error: Cannot read kernel image \/nonexistent\.elf: /,
    /^Unknown command \.nosuch; \.help lists them$/,
    /^SyntaxError: Unexpected "\)"/,
    "RangeError: thrown",
    `${hex(entry)}n`,
  ];
  expected.forEach((want, i) => {
    if (typeof want === "string") assert.equal(out[i], want, lines[i]);
    else {
      assert.match(out[i]!, want, lines[i]);
      assert.equal(out[i]!.split("\n").length, 1, `${lines[i]} printed more than one line:\n${out[i]}`);
    }
  });
});

kvmTest("a failing breakpoint condition stops the run with one message; the session goes on", async () => {
  const out = await dbg([".break bump if nosuch.x", ".cont", ".regs rip", ".info breakpoints"]);
  assert.equal(out[1], "Error: The condition of breakpoint 1 threw: nosuch is not defined");
  assert.equal(out[2], `rip = ${hex(await dbgSymbol("bump"))}`);
});

kvmTest(".load-script runs a file through the session's evaluator; its declarations stay", async () => {
  await withTempDir(async (dir) => {
    const script = join(dir, "script.ts");
    await Deno.writeTextFile(
      script,
      'const fromScript: number = 40;\nvm.debug.break("level3");\nawait vm.run();\nfromScript + 2\n',
    );
    const out = await dbg([`.load-script ${script}`, "fromScript", ".load-script", `.load-script ${dir}/none.ts`]);
    assertContext(out[0]!, /^\[breakpoint 1 at rip/, "level3");
    assert.match(out[0]!, /\n42$/);
    assert.equal(out[1], "40");
    assert.equal(out[2], "Missing FILE\nusage: .load-script FILE");
    assert.match(out[3]!, /^Error: Cannot read script .*none\.ts: /);
  });
});

kvmTest(".exit leaves at once: later lines are not run, status 0", async () => {
  const run = await hvsh(["--kernel", await guest("dbg64.elf")], '.regs rip\n.exit\nconsole.log("after exit")\n');
  assert.equal(run.code, 0);
  assert.equal(run.stdout, `rip = ${hex(await dbgSymbol("_start"))}\n`);
  assert.equal(run.stderr, "");
});

kvmTest("./hvsh --kernel dbg64.elf < FILE runs a script of REPL lines to the guest's end", async () => {
  await withTempDir(async (dir) => {
    const file = join(dir, "session.txt");
    await Deno.writeTextFile(file, "// a comment line\n.break bump\n.cont\n.delete 1\n.cont\n.regs rip\n");
    const command = new Deno.Command("sh", {
      args: ["-c", `exec "$0" --kernel "$1" < "$2"`, HVSH, await guest("dbg64.elf"), file],
      cwd: ROOT,
      env: { NO_COLOR: "1", HVSH_HISTORY: join(dir, "history") },
      signal: AbortSignal.timeout(PROCESS_TIMEOUT_MS),
    });
    const out = await command.output();
    const stdout = new TextDecoder().decode(out.stdout);
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    assert.match(stdout, /^\[breakpoint 1 at rip 0x[0-9a-f]+ <bump> /m);
    assert.match(stdout, /^deleted 1\ndbg done counter=15\n\[guest exited with value 0 \(status 1\)/m);
    assert.match(stdout, /\nrip = 0x[0-9a-f]+\n$/);
    assert.equal(await exists(join(dir, "history")), false);
  });
});

kvmTest("./hvsh alone opens the demo VM: .regs rip, .break tick, .cont, .bt, .cont SECONDS", async () => {
  const out = (await steps([], [".regs rip", ".break tick", ".cont", ".bt", ".delete 1", ".cont 0.2", ".sym ticks"]))
    .out;
  assert.match(out[0]!, /^rip = 0x[0-9a-f]+$/);
  assert.match(out[1]!, /^Breakpoint 1 at 0x[0-9a-f]+ <tick>$/);
  assert.match(out[2]!, /^hvsh demo guest\n/, "the guest's serial output comes first");
  assertContext(out[2]!, /^\[breakpoint 1 at rip 0x[0-9a-f]+ <tick> /, "tick");
  assert.match(out[3]!, /^#0 +0x[0-9a-f]+ in tick\n#1 +0x[0-9a-f]+ in main\+\d+\n/);
  assert.match(stopLine(out[5]!), /^\[timed out at rip /);
  assert.match(out[6]!, /^ticks = 0x[0-9a-f]+$/);
});

// ------------------------------------------------------------------ .save

/** A line that prints the final guest state the same way in the REPL and in `./hvsh run`. */
const STATE_LINE = 'console.log("STATE", vm.debug.symbolize(cpu.regs.rip), hex(cpu.regs.rbx), ' +
  'hex(mem.readU64(debug.symbol("counter"))), hex(mem.readU64(debug.symbol("iteration"))), marker)';

kvmTest(".save writes a script that ./hvsh run replays to the same guest state", async () => {
  await withTempDir(async (dir) => {
    const saved = join(dir, "session.ts");
    const lines = [
      ".break bump if regs.rdi === 1n",
      ".cont",
      ".cont",
      ".delete 1",
      ".watch counter",
      ".cont",
      ".delete 2",
      ".hbreak level2",
      ".cont",
      ".cont",
      ".step 3",
      ".next",
      ".finish",
      ".regs rbx=0x77",
      ".regs rip",
      ".sym bump",
      ".x/2i $rip",
      "const marker: number = 6 * 7",
      "function noop() {}",
      "1 +",
      "throw new Error('not replayed')",
      ".nosuch",
      STATE_LINE,
      `.save ${saved}`,
    ];
    const run = await hvsh(["--kernel", await guest("dbg64.elf")], lines.join("\n") + "\n");
    assert.equal(run.code, 0);
    const state = run.stdout.split("\n").filter((l) => l.startsWith("STATE "));
    assert.equal(state.length, 1, run.stdout);
    assert.match(state[0]!, /^STATE level2\+9 0x77 0xf 0x2 42$/);
    assert.match(run.stdout, new RegExp(`\nsaved \\d+ lines to ${escape(saved)}\n$`));

    const script = await Deno.readTextFile(saved);
    assert.match(script, /^\/\/ hvsh session saved .*; replay with: \.\/hvsh run /);
    assert.doesNotMatch(script, /not replayed|nosuch|\.regs rip/);
    // The state line succeeded, so it is part of the transcript: the replay prints the state too.
    assert.equal(script.split("\n").filter((l) => l.startsWith('console.log("STATE"')).length, 1);
    const replay = await hvsh(["run", saved], "");
    assert.equal(replay.stderr, "");
    assert.equal(replay.code, 0);
    assert.deepEqual(replay.stdout.split("\n").filter((l) => l.startsWith("STATE ")), state);
    // Stops are reported as one line each, in the same order as in the REPL.
    const stops = (text: string) => text.split("\n").filter((l) => /^\[(breakpoint|watchpoint|step) /.test(l));
    assert.deepEqual(stops(replay.stdout), stops(run.stdout));
  });
});

/** Runs `lines` in the REPL (args), saves, appends `finalLine` to the saved file and to the REPL; both outputs. */
async function saveAndReplay(
  args: string[],
  lines: string[],
  finalLine: string,
): Promise<{ repl: string; replay: Run; script: string }> {
  return await withTempDir(async (dir) => {
    const saved = join(dir, "session.ts");
    const run = await hvsh(args, [...lines, finalLine, `.save ${saved}`].join("\n") + "\n");
    assert.equal(run.code, 0, run.stderr);
    const script = await Deno.readTextFile(saved);
    const replay = await hvsh(["run", saved], "");
    return { repl: run.stdout, replay, script };
  });
}

// Regression: `.load-script FILE` is not recorded in the session's transcript (repl/commands.ts, the
// "load-script" command has no `script` and its `run` pushes nothing), so `.save` loses everything
// the script did and `./hvsh run` of the saved file fails (ReferenceError) or diverges.
kvmTest(".save after .load-script replays what the script did", async () => {
  await withTempDir(async (dir) => {
    const script = join(dir, "helper.ts");
    await Deno.writeTextFile(script, 'const fromScript = 40;\nvm.debug.break("level3");\nawait vm.run();\n');
    const { repl, replay } = await saveAndReplay(
      ["--kernel", await guest("dbg64.elf")],
      [`.load-script ${script}`],
      'console.log("STATE", fromScript, vm.debug.symbolize(cpu.regs.rip))',
    );
    assert.match(repl, /^STATE 40 level3$/m);
    assert.equal(replay.stderr, "");
    assert.match(replay.stdout, /^STATE 40 level3$/m);
  });
});

// Regression: `.vm close [NAME]` is saved as `await vm.close();` (repl/commands.ts, the "vm" command's
// `script`): the replay closes the *current* VM whatever NAME says, and the session keeps the closed
// VM current, whereas the REPL drops it and makes the first remaining VM current. `.vm use NAME` is
// not saved at all. A replay after `.vm new` + `.vm close` fails with "the VM vm is closed".
kvmTest(".save after .vm new, .vm close replays against the remaining VM", async () => {
  const { repl, replay } = await saveAndReplay(
    ["--kernel", await guest("dbg64.elf")],
    [".vm new 16M", ".vm close", ".step"],
    'console.log("STATE", vm.debug.symbolize(cpu.regs.rip))',
  );
  assert.match(repl, /^STATE _start\+1$/m);
  assert.equal(replay.stderr, "");
  assert.match(replay.stdout, /^STATE _start\+1$/m);
});

// Regression: the same; `.vm use vm1` is not saved, so the replay steps the new, empty VM.
kvmTest(".save after .vm new, .vm use vm1 replays against vm1", async () => {
  const { repl, replay } = await saveAndReplay(
    ["--kernel", await guest("dbg64.elf")],
    [".vm new 16M", ".vm use vm1", ".step"],
    'console.log("STATE", vm.debug.symbolize(cpu.regs.rip))',
  );
  assert.match(repl, /^STATE _start\+1$/m);
  assert.equal(replay.stderr, "");
  assert.match(replay.stdout, /^STATE _start\+1$/m);
});

// Regression: TypeScript lines are saved as `text;` unless they end in `;` or `}` (repl/main.ts:46,
// executeLine). A line ending in `}` (an object literal) gets no `;`, so the next line starting with
// `[` or `(` continues its expression; a line ending in a `//` comment gets its `;` inside the comment.
// The replay then computes something else (`const o = { a: 1 }\n[o.a, 2].length` is `{a:1}[...]`).
Deno.test(".save terminates each saved TypeScript line, whatever it ends with", async () => {
  const { repl, replay } = await saveAndReplay(
    ["--empty"],
    ["const o = { a: 1 }", "[o.a, 2].length", "const b = 1 // one", "(b + 1)"],
    'console.log("STATE", JSON.stringify(o), b)',
  );
  assert.match(repl, /^STATE \{"a":1\} 1$/m);
  assert.equal(replay.stderr, "");
  assert.match(replay.stdout, /^STATE \{"a":1\} 1$/m);
});

// Regression: the REPL's first transcript line keeps only the memory size of the boot options
// (repl/main.ts:100-103: `Vm.create({ memory })`), so a session opened with `--cpus 2` (or
// `--cpuid-hide`) replays on a VM with one vCPU.
kvmTest(".save of a session opened with --cpus 2 replays with 2 vCPUs", async () => {
  const { repl, replay } = await saveAndReplay(
    ["--kernel", await guest("dbg64.elf"), "--cpus", "2"],
    [],
    'console.log("STATE", vm.cpus.length)',
  );
  assert.match(repl, /^STATE 2$/m);
  assert.match(replay.stdout, /^STATE 2$/m);
});

// Regression: `./hvsh --kernel FILE --initrd INITRD` ignores --initrd (repl/main.ts:94-99 passes
// `options.load` without the module that cli/boot.ts's createBootVm adds), while
// `./hvsh boot` with the same options hands the guest its module.
kvmTest("./hvsh --kernel mb_hello.elf --initrd FILE gives the guest the module, as hvsh boot does", async () => {
  await withTempDir(async (dir) => {
    const initrd = join(dir, "initrd.txt");
    await Deno.writeTextFile(initrd, "module data\n");
    const kernel = await guest("mb_hello.elf");
    const boot = await hvsh(["boot", "--kernel", kernel, "--initrd", initrd], "");
    assert.match(boot.stdout, /^mods=1\nmod0=module data$/m);
    const out = (await steps(["--kernel", kernel, "--initrd", initrd], [".cont"])).out;
    assert.match(out[0]!, /^mods=1\nmod0=module data$/m);
  });
});

// Regression: `.hexdump ADDR LEN` passes `Number(LEN)` on unchecked (repl/commands.ts:312): a LEN that is
// not a number reads NaN bytes and prints an empty line instead of an error with the usage.
kvmTest(".hexdump with a bad LEN prints an error and the usage", async () => {
  const out = await dbg([".hexdump answer abc"]);
  assert.match(out[0]!, /abc.*\nusage: \.hexdump ADDR \[LEN\]$/);
});

// Regression: `.delete` without N uses NaN as the id (repl/commands.ts:369, `count(args, NaN)`) and prints
// "RangeError: No breakpoint or watchpoint NaN" instead of a usage error; likewise `.vm close` with
// no VM left prints 'No VM named undefined' (repl/session.ts:101).
kvmTest(".delete without N and .vm close without a VM say what is missing", async () => {
  const out = await dbg([".delete", ".vm close", ".vm close"]);
  assert.match(out[0]!, /^Missing .*\nusage: \.delete N$/);
  assert.equal(out[1], "closed the VM");
  assert.doesNotMatch(out[2]!, /undefined/);
  assert.equal(out[2]!.split("\n").length, 1);
});

const gdbMissingReason = (() => {
  try {
    const ok = new Deno.Command("gdb", { args: ["--version"], stdout: "null", stderr: "null" }).outputSync().success;
    return ok ? undefined : "gdb --version failed";
  } catch (error) {
    return `no gdb on PATH (${(error as Error).message})`;
  }
})();
const gdbIgnoreReason = kvmMissingReason ?? gdbMissingReason;
if (kvmAvailable && gdbMissingReason !== undefined) console.log(`REPL .gdb test with gdb ignored: ${gdbMissingReason}`);

Deno.test({
  name: ".gdb lets gdb attach to the REPL's VM and run dot commands through monitor",
  ignore: gdbIgnoreReason !== undefined,
  fn: async () => {
    // The REPL itself runs gdb (its event loop stays live while it awaits), so both talk to one VM; the
    // port is the one the system chose for `.gdb 0`, read back from vm.gdb.server.
    const gdb = `const r = await new Deno.Command("gdb", { args: ["-batch", "-nx", "-ex", ` +
      "`target remote ${vm.gdb.server.address}`, " +
      `"-ex", "monitor sym level2", "-ex", "monitor break bump", "-ex", "continue", "-ex", "detach"], stdout: "piped", stderr: "piped" }).output()`;
    const { out } = await steps(["--kernel", await guest("dbg64.elf")], [
      ".gdb 0",
      gdb,
      "console.log(new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr))",
      ".info breakpoints",
    ]);
    assert.match(out[0]!, /^gdb: target remote 127\.0\.0\.1:[1-9]\d* /);
    assert.match(out[2]!, new RegExp(`level2 = ${hex(await dbgSymbol("level2"))}`));
    assert.match(out[2]!, /Breakpoint 1 at 0x[0-9a-f]+ <bump>/);
    assert.match(out[3]!, /^1\s+break\s+y\s+0x[0-9a-f]+\s+bump\s+hits 1/m);
  },
});

kvmTest(".find searches guest memory for a string or hex bytes", async () => {
  const out = await dbg(['.find "dbg done"', ".find 0x554889e5", '.find "nowhere-to-be-found"']);
  // Where the loader put those bytes, from the ELF's program headers (parsed in the test, not by hvsh).
  const elf = await guest("dbg64.elf");
  const text = loadedOccurrences(elf, new TextEncoder().encode("dbg done"));
  assert.equal(text.length, 1, "the string is in the image once");
  assert.equal(out[0], text.map(hex).join("\n"));
  const prologues = loadedOccurrences(elf, Uint8Array.of(0x55, 0x48, 0x89, 0xe5));
  assert.ok(prologues.includes(await dbgSymbol("bump")));
  assert.equal(out[1], prologues.map(hex).join("\n"));
  assert.equal(out[2], "not found");
});

// ------------------------------------------------- gdb habits (issue 12, item 5)

kvmTest("gdb habits: /NFU letters in any order, $register expressions, register parts, .x going on", async () => {
  const start = await dbgSymbol("_start");
  const out = await dbg([
    ".x/2gx $rsp+8",
    ".x/2xg $rsp+8",
    ".sym $rip",
    ".sym $rip+2",
    ".regs eax al cr3 efer",
    ".regs al=0x41",
    ".regs rax",
    ".x/2i _start",
    ".x/2i",
    ".x",
    ".hexdump $rip 2",
    ".dis $rip + 2 1",
    ".break $rip+1",
    ".bt",
    "vm.name",
  ]);
  assert.equal(out[0], out[1], ".x/2gx is .x/2xg");
  assert.match(out[0]!, /^0x8:\t0x[0-9a-f]{16}\t0x[0-9a-f]{16}$/, "$rsp+8 with rsp 0 at the entry");
  assert.equal(out[2], `$rip = ${hex(start)} <_start>`);
  assert.equal(out[3], `$rip+2 = ${hex(start + 2n)} <_start+2>`);
  assert.match(out[4]!, /^eax = 0x0\nal = 0x0\ncr3 = 0x[0-9a-f]+\nefer = 0x5\d\d$/);
  assert.equal(out[5], "al = 0x41");
  assert.equal(out[6], "rax = 0x41");
  const first = out[7]!.split("\n");
  assert.equal(first.length, 2);
  assert.match(first[0]!, /<_start>: +fa +cli$/);
  assert.match(first[1]!, /<_start\+1>: +fc +cld$/);
  const next = out[8]!.split("\n");
  assert.match(
    next[0]!,
    /<_start\+2>: +48 8d 25 .* lea rsp, \[0x[0-9a-f]+ <stack_top>\]$/,
    "after the last, with symbols on memory operands",
  );
  assert.match(next[1]!, /<_start\+9>: +31 ed +xor ebp, ebp$/);
  assert.match(out[9]!, /<_start\+11>: +e8 .*call 0x[0-9a-f]+ <main>$/, ".x alone: one more in the last format");
  assert.equal(out[10], `${start.toString(16).padStart(16, "0")}  fa fc${" ".repeat(42)}  ..`);
  assert.match(out[11]!, /<_start\+2>: +48 8d 25/);
  assert.equal(out[12], `Breakpoint 1 at ${hex(start + 1n)} <_start+1>`);
  assert.equal(out[13], `#0  ${hex(start)} in _start`, "no junk frame from the word at rsp 0");
  assert.equal(out[14], '"vm1"');
});

kvmTest("addresses take expressions in .break, .watch and .tele; data operands show their symbols", async () => {
  const counter = await dbgSymbol("counter");
  const bump = await dbgSymbol("bump");
  const out = await dbg([
    ".context off",
    ".break bump+4",
    ".cont",
    ".dis bump 4",
    ".watch *(long*)&counter 8 w",
    ".tele $rsp 3",
    ".vm new 16M",
    "vm.name",
    ".vm list",
  ]);
  assert.equal(out[1], `Breakpoint 1 at ${hex(bump + 4n)} <bump+4>`);
  const dis = out[3]!.split("\n");
  assert.match(
    dis[2]!,
    new RegExp(`^=> ${hex(bump + 4n)} <bump\\+4>: +48 8b 05 .* +mov rax, \\[${hex(counter)} <counter>\\]$`),
  );
  // Columns line up: every line's bytes start in the same column.
  const column = dis.map((line) =>
    line.search(/: +[0-9a-f]{2} /) + line.slice(line.search(/: +[0-9a-f]{2} /)).search(/[0-9a-f]{2} /)
  );
  assert.equal(new Set(column).size, 1, `bytes columns differ:\n${out[3]}`);
  assert.equal(out[4], `Watchpoint 2: write of 8 bytes at ${hex(counter)} <counter>`);
  const tele = out[5]!.split("\n");
  assert.equal(tele.length, 3);
  assert.match(
    tele[0]!,
    /^00:0000│ rbp,rsp 0x[0-9a-f]+ —▸ 0x[0-9a-f]+ <stack_bottom\+\d+> —▸ /,
    "rbp = rsp after push rbp; mov rbp, rsp",
  );
  assert.match(tele[1]!, /^01:0008│ {9}0x[0-9a-f]+ —▸ 0x[0-9a-f]+ <level3\+\d+>/, "the return address into level3");
  assert.equal(out[6], "vm2: new VM with 16M RAM (current)");
  assert.equal(out[7], '"vm2"', "vm.name matches .vm list");
  assert.match(out[8]!, /^ {2}vm1 .*\n\* vm2 /);
});

kvmTest("cpu.enterRealMode() with no options enters at 0000:7c00", async () => {
  const out = await dbg(["cpu.enterRealMode()", "cpu.mode", "cpu.regs.rip", "cpu.sregs.cs.selector"]);
  assert.deepEqual(out, ["", '"real"', "0x7c00n", "0"]);
});

kvmTest(
  ".exceptions on all hooks the guest's IDT handlers and lists the timer interrupts it took, with rips",
  async () => {
    const pitFile = await guest("pit_irq.elf");
    const symbols = new Map(readElfSymbols(await Deno.readFile(pitFile)).map((s) => [s.name, s.address]));
    const out = (await steps(["--kernel", pitFile], [
      ".context off",
      ".exceptions on",
      ".break on_pit",
      ".cont",
      ".delete 1",
      ".exceptions on all",
      ".cont",
      ".exceptions 4",
    ])).out;
    assert.match(out[1]!, /^recording exceptions \(vectors 0-31\): 0 IDT handlers hooked .*\nno IDT handlers yet/);
    assert.match(out[5]!, /^recording exceptions and interrupts: 3 IDT handlers hooked/);
    assert.match(out[6]!, /^pit ticks 5\n\[guest exited with value 0/);
    const lines = out[7]!.split("\n");
    assert.match(lines[0]!, /^in flight: no exception, interrupt or NMI in flight/);
    // The first tick stopped at on_pit before recording began; the other four were recorded.
    const ticks = lines.slice(1);
    assert.equal(ticks.length, 4, out[7]);
    // A tick lands in main's loop, or between interrupt_return's popfd and ret when the next one comes that soon
    // (the guest's IRET replacement: start32.S says it nests there).
    for (const line of ticks) {
      assert.match(
        line,
        new RegExp(
          `^ +\\d: vector 0x20 at 0x[0-9a-f]+ <(main|interrupt_return)\\+\\d+> -> ${
            hex(symbols.get("pit_stub")!)
          } <pit_stub>$`,
        ),
      );
    }
  },
);
const tinyKernel = await findTinyKernel();
Deno.test({
  name:
    ".load takes a Linux kernel: a vmlinux by PVH with --initrd DIR and --append, a bzImage with --symbols System.map",
  ignore: !kvmAvailable || tinyKernel === undefined,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "hvsh-repl-linux-" });
    try {
      await Deno.writeTextFile(join(dir, "init"), "not run\n");
      const { out } = await steps(["--empty"], [
        ".vm new 256M",
        `.load ${tinyKernel!.vmlinux} --initrd ${dir} --append console=ttyS0 panic=-1`,
        "vm.memory.readCString(vm.image.linux.cmdline.address)",
        ".vm new 256M",
        `.load ${tinyKernel!.bzImage} --symbols ${tinyKernel!.systemMap}`,
        ".hbreak start_kernel",
      ]);
      assert.match(out[1]!, /^loaded .*vmlinux: pvh, protected mode, entry 0x[0-9a-f]+, \d{4,} symbols$/);
      assert.match(out[2]!, /console=ttyS0 panic=-1/);
      assert.match(out[4]!, /^loaded .*bzImage: bzimage, long mode, entry 0x100200, \d{4,} symbols$/);
      assert.match(out[5]!, /start_kernel/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
