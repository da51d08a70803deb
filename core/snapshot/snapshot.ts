/**
 * What a VM snapshot holds and how it goes back into a VM: the machine's
 * configuration, every vCPU's and the kernel devices' KVM state
 * (core/machine_state.ts), every device model's state object, the
 * debugger's breakpoints and watchpoints, the loaded image's symbols, and
 * guest memory. core/vm.ts builds the VM; this module fills it. The file
 * container is core/snapshot/format.ts; migration (core/snapshot/migrate.ts)
 * sends the same state over a socket.
 *
 * @module
 */

import type { Machine, MachineState, VcpuState } from "../machine.ts";
import type { KernelState } from "../machine_state.ts";
import type { IoBus, MmioBus } from "../../devices/bus.ts";
import { type BreakCondition, Debugger, type WatchAccess } from "../debug/debugger.ts";
import type { LoadedImage } from "../loader/types.ts";
import type { GuestMemory } from "../memory.ts";
import { isZeroPage, PAGE_SIZE, SnapshotError, type SnapshotFile, writeSnapshotFile } from "./format.ts";

/** How the VM was built: enough to build the same machine again. */
export interface VmConfig {
  /** Bytes of RAM. */
  memory: number;
  /** RAM regions as laid out (from 0, and above 4 GiB past the PCI hole). */
  regions: { base: number; size: number }[];
  cpus: number;
  irqchip: boolean;
  platform: "pc" | "none";
  onReset: "stop" | "reset";
  name: string;
  /** The kernel command line given to the last load (fw_cfg serves it). */
  cmdline: string;
}

/** A breakpoint as a snapshot keeps it (closures cannot travel: a condition travels as its source text). */
export interface BreakpointState {
  kind: "software" | "hardware";
  /** `0x` hex of the (virtual) address. */
  address: string;
  enabled: boolean;
  once: boolean;
  hits: number;
  /** The condition's source text, when it has one. */
  condition?: string;
  /** True when the breakpoint had a closure condition without source text (it cannot travel). */
  opaqueCondition?: boolean;
}

/** A watchpoint as a snapshot keeps it. */
export interface WatchpointState {
  address: string;
  length: number;
  access: WatchAccess;
  enabled: boolean;
  hits: number;
  condition?: string;
  opaqueCondition?: boolean;
}

/** The debugger's part of a snapshot. */
export interface DebuggerState {
  breakpoints: BreakpointState[];
  watchpoints: WatchpointState[];
}

/** Everything of a VM but its memory, as plain JSON data. */
export interface VmState {
  config: VmConfig;
  machine: MachineState;
  /** Device name (its bus entry, or `pc.<field>`) to its state object. */
  devices: Record<string, unknown>;
  debugger: DebuggerState;
  /** The last image loaded, bigints as `0x` strings (for `vm.image` and the debugger's symbols). */
  image: unknown;
}

/** A device that snapshots: a plain state object and `restore(state)`. */
export interface StatefulDevice {
  readonly state: unknown;
  restore(state: unknown): void;
}

function isStateful(device: unknown): device is StatefulDevice {
  return typeof device === "object" && device !== null && "state" in device &&
    typeof (device as { restore?: unknown }).restore === "function";
}

/**
 * Every device model with a state object, by name: the devices on the two
 * buses (by their bus entry names, so devices that land later are included
 * without a change here), then `extra`'s (the platform's devices that sit
 * behind port adapters, as `pc.<name>`). Each device appears once.
 */
export function statefulDevices(
  io: IoBus,
  mmio: MmioBus,
  extra: Record<string, unknown> = {},
): Map<string, StatefulDevice> {
  const found = new Map<string, StatefulDevice>();
  const seen = new Set<unknown>();
  const add = (name: string, device: unknown) => {
    if (!isStateful(device) || seen.has(device)) return;
    seen.add(device);
    found.set(name, device);
  };
  for (const entry of io.entries) add(entry.name, entry.device);
  for (const entry of mmio.entries) add(entry.name, entry.device);
  for (const [name, device] of Object.entries(extra)) add(`pc.${name}`, device);
  return found;
}

/** The parts of a VM a snapshot reads and fills (core/vm.ts provides them). */
export interface SnapshotSubject {
  machine: Machine;
  devices: Map<string, StatefulDevice>;
  config: VmConfig;
  image: LoadedImage | undefined;
}

/** JSON with bigints as `{ "$bigint": "0x…" }`. */
function toJson(value: unknown): unknown {
  return JSON.parse(
    JSON.stringify(value, (_key, v) => typeof v === "bigint" ? { $bigint: `0x${v.toString(16)}` } : v),
  );
}

function fromJson<T>(value: unknown): T {
  return JSON.parse(JSON.stringify(value), (_key, v) => {
    if (v !== null && typeof v === "object" && !Array.isArray(v) && typeof v.$bigint === "string") {
      return BigInt(v.$bigint);
    }
    return v;
  }) as T;
}

function debuggerState(machine: Machine): DebuggerState {
  const debug = Debugger.attachedTo(machine);
  if (debug === undefined) return { breakpoints: [], watchpoints: [] };
  const condition = (c: unknown, text: string | undefined) =>
    c === undefined ? {} : text === undefined ? { opaqueCondition: true } : { condition: text };
  return {
    breakpoints: debug.breakpoints.filter((b) => !b.internal).map((b) => ({
      kind: b.kind,
      address: `0x${b.address.toString(16)}`,
      enabled: b.enabled,
      once: b.once,
      hits: b.hits,
      ...condition(b.condition, b.conditionText),
    })),
    watchpoints: debug.watchpoints.map((w) => ({
      address: `0x${w.address.toString(16)}`,
      length: w.length,
      access: w.access,
      enabled: w.enabled,
      hits: w.hits,
      ...condition(w.condition, undefined),
    })),
  };
}

/** Reads a stopped VM's whole state but its memory. */
export function captureVmState(subject: SnapshotSubject): VmState {
  const devices: Record<string, unknown> = {};
  for (const [name, device] of subject.devices) devices[name] = device.state;
  return {
    config: subject.config,
    machine: subject.machine.captureState(),
    devices,
    debugger: debuggerState(subject.machine),
    image: subject.image === undefined ? null : toJson(subject.image),
  };
}

/** Options of {@link applyVmState}. */
export interface ApplyOptions {
  /**
   * Compiles a breakpoint condition's source text (the REPL passes its
   * evaluator). Without it a breakpoint with a condition comes back
   * disabled, and a warning says so.
   */
  compileCondition?: (text: string) => BreakCondition;
}

/**
 * Puts a state into a VM built from the same configuration (its memory
 * already restored): the KVM state, then each device's (so a device can
 * raise its interrupt line in the restored controllers), then breakpoints
 * and watchpoints. Returns warnings (breakpoints that could not come back
 * as they were). Throws on a state that does not fit, naming what; the
 * caller closes the VM then, so nothing half-restored survives.
 */
export function applyVmState(subject: SnapshotSubject, state: VmState, options: ApplyOptions = {}): string[] {
  const names = [...subject.devices.keys()];
  const missing = Object.keys(state.devices).filter((name) => !subject.devices.has(name));
  if (missing.length > 0) {
    throw new RangeError(
      `Cannot restore devices ${missing.join(", ")}: this VM has no such devices (it has ${names.join(", ")})`,
    );
  }
  const absent = names.filter((name) => !(name in state.devices));
  if (absent.length > 0) {
    throw new RangeError(`Cannot restore the VM: the snapshot has no state for ${absent.join(", ")}`);
  }
  subject.machine.restoreState(state.machine);
  for (const [name, device] of subject.devices) device.restore(state.devices[name]);
  const warnings: string[] = [];
  const debug = Debugger.for(subject.machine);
  for (const bp of state.debugger.breakpoints) {
    const address = BigInt(bp.address);
    let condition: BreakCondition | undefined;
    let enabled = bp.enabled;
    if (bp.condition !== undefined && options.compileCondition !== undefined) {
      condition = options.compileCondition(bp.condition);
    } else if (bp.condition !== undefined || bp.opaqueCondition === true) {
      enabled = false;
      warnings.push(`breakpoint at ${bp.address} comes back disabled: its condition cannot be restored here`);
    }
    const made = bp.kind === "hardware"
      ? debug.hbreak(address, { once: bp.once, ...(condition ? { condition, conditionText: bp.condition! } : {}) })
      : debug.break(address, { once: bp.once, ...(condition ? { condition, conditionText: bp.condition! } : {}) });
    made.hits = bp.hits;
    if (!enabled) debug.disable(made.id);
  }
  for (const wp of state.debugger.watchpoints) {
    const made = debug.watch(BigInt(wp.address), wp.length, wp.access);
    made.hits = wp.hits;
    if (wp.opaqueCondition === true) {
      warnings.push(`watchpoint at ${wp.address} comes back disabled: its condition cannot be restored here`);
      debug.disable(made.id);
    } else if (!wp.enabled) {
      debug.disable(made.id);
    }
  }
  return warnings;
}

/** The image a state recorded (bigints revived), or undefined. */
export function imageOf(state: VmState): LoadedImage | undefined {
  return state.image === null || state.image === undefined ? undefined : fromJson<LoadedImage>(state.image);
}

/**
 * The pages of each region that hold non-zero bytes (the debugger's planted
 * bytes read as the originals they hide), for a sparse copy of the memory.
 */
export function nonZeroPages(memory: GuestMemory): number[][] {
  return memory.withOriginalBytes(() =>
    memory.regions.map((region, index) =>
      memory.possiblyNonZeroPages(index).filter((page) =>
        !isZeroPage(region.bytes.subarray(page * PAGE_SIZE, (page + 1) * PAGE_SIZE))
      )
    )
  );
}

/** What {@link writeVmSnapshot} wrote. */
export interface SnapshotInfo {
  /** The file written. */
  path: string;
  /** Its size in bytes (zero pages are holes: the disk usage is smaller). */
  size: number;
  /** Guest pages stored (the others are all zero). */
  storedPages: number;
  /** Milliseconds taken. */
  ms: number;
}

/** Section names of the vCPUs: `vcpu0`, `vcpu1`, … */
export function vcpuSection(index: number): string {
  return `vcpu${index}`;
}

/** Writes a snapshot file of a stopped VM (see docs/snapshot-format.md for the sections). */
export function writeVmSnapshot(path: string, subject: SnapshotSubject): SnapshotInfo {
  const started = performance.now();
  const state = captureVmState(subject);
  const memory = subject.machine.memory;
  const size = memory.withOriginalBytes(() => {
    const pages = nonZeroPages(memory);
    const sections: [string, unknown][] = [
      ["config", state.config],
      ...state.machine.vcpus.map((vcpu): [string, unknown] => [vcpuSection(vcpu.index), vcpu]),
      ["kernel", state.machine.kernel],
      ["devices", state.devices],
      ["debugger", state.debugger],
      ["image", state.image],
    ];
    const written = writeSnapshotFile(path, sections, {
      regions: memory.regions.map((region, i) => ({ bytes: region.bytes, pages: pages[i]! })),
    });
    return { written, stored: pages.reduce((n, p) => n + p.length, 0) };
  });
  return { path, size: size.written, storedPages: size.stored, ms: performance.now() - started };
}

/** Reads the state sections of an opened (and verified) snapshot file. */
export function readVmState(file: SnapshotFile): VmState {
  const config = file.json<VmConfig>("config");
  checkConfig(config, file.path);
  const vcpus = Array.from({ length: config.cpus }, (_, i) => file.json<VcpuState>(vcpuSection(i)));
  return {
    config,
    machine: { vcpus, kernel: file.json<KernelState>("kernel") },
    devices: file.json<Record<string, unknown>>("devices"),
    debugger: file.json<DebuggerState>("debugger"),
    image: file.hasJson("image") ? file.json("image") : null,
  };
}

/** Throws a SnapshotError naming the config section when it is not a usable configuration. */
export function checkConfig(config: VmConfig, path: string): void {
  const bad = (problem: string): never => {
    throw new SnapshotError(path, "config", problem);
  };
  if (typeof config !== "object" || config === null) bad("is not an object");
  if (!Number.isSafeInteger(config.memory) || config.memory <= 0 || config.memory % PAGE_SIZE !== 0) {
    bad(`has memory ${config.memory}: not a positive multiple of 4 KiB`);
  }
  if (!Number.isInteger(config.cpus) || config.cpus < 1 || config.cpus > 255) bad(`has cpus ${config.cpus}: not 1-255`);
  if (!Array.isArray(config.regions) || config.regions.reduce((n, r) => n + r.size, 0) !== config.memory) {
    bad("has regions that do not add up to its memory size");
  }
  if (config.platform !== "pc" && config.platform !== "none") bad(`has platform ${String(config.platform)}`);
}

/**
 * Puts back, from `source`, the pages the VM's construction wrote (firmware
 * tables, the real-mode IVT) over restored memory: `pages` are guest page
 * numbers; `source(page)` gives the page's bytes, or undefined for a zero page.
 */
export function repairPages(
  memory: GuestMemory,
  pages: Iterable<number>,
  source: (page: number) => Uint8Array | undefined,
): void {
  for (const page of pages) {
    const address = page * PAGE_SIZE;
    if (!memory.isRam(address, PAGE_SIZE)) continue;
    const bytes = source(page);
    if (bytes === undefined) memory.fill(address, PAGE_SIZE, 0);
    else memory.write(address, bytes);
  }
}

/**
 * Gives `to` the breakpoints and watchpoints of `from` (same process: the
 * conditions are the same closures), for a fork.
 */
export function copyBreakpoints(from: Machine, to: Machine): void {
  const source = Debugger.attachedTo(from);
  if (source === undefined) return;
  const debug = Debugger.for(to);
  for (const bp of source.breakpoints) {
    if (bp.internal) continue;
    const options = {
      once: bp.once,
      ...(bp.condition === undefined ? {} : { condition: bp.condition }),
      ...(bp.conditionText === undefined ? {} : { conditionText: bp.conditionText }),
    };
    const made = bp.kind === "hardware" ? debug.hbreak(bp.address, options) : debug.break(bp.address, options);
    made.hits = bp.hits;
    if (!bp.enabled) debug.disable(made.id);
  }
  for (const wp of source.watchpoints) {
    const made = debug.watch(
      wp.address,
      wp.length,
      wp.access,
      wp.condition === undefined ? {} : { condition: wp.condition },
    );
    made.hits = wp.hits;
    if (!wp.enabled) debug.disable(made.id);
  }
}

/**
 * Reads guest pages (address / 4096) from a snapshot file's memory area:
 * `read(page)` gives the page's bytes, or undefined when it is not stored
 * (all zero). Keeps one handle open until `close()`.
 */
export function snapshotPageSource(
  file: SnapshotFile,
  config: VmConfig,
): { read: (page: number) => Uint8Array | undefined; close: () => void } {
  let handle: Deno.FsFile | undefined;
  const read = (page: number): Uint8Array | undefined => {
    const address = page * PAGE_SIZE;
    let offset = file.memoryOffset;
    let firstPage = 0;
    for (const region of config.regions) {
      if (address >= region.base && address < region.base + region.size) {
        const index = (address - region.base) / PAGE_SIZE;
        if (file.storedPages(firstPage + index, 1).length === 0) return undefined;
        const bytes = new Uint8Array(PAGE_SIZE);
        handle ??= Deno.openSync(file.path, { read: true });
        handle.seekSync(offset + index * PAGE_SIZE, Deno.SeekMode.Start);
        let done = 0;
        while (done < PAGE_SIZE) {
          const n = handle.readSync(bytes.subarray(done));
          if (n === null || n === 0) throw new SnapshotError(file.path, "memory", "is truncated");
          done += n;
        }
        return bytes;
      }
      offset += region.size;
      firstPage += region.size / PAGE_SIZE;
    }
    return undefined;
  };
  return { read, close: () => handle?.close() };
}
