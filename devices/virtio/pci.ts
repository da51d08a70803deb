/**
 * The modern virtio-pci transport (virtio 1.2, section 4.1): a PCI
 * function on the host bridge with vendor capabilities pointing into one
 * 16 KiB memory BAR (common configuration, ISR, device configuration,
 * notifications). hvsh places the BAR itself (as firmware would) and
 * enables memory decoding; a guest that moves the BAR moves the window.
 *
 * Interrupts are INTx (pin A) on the line the platform gives, written in
 * the Interrupt Line register: no MSI-X, because the in-kernel irqchip
 * would need KVM_SIGNAL_MSI / GSI routing, which this design leaves for
 * later. Linux then uses the interrupt line (`acpi=off`), as it does for
 * QEMU's `-M pc` ("INT A on IRQ 10").
 *
 * @module
 */

import type { MmioBus, MmioDevice } from "../bus.ts";
import type { PciFunctionModel } from "../pci_host.ts";
import type { VirtioCore, VirtioCoreState } from "./device.ts";
import { StateReader } from "../_state.ts";

/** Size of BAR 0. */
export const VIRTIO_PCI_BAR_SIZE = 0x4000;
const COMMON = 0x0000;
const ISR = 0x1000;
const DEVICE = 0x2000;
const NOTIFY = 0x3000;
const NOTIFY_MULTIPLIER = 4;
const NO_VECTOR = 0xffff;

/** PCI class codes by device kind (QEMU's choices). */
const CLASS: Record<string, number> = {
  block: 0x01_0000,
  net: 0x02_0000,
  console: 0x07_8000,
  rng: 0x00_ff00,
  vsock: 0x00_ff00,
};

/** Capability types (4.1.4). */
export const VIRTIO_PCI_CAP = { common: 1, notify: 2, isr: 3, device: 4 } as const;

/** Options of {@link VirtioPci}. */
export interface VirtioPciOptions {
  /** BAR 0's address as hvsh places it. */
  bar: number;
  /** The INTx line (an ISA IRQ / GSI) for the Interrupt Line register. */
  irq: number;
  /** The bus the BAR's window goes on. */
  mmio: MmioBus;
  /** The name of the window on the bus. */
  name: string;
}

/** The function's own state: config space (256 bytes); the BAR window follows from it. */
export interface VirtioPciState extends VirtioCoreState {
  config: number[];
}

/**
 * One virtio-pci function.
 *
 * @example
 * ```ts ignore
 * vm.add(virtioBlock({ path: "disk.img" }), { transport: "pci" });
 * ```
 */
export class VirtioPci implements PciFunctionModel {
  readonly core: VirtioCore;
  readonly #config = new Uint8Array(256);
  readonly #mmio: MmioBus;
  readonly #name: string;
  readonly #window: MmioDevice;
  #placed: bigint | undefined;
  #barSizing = false;

  constructor(core: VirtioCore, options: VirtioPciOptions) {
    this.core = core;
    this.#mmio = options.mmio;
    this.#name = options.name;
    const c = new DataView(this.#config.buffer);
    const deviceId = core.device.deviceId;
    c.setUint16(0x00, 0x1af4, true);
    c.setUint16(0x02, 0x1040 + deviceId, true);
    c.setUint16(0x04, 0x0002, true); // memory space decoding on, as firmware leaves it
    c.setUint16(0x06, 0x0010, true); // capabilities list
    c.setUint8(0x08, 1); // revision 1: a modern-only device
    const classCode = CLASS[core.device.kind] ?? 0x00_ff00;
    c.setUint8(0x09, classCode & 0xff);
    c.setUint8(0x0a, (classCode >> 8) & 0xff);
    c.setUint8(0x0b, classCode >> 16);
    c.setUint32(0x10, options.bar, true); // 32-bit, non-prefetchable memory
    c.setUint16(0x2c, 0x1af4, true);
    c.setUint16(0x2e, deviceId, true);
    c.setUint8(0x34, 0x40);
    c.setUint8(0x3c, options.irq);
    c.setUint8(0x3d, 1); // INTA#
    const cap = (at: number, next: number, type: number, offset: number, length: number, extra = 0) => {
      c.setUint8(at, 0x09); // vendor-specific
      c.setUint8(at + 1, next);
      c.setUint8(at + 2, type === VIRTIO_PCI_CAP.notify ? 20 : 16);
      c.setUint8(at + 3, type);
      c.setUint8(at + 4, 0); // BAR 0
      c.setUint32(at + 8, offset, true);
      c.setUint32(at + 12, length, true);
      if (type === VIRTIO_PCI_CAP.notify) c.setUint32(at + 16, extra, true);
    };
    cap(0x40, 0x50, VIRTIO_PCI_CAP.common, COMMON, 0x40);
    cap(0x50, 0x60, VIRTIO_PCI_CAP.isr, ISR, 4);
    cap(0x60, 0x70, VIRTIO_PCI_CAP.device, DEVICE, Math.max(4, core.device.configSize));
    cap(0x70, 0x00, VIRTIO_PCI_CAP.notify, NOTIFY, NOTIFY_MULTIPLIER * core.queues.length, NOTIFY_MULTIPLIER);
    this.#window = {
      read: (offset, size) => this.#barRead(Number(offset), size),
      write: (o, s, v) => this.#barWrite(Number(o), s, v),
    };
    this.#place();
  }

  /** Where BAR 0 decodes now (undefined when memory decoding is off). */
  get barAddress(): number | undefined {
    return this.#placed === undefined ? undefined : Number(this.#placed);
  }

  #place(): void {
    const view = new DataView(this.#config.buffer);
    const enabled = (view.getUint16(0x04, true) & 0x2) !== 0;
    const base = BigInt((view.getUint32(0x10, true) & ~0xf) >>> 0);
    const want = enabled && !this.#barSizing && base !== 0n ? base : undefined;
    if (want === this.#placed) return;
    if (this.#placed !== undefined) this.#mmio.remove(this.#name);
    this.#placed = undefined;
    if (want !== undefined) {
      try {
        this.#mmio.insert(want, BigInt(VIRTIO_PCI_BAR_SIZE), this.#name, this.#window);
        this.#placed = want;
      } catch {
        // A guest that moves the BAR over another device gets no window there, as on hardware with a conflict.
      }
    }
  }

  configRead(register: number, size: number): number {
    let value = 0;
    for (let i = size - 1; i >= 0; i--) value = value * 256 + (this.#config[register + i] ?? 0xff);
    return value >>> 0;
  }

  configWrite(register: number, size: number, value: number): void {
    for (let i = 0; i < size; i++) {
      const at = register + i;
      const byte = (value >>> (8 * i)) & 0xff;
      if (at === 0x04) this.#config[at] = byte & 0x07; // I/O, memory, bus master
      else if (at === 0x05) this.#config[at] = byte & 0x04; // INTx disable
      else if (at >= 0x10 && at < 0x14) this.#writeBar(at - 0x10, byte);
      else if (at === 0x3c) this.#config[at] = byte;
    }
    this.#place();
  }

  #writeBar(byteIndex: number, byte: number): void {
    const mask = ~(VIRTIO_PCI_BAR_SIZE - 1) >>> 0;
    const view = new DataView(this.#config.buffer);
    const bytes = new Uint8Array(4);
    new DataView(bytes.buffer).setUint32(0, view.getUint32(0x10, true), true);
    bytes[byteIndex] = byte;
    const written = new DataView(bytes.buffer).getUint32(0, true);
    // Sizing writes all-ones and reads back the size mask; the window is off meanwhile.
    this.#barSizing = written === 0xffff_ffff;
    view.setUint32(0x10, (written & mask) >>> 0, true);
  }

  #barRead(offset: number, size: number): bigint {
    const core = this.core;
    if (offset >= COMMON && offset < COMMON + 0x40) return BigInt(this.#commonRead(offset - COMMON, size));
    if (offset === ISR) {
      const status = core.interruptStatus;
      core.acknowledge(status); // reading the ISR clears it and lowers INTx (4.1.4.5)
      return BigInt(status);
    }
    if (offset >= DEVICE && offset < DEVICE + core.device.configSize) {
      const at = offset - DEVICE;
      if (at + size > core.device.configSize || size > 4) return 0n;
      return BigInt(core.device.readConfig(at, size) >>> 0);
    }
    return 0n;
  }

  #barWrite(offset: number, size: number, value: bigint): void {
    const core = this.core;
    if (offset >= COMMON && offset < COMMON + 0x40) {
      if (size === 8) {
        this.#commonWrite(offset - COMMON, 4, Number(value & 0xffff_ffffn));
        this.#commonWrite(offset - COMMON + 4, 4, Number(value >> 32n));
      } else {
        this.#commonWrite(offset - COMMON, size, Number(value));
      }
      return;
    }
    if (offset >= DEVICE && offset < DEVICE + core.device.configSize) {
      if (size <= 4) core.device.writeConfig(offset - DEVICE, size, Number(value));
      return;
    }
    if (offset >= NOTIFY && offset < NOTIFY + NOTIFY_MULTIPLIER * core.queues.length) {
      core.notify((offset - NOTIFY) / NOTIFY_MULTIPLIER | 0);
    }
  }

  #commonRead(at: number, size: number): number {
    const core = this.core;
    const queue = core.selectedQueue;
    const half = (value: number, high: boolean) => high ? Math.floor(value / 2 ** 32) : value % 2 ** 32;
    switch (at) {
      case 0:
        return core.deviceFeatureSelect;
      case 4:
        return core.readDeviceFeatures();
      case 8:
        return core.driverFeatureSelect;
      case 12:
        return Number((core.driverFeatures >> BigInt(32 * core.driverFeatureSelect)) & 0xffff_ffffn);
      case 16:
        return NO_VECTOR;
      case 18:
        return core.queues.length;
      case 20:
        return size === 1 ? core.status : core.status | (core.configGeneration << 8);
      case 21:
        return core.configGeneration;
      case 22:
        return core.queueSelect;
      case 24:
        return queue?.size ?? 0;
      case 26:
        return NO_VECTOR;
      case 28:
        return queue?.ready ? 1 : 0;
      case 30:
        return core.queueSelect; // queue_notify_off: queue N notifies at N * multiplier
      case 32:
      case 36:
        return queue === undefined ? 0 : half(queue.descTable, at === 36);
      case 40:
      case 44:
        return queue === undefined ? 0 : half(queue.driverArea, at === 44);
      case 48:
      case 52:
        return queue === undefined ? 0 : half(queue.deviceArea, at === 52);
      default:
        return 0;
    }
  }

  #commonWrite(at: number, _size: number, value: number): void {
    const core = this.core;
    const queue = core.selectedQueue;
    const setHalf = (current: number, high: boolean) => {
      const low = current % 2 ** 32;
      const hi = Math.floor(current / 2 ** 32);
      return high ? (value >>> 0) * 2 ** 32 + low : hi * 2 ** 32 + (value >>> 0);
    };
    switch (at) {
      case 0:
        core.deviceFeatureSelect = value >>> 0;
        return;
      case 8:
        core.driverFeatureSelect = value >>> 0;
        return;
      case 12:
        core.writeDriverFeatures(value);
        return;
      case 20:
        core.writeStatus(value & 0xff);
        return;
      case 22:
        core.queueSelect = value & 0xffff;
        return;
      case 24:
        if (queue !== undefined && !queue.ready) queue.size = value & 0xffff;
        return;
      case 28:
        core.setQueueReady(core.queueSelect, (value & 1) === 1);
        return;
      case 32:
      case 36:
        if (queue !== undefined && !queue.ready) queue.descTable = setHalf(queue.descTable, at === 36);
        return;
      case 40:
      case 44:
        if (queue !== undefined && !queue.ready) queue.driverArea = setHalf(queue.driverArea, at === 44);
        return;
      case 48:
      case 52:
        if (queue !== undefined && !queue.ready) queue.deviceArea = setHalf(queue.deviceArea, at === 52);
        return;
    }
  }

  /** A copy of the state (plain JSON data): the function's config space and the virtio state. */
  get state(): VirtioPciState {
    return { ...this.core.state, config: [...this.#config] };
  }

  /** Restores {@link state}; the BAR window follows the restored config space. */
  restore(state: VirtioPciState): void {
    const config = new StateReader(this.core.name, state).bytes("config", 256, 256);
    this.core.restore(state);
    this.#config.set(config);
    this.#barSizing = false;
    this.#place();
  }
}
