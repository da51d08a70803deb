/**
 * Exceptions and interrupts, as far as KVM lets a VMM see them.
 *
 * KVM does not tell user space about the exceptions a guest takes: they are
 * delivered inside KVM (or the CPU) without an exit. What hvsh can see:
 *
 * - **In flight, at an exit** (`inFlightEvents`): KVM_GET_VCPU_EVENTS
 *   names the exception, interrupt or NMI that is pending or was being
 *   delivered when the vCPU last exited (the IDT-vectoring information of an
 *   exit taken during delivery), with its error code, plus CR2 and whether
 *   the IDT can deliver anything at all. This is what a crash diagnosis shows.
 * - **A history** (`ExceptionHistory`, the REPL's `.exceptions on`): hvsh
 *   reads the guest's IDT and hooks every handler it points at
 *   (breakpoints that never stop the guest, see hooks.ts), so each handler
 *   entry records its vector, the interrupted rip and the error code from the
 *   stack frame, like QEMU's `-d int`. It sees only handlers present when it
 *   was armed (it re-arms at every stop, after the guest may have loaded a
 *   new IDT), names every vector of a handler several vectors share, and
 *   cannot see an event that fails to be delivered (the fault that becomes a
 *   triple fault): for those, the in-flight state is all there is.
 *
 * @module
 */

import type { Machine } from "../machine.ts";
import { Debugger } from "./debugger.ts";
import type { Vcpu } from "../vcpu.ts";
import type { Hook } from "./hooks.ts";

const EXCEPTION_NAMES = [
  "#DE",
  "#DB",
  "NMI",
  "#BP",
  "#OF",
  "#BR",
  "#UD",
  "#NM",
  "#DF",
  "coprocessor overrun",
  "#TS",
  "#NP",
  "#SS",
  "#GP",
  "#PF",
  "reserved",
  "#MF",
  "#AC",
  "#MC",
  "#XM",
  "#VE",
  "#CP",
];

/** `#PF (14)` for an exception, `vector 0x20` above 31. */
export function describeVector(vector: number): string {
  const name = EXCEPTION_NAMES[vector];
  return vector < 32 ? `${name ?? "reserved"} (${vector})` : `vector 0x${vector.toString(16)}`;
}

/** One IDT entry. */
export interface IdtGate {
  vector: number;
  /** The handler's linear address. */
  handler: bigint;
  present: boolean;
}

function hex(value: bigint | number): string {
  return `0x${value.toString(16)}`;
}

/** The guest's IDT as the vCPU's mode reads it (the IVT in real mode); `count` entries at most. */
export function readIdt(vm: Machine, cpu: Vcpu = vm.cpu(0), count = 256): IdtGate[] {
  const sregs = cpu.sregsView;
  const mode = cpu.mode;
  const size = mode === "real" ? 4 : mode === "long" ? 16 : 8;
  const entries = Math.min(count, Math.floor((sregs.idt.limit + 1) / size));
  if (entries <= 0) return [];
  const bytes = Debugger.for(vm).readVirtual(sregs.idt.base, entries * size, cpu);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const gates: IdtGate[] = [];
  for (let vector = 0; vector < entries; vector++) {
    const at = vector * size;
    if (mode === "real") {
      const offset = view.getUint16(at, true);
      const segment = view.getUint16(at + 2, true);
      gates.push({ vector, handler: BigInt(segment * 16 + offset), present: true });
      continue;
    }
    let handler = BigInt(view.getUint16(at, true) | (view.getUint16(at + 6, true) << 16)) & 0xffffffffn;
    if (size === 16) handler |= BigInt(view.getUint32(at + 8, true)) << 32n;
    gates.push({ vector, handler, present: (bytes[at + 5]! & 0x80) !== 0 });
  }
  return gates;
}

/**
 * What the vCPU has in flight, one line per fact: the exception, interrupt
 * and NMI KVM reports (KVM_GET_VCPU_EVENTS), CR2, and an IDT that cannot
 * deliver anything.
 */
export function inFlightEvents(vm: Machine, cpu: Vcpu = vm.cpu(0)): string[] {
  const lines: string[] = [];
  try {
    const events = cpu.fd.vcpuEvents();
    const { exception, interrupt, nmi } = events;
    if (exception.injected || exception.pending) {
      lines.push(
        `exception ${describeVector(exception.vector)} ${exception.injected ? "being delivered" : "pending"}${
          exception.errorCode === undefined ? "" : `, error code ${hex(exception.errorCode)}`
        }${events.exceptionPayload === undefined ? "" : `, payload ${hex(events.exceptionPayload)}`}`,
      );
    }
    if (interrupt.injected) {
      lines.push(
        `${interrupt.soft ? "software interrupt" : "interrupt"} ${describeVector(interrupt.vector)} being delivered`,
      );
    }
    if (nmi.injected || nmi.pending) lines.push(`NMI ${nmi.injected ? "being delivered" : "pending"}`);
    if (events.tripleFaultPending) lines.push("triple fault pending");
  } catch (error) {
    lines.push(`(KVM_GET_VCPU_EVENTS failed: ${(error as Error).message})`);
  }
  const sregs = cpu.sregsView;
  if (sregs.cr2 !== 0n) lines.push(`cr2 ${hex(sregs.cr2)} (the last page-fault address)`);
  if (cpu.mode !== "real") {
    const size = cpu.mode === "long" ? 16 : 8;
    const vectors = Math.floor((sregs.idt.limit + 1) / size);
    if (vectors < 32) {
      lines.push(
        `IDT base ${hex(sregs.idt.base)} limit ${hex(sregs.idt.limit)}: ${
          vectors === 0
            ? "no vector can be delivered (an exception becomes #GP, then #DF, then a triple fault)"
            : `only vectors 0-${vectors - 1} can be delivered (a higher one becomes #GP)`
        }`,
      );
    }
  }
  if (lines.length === 0) {
    lines.push("no exception, interrupt or NMI in flight (KVM reports only events in flight at an exit)");
  }
  return lines;
}

/** One handler entry seen by {@link ExceptionHistory}. */
export interface ExceptionRecord {
  /** The vectors whose gate points at this handler (one unless several share it). */
  vectors: number[];
  /** The interrupted instruction pointer (from the handler's stack frame). */
  rip: bigint | undefined;
  /** The error code, when the frame has one. */
  errorCode: bigint | undefined;
  /** CR2 at the entry of a #PF handler. */
  cr2: bigint | undefined;
  handler: bigint;
}

/** Options of {@link ExceptionHistory}. */
export interface ExceptionHistoryOptions {
  /** Records kept (the oldest are dropped). Default 64. */
  limit?: number;
  /** Exceptions only (vectors 0-31, default) or every vector (interrupts too: an exit per interrupt). */
  vectors?: "exceptions" | "all";
}

/** A record of the exceptions (and interrupts) whose handlers the guest entered. */
export class ExceptionHistory {
  readonly #vm: Machine;
  readonly #limit: number;
  readonly #all: boolean;
  #hooks: Hook[] = [];
  #records: ExceptionRecord[] = [];
  #unsubscribe: (() => void) | undefined;
  #armedFor = "";

  constructor(vm: Machine, options: ExceptionHistoryOptions = {}) {
    this.#vm = vm;
    this.#limit = options.limit ?? 64;
    this.#all = options.vectors === "all";
  }

  /** Records kept, oldest first. */
  get records(): readonly ExceptionRecord[] {
    return this.#records;
  }

  /** Hooks the IDT's handlers now and again at every stop; returns how many handlers are hooked. */
  arm(): number {
    this.#unsubscribe ??= this.#vm.onStop(() => {
      try {
        this.#rearm();
      } catch {
        // an unreadable IDT (the guest is mid-switch): keep the old hooks
      }
    });
    this.#rearm();
    return this.#hooks.length;
  }

  /** Removes every hook; the records stay. */
  disarm(): void {
    this.#unsubscribe?.();
    this.#unsubscribe = undefined;
    for (const hook of this.#hooks) hook.detach();
    this.#hooks = [];
    this.#armedFor = "";
  }

  #rearm(): void {
    const cpu = this.#vm.cpu(0);
    const gates = readIdt(this.#vm, cpu, this.#all ? 256 : 32).filter((g) => g.present);
    const byHandler = new Map<bigint, number[]>();
    for (const gate of gates) byHandler.set(gate.handler, [...(byHandler.get(gate.handler) ?? []), gate.vector]);
    const key = [...byHandler].map(([h, v]) => `${h}:${v.join(",")}`).join(";");
    if (key === this.#armedFor) return;
    for (const hook of this.#hooks) hook.detach();
    this.#hooks = [];
    for (const [handler, vectors] of byHandler) {
      try {
        this.#hooks.push(
          Debugger.for(this.#vm).hook(handler, { onEnter: (ctx) => this.#record(ctx.cpu, handler, vectors) }),
        );
      } catch {
        // a handler outside RAM or unmapped: it cannot be hooked (and would fault on entry anyway)
      }
    }
    this.#armedFor = key;
  }

  #record(cpu: Vcpu, handler: bigint, vectors: number[]): void {
    const width = cpu.bitness === 64 ? 8 : cpu.bitness === 32 ? 4 : 2;
    const sp = cpu.bitness === 16 ? cpu.sregsView.ss.base + (cpu.regs.rsp & 0xffffn) : cpu.regs.rsp;
    const word = (at: bigint) => {
      const bytes = Debugger.for(this.#vm).readVirtual(at, width, cpu);
      return bytes.reduceRight((v, b) => (v << 8n) | BigInt(b), 0n);
    };
    let rip: bigint | undefined;
    let errorCode: bigint | undefined;
    try {
      // The frame is [error code] ip cs flags: the cs slot tells whether an error code came first.
      const cs = BigInt(cpu.sregsView.cs.selector);
      if (word(sp + BigInt(width)) === cs) rip = word(sp);
      else if (word(sp + BigInt(2 * width)) === cs) {
        errorCode = word(sp);
        rip = word(sp + BigInt(width));
      }
    } catch {
      // an unreadable stack: the record keeps the vector alone
    }
    const cr2 = vectors.includes(14) ? cpu.sregsView.cr2 : undefined;
    this.#records.push({ vectors, rip, errorCode, cr2, handler });
    if (this.#records.length > this.#limit) this.#records.shift();
  }

  /** The records as text, one line each, like QEMU's `-d int` (the last `count`, default all). */
  format(count = this.#records.length): string {
    const symbolize = (a: bigint) => Debugger.for(this.#vm).symbolize(a);
    const shown = this.#records.slice(-count);
    if (shown.length === 0) return "no exceptions recorded";
    const start = this.#records.length - shown.length;
    return shown.map((r, i) => {
      const what = r.vectors.length === 1
        ? describeVector(r.vectors[0]!)
        : `one of ${r.vectors.length} vectors sharing a handler (${
          r.vectors.slice(0, 4).map(describeVector).join(", ")
        }${r.vectors.length > 4 ? ", ..." : ""})`;
      const at = r.rip === undefined
        ? "rip unknown"
        : `at ${hex(r.rip)}${symbolize(r.rip) === undefined ? "" : ` <${symbolize(r.rip)}>`}`;
      const handler = symbolize(r.handler);
      return `${String(start + i).padStart(3)}: ${what} ${at}${
        r.errorCode === undefined ? "" : ` error ${hex(r.errorCode)}`
      }${r.cr2 === undefined ? "" : ` cr2 ${hex(r.cr2)}`} -> ${hex(r.handler)}${
        handler === undefined ? "" : ` <${handler}>`
      }`;
    }).join("\n");
  }
}
