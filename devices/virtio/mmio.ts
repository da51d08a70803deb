/**
 * The virtio-mmio transport, version 2 (virtio 1.2, section 4.2): a 512-byte
 * register window per device on the MMIO bus and one level-triggered
 * interrupt line. Linux finds it through `virtio_mmio.device=512@BASE:GSI`
 * on its command line ({@link mmioKernelParameter}) or an ACPI `LNRO0005`
 * device.
 *
 * @module
 */

import type { MmioDevice } from "../bus.ts";
import { type VirtioCore, type VirtioCoreState } from "./device.ts";
import { StateReader } from "../_state.ts";

/** Register offsets (4.2.2). */
export const VIRTIO_MMIO = {
  magic: 0x000,
  version: 0x004,
  deviceId: 0x008,
  vendorId: 0x00c,
  deviceFeatures: 0x010,
  deviceFeaturesSel: 0x014,
  driverFeatures: 0x020,
  driverFeaturesSel: 0x024,
  queueSel: 0x030,
  queueNumMax: 0x034,
  queueNum: 0x038,
  queueReady: 0x044,
  queueNotify: 0x050,
  interruptStatus: 0x060,
  interruptAck: 0x064,
  status: 0x070,
  queueDescLow: 0x080,
  queueDescHigh: 0x084,
  queueDriverLow: 0x090,
  queueDriverHigh: 0x094,
  queueDeviceLow: 0x0a0,
  queueDeviceHigh: 0x0a4,
  configGeneration: 0x0fc,
  config: 0x100,
} as const;

/** The window each virtio-mmio device decodes. */
export const VIRTIO_MMIO_SIZE = 0x200;
/** "virt", little-endian. */
const MAGIC = 0x7472_6976;
/** QEMU's vendor ID ("QEMU"), which Linux's driver does not check; Firecracker uses the same. */
const VENDOR = 0x554d_4551;

/** The Linux command-line parameter that announces one virtio-mmio device (`size@base:irq`). */
export function mmioKernelParameter(base: number, gsi: number): string {
  return `virtio_mmio.device=${VIRTIO_MMIO_SIZE}@0x${base.toString(16)}:${gsi}`;
}

function setHalf(current: number, value: number, high: boolean): number {
  const low = current % 2 ** 32;
  const hi = Math.floor(current / 2 ** 32);
  return high ? (value >>> 0) * 2 ** 32 + low : hi * 2 ** 32 + (value >>> 0);
}

/**
 * One virtio-mmio register window over a {@link VirtioCore}.
 *
 * @example
 * ```ts ignore
 * const transport = new VirtioMmio(core);
 * vm.mmio.insert(0xfeb00000n, 0x200n, "virtio-mmio vda", transport);
 * ```
 */
export class VirtioMmio implements MmioDevice {
  readonly core: VirtioCore;

  constructor(core: VirtioCore) {
    this.core = core;
  }

  read(offset: bigint, size: number): bigint {
    const at = Number(offset);
    const core = this.core;
    if (at >= VIRTIO_MMIO.config) {
      const config = at - VIRTIO_MMIO.config;
      if (config + size > core.device.configSize || size > 4) return 0n;
      return BigInt(core.device.readConfig(config, size) >>> 0);
    }
    if (size !== 4) return 0n; // registers are 32-bit (4.2.2.2)
    const queue = core.selectedQueue;
    switch (at) {
      case VIRTIO_MMIO.magic:
        return BigInt(MAGIC);
      case VIRTIO_MMIO.version:
        return 2n;
      case VIRTIO_MMIO.deviceId:
        return BigInt(core.device.deviceId);
      case VIRTIO_MMIO.vendorId:
        return BigInt(VENDOR);
      case VIRTIO_MMIO.deviceFeatures:
        return BigInt(core.readDeviceFeatures());
      case VIRTIO_MMIO.queueNumMax:
        return BigInt(queue?.maxSize ?? 0);
      case VIRTIO_MMIO.queueReady:
        return queue?.ready ? 1n : 0n;
      case VIRTIO_MMIO.interruptStatus:
        return BigInt(core.interruptStatus);
      case VIRTIO_MMIO.status:
        return BigInt(core.status);
      case VIRTIO_MMIO.configGeneration:
        return BigInt(core.configGeneration);
      case VIRTIO_MMIO.queueDescLow:
      case VIRTIO_MMIO.queueDescHigh:
      case VIRTIO_MMIO.queueDriverLow:
      case VIRTIO_MMIO.queueDriverHigh:
      case VIRTIO_MMIO.queueDeviceLow:
      case VIRTIO_MMIO.queueDeviceHigh: {
        if (queue === undefined) return 0n;
        const value = at < VIRTIO_MMIO.queueDriverLow
          ? queue.descTable
          : at < VIRTIO_MMIO.queueDeviceLow
          ? queue.driverArea
          : queue.deviceArea;
        return BigInt((at & 4) !== 0 ? Math.floor(value / 2 ** 32) : value % 2 ** 32);
      }
      default:
        return 0n;
    }
  }

  write(offset: bigint, size: number, value: bigint): void {
    const at = Number(offset);
    const core = this.core;
    const v = Number(value & 0xffff_ffffn);
    if (at >= VIRTIO_MMIO.config) {
      const config = at - VIRTIO_MMIO.config;
      if (config + size <= core.device.configSize && size <= 4) core.device.writeConfig(config, size, v);
      return;
    }
    if (size !== 4) return;
    const queue = core.selectedQueue;
    switch (at) {
      case VIRTIO_MMIO.deviceFeaturesSel:
        core.deviceFeatureSelect = v;
        return;
      case VIRTIO_MMIO.driverFeatures:
        core.writeDriverFeatures(v);
        return;
      case VIRTIO_MMIO.driverFeaturesSel:
        core.driverFeatureSelect = v;
        return;
      case VIRTIO_MMIO.queueSel:
        core.queueSelect = v;
        return;
      case VIRTIO_MMIO.queueNum:
        if (queue !== undefined && !queue.ready) queue.size = v;
        return;
      case VIRTIO_MMIO.queueReady:
        core.setQueueReady(core.queueSelect, (v & 1) === 1);
        return;
      case VIRTIO_MMIO.queueNotify:
        core.notify(v & 0xffff);
        return;
      case VIRTIO_MMIO.interruptAck:
        core.acknowledge(v);
        return;
      case VIRTIO_MMIO.status:
        core.writeStatus(v);
        return;
      case VIRTIO_MMIO.queueDescLow:
      case VIRTIO_MMIO.queueDescHigh:
        if (queue !== undefined && !queue.ready) {
          queue.descTable = setHalf(queue.descTable, v, at === VIRTIO_MMIO.queueDescHigh);
        }
        return;
      case VIRTIO_MMIO.queueDriverLow:
      case VIRTIO_MMIO.queueDriverHigh:
        if (queue !== undefined && !queue.ready) {
          queue.driverArea = setHalf(queue.driverArea, v, at === VIRTIO_MMIO.queueDriverHigh);
        }
        return;
      case VIRTIO_MMIO.queueDeviceLow:
      case VIRTIO_MMIO.queueDeviceHigh:
        if (queue !== undefined && !queue.ready) {
          queue.deviceArea = setHalf(queue.deviceArea, v, at === VIRTIO_MMIO.queueDeviceHigh);
        }
        return;
    }
  }

  /** A copy of the state (plain JSON data): the function's state; virtio-mmio keeps nothing else. */
  get state(): VirtioCoreState {
    return this.core.state;
  }

  /** Restores {@link state} (throws a TypeError/RangeError naming the bad field). */
  restore(state: VirtioCoreState): void {
    new StateReader(this.core.name, state);
    this.core.restore(state);
  }
}
