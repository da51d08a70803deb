// Exit handling without KVM: decoded exits from a kvm_run built by hand, and
// the plain emulation functions given made-up exits and handlers.

import assert from "node:assert/strict";
import { INTERRUPTED, KVM_RUN_LAYOUT, KvmRunArea, type VcpuExit } from "./kvm/exit.ts";
import { KVM_EXIT } from "./kvm/ioctls.ts";
import { emulateExit, emulateMmio, emulatePortIo, type ExitHandlers, stopForExit } from "./exits.ts";
import { BusDispatch } from "./bus_dispatch.ts";

const { RUN, IO, MMIO, DEBUG, INTERNAL, FAIL_ENTRY, SYSTEM_EVENT } = KVM_RUN_LAYOUT;

/** A kvm_run page as KVM would leave it after an exit. */
function kvmRun(reason: number, fill: (view: DataView, bytes: Uint8Array) => void = () => {}): KvmRunArea {
  const bytes = new Uint8Array(4096);
  const view = new DataView(bytes.buffer);
  view.setUint32(RUN.exitReason, reason, true);
  fill(view, bytes);
  return new KvmRunArea(bytes);
}

/** An I/O exit: `values` at data offset 0x100 of kvm_run, as KVM places string I/O data. */
function ioRun(direction: "in" | "out", port: number, size: number, values: number[]): KvmRunArea {
  return kvmRun(KVM_EXIT.IO, (view, bytes) => {
    bytes[IO.direction] = direction === "out" ? 1 : 0;
    bytes[IO.size] = size;
    view.setUint16(IO.port, port, true);
    view.setUint32(IO.count, Math.max(values.length, 1), true);
    view.setBigUint64(IO.dataOffset, 0x100n, true);
    values.forEach((value, i) => {
      if (size === 1) bytes[0x100 + i] = value;
      else if (size === 2) view.setUint16(0x100 + i * 2, value, true);
      else view.setUint32(0x100 + i * 4, value, true);
    });
  });
}

function mmioRun(write: boolean, address: bigint, size: number, data = 0n): KvmRunArea {
  return kvmRun(KVM_EXIT.MMIO, (view, bytes) => {
    view.setBigUint64(MMIO.address, address, true);
    view.setBigUint64(MMIO.data, data, true);
    view.setUint32(MMIO.length, size, true);
    bytes[MMIO.isWrite] = write ? 1 : 0;
  });
}

/** Handlers that record every access and claim only the ports and addresses given. */
function recorder(claimed: { ports?: Record<number, number>; mmio?: Record<string, bigint> } = {}) {
  const log: string[] = [];
  const handlers: ExitHandlers = {
    portRead(port, size) {
      log.push(`in ${port.toString(16)}/${size}`);
      return claimed.ports?.[port];
    },
    portWrite(port, size, value) {
      log.push(`out ${port.toString(16)}/${size}=${value.toString(16)}`);
      return claimed.ports?.[port] !== undefined;
    },
    mmioRead(address, size) {
      log.push(`read ${address.toString(16)}/${size}`);
      return claimed.mmio?.[address.toString(16)];
    },
    mmioWrite(address, size, data) {
      const answer = claimed.mmio?.[address.toString(16)];
      if (answer !== undefined) log.push(`write ${address.toString(16)}/${size}=${data().toString(16)}`);
      return answer !== undefined;
    },
  };
  return { log, handlers };
}

Deno.test("KvmRunArea.decode() reads each exit kind from kvm_run's layout", () => {
  const out = ioRun("out", 0x3f8, 1, [0x41]).decode();
  assert.equal(out.kind, "io-out");
  if (out.kind === "io-out") assert.deepEqual([out.port, out.size, out.count, out.value()], [0x3f8, 1, 1, 0x41]);

  const wide = ioRun("out", 0xcfc, 4, [0xdeadbeef]).decode();
  assert.equal(wide.kind === "io-out" && wide.value(), 0xdeadbeef);

  const read = mmioRun(false, 0xfee0_0030n, 4).decode();
  assert.equal(read.kind, "mmio-read");
  if (read.kind === "mmio-read") assert.deepEqual([read.address, read.size], [0xfee0_0030n, 4]);

  const write = mmioRun(true, 0x1_0000_0000n, 2, 0xffff_1234n).decode();
  assert.equal(write.kind, "mmio-write");
  if (write.kind === "mmio-write") {
    assert.equal(write.data, 0x1234n, "only the low `size` bytes are the write");
    assert.deepEqual([...write.bytes], [0x34, 0x12]);
  }

  const debug = kvmRun(KVM_EXIT.DEBUG, (view) => {
    view.setUint32(DEBUG.exception, 1, true);
    view.setBigUint64(DEBUG.pc, 0x100014n, true);
    view.setBigUint64(DEBUG.dr6, 0x4000n, true);
    view.setBigUint64(DEBUG.dr7, 0x401n, true);
  }).decode();
  assert.deepEqual(debug, { kind: "debug", exception: 1, pc: 0x100014n, dr6: 0x4000n, dr7: 0x401n });

  const internal = kvmRun(KVM_EXIT.INTERNAL_ERROR, (view) => {
    view.setUint32(INTERNAL.suberror, 1, true);
    view.setUint32(INTERNAL.ndata, 2, true);
    view.setBigUint64(INTERNAL.data, 7n, true);
    view.setBigUint64(INTERNAL.data + 8, 9n, true);
  }).decode();
  assert.deepEqual(internal, { kind: "internal-error", suberror: 1, data: [7n, 9n] });

  const failed = kvmRun(KVM_EXIT.FAIL_ENTRY, (view) => view.setBigUint64(FAIL_ENTRY.reason, 0x21n, true)).decode();
  assert.deepEqual(failed, { kind: "fail-entry", hardwareReason: 0x21n });

  const event = kvmRun(KVM_EXIT.SYSTEM_EVENT, (view) => view.setUint32(SYSTEM_EVENT.type, 2, true)).decode();
  assert.deepEqual(event, { kind: "system-event", type: 2 });

  assert.equal(kvmRun(KVM_EXIT.HLT).decode().kind, "hlt");
  assert.equal(kvmRun(KVM_EXIT.SHUTDOWN).decode().kind, "shutdown");
  assert.equal(kvmRun(KVM_EXIT.INTR).decode(), INTERRUPTED);
  assert.deepEqual(kvmRun(99).decode(), { kind: "unknown", reason: 99 });
});

Deno.test("KvmRunArea: immediate_exit and replies land at kvm_run's offsets", () => {
  const run = ioRun("in", 0x71, 2, [0, 0]);
  run.immediateExit = true;
  assert.equal(run.bytes[RUN.immediateExit], 1);
  const exit = run.decode();
  assert.equal(exit.kind, "io-in");
  if (exit.kind === "io-in") {
    exit.reply(0xbeef, 1);
    assert.equal(run.view.getUint16(0x102, true), 0xbeef);
  }
  const mmio = mmioRun(false, 0x1000n, 8);
  const read = mmio.decode();
  if (read.kind === "mmio-read") read.reply(0x1122_3344_5566_7788n);
  assert.equal(mmio.view.getBigUint64(MMIO.data, true), 0x1122_3344_5566_7788n);
});

Deno.test("emulatePortIo() writes every value of string I/O and answers reads, all-ones when unclaimed", () => {
  const { log, handlers } = recorder({ ports: { 0x3f8: 0 } });
  const out = ioRun("out", 0x3f8, 1, [0x68, 0x69, 0x0a]).decode();
  assert.equal(emulateExit(out, handlers, "ignore"), "handled");
  assert.deepEqual(log, ["out 3f8/1=68", "out 3f8/1=69", "out 3f8/1=a"]);

  const run = ioRun("in", 0x1234, 2, [0]);
  const exit = run.decode();
  assert.equal(emulateExit(exit, handlers, "ignore"), "handled");
  assert.equal(run.view.getUint16(0x100, true), 0xffff, "an unclaimed read sees all-ones");
});

Deno.test("emulatePortIo() stops on an unclaimed port under the stop policy, after completing the access", () => {
  const { handlers } = recorder();
  const run = ioRun("in", 0x99, 1, [0]);
  const stop = emulatePortIo(run.decode() as Extract<VcpuExit, { kind: "io-in" }>, handlers, "stop");
  assert.deepEqual(stop, { reason: "unhandled-io", port: 0x99, size: 1, direction: "in" });
  assert.equal(run.bytes[0x100], 0xff);
  const out = emulateExit(ioRun("out", 0x98, 4, [7]).decode(), handlers, "stop");
  assert.deepEqual(out, { reason: "unhandled-io", port: 0x98, size: 4, direction: "out", data: 7 });
});

Deno.test("emulateMmio() answers claimed reads masked to the access size; unclaimed reads see all-ones", () => {
  const { log, handlers } = recorder({ mmio: { "1000": 0xaabb_ccddn } });
  const run = mmioRun(false, 0x1000n, 2);
  assert.equal(emulateMmio(run.decode() as Extract<VcpuExit, { kind: "mmio-read" }>, handlers, "ignore"), "handled");
  assert.equal(run.view.getBigUint64(MMIO.data, true), 0xccddn);
  const unclaimed = mmioRun(false, 0x2000n, 4);
  assert.equal(emulateExit(unclaimed.decode(), handlers, "ignore"), "handled");
  assert.equal(unclaimed.view.getBigUint64(MMIO.data, true), 0xffff_ffffn);
  assert.deepEqual(log, ["read 1000/2", "read 2000/4"]);
});

Deno.test("emulateMmio() delivers claimed writes and stops on unclaimed ones under the stop policy", () => {
  const { log, handlers } = recorder({ mmio: { "1000": 0n } });
  assert.equal(emulateExit(mmioRun(true, 0x1000n, 4, 0x1234n).decode(), handlers, "stop"), "handled");
  assert.deepEqual(log, ["write 1000/4=1234"]);
  assert.equal(emulateExit(mmioRun(true, 0x3000n, 1, 0x55n).decode(), handlers, "ignore"), "handled");
  assert.deepEqual(emulateExit(mmioRun(true, 0x3000n, 1, 0x55n).decode(), handlers, "stop"), {
    reason: "unhandled-mmio",
    address: 0x3000n,
    size: 1,
    direction: "write",
    data: 0x55n,
  });
  assert.deepEqual(emulateExit(mmioRun(false, 0x3000n, 8).decode(), handlers, "stop"), {
    reason: "unhandled-mmio",
    address: 0x3000n,
    size: 8,
    direction: "read",
  });
});

Deno.test("stopForExit() names the stop of every exit the machine does not emulate", () => {
  assert.deepEqual(stopForExit({ kind: "hlt" }), { reason: "halt" });
  assert.deepEqual(stopForExit({ kind: "shutdown" }), {
    reason: "shutdown",
    cause: "triple-fault",
    detail: "triple fault (KVM_EXIT_SHUTDOWN)",
  });
  assert.deepEqual(stopForExit({ kind: "system-event", type: 2 }), {
    reason: "shutdown",
    cause: "reset",
    detail: "system event: reset",
  });
  assert.deepEqual(stopForExit({ kind: "system-event", type: 1 }), {
    reason: "shutdown",
    cause: "system-event",
    detail: "system event: shutdown",
  });
  const bytes = Uint8Array.of(0x0f, 0x01, 0xd0);
  assert.deepEqual(stopForExit({ kind: "internal-error", suberror: 1, data: [] }, () => bytes), {
    reason: "internal-error",
    suberror: 1,
    detail: "KVM internal error: emulation failure (suberror 1)",
    bytes,
  });
  assert.deepEqual(stopForExit({ kind: "internal-error", suberror: 3, data: [] }, () => undefined), {
    reason: "internal-error",
    suberror: 3,
    detail: "KVM internal error: failed event delivery (suberror 3)",
  });
  assert.deepEqual(stopForExit({ kind: "fail-entry", hardwareReason: 0x80000021n }), {
    reason: "internal-error",
    suberror: 0x21,
    detail: "VM entry failed: hardware reason 0x80000021 (invalid guest state)",
  });
  assert.deepEqual(stopForExit({ kind: "unknown", reason: 42 }), {
    reason: "internal-error",
    suberror: 0,
    detail: "unexpected KVM exit reason 42",
  });
  const debug = stopForExit({ kind: "debug", exception: 3, pc: 0n, dr6: 0n, dr7: 0n });
  assert.equal(debug.reason, "internal-error");
  assert.match((debug as { detail: string }).detail, /debug exit \(exception 3\) with no debugger attached/);
});

Deno.test("emulateExit() treats an interrupted run as handled and every other exit as its stop", () => {
  const { log, handlers } = recorder();
  assert.equal(emulateExit(INTERRUPTED, handlers, "stop"), "handled");
  assert.deepEqual(emulateExit({ kind: "hlt" }, handlers, "stop"), { reason: "halt" });
  assert.deepEqual(log, [], "no handler sees a non-I/O exit");
});

Deno.test("BusDispatch: hooks see every access in range and may answer reads; devices answer the rest", () => {
  const dispatch = new BusDispatch();
  const written: number[] = [];
  dispatch.io.insert(0x70, 2, "cmos", { read: (offset) => 0x10 + offset, write: (_o, _s, v) => void written.push(v) });
  const seen: string[] = [];
  const remove = dispatch.onIo([0x71, 0x72], (access) => {
    seen.push(`${access.direction} ${access.port.toString(16)}`);
    return access.port === 0x72 ? 0x99 : undefined;
  });
  assert.equal(dispatch.portRead(0x70, 1), 0x10);
  assert.equal(dispatch.portRead(0x71, 1), 0x11, "a hook that does not answer leaves the read to the device");
  assert.equal(dispatch.portRead(0x72, 1), 0x99);
  assert.equal(dispatch.portRead(0x73, 1), undefined, "nothing claims port 0x73");
  assert.equal(dispatch.portWrite(0x71, 1, 5), true);
  assert.equal(dispatch.portWrite(0x73, 1, 5), false);
  assert.deepEqual(seen, ["in 71", "in 72", "out 71"]);
  assert.deepEqual(written, [5]);
  remove();
  assert.equal(dispatch.portRead(0x72, 1), undefined, "the removed hook no longer claims port 0x72");

  const reads: bigint[] = [];
  dispatch.onMmio([0x1000n, 0x1fffn], (access) => void reads.push(access.address));
  assert.equal(dispatch.mmioRead(0x1008n, 4), -1n, "a watching hook claims the read; it sees all-ones");
  assert.equal(dispatch.mmioRead(0x2000n, 4), undefined);
  assert.equal(dispatch.mmioWrite(0x1010n, 4, () => 1n), true);
  assert.deepEqual(reads, [0x1008n, 0x1010n]);
});
