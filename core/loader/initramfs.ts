/**
 * An initramfs builder: cpio "newc" archives (the format Linux unpacks into
 * its root file system, Documentation/driver-api/early-userspace/
 * buffer-format.rst) from a host folder or from a map of guest paths to
 * contents, host files, symlinks, directories and device nodes; gzipped
 * when asked (the kernel needs CONFIG_RD_GZIP for that).
 *
 * Every entry is owned by root, with mtime 0, so the same input gives the
 * same bytes.
 *
 * @module
 */

// node:zlib and node:path are imported where used: the first node: module a process imports costs it ~6 ms and
// 6 MiB (Deno's Node compatibility layer loads), zlib ~15 ms and 5 MiB more, and `hvsh boot` of a kernel with no
// folder initrd needs neither.

/** A file given by its contents. */
export interface InitramfsData {
  data: string | Uint8Array;
  /** Permission bits; default 0o644. */
  mode?: number;
}

/** A file copied from the host. */
export interface InitramfsHostFile {
  /** Host path. */
  file: string;
  /** Permission bits; default the host file's. */
  mode?: number;
}

/** A symbolic link. */
export interface InitramfsSymlink {
  /** Where the link points (as written, relative or absolute). */
  symlink: string;
}

/** A directory (parents of other entries are created on their own, 0o755). */
export interface InitramfsDirectory {
  directory: true;
  /** Permission bits; default 0o755. */
  mode?: number;
}

/** A device node. */
export interface InitramfsDevice {
  device: "char" | "block";
  major: number;
  minor: number;
  /** Permission bits; default 0o600. */
  mode?: number;
}

/** What a guest path maps to: text or bytes (a file, 0o644), or one of the entry objects. */
export type InitramfsEntry =
  | string
  | Uint8Array
  | InitramfsData
  | InitramfsHostFile
  | InitramfsSymlink
  | InitramfsDirectory
  | InitramfsDevice;

/** Options of {@link initramfs}. */
export interface InitramfsOptions {
  /** Compress the archive with gzip (default false: the kernel reads a plain cpio fastest). */
  gzip?: boolean;
  /**
   * Add `/dev/console` (character device 5:1) unless the archive has one
   * (default true): without it the kernel cannot open a console for /init.
   */
  console?: boolean;
}

const S_IFMT = {
  directory: 0o040000,
  file: 0o100000,
  symlink: 0o120000,
  char: 0o020000,
  block: 0o060000,
} as const;

/** One archive member, resolved. */
interface Member {
  path: string;
  mode: number;
  data: Uint8Array;
  rdevMajor: number;
  rdevMinor: number;
}

/** Normalises a guest path to cpio's form: no leading slash, no `.`/`..`, no empty parts. */
function archivePath(path: string): string {
  const parts = path.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.length === 0) throw new TypeError(`initramfs: path ${JSON.stringify(path)} names the root`);
  if (parts.includes("..")) throw new TypeError(`initramfs: path ${JSON.stringify(path)} contains ".."`);
  return parts.join("/");
}

function permissions(mode: number | undefined, fallback: number, path: string): number {
  const value = mode ?? fallback;
  if (!Number.isInteger(value) || value < 0 || value > 0o7777) {
    throw new TypeError(`initramfs: mode of ${path} is ${String(mode)}; expected permission bits 0-0o7777`);
  }
  return value;
}

async function memberOf(path: string, entry: InitramfsEntry): Promise<Member> {
  const base = { path, rdevMajor: 0, rdevMinor: 0 };
  if (typeof entry === "string") {
    return { ...base, mode: S_IFMT.file | 0o644, data: new TextEncoder().encode(entry) };
  }
  if (entry instanceof Uint8Array) return { ...base, mode: S_IFMT.file | 0o644, data: entry };
  if ("data" in entry) {
    const data = typeof entry.data === "string" ? new TextEncoder().encode(entry.data) : entry.data;
    return { ...base, mode: S_IFMT.file | permissions(entry.mode, 0o644, path), data };
  }
  if ("file" in entry) {
    let data: Uint8Array;
    let hostMode: number;
    try {
      data = await Deno.readFile(entry.file);
      hostMode = (await Deno.stat(entry.file)).mode ?? 0o644;
    } catch (error) {
      throw new Error(`initramfs: cannot read ${entry.file} for /${path}: ${(error as Error).message}`, {
        cause: error,
      });
    }
    return { ...base, mode: S_IFMT.file | permissions(entry.mode, hostMode & 0o7777, path), data };
  }
  if ("symlink" in entry) {
    return { ...base, mode: S_IFMT.symlink | 0o777, data: new TextEncoder().encode(entry.symlink) };
  }
  if ("directory" in entry) {
    return { ...base, mode: S_IFMT.directory | permissions(entry.mode, 0o755, path), data: new Uint8Array() };
  }
  if ("device" in entry) {
    if (entry.device !== "char" && entry.device !== "block") {
      throw new TypeError(
        `initramfs: device of /${path} is ${JSON.stringify(entry.device)}; expected "char" or "block"`,
      );
    }
    for (const [name, value] of [["major", entry.major], ["minor", entry.minor]] as const) {
      if (!Number.isInteger(value) || value < 0 || value > 0xfff_ffff) {
        throw new TypeError(`initramfs: ${name} of /${path} is ${String(value)}; expected a device number`);
      }
    }
    return {
      path,
      mode: S_IFMT[entry.device] | permissions(entry.mode, 0o600, path),
      data: new Uint8Array(),
      rdevMajor: entry.major,
      rdevMinor: entry.minor,
    };
  }
  throw new TypeError(`initramfs: entry for /${path} is not a file, host file, symlink, directory or device`);
}

/** The members of a host folder, recursively (files, directories, symlinks; other kinds refused). */
async function membersOfFolder(root: string): Promise<Map<string, InitramfsEntry>> {
  const { join } = await import("node:path");
  const entries = new Map<string, InitramfsEntry>();
  const walk = async (dir: string, prefix: string) => {
    const names: Deno.DirEntry[] = [];
    for await (const entry of Deno.readDir(dir)) names.push(entry);
    names.sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
    for (const entry of names) {
      const host = join(dir, entry.name);
      const guest = prefix === "" ? entry.name : `${prefix}/${entry.name}`;
      const info = await Deno.lstat(host);
      if (info.isSymlink) {
        entries.set(guest, { symlink: await Deno.readLink(host) });
      } else if (info.isDirectory) {
        entries.set(guest, { directory: true, mode: (info.mode ?? 0o755) & 0o7777 });
        await walk(host, guest);
      } else if (info.isFile) {
        entries.set(guest, { file: host, mode: (info.mode ?? 0o644) & 0o7777 });
      } else {
        throw new TypeError(
          `initramfs: ${host} is neither a file, a directory nor a symlink (give device nodes in a map)`,
        );
      }
    }
  };
  try {
    await walk(root, "");
  } catch (error) {
    if (error instanceof TypeError) throw error;
    throw new Error(`initramfs: cannot read folder ${root}: ${(error as Error).message}`, { cause: error });
  }
  return entries;
}

/** Encodes members as a cpio newc archive with its trailer. */
function cpioNewc(members: readonly Member[]): Uint8Array {
  const encoder = new TextEncoder();
  const chunks: Uint8Array[] = [];
  let length = 0;
  const push = (bytes: Uint8Array) => {
    chunks.push(bytes);
    length += bytes.length;
    const pad = (4 - (length % 4)) % 4;
    if (pad > 0) {
      chunks.push(new Uint8Array(pad));
      length += pad;
    }
  };
  const hex8 = (n: number) => (n >>> 0).toString(16).padStart(8, "0");
  const all = [...members, { path: "TRAILER!!!", mode: 0, data: new Uint8Array(), rdevMajor: 0, rdevMinor: 0 }];
  all.forEach((m, i) => {
    const name = encoder.encode(m.path + "\0");
    const isTrailer = i === members.length;
    const fields = [
      isTrailer ? 0 : i + 1, // ino
      m.mode,
      0, // uid
      0, // gid
      (m.mode & 0o170000) === S_IFMT.directory ? 2 : 1, // nlink
      0, // mtime
      m.data.length,
      0, // devmajor
      0, // devminor
      m.rdevMajor,
      m.rdevMinor,
      name.length,
      0, // check
    ];
    const header = encoder.encode("070701" + fields.map(hex8).join(""));
    const headerAndName = new Uint8Array(header.length + name.length);
    headerAndName.set(header);
    headerAndName.set(name, header.length);
    push(headerAndName);
    if (m.data.length > 0) push(m.data);
  });
  const out = new Uint8Array(length);
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}

/**
 * Builds an initramfs: a cpio newc archive of a host folder (a path) or of
 * a map from guest paths to entries. Parent directories are added as
 * needed; `/dev/console` is added unless `console: false`.
 *
 * @example From a map
 * ```ts
 * import { initramfs } from "./initramfs.ts";
 * const initrd = await initramfs({
 *   "/init": { mode: 0o755, data: "#!/bin/sh\necho hi\n" },
 *   "/etc/motd": "hi\n",
 *   "/bin/sh": { symlink: "busybox" },
 * }, { gzip: true });
 * console.log(initrd[0] === 0x1f && initrd[1] === 0x8b); // true: gzip
 * ```
 *
 * @example From a folder
 * ```ts ignore
 * const initrd = await initramfs("rootfs/");
 * ```
 */
export async function initramfs(
  source: string | Record<string, InitramfsEntry> | Map<string, InitramfsEntry>,
  options: InitramfsOptions = {},
): Promise<Uint8Array> {
  const given = typeof source === "string"
    ? await membersOfFolder(source)
    : source instanceof Map
    ? source
    : new Map(Object.entries(source));
  const members = new Map<string, Member>();
  for (const [path, entry] of given) {
    const normal = archivePath(path);
    if (members.has(normal)) throw new TypeError(`initramfs: /${normal} is given twice`);
    members.set(normal, await memberOf(normal, entry));
  }
  if (options.console !== false && !members.has("dev/console")) {
    members.set("dev/console", await memberOf("dev/console", { device: "char", major: 5, minor: 1, mode: 0o600 }));
  }
  // Parents first: the kernel creates each entry in a directory that must already exist.
  for (const path of [...members.keys()]) {
    const parts = path.split("/");
    for (let i = 1; i < parts.length; i++) {
      const parent = parts.slice(0, i).join("/");
      const existing = members.get(parent);
      if (existing === undefined) {
        members.set(parent, await memberOf(parent, { directory: true }));
      } else if ((existing.mode & 0o170000) !== S_IFMT.directory) {
        throw new TypeError(`initramfs: /${parent} is not a directory but /${path} is inside it`);
      }
    }
  }
  const ordered = [...members.values()].sort((a, b) => a.path < b.path ? -1 : a.path > b.path ? 1 : 0);
  const archive = cpioNewc(ordered);
  if (!options.gzip) return archive;
  const { gzipSync } = await import("node:zlib");
  return new Uint8Array(gzipSync(archive));
}
