/**
 * The PC platform builder: the one place that decides where legacy devices
 * and firmware tables live (like Firecracker's builder / device manager), so
 * kernels written for QEMU's `-kernel` on `pc` find what they expect.
 *
 * What is in the kernel and what is in hvsh: KVM emulates the PIC pair, the
 * IOAPIC, every LAPIC and the PIT (with the speaker port 0x61); hvsh models
 * the UART, fw_cfg, CMOS/RTC, the i8042 (for its reset line), the PCI host
 * bridge's config ports, QEMU's pc-testdev and the debug-exit port, and
 * writes ACPI and MP tables into the BIOS area.
 *
 * @module
 */

import type { Vm } from "./vm.ts";
import { Cmos } from "../devices/cmos.ts";
import { I8042 } from "../devices/i8042.ts";
import { Port61 } from "../devices/port61.ts";
import { PciHost } from "../devices/pci_host.ts";
import { PC_TESTDEV, PcTestDev } from "../devices/pc_testdev.ts";
import { FwCfg } from "../devices/fw_cfg.ts";
import { AcpiPm, PM1_STATUS } from "../devices/acpi_pm.ts";
import { buildAcpiTables } from "./firmware/acpi.ts";
import { buildMpTable } from "./firmware/mptable.ts";
import type { ReservedRange } from "./loader/types.ts";

/** Where the platform puts things (guest physical addresses and ports). */
export const PC_LAYOUT = {
  /** COM1, debug-exit and POST are placed by the Vm itself (also with `platform: "none"`). */
  com1: 0x3f8,
  debugExit: 0xf4,
  post: 0x80,
  cmos: 0x70,
  i8042Data: 0x60,
  i8042Command: 0x64,
  port61: 0x61,
  pciConfig: 0xcf8,
  fwCfg: 0x510,
  /** The ACPI PM1 block and PM timer (the FADT's PM base), as QEMU's PIIX4 places it. */
  acpiPm: 0x600,
  fwCfgDma: 0x514,
  /** ACPI tables (RSDT, XSDT, FADT, DSDT, MADT, FACS) in the BIOS area, outside the memory map's usable RAM. */
  acpiTables: 0xe_0000,
  /** The RSDP, found by kernels scanning 0xe0000-0xfffff on 16-byte boundaries. */
  rsdp: 0xf_0000,
  /** The MP floating pointer and configuration table, in 0xf0000-0xfffff. */
  mpTable: 0xf_0100,
} as const;

/** The platform's devices, for scripts that want to reach them. */
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

/**
 * Installs the PC devices on a VM's buses and writes the firmware tables.
 * `onReset` is called when the guest asks for a reset (i8042 0xfe, port 0xcf9).
 */
export function installPcPlatform(vm: Vm, onReset: (source: string) => void): PcPlatform {
  const cpus = vm.cpus.length;
  const memory = vm.memory;
  const irqLine = (irq: number, level: boolean) => {
    if (vm.hasIrqchip) vm.irqLine(irq, level);
  };
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
  vm.io.insert(PC_LAYOUT.fwCfg, 2, "fw_cfg", fwCfg);
  if (fwCfg.dmaPort !== undefined) vm.io.insert(PC_LAYOUT.fwCfgDma, 8, "fw_cfg-dma", fwCfg.dmaPort);

  const cmos = new Cmos({ ramSize: memory.ramSize, cpus });
  vm.io.insert(PC_LAYOUT.cmos, 2, "cmos", cmos);

  const i8042 = new I8042({ onReset: () => onReset("i8042 reset command 0xfe"), setIrq: irqLine });
  vm.io.insert(PC_LAYOUT.i8042Data, 1, "i8042-data", i8042.dataPort);
  vm.io.insert(PC_LAYOUT.i8042Command, 1, "i8042-command", i8042.commandPort);

  // With the in-kernel PIT, KVM serves port 0x61 (the speaker/gate port) itself.
  if (!vm.hasIrqchip) vm.io.insert(PC_LAYOUT.port61, 1, "port61", new Port61());

  const pciHost = new PciHost({ onReset: () => onReset("PCI reset control 0xcf9") });
  vm.io.insert(PC_LAYOUT.pciConfig, 8, "pci-config", pciHost);

  // pc-testdev's page flush makes QEMU re-fault a page; hvsh's iomem is always MMIO, so there is nothing to flush.
  const testDev = new PcTestDev({ setIrq: irqLine, flushPage: () => {} });
  vm.io.insert(PC_TESTDEV.ports, PC_TESTDEV.portCount, "pc-testdev", testDev.ports);
  vm.io.insert(PC_TESTDEV.irqPorts, PC_TESTDEV.irqPortCount, "pc-testdev-irq", testDev.irqPorts);
  vm.mmio.insert(BigInt(PC_TESTDEV.iomem), BigInt(PC_TESTDEV.iomemSize), "pc-testdev-iomem", testDev.iomem);

  let facs: number | undefined;
  const reserved: ReservedRange[] = [];
  // Sleep types as QEMU's DSDT names them: 1 = S3 (suspend to RAM), 0 = S5 (soft off).
  const acpiPm = new AcpiPm({
    onSleep: (type) => {
      if (type !== 1) {
        vm.requestStop({ reason: "shutdown", cause: "power-off", detail: `ACPI sleep type ${type} (S5, soft off)` });
        return;
      }
      const delay = cmos.alarmDelay();
      if (delay === undefined || facs === undefined) {
        vm.requestStop({ reason: "shutdown", cause: "power-off", detail: "ACPI S3 with no RTC alarm to wake it" });
        return;
      }
      // The wake: the RTC alarm fires, PM1 says why, and the BSP resumes in real mode at the
      // FACS firmware waking vector, as SeaBIOS's resume path does.
      vm.requestSleep(delay, () => {
        cmos.fireAlarm();
        acpiPm.raise(PM1_STATUS.wake | PM1_STATUS.rtc);
        const vector = memory.readU32(facs! + 12);
        if (vector >= 0x10_0000) {
          // The waking vector is a real-mode address; anything else is the guest's mistake, not hvsh's.
          vm.requestStop({
            reason: "shutdown",
            cause: "power-off",
            detail: `ACPI S3 resume: waking vector 0x${vector.toString(16)} is not a real-mode address`,
          });
          return;
        }
        vm.cpu(0).enterRealMode({ cs: vector >>> 4, ip: vector & 0xf, dataSegment: 0 });
      });
    },
  });
  vm.io.insert(PC_LAYOUT.acpiPm, 12, "acpi-pm", acpiPm);

  if (memory.isRam(PC_LAYOUT.acpiTables, 0x2_0000)) {
    // KVM's in-kernel IOAPIC starts with id 0: the tables say so too.
    const acpi = buildAcpiTables({
      cpus,
      rsdpAddress: PC_LAYOUT.rsdp,
      tablesAddress: PC_LAYOUT.acpiTables,
      ioapicId: 0,
      irq0Override,
      pmBase: PC_LAYOUT.acpiPm,
    });
    facs = acpi.addresses.facs;
    memory.write(PC_LAYOUT.acpiTables, acpi.tables);
    memory.write(PC_LAYOUT.rsdp, acpi.rsdp);
    const mpTable = buildMpTable({ cpus, address: PC_LAYOUT.mpTable, ioapicId: 0, irq0Override });
    memory.write(PC_LAYOUT.mpTable, mpTable);
    reserved.push(
      { label: "the ACPI tables", start: PC_LAYOUT.acpiTables, size: acpi.tables.length },
      { label: "the ACPI RSDP", start: PC_LAYOUT.rsdp, size: acpi.rsdp.length },
      { label: "the MP table", start: PC_LAYOUT.mpTable, size: mpTable.length },
    );
  }
  if (vm.hasIrqchip && memory.isRam(0, 0x10_0000)) installBiosState(vm);
  return { fwCfg, cmos, i8042, pciHost, testDev, acpiPm, facs, reserved };
}

/**
 * QEMU's `etc/e820` fw_cfg file: packed `{ u64 address, u64 length, u32 type }`
 * entries (type 1 RAM, 2 reserved), the same map the multiboot loader gives:
 * low RAM up to the EBDA, the EBDA and BIOS area reserved, RAM from 1 MiB, and
 * RAM above 4 GiB when there is any.
 */
export function e820Table(memory: { readonly regions: readonly { base: number; size: number }[] }): Uint8Array {
  const entries: [number, number, number][] = [[0, 0x9_fc00, 1], [0x9_fc00, 0x400, 2], [0xf_0000, 0x1_0000, 2]];
  for (const region of memory.regions) {
    const start = Math.max(region.base, 0x10_0000);
    const end = region.base + region.size;
    if (end > start) entries.push([start, end - start, 1]);
  }
  const out = new Uint8Array(entries.length * 20);
  const view = new DataView(out.buffer);
  entries.forEach(([address, length, type], i) => {
    view.setBigUint64(i * 20, BigInt(address), true);
    view.setBigUint64(i * 20 + 8, BigInt(length), true);
    view.setUint32(i * 20 + 16, type, true);
  });
  return out;
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
function installBiosState(vm: Vm): void {
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
  // struct kvm_irqchip: chip_id, pad, then struct kvm_pic_state (imr @2, irq_base @5, init_state @9, init4 @13).
  const pic = (device: "pic-master" | "pic-slave", base: number, imr: number) => {
    const state = vm.kernelDeviceState(device);
    state[8 + 2] = imr;
    state[8 + 5] = base;
    state[8 + 9] = 0;
    state[8 + 13] = 1;
    vm.setKernelDeviceState(device, state);
  };
  pic("pic-master", 0x08, 0xfa); // IRQ 0 (timer) and 2 (cascade) unmasked
  pic("pic-slave", 0x70, 0xff);
  // struct kvm_pit_state2: channel 0 = {count u32 @0, read_state @9, write_state @10, rw_mode @12, mode @13, gate @15}.
  const pit = vm.kernelDeviceState("pit");
  new DataView(pit.buffer).setUint32(0, 0, true); // 0 loads 65536: 1193182 / 65536 = 18.2 Hz
  pit[9] = 3;
  pit[10] = 3;
  pit[12] = 3; // lobyte then hibyte
  pit[13] = 3; // square wave
  pit[15] = 1;
  vm.setKernelDeviceState("pit", pit);
}
