/**
 * The GDB remote serial protocol, wire level: packet framing (`$payload#cs`),
 * checksums, escaping, acks, the interrupt byte, and one parser per packet
 * that turns a payload into a typed {@link Command}.
 *
 * Nothing here knows about VMs: the stub (stub.ts) consumes commands and the
 * target (target.ts) never sees protocol types. Parse failures are
 * {@link PacketError}s with a named {@link PacketErrorKind}, so the stub can
 * answer each the way GDB expects (a `-` nack, an empty reply, or `E xx`)
 * without ever touching the VM.
 *
 * @example
 * ```ts
 * import { encodePacket, FrameDecoder, parseCommand } from "./protocol.ts";
 * const decoder = new FrameDecoder();
 * const [event] = decoder.feed(new TextEncoder().encode("$m100,4#5e"));
 * if (event?.type === "packet") parseCommand(event.data); // { kind: "readMemory", address: 0x100n, length: 4 }
 * new TextDecoder().decode(encodePacket("OK")); // "$OK#9a"
 * ```
 *
 * @module
 */

/**
 * The largest packet hvsh accepts and advertises (`PacketSize`, in bytes of
 * payload). 128 KiB: with run-length encoding a 16 MiB `dump` of mostly-zero
 * RAM then needs few round trips (measured 2.9x QEMU's MiB/s; 1.9x at 16 KiB).
 */
export const MAX_PACKET_SIZE = 0x20000;

/**
 * The most bytes one `m` may ask for: its hex reply must fit in a packet.
 * Larger requests are answered `E` (GDB itself never asks for more than the
 * advertised packet size allows).
 */
export const MAX_MEMORY_READ = MAX_PACKET_SIZE >> 1;

/** Why a packet could not be used. */
export type PacketErrorKind =
  /** The checksum after `#` does not match the payload: answered with `-` (GDB resends). */
  | "ChecksumMismatch"
  /** The payload is longer than {@link MAX_PACKET_SIZE}: answered `E`. */
  | "PacketTooLong"
  /** A known command with missing or misplaced fields (e.g. `m100` without a length): answered with an empty reply. */
  | "MalformedCommand"
  /** A field that should be hex is not (or has more digits than fit): answered `E`. */
  | "InvalidHex"
  /** A length or count beyond what hvsh serves (e.g. `m0,ffffffff`): answered `E`. */
  | "LengthTooLarge";

/** A packet that could not be framed or parsed. `kind` says which rule it broke. */
export class PacketError extends Error {
  /** Which rule the packet broke. */
  readonly kind: PacketErrorKind;
  /** ChecksumMismatch: the checksum the packet carried. */
  readonly got: number | undefined;
  /** ChecksumMismatch: the checksum of the payload as received. */
  readonly want: number | undefined;

  constructor(kind: PacketErrorKind, message: string, options: { got?: number; want?: number; cause?: unknown } = {}) {
    super(`Cannot parse packet: ${message}`, options.cause === undefined ? {} : { cause: options.cause });
    this.name = "PacketError";
    this.kind = kind;
    this.got = options.got;
    this.want = options.want;
  }
}

const DOLLAR = 0x24;
const HASH = 0x23;
const BRACE = 0x7d;
const STAR = 0x2a;
const PLUS = 0x2b;
const MINUS = 0x2d;
/** The byte GDB sends (outside any packet) to interrupt a running target. */
export const INTERRUPT = 0x03;

const encoder = new TextEncoder();
const latin1 = new TextDecoder("latin1");

function hex2(value: number): string {
  return value.toString(16).padStart(2, "0");
}

/** The modulo-256 sum of the bytes: the packet checksum. */
export function checksum(bytes: Uint8Array): number {
  let sum = 0;
  for (const b of bytes) sum = (sum + b) & 0xff;
  return sum;
}

/** Bytes as a string, one char per byte (packets are 8-bit clean). */
export function bytesToText(bytes: Uint8Array): string {
  return latin1.decode(bytes);
}

/** A string of chars 0-255 as bytes, one per char. */
export function textToBytes(text: string): Uint8Array {
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i) & 0xff;
  return out;
}

/** Escapes `$`, `#`, `}` and `*` as `}` followed by the byte XOR 0x20 (binary data in packets). */
export function escapeBinary(bytes: Uint8Array): Uint8Array {
  let extra = 0;
  for (const b of bytes) if (b === DOLLAR || b === HASH || b === BRACE || b === STAR) extra++;
  if (extra === 0) return bytes;
  const out = new Uint8Array(bytes.length + extra);
  let at = 0;
  for (const b of bytes) {
    if (b === DOLLAR || b === HASH || b === BRACE || b === STAR) {
      out[at++] = BRACE;
      out[at++] = b ^ 0x20;
    } else {
      out[at++] = b;
    }
  }
  return out;
}

/**
 * Frames a payload as `$payload#cs`. Characters that cannot appear raw
 * (`$ # } *`) are escaped; a string's chars must be 0-255 (use
 * {@link hexEncode} for text that may hold others).
 *
 * @example
 * ```ts
 * import { encodePacket } from "./protocol.ts";
 * new TextDecoder().decode(encodePacket("T05thread:01;")); // "$T05thread:01;#07"
 * ```
 */
export function encodePacket(payload: string | Uint8Array): Uint8Array {
  const body = runLengthEncode(escapeBinary(typeof payload === "string" ? textToBytes(payload) : payload));
  const out = new Uint8Array(body.length + 4);
  out[0] = DOLLAR;
  out.set(body, 1);
  out[body.length + 1] = HASH;
  // Two digits stored directly: a TextEncoder call here cost about as much as the rest of a short packet.
  const sum = HEX_PAIRS[checksum(body)]!;
  out[body.length + 2] = sum & 0xff;
  out[body.length + 3] = sum >> 8;
  return out;
}

/**
 * The protocol's run-length encoding of a reply body (`c*N`: N - 29 more
 * copies of c), as gdbserver sends it. Mostly-zero memory shrinks a lot: a
 * 16 MiB dump ran at 1.0x QEMU's rate without it and 2x with it (gdb's hex
 * parsing is the limit). Counts that would read as `#` or `$` are avoided.
 */
export function runLengthEncode(body: Uint8Array): Uint8Array {
  const out = new Uint8Array(body.length);
  let o = 0;
  for (let i = 0; i < body.length;) {
    const c = body[i]!;
    let j = i + 1;
    while (j < body.length && body[j] === c && j - i <= 97) j++;
    let repeats = j - i - 1;
    if (repeats >= 3) {
      while (repeats + 29 === HASH || repeats + 29 === DOLLAR) repeats--;
      out[o++] = c;
      out[o++] = STAR;
      out[o++] = repeats + 29;
      i += repeats + 1;
    } else {
      out[o++] = c;
      i++;
    }
  }
  return out.subarray(0, o);
}

/** Two ASCII hex digits per byte value, little-endian in a u16, for encoding without string concatenation. */
const HEX_PAIRS = new Uint16Array(256);
for (let b = 0; b < 256; b++) {
  const digit = (n: number) => n < 10 ? 0x30 + n : 0x57 + n;
  HEX_PAIRS[b] = digit(b >> 4) | (digit(b & 15) << 8);
}

/** "00" to "ff", for short inputs to {@link hexEncode}. */
const HEX_STRINGS = Array.from({ length: 256 }, (_, b) => b.toString(16).padStart(2, "0"));
/** Up to this many bytes, concatenating strings beats a TextDecoder call (~1.5 µs each: a stop reply made 24). */
const SHORT_HEX = 64;

/** Bytes as lowercase hex, two digits each (a table lookup per byte: 8 KiB in ~30 µs instead of ~180). */
export function hexEncode(bytes: Uint8Array | string): string {
  const data = typeof bytes === "string" ? encoder.encode(bytes) : bytes;
  if (data.length <= SHORT_HEX) {
    let text = "";
    for (let i = 0; i < data.length; i++) text += HEX_STRINGS[data[i]!]!;
    return text;
  }
  const out = new Uint16Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = HEX_PAIRS[data[i]!]!;
  return latin1.decode(new Uint8Array(out.buffer));
}

/** Hex pairs as bytes; throws a PacketError (InvalidHex) naming the field for odd lengths or non-hex chars. */
export function hexDecode(text: string, field = "data"): Uint8Array {
  if (text.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(text)) {
    throw new PacketError("InvalidHex", `${field} ${JSON.stringify(clip(text))} is not hex byte pairs`);
  }
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(i * 2, i * 2 + 2), 16);
  return out;
}

function clip(text: string, max = 40): string {
  return text.length > max ? `${text.slice(0, max)}...` : text;
}

/** What {@link FrameDecoder.feed} found in the byte stream. */
export type FrameEvent =
  /** A complete packet with a good checksum; `data` is unescaped (and run-length expanded). */
  | { type: "packet"; data: Uint8Array }
  /** The interrupt byte 0x03 between packets (Ctrl-C in GDB). */
  | { type: "interrupt" }
  /** `+`: the peer received our last packet. */
  | { type: "ack" }
  /** `-`: the peer wants our last packet again. */
  | { type: "nack" }
  /** A framed packet that cannot be used (ChecksumMismatch, PacketTooLong). */
  | { type: "error"; error: PacketError };

/**
 * Splits a byte stream into frame events. Bytes outside packets other than
 * `+`, `-` and 0x03 are ignored; a `$` inside a packet restarts the packet
 * (a raw `$` never appears inside one), so a truncated packet followed by a
 * good one loses only itself.
 *
 * @example
 * ```ts
 * import { FrameDecoder } from "./protocol.ts";
 * const decoder = new FrameDecoder();
 * decoder.feed(new TextEncoder().encode("+$g#67\x03")); // ack, packet "g", interrupt
 * ```
 */
export class FrameDecoder {
  #state: "idle" | "body" | "check1" | "check2" = "idle";
  #body: number[] = [];
  #tooLong = false;
  #sum = 0;
  #check = "";
  readonly #maxSize: number;

  /** `maxSize`: the longest payload kept (default {@link MAX_PACKET_SIZE}); longer ones become PacketTooLong errors. */
  constructor(maxSize = MAX_PACKET_SIZE) {
    this.#maxSize = maxSize;
  }

  /** True while a packet has started but not ended. */
  get inPacket(): boolean {
    return this.#state !== "idle";
  }

  /** Consumes bytes; returns the events they complete, in order. */
  feed(bytes: Uint8Array): FrameEvent[] {
    const events: FrameEvent[] = [];
    for (const b of bytes) {
      switch (this.#state) {
        case "idle":
          if (b === DOLLAR) this.#start();
          else if (b === INTERRUPT) events.push({ type: "interrupt" });
          else if (b === PLUS) events.push({ type: "ack" });
          else if (b === MINUS) events.push({ type: "nack" });
          break;
        case "body":
          if (b === HASH) {
            this.#state = "check1";
          } else if (b === DOLLAR) {
            this.#start();
          } else {
            this.#sum = (this.#sum + b) & 0xff;
            if (this.#body.length < this.#maxSize + 2) this.#body.push(b);
            else this.#tooLong = true;
          }
          break;
        case "check1":
          this.#check = String.fromCharCode(b);
          this.#state = "check2";
          break;
        case "check2": {
          this.#check += String.fromCharCode(b);
          this.#state = "idle";
          events.push(this.#finish());
          break;
        }
      }
    }
    return events;
  }

  #start(): void {
    this.#state = "body";
    this.#body = [];
    this.#sum = 0;
    this.#tooLong = false;
  }

  #finish(): FrameEvent {
    const got = /^[0-9a-fA-F]{2}$/.test(this.#check) ? parseInt(this.#check, 16) : -1;
    if (got !== this.#sum) {
      const shown = got < 0 ? JSON.stringify(this.#check) : hex2(got);
      return {
        type: "error",
        error: new PacketError("ChecksumMismatch", `checksum mismatch (got ${shown}, want ${hex2(this.#sum)})`, {
          got,
          want: this.#sum,
        }),
      };
    }
    if (this.#tooLong) {
      return {
        type: "error",
        error: new PacketError("PacketTooLong", `packet longer than ${this.#maxSize} bytes`),
      };
    }
    const data = unescape(this.#body);
    if (data.length > this.#maxSize) {
      return {
        type: "error",
        error: new PacketError("PacketTooLong", `packet of ${data.length} bytes (limit ${this.#maxSize})`),
      };
    }
    return { type: "packet", data };
  }
}

/** Undoes `}` escapes and expands `*` run-length encoding (GDB sends neither in commands, but both are legal). */
function unescape(raw: number[]): Uint8Array {
  const out: number[] = [];
  for (let i = 0; i < raw.length; i++) {
    const b = raw[i]!;
    if (b === BRACE && i + 1 < raw.length) {
      out.push(raw[++i]! ^ 0x20);
    } else if (b === STAR && i + 1 < raw.length && out.length > 0) {
      const repeat = raw[++i]! - 29;
      const last = out[out.length - 1]!;
      for (let n = 0; n < repeat && out.length <= MAX_PACKET_SIZE; n++) out.push(last);
    } else {
      out.push(b);
    }
  }
  return Uint8Array.from(out);
}

// ---------------------------------------------------------------- commands

/** A thread id as GDB writes it: a number (gdb numbers threads from 1), `"any"` (0) or `"all"` (-1). */
export type ThreadId = number | "any" | "all";

/** One action of a resume command (`c`, `s`, `C`, `S`, `vCont`). */
export interface ResumeAction {
  /** Run on, or execute one instruction. */
  action: "continue" | "step";
  /** Which thread the action applies to; absent means every thread without its own action. */
  thread?: ThreadId;
  /** A signal to deliver (`C`/`S`); hvsh cannot inject signals into a VM and ignores it. */
  signal?: number;
  /** Resume at this address (`c ADDR`, `s ADDR`). */
  address?: bigint;
}

/** Z/z types: 0 software breakpoint, 1 hardware breakpoint, 2 write, 3 read, 4 access watchpoint. */
export type BreakpointType = 0 | 1 | 2 | 3 | 4;

/** A parsed packet. */
export type Command =
  | { kind: "haltReason" }
  | { kind: "readRegisters" }
  | { kind: "writeRegisters"; data: Uint8Array }
  | { kind: "readRegister"; regnum: number }
  | { kind: "writeRegister"; regnum: number; value: Uint8Array }
  | { kind: "readMemory"; address: bigint; length: number }
  | { kind: "writeMemory"; address: bigint; data: Uint8Array }
  | { kind: "insertBreakpoint"; type: BreakpointType; address: bigint; length: number }
  | { kind: "removeBreakpoint"; type: BreakpointType; address: bigint; length: number }
  | { kind: "resume"; actions: ResumeAction[] }
  | { kind: "vContQuery" }
  /** `bs` (reverse step) or `bc` (reverse continue): gdb's reverse-stepi and reverse-continue. */
  | { kind: "reverse"; step: boolean }
  | { kind: "setThread"; op: "g" | "c"; thread: ThreadId }
  | { kind: "threadAlive"; thread: ThreadId }
  | { kind: "supported"; features: string[] }
  | { kind: "startNoAckMode" }
  | { kind: "attached" }
  | { kind: "offsets" }
  | { kind: "currentThread" }
  | { kind: "threadInfoFirst" }
  | { kind: "threadInfoNext" }
  | { kind: "threadExtraInfo"; thread: ThreadId }
  | { kind: "readFeatures"; annex: string; offset: number; length: number }
  | { kind: "monitor"; command: string }
  | { kind: "symbolLookup" }
  | { kind: "detach" }
  /** `k` (no reply) or `vKill;PID` (answered OK). */
  | { kind: "kill"; reply: boolean }
  | { kind: "unknown"; name: string };

function malformed(packet: string, why: string): PacketError {
  return new PacketError("MalformedCommand", `${JSON.stringify(clip(packet))}: ${why}`);
}

/** Parses hex digits as a bigint of at most 64 bits. */
function parseHex64(text: string, field: string): bigint {
  if (!/^[0-9a-fA-F]{1,16}$/.test(text)) {
    throw new PacketError(
      "InvalidHex",
      `${field} ${JSON.stringify(clip(text))} is not a hex number of 1-16 digits`,
    );
  }
  return BigInt(`0x${text}`);
}

/** Parses a hex length or count (at most `limit`). */
function parseHexLength(text: string, field: string, limit: number): number {
  const value = parseHex64(text, field);
  if (value > BigInt(limit)) {
    throw new PacketError(
      "LengthTooLarge",
      `${field} 0x${value.toString(16)} is over the limit 0x${limit.toString(16)}`,
    );
  }
  return Number(value);
}

function parseThread(text: string): ThreadId {
  if (text === "-1") return "all";
  const value = parseHexLength(text, "thread id", 0xffff_ffff);
  return value === 0 ? "any" : value;
}

/** `ADDR,LENGTH` (m, M, X prefixes) split into its parts, or a MalformedCommand error. */
function addressAndLength(packet: string, rest: string, limit: number): { address: bigint; length: number } {
  const comma = rest.indexOf(",");
  if (comma <= 0 || comma === rest.length - 1) throw malformed(packet, "expected ADDR,LENGTH");
  return {
    address: parseHex64(rest.slice(0, comma), "address"),
    length: parseHexLength(rest.slice(comma + 1), "length", limit),
  };
}

function parseBreakpoint(packet: string, insert: boolean): Command {
  const match = /^[Zz]([0-4]),([^,;]*),([^,;]*)(?:;.*)?$/.exec(packet);
  if (match === null) throw malformed(packet, "expected Z|zTYPE,ADDR,KIND with TYPE 0-4");
  return {
    kind: insert ? "insertBreakpoint" : "removeBreakpoint",
    type: Number(match[1]) as BreakpointType,
    address: parseHex64(match[2]!, "address"),
    length: parseHexLength(match[3]!, "kind", 1 << 20),
  };
}

function parseSignal(text: string, packet: string): number {
  if (!/^[0-9a-fA-F]{2}$/.test(text)) throw malformed(packet, "expected a two-digit hex signal");
  return parseInt(text, 16);
}

function parseVCont(packet: string): Command {
  if (packet === "vCont?") return { kind: "vContQuery" };
  const parts = packet.split(";").slice(1);
  if (parts.length === 0) throw malformed(packet, "expected vCont;ACTION[:THREAD]...");
  const actions: ResumeAction[] = [];
  for (const part of parts) {
    const [verb = "", thread] = part.split(":");
    const letter = verb[0];
    let action: ResumeAction;
    if (letter === "c" && verb.length === 1) action = { action: "continue" };
    else if (letter === "s" && verb.length === 1) action = { action: "step" };
    else if (letter === "C" && verb.length === 3) {
      action = { action: "continue", signal: parseSignal(verb.slice(1), packet) };
    } else if (letter === "S" && verb.length === 3) {
      action = { action: "step", signal: parseSignal(verb.slice(1), packet) };
    } else return { kind: "unknown", name: `vCont;${verb}` }; // t, r, ...: not supported (empty reply)
    if (thread !== undefined) action.thread = parseThread(thread);
    actions.push(action);
  }
  return { kind: "resume", actions };
}

function parseResume(packet: string): Command {
  const letter = packet[0]!;
  const step = letter === "s" || letter === "S";
  const rest = packet.slice(1);
  const action: ResumeAction = { action: step ? "step" : "continue" };
  if (letter === "c" || letter === "s") {
    if (rest !== "") action.address = parseHex64(rest, "address");
  } else {
    const [signal = "", address] = rest.split(";");
    action.signal = parseSignal(signal, packet);
    if (address !== undefined) action.address = parseHex64(address, "address");
  }
  return { kind: "resume", actions: [action] };
}

function parseQXfer(packet: string): Command {
  // qXfer:features:read:ANNEX:OFFSET,LENGTH
  const match = /^qXfer:features:read:([^:]*):([^,]*),(.*)$/.exec(packet);
  if (match === null) {
    if (packet.startsWith("qXfer:features:")) {
      throw malformed(packet, "expected qXfer:features:read:ANNEX:OFFSET,LENGTH");
    }
    return { kind: "unknown", name: packet.split(":").slice(0, 3).join(":") };
  }
  return {
    kind: "readFeatures",
    annex: match[1]!,
    offset: parseHexLength(match[2]!, "offset", 0xffff_ffff),
    length: parseHexLength(match[3]!, "length", 0xffff_ffff),
  };
}

type Parser = (packet: string, data: Uint8Array) => Command;

/** One parser per packet, by first character (q, Q and v packets by name below). */
const PACKETS: Record<string, Parser> = {
  "?": () => ({ kind: "haltReason" }),
  g: (p) => p === "g" ? { kind: "readRegisters" } : { kind: "unknown", name: p },
  G: (p) => ({ kind: "writeRegisters", data: hexDecode(p.slice(1), "register data") }),
  p: (p) => ({ kind: "readRegister", regnum: parseHexLength(p.slice(1), "register number", 0xffff) }),
  P: (p) => {
    const eq = p.indexOf("=");
    if (eq <= 1) throw malformed(p, "expected PREG=VALUE");
    return {
      kind: "writeRegister",
      regnum: parseHexLength(p.slice(1, eq), "register number", 0xffff),
      value: hexDecode(p.slice(eq + 1), "register value"),
    };
  },
  m: (p) => ({ kind: "readMemory", ...addressAndLength(p, p.slice(1), MAX_MEMORY_READ) }),
  M: (p) => {
    const colon = p.indexOf(":");
    if (colon < 0) throw malformed(p, "expected MADDR,LENGTH:DATA");
    const { address, length } = addressAndLength(p, p.slice(1, colon), MAX_PACKET_SIZE);
    const data = hexDecode(p.slice(colon + 1), "memory data");
    if (data.length !== length) throw malformed(p, `length 0x${length.toString(16)} but ${data.length} data bytes`);
    return { kind: "writeMemory", address, data };
  },
  X: (p, raw) => {
    const colon = p.indexOf(":");
    if (colon < 0) throw malformed(p, "expected XADDR,LENGTH:BINARY");
    const { address, length } = addressAndLength(p, p.slice(1, colon), MAX_PACKET_SIZE);
    const data = raw.slice(colon + 1);
    if (data.length !== length) throw malformed(p, `length 0x${length.toString(16)} but ${data.length} data bytes`);
    return { kind: "writeMemory", address, data };
  },
  b: (p) => {
    if (p === "bs" || p === "bc") return { kind: "reverse", step: p === "bs" };
    return { kind: "unknown", name: p.slice(0, 2) };
  },
  Z: (p) => parseBreakpoint(p, true),
  z: (p) => parseBreakpoint(p, false),
  c: parseResume,
  s: parseResume,
  C: parseResume,
  S: parseResume,
  H: (p) => {
    const op = p[1];
    if ((op !== "g" && op !== "c") || p.length < 3) throw malformed(p, "expected Hg|Hc THREAD");
    return { kind: "setThread", op, thread: parseThread(p.slice(2)) };
  },
  T: (p) => ({ kind: "threadAlive", thread: parseThread(p.slice(1)) }),
  D: () => ({ kind: "detach" }),
  k: () => ({ kind: "kill", reply: false }),
  q: (p) => {
    const name = /^q[A-Za-z]+/.exec(p)?.[0] ?? p;
    switch (name) {
      case "qSupported":
        return { kind: "supported", features: p.length > 11 ? p.slice(11).split(";") : [] };
      case "qAttached":
        return { kind: "attached" };
      case "qOffsets":
        return { kind: "offsets" };
      case "qC":
        return p === "qC" ? { kind: "currentThread" } : { kind: "unknown", name: p };
      case "qfThreadInfo":
        return { kind: "threadInfoFirst" };
      case "qsThreadInfo":
        return { kind: "threadInfoNext" };
      case "qThreadExtraInfo": {
        if (p[16] !== ",") throw malformed(p, "expected qThreadExtraInfo,THREAD");
        return { kind: "threadExtraInfo", thread: parseThread(p.slice(17)) };
      }
      case "qXfer":
        return parseQXfer(p);
      case "qRcmd": {
        if (p[5] !== ",") throw malformed(p, "expected qRcmd,HEX");
        return { kind: "monitor", command: new TextDecoder().decode(hexDecode(p.slice(6), "monitor command")) };
      }
      case "qSymbol":
        return { kind: "symbolLookup" };
      default:
        return { kind: "unknown", name };
    }
  },
  Q: (p) => p === "QStartNoAckMode" ? { kind: "startNoAckMode" } : { kind: "unknown", name: p.split(":")[0]! },
  v: (p) => {
    if (p === "vCont?" || p.startsWith("vCont;")) return parseVCont(p);
    if (p.startsWith("vKill")) return { kind: "kill", reply: true };
    return { kind: "unknown", name: p.split(/[;:?]/)[0]! };
  },
};

/**
 * Parses one packet payload. Unknown packets parse as `{ kind: "unknown" }`
 * (the stub answers those with an empty reply, as GDB expects); broken ones
 * throw a {@link PacketError}.
 *
 * @example
 * ```ts
 * import { parseCommand } from "./protocol.ts";
 * parseCommand(new TextEncoder().encode("Z0,100014,1")); // { kind: "insertBreakpoint", type: 0, address: 0x100014n, length: 1 }
 * parseCommand(new TextEncoder().encode("vCont;s:1;c")); // { kind: "resume", actions: [...] }
 * ```
 */
export function parseCommand(data: Uint8Array): Command {
  const packet = bytesToText(data);
  if (packet === "") return { kind: "unknown", name: "" };
  const parser = PACKETS[packet[0]!];
  if (parser === undefined) return { kind: "unknown", name: packet.slice(0, 1) };
  return parser(packet, data);
}

/** The payload of a reply error `E xx`: the errno-style codes hvsh uses. */
export const ERROR_CODES = {
  /** EFAULT: memory not mapped or not RAM. */
  fault: "E0e",
  /** EINVAL: a bad argument (invalid hex, unknown register, bad thread). */
  invalid: "E16",
  /** E2BIG: a length beyond what hvsh serves. */
  tooLarge: "E07",
  /** EBUSY: the VM is running (pause it first). */
  busy: "E10",
  /** ENOSPC: no room (e.g. all four debug registers used). */
  noSpace: "E1c",
  /** EIO: anything else the target refused. */
  failed: "E05",
} as const;
