/**
 * Reverse execution's record of a guest's run on KVM, where no instruction
 * counter exists: the guest's inputs are logged, the machine is checkpointed
 * now and then, and a past moment is reached again by restoring the nearest
 * earlier checkpoint and replaying forward with the logged inputs.
 *
 * A moment is a {@link Position}: the number of port and MMIO accesses hvsh
 * emulated since recording began (`events`), then the instructions executed
 * after the last of them (`steps`). Between two accesses a single vCPU with
 * no interrupts from outside runs deterministically, so a replay from a
 * checkpoint that answers every access from the log reaches the same state.
 * Steps are counted only while single-stepping; after a free run the
 * position is found again on demand (the debugger single-steps the stretch
 * since the last exact position, see {@link History.unresolved}).
 *
 * Replay is transparent: while the position is before the end of the log,
 * every run (a continue, a step, gdb's, the REPL's) takes its inputs from the
 * log and checks what the guest writes against it (device models are not
 * driven, so output is not shown twice); at the end of the log, hvsh goes on
 * live and the log grows again.
 *
 * Checkpoints hold the machine's KVM state (registers, irqchip, PIT: see
 * core/machine_state.ts) and only the RAM pages written since the previous
 * one (KVM's dirty log plus hvsh's own writes); the first holds every
 * non-zero page. What a recording cannot make deterministic is refused or
 * detected, never guessed: more than one vCPU and virtio queues (eventfds
 * bypass hvsh) are refused up front, an interrupt hvsh raises between exits
 * ends the usable history, and a replay that sees the guest do anything but
 * what the log says stops with a {@link ReplayDivergenceError}.
 *
 * @module
 */

import type { ExitHandlers } from "../exits.ts";
import type { Machine } from "../machine.ts";
import type { MachineState } from "../machine_state.ts";
import type { PendingStop } from "../stop.ts";

/** A moment of a recorded run: `events` emulated accesses since recording began, then `steps` instructions. */
export interface Position {
  events: number;
  steps: number;
}

/** Options of {@link History} (`vm.debug.record()`). */
export interface RecordOptions {
  /**
   * Milliseconds of running between checkpoints (taken at the next port or
   * MMIO exit after that). Default 20: a checkpoint costs about 1 ms here, and
   * going back replays at most this long plus the stretch since the last
   * exit.
   */
  checkpointMs?: number;
  /**
   * Bytes of RAM pages the checkpoints may hold. Past it, every other
   * checkpoint is merged into the next and the interval doubles, so a long
   * recording keeps fewer, farther apart (going back then replays longer).
   * Default 256 MiB.
   */
  maxCheckpointBytes?: number;
}

/** What a recording holds, for `info record`-like summaries. */
export interface HistoryInfo {
  /** Emulated accesses logged. */
  events: number;
  checkpoints: number;
  /** Bytes of RAM pages the checkpoints hold. */
  checkpointBytes: number;
  /** Milliseconds of running between checkpoints now (doubles each time the checkpoints outgrow their budget). */
  checkpointMs: number;
  /** Where the guest is; undefined when it ran freely since the last exact position (found on the next reverse command). */
  position: Position | undefined;
  /** True while the guest is in the past: runs replay the log, and are live again only past its end. */
  replaying: boolean;
  /** Why the history can no longer be used, when it cannot. */
  broken?: string;
}

/** A replay saw the guest do something other than what the log recorded: its run is not deterministic. */
export class ReplayDivergenceError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ReplayDivergenceError";
  }
}

const PORT_IN = 0;
const PORT_OUT = 1;
const MMIO_READ = 2;
const MMIO_WRITE = 3;
type Op = typeof PORT_IN | typeof PORT_OUT | typeof MMIO_READ | typeof MMIO_WRITE;
const OP_NAMES = ["port in", "port out", "MMIO read", "MMIO write"];

interface Entry {
  op: Op;
  /** Port or guest-physical address. */
  at: number | bigint;
  size: number;
  /** What a read returned (undefined: nothing claimed it) or what a write wrote. */
  value: number | bigint | undefined;
  /** Whether a device claimed a write. */
  claimed: boolean;
  /** The vCPU run that made the access: accesses of one exit (string I/O) share it. */
  exit: number;
  /** rip at the exit, when kvm_run held the registers (KVM_CAP_SYNC_REGS): the divergence check compares it. */
  rip: bigint | undefined;
  /** Interrupt line changes the devices made while answering. */
  irqs?: [number, boolean][];
  /** A stop a device asked for while answering (the debug-exit port). */
  stop?: PendingStop;
}

interface Checkpoint {
  position: Position;
  state: MachineState;
  /** Guest page number -> its bytes at this checkpoint: the pages written since the previous one (every non-zero page if `full`). */
  pages: Map<number, Uint8Array>;
  full: boolean;
}

const PAGE = 4096;
const ZERO_PAGE = new Uint8Array(PAGE);

/** `a` before `b`: -1, same moment: 0, after: 1. */
export function comparePositions(a: Position, b: Position): number {
  if (a.events !== b.events) return a.events < b.events ? -1 : 1;
  return a.steps === b.steps ? 0 : a.steps < b.steps ? -1 : 1;
}

/** `#events.steps`, as the REPL and errors print a position. */
export function formatPosition(position: Position): string {
  return `#${position.events}.${position.steps}`;
}

/**
 * The recording of one machine (see the module documentation). The
 * debugger owns it: `vm.debug.record()` starts one, and the reverse
 * commands drive it.
 */
export class History {
  readonly #machine: Machine;
  #checkpointMs: number;
  readonly #maxCheckpointBytes: number;
  #checkpointBytes = 0;
  readonly #log: Entry[] = [];
  readonly #checkpoints: Checkpoint[] = [];
  /** Every page written since recording began: a restore rewrites these. */
  readonly #touched = new Set<number>();
  /** Pages written since the last checkpoint (they go into the next one). */
  readonly #sinceCheckpoint = new Set<number>();
  #sinceCheckpointAll = false;
  #cursor = 0;
  /** Steps since the last exact position; undefined after a free run. */
  #steps: number | undefined = 0;
  /** The last exact position: after a free run, the stretch to search starts here. */
  #base: Position = { events: 0, steps: 0 };
  /** Breakpoint address -> hits since {@link #base}: which arrival a breakpoint stop was. */
  readonly #hits = new Map<bigint, number>();
  /** An access happened in the current instruction: its single-step exit does not count as another step. */
  /** What the current single step did that its count depends on: a logged access, or a write hvsh emulated. */
  #stepAfter: "access" | "emulated-write" | undefined;
  #stepRun = false;
  #lastCheckpointAt = 0;
  #stopAfter: number | undefined;
  #reproduceStops = true;
  #answering = false;
  #replayingIrq = false;
  #irqs: [number, boolean][] | undefined;
  #broken: string | undefined;
  #closed = false;
  readonly #undo: (() => void)[] = [];

  /** Starts recording `machine` at its current state: the start of the history. */
  constructor(machine: Machine, options: RecordOptions = {}) {
    if (machine.cpus.length !== 1) {
      throw new Error(
        `Cannot record ${machine.name} for reverse execution: it has ${machine.cpus.length} vCPUs, whose ` +
          "interleaving KVM does not let hvsh reproduce (record a VM with one vCPU: --cpus 1)",
      );
    }
    if (machine.eventfdBindings > 0) {
      throw new Error(
        `Cannot record ${machine.name} for reverse execution: it has virtio devices, whose queues KVM ` +
          "serves through eventfds that bypass hvsh's log of the guest's inputs",
      );
    }
    const checkpointMs = options.checkpointMs ?? 20;
    if (!(checkpointMs >= 0)) throw new RangeError(`Invalid checkpointMs ${checkpointMs}: expected >= 0`);
    this.#machine = machine;
    this.#checkpointMs = checkpointMs;
    const maxBytes = options.maxCheckpointBytes ?? 256 * 1024 * 1024;
    if (!(maxBytes > 0)) throw new RangeError(`Invalid maxCheckpointBytes ${maxBytes}: expected > 0`);
    this.#maxCheckpointBytes = maxBytes;
    machine.startDirtyLog();
    try {
      this.#undo.push(() => machine.stopDirtyLog());
      this.#undo.push(machine.observeIrqLines((irq, level) => this.#onIrqLine(irq, level)));
      this.#undo.push(machine.interposeHandlers((inner) => this.#wrap(inner)));
      machine.takeDirtyPages();
      const pages = this.#readPages(this.#nonZeroPages());
      this.#checkpoints.push({ position: { events: 0, steps: 0 }, state: machine.captureState(), pages, full: true });
      this.#checkpointBytes = pages.size * PAGE;
      this.#lastCheckpointAt = performance.now();
    } catch (error) {
      this.close();
      throw error;
    }
  }

  /** Stops recording: the machine's accesses go straight to its devices again, and the log is dropped. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const undo of this.#undo.splice(0).reverse()) undo();
    this.#log.length = 0;
    this.#checkpoints.length = 0;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Why the history cannot be used any more (a divergence, an interrupt it could not log), or undefined. */
  get broken(): string | undefined {
    return this.#broken;
  }

  /** Marks the history unusable, saying why; reverse commands then refuse with this reason. */
  breakWith(reason: string): void {
    this.#broken ??= reason;
  }

  /** A summary of what is recorded. */
  info(): HistoryInfo {
    const info: HistoryInfo = {
      checkpointMs: this.#checkpointMs,
      events: this.#log.length,
      checkpoints: this.#checkpoints.length,
      checkpointBytes: this.#checkpointBytes,
      position: this.position,
      replaying: this.inPast,
    };
    if (this.#broken !== undefined) info.broken = this.#broken;
    return info;
  }

  /**
   * True while the guest is before where it has been: before the end of the
   * log, or after its last access but before the latest checkpoint (no input
   * is left to replay there, so a run goes on live, as the guest did).
   */
  get inPast(): boolean {
    if (this.replaying) return true;
    const position = this.position;
    const last = this.#checkpoints[this.#checkpoints.length - 1];
    return position !== undefined && last !== undefined && comparePositions(position, last.position) < 0;
  }

  /** True while the position is before the end of the log (runs replay logged inputs). */
  get replaying(): boolean {
    return this.#cursor < this.#log.length;
  }

  /** The exact position, or undefined after a free run (see {@link unresolved}). */
  get position(): Position | undefined {
    return this.#steps === undefined ? undefined : { events: this.#cursor, steps: this.#steps };
  }

  /** Accesses replayed or recorded so far: the position's `events`, exact or not. */
  get events(): number {
    return this.#cursor;
  }

  /**
   * After a free run: the last exact position, and how many times each
   * breakpoint address was hit since (a breakpoint stop is the hits-th
   * arrival at its address after the base).
   */
  unresolved(): { base: Position; hits: ReadonlyMap<bigint, number> } {
    return { base: { ...this.#base }, hits: new Map(this.#hits) };
  }

  /** Sets the exact position once the debugger has found it again. */
  resolve(position: Position): void {
    if (position.events !== this.#cursor) {
      throw new Error(
        `Internal error: resolved position ${formatPosition(position)} is not at access #${this.#cursor}`,
      );
    }
    this.#steps = position.steps;
    this.#base = { ...position };
    this.#hits.clear();
  }

  // ---------------------------------------------------------------- what the debugger tells it

  /** A run starts: a run that is not single-stepped makes the position inexact. */
  noteResume(stepping: boolean): void {
    this.#stepRun = stepping;
    this.#stepAfter = undefined;
    if (stepping || this.#steps === undefined) return;
    this.#base = { events: this.#cursor, steps: this.#steps };
    this.#hits.clear();
    this.#steps = undefined;
  }

  /**
   * vCPU 0 wrote a watched page in the current instruction, which hvsh
   * emulated: not an access of the log, so that instruction still counts
   * as a step, even when the step ends at the write (a watchpoint stop).
   */
  noteEmulatedWrite(): void {
    this.#stepAfter = "emulated-write";
  }

  /**
   * vCPU 0 executed one instruction under single-step (the debugger ends a
   * step at a write's exit where KVM reports none, so each debug exit is
   * one instruction). The instruction that made a logged access is not
   * counted: the access began a new stretch.
   */
  noteStep(): void {
    const after = this.#stepAfter;
    this.#stepAfter = undefined;
    if (this.#steps !== undefined && after !== "access") this.#steps++;
  }

  /** vCPU 0 hit a breakpoint at `address` (whether or not it stopped). */
  noteHit(address: bigint): void {
    this.#stepAfter = undefined;
    this.#hits.set(address, (this.#hits.get(address) ?? 0) + 1);
  }

  /** The run stopped. A step that a watched write ended (no debug exit came) still ran its instruction. */
  noteStop(): void {
    if (this.#stepAfter === "emulated-write" && this.#steps !== undefined) this.#steps++;
    this.#stepAfter = undefined;
  }

  // ---------------------------------------------------------------- replay control

  /** During a replay, stop the run once `events` accesses are done (undefined: never). */
  stopAfter(events: number | undefined): void {
    this.#stopAfter = events;
  }

  /** Whether a replay asks again for the stops the devices asked for when recorded (a user's run: yes; a search: no). */
  reproduceStops(on: boolean): void {
    this.#reproduceStops = on;
  }

  /** The index of the latest checkpoint at or before `position`. */
  checkpointAtOrBefore(position: Position): number {
    for (let i = this.#checkpoints.length - 1; i >= 0; i--) {
      if (comparePositions(this.#checkpoints[i]!.position, position) <= 0) return i;
    }
    return 0;
  }

  /** How many checkpoints there are; while replaying, the last is where the recording ended. */
  get checkpointCount(): number {
    return this.#checkpoints.length;
  }

  /** The position of checkpoint `index`. */
  checkpointPosition(index: number): Position {
    const checkpoint = this.#checkpoints[index];
    if (checkpoint === undefined) throw new RangeError(`No checkpoint ${index}`);
    return { ...checkpoint.position };
  }

  /**
   * The first access of the exit whose accesses end at `events` (string I/O
   * makes several in one exit): stepping back over that exit's instruction
   * lands before all of them.
   */
  exitStart(events: number): number {
    if (events <= 0) return 0;
    const exit = this.#log[events - 1]!.exit;
    let first = events - 1;
    while (first > 0 && this.#log[first - 1]!.exit === exit) first--;
    return first;
  }

  /**
   * Saves the current moment as a checkpoint (at the live end, before the
   * first trip back: going forward again ends exactly here). `position`
   * may be filled in later with {@link placeCheckpoint}.
   */
  checkpointHere(position?: Position): number {
    this.#takeDirty();
    const full = this.#sinceCheckpointAll;
    const pages = this.#readPages(full ? this.#nonZeroPages() : this.#sinceCheckpoint);
    this.#sinceCheckpoint.clear();
    this.#sinceCheckpointAll = false;
    this.#checkpoints.push({
      position: position ?? { events: this.#cursor, steps: Number.POSITIVE_INFINITY },
      state: this.#machine.captureState(),
      pages,
      full,
    });
    this.#checkpointBytes += pages.size * PAGE;
    this.#lastCheckpointAt = performance.now();
    return this.#checkpoints.length - 1;
  }

  /**
   * Over the budget: merges every other checkpoint (never the first or the
   * last) into the one after it, which then holds the pages either wrote,
   * the later copy winning, and doubles the interval between checkpoints.
   */
  #thin(): void {
    if (this.#checkpointBytes <= this.#maxCheckpointBytes || this.#checkpoints.length < 3) return;
    const kept: Checkpoint[] = [this.#checkpoints[0]!];
    for (let i = 1; i < this.#checkpoints.length - 1; i++) {
      const dropped = this.#checkpoints[i]!;
      const next = this.#checkpoints[i + 1]!;
      if (i % 2 === 1) {
        for (const [page, bytes] of dropped.pages) if (!next.pages.has(page)) next.pages.set(page, bytes);
        next.full ||= dropped.full;
      } else {
        kept.push(dropped);
      }
    }
    kept.push(this.#checkpoints[this.#checkpoints.length - 1]!);
    this.#checkpoints.splice(0, this.#checkpoints.length, ...kept);
    this.#checkpointBytes = kept.reduce((sum, c) => sum + c.pages.size * PAGE, 0);
    this.#checkpointMs = Math.max(1, this.#checkpointMs * 2);
  }

  /** Gives checkpoint `index` (taken by {@link checkpointHere} before its position was known) its position. */
  placeCheckpoint(index: number, position: Position): void {
    this.#checkpoints[index]!.position = { ...position };
  }

  /**
   * Puts the machine (KVM state and RAM) back as it was at checkpoint
   * `index`; the position becomes the checkpoint's.
   */
  restore(index: number): void {
    const checkpoint = this.#checkpoints[index];
    if (checkpoint === undefined) throw new RangeError(`No checkpoint ${index}`);
    const machine = this.#machine;
    const memory = machine.memory;
    this.#takeDirty();
    const fix = new Set(this.#touched);
    if (this.#sinceCheckpointAll || this.#checkpoints.some((c, i) => i > 0 && c.full)) {
      for (const page of this.#nonZeroPages()) fix.add(page);
    }
    for (const page of fix) {
      if (!memory.isRam(page * PAGE, PAGE)) continue;
      memory.write(page * PAGE, this.#pageAt(index, page) ?? ZERO_PAGE);
    }
    // Our own writes are not the guest's: they must not count as dirty.
    machine.takeDirtyPages();
    // KVM keeps each interrupt line's level outside the irqchip state: put the lines as they were at the
    // checkpoint first (the irqchip state restored next overwrites what that does to the PIC and IOAPIC).
    this.#replayingIrq = true;
    try {
      for (const [irq, level] of this.#lineLevelsAt(checkpoint.position.events)) machine.irqLine(irq, level);
    } finally {
      this.#replayingIrq = false;
    }
    machine.restoreState(checkpoint.state);
    this.#cursor = checkpoint.position.events;
    this.#steps = checkpoint.position.steps;
    this.#base = { ...checkpoint.position };
    this.#hits.clear();
    this.#stepAfter = undefined;
  }

  /** Each interrupt line a device of the log drove: its level once `events` accesses were done (low before any). */
  #lineLevelsAt(events: number): Map<number, boolean> {
    const levels = new Map<number, boolean>();
    for (let i = 0; i < this.#log.length; i++) {
      for (const [irq, level] of this.#log[i]!.irqs ?? []) {
        if (i < events || !levels.has(irq)) levels.set(irq, i < events ? level : false);
      }
    }
    return levels;
  }

  /** Page `page`'s bytes at checkpoint `index` (undefined: zero). */
  #pageAt(index: number, page: number): Uint8Array | undefined {
    for (let i = index; i >= 0; i--) {
      const checkpoint = this.#checkpoints[i]!;
      const bytes = checkpoint.pages.get(page);
      if (bytes !== undefined) return bytes;
      if (checkpoint.full) return undefined;
    }
    return undefined;
  }

  #takeDirty(): void {
    const dirty = this.#machine.takeDirtyPages();
    if (dirty === "all") {
      this.#sinceCheckpointAll = true;
      return;
    }
    for (const page of dirty) {
      this.#touched.add(page);
      this.#sinceCheckpoint.add(page);
    }
  }

  #nonZeroPages(): number[] {
    const memory = this.#machine.memory;
    const pages: number[] = [];
    memory.regions.forEach((region, index) => {
      const first = Math.floor(region.base / PAGE);
      for (const page of memory.possiblyNonZeroPages(index)) pages.push(first + page);
    });
    return pages;
  }

  #readPages(pages: Iterable<number>): Map<number, Uint8Array> {
    const memory = this.#machine.memory;
    const out = new Map<number, Uint8Array>();
    for (const page of pages) {
      if (!memory.isRam(page * PAGE, PAGE)) continue;
      this.#touched.add(page);
      out.set(page, memory.read(page * PAGE, PAGE));
    }
    return out;
  }

  // ---------------------------------------------------------------- the log

  #wrap(inner: ExitHandlers): ExitHandlers {
    return {
      portRead: (port, size) => {
        if (this.#cursor < this.#log.length) return this.#replay(PORT_IN, port, size, undefined) as number | undefined;
        return this.#record(PORT_IN, port, size, undefined, () => inner.portRead(port, size)) as number | undefined;
      },
      portWrite: (port, size, value) => {
        if (this.#cursor < this.#log.length) return this.#replay(PORT_OUT, port, size, value) as boolean;
        return this.#record(PORT_OUT, port, size, value, () => inner.portWrite(port, size, value)) as boolean;
      },
      mmioRead: (address, size) => {
        if (this.#cursor < this.#log.length) return this.#replay(MMIO_READ, address, size, undefined) as bigint;
        return this.#record(MMIO_READ, address, size, undefined, () => inner.mmioRead(address, size)) as bigint;
      },
      mmioWrite: (address, size, data) => {
        const value = data();
        if (this.#cursor < this.#log.length) return this.#replay(MMIO_WRITE, address, size, value) as boolean;
        return this.#record(
          MMIO_WRITE,
          address,
          size,
          value,
          () => inner.mmioWrite(address, size, () => value),
        ) as boolean;
      },
    };
  }

  #rip(): bigint | undefined {
    return this.#machine.cpus[0]!.fd.syncedRip();
  }

  #record(
    op: Op,
    at: number | bigint,
    size: number,
    written: number | bigint | undefined,
    live: () => number | bigint | boolean | undefined,
  ): number | bigint | boolean | undefined {
    const machine = this.#machine;
    const stopBefore = machine.pendingStop;
    this.#irqs = undefined;
    this.#answering = true;
    let result: number | bigint | boolean | undefined;
    try {
      result = live();
    } finally {
      this.#answering = false;
    }
    const isWrite = op === PORT_OUT || op === MMIO_WRITE;
    const entry: Entry = {
      op,
      at,
      size,
      value: isWrite ? written : result as number | bigint | undefined,
      claimed: isWrite ? result as boolean : result !== undefined,
      exit: machine.cpus[0]!.fd.generation,
      rip: this.#rip(),
    };
    if (this.#irqs !== undefined) entry.irqs = this.#irqs;
    const stop = machine.pendingStop;
    if (stopBefore === undefined && stop !== undefined) entry.stop = stop;
    this.#log.push(entry);
    this.#cursor++;
    this.#afterAccess();
    if (!this.#stepRun && performance.now() - this.#lastCheckpointAt >= this.#checkpointMs) {
      // Not during a single step: completing the exit early would swallow the step's debug exit.
      machine.requestSafePoint(() => {
        if (this.#closed || this.#cursor !== this.#log.length) return;
        this.checkpointHere({ events: this.#cursor, steps: 0 });
        this.#thin();
      });
    }
    return result;
  }

  #replay(op: Op, at: number | bigint, size: number, written: number | bigint | undefined): unknown {
    const entry = this.#log[this.#cursor]!;
    const rip = entry.rip === undefined ? undefined : this.#rip();
    if (
      entry.op !== op || entry.at !== at || entry.size !== size ||
      (written !== undefined && entry.value !== written) || (rip !== undefined && rip !== entry.rip)
    ) {
      const what = (o: Op, a: number | bigint, s: number, v: number | bigint | undefined, r: bigint | undefined) =>
        `${OP_NAMES[o]} 0x${a.toString(16)} (${s} bytes${v === undefined ? "" : `, 0x${v.toString(16)}`})${
          r === undefined ? "" : ` at rip 0x${r.toString(16)}`
        }`;
      const message =
        `replay diverged at access #${this.#cursor}: recorded ${
          what(entry.op, entry.at, entry.size, written === undefined ? undefined : entry.value, entry.rip)
        }, the replay made ${what(op, at, size, written, rip)}. The guest's run depends on something hvsh does not ` +
        "record (an interrupt from the in-kernel timers, the TSC, or a change made while in the past)";
      this.breakWith(message);
      throw new ReplayDivergenceError(message);
    }
    this.#cursor++;
    if (entry.irqs !== undefined) {
      this.#replayingIrq = true;
      try {
        for (const [irq, level] of entry.irqs) this.#machine.irqLine(irq, level);
      } finally {
        this.#replayingIrq = false;
      }
    }
    if (entry.stop !== undefined && this.#reproduceStops) this.#machine.requestStop(entry.stop);
    if (this.#stopAfter !== undefined && this.#cursor >= this.#stopAfter) {
      this.#machine.requestStop({ reason: "paused", by: "history" });
    }
    this.#afterAccess();
    if (this.#cursor === this.#log.length) this.#lastCheckpointAt = performance.now();
    const isWrite = op === PORT_OUT || op === MMIO_WRITE;
    return isWrite ? entry.claimed : entry.value;
  }

  /** One access done: a new stretch begins. */
  #afterAccess(): void {
    // A run that stops after this exit stops just past the access. Otherwise a free run goes on
    // past it: the position is exact again only once found.
    this.#steps = this.#stepRun || this.#machine.pendingStop !== undefined ? 0 : undefined;
    this.#base = { events: this.#cursor, steps: 0 };
    this.#hits.clear();
    this.#stepAfter = "access";
  }

  #onIrqLine(irq: number, level: boolean): void {
    if (this.#replayingIrq || this.#closed) return;
    if (this.#answering) {
      (this.#irqs ??= []).push([irq, level]);
      return;
    }
    // Raised between exits (input arriving, a host timer): the guest may take it at any instruction.
    this.breakWith(
      `hvsh raised IRQ ${irq} while the guest ran (not in answer to one of its accesses): the moment the guest ` +
        "takes it cannot be reproduced, so this recording cannot run backwards",
    );
  }
}
