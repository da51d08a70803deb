// The layering of ../shared/DESIGN.md, checked on the source: core/kvm, then
// the machine, then loaders, devices and the platform, then the debugger, then
// gdb, then the Vm facade, then the REPL and CLI. No module imports one from a
// higher layer, no import cycle exists, and only core/kvm/_ffi.ts opens a
// native library.

import assert from "node:assert/strict";
import { dirname, join, normalize, relative } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = normalize(join(dirname(fileURLToPath(import.meta.url)), ".."));

/** Source modules of the product (tests and guests excluded). */
async function sourceModules(): Promise<string[]> {
  const out: string[] = [];
  async function walk(dir: string): Promise<void> {
    for await (const entry of Deno.readDir(join(ROOT, dir))) {
      const path = dir === "" ? entry.name : `${dir}/${entry.name}`;
      if (entry.isDirectory) {
        if (!["node_modules", "tests", ".git", "bench"].includes(path) && !path.startsWith(".")) await walk(path);
      } else if (path.endsWith(".ts") && !path.endsWith("_test.ts")) {
        out.push(path);
      }
    }
  }
  await walk("");
  return out.sort();
}

/** The relative modules a source file imports or re-exports (static imports, type-only ones included). */
function importsOf(path: string, source: string): string[] {
  const code = source.split("\n").filter((line) => !/^\s*(\*|\/\/|\/\*)/.test(line)).join("\n");
  const found: string[] = [];
  for (const match of code.matchAll(/(?:^|\n)\s*(?:import|export)\s+(?:type\s+)?[^;]*?from\s+"(\.[^"]+)"/g)) {
    found.push(relative(ROOT, normalize(join(ROOT, dirname(path), match[1]!))));
  }
  return found;
}

const MACHINE = new Set([
  "core/machine.ts",
  "core/exits.ts",
  "core/smp.ts",
  "core/vcpu.ts",
  "core/vcpu_thread.ts",
  "core/memory.ts",
  "core/machine_state.ts",
  "core/stop.ts",
  "core/cpuid.ts",
  "core/hex.ts",
  "core/x86.ts",
]);
const LAYERS = [
  "core/kvm",
  "machine",
  "loaders, devices, platform",
  "debug, snapshots",
  "gdb",
  "Vm facade",
  "REPL, CLI, scripts",
];

function layerOf(path: string): number {
  if (path.startsWith("core/kvm/")) return 0;
  if (MACHINE.has(path)) return 1;
  if (/^(devices|core\/loader|core\/firmware)\//.test(path) || path === "core/platform.ts") return 2;
  if (path === "core/bus_dispatch.ts") return 2;
  if (path.startsWith("core/debug/") || path.startsWith("core/snapshot/")) return 3;
  if (path.startsWith("core/gdb/")) return 4;
  if (path === "core/vm.ts" || path === "mod.ts") return 5;
  if (path.startsWith("core/")) throw new Error(`${path} has no layer: add it to tests/layering_test.ts`);
  return 6;
}

const modules = new Map<string, string[]>();
for (const path of await sourceModules()) modules.set(path, importsOf(path, await Deno.readTextFile(join(ROOT, path))));

Deno.test("no module imports one from a higher layer (core/kvm < machine < devices < debug < gdb < Vm < REPL)", () => {
  const upward: string[] = [];
  for (const [path, imports] of modules) {
    for (const target of imports) {
      if (modules.has(target) && layerOf(target) > layerOf(path)) {
        upward.push(`${path} (${LAYERS[layerOf(path)]}) imports ${target} (${LAYERS[layerOf(target)]})`);
      }
    }
  }
  assert.deepEqual(upward, []);
});

Deno.test("the REPL imports only the public API (mod.ts) and its own modules, never cli/ or scripts/", () => {
  const outside: string[] = [];
  for (const [path, imports] of modules) {
    if (!path.startsWith("repl/")) continue;
    for (const target of imports) {
      if (target !== "mod.ts" && !target.startsWith("repl/")) outside.push(`${path} imports ${target}`);
    }
  }
  assert.deepEqual(outside, []);
});

Deno.test("the source modules have no import cycle", () => {
  const state = new Map<string, "open" | "done">();
  const cycles: string[] = [];
  const visit = (path: string, trail: string[]) => {
    if (state.get(path) === "done") return;
    if (state.get(path) === "open") {
      cycles.push([...trail.slice(trail.indexOf(path)), path].join(" -> "));
      return;
    }
    state.set(path, "open");
    for (const target of modules.get(path) ?? []) if (modules.has(target)) visit(target, [...trail, path]);
    state.set(path, "done");
  };
  for (const path of modules.keys()) visit(path, []);
  assert.deepEqual(cycles, []);
});

Deno.test("only core/kvm/_ffi.ts opens a native library, and kvm_run is read only in core/kvm/exit.ts", async () => {
  const dlopen: string[] = [];
  const runOffsets: string[] = [];
  for (const path of modules.keys()) {
    const source = await Deno.readTextFile(join(ROOT, path));
    if (source.includes("Deno.dlopen(") && path !== "core/kvm/_ffi.ts") dlopen.push(path);
    if (/\brun(8|32|View)\b|KVM_RUN_LAYOUT|KvmRunArea/.test(source) && !path.startsWith("core/kvm/")) {
      runOffsets.push(path);
    }
  }
  assert.deepEqual(dlopen, []);
  assert.deepEqual(runOffsets, []);
});
