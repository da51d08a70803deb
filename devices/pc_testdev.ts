/**
 * QEMU's `pc-testdev` (hw/misc/pc-testdev.c in qemu/qemu), the helper device
 * kvm-unit-tests expects on x86. Behaviour as QEMU implements it:
 *
 * | where | size | what |
 * | --- | --- | --- |
 * | ports 0xe0-0xe3 | any | a 32-bit scratch register; an access of N bytes at 0xe0 + k reads or writes bytes k..k+N-1 of it (bits past bit 31 are dropped) |
 * | ports 0xe4-0xe7 | dword writes | "flush page": the value written is a guest physical address; QEMU unmaps and remaps that 4 KiB page (mprotect PROT_NONE then read/write) so the next guest access faults afresh. Reads 0; other sizes are ignored |
 * | ports 0xe8-0xeb | any | the same scratch register as 0xe0-0xe3, accessed byte by byte (QEMU splits wider accesses, which gives the same result) |
 * | ports 0x2000-0x2017 | byte writes | writing V to 0x2000 + n sets ISA IRQ line n to `V != 0`; reads 0; other sizes are ignored |
 * | MMIO 0xff000000-0xff00ffff | any | 64 KiB of scratch RAM, little-endian |
 *
 * The model exposes one bus adapter per range: {@link PcTestDev.ports}
 * (0xe0, 12 ports), {@link PcTestDev.irqPorts} (0x2000, 24 ports) and
 * {@link PcTestDev.iomem} (0xff000000, 64 KiB).
 *
 * @module
 */

import type { IoDevice, MmioDevice } from "./bus.ts";
import { StateReader, toBase64 } from "./_state.ts";

/** Where QEMU places the device's ranges. */
export const PC_TESTDEV = {
  /** Scratch (0xe0), flush page (0xe4), byte-wise scratch (0xe8): 12 ports. */
  ports: 0xe0,
  portCount: 12,
  /** IRQ lines: 24 ports. */
  irqPorts: 0x2000,
  irqPortCount: 24,
  /** Scratch RAM. */
  iomem: 0xff00_0000n,
  iomemSize: 0x1_0000n,
} as const;

const SCRATCH = 0x0;
const FLUSH = 0x4;
const SCRATCH_BYTES = 0x8;
const PAGE_MASK = ~0xfff;
const IRQ_LINES = 24;

/** Options for {@link PcTestDev}. */
export interface PcTestDevOptions {
  /**
   * Called with the page address (`value & ~0xfff`) of each dword written to
   * port 0xe4; the VM should make the next guest access to that page fault
   * again (QEMU re-protects the host mapping).
   */
  flushPage?: (address: number) => void;
  /** Raises (`true`) or lowers an ISA IRQ line n (0-23) for each byte written to port 0x2000 + n. */
  setIrq?: (irq: number, level: boolean) => void;
}

/** Snapshot of the device (plain JSON data). */
export interface PcTestDevState {
  /** The 32-bit scratch register. */
  scratch: number;
  /** The 64 KiB scratch RAM, as base64. */
  iomem: string;
  /** The IRQ lines the guest left raised through ports 0x2000-0x2017: bit n = ISA IRQ n. */
  irqLevels: number;
}

function mask(bits: number): number {
  return bits >= 32 ? 0xffff_ffff : (2 ** bits) - 1;
}

/**
 * QEMU's pc-testdev.
 *
 * @example
 * ```ts
 * import { PcTestDev } from "./pc_testdev.ts";
 * import assert from "node:assert/strict";
 * const raised: number[] = [];
 * const dev = new PcTestDev({ setIrq: (irq, level) => level && raised.push(irq) });
 * dev.ports.write(0, 2, 0x9999); // outw to 0xe0
 * assert.equal(dev.ports.read(1, 1), 0x99); // inb from 0xe1
 * dev.irqPorts.write(0x0e, 1, 1); // outb 1 to 0x200e
 * assert.deepEqual(raised, [14]);
 * ```
 */
export class PcTestDev {
  readonly #options: PcTestDevOptions;
  readonly #iomem = new Uint8Array(Number(PC_TESTDEV.iomemSize));
  #scratch = 0;
  #irqLevels = 0;

  /** Ports 0xe0-0xeb: scratch, flush page, byte-wise scratch. */
  readonly ports: IoDevice;
  /** Ports 0x2000-0x2017: IRQ lines 0-23. */
  readonly irqPorts: IoDevice;
  /** MMIO 0xff000000-0xff00ffff: scratch RAM. */
  readonly iomem: MmioDevice;

  constructor(options: PcTestDevOptions = {}) {
    this.#options = options;
    this.ports = {
      read: (offset, size) => this.#readPort(offset, size),
      write: (offset, size, value) => this.#writePort(offset, size, value),
    };
    this.irqPorts = {
      read: () => 0,
      write: (offset, size, value) => {
        if (size !== 1 || offset >= IRQ_LINES) return;
        const level = (value & 0xff) !== 0;
        this.#irqLevels = level ? this.#irqLevels | (1 << offset) : this.#irqLevels & ~(1 << offset);
        this.#options.setIrq?.(offset, level);
      },
    };
    this.iomem = {
      read: (offset, size) => this.#readIomem(offset, size),
      write: (offset, size, value) => this.#writeIomem(offset, size, value),
    };
  }

  /** The 32-bit scratch register behind ports 0xe0-0xe3 and 0xe8-0xeb. */
  get scratch(): number {
    return this.#scratch;
  }

  /** Builds the device from `options` in `state`; throws as {@link PcTestDev.restore} does. */
  static fromState(state: PcTestDevState, options: PcTestDevOptions = {}): PcTestDev {
    const device = new PcTestDev(options);
    device.restore(state);
    return device;
  }

  /** A copy of the state (plain JSON data). */
  get state(): PcTestDevState {
    return { scratch: this.#scratch, iomem: toBase64(this.#iomem), irqLevels: this.#irqLevels };
  }

  /**
   * Puts the device in `state`. Each IRQ line the state has raised is raised
   * again (even if already raised here, so a line a new interrupt controller
   * lost comes back); a line this device had raised and the state has not is
   * lowered. Throws a TypeError or RangeError naming the bad field and its
   * value, and changes nothing, when `state` is not a valid state.
   */
  restore(state: PcTestDevState): void {
    const r = new StateReader("pc-testdev", state);
    const scratch = r.integer("scratch", 0, 0xffff_ffff, true);
    const iomem = r.base64("iomem", this.#iomem.length, this.#iomem.length);
    const irqLevels = r.integer("irqLevels", 0, 2 ** IRQ_LINES - 1, true);
    const wasRaised = this.#irqLevels;
    this.#scratch = scratch;
    this.#iomem.set(iomem);
    this.#irqLevels = irqLevels;
    for (let irq = 0; irq < IRQ_LINES; irq++) {
      const bit = 1 << irq;
      if ((irqLevels & bit) !== 0) this.#options.setIrq?.(irq, true);
      else if ((wasRaised & bit) !== 0) this.#options.setIrq?.(irq, false);
    }
  }

  #readPort(offset: number, size: number): number {
    if (offset >= FLUSH && offset < SCRATCH_BYTES) return 0;
    const shift = (offset & 3) * 8;
    return (Math.floor(this.#scratch / 2 ** shift) & mask(size * 8)) >>> 0;
  }

  #writePort(offset: number, size: number, value: number): void {
    if (offset >= FLUSH && offset < SCRATCH_BYTES) {
      if (offset === FLUSH && size === 4) this.#options.flushPage?.((value & PAGE_MASK) >>> 0);
      return;
    }
    if (offset < SCRATCH || offset >= SCRATCH_BYTES + 4) return;
    const shift = (offset & 3) * 8;
    const bits = mask(size * 8);
    const lanes = (bits * 2 ** shift) % 2 ** 32; // the lanes written, dropping those past bit 31
    const data = ((value & bits) * 2 ** shift) % 2 ** 32;
    this.#scratch = ((this.#scratch & ~lanes) | data) >>> 0;
  }

  #readIomem(offset: bigint, size: number): bigint {
    const start = Number(offset);
    let value = 0n;
    for (let i = size - 1; i >= 0; i--) value = (value << 8n) | BigInt(this.#iomem[start + i] ?? 0);
    return value;
  }

  #writeIomem(offset: bigint, size: number, value: bigint): void {
    const start = Number(offset);
    for (let i = 0; i < size && start + i < this.#iomem.length; i++) {
      this.#iomem[start + i] = Number((value >> BigInt(i * 8)) & 0xffn);
    }
  }
}
