/**
 * The snapshot rows of `deno task bench` (`--only snapshot`): snapshot and
 * restore time and file size for a 64 MiB and a 256 MiB guest, the memory
 * 10 clones of the 256 MiB guest take, live-migration downtime, and the
 * in-process fork time, each beside QEMU's in the same run on the same
 * guest (tests/guests/counter_mb.S, a multiboot counter both boot):
 * QEMU saves with `migrate "exec:cat > FILE"` and restores with
 * `-incoming "exec:cat FILE"`, both driven over QMP.
 *
 * "Restore, new process" is the same figure on both sides: from spawning
 * the process to the restored guest's first new serial byte. The memory of
 * 10 clones is their PSS (shared pages counted once across the sharers):
 * hvsh's 10 copy-on-write restores in one process against 10 QEMU
 * processes restored from the same file.
 *
 * @module
 */

import { join } from "node:path";
import { Vm } from "../core/vm.ts";

const QEMU = "qemu-system-x86_64";
const SIZES = [64, 256] as const;

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

async function sleep(ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms));
}

/** Waits for `condition`, polling every `every` ms, for at most `limitMs`. */
async function waitFor(what: string, condition: () => boolean | Promise<boolean>, limitMs = 30_000, every = 1) {
  const deadline = performance.now() + limitMs;
  while (!(await condition())) {
    if (performance.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await sleep(every);
  }
}

/** PSS of a process in KiB (/proc/PID/smaps_rollup). */
function pssKiB(pid: number | "self"): number {
  const text = Deno.readTextFileSync(`/proc/${pid}/smaps_rollup`);
  return Number(/^Pss:\s+(\d+) kB/m.exec(text)?.[1] ?? NaN);
}

/** PSS in KiB of this process's mappings that start at one of `starts` (guest RAM mappings). */
function mappingsPssKiB(starts: ReadonlySet<bigint>): number {
  let total = 0;
  let counting = false;
  for (const line of Deno.readTextFileSync("/proc/self/smaps").split("\n")) {
    const header = /^([0-9a-f]+)-[0-9a-f]+ /.exec(line);
    if (header !== null) {
      counting = starts.has(BigInt(`0x${header[1]}`));
      continue;
    }
    const pss = /^Pss:\s+(\d+) kB/.exec(line);
    if (counting && pss !== null) total += Number(pss[1]);
  }
  return total;
}

/** Apparent size and disk blocks (bytes) of a file. */
function fileSizes(path: string): { size: number; disk: number } {
  const info = Deno.statSync(path);
  return { size: info.size, disk: (info.blocks ?? 0) * 512 };
}

/** A minimal QMP client over a Unix socket. */
class Qmp {
  #conn: Deno.UnixConn;
  #buffer = "";
  private constructor(conn: Deno.UnixConn) {
    this.#conn = conn;
  }

  static async connect(path: string): Promise<Qmp> {
    let conn: Deno.UnixConn | undefined;
    await waitFor(
      `QMP socket ${path}`,
      async () => {
        try {
          conn = await Deno.connect({ transport: "unix", path });
          return true;
        } catch {
          return false;
        }
      },
      30_000,
      1,
    );
    const qmp = new Qmp(conn!);
    await qmp.#line(); // greeting
    await qmp.command("qmp_capabilities");
    return qmp;
  }

  async #line(): Promise<Record<string, unknown>> {
    for (;;) {
      const newline = this.#buffer.indexOf("\n");
      if (newline >= 0) {
        const line = this.#buffer.slice(0, newline);
        this.#buffer = this.#buffer.slice(newline + 1);
        if (line.trim() !== "") return JSON.parse(line);
        continue;
      }
      const chunk = new Uint8Array(65536);
      const n = await this.#conn.read(chunk);
      if (n === null) throw new Error("QMP connection closed");
      this.#buffer += new TextDecoder().decode(chunk.subarray(0, n));
    }
  }

  async command(execute: string, args?: Record<string, unknown>): Promise<Record<string, unknown>> {
    const message = JSON.stringify(args === undefined ? { execute } : { execute, arguments: args }) + "\n";
    await this.#conn.write(new TextEncoder().encode(message));
    for (;;) {
      const reply = await this.#line();
      if ("return" in reply) return reply.return as Record<string, unknown>;
      if ("error" in reply) throw new Error(`QMP ${execute}: ${JSON.stringify(reply.error)}`);
    }
  }

  /** Polls query-migrate until it reports "completed"; returns the last answer. */
  async migrationDone(): Promise<Record<string, unknown>> {
    for (;;) {
      const status = await this.command("query-migrate");
      if (status.status === "completed") return status;
      if (status.status === "failed") throw new Error(`QEMU migration failed: ${JSON.stringify(status)}`);
      await sleep(1);
    }
  }

  close(): void {
    try {
      this.#conn.close();
    } catch {
      // already closed
    }
  }
}

/** A QEMU process running (or receiving) counter_mb.elf, its serial output in a file. */
class QemuGuest {
  readonly child: Deno.ChildProcess;
  readonly serial: string;
  readonly qmpPath: string;
  qmp: Qmp | undefined;

  constructor(dir: string, name: string, kernel: string, sizeMiB: number, extra: string[]) {
    this.serial = join(dir, `${name}.serial`);
    this.qmpPath = join(dir, `${name}.qmp`);
    this.child = new Deno.Command(QEMU, {
      args: [
        "-M",
        "microvm",
        "-enable-kvm",
        "-m",
        `${sizeMiB}M`,
        "-kernel",
        kernel,
        "-display",
        "none",
        "-serial",
        `file:${this.serial}`,
        "-qmp",
        `unix:${this.qmpPath},server=on,wait=off`,
        "-no-reboot",
        ...extra,
      ],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
  }

  async connect(): Promise<Qmp> {
    return this.qmp ??= await Qmp.connect(this.qmpPath);
  }

  lines(): number {
    try {
      return Deno.readTextFileSync(this.serial).split("\n").length - 1;
    } catch {
      return 0;
    }
  }

  async close(): Promise<void> {
    this.qmp?.close();
    try {
      this.child.kill("SIGKILL");
    } catch {
      // gone already
    }
    await this.child.status;
  }
}

/** One size's figures. */
interface SizeRow {
  sizeMiB: number;
  hvshSnapshotMs: number;
  qemuSnapshotMs: number;
  hvshFile: { size: number; disk: number };
  qemuFile: { size: number; disk: number };
  hvshRestoreMs: number;
  hvshRestoreCowMs: number;
  hvshRestoreProcessMs: number;
  qemuRestoreProcessMs: number;
  hvshForkMs: number;
  hvshForkAgainMs: number;
  hvshBootMs: number;
}

/** What the snapshot rows measured. */
export interface SnapshotBench {
  rows: SizeRow[];
  clones: { hvshMiB: number; processMiB: number; qemuMiB: number; sizeMiB: number; count: number };
  downtime: { hvshMs: number; hvshStopCopyMs: number; qemuMs: number; hvshRounds: number; qemuDowntimeNote: string };
  rounds: number;
}

async function hvshCounter(kernel: string, sizeMiB: number, lines = 20): Promise<Vm> {
  const vm = await Vm.create({ memory: `${sizeMiB}M` });
  await vm.load(kernel);
  const run = vm.run({ timeout: 30_000 });
  await waitFor("hvsh counter output", () => vm.serial.output.split("\n").length > lines || !vm.running);
  await vm.pause();
  await run;
  return vm;
}

/** Spawns `args` and resolves with ms from spawn to the first stdout byte; the process is then killed. */
async function msToFirstOutput(command: string, args: string[]): Promise<number> {
  const started = performance.now();
  const child = new Deno.Command(command, { args, stdin: "null", stdout: "piped", stderr: "null" }).spawn();
  const reader = child.stdout.getReader();
  const { done } = await reader.read();
  const ms = performance.now() - started;
  if (done) throw new Error(`${command} ${args.join(" ")} printed nothing`);
  reader.releaseLock();
  try {
    child.kill("SIGKILL");
  } catch {
    // gone already
  }
  await child.stdout.cancel().catch(() => {});
  await child.status;
  return ms;
}

async function measureSize(
  dir: string,
  kernel: string,
  launcher: string,
  sizeMiB: number,
  rounds: number,
): Promise<SizeRow> {
  const samples: Record<string, number[]> = {};
  const add = (key: string, value: number) => (samples[key] ??= []).push(value);
  const hvshFile = join(dir, `hvsh-${sizeMiB}.hvsnap`);
  const qemuFile = join(dir, `qemu-${sizeMiB}.mig`);
  for (let round = 0; round < rounds; round++) {
    // hvsh: boot time (for the fork's comparison), snapshot, restores, forks.
    let t = performance.now();
    const vm = await Vm.create({ memory: `${sizeMiB}M` });
    await vm.load(kernel);
    add("boot", performance.now() - t);
    await vm.close();
    const source = await hvshCounter(kernel, sizeMiB);
    add("snapshot", (await source.snapshot(hvshFile)).ms);
    t = performance.now();
    const copy = await Vm.restore(hvshFile);
    add("restore", performance.now() - t);
    await copy.close();
    t = performance.now();
    const clone = await Vm.restore(hvshFile, { memory: "cow" });
    add("restoreCow", performance.now() - t);
    await clone.close();
    t = performance.now();
    const fork = await source.fork();
    add("fork", performance.now() - t);
    t = performance.now();
    const again = await source.fork();
    add("forkAgain", performance.now() - t);
    await fork.close();
    await again.close();
    await source.close();
    add("restoreProcess", await msToFirstOutput(launcher, ["boot", "--restore", hvshFile, "--timeout", "5"]));

    // QEMU: the same guest, stopped, saved to a file and restored in a new process.
    const qemu = new QemuGuest(dir, `src-${sizeMiB}`, kernel, sizeMiB, []);
    try {
      await waitFor("QEMU counter output", () => qemu.lines() > 20);
      const qmp = await qemu.connect();
      await qmp.command("stop");
      t = performance.now();
      await qmp.command("migrate", { uri: `exec:cat > ${qemuFile}` });
      await qmp.migrationDone();
      add("qemuSnapshot", performance.now() - t);
    } finally {
      await qemu.close();
    }
    t = performance.now();
    const restored = new QemuGuest(dir, `dst-${sizeMiB}`, kernel, sizeMiB, [
      "-incoming",
      `exec:cat ${qemuFile}`,
    ]);
    try {
      const qmp = await restored.connect();
      await qmp.migrationDone();
      await qmp.command("cont"); // the source was stopped, so the destination waits
      await waitFor("QEMU restored output", () => {
        try {
          return Deno.statSync(restored.serial).size > 0;
        } catch {
          return false;
        }
      });
      add("qemuRestoreProcess", performance.now() - t);
    } finally {
      await restored.close();
    }
  }
  return {
    sizeMiB,
    hvshSnapshotMs: median(samples.snapshot!),
    qemuSnapshotMs: median(samples.qemuSnapshot!),
    hvshFile: fileSizes(hvshFile),
    qemuFile: fileSizes(qemuFile),
    hvshRestoreMs: median(samples.restore!),
    hvshRestoreCowMs: median(samples.restoreCow!),
    hvshRestoreProcessMs: median(samples.restoreProcess!),
    qemuRestoreProcessMs: median(samples.qemuRestoreProcess!),
    hvshForkMs: median(samples.fork!),
    hvshForkAgainMs: median(samples.forkAgain!),
    hvshBootMs: median(samples.boot!),
  };
}

async function measureClones(dir: string, kernel: string, count: number): Promise<SnapshotBench["clones"]> {
  const sizeMiB = 256;
  const hvshFile = join(dir, `hvsh-${sizeMiB}.hvsnap`);
  const qemuFile = join(dir, `qemu-${sizeMiB}.mig`);
  const before = pssKiB("self");
  const clones = [];
  for (let i = 0; i < count; i++) clones.push(await Vm.restore(hvshFile, { memory: "cow" }));
  // Each clone runs a little, so each has its own written pages.
  for (const clone of clones) await clone.run({ timeout: 20 });
  const ram = new Set(clones.flatMap((clone) => clone.memory.regions.map((region) => region.hostAddress)));
  const hvshMiB = mappingsPssKiB(ram) / 1024;
  const processMiB = (pssKiB("self") - before) / 1024;
  for (const clone of clones) await clone.close();

  const guests: QemuGuest[] = [];
  let qemuKiB = 0;
  try {
    for (let i = 0; i < count; i++) {
      guests.push(
        new QemuGuest(dir, `clone-${i}`, kernel, sizeMiB, [
          "-incoming",
          `exec:cat ${qemuFile}`,
        ]),
      );
    }
    for (const guest of guests) {
      const qmp = await guest.connect();
      await qmp.migrationDone();
      await qmp.command("cont");
    }
    await sleep(20);
    for (const guest of guests) qemuKiB += pssKiB(guest.child.pid);
  } finally {
    for (const guest of guests) await guest.close();
  }
  return { hvshMiB, processMiB, qemuMiB: qemuKiB / 1024, sizeMiB, count };
}

async function measureDowntime(dir: string, kernel: string, launcher: string): Promise<SnapshotBench["downtime"]> {
  // hvsh: a running 64 MiB counter pre-copied to `hvsh listen` in another process.
  const vm = await Vm.create({ memory: "64M" });
  await vm.load(kernel);
  const listener = new Deno.Command(launcher, {
    args: ["listen", "--migrate", "127.0.0.1:0", "--timeout", "0.5"],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const stderr = listener.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let said = "";
  let address: string | undefined;
  while (address === undefined) {
    const { value, done } = await stderr.read();
    if (done) throw new Error(`hvsh listen ended: ${said}`);
    said += value;
    address = /listening for a migration on (\S+)/.exec(said)?.[1];
  }
  const run = vm.run({ timeout: 30_000 });
  await waitFor("hvsh counter output", () => vm.serial.output.split("\n").length > 20);
  const stats = await vm.migrate(address);
  await run;
  await vm.close();
  await stderr.cancel().catch(() => {});
  await listener.status;

  // QEMU: the same guest running, migrated live over TCP to a QEMU waiting with -incoming.
  const port = 20_000 + Math.floor(Math.random() * 20_000);
  const mb = kernel;
  const destination = new QemuGuest(dir, "mig-dst", mb, 64, ["-incoming", `tcp:127.0.0.1:${port}`]);
  const source = new QemuGuest(dir, "mig-src", mb, 64, []);
  try {
    await destination.connect();
    await waitFor("QEMU counter output", () => source.lines() > 20);
    const qmp = await source.connect();
    await qmp.command("migrate", { uri: `tcp:127.0.0.1:${port}` });
    const done = await qmp.migrationDone();
    return {
      hvshMs: stats.downtimeMs,
      hvshStopCopyMs: stats.stopCopyMs,
      hvshRounds: stats.rounds,
      qemuMs: Number(done.downtime),
      qemuDowntimeNote: "QEMU's own downtime figure (query-migrate)",
    };
  } finally {
    await source.close();
    await destination.close();
  }
}

/** Runs the snapshot rows; undefined plus a note when QEMU is missing. */
export async function benchSnapshot(
  kernel: string,
  launcher: string,
  rounds: number,
): Promise<SnapshotBench | string> {
  try {
    await new Deno.Command(QEMU, { args: ["--version"], stdout: "null", stderr: "null" }).output();
  } catch {
    return `${QEMU} not on PATH (apt-get install -y qemu-system-x86): snapshot rows skipped`;
  }
  const dir = Deno.makeTempDirSync({ prefix: "hvsh-bench-snap-" });
  try {
    const rows: SizeRow[] = [];
    for (const size of SIZES) rows.push(await measureSize(dir, kernel, launcher, size, rounds));
    const clones = await measureClones(dir, kernel, 10);
    const downtime = await measureDowntime(dir, kernel, launcher);
    return { rows, clones, downtime, rounds };
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

/** The snapshot table. */
export function formatSnapshotTable(result: SnapshotBench | string): string {
  if (typeof result === "string") return `Snapshots: ${result}`;
  const mib = (bytes: number) => (bytes / (1 << 20)).toFixed(2);
  const lines = [
    `Snapshots of counter_mb.elf (QEMU: -M microvm), stopped mid-count; medians of ${result.rounds} rounds`,
    `${"what".padEnd(44)}${"QEMU".padStart(12)}${"hvsh".padStart(12)}${"hvsh/QEMU".padStart(11)}`,
  ];
  const row = (what: string, qemu: number, hvsh: number, digits = 1) =>
    lines.push(
      `${what.padEnd(44)}${qemu.toFixed(digits).padStart(12)}${hvsh.toFixed(digits).padStart(12)}${
        (hvsh / qemu).toFixed(2).padStart(11)
      }`,
    );
  for (const r of result.rows) {
    row(`${r.sizeMiB} MiB: snapshot to a file (ms)`, r.qemuSnapshotMs, r.hvshSnapshotMs);
    row(`${r.sizeMiB} MiB: file size (MiB)`, r.qemuFile.size / (1 << 20), r.hvshFile.size / (1 << 20), 2);
    row(
      `${r.sizeMiB} MiB: file on disk (MiB, holes not counted)`,
      r.qemuFile.disk / (1 << 20),
      r.hvshFile.disk / (1 << 20),
      2,
    );
    row(`${r.sizeMiB} MiB: restore, new process to output (ms)`, r.qemuRestoreProcessMs, r.hvshRestoreProcessMs);
    lines.push(
      `${`${r.sizeMiB} MiB: hvsh in-process restore copy / cow (ms)`.padEnd(44)}${"-".padStart(12)}${
        `${r.hvshRestoreMs.toFixed(1)} / ${r.hvshRestoreCowMs.toFixed(1)}`.padStart(12)
      }`,
    );
    lines.push(
      `${`${r.sizeMiB} MiB: hvsh fork, first / again (ms)`.padEnd(44)}${"-".padStart(12)}${
        `${r.hvshForkMs.toFixed(1)} / ${r.hvshForkAgainMs.toFixed(1)}`.padStart(12)
      }   (fresh Vm.create+load: ${r.hvshBootMs.toFixed(1)} ms)`,
    );
  }
  const c = result.clones;
  row(`${c.count} clones of ${c.sizeMiB} MiB: memory (MiB, PSS)`, c.qemuMiB, c.processMiB);
  row(`${c.count} clones of ${c.sizeMiB} MiB: their RAM mappings (MiB, PSS)`, c.qemuMiB, c.hvshMiB, 2);
  row("live migration, 64 MiB: stop-and-copy (ms)", result.downtime.qemuMs, result.downtime.hvshStopCopyMs);
  row("live migration, 64 MiB: pause to dest ready (ms)", result.downtime.qemuMs, result.downtime.hvshMs);
  lines.push(
    `(file size: the apparent size; hvsh's file keeps zero pages as holes, ${
      mib(result.rows[0]!.hvshFile.disk)
    } MiB on`,
    " disk for the 64 MiB guest. Restore, new process: spawn to the restored guest's first serial byte, process start",
    ` included on both sides. hvsh clones: Vm.restore({ memory: "cow" }) in one process, each run 20 ms; first row: the`,
    " process's PSS growth (KVM's and JavaScript's own memory too, noisy), second: the clones' guest-RAM mappings only;",
    ` QEMU: the PSS of ${c.count} processes restored from one file and running.`,
    ` Migration: hvsh pre-copied in ${result.downtime.hvshRounds} round(s); stop-and-copy is`,
    " the pause to the last byte sent, dest ready adds the destination's restore and acknowledgement;",
    ` QEMU: ${result.downtime.qemuDowntimeNote}, in both rows.)`,
  );
  return lines.join("\n");
}
