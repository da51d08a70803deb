/**
 * QEMU's firmware configuration device (fw_cfg) on its x86 I/O ports, as
 * docs/specs/fw_cfg.rst in qemu/qemu specifies it: a 16-bit selector at
 * port 0x510, a byte-wide data port at 0x511 that streams the selected item
 * (0 past its end), and the optional DMA interface at 0x514-0x51b.
 *
 * kvm-unit-tests (lib/x86/fwcfg.c) reads its CPU count, RAM size and memory
 * limit here: an OUT of the key to 0x510, then byte INs from 0x511.
 *
 * @module
 */

import type { IoDevice } from "./bus.ts";
import { StateReader } from "./_state.ts";

/** Selector keys with a fixed meaning (QEMU's include/standard-headers/linux/qemu_fw_cfg.h). */
export const FW_CFG_KEY = {
  signature: 0x00,
  id: 0x01,
  uuid: 0x02,
  ramSize: 0x03,
  noGraphic: 0x04,
  nbCpus: 0x05,
  machineId: 0x06,
  kernelAddr: 0x07,
  kernelSize: 0x08,
  kernelCmdline: 0x09,
  initrdAddr: 0x0a,
  initrdSize: 0x0b,
  bootDevice: 0x0c,
  numa: 0x0d,
  bootMenu: 0x0e,
  maxCpus: 0x0f,
  kernelEntry: 0x10,
  /**
   * QEMU's kernel image; kvm-unit-tests reads this key as a u64 memory limit
   * ("FW_CFG_MAX_RAM", 0 = none). Left empty, so it reads 0.
   */
  kernelData: 0x11,
  initrdData: 0x12,
  cmdlineAddr: 0x13,
  cmdlineSize: 0x14,
  cmdlineData: 0x15,
  setupAddr: 0x16,
  setupSize: 0x17,
  setupData: 0x18,
  fileDir: 0x19,
  /** The first key of the items listed in the file directory. */
  fileFirst: 0x20,
  /** Bit 14: write channel (ignored; all items read-only through the ports). */
  writeChannel: 0x4000,
  /** Bit 15: architecture-specific keys. */
  archLocal: 0x8000,
  /** x86: whether ISA IRQ 0 is routed to IOAPIC pin 2 (u32). */
  irq0Override: 0x8002,
} as const;

/** Where the device's registers sit on x86. */
export const FW_CFG_PORTS = {
  /** Selector (offset 0, 16-bit writes) and data (offset 1, bytes): 2 ports. */
  io: 0x510,
  ioCount: 2,
  /** DMA address register, big-endian: 8 ports. */
  dma: 0x514,
  dmaCount: 8,
} as const;

/** FWCfgDmaAccess control bits. */
export const FW_CFG_DMA = {
  error: 0x01,
  read: 0x02,
  skip: 0x04,
  select: 0x08,
  write: 0x10,
} as const;

/** "QEMU CFG", what the DMA address register reads as. */
const DMA_SIGNATURE = new TextEncoder().encode("QEMU CFG");
const FILE_NAME_LENGTH = 56;
const FILE_ENTRY_SIZE = 64;

/** Guest memory as the DMA interface sees it. */
export interface FwCfgMemory {
  /** Reads `length` bytes at a guest physical address; throws when it is not RAM. */
  read(address: bigint, length: number): Uint8Array;
  /** Writes bytes at a guest physical address; throws when it is not RAM. */
  write(address: bigint, bytes: Uint8Array): void;
}

/** Options for {@link FwCfg}. */
export interface FwCfgOptions {
  /** Guest RAM in bytes (key 0x03, u64). */
  ramSize: number | bigint;
  /** CPUs present at boot (key 0x05, u16); a kernel waits for this many APs-plus-one. */
  cpus: number;
  /** CPUs possible (key 0x0f, u16); default `cpus`. */
  maxCpus?: number;
  /** Kernel command line (keys 0x14 size with the NUL, 0x15 data). */
  cmdline?: string;
  /** Where the loader put the command line in guest memory (key 0x13). */
  cmdlineAddress?: number;
  /** Initial ramdisk (keys 0x0b size, 0x12 data). */
  initrd?: Uint8Array;
  /** Where the loader put the initrd in guest memory (key 0x0a). */
  initrdAddress?: number;
  /** Whether ISA IRQ 0 is routed to IOAPIC pin 2 (key 0x8002; default true, as QEMU). */
  irq0Override?: boolean;
  /** Guest memory for the DMA interface; without it there is none (ID bit 1 clear, {@link FwCfg.dmaPort} undefined). */
  memory?: FwCfgMemory;
}

/** One entry of the file directory (key 0x19). */
export interface FwCfgFile {
  name: string;
  select: number;
  size: number;
}

/**
 * Snapshot of the device's registers (plain JSON data), as QEMU migrates
 * fw_cfg: the selection, the read position and the DMA address register.
 * The items are configuration, not state: restore into an FwCfg built with
 * the same options and files. A DMA transfer completes within the write that
 * starts it, so none is ever in flight.
 */
export interface FwCfgState {
  /** The selected key as written (0xffff: nothing). */
  selector: number;
  /** The data offset within the selected item. */
  offset: number;
  /**
   * The DMA address register as `0x` and 16 hex digits (a u64 does not fit a
   * JSON number): after the guest wrote only its high half, that half waits
   * here for the low one.
   */
  dmaAddress: string;
}

function u16(value: number): Uint8Array {
  const bytes = new Uint8Array(2);
  new DataView(bytes.buffer).setUint16(0, value, true);
  return bytes;
}

function u32(value: number): Uint8Array {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, value >>> 0, true);
  return bytes;
}

function u64(value: number | bigint): Uint8Array {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(value), true);
  return bytes;
}

function checkCount(what: string, value: number): void {
  if (!Number.isInteger(value) || value < 1 || value > 0xffff) {
    throw new RangeError(`Cannot build fw_cfg: ${what} ${value} is not in 1-65535`);
  }
}

/**
 * The fw_cfg device: place it at port 0x510 (2 ports) and, when it has
 * guest memory, {@link FwCfg.dmaPort} at 0x514 (8 ports).
 *
 * @example
 * ```ts
 * import { FwCfg } from "./fw_cfg.ts";
 * import assert from "node:assert/strict";
 * const fwcfg = new FwCfg({ ramSize: 64 << 20, cpus: 2 });
 * fwcfg.write(0, 2, 0x05); // select NB_CPUS
 * assert.equal(fwcfg.read(1, 1) | (fwcfg.read(1, 1) << 8), 2);
 * fwcfg.addFile("etc/hello", new TextEncoder().encode("hi"));
 * assert.deepEqual(fwcfg.files, [{ name: "etc/hello", select: 0x20, size: 2 }]);
 * ```
 */
export class FwCfg implements IoDevice {
  readonly #items = new Map<number, Uint8Array>();
  readonly #files: FwCfgFile[] = [];
  readonly #memory: FwCfgMemory | undefined;
  #selector = 0xffff;
  #current: Uint8Array | undefined;
  #offset = 0;
  #dmaRegister = new Uint8Array(8);

  /** The DMA address register (0x514-0x51b), or undefined without guest memory. */
  readonly dmaPort: IoDevice | undefined;

  constructor(options: FwCfgOptions) {
    checkCount("CPU count", options.cpus);
    const maxCpus = options.maxCpus ?? options.cpus;
    checkCount("maximum CPU count", maxCpus);
    if (maxCpus < options.cpus) {
      throw new RangeError(`Cannot build fw_cfg: maximum CPU count ${maxCpus} is below the CPU count ${options.cpus}`);
    }
    if (BigInt(options.ramSize) < 0n) {
      throw new RangeError(`Cannot build fw_cfg: RAM size ${options.ramSize} is negative`);
    }
    this.#memory = options.memory;
    this.#items.set(FW_CFG_KEY.signature, new TextEncoder().encode("QEMU"));
    this.#items.set(FW_CFG_KEY.id, u32(options.memory !== undefined ? 0x3 : 0x1));
    this.#items.set(FW_CFG_KEY.ramSize, u64(options.ramSize));
    this.#items.set(FW_CFG_KEY.nbCpus, u16(options.cpus));
    this.#items.set(FW_CFG_KEY.maxCpus, u16(maxCpus));
    this.#items.set(FW_CFG_KEY.irq0Override, u32((options.irq0Override ?? true) ? 1 : 0));
    if (options.cmdline !== undefined) {
      const data = new TextEncoder().encode(`${options.cmdline}\0`);
      this.#items.set(FW_CFG_KEY.cmdlineSize, u32(data.length));
      this.#items.set(FW_CFG_KEY.cmdlineData, data);
      if (options.cmdlineAddress !== undefined) this.#items.set(FW_CFG_KEY.cmdlineAddr, u32(options.cmdlineAddress));
    }
    if (options.initrd !== undefined) {
      this.#items.set(FW_CFG_KEY.initrdSize, u32(options.initrd.length));
      this.#items.set(FW_CFG_KEY.initrdData, options.initrd.slice());
      if (options.initrdAddress !== undefined) this.#items.set(FW_CFG_KEY.initrdAddr, u32(options.initrdAddress));
    }
    this.dmaPort = options.memory === undefined ? undefined : {
      read: (offset, size) => this.#readDma(offset, size),
      write: (offset, size, value) => this.#writeDma(offset, size, value),
    };
  }

  /** The file directory's entries, in selector order. */
  get files(): FwCfgFile[] {
    return this.#files.map((file) => ({ ...file }));
  }

  /**
   * Builds the device from `options` in `state`; throws as
   * {@link FwCfg.restore} does. Add the files again before restoring a
   * selection of one of them.
   */
  static fromState(state: FwCfgState, options: FwCfgOptions): FwCfg {
    const fwCfg = new FwCfg(options);
    fwCfg.restore(state);
    return fwCfg;
  }

  /** A copy of the register state (plain JSON data). */
  get state(): FwCfgState {
    return {
      selector: this.#selector,
      offset: this.#offset,
      dmaAddress: `0x${this.#dmaAddress().toString(16).padStart(16, "0")}`,
    };
  }

  /**
   * Puts the registers in `state`: the selection (of this device's item at
   * that key), the read position within it and the DMA address register.
   * Throws a TypeError or RangeError naming the bad field and its value, and
   * changes nothing, when `state` is not a valid state.
   */
  restore(state: FwCfgState): void {
    const r = new StateReader("fw_cfg", state);
    const selector = r.integer("selector", 0, 0xffff, true);
    const offset = r.integer("offset", 0, 0xffff_ffff);
    const dmaText = r.string("dmaAddress");
    if (!/^0x[0-9a-fA-F]{1,16}$/.test(dmaText)) r.rangeError("dmaAddress", dmaText, "0x and 1-16 hex digits");
    if (BigInt(dmaText) !== 0n && this.#memory === undefined) {
      r.rangeError("dmaAddress", dmaText, "0x0: this fw_cfg has no DMA interface");
    }
    this.#select(selector);
    this.#offset = offset;
    new DataView(this.#dmaRegister.buffer).setBigUint64(0, BigInt(dmaText), false);
  }

  /** An item's bytes (a copy), or undefined when the key has none. */
  item(key: number): Uint8Array | undefined {
    return this.#items.get(key & ~FW_CFG_KEY.writeChannel)?.slice();
  }

  /**
   * Sets (or replaces) the item at `key`. Keys 0x19 (the directory) and
   * 0x20-0x3fff (files: use {@link FwCfg.addFile}) are refused with a RangeError.
   */
  setItem(key: number, data: Uint8Array): void {
    if (!Number.isInteger(key) || key < 0 || key > 0xffff || (key & FW_CFG_KEY.writeChannel) !== 0) {
      throw new RangeError(`Cannot set fw_cfg item ${key}: not a key in 0-0x3fff or 0x8000-0xbfff`);
    }
    if (key === FW_CFG_KEY.fileDir || (key >= FW_CFG_KEY.fileFirst && key < FW_CFG_KEY.writeChannel)) {
      throw new RangeError(
        `Cannot set fw_cfg item 0x${key.toString(16)}: it is the file directory or a file key; use addFile()`,
      );
    }
    this.#items.set(key, data.slice());
    this.#refreshSelection(key);
  }

  /**
   * Adds a named file (such as "etc/acpi/tables") to the directory and
   * returns its selector (0x20 for the first, then up). Throws a RangeError
   * for an empty, too long (over 55 bytes) or duplicate name.
   */
  addFile(name: string, data: Uint8Array): number {
    const length = new TextEncoder().encode(name).length;
    if (length === 0 || length >= FILE_NAME_LENGTH) {
      throw new RangeError(
        `Cannot add fw_cfg file ${JSON.stringify(name)}: its name is ${length} bytes (1-55 allowed)`,
      );
    }
    if (this.#files.some((file) => file.name === name)) {
      throw new RangeError(`Cannot add fw_cfg file ${JSON.stringify(name)}: a file of that name exists`);
    }
    const select = FW_CFG_KEY.fileFirst + this.#files.length;
    if (select >= FW_CFG_KEY.writeChannel) {
      throw new RangeError(`Cannot add fw_cfg file ${JSON.stringify(name)}: no key left`);
    }
    this.#files.push({ name, select, size: data.length });
    this.#items.set(select, data.slice());
    this.#items.set(FW_CFG_KEY.fileDir, this.#directory());
    this.#refreshSelection(select);
    this.#refreshSelection(FW_CFG_KEY.fileDir);
    return select;
  }

  /** Offset 1 reads the next byte of the selected item (0 past its end); offset 0 reads 0. */
  read(offset: number, size: number): number {
    if (offset !== 1 || size !== 1) return 0;
    const data = this.#current;
    if (data === undefined || this.#offset >= data.length) return 0;
    return data[this.#offset++]!;
  }

  /** A 16-bit write at offset 0 selects an item and rewinds; data-port writes are ignored (QEMU ≥ 2.4). */
  write(offset: number, size: number, value: number): void {
    if (offset === 0 && size === 2) this.#select(value & 0xffff);
  }

  #select(selector: number): void {
    this.#selector = selector;
    this.#offset = 0;
    this.#current = this.#items.get(selector & ~FW_CFG_KEY.writeChannel);
  }

  /** Keeps the selected item's bytes current when it is replaced. */
  #refreshSelection(key: number): void {
    if ((this.#selector & ~FW_CFG_KEY.writeChannel) === key) this.#current = this.#items.get(key);
  }

  #directory(): Uint8Array {
    const bytes = new Uint8Array(4 + FILE_ENTRY_SIZE * this.#files.length);
    const view = new DataView(bytes.buffer);
    view.setUint32(0, this.#files.length, false);
    const encoder = new TextEncoder();
    this.#files.forEach((file, i) => {
      const at = 4 + FILE_ENTRY_SIZE * i;
      view.setUint32(at, file.size, false);
      view.setUint16(at + 4, file.select, false);
      bytes.set(encoder.encode(file.name), at + 8);
    });
    return bytes;
  }

  #dmaAddress(): bigint {
    return new DataView(this.#dmaRegister.buffer).getBigUint64(0, false);
  }

  /** Reads of the DMA register return "QEMU CFG", byte for byte. */
  #readDma(offset: number, size: number): number {
    let value = 0;
    for (let i = size - 1; i >= 0; i--) value = value * 256 + (DMA_SIGNATURE[offset + i] ?? 0);
    return value >>> 0;
  }

  /**
   * The register is big-endian: the bytes an OUT puts at 0x514 + k are bytes
   * k.. of the address, most significant first. A write that reaches the low
   * half (0x518) starts the transfer, then the register reads back 0.
   */
  #writeDma(offset: number, size: number, value: number): void {
    for (let i = 0; i < size && offset + i < 8; i++) this.#dmaRegister[offset + i] = (value >>> (i * 8)) & 0xff;
    if (offset + size <= 4) return; // only the high half: wait for the low one
    const address = this.#dmaAddress();
    this.#dmaRegister.fill(0);
    this.#runDma(address);
  }

  #runDma(descriptor: bigint): void {
    const memory = this.#memory!;
    let control: number;
    let length: number;
    let address: bigint;
    try {
      const view = new DataView(memory.read(descriptor, 16).slice().buffer);
      control = view.getUint32(0, false);
      length = view.getUint32(4, false);
      address = view.getBigUint64(8, false);
    } catch {
      return; // the descriptor is not in RAM: nothing to report back to
    }
    if ((control & FW_CFG_DMA.select) !== 0) this.#select(control >>> 16);
    const mode = (control & FW_CFG_DMA.read) !== 0
      ? "read"
      : (control & FW_CFG_DMA.write) !== 0
      ? "write"
      : (control & FW_CFG_DMA.skip) !== 0
      ? "skip"
      : "none";
    let result = 0;
    if (mode === "write" && length > 0) {
      result = FW_CFG_DMA.error; // every item is read-only
    } else if ((mode === "read" || mode === "skip") && length > 0) {
      const data = this.#current ?? new Uint8Array(0);
      const available = Math.max(data.length - this.#offset, 0);
      const copied = Math.min(length, available);
      if (mode === "read") {
        const out = new Uint8Array(length); // past the item's end, zeros
        out.set(data.subarray(this.#offset, this.#offset + copied));
        try {
          memory.write(address, out);
        } catch {
          result = FW_CFG_DMA.error;
        }
      }
      if (result === 0) this.#offset += copied;
    }
    try {
      const status = new Uint8Array(4);
      new DataView(status.buffer).setUint32(0, result, false);
      memory.write(descriptor, status);
    } catch {
      // the descriptor vanished between reading and completing: nothing to report back to
    }
  }
}
