/**
 * The gdbstub at the wire: framing, checksums, escaping, acks and no-ack
 * mode, packet parsers and their named errors (no KVM needed), then a raw
 * TCP client against a real VM: malformed packets never crash hvsh or change
 * the VM, one client at a time, a client that vanishes mid-command leaves the
 * VM paused and runnable, Ctrl-C (0x03) interrupts a spinning guest, stop
 * replies name breakpoints, watchpoints and exits, and the `g` reply has the
 * same length in real and long mode.
 */

import assert from "node:assert/strict";
import { Vm } from "../core/vm.ts";
import {
  bytesToText,
  checksum,
  encodePacket,
  FrameDecoder,
  hexDecode,
  hexEncode,
  MAX_MEMORY_READ,
  PacketError,
  parseCommand,
  runLengthEncode,
  textToBytes,
} from "../core/gdb/protocol.ts";
import {
  abridgedTagWord,
  decodeRegisters,
  encodeRegisters,
  fullTagWord,
  REGISTER_NUMBERS,
  REGISTERS_SIZE,
  targetXml,
  X86_64_REGISTERS,
} from "../core/gdb/arch_x86.ts";
import { MonitorRegistry } from "../core/gdb/monitor.ts";
import { type GdbServer, listenGdb, parseGdbAddress } from "../core/gdb/server.ts";
import { guest, kvmAvailable, symbol } from "./_helpers.ts";
import { expandRunLength, RawClient } from "./_gdb_client.ts";

const text = (s: string) => new TextEncoder().encode(s);

function kvmTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, ignore: !kvmAvailable, fn });
}

// ---------------------------------------------------------------- framing (no KVM)

Deno.test("encodePacket() frames a payload with its checksum and escapes $ # } *", () => {
  assert.equal(bytesToText(encodePacket("OK")), "$OK#9a");
  assert.equal(checksum(text("OK")), 0x9a);
  const framed = bytesToText(encodePacket(textToBytes("a$b#c}d*e")));
  assert.equal(framed.slice(0, framed.indexOf("#")), "$a}\x04b}\x03c}]d}\x0ae");
});

Deno.test("FrameDecoder.feed() reports acks, nacks, interrupts and packets in stream order", () => {
  const events = new FrameDecoder().feed(text("+-\x03$g#67junk+"));
  assert.deepEqual(events.map((e) => e.type), ["ack", "nack", "interrupt", "packet", "ack"]);
  const packet = events[3]!;
  assert.ok(packet.type === "packet");
  assert.equal(bytesToText(packet.data), "g");
});

Deno.test("FrameDecoder.feed() joins a packet split across chunks and unescapes binary data", () => {
  const decoder = new FrameDecoder();
  const framed = encodePacket(textToBytes("X0,2:}#"));
  assert.deepEqual(decoder.feed(framed.subarray(0, 5)), []);
  assert.ok(decoder.inPacket);
  const [event] = decoder.feed(framed.subarray(5));
  assert.ok(event?.type === "packet");
  assert.equal(bytesToText(event.data), "X0,2:}#");
});

Deno.test("FrameDecoder.feed() reports a checksum mismatch as ChecksumMismatch with got and want", () => {
  const [event] = new FrameDecoder().feed(text("$g#00"));
  assert.ok(event?.type === "error");
  assert.equal(event.error.kind, "ChecksumMismatch");
  assert.equal(event.error.got, 0);
  assert.equal(event.error.want, 0x67);
  assert.match(event.error.message, /checksum mismatch \(got 00, want 67\)/);
  const [bad] = new FrameDecoder().feed(text("$g#zz"));
  assert.ok(bad?.type === "error" && bad.error.kind === "ChecksumMismatch");
});

Deno.test("FrameDecoder.feed() drops a truncated packet when a new one starts", () => {
  const events = new FrameDecoder().feed(text("$m10$g#67"));
  assert.equal(events.length, 1);
  assert.ok(events[0]?.type === "packet");
  assert.equal(bytesToText(events[0].data), "g");
});

Deno.test("FrameDecoder.feed() reports an over-long packet as PacketTooLong and keeps going", () => {
  const decoder = new FrameDecoder(16);
  const events = decoder.feed(new Uint8Array([...encodePacket("x".repeat(100)), ...encodePacket("g")]));
  assert.deepEqual(events.map((e) => e.type === "error" ? e.error.kind : e.type), ["PacketTooLong", "packet"]);
});

Deno.test("FrameDecoder.feed() expands run-length encoding", () => {
  const body = "0* "; // '0' then 3 more ('*' + chr(29 + 3))
  const [event] = new FrameDecoder().feed(text(`$${body}#${checksum(text(body)).toString(16).padStart(2, "0")}`));
  assert.ok(event?.type === "packet");
  assert.equal(bytesToText(event.data), "0000");
});

Deno.test("hexEncode()/hexDecode() round-trip and hexDecode() names bad input", () => {
  assert.equal(hexEncode(new Uint8Array([0, 0xab, 0x10])), "00ab10");
  assert.deepEqual([...hexDecode("00ab10")], [0, 0xab, 0x10]);
  assert.throws(() => hexDecode("abc"), (e) => e instanceof PacketError && e.kind === "InvalidHex");
  assert.throws(() => hexDecode("zz", "memory data"), /memory data "zz" is not hex/);
});

// ---------------------------------------------------------------- command parsers (no KVM)

/** A stop reply with the expedited core registers 0-23 (16 of 64 bits, then 8 of 32 bits) after `prefix`. */
function stopReply(prefix: string): RegExp {
  const escaped = prefix.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const wide = Array.from({ length: 17 }, (_, n) => `${n.toString(16).padStart(2, "0")}:[0-9a-f]{16};`).join("");
  const narrow = Array.from({ length: 7 }, (_, n) => `${(n + 17).toString(16)}:[0-9a-f]{8};`).join("");
  return new RegExp(`^${escaped}${wide}${narrow}$`);
}

function parse(packet: string) {
  return parseCommand(textToBytes(packet));
}

function parseError(packet: string): string {
  try {
    parse(packet);
  } catch (error) {
    assert.ok(error instanceof PacketError, `${packet}: ${error}`);
    return error.kind;
  }
  throw new Error(`${packet} parsed`);
}

Deno.test("parseCommand() parses memory, register and breakpoint packets", () => {
  assert.deepEqual(parse("m100000,4"), { kind: "readMemory", address: 0x100000n, length: 4 });
  assert.deepEqual(parse("M10,2:abcd"), { kind: "writeMemory", address: 0x10n, data: new Uint8Array([0xab, 0xcd]) });
  assert.deepEqual(parse("X10,1:\x7d"), { kind: "writeMemory", address: 0x10n, data: new Uint8Array([0x7d]) });
  assert.deepEqual(parse("p10"), { kind: "readRegister", regnum: 16 });
  assert.deepEqual(parse("P0=0100000000000000"), {
    kind: "writeRegister",
    regnum: 0,
    value: new Uint8Array([1, 0, 0, 0, 0, 0, 0, 0]),
  });
  assert.deepEqual(parse("Z0,100014,1"), { kind: "insertBreakpoint", type: 0, address: 0x100014n, length: 1 });
  assert.deepEqual(parse("z2,104000,8"), { kind: "removeBreakpoint", type: 2, address: 0x104000n, length: 8 });
});

Deno.test("parseCommand() parses resume packets: c, s, C, S and vCont with threads", () => {
  assert.deepEqual(parse("c"), { kind: "resume", actions: [{ action: "continue" }] });
  assert.deepEqual(parse("s100000"), { kind: "resume", actions: [{ action: "step", address: 0x100000n }] });
  assert.deepEqual(parse("C05"), { kind: "resume", actions: [{ action: "continue", signal: 5 }] });
  assert.deepEqual(parse("vCont;s:1;c"), {
    kind: "resume",
    actions: [{ action: "step", thread: 1 }, { action: "continue" }],
  });
  assert.deepEqual(parse("vCont;c:-1"), { kind: "resume", actions: [{ action: "continue", thread: "all" }] });
  assert.deepEqual(parse("vCont?"), { kind: "vContQuery" });
  assert.equal(parse("vCont;t:1").kind, "unknown");
});

Deno.test("parseCommand() parses queries: qSupported, qXfer, qRcmd, threads, H, kill", () => {
  assert.deepEqual(parse("qSupported:swbreak+;hwbreak+"), { kind: "supported", features: ["swbreak+", "hwbreak+"] });
  assert.deepEqual(parse("qXfer:features:read:target.xml:0,ffb"), {
    kind: "readFeatures",
    annex: "target.xml",
    offset: 0,
    length: 0xffb,
  });
  assert.deepEqual(parse(`qRcmd,${hexEncode("pt 0x1000")}`), { kind: "monitor", command: "pt 0x1000" });
  assert.deepEqual(parse("Hg0"), { kind: "setThread", op: "g", thread: "any" });
  assert.deepEqual(parse("Hc-1"), { kind: "setThread", op: "c", thread: "all" });
  assert.deepEqual(parse("qThreadExtraInfo,1"), { kind: "threadExtraInfo", thread: 1 });
  assert.deepEqual(parse("k"), { kind: "kill", reply: false });
  assert.deepEqual(parse("vKill;a410"), { kind: "kill", reply: true });
  assert.deepEqual(parse("QStartNoAckMode"), { kind: "startNoAckMode" });
});

Deno.test("parseCommand() returns unknown for packets hvsh does not serve", () => {
  assert.deepEqual(parse("qFooBar"), { kind: "unknown", name: "qFooBar" });
  assert.deepEqual(parse("vMustReplyEmpty"), { kind: "unknown", name: "vMustReplyEmpty" });
  assert.deepEqual(parse("!"), { kind: "unknown", name: "!" });
  assert.deepEqual(parse(""), { kind: "unknown", name: "" });
});

Deno.test("parseCommand() names what is wrong: MalformedCommand, InvalidHex, LengthTooLarge", () => {
  assert.equal(parseError("m100000"), "MalformedCommand");
  assert.equal(parseError("m,4"), "MalformedCommand");
  assert.equal(parseError("M10,2:ab"), "MalformedCommand");
  assert.equal(parseError("Z9,10,1"), "MalformedCommand");
  assert.equal(parseError("mzz,4"), "InvalidHex");
  assert.equal(parseError("m12345678901234567,4"), "InvalidHex");
  assert.equal(parseError("Gabc"), "InvalidHex");
  assert.equal(parseError(`m0,${(MAX_MEMORY_READ + 1).toString(16)}`), "LengthTooLarge");
  assert.equal(parseError("m0,ffffffffffffffff"), "LengthTooLarge");
  assert.throws(() => parse("m0,ffffffff"), /length 0xffffffff is over the limit/);
});

Deno.test("parseCommand() and FrameDecoder.feed() never throw anything but PacketError on random input", () => {
  let seed = 12345;
  const random = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x80000000;
  const prefixes = ["m", "M", "X", "g", "G", "p", "P", "Z", "z", "c", "s", "C", "S", "H", "T", "v", "vCont;", "q", "Q"];
  const alphabet = "0123456789abcdefABCDEFxyz,:;=-+#$}*?Xqv\x00\xff";
  const decoder = new FrameDecoder();
  for (let n = 0; n < 20_000; n++) {
    let packet = prefixes[Math.floor(random() * prefixes.length)]!;
    const length = Math.floor(random() * 24);
    for (let i = 0; i < length; i++) packet += alphabet[Math.floor(random() * alphabet.length)];
    try {
      parseCommand(textToBytes(packet));
    } catch (error) {
      assert.ok(error instanceof PacketError, `${JSON.stringify(packet)} threw ${error}`);
    }
    decoder.feed(textToBytes(packet));
  }
});

// ---------------------------------------------------------------- arch (no KVM)

Deno.test("X86_64_REGISTERS is one 600-byte layout with GDB's names in g-packet order", () => {
  assert.equal(REGISTERS_SIZE, 600);
  assert.equal(X86_64_REGISTERS.length, 65);
  assert.equal(REGISTER_NUMBERS.get("rip"), 16);
  assert.equal(REGISTER_NUMBERS.get("eflags"), 17);
  assert.equal(REGISTER_NUMBERS.get("st0"), 24);
  assert.equal(REGISTER_NUMBERS.get("xmm0"), 40);
  assert.equal(REGISTER_NUMBERS.get("fs_base"), 57);
  assert.equal(REGISTER_NUMBERS.get("efer"), 64);
});

Deno.test("encodeRegisters()/decodeRegisters() round-trip; a wrong size is refused with both sizes", () => {
  const xmm = Uint8Array.from({ length: 16 }, (_, i) => i);
  const bytes = encodeRegisters({ rax: 0x1122334455667788n, eflags: 0x202n, xmm3: xmm, cr3: 0x1000n });
  assert.equal(bytes.length, 600);
  const back = decodeRegisters(bytes);
  assert.equal(back.rax, 0x1122334455667788n);
  assert.equal(back.eflags, 0x202n);
  assert.deepEqual(back.xmm3, xmm);
  assert.equal(back.cr3, 0x1000n);
  assert.throws(() => decodeRegisters(new Uint8Array(599)), /got 599 bytes, want 600/);
});

Deno.test("targetXml() describes every register with its regnum in the core, sse, segments and system features", () => {
  const xml = targetXml();
  assert.match(xml, /<architecture>i386:x86-64<\/architecture>/);
  for (const feature of ["org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse", "org.gnu.gdb.i386.segments"]) {
    assert.ok(xml.includes(`<feature name="${feature}">`), feature);
  }
  X86_64_REGISTERS.forEach((r, i) => {
    assert.ok(xml.includes(`<reg name="${r.name}" bitsize="${r.bits}" type="${r.type}" regnum="${i}"`), r.name);
  });
  assert.ok(xml.includes(`<reg name="efer" bitsize="64" type="i386_efer" regnum="64"/>`));
  assert.ok(!/[$#}*]/.test(xml.replaceAll("<!DOCTYPE", "")), "no characters that need escaping");
});

Deno.test("fullTagWord() classifies x87 registers and abridgedTagWord() inverts it", () => {
  const one = new Uint8Array([0, 0, 0, 0, 0, 0, 0, 0x80, 0xff, 0x3f]); // 1.0
  const zero = new Uint8Array(10);
  const st = [one, zero, ...Array.from({ length: 6 }, () => new Uint8Array(10))];
  const top = 6; // st0 is physical register 6, st1 physical 7
  const full = fullTagWord(0b1100_0000, top << 11, st);
  assert.equal(full, 0b0100_1111_1111_1111 | (0b00 << 12)); // r7 zero (01), r6 valid (00), others empty (11)
  assert.equal(abridgedTagWord(full), 0b1100_0000);
});

Deno.test("MonitorRegistry.register() refuses a duplicate name and run() names an unknown command", async () => {
  const registry = new MonitorRegistry();
  registry.register({ name: "hi", help: "hi: greet", run: (args) => `hi ${args}` });
  assert.throws(() => registry.register({ name: "hi", help: "", run: () => "" }), /"hi" is already registered/);
  assert.throws(() => registry.register({ name: "two words", help: "", run: () => "" }), /expected one word/);
  const context = { registry } as unknown as Parameters<MonitorRegistry["run"]>[1];
  assert.equal(await registry.run("hi there", context), "hi there\n");
  assert.match(await registry.run("nope", context), /unknown monitor command "nope" \(commands: hi\)/);
  assert.match(await registry.run("", context), /hi: greet/);
});

Deno.test("parseGdbAddress() reads PORT, HOST:PORT, [IPv6]:PORT and socket paths, naming bad ones", () => {
  assert.deepEqual(parseGdbAddress("1234"), { port: 1234 });
  assert.deepEqual(parseGdbAddress("0.0.0.0:1234"), { host: "0.0.0.0", port: 1234 });
  assert.deepEqual(parseGdbAddress("[::1]:99"), { host: "::1", port: 99 });
  assert.deepEqual(parseGdbAddress("./gdb.sock"), { path: "./gdb.sock" });
  assert.throws(() => parseGdbAddress("host:"), /Invalid gdb address "host:"/);
  assert.throws(() => parseGdbAddress("70000"), /Invalid gdb address "70000"/);
});

// ---------------------------------------------------------------- a raw client against a VM

interface Fixture {
  vm: Vm;
  server: GdbServer;
  client: RawClient;
  [Symbol.asyncDispose](): Promise<void>;
}

/** A VM with `guestName` loaded, a server on an ephemeral port and a connected raw client in ack mode. */
async function fixture(guestName: string): Promise<Fixture> {
  const vm = await Vm.create({ memory: "64M" });
  await vm.load(await guest(guestName));
  const server = listenGdb(vm, { port: 0 });
  const client = await RawClient.connect(server);
  return {
    vm,
    server,
    client,
    async [Symbol.asyncDispose]() {
      client.close();
      await server.close();
      await vm.close();
    },
  };
}

function snapshot(vm: Vm): string {
  const cpu = vm.cpu(0);
  const memory = hexEncode(vm.memory.read(0x100000, 0x200));
  return JSON.stringify({ regs: cpu.regs, sregs: cpu.sregs, memory }, (_k, v) => typeof v === "bigint" ? `${v}` : v);
}

kvmTest("gdbstub acks each packet until QStartNoAckMode, then sends bare replies", async () => {
  await using f = await fixture("dbg64.elf");
  const supported = await f.client.ask("qSupported:multiprocess+;swbreak+;hwbreak+;xmlRegisters=i386");
  for (const feature of ["PacketSize=20000", "qXfer:features:read+", "vContSupported+", "swbreak+", "hwbreak+"]) {
    assert.ok(supported.split(";").includes(feature), `${feature} in ${supported}`);
  }
  assert.ok(supported.includes("QStartNoAckMode+"));
  assert.equal(await f.client.ask("QStartNoAckMode"), "OK");
  await f.client.send("?");
  assert.equal(await f.client.rawPacket(), bytesToText(encodePacket("T05thread:1;")), "a bare reply, no '+' before it");
  await f.client.send("qC");
  assert.equal(await f.client.rawPacket(), bytesToText(encodePacket("QC1")));
});

kvmTest("gdbstub answers a bad checksum with '-' and the resent packet normally", async () => {
  await using f = await fixture("dbg64.elf");
  await f.client.write("$qC#00");
  assert.equal(await f.client.byte(), "-");
  assert.equal(await f.client.ask("qC"), "QC1");
});

kvmTest(
  "gdbstub answers unknown and truncated commands with an empty reply, bad hex and absurd lengths with E",
  async () => {
    await using f = await fixture("dbg64.elf");
    const before = snapshot(f.vm);
    assert.equal(await f.client.ask("qFooBar"), "");
    assert.equal(await f.client.ask("vMustReplyEmpty"), "");
    assert.equal(await f.client.ask("m100000"), "", "truncated m");
    assert.equal(await f.client.ask("M100000,4:00"), "", "M with fewer bytes than its length");
    assert.equal(await f.client.ask("Z0,100000"), "", "truncated Z");
    assert.equal(await f.client.ask("m0,ffffffff"), "E07");
    assert.equal(await f.client.ask("m0,ffffffffffffffffff"), "E16");
    assert.equal(await f.client.ask("mzz,4"), "E16");
    assert.equal(await f.client.ask("Gabc"), "E16");
    assert.equal(await f.client.ask("G00"), "E16", "G of the wrong size");
    assert.equal(await f.client.ask("P0=00"), "E16", "P with the wrong width");
    assert.equal(await f.client.ask("p999"), "E16");
    assert.equal(await f.client.ask("Hg7"), "E16", "no thread 7");
    assert.equal(await f.client.ask("m7fffffffffff0000,4"), "E0e", "unmapped virtual address");
    assert.equal(await f.client.ask(`M7fffffffffff0000,1:00`), "E0e");
    assert.equal(await f.client.ask(`X${"f".repeat(40)}`), "", "X without ADDR,LENGTH:");
    await f.client.write("$m10"); // truncated frame, then a good packet
    assert.equal(await f.client.ask("qC"), "QC1");
    assert.equal(await f.client.ask(`qXfer:features:read:nope.xml:0,100`), "E00");
    assert.equal(snapshot(f.vm), before, "the VM did not change");
    assert.equal(f.vm.state, "stopped");
  },
);

kvmTest("gdbstub survives 500 random read-only packets: every one answered, the VM unchanged", async () => {
  await using f = await fixture("dbg64.elf");
  const before = snapshot(f.vm);
  let seed = 777;
  const random = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x80000000;
  const prefixes = ["m", "p", "g", "?", "H", "T", "q", "qXfer:features:read:", "qRcmd,", "qThreadExtraInfo,", "vCont?"];
  const alphabet = "0123456789abcdefxyz,:;=-}*?";
  for (let n = 0; n < 500; n++) {
    let packet = prefixes[Math.floor(random() * prefixes.length)]!;
    const length = Math.floor(random() * 20);
    for (let i = 0; i < length; i++) packet += alphabet[Math.floor(random() * alphabet.length)];
    await f.client.ask(packet);
  }
  assert.equal(await f.client.ask("qC"), "QC1");
  assert.equal(snapshot(f.vm), before);
});

kvmTest("gdbstub reads memory by virtual address, and by physical after 'monitor phys on'", async () => {
  await using f = await fixture("dbg64.elf");
  // Map virtual 0x40000000 (1 GiB) to physical 0 with a 2 MiB page: virtual != physical there.
  f.vm.memory.fill(0x4000, 0x1000, 0);
  f.vm.memory.writeU64(0x4000, 0x83n);
  f.vm.memory.writeU64(0x2008, 0x4003n);
  const code = hexEncode(f.vm.memory.read(0x100000, 8));
  assert.equal(await f.client.ask("m40100000,8"), code);
  assert.equal(await f.client.ask("m100000,8"), code);
  const output = await f.client.ask(`qRcmd,${hexEncode("phys on")}`);
  assert.equal(new TextDecoder().decode(hexDecode(output)), "memory accesses use physical addresses\n");
  assert.equal(await f.client.ask("m100000,8"), code);
  assert.equal(await f.client.ask("m40100000,8"), "E0e", "beyond RAM as a physical address");
  await f.client.ask(`qRcmd,${hexEncode("phys off")}`);
  assert.equal(await f.client.ask("m40100000,8"), code);
});

kvmTest("gdbstub writes memory with M and with X (escaped binary), and registers with P", async () => {
  await using f = await fixture("dbg64.elf");
  assert.equal(await f.client.ask("M200000,2:abcd"), "OK");
  assert.deepEqual([...f.vm.memory.read(0x200000, 2)], [0xab, 0xcd]);
  assert.equal(await f.client.ask(bytesToText(textToBytes("X200010,4:\x24\x23\x7d\x2a"))), "OK");
  assert.deepEqual([...f.vm.memory.read(0x200010, 4)], [0x24, 0x23, 0x7d, 0x2a]);
  assert.equal(await f.client.ask("X200000,0:"), "OK", "GDB's X probe");
  assert.equal(await f.client.ask(`P0=${hexEncode(new Uint8Array([0x2a, 0, 0, 0, 0, 0, 0, 0]))}`), "OK");
  assert.equal(f.vm.cpu(0).regs.rax, 42n);
  assert.equal(await f.client.ask("p0"), "2a00000000000000");
  assert.equal(await f.client.ask("p10"), "0000100000000000", "rip");
  assert.equal(await f.client.ask("p40"), "0005000000000000", "efer = LME | LMA");
});

kvmTest("gdbstub serves target.xml in chunks that join to targetXml()", async () => {
  await using f = await fixture("dbg64.elf");
  let xml = "";
  for (;;) {
    const reply = await f.client.ask(`qXfer:features:read:target.xml:${xml.length.toString(16)},200`);
    xml += reply.slice(1);
    if (reply[0] === "l") break;
    assert.equal(reply[0], "m");
  }
  assert.equal(xml, targetXml());
});

kvmTest("gdbstub's g reply has the same length in real mode (hello16.bin) and long mode (dbg64.elf)", async () => {
  const lengths: number[] = [];
  for (const name of ["hello16.bin", "dbg64.elf"]) {
    await using f = await fixture(name);
    const g = await f.client.ask("g");
    lengths.push(g.length);
    const rip = decodeRegisters(hexDecode(g)).rip;
    assert.equal(rip, name === "hello16.bin" ? 0x7c00n : 0x100000n);
  }
  assert.deepEqual(lengths, [1200, 1200]);
});

kvmTest("gdbstub stop replies: swbreak, hwbreak, watch with the address, step, and W on exit", async () => {
  await using f = await fixture("dbg64.elf");
  const { client, vm } = f;
  await client.ask("qSupported:swbreak+;hwbreak+");
  const hex = (name: string) => symbol(vm, name).toString(16);
  assert.equal(await client.ask(`Z0,${hex("bump")},1`), "OK");
  assert.match(await client.ask("vCont;c"), stopReply("T05swbreak:;thread:1;"));
  assert.equal(vm.cpu(0).regs.rip, symbol(vm, "bump"));
  assert.equal(await client.ask(`z0,${hex("bump")},1`), "OK");
  assert.equal(await client.ask(`Z1,${hex("level1")},1`), "OK");
  assert.match(await client.ask("c"), stopReply("T05hwbreak:;thread:1;"));
  assert.equal(await client.ask(`z1,${hex("level1")},1`), "OK");
  assert.equal(await client.ask(`Z2,${hex("counter")},8`), "OK");
  assert.match(await client.ask("c"), stopReply(`T05watch:${hex("counter")};thread:1;`));
  assert.equal(await client.ask(`z2,${hex("counter")},8`), "OK");
  const rip = vm.cpu(0).regs.rip;
  assert.match(await client.ask("vCont;s:1"), stopReply("T05thread:1;"));
  assert.notEqual(vm.cpu(0).regs.rip, rip);
  await client.send("c");
  assert.equal(await client.byte(), "+");
  assert.equal(await client.packet(), "W01");
  assert.match(vm.serial.output, /dbg done counter=15/);
});

kvmTest("gdbstub refuses a second client with an E packet and keeps the first", async () => {
  await using f = await fixture("dbg64.elf");
  assert.equal(await f.client.ask("qC"), "QC1");
  const second = await RawClient.connect(f.server);
  try {
    const refusal = await second.packet();
    assert.match(refusal, /^E\.hvsh: another gdb is already attached/);
    assert.ok(await second.closedByPeer());
  } finally {
    second.close();
  }
  assert.equal(await f.client.ask("qC"), "QC1");
  assert.ok(f.server.connected);
});

kvmTest("Ctrl-C (0x03) interrupts spin.elf with a T02 stop reply at spin_here", async () => {
  await using f = await fixture("spin.elf");
  await f.client.send("c");
  assert.equal(await f.client.byte(), "+");
  await f.vm.serial.waitFor("spinning\n"); // it reached its loop
  assert.equal(f.vm.state, "running");
  await f.client.write("\x03");
  assert.match(await f.client.packet(), stopReply("T02thread:1;"));
  assert.equal(f.vm.state, "stopped");
  assert.equal(f.vm.cpu(0).regs.rip, symbol(f.vm, "spin_here"));
  assert.equal(f.vm.serial.output, "spinning\n");
});

kvmTest(
  "a stop caused by another front end (vm.pause()) ends gdb's wait; runs gdb did not ask for send nothing",
  async () => {
    await using f = await fixture("spin.elf");
    await f.client.send("c");
    assert.equal(await f.client.byte(), "+");
    await f.vm.serial.waitFor("spinning\n");
    const stop = await f.vm.pause();
    assert.equal(stop?.reason, "paused");
    assert.match(await f.client.packet(), stopReply("T02thread:1;"));
    await f.client.write("+");
    const run = await f.vm.run({ timeout: 30 }); // the REPL runs it: gdb is not waiting
    assert.equal(run.reason, "timeout");
    assert.equal(await f.client.ask("qC"), "QC1", "no stray stop reply before this answer");
  },
);

kvmTest("a client that disconnects mid-command leaves the VM paused and runnable", async () => {
  await using f = await fixture("spin.elf");
  await f.client.ask(`Z0,${symbol(f.vm, "spin_here").toString(16)},1`);
  await f.client.ask(`z0,${symbol(f.vm, "spin_here").toString(16)},1`);
  await f.client.ask(`Z1,${(symbol(f.vm, "spin_here") + 0x100n).toString(16)},1`);
  await f.client.send("c");
  assert.equal(await f.client.byte(), "+");
  await f.vm.serial.waitFor("spinning\n");
  await f.client.write("$m1000"); // half a packet, then the link drops
  const left = new Promise<void>((resolve) => f.server.onConnection((connected) => connected || resolve()));
  f.client.close();
  await left;
  assert.equal(f.vm.state, "stopped");
  assert.equal(f.vm.debug.breakpoints.length, 0, "gdb's breakpoints were removed");
  const stop = await f.vm.run({ timeout: 30 });
  assert.equal(stop.reason, "timeout");
  const again = await RawClient.connect(f.server);
  try {
    assert.equal(await again.ask("?"), "T05thread:1;");
  } finally {
    again.close();
  }
});

kvmTest("D detaches: gdb's breakpoints go, the guest runs to its end, the server keeps listening", async () => {
  await using f = await fixture("dbg64.elf");
  const ended = new Promise<string>((resolve) => f.vm.onStop((stop) => stop.reason === "exit" && resolve(stop.reason)));
  await f.client.ask(`Z0,${symbol(f.vm, "level2").toString(16)},1`);
  assert.equal(await f.client.ask("D"), "OK");
  assert.ok(await f.client.closedByPeer());
  assert.equal(await ended, "exit");
  assert.equal(f.vm.debug.breakpoints.length, 0);
  assert.match(f.vm.serial.output, /dbg done counter=15/);
  const again = await RawClient.connect(f.server);
  again.close();
});

kvmTest("k kills: the server closes with 'killed' and the VM stays stopped", async () => {
  await using f = await fixture("spin.elf");
  await f.client.send("c");
  assert.equal(await f.client.byte(), "+");
  await f.client.write("\x03");
  assert.match(await f.client.packet(), stopReply("T02thread:1;"));
  await f.client.write("+");
  await f.client.send("k");
  assert.equal(await f.client.byte(), "+");
  assert.equal(await f.server.closed, "killed");
  assert.equal(f.vm.state, "stopped");
});

Deno.test("runLengthEncode() output expands back to the input and never uses # or $ as a count", () => {
  const inputs = ["0".repeat(200), "ab" + "0".repeat(6) + "cd", "1111", "x".repeat(6) + "y".repeat(7), "plain"];
  for (const text of inputs) {
    const encoded = bytesToText(runLengthEncode(textToBytes(text)));
    assert.equal(expandRunLength(encoded), text);
    assert.ok(!/\*[#$]/.test(encoded), encoded);
  }
  assert.ok(bytesToText(runLengthEncode(textToBytes("0".repeat(200)))).length < 20, "long runs shrink");
});

kvmTest("Vm.close() closes the gdb servers listening for it, with a client attached", async () => {
  const vm = await Vm.create();
  await vm.load(await guest("dbg64.elf"));
  const server = listenGdb(vm, { port: 0 });
  const attached = new Promise<void>((resolve) => server.onConnection((connected) => connected && resolve()));
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port! });
  await attached;
  await vm.close();
  assert.equal(await server.closed, "closed");
  const buffer = new Uint8Array(64);
  assert.equal(await conn.read(buffer).catch(() => null), null, "the client sees the connection end");
  conn.close();
  // The port is free again.
  const again = Deno.listen({ hostname: "127.0.0.1", port: server.port! });
  again.close();
});
