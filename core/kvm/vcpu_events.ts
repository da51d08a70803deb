/**
 * `struct kvm_vcpu_events` (KVM_GET_VCPU_EVENTS): the exception, interrupt
 * and NMI a vCPU has in flight: pending (about to be delivered) or injected
 * (being delivered when the last exit happened, e.g. the IDT-vectoring
 * information of an exit taken while delivering an event). KVM does not
 * report the exceptions a guest takes and handles without an exit.
 *
 * @module
 */

/** Size of `struct kvm_vcpu_events`. */
export const KVM_VCPU_EVENTS_SIZE = 64;

/** The decoded `struct kvm_vcpu_events` (fields hvsh reads). */
export interface VcpuEvents {
  exception: { injected: boolean; pending: boolean; vector: number; errorCode: number | undefined };
  interrupt: { injected: boolean; vector: number; soft: boolean; shadow: number };
  nmi: { injected: boolean; pending: boolean; masked: boolean };
  /** A triple fault KVM holds pending (KVM_CAP_X86_TRIPLE_FAULT_EVENT), when reported. */
  tripleFaultPending: boolean;
  /** The exception's payload (CR2 of a #PF, DR6 of a #DB) when KVM_CAP_EXCEPTION_PAYLOAD is on. */
  exceptionPayload: bigint | undefined;
}

/**
 * Decodes `struct kvm_vcpu_events` (linux/arch/x86/include/uapi/asm/kvm.h).
 *
 * @example
 * ```ts
 * import { decodeVcpuEvents, KVM_VCPU_EVENTS_SIZE } from "./vcpu_events.ts";
 * const raw = new Uint8Array(KVM_VCPU_EVENTS_SIZE);
 * raw.set([1, 14, 1, 0, 2, 0, 0, 0]); // exception injected: #PF, error code 2
 * decodeVcpuEvents(raw).exception; // { injected: true, pending: false, vector: 14, errorCode: 2 }
 * ```
 */
export function decodeVcpuEvents(bytes: Uint8Array): VcpuEvents {
  if (bytes.length < KVM_VCPU_EVENTS_SIZE) {
    throw new RangeError(`Cannot decode kvm_vcpu_events: ${bytes.length} bytes (want ${KVM_VCPU_EVENTS_SIZE})`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const flags = view.getUint32(20, true);
  const KVM_VCPUEVENT_VALID_PAYLOAD = 0x10;
  const KVM_VCPUEVENT_VALID_TRIPLE_FAULT = 0x20;
  return {
    exception: {
      injected: bytes[0] !== 0,
      vector: bytes[1]!,
      errorCode: bytes[2] !== 0 ? view.getUint32(4, true) : undefined,
      pending: bytes[3] !== 0,
    },
    interrupt: { injected: bytes[8] !== 0, vector: bytes[9]!, soft: bytes[10] !== 0, shadow: bytes[11]! },
    nmi: { injected: bytes[12] !== 0, pending: bytes[13] !== 0, masked: bytes[14] !== 0 },
    tripleFaultPending: (flags & KVM_VCPUEVENT_VALID_TRIPLE_FAULT) !== 0 && bytes[28] !== 0,
    exceptionPayload: (flags & KVM_VCPUEVENT_VALID_PAYLOAD) !== 0 && bytes[55] !== 0
      ? view.getBigUint64(56, true)
      : undefined,
  };
}
