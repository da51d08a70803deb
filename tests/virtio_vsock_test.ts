// virtio-vsock as Firecracker's hybrid vsock, driven by the TypeScript
// driver of tests/_virtio_driver.ts over real guest RAM and the real
// virtio-mmio transport, with real Unix sockets on the host side: host- and
// guest-initiated connections, data both ways under credit flow control,
// shutdown and RST, and the hostile packets.

import assert from "node:assert/strict";
import { TestDriver } from "./_virtio_driver.ts";
import {
  decodeVsockHeader,
  encodeVsockPacket,
  VIRTIO_VSOCK_EVENT_TRANSPORT_RESET,
  VIRTIO_VSOCK_HDR_SIZE,
  VIRTIO_VSOCK_OP,
  VIRTIO_VSOCK_SHUTDOWN,
  VirtioVsock,
  virtioVsock,
  VSOCK_BUF_ALLOC,
  VSOCK_FIRST_HOST_PORT,
  type VsockHeader,
} from "../devices/virtio/vsock.ts";
import { VIRTIO_ID, VIRTIO_STATUS } from "../devices/virtio/device.ts";
import { VIRTIO_MMIO } from "../devices/virtio/mmio.ts";
import { guest as guestImage, kvmAvailable, kvmMissingReason } from "./_helpers.ts";
import { Vm } from "../core/vm.ts";

const GUEST_CID = 3n;
const HOST_CID = 2n;
/** Receive buffers the guest keeps posted (the test driver's chains collide beyond 8 per queue). */
const RX_BUFFERS = 8;
const RX_PAYLOAD = 4096;

interface Packet {
  header: VsockHeader;
  payload: Uint8Array;
}

/** The guest's side: a TestDriver with rx buffers kept posted, and the packets the device put in them. */
class Guest {
  readonly driver: TestDriver;
  readonly device: VirtioVsock;
  readonly packets: Packet[] = [];
  /** The packets {@link next} passed over on its way to the one it returned. */
  skipped: Packet[] = [];
  #posted = 0;

  constructor(device: VirtioVsock) {
    this.device = device;
    this.driver = new TestDriver(device);
    this.driver.start();
    this.refill();
  }

  /** The driver resets the device and sets it up again. */
  restart(): void {
    this.driver.start();
    this.packets.length = 0;
    this.#posted = 0;
    this.refill();
  }

  refill(): void {
    for (; this.#posted < RX_BUFFERS; this.#posted++) {
      this.driver.offer(0, undefined, VIRTIO_VSOCK_HDR_SIZE + RX_PAYLOAD);
    }
  }

  /** Moves what the device wrote into `packets` and posts fresh buffers. */
  collect(): void {
    for (const bytes of this.driver.used(0)) {
      this.#posted--;
      const header = decodeVsockHeader(bytes);
      this.packets.push({ header, payload: bytes.slice(VIRTIO_VSOCK_HDR_SIZE, VIRTIO_VSOCK_HDR_SIZE + header.len) });
    }
    this.refill();
  }

  /** Sends one packet on the tx queue. */
  send(header: Partial<VsockHeader> & Pick<VsockHeader, "srcPort" | "dstPort" | "op">, payload?: Uint8Array): void {
    this.driver.offer(1, encodeVsockPacket({ srcCid: GUEST_CID, dstCid: HOST_CID, ...header }, payload));
  }

  /** Waits (bounded) until `done()` holds, collecting packets meanwhile. */
  async until(done: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      this.collect();
      if (done()) return;
      if (performance.now() > deadline) {
        const seen = this.packets.map((p) => `${p.header.op}/${p.header.len}`).join(" ");
        throw new Error(`Timed out waiting for ${what}; packets: ${seen}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
  }

  /** Waits for the next packet with `op` and takes it (and every packet before it) out of `packets`. */
  async next(op: number, what = `op ${op}`): Promise<Packet> {
    await this.until(() => this.packets.some((p) => p.header.op === op), what);
    const index = this.packets.findIndex((p) => p.header.op === op);
    const taken = this.packets.splice(0, index + 1);
    this.skipped = taken.slice(0, -1);
    return taken.at(-1)!;
  }

  async close(): Promise<void> {
    await this.device.close();
    this.driver.close();
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

async function readExactly(conn: Deno.Conn, length: number): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  for (let done = 0; done < length;) {
    const n = await conn.read(out.subarray(done));
    if (n === null) throw new Error(`EOF after ${done} of ${length} bytes`);
    done += n;
  }
  return out;
}

async function readLine(conn: Deno.Conn): Promise<string> {
  const bytes: number[] = [];
  const one = new Uint8Array(1);
  while (bytes.length < 100) {
    if (await conn.read(one) === null) break;
    bytes.push(one[0]!);
    if (one[0] === 0x0a) break;
  }
  return decoder.decode(new Uint8Array(bytes));
}

async function withSocketDir(fn: (uds: string, dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "hvsh-vsock" });
  try {
    await fn(`${dir}/v.sock`, dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function pattern(length: number, seed: number): Uint8Array {
  return Uint8Array.from({ length }, (_, i) => (i * 31 + seed) & 0xff);
}

Deno.test("virtioVsock() answers the guest CID in its configuration space and offers stream sockets", async () => {
  await withSocketDir(async (uds) => {
    const guest = new Guest(virtioVsock({ cid: 10, uds }));
    try {
      assert.equal(guest.driver.read(VIRTIO_MMIO.deviceId), VIRTIO_ID.vsock);
      assert.equal(guest.driver.read(VIRTIO_MMIO.config), 10);
      assert.equal(guest.driver.read(VIRTIO_MMIO.config + 4), 0);
      guest.driver.write(VIRTIO_MMIO.deviceFeaturesSel, 0);
      assert.equal(guest.driver.read(VIRTIO_MMIO.deviceFeatures) & 1, 1);
      assert.equal(guest.driver.transport.core.queues.length, 3);
      assert.match(guest.device.describe(), /^CID 10, .*v\.sock, 0 connections$/);
    } finally {
      await guest.close();
    }
    // close() let go of the socket file: the path can be listened on again.
    (await Deno.listen({ transport: "unix", path: uds })).close();
  });
});

Deno.test("virtioVsock() refuses a reserved CID, an over-long path and a path already taken, naming the value", async () => {
  await withSocketDir(async (uds) => {
    assert.throws(() => virtioVsock({ cid: 2, uds }), /Invalid virtio-vsock cid 2: expected an integer from 3/);
    assert.throws(() => virtioVsock({ cid: 0xffff_ffff, uds }), /cid 4294967295/);
    assert.throws(() => virtioVsock({ cid: 3, uds: `/tmp/${"x".repeat(100)}` }), /bytes, at most 96/);
    await Deno.writeTextFile(uds, "not a socket");
    assert.throws(
      () => virtioVsock({ cid: 3, uds }),
      new RegExp(`Cannot listen on the virtio-vsock socket ${uds}: something is there already`),
    );
  });
});

Deno.test(
  "virtioVsock() host-initiated: CONNECT becomes a REQUEST, the RESPONSE an OK line; data both ways under credit; shutdown ends in RST",
  async () => {
    await withSocketDir(async (uds) => {
      const guest = new Guest(virtioVsock({ cid: 3, uds }));
      const host = await Deno.connect({ transport: "unix", path: uds });
      try {
        await host.write(encoder.encode("CONNECT 1234\n"));
        const request = await guest.next(VIRTIO_VSOCK_OP.request, "the REQUEST");
        assert.equal(request.header.srcCid, HOST_CID);
        assert.equal(request.header.dstCid, GUEST_CID);
        assert.equal(request.header.dstPort, 1234);
        assert.equal(request.header.srcPort, VSOCK_FIRST_HOST_PORT);
        assert.equal(request.header.type, 1);
        assert.equal(request.header.bufAlloc, VSOCK_BUF_ALLOC);
        const hostPort = request.header.srcPort;
        const to = { srcPort: 1234, dstPort: hostPort };

        // The guest accepts with an 8 KiB receive buffer: the device may send it 8 KiB before hearing more.
        guest.send({ ...to, op: VIRTIO_VSOCK_OP.response, bufAlloc: 8192 });
        assert.equal(await readLine(host), `OK ${hostPort}\n`);
        assert.deepEqual(guest.device.connections, [{
          hostPort,
          guestPort: 1234,
          state: "established",
          initiator: "host",
        }]);

        await host.write(encoder.encode("hello guest"));
        const hello = await guest.next(VIRTIO_VSOCK_OP.rw, "the host's bytes");
        assert.equal(decoder.decode(hello.payload), "hello guest");
        assert.deepEqual([hello.header.srcPort, hello.header.dstPort], [hostPort, 1234]);
        guest.send({ ...to, op: VIRTIO_VSOCK_OP.rw, bufAlloc: 8192, fwdCnt: 11 }, encoder.encode("hello host"));
        assert.equal(decoder.decode(await readExactly(host, 10)), "hello host");

        // 12000 bytes from the host: 8192 fit the guest's credit, then the device asks for more and waits.
        const big = pattern(12000, 5);
        await host.write(big);
        await guest.next(VIRTIO_VSOCK_OP.creditRequest, "a CREDIT_REQUEST");
        assert.ok(guest.skipped.every((p) => p.header.op === VIRTIO_VSOCK_OP.rw));
        const firstPart = concat(guest.skipped.map((p) => p.payload));
        assert.equal(firstPart.length, 8192);
        guest.send({ ...to, op: VIRTIO_VSOCK_OP.creditUpdate, bufAlloc: 8192, fwdCnt: 11 + 8192 });
        await guest.until(() => rwBytes(guest.packets) === 12000 - 8192, "the rest after the credit update");
        const rest = concat(
          guest.packets.splice(0).filter((p) => p.header.op === VIRTIO_VSOCK_OP.rw).map((p) => p.payload),
        );
        assert.deepEqual(concat([firstPart, rest]), big);

        // 96 KiB from the guest: once a quarter of the device's buffer reached the host, the guest hears a CREDIT_UPDATE.
        const upload = pattern(3 * 32768, 9);
        for (let at = 0; at < upload.length; at += 32768) {
          guest.send(
            { ...to, op: VIRTIO_VSOCK_OP.rw, bufAlloc: 8192, fwdCnt: 11 + 12000 },
            upload.subarray(at, at + 32768),
          );
        }
        assert.deepEqual(await readExactly(host, upload.length), upload);
        const update = await guest.next(VIRTIO_VSOCK_OP.creditUpdate, "a CREDIT_UPDATE");
        assert.ok(update.header.fwdCnt >= VSOCK_BUF_ALLOC / 4, `fwd_cnt ${update.header.fwdCnt}`);
        assert.equal(update.header.bufAlloc, VSOCK_BUF_ALLOC);
        // A CREDIT_REQUEST is answered with the count of every byte written out (10 + 96 KiB).
        const total = 10 + upload.length;
        await guest.until(() => {
          guest.send({ ...to, op: VIRTIO_VSOCK_OP.creditRequest, bufAlloc: 8192, fwdCnt: 11 + 12000 });
          guest.collect();
          const last = guest.packets.filter((p) => p.header.op === VIRTIO_VSOCK_OP.creditUpdate).at(-1);
          return last?.header.fwdCnt === total;
        }, "a CREDIT_UPDATE counting every byte");
        guest.packets.splice(0);

        // The host half-closes: the guest hears SHUTDOWN(SEND) and may still send.
        await host.closeWrite();
        const shutdown = await guest.next(VIRTIO_VSOCK_OP.shutdown, "SHUTDOWN");
        assert.equal(shutdown.header.flags, VIRTIO_VSOCK_SHUTDOWN.send);
        guest.send({ ...to, op: VIRTIO_VSOCK_OP.rw, bufAlloc: 8192, fwdCnt: 11 + 12000 }, encoder.encode("bye"));
        assert.equal(decoder.decode(await readExactly(host, 3)), "bye");
        // The guest closes: the device ends the connection with the RST Linux waits for, and the host reads EOF.
        guest.send({ ...to, op: VIRTIO_VSOCK_OP.shutdown, flags: 3 });
        const rst = await guest.next(VIRTIO_VSOCK_OP.rst, "RST");
        assert.deepEqual([rst.header.srcPort, rst.header.dstPort], [hostPort, 1234]);
        assert.equal(await host.read(new Uint8Array(1)), null);
        assert.deepEqual(guest.device.connections, []);
        assert.equal(guest.device.counters.connections, 1);
        assert.equal(guest.device.counters.bytesToGuest, 11 + 12000);
        assert.equal(guest.device.counters.bytesFromGuest, 10 + upload.length + 3);
        assert.deepEqual(guest.driver.logs, []);
      } finally {
        host.close();
        await guest.close();
      }
    });
  },
);

function rwBytes(packets: Packet[]): number {
  return packets.filter((p) => p.header.op === VIRTIO_VSOCK_OP.rw).reduce((sum, p) => sum + p.payload.length, 0);
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

Deno.test(
  "virtioVsock() guest-initiated: a REQUEST to host port P connects to PATH_P; data both ways; the guest's RST closes it",
  async () => {
    await withSocketDir(async (uds) => {
      const guest = new Guest(virtioVsock({ cid: 3, uds }));
      const listener = Deno.listen({ transport: "unix", path: `${uds}_5000` });
      let accepted: Deno.UnixConn | undefined;
      try {
        const to = { srcPort: 40000, dstPort: 5000, bufAlloc: 65536 };
        guest.send({ ...to, op: VIRTIO_VSOCK_OP.request });
        accepted = await listener.accept();
        const response = await guest.next(VIRTIO_VSOCK_OP.response, "the RESPONSE");
        assert.deepEqual(
          [response.header.srcCid, response.header.srcPort, response.header.dstCid, response.header.dstPort],
          [HOST_CID, 5000, GUEST_CID, 40000],
        );
        assert.equal(response.header.bufAlloc, VSOCK_BUF_ALLOC);
        assert.deepEqual(guest.device.connections, [
          { hostPort: 5000, guestPort: 40000, state: "established", initiator: "guest" },
        ]);

        await accepted.write(encoder.encode("ping"));
        assert.equal(decoder.decode((await guest.next(VIRTIO_VSOCK_OP.rw, "ping")).payload), "ping");
        guest.send({ ...to, op: VIRTIO_VSOCK_OP.rw, fwdCnt: 4 }, encoder.encode("pong"));
        assert.equal(decoder.decode(await readExactly(accepted, 4)), "pong");

        // The guest's SHUTDOWN(SEND) half-closes the Unix stream: the host reads EOF and can still answer.
        guest.send({ ...to, op: VIRTIO_VSOCK_OP.shutdown, flags: VIRTIO_VSOCK_SHUTDOWN.send, fwdCnt: 4 });
        assert.equal(await accepted.read(new Uint8Array(1)), null);
        await accepted.write(encoder.encode("last"));
        assert.equal(decoder.decode((await guest.next(VIRTIO_VSOCK_OP.rw, "last")).payload), "last");

        guest.send({ ...to, op: VIRTIO_VSOCK_OP.rst });
        await guest.until(() => guest.device.connections.length === 0, "the connection to go");
        // The host end is closed: its write fails or its peer is gone.
        await assert.rejects(async () => {
          for (let i = 0; i < 100; i++) await accepted!.write(new Uint8Array(65536));
        });
        assert.deepEqual(guest.driver.logs, []);
      } finally {
        accepted?.close();
        listener.close();
        await guest.close();
      }
    });
  },
);

Deno.test("virtioVsock() answers RST to a REQUEST nobody listens for, to another CID, and to a packet for no connection", async () => {
  await withSocketDir(async (uds) => {
    const guest = new Guest(virtioVsock({ cid: 3, uds }));
    try {
      guest.send({ srcPort: 40001, dstPort: 5001, op: VIRTIO_VSOCK_OP.request, bufAlloc: 4096 });
      const refused = await guest.next(VIRTIO_VSOCK_OP.rst, "RST for port 5001");
      assert.deepEqual([refused.header.srcCid, refused.header.srcPort, refused.header.dstPort], [
        HOST_CID,
        5001,
        40001,
      ]);

      guest.send({ dstCid: 7n, srcPort: 40002, dstPort: 80, op: VIRTIO_VSOCK_OP.request, bufAlloc: 4096 });
      const otherVm = await guest.next(VIRTIO_VSOCK_OP.rst, "RST from CID 7");
      assert.deepEqual([otherVm.header.srcCid, otherVm.header.dstCid, otherVm.header.srcPort], [7n, GUEST_CID, 80]);

      guest.send({ srcPort: 40003, dstPort: 81, op: VIRTIO_VSOCK_OP.rw }, encoder.encode("x"));
      const stray = await guest.next(VIRTIO_VSOCK_OP.rst, "RST for data on no connection");
      assert.deepEqual([stray.header.srcPort, stray.header.dstPort], [81, 40003]);
      // A RST for no connection is not answered (no RST storms).
      guest.send({ srcPort: 40003, dstPort: 81, op: VIRTIO_VSOCK_OP.rst });
      guest.collect();
      assert.deepEqual(guest.packets, []);
      assert.deepEqual(guest.device.connections, []);
      assert.deepEqual(guest.driver.logs, []);
    } finally {
      await guest.close();
    }
  });
});

Deno.test("virtioVsock() closes the host client when the guest refuses its CONNECT or the line is not CONNECT <port>", async () => {
  await withSocketDir(async (uds) => {
    const guest = new Guest(virtioVsock({ cid: 3, uds }));
    try {
      const host = await Deno.connect({ transport: "unix", path: uds });
      try {
        await host.write(encoder.encode("CONNECT 22\n"));
        const request = await guest.next(VIRTIO_VSOCK_OP.request, "the REQUEST");
        guest.send({ srcPort: 22, dstPort: request.header.srcPort, op: VIRTIO_VSOCK_OP.rst });
        assert.equal(await host.read(new Uint8Array(16)), null);
      } finally {
        host.close();
      }
      for (const line of ["HELLO\n", "CONNECT 4294967296\n", "CONNECT -1\n", "x".repeat(80)]) {
        const bad = await Deno.connect({ transport: "unix", path: uds });
        try {
          await bad.write(encoder.encode(line));
          // Closed: EOF, or a reset when the device closed with the line's tail unread.
          const end = await bad.read(new Uint8Array(16)).catch((error) => error);
          assert.ok(
            end === null || end instanceof Deno.errors.ConnectionReset,
            `after ${JSON.stringify(line)}: ${end}`,
          );
        } finally {
          bad.close();
        }
      }
      guest.collect();
      assert.deepEqual(guest.packets, []);
      assert.deepEqual(guest.device.connections, []);
    } finally {
      await guest.close();
    }
  });
});

Deno.test("virtioVsock({ connectTimeout }) closes a host client whose CONNECT the guest never answers, and RSTs the guest", async () => {
  await withSocketDir(async (uds) => {
    const guest = new Guest(virtioVsock({ cid: 3, uds, connectTimeout: 20 }));
    const host = await Deno.connect({ transport: "unix", path: uds });
    try {
      await host.write(encoder.encode("CONNECT 9\n"));
      const request = await guest.next(VIRTIO_VSOCK_OP.request, "the REQUEST");
      // The guest stays silent: the host client is closed when the time is up, and the guest hears RST.
      assert.equal(await host.read(new Uint8Array(4)), null);
      const rst = await guest.next(VIRTIO_VSOCK_OP.rst, "RST");
      assert.deepEqual([rst.header.srcPort, rst.header.dstPort], [request.header.srcPort, 9]);
      // A late RESPONSE finds no connection: RST again.
      guest.send({ srcPort: 9, dstPort: request.header.srcPort, op: VIRTIO_VSOCK_OP.response });
      await guest.next(VIRTIO_VSOCK_OP.rst, "RST to the late RESPONSE");
      assert.deepEqual(guest.device.connections, []);
      assert.throws(() => virtioVsock({ cid: 3, uds: `${uds}2`, connectTimeout: 0 }), /connectTimeout 0/);
    } finally {
      host.close();
      await guest.close();
    }
  });
});

/** A guest with one guest-initiated connection to a host listener at PATH_5000. */
async function connected(uds: string) {
  const guest = new Guest(virtioVsock({ cid: 3, uds }));
  const listener = Deno.listen({ transport: "unix", path: `${uds}_5000` });
  const to = { srcPort: 40000, dstPort: 5000, bufAlloc: 65536 };
  guest.send({ ...to, op: VIRTIO_VSOCK_OP.request });
  const host = await listener.accept();
  await guest.next(VIRTIO_VSOCK_OP.response, "the RESPONSE");
  return {
    guest,
    host,
    to,
    async close() {
      host.close();
      listener.close();
      await guest.close();
    },
  };
}

for (
  const [name, packets, log] of [
    [
      "a source CID that is not the guest's",
      () => [encodeVsockPacket({ srcCid: 9n, dstCid: HOST_CID, srcPort: 1, dstPort: 5000, op: 1 })],
      /^hvsh: test vsock: dropped REQUEST 9:1 -> 2:5000: source CID is not the guest's 3$/,
    ],
    [
      "an unknown op",
      () => [encodeVsockPacket({ srcCid: GUEST_CID, dstCid: HOST_CID, srcPort: 40000, dstPort: 5000, op: 9 })],
      /dropped op 9 3:40000 -> 2:5000: unknown op$/,
    ],
    [
      "a socket type that was not offered",
      () => [encodeVsockPacket({ srcCid: GUEST_CID, dstCid: HOST_CID, srcPort: 40000, dstPort: 5000, op: 5, type: 2 })],
      /dropped RW 3:40000 -> 2:5000: socket type 2 is not stream \(1\)/,
    ],
    [
      "data beyond the credit the device gave",
      // Six 48 KiB packets before any reaches the host: 288 KiB against 256 KiB of credit.
      () =>
        Array.from(
          { length: 6 },
          () =>
            encodeVsockPacket(
              { srcCid: GUEST_CID, dstCid: HOST_CID, srcPort: 40000, dstPort: 5000, op: 5, bufAlloc: 65536 },
              new Uint8Array(48 * 1024),
            ),
        ),
      /dropped RW 3:40000 -> 2:5000: 49152 bytes with 245760 unforwarded, beyond the 262144-byte buffer advertised$/,
    ],
  ] as const
) {
  Deno.test(`virtioVsock() drops ${name} with one log line and runs on`, async () => {
    await withSocketDir(async (uds) => {
      const c = await connected(uds);
      try {
        const list = packets();
        // One synchronous run of notifies: the device's writer to the host gets no turn in between.
        for (const packet of list) c.guest.driver.offer(1, packet);
        assert.equal(c.guest.driver.logs.length, 1, c.guest.driver.logs.join("\n"));
        assert.match(c.guest.driver.logs[0]!, log);
        assert.equal(c.guest.device.counters.dropped, 1);
        assert.equal(c.guest.driver.transport.core.needsReset, false);
        if (name.startsWith("data")) {
          // The connection is reset on both ends.
          const rst = await c.guest.next(VIRTIO_VSOCK_OP.rst, "RST");
          assert.deepEqual([rst.header.srcPort, rst.header.dstPort], [5000, 40000]);
          assert.deepEqual(c.guest.device.connections, []);
        } else {
          // The connection still carries bytes.
          c.guest.send({ ...c.to, op: VIRTIO_VSOCK_OP.rw }, encoder.encode("still"));
          assert.equal(decoder.decode(await readExactly(c.host, 5)), "still");
        }
      } finally {
        await c.close();
      }
    });
  });
}

Deno.test("virtioVsock() logs the first 16 dropped packets, then says the rest are only counted", async () => {
  await withSocketDir(async (uds) => {
    const guest = new Guest(virtioVsock({ cid: 3, uds }));
    try {
      for (let i = 0; i < 40; i++) guest.send({ srcCid: 99n, srcPort: i, dstPort: 1, op: VIRTIO_VSOCK_OP.request });
      assert.equal(guest.device.counters.dropped, 40);
      assert.equal(guest.driver.logs.length, 17);
      assert.match(guest.driver.logs[16]!, /further dropped packets are counted, not logged$/);
    } finally {
      await guest.close();
    }
  });
});

for (
  const [name, act, reason] of [
    [
      "a tx packet shorter than its header",
      (guest: Guest) => guest.driver.offer(1, new Uint8Array(20)),
      /queue 1: tx packet of 20 bytes is shorter than the 44-byte header$/,
    ],
    [
      "a len beyond the packet's buffers",
      (guest: Guest) =>
        guest.driver.offer(
          1,
          encodeVsockPacket({ srcCid: GUEST_CID, dstCid: HOST_CID, srcPort: 1, dstPort: 2, op: 5, len: 100 }),
        ),
      /queue 1: tx packet header says len 100 but its buffers hold 0 payload bytes$/,
    ],
    [
      "an rx buffer too small for a header",
      (guest: Guest) => {
        // Fill every posted buffer with RSTs, then offer a 16-byte one for the next.
        for (let i = 0; i < RX_BUFFERS + 1; i++) guest.send({ srcPort: 1000 + i, dstPort: 1, op: 5 });
        guest.driver.offer(0, undefined, 16);
      },
      /rx buffer of 16 bytes is smaller than the 44-byte header$/,
    ],
  ] as const
) {
  Deno.test(`virtioVsock() goes NEEDS_RESET on ${name} with one log line; a reset recovers`, async () => {
    await withSocketDir(async (uds) => {
      const guest = new Guest(virtioVsock({ cid: 3, uds }));
      try {
        act(guest);
        assert.equal(guest.driver.logs.length, 1, guest.driver.logs.join("\n"));
        assert.match(guest.driver.logs[0]!, /^hvsh: test vsock: device needs reset: /);
        assert.match(guest.driver.logs[0]!, reason);
        assert.equal(guest.driver.read(VIRTIO_MMIO.status) & VIRTIO_STATUS.needsReset, VIRTIO_STATUS.needsReset);
        // The driver resets and starts over: the device works again.
        guest.restart();
        assert.equal(guest.driver.read(VIRTIO_MMIO.status), 15);
        guest.send({ srcPort: 7, dstPort: 7, op: VIRTIO_VSOCK_OP.request });
        assert.equal((await guest.next(VIRTIO_VSOCK_OP.rst, "RST after the reset")).header.dstPort, 7);
        assert.equal(guest.driver.logs.length, 1);
      } finally {
        await guest.close();
      }
    });
  });
}

Deno.test("virtioVsock() state: connections are not carried; a restore ends them and posts TRANSPORT_RESET", async () => {
  await withSocketDir(async (uds) => {
    const c = await connected(uds);
    try {
      c.guest.driver.offer(2, undefined, 4);
      const core = c.guest.driver.transport.core;
      const state = core.state;
      assert.deepEqual(state.device, {
        cid: 3,
        eventPending: false,
        counters: { connections: 1, bytesFromGuest: 0, bytesToGuest: 0, dropped: 0 },
      });
      const json = JSON.parse(JSON.stringify(state));
      assert.throws(
        () => c.guest.device.restore({ ...json.device, cid: 4 }),
        /Cannot restore the virtio-vsock state: .*cid 4 differs from this device's 3/,
      );
      core.restore(json);
      assert.deepEqual(c.guest.device.connections, []);
      assert.equal(await c.host.read(new Uint8Array(1)), null);
      const [event] = c.guest.driver.used(2);
      assert.equal(new DataView(event!.buffer).getUint32(0, true), VIRTIO_VSOCK_EVENT_TRANSPORT_RESET);
      assert.equal(event!.length, 4);
      assert.equal(c.guest.device.state.eventPending, false);
    } finally {
      await c.close();
    }
  });
});

Deno.test({
  name: "hvsh boot --vsock CID,PATH adds a vsock device listening on PATH",
  ignore: !kvmAvailable,
  async fn() {
    if (!kvmAvailable) console.log(`ignored: ${kvmMissingReason}`);
    const { parseVirtioFlags, addVirtioDevices } = await import("../cli/virtio_flags.ts");
    await withSocketDir(async (uds) => {
      const options = parseVirtioFlags({ vsock: `5,${uds}` }, (message) => new Error(message));
      assert.deepEqual(options.vsock, { cid: 5, path: uds });
      {
        await using vm = await Vm.create({ memory: "64M" });
        addVirtioDevices(vm, { ...options, transport: "pci" });
        const [slot] = vm.virtioDevices;
        assert.equal(slot!.name, "vsock0");
        assert.equal(slot!.transport, "pci");
        assert.equal((slot!.device as VirtioVsock).cid, 5);
        assert.equal((await Deno.lstat(uds)).isSocket, true);
        const { formatDevices } = await import("../repl/devices_view.ts");
        assert.match(formatDevices(vm), /vsock0 +virtio-vsock, pci/);
        assert.match(formatDevices(vm), new RegExp(`CID 5, ${uds}, 0 connections`));
      }
      // Closing the VM closed the device and its socket.
      await assert.rejects(Deno.connect({ transport: "unix", path: uds }));
    });
  },
});

Deno.test({
  name: "a tiny guest's vsock driver under KVM accepts a host CONNECT, echoes the bytes and closes (virtio-mmio)",
  ignore: !kvmAvailable,
  async fn() {
    await withSocketDir(async (uds) => {
      await using vm = await Vm.create({ memory: "64M" });
      const logs: string[] = [];
      // The host may connect before the guest's driver is up: the REQUEST waits for it.
      vm.add(virtioVsock({ cid: 3, uds, connectTimeout: 30_000 }), { log: (line) => logs.push(line) });
      await vm.load(await guestImage("virtio.elf"), { cmdline: "vsock" });
      const running = vm.run({ timeout: 60_000 });
      const host = await Deno.connect({ transport: "unix", path: uds });
      try {
        await host.write(encoder.encode("CONNECT 52\n"));
        assert.equal(await readLine(host), `OK ${VSOCK_FIRST_HOST_PORT}\n`);
        await host.write(encoder.encode("hello"));
        assert.equal(decoder.decode(await readExactly(host, 5)), "HELLO");
        await host.closeWrite();
        // The guest answers the SHUTDOWN with its own; the device's RST closes the Unix stream.
        assert.equal(await host.read(new Uint8Array(1)), null);
      } finally {
        host.close();
      }
      const stop = await running;
      assert.equal(stop.reason, "exit", `stopped: ${stop.reason}; output ${vm.serial.output}`);
      assert.equal(
        vm.serial.output,
        `vsock cid=3 request 2:${VSOCK_FIRST_HOST_PORT} -> 52\necho hello\nshutdown flags=2\nrst\nvsock done\n`,
      );
      assert.deepEqual(logs, []);
    });
  },
});
