// virtio-net over a real TAP device, inside a network namespace the test
// makes (`unshare -n`), attached to nothing else: frames never leave it.

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";

const script = fileURLToPath(new URL("./_net_in_namespace.ts", import.meta.url));

function namespaceMissing(): string | undefined {
  try {
    const probe = new Deno.Command("unshare", { args: ["-n", "true"], stdout: "null", stderr: "piped" }).outputSync();
    if (!probe.success) return `unshare -n failed: ${new TextDecoder().decode(probe.stderr).trim()}`;
    Deno.statSync("/dev/net/tun");
    return undefined;
  } catch (error) {
    return `cannot make a network namespace with a TAP device: ${(error as Error).message}`;
  }
}

const missing = namespaceMissing();
if (missing !== undefined) console.log(`virtio-net test ignored: ${missing}`);

Deno.test({
  name:
    "virtioNet() sends the driver's ARP request out of its TAP and delivers the kernel's reply to the receive queue",
  ignore: missing !== undefined,
  async fn() {
    const output = await new Deno.Command("unshare", {
      args: ["-n", Deno.execPath(), "run", "-A", script],
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(60_000),
    }).output();
    const stdout = new TextDecoder().decode(output.stdout).trim();
    assert.ok(output.success, `namespace script failed: ${stdout} ${new TextDecoder().decode(output.stderr)}`);
    const result = JSON.parse(stdout.split("\n").at(-1)!);
    assert.equal(result.error, undefined, stdout);
    assert.equal(result.tap, "tap0");
    assert.equal(result.to, "52:54:00:12:34:56");
    assert.equal(result.senderIp, "10.0.2.2");
    assert.equal(result.targetIp, "10.0.2.15");
    assert.ok(result.txFrames >= 1);
  },
});
