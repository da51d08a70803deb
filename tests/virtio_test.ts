// virtio devices driven by a tiny guest of our own (tests/guests/virtio.c):
// block requests, the entropy device, and the hostile cases, which must leave
// hvsh running and the device in NEEDS_RESET with one log line.

import assert from "node:assert/strict";
import { Vm, withKernelParameters } from "../core/vm.ts";
import { findTinyKernel } from "../scripts/build_linux.ts";
import { virtioBlock } from "../devices/virtio/block.ts";
import { virtioRng } from "../devices/virtio/rng.ts";
import { VIRTIO_STATUS } from "../devices/virtio/device.ts";
import { guest, kvmAvailable, kvmMissingReason } from "./_helpers.ts";

const ignore = !kvmAvailable;
if (ignore) console.log(`virtio guest tests ignored: ${kvmMissingReason}`);

const SIGNATURE = [0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04];

async function diskImage(): Promise<string> {
  const path = await Deno.makeTempFile({ suffix: ".img" });
  const bytes = new Uint8Array(1 << 20);
  bytes.set(SIGNATURE);
  await Deno.writeFile(path, bytes);
  return path;
}

async function runGuest(
  mode: string,
  add: (vm: Vm, log: (line: string) => void) => void,
): Promise<{ output: string; logs: string[]; vm: Vm; code: number | undefined }> {
  const vm = await Vm.create({ memory: "64M" });
  const logs: string[] = [];
  add(vm, (line) => logs.push(line));
  await vm.load(await guest("virtio.elf"), { cmdline: mode });
  const stop = await vm.run({ timeout: 60_000 });
  assert.equal(stop.reason, "exit", `guest ${mode} stopped: ${stop.reason} output ${vm.serial.output}`);
  return { output: vm.serial.output, logs, vm, code: (stop as { code?: number }).code };
}

Deno.test({
  name: "virtioBlock() serves GET_ID, reads, writes and flush from a tiny guest's driver",
  ignore,
  async fn() {
    const path = await diskImage();
    try {
      const { output, vm, code } = await runGuest("blk", (vm, log) => {
        vm.add(virtioBlock({ path, serial: "hvsh-disk" }), { log });
      });
      try {
        assert.equal(output, "id=hvsh-disk s0=deadbeef01020304 rw=ok flush=0 done\n");
        assert.equal(code, 1);
        const written = (await Deno.readFile(path)).subarray(8 * 512, 9 * 512);
        assert.deepEqual([...written.subarray(0, 4)], [3, 10, 17, 24]); // i * 7 + 3
      } finally {
        await vm.close();
      }
    } finally {
      await Deno.remove(path);
    }
  },
});

Deno.test({
  name: "virtioBlock() with event index and indirect descriptors negotiated; an overlay leaves the image untouched",
  ignore,
  async fn() {
    const path = await diskImage();
    try {
      const before = await Deno.readFile(path);
      const { output, vm } = await runGuest("blk-ev", (vm, log) => {
        vm.add(virtioBlock({ path, overlay: true, serial: "ov" }), { log });
      });
      try {
        assert.equal(output, "id=ov s0=deadbeef01020304 rw=ok flush=0 done\n");
        const slot = vm.virtioDevices[0]!;
        assert.equal(slot.core.driverFeatures & (3n << 28n), 3n << 28n);
        const overlay = slot.device.state.overlay as { kind: string; chunks: Record<string, string> };
        assert.equal(overlay.kind, "memory");
        assert.deepEqual(Object.keys(overlay.chunks), ["1"]); // sector 8 lives in the second 4 KiB chunk
        assert.deepEqual(await Deno.readFile(path), before);
      } finally {
        await vm.close();
      }
    } finally {
      await Deno.remove(path);
    }
  },
});

Deno.test({
  name: "virtioBlock({ readOnly }) refuses the guest's write with an I/O error status",
  ignore,
  async fn() {
    const path = await diskImage();
    try {
      const { output, vm } = await runGuest("blk", (vm, log) => {
        vm.add(virtioBlock({ path, readOnly: true, serial: "ro" }), { log });
      });
      try {
        assert.equal(output, "id=ro s0=deadbeef01020304 rw=bad flush=0 done\n");
        assert.equal((vm.virtioDevices[0]!.device as ReturnType<typeof virtioBlock>).counters.errors, 1);
      } finally {
        await vm.close();
      }
    } finally {
      await Deno.remove(path);
    }
  },
});

Deno.test({
  name: "virtioRng() fills the guest's buffer from the host",
  ignore,
  async fn() {
    const { output, vm } = await runGuest("rng", (vm, log) => void vm.add(virtioRng(), { log }));
    try {
      assert.equal(output, "rng=64 nonzero=yes\n");
    } finally {
      await vm.close();
    }
  },
});

for (
  const [mode, reason, statusByte] of [
    ["loop", /descriptor chain from 0 has more than 8 descriptors: a loop/, "ff"],
    ["oob", /descriptor 1 buffer at 0xfffff000 \(4096 bytes\) is not in guest RAM/, "ff"],
    ["qsize", /queue size 6 is not a power of two/, "ff"],
    ["early", /queue 0 notified before DRIVER_OK/, "ff"],
  ] as const
) {
  Deno.test({
    name:
      `virtio hostile guest (${mode}): the device goes NEEDS_RESET with one log line, hvsh runs on, a reset recovers`,
    ignore,
    async fn() {
      const path = await diskImage();
      try {
        const before = await Deno.readFile(path);
        const { output, logs, vm } = await runGuest(mode, (vm, log) => void vm.add(virtioBlock({ path }), { log }));
        try {
          const [first, second] = output.split("\n");
          const status = parseInt(first!.match(/^status=([0-9a-f]+)/)![1]!, 16);
          assert.equal(status & VIRTIO_STATUS.needsReset, VIRTIO_STATUS.needsReset, output);
          assert.match(first!, new RegExp(`status-byte=${statusByte}$`));
          assert.equal(second, "recovered s0=deadbeef01020304");
          assert.equal(logs.length, 1, logs.join("\n"));
          assert.match(logs[0]!, /^hvsh: virtio-block vda: device needs reset: /);
          assert.match(logs[0]!, reason);
          assert.deepEqual(await Deno.readFile(path), before);
          assert.equal(vm.state, "stopped");
        } finally {
          await vm.close();
        }
      } finally {
        await Deno.remove(path);
      }
    },
  });
}

Deno.test({
  name: "Vm.virtioKernelParameters() announces each virtio-mmio device as size@base:irq",
  ignore,
  async fn() {
    const path = await diskImage();
    await using vm = await Vm.create({ memory: "64M" });
    try {
      vm.add(virtioBlock({ path }));
      vm.add(virtioRng());
      vm.add(virtioRng(), { transport: "pci" });
      assert.deepEqual(vm.virtioKernelParameters(), [
        "virtio_mmio.device=512@0xfeb00000:5",
        "virtio_mmio.device=512@0xfeb00200:10",
      ]);
      assert.deepEqual(vm.virtioDevices.map((slot) => `${slot.name} ${slot.transport} ${slot.gsi}`), [
        "vda mmio 5",
        "rng0 mmio 10",
        "rng1 pci 11",
      ]);
    } finally {
      await Deno.remove(path);
    }
  },
});

Deno.test("withKernelParameters() appends the parameters a command line lacks, before a ` -- `", () => {
  const mmio = "virtio_mmio.device=512@0xfeb00000:5";
  assert.equal(withKernelParameters("", [mmio]), mmio);
  assert.equal(withKernelParameters("console=hvc0 ", [mmio]), `console=hvc0 ${mmio}`);
  assert.equal(withKernelParameters(`quiet ${mmio}`, [mmio]), `quiet ${mmio}`);
  assert.equal(withKernelParameters("quiet -- init-arg", [mmio]), `quiet ${mmio} -- init-arg`);
  assert.equal(withKernelParameters("-- init-arg", [mmio]), `${mmio} -- init-arg`);
  assert.equal(withKernelParameters("quiet", []), "quiet");
});

const tinyKernel = await findTinyKernel();
Deno.test({
  name: "loading a Linux kernel appends vm.virtioKernelParameters() to its command line, once across a reload",
  ignore: ignore || tinyKernel === undefined,
  async fn() {
    const path = await diskImage();
    await using vm = await Vm.create({ memory: "64M" });
    try {
      vm.add(virtioBlock({ path }));
      vm.add(virtioRng(), { transport: "pci" });
      const cmdlineOf = (image: unknown) => (image as { linux: { cmdline: { text: string } } }).linux.cmdline.text;
      const image = await vm.loadLinux({ kernel: tinyKernel!.bzImage, cmdline: "console=hvc0 -- x" });
      assert.equal(cmdlineOf(image), "console=hvc0 virtio_mmio.device=512@0xfeb00000:5 -- x");
      const again = await vm.load(tinyKernel!.bzImage, { cmdline: cmdlineOf(image) });
      assert.equal(cmdlineOf(again), cmdlineOf(image));
    } finally {
      await Deno.remove(path);
    }
  },
});

Deno.test({
  name: "virtio-pci: a modern function on the host bridge, its capabilities, BAR sizing and moving, INTx line",
  ignore,
  async fn() {
    await using vm = await Vm.create({ memory: "64M" });
    const slot = vm.add(virtioRng(), { transport: "pci" });
    const pci = vm.platform!.pciHost;
    const config = (register: number, size = 4) => {
      pci.write(0, 4, 0x8000_0000 | (slot.pci!.device << 11) | (register & 0xfc));
      return pci.read(4 + (register & 3), size);
    };
    const setConfig = (register: number, value: number) => {
      pci.write(0, 4, 0x8000_0000 | (slot.pci!.device << 11) | register);
      pci.write(4, 4, value);
    };
    assert.equal(config(0x00), 0x1044_1af4); // virtio vendor, 0x1040 + entropy (4)
    assert.equal(config(0x3c) & 0xffff, 0x0100 | slot.gsi); // INTA#, the line hvsh gave
    const caps: number[] = [];
    for (let at = config(0x34) & 0xff; at !== 0; at = (config(at) >> 8) & 0xff) caps.push((config(at) >> 24) & 0xff);
    assert.deepEqual(caps, [1, 3, 4, 2]); // common, ISR, device, notify
    const bar = config(0x10);
    assert.equal(bar, 0xfea0_0000);
    // The common configuration answers through the BAR: num_queues at offset 18.
    assert.equal(vm.mmio.find(BigInt(bar) + 18n)!.device.read(18n, 2), 1n);
    setConfig(0x10, 0xffff_ffff);
    assert.equal(config(0x10), 0xffff_c000); // 16 KiB
    assert.equal(vm.mmio.find(BigInt(bar)), undefined); // no window while sizing
    setConfig(0x10, 0xfe80_0000);
    assert.equal(slot.pci!.function.barAddress, 0xfe80_0000);
    assert.notEqual(vm.mmio.find(0xfe80_0000n), undefined);
  },
});

Deno.test({
  name: "the REPL's .devices listing names each virtio device, its window, line and queues",
  ignore,
  async fn() {
    const { formatDevices } = await import("../repl/devices_view.ts");
    await using vm = await Vm.create({ memory: "64M" });
    vm.add(virtioRng());
    const text = formatDevices(vm);
    assert.match(text, /rng0 +virtio-rng, mmio 0xfeb00000, IRQ 5, reset/);
    assert.match(text, /queue 0: size 64\/64, off/);
    assert.match(text, /0xfeb00000 +0x200 +virtio-mmio rng0/);
  },
});
