/**
 * The Linux section of `./hvsh bench` (`--only linux`): time to the kernel
 * banner, to `Run /init` and to user space (init's marker fault) for the
 * tiny kernel of scripts/build_linux.ts, with `hvsh boot` and with
 * `qemu-system-x86_64 -M microvm` on the same kernel, initramfs and command
 * line, run back to back (hvsh then QEMU, for each boot path), plus hvsh's
 * own `--boot-timer` breakdown of its runs.
 *
 * Both sides are timed the same way: from spawning the process to the moment
 * its serial output (stdout) shows each line.
 *
 * @module
 */

import { join } from "node:path";
import { findTinyKernel, TINY_CMDLINE, tinyKernelMissingReason } from "./build_linux.ts";
import { buildGuests } from "./build_guests.ts";
import { initramfs } from "../core/loader/initramfs.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const LAUNCHER = join(ROOT, "hvsh");

/** The serial lines that end each phase. */
export const LINUX_PHASES = [
  ["banner", /Linux version /],
  ["Run /init", /Run \/init as init process/],
  ["user space", /init\[1\]: segfault at 48565348/],
] as const;

/** When each phase's line appeared, in ms after the process was spawned (undefined: never). */
export type PhaseTimes = Record<typeof LINUX_PHASES[number][0], number | undefined>;

/** One timed boot. */
export interface LinuxRun {
  label: string;
  times: PhaseTimes;
  /** The exit status; "killed" when it ran past the time limit; "ended after user space" when stopped at the marker. */
  status: number | "killed" | "ended after user space";
  /** stderr's last lines (hvsh's --boot-timer breakdown). */
  stderr: string;
}

/** Spawns a VMM and stamps each phase as its line shows up on stdout; ends it at user space or after `limitMs`. */
export async function timeLinuxBoot(
  label: string,
  command: string,
  args: string[],
  limitMs: number,
): Promise<LinuxRun> {
  const t0 = performance.now();
  const child = new Deno.Command(command, { args, stdin: "null", stdout: "piped", stderr: "piped" }).spawn();
  const times: PhaseTimes = { "banner": undefined, "Run /init": undefined, "user space": undefined };
  let killed = false;
  let done = false;
  const end = () => {
    try {
      child.kill("SIGKILL");
    } catch {
      // it ended by itself
    }
  };
  let grace: ReturnType<typeof setTimeout> | undefined;
  const timer = setTimeout(() => {
    killed = true;
    end();
  }, limitMs);
  const stderrText = new Response(child.stderr).text();
  let text = "";
  for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
    const now = performance.now() - t0;
    text = (text + chunk).slice(-4096);
    for (const [phase, pattern] of LINUX_PHASES) {
      if (times[phase] === undefined && pattern.test(text)) times[phase] = now;
    }
    // hvsh ends on the reboot that panic=-1 asks for; QEMU microvm (no i8042, no ACPI) may spin in the kernel's
    // reboot fallbacks instead: the marker is the end of the measurement either way.
    if (times["user space"] !== undefined && !done) {
      done = true;
      grace = setTimeout(end, 2000);
    }
  }
  const status = await child.status;
  clearTimeout(timer);
  clearTimeout(grace);
  return {
    label,
    times,
    status: killed ? "killed" : done && status.signal !== null ? "ended after user space" : status.code,
    stderr: (await stderrText).trim(),
  };
}

/** Options of {@link benchLinux}. */
export interface LinuxBenchOptions {
  /** Boots per case (default 1: a boot takes tens of seconds here). */
  runs?: number;
  /** Guest memory. */
  memory?: string;
  /** Longest a boot may take before it is killed (ms). */
  limitMs?: number;
}

async function hasQemu(): Promise<boolean> {
  try {
    const out = await new Deno.Command("qemu-system-x86_64", { args: ["--version"], stdout: "null", stderr: "null" })
      .output();
    return out.success;
  } catch {
    return false;
  }
}

/** Runs the Linux boot comparison; returns the printed table, or a note saying why it was skipped. */
export async function benchLinux(options: LinuxBenchOptions = {}): Promise<string> {
  const kernel = await findTinyKernel();
  if (kernel === undefined) return `Linux boot: skipped: ${tinyKernelMissingReason()}`;
  const runs = options.runs ?? 1;
  const memory = options.memory ?? "256M";
  const limitMs = options.limitMs ?? 300_000;
  const guests = await buildGuests();
  const init = guests.get("linux_init.elf");
  if (init === undefined) throw new Error("buildGuests() lacks linux_init.elf");
  const dir = await Deno.makeTempDir({ prefix: "hvsh-bench-linux-" });
  try {
    const initrd = join(dir, "initramfs.cpio");
    await Deno.writeFile(initrd, await initramfs({ "/init": { file: init, mode: 0o755 } }));
    const qemu = await hasQemu();
    const notes: string[] = [];
    if (!qemu) notes.push("qemu-system-x86_64 not found (apt-get install -y qemu-system-x86): QEMU rows skipped");
    const results: LinuxRun[][] = [];
    const paths: [string, string][] = [["PVH vmlinux", kernel.vmlinux], ["bzImage", kernel.bzImage]];
    for (const [path, image] of paths) {
      for (let round = 0; round < runs; round++) {
        const common = ["--kernel", image, "--initrd", initrd, "--append", TINY_CMDLINE, "--mem", memory];
        const row: LinuxRun[] = [
          await timeLinuxBoot(`hvsh boot, ${path}`, LAUNCHER, ["boot", ...common, "--boot-timer"], limitMs),
        ];
        if (qemu) {
          row.push(
            await timeLinuxBoot(`qemu -M microvm, ${path}`, "qemu-system-x86_64", [
              "-M",
              "microvm",
              "-enable-kvm",
              // QEMU's default qemu64 model is AMD without XSAVEERPTR, so Linux applies the FXSAVE-leak workaround
              // (fnclex; emms; fild) on every FPU restore: this host cannot emulate fnclex and QEMU stops at /init.
              // -cpu host fails here (QEMU cannot set MSR 0x10a). hvsh passes the host's CPUID, which has it.
              "-cpu",
              "qemu64,+xsaveerptr",
              "-m",
              memory,
              "-nographic",
              "-no-reboot",
              "-kernel",
              image,
              "-initrd",
              initrd,
              "-append",
              TINY_CMDLINE,
            ], limitMs),
          );
        }
        results.push(row);
      }
    }
    return formatLinuxTable(results.flat(), notes);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function seconds(ms: number | undefined): string {
  return ms === undefined ? "—" : (ms / 1000).toFixed(2);
}

/** The table: one row per boot, seconds from spawn to each phase; then hvsh's --boot-timer breakdowns. */
export function formatLinuxTable(rows: LinuxRun[], notes: string[]): string {
  const lines = [
    "Linux boot (tiny 6.1 kernel, s from process spawn; back to back):",
    `  ${"case".padEnd(34)} ${"banner".padStart(8)} ${"Run /init".padStart(10)} ${"user space".padStart(11)}  status`,
  ];
  for (const row of rows) {
    lines.push(
      `  ${row.label.padEnd(34)} ${seconds(row.times.banner).padStart(8)} ${
        seconds(row.times["Run /init"]).padStart(10)
      } ${seconds(row.times["user space"]).padStart(11)}  ${row.status}`,
    );
  }
  for (const note of notes) lines.push(`  note: ${note}`);
  for (const row of rows) {
    const breakdown = row.stderr.split("\n").findIndex((line) => line.startsWith("hvsh boot timer"));
    if (breakdown < 0) continue;
    lines.push("", `  ${row.label}:`, ...row.stderr.split("\n").slice(breakdown).map((line) => `  ${line}`));
  }
  return lines.join("\n");
}

if (import.meta.main) {
  console.log(await benchLinux({ runs: Number(Deno.args[0] ?? 1) }));
}
