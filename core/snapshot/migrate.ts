/**
 * Live migration between two hvsh processes over TCP: pre-copy with KVM's
 * dirty log while the guest runs, then stop-and-copy of the last dirty
 * pages and the VM state (the same state a snapshot holds). The stream is
 * a sequence of frames, each checked with a CRC-32:
 *
 * ```
 * u8 type | u32 payload length | u32 crc32(payload) | payload
 * HELLO  JSON { protocol: "hvsh-migrate", version: 1, config }
 * READY  empty, destination to source: its VM is built (a pre-copying
 *        source waits for it before it pauses the guest, so the build is
 *        not part of the downtime)
 * PAGES  u32 first guest page (address / 4096) | u32 count | count * 4096 bytes
 * ZERO   u32 first guest page | u32 count            (pages that are now all zero)
 * STATE  JSON VmState (vCPUs, irqchip, PIT, clock, devices, breakpoints)
 * DONE   empty; the destination answers ACK
 * ACK    JSON { ok: true } or { ok: false, error }
 * ```
 *
 * @module
 */

import type { Machine } from "../machine.ts";
import { crc32, isZeroPage, PAGE_SIZE, pageRuns } from "./format.ts";
import { nonZeroPages, type VmConfig, type VmState } from "./snapshot.ts";

const FRAME = { hello: 1, pages: 2, zero: 3, state: 4, done: 5, ack: 6, ready: 7 } as const;
const PROTOCOL = "hvsh-migrate";
const VERSION = 1;
/** Pages per PAGES frame (1 MiB). */
const PAGES_PER_FRAME = 256;

/** Options of `vm.migrate()`. */
export interface MigrationOptions {
  /**
   * Pre-copy while the guest runs (default: true when the VM is running).
   * false: pause first and send everything (stop-and-copy).
   */
  precopy?: boolean;
  /** Pre-copy rounds at most before the VM is paused anyway. Default 10. */
  maxRounds?: number;
  /** Pause once a round finds at most this many dirty pages. Default 64. */
  stopBelowPages?: number;
}

/** What a migration did. */
export interface MigrationStats {
  /** Whether memory was pre-copied while the guest ran. */
  precopy: boolean;
  /** Pre-copy rounds (0 for stop-and-copy). */
  rounds: number;
  /** Pages sent with their bytes (zero pages are sent as ranges). */
  pagesSent: number;
  /** Bytes written to the socket. */
  bytesSent: number;
  /** Milliseconds the guest was paused: from the pause to the destination's acknowledgement that the VM is ready. */
  downtimeMs: number;
  /**
   * Milliseconds from the pause until the last page and the state were
   * sent (the stop-and-copy phase on the source: what QEMU's query-migrate
   * calls downtime).
   */
  stopCopyMs: number;
  /** Milliseconds from connecting to the acknowledgement. */
  totalMs: number;
}

/** Parses `host:port`, `:port` or `port` (host 127.0.0.1 unless given). */
export function parseMigrationAddress(address: string): { hostname: string; port: number } {
  const match = /^(?:(\[[^\]]+\]|[^:]*):)?(\d+)$/.exec(address.trim());
  const port = match === null ? NaN : Number(match[2]);
  if (match === null || !(port >= 0 && port <= 65535)) {
    throw new RangeError(
      `Invalid migration address ${JSON.stringify(address)}: expected HOST:PORT, e.g. 127.0.0.1:7000`,
    );
  }
  const host = match[1] === undefined || match[1] === "" ? "127.0.0.1" : match[1].replace(/^\[|\]$/g, "");
  return { hostname: host, port };
}

async function writeFrame(conn: Deno.Conn, type: number, payload: Uint8Array): Promise<number> {
  const frame = new Uint8Array(9 + payload.length);
  const view = new DataView(frame.buffer);
  view.setUint8(0, type);
  view.setUint32(1, payload.length, true);
  view.setUint32(5, crc32(payload), true);
  frame.set(payload, 9);
  let written = 0;
  while (written < frame.length) written += await conn.write(frame.subarray(written));
  return frame.length;
}

function jsonPayload(value: unknown): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(value));
}

/** Reads frames from a connection. */
class FrameReader {
  #buffer = new Uint8Array(0);
  constructor(readonly conn: Deno.Conn) {}

  async #fill(size: number): Promise<void> {
    while (this.#buffer.length < size) {
      const chunk = new Uint8Array(Math.max(1 << 16, size - this.#buffer.length));
      const n = await this.conn.read(chunk);
      if (n === null) {
        throw new Error(`Migration stream ended early (wanted ${size} bytes, have ${this.#buffer.length})`);
      }
      const joined = new Uint8Array(this.#buffer.length + n);
      joined.set(this.#buffer);
      joined.set(chunk.subarray(0, n), this.#buffer.length);
      this.#buffer = joined;
    }
  }

  async next(): Promise<{ type: number; payload: Uint8Array }> {
    await this.#fill(9);
    const view = new DataView(this.#buffer.buffer, this.#buffer.byteOffset, 9);
    const type = view.getUint8(0);
    const length = view.getUint32(1, true);
    const crc = view.getUint32(5, true);
    if (length > 64 << 20) throw new Error(`Migration frame of type ${type} claims ${length} bytes: refused`);
    await this.#fill(9 + length);
    const payload = this.#buffer.slice(9, 9 + length);
    this.#buffer = this.#buffer.slice(9 + length);
    if (crc32(payload) !== crc) throw new Error(`Migration frame of type ${type} is corrupt (checksum mismatch)`);
    return { type, payload };
  }
}

/** The source side's view of the VM (core/vm.ts provides it). */
export interface MigrationSource {
  machine: Machine;
  config: () => VmConfig;
  /** The whole VM state but memory (the VM is stopped when this is called). */
  capture: () => VmState;
}

/** Sends `pages` (guest page numbers, sorted) as PAGES and ZERO frames. Returns [pages with data, bytes]. */
async function sendPages(conn: Deno.Conn, machine: Machine, pages: readonly number[]): Promise<[number, number]> {
  const memory = machine.memory;
  let sent = 0;
  let bytes = 0;
  for (const [first, count] of pageRuns(pages)) {
    for (let done = 0; done < count; done += PAGES_PER_FRAME) {
      const take = Math.min(PAGES_PER_FRAME, count - done);
      const start = first + done;
      // Copied synchronously (with the debugger's planted bytes out), then sent.
      const data = memory.withOriginalBytes(() => memory.readRaw(start * PAGE_SIZE, take * PAGE_SIZE));
      let runStart = 0;
      const flush = async (end: number, zero: boolean) => {
        if (end <= runStart) return;
        const head = new Uint8Array(8);
        const view = new DataView(head.buffer);
        view.setUint32(0, start + runStart, true);
        view.setUint32(4, end - runStart, true);
        if (zero) {
          bytes += await writeFrame(conn, FRAME.zero, head);
        } else {
          const payload = new Uint8Array(8 + (end - runStart) * PAGE_SIZE);
          payload.set(head);
          payload.set(data.subarray(runStart * PAGE_SIZE, end * PAGE_SIZE), 8);
          bytes += await writeFrame(conn, FRAME.pages, payload);
          sent += end - runStart;
        }
        runStart = end;
      };
      let zeroRun: boolean | undefined;
      for (let i = 0; i < take; i++) {
        const zero = isZeroPage(data.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE));
        if (zeroRun !== undefined && zero !== zeroRun) await flush(i, zeroRun);
        zeroRun = zero;
      }
      await flush(take, zeroRun ?? false);
    }
  }
  return [sent, bytes];
}

/** Every page of the machine's RAM that holds data, as guest page numbers. */
function allDataPages(machine: Machine): number[] {
  const memory = machine.memory;
  return nonZeroPages(memory).flatMap((pages, i) => pages.map((page) => memory.regions[i]!.base / PAGE_SIZE + page));
}

/** Runs a migration from the source side (see `Vm.migrate`). */
export async function migrateVm(
  address: string,
  source: MigrationSource,
  options: MigrationOptions = {},
): Promise<MigrationStats> {
  const { hostname, port } = parseMigrationAddress(address);
  const machine = source.machine;
  const started = performance.now();
  let conn: Deno.Conn;
  try {
    conn = await Deno.connect({ hostname, port });
    // Small frames (the state, DONE, the ACK) must not wait for Nagle's algorithm: measured +20-30 ms of downtime.
    (conn as Deno.TcpConn).setNoDelay(true);
  } catch (error) {
    throw new Error(`Cannot migrate to ${hostname}:${port}: ${(error as Error).message}`, { cause: error });
  }
  const stats: MigrationStats = {
    precopy: false,
    rounds: 0,
    pagesSent: 0,
    bytesSent: 0,
    downtimeMs: 0,
    stopCopyMs: 0,
    totalMs: 0,
  };
  const count = ([pages, bytes]: [number, number]) => {
    stats.pagesSent += pages;
    stats.bytesSent += bytes;
  };
  let logging = false;
  try {
    stats.bytesSent += await writeFrame(
      conn,
      FRAME.hello,
      jsonPayload({ protocol: PROTOCOL, version: VERSION, config: source.config() }),
    );
    machine.prepareStateCapture();
    const replies = new FrameReader(conn);
    const precopy = machine.running && options.precopy !== false;
    let pausedAt: number;
    if (precopy) {
      stats.precopy = true;
      machine.startDirtyLog();
      logging = true;
      count(await sendPages(conn, machine, allDataPages(machine)));
      const ready = await replies.next();
      if (ready.type !== FRAME.ready) {
        const said = new TextDecoder().decode(ready.payload);
        throw new Error(`The destination refused the VM: ${ready.type === FRAME.ack ? said : `frame ${ready.type}`}`);
      }
      const maxRounds = options.maxRounds ?? 10;
      const stopBelow = options.stopBelowPages ?? 64;
      for (;;) {
        if (!machine.running) break;
        const dirty = machine.takeDirtyPages();
        stats.rounds++;
        const pages = dirty === "all" ? allDataPages(machine) : [...dirty].sort((a, b) => a - b);
        count(await sendPages(conn, machine, pages));
        if ((dirty !== "all" && dirty.size <= stopBelow) || stats.rounds >= maxRounds) break;
      }
      pausedAt = performance.now();
      await machine.pause("migration");
      const last = machine.takeDirtyPages(); // logging stops after the acknowledgement, outside the downtime
      count(await sendPages(conn, machine, last === "all" ? allDataPages(machine) : [...last].sort((a, b) => a - b)));
    } else {
      pausedAt = performance.now();
      if (machine.running) await machine.pause("migration");
      count(await sendPages(conn, machine, allDataPages(machine)));
    }
    stats.bytesSent += await writeFrame(conn, FRAME.state, jsonPayload(source.capture()));
    stats.bytesSent += await writeFrame(conn, FRAME.done, new Uint8Array());
    stats.stopCopyMs = performance.now() - pausedAt;
    let reply = await replies.next();
    if (reply.type === FRAME.ready) reply = await replies.next(); // a stop-and-copy source did not wait for it
    const ack = JSON.parse(new TextDecoder().decode(reply.payload)) as { ok: boolean; error?: string };
    if (reply.type !== FRAME.ack || !ack.ok) {
      throw new Error(`The destination refused the VM: ${ack.error ?? `unexpected frame ${reply.type}`}`);
    }
    const done = performance.now();
    stats.downtimeMs = done - pausedAt;
    stats.totalMs = done - started;
    return stats;
  } finally {
    if (logging) machine.stopDirtyLog();
    conn.close();
  }
}

/** The destination side's way to build and fill a VM (core/vm.ts provides it). */
export interface MigrationTarget<V> {
  /** A VM for `config` on fresh memory, and the guest pages its construction wrote. */
  build(config: VmConfig): Promise<{ machine: V & Machine; written: number[]; close(): Promise<void> }>;
  /** Puts the received state into it (closing it on failure). */
  apply(machine: V & Machine, state: VmState): Promise<V>;
}

/** Receives one migration on `address` (see `Vm.receiveMigration`). */
export async function receiveVm<V>(
  address: string,
  target: MigrationTarget<V>,
  onListening?: (address: string) => void,
): Promise<V> {
  const { hostname, port } = parseMigrationAddress(address);
  const listener = Deno.listen({ hostname, port });
  let conn: Deno.Conn;
  try {
    const bound = listener.addr as Deno.NetAddr;
    onListening?.(`${bound.hostname}:${bound.port}`);
    conn = await listener.accept();
    (conn as Deno.TcpConn).setNoDelay(true);
  } finally {
    listener.close();
  }
  const reply = (value: unknown) => writeFrame(conn, FRAME.ack, jsonPayload(value)).catch(() => 0);
  let built: Awaited<ReturnType<MigrationTarget<V>["build"]>> | undefined;
  try {
    const reader = new FrameReader(conn);
    const hello = await reader.next();
    const intro = hello.type === FRAME.hello ? JSON.parse(new TextDecoder().decode(hello.payload)) : undefined;
    if (intro?.protocol !== PROTOCOL || intro.version !== VERSION) {
      throw new Error(`Not an hvsh migration stream (version ${VERSION}): first frame of type ${hello.type}`);
    }
    built = await target.build(intro.config as VmConfig);
    built.machine.prepareStateCapture();
    await writeFrame(conn, FRAME.ready, new Uint8Array());
    const memory = built.machine.memory;
    const unwritten = new Set(built.written);
    let state: VmState | undefined;
    for (;;) {
      const frame = await reader.next();
      if (frame.type === FRAME.pages || frame.type === FRAME.zero) {
        const view = new DataView(frame.payload.buffer, frame.payload.byteOffset, 8);
        const first = view.getUint32(0, true);
        const count = view.getUint32(4, true);
        if (frame.type === FRAME.pages) {
          if (frame.payload.length !== 8 + count * PAGE_SIZE) {
            throw new Error(`PAGES frame of ${count} pages has ${frame.payload.length} bytes`);
          }
          memory.write(first * PAGE_SIZE, frame.payload.subarray(8));
        } else {
          memory.fill(first * PAGE_SIZE, count * PAGE_SIZE, 0);
        }
        for (let page = first; page < first + count; page++) unwritten.delete(page);
      } else if (frame.type === FRAME.state) {
        state = JSON.parse(new TextDecoder().decode(frame.payload)) as VmState;
      } else if (frame.type === FRAME.done) {
        break;
      } else {
        throw new Error(`Unexpected migration frame of type ${frame.type}`);
      }
    }
    if (state === undefined) throw new Error("The migration stream ended without the VM state");
    // Pages the construction wrote and the source never sent are zero at the source.
    for (const page of unwritten) {
      if (memory.isRam(page * PAGE_SIZE, PAGE_SIZE)) memory.fill(page * PAGE_SIZE, PAGE_SIZE, 0);
    }
    const machine = built.machine;
    built = undefined; // apply() closes the VM itself on failure
    const vm = await target.apply(machine, state);
    await reply({ ok: true });
    return vm;
  } catch (error) {
    await reply({ ok: false, error: (error as Error).message });
    await built?.close();
    throw error;
  } finally {
    conn.close();
  }
}
