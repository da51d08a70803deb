/**
 * The machine's KVM state as plain JSON data, for snapshots, clones and
 * migration: for every vCPU (application processors included) the general
 * and special registers, the FPU/SSE/AVX state (XSAVE), the XCRs, every MSR
 * KVM lists for saving (the TSC and kvm-clock's among them), the debug
 * registers, the local APIC, pending events (KVM_GET_VCPU_EVENTS), the MP
 * state, the CPUID table and the TSC frequency; for the VM the in-kernel
 * PICs, IOAPIC and PIT and kvm-clock (KVM_GET_CLOCK).
 *
 * KVM structs are kept as their raw bytes (base64): they go back into the
 * same ioctls unchanged, so nothing is lost in a translation.
 *
 * Which path serves which host (KVM_CHECK_EXTENSION decides, at capture):
 * - XSAVE: KVM_GET_XSAVE (or KVM_GET_XSAVE2 when KVM_CAP_XSAVE2 reports an
 *   area over 4 KiB) where KVM_CAP_XSAVE is present, which includes this
 *   nested host (the guest cannot execute XSAVE here, but KVM's ioctl
 *   works); KVM_GET_FPU (x87 and SSE only) on hosts without it.
 * - XCRs only with KVM_CAP_XCRS; vCPU events only with KVM_CAP_VCPU_EVENTS;
 *   the LAPIC, PIC, IOAPIC and PIT only on machines with the in-kernel
 *   irqchip.
 * - The TSC frequency is recorded; a restore sets it only with
 *   KVM_CAP_TSC_CONTROL (absent here) and otherwise keeps the host's.
 * - MSRs: KVM_GET_MSR_INDEX_LIST, less any KVM then refuses to read for
 *   this vCPU (probed one by one, once per machine).
 *
 * @module
 */

import type { Kvm, VcpuFd, VmFd } from "./kvm/kvm.ts";
import { KVM_CAP } from "./kvm/ioctls.ts";
import {
  decodeCpuid,
  decodeDebugRegs,
  decodeFpu,
  decodeRegs,
  decodeSregs,
  encodeCpuid,
  encodeDebugRegs,
  encodeFpu,
  encodeRegs,
  encodeSregs,
  KVM_DEBUGREGS_SIZE,
  KVM_FPU_SIZE,
  KVM_IRQCHIP_SIZE,
  KVM_PIT_STATE2_SIZE,
  KVM_REGS_SIZE,
  KVM_SREGS_SIZE,
} from "./kvm/structs.ts";

/** One vCPU's KVM state: raw KVM structs as base64, MSRs as hex strings. */
export interface VcpuState {
  /** The vCPU index (APIC id). */
  index: number;
  /** KVM_MP_STATE_* (0 runnable, 1 uninitialised, 2 INIT received, 3 halted, 4 SIPI received). */
  mpState: number;
  /** `struct kvm_regs`. */
  regs: string;
  /** `struct kvm_sregs`. */
  sregs: string;
  /** `struct kvm_xsave` (KVM_CAP_XSAVE hosts), else absent. */
  xsave?: string;
  /** `struct kvm_fpu` (hosts without KVM_CAP_XSAVE), else absent. */
  fpu?: string;
  /** `struct kvm_xcrs` (KVM_CAP_XCRS hosts). */
  xcrs?: string;
  /** `struct kvm_debugregs`. */
  debugRegs: string;
  /** `struct kvm_lapic_state` (machines with the in-kernel irqchip). */
  lapic?: string;
  /** `struct kvm_vcpu_events` (KVM_CAP_VCPU_EVENTS hosts). */
  events?: string;
  /** MSR number to value, both as `0x` hex (values are 64-bit). */
  msrs: Record<string, string>;
  /** `struct kvm_cpuid2` with its entries, as KVM_SET_CPUID2 takes it. */
  cpuid: string;
  /** The guest TSC frequency in kHz (KVM_GET_TSC_KHZ), when the host reports it. */
  tscKhz?: number;
}

/** The VM-wide kernel state. */
export interface KernelState {
  /** `struct kvm_irqchip` of the master PIC, the slave PIC and the IOAPIC (in-kernel irqchip only). */
  irqchip?: { picMaster: string; picSlave: string; ioapic: string };
  /** `struct kvm_pit_state2` (in-kernel PIT only). */
  pit?: string;
  /** kvm-clock: `struct kvm_clock_data` (KVM_CAP_ADJUST_CLOCK hosts). */
  clock?: string;
}

/** The machine's whole KVM state (guest memory and device models are elsewhere). */
export interface MachineState {
  vcpus: VcpuState[];
  kernel: KernelState;
}

/** What this host lets a machine save, probed once per machine. */
export interface StateCapabilities {
  /** XSAVE area size for KVM_GET_XSAVE/2, or undefined to use KVM_GET_FPU. */
  xsaveSize: number | undefined;
  xcrs: boolean;
  events: boolean;
  clock: boolean;
  tscControl: boolean;
  irqchip: boolean;
  /** The MSRs KVM lists and lets this machine's vCPUs read. */
  msrs: number[];
}

// Uint8Array's own base64 (not node:buffer): the first node: module a process imports costs it ~6 ms and 6 MiB.
function b64(bytes: Uint8Array): string {
  return bytes.toBase64();
}

/** Decodes one base64 field of a state, checking its length; the error names the vCPU and field. */
function bytesOf(what: string, text: unknown, size: number | [number, number]): Uint8Array<ArrayBuffer> {
  if (typeof text !== "string") throw new TypeError(`Cannot restore ${what}: expected base64 text, got ${typeof text}`);
  let bytes: Uint8Array<ArrayBuffer>;
  try {
    bytes = Uint8Array.fromBase64(text);
  } catch {
    throw new TypeError(`Cannot restore ${what}: ${JSON.stringify(text.slice(0, 40))} is not base64 text`);
  }
  const [min, max] = typeof size === "number" ? [size, size] : size;
  if (bytes.length < min || bytes.length > max) {
    throw new RangeError(
      `Cannot restore ${what}: ${bytes.length} bytes, expected ${min === max ? min : `${min}-${max}`}`,
    );
  }
  return bytes;
}

/** Probes what the host can save (see the module notes for which path serves which host). */
export function probeStateCapabilities(
  kvm: Kvm,
  vmFd: VmFd,
  vcpu: VcpuFd | undefined,
  irqchip: boolean,
): StateCapabilities {
  const xsave = kvm.checkExtension(KVM_CAP.XSAVE) > 0;
  const xsave2 = xsave ? vmFd.checkExtension(KVM_CAP.XSAVE2) : 0;
  let msrs = kvm.msrIndexList();
  if (vcpu !== undefined) {
    msrs = msrs.filter((index) => {
      try {
        vcpu.getMsrs([index]);
        return true;
      } catch {
        return false;
      }
    });
  }
  return {
    xsaveSize: xsave ? Math.max(4096, xsave2) : undefined,
    xcrs: kvm.checkExtension(KVM_CAP.XCRS) > 0,
    events: kvm.checkExtension(KVM_CAP.VCPU_EVENTS) > 0,
    clock: kvm.checkExtension(KVM_CAP.ADJUST_CLOCK) > 0,
    tscControl: kvm.checkExtension(KVM_CAP.TSC_CONTROL) > 0,
    irqchip,
    msrs,
  };
}

/** Reads one vCPU's state. The vCPU must be out of KVM_RUN with its last exit completed. */
export function captureVcpu(fd: VcpuFd, caps: StateCapabilities): VcpuState {
  const state: VcpuState = {
    index: fd.id,
    mpState: fd.getMpState(),
    regs: b64(encodeRegs(fd.getRegs())),
    sregs: b64(encodeSregs(fd.getSregs())),
    debugRegs: b64(encodeDebugRegs(fd.getDebugRegs())),
    msrs: {},
    cpuid: b64(encodeCpuid(fd.getCpuid())),
  };
  if (caps.xsaveSize !== undefined) state.xsave = b64(fd.getXsave(caps.xsaveSize));
  else state.fpu = b64(encodeFpu(fd.getFpu()));
  if (caps.xcrs) state.xcrs = b64(fd.getXcrs());
  if (caps.irqchip) state.lapic = b64(fd.getLapic());
  if (caps.events) state.events = b64(fd.getVcpuEvents());
  for (const [index, value] of fd.getMsrs(caps.msrs)) {
    state.msrs[`0x${index.toString(16)}`] = `0x${value.toString(16)}`;
  }
  try {
    state.tscKhz = fd.getTscKhz();
  } catch {
    // KVM_GET_TSC_KHZ is missing on old hosts: the frequency is then the host's anyway
  }
  return state;
}

/** A vCPU state decoded and checked, ready for the ioctls (nothing is written while checking). */
interface DecodedVcpu {
  mpState: number;
  regs: Uint8Array<ArrayBuffer>;
  sregs: Uint8Array<ArrayBuffer>;
  xsave: Uint8Array<ArrayBuffer> | undefined;
  fpu: Uint8Array<ArrayBuffer> | undefined;
  xcrs: Uint8Array<ArrayBuffer> | undefined;
  debugRegs: Uint8Array<ArrayBuffer>;
  lapic: Uint8Array<ArrayBuffer> | undefined;
  events: Uint8Array<ArrayBuffer> | undefined;
  msrs: { index: number; data: bigint }[];
  cpuid: Uint8Array<ArrayBuffer>;
  tscKhz: number | undefined;
}

function decodeVcpu(state: VcpuState, caps: StateCapabilities): DecodedVcpu {
  const what = (field: string) => `vCPU ${state.index}'s ${field}`;
  if (!Number.isInteger(state.mpState) || state.mpState < 0 || state.mpState > 8) {
    throw new RangeError(`Cannot restore ${what("MP state")}: ${state.mpState} is not a KVM_MP_STATE value`);
  }
  const optional = (field: keyof VcpuState, size: number | [number, number]) =>
    state[field] === undefined ? undefined : bytesOf(what(field), state[field], size);
  const decoded: DecodedVcpu = {
    mpState: state.mpState,
    regs: bytesOf(what("regs"), state.regs, KVM_REGS_SIZE),
    sregs: bytesOf(what("sregs"), state.sregs, KVM_SREGS_SIZE),
    xsave: optional("xsave", [4096, 1 << 20]),
    fpu: optional("fpu", KVM_FPU_SIZE),
    xcrs: optional("xcrs", 392),
    debugRegs: bytesOf(what("debugRegs"), state.debugRegs, KVM_DEBUGREGS_SIZE),
    lapic: optional("lapic", 1024),
    events: optional("events", 64),
    msrs: [],
    cpuid: bytesOf(what("cpuid"), state.cpuid, [8, 8 + 256 * 40]),
    tscKhz: state.tscKhz,
  };
  if (decoded.xsave === undefined && decoded.fpu === undefined) {
    throw new RangeError(`Cannot restore ${what("FPU state")}: neither xsave nor fpu is present`);
  }
  if (decoded.xsave !== undefined && caps.xsaveSize === undefined) {
    throw new RangeError(`Cannot restore ${what("xsave")}: this host has no KVM_CAP_XSAVE (the snapshot needs it)`);
  }
  if (decoded.lapic !== undefined && !caps.irqchip) {
    throw new RangeError(`Cannot restore ${what("LAPIC")}: this machine has no in-kernel irqchip`);
  }
  if (typeof state.msrs !== "object" || state.msrs === null) {
    throw new TypeError(`Cannot restore ${what("MSRs")}: expected an object`);
  }
  for (const [index, value] of Object.entries(state.msrs)) {
    if (!/^0x[0-9a-f]{1,8}$/.test(index) || typeof value !== "string" || !/^0x[0-9a-f]{1,16}$/.test(value)) {
      throw new RangeError(`Cannot restore ${what("MSRs")}: ${index} = ${String(value)} is not a hex MSR and value`);
    }
    decoded.msrs.push({ index: parseInt(index, 16), data: BigInt(value) });
  }
  // Checked for consistency (the decoders throw on a short struct).
  decodeRegs(decoded.regs);
  decodeSregs(decoded.sregs);
  decodeDebugRegs(decoded.debugRegs);
  decodeCpuid(decoded.cpuid);
  if (decoded.fpu !== undefined) decodeFpu(decoded.fpu);
  return decoded;
}

function restoreVcpu(fd: VcpuFd, state: DecodedVcpu, caps: StateCapabilities): void {
  // Firecracker's order: CPUID first (it decides which MSRs and XSAVE features exist), the APIC
  // before the MSRs (TSC_DEADLINE needs the LAPIC's timer mode), pending events last.
  fd.setCpuid(decodeCpuid(state.cpuid));
  fd.setMpState(state.mpState);
  fd.setRegs(decodeRegs(state.regs));
  fd.setSregs(decodeSregs(state.sregs));
  if (state.xsave !== undefined) fd.setXsave(state.xsave);
  else fd.setFpu(decodeFpu(state.fpu!));
  if (state.xcrs !== undefined && caps.xcrs) fd.setXcrs(state.xcrs);
  fd.setDebugRegs(decodeDebugRegs(state.debugRegs));
  if (state.lapic !== undefined) fd.setLapic(state.lapic);
  // MSRs this host's KVM does not know are left out (a snapshot from a bigger host); the rest must take.
  const known = new Set(caps.msrs);
  fd.setMsrs(state.msrs.filter((m) => known.has(m.index)));
  if (state.events !== undefined && caps.events) fd.setVcpuEvents(state.events);
  if (state.tscKhz !== undefined && caps.tscControl && state.tscKhz !== fd.getTscKhz()) fd.setTscKhz(state.tscKhz);
  // The guest's kvm-clock hears that it was paused (no soft lockup after the restore), where the host can say so.
  try {
    fd.kvmclockCtrl();
  } catch {
    // a host without KVM_CAP_KVMCLOCK_CTRL: the guest is told nothing, as on a host that stopped it briefly
  }
}

/** Reads the VM-wide kernel state. */
export function captureKernel(vmFd: VmFd, caps: StateCapabilities): KernelState {
  const kernel: KernelState = {};
  if (caps.irqchip) {
    kernel.irqchip = {
      picMaster: b64(vmFd.getIrqchip(0)),
      picSlave: b64(vmFd.getIrqchip(1)),
      ioapic: b64(vmFd.getIrqchip(2)),
    };
    kernel.pit = b64(vmFd.getPit2());
  }
  if (caps.clock) kernel.clock = b64(vmFd.getClock());
  return kernel;
}

/** Reads every vCPU's and the VM's kernel state. */
export function captureMachine(vmFd: VmFd, vcpus: readonly VcpuFd[], caps: StateCapabilities): MachineState {
  return { vcpus: vcpus.map((fd) => captureVcpu(fd, caps)), kernel: captureKernel(vmFd, caps) };
}

/**
 * Writes a captured state into a machine with as many vCPUs. Every field
 * is decoded and checked first: a state that does not fit (another vCPU
 * count, a short struct, a LAPIC for a machine without irqchip) throws
 * before any ioctl, naming the vCPU and the field.
 */
export function restoreMachine(
  vmFd: VmFd,
  vcpus: readonly VcpuFd[],
  state: MachineState,
  caps: StateCapabilities,
): void {
  if (!Array.isArray(state.vcpus) || state.vcpus.length !== vcpus.length) {
    throw new RangeError(
      `Cannot restore the machine state: it has ${state.vcpus?.length} vCPUs, this machine ${vcpus.length}`,
    );
  }
  const decoded = state.vcpus.map((vcpu) => decodeVcpu(vcpu, caps));
  const kernel = state.kernel ?? {};
  const irqchip = kernel.irqchip === undefined ? undefined : [
    bytesOf("the master PIC", kernel.irqchip.picMaster, KVM_IRQCHIP_SIZE),
    bytesOf("the slave PIC", kernel.irqchip.picSlave, KVM_IRQCHIP_SIZE),
    bytesOf("the IOAPIC", kernel.irqchip.ioapic, KVM_IRQCHIP_SIZE),
  ];
  const pit = kernel.pit === undefined ? undefined : bytesOf("the PIT", kernel.pit, KVM_PIT_STATE2_SIZE);
  const clock = kernel.clock === undefined ? undefined : bytesOf("kvm-clock", kernel.clock, 48);
  if ((irqchip !== undefined || pit !== undefined) && !caps.irqchip) {
    throw new RangeError("Cannot restore the interrupt controllers: this machine has no in-kernel irqchip");
  }
  // The VM first (Firecracker's order): PIT, clock, then the interrupt controllers; then each vCPU.
  if (pit !== undefined) vmFd.setPit2(pit);
  if (clock !== undefined && caps.clock) vmFd.setClock(clock);
  for (const chip of irqchip ?? []) vmFd.setIrqchip(chip);
  vcpus.forEach((fd, i) => restoreVcpu(fd, decoded[i]!, caps));
}
