/**
 * What a virtio back end is (block, console, entropy, network, vsock) and
 * the transport-independent part of every virtio function: device status,
 * feature negotiation, queue set-up, interrupt status and the NEEDS_RESET
 * path. The transports (virtio-mmio in mmio.ts, virtio-pci in pci.ts) only
 * map registers onto a {@link VirtioCore}.
 *
 * A guest's mistake never throws out of the run loop: a {@link VirtqueueError}
 * (or any error) from a back end puts the device in DEVICE_NEEDS_RESET
 * (virtio 1.2, 2.1.1), raises a configuration-change interrupt, logs one
 * line, and the device ignores its queues until the driver resets it.
 *
 * @module
 */

import { type GuestRam, type QueueState, SplitQueue, VirtqueueError } from "./queue.ts";
import { StateReader } from "../_state.ts";

/**
 * A little-endian read of `size` bytes at `offset` of a device's config
 * space (what every device's `readConfig` answers); bytes past its end read
 * as zero.
 */
export function readConfigSpace(config: Uint8Array, offset: number, size: number): number {
  let value = 0;
  for (let i = size - 1; i >= 0; i--) value = value * 256 + (config[offset + i] ?? 0);
  return value;
}

/** Device status bits (2.1). */
export const VIRTIO_STATUS = {
  acknowledge: 1,
  driver: 2,
  driverOk: 4,
  featuresOk: 8,
  needsReset: 64,
  failed: 128,
} as const;

/** Feature bits every hvsh device offers or refuses (6: reserved feature bits). */
export const VIRTIO_F = {
  indirectDesc: 1n << 28n,
  eventIdx: 1n << 29n,
  version1: 1n << 32n,
} as const;

/** Device type IDs (5). */
export const VIRTIO_ID = { net: 1, block: 2, console: 3, entropy: 4, vsock: 19 } as const;

/** Interrupt status bits (virtio-mmio InterruptStatus, virtio-pci ISR). */
export const VIRTIO_INT = { used: 1, config: 2 } as const;

/** What a back end may do to its function (given at activation). */
export interface VirtioContext {
  /** Guest RAM (every access checked). */
  readonly memory: GuestRam;
  /** The queues, configured and enabled by the driver. */
  readonly queues: readonly SplitQueue[];
  /** The features the driver accepted. */
  readonly features: bigint;
  /** Tells the driver that `queue` has used buffers (if it wants to hear it). */
  usedBuffers(queue: number): void;
  /** Tells the driver the configuration space changed. */
  configChanged(): void;
  /** Puts the device in NEEDS_RESET with one log line (for errors found off the notify path, e.g. on input). */
  fail(reason: string): void;
  /** Logs one line about the device (a dropped packet) where NEEDS_RESET lines go, prefixed with the device's name. */
  log(line: string): void;
}

/** A virtio back end, independent of its transport. */
export interface VirtioDevice {
  /** Device type ID ({@link VIRTIO_ID}). */
  readonly deviceId: number;
  /** A short kind for listings: "block", "net", ... */
  readonly kind: string;
  /** Device-specific feature bits offered (the transport adds VERSION_1, INDIRECT_DESC, EVENT_IDX). */
  readonly features: bigint;
  /** Maximum size of each queue (the count is the number of queues). */
  readonly queueSizes: readonly number[];
  /** Bytes of device configuration space. */
  readonly configSize: number;
  /** Reads configuration space (little-endian, `size` 1, 2 or 4). */
  readConfig(offset: number, size: number): number;
  /** Writes configuration space (most fields are read-only: ignored). */
  writeConfig(offset: number, size: number, value: number): void;
  /** The driver set DRIVER_OK: the queues are live. */
  activate(context: VirtioContext): void;
  /** The driver notified `queue`. May throw a VirtqueueError. */
  notify(queue: number): void;
  /** The driver reset the device: drop in-flight work. */
  reset(): void;
  /** A line for listings (`.devices`): what it is backed by. */
  describe(): string;
  /** The back end's own state (plain JSON data), beside the transport's. */
  readonly state: Record<string, unknown>;
  /** Restores {@link state}. */
  restore(state: Record<string, unknown>): void;
  /** Releases host resources (files, TAPs, sockets). */
  close(): void | Promise<void>;
}

/** The transport-independent state of a virtio function (plain JSON data). */
export interface VirtioCoreState {
  status: number;
  /** Accepted features as a hex string (64 bits do not fit a JSON number). */
  driverFeatures: string;
  deviceFeatureSelect: number;
  driverFeatureSelect: number;
  queueSelect: number;
  interruptStatus: number;
  configGeneration: number;
  queues: QueueState[];
  device: Record<string, unknown>;
}

/** Options of {@link VirtioCore}. */
export interface VirtioCoreOptions {
  /** Guest RAM. */
  memory: GuestRam;
  /** Sets the interrupt line's level (the transport's wiring: a GSI, INTx). */
  setInterrupt(level: boolean): void;
  /** Where the one line about a device gone to NEEDS_RESET goes (default console.error). */
  log?: (line: string) => void;
  /** The name in log lines: "virtio-blk vda". */
  name: string;
}

const TRANSPORT_FEATURES = VIRTIO_F.version1 | VIRTIO_F.indirectDesc | VIRTIO_F.eventIdx;

/**
 * The state machine of one virtio function over any transport.
 *
 * @example
 * ```ts ignore
 * const core = new VirtioCore(virtioRng(), { memory: vm.memory, setInterrupt: (l) => vm.irqLine(16, l), name: "rng" });
 * core.writeStatus(VIRTIO_STATUS.acknowledge | VIRTIO_STATUS.driver);
 * ```
 */
export class VirtioCore {
  readonly device: VirtioDevice;
  readonly name: string;
  readonly queues: SplitQueue[];
  status = 0;
  deviceFeatureSelect = 0;
  driverFeatureSelect = 0;
  driverFeatures = 0n;
  queueSelect = 0;
  configGeneration = 0;
  #interruptStatus = 0;
  readonly #memory: GuestRam;
  readonly #setInterrupt: (level: boolean) => void;
  readonly #log: (line: string) => void;
  #line = false;

  constructor(device: VirtioDevice, options: VirtioCoreOptions) {
    this.device = device;
    this.name = options.name;
    this.queues = device.queueSizes.map((size) => new SplitQueue(size));
    this.#memory = options.memory;
    this.#setInterrupt = options.setInterrupt;
    this.#log = options.log ?? ((line) => console.error(line));
  }

  /** Every feature offered: the device's and the transport's. */
  get deviceFeatures(): bigint {
    return this.device.features | TRANSPORT_FEATURES;
  }

  /** True while the device waits for a reset after a driver error. */
  get needsReset(): boolean {
    return (this.status & VIRTIO_STATUS.needsReset) !== 0;
  }

  /** The 32 feature bits the selector picks. */
  readDeviceFeatures(): number {
    return Number((this.deviceFeatures >> BigInt(32 * this.deviceFeatureSelect)) & 0xffff_ffffn);
  }

  /** Sets 32 bits of the driver's features (before FEATURES_OK only). */
  writeDriverFeatures(value: number): void {
    if ((this.status & VIRTIO_STATUS.featuresOk) !== 0 || this.driverFeatureSelect > 1) return;
    const shift = BigInt(32 * this.driverFeatureSelect);
    this.driverFeatures = (this.driverFeatures & ~(0xffff_ffffn << shift)) | (BigInt(value >>> 0) << shift);
  }

  /** The selected queue, or undefined past the last one. */
  get selectedQueue(): SplitQueue | undefined {
    return this.queues[this.queueSelect];
  }

  /**
   * The driver marks a queue ready (or not). A queue made ready after
   * DRIVER_OK is checked at once; a bad one puts the device in NEEDS_RESET.
   */
  setQueueReady(index: number, ready: boolean): void {
    const queue = this.queues[index];
    if (queue === undefined) return;
    if (!ready) {
      queue.reset();
      return;
    }
    queue.ready = true;
    if ((this.status & VIRTIO_STATUS.driverOk) === 0 || this.needsReset) return;
    try {
      queue.eventIdx = (this.driverFeatures & VIRTIO_F.eventIdx) !== 0n;
      queue.enable(this.#memory);
    } catch (error) {
      this.fail(`queue ${index}: ${(error as Error).message}`);
    }
  }

  /** The driver writes the status register. 0 resets the device. */
  writeStatus(value: number): void {
    value &= 0xff;
    if (value === 0) {
      this.reset();
      return;
    }
    if (this.needsReset) {
      // Only a reset leaves NEEDS_RESET; FAILED may still be added.
      this.status |= value & VIRTIO_STATUS.failed;
      return;
    }
    const added = value & ~this.status;
    if ((added & VIRTIO_STATUS.featuresOk) !== 0) {
      const offered = this.deviceFeatures;
      if ((this.driverFeatures & ~offered) !== 0n || (this.driverFeatures & VIRTIO_F.version1) === 0n) {
        // Refused: the driver reads FEATURES_OK back as clear (3.1.1).
        value &= ~VIRTIO_STATUS.featuresOk;
      }
    }
    this.status = value;
    if ((added & VIRTIO_STATUS.driverOk) !== 0) this.#activate();
  }

  #activate(): void {
    if ((this.status & VIRTIO_STATUS.featuresOk) === 0) {
      this.fail("DRIVER_OK set before FEATURES_OK");
      return;
    }
    try {
      const eventIdx = (this.driverFeatures & VIRTIO_F.eventIdx) !== 0n;
      this.queues.forEach((queue, index) => {
        queue.eventIdx = eventIdx;
        if (!queue.ready) return;
        try {
          queue.enable(this.#memory);
        } catch (error) {
          throw new VirtqueueError(`queue ${index}: ${(error as Error).message}`);
        }
      });
      this.device.activate(this.#context());
    } catch (error) {
      this.fail((error as Error).message);
    }
  }

  #context(): VirtioContext {
    return {
      memory: this.#memory,
      queues: this.queues,
      features: this.driverFeatures,
      usedBuffers: (queue) => {
        if (this.needsReset) return;
        const q = this.queues[queue];
        if (q !== undefined && q.needsInterrupt()) this.raise(1);
      },
      configChanged: () => {
        this.configGeneration = (this.configGeneration + 1) & 0xff;
        this.raise(2);
      },
      fail: (reason) => this.fail(reason),
      log: (line) => this.#log(`hvsh: ${this.name}: ${line}`),
    };
  }

  /** The driver notified `queue`: runs the back end; a driver error becomes NEEDS_RESET, never an exception. */
  notify(queue: number): void {
    if (this.needsReset) return;
    if ((this.status & VIRTIO_STATUS.driverOk) === 0) {
      this.fail(`queue ${queue} notified before DRIVER_OK`);
      return;
    }
    const q = this.queues[queue];
    if (q === undefined || !q.active) {
      this.fail(`queue ${queue} notified but it ${q === undefined ? "does not exist" : "is not enabled"}`);
      return;
    }
    try {
      this.device.notify(queue);
    } catch (error) {
      this.fail(`queue ${queue}: ${(error as Error).message}`);
    }
  }

  /** Puts the device in NEEDS_RESET, tells the driver, logs one line. Later failures say nothing more. */
  fail(reason: string): void {
    if (this.needsReset) return;
    this.status |= VIRTIO_STATUS.needsReset;
    this.#log(`hvsh: ${this.name}: device needs reset: ${reason}`);
    this.configGeneration = (this.configGeneration + 1) & 0xff;
    this.raise(VIRTIO_INT.config);
  }

  /** Sets interrupt status bits and the line. */
  raise(bits: number): void {
    this.#interruptStatus |= bits;
    this.#updateLine();
  }

  /** Clears interrupt status bits (InterruptACK, or an ISR read) and the line when none is left. */
  acknowledge(bits: number): void {
    this.#interruptStatus &= ~bits;
    this.#updateLine();
  }

  get interruptStatus(): number {
    return this.#interruptStatus;
  }

  #updateLine(): void {
    const level = this.#interruptStatus !== 0;
    if (level === this.#line) return;
    this.#line = level;
    this.#setInterrupt(level);
  }

  /** Device reset: status, features, queues and the back end's in-flight work. */
  reset(): void {
    this.status = 0;
    this.driverFeatures = 0n;
    this.deviceFeatureSelect = this.driverFeatureSelect = this.queueSelect = 0;
    for (const queue of this.queues) queue.reset();
    this.device.reset();
    this.acknowledge(0xff);
  }

  /** A copy of the state (plain JSON data). */
  get state(): VirtioCoreState {
    return {
      status: this.status,
      driverFeatures: `0x${this.driverFeatures.toString(16)}`,
      deviceFeatureSelect: this.deviceFeatureSelect,
      driverFeatureSelect: this.driverFeatureSelect,
      queueSelect: this.queueSelect,
      interruptStatus: this.#interruptStatus,
      configGeneration: this.configGeneration,
      queues: this.queues.map((queue) => queue.state),
      device: this.device.state,
    };
  }

  /**
   * Restores {@link state}: registers, queues (re-checked against RAM) and
   * the back end, which is re-activated when the driver had finished set-up.
   * Throws a TypeError/RangeError naming the bad field.
   */
  restore(state: VirtioCoreState): void {
    const who = this.name;
    const r = new StateReader(who, state);
    const status = r.integer("status", 0, 0xff, true);
    const features = r.string("driverFeatures");
    if (!/^0x[0-9a-f]{1,16}$/.test(features)) r.rangeError("driverFeatures", features, "a hex string of 64 bits");
    const queues = r.array("queues", this.queues.length, this.queues.length) as QueueState[];
    this.reset();
    this.status = status;
    this.driverFeatures = BigInt(features);
    this.deviceFeatureSelect = r.integer("deviceFeatureSelect", 0, 0xffff_ffff);
    this.driverFeatureSelect = r.integer("driverFeatureSelect", 0, 0xffff_ffff);
    this.queueSelect = r.integer("queueSelect", 0, 0xffff);
    this.configGeneration = r.integer("configGeneration", 0, 0xff);
    queues.forEach((queue, index) => {
      this.queues[index]!.restore(queue, this.#memory, `${who} queue ${index}`);
      this.queues[index]!.eventIdx = (this.driverFeatures & VIRTIO_F.eventIdx) !== 0n;
    });
    r.object("device");
    this.device.restore(state.device);
    if ((status & VIRTIO_STATUS.driverOk) !== 0 && (status & VIRTIO_STATUS.needsReset) === 0) {
      this.device.activate(this.#context());
    }
    this.raise(r.integer("interruptStatus", 0, 3));
  }
}
