/**
 * Real gdb debugging every vCPU of an SMP guest, the way a user does it:
 * `hvsh boot --kernel smp_calls.elf --cpus N --gdb 127.0.0.1:PORT --wait` as
 * a subprocess, and `gdb -batch` with the guest's ELF (built with -g) as
 * another. smp_calls (tests/guests/smp_calls.c) is shaped like
 * kvm-unit-tests' smptest: every vCPU calls `ipi_test(n)` with its number,
 * and the guest exits with status 1 (gdb: "exited with code 01") when each
 * call ran on the vCPU it names.
 *
 * Ignored (with the reason printed once) without /dev/kvm or without gdb.
 */

import assert from "node:assert/strict";
import { guest, kvmMissingReason } from "./_helpers.ts";
import { gdbBatch, gdbMissingReason, type GdbSession, printed } from "./_gdb_batch.ts";

const ignoreReason = kvmMissingReason ?? gdbMissingReason;
if (kvmMissingReason === undefined && gdbMissingReason !== undefined) {
  console.log(`gdb SMP tests ignored: ${gdbMissingReason}`);
}

/** Boots smp_calls.elf with `cpus` vCPUs held for gdb, runs gdb with `commands`, and waits for both. */
async function debugSmp(cpus: number, commands: string[]): Promise<GdbSession> {
  return await gdbBatch(await guest("smp_calls.elf"), ["--cpus", String(cpus)], commands);
}

for (const cpus of [2, 3]) {
  Deno.test({
    name:
      `gdb with ${cpus} vCPUs: break ipi_test is hit on every vCPU with its n; thread 2 + stepi steps vCPU 1 only; print smp_id() runs on it; delete + continue exits with code 01`,
    ignore: ignoreReason !== undefined,
    async fn() {
      const more: string[] = [];
      for (let n = 2; n < cpus; n++) more.push("continue", "print n");
      const out = await debugSmp(cpus, [
        "break ipi_test",
        "continue",
        "print n", // vCPU 0's call
        "continue",
        "print n", // vCPU 1's call: gdb has switched to thread 2
        "info threads",
        "thread 1",
        "print/x $pc",
        "thread 2",
        "print/x $pc",
        "stepi",
        "print/x $pc",
        "thread 1",
        "print/x $pc",
        "thread 2",
        "print smp_id()",
        "print n",
        ...more,
        "delete",
        "continue",
      ]);
      const hits = [...out.gdb.matchAll(/Thread (\d+) hit Breakpoint 1, ipi_test \(n=(?:n@entry=)?(\d+)\)/g)]
        .map((m) => [Number(m[1]), Number(m[2])]);
      assert.deepEqual(hits, Array.from({ length: cpus }, (_, n) => [n + 1, n]), out.gdb + out.gdbErrors);
      assert.match(out.gdb, /\[Switching to Thread 2\]/, "gdb follows the stop to thread 2");
      for (let n = 0; n < cpus; n++) {
        assert.match(out.gdb, new RegExp(`^[* ] +${n + 1} +Thread ${n + 1} \\(vCPU ${n} \\(long mode\\)\\)`, "m"));
      }
      const values = printed(out.gdb);
      const [n0, n1, thread1Pc, thread2Pc, steppedPc, thread1PcAfter, smpId, n1Again, ...rest] = values;
      assert.equal(n0, "0");
      assert.equal(n1, "1");
      assert.notEqual(thread2Pc, thread1Pc, "each thread has its own registers");
      assert.equal(BigInt(steppedPc!), BigInt(thread2Pc!) + 1n, "stepi ran thread 2's push rbp");
      assert.equal(thread1PcAfter, thread1Pc, "thread 1 did not move while thread 2 stepped");
      assert.equal(smpId, "1", "the inferior call ran on vCPU 1");
      assert.equal(n1Again, "1");
      assert.deepEqual(rest, Array.from({ length: cpus - 2 }, (_, i) => String(i + 2)));
      assert.match(out.gdb, /\[Inferior 1 \(Remote target\) exited with code 01\]/);
      assert.doesNotMatch(out.gdb + out.gdbErrors, /SIGILL|SIGSEGV|internal error|emulation failure/);
      assert.match(out.guest, new RegExp(`^found ${cpus} cpus\n`));
      assert.match(out.guest, new RegExp(`nipis ${cpus}\n$`));
      assert.doesNotMatch(out.guest, /wrong cpu/);
      assert.equal(out.code, 1, "hvsh exits with the guest's status, (0 << 1) | 1");
    },
  });
}

Deno.test({
  name: "gdb: with scheduler-locking on, finish on thread 2 runs only that thread (vCont;c:2), thread 1 stays put",
  ignore: ignoreReason !== undefined,
  async fn() {
    const out = await debugSmp(2, [
      "break ipi_test",
      "continue",
      "continue",
      "delete",
      // With scheduler locking, only thread 2 runs: it finishes ipi_test and parks; vCPU 0 waits for it.
      "set scheduler-locking on",
      "thread 1",
      "print/x $pc",
      "thread 2",
      "finish",
      "thread 1",
      "print/x $pc",
      "set scheduler-locking replay",
      "continue",
    ]);
    const [before, after] = printed(out.gdb);
    assert.equal(after, before, "thread 1 stayed stopped while thread 2 ran to its caller");
    assert.match(out.gdb, /ap_main \(\) at .*smp_calls\.c/);
    assert.match(out.gdb, /\[Inferior 1 \(Remote target\) exited with code 01\]/);
    assert.equal(out.code, 1);
  },
});
