/**
 * hvsh's scripting API: build, run and inspect KVM virtual machines from
 * TypeScript.
 *
 * @example
 * ```ts ignore
 * import { Vm } from "./mod.ts";
 * await using vm = await Vm.create({ memory: "64M" });
 * await vm.load("tests/guests/build/hello64.elf");
 * const stop = await vm.run({ timeout: 10_000 });
 * console.log(vm.serial.output, stop); // "hello\n" { reason: "exit", value: 0, code: 1, ... }
 * ```
 *
 * @module
 */

export * from "./core/vm.ts";
export * from "./core/stop.ts";
export * from "./core/memory.ts";
export * from "./core/vcpu.ts";
export * from "./core/cpuid.ts";
export { KvmError } from "./core/kvm/kvm.ts";
export { SnapshotError, SnapshotFile } from "./core/snapshot/format.ts";
export type {
  CpuidEntry,
  DebugRegisters,
  DescriptorTable,
  FpuState,
  RegisterName,
  Registers,
  Segment,
  SpecialRegisters,
} from "./core/kvm/structs.ts";
export * from "./core/loader/elf.ts";
export * from "./core/loader/multiboot.ts";
export * from "./core/loader/detect_format.ts";
export * from "./core/loader/load_image.ts";
export * from "./core/loader/e820.ts";
export {
  BOOT_PARAMS,
  isBzImage,
  LINUX_LAYOUT,
  type LinuxBootInfo,
  type LinuxLoadOptions,
  loadBzImage,
  type LoadedLinux,
  parseSetupHeader,
  SETUP_HEADER,
  type SetupHeader,
} from "./core/loader/linux.ts";
export { findPvhEntry, loadPvh, PVH_LAYOUT, XEN_ELFNOTE_PHYS32_ENTRY, XEN_HVM_START_MAGIC } from "./core/loader/pvh.ts";
export * from "./core/loader/initramfs.ts";
export { type LinuxBootSpec, readInitrd } from "./core/loader/linux_boot.ts";
export type {
  /** The CPU mode an image is entered in (the vCPU's current mode is {@link CpuMode}). */
  CpuMode as BootMode,
  ImageFormat,
  ImageSymbol,
  LoadedImage,
  LoadOptions,
  LoadTarget,
  MultibootModule,
} from "./core/loader/types.ts";
export {
  attachGdb,
  defaultMonitorRegistry,
  formatRecording,
  type GdbListenOptions,
  type GdbServer,
  listenGdb,
  monitorCommands,
  MonitorRegistry,
  registerMonitorCommand,
} from "./core/gdb/mod.ts";
export * from "./core/debug/debugger.ts";
export {
  comparePositions,
  formatPosition,
  type HistoryInfo,
  type Position,
  type RecordOptions,
  ReplayDivergenceError,
} from "./core/debug/history.ts";
export { parseSystemMap } from "./core/debug/symbols.ts";
export * from "./core/debug/expr.ts";
export * from "./core/debug/registers.ts";
export * from "./core/debug/telescope.ts";
export * from "./core/debug/exceptions.ts";
export { DISPLAY_REGISTER_ORDER, REGISTER_NAMES } from "./core/kvm/structs.ts";
export { hex } from "./core/hex.ts";
export { formatTranslation, type Translation, type WalkLevel } from "./core/debug/paging.ts";
export * from "./core/platform.ts";
export * from "./devices/bus.ts";
export * from "./devices/serial.ts";
export { type ExecOptions, type ExpectOptions, SerialWaitError } from "./devices/serial_reader.ts";
export * from "./devices/debug_exit.ts";
export * from "./devices/virtio/mod.ts";
