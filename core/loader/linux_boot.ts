/**
 * What `vm.loadLinux()` and `hvsh boot --kernel` take: a kernel, an initrd
 * and a command line, as QEMU's `-kernel -initrd -append` do, resolved into
 * {@linkcode LoadOptions} for the bzImage or PVH loader.
 *
 * @module
 */

import { hasElfMagic } from "./elf.ts";
import { detectFormat } from "./detect_format.ts";
import { initramfs } from "./initramfs.ts";
import type { LoadOptions } from "./types.ts";

/**
 * A Linux kernel to boot.
 *
 * @example
 * ```ts
 * import type { LinuxBootSpec } from "./linux_boot.ts";
 * const spec: LinuxBootSpec = { kernel: "bzImage", initrd: "rootfs/", cmdline: "console=ttyS0" };
 * ```
 */
export interface LinuxBootSpec {
  /** A bzImage or an ELF vmlinux with a PVH note: its path or its bytes. */
  kernel: string | Uint8Array;
  /** The initrd: a file (used as it is), a folder (packed with {@linkcode initramfs}) or the bytes. */
  initrd?: string | Uint8Array | undefined;
  /** The kernel command line. */
  cmdline?: string | undefined;
  /** Which entry: detected by default (a vmlinux with a PVH note boots by PVH, a bzImage by the boot protocol). */
  protocol?: "auto" | "bzimage" | "pvh" | undefined;
}

/** Reads a file for the boot, naming what it was for when it cannot. */
async function readFor(what: string, path: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch (error) {
    throw new Error(`Cannot read ${what} ${path}: ${(error as Error).message}`, { cause: error });
  }
}

/**
 * The initrd's bytes: a folder is packed as a cpio newc archive (with
 * `/dev/console`), a file is used as it is.
 */
export async function readInitrd(initrd: string | Uint8Array): Promise<Uint8Array> {
  if (typeof initrd !== "string") return initrd;
  let isDirectory: boolean;
  try {
    isDirectory = (await Deno.stat(initrd)).isDirectory;
  } catch (error) {
    throw new Error(`Cannot read initrd ${initrd}: ${(error as Error).message}`, { cause: error });
  }
  return isDirectory ? await initramfs(initrd) : await readFor("initrd", initrd);
}

/**
 * Resolves a {@link LinuxBootSpec}: reads the kernel and initrd and picks the
 * format. A kernel that is neither a bzImage nor a PVH ELF is given to the
 * loader the user most likely meant (an ELF to PVH, anything else to the
 * bzImage loader), whose error says what was found.
 */
export async function linuxLoadOptions(
  spec: LinuxBootSpec,
): Promise<{ kernel: Uint8Array; options: LoadOptions }> {
  const path = typeof spec.kernel === "string" ? spec.kernel : undefined;
  const kernel = typeof spec.kernel === "string" ? await readFor("kernel image", spec.kernel) : spec.kernel;
  const requested = spec.protocol ?? "auto";
  if (!["auto", "bzimage", "pvh"].includes(requested)) {
    throw new TypeError(`Invalid Linux boot protocol ${JSON.stringify(requested)}: expected auto, bzimage or pvh`);
  }
  let format: "bzimage" | "pvh";
  if (requested !== "auto") {
    format = requested;
  } else {
    const detected = detectFormat(kernel, path);
    format = detected === "bzimage" || detected === "pvh" ? detected : hasElfMagic(kernel) ? "pvh" : "bzimage";
  }
  const options: LoadOptions = { format, cmdline: spec.cmdline ?? "" };
  if (path !== undefined) options.path = path;
  if (spec.initrd !== undefined) {
    options.modules = [{
      data: await readInitrd(spec.initrd),
      cmdline: typeof spec.initrd === "string" ? spec.initrd : "initrd",
    }];
  }
  return { kernel, options };
}
