// Run by tests/virtio_net_test.ts under `unshare -n`: in a network namespace
// of its own (only lo, down), it creates tap0 through virtioNet(), gives the
// kernel's side 10.0.2.2/24, and as the driver sends an ARP request for it
// from 10.0.2.15. The kernel's ARP reply must come back through the receive
// queue. Prints one JSON line: the reply's fields, or an error.

import { TestDriver } from "./_virtio_driver.ts";
import { VIRTIO_NET_HDR_SIZE, virtioNet } from "../devices/virtio/net.ts";

const GUEST_MAC = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const net = virtioNet({ tap: "tap0" });
const driver = new TestDriver(net);
try {
  const ip = (...args: string[]) => new Deno.Command("ip", { args }).outputSync();
  ip("addr", "add", "10.0.2.2/24", "dev", "tap0");
  ip("link", "set", "tap0", "up");
  driver.start(1 << 5); // VIRTIO_NET_F_MAC
  for (let i = 0; i < 4; i++) driver.offer(0, undefined, VIRTIO_NET_HDR_SIZE + 1514);
  const arp = new Uint8Array([
    ...[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    ...GUEST_MAC,
    0x08,
    0x06, // Ethernet: broadcast, ARP
    0x00,
    0x01,
    0x08,
    0x00,
    6,
    4,
    0x00,
    0x01, // Ethernet/IPv4, request
    ...GUEST_MAC,
    10,
    0,
    2,
    15, // sender
    0,
    0,
    0,
    0,
    0,
    0,
    10,
    0,
    2,
    2, // target
  ]);
  const deadline = Date.now() + 10_000;
  let reply: Uint8Array | undefined;
  let sent = 0;
  while (reply === undefined && Date.now() < deadline) {
    // The kernel may drop the first request while tap0 comes up (IPv6 DAD, carrier): ask again each 200 ms.
    if (sent++ % 10 === 0) driver.offer(1, new Uint8Array([...new Uint8Array(VIRTIO_NET_HDR_SIZE), ...arp]));
    await new Promise((resolve) => setTimeout(resolve, 20));
    for (const packet of driver.used(0)) {
      const frame = packet.subarray(VIRTIO_NET_HDR_SIZE);
      if (frame[12] === 0x08 && frame[13] === 0x06 && frame[21] === 2) reply = frame;
    }
  }
  if (reply === undefined) {
    console.log(JSON.stringify({ error: "no ARP reply", counters: net.counters }));
  } else {
    const hex = (bytes: Uint8Array) => [...bytes].map((b) => b.toString(16).padStart(2, "0")).join(":");
    console.log(JSON.stringify({
      to: hex(reply.subarray(0, 6)),
      senderIp: [...reply.subarray(28, 32)].join("."),
      targetIp: [...reply.subarray(38, 42)].join("."),
      txFrames: net.counters.txFrames,
      tap: net.tap.name,
    }));
  }
} finally {
  await net.close();
  driver.close();
}
