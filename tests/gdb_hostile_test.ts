/**
 * The gdb server against clients that misbehave the way a hardening probe's
 * did, over real sockets to a real VM: connections reset (SO_LINGER 0)
 * before the server accepts them, clients that leave and are followed at
 * once by another, `c` and Ctrl-C in one TCP segment, gdb's `kill` after a
 * crash it repaired (a real `hvsh boot --gdb` process), `monitor js` off
 * unless asked for, and a Unix socket path another program listens on.
 */

import assert from "node:assert/strict";
import { Vm } from "../core/vm.ts";
import { type GdbListenOptions, type GdbServer, listenGdb } from "../core/gdb/server.ts";
import { hexEncode } from "../core/gdb/protocol.ts";
import { readElfSymbols } from "../core/loader/elf.ts";
import { guest, kvmAvailable } from "./_helpers.ts";
import { RawClient, resetBeforeAccept, sendThenReset } from "./_gdb_client.ts";

function kvmTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, ignore: !kvmAvailable, fn });
}

/** A VM with `guestName` loaded and a gdb server for it on an ephemeral port; closes both at scope exit. */
async function served(guestName: string, options: GdbListenOptions = {}) {
  const vm = await Vm.create({ memory: "64M" });
  await vm.load(await guest(guestName));
  const log: string[] = [];
  const server = listenGdb(vm, { port: 0, log: (line) => log.push(line), ...options });
  return {
    vm,
    server,
    log,
    async [Symbol.asyncDispose]() {
      await server.close();
      await vm.close();
    },
  };
}

/** A client that connects, asks `?` and `g`, checks the answers against the VM, and detaches. */
async function attachCheckDetach(server: GdbServer, vm: Vm): Promise<void> {
  const client = await RawClient.connect(server);
  try {
    assert.equal(await client.ask("?"), "T05thread:1;", "the stop reply of a served client, not a refusal");
    const rip = BigInt(vm.cpu(0).regs.rip);
    const g = await client.ask("g");
    assert.equal(g.length, 1200);
    assert.equal(g.slice(16 * 16, 16 * 16 + 16), hexEncode(u64le(rip)), "rip in the g reply is the vCPU's");
    assert.equal(await client.ask("D"), "OK");
    assert.ok(await client.closedByPeer());
  } finally {
    client.close();
  }
}

function u64le(value: bigint): Uint8Array {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setBigUint64(0, value, true);
  return bytes;
}

kvmTest("gdb server: connections reset before accept (NotConnected) neither stop nor block it, 10 trials", async () => {
  await using s = await served("spin.elf");
  void s.vm.run(); // as `hvsh boot --gdb` runs a guest gdb has not attached to yet
  for (let trial = 0; trial < 10; trial++) {
    await resetBeforeAccept(s.server.port!, 5);
    await attachCheckDetach(s.server, s.vm);
  }
  const failures = s.log.filter((line) => line.startsWith("accept failed:"));
  assert.ok(failures.length > 0, "the resets reached accept() (else this test proves nothing)");
  assert.match(failures[0]!, /not connected|os error 107/i);
  await s.vm.pause();
});

kvmTest(
  "gdb server: a client arriving just after another left (FIN or RST) while the guest runs is served",
  async () => {
    await using s = await served("spin.elf");
    for (let trial = 0; trial < 10; trial++) {
      const client = await RawClient.connect(s.server);
      assert.equal(await client.ask("?"), "T05thread:1;", `trial ${trial}: served, not refused`);
      await client.send("c");
      assert.equal(await client.byte(), "+");
      await s.vm.serial.waitFor("spinning\n");
      if (trial % 2 === 0) {
        client.close();
      } else {
        client.close();
        await sendThenReset(s.server.port!, new TextEncoder().encode("$m100000,4")); // a second one dies mid-packet
      }
    }
    await attachCheckDetach(s.server, s.vm);
    await s.vm.pause();
  },
);

kvmTest("gdbstub: `$c#63` and Ctrl-C (0x03) in one TCP segment interrupt the run they start, 20 trials", async () => {
  await using s = await served("spin.elf");
  const client = await RawClient.connect(s.server);
  try {
    for (let trial = 0; trial < 20; trial++) {
      await client.write("$c#63\x03"); // one write: one segment with TCP_NODELAY on loopback
      assert.equal(await client.byte(), "+");
      const reply = await client.packet();
      assert.match(reply, /^T02thread:1;/, `trial ${trial}: the interrupt was not lost`);
      await client.write("+");
      assert.equal(s.vm.state, "stopped");
    }
  } finally {
    client.close();
  }
});

kvmTest("monitor js is refused with the reason unless the server was started with allowJs", async () => {
  {
    await using s = await served("dbg64.elf");
    const client = await RawClient.connect(s.server);
    try {
      const reply = await client.ask(`qRcmd,${hexEncode("js 1 + 1")}`);
      const text = new TextDecoder().decode(Uint8Array.from(reply.match(/../g)!.map((h) => parseInt(h, 16))));
      assert.match(text, /^hvsh: monitor js: disabled: it runs host code for anyone who can connect/);
      assert.match(text, /--gdb-allow-js/);
    } finally {
      client.close();
    }
  }
  {
    await using s = await served("dbg64.elf", { allowJs: true });
    const client = await RawClient.connect(s.server);
    try {
      const reply = await client.ask(`qRcmd,${hexEncode("js 1 + 1")}`);
      assert.equal(reply, hexEncode("2\n"));
    } finally {
      client.close();
    }
  }
});

/** Leaves a socket file at `path` that nobody listens on: its server is killed with SIGKILL. */
async function leaveStaleSocket(path: string): Promise<void> {
  const server = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `const l = Deno.listen({ transport: "unix", path: ${
        JSON.stringify(path)
      } }); console.log("listening"); await l.accept();`,
    ],
    stdout: "piped",
  }).spawn();
  const reader = server.stdout.getReader();
  await reader.read(); // "listening"
  server.kill("SIGKILL");
  await server.status;
  reader.releaseLock();
  await server.stdout.cancel();
}

kvmTest("listenGdb({ path }) refuses a Unix socket another program listens on and replaces a stale one", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hvsh-sock-" });
  const path = `${dir}/gdb.sock`;
  const vm = await Vm.create({ memory: "16M" });
  try {
    const other = Deno.listen({ transport: "unix", path });
    assert.throws(
      () => listenGdb(vm, { path }),
      new RegExp(`Cannot listen for gdb on Unix socket ${path}: another program is listening on it`),
    );
    assert.ok(Deno.lstatSync(path).isSocket, "the other program's socket is still there");
    const reaches = Deno.connect({ transport: "unix", path });
    (await other.accept()).close();
    (await reaches).close();
    other.close(); // Deno removes its socket file: a killed server leaves one behind
    await leaveStaleSocket(path);
    assert.ok(Deno.lstatSync(path).isSocket);
    const server = listenGdb(vm, { path });
    const client = await RawClient.connect(server);
    assert.equal(await client.ask("qC"), "QC1");
    client.close();
    await server.close();
  } finally {
    await vm.close();
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------- hvsh boot --gdb (a real process)

const HVSH = new URL("../hvsh", import.meta.url).pathname;

/** Starts `hvsh boot ARGS --gdb 127.0.0.1:0` and reads the port it chose from its first stderr line. */
async function bootUnderGdb(args: string[]) {
  const child = new Deno.Command(HVSH, {
    args: ["boot", ...args, "--gdb", "127.0.0.1:0"],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(60_000),
  }).spawn();
  const reader = child.stderr.getReader();
  let stderr = "";
  while (!stderr.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) break;
    stderr += new TextDecoder().decode(value);
  }
  const port = Number(/gdb server on 127\.0\.0\.1:(\d+)/.exec(stderr)?.[1]);
  assert.ok(port > 0, `the port in ${JSON.stringify(stderr)}`);
  const rest = (async () => {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return stderr;
      stderr += new TextDecoder().decode(value);
    }
  })();
  return { child, port, stderr: rest };
}

kvmTest(
  "hvsh boot --gdb: gdb's kill after a crash it repaired and resumed ends with 'killed by gdb' and status 0",
  async () => {
    const kernel = await guest("triple_fault.elf");
    const symbols = readElfSymbols(await Deno.readFile(kernel), kernel);
    const faultHere = symbols.find((s) => s.name === "fault_here")!.address;
    const boot = await bootUnderGdb(["--kernel", kernel, "--wait"]);
    const client = await RawClient.connect({ port: boot.port });
    try {
      assert.equal(await client.ask("?"), "T05thread:1;");
      await client.send("c");
      assert.equal(await client.byte(), "+");
      let reply = await client.packet();
      while (reply.startsWith("O")) reply = await client.packet(); // console notes before the stop
      assert.match(reply, /^T0bthread:1;/, "the triple fault reaches gdb as SIGSEGV");
      await client.write("+");
      // Repair: the faulting ud2 becomes `jmp $`, and rip goes back to it.
      assert.equal(await client.ask(`M${faultHere.toString(16)},2:ebfe`), "OK");
      assert.equal(await client.ask(`P10=${hexEncode(u64le(faultHere))}`), "OK");
      await client.send("c");
      assert.equal(await client.byte(), "+");
      await client.write("\x03");
      assert.match(await client.packet(), /^T02thread:1;/, "the repaired guest ran until interrupted");
      await client.write("+");
      await client.send("c");
      assert.equal(await client.byte(), "+");
      await client.send("k");
      assert.equal(await client.byte(), "+");
      const status = await boot.child.status;
      const stderr = await boot.stderr;
      assert.match(stderr, /^hvsh: killed by gdb$/m);
      assert.doesNotMatch(stderr, /triple fault/);
      assert.equal(status.code, 0);
    } finally {
      client.close();
      try {
        boot.child.kill("SIGKILL");
      } catch {
        // exited already
      }
      await boot.child.status;
    }
  },
);

kvmTest("hvsh boot --gdb PATH exits 2 naming the socket when another program listens on it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hvsh-sock-" });
  const path = `${dir}/taken.sock`;
  const other = Deno.listen({ transport: "unix", path });
  try {
    const out = await new Deno.Command(HVSH, {
      args: ["boot", "--kernel", await guest("exit42.elf"), "--gdb", path],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(60_000),
    }).output();
    assert.equal(out.code, 2);
    assert.match(new TextDecoder().decode(out.stderr), /another program is listening on it/);
    const accepted = other.accept();
    const conn = await Deno.connect({ transport: "unix", path });
    (await accepted).close();
    conn.close();
  } finally {
    other.close();
    await Deno.remove(dir, { recursive: true });
  }
});
