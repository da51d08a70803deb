/**
 * Linux's own virtio drivers against hvsh's devices (issue 15), through
 * `./hvsh boot` with `--disk`, `--console hvc`, `--rng`, `--net tap=tap0` and
 * `--virtio mmio|pci`, booting the tiny kernel with virtio drivers
 * (`deno task linux --virtio`; ignored, with the reason, when it has not been
 * built or KVM is missing). No user space is needed: the kernel proves each
 * device by itself at boot.
 *
 * - block: an ext2 filesystem made from a folder (`mkfs.ext2 -d`, no root
 *   needed) inside an MBR partition written here; the kernel reads the
 *   partition table, mounts the filesystem as root (rw: it writes the
 *   superblock) and runs /init from it, which faults at a marker address;
 * - console: `console=hvc0` and no ttyS0 console, so every line after the
 *   boot console is disabled reaches the terminal through virtio-console;
 * - entropy: `random: crng init done` with the CPU and bootloader seeds
 *   distrusted;
 * - network: `ip=` configures eth0; from a network namespace the test makes
 *   (`unshare -n`, a TAP attached to nothing else), a TCP connect to the guest
 *   is refused: its ARP reply and its RST are frames the test sees on the TAP.
 *   The kernel's stack still answers after init's death (panic() enables
 *   interrupts while it waits), so the panic is left waiting (no `panic=-1`)
 *   and the test stops hvsh with SIGTERM.
 *
 * A boot takes tens of seconds here, so there is one per transport.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { guest, kvmAvailable, kvmMissingReason } from "./_helpers.ts";
import { findTinyKernel, TINY_CMDLINE, tinyKernelMissingReason } from "../scripts/build_linux.ts";

const HVSH = new URL("../hvsh", import.meta.url).pathname;
const NAMESPACE_SCRIPT = fileURLToPath(new URL("./_linux_virtio_in_namespace.ts", import.meta.url));
const kernel = await findTinyKernel("virtio");

function mkfsMissing(): string | undefined {
  try {
    const out = new Deno.Command("mkfs.ext2", { args: ["-V"], stdout: "null", stderr: "null" }).outputSync();
    return out.success ? undefined : "mkfs.ext2 -V failed (apt-get install e2fsprogs)";
  } catch {
    return "mkfs.ext2 not found (apt-get install e2fsprogs)";
  }
}

function namespaceMissing(): string | undefined {
  try {
    const probe = new Deno.Command("unshare", { args: ["-n", "ip", "tuntap", "show"], stdout: "null", stderr: "piped" })
      .outputSync();
    if (!probe.success) return `unshare -n failed: ${new TextDecoder().decode(probe.stderr).trim()}`;
    Deno.statSync("/dev/net/tun");
    return undefined;
  } catch (error) {
    return `cannot make a network namespace with a TAP device: ${(error as Error).message}`;
  }
}

const missing = !kvmAvailable
  ? kvmMissingReason
  : kernel === undefined
  ? tinyKernelMissingReason("virtio")
  : mkfsMissing();
if (missing !== undefined) console.log(`Linux virtio tests ignored: ${missing}`);
const noNamespace = missing === undefined ? namespaceMissing() : undefined;
if (noNamespace !== undefined) console.log(`Linux virtio tests: network part left out: ${noNamespace}`);

/** A boot on this shared, emulated host: tens of seconds alone, minutes under load. */
const BOOT_LIMIT_S = 480;
/** The marker address of tests/guests/linux_init.c ("HVSH"). */
const INIT_MARKER = /init\[1\]: segfault at 48565348 /;
const SECTOR = 512;
/** 8 MiB disk, as under QEMU: 16384 sectors, one partition from sector 2048 to the end. */
const DISK_SECTORS = 16384;
const PART_START = 2048;

/**
 * A disk image with an MBR partition table and one Linux partition holding
 * an ext2 filesystem made from `folder`, all without root.
 */
async function makeDisk(dir: string, folder: string): Promise<string> {
  const partSectors = DISK_SECTORS - PART_START;
  const part = join(dir, "part.ext2");
  const mkfs = await new Deno.Command("mkfs.ext2", {
    args: ["-q", "-F", "-b", "1024", "-L", "hvsh-root", "-d", folder, part, String(partSectors / 2)],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(mkfs.success, `mkfs.ext2: ${new TextDecoder().decode(mkfs.stderr)}`);
  const fs = await Deno.readFile(part);
  assert.equal(fs.length, partSectors * SECTOR);
  const disk = new Uint8Array(DISK_SECTORS * SECTOR);
  const mbr = new DataView(disk.buffer, 0, SECTOR);
  // Partition entry 1 at 446: not bootable, CHS fields unused by Linux (0xfe/0xff/0xff: "use LBA"), type 0x83 (Linux).
  disk.set([0x00, 0xfe, 0xff, 0xff, 0x83, 0xfe, 0xff, 0xff], 446);
  mbr.setUint32(446 + 8, PART_START, true);
  mbr.setUint32(446 + 12, partSectors, true);
  mbr.setUint16(510, 0xaa55, true);
  disk.set(fs, PART_START * SECTOR);
  const path = join(dir, "disk.img");
  await Deno.writeFile(path, disk);
  return path;
}

/** What a boot printed and what the namespace script saw. */
interface BootResult {
  code: number;
  stdout: string;
  stderr: string;
  times: Record<string, number>;
  connect?: { result: string; tries: number; at?: number };
  neigh?: string;
  rxPackets?: number;
  txPackets?: number;
  /** The ext2 superblock's mount count (s_mnt_count) in the image after the boot: mkfs leaves 0. */
  mountCount?: number;
}

/** s_mnt_count of the ext2 filesystem in the disk's partition: the superblock is 1024 bytes in, the count at 52. */
async function mountCount(disk: string): Promise<number> {
  const file = await Deno.open(disk);
  try {
    const superblock = new Uint8Array(1024);
    await file.seek(PART_START * SECTOR + 1024, Deno.SeekMode.Start);
    let read = 0;
    while (read < superblock.length) {
      const n = await file.read(superblock.subarray(read));
      if (n === null) throw new Error(`${disk}: short read of the ext2 superblock`);
      read += n;
    }
    const view = new DataView(superblock.buffer);
    assert.equal(view.getUint16(56, true), 0xef53, "ext2 magic in the partition's superblock");
    return view.getUint16(52, true);
  } finally {
    file.close();
  }
}

/** Lines the kernel prints when each device works. */
const EXPECTED = [
  /\[vda\] 16384 512-byte logical blocks/,
  / vda: vda1/,
  /VFS: Mounted root \(ext2 filesystem\)/,
  /random: crng init done/,
  INIT_MARKER,
];

async function bootVirtio(transport: "mmio" | "pci"): Promise<BootResult> {
  const dir = await Deno.makeTempDir({ prefix: "hvsh-linux-virtio-" });
  try {
    const root = join(dir, "root");
    await Deno.mkdir(join(root, "dev"), { recursive: true });
    await Deno.copyFile(await guest("linux_init.elf"), join(root, "init"));
    await Deno.chmod(join(root, "init"), 0o755);
    const disk = await makeDisk(dir, root);
    assert.equal(await mountCount(disk), 0);
    const withNet = noNamespace === undefined;
    // console=hvc0 alone: COM1 keeps only the early console. No panic=-1 with a network: the kernel answers while it
    // waits in panic(), and the namespace script stops hvsh; without one, init's death resets the guest and ends it.
    const base = TINY_CMDLINE.split(" ").filter((word) => word !== "console=ttyS0" && word !== "panic=-1");
    const cmdline = [
      "console=hvc0",
      ...base,
      "acpi=off",
      "root=/dev/vda1 rootfstype=ext2 rw init=/init",
      "random.trust_cpu=off random.trust_bootloader=off",
      ...(withNet ? ["ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off"] : ["panic=-1"]),
    ].join(" ");
    const args = [
      "boot",
      "--kernel",
      kernel!.bzImage,
      "--append",
      cmdline,
      "--mem",
      "256M",
      "--disk",
      disk,
      "--console",
      "hvc",
      "--rng",
      "--virtio",
      transport,
      "--timeout",
      String(BOOT_LIMIT_S),
    ];
    const started = performance.now();
    if (withNet) {
      const out = await new Deno.Command("unshare", {
        args: [
          "-n",
          Deno.execPath(),
          "run",
          "-A",
          NAMESPACE_SCRIPT,
          JSON.stringify({ hvsh: HVSH, args }),
          JSON.stringify(EXPECTED.map((p) => p.source)),
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
      const stdout = new TextDecoder().decode(out.stdout).trim();
      assert.ok(out.success, `namespace script failed: ${stdout} ${new TextDecoder().decode(out.stderr)}`);
      const result = JSON.parse(stdout.split("\n").at(-1)!) as BootResult;
      result.mountCount = await mountCount(disk);
      console.log(`${transport}: boot and checks in ${((performance.now() - started) / 1000).toFixed(1)} s`);
      return result;
    }
    const out = await new Deno.Command(HVSH, { args, stdin: "null", stdout: "piped", stderr: "piped" }).output();
    return {
      code: out.code,
      stdout: new TextDecoder().decode(out.stdout),
      stderr: new TextDecoder().decode(out.stderr),
      times: {},
      mountCount: await mountCount(disk),
    };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function check(result: BootResult, transport: "mmio" | "pci"): void {
  const { stdout, stderr } = result;
  const context = `status ${result.code}\nstderr:\n${stderr.slice(-2000)}\nstdout:\n${stdout.slice(-6000)}`;
  for (const line of EXPECTED) assert.match(stdout, line, context);
  const commandLine = /Command line: (.*)/.exec(stdout)?.[1] ?? "";
  if (transport === "mmio") {
    // hvsh announced the four devices on the command line itself (the test's --append has none).
    assert.equal(commandLine.match(/virtio_mmio\.device=512@0x[0-9a-f]+:\d+/g)?.length, 4, context);
  } else {
    // Found by scanning the PCI bus: nothing on the command line. (With no PCI entries in the MP table the kernel
    // warns "can't find IRQ for PCI INT A" and takes the Interrupt Line register, as for QEMU's -M pc.)
    assert.doesNotMatch(commandLine, /virtio_mmio/, context);
    assert.match(stdout, /virtio-pci 0000:00:0\d\.0/, context);
  }
  // The rw mount wrote the superblock back through virtio-blk (ext2 counts mounts).
  assert.equal(result.mountCount, 1, "s_mnt_count after the rw mount");
  // The log after the early console went away came through virtio-console: ttyS0 is not a console.
  const hvc = stdout.search(/console \[hvc0\] enabled/);
  const bootconsoleOff = stdout.search(/bootconsole \[earlyser0\] disabled/);
  assert.ok(hvc >= 0 && bootconsoleOff >= 0, context);
  assert.ok(stdout.search(/VFS: Mounted root/) > bootconsoleOff, context);
  assert.ok(stdout.search(INIT_MARKER) > bootconsoleOff, context);
  if (noNamespace === undefined) {
    assert.match(stdout, /IP-Config: Complete/, context);
    assert.match(
      stdout,
      /device=eth0, hwaddr=52:54:00:[0-9a-f:]+, ipaddr=10\.0\.2\.15, mask=255\.255\.255\.0/,
      context,
    );
    assert.equal(result.connect?.result, "refused", `the guest's stack answered a TCP connect: ${context}`);
    assert.match(result.neigh ?? "", /lladdr 52:54:00:/, "the guest answered ARP");
    assert.ok((result.rxPackets ?? 0) >= 2, `frames from the guest on tap0: ${result.rxPackets}`);
  }
}

for (const transport of ["mmio", "pci"] as const) {
  Deno.test({
    name: `Linux's virtio drivers over virtio-${transport} (hvsh boot --disk --console hvc --rng --net): ` +
      "ext2 root from an MBR partition, /init run, log on hvc0, crng seeded, eth0 answering on the TAP",
    ignore: missing !== undefined,
    sanitizeResources: false,
    sanitizeOps: false,
    async fn() {
      const result = await bootVirtio(transport);
      const lines = result.stdout.split(/\r?\n/).filter((line) =>
        /virtio|vda|VFS|crng|IP-Config|eth0|segfault|hvc0/.test(line)
      );
      const net = { connect: result.connect, neigh: result.neigh, rx: result.rxPackets, tx: result.txPackets };
      console.log(`${transport}: ${JSON.stringify(result.times)} ${JSON.stringify(net)}\n${lines.join("\n")}`);
      check(result, transport);
    },
  });
}
