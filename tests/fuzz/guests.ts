/**
 * Fuzz target "guests": generated hostile guests. Each case is tiny code
 * that writes random I/O ports of every device model with random values,
 * reads them, touches MMIO below and above 4 GiB, fires fw_cfg DMA at
 * descriptors and buffers outside RAM, floods the serial port and may end by
 * jumping to non-RAM. The VM must stop cleanly or keep running until the
 * timeout, `run()` must not throw, and the VM must stay usable: a known guest
 * loaded into it afterwards runs to its exit code.
 *
 * @module
 */

import { Vm } from "../../core/vm.ts";
import { describeStop } from "../../core/stop.ts";
import { PC_LAYOUT } from "../../core/platform.ts";
import { PC_TESTDEV } from "../../devices/pc_testdev.ts";
import { Code } from "./_asm.ts";
import { elfGuest } from "./_images.ts";
import { SeededRandom } from "./_random.ts";
import type { FuzzRandom, FuzzReport, FuzzTarget } from "./_target.ts";

const RAM_BYTES = 4 << 20;
/** Where generated guests keep a fw_cfg DMA descriptor (RAM, away from the code). */
const DESCRIPTOR_ADDRESS = 0x20_0000;
/** The boot PDPT of a long-mode guest (page tables at 0x1000: generated guests leave the usual place free). */
const BOOT_PDPT = 0x2000;
/** A zeroed page of the guest image that long-mode guests use as a page directory for MMIO above 1 GiB. */
const SPARE_DIRECTORY = 0x20_1000;
/** The exit code of the guest that checks the VM is still usable. */
const ALIVE_CODE = 0x55;

/** Every port range a device model claims, [first port, count], from the platform's layout table (debug-exit aside: it ends the run). */
const DEVICE_PORTS: readonly [number, number][] = [
  ...(Object.values(PC_LAYOUT) as readonly { port?: number; size?: number | bigint }[])
    .filter((place) => place.port !== undefined && place !== PC_LAYOUT.debugExit)
    .map((place): [number, number] => [place.port!, Number(place.size)]),
  // The in-kernel PIC, PIT and the ELCR: KVM serves them, hvsh must still survive what they do.
  [0x20, 2],
  [0xa0, 2],
  [0x40, 4],
  [0x4d0, 2],
];

const INTERESTING_VALUES = [
  0,
  1,
  2,
  0x7f,
  0x80,
  0xff,
  0xfe,
  0x100,
  0x7fff,
  0x8000,
  0xffff,
  0x7fffffff,
  0x80000000,
  0xffffffff,
];

function value(random: FuzzRandom): number {
  return random.int(3) === 0 ? random.pick(INTERESTING_VALUES) : random.int(0x1_0000_0000);
}

function port(random: FuzzRandom): number {
  if (random.int(10) === 0) return random.int(0x10000);
  const [first, count] = random.pick(DEVICE_PORTS);
  return first + random.int(count);
}

/** An address that is not RAM (or, sometimes, RAM): holes below 4 GiB, device windows, far above 4 GiB. */
function mmioAddress(random: FuzzRandom, bits: 32 | 64): bigint {
  const below4g = [
    () => BigInt(RAM_BYTES + random.int(0xc000_0000 - RAM_BYTES)),
    () => PC_TESTDEV.iomem + BigInt(random.int(Number(PC_TESTDEV.iomemSize))),
    () => 0xfec0_0000n + BigInt(random.int(0x1000)), // IOAPIC
    () => 0xfee0_0000n + BigInt(random.int(0x1000) & ~3), // local APIC
    () => 0xffff_f000n + BigInt(random.int(0x1000 - 4)),
    () => BigInt(0x30_0000 + random.int(RAM_BYTES - 0x30_0000 - 4)), // RAM away from the code
  ];
  const above4g = [
    () => 0x1_0000_0000n + BigInt(random.int(0x1000_0000)),
    () => BigInt(random.int(0x80)) << 32n,
    () => 0x7f_ffff_f000n + BigInt(random.int(0xff8)),
  ];
  return bits === 64 && random.int(3) === 0 ? random.pick(above4g)() : random.pick(below4g)();
}

/** A generated guest and the lines that say what it does (for a failure report). */
interface HostileGuest {
  image: Uint8Array;
  actions: string[];
}

/** Generates one hostile guest. */
export function generateGuest(random: FuzzRandom): HostileGuest {
  const bits = random.int(2) === 0 ? 32 : 64;
  const code = new Code(bits);
  const actions: string[] = [`${bits}-bit`];
  const descriptor = new Uint8Array(16);
  const steps = 1 + random.int(40);
  let jumped = false;
  for (let step = 0; step < steps && !jumped; step++) {
    const size = random.pick([1, 2, 4] as const);
    switch (random.int(8)) {
      case 0:
      case 1: {
        const p = port(random);
        const v = value(random);
        code.movEdx(p).movEax(v).outDx(size);
        actions.push(`out${size} 0x${p.toString(16)} 0x${v.toString(16)}`);
        break;
      }
      case 2: {
        const p = port(random);
        code.movEdx(p).inDx(size);
        actions.push(`in${size} 0x${p.toString(16)}`);
        break;
      }
      case 3: {
        const address = mmioAddress(random, bits);
        const v = value(random);
        if (bits === 64) code.mapPage(BOOT_PDPT, SPARE_DIRECTORY, address);
        code.movRbx(address).movEax(v).storeAtRbx(size);
        actions.push(`mmio write${size} 0x${address.toString(16)} 0x${v.toString(16)}`);
        break;
      }
      case 4: {
        const address = mmioAddress(random, bits);
        if (bits === 64) code.mapPage(BOOT_PDPT, SPARE_DIRECTORY, address);
        code.movRbx(address).loadFromRbx(size);
        actions.push(`mmio read${size} 0x${address.toString(16)}`);
        break;
      }
      case 5: {
        // fw_cfg DMA: a descriptor outside RAM, or one in RAM whose buffer lies outside RAM.
        const view = new DataView(descriptor.buffer);
        const selector = random.pick([0, 1, 0x19, 0x20, random.int(0x10000)]);
        view.setUint32(
          0,
          (selector << 16) | random.pick([0x08 | 0x02, 0x08 | 0x04, 0x08 | 0x10, 0x02, value(random)]),
          false,
        );
        view.setUint32(4, random.pick([0, 1, 4096, 0x10_0000, value(random)]), false);
        view.setBigUint64(
          8,
          random.int(2) === 0 ? mmioAddress(random, 64) : BigInt(random.int(0x1_0000_0000)) << 20n,
          false,
        );
        const where = random.int(3) === 0 ? mmioAddress(random, 32) : BigInt(DESCRIPTOR_ADDRESS);
        code.movEdx(PC_LAYOUT.fwCfgDma.port).movEax(0).outDx(4);
        code.movEdx(PC_LAYOUT.fwCfgDma.port + 4).movEax(byteSwap(Number(where & 0xffff_ffffn))).outDx(4);
        actions.push(`fw_cfg dma descriptor 0x${where.toString(16)}`);
        break;
      }
      case 6: {
        const count = 1 + random.int(random.int(4) === 0 ? 20_000 : 500);
        code.movEdx(PC_LAYOUT.com1.port).movEcx(count).movEax(0x21 + random.int(90)).outDxLoop();
        actions.push(`serial flood ${count}`);
        break;
      }
      case 7: {
        if (random.int(4) !== 0) break;
        const address = random.int(2) === 0 ? mmioAddress(random, bits) : BigInt(RAM_BYTES + random.int(0x1000_0000));
        if (bits === 64) code.mapPage(BOOT_PDPT, SPARE_DIRECTORY, address);
        code.movRbx(address).jmpRbx();
        actions.push(`jmp 0x${address.toString(16)}`);
        jumped = true;
        break;
      }
    }
  }
  if (!jumped) code.exit(random.int(0x100));
  const image = elfGuest(code, [
    { paddr: DESCRIPTOR_ADDRESS, data: descriptor, flags: 6 },
    { paddr: SPARE_DIRECTORY, data: [], memsz: 0x1000, flags: 6 },
  ]);
  return { image, actions };
}

function byteSwap(value: number): number {
  return ((value & 0xff) << 24 | (value & 0xff00) << 8 | (value >>> 8) & 0xff00 | value >>> 24) >>> 0;
}

/** The guest that proves a VM still works: it writes {@linkcode ALIVE_CODE} to the debug-exit port. */
function aliveGuest(): Uint8Array {
  return elfGuest(new Code(64).exit(ALIVE_CODE));
}

/** Runs one generated guest; returns what went wrong, or undefined. */
export async function runGuestCase(guest: HostileGuest, runMs: number): Promise<string | undefined> {
  let vm: Vm | undefined;
  try {
    vm = await Vm.create({ memory: RAM_BYTES });
    vm.serial.outputLimit = 4096;
    await vm.load(guest.image, { path: "hostile.elf" });
    let stop;
    try {
      stop = await vm.run({ timeout: runMs });
    } catch (error) {
      return `run() threw: ${(error as Error).stack ?? error}`;
    }
    if (stop.reason === "paused") return `unexpected stop: ${describeStop(stop)}`;
    if (vm.serial.output.length > 4096) return `serial output grew to ${vm.serial.output.length} characters`;
    await vm.load(aliveGuest(), { path: "alive.elf" });
    const check = await vm.run({ timeout: 10_000 });
    if (check.reason !== "exit" || check.code !== ((ALIVE_CODE << 1) | 1)) {
      return `the VM is not usable after ${describeStop(stop)}: a known guest then stopped with ${describeStop(check)}`;
    }
    return undefined;
  } catch (error) {
    return `hvsh threw: ${(error as Error).stack ?? error}`;
  } finally {
    try {
      await vm?.close();
    } catch (error) {
      // deno-lint-ignore no-unsafe-finally
      return `close() threw: ${(error as Error).stack ?? error}`;
    }
  }
}

/** The "guests" fuzz target. */
export const guestsTarget: FuzzTarget = {
  name: "guests",
  description: "hostile guests: random port I/O on every device, MMIO below/above 4 GiB, fw_cfg DMA outside RAM, " +
    "serial floods, jumps to non-RAM; the VM stops cleanly or runs on, and stays usable",
  async run(random: FuzzRandom, options: { maxCases: number; deadline: number }): Promise<FuzzReport> {
    const failures: string[] = [];
    let cases = 0;
    while (cases < options.maxCases && performance.now() < options.deadline) {
      const caseSeed = random.int(0x1_0000_0000);
      const guest = generateGuest(new SeededRandom(caseSeed));
      const problem = await runGuestCase(guest, 200);
      cases++;
      if (problem !== undefined) {
        failures.push(`guests case ${cases - 1} (case seed ${caseSeed}; ${guest.actions.join(", ")}): ${problem}`);
      }
    }
    return { cases, failures };
  },
};
