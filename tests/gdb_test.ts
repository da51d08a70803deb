/**
 * Real GDB (batch mode) against hvsh's gdbstub. Each test starts
 * `listenGdb` on an ephemeral port in this process, with a VM loaded from a
 * test guest, and runs `gdb -batch ... -ex 'target remote 127.0.0.1:PORT'`
 * as a subprocess whose output is awaited asynchronously (the VM runs in
 * this process, so the event loop must stay free while GDB talks to it).
 * The last tests drive `hvsh boot --gdb` as a subprocess.
 *
 * Ignored (with the reason printed once) without /dev/kvm or without gdb.
 *
 * Debugging across a real -> protected -> long mode switch (modeswitch.bin)
 * works because the register layout is the same in every mode (the `g`
 * reply is 600 bytes in real and long mode, checked in gdb_protocol_test.ts
 * too); the modeswitch test says how to debug the 16- and 32-bit parts.
 */

import assert from "node:assert/strict";
import { Vm } from "../core/vm.ts";
import { type GdbServer, listenGdb } from "../core/gdb/server.ts";
import { readElfSymbols } from "../core/loader/elf.ts";
import { guest, kvmAvailable, kvmMissingReason } from "./_helpers.ts";
import { disassembly } from "./_elf_facts.ts";
import { gdbMissingReason } from "./_gdb_batch.ts";
import { REGISTERS_SIZE, targetXml, X86_64_REGISTERS } from "../core/gdb/arch_x86.ts";

/** A symbol's address in an ELF file. */
function symbolIn(elf: string, name: string): bigint {
  const found = readElfSymbols(Deno.readFileSync(elf), elf).find((s) => s.name === name);
  if (found === undefined) throw new Error(`${elf} has no symbol ${name}`);
  return found.address;
}

const ignoreReason = kvmMissingReason ?? gdbMissingReason;
if (kvmAvailable && gdbMissingReason !== undefined) console.log(`gdb tests ignored: ${gdbMissingReason}`);

function gdbTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, ignore: ignoreReason !== undefined, fn });
}

/** What a GDB session printed. */
interface Session {
  stdout: string;
  stderr: string;
  /** stdout then stderr (monitor output goes to stderr in batch mode). */
  all: string;
  code: number;
}

interface SessionOptions {
  /** Commands before `file` (e.g. `set architecture ...`). */
  before?: string[];
  /** Send SIGINT to GDB (which then interrupts the target with 0x03) once this VM has run for 100 ms. */
  interruptWhenRunning?: Vm;
  /** Kill GDB after this many ms (default 30 s). */
  timeoutMs?: number;
}

/** Runs GDB in batch mode against `server` with `commands`, each one `-ex`. */
async function gdb(
  server: GdbServer,
  file: string,
  commands: string[],
  options: SessionOptions = {},
): Promise<Session> {
  const args = ["-batch", "-nx", "-ex", "set confirm off"];
  for (const command of [...options.before ?? [], `file ${file}`, `target remote ${server.address}`, ...commands]) {
    args.push("-ex", command);
  }
  const child = new Deno.Command("gdb", { args, stdin: "null", stdout: "piped", stderr: "piped" }).spawn();
  const killer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 30_000);
  let runningFor = 0;
  const interrupter = options.interruptWhenRunning === undefined ? undefined : setInterval(() => {
    runningFor = options.interruptWhenRunning!.running ? runningFor + 20 : 0;
    if (runningFor >= 100) {
      clearInterval(interrupter);
      child.kill("SIGINT");
    }
  }, 20);
  try {
    const out = await child.output();
    const stdout = new TextDecoder().decode(out.stdout);
    const stderr = new TextDecoder().decode(out.stderr);
    return { stdout, stderr, all: `${stdout}\n${stderr}`, code: out.code };
  } finally {
    clearTimeout(killer);
    if (interrupter !== undefined) clearInterval(interrupter);
  }
}

/** A VM with a guest loaded and a gdb server for it; closes both at scope exit. */
async function served(guestName: string) {
  const vm = await Vm.create({ memory: "64M" });
  await vm.load(await guest(guestName));
  const server = listenGdb(vm, { port: 0, allowJs: true }); // the tests' gdb runs monitor js
  return {
    vm,
    server,
    async [Symbol.asyncDispose]() {
      await server.close();
      await vm.close();
    },
  };
}

/** Registers 0-56 of gdb's amd64 layout: its 64bit-core.xml (0-23, 32-39 x87 control) and 64bit-sse.xml. */
const GDB_AMD64_RAW_REGISTERS = 57;

/** `maint print registers` rows 0-56: name, number, offset, size. */
function registerTable(output: string): { name: string; number: number; offset: number; size: number }[] {
  return [...output.matchAll(/^ (\S+) +(\d+) +\d+ +(\d+) +(\d+) /gm)]
    .filter((m) => m[1] !== "''" && Number(m[2]) < GDB_AMD64_RAW_REGISTERS)
    .map((m) => ({ name: m[1]!, number: Number(m[2]), offset: Number(m[3]), size: Number(m[4]) }));
}

/** `$N = VALUE` lines of `print`, in order. */
function printed(output: string): string[] {
  return [...output.matchAll(/^\$\d+ = (.*)$/gm)].map((m) => m[1]!);
}

gdbTest(
  "gdb: info registers shows rip, cs, cr3, efer; x reads virtual addresses, and physical after monitor phys on",
  async () => {
    await using s = await served("dbg64.elf");
    // Alias virtual 0x40000000 to physical 0 (2 MiB page) so virtual and physical addresses differ.
    s.vm.memory.fill(0x4000, 0x1000, 0);
    s.vm.memory.writeU64(0x4000, 0x83n);
    s.vm.memory.writeU64(0x2008, 0x4003n);
    const out = await gdb(s.server, await guest("dbg64.elf"), [
      "info registers",
      "x/4xb 0x40100000",
      "monitor phys on",
      "x/4xb 0x100000",
      "x/4xb 0x40100000",
      "monitor phys off",
    ]);
    assert.match(out.stdout, /^rip\s+0x100000\s+0x100000 <_start>$/m);
    assert.match(out.stdout, /^cs\s+0x8\s+8$/m);
    assert.match(out.stdout, /^cr3\s+0x1000\s/m);
    assert.match(out.stdout, /^efer\s+0x500\s+\[ LME LMA \]$/m);
    assert.match(out.stdout, /^cr0\s+0x80000031\s+\[ PE ET NE PG \]$/m);
    assert.match(out.stdout, /^fs_base\s+0x0/m);
    const code = [...s.vm.memory.read(0x100000, 4)].map((b) => `0x${b.toString(16).padStart(2, "0")}`).join("\t");
    assert.match(out.stdout, new RegExp(`^0x40100000:\\t${code}$`, "m"), "virtual alias");
    assert.match(out.stdout, new RegExp(`^0x100000 <_start>:\\t${code}$`, "m"), "physical");
    assert.match(out.all, /memory accesses use physical addresses/);
    assert.match(out.all, /Cannot access memory at address 0x40100000/, "no such physical address");
  },
);

gdbTest("gdb: break bump + continue x3 counts 3 hits; bt shows level3, level2, level1, main", async () => {
  await using s = await served("dbg64.elf");
  const out = await gdb(s.server, await guest("dbg64.elf"), [
    "break bump",
    "continue",
    "continue",
    "continue",
    "info breakpoints",
    "print counter",
    "bt",
  ]);
  assert.equal([...out.stdout.matchAll(/^Breakpoint 1, bump \(/gm)].length, 3);
  assert.match(out.stdout, /breakpoint already hit 3 times/);
  assert.deepEqual(printed(out.stdout), ["2"]);
  const frames = [...out.stdout.matchAll(/^#(\d+)\s+(?:0x[0-9a-f]+ in )?(\w+) \(/gm)].map((m) => m[2]);
  assert.deepEqual(frames, ["bump", "level3", "level2", "level1", "main"]);
});

gdbTest("gdb: hbreak level2 stops there; watch counter reports Old value / New value", async () => {
  await using s = await served("dbg64.elf");
  const out = await gdb(s.server, await guest("dbg64.elf"), [
    "hbreak level2",
    "continue",
    "bt",
    "delete",
    "watch counter",
    "continue",
    "continue",
  ]);
  assert.match(out.stdout, /Hardware assisted breakpoint 1 at 0x[0-9a-f]+: file .*dbg64\.c/);
  assert.match(out.stdout, /^Breakpoint 1, level2 \(\)/m);
  assert.match(out.stdout, /^#1\s+0x[0-9a-f]+ in level1 \(\)/m);
  assert.match(out.stdout, /Hardware watchpoint 2: counter/);
  assert.match(out.stdout, /Old value = 0\nNew value = 1\n/);
  assert.match(out.stdout, /Old value = 1\nNew value = 2\n/);
});

gdbTest("gdb: stepi moves rip one instruction at a time; finish returns bump's value", async () => {
  await using s = await served("dbg64.elf");
  const out = await gdb(s.server, await guest("dbg64.elf"), [
    "print/x $pc",
    "stepi",
    "print/x $pc",
    "stepi",
    "print/x $pc",
    "break bump",
    "continue",
    "finish",
  ]);
  assert.deepEqual(printed(out.stdout), ["0x100000", "0x100001", "0x100002"]); // cli; cld
  assert.match(out.stdout, /level3 \(\) at .*dbg64\.c/);
  assert.match(out.stdout, /Value returned is \$\d+ = 1$/m);
});

gdbTest("gdb: monitor help, regs, pt, disas and js", async () => {
  await using s = await served("dbg64.elf");
  const out = await gdb(s.server, await guest("dbg64.elf"), [
    "monitor help",
    "monitor regs",
    "monitor pt 0x100000",
    "monitor disas bump 2",
    "monitor js vm.cpu(0).regs.rip + 1n",
    "monitor nosuch",
  ]);
  assert.match(out.all, /pt ADDR: walk the page tables/);
  assert.match(out.all, /^rip 0x0000000000100000 <_start>/m);
  assert.match(out.all, /^cr0 0x80000031 {2}cr2 0x0+ {2}cr3 0x0+1000$/m);
  assert.match(out.all, /^mode long \(vCPU 0\)$/m);
  assert.match(
    out.all,
    /0x100000: 4-level paging\n {2}PML4E.*\n {2}PDPTE.*\n {2}PDE .*LARGE\n {2}-> physical 0x100000 \(2 MiB page\)/,
  );
  // bump's address from the ELF's symbols, its first instruction as objdump decodes it.
  const elf = await guest("dbg64.elf");
  const [first] = disassembly(elf).instructions.get("bump")!;
  assert.equal(first!.address, symbolIn(elf, "bump"));
  assert.match(out.all, new RegExp(`=?\\s*0x${first!.address.toString(16)} <bump>: +${first!.bytes} +${first!.text}`));
  assert.match(out.all, /^1048577n$/m);
  assert.match(out.all, /unknown monitor command "nosuch"/);
});

Deno.test({
  name: "targetXml() gives gdb its own amd64 layout: registers 0-56 as gdb 64bit-core/sse.xml number and size them",
  ignore: gdbMissingReason !== undefined,
  fn: () => {
    // gdb's built-in amd64 description (its 64bit-core.xml and 64bit-sse.xml), no target involved.
    const builtIn = new Deno.Command("gdb", {
      args: ["-batch", "-nx", "-ex", "set architecture i386:x86-64", "-ex", "maint print registers"],
      stdout: "piped",
      stderr: "null",
    }).outputSync();
    const gdbs = registerTable(new TextDecoder().decode(builtIn.stdout));
    assert.equal(gdbs.length, GDB_AMD64_RAW_REGISTERS, "gdb's core and sse registers");
    // Ours, read back from the XML hvsh sends (not from the table it is generated from).
    const xml = targetXml();
    const ours = [...xml.matchAll(/<reg name="([^"]+)" bitsize="(\d+)"[^>]*regnum="(\d+)"/g)].map((m) => ({
      name: m[1]!,
      number: Number(m[3]),
      size: Number(m[2]) / 8,
    }));
    let offset = 0;
    const oursWithOffsets = ours.map((reg) => ({ ...reg, offset: (offset += reg.size) - reg.size }));
    assert.deepEqual(
      oursWithOffsets.slice(0, GDB_AMD64_RAW_REGISTERS),
      gdbs.map(({ name, number, offset, size }) => ({ name, number, size, offset })),
    );
    assert.equal(offset, REGISTERS_SIZE, "the g packet holds every register of the XML");
    assert.equal(ours.length, X86_64_REGISTERS.length);
  },
});

gdbTest("gdb, connected: maint print registers shows the same 0-56 layout as gdb's built-in amd64", async () => {
  await using s = await served("dbg64.elf");
  const out = await gdb(s.server, await guest("dbg64.elf"), ["maint print registers"]);
  const builtIn = new Deno.Command("gdb", {
    args: ["-batch", "-nx", "-ex", "set architecture i386:x86-64", "-ex", "maint print registers"],
    stdout: "piped",
    stderr: "null",
  }).outputSync();
  const connected = registerTable(out.stdout);
  assert.deepEqual(connected, registerTable(new TextDecoder().decode(builtIn.stdout)));
  assert.match(out.stdout, /^ cr3 +\d+ /m, "and hvsh's system registers after them");
});

gdbTest("gdb: Ctrl-C (SIGINT to gdb) interrupts spin.elf at spin_here", async () => {
  await using s = await served("spin.elf");
  const out = await gdb(s.server, await guest("spin.elf"), ["continue", "print $pc", "kill"], {
    interruptWhenRunning: s.vm,
  });
  assert.match(out.stdout, /Program received signal SIGINT, Interrupt\.\nspin_here \(\)/);
  assert.match(printed(out.stdout)[0] ?? "", /<spin_here>/);
  assert.equal(s.vm.serial.output, "spinning\n");
  assert.equal(await s.server.closed, "killed");
});

gdbTest("gdb: detach lets the guest run to its end; kill stops it and closes the server", async () => {
  {
    await using s = await served("dbg64.elf");
    const exited = new Promise((resolve) => s.vm.onStop((stop) => stop.reason === "exit" && resolve(stop)));
    const out = await gdb(s.server, await guest("dbg64.elf"), ["break level1", "continue", "detach"]);
    assert.match(out.stdout, /Breakpoint 1, level1 \(\)/);
    assert.match(out.stdout, /\[Inferior 1 \(Remote target\) detached\]/);
    await exited;
    assert.equal(s.vm.serial.output, "dbg done counter=15\n");
    assert.equal(s.vm.debug.breakpoints.length, 0);
  }
  {
    await using s = await served("dbg64.elf");
    const out = await gdb(s.server, await guest("dbg64.elf"), ["break level1", "continue", "kill"]);
    assert.match(out.stdout, /\[Inferior 1 \(Remote target\) killed\]/);
    assert.equal(await s.server.closed, "killed");
    assert.equal(s.vm.state, "stopped");
    assert.equal(s.vm.serial.output, "");
  }
});

gdbTest("gdb: the guest's exit ends the session with its status", async () => {
  await using s = await served("dbg64.elf");
  const out = await gdb(s.server, await guest("dbg64.elf"), ["continue"]);
  assert.match(out.stdout, /\[Inferior 1 \(Remote target\) exited with code 01\]/);
  assert.equal(s.vm.serial.output, "dbg done counter=15\n");
});

gdbTest("gdb: real-mode hello16 with set architecture i386:x86-64: registers, stepi, monitor disas, exit", async () => {
  await using s = await served("hello16.bin");
  const out = await gdb(s.server, await guest("hello16.elf"), [
    "info registers rip cs cr0",
    "stepi",
    "stepi",
    "stepi",
    "print/x $pc",
    "monitor disas",
    "continue",
  ], { before: ["set architecture i386:x86-64"] });
  assert.doesNotMatch(out.all, /too long/);
  assert.match(out.stdout, /^rip\s+0x7c00\s+0x7c00 <_start>$/m);
  assert.match(out.stdout, /^cs\s+0x0\s+0$/m);
  assert.deepEqual(printed(out.stdout), ["0x7c04"]); // cli; cld; xor ax, ax
  assert.match(out.all, /=> 0x7c04: 8e d8 +mov ds, ax/, "16-bit disassembly");
  assert.match(out.stdout, /exited with code 01/);
  assert.equal(s.vm.serial.output, "hello\n");
});

/**
 * How to debug a guest that starts in real mode and switches to protected
 * and long mode (checked here with GDB 13):
 * - `set architecture i386:x86-64` before `target remote` (modeswitch.elf is
 *   an ELF32: without it GDB takes i386 from the file and fails with "Remote
 *   'g' packet reply is too long"); it then holds across every switch, since
 *   hvsh reports the same 64-bit register layout in every mode.
 * - Breakpoints on the mode switches are `hbreak` at linear addresses (the
 *   ELF's symbols; CS base 0 here): a debug register matches in every mode
 *   and leaves guest memory alone. (`break` works too with hvsh, which
 *   recognises its int3 from the emulation failure this host's KVM reports
 *   instead of a debug exit.)
 * - `$rip` holds IP/EIP, `$cs` the selector (0 in real mode, then 0x08 and
 *   0x18 after the far jumps); `monitor js cpu.mode` names the mode.
 * - GDB decodes `x/i` as 64-bit code: `monitor disas` disassembles in the
 *   vCPU's current mode (16-bit at real_start, 32-bit at prot_start).
 */
gdbTest(
  "gdb: modeswitch real -> protected -> long: hbreak at prot_start and long_start, registers at each stop",
  async () => {
    const elf = await guest("modeswitch.elf");
    const symbols = readElfSymbols(await Deno.readFile(elf), elf);
    const address = (name: string) => `0x${symbols.find((s) => s.name === name)!.address.toString(16)}`;
    const prot = address("prot_start");
    const long = address("long_start");
    await using s = await served("modeswitch.bin");
    const out = await gdb(s.server, elf, [
      "info registers rip",
      "p $cs",
      "monitor js cpu.mode",
      "monitor disas",
      `hbreak *${prot}`,
      `hbreak *${long}`,
      "continue",
      "info registers rip",
      "p $cs",
      "monitor js cpu.mode",
      "monitor disas",
      "continue",
      "info registers rip",
      "p $cs",
      "monitor js cpu.mode",
      "info registers efer",
      "continue",
    ], { before: ["set architecture i386:x86-64"] });
    assert.doesNotMatch(out.all, /too long/);
    // real_start and _start share 0x7c00: GDB may name either.
    const rips = [...out.stdout.matchAll(/^rip\s+(0x[0-9a-f]+)\s+0x[0-9a-f]+ <(\w+)>$/gm)].map((m) =>
      `${m[1]} ${m[2]}`
    );
    assert.deepEqual(rips.map((rip) => rip.replace(/ _start$/, " real_start")), [
      "0x7c00 real_start",
      `${prot} prot_start`,
      `${long} long_start`,
    ]);
    assert.deepEqual(printed(out.stdout), ["0", "8", "24"], "$cs: 0 in real mode, then the GDT's 0x08 and 0x18");
    assert.deepEqual([...out.all.matchAll(/^(real|protected|long)$/gm)].map((m) => m[1]), [
      "real",
      "protected",
      "long",
    ]);
    assert.match(out.stdout, /^Breakpoint 1, prot_start \(\) at .*modeswitch\.S:\d+$/m);
    assert.match(out.stdout, /^Breakpoint 2, long_start \(\) at .*modeswitch\.S:\d+$/m);
    assert.match(out.all, /=> 0x7c00: fa +cli\n +0x7c01: fc +cld\n +0x7c02: 31 c0 +xor ax, ax$/m, "16-bit disassembly");
    assert.match(out.all, new RegExp(`=> ${prot}: 66 b8 10 00 +mov ax, 0x10$`, "m"), "32-bit disassembly");
    assert.match(out.stdout, /^efer\s+0x500\s+\[ LME LMA \]$/m);
    assert.match(out.stdout, /\[Inferior 1 \(Remote target\) exited with code 01\]/);
    assert.equal(s.vm.serial.output, "real\nprot\nlong\n");
  },
);

// ---------------------------------------------------------------- hvsh boot --gdb

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const DENO = Deno.execPath();

gdbTest("hvsh boot --gdb PATH --wait holds the guest for gdb; gdb's kill ends hvsh with status 0", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hvsh-gdb-" });
  const socket = `${dir}/gdb.sock`;
  const hvsh = new Deno.Command(DENO, {
    args: ["run", "-q", "--allow-all", MAIN, "boot", "--kernel", await guest("dbg64.elf"), "--gdb", socket, "--wait"],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const killer = setTimeout(() => hvsh.kill("SIGKILL"), 30_000);
  try {
    for (let i = 0; i < 300 && !(await Deno.lstat(socket).then((st) => st.isSocket, () => false)); i++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const out = await gdb({ address: socket } as GdbServer, await guest("dbg64.elf"), [
      "print/x $pc",
      "break bump",
      "continue",
      "print counter",
      "kill",
    ]);
    assert.deepEqual(printed(out.stdout), ["0x100000", "0"], "held at _start, then stopped in the first bump");
    const result = await hvsh.output();
    const stderr = new TextDecoder().decode(result.stderr);
    assert.match(stderr, /gdb server on .*gdb\.sock \(the guest waits for gdb to continue\)/);
    assert.match(stderr, /^hvsh: killed by gdb$/m);
    assert.equal(new TextDecoder().decode(result.stdout), "", "the guest printed nothing");
    assert.equal(result.code, 0);
  } finally {
    clearTimeout(killer);
    await Deno.remove(dir, { recursive: true });
  }
});

gdbTest(
  "hvsh boot --gdb 127.0.0.1:PORT --wait: after gdb's detach the guest finishes and hvsh exits with its status",
  async () => {
    const hvsh = new Deno.Command(DENO, {
      args: [
        "run",
        "-q",
        "--allow-all",
        MAIN,
        "boot",
        "--kernel",
        await guest("dbg64.elf"),
        "--gdb",
        "127.0.0.1:0",
        "--wait",
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const killer = setTimeout(() => hvsh.kill("SIGKILL"), 30_000);
    try {
      const stderr = hvsh.stderr.getReader();
      const { value } = await stderr.read(); // the "gdb server on ..." line: listening now, on the port it chose
      const address = /gdb server on (127\.0\.0\.1:[1-9]\d*)/.exec(new TextDecoder().decode(value))?.[1];
      assert.ok(address !== undefined, new TextDecoder().decode(value));
      stderr.releaseLock();
      const out = await gdb({ address } as GdbServer, await guest("dbg64.elf"), ["break level1", "continue", "detach"]);
      assert.match(out.stdout, /Breakpoint 1, level1 \(\)/);
      const result = await hvsh.output();
      assert.equal(new TextDecoder().decode(result.stdout), "dbg done counter=15\n");
      assert.equal(result.code, 1, "(0 << 1) | 1, as without gdb");
    } finally {
      clearTimeout(killer);
    }
  },
);

gdbTest(
  "gdb: rwatch and awatch on a variable in the page the code runs from stop at the load and the store",
  async () => {
    await using s = await served("watch_sites.elf");
    const symbols = new Map(
      readElfSymbols(await Deno.readFile(await guest("watch_sites.elf"))).map((e) => [e.name, e]),
    );
    const out = await gdb(s.server, await guest("watch_sites.elf"), [
      "awatch *(long *)&value",
      "continue",
      "print/x $pc",
      "continue",
      "print/x $pc",
      "delete",
      "rwatch *(long *)&value",
      "continue",
    ]);
    assert.match(out.stdout, /Hardware access \(read\/write\) watchpoint 1: \*\(long \*\)&value/);
    // The store has run (gdb shows the value after it); the load is about to (rip is on it).
    assert.match(out.stdout, /Value = 0x1234|New value = 4660/);
    const pcs = printed(out.stdout).map((text) => BigInt(text));
    assert.equal(pcs.length, 2);
    assert.equal(pcs[1], symbols.get("site_read")!.address, "the read stops on the load");
    assert.doesNotMatch(out.all, /SIGILL|internal-error/);
    assert.match(out.stdout, /\[Inferior 1 \(Remote target\) exited with code 01\]/);
  },
);

gdbTest(
  "gdb stepi while a script's run is going pauses that run (paused by gdb) and steps one instruction",
  async () => {
    await using s = await served("spin.elf");
    const fifo = await Deno.makeTempFile({ prefix: "hvsh-gdb-gate-" });
    await Deno.remove(fifo);
    await new Deno.Command("mkfifo", { args: [fifo] }).output();
    try {
      const attached = new Promise<void>((resolve) => s.server.onConnection((connected) => connected && resolve()));
      // gdb attaches, then waits at the gate until the script's run has started, then steps.
      const session = gdb(s.server, await guest("spin.elf"), [
        "print/x $pc",
        `shell cat ${fifo}`,
        "stepi",
        "print/x $pc",
        "detach",
      ]);
      await attached;
      // gdb's attach pauses the guest; wait until it has, then the script runs it.
      while (s.vm.running) await new Promise((resolve) => setTimeout(resolve, 10));
      const run = s.vm.run({ timeout: 20_000 });
      assert.ok(s.vm.running);
      await Deno.writeTextFile(fifo, "go\n");
      const stop = await run;
      assert.equal(stop.reason, "paused");
      assert.equal(stop.reason === "paused" && stop.by, "gdb");
      const out = await session;
      assert.doesNotMatch(out.all, /SIGINT|Program received signal/);
      const pcs = printed(out.stdout);
      assert.equal(pcs.length, 2, out.all);
      assert.match(out.stdout, /\[Inferior 1 \(Remote target\) detached\]/);
    } finally {
      await Deno.remove(fifo).catch(() => {});
    }
  },
);

gdbTest(
  "hvsh boot --gdb: monitor runs the dot commands with their syntax (dis, x/FMT, pt $rip, regs eax, sym)",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "hvsh-gdb-" });
    const socket = `${dir}/gdb.sock`;
    const file = await guest("dbg64.elf");
    const hvsh = new Deno.Command(DENO, {
      args: ["run", "-q", "--allow-all", MAIN, "boot", "--kernel", file, "--gdb", socket, "--wait"],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const killer = setTimeout(() => hvsh.kill("SIGKILL"), 30_000);
    try {
      for (let i = 0; i < 300 && !(await Deno.lstat(socket).then((st) => st.isSocket, () => false)); i++) {
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      const bump = readElfSymbols(await Deno.readFile(file)).find((s) => s.name === "bump")!.address;
      const out = await gdb({ address: socket } as GdbServer, file, [
        "break bump",
        "continue",
        "monitor dis bump 2",
        "monitor x/2gx $rsp",
        "monitor x/1i $rip",
        "monitor pt $rip",
        "monitor regs eax rip",
        "monitor sym $rip",
        "monitor tele $rsp 2",
        "monitor help",
        "monitor step",
        "kill",
      ]);
      const hex = (value: bigint) => `0x${value.toString(16)}`;
      assert.match(out.all, new RegExp(`^=> ${hex(bump)} <bump>: +55 +push rbp$`, "m"), "monitor dis bump 2");
      assert.match(out.all, new RegExp(`^ {3}${hex(bump + 1n)} <bump\\+1>: +48 89 e5 +mov rbp, rsp$`, "m"));
      assert.match(
        out.all,
        /^0x[0-9a-f]+ <stack_bottom\+\d+>:\t0x[0-9a-f]{16}\t0x[0-9a-f]{16}$/m,
        "monitor x/2gx $rsp",
      );
      assert.match(out.all, new RegExp(`^${hex(bump)}: 4-level paging$`, "m"), "monitor pt $rip");
      assert.match(out.all, /^eax = 0x[0-9a-f]+\nrip = 0x[0-9a-f]+$/m, "monitor regs eax rip");
      assert.match(out.all, new RegExp(`^\\$rip = ${hex(bump)} <bump>$`, "m"), "monitor sym $rip");
      assert.match(out.all, /^00:0000│ rsp 0x[0-9a-f]+ —▸ 0x[0-9a-f]+ <level\d\+\d+>/m, "monitor tele $rsp 2");
      assert.match(out.all, /^ {2}dis \[ADDR\] \[N\]: disassemble/m, "monitor help lists the dot commands");
      assert.match(out.all, /unknown monitor command "step"/, "run control stays with gdb");
      await hvsh.output();
    } finally {
      clearTimeout(killer);
      await Deno.remove(dir, { recursive: true });
    }
  },
);
