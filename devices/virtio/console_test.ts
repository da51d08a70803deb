import assert from "node:assert/strict";
import { TestDriver } from "../../tests/_virtio_driver.ts";
import { VIRTIO_CONSOLE, virtioConsole } from "./console.ts";

function control(id: number, event: number, value: number): Uint8Array {
  const message = new Uint8Array(8);
  const view = new DataView(message.buffer);
  view.setUint32(0, id, true);
  view.setUint16(4, event, true);
  view.setUint16(6, value, true);
  return message;
}

function events(messages: Uint8Array[]): string[] {
  return messages.map((m) => {
    const view = new DataView(m.buffer, m.byteOffset, m.byteLength);
    const name = new TextDecoder().decode(m.subarray(8));
    return `${view.getUint32(0, true)}:${view.getUint16(4, true)}:${view.getUint16(6, true)}${name ? `:${name}` : ""}`;
  });
}

Deno.test("virtioConsole() multiport: ports announced, port 0 a console, a named port, output and input as streams", async () => {
  const hvc = virtioConsole({ ports: ["ctl"] });
  const driver = new TestDriver(hvc);
  try {
    driver.start(2); // VIRTIO_CONSOLE_F_MULTIPORT
    assert.equal(driver.read(0x100 + 4), 2); // max_nr_ports
    for (let i = 0; i < 8; i++) driver.offer(2, undefined, 64);
    driver.offer(3, control(0, VIRTIO_CONSOLE.deviceReady, 1));
    assert.deepEqual(events(driver.used(2)), ["0:1:1", "1:1:1"]); // DEVICE_ADD for ports 0 and 1
    driver.offer(3, control(0, VIRTIO_CONSOLE.portReady, 1));
    driver.offer(3, control(1, VIRTIO_CONSOLE.portReady, 1));
    assert.deepEqual(events(driver.used(2)), ["0:4:1", "0:6:1", "1:7:1:ctl", "1:6:1"]);
    assert.equal(hvc.port(0).guestOpen, false);
    driver.offer(3, control(0, VIRTIO_CONSOLE.portOpen, 1)); // what Linux sends when hvc0 is set up
    assert.equal(hvc.port(0).guestOpen, true);

    const reader = hvc.port(1).readable.getReader();
    driver.offer(5, new TextEncoder().encode("hello ctl")); // port 1 transmit queue
    driver.offer(1, new TextEncoder().encode("console line\n")); // port 0 transmit queue
    assert.equal(new TextDecoder().decode((await reader.read()).value), "hello ctl");
    assert.equal(hvc.port(0).output, "console line\n");

    const writer = hvc.port(0).writable.getWriter();
    await writer.write(new TextEncoder().encode("typed"));
    assert.deepEqual(driver.used(0), []); // no receive buffer yet: the input waits
    driver.offer(0, undefined, 3);
    driver.offer(0, undefined, 16);
    assert.deepEqual(driver.used(0).map((b) => new TextDecoder().decode(b)), ["typ", "ed"]);
    assert.ok(driver.interrupts > 0);
    writer.releaseLock();
    reader.releaseLock();
  } finally {
    hvc.close();
    driver.close();
  }
});

Deno.test("virtioConsole() without multiport is one console port on queues 0 and 1", () => {
  const hvc = virtioConsole();
  const driver = new TestDriver(hvc);
  try {
    driver.start(0);
    driver.offer(1, new TextEncoder().encode("early"));
    assert.equal(hvc.port(0).output, "early");
    assert.deepEqual(driver.logs, []);
  } finally {
    hvc.close();
    driver.close();
  }
});
