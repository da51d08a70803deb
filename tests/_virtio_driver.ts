/**
 * A virtio driver written in TypeScript for tests that need no guest: it
 * lays its rings out in real guest RAM (GuestMemory, no KVM needed) and
 * talks to a device through the virtio-mmio registers, as a guest would.
 *
 * @module
 */

import { GuestMemory } from "../core/memory.ts";
import { VirtioCore, type VirtioDevice } from "../devices/virtio/device.ts";
import { VIRTIO_MMIO, VirtioMmio } from "../devices/virtio/mmio.ts";

const QSIZE = 16;
/** Each queue gets 64 KiB: descriptors, driver and device areas, then buffers. */
const QUEUE_AREA = 0x1_0000;

export class TestDriver {
  readonly memory = GuestMemory.allocate(16 << 20);
  readonly transport: VirtioMmio;
  readonly logs: string[] = [];
  interrupts = 0;
  #availIdx = new Map<number, number>();
  #usedSeen = new Map<number, number>();
  #nextBuffer = new Map<number, number>();

  constructor(device: VirtioDevice) {
    const core = new VirtioCore(device, {
      memory: this.memory,
      name: `test ${device.kind}`,
      setInterrupt: (level) => void (level && this.interrupts++),
      log: (line) => this.logs.push(line),
    });
    this.transport = new VirtioMmio(core);
  }

  read(register: number): number {
    return Number(this.transport.read(BigInt(register), 4));
  }

  write(register: number, value: number): void {
    this.transport.write(BigInt(register), 4, BigInt(value));
  }

  /** Resets the device, then status, features (VERSION_1 plus `low`), every queue (rings zeroed), DRIVER_OK. */
  start(low = 0): void {
    this.write(VIRTIO_MMIO.status, 0);
    // A restart begins with empty rings, as a driver's fresh allocation would.
    this.#availIdx.clear();
    this.#usedSeen.clear();
    this.#nextBuffer.clear();
    for (let q = 0; q < this.transport.core.queues.length; q++) {
      this.memory.write(this.#area(q), new Uint8Array(0x3000));
    }
    this.write(VIRTIO_MMIO.status, 3);
    this.write(VIRTIO_MMIO.driverFeaturesSel, 0);
    this.write(VIRTIO_MMIO.driverFeatures, low);
    this.write(VIRTIO_MMIO.driverFeaturesSel, 1);
    this.write(VIRTIO_MMIO.driverFeatures, 1);
    this.write(VIRTIO_MMIO.status, 11);
    const queues = this.transport.core.queues.length;
    for (let q = 0; q < queues; q++) {
      const base = this.#area(q);
      this.write(VIRTIO_MMIO.queueSel, q);
      this.write(VIRTIO_MMIO.queueNum, QSIZE);
      this.write(VIRTIO_MMIO.queueDescLow, base);
      this.write(VIRTIO_MMIO.queueDriverLow, base + 0x1000);
      this.write(VIRTIO_MMIO.queueDeviceLow, base + 0x2000);
      this.write(VIRTIO_MMIO.queueReady, 1);
    }
    this.write(VIRTIO_MMIO.status, 15);
  }

  #area(queue: number): number {
    return 0x10_0000 + queue * QUEUE_AREA;
  }

  /** Offers one buffer chain: readable bytes, then `writable` device-writable bytes. Returns the head. */
  offer(queue: number, readable: Uint8Array | undefined, writable = 0, notify = true): number {
    const base = this.#area(queue);
    const avail = this.#availIdx.get(queue) ?? 0;
    const head = avail % QSIZE;
    let buffer = this.#nextBuffer.get(queue) ?? base + 0x3000;
    if (buffer + (readable?.length ?? 0) + writable > base + QUEUE_AREA) buffer = base + 0x3000;
    const descs: { address: number; length: number; flags: number }[] = [];
    if (readable !== undefined) {
      this.memory.write(buffer, readable);
      descs.push({ address: buffer, length: readable.length, flags: 0 });
      buffer += readable.length;
    }
    if (writable > 0) {
      descs.push({ address: buffer, length: writable, flags: 2 });
      buffer += writable;
    }
    this.#nextBuffer.set(queue, (buffer + 15) & ~15);
    // One chain per head slot: descriptors head*? would collide, so chains use [head, head + QSIZE/2).
    descs.forEach((d, i) => {
      const index = (head * 2 + i) % QSIZE;
      const at = base + index * 16;
      this.memory.writeU64(at, d.address);
      this.memory.writeU32(at + 8, d.length);
      this.memory.writeU16(at + 12, d.flags | (i < descs.length - 1 ? 1 : 0));
      this.memory.writeU16(at + 14, (index + 1) % QSIZE);
    });
    const first = (head * 2) % QSIZE;
    this.memory.writeU16(base + 0x1000 + 4 + 2 * (avail % QSIZE), first);
    this.#availIdx.set(queue, (avail + 1) & 0xffff);
    this.memory.writeU16(base + 0x1000 + 2, (avail + 1) & 0xffff);
    if (notify) this.write(VIRTIO_MMIO.queueNotify, queue);
    return first;
  }

  /** The used entries not seen yet: the bytes written into each chain's writable part. */
  used(queue: number): Uint8Array[] {
    const base = this.#area(queue);
    const out: Uint8Array[] = [];
    let seen = this.#usedSeen.get(queue) ?? 0;
    while (this.memory.readU16(base + 0x2000 + 2) !== seen) {
      const slot = base + 0x2000 + 4 + 8 * (seen % QSIZE);
      const head = this.memory.readU32(slot);
      const length = this.memory.readU32(slot + 4);
      // The writable descriptor is the last of the chain.
      let index = head;
      while (this.memory.readU16(base + index * 16 + 12) & 1) index = this.memory.readU16(base + index * 16 + 14);
      const address = Number(this.memory.readU64(base + index * 16));
      out.push(this.memory.read(address, length));
      seen = (seen + 1) & 0xffff;
    }
    this.#usedSeen.set(queue, seen);
    return out;
  }

  close(): void {
    this.memory.close();
  }
}
