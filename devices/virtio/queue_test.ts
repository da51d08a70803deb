import assert from "node:assert/strict";
import { GuestMemory } from "../../core/memory.ts";
import { SplitQueue, VirtqueueError } from "./queue.ts";

function setUp(): {
  memory: GuestMemory;
  queue: SplitQueue;
  desc: (i: number, a: number, l: number, f: number, n?: number) => void;
  offer: (head: number) => void;
} {
  const memory = GuestMemory.allocate(1 << 20);
  const queue = new SplitQueue(8);
  Object.assign(queue, { size: 8, descTable: 0x1000, driverArea: 0x2000, deviceArea: 0x3000 });
  queue.enable(memory);
  let idx = 0;
  return {
    memory,
    queue,
    desc: (i, a, l, f, n = 0) => {
      memory.writeU64(0x1000 + i * 16, a);
      memory.writeU32(0x1008 + i * 16, l);
      memory.writeU16(0x100c + i * 16, f);
      memory.writeU16(0x100e + i * 16, n);
    },
    offer: (head) => {
      memory.writeU16(0x2004 + 2 * (idx % 8), head);
      memory.writeU16(0x2002, ++idx);
    },
  };
}

Deno.test("SplitQueue.pop() follows an indirect table and refuses a nested one", () => {
  const { memory, queue, desc, offer } = setUp();
  try {
    memory.writeU64(0x4000, 0x5000);
    memory.writeU32(0x4008, 16);
    memory.writeU16(0x400c, 1);
    memory.writeU16(0x400e, 1);
    memory.writeU64(0x4010, 0x6000);
    memory.writeU32(0x4018, 32);
    memory.writeU16(0x401c, 2);
    desc(0, 0x4000, 32, 4);
    offer(0);
    const chain = queue.pop()!;
    assert.deepEqual([chain.readableLength, chain.writableLength], [16, 32]);
    memory.writeU16(0x401c, 4); // the indirect table's second entry is itself indirect
    offer(0);
    assert.throws(() => queue.pop(), (e) => e instanceof VirtqueueError && /itself indirect/.test(e.message));
  } finally {
    memory.close();
  }
});

Deno.test("SplitQueue.pop() refuses a readable buffer after a writable one, and an available index that jumps", () => {
  const { memory, queue, desc, offer } = setUp();
  try {
    desc(0, 0x4000, 16, 2 | 1, 1);
    desc(1, 0x5000, 16, 0);
    offer(0);
    assert.throws(() => queue.pop(), /device-readable after a device-writable/);
    memory.writeU16(0x2002, 200);
    assert.throws(() => queue.pop(), /more than the queue size 8/);
  } finally {
    memory.close();
  }
});

Deno.test("SplitQueue.needsInterrupt() follows the driver's used_event with event index", () => {
  const { memory, queue, desc, offer } = setUp();
  try {
    queue.eventIdx = true;
    desc(0, 0x4000, 16, 2);
    memory.writeU16(0x2004 + 2 * 8, 1); // used_event: interrupt once used idx passes 1
    for (let i = 0; i < 3; i++) offer(0);
    queue.push(queue.pop()!.head, 16);
    assert.equal(queue.needsInterrupt(), false); // used idx 1: not past used_event 1
    queue.push(queue.pop()!.head, 16);
    assert.equal(queue.needsInterrupt(), true); // used idx 2
    assert.equal(memory.readU16(0x3004 + 8 * 8), 2); // avail_event: how far the device has read
  } finally {
    memory.close();
  }
});
