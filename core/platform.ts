/**
 * The PC platform builder: the one place that decides where devices and
 * firmware tables live (like Firecracker's builder / device manager), so
 * kernels written for QEMU's `-kernel` on `pc` find what they expect, and
 * the platform's policies for a reset and an ACPI sleep.
 *
 * What is in the kernel and what is in hvsh: KVM emulates the PIC pair, the
 * IOAPIC, every LAPIC and the PIT (with the speaker port 0x61); hvsh models
 * the UART, fw_cfg, CMOS/RTC, the i8042 (for its reset line), the PCI host
 * bridge's config ports, QEMU's pc-testdev and the debug-exit port, and
 * writes ACPI and MP tables into the BIOS area.
 *
 * @module
 */

import type { Machine } from "./machine.ts";
import type { BusDispatch } from "./bus_dispatch.ts";
import { Cmos } from "../devices/cmos.ts";
import { I8042 } from "../devices/i8042.ts";
import { Port61 } from "../devices/port61.ts";
import { PciHost } from "../devices/pci_host.ts";
import { PC_TESTDEV, PcTestDev } from "../devices/pc_testdev.ts";
import { FwCfg } from "../devices/fw_cfg.ts";
import { AcpiPm, PM1_STATUS } from "../devices/acpi_pm.ts";
import { Serial16550 } from "../devices/serial.ts";
import { DebugExit, SinkPort } from "../devices/debug_exit.ts";
import { buildAcpiTables } from "./firmware/acpi.ts";
import { buildMpTable } from "./firmware/mptable.ts";
import type { ReservedRange } from "./loader/types.ts";
import { VirtioSlots } from "../devices/virtio/slots.ts";
import { e820Map, packE820 } from "./loader/e820.ts";

/**
 * Where the platform puts everything: ports (with how many each device
 * decodes), MMIO ranges and firmware tables in guest physical memory. The
 * builder below places every device from this table and nowhere else.
 */
export const PC_LAYOUT = {
  /** COM1, debug-exit and POST are on every platform, `"none"` included. */
  com1: { port: 0x3f8, size: 8 },
  /** QEMU's isa-debug-exit: writing V ends the run with status (V << 1) | 1. */
  debugExit: { port: 0xf4, size: 1 },
  /** The POST code port: writes are dropped. */
  post: { port: 0x80, size: 1 },
  cmos: { port: 0x70, size: 2 },
  i8042Data: { port: 0x60, size: 1 },
  i8042Command: { port: 0x64, size: 1 },
  /** The speaker/gate port, modelled only without the in-kernel PIT (which serves it otherwise). */
  port61: { port: 0x61, size: 1 },
  pciConfig: { port: 0xcf8, size: 8 },
  fwCfg: { port: 0x510, size: 2 },
  fwCfgDma: { port: 0x514, size: 8 },
  /** The ACPI PM1 block and PM timer (the FADT's PM base), as QEMU's PIIX4 places it. */
  acpiPm: { port: 0x600, size: 12 },
  /** QEMU's pc-testdev: scratch and flush-page ports, IRQ-line ports, and its 64 KiB of MMIO. */
  pcTestdev: { port: PC_TESTDEV.ports, size: PC_TESTDEV.portCount },
  pcTestdevIrq: { port: PC_TESTDEV.irqPorts, size: PC_TESTDEV.irqPortCount },
  pcTestdevIomem: { address: PC_TESTDEV.iomem, size: PC_TESTDEV.iomemSize },
  /** ACPI tables (RSDT, XSDT, FADT, DSDT, MADT, FACS) in the BIOS area, outside the memory map's usable RAM. */
  acpiTables: { address: 0xe_0000, size: 0x2_0000 },
  /** The RSDP, found by kernels scanning 0xe0000-0xfffff on 16-byte boundaries. */
  rsdp: { address: 0xf_0000 },
  /** The MP floating pointer and configuration table, in 0xf0000-0xfffff. */
  mpTable: { address: 0xf_0100 },
  /**
   * virtio devices: mmio windows where QEMU's microvm puts them (512 bytes
   * apart), PCI functions from 00:01.0 with BAR 0 below the IOAPIC, and one
   * interrupt line each from the ISA IRQs nothing else here uses (Linux
   * booted with acpi=off maps only these to fixed IRQ numbers, which
   * `virtio_mmio.device=…:IRQ` needs).
   */
  virtio: {
    mmio: { address: 0xfeb0_0000, count: 8 },
    pci: { firstDevice: 1, barBase: 0xfea0_0000, count: 8 },
    gsis: [5, 10, 11, 7, 6, 13, 14, 15],
  },
} as const;

/** The PC devices beyond COM1, debug-exit and POST, for scripts that want to reach them. */
export interface PcPlatform {
  fwCfg: FwCfg;
  cmos: Cmos;
  i8042: I8042;
  pciHost: PciHost;
  testDev: PcTestDev;
  acpiPm: AcpiPm;
  /** Where the ACPI FACS is (its firmware waking vector is at +12), when the tables were written. */
  facs: number | undefined;
  /** The firmware tables written in RAM (ACPI, RSDP, MP table): the loader refuses images that would overwrite them. */
  reserved: ReservedRange[];
}

/** What {@link buildPlatform} placed. */
export interface BuiltPlatform {
  /** COM1. */
  serial: Serial16550;
  /** The PC devices, unless the platform is `"none"`. */
  pc: PcPlatform | undefined;
  /** Where virtio devices go (`vm.add()`); adding one rewrites the firmware tables. */
  virtio: VirtioSlots;
}

/** Options of {@link buildPlatform}. */
export interface PlatformOptions {
  /** `"pc"`: the PC devices and firmware tables; `"none"`: only COM1, debug-exit and POST. */
  platform: "pc" | "none";
  /** Called when the guest asks for a reset (i8042 0xfe, port 0xcf9); the policy is the caller's. */
  onReset(source: string): void;
}

/**
 * The machine builder: places every device of the platform on the buses,
 * from {@link PC_LAYOUT}, and writes the firmware tables.
 */
export function buildPlatform(machine: Machine, buses: BusDispatch, options: PlatformOptions): BuiltPlatform {
  const irqLine = (irq: number, level: boolean) => {
    if (machine.hasIrqchip) machine.irqLine(irq, level);
  };
  const serial = new Serial16550();
  if (machine.hasIrqchip) serial.connectInterrupt((level) => machine.irqLine(4, level));
  buses.io.insert(PC_LAYOUT.com1.port, PC_LAYOUT.com1.size, "com1", serial);
  buses.io.insert(
    PC_LAYOUT.debugExit.port,
    PC_LAYOUT.debugExit.size,
    "debug-exit",
    new DebugExit((value) => machine.requestStop({ reason: "exit", value, code: ((value << 1) | 1) >>> 0 })),
  );
  buses.io.insert(PC_LAYOUT.post.port, PC_LAYOUT.post.size, "post", new SinkPort());
  if (options.platform === "none") {
    return { serial, pc: undefined, virtio: new VirtioSlots(machine, buses, undefined, PC_LAYOUT.virtio, () => {}) };
  }
  const pc = installPcDevices(machine, buses, irqLine, options.onReset);
  const virtio: VirtioSlots = new VirtioSlots(machine, buses, pc.pciHost, PC_LAYOUT.virtio, () => {
    writeFirmwareTables(machine, pc, virtio.mmioDevices());
  });
  return { serial, pc, virtio };
}

/** The PC devices and firmware tables QEMU's `-kernel` users expect. */
function installPcDevices(
  machine: Machine,
  buses: BusDispatch,
  irqLine: (irq: number, level: boolean) => void,
  onReset: (source: string) => void,
): PcPlatform {
  const cpus = machine.cpus.length;
  const memory = machine.memory;
  const io = (place: { port: number; size: number }, name: string, device: Parameters<typeof buses.io.insert>[3]) =>
    buses.io.insert(place.port, place.size, name, device);
  // KVM's default GSI routing sends IRQ 0 to IOAPIC pin 0, so the tables must not claim the QEMU override.
  const irq0Override = false;
  const fwCfg = new FwCfg({
    ramSize: memory.ramSize,
    cpus,
    maxCpus: cpus,
    irq0Override,
    memory: {
      read: (address, length) => memory.read(address, length),
      write: (address, bytes) => memory.write(address, bytes),
    },
  });
  fwCfg.addFile("etc/e820", e820Table(memory));
  io(PC_LAYOUT.fwCfg, "fw_cfg", fwCfg);
  if (fwCfg.dmaPort !== undefined) io(PC_LAYOUT.fwCfgDma, "fw_cfg-dma", fwCfg.dmaPort);

  const cmos = new Cmos({ ramSize: memory.ramSize, cpus });
  io(PC_LAYOUT.cmos, "cmos", cmos);

  const i8042 = new I8042({ onReset: () => onReset("i8042 reset command 0xfe"), setIrq: irqLine });
  io(PC_LAYOUT.i8042Data, "i8042-data", i8042.dataPort);
  io(PC_LAYOUT.i8042Command, "i8042-command", i8042.commandPort);

  // With the in-kernel PIT, KVM serves port 0x61 (the speaker/gate port) itself.
  if (!machine.hasIrqchip) io(PC_LAYOUT.port61, "port61", new Port61());

  const pciHost = new PciHost({ onReset: () => onReset("PCI reset control 0xcf9") });
  io(PC_LAYOUT.pciConfig, "pci-config", pciHost);

  // pc-testdev's page flush makes QEMU re-fault a page; hvsh's iomem is always MMIO, so there is nothing to flush.
  const testDev = new PcTestDev({ setIrq: irqLine, flushPage: () => {} });
  io(PC_LAYOUT.pcTestdev, "pc-testdev", testDev.ports);
  io(PC_LAYOUT.pcTestdevIrq, "pc-testdev-irq", testDev.irqPorts);
  buses.mmio.insert(PC_LAYOUT.pcTestdevIomem.address, PC_LAYOUT.pcTestdevIomem.size, "pc-testdev-iomem", testDev.iomem);

  const platform: PcPlatform = {
    fwCfg,
    cmos,
    i8042,
    pciHost,
    testDev,
    acpiPm: undefined!,
    facs: undefined,
    reserved: [],
  };
  platform.acpiPm = new AcpiPm({ onSleep: (type) => sleepPolicy(machine, platform, type) });
  io(PC_LAYOUT.acpiPm, "acpi-pm", platform.acpiPm);

  writeFirmwareTables(machine, platform, []);
  if (machine.hasIrqchip && memory.isRam(0, 0x10_0000)) installBiosState(machine);
  return platform;
}

/** Writes the ACPI and MP tables (again, when virtio devices are added: the DSDT lists the virtio-mmio ones). */
function writeFirmwareTables(
  machine: Machine,
  platform: PcPlatform,
  virtioMmio: { base: number; size: number; gsi: number }[],
): void {
  const memory = machine.memory;
  const cpus = machine.cpus.length;
  const irq0Override = false;
  if (!memory.isRam(PC_LAYOUT.acpiTables.address, PC_LAYOUT.acpiTables.size)) return;
  // KVM's in-kernel IOAPIC starts with id 0: the tables say so too.
  const acpi = buildAcpiTables({
    cpus,
    rsdpAddress: PC_LAYOUT.rsdp.address,
    tablesAddress: PC_LAYOUT.acpiTables.address,
    ioapicId: 0,
    irq0Override,
    pmBase: PC_LAYOUT.acpiPm.port,
    virtioMmio,
  });
  platform.facs = acpi.addresses.facs;
  memory.write(PC_LAYOUT.acpiTables.address, acpi.tables);
  memory.write(PC_LAYOUT.rsdp.address, acpi.rsdp);
  const mpTable = buildMpTable({ cpus, address: PC_LAYOUT.mpTable.address, ioapicId: 0, irq0Override });
  memory.write(PC_LAYOUT.mpTable.address, mpTable);
  // Loaders keep images off these (rewritten with the tables when a device is added).
  platform.reserved.splice(
    0,
    platform.reserved.length,
    { label: "the ACPI tables", start: PC_LAYOUT.acpiTables.address, size: acpi.tables.length },
    { label: "the ACPI RSDP", start: PC_LAYOUT.rsdp.address, size: acpi.rsdp.length },
    { label: "the MP table", start: PC_LAYOUT.mpTable.address, size: mpTable.length },
  );
}

/**
 * The platform's sleep policy. Sleep types as QEMU's DSDT names them: 1 = S3
 * (suspend to RAM), 0 = S5 (soft off). S3 sleeps until the RTC alarm, then
 * resumes the BSP in real mode at the FACS firmware waking vector, as
 * SeaBIOS's resume path does; with no alarm to wake it, S3 is a power-off.
 */
function sleepPolicy(machine: Machine, platform: PcPlatform, type: number): void {
  if (type !== 1) {
    machine.requestStop({ reason: "shutdown", cause: "power-off", detail: `ACPI sleep type ${type} (S5, soft off)` });
    return;
  }
  const { cmos, acpiPm, facs } = platform;
  const delay = cmos.alarmDelay();
  if (delay === undefined || facs === undefined) {
    machine.requestStop({ reason: "shutdown", cause: "power-off", detail: "ACPI S3 with no RTC alarm to wake it" });
    return;
  }
  machine.requestSleep(delay, () => {
    cmos.fireAlarm();
    acpiPm.raise(PM1_STATUS.wake | PM1_STATUS.rtc);
    const vector = machine.memory.readU32(facs + 12);
    if (vector >= 0x10_0000) {
      // The waking vector is a real-mode address; anything else is the guest's mistake, not hvsh's.
      machine.requestStop({
        reason: "shutdown",
        cause: "power-off",
        detail: `ACPI S3 resume: waking vector 0x${vector.toString(16)} is not a real-mode address`,
      });
      return;
    }
    machine.cpu(0).enterRealMode({ cs: vector >>> 4, ip: vector & 0xf, dataSegment: 0 });
  });
}

/**
 * The platform's reset policy: `"stop"` ends the run with a reset stop;
 * `"reset"` runs the action `reload()` gives (which puts the last image back
 * and the vCPU at its entry; none when nothing was loaded) and the guest goes
 * on. Only single-vCPU machines reload: the application processors would
 * need INIT/SIPI again.
 */
export function resetPolicy(
  machine: Machine,
  policy: "stop" | "reset",
  reload: () => (() => void) | undefined,
): (source: string) => void {
  return (source) => {
    const action = policy === "reset" && machine.cpus.length === 1 ? reload() : undefined;
    if (action !== undefined) {
      machine.requestRestart(action);
      return;
    }
    machine.requestStop({ reason: "shutdown", cause: "reset", detail: `reset requested (${source})` });
  };
}

/**
 * QEMU's `etc/e820` fw_cfg file: packed `{ u64 address, u64 length, u32 type }`
 * entries (type 1 RAM, 2 reserved), the same map the multiboot loader gives:
 * low RAM up to the EBDA, the EBDA and BIOS area reserved, RAM from 1 MiB, and
 * RAM above 4 GiB when there is any.
 */
export function e820Table(memory: { readonly regions: readonly { base: number; size: number }[] }): Uint8Array {
  return packE820(e820Map(memory.regions));
}

/** Where the real-mode interrupt stubs live (segment 0xf000, as SeaBIOS places its handlers). */
const BIOS_STUBS = {
  /** `iret`: the default for every vector (SeaBIOS's F000:FF53). */
  iret: 0xfff53,
  /** IRQ 0-7: EOI to the master PIC, `iret` (SeaBIOS's timer entry is F000:FEA5). */
  masterIrq: 0xffea5,
  /** IRQ 8-15: EOI to both PICs, `iret`. */
  slaveIrq: 0xffe00,
} as const;

/**
 * Leaves the machine as SeaBIOS leaves it for QEMU's `-kernel`, so kernels
 * and tests that rely on it behave the same (kvm-unit-tests' realmode waits
 * in `hlt` for the BIOS timer tick): the PICs initialised with vector bases
 * 0x08 and 0x70, IRQ 0 and the cascade unmasked; the PIT's channel 0 ticking
 * at 18.2 Hz (mode 3, count 65536); a real-mode IVT whose vectors point at
 * stubs that acknowledge the PIC and return. Protected-mode kernels remap and
 * mask the PICs before they enable interrupts, as they must under QEMU too.
 */
function installBiosState(vm: Machine): void {
  const memory = vm.memory;
  memory.write(BIOS_STUBS.iret, [0xcf]);
  // push ax; mov al, 0x20; out 0x20, al; pop ax; iret
  memory.write(BIOS_STUBS.masterIrq, [0x50, 0xb0, 0x20, 0xe6, 0x20, 0x58, 0xcf]);
  // push ax; mov al, 0x20; out 0xa0, al; out 0x20, al; pop ax; iret
  memory.write(BIOS_STUBS.slaveIrq, [0x50, 0xb0, 0x20, 0xe6, 0xa0, 0xe6, 0x20, 0x58, 0xcf]);
  for (let vector = 0; vector < 256; vector++) {
    const stub = vector >= 0x08 && vector < 0x10
      ? BIOS_STUBS.masterIrq
      : vector >= 0x70 && vector < 0x78
      ? BIOS_STUBS.slaveIrq
      : BIOS_STUBS.iret;
    memory.writeU16(vector * 4, stub & 0xffff);
    memory.writeU16(vector * 4 + 2, 0xf000);
  }
  const pic = (chip: "pic-master" | "pic-slave", irqBase: number, imr: number) => {
    const state = vm.irqchipState(chip);
    if (state.chip === "ioapic") return;
    // Initialised (ICW1-ICW4 done, 8086 mode) with the vector base and mask SeaBIOS leaves.
    vm.setIrqchipState({ chip, pic: { ...state.pic, imr, irqBase, initState: 0, init4: 1 } });
  };
  pic("pic-master", 0x08, 0xfa); // IRQ 0 (timer) and 2 (cascade) unmasked
  pic("pic-slave", 0x70, 0xff);
  const pit = vm.pitState();
  const [channel0, ...others] = pit.channels;
  vm.setPitState({
    ...pit,
    channels: [
      // Count 0 loads 65536: 1193182 / 65536 = 18.2 Hz. Lobyte then hibyte (access 3), square wave (mode 3).
      { ...channel0!, count: 0, readState: 3, writeState: 3, rwMode: 3, mode: 3, gate: 1 },
      ...others,
    ],
  });
}
