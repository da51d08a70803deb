/**
 * Reading a kernel or initrd file with a size cap: a device such as
 * `/dev/zero` is refused, and a pipe or FIFO is read only up to the cap.
 *
 * @module
 */

/**
 * The largest kernel file {@linkcode readImageFile} reads for `Vm.load`: 1 GiB
 * (an ELF kernel with full debug information is a few hundred MiB).
 *
 * @example
 * ```ts
 * import { MAX_KERNEL_FILE_BYTES } from "./read_image_file.ts";
 * import assert from "node:assert/strict";
 *
 * assert.equal(MAX_KERNEL_FILE_BYTES, 1 << 30);
 * ```
 */
export const MAX_KERNEL_FILE_BYTES = 1 << 30;

/** Options of {@linkcode readImageFile}. */
export interface ReadImageFileOptions {
  /** What the file is, for error messages: "kernel image", "initrd". */
  what: string;
  /** Refuse a file longer than this many bytes. */
  maxBytes: number;
  /** Gives up (rejecting with the signal's reason) when aborted, e.g. by `--timeout` while a FIFO has no writer. */
  signal?: AbortSignal | undefined;
}

function sizeText(bytes: number): string {
  return bytes >= 1 << 20 && bytes % (1 << 20) === 0 ? `${bytes / (1 << 20)} MiB` : `${bytes} bytes`;
}

function raceAbort<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (signal === undefined) return promise;
  signal.throwIfAborted();
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

/**
 * Reads a whole image file, refusing directories and devices and anything
 * longer than `maxBytes` (a regular file by its size before reading; a pipe
 * or FIFO as soon as more arrives). Errors name the file and what was wrong:
 * `Cannot read initrd /dev/zero: it is a character device, not a file`.
 *
 * @param path The file.
 * @param options What it is, the size cap and an abort signal.
 * @returns The file's bytes.
 *
 * @example
 * ```ts
 * import { readImageFile } from "./read_image_file.ts";
 * import assert from "node:assert/strict";
 *
 * await assert.rejects(
 *   readImageFile("/dev/zero", { what: "initrd", maxBytes: 1 << 20 }),
 *   /Cannot read initrd \/dev\/zero: it is a character device, not a file/,
 * );
 * ```
 */
export async function readImageFile(path: string, options: ReadImageFileOptions): Promise<Uint8Array> {
  const { what, maxBytes, signal } = options;
  const fail = (why: string, cause?: unknown) => new Error(`Cannot read ${what} ${path}: ${why}`, { cause });
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (error) {
    throw fail((error as Error).message, error);
  }
  if (info.isDirectory) throw fail("it is a directory");
  if (info.isCharDevice) throw fail("it is a character device, not a file");
  if (info.isBlockDevice) throw fail("it is a block device, not a file");
  if (info.isSocket) throw fail("it is a socket, not a file");
  if (info.isFile && info.size > maxBytes) {
    throw fail(`it is ${info.size} bytes, more than the ${sizeText(maxBytes)} limit`);
  }
  let file: Deno.FsFile;
  try {
    // Opening a FIFO waits for a writer: the signal bounds that wait.
    file = await raceAbort(Deno.open(path, { read: true }), signal);
  } catch (error) {
    if (signal?.aborted && error === signal.reason) throw error;
    throw fail((error as Error).message, error);
  }
  try {
    const chunks: Uint8Array[] = [];
    let total = 0;
    for (;;) {
      const buffer = new Uint8Array(Math.min(1 << 20, maxBytes - total + 1));
      const count = await raceAbort(file.read(buffer), signal);
      if (count === null) break;
      total += count;
      if (total > maxBytes) throw fail(`it is longer than the ${sizeText(maxBytes)} limit (stopped reading there)`);
      chunks.push(buffer.subarray(0, count));
    }
    if (chunks.length === 1) return chunks[0]!;
    const bytes = new Uint8Array(total);
    let at = 0;
    for (const chunk of chunks) {
      bytes.set(chunk, at);
      at += chunk.length;
    }
    return bytes;
  } finally {
    file.close();
  }
}
