/**
 * virtio-blk (virtio 1.2, section 5.2) over a raw image file: read, write,
 * flush, get-id and discard; a read-only mode; and a copy-on-write overlay
 * kept in memory or in a file, which leaves the image untouched.
 *
 * Reads and writes go between the file and guest RAM with `pread`/`pwrite`
 * straight into the guest's buffers (no copy), synchronously on the thread
 * that took the notify (see the notification measurements in
 * scripts/virtio_notify_bench.ts).
 *
 * @module
 */

import { HostFile } from "../../core/kvm/host_io.ts";
import { readConfigSpace, VIRTIO_ID, type VirtioContext, type VirtioDevice } from "./device.ts";
import type { DescriptorChain, SplitQueue } from "./queue.ts";
import { StateReader, toBase64 } from "../_state.ts";

/** Request types (5.2.6). */
export const VIRTIO_BLK_T = { in: 0, out: 1, flush: 4, getId: 8, discard: 11 } as const;
/** Request status (5.2.6). */
export const VIRTIO_BLK_S = { ok: 0, ioErr: 1, unsupported: 2 } as const;
/** Feature bits (5.2.3). */
export const VIRTIO_BLK_F = {
  segMax: 1n << 2n,
  ro: 1n << 5n,
  blkSize: 1n << 6n,
  flush: 1n << 9n,
  discard: 1n << 13n,
} as const;

const SECTOR = 512;
const QUEUE_SIZE = 256;
const HEADER = 16;
/** Overlay granularity: 4 KiB, the guest's usual block size. */
const CHUNK = 4096;
const CONFIG_SIZE = 60;
/** The longest discard the device accepts in one segment (sectors). */
const MAX_DISCARD_SECTORS = 0x3f_ffff;

/** Options of {@link virtioBlock}. */
export interface VirtioBlockOptions {
  /** The raw disk image. */
  path: string;
  /** Refuse writes (VIRTIO_BLK_F_RO); the image is opened read-only. */
  readOnly?: boolean;
  /**
   * Copy-on-write: the image is opened read-only and writes land in an
   * overlay, `true` (or `"memory"`) in memory, or a file path (created or
   * truncated to the image's size).
   */
  overlay?: boolean | "memory" | string;
  /** The serial number GET_ID returns (at most 20 bytes; default the image's file name). */
  serial?: string;
}

/** Where the written chunks of an overlay live. */
interface Overlay {
  readonly kind: "memory" | "file";
  has(chunk: number): boolean;
  read(chunk: number, into: Uint8Array, offsetInChunk: number): void;
  write(chunk: number, bytes: Uint8Array, offsetInChunk: number, base: (into: Uint8Array) => void): void;
  drop(chunk: number): void;
  flush(): void;
  close(): void;
  state(): Record<string, unknown>;
  restore(r: StateReader): void;
}

class MemoryOverlay implements Overlay {
  readonly kind = "memory";
  readonly chunks = new Map<number, Uint8Array>();
  has(chunk: number): boolean {
    return this.chunks.has(chunk);
  }
  read(chunk: number, into: Uint8Array, at: number): void {
    into.set(this.chunks.get(chunk)!.subarray(at, at + into.length));
  }
  write(chunk: number, bytes: Uint8Array, at: number, base: (into: Uint8Array) => void): void {
    let data = this.chunks.get(chunk);
    if (data === undefined) {
      data = new Uint8Array(CHUNK);
      base(data);
      this.chunks.set(chunk, data);
    }
    data.set(bytes, at);
  }
  drop(chunk: number): void {
    this.chunks.set(chunk, new Uint8Array(CHUNK));
  }
  flush(): void {}
  close(): void {
    this.chunks.clear();
  }
  state(): Record<string, unknown> {
    const chunks: Record<string, string> = {};
    for (const [index, data] of this.chunks) chunks[index] = toBase64(data);
    return { kind: "memory", chunks };
  }
  restore(r: StateReader): void {
    const chunks = r.object("chunks");
    const restored = new Map<number, Uint8Array>();
    for (const key of chunks.keys()) {
      if (!/^\d+$/.test(key)) chunks.refuse(`overlay chunk ${JSON.stringify(key)} is not a chunk index`);
      restored.set(Number(key), chunks.base64(key, CHUNK, CHUNK));
    }
    this.chunks.clear();
    for (const [k, v] of restored) this.chunks.set(k, v);
  }
}

class FileOverlay implements Overlay {
  readonly kind = "file";
  readonly file: HostFile;
  readonly present = new Set<number>();
  constructor(path: string, size: number) {
    Deno.writeFileSync(path, new Uint8Array(0));
    Deno.truncateSync(path, size);
    this.file = HostFile.open(path);
  }
  has(chunk: number): boolean {
    return this.present.has(chunk);
  }
  read(chunk: number, into: Uint8Array, at: number): void {
    this.file.readAt(into, chunk * CHUNK + at);
  }
  write(chunk: number, bytes: Uint8Array, at: number, base: (into: Uint8Array) => void): void {
    if (!this.present.has(chunk)) {
      const data = new Uint8Array(CHUNK);
      base(data);
      data.set(bytes, at);
      this.file.writeAt(data, chunk * CHUNK);
      this.present.add(chunk);
      return;
    }
    this.file.writeAt(bytes, chunk * CHUNK + at);
  }
  drop(chunk: number): void {
    this.file.writeAt(new Uint8Array(CHUNK), chunk * CHUNK);
    this.present.add(chunk);
  }
  flush(): void {
    this.file.sync();
  }
  close(): void {
    this.file.close();
  }
  state(): Record<string, unknown> {
    return { kind: "file", path: this.file.path, present: [...this.present].sort((a, b) => a - b) };
  }
  restore(r: StateReader): void {
    const present = r.array("present", 0, Number.MAX_SAFE_INTEGER);
    if (!present.every((n) => Number.isSafeInteger(n) && (n as number) >= 0)) {
      r.rangeError("present", present, "an array of chunk indices");
    }
    this.present.clear();
    for (const n of present as number[]) this.present.add(n);
  }
}

/** The block device's own state: what is configured, and the overlay's written chunks. */
export interface VirtioBlockState extends Record<string, unknown> {
  path: string;
  readOnly: boolean;
  capacity: number;
  overlay: Record<string, unknown> | null;
}

/**
 * A virtio-blk back end.
 *
 * @example
 * ```ts ignore
 * vm.add(virtioBlock({ path: "disk.img" }));
 * vm.add(virtioBlock({ path: "base.img", overlay: true })); // writes stay in memory
 * ```
 */
export class VirtioBlock implements VirtioDevice {
  readonly deviceId = VIRTIO_ID.block;
  readonly kind = "block";
  readonly queueSizes = [QUEUE_SIZE];
  readonly configSize = CONFIG_SIZE;
  readonly features: bigint;
  readonly path: string;
  readonly readOnly: boolean;
  /** Size in 512-byte sectors. */
  readonly capacity: number;
  /** Requests served, by type, for listings and tests. */
  readonly counters = { reads: 0, writes: 0, flushes: 0, discards: 0, errors: 0 };
  readonly #file: HostFile;
  readonly #overlay: Overlay | undefined;
  readonly #serial: Uint8Array;
  readonly #config = new Uint8Array(CONFIG_SIZE);
  #context: VirtioContext | undefined;

  constructor(options: VirtioBlockOptions) {
    if (typeof options?.path !== "string" || options.path === "") {
      throw new TypeError(`Invalid virtio-blk path ${JSON.stringify(options?.path)}: expected an image file`);
    }
    this.path = options.path;
    this.readOnly = options.readOnly ?? false;
    let size: number;
    try {
      size = Deno.statSync(options.path).size;
    } catch (error) {
      throw new Error(`Cannot open disk image ${options.path}: ${(error as Error).message}`, { cause: error });
    }
    this.capacity = Math.floor(size / SECTOR);
    const overlay = options.overlay ?? false;
    this.#file = HostFile.open(options.path, { readOnly: this.readOnly || overlay !== false });
    try {
      if (overlay === true || overlay === "memory") this.#overlay = new MemoryOverlay();
      else if (typeof overlay === "string") this.#overlay = new FileOverlay(overlay, size);
    } catch (error) {
      this.#file.close();
      throw new Error(`Cannot create the overlay ${overlay}: ${(error as Error).message}`, { cause: error });
    }
    const name = options.serial ?? options.path.split("/").pop()!;
    this.#serial = new TextEncoder().encode(name).slice(0, 20);
    this.features = VIRTIO_BLK_F.segMax | VIRTIO_BLK_F.blkSize | VIRTIO_BLK_F.flush |
      (this.readOnly ? VIRTIO_BLK_F.ro : VIRTIO_BLK_F.discard);
    const config = new DataView(this.#config.buffer);
    config.setBigUint64(0, BigInt(this.capacity), true);
    config.setUint32(12, QUEUE_SIZE - 2, true); // seg_max: the header and status take two descriptors
    config.setUint32(20, SECTOR, true); // blk_size
    config.setUint32(36, MAX_DISCARD_SECTORS, true); // max_discard_sectors
    config.setUint32(40, 1, true); // max_discard_seg
    config.setUint32(44, CHUNK / SECTOR, true); // discard_sector_alignment
  }

  readConfig(offset: number, size: number): number {
    return readConfigSpace(this.#config, offset, size);
  }

  writeConfig(): void {}

  activate(context: VirtioContext): void {
    this.#context = context;
  }

  reset(): void {
    this.#context = undefined;
  }

  notify(): void {
    const context = this.#context;
    if (context === undefined) return;
    const queue = context.queues[0]!;
    queue.drain((chain) => this.#serve(queue, chain));
    context.usedBuffers(0);
  }

  /** Serves one request; returns the bytes written into the guest's buffers (data and status). */
  #serve(queue: SplitQueue, chain: DescriptorChain): number {
    if (chain.readableLength < HEADER || chain.writableLength < 1) {
      throw new Error(
        `request ${chain.head} has ${chain.readableLength} readable and ${chain.writableLength} writable bytes: ` +
          `no room for the 16-byte header and the status byte`,
      );
    }
    const header = new DataView(queue.readAll(chain, HEADER).buffer);
    const type = header.getUint32(0, true);
    const sector = header.getBigUint64(8, true);
    const dataIn = chain.writableLength - 1; // bytes the guest lets the device write, before the status
    const statusAt = dataIn;
    let status: number = VIRTIO_BLK_S.ok;
    let written = 0;
    try {
      switch (type) {
        case VIRTIO_BLK_T.in:
          status = this.#transfer("read", queue, chain, sector, dataIn);
          if (status === VIRTIO_BLK_S.ok) written = dataIn;
          break;
        case VIRTIO_BLK_T.out:
          status = this.#transfer("write", queue, chain, sector, chain.readableLength - HEADER);
          break;
        case VIRTIO_BLK_T.flush:
          this.counters.flushes++;
          if (this.#overlay !== undefined) this.#overlay.flush();
          else if (!this.readOnly) this.#file.sync();
          break;
        case VIRTIO_BLK_T.getId: {
          const id = new Uint8Array(Math.min(20, dataIn));
          id.set(this.#serial.subarray(0, id.length));
          written = queue.writeAt(chain, 0, id);
          break;
        }
        case VIRTIO_BLK_T.discard:
          status = this.#discard(queue, chain);
          break;
        default:
          status = VIRTIO_BLK_S.unsupported;
      }
    } catch {
      status = VIRTIO_BLK_S.ioErr; // a host I/O error is the guest's EIO, not a device failure
    }
    if (status === VIRTIO_BLK_S.ioErr) this.counters.errors++;
    queue.writeAt(chain, statusAt, new Uint8Array([status]));
    return written + 1;
  }

  #transfer(direction: "read" | "write", queue: SplitQueue, chain: DescriptorChain, sector: bigint, length: number) {
    if (direction === "write" && this.readOnly) return VIRTIO_BLK_S.ioErr;
    if (length % SECTOR !== 0) return VIRTIO_BLK_S.ioErr;
    if (sector > BigInt(this.capacity) || Number(sector) + length / SECTOR > this.capacity) return VIRTIO_BLK_S.ioErr;
    let offset = Number(sector) * SECTOR;
    if (direction === "read") {
      this.counters.reads++;
      let left = length;
      for (const view of queue.views(chain.writable)) {
        const part = view.subarray(0, Math.min(view.length, left));
        this.#read(part, offset);
        offset += part.length;
        left -= part.length;
        if (left === 0) break;
      }
    } else {
      this.counters.writes++;
      let skip = HEADER;
      for (const view of queue.views(chain.readable)) {
        if (skip >= view.length) {
          skip -= view.length;
          continue;
        }
        const part = view.subarray(skip);
        skip = 0;
        this.#write(part, offset);
        offset += part.length;
      }
    }
    return VIRTIO_BLK_S.ok;
  }

  #read(into: Uint8Array, offset: number): void {
    const overlay = this.#overlay;
    if (overlay === undefined) {
      this.#file.readAt(into, offset);
      return;
    }
    let done = 0;
    while (done < into.length) {
      const at = offset + done;
      const chunk = Math.floor(at / CHUNK);
      const inChunk = at % CHUNK;
      const part = into.subarray(done, done + Math.min(CHUNK - inChunk, into.length - done));
      if (overlay.has(chunk)) overlay.read(chunk, part, inChunk);
      else this.#file.readAt(part, at);
      done += part.length;
    }
  }

  #write(bytes: Uint8Array, offset: number): void {
    const overlay = this.#overlay;
    if (overlay === undefined) {
      this.#file.writeAt(bytes, offset);
      return;
    }
    let done = 0;
    while (done < bytes.length) {
      const at = offset + done;
      const chunk = Math.floor(at / CHUNK);
      const inChunk = at % CHUNK;
      const part = bytes.subarray(done, done + Math.min(CHUNK - inChunk, bytes.length - done));
      overlay.write(chunk, part, inChunk, (into) => void this.#file.readAt(into, chunk * CHUNK));
      done += part.length;
    }
  }

  #discard(queue: SplitQueue, chain: DescriptorChain): number {
    if (this.readOnly) return VIRTIO_BLK_S.ioErr;
    const body = queue.readAll(chain).subarray(HEADER);
    if (body.length === 0 || body.length % 16 !== 0) return VIRTIO_BLK_S.ioErr;
    const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
    this.counters.discards++;
    for (let at = 0; at < body.length; at += 16) {
      const sector = Number(view.getBigUint64(at, true));
      const count = view.getUint32(at + 8, true);
      if (count > MAX_DISCARD_SECTORS || sector + count > this.capacity) return VIRTIO_BLK_S.ioErr;
      const overlay = this.#overlay;
      if (overlay === undefined) {
        // Where the file system cannot punch holes, discard is a hint: the data may stay (5.2.6.2).
        this.#file.punchHole(sector * SECTOR, count * SECTOR);
        continue;
      }
      // Only whole chunks are dropped from an overlay; partial ones keep their data, which discard allows.
      const first = Math.ceil((sector * SECTOR) / CHUNK);
      const end = Math.floor(((sector + count) * SECTOR) / CHUNK);
      for (let chunk = first; chunk < end; chunk++) overlay.drop(chunk);
    }
    return VIRTIO_BLK_S.ok;
  }

  describe(): string {
    const mode = this.readOnly
      ? "read-only"
      : this.#overlay === undefined
      ? "read-write"
      : `overlay in ${this.#overlay.kind}`;
    return `${this.path}, ${this.capacity} sectors, ${mode}`;
  }

  get state(): VirtioBlockState {
    return {
      path: this.path,
      readOnly: this.readOnly,
      capacity: this.capacity,
      overlay: this.#overlay?.state() ?? null,
    };
  }

  /** Restores {@link state}: the configuration must match this device's; the overlay's chunks are put back. */
  restore(state: Record<string, unknown>): void {
    const r = new StateReader("virtio-blk", state);
    const path = r.string("path");
    if (path !== this.path) r.rangeError("path", path, `this device's image ${JSON.stringify(this.path)}`);
    const capacity = r.integer("capacity", 0, Number.MAX_SAFE_INTEGER);
    if (capacity !== this.capacity) r.rangeError("capacity", capacity, `${this.capacity} (the image's size now)`);
    if (r.boolean("readOnly") !== this.readOnly) r.refuse(`readOnly differs from this device's (${this.readOnly})`);
    const overlay = r.raw("overlay");
    if ((overlay === null) !== (this.#overlay === undefined)) {
      r.refuse(
        `overlay is ${overlay === null ? "absent" : "present"}, but this device has ${this.#overlay ? "one" : "none"}`,
      );
    }
    if (this.#overlay !== undefined) this.#overlay.restore(r.object("overlay"));
  }

  close(): void {
    this.#overlay?.close();
    this.#file.close();
  }
}

/** A virtio-blk device for `vm.add()`. */
export function virtioBlock(options: VirtioBlockOptions): VirtioBlock {
  return new VirtioBlock(options);
}
