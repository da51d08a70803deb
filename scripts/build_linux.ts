/**
 * Builds the tiny Linux 6.1 kernel that boots on this project's hosts (see
 * issue 14 and DESIGN.md): Debian's `linux-source-6.1`, `tinyconfig` plus the
 * handful of options a serial console, an initramfs and KVM's paravirtual
 * clock need, without the features whose instructions nested, emulated KVM
 * cannot run (jump-label int3s, the int3 self-test, retpolines...).
 *
 * Usage: `deno task linux` (or `deno run -A scripts/build_linux.ts [--force]`);
 * `deno task linux --virtio` builds the variant with the virtio drivers
 * (`VIRTIO_ENABLE`, cached in `…/hvsh/linux-6.1-tiny-virtio/`, built in its
 * own tree `…/linux-6.1-src/linux-source-6.1-virtio/`).
 * The result is cached outside the repository, in
 * `${XDG_CACHE_HOME:-~/.cache}/hvsh/linux-6.1-tiny/` as `bzImage`, `vmlinux`
 * and `System.map`; a second run reuses it unless the recipe changed (the
 * cache holds the recipe's hash) or `--force` is given. The source tree stays
 * in `…/hvsh/linux-6.1-src/` so a rebuild is incremental; delete it to reclaim
 * about 1.5 GB.
 *
 * Needs root (or the packages already installed) for `apt-get install` of
 * flex, bison, libelf-dev, bc, lz4, make, gcc and xz-utils.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { copyFile, mkdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";

/** Options enabled on top of `tinyconfig` (issue 14's recipe). */
export const ENABLE = [
  "64BIT",
  "PRINTK",
  "PRINTK_TIME",
  "EARLY_PRINTK",
  "TTY",
  "SERIAL_8250",
  "SERIAL_8250_CONSOLE",
  "BLK_DEV_INITRD",
  "RD_GZIP",
  "BINFMT_ELF",
  "BINFMT_SCRIPT",
  "PROC_FS",
  "SYSFS",
  "DEVTMPFS",
  "DEVTMPFS_MOUNT",
  "HYPERVISOR_GUEST",
  "PARAVIRT",
  "KVM_GUEST",
  "PVH",
  "KERNEL_LZ4",
  "HZ_100",
] as const;

/**
 * Options disabled: ptys (pty_init alone takes 17 s under emulation), and
 * everything that makes the kernel patch itself with int3 or run
 * instructions this host's emulator lacks.
 */
export const DISABLE = [
  "UNIX98_PTYS",
  "LEGACY_PTYS",
  "RETPOLINE",
  "CPU_MITIGATIONS",
  "PAGE_TABLE_ISOLATION",
  "RANDOMIZE_BASE",
  "STACKPROTECTOR",
  "JUMP_LABEL",
  // The other members of the two choices above, so olddefconfig keeps ours.
  "KERNEL_GZIP",
  "KERNEL_BZIP2",
  "KERNEL_LZMA",
  "KERNEL_XZ",
  "KERNEL_LZO",
  "KERNEL_ZSTD",
  "HZ_250",
  "HZ_300",
  "HZ_1000",
] as const;

/**
 * Options the virtio kernel (issue 15) adds to the tiny recipe, so that Linux's
 * own drivers exercise every virtio device at boot: the block driver with an
 * MBR partition table and an ext2 root, virtio-console (hvc0), virtio-rng,
 * virtio-net configured by `ip=`, over virtio-mmio (devices announced with
 * `virtio_mmio.device=`) and virtio-pci. The options in front of the issue's
 * list are the menus and subsystems those depend on.
 */
export const VIRTIO_ENABLE = [
  "BLOCK",
  "BLK_DEV",
  "PARTITION_ADVANCED",
  "VIRTIO_MENU",
  "NETDEVICES",
  "NET_CORE",
  "HW_RANDOM",
  "VIRTIO_MMIO",
  "VIRTIO_MMIO_CMDLINE_DEVICES",
  "VIRTIO_BLK",
  "VIRTIO_CONSOLE",
  "HW_RANDOM_VIRTIO",
  "VIRTIO_NET",
  "NET",
  "INET",
  "IP_PNP",
  "EXT2_FS",
  "MSDOS_PARTITION",
  "PCI",
  "VIRTIO_PCI",
] as const;

/** Numeric options. */
export const SET_VALUES: Record<string, string> = {
  SERIAL_8250_NR_UARTS: "1",
  SERIAL_8250_RUNTIME_UARTS: "1",
};

/** The one source edit: `alternative_instructions()` always runs an int3 self-test. */
const INT3_SELFTEST_FILE = "arch/x86/kernel/alternative.c";
const INT3_SELFTEST_CALL = "\tint3_selftest();";

/** Debian packages the build needs (besides the source package). */
const BUILD_PACKAGES = ["flex", "bison", "libelf-dev", "bc", "lz4", "make", "gcc", "xz-utils"];
/** The Debian source package. */
const SOURCE_PACKAGE = "linux-source-6.1";

/** The kernel command line the tiny kernel needs on emulated KVM hosts. */
export const TINY_CMDLINE =
  "console=ttyS0 earlyprintk=serial noxsave clearcpuid=popcnt,fsgsbase,pcid,invpcid,smap,smep,pku,rdpid,movbe panic=-1";

/** Paths of a built kernel. */
export interface TinyKernel {
  /** The compressed, bootable image (boot protocol 2.15). */
  bzImage: string;
  /** The uncompressed ELF with the Xen PVH note. */
  vmlinux: string;
  /** Symbol table for the debugger. */
  systemMap: string;
}

/** `${XDG_CACHE_HOME:-~/.cache}/hvsh`. */
export function hvshCacheDir(): string {
  const xdg = Deno.env.get("XDG_CACHE_HOME");
  return join(xdg && xdg.length > 0 ? xdg : join(homedir(), ".cache"), "hvsh");
}

/** Which kernel: the tiny one, or the tiny one plus the virtio drivers (`VIRTIO_ENABLE`). */
export type KernelVariant = "tiny" | "virtio";

/** Where the kernel of a variant is cached. */
export function tinyKernelDir(variant: KernelVariant = "tiny"): string {
  return join(hvshCacheDir(), variant === "tiny" ? "linux-6.1-tiny" : "linux-6.1-tiny-virtio");
}

/** The options a variant enables. */
function enabled(variant: KernelVariant): readonly string[] {
  return variant === "tiny" ? ENABLE : [...ENABLE, ...VIRTIO_ENABLE];
}

/** Hash of the recipe: a change to any option or the patch invalidates the cache. */
function recipeHash(variant: KernelVariant): string {
  // The tiny recipe's hash keeps its original shape so existing caches stay valid.
  const recipe = JSON.stringify({
    ENABLE: enabled(variant),
    DISABLE,
    SET_VALUES,
    INT3_SELFTEST_CALL,
    SOURCE_PACKAGE,
  });
  return createHash("sha256").update(recipe).digest("hex").slice(0, 16);
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * The cached tiny kernel, or undefined when it has not been built (or was
 * built from another recipe). Tests use this to decide whether to run.
 */
export async function findTinyKernel(variant: KernelVariant = "tiny"): Promise<TinyKernel | undefined> {
  const dir = tinyKernelDir(variant);
  const kernel: TinyKernel = {
    bzImage: join(dir, "bzImage"),
    vmlinux: join(dir, "vmlinux"),
    systemMap: join(dir, "System.map"),
  };
  for (const path of Object.values(kernel)) if (!(await exists(path))) return undefined;
  try {
    if ((await readFile(join(dir, "recipe"), "utf8")).trim() !== recipeHash(variant)) return undefined;
  } catch {
    return undefined;
  }
  return kernel;
}

/** The reason a test gives when the kernel is missing. */
export function tinyKernelMissingReason(variant: KernelVariant = "tiny"): string {
  return variant === "tiny"
    ? `tiny Linux kernel not built (run \`deno task linux\`; cache: ${tinyKernelDir()})`
    : `tiny Linux kernel with virtio drivers not built (run \`deno task linux --virtio\`; cache: ${
      tinyKernelDir("virtio")
    })`;
}

const isTty = Deno.stdout.isTerminal();

function step(message: string): void {
  console.log(`build_linux: ${message}`);
}

/** Runs a command with its output on the terminal; throws with the command line on failure. */
async function runShown(cmd: string, args: string[], cwd?: string): Promise<void> {
  const status = await new Deno.Command(cmd, {
    args,
    ...(cwd === undefined ? {} : { cwd }),
    stdin: "null",
    stdout: "inherit",
    stderr: "inherit",
  }).spawn().status;
  if (!status.success) throw new Error(`${cmd} ${args.join(" ")} failed with exit status ${status.code}`);
}

/** Runs a command quietly; on failure prints its output and throws. */
async function runQuiet(cmd: string, args: string[], cwd?: string): Promise<string> {
  const res = await new Deno.Command(cmd, {
    args,
    ...(cwd === undefined ? {} : { cwd }),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  if (!res.success) {
    console.error(dec.decode(res.stdout) + dec.decode(res.stderr));
    throw new Error(`${cmd} ${args.join(" ")} failed with exit status ${res.code}`);
  }
  return dec.decode(res.stdout);
}

/**
 * Runs `make` and shows progress: on a terminal one status line (how many
 * objects so far and the current one), elsewhere every 100th line; the full
 * output goes to `logPath`.
 */
async function runMake(args: string[], cwd: string, logPath: string): Promise<void> {
  const log = await Deno.open(logPath, { write: true, create: true, truncate: true });
  const child = new Deno.Command("nice", {
    args: ["-n", "10", "make", ...args],
    cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const enc = new TextEncoder();
  let lines = 0;
  const started = performance.now();
  const tail: string[] = [];
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    let pending = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      await log.write(enc.encode(chunk));
      pending += chunk;
      const parts = pending.split("\n");
      pending = parts.pop() ?? "";
      for (const line of parts) {
        lines++;
        tail.push(line);
        if (tail.length > 40) tail.shift();
        const secs = ((performance.now() - started) / 1000).toFixed(0);
        if (isTty) {
          const text = `  [${secs}s, ${lines} steps] ${line.trim()}`.slice(0, (Deno.consoleSize?.().columns ?? 80) - 1);
          await Deno.stdout.write(enc.encode(`\r\x1b[K${text}`));
        } else if (lines % 100 === 0 || /error|warning: /i.test(line)) {
          console.log(`  [${secs}s, ${lines} steps] ${line.trim()}`);
        }
      }
    }
  };
  await Promise.all([pump(child.stdout), pump(child.stderr)]);
  const status = await child.status;
  log.close();
  if (isTty) await Deno.stdout.write(enc.encode("\r\x1b[K"));
  if (!status.success) {
    console.error(tail.join("\n"));
    throw new Error(`make ${args.join(" ")} failed with exit status ${status.code} (full log: ${logPath})`);
  }
  step(`make ${args.join(" ")}: ${lines} steps in ${((performance.now() - started) / 1000).toFixed(0)} s`);
}

/** Installs the build packages that dpkg does not list as installed. */
async function installBuildPackages(): Promise<void> {
  const missing: string[] = [];
  for (const pkg of BUILD_PACKAGES) {
    const res = await new Deno.Command("dpkg-query", {
      args: ["-W", "-f=${Status}", pkg],
      stdout: "piped",
      stderr: "null",
    }).output();
    if (!new TextDecoder().decode(res.stdout).includes("install ok installed")) missing.push(pkg);
  }
  if (missing.length === 0) return;
  step(`installing ${missing.join(" ")}`);
  await runShown("apt-get", ["update", "-qq"]);
  await runShown("apt-get", ["install", "-y", "-qq", ...missing]);
}

/** Downloads and unpacks Debian's linux-source-6.1 into `srcRoot` (once). */
async function unpackSource(cacheDir: string, srcRoot: string): Promise<string> {
  const tree = join(srcRoot, "linux-source-6.1");
  if (await exists(join(tree, "Makefile"))) return tree;
  await mkdir(srcRoot, { recursive: true });
  const debDir = join(cacheDir, "deb");
  await rm(debDir, { recursive: true, force: true });
  await mkdir(debDir, { recursive: true });
  step(`downloading ${SOURCE_PACKAGE} (apt-get download)`);
  try {
    await runShown("apt-get", ["download", SOURCE_PACKAGE], debDir);
  } catch {
    // A fresh machine may have no package lists yet.
    await runShown("apt-get", ["update", "-qq"]);
    await runShown("apt-get", ["download", SOURCE_PACKAGE], debDir);
  }
  const deb = (await runQuiet("sh", ["-c", "ls *.deb"], debDir)).trim().split("\n")[0];
  if (!deb) throw new Error(`apt-get download ${SOURCE_PACKAGE} produced no .deb in ${debDir}`);
  step(`unpacking ${deb}`);
  await runQuiet("dpkg-deb", ["-x", deb, "x"], debDir);
  const tarball = join(debDir, "x", "usr", "src", "linux-source-6.1.tar.xz");
  await runShown("tar", ["-xJf", tarball, "-C", srcRoot]);
  await rm(debDir, { recursive: true, force: true });
  if (!(await exists(join(tree, "Makefile")))) throw new Error(`no Makefile in ${tree} after unpacking ${deb}`);
  return tree;
}

/** Comments out the int3 self-test call (idempotent). */
async function patchInt3Selftest(tree: string): Promise<void> {
  const path = join(tree, INT3_SELFTEST_FILE);
  const text = await readFile(path, "utf8");
  if (text.includes(`//${INT3_SELFTEST_CALL.trim()}`)) return;
  const hits = text.split(INT3_SELFTEST_CALL + "\n").length - 1;
  if (hits !== 1) {
    throw new Error(`${INT3_SELFTEST_FILE}: expected one line "${INT3_SELFTEST_CALL.trim()}", found ${hits}`);
  }
  await writeFile(path, text.replace(INT3_SELFTEST_CALL + "\n", `\t//${INT3_SELFTEST_CALL.trim()}\n`));
  step(`patched ${INT3_SELFTEST_FILE}: int3_selftest() commented out`);
}

/** Writes the configuration and checks that every option of the recipe held. */
async function configure(tree: string, logDir: string, variant: KernelVariant): Promise<void> {
  const ENABLE = enabled(variant);
  await runMake(["ARCH=x86_64", "tinyconfig"], tree, join(logDir, "tinyconfig.log"));
  const args = ["--file", ".config"];
  for (const opt of ENABLE) args.push("--enable", opt);
  for (const opt of DISABLE) args.push("--disable", opt);
  for (const [opt, value] of Object.entries(SET_VALUES)) args.push("--set-val", opt, value);
  await runQuiet(join(tree, "scripts", "config"), args, tree);
  await runMake(["ARCH=x86_64", "olddefconfig"], tree, join(logDir, "olddefconfig.log"));
  const config = await readFile(join(tree, ".config"), "utf8");
  const problems: string[] = [];
  for (const opt of ENABLE) if (!config.includes(`\nCONFIG_${opt}=y\n`)) problems.push(`CONFIG_${opt} is not y`);
  for (const opt of DISABLE) if (config.includes(`\nCONFIG_${opt}=y\n`)) problems.push(`CONFIG_${opt} is still y`);
  for (const [opt, v] of Object.entries(SET_VALUES)) {
    if (!config.includes(`\nCONFIG_${opt}=${v}\n`)) problems.push(`CONFIG_${opt} is not ${v}`);
  }
  if (problems.length > 0) throw new Error(`kernel configuration did not take: ${problems.join("; ")}`);
}

/**
 * A second build tree for the virtio variant, so the two configurations do not
 * rebuild each other's objects: a hard-linked copy of the unpacked sources
 * (seconds, no extra space), cleaned with `make mrproper`, which only unlinks,
 * so every object the build writes is a new file and the tiny tree is never
 * modified through a shared link.
 */
async function virtioTree(tinyTree: string): Promise<string> {
  const tree = `${tinyTree}-virtio`;
  if (await exists(join(tree, "Makefile"))) return tree;
  step(`making the virtio build tree ${tree} (hard links to ${tinyTree})`);
  await rm(`${tree}.tmp`, { recursive: true, force: true });
  await runQuiet("cp", ["-al", tinyTree, `${tree}.tmp`]);
  await runQuiet("make", ["mrproper"], `${tree}.tmp`);
  await rename(`${tree}.tmp`, tree);
  return tree;
}

/**
 * Builds (or reuses) the tiny kernel and returns its cached paths.
 *
 * @param options.force rebuild even when the cache is current.
 * @param options.variant `"virtio"` for the kernel with the virtio drivers (its own cache and build tree).
 */
export async function buildTinyKernel(
  options: { force?: boolean; variant?: KernelVariant } = {},
): Promise<TinyKernel> {
  const variant = options.variant ?? "tiny";
  if (!options.force) {
    const cached = await findTinyKernel(variant);
    if (cached) {
      step(`cached: ${tinyKernelDir(variant)}`);
      return cached;
    }
  }
  const started = performance.now();
  const cacheDir = hvshCacheDir();
  const outDir = tinyKernelDir(variant);
  await mkdir(outDir, { recursive: true });
  await installBuildPackages();
  const tinyTree = await unpackSource(cacheDir, join(cacheDir, "linux-6.1-src"));
  await patchInt3Selftest(tinyTree);
  const tree = variant === "tiny" ? tinyTree : await virtioTree(tinyTree);
  await configure(tree, outDir, variant);
  const jobs = String(navigator.hardwareConcurrency || 2);
  step(`building bzImage and vmlinux with ${jobs} jobs (about 5 minutes on 2 cores)`);
  await runMake(["ARCH=x86_64", `-j${jobs}`, "bzImage"], tree, join(outDir, "build.log"));
  const kernel: TinyKernel = {
    bzImage: join(outDir, "bzImage"),
    vmlinux: join(outDir, "vmlinux"),
    systemMap: join(outDir, "System.map"),
  };
  // Copy under temporary names and rename, so a reader never sees a half-written kernel.
  const sources: Array<[string, string]> = [
    [join(tree, "arch", "x86", "boot", "bzImage"), kernel.bzImage],
    [join(tree, "vmlinux"), kernel.vmlinux],
    [join(tree, "System.map"), kernel.systemMap],
    [join(tree, ".config"), join(outDir, "config")],
  ];
  for (const [from, to] of sources) {
    await copyFile(from, `${to}.tmp`);
    await rename(`${to}.tmp`, to);
  }
  await writeFile(join(outDir, "recipe"), recipeHash(variant) + "\n");
  const size = (p: string) => stat(p).then((s) => `${(s.size / 1e6).toFixed(1)} MB`);
  step(
    `done in ${((performance.now() - started) / 1000).toFixed(0)} s: bzImage ${await size(kernel.bzImage)}, ` +
      `vmlinux ${await size(kernel.vmlinux)} in ${outDir}`,
  );
  return kernel;
}

if (import.meta.main) {
  const force = Deno.args.includes("--force");
  const variant: KernelVariant = Deno.args.includes("--virtio") ? "virtio" : "tiny";
  const unknown = Deno.args.filter((a) => a !== "--force" && a !== "--virtio");
  if (unknown.length > 0) {
    console.error(`build_linux: unknown argument ${unknown[0]} (usage: build_linux.ts [--force] [--virtio])`);
    Deno.exit(2);
  }
  try {
    const kernel = await buildTinyKernel({ force, variant });
    console.log(`bzImage\t${kernel.bzImage}\nvmlinux\t${kernel.vmlinux}\nSystem.map\t${kernel.systemMap}`);
  } catch (err) {
    console.error(`build_linux: ${err instanceof Error ? err.message : err}`);
    Deno.exit(1);
  }
}
