// core/kvm/ioctls.ts against this host's <linux/kvm.h>: a C program prints
// every ioctl number and capability the table names, from the kernel's own
// macros. Ignored (with the reason) where gcc or the header is missing.

import assert from "node:assert/strict";
import { join } from "node:path";
import { KVM, KVM_CAP } from "../core/kvm/ioctls.ts";

function missing(): string | undefined {
  try {
    Deno.statSync("/usr/include/linux/kvm.h");
  } catch {
    return "no /usr/include/linux/kvm.h";
  }
  try {
    new Deno.Command("gcc", { args: ["--version"], stdout: "null", stderr: "null" }).outputSync();
  } catch {
    return "no gcc";
  }
  return undefined;
}

const reason = missing();
if (reason !== undefined) console.log(`ioctl number test ignored: ${reason}`);

Deno.test({
  name: "KVM and KVM_CAP numbers equal <linux/kvm.h>'s macros",
  ignore: reason !== undefined,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "hvsh-ioctl-" });
    try {
      const lines = [
        ...Object.keys(KVM).map((name) => `printf("KVM.${name} %lu\\n", (unsigned long)KVM_${name});`),
        ...Object.keys(KVM_CAP).map((name) => `printf("KVM_CAP.${name} %lu\\n", (unsigned long)KVM_CAP_${name});`),
      ];
      const source = `#include <stdio.h>\n#include <linux/kvm.h>\nint main(void) {\n${
        lines.join("\n")
      }\nreturn 0;\n}\n`;
      await Deno.writeTextFile(join(dir, "ioctls.c"), source);
      const build = await new Deno.Command("gcc", { args: ["-o", join(dir, "ioctls"), join(dir, "ioctls.c")] })
        .output();
      assert.equal(build.code, 0, new TextDecoder().decode(build.stderr));
      const out = await new Deno.Command(join(dir, "ioctls")).output();
      const fromC = Object.fromEntries(
        new TextDecoder().decode(out.stdout).trim().split("\n").map((line) => line.split(" ")).map((
          [k, v],
        ) => [k, Number(v)]),
      );
      const ours = Object.fromEntries([
        ...Object.entries(KVM).map(([name, value]) => [`KVM.${name}`, value]),
        ...Object.entries(KVM_CAP).map(([name, value]) => [`KVM_CAP.${name}`, value]),
      ]);
      assert.deepEqual(ours, fromC);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
