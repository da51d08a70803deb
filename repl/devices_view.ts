/**
 * The REPL's `.devices` listing: every claimed port and MMIO range, then
 * each virtio device with its transport, interrupt line, status and queues.
 *
 * @module
 */

import type { Vm } from "../mod.ts";
import { hex } from "./format.ts";

const STATUS_BITS: [number, string][] = [
  [1, "ACKNOWLEDGE"],
  [2, "DRIVER"],
  [8, "FEATURES_OK"],
  [4, "DRIVER_OK"],
  [64, "NEEDS_RESET"],
  [128, "FAILED"],
];

/** The listing as lines of text. */
export function formatDevices(vm: Vm): string {
  const lines = ["Ports:"];
  for (const entry of vm.io.entries) {
    lines.push(`  ${hex(entry.base).padEnd(8)} ${String(entry.size).padStart(3)}  ${entry.name}`);
  }
  lines.push("MMIO:");
  for (const entry of vm.mmio.entries) {
    lines.push(`  ${hex(entry.base).padEnd(12)} ${hex(entry.size).padStart(8)}  ${entry.name}`);
  }
  if (vm.virtioDevices.length === 0) {
    lines.push("virtio: none (vm.add(virtioBlock(…)) adds one)");
    return lines.join("\n");
  }
  lines.push("virtio:");
  for (const slot of vm.virtioDevices) {
    const core = slot.core;
    const status = STATUS_BITS.filter(([bit]) => (core.status & bit) !== 0).map(([, name]) => name).join("|") ||
      "reset";
    const where = slot.mmio !== undefined
      ? `mmio ${hex(slot.mmio.base)}`
      : `pci 00:${slot.pci!.device.toString(16).padStart(2, "0")}.0 BAR0 ${
        slot.pci!.function.barAddress === undefined ? "off" : hex(slot.pci!.function.barAddress)
      }`;
    lines.push(`  ${slot.name.padEnd(7)} virtio-${slot.device.kind}, ${where}, IRQ ${slot.gsi}, ${status}`);
    lines.push(`          ${slot.device.describe()}`);
    core.queues.forEach((queue, index) => {
      const state = queue.state;
      lines.push(
        `          queue ${index}: size ${state.size}/${queue.maxSize}${
          queue.active ? `, avail ${state.nextAvail}, used ${state.nextUsed}` : queue.ready ? ", ready" : ", off"
        }`,
      );
    });
  }
  return lines.join("\n");
}
