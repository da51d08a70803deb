// The snapshot container (core/snapshot/format.ts) without KVM: sections,
// sparse memory, checksums and what loading refuses.

import assert from "node:assert/strict";
import { join } from "node:path";
import { crc32, pageRuns, SnapshotError, SnapshotFile, writeSnapshotFile } from "../core/snapshot/format.ts";

function sample(): { path: string; memory: Uint8Array } {
  const path = join(Deno.makeTempDirSync({ prefix: "hvsh-fmt-" }), "s.hvsnap");
  const memory = new Uint8Array(8 * 4096);
  memory.fill(0xab, 1 * 4096, 2 * 4096);
  memory.fill(0xcd, 5 * 4096, 7 * 4096);
  writeSnapshotFile(path, [["config", { cpus: 1 }], ["devices", { com1: { ier: 3 } }]], {
    regions: [{ bytes: memory, pages: [1, 5, 6] }],
  });
  return { path, memory };
}

Deno.test("writeSnapshotFile() and SnapshotFile.open() round-trip sections and sparse memory", () => {
  const { path, memory } = sample();
  const file = SnapshotFile.open(path);
  assert.deepEqual(file.version, { major: 1, minor: 0 });
  assert.deepEqual(file.json("config"), { cpus: 1 });
  assert.deepEqual(file.json("devices"), { com1: { ier: 3 } });
  assert.deepEqual(file.storedPages(0, 8), [1, 5, 6]);
  assert.equal(file.memoryOffset % 4096, 0);
  const back = new Uint8Array(8 * 4096);
  file.readMemoryInto([back]);
  assert.deepEqual(back, memory);
  // The zero pages are holes: the file's blocks cover the small sections and 3 pages, not 8.
  const info = Deno.statSync(path);
  assert.equal(info.size, file.memoryOffset + 8 * 4096);
  if (info.blocks !== null) assert.ok(info.blocks * 512 < file.memoryOffset + 6 * 4096, `${info.blocks} blocks`);
  assert.throws(() => file.json("nothing"), (e: unknown) => e instanceof SnapshotError && e.section === "nothing");
});

Deno.test("SnapshotFile.open() refuses another major version and a foreign file, naming the header", () => {
  const { path } = sample();
  const bytes = Deno.readFileSync(path);
  const foreign = bytes.slice();
  foreign[0] = 0x50;
  Deno.writeFileSync(path, foreign);
  assert.throws(() => SnapshotFile.open(path), /the header has magic "PVSNAP\\u0000\\n": not an hvsh snapshot/);
  const newer = bytes.slice();
  const view = new DataView(newer.buffer);
  view.setUint16(8, 2, true);
  view.setUint32(44, 0, true);
  view.setUint32(44, crc32(newer.subarray(0, 64)), true);
  Deno.writeFileSync(path, newer);
  assert.throws(() => SnapshotFile.open(path), /has format version 2\.0; this hvsh reads version 1\.x/);
});

Deno.test("SnapshotFile.open() names the section a flipped byte is in", () => {
  const { path } = sample();
  const good = Deno.readFileSync(path);
  for (const section of SnapshotFile.open(path).sections) {
    const bad = good.slice();
    const at = section.name === "memory" ? section.offset + 4096 + 1 : section.offset;
    bad[at]! ^= 1;
    Deno.writeFileSync(path, bad);
    assert.throws(
      () => SnapshotFile.open(path),
      (e: unknown) => e instanceof SnapshotError && e.section === section.name && /is corrupt/.test(e.message),
    );
  }
});

Deno.test("pageRuns() groups consecutive pages", () => {
  assert.deepEqual(pageRuns([1, 2, 3, 7, 9, 10]), [[1, 3], [7, 1], [9, 2]]);
  assert.deepEqual(pageRuns([]), []);
});
