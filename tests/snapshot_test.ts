// Snapshots, restore, clones, fork and migration, with tests/guests/counter.S:
// a guest that prints 0, 1, 2, ... one per line and checks that its three
// copies of the count (memory, r12, r13) agree. Every hop must leave the
// concatenated output a contiguous count.

import assert from "node:assert/strict";
import { join } from "node:path";
import { Vm } from "../core/vm.ts";
import { SnapshotError, SnapshotFile } from "../core/snapshot/format.ts";
import { guest, kvmAvailable, kvmMissingReason, symbol } from "./_helpers.ts";

const ignore = !kvmAvailable;
const HVSH = new URL("../hvsh", import.meta.url).pathname;
if (ignore) console.log(`snapshot tests ignored: ${kvmMissingReason}`);

/** The counts in `text` (a trailing partial line is left out); throws unless they run on by one from `from`. */
function assertContiguous(text: string, from = 0): number[] {
  assert.ok(!text.includes("MISMATCH"), "the guest found its copies of the count disagreeing");
  const lines = text.split("\n");
  lines.pop(); // the unfinished line (or "" after the last newline)
  const counts = lines.map(Number);
  counts.forEach((count, i) => assert.equal(count, from + i, `line ${i} is ${lines[i]}, expected ${from + i}`));
  return counts;
}

/**
 * Output of a guest whose count was set to `to` while it stood somewhere in
 * its loop: the line being printed finishes, then the count goes on from
 * `to` (or `to + 1`, when the guest had not yet counted past that line).
 */
function assertJumpedTo(output: string, to: number): void {
  const lines = output.split("\n");
  lines.pop();
  // The copy may have stopped in the middle of printing an old count: that tail ends the first line. It may as well
  // have stopped at a line boundary, so the first line is dropped only when it is not one of the counts expected.
  if (Number(lines[0]) !== to && Number(lines[0]) !== to + 1) lines.shift();
  const first = Number(lines[0]);
  assert.ok(first === to || first === to + 1, `the count went on from ${lines[0]}, expected ${to} or ${to + 1}`);
  assertContiguous(lines.join("\n") + "\n", first);
}

async function counterVm(memory = "64M"): Promise<Vm> {
  const vm = await Vm.create({ memory });
  await vm.load(await guest("counter.elf"));
  return vm;
}

/** Runs until the output has at least `lines` newlines (or 20 s), then stops the VM. */
async function runUntilLines(vm: Vm, lines: number): Promise<void> {
  const run = vm.run({ timeout: 20_000 });
  const count = () => vm.serial.output.split("\n").length - 1;
  const start = count();
  while (count() < start + lines && vm.running) await new Promise((resolve) => setTimeout(resolve, 5));
  await vm.pause();
  await run;
}

function tempFile(name: string): string {
  return join(Deno.makeTempDirSync({ prefix: "hvsh-snap-" }), name);
}

function openFds(): number {
  return [...Deno.readDirSync("/proc/self/fd")].length;
}

Deno.test({
  name: "Vm.restore() of vm.snapshot() continues the guest's count exactly (same process)",
  ignore,
  async fn() {
    await using vm = await counterVm();
    await runUntilLines(vm, 30);
    const path = tempFile("mid.hvsnap");
    const info = await vm.snapshot(path);
    assert.ok(info.storedPages > 0 && info.storedPages < 100, `stored ${info.storedPages} pages of a tiny guest`);
    const before = vm.serial.output;
    await using copy = await Vm.restore(path);
    await runUntilLines(copy, 30);
    const counts = assertContiguous(before + copy.serial.output);
    assert.ok(counts.length >= 60);
    // The original goes on from the same point, independently.
    await runUntilLines(vm, 5);
    assertContiguous(vm.serial.output);
  },
});

Deno.test({
  name: "Vm.restore({ memory: 'cow' }) clones share the file and diverge independently",
  ignore,
  async fn() {
    await using vm = await counterVm();
    await runUntilLines(vm, 20);
    const path = tempFile("clone.hvsnap");
    await vm.snapshot(path);
    const before = vm.serial.output;
    const clones = await Promise.all([1, 2, 3].map(() => Vm.restore(path, { memory: "cow" })));
    try {
      assert.deepEqual(clones[0]!.memory.backings, ["file-private"]);
      // Clone 0 jumps to 5000 in all three places; the others must not see it.
      const count = Number(symbol(clones[0]!, "count"));
      clones[0]!.memory.writeU64(count, 5000);
      clones[0]!.cpu(0).setRegs({ r12: 5000, r13: 6000 });
      for (const clone of clones) await runUntilLines(clone, 10);
      assertJumpedTo(clones[0]!.serial.output, 5000);
      assertContiguous(before + clones[1]!.serial.output);
      assertContiguous(before + clones[2]!.serial.output);
      // The file was not written through.
      await using again = await Vm.restore(path);
      await runUntilLines(again, 3);
      assertContiguous(before + again.serial.output);
    } finally {
      for (const clone of clones) await clone.close();
    }
  },
});

Deno.test({
  name: "hvsh boot --restore FILE continues the count in a new process",
  ignore,
  async fn() {
    await using vm = await counterVm();
    await runUntilLines(vm, 25);
    const path = tempFile("boot.hvsnap");
    await vm.snapshot(path);
    const result = await new Deno.Command(HVSH, { args: ["boot", "--restore", path, "--timeout", "1"], stdin: "null" })
      .output();
    const stdout = new TextDecoder().decode(result.stdout);
    assert.equal(result.code, 124, new TextDecoder().decode(result.stderr));
    const counts = assertContiguous(vm.serial.output + stdout);
    assert.ok(counts.length > 35, `the restored guest printed ${stdout.length} bytes`);
  },
});

Deno.test({
  name: "Vm.restore() refuses a corrupted byte in every section, and a truncated file, naming the part",
  ignore,
  async fn() {
    await using vm = await counterVm("4M");
    await runUntilLines(vm, 5);
    const path = tempFile("good.hvsnap");
    await vm.snapshot(path);
    const good = Deno.readFileSync(path);
    const file = SnapshotFile.open(path);
    const parts: { name: string; offset: number }[] = [
      { name: "header", offset: 17 },
      { name: "section table", offset: 64 + 30 },
    ];
    for (const section of file.sections) {
      // In the memory area, a byte of the first stored page (the rest are holes).
      const offset = section.name === "memory"
        ? section.offset + file.storedPages(0, section.length / 4096)[0]! * 4096 + 100
        : section.offset + Math.floor(section.length / 2);
      parts.push({ name: section.name, offset });
    }
    assert.ok(parts.some((p) => p.name === "vcpu0") && parts.some((p) => p.name === "devices"));
    const fds = openFds();
    for (const part of parts) {
      const bad = good.slice();
      bad[part.offset]! ^= 0x5a;
      const badPath = tempFile(`bad-${part.name.replace(/ /g, "-")}.hvsnap`);
      Deno.writeFileSync(badPath, bad);
      await assert.rejects(() => Vm.restore(badPath), (error: unknown) => {
        assert.ok(error instanceof SnapshotError, `${part.name}: ${error}`);
        assert.equal(error.section, part.name);
        assert.match(error.message, new RegExp(part.name));
        return true;
      });
      await assert.rejects(() => Vm.restore(badPath, { memory: "cow" }), SnapshotError);
    }
    // A byte in a page the page map lists as zero: a copy never reads it, a copy-on-write mapping would show it.
    const memory = file.section("memory")!;
    const stored = new Set(file.storedPages(0, memory.length / 4096));
    let hole = 0;
    while (stored.has(hole)) hole++;
    const holed = good.slice();
    holed[memory.offset + hole * 4096 + 7] = 0x42;
    const holedPath = tempFile("holed.hvsnap");
    Deno.writeFileSync(holedPath, holed);
    await assert.rejects(
      () => Vm.restore(holedPath, { memory: "cow" }),
      /section memory is corrupt: page \d+ holds data/,
    );
    const truncated = tempFile("short.hvsnap");
    const lastData = file.section("memory")!.offset + (file.storedPages(0, 1024).at(-1)! + 1) * 4096;
    Deno.writeFileSync(truncated, good.slice(0, lastData - 10));
    await assert.rejects(() => Vm.restore(truncated), /truncated/);
    Deno.writeFileSync(truncated, good.slice(0, 40));
    await assert.rejects(() => Vm.restore(truncated), /header is truncated/);
    // Nothing half-restored is left behind: no VM fds or mappings' files stay open.
    assert.equal(openFds(), fds);
  },
});

Deno.test({
  name: "Vm.restore() brings breakpoints back: the restored guest stops at one and counts on",
  ignore,
  async fn() {
    await using vm = await counterVm();
    await runUntilLines(vm, 5);
    vm.debug.break("next_count");
    const path = tempFile("bp.hvsnap");
    await vm.snapshot(path);
    await using copy = await Vm.restore(path);
    assert.equal(copy.debug.breakpoints.length, 1);
    const stop = await copy.run({ timeout: 10_000 });
    assert.equal(stop.reason, "breakpoint");
    assert.equal(stop.rip, symbol(copy, "next_count"));
    copy.debug.clear();
    await runUntilLines(copy, 5);
    assertContiguous(vm.serial.output + copy.serial.output);
  },
});

Deno.test({
  name: "vm.fork() shares memory copy-on-write: parent and forks count on independently",
  ignore,
  async fn() {
    await using vm = await counterVm();
    await runUntilLines(vm, 10);
    const before = vm.serial.output;
    await using first = await vm.fork();
    assert.deepEqual(first.memory.backings, ["memfd-private"]);
    await using second = await vm.fork();
    const count = Number(symbol(vm, "count"));
    second.memory.writeU64(count, 7000);
    second.cpu(0).setRegs({ r12: 7000, r13: 8000 });
    await runUntilLines(first, 10);
    await runUntilLines(second, 5);
    await runUntilLines(vm, 10);
    assertContiguous(before + first.serial.output);
    assertContiguous(vm.serial.output);
    assertJumpedTo(second.serial.output, 7000);
    // A fork of the parent after it ran again starts from its new point.
    const later = vm.serial.output;
    await using third = await vm.fork();
    await runUntilLines(third, 5);
    assertContiguous(later + third.serial.output);
  },
});

Deno.test({
  name: "vm.migrate() moves a running guest to `hvsh listen --migrate` in another process: the count stays contiguous",
  ignore,
  async fn() {
    await using vm = await counterVm();
    const child = new Deno.Command(HVSH, {
      args: ["listen", "--migrate", "127.0.0.1:0", "--timeout", "1"],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const stderr = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
    let said = "";
    let address: string | undefined;
    while (address === undefined) {
      const { value, done } = await stderr.read();
      if (done) throw new Error(`hvsh listen ended: ${said}`);
      said += value;
      address = /listening for a migration on (\S+)/.exec(said)?.[1];
    }
    const stdout = new Response(child.stdout).text();
    const run = vm.run({ timeout: 30_000 });
    while (vm.serial.output.split("\n").length < 20) await new Promise((resolve) => setTimeout(resolve, 5));
    const stats = await vm.migrate(address);
    const stop = await run;
    assert.equal(stop.reason, "paused");
    assert.equal(stats.precopy, true);
    assert.ok(stats.rounds >= 1 && stats.pagesSent > 0);
    const status = await child.status;
    void stderr.cancel();
    assert.equal(status.code, 124);
    const counts = assertContiguous(vm.serial.output + await stdout);
    assert.ok(counts.length > vm.serial.output.split("\n").length + 5, "the destination counted on");
  },
});

Deno.test({
  name: "REPL .snapshot save|load: the loaded VM becomes current, stopped at the same rip; bad input is named",
  ignore,
  async fn() {
    const path = tempFile("repl.hvsnap");
    const input = [
      "await vm.run({ timeout: 200 })",
      `.snapshot save ${path}`,
      ".regs rip",
      `.snapshot load ${path}`,
      ".regs rip",
      ".vm list",
      ".snapshot load /nonexistent.hvsnap",
      ".snapshot frob x",
    ].join("\n") + "\n";
    const child = new Deno.Command(HVSH, {
      args: ["--kernel", await guest("counter.elf")],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    })
      .spawn();
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(input));
    await writer.close();
    const out = await child.output();
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    assert.match(text, new RegExp(`saved ${path}: \\d+ MiB file, \\d+ pages stored`));
    assert.match(text, new RegExp(`vm2: restored from ${path} in [\\d.]+ ms \\(current\\)`));
    const rips = [...text.matchAll(/^rip = (0x[0-9a-f]+)$/gm)].map((m) => m[1]);
    assert.equal(rips.length, 2);
    assert.equal(rips[0], rips[1]);
    assert.match(text, /^\* vm2 +stopped/m);
    assert.match(text, /Cannot open snapshot \/nonexistent\.hvsnap/);
    assert.match(text, /usage: \.snapshot save FILE \| \.snapshot load FILE/);
  },
});

Deno.test({
  name: "hvsh boot --restore and hvsh listen name what is wrong and exit 2",
  ignore,
  async fn() {
    const run = async (args: string[]) => {
      const out = await new Deno.Command(HVSH, { args, stdin: "null" }).output();
      return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
    };
    const missing = await run(["boot", "--restore", "/nonexistent.hvsnap"]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /Cannot open snapshot \/nonexistent\.hvsnap/);
    const both = await run(["boot", "--restore", "x.hvsnap", "--kernel", "k.elf"]);
    assert.equal(both.code, 2);
    assert.match(both.stderr, /--restore runs a snapshot: it takes no --kernel/);
    const noAddress = await run(["listen"]);
    assert.equal(noAddress.code, 2);
    assert.match(noAddress.stderr, /Missing --migrate \[HOST:\]PORT/);
    const badAddress = await run(["listen", "--migrate", "nowhere"]);
    assert.equal(badAddress.code, 2);
    assert.match(badAddress.stderr, /Invalid migration address "nowhere"/);
  },
});

Deno.test({
  name: "Vm.restore() of an SMP guest paused during AP start-up (INIT/SIPI, LAPIC, PIT) finishes the start-up",
  ignore,
  async fn() {
    let restored = 0;
    for (const delayMs of [2, 6, 12]) {
      await using vm = await Vm.create({ cpus: 3 });
      await vm.load(await guest("smp.elf"));
      const running = vm.run({ timeout: 10_000 });
      setTimeout(() => void vm.pause(), delayMs);
      if ((await running).reason !== "paused") continue; // finished first on a fast host
      const path = tempFile("smp.hvsnap");
      await vm.snapshot(path);
      await using copy = await Vm.restore(path);
      const stop = await copy.run({ timeout: 10_000 });
      const output = vm.serial.output + copy.serial.output;
      assert.equal(stop.reason, "exit", output);
      assert.equal(stop.reason === "exit" ? stop.value : -1, 0, output);
      assert.match(output, /^bsp 0 saw 2 aps$/m);
      assert.deepEqual([...output.matchAll(/^ap (\d+)$/gm)].map((m) => m[1]).sort(), ["1", "2"]);
      restored++;
    }
    assert.ok(restored > 0, "the guest finished before every pause: no snapshot was taken mid-start-up");
  },
});
