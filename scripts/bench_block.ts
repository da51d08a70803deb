/**
 * `./hvsh bench --only block`: sequential virtio-blk reads of 4 KiB and
 * 64 KiB by our own tiny guest driver (tests/guests/virtio.c, `bench SIZE
 * COUNT`: one request in flight, the used ring polled), under `hvsh boot
 * --disk` and under QEMU's microvm with its virtio-mmio block device, the
 * same guest and image, in the same run.
 *
 * Both sides are whole processes; each round times a run of COUNT reads and
 * a run of 0 reads (boot, device set-up, exit) and keeps the difference, so
 * start-up costs cancel and what is left is the requests. Throughput is
 * SIZE × COUNT over that difference; latency is the difference over COUNT.
 * Rounds alternate hvsh and QEMU so that load drifts hit both alike.
 *
 * @module
 */

/** One side's medians for one request size. */
export interface BlockRow {
  size: number;
  count: number;
  hvshMiBs: number;
  hvshUs: number;
  qemuMiBs: number | undefined;
  qemuUs: number | undefined;
}

/** What the block bench needs from bench.ts. */
export interface BlockBenchTools {
  launcher: string;
  guest: string;
  median(values: readonly number[]): number;
  run(command: string, args: string[], okCodes: readonly number[]): Promise<{ stdout: string }>;
  onPath(command: string): Promise<boolean>;
}

async function timed(tools: BlockBenchTools, command: string, args: string[]): Promise<number> {
  const t0 = performance.now();
  const { stdout } = await tools.run(command, args, [1]);
  const ms = performance.now() - t0;
  if (!stdout.includes("bench done")) {
    throw new Error(`${command}: the guest did not finish: ${JSON.stringify(stdout)}`);
  }
  return ms;
}

/** Runs the block rows: `rounds` rounds per size. */
export async function benchBlock(
  tools: BlockBenchTools,
  rounds: number,
): Promise<{ rows: BlockRow[]; notes: string[] }> {
  const notes: string[] = [];
  const image = await Deno.makeTempFile({ prefix: "hvsh-bench-", suffix: ".img" });
  try {
    // 32 MiB of random bytes, read once first so both sides read from the page cache.
    const bytes = new Uint8Array(32 << 20);
    for (let at = 0; at < bytes.length; at += 65536) crypto.getRandomValues(bytes.subarray(at, at + 65536));
    await Deno.writeFile(image, bytes);
    const hvsh = (append: string) => [
      "boot",
      "--kernel",
      tools.guest,
      "--append",
      append,
      "--disk",
      `${image},ro`,
    ];
    const qemuPresent = await tools.onPath("qemu-system-x86_64");
    if (!qemuPresent) notes.push("qemu-system-x86_64 not on PATH: QEMU columns skipped");
    const qemu = (append: string) => [
      "-M",
      "microvm",
      "-enable-kvm",
      "-m",
      "64M",
      "-nographic",
      "-no-reboot",
      "-kernel",
      tools.guest,
      "-append",
      append,
      "-device",
      "isa-debug-exit,iobase=0xf4,iosize=0x04",
      "-global",
      "virtio-mmio.force-legacy=false",
      "-drive",
      `id=d0,file=${image},format=raw,if=none,readonly=on`,
      "-device",
      "virtio-blk-device,drive=d0",
    ];
    const rows: BlockRow[] = [];
    // 4 KiB: ~2000 requests ≈ 1 s here; 64 KiB: fewer, as each moves 16x the bytes.
    for (const [size, count] of [[4096, 2000], [65536, 500]] as const) {
      const hvshPer: number[] = [];
      const qemuPer: number[] = [];
      await timed(tools, tools.launcher, hvsh(`bench ${size} 1`)); // warm-up
      if (qemuPresent) await timed(tools, "qemu-system-x86_64", qemu(`bench ${size} 1`));
      for (let round = 0; round < rounds; round++) {
        const full = await timed(tools, tools.launcher, hvsh(`bench ${size} ${count}`));
        const empty = await timed(tools, tools.launcher, hvsh(`bench ${size} 0`));
        hvshPer.push((full - empty) / count);
        if (qemuPresent) {
          const qFull = await timed(tools, "qemu-system-x86_64", qemu(`bench ${size} ${count}`));
          const qEmpty = await timed(tools, "qemu-system-x86_64", qemu(`bench ${size} 0`));
          qemuPer.push((qFull - qEmpty) / count);
        }
      }
      const mibs = (ms: number) => size / (1 << 20) / (ms / 1000);
      const hvshMs = tools.median(hvshPer);
      const qemuMs = qemuPresent ? tools.median(qemuPer) : undefined;
      rows.push({
        size,
        count,
        hvshMiBs: mibs(hvshMs),
        hvshUs: hvshMs * 1000,
        qemuMiBs: qemuMs === undefined ? undefined : mibs(qemuMs),
        qemuUs: qemuMs === undefined ? undefined : qemuMs * 1000,
      });
    }
    return { rows, notes };
  } finally {
    await Deno.remove(image).catch(() => {});
  }
}

/** The table bench.ts prints. */
export function formatBlockTable(result: { rows: BlockRow[]; notes: string[] }, rounds: number): string {
  const lines = [
    `virtio-blk sequential reads, one request in flight (medians of ${rounds} rounds; bar: hvsh ≥ QEMU's MiB/s)`,
    "  size     count   hvsh MiB/s  hvsh µs/req   QEMU MiB/s  QEMU µs/req   hvsh/QEMU",
  ];
  for (const row of result.rows) {
    const ratio = row.qemuMiBs === undefined ? "-" : (row.hvshMiBs / row.qemuMiBs).toFixed(2);
    const verdict = row.qemuMiBs === undefined ? "" : row.hvshMiBs >= row.qemuMiBs ? " PASS" : " MISS";
    lines.push(
      `  ${`${row.size / 1024} KiB`.padEnd(8)} ${String(row.count).padStart(5)}   ${
        row.hvshMiBs.toFixed(1).padStart(10)
      }  ${row.hvshUs.toFixed(1).padStart(11)}   ${row.qemuMiBs?.toFixed(1).padStart(10) ?? "         -"}  ${
        row.qemuUs?.toFixed(1).padStart(11) ?? "          -"
      }   ${ratio.padStart(9)}${verdict}`,
    );
  }
  for (const note of result.notes) lines.push(`  (${note})`);
  lines.push(
    "  (guest: tests/guests/virtio.elf `bench SIZE COUNT`; each figure is (run of COUNT reads − run of 0) / COUNT)",
  );
  return lines.join("\n");
}
