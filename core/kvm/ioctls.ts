/**
 * The KVM ioctl numbers hvsh uses, computed from `<linux/kvm.h>` on x86-64
 * (checked against a C program printing the macros). One table, so that an
 * error can always name the ioctl that failed.
 *
 * @module
 */

/** KVM ioctl request numbers by name. */
export const KVM = {
  GET_API_VERSION: 0xae00,
  CREATE_VM: 0xae01,
  GET_MSR_INDEX_LIST: 0xc004ae02,
  CHECK_EXTENSION: 0xae03,
  GET_VCPU_MMAP_SIZE: 0xae04,
  GET_SUPPORTED_CPUID: 0xc008ae05,
  CREATE_VCPU: 0xae41,
  SET_USER_MEMORY_REGION: 0x4020ae46,
  SET_TSS_ADDR: 0xae47,
  SET_IDENTITY_MAP_ADDR: 0x4008ae48,
  CREATE_IRQCHIP: 0xae60,
  IRQ_LINE: 0x4008ae61,
  GET_IRQCHIP: 0xc208ae62,
  SET_IRQCHIP: 0x8208ae63,
  GET_PIT2: 0x8070ae9f,
  SET_PIT2: 0x4070aea0,
  CREATE_PIT2: 0x4040ae77,
  /** `_IOW(KVMIO, 0x76, struct kvm_irqfd)`, a 32-byte struct. */
  IRQFD: 0x4020ae76,
  /** `_IOW(KVMIO, 0x79, struct kvm_ioeventfd)`, a 64-byte struct. */
  IOEVENTFD: 0x4040ae79,
  RUN: 0xae80,
  GET_REGS: 0x8090ae81,
  SET_REGS: 0x4090ae82,
  GET_SREGS: 0x8138ae83,
  SET_SREGS: 0x4138ae84,
  TRANSLATE: 0xc018ae85,
  GET_MSRS: 0xc008ae88,
  SET_MSRS: 0x4008ae89,
  SET_SIGNAL_MASK: 0x4004ae8b,
  GET_FPU: 0x81a0ae8c,
  SET_FPU: 0x41a0ae8d,
  SET_CPUID2: 0x4008ae90,
  GET_CPUID2: 0xc008ae91,
  GET_MP_STATE: 0x8004ae98,
  SET_MP_STATE: 0x4004ae99,
  SET_GUEST_DEBUG: 0x4048ae9b,
  GET_VCPU_EVENTS: 0x8040ae9f,
  SET_VCPU_EVENTS: 0x4040aea0,
  GET_DEBUGREGS: 0x8080aea1,
  SET_DEBUGREGS: 0x4080aea2,
  // Snapshot and migration state (checked with a C program printing the
  // macros of this host's <linux/kvm.h>; see docs/snapshot-format.md).
  GET_LAPIC: 0x8400ae8e,
  SET_LAPIC: 0x4400ae8f,
  GET_XSAVE: 0x9000aea4,
  SET_XSAVE: 0x5000aea5,
  GET_XSAVE2: 0x9000aecf,
  GET_XCRS: 0x8188aea6,
  SET_XCRS: 0x4188aea7,
  GET_CLOCK: 0x8030ae7c,
  SET_CLOCK: 0x4030ae7b,
  GET_DIRTY_LOG: 0x4010ae42,
  GET_TSC_KHZ: 0xaea3,
  SET_TSC_KHZ: 0xaea2,
  /** `_IO(KVMIO, 0xad)`: the host stopped the vCPU (for the guest's kvm-clock). */
  KVMCLOCK_CTRL: 0xaead,
} as const;

/** Name of an ioctl number, for error messages. */
export function ioctlName(request: number): string {
  for (const [name, value] of Object.entries(KVM)) {
    if (value === request) return `KVM_${name}`;
  }
  return `ioctl 0x${request.toString(16)}`;
}

/** KVM_CAP_* numbers hvsh checks. */
export const KVM_CAP = {
  IRQCHIP: 0,
  HLT: 1,
  USER_MEMORY: 3,
  SET_TSS_ADDR: 4,
  EXT_CPUID: 7,
  NR_VCPUS: 9,
  NR_MEMSLOTS: 10,
  IRQFD: 32,
  PIT2: 33,
  IOEVENTFD: 36,
  SET_IDENTITY_MAP_ADDR: 37,
  SET_GUEST_DEBUG: 23,
  DEBUGREGS: 50,
  READONLY_MEM: 81,
  MAX_VCPUS: 66,
  SYNC_REGS: 74,
  KVMCLOCK_CTRL: 76,
  IMMEDIATE_EXIT: 136,
  ADJUST_CLOCK: 39,
  VCPU_EVENTS: 41,
  XSAVE: 55,
  XCRS: 56,
  GET_TSC_KHZ: 61,
  TSC_CONTROL: 60,
  XSAVE2: 208,
} as const;

/** KVM_EXIT_* reasons. */
export const KVM_EXIT = {
  UNKNOWN: 0,
  EXCEPTION: 1,
  IO: 2,
  HYPERCALL: 3,
  DEBUG: 4,
  HLT: 5,
  MMIO: 6,
  IRQ_WINDOW_OPEN: 7,
  SHUTDOWN: 8,
  FAIL_ENTRY: 9,
  INTR: 10,
  SET_TPR: 11,
  TPR_ACCESS: 12,
  NMI: 16,
  INTERNAL_ERROR: 17,
  SYSTEM_EVENT: 24,
} as const;

/** Guest debug control flags (KVM_SET_GUEST_DEBUG). */
export const KVM_GUESTDBG = {
  ENABLE: 0x1,
  SINGLESTEP: 0x2,
  USE_SW_BP: 0x10000,
  USE_HW_BP: 0x20000,
  INJECT_DB: 0x40000,
  INJECT_BP: 0x80000,
  BLOCKIRQ: 0x100000,
} as const;

/** KVM_MEM_* memory slot flags. */
export const KVM_MEM_LOG_DIRTY_PAGES = 1;
/** A read-only slot: guest writes become KVM_EXIT_MMIO. */
export const KVM_MEM_READONLY = 2;
