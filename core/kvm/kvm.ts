/**
 * Thin handles over the KVM file descriptors, shaped like rust-vmm's
 * kvm-ioctls: {@link Kvm} (the system, `/dev/kvm`), {@link VmFd} and
 * {@link VcpuFd}. Every failed ioctl becomes a {@link KvmError} naming the
 * ioctl and errno. Above this file, nothing sees a pointer.
 *
 * @module
 */

import {
  cString,
  errnoName,
  lastErrno,
  MAP_ANONYMOUS,
  MAP_FAILED,
  MAP_NORESERVE,
  MAP_PRIVATE,
  MAP_SHARED,
  O_CLOEXEC,
  O_RDWR,
  pointerValue,
  PROT_READ,
  PROT_WRITE,
  sys,
  viewNative,
} from "./_ffi.ts";
import { ioctlName, KVM } from "./ioctls.ts";
import { INTERRUPTED, KvmRunArea, type VcpuExit } from "./exit.ts";
import {
  type CpuidEntry,
  type DebugRegisters,
  decodeCpuid,
  decodeDebugRegs,
  decodeFpu,
  decodeMsrs,
  decodeRegs,
  decodeSregs,
  encodeCpuid,
  encodeDebugRegs,
  encodeFpu,
  encodeGuestDebug,
  encodeMemoryRegion,
  encodeMsrs,
  encodeRegs,
  encodeSregs,
  type FpuState,
  KVM_DEBUGREGS_SIZE,
  KVM_FPU_SIZE,
  KVM_REGS_SIZE,
  KVM_SREGS_SIZE,
  type Registers,
  type SpecialRegisters,
} from "./structs.ts";

/** A failed KVM or libc call; `errno` and `call` let callers branch on it. */
export class KvmError extends Error {
  /** The errno value. */
  readonly errno: number;
  /** The call that failed, e.g. `KVM_CREATE_VCPU`. */
  readonly call: string;
  constructor(call: string, errno: number, detail = "") {
    super(`${call} failed: ${errnoName(errno)}${detail ? ` (${detail})` : ""}`);
    this.name = "KvmError";
    this.errno = errno;
    this.call = call;
  }
}

const EINTR = 4;
const EAGAIN = 11;
const EINVAL = 22;
/** kvm_valid_regs bits: the general and the special registers. */
const KVM_SYNC_X86_REGS = 1n;
const KVM_SYNC_X86_SREGS = 2n;

function check(result: number, request: number, detail?: string): number {
  if (result < 0) throw new KvmError(ioctlName(request), lastErrno(), detail);
  return result;
}

function ioctlBuffer(fd: number, request: number, buffer: Uint8Array<ArrayBuffer>, detail?: string): number {
  return check(sys.ioctl_buf(fd, request, buffer), request, detail);
}

function ioctlValue(fd: number, request: number, value: number | bigint = 0): number {
  return check(sys.ioctl_int(fd, request, BigInt(value)), request);
}

/** Anonymous host memory mapped into this process (guest RAM, scratch pages). */
export class HostMapping {
  /** Size in bytes. */
  readonly size: number;
  /** Host virtual address, for KVM_SET_USER_MEMORY_REGION. */
  readonly address: bigint;
  /** The whole mapping as bytes. */
  readonly bytes: Uint8Array;
  #pointer: Deno.PointerValue;

  private constructor(pointer: Deno.PointerObject, size: number) {
    this.#pointer = pointer;
    this.size = size;
    this.address = pointerValue(pointer);
    this.bytes = new Uint8Array(viewNative(pointer, size));
  }

  /** Maps `size` bytes of zeroed, lazily committed memory. */
  static anonymous(size: number): HostMapping {
    const pointer = sys.mmap(
      null,
      BigInt(size),
      PROT_READ | PROT_WRITE,
      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
      -1,
      0n,
    );
    if (pointer === null || pointerValue(pointer) === BigInt.asUintN(64, MAP_FAILED)) {
      throw new KvmError("mmap", lastErrno(), `${size} bytes of guest memory`);
    }
    return new HostMapping(pointer, size);
  }

  /** Maps a file descriptor shared (the vCPU's kvm_run area). */
  static shared(fd: number, size: number): HostMapping {
    const pointer = sys.mmap(null, BigInt(size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0n);
    if (pointer === null || pointerValue(pointer) === BigInt.asUintN(64, MAP_FAILED)) {
      throw new KvmError("mmap", lastErrno(), `kvm_run of fd ${fd}`);
    }
    return new HostMapping(pointer, size);
  }

  /** True once {@link close} has run. */
  get closed(): boolean {
    return this.#pointer === null;
  }

  /** Unmaps the memory; the views become unusable. Idempotent. */
  close(): void {
    if (this.#pointer === null) return;
    sys.munmap(this.#pointer, BigInt(this.size));
    this.#pointer = null;
  }

  /** `using mapping = HostMapping.anonymous(n)` unmaps it at scope exit. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** A KVM system handle (`/dev/kvm`). */
export class Kvm {
  /** The file descriptor of `/dev/kvm`. */
  readonly fd: number;
  #closed = false;

  private constructor(fd: number) {
    this.fd = fd;
  }

  /**
   * Opens `/dev/kvm` and checks the API version.
   * Throws an Error explaining what to do when the device is missing or not accessible.
   */
  static open(path = "/dev/kvm"): Kvm {
    const fd = sys.open(cString(path), O_RDWR | O_CLOEXEC, 0);
    if (fd < 0) {
      const errno = lastErrno();
      const hint = errno === 2
        ? "KVM is not available: load the kvm module (modprobe kvm_intel or kvm_amd) or run on a host with virtualization enabled"
        : errno === 13 || errno === 1
        ? "you may not use KVM: add yourself to the 'kvm' group or run as root"
        : "cannot open the KVM device";
      throw new KvmError(`open ${path}`, errno, hint);
    }
    const kvm = new Kvm(fd);
    const version = ioctlValue(fd, KVM.GET_API_VERSION);
    if (version !== 12) {
      kvm.close();
      throw new Error(`Cannot use ${path}: KVM API version ${version}, hvsh needs 12`);
    }
    return kvm;
  }

  /** True when `/dev/kvm` can be opened for reading and writing. */
  static available(path = "/dev/kvm"): boolean {
    return sys.access(cString(path), 6) === 0;
  }

  /** KVM_CHECK_EXTENSION: 0 when the capability is missing, else its value. */
  checkExtension(capability: number): number {
    return ioctlValue(this.fd, KVM.CHECK_EXTENSION, capability);
  }

  /** Size of each vCPU's kvm_run mapping. */
  vcpuMmapSize(): number {
    return ioctlValue(this.fd, KVM.GET_VCPU_MMAP_SIZE);
  }

  /** KVM_GET_SUPPORTED_CPUID. */
  supportedCpuid(): CpuidEntry[] {
    const buffer = new Uint8Array(8 + 256 * 40);
    new DataView(buffer.buffer).setUint32(0, 256, true);
    ioctlBuffer(this.fd, KVM.GET_SUPPORTED_CPUID, buffer);
    return decodeCpuid(buffer);
  }

  /** KVM_CREATE_VM. */
  createVm(): VmFd {
    return new VmFd(ioctlValue(this.fd, KVM.CREATE_VM, 0), this);
  }

  /** Closes `/dev/kvm`. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    sys.close(this.fd);
  }

  /** `using kvm = Kvm.open()` closes it at scope exit. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** A VM file descriptor. */
export class VmFd {
  /** The VM's file descriptor. */
  readonly fd: number;
  /** The system handle it came from. */
  readonly kvm: Kvm;
  #closed = false;

  constructor(fd: number, kvm: Kvm) {
    this.fd = fd;
    this.kvm = kvm;
  }

  #open(): number {
    if (this.#closed) throw new Error("Cannot use the VM: it is closed");
    return this.fd;
  }

  /** KVM_SET_USER_MEMORY_REGION; a size of 0 deletes the slot. */
  setUserMemoryRegion(slot: number, flags: number, guestAddress: bigint, size: bigint, hostAddress: bigint): void {
    ioctlBuffer(
      this.#open(),
      KVM.SET_USER_MEMORY_REGION,
      encodeMemoryRegion(slot, flags, guestAddress, size, hostAddress),
      `slot ${slot} at guest 0x${guestAddress.toString(16)}, 0x${size.toString(16)} bytes`,
    );
  }

  /** KVM_SET_TSS_ADDR (Intel needs three pages for real-mode emulation). */
  setTssAddress(address: number): void {
    ioctlValue(this.#open(), KVM.SET_TSS_ADDR, address);
  }

  /** KVM_SET_IDENTITY_MAP_ADDR. */
  setIdentityMapAddress(address: bigint): void {
    const buffer = new Uint8Array(8);
    new DataView(buffer.buffer).setBigUint64(0, address, true);
    ioctlBuffer(this.#open(), KVM.SET_IDENTITY_MAP_ADDR, buffer);
  }

  /** KVM_CREATE_IRQCHIP: in-kernel PIC, IOAPIC and LAPICs. */
  createIrqchip(): void {
    ioctlValue(this.#open(), KVM.CREATE_IRQCHIP);
  }

  /** KVM_CREATE_PIT2 with default flags. */
  createPit2(): void {
    ioctlBuffer(this.#open(), KVM.CREATE_PIT2, new Uint8Array(64));
  }

  /**
   * KVM_GET_IRQCHIP: the raw `struct kvm_irqchip` state (520 bytes) of chip 0
   * (master PIC), 1 (slave PIC) or 2 (IOAPIC).
   */
  getIrqchip(chip: number): Uint8Array<ArrayBuffer> {
    const buffer = new Uint8Array(520);
    new DataView(buffer.buffer).setUint32(0, chip, true);
    ioctlBuffer(this.#open(), KVM.GET_IRQCHIP, buffer, `chip ${chip}`);
    return buffer;
  }

  /** KVM_SET_IRQCHIP with a raw `struct kvm_irqchip` (as {@link getIrqchip} returns). */
  setIrqchip(state: Uint8Array<ArrayBuffer>): void {
    ioctlBuffer(this.#open(), KVM.SET_IRQCHIP, state);
  }

  /** KVM_GET_PIT2: the raw `struct kvm_pit_state2` (112 bytes). */
  getPit2(): Uint8Array<ArrayBuffer> {
    const buffer = new Uint8Array(112);
    ioctlBuffer(this.#open(), KVM.GET_PIT2, buffer);
    return buffer;
  }

  /** KVM_SET_PIT2 with a raw `struct kvm_pit_state2`. */
  setPit2(state: Uint8Array<ArrayBuffer>): void {
    ioctlBuffer(this.#open(), KVM.SET_PIT2, state);
  }

  /** KVM_IRQ_LINE: set a GSI's level. */
  irqLine(irq: number, level: boolean): void {
    const buffer = new Uint8Array(8);
    const view = new DataView(buffer.buffer);
    view.setUint32(0, irq, true);
    view.setUint32(4, level ? 1 : 0, true);
    ioctlBuffer(this.#open(), KVM.IRQ_LINE, buffer);
  }

  /** KVM_CREATE_VCPU, mapping its kvm_run area. */
  createVcpu(id: number): VcpuFd {
    const fd = ioctlValue(this.#open(), KVM.CREATE_VCPU, id);
    return new VcpuFd(fd, id, this.kvm.vcpuMmapSize());
  }

  /** Closes the VM fd. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    sys.close(this.fd);
  }

  /** `using vm = kvm.createVm()` closes it at scope exit. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** A vCPU file descriptor with its mapped `struct kvm_run`. */
export class VcpuFd {
  /** The vCPU's file descriptor. */
  readonly fd: number;
  /** The vCPU id (APIC id). */
  readonly id: number;
  /**
   * Counts KVM_RUN calls made through this handle: state read before a run
   * is stale after it. (Runs on an application processor's thread do not
   * count; its Vcpu forgets its cache explicitly.)
   */
  generation = 0;
  /** The generation whose exit left registers in kvm_run (KVM_CAP_SYNC_REGS). */
  syncedGeneration = -1;
  readonly #mapping: HostMapping;
  readonly #run: KvmRunArea;
  /** False for a handle borrowed by another thread: closing it unmaps kvm_run but leaves the fd to its owner. */
  readonly #ownsFd: boolean;
  #sync = false;
  #closed = false;

  constructor(fd: number, id: number, mmapSize: number, ownsFd = true) {
    this.fd = fd;
    this.id = id;
    this.#ownsFd = ownsFd;
    this.#mapping = HostMapping.shared(fd, mmapSize);
    this.#run = new KvmRunArea(this.#mapping.bytes);
  }

  /**
   * A second handle on a vCPU another thread owns (an application
   * processor's Worker gets its own vCPU this way, and the main vCPU's, to
   * set its immediate_exit). It maps kvm_run again; `close()` unmaps it and
   * leaves the fd open.
   */
  static borrow(fd: number, id: number, mmapSize: number): VcpuFd {
    return new VcpuFd(fd, id, mmapSize, false);
  }

  /** The size of the kvm_run mapping, for {@link borrow} on another thread. */
  get mmapSize(): number {
    return this.#mapping.size;
  }

  /** Throws once the vCPU is closed, so a reused fd number is never touched. */
  #open(): number {
    if (this.#closed) throw new Error(`Cannot use vCPU ${this.id}: its VM is closed`);
    return this.fd;
  }

  /**
   * KVM_RUN, returning the decoded exit (valid until the next run). A run
   * interrupted by a signal (hvsh's kick: EINTR, or EAGAIN) is an
   * `interrupted` exit, not an error.
   */
  run(): VcpuExit {
    if (this.#sync) this.syncedGeneration = this.generation + 1;
    this.generation++;
    if (sys.ioctl(this.#open(), KVM.RUN, null) < 0) {
      const errno = lastErrno();
      if (errno === EINTR || errno === EAGAIN) return INTERRUPTED;
      throw new KvmError("KVM_RUN", errno, `vCPU ${this.id}`);
    }
    return this.#run.decode();
  }

  /** The exit left in kvm_run by the last KVM_RUN (also one made on another thread). */
  lastExit(): VcpuExit {
    return this.#run.decode();
  }

  /**
   * Sets kvm_run.immediate_exit (KVM_CAP_IMMEDIATE_EXIT): the next KVM_RUN
   * returns at once. Another thread sets it before kicking this vCPU, so a
   * kick that lands just before KVM_RUN is not lost.
   */
  requestImmediateExit(on = true): void {
    this.#run.immediateExit = on;
  }

  /**
   * KVM_CAP_SYNC_REGS: while on, every exit leaves the general and special
   * registers in kvm_run, so they can be read without an ioctl (each costs
   * ~6 µs on nested KVM). Costs ~0.15 µs per exit, so the debugger turns it
   * on only while it steps.
   */
  setSyncRegs(on: boolean): void {
    if (on === this.#sync) return;
    this.#run.validRegs = on ? KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS : 0n;
    this.#sync = on;
  }

  /** The registers kvm_run holds after a run with sync on. */
  syncedRegs(): Registers {
    return decodeRegs(this.#run.syncedRegsBytes(KVM_REGS_SIZE));
  }

  /** The special registers kvm_run holds after a run with sync on. */
  syncedSregs(): SpecialRegisters {
    return decodeSregs(this.#run.syncedSregsBytes(KVM_SREGS_SIZE));
  }

  /** KVM_GET_REGS. */
  getRegs(): Registers {
    const buffer = new Uint8Array(KVM_REGS_SIZE);
    ioctlBuffer(this.#open(), KVM.GET_REGS, buffer);
    return decodeRegs(buffer);
  }

  /** KVM_SET_REGS. */
  setRegs(regs: Registers): void {
    ioctlBuffer(this.#open(), KVM.SET_REGS, encodeRegs(regs));
  }

  /** KVM_GET_SREGS. */
  getSregs(): SpecialRegisters {
    const buffer = new Uint8Array(KVM_SREGS_SIZE);
    ioctlBuffer(this.#open(), KVM.GET_SREGS, buffer);
    return decodeSregs(buffer);
  }

  /** KVM_SET_SREGS. */
  setSregs(sregs: SpecialRegisters): void {
    ioctlBuffer(this.#open(), KVM.SET_SREGS, encodeSregs(sregs));
  }

  /** KVM_GET_FPU. */
  getFpu(): FpuState {
    const buffer = new Uint8Array(KVM_FPU_SIZE);
    ioctlBuffer(this.#open(), KVM.GET_FPU, buffer);
    return decodeFpu(buffer);
  }

  /** KVM_SET_FPU. */
  setFpu(fpu: FpuState): void {
    ioctlBuffer(this.#open(), KVM.SET_FPU, encodeFpu(fpu));
  }

  /** KVM_GET_MSRS for the given indices; throws when KVM does not know one. */
  getMsrs(indices: readonly number[]): Map<number, bigint> {
    const buffer = encodeMsrs(indices.map((index) => ({ index, data: 0n })));
    const read = ioctlBuffer(this.#open(), KVM.GET_MSRS, buffer);
    if (read !== indices.length) {
      const bad = indices[read]!;
      throw new RangeError(`Cannot read MSR 0x${bad.toString(16)}: KVM does not support it`);
    }
    return new Map(decodeMsrs(buffer).map((e) => [e.index, e.data]));
  }

  /** KVM_SET_MSRS; throws when KVM refuses one. */
  setMsrs(entries: readonly { index: number; data: bigint }[]): void {
    const written = ioctlBuffer(this.#open(), KVM.SET_MSRS, encodeMsrs(entries));
    if (written !== entries.length) {
      const bad = entries[written]!;
      throw new RangeError(
        `Cannot write MSR 0x${bad.index.toString(16)} = 0x${bad.data.toString(16)}: KVM refused it`,
      );
    }
  }

  /** KVM_SET_CPUID2. */
  setCpuid(entries: readonly CpuidEntry[]): void {
    ioctlBuffer(this.#open(), KVM.SET_CPUID2, encodeCpuid(entries));
  }

  /** KVM_GET_CPUID2. */
  getCpuid(): CpuidEntry[] {
    const buffer = new Uint8Array(8 + 256 * 40);
    new DataView(buffer.buffer).setUint32(0, 256, true);
    ioctlBuffer(this.#open(), KVM.GET_CPUID2, buffer);
    return decodeCpuid(buffer);
  }

  /** KVM_SET_GUEST_DEBUG: control flags and debugreg[0..7]. */
  setGuestDebug(control: number, debugreg: readonly bigint[] = []): void {
    ioctlBuffer(this.#open(), KVM.SET_GUEST_DEBUG, encodeGuestDebug(control, debugreg));
  }

  /** KVM_GET_DEBUGREGS. */
  getDebugRegs(): DebugRegisters {
    const buffer = new Uint8Array(KVM_DEBUGREGS_SIZE);
    ioctlBuffer(this.#open(), KVM.GET_DEBUGREGS, buffer);
    return decodeDebugRegs(buffer);
  }

  /** KVM_SET_DEBUGREGS. */
  setDebugRegs(regs: DebugRegisters): void {
    ioctlBuffer(this.#open(), KVM.SET_DEBUGREGS, encodeDebugRegs(regs));
  }

  /** KVM_SET_SIGNAL_MASK: the signal mask in force while KVM_RUN executes (8-byte sigset). */
  setSignalMask(mask: bigint): void {
    const buffer = new Uint8Array(12);
    const view = new DataView(buffer.buffer);
    view.setUint32(0, 8, true);
    view.setBigUint64(4, mask, true);
    ioctlBuffer(this.#open(), KVM.SET_SIGNAL_MASK, buffer);
  }

  /** KVM_GET_MP_STATE. */
  getMpState(): number {
    const buffer = new Uint8Array(4);
    ioctlBuffer(this.#open(), KVM.GET_MP_STATE, buffer);
    return new DataView(buffer.buffer).getUint32(0, true);
  }

  /** KVM_SET_MP_STATE. */
  setMpState(state: number): void {
    const buffer = new Uint8Array(4);
    new DataView(buffer.buffer).setUint32(0, state, true);
    ioctlBuffer(this.#open(), KVM.SET_MP_STATE, buffer);
  }

  /**
   * KVM_KVMCLOCK_CTRL: tells a guest using kvm-clock that the host paused
   * this vCPU, so its watchdog does not report a soft lockup when it goes
   * on. Returns false when KVM refuses because the guest has not set up
   * kvm-clock (EINVAL), which is no error.
   */
  kvmclockCtrl(): boolean {
    if (sys.ioctl(this.#open(), KVM.KVMCLOCK_CTRL, null) >= 0) return true;
    const errno = lastErrno();
    if (errno === EINVAL) return false;
    throw new KvmError("KVM_KVMCLOCK_CTRL", errno, `vCPU ${this.id}`);
  }

  /**
   * KVM_TRANSLATE: the guest-physical address of a linear address through the
   * vCPU's current paging mode, or undefined when it is not mapped.
   */
  translate(linear: bigint): { physical: bigint; writeable: boolean } | undefined {
    const buffer = new Uint8Array(24);
    const view = new DataView(buffer.buffer);
    view.setBigUint64(0, BigInt.asUintN(64, linear), true);
    ioctlBuffer(this.#open(), KVM.TRANSLATE, buffer);
    if (buffer[16] === 0) return undefined;
    return { physical: view.getBigUint64(8, true), writeable: buffer[17] !== 0 };
  }

  /**
   * Completes a pending I/O or MMIO exit without running guest code
   * (immediate_exit, KVM_CAP_IMMEDIATE_EXIT): KVM's guest state is only
   * consistent after the exit has been completed by re-entering.
   */
  completePendingExit(): void {
    if (this.#sync) this.syncedGeneration = this.generation + 1;
    this.generation++;
    this.#run.immediateExit = true;
    try {
      if (sys.ioctl(this.#open(), KVM.RUN, null) < 0) {
        const errno = lastErrno();
        if (errno !== EINTR) throw new KvmError("KVM_RUN", errno, `completing an exit on vCPU ${this.id}`);
      }
    } finally {
      this.#run.immediateExit = false;
    }
  }

  /** Unmaps kvm_run and closes the fd (a borrowed handle leaves the fd open). Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#mapping.close();
    if (this.#ownsFd) sys.close(this.fd);
  }

  /** `using vcpu = vm.createVcpu(0)` closes it at scope exit. */
  [Symbol.dispose](): void {
    this.close();
  }
}
