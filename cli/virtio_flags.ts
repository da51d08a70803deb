/**
 * `hvsh boot`'s virtio flags: `--disk FILE[,ro]` (repeatable: vda, vdb, …),
 * `--net tap=NAME`, `--console hvc`, `--rng`, `--vsock CID,PATH` and
 * `--virtio mmio|pci` (the transport, mmio by default).
 *
 * @module
 */

import type { Vm } from "../core/vm.ts";
import { virtioBlock } from "../devices/virtio/block.ts";
import { virtioRng } from "../devices/virtio/rng.ts";
import { virtioConsole } from "../devices/virtio/console.ts";
import { virtioNet } from "../devices/virtio/net.ts";
import { virtioVsock } from "../devices/virtio/vsock.ts";
import type { VirtioTransport } from "../devices/virtio/slots.ts";

/** What the virtio flags asked for. */
export interface VirtioBootOptions {
  disks: { path: string; readOnly: boolean }[];
  tap: string | undefined;
  console: boolean;
  rng: boolean;
  vsock: { cid: number; path: string } | undefined;
  transport: VirtioTransport;
}

/** The flags' parseArgs table. */
export const VIRTIO_FLAG_OPTIONS = {
  disk: { type: "string", multiple: true },
  net: { type: "string" },
  console: { type: "string" },
  rng: { type: "boolean", default: false },
  vsock: { type: "string" },
  virtio: { type: "string", default: "mmio" },
} as const;

/** The usage lines. */
export const VIRTIO_USAGE = `                 [--disk FILE[,ro]]... [--net tap=NAME] [--console hvc] [--rng]
                 [--vsock CID,PATH] [--virtio mmio|pci]`;

/** Parsed values of {@link VIRTIO_FLAG_OPTIONS}; `usage` builds the error to throw. */
export function parseVirtioFlags(
  values: { disk?: string[]; net?: string; console?: string; rng?: boolean; vsock?: string; virtio?: string },
  usage: (message: string) => Error,
): VirtioBootOptions {
  const disks = (values.disk ?? []).map((spec) => {
    const [path, ...flags] = spec.split(",");
    if (path === undefined || path === "") throw usage(`Invalid --disk ${JSON.stringify(spec)}: expected FILE[,ro]`);
    const unknown = flags.filter((flag) => flag !== "ro");
    if (unknown.length > 0) throw usage(`Invalid --disk ${JSON.stringify(spec)}: unknown flag ${unknown[0]} (only ro)`);
    return { path, readOnly: flags.includes("ro") };
  });
  let tap: string | undefined;
  if (values.net !== undefined) {
    const match = /^tap=([^,]{1,15})$/.exec(values.net);
    if (match === null) {
      throw usage(`Invalid --net ${JSON.stringify(values.net)}: expected tap=NAME (at most 15 bytes)`);
    }
    tap = match[1];
  }
  if (values.console !== undefined && values.console !== "hvc") {
    throw usage(`Invalid --console ${JSON.stringify(values.console)}: expected hvc`);
  }
  let vsock: VirtioBootOptions["vsock"];
  if (values.vsock !== undefined) {
    const match = /^(\d+),(.+)$/.exec(values.vsock);
    const cid = match === null ? NaN : Number(match[1]);
    if (match === null || !(cid >= 3 && cid < 0xffff_ffff)) {
      throw usage(`Invalid --vsock ${JSON.stringify(values.vsock)}: expected CID,PATH with a CID of 3 or more`);
    }
    vsock = { cid, path: match[2]! };
  }
  const transport = values.virtio ?? "mmio";
  if (transport !== "mmio" && transport !== "pci") {
    throw usage(`Invalid --virtio ${JSON.stringify(transport)}: expected mmio or pci`);
  }
  return { disks, tap, console: values.console === "hvc", rng: values.rng ?? false, vsock, transport };
}

/**
 * Adds the devices the flags asked for, in a fixed order (disks first, so
 * the first is vda). `--console hvc` writes port 0's output to stdout beside
 * COM1's; stdin stays with COM1.
 */
export function addVirtioDevices(vm: Vm, options: VirtioBootOptions): void {
  const transport = { transport: options.transport };
  for (const disk of options.disks) vm.add(virtioBlock({ path: disk.path, readOnly: disk.readOnly }), transport);
  if (options.tap !== undefined) vm.add(virtioNet({ tap: options.tap }), transport);
  if (options.console) {
    const hvc = virtioConsole();
    vm.add(hvc, transport);
    hvc.port(0).onData((bytes) => {
      let written = 0;
      while (written < bytes.length) written += Deno.stdout.writeSync(bytes.subarray(written));
    });
  }
  if (options.rng) vm.add(virtioRng(), transport);
  if (options.vsock !== undefined) vm.add(virtioVsock({ cid: options.vsock.cid, uds: options.vsock.path }), transport);
}
