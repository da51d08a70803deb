/**
 * Places virtio back ends on a machine: a virtio-mmio window or a PCI
 * function, an interrupt line, a name; and says how a kernel finds them
 * (`virtio_mmio.device=` parameters, ACPI DSDT entries). The addresses and
 * lines come from the platform's layout table (core/platform.ts
 * `PC_LAYOUT.virtio`), never from here.
 *
 * @module
 */

import type { Machine } from "../../core/machine.ts";
import type { BusDispatch } from "../../core/bus_dispatch.ts";
import type { PciHost } from "../pci_host.ts";
import { VirtioCore, type VirtioDevice } from "./device.ts";
import { mmioKernelParameter, VIRTIO_MMIO_SIZE, VirtioMmio } from "./mmio.ts";
import { VIRTIO_PCI_BAR_SIZE, VirtioPci } from "./pci.ts";

/** Where virtio devices may go (the platform's table gives it). */
export interface VirtioLayout {
  /** The first virtio-mmio window, and how many follow it (512 bytes apart). */
  mmio: { address: number; count: number };
  /** Interrupt lines (GSIs) handed out in order, one per device, whatever its transport. */
  gsis: readonly number[];
  /** PCI: the first device number on bus 0, and where BAR 0 of each function goes (one 16 KiB window each). */
  pci: { firstDevice: number; barBase: number; count: number };
}

/** The transport a device goes on. */
export type VirtioTransport = "mmio" | "pci";

/** Options of {@link VirtioSlots.add}. */
export interface VirtioAddOptions {
  /** `"mmio"` (default) or `"pci"`. */
  transport?: VirtioTransport;
  /** Where the one line about a device gone to NEEDS_RESET goes (default console.error). */
  log?: (line: string) => void;
}

/** One placed device. */
export interface VirtioSlot {
  /** "vda", "net0", "hvc", "rng0", "vsock0". */
  readonly name: string;
  readonly transport: VirtioTransport;
  readonly device: VirtioDevice;
  readonly core: VirtioCore;
  /** The interrupt line (GSI; an ISA IRQ number). */
  readonly gsi: number;
  /** The virtio-mmio window, for mmio devices. */
  readonly mmio?: { base: number; size: number };
  /** The PCI function (bus 0) and its BAR 0, for PCI devices. */
  readonly pci?: { device: number; function: VirtioPci };
}

const KIND_PREFIX: Record<string, string> = { block: "vd", net: "net", console: "hvc", rng: "rng", vsock: "vsock" };

/** The virtio devices of one machine. */
export class VirtioSlots {
  readonly #machine: Machine;
  readonly #buses: BusDispatch;
  readonly #pciHost: PciHost | undefined;
  readonly #layout: VirtioLayout;
  readonly #onChange: () => void;
  readonly #slots: VirtioSlot[] = [];

  constructor(
    machine: Machine,
    buses: BusDispatch,
    pciHost: PciHost | undefined,
    layout: VirtioLayout,
    onChange: () => void,
  ) {
    this.#machine = machine;
    this.#buses = buses;
    this.#pciHost = pciHost;
    this.#layout = layout;
    this.#onChange = onChange;
  }

  /** The devices placed so far. */
  get list(): readonly VirtioSlot[] {
    return this.#slots;
  }

  #nameFor(kind: string): string {
    const prefix = KIND_PREFIX[kind] ?? kind;
    const same = this.#slots.filter((slot) => slot.device.kind === kind).length;
    if (kind === "block") return `vd${String.fromCharCode(0x61 + same)}`;
    return `${prefix}${same}`;
  }

  /**
   * Places `device` on the next free window or PCI slot with the next free
   * interrupt line. Throws a RangeError when the layout has no room left,
   * naming what ran out.
   */
  add(device: VirtioDevice, options: VirtioAddOptions = {}): VirtioSlot {
    const transport = options.transport ?? "mmio";
    if (transport !== "mmio" && transport !== "pci") {
      throw new TypeError(`Invalid virtio transport ${JSON.stringify(transport)}: expected "mmio" or "pci"`);
    }
    const gsi = this.#layout.gsis[this.#slots.length];
    if (gsi === undefined) {
      throw new RangeError(
        `Cannot add a virtio ${device.kind} device: all ${this.#layout.gsis.length} interrupt lines are taken`,
      );
    }
    const name = this.#nameFor(device.kind);
    const machine = this.#machine;
    const core = new VirtioCore(device, {
      memory: machine.memory,
      name: `virtio-${device.kind} ${name}`,
      setInterrupt: (level) => {
        if (machine.hasIrqchip) machine.irqLine(gsi, level);
      },
      ...(options.log === undefined ? {} : { log: options.log }),
    });
    let slot: VirtioSlot;
    if (transport === "mmio") {
      const index = this.#slots.filter((s) => s.transport === "mmio").length;
      if (index >= this.#layout.mmio.count) {
        throw new RangeError(`Cannot add a virtio-mmio device: all ${this.#layout.mmio.count} windows are taken`);
      }
      const base = this.#layout.mmio.address + index * VIRTIO_MMIO_SIZE;
      this.#buses.mmio.insert(BigInt(base), BigInt(VIRTIO_MMIO_SIZE), `virtio-mmio ${name}`, new VirtioMmio(core));
      slot = { name, transport, device, core, gsi, mmio: { base, size: VIRTIO_MMIO_SIZE } };
    } else {
      const host = this.#pciHost;
      if (host === undefined) {
        throw new Error(`Cannot add a virtio-pci device: this VM has no PCI host (platform "none")`);
      }
      const index = this.#slots.filter((s) => s.transport === "pci").length;
      if (index >= this.#layout.pci.count) {
        throw new RangeError(`Cannot add a virtio-pci device: all ${this.#layout.pci.count} PCI slots are taken`);
      }
      const pciDevice = this.#layout.pci.firstDevice + index;
      const bar = this.#layout.pci.barBase + index * VIRTIO_PCI_BAR_SIZE;
      const fn = new VirtioPci(core, { bar, irq: gsi, mmio: this.#buses.mmio, name: `virtio-pci ${name}` });
      host.attach(pciDevice << 3, fn);
      slot = { name, transport, device, core, gsi, pci: { device: pciDevice, function: fn } };
    }
    this.#slots.push(slot);
    this.#onChange();
    return slot;
  }

  /** Linux command-line parameters announcing the virtio-mmio devices (PCI devices are found by the PCI scan). */
  kernelParameters(): string[] {
    return this.#slots.flatMap((slot) =>
      slot.mmio === undefined ? [] : [mmioKernelParameter(slot.mmio.base, slot.gsi)]
    );
  }

  /** The virtio-mmio devices for the ACPI DSDT. */
  mmioDevices(): { base: number; size: number; gsi: number }[] {
    return this.#slots.flatMap((slot) => slot.mmio === undefined ? [] : [{ ...slot.mmio, gsi: slot.gsi }]);
  }

  /** A copy of every device's state (plain JSON data), keyed by name. */
  get state(): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    for (const slot of this.#slots) out[slot.name] = slot.pci === undefined ? slot.core.state : slot.pci.function.state;
    return out;
  }

  /** Closes every back end (files, TAPs, sockets). */
  async close(): Promise<void> {
    for (const slot of this.#slots) {
      try {
        await slot.device.close();
      } catch {
        // the other devices still close
      }
    }
  }
}
