/**
 * A PCI host bridge with configuration mechanism #1: the address register
 * at port 0xcf8 and the data window at 0xcfc-0xcff. As on QEMU's `pc`
 * machine, an i440FX host bridge answers at 00:00.0 (optional); every other
 * bus/device/function reads as all-ones ("no device", vendor 0xffff), and
 * writes to it are dropped.
 *
 * Byte accesses at 0xcf9 reach the PIIX reset control register instead of
 * the address register, as on QEMU's `pc` (hw/isa/piix.c): writing it with
 * bit 2 set resets the machine, the way Linux's `reboot=pci` does.
 *
 * @module
 */

import type { IoDevice } from "./bus.ts";
import { StateReader } from "./_state.ts";

/** Address-register bits. */
export const PCI_CONFIG_ADDRESS = {
  enable: 0x8000_0000,
} as const;

/** Offsets into the 8 ports from 0xcf8. */
const ADDRESS = 0;
const RESET_CONTROL = 1;
const DATA = 4;

const RCR_SYS_RST = 0x02;
const RCR_RST_CPU = 0x04;

/** The host bridge's identity: Intel 82441FX (i440FX PMC), as QEMU presents it. */
export const I440FX = {
  vendorId: 0x8086,
  deviceId: 0x1237,
  revision: 0x02,
  classCode: 0x060000, // bridge, host bridge
  subsystemVendorId: 0x1af4,
  subsystemId: 0x1100,
} as const;

/** Options for {@link PciHost}. */
export interface PciHostOptions {
  /** Whether an i440FX host bridge answers at 00:00.0 (default true). */
  hostBridge?: boolean;
  /** Called when the guest writes the reset control register (port 0xcf9) with bit 2 set. */
  onReset?: () => void;
}

/**
 * Snapshot of the host bridge's registers (plain JSON data). Which
 * functions are present is configuration ({@link PciHostOptions}): a state
 * restores only into a host with the same functions.
 */
export interface PciHostState {
  /** The address register as last written. */
  address: number;
  /** The reset control register at 0xcf9. */
  resetControl: number;
  /** Config space (256 bytes) of each present function, keyed by `bus:dev.fn` ("00:00.0"). */
  functions: Record<string, number[]>;
}

/**
 * A PCI function modelled outside the host (a virtio-pci device): it
 * answers its own config space, BAR sizing included. Its state is its own.
 */
export interface PciFunctionModel {
  /** Reads `size` bytes (1, 2, 4) of config space at `register`. */
  configRead(register: number, size: number): number;
  /** Writes `size` bytes of config space at `register`. */
  configWrite(register: number, size: number, value: number): void;
}

interface PciFunction {
  readonly config: Uint8Array;
  /** Bit set = writable by the guest. */
  readonly writeMask: Uint8Array;
}

function bdfName(bdf: number): string {
  const hex = (value: number, width: number) => value.toString(16).padStart(width, "0");
  return `${hex(bdf >> 8, 2)}:${hex((bdf >> 3) & 0x1f, 2)}.${bdf & 7}`;
}

function allOnes(size: number): number {
  return size >= 4 ? 0xffff_ffff : (1 << (size * 8)) - 1;
}

function i440fx(): PciFunction {
  const config = new Uint8Array(256);
  const view = new DataView(config.buffer);
  view.setUint16(0x00, I440FX.vendorId, true);
  view.setUint16(0x02, I440FX.deviceId, true);
  view.setUint16(0x04, 0x0006, true); // command: memory space, bus master
  view.setUint16(0x06, 0x0280, true); // status: fast back-to-back, medium DEVSEL
  config[0x08] = I440FX.revision;
  config[0x09] = I440FX.classCode & 0xff;
  config[0x0a] = (I440FX.classCode >> 8) & 0xff;
  config[0x0b] = I440FX.classCode >> 16;
  config[0x0e] = 0x00; // header type 0, single function
  view.setUint16(0x2c, I440FX.subsystemVendorId, true);
  view.setUint16(0x2e, I440FX.subsystemId, true);
  const writeMask = new Uint8Array(256);
  writeMask[0x04] = 0x07; // command: I/O, memory, bus master
  writeMask[0x0d] = 0xff; // latency timer
  writeMask.fill(0xff, 0x40); // chipset registers (PAM, SMRAM, DRB...): kept, with no effect
  return { config, writeMask };
}

/**
 * PCI configuration mechanism #1, placed at ports 0xcf8-0xcff (8 ports).
 *
 * @example
 * ```ts
 * import { PciHost } from "./pci_host.ts";
 * import assert from "node:assert/strict";
 * const pci = new PciHost();
 * pci.write(0, 4, 0x8000_0000); // bus 0, device 0, function 0, register 0
 * assert.equal(pci.read(4, 4), 0x1237_8086); // i440FX
 * pci.write(0, 4, 0x8000_0800); // device 1: nothing there
 * assert.equal(pci.read(4, 2), 0xffff);
 * ```
 */
export class PciHost implements IoDevice {
  readonly #functions = new Map<number, PciFunction>();
  readonly #models = new Map<number, PciFunctionModel>();
  readonly #onReset: (() => void) | undefined;
  #address = 0;
  #resetControl = 0;

  constructor(options: PciHostOptions = {}) {
    if (options.hostBridge ?? true) this.#functions.set(0, i440fx());
    this.#onReset = options.onReset;
  }

  /** Builds a host from `options` in `state`; throws as {@link PciHost.restore} does. */
  static fromState(state: PciHostState, options: PciHostOptions = {}): PciHost {
    const host = new PciHost(options);
    host.restore(state);
    return host;
  }

  /** A copy of the state (plain JSON data). */
  get state(): PciHostState {
    const functions: Record<string, number[]> = {};
    for (const [bdf, fn] of this.#functions) functions[bdfName(bdf)] = [...fn.config];
    return { address: this.#address, resetControl: this.#resetControl, functions };
  }

  /**
   * Puts the host in `state`: the latched address, the reset control and
   * every present function's config space. Throws a TypeError or RangeError
   * naming the bad field and its value, and changes nothing, when `state` is
   * not a valid state or lists other functions than this host has.
   */
  restore(state: PciHostState): void {
    const r = new StateReader("PCI host", state);
    const address = r.integer("address", 0, 0xffff_ffff, true);
    const resetControl = r.integer("resetControl", 0, 0xff, true);
    if ((resetControl & ~RCR_SYS_RST) !== 0) r.rangeError("resetControl", resetControl, "0 or 2 (SYS_RST)");
    const functions = r.object("functions");
    const present = new Map([...this.#functions.keys()].map((bdf) => [bdfName(bdf), bdf]));
    const configs = new Map<number, number[]>();
    for (const [name, bdf] of present) configs.set(bdf, functions.bytes(name, 256, 256));
    const extra = functions.keys().find((name) => !present.has(name));
    if (extra !== undefined) {
      r.refuse(
        `functions has ${JSON.stringify(extra)}, a function this host does not have (it has ${
          [...present.keys()].join(", ") || "none"
        })`,
      );
    }
    this.#address = address;
    this.#resetControl = resetControl;
    for (const [bdf, config] of configs) this.#functions.get(bdf)!.config.set(config);
  }

  /**
   * Puts a function modelled elsewhere at `bdf` (bus << 8 | device << 3 |
   * function). Throws a RangeError when the address is taken.
   */
  attach(bdf: number, model: PciFunctionModel): void {
    if (this.#functions.has(bdf) || this.#models.has(bdf)) {
      throw new RangeError(`Cannot attach a PCI function at ${bdfName(bdf)}: the address is taken`);
    }
    this.#models.set(bdf, model);
  }

  /** Offsets 0-3: the address register; 1 (byte): reset control; 4-7: the data window. */
  read(offset: number, size: number): number {
    if (offset < DATA) {
      if (offset === RESET_CONTROL && size === 1) return this.#resetControl;
      return ((this.#address >>> (offset * 8)) & allOnes(size)) >>> 0;
    }
    const model = this.#model();
    if (model !== undefined) return model.configRead((this.#address & 0xfc) + offset - DATA, size);
    const target = this.#target(offset - DATA);
    if (target === undefined) return allOnes(size);
    let value = 0;
    for (let i = size - 1; i >= 0; i--) value = (value * 256) + (target.fn.config[target.register + i] ?? 0xff);
    return value >>> 0;
  }

  /** Dword writes at offset 0 set the address; byte writes at 1 the reset control; 4-7 write config space. */
  write(offset: number, size: number, value: number): void {
    if (offset < DATA) {
      if (offset === ADDRESS && size === 4) {
        this.#address = value >>> 0;
      } else if (offset === RESET_CONTROL && size === 1) {
        this.#resetControl = value & RCR_SYS_RST;
        if ((value & RCR_RST_CPU) !== 0) this.#onReset?.();
      }
      return; // other partial writes to the address register are ignored, as on QEMU
    }
    const model = this.#model();
    if (model !== undefined) {
      model.configWrite((this.#address & 0xfc) + offset - DATA, size, value);
      return;
    }
    const target = this.#target(offset - DATA);
    if (target === undefined) return;
    const { config, writeMask } = target.fn;
    for (let i = 0; i < size && target.register + i < 256; i++) {
      const index = target.register + i;
      const mask = writeMask[index]!;
      const byte = (value >>> (i * 8)) & 0xff;
      config[index] = (config[index]! & ~mask) | (byte & mask);
    }
  }

  #model(): PciFunctionModel | undefined {
    const address = this.#address;
    if ((address & PCI_CONFIG_ADDRESS.enable) === 0 || this.#models.size === 0) return undefined;
    return this.#models.get((address >>> 8) & 0xffff);
  }

  /** The present function and register the address register selects, or undefined. */
  #target(lane: number): { fn: PciFunction; register: number } | undefined {
    const address = this.#address;
    if ((address & PCI_CONFIG_ADDRESS.enable) === 0) return undefined;
    const fn = this.#functions.get((address >>> 8) & 0xffff);
    if (fn === undefined) return undefined;
    return { fn, register: (address & 0xfc) + lane };
  }
}
