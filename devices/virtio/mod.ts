/**
 * virtio devices: back ends (block, console, entropy, network, vsock) over
 * the virtio-mmio and virtio-pci transports, with one split-virtqueue
 * implementation shared by all.
 *
 * @example
 * ```ts ignore
 * import { Vm, virtioBlock, virtioRng } from "../../mod.ts";
 * await using vm = await Vm.create({ memory: "256M" });
 * vm.add(virtioBlock({ path: "disk.img" }));
 * vm.add(virtioRng(), { transport: "pci" });
 * vm.virtioKernelParameters(); // ["virtio_mmio.device=512@0xfeb00000:5"]
 * ```
 *
 * @module
 */

export * from "./queue.ts";
export * from "./device.ts";
export * from "./mmio.ts";
export * from "./pci.ts";
export * from "./block.ts";
export * from "./rng.ts";
export * from "./console.ts";
export * from "./net.ts";
export * from "./slots.ts";
export * from "./vsock.ts";
