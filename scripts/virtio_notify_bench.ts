/**
 * The measurement behind hvsh's virtio notification path (issue 15, part 3):
 *
 * - a guest's notify write handled as an MMIO exit on the main thread (what
 *   the virtio transports do), against the same write bound to an eventfd
 *   with KVM_IOEVENTFD, which KVM completes without leaving the kernel;
 * - raising an interrupt with KVM_IRQ_LINE (a level, set and cleared)
 *   against writing an eventfd bound with KVM_IRQFD, both from the main
 *   thread.
 *
 * The guest is bench_mmio.elf: N 4-byte writes to 0xfe000000, then exit.
 *
 * Usage: `deno run -A scripts/virtio_notify_bench.ts [--n 20000] [--rounds 7]`
 *
 * @module
 */

import { parseArgs } from "node:util";
import { Vm } from "../core/vm.ts";
import { EventFd } from "../core/kvm/host_io.ts";
import { buildGuests } from "./build_guests.ts";

const NOTIFY_ADDRESS = 0xfe00_0000n;

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

async function notifyRun(elf: string, n: number, ioeventfd: boolean): Promise<number> {
  await using vm = await Vm.create({ memory: "16M" });
  let exits = 0;
  vm.mmio.insert(NOTIFY_ADDRESS, 4n, "notify", { read: () => 0n, write: () => void exits++ });
  using event = new EventFd();
  if (ioeventfd) vm.bindIoeventfd(event.fd, NOTIFY_ADDRESS, 4);
  await vm.load(elf);
  vm.cpu(0).setRegs({ rcx: BigInt(n) });
  const t0 = performance.now();
  const stop = await vm.run({ timeout: 120_000 });
  const ms = performance.now() - t0;
  if (stop.reason !== "exit") throw new Error(`bench_mmio stopped: ${stop.reason}`);
  const seen = ioeventfd ? event.take() : exits;
  if (seen !== n) throw new Error(`${ioeventfd ? "eventfd counted" : "exits"} ${seen}, expected ${n}`);
  return (ms * 1000) / n;
}

async function interruptRun(m: number): Promise<{ irqLineUs: number; irqfdUs: number }> {
  await using vm = await Vm.create({ memory: "16M" });
  const gsi = 11;
  let t0 = performance.now();
  for (let i = 0; i < m; i++) {
    vm.irqLine(gsi, true);
    vm.irqLine(gsi, false);
  }
  const irqLineUs = ((performance.now() - t0) * 1000) / m;
  using event = new EventFd();
  vm.bindIrqfd(event.fd, gsi);
  t0 = performance.now();
  for (let i = 0; i < m; i++) event.signal();
  const irqfdUs = ((performance.now() - t0) * 1000) / m;
  vm.bindIrqfd(event.fd, gsi, true);
  return { irqLineUs, irqfdUs };
}

if (import.meta.main) {
  const { values } = parseArgs({ args: Deno.args, options: { n: { type: "string" }, rounds: { type: "string" } } });
  const n = Number(values.n ?? 20_000);
  const rounds = Number(values.rounds ?? 7);
  const elf = (await buildGuests()).get("bench_mmio.elf")!;
  const exit: number[] = [];
  const eventfd: number[] = [];
  const line: number[] = [];
  const irqfd: number[] = [];
  for (let round = 0; round < rounds; round++) {
    exit.push(await notifyRun(elf, n, false));
    eventfd.push(await notifyRun(elf, n, true));
    const irq = await interruptRun(n);
    line.push(irq.irqLineUs);
    irqfd.push(irq.irqfdUs);
  }
  console.log(`notify write, guest-side cost (µs per write, median of ${rounds} rounds of ${n}):`);
  console.log(`  MMIO exit handled on the main thread  ${median(exit).toFixed(2)}`);
  console.log(`  KVM_IOEVENTFD (no exit)               ${median(eventfd).toFixed(2)}`);
  console.log(`interrupt from the main thread (µs per interrupt):`);
  console.log(`  KVM_IRQ_LINE set + clear              ${median(line).toFixed(2)}`);
  console.log(`  eventfd write with KVM_IRQFD          ${median(irqfd).toFixed(2)}`);
}
