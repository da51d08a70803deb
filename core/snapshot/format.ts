/**
 * The hvsh snapshot file: one file, versioned, with a header, a table of
 * sections and a CRC-32 per section; guest memory is stored sparsely at its
 * natural offsets (all-zero pages are file holes, listed as absent in a page
 * map), so the memory area can be mapped MAP_PRIVATE for copy-on-write
 * clones. docs/snapshot-format.md describes the layout byte by byte.
 *
 * This module knows the container only; what the sections hold is decided
 * by core/snapshot/snapshot.ts.
 *
 * @module
 */

import zlib from "node:zlib";
import { Buffer } from "node:buffer";
import { fileDataRanges } from "../kvm/kvm.ts";

/** The file's first 8 bytes. */
export const SNAPSHOT_MAGIC = "HVSNAP\0\n";
/** The format version this code writes; it reads this major version only. */
export const SNAPSHOT_VERSION = { major: 1, minor: 0 } as const;
/** Header size in bytes. */
export const HEADER_SIZE = 64;
/** Section table entry size in bytes. */
export const SECTION_ENTRY_SIZE = 48;
/** Longest section name (ASCII, NUL-padded in its 24-byte field). */
const NAME_SIZE = 24;
/** Guest page size; the memory area starts on a page boundary. */
export const PAGE_SIZE = 4096;
/** The section holding guest memory at its natural offsets. */
export const MEMORY_SECTION = "memory";
/** The section holding the page map (one bit per guest page: stored or zero). */
export const PAGEMAP_SECTION = "pagemap";

/** Section encodings. */
export const ENCODING = { json: 1, binary: 2, pages: 3 } as const;
type EncodingName = keyof typeof ENCODING;

/** A corrupt, truncated or foreign snapshot; `section` names the part that is wrong. */
export class SnapshotError extends Error {
  /** `"header"`, `"section table"` or a section's name. */
  readonly section: string;
  constructor(path: string, section: string, problem: string) {
    super(
      `Cannot load snapshot ${path}: ${
        section === "header" || section === "section table" ? "the " : "section "
      }${section} ${problem}`,
    );
    this.name = "SnapshotError";
    this.section = section;
  }
}

const ZERO_PAGE = new Uint8Array(PAGE_SIZE);

/**
 * True when a 4 KiB page holds only zero bytes: node:buffer's native compare,
 * twice as fast as core/memory.ts's JavaScript one, for the snapshot and
 * migration code that scans every page (which loads node:zlib, and with it
 * Deno's Node layer, anyway; core/vm.ts loads it only when used).
 */
export function isZeroPage(page: Uint8Array): boolean {
  return Buffer.compare(page, ZERO_PAGE) === 0;
}

/** CRC-32 (ISO-HDLC, as zlib and gzip use it) of `bytes`, continuing `previous`. */
export function crc32(bytes: Uint8Array, previous = 0): number {
  return (zlib as unknown as { crc32(data: Uint8Array, value?: number): number }).crc32(bytes, previous) >>> 0;
}

/** One entry of the section table. */
export interface SectionEntry {
  name: string;
  offset: number;
  length: number;
  crc: number;
  encoding: EncodingName;
}

/** Guest memory to write: each region's bytes and the pages (indices into the region) to store. */
export interface MemoryImage {
  regions: readonly { bytes: Uint8Array; pages: readonly number[] }[];
}

function align(value: number, to: number): number {
  return Math.ceil(value / to) * to;
}

function writeAll(file: Deno.FsFile, bytes: Uint8Array): void {
  let written = 0;
  while (written < bytes.length) written += file.writeSync(bytes.subarray(written));
}

/** Runs of consecutive page indices, as `[first, count]`. */
export function pageRuns(pages: readonly number[]): [number, number][] {
  const runs: [number, number][] = [];
  for (const page of pages) {
    const last = runs[runs.length - 1];
    if (last !== undefined && last[0] + last[1] === page) last[1]++;
    else runs.push([page, 1]);
  }
  return runs;
}

/**
 * Writes a snapshot file: the JSON sections in order, the page map, then
 * the memory area (page-aligned; absent pages left as holes). The file is
 * written beside `path` and renamed over it at the end, so a failure never
 * leaves a half-written snapshot under the name. Returns the file's size.
 */
export function writeSnapshotFile(path: string, json: readonly [string, unknown][], memory: MemoryImage): number {
  const encoder = new TextEncoder();
  const sections: { name: string; encoding: EncodingName; bytes: Uint8Array }[] = json.map(([name, value]) => ({
    name,
    encoding: "json",
    bytes: encoder.encode(JSON.stringify(value)),
  }));
  const totalPages = memory.regions.reduce((n, r) => n + r.bytes.length / PAGE_SIZE, 0);
  const pagemap = new Uint8Array(Math.ceil(totalPages / 8));
  let firstPage = 0;
  let memoryCrc = 0;
  for (const region of memory.regions) {
    for (const [first, count] of pageRuns(region.pages)) {
      memoryCrc = crc32(region.bytes.subarray(first * PAGE_SIZE, (first + count) * PAGE_SIZE), memoryCrc);
      for (let page = first; page < first + count; page++) {
        const bit = firstPage + page;
        pagemap[bit >> 3]! |= 1 << (bit & 7);
      }
    }
    firstPage += region.bytes.length / PAGE_SIZE;
  }
  sections.push({ name: PAGEMAP_SECTION, encoding: "binary", bytes: pagemap });
  for (const { name } of sections) {
    if (encoder.encode(name).length >= NAME_SIZE || !/^[\x21-\x7e]+$/.test(name)) {
      throw new RangeError(`Invalid snapshot section name ${JSON.stringify(name)}: 1-23 printable ASCII characters`);
    }
  }

  const count = sections.length + 1;
  const tableOffset = HEADER_SIZE;
  let offset = tableOffset + count * SECTION_ENTRY_SIZE;
  const entries: SectionEntry[] = sections.map((section) => {
    const entry = {
      name: section.name,
      offset,
      length: section.bytes.length,
      crc: crc32(section.bytes),
      encoding: section.encoding,
    };
    offset += section.bytes.length;
    return entry;
  });
  const memoryOffset = align(offset, PAGE_SIZE);
  const memoryLength = totalPages * PAGE_SIZE;
  entries.push({ name: MEMORY_SECTION, offset: memoryOffset, length: memoryLength, crc: memoryCrc, encoding: "pages" });
  const fileSize = memoryOffset + memoryLength;

  const table = new Uint8Array(count * SECTION_ENTRY_SIZE);
  const tableView = new DataView(table.buffer);
  entries.forEach((entry, i) => {
    const at = i * SECTION_ENTRY_SIZE;
    table.set(encoder.encode(entry.name), at);
    tableView.setBigUint64(at + 24, BigInt(entry.offset), true);
    tableView.setBigUint64(at + 32, BigInt(entry.length), true);
    tableView.setUint32(at + 40, entry.crc, true);
    tableView.setUint32(at + 44, ENCODING[entry.encoding], true);
  });
  const header = new Uint8Array(HEADER_SIZE);
  const view = new DataView(header.buffer);
  header.set(encoder.encode(SNAPSHOT_MAGIC));
  view.setUint16(8, SNAPSHOT_VERSION.major, true);
  view.setUint16(10, SNAPSHOT_VERSION.minor, true);
  view.setUint32(12, HEADER_SIZE, true);
  view.setUint32(16, count, true);
  view.setUint32(20, SECTION_ENTRY_SIZE, true);
  view.setBigUint64(24, BigInt(tableOffset), true);
  view.setBigUint64(32, BigInt(fileSize), true);
  view.setUint32(40, crc32(table), true);
  view.setUint32(44, crc32(header), true);

  const temporary = `${path}.partial-${Deno.pid}`;
  const file = Deno.openSync(temporary, { write: true, create: true, truncate: true });
  try {
    writeAll(file, header);
    writeAll(file, table);
    for (const section of sections) writeAll(file, section.bytes);
    let regionOffset = memoryOffset;
    for (const region of memory.regions) {
      for (const [first, pages] of pageRuns(region.pages)) {
        file.seekSync(regionOffset + first * PAGE_SIZE, Deno.SeekMode.Start);
        writeAll(file, region.bytes.subarray(first * PAGE_SIZE, (first + pages) * PAGE_SIZE));
      }
      regionOffset += region.bytes.length;
    }
    file.truncateSync(fileSize); // the trailing zero pages become a hole
    file.close();
    Deno.renameSync(temporary, path);
  } catch (error) {
    try {
      file.close();
    } catch {
      // already closed
    }
    try {
      Deno.removeSync(temporary);
    } catch {
      // nothing to remove
    }
    throw error;
  }
  return fileSize;
}

/** A snapshot file opened and checked: header, table, every section's checksum. */
export class SnapshotFile {
  /** The path it was read from. */
  readonly path: string;
  /** The format version of the file. */
  readonly version: { major: number; minor: number };
  /** The section table, in file order. */
  readonly sections: readonly SectionEntry[];
  /** The page map: bit i set when guest page i (over all regions in order) is stored. */
  readonly pagemap: Uint8Array;
  readonly #json = new Map<string, unknown>();

  private constructor(
    path: string,
    version: { major: number; minor: number },
    sections: SectionEntry[],
    pagemap: Uint8Array,
  ) {
    this.path = path;
    this.version = version;
    this.sections = sections;
    this.pagemap = pagemap;
  }

  /**
   * Opens and verifies a snapshot: magic, version, header and table
   * checksums, that every section lies inside the file, and each section's
   * CRC-32 (the memory section's over its stored pages). Throws a
   * {@link SnapshotError} naming the section at fault.
   */
  static open(path: string): SnapshotFile {
    let file: Deno.FsFile;
    try {
      file = Deno.openSync(path, { read: true });
    } catch (error) {
      throw new Error(`Cannot open snapshot ${path}: ${(error as Error).message}`, { cause: error });
    }
    try {
      return SnapshotFile.#read(path, file);
    } finally {
      file.close();
    }
  }

  static #read(path: string, file: Deno.FsFile): SnapshotFile {
    const size = file.statSync().size;
    const fail = (section: string, problem: string): never => {
      throw new SnapshotError(path, section, problem);
    };
    const readAt = (offset: number, length: number, section: string): Uint8Array => {
      const bytes = new Uint8Array(length);
      file.seekSync(offset, Deno.SeekMode.Start);
      let read = 0;
      while (read < length) {
        const n = file.readSync(bytes.subarray(read));
        if (n === null || n === 0) fail(section, `is truncated (${read} of ${length} bytes at offset ${offset})`);
        read += n!;
      }
      return bytes;
    };
    if (size < HEADER_SIZE) fail("header", `is truncated: the file has ${size} bytes, the header needs ${HEADER_SIZE}`);
    const header = readAt(0, HEADER_SIZE, "header");
    const view = new DataView(header.buffer);
    const magic = new TextDecoder().decode(header.subarray(0, 8));
    if (magic !== SNAPSHOT_MAGIC) fail("header", `has magic ${JSON.stringify(magic)}: not an hvsh snapshot`);
    const storedHeaderCrc = view.getUint32(44, true);
    const zeroed = header.slice();
    new DataView(zeroed.buffer).setUint32(44, 0, true);
    const headerCrc = crc32(zeroed);
    if (headerCrc !== storedHeaderCrc) {
      fail("header", `is corrupt: checksum ${hex(headerCrc)}, the header says ${hex(storedHeaderCrc)}`);
    }
    const version = { major: view.getUint16(8, true), minor: view.getUint16(10, true) };
    if (version.major !== SNAPSHOT_VERSION.major) {
      fail(
        "header",
        `has format version ${version.major}.${version.minor}; this hvsh reads version ${SNAPSHOT_VERSION.major}.x`,
      );
    }
    const count = view.getUint32(16, true);
    const entrySize = view.getUint32(20, true);
    const tableOffset = Number(view.getBigUint64(24, true));
    const fileSize = Number(view.getBigUint64(32, true));
    if (entrySize !== SECTION_ENTRY_SIZE || count === 0 || count > 4096) {
      fail("header", `is corrupt: ${count} sections of ${entrySize} bytes`);
    }
    if (size < fileSize) fail("header", `says the file has ${fileSize} bytes, it has ${size}: the file is truncated`);
    const table = readAt(tableOffset, count * SECTION_ENTRY_SIZE, "section table");
    const tableCrc = crc32(table);
    if (tableCrc !== view.getUint32(40, true)) {
      fail("section table", `is corrupt: checksum ${hex(tableCrc)}, the header says ${hex(view.getUint32(40, true))}`);
    }
    const tableView = new DataView(table.buffer);
    const names = Object.fromEntries(Object.entries(ENCODING).map(([k, v]) => [v, k])) as Record<number, EncodingName>;
    const sections: SectionEntry[] = [];
    for (let i = 0; i < count; i++) {
      const at = i * SECTION_ENTRY_SIZE;
      const nameBytes = table.subarray(at, at + NAME_SIZE);
      const end = nameBytes.indexOf(0);
      const name = new TextDecoder().decode(end < 0 ? nameBytes : nameBytes.subarray(0, end));
      const offset = Number(tableView.getBigUint64(at + 24, true));
      const length = Number(tableView.getBigUint64(at + 32, true));
      const encoding = names[tableView.getUint32(at + 44, true)];
      if (encoding === undefined) fail(name, `has unknown encoding ${tableView.getUint32(at + 44, true)}`);
      if (offset + length > size) fail(name, `is truncated: it ends at ${offset + length}, the file at ${size}`);
      sections.push({ name, offset, length, crc: tableView.getUint32(at + 40, true), encoding: encoding! });
    }
    if (!sections.some((s) => s.name === PAGEMAP_SECTION)) fail(PAGEMAP_SECTION, "is missing");
    const memoryEntry = sections.find((s) => s.name === MEMORY_SECTION) ?? fail(MEMORY_SECTION, "is missing");
    if (memoryEntry.offset % PAGE_SIZE !== 0 || memoryEntry.length % PAGE_SIZE !== 0) {
      fail(MEMORY_SECTION, `is not page-aligned (offset ${memoryEntry.offset}, ${memoryEntry.length} bytes)`);
    }
    const snapshot = new SnapshotFile(path, version, sections, new Uint8Array());
    for (const entry of sections) {
      if (entry.encoding === "pages") continue;
      const bytes = readAt(entry.offset, entry.length, entry.name);
      const crc = crc32(bytes);
      if (crc !== entry.crc) fail(entry.name, `is corrupt: checksum ${hex(crc)}, the table says ${hex(entry.crc)}`);
      if (entry.encoding === "json") {
        try {
          snapshot.#json.set(entry.name, JSON.parse(new TextDecoder().decode(bytes)));
        } catch (error) {
          fail(entry.name, `is not valid JSON: ${(error as Error).message}`);
        }
      } else if (entry.name === PAGEMAP_SECTION) {
        (snapshot as { pagemap: Uint8Array }).pagemap = bytes;
      }
    }
    const totalPages = memoryEntry.length / PAGE_SIZE;
    if (snapshot.pagemap.length !== Math.ceil(totalPages / 8)) {
      fail(PAGEMAP_SECTION, `has ${snapshot.pagemap.length} bytes for ${totalPages} pages`);
    }
    // The memory checksum covers the stored pages only, read in runs.
    let crc = 0;
    const chunk = new Uint8Array(1 << 20);
    for (const [first, pages] of pageRuns(snapshot.storedPages(0, totalPages))) {
      let done = 0;
      while (done < pages) {
        const take = Math.min(pages - done, chunk.length / PAGE_SIZE);
        const bytes = chunk.subarray(0, take * PAGE_SIZE);
        bytes.set(readAt(memoryEntry.offset + (first + done) * PAGE_SIZE, bytes.length, MEMORY_SECTION));
        crc = crc32(bytes, crc);
        done += take;
      }
    }
    if (crc !== memoryEntry.crc) {
      fail(
        MEMORY_SECTION,
        `is corrupt: checksum ${hex(crc)} over its stored pages, the table says ${hex(memoryEntry.crc)}`,
      );
    }
    return snapshot;
  }

  /** The section table entry named `name`, or undefined. */
  section(name: string): SectionEntry | undefined {
    return this.sections.find((s) => s.name === name);
  }

  /** A JSON section's value; throws a SnapshotError when it is missing. */
  json<T>(name: string): T {
    if (!this.#json.has(name)) throw new SnapshotError(this.path, name, "is missing");
    return this.#json.get(name) as T;
  }

  /** True when the file has a JSON section `name`. */
  hasJson(name: string): boolean {
    return this.#json.has(name);
  }

  /** Where the memory area starts in the file. */
  get memoryOffset(): number {
    return this.section(MEMORY_SECTION)!.offset;
  }

  /**
   * Checks that every page the page map lists as absent reads as zero in
   * the file, for a copy-on-write mapping that exposes the memory area as it
   * is (a plain restore never reads those pages). Cheap on a sparse file:
   * only data extents outside the stored pages are read (a file copied
   * without its holes is read whole). Throws a SnapshotError naming the
   * memory section.
   */
  verifyAbsentPagesZero(): void {
    const memory = this.section(MEMORY_SECTION)!;
    const totalPages = memory.length / PAGE_SIZE;
    const page = new Uint8Array(PAGE_SIZE);
    let file: Deno.FsFile | undefined;
    try {
      for (const [start, end] of fileDataRanges(this.path, memory.offset, memory.offset + memory.length)) {
        const first = Math.floor((start - memory.offset) / PAGE_SIZE);
        const last = Math.min(totalPages, Math.ceil((end - memory.offset) / PAGE_SIZE));
        for (let index = first; index < last; index++) {
          if ((this.pagemap[index >> 3]! & (1 << (index & 7))) !== 0) continue;
          file ??= Deno.openSync(this.path, { read: true });
          file.seekSync(memory.offset + index * PAGE_SIZE, Deno.SeekMode.Start);
          let read = 0;
          while (read < PAGE_SIZE) {
            const n = file.readSync(page.subarray(read));
            if (n === null || n === 0) break;
            read += n;
          }
          if (!isZeroPage(page)) {
            throw new SnapshotError(
              this.path,
              MEMORY_SECTION,
              `is corrupt: page ${index} holds data but the page map lists it as zero`,
            );
          }
        }
      }
    } finally {
      file?.close();
    }
  }

  /** The stored page indices in `[first, first + count)` of the page map, relative to `first`. */
  storedPages(first: number, count: number): number[] {
    const pages: number[] = [];
    const map = this.pagemap;
    for (let page = 0; page < count; page++) {
      const bit = first + page;
      const byte = map[bit >> 3]!;
      if (byte === 0) {
        page += 7 - (bit & 7); // skip the rest of an empty byte
        continue;
      }
      if ((byte & (1 << (bit & 7))) !== 0) pages.push(page);
    }
    return pages;
  }

  /**
   * Reads the stored pages of the memory area into `regions` (each region's
   * bytes, in the order the snapshot's regions were written), leaving the
   * others as they are (zero in fresh memory).
   */
  readMemoryInto(regions: readonly Uint8Array[]): void {
    const file = Deno.openSync(this.path, { read: true });
    try {
      let firstPage = 0;
      let regionOffset = this.memoryOffset;
      for (const bytes of regions) {
        const pages = bytes.length / PAGE_SIZE;
        for (const [first, count] of pageRuns(this.storedPages(firstPage, pages))) {
          file.seekSync(regionOffset + first * PAGE_SIZE, Deno.SeekMode.Start);
          const target = bytes.subarray(first * PAGE_SIZE, (first + count) * PAGE_SIZE);
          let read = 0;
          while (read < target.length) {
            const n = file.readSync(target.subarray(read));
            if (n === null || n === 0) throw new SnapshotError(this.path, MEMORY_SECTION, "is truncated");
            read += n;
          }
        }
        firstPage += pages;
        regionOffset += bytes.length;
      }
    } finally {
      file.close();
    }
  }
}

function hex(value: number): string {
  return `0x${value.toString(16).padStart(8, "0")}`;
}
