/**
 * Split virtqueues (virtio 1.2, section 2.7), shared by every virtio back
 * end: the descriptor table, the driver ("available") ring and the device
 * ("used") ring in guest RAM, indirect descriptors (2.7.5.3) and event
 * index notification suppression (2.7.7, 2.7.10).
 *
 * Nothing the guest writes is trusted: every ring, table and buffer address
 * is checked against guest RAM before use, a chain may hold no more
 * descriptors than its table (so a loop ends), indirect tables may not nest,
 * and a device-readable descriptor may not follow a device-writable one.
 * A violation throws a {@link VirtqueueError}; the transport puts the device
 * in NEEDS_RESET. Guest memory is reached only through {@link GuestRam},
 * whose views refuse any range outside RAM.
 *
 * @module
 */

import { StateReader } from "../_state.ts";

/** The guest RAM a queue may touch (core/memory.ts's GuestMemory is one). */
export interface GuestRam {
  /** True when `[address, address + length)` is RAM, in one region. */
  isRam(address: number, length: number): boolean;
  /** A live view of RAM; throws a RangeError outside RAM. */
  view(address: number, length: number): Uint8Array;
}

/** A driver error that puts the device in NEEDS_RESET. */
export class VirtqueueError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "VirtqueueError";
  }
}

/** Descriptor flags (2.7.5). */
export const VIRTQ_DESC_F = { next: 1, write: 2, indirect: 4 } as const;
/** The largest split queue (2.7: Queue Size ≤ 32768). */
export const VIRTQ_MAX_SIZE = 32768;
const AVAIL_F_NO_INTERRUPT = 1;
const DESCRIPTOR_SIZE = 16;

/** One guest buffer of a chain: a RAM range, already checked. */
export interface BufferSegment {
  address: number;
  length: number;
}

/** A descriptor chain taken from the available ring. */
export interface DescriptorChain {
  /** The head's index: what goes back into the used ring. */
  head: number;
  /** Device-readable buffers, in order. */
  readable: BufferSegment[];
  /** Device-writable buffers, in order. */
  writable: BufferSegment[];
  /** Sum of the readable lengths. */
  readableLength: number;
  /** Sum of the writable lengths. */
  writableLength: number;
}

/** A queue's state (plain JSON data): what the driver configured and how far the device got. */
export interface QueueState {
  size: number;
  ready: boolean;
  /** Guest physical addresses of the descriptor table, driver area and device area. */
  descTable: number;
  driverArea: number;
  deviceArea: number;
  /** The next available-ring index the device will read, and the next used-ring index it will write. */
  nextAvail: number;
  nextUsed: number;
  /** The used index when the driver was last interrupted (event index bookkeeping). */
  signalledUsed: number;
}

function hex(value: number): string {
  return `0x${value.toString(16)}`;
}

/**
 * One split virtqueue.
 *
 * @example
 * ```ts
 * import { SplitQueue } from "./queue.ts";
 * import assert from "node:assert/strict";
 * const ram = new Uint8Array(0x10000);
 * const memory = {
 *   isRam: (address: number, length: number) => address >= 0 && address + length <= ram.length,
 *   view: (address: number, length: number) => ram.subarray(address, address + length),
 * };
 * const queue = new SplitQueue(8);
 * Object.assign(queue, { size: 8, descTable: 0x1000, driverArea: 0x2000, deviceArea: 0x3000 });
 * queue.enable(memory);
 * const dv = new DataView(ram.buffer);
 * dv.setBigUint64(0x1000, 0x4000n, true); // descriptor 0: 16 bytes at 0x4000, device-writable
 * dv.setUint32(0x1008, 16, true);
 * dv.setUint16(0x100c, 2, true);
 * dv.setUint16(0x2004, 0, true); // avail ring[0] = 0
 * dv.setUint16(0x2002, 1, true); // avail idx = 1
 * const chain = queue.pop()!;
 * assert.equal(chain.writableLength, 16);
 * queue.push(chain.head, 16);
 * assert.equal(dv.getUint16(0x3002, true), 1); // used idx
 * ```
 */
export class SplitQueue {
  /** The device's maximum size (QueueNumMax). */
  readonly maxSize: number;
  /** Size the driver chose (QueueNum); must be a power of two ≤ maxSize. */
  size: number;
  ready = false;
  descTable = 0;
  driverArea = 0;
  deviceArea = 0;
  /** Whether VIRTIO_F_EVENT_IDX was negotiated. */
  eventIdx = false;
  #nextAvail = 0;
  #nextUsed = 0;
  #signalledUsed = 0;
  #memory: GuestRam | undefined;
  #desc: DataView | undefined;
  #avail: DataView | undefined;
  #used: DataView | undefined;

  constructor(maxSize: number) {
    if (!Number.isInteger(maxSize) || maxSize < 1 || maxSize > VIRTQ_MAX_SIZE || (maxSize & (maxSize - 1)) !== 0) {
      throw new RangeError(`Invalid queue size ${maxSize}: expected a power of two in 1-${VIRTQ_MAX_SIZE}`);
    }
    this.maxSize = maxSize;
    this.size = maxSize;
  }

  /** Forgets everything the driver set (a device reset). */
  reset(): void {
    this.size = this.maxSize;
    this.ready = false;
    this.descTable = this.driverArea = this.deviceArea = 0;
    this.eventIdx = false;
    this.#nextAvail = this.#nextUsed = this.#signalledUsed = 0;
    this.#memory =
      this.#desc =
      this.#avail =
      this.#used =
        undefined;
  }

  /** True once {@link enable} checked the rings and the queue can be used. */
  get active(): boolean {
    return this.#desc !== undefined;
  }

  /**
   * Checks the driver's configuration (size, ring addresses and alignment,
   * all of it in RAM) and maps the rings. Throws a VirtqueueError naming
   * what is wrong.
   */
  enable(memory: GuestRam): void {
    const size = this.size;
    if (!Number.isInteger(size) || size < 1 || size > this.maxSize || (size & (size - 1)) !== 0) {
      throw new VirtqueueError(`queue size ${size} is not a power of two in 1-${this.maxSize}`);
    }
    const area = (name: string, address: number, length: number, align: number): DataView => {
      if (!Number.isSafeInteger(address) || address % align !== 0) {
        throw new VirtqueueError(`${name} at ${hex(address)} is not ${align}-byte aligned`);
      }
      if (!memory.isRam(address, length)) {
        throw new VirtqueueError(`${name} at ${hex(address)} (${length} bytes) is not in guest RAM`);
      }
      const bytes = memory.view(address, length);
      return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    };
    const desc = area("descriptor table", this.descTable, DESCRIPTOR_SIZE * size, 16);
    const avail = area("driver area", this.driverArea, 6 + 2 * size, 2);
    const used = area("device area", this.deviceArea, 6 + 8 * size, 4);
    this.#memory = memory;
    this.#desc = desc;
    this.#avail = avail;
    this.#used = used;
  }

  /** The next chain the driver made available, or undefined when there is none. Throws a VirtqueueError. */
  pop(): DescriptorChain | undefined {
    const avail = this.#avail;
    if (avail === undefined) throw new VirtqueueError("queue used before it was enabled");
    const availIdx = avail.getUint16(2, true);
    if (availIdx === this.#nextAvail) return undefined;
    const pending = (availIdx - this.#nextAvail) & 0xffff;
    if (pending > this.size) {
      throw new VirtqueueError(
        `available index ${availIdx} is ${pending} ahead of the device's ${this.#nextAvail}, more than the queue size ${this.size}`,
      );
    }
    const head = avail.getUint16(4 + 2 * (this.#nextAvail % this.size), true);
    this.#nextAvail = (this.#nextAvail + 1) & 0xffff;
    if (head >= this.size) {
      throw new VirtqueueError(`available ring names descriptor ${head}, beyond the queue size ${this.size}`);
    }
    return this.#walk(head);
  }

  /** Puts a chain back in front of the available ring (a back end that could not finish it yet). */
  undoPop(): void {
    this.#nextAvail = (this.#nextAvail - 1) & 0xffff;
  }

  #walk(head: number): DescriptorChain {
    const memory = this.#memory!;
    const chain: DescriptorChain = { head, readable: [], writable: [], readableLength: 0, writableLength: 0 };
    let table = this.#desc!;
    let tableSize = this.size;
    let index = head;
    let budget = tableSize;
    let indirect = false;
    for (;;) {
      if (budget-- === 0) {
        throw new VirtqueueError(
          `descriptor chain from ${head} has more than ${tableSize} descriptors${
            indirect ? " (indirect)" : ""
          }: a loop`,
        );
      }
      const at = index * DESCRIPTOR_SIZE;
      const address = Number(table.getBigUint64(at, true));
      const length = table.getUint32(at + 8, true);
      const flags = table.getUint16(at + 12, true);
      const next = table.getUint16(at + 14, true);
      if ((flags & VIRTQ_DESC_F.indirect) !== 0) {
        if (indirect) throw new VirtqueueError(`descriptor ${index} of an indirect table is itself indirect`);
        if ((flags & VIRTQ_DESC_F.next) !== 0) {
          throw new VirtqueueError(`indirect descriptor ${index} also has NEXT set`);
        }
        if (length === 0 || length % DESCRIPTOR_SIZE !== 0 || length / DESCRIPTOR_SIZE > VIRTQ_MAX_SIZE) {
          throw new VirtqueueError(`indirect table of ${length} bytes is not 1-${VIRTQ_MAX_SIZE} descriptors`);
        }
        if (!Number.isSafeInteger(address) || !memory.isRam(address, length)) {
          throw new VirtqueueError(`indirect table at ${hex(address)} (${length} bytes) is not in guest RAM`);
        }
        const bytes = memory.view(address, length);
        table = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
        tableSize = budget = length / DESCRIPTOR_SIZE;
        indirect = true;
        index = 0;
        continue;
      }
      if (length > 0) {
        if (!Number.isSafeInteger(address) || !memory.isRam(address, length)) {
          throw new VirtqueueError(
            `descriptor ${index} buffer at ${hex(address)} (${length} bytes) is not in guest RAM`,
          );
        }
        if ((flags & VIRTQ_DESC_F.write) !== 0) {
          chain.writable.push({ address, length });
          chain.writableLength += length;
        } else {
          if (chain.writable.length > 0) {
            throw new VirtqueueError(`descriptor ${index} is device-readable after a device-writable one`);
          }
          chain.readable.push({ address, length });
          chain.readableLength += length;
        }
        if (chain.readableLength + chain.writableLength > 0xffff_ffff) {
          throw new VirtqueueError(`descriptor chain from ${head} holds more than 4 GiB`);
        }
      }
      if ((flags & VIRTQ_DESC_F.next) === 0) return chain;
      if (next >= tableSize) {
        throw new VirtqueueError(`descriptor ${index} links to ${next}, beyond its table of ${tableSize}`);
      }
      index = next;
    }
  }

  /** Returns a chain to the driver with `written` bytes written into its device-writable buffers. */
  push(head: number, written: number): void {
    const used = this.#used;
    if (used === undefined) throw new VirtqueueError("queue used before it was enabled");
    const slot = 4 + 8 * (this.#nextUsed % this.size);
    used.setUint32(slot, head, true);
    used.setUint32(slot + 4, written, true);
    this.#nextUsed = (this.#nextUsed + 1) & 0xffff;
    used.setUint16(2, this.#nextUsed, true);
    // With event index the device also says how far it has read, so the driver notifies only for newer buffers.
    if (this.eventIdx) used.setUint16(4 + 8 * this.size, this.#nextAvail, true);
  }

  /** Whether the driver wants an interrupt for what was pushed since the last one (event index or NO_INTERRUPT). */
  needsInterrupt(): boolean {
    const avail = this.#avail;
    if (avail === undefined) return false;
    const current = this.#nextUsed;
    const previous = this.#signalledUsed;
    if (current === previous) return false;
    this.#signalledUsed = current;
    if (!this.eventIdx) return (avail.getUint16(0, true) & AVAIL_F_NO_INTERRUPT) === 0;
    const usedEvent = avail.getUint16(4 + 2 * this.size, true);
    // vring_need_event(): the driver asked to hear when the used index passes usedEvent.
    return ((current - usedEvent - 1) & 0xffff) < ((current - previous) & 0xffff);
  }

  /**
   * Serves every chain the driver has made available: `serve` handles one
   * and returns how many bytes it wrote into the chain's buffers, then the
   * chain goes on the used ring. With event index, chains that arrive while
   * the device publishes how far it read are served too, so none waits for
   * a notification that will not come. A `serve` that throws (a malformed
   * chain) leaves that chain unused and ends the drain.
   */
  drain(serve: (chain: DescriptorChain) => number): void {
    do {
      for (let chain = this.pop(); chain !== undefined; chain = this.pop()) this.push(chain.head, serve(chain));
    } while (this.hasMore());
  }

  /** With event index: publishes how far the device has read, then says whether more arrived meanwhile. */
  hasMore(): boolean {
    const avail = this.#avail;
    if (avail === undefined) return false;
    if (this.eventIdx) this.#used!.setUint16(4 + 8 * this.size, this.#nextAvail, true);
    return avail.getUint16(2, true) !== this.#nextAvail;
  }

  /** Copies the chain's readable bytes (up to `limit`) out of guest RAM. */
  readAll(chain: DescriptorChain, limit = chain.readableLength): Uint8Array {
    const out = new Uint8Array(Math.min(limit, chain.readableLength));
    let done = 0;
    for (const segment of chain.readable) {
      if (done >= out.length) break;
      const take = Math.min(segment.length, out.length - done);
      out.set(this.#memory!.view(segment.address, take), done);
      done += take;
    }
    return out;
  }

  /** Copies `bytes` into the chain's writable buffers from `offset` on; returns how many fitted. */
  writeAt(chain: DescriptorChain, offset: number, bytes: Uint8Array): number {
    let skip = offset;
    let done = 0;
    for (const segment of chain.writable) {
      if (done >= bytes.length) break;
      if (skip >= segment.length) {
        skip -= segment.length;
        continue;
      }
      const take = Math.min(segment.length - skip, bytes.length - done);
      this.#memory!.view(segment.address + skip, take).set(bytes.subarray(done, done + take));
      done += take;
      skip = 0;
    }
    return done;
  }

  /** Live views of guest RAM for segments (zero-copy I/O into or out of them). */
  views(segments: readonly BufferSegment[]): Uint8Array[] {
    return segments.map((segment) => this.#memory!.view(segment.address, segment.length));
  }

  /** A copy of the state (plain JSON data). */
  get state(): QueueState {
    return {
      size: this.size,
      ready: this.ready,
      descTable: this.descTable,
      driverArea: this.driverArea,
      deviceArea: this.deviceArea,
      nextAvail: this.#nextAvail,
      nextUsed: this.#nextUsed,
      signalledUsed: this.#signalledUsed,
    };
  }

  /**
   * Puts the queue in `state`. A ready queue is enabled again over `memory`
   * (its rings checked); throws a TypeError/RangeError naming the bad field,
   * or a VirtqueueError for rings outside RAM.
   */
  restore(state: QueueState, memory: GuestRam, device = "virtio queue"): void {
    const r = new StateReader(device, state);
    const size = r.integer("size", 1, this.maxSize);
    const ready = r.boolean("ready");
    const address = (field: string) => r.integer(field, 0, Number.MAX_SAFE_INTEGER, true);
    const descTable = address("descTable");
    const driverArea = address("driverArea");
    const deviceArea = address("deviceArea");
    const nextAvail = r.integer("nextAvail", 0, 0xffff);
    const nextUsed = r.integer("nextUsed", 0, 0xffff);
    const signalledUsed = r.integer("signalledUsed", 0, 0xffff);
    this.reset();
    Object.assign(this, { size, ready, descTable, driverArea, deviceArea });
    this.#nextAvail = nextAvail;
    this.#nextUsed = nextUsed;
    this.#signalledUsed = signalledUsed;
    if (ready) this.enable(memory);
  }
}
