import assert from "node:assert/strict";
import { decodeVcpuEvents, KVM_VCPU_EVENTS_SIZE } from "./vcpu_events.ts";

Deno.test("decodeVcpuEvents() reads the exception, interrupt, NMI and payload fields of kvm_vcpu_events", () => {
  const raw = new Uint8Array(KVM_VCPU_EVENTS_SIZE);
  const view = new DataView(raw.buffer);
  raw.set([0, 14, 1, 1]); // exception pending: #PF with an error code
  view.setUint32(4, 0x2, true);
  raw.set([1, 0x20, 0, 0], 8); // interrupt 0x20 injected
  raw.set([0, 1, 1], 12); // NMI pending, masked
  view.setUint32(20, 0x10 | 0x20, true); // flags: payload and triple fault fields valid
  raw[28] = 1;
  raw[55] = 1;
  view.setBigUint64(56, 0xdead000n, true);
  assert.deepEqual(decodeVcpuEvents(raw), {
    exception: { injected: false, pending: true, vector: 14, errorCode: 2 },
    interrupt: { injected: true, vector: 0x20, soft: false, shadow: 0 },
    nmi: { injected: false, pending: true, masked: true },
    tripleFaultPending: true,
    exceptionPayload: 0xdead000n,
  });
  view.setUint32(20, 0, true); // without the flags, the payload and triple-fault bytes mean nothing
  assert.equal(decodeVcpuEvents(raw).exceptionPayload, undefined);
  assert.equal(decodeVcpuEvents(raw).tripleFaultPending, false);
  assert.throws(() => decodeVcpuEvents(new Uint8Array(8)), { name: "RangeError", message: /8 bytes \(want 64\)/ });
});
