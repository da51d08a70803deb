/**
 * `hvsh boot --boot-timer`: where boot time goes, phase by phase, like
 * Firecracker's boot-timer device and Cloud Hypervisor's port 0x80
 * timestamps. Each phase is stamped (milliseconds since hvsh's process
 * started) when it is first seen:
 *
 * | phase | when |
 * | --- | --- |
 * | `hvsh start` | `hvsh boot` begins (Deno started, modules loaded) |
 * | `vm created` | KVM VM, vCPUs, memory and platform devices are ready |
 * | `image loaded` | the kernel, initrd and boot structures are in guest RAM |
 * | `first guest instruction` | the run loop enters KVM_RUN for the first time |
 * | `kernel banner` | the serial port shows `Linux version` |
 * | `Run /init` | the serial port shows the kernel's `Run /init as init process` |
 * | `user space` | the serial port shows init's marker fault (`init[1]: segfault at`), or the guest writes the boot-timer MMIO address |
 * | `guest mark` | the guest writes {@link BOOT_TIMER_MAGIC} to {@link BOOT_TIMER_ADDRESS} (Firecracker's protocol; an init with /dev/mem can do it) |
 *
 * @module
 */

import type { Vm } from "../core/vm.ts";

/** The MMIO address a guest writes to mark "boot done" (Firecracker's boot-timer magic, at an address no RAM or device uses). */
export const BOOT_TIMER_ADDRESS = 0xd000_0000;
/** The value that marks it (Firecracker uses 123 as well). */
export const BOOT_TIMER_MAGIC = 123;

/** Serial patterns of the Linux phases. */
const SERIAL_PHASES: ReadonlyArray<[BootPhase, RegExp]> = [
  ["kernel banner", /Linux version /],
  ["Run /init", /Run \/init as init process/],
  ["user space", /init\[1\]: segfault at /],
];

/** The phases in the order they are printed. */
export const BOOT_PHASES = [
  "hvsh start",
  "vm created",
  "image loaded",
  "first guest instruction",
  "kernel banner",
  "Run /init",
  "user space",
  "guest mark",
] as const;

/** One phase name. */
export type BootPhase = typeof BOOT_PHASES[number];

/** Collects phase timestamps; {@link BootTimer.report} prints the breakdown. */
export class BootTimer {
  readonly #stamps = new Map<BootPhase, number>();
  #detach: (() => void)[] = [];

  /** Records `phase` now, unless it was recorded already. */
  mark(phase: BootPhase): void {
    if (!this.#stamps.has(phase)) this.#stamps.set(phase, performance.now());
  }

  /** Milliseconds since process start at which `phase` was seen, or undefined. */
  at(phase: BootPhase): number | undefined {
    return this.#stamps.get(phase);
  }

  /** Watches the VM's serial output and the boot-timer address. */
  watch(vm: Vm): void {
    let text = "";
    this.#detach.push(vm.serial.onData((bytes) => {
      // Keep a short tail so a pattern split across chunks still matches.
      text = (text + new TextDecoder().decode(bytes)).slice(-512);
      for (const [phase, pattern] of SERIAL_PHASES) {
        if (!this.#stamps.has(phase) && pattern.test(text)) this.mark(phase);
      }
    }));
    this.#detach.push(vm.onMmio([BOOT_TIMER_ADDRESS, BOOT_TIMER_ADDRESS + 7], (access) => {
      if (access.direction === "write" && access.data === BigInt(BOOT_TIMER_MAGIC)) {
        this.mark("guest mark");
        this.mark("user space");
      }
      return 0;
    }));
  }

  /** Stops watching. */
  detach(): void {
    for (const detach of this.#detach) detach();
    this.#detach = [];
  }

  /** The breakdown: each phase seen, its time since process start and since the phase before. */
  report(): string {
    const lines = ["hvsh boot timer (ms since process start, +ms since the previous phase):"];
    let previous = 0;
    for (const phase of BOOT_PHASES) {
      const at = this.#stamps.get(phase);
      if (at === undefined) {
        lines.push(`  ${phase.padEnd(24)} —`);
        continue;
      }
      lines.push(`  ${phase.padEnd(24)} ${at.toFixed(1).padStart(10)}  +${(at - previous).toFixed(1)}`);
      previous = at;
    }
    return lines.join("\n");
  }
}
