/**
 * The gdbstub state machine: one instance per connected GDB. It turns frame
 * events (protocol.ts) into target calls (target.ts) and target stops into
 * stop replies, and owns the per-connection state: ack mode, the threads
 * selected by `Hg`/`Hc`, whether GDB waits for a stop reply, and the memory
 * space of `m`/`M`/`X` (`monitor phys on|off`).
 *
 * Threads are vCPUs, in all-stop mode: a stop of any vCPU stops all and
 * names it (gdb switches to it); `g`/`G`/`m`/`M` act on the `Hg` thread; a
 * step (`s`, `vCont;s:N`) runs only the thread it steps, the others stay
 * stopped (gdb's scheduler-locking `step`, whatever vCont says for the
 * others); a continue runs every thread, or only the one a `vCont;c:N`
 * names alone (scheduler locking on).
 *
 * Running model: `c`/`s`/`vCont` start the guest and return at once; the stop
 * reply is sent when the target reports a stop (through `vm.onStop`, so a
 * stop caused by another front end, e.g. the REPL pausing the VM, also ends
 * GDB's wait). A 0x03 byte while the guest runs pauses it (`T02`). Packets
 * are handled one at a time, in order; a malformed one gets the reply GDB
 * expects (`-`, empty, or `E xx`) and never reaches the VM. GDB's first `?`
 * pauses a guest that is running (as QEMU stops the VM when GDB attaches).
 *
 * @module
 */

import {
  bytesToText,
  type Command,
  encodePacket,
  ERROR_CODES,
  FrameDecoder,
  type FrameEvent,
  hexEncode,
  MAX_PACKET_SIZE,
  PacketError,
  parseCommand,
  type ResumeAction,
  type ThreadId,
} from "./protocol.ts";
import {
  decodeRegister,
  decodeRegisters,
  encodeRegister,
  encodeRegisters,
  TARGET_DOCUMENTS,
  X86_64_REGISTERS,
} from "./arch_x86.ts";
import {
  type GdbTarget,
  type MemorySpace,
  TargetError,
  type TargetErrorKind,
  type TargetStop,
  type WatchKind,
} from "./target.ts";
import { monitorCommands, type MonitorContext, type MonitorRegistry } from "./monitor.ts";
import { describeStop } from "../stop.ts";
import type { Machine } from "../machine.ts";
import type { Debugger } from "../debug/debugger.ts";

/** Options of {@link GdbStub}. */
export interface GdbStubOptions {
  /** Writes bytes to GDB (in order). */
  send: (bytes: Uint8Array) => void;
  /** Monitor commands; default the shared {@link monitorCommands}. */
  monitor?: MonitorRegistry;
  /** Whether `monitor js` may run host code. Default false. */
  allowJs?: boolean;
  /** What monitor commands see: the machine behind the target and its debugger. Without it, `monitor` is refused. */
  monitorScope?: { machine: Machine; debug: Debugger };
  /** Called once `D` (detach) has been answered: the connection should close. */
  onDetach?: () => void;
  /** Called on `k` / `vKill`: the VM is stopped; the connection should close. */
  onKill?: () => void;
  /** Receives one line per packet in and out (for debugging the stub). */
  log?: (line: string) => void;
}

const TARGET_ERROR_REPLIES: Record<TargetErrorKind, string> = {
  "no-space": ERROR_CODES.noSpace,
  "fault": ERROR_CODES.fault,
  "invalid": ERROR_CODES.invalid,
};

const Z_KINDS: readonly ("software" | "hardware" | WatchKind)[] = ["software", "hardware", "write", "read", "access"];
const WATCH_REPLY: Record<WatchKind, string> = { write: "watch", read: "rwatch", access: "awatch" };

/** rax..r15, rip, eflags, cs, ss, ds, es, fs, gs. */
const EXPEDITED_REGISTERS = 24;

function hex2(value: number): string {
  return value.toString(16).padStart(2, "0");
}

/**
 * A gdbstub for one connection.
 *
 * @example
 * ```ts ignore
 * const stub = new GdbStub(new VmTarget(vm), { send: (bytes) => conn.write(bytes) });
 * for await (const chunk of conn.readable) stub.receive(chunk);
 * await stub.disconnect();
 * ```
 */
export class GdbStub {
  readonly #target: GdbTarget;
  readonly #options: GdbStubOptions;
  readonly #monitor: MonitorRegistry;
  readonly #decoder = new FrameDecoder();
  #noAck = false;
  #queue: Promise<void> = Promise.resolve();
  #lastPacket: Uint8Array | undefined;
  /** GDB sent c/s/vCont and waits for a stop reply. */
  #waiting = false;
  #gThread = 1;
  /** The thread `Hc` chose for `c`/`s` without a thread (a number), or "all"/"any". */
  #cThread: ThreadId = "any";
  #memorySpace: MemorySpace = "virtual";
  #peerSwbreak = false;
  #peerHwbreak = false;
  #closed = false;
  #unsubscribe: () => void;

  constructor(target: GdbTarget, options: GdbStubOptions) {
    this.#target = target;
    this.#options = options;
    this.#monitor = options.monitor ?? monitorCommands;
    this.#unsubscribe = target.onStop((stop) => this.#onStop(stop));
  }

  /** True once GDB has switched acks off (QStartNoAckMode). */
  get noAck(): boolean {
    return this.#noAck;
  }

  /** True while GDB waits for a stop reply (after c, s or vCont). */
  get waiting(): boolean {
    return this.#waiting;
  }

  /** Where `m`/`M`/`X` addresses point: `"virtual"` (default, through the guest page tables) or `"physical"`. */
  get memorySpace(): MemorySpace {
    return this.#memorySpace;
  }

  set memorySpace(space: MemorySpace) {
    this.#memorySpace = space;
  }

  /** Feeds bytes received from GDB. Never throws. */
  receive(bytes: Uint8Array): void {
    if (this.#closed) return;
    for (const event of this.#decoder.feed(bytes)) this.#onFrame(event);
  }

  /** Resolves when every packet received so far has been handled. */
  async settled(): Promise<void> {
    let queue;
    do {
      queue = this.#queue;
      await queue;
    } while (queue !== this.#queue);
  }

  /**
   * The connection is gone (GDB quit, crashed or the link dropped). A guest
   * GDB was running is paused; GDB's breakpoints and watchpoints are removed;
   * the VM stays usable.
   */
  async disconnect(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.settled();
    try {
      if (this.#waiting && this.#target.running) await this.#target.interrupt();
      this.#waiting = false;
      if (!this.#target.running) this.#target.removeAll();
    } finally {
      this.#unsubscribe();
    }
  }

  #log(line: string): void {
    this.#options.log?.(line);
  }

  #write(bytes: Uint8Array): void {
    if (this.#closed) return;
    try {
      this.#options.send(bytes);
    } catch (error) {
      this.#log(`send failed: ${(error as Error).message}`);
    }
  }

  #sendPacket(payload: string): void {
    this.#log(`<- ${payload.length > 200 ? `${payload.slice(0, 200)}...` : payload}`);
    const bytes = encodePacket(payload);
    this.#lastPacket = bytes;
    this.#write(bytes);
  }

  #onFrame(event: FrameEvent): void {
    switch (event.type) {
      case "packet":
        if (!this.#noAck) this.#write(new Uint8Array([0x2b])); // "+"
        this.#log(`-> ${bytesToText(event.data.subarray(0, 200))}`);
        this.#enqueue(() => this.#handle(event.data));
        break;
      case "interrupt":
        this.#log("-> ^C");
        if (this.#target.running) void this.#target.interrupt();
        // A `c` that came in the same read is still queued: interrupt the run it starts.
        else this.#enqueue(() => this.#interruptQueuedResume());
        break;
      case "ack":
        break;
      case "nack":
        if (!this.#noAck && this.#lastPacket !== undefined) this.#write(this.#lastPacket);
        break;
      case "error":
        this.#log(`-> bad packet: ${event.error.message}`);
        if (event.error.kind === "ChecksumMismatch") {
          if (!this.#noAck) this.#write(new Uint8Array([0x2d])); // "-": GDB resends
        } else {
          if (!this.#noAck) this.#write(new Uint8Array([0x2b]));
          this.#enqueue(() => this.#sendPacket(ERROR_CODES.tooLarge));
        }
        break;
    }
  }

  async #interruptQueuedResume(): Promise<void> {
    if (this.#waiting && this.#target.running) await this.#target.interrupt();
  }

  #enqueue(task: () => void | Promise<void>): void {
    this.#queue = this.#queue.then(task).catch((error) => {
      this.#log(`internal error: ${(error as Error).stack ?? error}`);
      this.#sendPacket(ERROR_CODES.failed);
    });
  }

  async #handle(data: Uint8Array): Promise<void> {
    if (this.#closed) return;
    let command: Command;
    try {
      command = parseCommand(data);
    } catch (error) {
      if (!(error instanceof PacketError)) throw error;
      this.#log(`   ${error.message}`);
      this.#sendPacket(
        error.kind === "MalformedCommand"
          ? ""
          : error.kind === "LengthTooLarge" || error.kind === "PacketTooLong"
          ? ERROR_CODES.tooLarge
          : ERROR_CODES.invalid,
      );
      return;
    }
    const reply = await this.#dispatch(command);
    if (reply !== undefined) this.#sendPacket(reply);
  }

  /** Handles a command; returns the reply, or undefined when there is none now (resume, kill). */
  async #dispatch(command: Command): Promise<string | undefined> {
    const target = this.#target;
    const needsStopped = ["readRegisters", "writeRegisters", "readRegister", "writeRegister", "writeMemory"];
    if ((needsStopped.includes(command.kind) || command.kind.endsWith("Breakpoint")) && target.running) {
      return ERROR_CODES.busy;
    }
    switch (command.kind) {
      case "haltReason":
        if (target.running) {
          this.#waiting = false;
          await target.interrupt();
        }
        return `T05thread:${this.#gThread.toString(16)};`;
      case "readRegisters":
        return hexEncode(encodeRegisters(target.readRegisters(this.#gThread)));
      case "writeRegisters":
        return this.#try(
          ERROR_CODES.invalid,
          () => target.writeRegisters(this.#gThread, decodeRegisters(command.data)),
        );
      case "readRegister": {
        const info = X86_64_REGISTERS[command.regnum];
        if (info === undefined) return ERROR_CODES.invalid;
        // A general register, rip, eflags or a selector comes from the cached state; the rest need the FPU's ioctl.
        const core = target.readCoreRegisters(this.#gThread)[info.name];
        return hexEncode(encodeRegister(info, core ?? target.readRegisters(this.#gThread)[info.name] ?? 0n));
      }
      case "writeRegister": {
        const info = X86_64_REGISTERS[command.regnum];
        if (info === undefined || command.value.length !== info.bits / 8) return ERROR_CODES.invalid;
        return this.#try(
          ERROR_CODES.invalid,
          () => target.writeRegisters(this.#gThread, { [info.name]: decodeRegister(info, command.value) }),
        );
      }
      case "readMemory": {
        if (command.length === 0) return "";
        try {
          return hexEncode(target.readMemory(command.address, command.length, this.#memorySpace, this.#gThread));
        } catch (error) {
          return this.#errorReply(error, ERROR_CODES.fault);
        }
      }
      case "writeMemory":
        if (command.data.length === 0) return "OK";
        return this.#try(
          ERROR_CODES.fault,
          () => target.writeMemory(command.address, command.data, this.#memorySpace, this.#gThread),
        );
      case "insertBreakpoint":
      case "removeBreakpoint":
        return this.#breakpoint(command.kind === "insertBreakpoint", command.type, command.address, command.length);
      case "resume":
        this.#resume(command.actions);
        return undefined;
      case "vContQuery":
        return "vCont;c;C;s;S";
      case "reverse":
        this.#reverse(command.step);
        return undefined;
      case "setThread": {
        const thread = this.#resolveThread(command.thread);
        if (thread === undefined) return ERROR_CODES.invalid;
        if (command.op === "g") this.#gThread = thread;
        else this.#cThread = command.thread;
        return "OK";
      }
      case "threadAlive":
        return this.#resolveThread(command.thread) === undefined ? ERROR_CODES.invalid : "OK";
      case "supported":
        this.#peerSwbreak = command.features.includes("swbreak+");
        this.#peerHwbreak = command.features.includes("hwbreak+");
        return [
          `PacketSize=${MAX_PACKET_SIZE.toString(16)}`,
          "qXfer:features:read+",
          "vContSupported+",
          "swbreak+",
          "hwbreak+",
          "QStartNoAckMode+",
          "ReverseStep+",
          "ReverseContinue+",
        ].join(";");
      case "startNoAckMode":
        this.#sendPacket("OK");
        this.#noAck = true;
        return undefined;
      case "attached":
        return "1";
      case "offsets":
        return "Text=0;Data=0;Bss=0";
      case "currentThread":
        return `QC${this.#gThread.toString(16)}`;
      case "threadInfoFirst":
        return `m${target.threads().map((t) => t.toString(16)).join(",")}`;
      case "threadInfoNext":
        return "l";
      case "threadExtraInfo": {
        const thread = this.#resolveThread(command.thread);
        return thread === undefined ? ERROR_CODES.invalid : hexEncode(target.describeThread(thread));
      }
      case "readFeatures": {
        const document = TARGET_DOCUMENTS.get(command.annex);
        if (document === undefined) return "E00";
        const length = Math.min(command.length, MAX_PACKET_SIZE - 2);
        const part = document.slice(command.offset, command.offset + length);
        return (command.offset + length >= document.length ? "l" : "m") + part;
      }
      case "monitor": {
        const output = await this.#monitor.run(command.command, this.#monitorContext());
        return output === "" ? "OK" : hexEncode(output);
      }
      case "symbolLookup":
        return "OK";
      case "detach":
        this.#sendPacket("OK");
        await this.#detach();
        return undefined;
      case "kill":
        if (command.reply) this.#sendPacket("OK");
        await this.#kill();
        return undefined;
      case "unknown":
        return "";
    }
  }

  #try(fallback: string, action: () => void): string {
    try {
      action();
      return "OK";
    } catch (error) {
      return this.#errorReply(error, fallback);
    }
  }

  /** The error reply for a refused target operation: its kind's errno, or `fallback` for an untyped error. */
  #errorReply(error: unknown, fallback: string): string {
    this.#log(`   ${(error as Error).message}`);
    return error instanceof TargetError ? TARGET_ERROR_REPLIES[error.kind] : fallback;
  }

  #resolveThread(thread: ThreadId): number | undefined {
    const threads = this.#target.threads();
    if (thread === "any" || thread === "all") return this.#gThread;
    return threads.includes(thread) ? thread : undefined;
  }

  #breakpoint(insert: boolean, type: number, address: bigint, length: number): string {
    const kind = Z_KINDS[type]!;
    const target = this.#target;
    try {
      if (kind === "software" || kind === "hardware") {
        if (insert) target.insertBreakpoint(kind, address);
        else target.removeBreakpoint(kind, address);
      } else {
        if (length < 1) return ERROR_CODES.invalid;
        if (insert) target.insertWatchpoint(kind, address, length);
        else target.removeWatchpoint(kind, address, length);
      }
      return "OK";
    } catch (error) {
      return this.#errorReply(error, ERROR_CODES.fault);
    }
  }

  /**
   * What a resume command asks, in all-stop terms: a step of one thread (the
   * others stay stopped), or a continue of every thread or of one.
   */
  #plan(actions: ResumeAction[]): { step: boolean; thread: number | undefined; address: bigint | undefined } {
    const own = (a: ResumeAction): a is ResumeAction & { thread: number } => typeof a.thread === "number";
    const fallbackThread = typeof this.#cThread === "number" ? this.#cThread : this.#gThread;
    const step = actions.find((a) => a.action === "step");
    if (step !== undefined) {
      return { step: true, thread: own(step) ? step.thread : fallbackThread, address: step.address };
    }
    const everyone = actions.find((a) => !own(a));
    if (everyone !== undefined) return { step: false, thread: undefined, address: everyone.address };
    const named = actions.filter(own);
    return { step: false, thread: named.length === 1 ? named[0]!.thread : undefined, address: named[0]?.address };
  }

  /** Starts the guest as the resume actions say. */
  #resume(actions: ResumeAction[]): void {
    const plan = this.#plan(actions);
    const target = this.#target;
    if (target.running) {
      // Another front end runs the guest (the REPL's .cont, a script). A continue joins that run: its next
      // stop ends gdb's wait. A step pauses it (that front end's stop says "paused by gdb") and then steps,
      // so gdb's stepi never waits on someone else's run.
      if (!plan.step) {
        this.#waiting = true;
        return;
      }
      void target.interrupt().then(() => this.#resume(actions));
      return;
    }
    this.#waiting = true;
    if (plan.address !== undefined) {
      try {
        target.writeRegisters(plan.thread ?? this.#gThread, { rip: plan.address });
      } catch (error) {
        this.#log(`   ${(error as Error).message}`);
      }
    }
    target.resume(plan.step, plan.thread).catch((error) => {
      // The run failed before stopping (e.g. a hook threw): tell GDB and give it back control.
      if (!this.#waiting) return;
      this.#waiting = false;
      this.#sendPacket(`O${hexEncode(`hvsh: the guest cannot run: ${(error as Error).message}\n`)}`);
      this.#sendPacket(`T05thread:${(plan.thread ?? this.#gThread).toString(16)};`);
    });
  }

  /**
   * Runs the guest backwards; the stop reply comes through onStop. A guest
   * that cannot go back answers as at the start of its history
   * (`replaylog:begin`, gdb's "No more reverse-execution history"), after a
   * console line that says why.
   */
  #reverse(step: boolean): void {
    const target = this.#target;
    if (target.running) {
      this.#sendPacket(ERROR_CODES.busy);
      return;
    }
    this.#waiting = true;
    target.reverse(step).catch((error) => {
      if (!this.#waiting) return;
      this.#waiting = false;
      this.#sendPacket(`O${hexEncode(`hvsh: ${(error as Error).message}\n`)}`);
      this.#sendPacket(`T05replaylog:begin;thread:${this.#gThread.toString(16)};${this.#expedited(this.#gThread)}`);
    });
  }

  #onStop(stop: TargetStop): void {
    if (!this.#waiting || this.#closed) return;
    this.#waiting = false;
    // gdb switches to the thread a stop names; later packets without Hg mean that thread.
    if (stop.kind !== "exited") this.#gThread = stop.thread;
    for (const line of this.#notes(stop)) this.#sendPacket(`O${hexEncode(line)}`);
    this.#sendPacket(this.#stopReply(stop));
  }

  /** Console lines GDB prints before a stop that has no signal of its own to explain it. */
  #notes(stop: TargetStop): string[] {
    if (stop.kind === "signal") return [`hvsh: ${describeStop(stop.event)}\n`];
    if (stop.kind === "exited" && stop.event.reason === "halt") return [`hvsh: ${describeStop(stop.event)}\n`];
    return [];
  }

  /**
   * The core registers (0-23: general, rip, eflags, segment selectors) in the
   * stop reply, as gdbserver expedites registers: gdb then needs no `g`
   * packet to show where a `stepi` landed. They come from the vCPU's cached
   * (after a step, kvm_run-synced) state, so this costs no ioctl.
   */
  #expedited(thread: number): string {
    const values = this.#target.readCoreRegisters(thread);
    let out = "";
    for (let n = 0; n < EXPEDITED_REGISTERS; n++) {
      const info = X86_64_REGISTERS[n]!;
      out += `${hex2(n)}:${hexEncode(encodeRegister(info, values[info.name] ?? 0n))};`;
    }
    return out;
  }

  /** The stop reply packet for a stop. */
  #stopReply(stop: TargetStop): string {
    switch (stop.kind) {
      case "exited":
        return `W${hex2(stop.status)}`;
      case "breakpoint": {
        const reason = stop.hardware ? (this.#peerHwbreak ? "hwbreak:;" : "") : this.#peerSwbreak ? "swbreak:;" : "";
        return `T05${reason}thread:${stop.thread.toString(16)};${this.#expedited(stop.thread)}`;
      }
      case "watchpoint":
        return `T05${WATCH_REPLY[stop.access]}:${stop.address.toString(16)};thread:${stop.thread.toString(16)};${
          this.#expedited(stop.thread)
        }`;
      case "step":
        return `T05thread:${stop.thread.toString(16)};${this.#expedited(stop.thread)}`;
      case "history-begin":
        return `T05replaylog:begin;thread:${stop.thread.toString(16)};${this.#expedited(stop.thread)}`;
      case "interrupted":
        return `T02thread:${stop.thread.toString(16)};${this.#expedited(stop.thread)}`;
      case "signal":
        return `T${hex2(stop.signal)}thread:${stop.thread.toString(16)};`;
    }
  }

  #monitorContext(): MonitorContext {
    // deno-lint-ignore no-this-alias
    const stub = this;
    const scope = this.#options.monitorScope;
    if (scope === undefined) throw new Error("Cannot run monitor commands: this stub has no monitor scope");
    const { machine, debug } = scope;
    const thread = this.#gThread;
    return {
      vm: machine,
      debug,
      get cpu() {
        return machine.cpu(thread - 1);
      },
      get memorySpace() {
        return stub.memorySpace;
      },
      set memorySpace(space: MemorySpace) {
        stub.memorySpace = space;
      },
      allowJs: this.#options.allowJs ?? false,
      registry: this.#monitor,
    };
  }

  async #detach(): Promise<void> {
    const target = this.#target;
    this.#waiting = false;
    if (target.running) await target.interrupt();
    target.removeAll();
    // The guest runs on, as after QEMU's detach; its stops no longer reach this connection.
    if (!target.ended) target.resume(false).catch(() => {});
    this.#options.onDetach?.();
  }

  async #kill(): Promise<void> {
    const target = this.#target;
    this.#waiting = false;
    if (target.running) await target.interrupt();
    target.removeAll();
    this.#options.onKill?.();
  }
}
