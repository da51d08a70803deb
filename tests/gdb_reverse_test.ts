/**
 * Real gdb running a guest backwards, the way a user does it:
 * `hvsh boot --kernel rloop.elf --gdb 127.0.0.1:PORT --wait --record` as a
 * subprocess and `gdb -batch` with the guest's ELF (built with -g) as
 * another. rloop (tests/guests/rloop.c) adds to `total`, calls `tick(i)` and
 * prints a line per round. gdb sends `bs`/`bc` for reverse-stepi and
 * reverse-continue (hvsh offers ReverseStep+/ReverseContinue+) and builds
 * reverse-finish from them.
 *
 * Ignored (with the reason printed once) without /dev/kvm or without gdb.
 */

import assert from "node:assert/strict";
import { guest, kvmMissingReason } from "./_helpers.ts";
import { gdbBatch, gdbMissingReason, type GdbSession, printed } from "./_gdb_batch.ts";

const ignoreReason = kvmMissingReason ?? gdbMissingReason;
if (kvmMissingReason === undefined && gdbMissingReason !== undefined) {
  console.log(`gdb reverse tests ignored: ${gdbMissingReason}`);
}

/** Boots rloop.elf held for gdb (recording with `record`), runs gdb with `commands`, and waits for both. */
async function debugRloop(commands: string[], record = true): Promise<GdbSession> {
  return await gdbBatch(await guest("rloop.elf"), record ? ["--record"] : [], commands, 90_000);
}

/** gdb commands that stop rloop at tick's third call, tick(2), recording since its first instruction. */
const TO_THIRD_TICK = ["break tick", "continue", "continue", "continue"];

const PLAIN_OUTPUT = "tick 0 total=1\ntick 1 total=3\ntick 2 total=8\ntick 3 total=18\ntick 4 total=35\n" +
  "rloop done total=35\n";

Deno.test({
  name:
    "gdb: reverse-continue from the third hit of break tick lands on the second with memory as then; reverse-stepi restores the previous registers; continue reaches the same exit and output",
  ignore: ignoreReason !== undefined,
  async fn() {
    const out = await debugRloop([
      ...TO_THIRD_TICK,
      "print i",
      "print total",
      "reverse-continue",
      "print i",
      "print total",
      "print ticks",
      "print/x $pc",
      "print/x $rsp",
      "reverse-stepi",
      "print/x $pc",
      "print/x $rsp",
      "print $rdi",
      "stepi",
      "print/x $pc",
      "continue",
      "print i",
      "print ticks",
      "delete",
      "continue",
    ]);
    const all = out.gdb + out.gdbErrors;
    const hits = [...out.gdb.matchAll(/Breakpoint 1, tick \(i=(?:i@entry=)?(\d+)\)/g)].map((m) => Number(m[1]));
    assert.deepEqual(hits, [0, 1, 2, 1, 1, 2], all); // the stepi onto tick reports its breakpoint too
    const [
      i3,
      total3,
      i2,
      total2,
      ticks2,
      pcAtTick,
      rspAtTick,
      pcBefore,
      rspBefore,
      rdiBefore,
      pcAfter,
      iAgain,
      ticks3,
    ] = printed(out.gdb);
    assert.equal(i3, "2");
    assert.equal(total3, "8");
    assert.equal(i2, "1", all);
    assert.equal(total2, "3", "total as it was at the second hit");
    assert.equal(ticks2, "{1, 0, 0, 0, 0}", "ticks[1] not written yet at the second hit");
    assert.notEqual(pcBefore, pcAtTick, "reverse-stepi moved back");
    assert.equal(BigInt(rspBefore!), BigInt(rspAtTick!) + 8n, "before the call pushed its return address");
    assert.equal(rdiBefore, "1");
    assert.equal(pcAfter, pcAtTick, "stepi goes forward to the same place");
    assert.equal(iAgain, "2");
    assert.equal(ticks3, "{1, 3, 0, 0, 0}");
    assert.match(out.gdb, /\[Inferior 1 \(Remote target\) exited with code 01\]/, all);
    assert.equal(out.code, 1);
    assert.equal(out.guest, PLAIN_OUTPUT, "the guest printed each line once");
  },
});

Deno.test({
  name:
    "gdb: watch + reverse-continue finds who last wrote it; reverse-finish goes back to the call; the start of the history ends a reverse-continue",
  ignore: ignoreReason !== undefined,
  async fn() {
    const out = await debugRloop([
      ...TO_THIRD_TICK,
      "delete",
      "watch total",
      "reverse-continue",
      "print total",
      "x/i $pc",
      "delete",
      "break tick",
      "continue",
      "delete",
      "stepi 3",
      "reverse-finish",
      "x/i $pc",
      "delete",
      "reverse-continue",
      "print/x $pc",
      "info symbol $pc",
      "continue",
    ]);
    const all = out.gdb + out.gdbErrors;
    assert.match(out.gdb, /Hardware watchpoint 2: total\s+Old value = 8\s+New value = 3/, all);
    const values = printed(out.gdb);
    assert.equal(values[0], "3", "before the write");
    assert.match(out.gdb, /=> 0x[0-9a-f]+ <main\+46>:\s+mov\s+%rax,0x[0-9a-f]+\(%rip\)\s+# 0x[0-9a-f]+ <total>/, all);
    assert.match(out.gdb, /=> 0x[0-9a-f]+ <main\+56>:\s+call\s+0x[0-9a-f]+ <tick>/, all);
    assert.match(out.gdb, /No more reverse-execution history\./, all);
    assert.match(out.gdb, /_start in section \.text/, all);
    assert.equal(out.code, 1);
    assert.equal(out.guest, PLAIN_OUTPUT);
  },
});

Deno.test({
  name: "gdb: reverse-stepi without a recording says why, and the guest goes on",
  ignore: ignoreReason !== undefined,
  async fn() {
    const out = await debugRloop(["stepi", "reverse-stepi", "monitor record status", "continue"], false);
    const all = out.gdb + out.gdbErrors;
    assert.match(all, /hvsh: Cannot run vm\d+ backwards: it is not being recorded/, all);
    assert.match(all, /not recording/, all);
    assert.equal(out.code, 1);
    assert.equal(out.guest, PLAIN_OUTPUT);
  },
});
