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
  ENXIO,
  errnoName,
  lastErrno,
  MAP_ANONYMOUS,
  MAP_FAILED,
  MAP_FIXED,
  MAP_NORESERVE,
  MAP_PRIVATE,
  MAP_SHARED,
  MFD_CLOEXEC,
  O_CLOEXEC,
  O_RDONLY,
  O_RDWR,
  pointerValue,
  PROT_READ,
  PROT_WRITE,
  SEEK_DATA,
  SEEK_HOLE,
  sys,
  viewNative,
} from "./_ffi.ts";
import { ioctlName, KVM } from "./ioctls.ts";
import { INTERRUPTED, KvmRunArea, type VcpuExit } from "./exit.ts";
import { decodeVcpuEvents, KVM_VCPU_EVENTS_SIZE, type VcpuEvents } from "./vcpu_events.ts";
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

/** `state` when it has exactly `size` bytes; else a RangeError naming the struct. */
function exactly(state: Uint8Array<ArrayBuffer>, size: number, what: string): Uint8Array<ArrayBuffer> {
  if (state.length !== size) throw new RangeError(`Cannot set ${what}: ${state.length} bytes, ${size} expected`);
  return state;
}

function ioctlValue(fd: number, request: number, value: number | bigint = 0): number {
  return check(sys.ioctl_int(fd, request, BigInt(value)), request);
}

/**
 * A memfd shared by the mappings made from it (guest RAM and its forks);
 * closed when the last of them is.
 */
class SharedFd {
  refs = 1;
  constructor(readonly fd: number) {}
  release(): void {
    if (--this.refs === 0) sys.close(this.fd);
  }
}

/**
 * What backs a {@link HostMapping}:
 * - `"anonymous"`: private anonymous memory;
 * - `"memfd"`: a memfd mapped shared (guest RAM: the memfd can later be
 *   frozen and mapped copy-on-write by forks);
 * - `"memfd-private"`: a frozen memfd mapped copy-on-write (a fork, or the VM
 *   it was forked from);
 * - `"file-private"`: a file mapped copy-on-write (a snapshot restored with
 *   `memory: "cow"`).
 */
export type MappingBacking = "anonymous" | "memfd" | "memfd-private" | "file-private";

function mapOrThrow(pointer: Deno.PointerValue, what: string): Deno.PointerObject {
  if (pointer === null || pointerValue(pointer) === BigInt.asUintN(64, MAP_FAILED)) {
    throw new KvmError("mmap", lastErrno(), what);
  }
  return pointer;
}

/** Host memory mapped into this process (guest RAM, scratch pages, kvm_run). */
export class HostMapping {
  /** Size in bytes. */
  readonly size: number;
  /** Host virtual address, for KVM_SET_USER_MEMORY_REGION. */
  readonly address: bigint;
  /** The whole mapping as bytes. */
  readonly bytes: Uint8Array;
  #pointer: Deno.PointerValue;
  #backing: MappingBacking;
  #memfd: SharedFd | undefined;

  private constructor(pointer: Deno.PointerObject, size: number, backing: MappingBacking, memfd?: SharedFd) {
    this.#pointer = pointer;
    this.size = size;
    this.address = pointerValue(pointer);
    this.bytes = new Uint8Array(viewNative(pointer, size));
    this.#backing = backing;
    this.#memfd = memfd;
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
    return new HostMapping(mapOrThrow(pointer, `${size} bytes of guest memory`), size, "anonymous");
  }

  /**
   * Maps `size` bytes of zeroed memory from a new memfd, shared, so that
   * {@link freeze} can later turn it into a copy-on-write base for forks at
   * no copying cost. Falls back to {@link anonymous} where memfd_create is
   * refused (old kernels, seccomp).
   */
  static memfd(size: number, name = "hvsh-guest-ram"): HostMapping {
    const fd = sys.memfd_create(cString(name), MFD_CLOEXEC);
    if (fd < 0) return HostMapping.anonymous(size);
    if (sys.ftruncate(fd, BigInt(size)) < 0) {
      const errno = lastErrno();
      sys.close(fd);
      throw new KvmError("ftruncate", errno, `memfd of ${size} bytes`);
    }
    const pointer = sys.mmap(null, BigInt(size), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0n);
    const shared = new SharedFd(fd);
    try {
      return new HostMapping(mapOrThrow(pointer, `${size} bytes of guest memory (memfd)`), size, "memfd", shared);
    } catch (error) {
      shared.release();
      throw error;
    }
  }

  /**
   * Maps `size` bytes of a file at `offset` copy-on-write (MAP_PRIVATE):
   * pages are read from the file on first touch and shared with every other
   * private mapping of it until written. `offset` must be page-aligned.
   */
  static privateFile(path: string, offset: number, size: number): HostMapping {
    const fd = sys.open(cString(path), O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0) throw new KvmError(`open ${path}`, lastErrno());
    try {
      const pointer = sys.mmap(
        null,
        BigInt(size),
        PROT_READ | PROT_WRITE,
        MAP_PRIVATE | MAP_NORESERVE,
        fd,
        BigInt(offset),
      );
      return new HostMapping(mapOrThrow(pointer, `${size} bytes of ${path} at ${offset}`), size, "file-private");
    } finally {
      sys.close(fd); // the mapping keeps the file
    }
  }

  /** Maps a file descriptor shared (the vCPU's kvm_run area). */
  static shared(fd: number, size: number): HostMapping {
    const pointer = sys.mmap(null, BigInt(size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0n);
    return new HostMapping(mapOrThrow(pointer, `kvm_run of fd ${fd}`), size, "anonymous");
  }

  /** What backs the mapping. */
  get backing(): MappingBacking {
    return this.#backing;
  }

  /**
   * Turns a `"memfd"` mapping into a copy-on-write one over the same memfd
   * (mmap MAP_FIXED at the same address, so KVM's memory slots and every
   * view stay valid): from now on nobody writes the memfd, and
   * {@link forkPrivate} maps it for others. Costs a syscall, no copy; the
   * pages already faulted in are faulted again, from the page cache.
   */
  freeze(): void {
    if (this.#backing === "memfd-private") return;
    if (this.#backing !== "memfd" || this.#memfd === undefined || this.#pointer === null) {
      throw new Error(`Cannot freeze ${this.#backing} memory: only memfd-backed guest RAM can be shared copy-on-write`);
    }
    const pointer = sys.mmap_fixed(
      this.address,
      BigInt(this.size),
      PROT_READ | PROT_WRITE,
      MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE,
      this.#memfd.fd,
      0n,
    );
    mapOrThrow(pointer, `remapping ${this.size} bytes copy-on-write`);
    this.#backing = "memfd-private";
  }

  /**
   * Maps `base`'s memfd copy-on-write at this mapping's address (MAP_FIXED,
   * so slots and views stay valid) and makes it this mapping's backing:
   * `base` must be a `"memfd"` mapping of the same size holding the bytes
   * wanted. `base` may be closed afterwards.
   */
  rebaseOnto(base: HostMapping): void {
    const memfd = base.#memfd;
    if (base.#backing !== "memfd" || memfd === undefined || base.size !== this.size || this.#pointer === null) {
      throw new Error(`Cannot rebase ${this.size} bytes onto ${base.#backing} memory of ${base.size} bytes`);
    }
    const pointer = sys.mmap_fixed(
      this.address,
      BigInt(this.size),
      PROT_READ | PROT_WRITE,
      MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE,
      memfd.fd,
      0n,
    );
    mapOrThrow(pointer, `remapping ${this.size} bytes copy-on-write`);
    memfd.refs++;
    this.#memfd?.release();
    this.#memfd = memfd;
    this.#backing = "memfd-private";
  }

  /** A new copy-on-write mapping of this frozen mapping's memfd (see {@link freeze}). */
  forkPrivate(): HostMapping {
    const memfd = this.#memfd;
    if (this.#backing !== "memfd-private" || memfd === undefined) {
      throw new Error(`Cannot fork ${this.#backing} memory: freeze() it first`);
    }
    const pointer = sys.mmap(
      null,
      BigInt(this.size),
      PROT_READ | PROT_WRITE,
      MAP_PRIVATE | MAP_NORESERVE,
      memfd.fd,
      0n,
    );
    const mapping = new HostMapping(
      mapOrThrow(pointer, `${this.size} bytes copy-on-write`),
      this.size,
      "memfd-private",
      memfd,
    );
    memfd.refs++;
    return mapping;
  }

  /**
   * The byte ranges `[start, end)` of the backing memfd that hold data
   * (lseek SEEK_DATA / SEEK_HOLE): everything else reads as zero there.
   * Undefined for mappings without a memfd.
   */
  memfdDataRanges(): [number, number][] | undefined {
    const memfd = this.#memfd;
    if (memfd === undefined) return undefined;
    const ranges: [number, number][] = [];
    let at = 0n;
    const end = BigInt(this.size);
    while (at < end) {
      const data = sys.lseek(memfd.fd, at, SEEK_DATA);
      if (data < 0n) {
        if (lastErrno() === ENXIO) break;
        return undefined;
      }
      const hole = sys.lseek(memfd.fd, data, SEEK_HOLE);
      if (hole < 0n) return undefined;
      ranges.push([Number(data), Number(hole < end ? hole : end)]);
      at = hole;
    }
    return ranges;
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
    this.#memfd?.release();
    this.#memfd = undefined;
  }

  /** `using mapping = HostMapping.anonymous(n)` unmaps it at scope exit. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * The byte ranges `[start, end)` within `[from, to)` of a file that hold
 * data (lseek SEEK_DATA / SEEK_HOLE); the rest are holes that read as zero.
 * A file system without hole reporting reports one range covering all.
 */
export function fileDataRanges(path: string, from: number, to: number): [number, number][] {
  const fd = sys.open(cString(path), O_RDONLY | O_CLOEXEC, 0);
  if (fd < 0) throw new KvmError(`open ${path}`, lastErrno());
  try {
    const ranges: [number, number][] = [];
    let at = BigInt(from);
    const end = BigInt(to);
    while (at < end) {
      const data = sys.lseek(fd, at, SEEK_DATA);
      if (data < 0n) {
        if (lastErrno() === ENXIO) break;
        return [[from, to]];
      }
      if (data >= end) break;
      const hole = sys.lseek(fd, data, SEEK_HOLE);
      if (hole < 0n) return [[from, to]];
      ranges.push([Number(data), Number(hole < end ? hole : end)]);
      at = hole;
    }
    return ranges;
  } finally {
    sys.close(fd);
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

  /**
   * KVM_GET_MSR_INDEX_LIST: the MSRs KVM saves and restores for a vCPU
   * (41 on this nested host, the TSC and kvm-clock's among them).
   */
  msrIndexList(): number[] {
    const max = 1024;
    const buffer = new Uint8Array(4 + max * 4);
    const view = new DataView(buffer.buffer);
    view.setUint32(0, max, true);
    ioctlBuffer(this.fd, KVM.GET_MSR_INDEX_LIST, buffer);
    const count = view.getUint32(0, true);
    return Array.from({ length: count }, (_, i) => view.getUint32(4 + i * 4, true));
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

  /**
   * KVM_IOEVENTFD: guest writes of `length` bytes (1, 2, 4, 8; 0 = any) to
   * `address` (MMIO, or a port with `pio`) signal the eventfd `eventFd`
   * inside KVM, without an exit to user space. `datamatch` narrows it to
   * writes of that value. `deassign` removes a binding made with the same
   * arguments. Layout: `struct kvm_ioeventfd` { u64 datamatch; u64 addr;
   * u32 len; s32 fd; u32 flags; u8 pad[36] } (64 bytes).
   */
  ioeventfd(
    eventFd: number,
    address: bigint,
    length: number,
    options: { pio?: boolean; datamatch?: bigint; deassign?: boolean } = {},
  ): void {
    const buffer = new Uint8Array(64);
    const view = new DataView(buffer.buffer);
    view.setBigUint64(0, options.datamatch ?? 0n, true);
    view.setBigUint64(8, address, true);
    view.setUint32(16, length, true);
    view.setInt32(20, eventFd, true);
    const flags = (options.datamatch === undefined ? 0 : 1) | (options.pio ? 2 : 0) | (options.deassign ? 4 : 0);
    view.setUint32(24, flags, true);
    ioctlBuffer(this.#open(), KVM.IOEVENTFD, buffer, `fd ${eventFd} at 0x${address.toString(16)}, ${length} bytes`);
  }

  /**
   * KVM_IRQFD: a write to the eventfd `eventFd` raises GSI `gsi` inside KVM
   * (an edge; no resample fd). `deassign` removes the binding. Layout:
   * `struct kvm_irqfd` { u32 fd; u32 gsi; u32 flags; u32 resamplefd; u8 pad[16] } (32 bytes).
   */
  irqfd(eventFd: number, gsi: number, deassign = false): void {
    const buffer = new Uint8Array(32);
    const view = new DataView(buffer.buffer);
    view.setUint32(0, eventFd, true);
    view.setUint32(4, gsi, true);
    view.setUint32(8, deassign ? 1 : 0, true);
    ioctlBuffer(this.#open(), KVM.IRQFD, buffer, `fd ${eventFd} on GSI ${gsi}`);
  }

  /**
   * KVM_GET_CLOCK: kvm-clock's `struct kvm_clock_data` (48 bytes): the
   * guest's clock in ns at offset 0, flags at 8.
   */
  getClock(): Uint8Array<ArrayBuffer> {
    const buffer = new Uint8Array(48);
    ioctlBuffer(this.#open(), KVM.GET_CLOCK, buffer);
    return buffer;
  }

  /**
   * KVM_SET_CLOCK with a `struct kvm_clock_data`. Only the clock value is
   * given (flags cleared), so the guest's clock goes on from it whatever the
   * host's TSC reads, as Firecracker and QEMU restore it.
   */
  setClock(data: Uint8Array<ArrayBuffer>): void {
    const buffer = new Uint8Array(48);
    buffer.set(data.subarray(0, 8));
    ioctlBuffer(this.#open(), KVM.SET_CLOCK, buffer);
  }

  /** KVM_CHECK_EXTENSION on the VM fd (some answers, such as KVM_CAP_XSAVE2's size, are per VM). */
  checkExtension(capability: number): number {
    return ioctlValue(this.#open(), KVM.CHECK_EXTENSION, capability);
  }

  /**
   * KVM_GET_DIRTY_LOG: the bitmap (one bit per 4 KiB page, bit 0 of byte 0
   * first) of the pages of memory slot `slot` written since the last call;
   * the call clears the log. The slot needs KVM_MEM_LOG_DIRTY_PAGES.
   */
  getDirtyLog(slot: number, pages: number): Uint8Array<ArrayBuffer> {
    // KVM writes whole unsigned longs: round the bitmap up to 64-bit words.
    const bitmap = new Uint8Array(Math.ceil(pages / 64) * 8);
    const request = new Uint8Array(16);
    const view = new DataView(request.buffer);
    view.setUint32(0, slot, true);
    view.setBigUint64(8, pointerValue(Deno.UnsafePointer.of(bitmap)), true);
    ioctlBuffer(this.#open(), KVM.GET_DIRTY_LOG, request, `slot ${slot}`);
    return bitmap;
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

  #syncedRip: DataView | undefined;

  /**
   * rip as the last exit left it in kvm_run (KVM_CAP_SYNC_REGS), without an
   * ioctl or decoding the other registers; undefined when that exit did not
   * sync them. A recording reads it at every port and MMIO exit.
   */
  syncedRip(): bigint | undefined {
    if (this.syncedGeneration !== this.generation) return undefined;
    if (this.#syncedRip === undefined) {
      const bytes = this.#run.syncedRegsBytes(KVM_REGS_SIZE);
      // struct kvm_regs: 16 general registers, then rip.
      this.#syncedRip = new DataView(bytes.buffer, bytes.byteOffset + 16 * 8, 8);
    }
    return this.#syncedRip.getBigUint64(0, true);
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

  /** KVM_GET_VCPU_EVENTS decoded: the exception, interrupt and NMI in flight (see vcpu_events.ts). */
  vcpuEvents(): VcpuEvents {
    return decodeVcpuEvents(this.getVcpuEvents().subarray(0, KVM_VCPU_EVENTS_SIZE));
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

  /** KVM_GET_LAPIC: the local APIC's `struct kvm_lapic_state` (its 1 KiB register page). */
  getLapic(): Uint8Array<ArrayBuffer> {
    const buffer = new Uint8Array(1024);
    ioctlBuffer(this.#open(), KVM.GET_LAPIC, buffer);
    return buffer;
  }

  /** KVM_SET_LAPIC. */
  setLapic(state: Uint8Array<ArrayBuffer>): void {
    ioctlBuffer(this.#open(), KVM.SET_LAPIC, exactly(state, 1024, "struct kvm_lapic_state"));
  }

  /**
   * KVM_GET_XSAVE (`size` 4096) or KVM_GET_XSAVE2 (`size` as
   * KVM_CAP_XSAVE2 gives it, when the host's XSAVE area is larger): the
   * x87, SSE, AVX... state in the XSAVE layout.
   */
  getXsave(size = 4096): Uint8Array<ArrayBuffer> {
    const buffer = new Uint8Array(Math.max(size, 4096));
    ioctlBuffer(this.#open(), size > 4096 ? KVM.GET_XSAVE2 : KVM.GET_XSAVE, buffer);
    return buffer;
  }

  /** KVM_SET_XSAVE (the kernel reads as much as its XSAVE area needs). */
  setXsave(state: Uint8Array<ArrayBuffer>): void {
    if (state.length < 4096) {
      throw new RangeError(`Cannot set XSAVE state: ${state.length} bytes, at least 4096 needed`);
    }
    ioctlBuffer(this.#open(), KVM.SET_XSAVE, state);
  }

  /** KVM_GET_XCRS: the extended control registers (`struct kvm_xcrs`, 392 bytes; XCR0 on x86). */
  getXcrs(): Uint8Array<ArrayBuffer> {
    const buffer = new Uint8Array(392);
    ioctlBuffer(this.#open(), KVM.GET_XCRS, buffer);
    return buffer;
  }

  /** KVM_SET_XCRS. */
  setXcrs(state: Uint8Array<ArrayBuffer>): void {
    ioctlBuffer(this.#open(), KVM.SET_XCRS, exactly(state, 392, "struct kvm_xcrs"));
  }

  /**
   * KVM_GET_VCPU_EVENTS: pending and injected exceptions, interrupts, NMIs,
   * the interrupt shadow and SIPI vector (`struct kvm_vcpu_events`, 64 bytes).
   */
  getVcpuEvents(): Uint8Array<ArrayBuffer> {
    const buffer = new Uint8Array(64);
    ioctlBuffer(this.#open(), KVM.GET_VCPU_EVENTS, buffer);
    return buffer;
  }

  /** KVM_SET_VCPU_EVENTS (the flags KVM_GET_VCPU_EVENTS set say which fields are valid). */
  setVcpuEvents(state: Uint8Array<ArrayBuffer>): void {
    ioctlBuffer(this.#open(), KVM.SET_VCPU_EVENTS, exactly(state, 64, "struct kvm_vcpu_events"));
  }

  /** KVM_GET_TSC_KHZ: the guest's TSC frequency. */
  getTscKhz(): number {
    return ioctlValue(this.#open(), KVM.GET_TSC_KHZ);
  }

  /** KVM_SET_TSC_KHZ (needs KVM_CAP_TSC_CONTROL). */
  setTscKhz(khz: number): void {
    ioctlValue(this.#open(), KVM.SET_TSC_KHZ, khz);
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
