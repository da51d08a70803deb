/**
 * Fuzz target "gdb-packets": odd, garbage and malformed GDB remote-protocol
 * traffic sent over real TCP to a real gdb server for a real VM.
 *
 * Each case is a batch of 1-16 fragments on one connection: packets with
 * garbage arguments, huge numbers and lengths, bad hex, wrong or missing
 * checksums, stray escapes and run-length marks, over-long packets, binary
 * junk, interleaved 0x03, resumes (`c`, `s`, `vCont`) with Ctrl-C,
 * breakpoints and watchpoints, `D`; the connection then ends with a FIN or a
 * RST (SO_LINGER 0), often in the middle of a packet. Now and then a burst
 * of connections is reset before the server accepts them.
 *
 * After each batch a fresh client must be served: `?` answers `T05thread:1;`
 * and `g` gives the vCPU's registers. The VM must be intact: stopped at
 * `spin_here` with the same registers, special registers and first 2 MiB of
 * RAM as before the batch (no write packet is ever sent well-formed, and
 * gdb's breakpoints must be gone once its connection is), and no breakpoint
 * left behind.
 *
 * @module
 */

import net from "node:net";
import { Vm } from "../../core/vm.ts";
import { type GdbServer, listenGdb } from "../../core/gdb/server.ts";
import {
  bytesToText,
  encodePacket,
  hexDecode,
  hexEncode,
  MAX_PACKET_SIZE,
  textToBytes,
} from "../../core/gdb/protocol.ts";
import { decodeRegisters } from "../../core/gdb/arch_x86.ts";
import { guest, symbol } from "../_helpers.ts";
import { RawClient, resetBeforeAccept } from "../_gdb_client.ts";
import type { FuzzRandom, FuzzReport, FuzzTarget } from "./_target.ts";

/** How long one batch or one check may take before it counts as a hang. */
const HANG_MS = 15_000;
/** Bytes of guest RAM compared before and after each batch (code, stack and page tables of spin.elf). */
const RAM_CHECKED = 2 << 20;

function bytes(text: string): Uint8Array {
  return textToBytes(text);
}

function hex(random: FuzzRandom, digits: number): string {
  let out = "";
  for (let i = 0; i < digits; i++) out += "0123456789abcdef"[random.int(16)];
  return out;
}

/** A number as gdb might write it, or one far too large for any field. */
function number(random: FuzzRandom): string {
  return random.pick([
    () => "0",
    () => hex(random, 1 + random.int(8)),
    () => "ffffffffffffffff",
    () => "1" + "0".repeat(16 + random.int(40)),
    () => "-1",
    () => "",
    () => "0x10",
    () => hex(random, 200),
  ])();
}

/** Printable junk; never a well-formed packet that writes state (M, X, G, P, resume-at-address, kill). */
function junkText(random: FuzzRandom, length: number): string {
  let out = "";
  for (let i = 0; i < length; i++) out += String.fromCharCode(0x20 + random.int(0x5f));
  if (/^[MXGPkRrcsCS]|^vKill|^vCont;[cs]?[^;:]|^vRun/.test(out)) out = `q${out}`;
  return out;
}

/** Payloads with a valid checksum: odd commands, garbage arguments, huge values. None writes guest state. */
function oddPayload(random: FuzzRandom, spinHere: bigint): string {
  const address = () => random.pick([spinHere.toString(16), "100000", "0", number(random)]);
  return random.pick<() => string>([
    () => `m${number(random)},${number(random)}`,
    () => `m${address()},${random.pick(["1", "10", (MAX_PACKET_SIZE >> 1).toString(16), "100000", "ffffffff"])}`,
    () => `m${address()}`,
    () => `M${address()},${number(random)}:${junkText(random, random.int(16))}`, // bad hex or wrong length
    () => `M${address()},4:00`, // 1 byte of data for 4
    () => `X${address()},${number(random)}:`,
    () => `G${hex(random, random.int(64))}`, // too short for the 600-byte layout
    () => `G${junkText(random, 1200)}`,
    () => `p${number(random)}`,
    () => `P${number(random)}=${hex(random, 2 * random.int(3))}`, // wrong width (never 8 bytes for rip)
    () => `P${number(random)}`,
    () => `Z${random.int(7)},${address()},${number(random)}`,
    () => `z${random.int(7)},${address()},${number(random)}`,
    () => `Z${random.pick(["0", "1"])},${spinHere.toString(16)},1`,
    () => `Z${random.pick(["2", "3", "4"])},${address()},${random.pick(["1", "2", "4", "8", "0"])}`,
    () => `H${random.pick(["g", "c", "x"])}${random.pick(["0", "-1", "1", "2", number(random)])}`,
    () => `T${number(random)}`,
    () =>
      `qXfer:features:read:${random.pick(["target.xml", "64bit-core.xml", "nosuch", ""])}:${number(random)},${
        number(random)
      }`,
    () => `qSupported:${junkText(random, random.int(80))}`,
    () =>
      `qRcmd,${random.pick([hex(random, random.int(40)) + random.pick(["", "z"]), hexEncode(monitorLine(random))])}`,
    () => random.pick(["qC", "qAttached", "qOffsets", "qfThreadInfo", "qsThreadInfo", "qSymbol::", "vCont?", "?"]),
    () => `qThreadExtraInfo,${number(random)}`,
    () => random.pick(["vMustReplyEmpty", "vFile:open:", "QStartNoAckMode", "qTStatus", "!", "A", "b", "i"]),
    () => `vCont;${junkText(random, random.int(12))}`,
    () => junkText(random, random.int(64)),
    () => "",
  ])();
}

function monitorLine(random: FuzzRandom): string {
  return random.pick([
    "help",
    "regs",
    `pt ${number(random)}`,
    `disas ${number(random)} ${random.int(2000)}`,
    "js vm.close()", // refused: this server does not allow js
    `phys ${random.pick(["on", "off", "maybe"])}`,
    junkText(random, random.int(30)),
  ]);
}

/** One fragment of a batch: what goes on the wire next. */
function fragment(random: FuzzRandom, spinHere: bigint): Uint8Array {
  switch (random.int(14)) {
    case 0:
    case 1:
    case 2:
    case 3:
      return encodePacket(oddPayload(random, spinHere));
    case 4: { // wrong checksum, even on packets that would write
      const payload = random.pick([`M100000,4:${hex(random, 8)}`, "G" + "0".repeat(1200), "P10=0000000000000000", "k"]);
      const framed = encodePacket(random.int(2) === 0 ? payload : oddPayload(random, spinHere));
      framed[framed.length - 1] = framed[framed.length - 1] === 0x30 ? 0x31 : 0x30;
      return framed;
    }
    case 5: // a checksum that is not hex, missing, or cut short
      return bytes(`$${oddPayload(random, spinHere)}#${random.pick(["zz", "", "0", "g1"])}`);
    case 6: // stray escapes and run-length marks in what gdb sends
      return bytes(`$${random.pick(["}", "}}", "*", "a*", "a* ", "0*\x7f", "m10}", "}\x03"])}#${hex(random, 2)}`);
    case 7: // longer than any packet may be
      return encodePacket("m" + "0".repeat(MAX_PACKET_SIZE + random.int(4096)));
    case 8: // binary junk, 0x03 and $ # } included
      return random.bytes(1 + random.int(random.pick([16, 512, 8192])));
    case 9: // framing bytes out of place
      return bytes(random.pick(["+", "-", "+++", "---", "#00", "$", "$$$", "$m0,1$g#67", "\x03", "\x03\x03\x03"]));
    case 10: // resume, then Ctrl-C in the same segment or later
      return bytes(
        bytesToText(encodePacket(random.pick(["c", "s", "vCont;c", "vCont;s:1", "vCont;c:1", "C02"]))) +
          random.pick(["\x03", "", "\x03\x03"]),
      );
    case 11:
      return bytes("\x03");
    case 12: // a packet cut in two by the next fragment
      return bytes(`$m${hex(random, 6)},`);
    default:
      return random.int(8) === 0 ? encodePacket("D") : encodePacket("?");
  }
}

/** What must not change across a batch. */
interface Snapshot {
  registers: string;
  ram: Uint8Array;
}

function snapshot(vm: Vm): Snapshot {
  const cpu = vm.cpu(0);
  const registers = JSON.stringify(
    { regs: cpu.regs, sregs: cpu.sregs },
    (_key, value) => typeof value === "bigint" ? value.toString(16) : value,
  );
  return { registers, ram: vm.memory.read(0, RAM_CHECKED) };
}

function firstDifference(a: Uint8Array, b: Uint8Array): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

/** A VM held at spin_here with a gdb server, and a count of connections that have gone. */
class Rig {
  readonly vm: Vm;
  server!: GdbServer;
  readonly spinHere: bigint;
  /** Connections the server is done with: served and gone, or reset before it could accept them. */
  departed = 0;
  baseline!: Snapshot;
  readonly #trace = Deno.env.get("HVSH_FUZZ_TRACE") !== undefined;

  private constructor(vm: Vm, spinHere: bigint) {
    this.vm = vm;
    this.spinHere = spinHere;
  }

  #log(line: string): void {
    if (line.startsWith("accept failed:")) this.departed++;
    if (this.#trace) console.error(line.slice(0, 160));
  }

  static async create(): Promise<Rig> {
    const vm = await Vm.create({ memory: "16M" });
    try {
      await vm.load(await guest("spin.elf"));
      const running = vm.run();
      await vm.serial.waitFor("spinning\n", { timeout: HANG_MS });
      await vm.pause();
      await running;
      const spinHere = symbol(vm, "spin_here");
      if (BigInt(vm.cpu(0).regs.rip) !== spinHere) throw new Error("spin.elf did not reach spin_here");
      const rig = new Rig(vm, spinHere);
      rig.server = listenGdb(vm, { port: 0, log: (line) => rig.#log(line) });
      rig.server.onConnection((connected) => {
        if (!connected) rig.departed++;
      });
      rig.baseline = snapshot(vm);
      return rig;
    } catch (error) {
      await vm.close();
      throw error;
    }
  }

  /** Waits until `count` connections have gone (see {@link Rig.departed}) and none is attached. */
  async waitDeparted(count: number): Promise<void> {
    const deadline = Date.now() + HANG_MS;
    while (this.departed < count || this.server.connected) {
      if (Date.now() > deadline) {
        throw new Error(`the server was not done with connection ${count} (done with ${this.departed})`);
      }
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
  }

  async close(): Promise<void> {
    await this.server.close();
    await this.vm.close();
  }
}

/** Writes `fragments` on a node:net socket (draining what comes back), then ends with FIN or RST. */
async function sendBatch(port: number, fragments: Uint8Array[], reset: boolean, cutLast: boolean): Promise<void> {
  const socket = net.connect({ port, host: "127.0.0.1" });
  socket.setNoDelay(true);
  socket.on("data", () => {}); // read everything, so the server's writes never block
  const failed = new Promise<never>((_, reject) => socket.on("error", reject));
  failed.catch(() => {});
  await Promise.race([new Promise((resolve) => socket.once("connect", resolve)), failed]);
  for (const [index, part] of fragments.entries()) {
    const data = cutLast && index === fragments.length - 1 ? part.subarray(0, Math.ceil(part.length / 2)) : part;
    if (data.length === 0) continue;
    await Promise.race([new Promise((resolve) => socket.write(data, resolve)), failed]);
  }
  if (reset) {
    socket.resetAndDestroy();
  } else {
    await new Promise<void>((resolve) => socket.end(resolve));
    socket.destroy();
  }
}

/** A served client's `?` and `g`, and the VM against the baseline. Returns what is wrong, or undefined. */
async function check(rig: Rig): Promise<string | undefined> {
  const client = await RawClient.connect(rig.server);
  try {
    const halt = await client.ask("?", HANG_MS);
    if (halt !== "T05thread:1;") return `? answered ${JSON.stringify(halt.slice(0, 120))}`;
    const g = await client.ask("g", HANG_MS);
    if (g.length !== 1200) return `g answered ${g.length} hex digits, want 1200: ${JSON.stringify(g.slice(0, 80))}`;
    const registers = decodeRegisters(hexDecode(g));
    const regs = rig.vm.cpu(0).regs;
    for (const name of ["rip", "rsp", "rax", "rsi", "rflags"] as const) {
      const fromGdb = name === "rflags" ? registers.eflags : registers[name];
      if (typeof fromGdb !== "bigint" || fromGdb !== BigInt(regs[name])) {
        return `g gave ${name} ${fromGdb?.toString(16)}, the vCPU has ${BigInt(regs[name]).toString(16)}`;
      }
    }
  } finally {
    client.close();
  }
  await rig.waitDeparted(rig.departed + 1);
  const vm = rig.vm;
  if (vm.state !== "stopped") return `the VM is ${vm.state} after the check`;
  if (vm.debug.breakpoints.length !== 0) return `${vm.debug.breakpoints.length} breakpoints left behind`;
  const now = snapshot(vm);
  if (now.registers !== rig.baseline.registers) {
    return `registers changed: ${now.registers.slice(0, 300)} (was ${rig.baseline.registers.slice(0, 300)})`;
  }
  const at = firstDifference(now.ram, rig.baseline.ram);
  if (at >= 0) return `RAM changed at ${at.toString(16)}: ${now.ram[at]} (was ${rig.baseline.ram[at]})`;
  return undefined;
}

function describe(fragments: Uint8Array[]): string {
  const shown = fragments.map((part) => {
    const text = new TextDecoder("latin1").decode(part.subarray(0, 40));
    return JSON.stringify(text) + (part.length > 40 ? `+${part.length - 40}B` : "");
  });
  return shown.join(" ").slice(0, 400);
}

async function withDeadline<T>(work: Promise<T>, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hang = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} hung for ${HANG_MS} ms`)), HANG_MS);
  });
  try {
    return await Promise.race([work, hang]);
  } finally {
    clearTimeout(timer);
  }
}

/** The gdb-packets fuzz target. */
export const target: FuzzTarget = {
  name: "gdb-packets",
  description:
    "odd, malformed and junk gdb packets, Ctrl-C and resets over TCP; the stub must answer ? and g after each",
  async run(random: FuzzRandom, options: { maxCases: number; deadline: number }): Promise<FuzzReport> {
    const failures: string[] = [];
    const seed = (random as { seed?: number }).seed;
    const label = (index: number) => (seed === undefined ? `case ${index}` : `seed ${seed} case ${index}`);
    let rig = await Rig.create();
    let cases = 0;
    try {
      while (cases < options.maxCases && performance.now() < options.deadline) {
        const index = cases++;
        const fragments = Array.from({ length: 1 + random.int(16) }, () => fragment(random, rig.spinHere));
        const reset = random.int(2) === 0;
        const cutLast = random.int(3) === 0;
        const burst = random.int(25) === 0 ? 1 + random.int(8) : 0;
        let problem: string | undefined;
        try {
          if (burst > 0) {
            const before = rig.departed;
            await resetBeforeAccept(rig.server.port!, burst);
            await rig.waitDeparted(before + burst);
          }
          const departed = rig.departed;
          await withDeadline(sendBatch(rig.server.port!, fragments, reset, cutLast), "sending the batch");
          await rig.waitDeparted(departed + 1);
          problem = await withDeadline(check(rig), "the check after the batch");
        } catch (error) {
          problem = (error as Error).message;
        }
        if (problem !== undefined) {
          const end = `${reset ? "RST" : "FIN"}${cutLast ? " mid-packet" : ""}${
            burst ? `, ${burst} resets first` : ""
          }`;
          failures.push(`${label(index)}: ${problem}; sent ${describe(fragments)} then ${end}`);
          // Go on with a fresh VM and server, so one failure does not hide the next.
          await rig.close().catch(() => {});
          rig = await Rig.create();
        }
      }
    } finally {
      await rig.close();
    }
    return { cases, failures };
  },
};
