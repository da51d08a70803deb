/**
 * `.console`: the REPL's terminal attached to the guest's serial port until
 * Ctrl-]. The terminal stays in the raw mode readline keeps it in; only
 * readline's key handling is unhooked while the guest owns the keys, so
 * after Ctrl-] the prompt edits, completes, recalls history and takes
 * Ctrl-C exactly as before (leaving the terminal cooked would echo every
 * line twice and let Ctrl-C kill hvsh).
 *
 * @module
 */

import process from "node:process";
import type { Vm } from "../mod.ts";

/** Ctrl-]: telnet's and QEMU monitor's escape, hands the keys back to the REPL. */
const DETACH = 0x1d;

type Listener = (...args: unknown[]) => void;

/**
 * Runs the guest with the terminal's keys sent to its serial port until
 * Ctrl-] (or the guest stops), then gives the keys back to readline.
 */
export async function attachConsole(vm: Vm, print: (text: string) => void): Promise<void> {
  const input = process.stdin;
  print("[console attached: guest serial on this terminal; Ctrl-] returns]");
  const keypress = input.listeners("keypress") as Listener[];
  input.removeAllListeners("keypress");
  let detached = false;
  const onData = (chunk: Uint8Array | string) => {
    if (detached) return;
    const bytes = typeof chunk === "string" ? new TextEncoder().encode(chunk) : new Uint8Array(chunk);
    const at = bytes.indexOf(DETACH);
    if (at < 0) {
      vm.serial.send(bytes);
      return;
    }
    if (at > 0) vm.serial.send(bytes.subarray(0, at));
    detached = true;
    void vm.pause();
  };
  input.on("data", onData);
  try {
    await vm.run();
  } finally {
    detached = true;
    input.off("data", onData);
    for (const listener of keypress) input.on("keypress", listener);
    // readline keeps raw mode; a guest or an earlier fault may have left it cooked.
    if (input.isTTY) input.setRawMode(true);
  }
}
