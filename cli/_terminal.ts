/**
 * `hvsh boot` on a terminal: raw mode, so each key reaches the guest at once
 * and only the guest echoes it (as with `qemu-system-x86_64 -nographic`),
 * and an escape key like QEMU's:
 *
 * | keys | does |
 * | --- | --- |
 * | Ctrl-A X | quit: hvsh exits with status 0, as QEMU does |
 * | Ctrl-A C | show where the guest is: mode, rip with its symbol, registers (QEMU's monitor `info registers`); the guest runs on |
 * | Ctrl-A H | list these keys |
 * | Ctrl-A Ctrl-A | send one Ctrl-A to the guest |
 *
 * Ctrl-C and Ctrl-] go to the guest. The terminal mode is restored on every
 * exit path: the normal end, an exception, Ctrl-A X, `Deno.exit` and the
 * `unload` event. Nothing changes when stdin is not a terminal (pipes and
 * files pass every byte, Ctrl-A included).
 *
 * @module
 */

import type { Vm } from "../core/vm.ts";
import { DISPLAY_REGISTER_ORDER } from "../core/kvm/structs.ts";

const CTRL_A = 0x01;

/** The help Ctrl-A H prints. */
export const ESCAPE_HELP = [
  "Ctrl-A X    quit (exit status 0)",
  "Ctrl-A C    show the vCPU's mode, rip and registers (the guest runs on)",
  "Ctrl-A H    this help",
  "Ctrl-A Ctrl-A  send Ctrl-A to the guest",
].join("\r\n");

/** What the escape keys do, injected so a test can drive {@link EscapeFilter} without a terminal. */
export interface EscapeActions {
  quit(): void;
  status(): void;
  help(): void;
}

/**
 * Splits terminal input into bytes for the guest and escape commands.
 * `filter` returns what goes to the guest; a Ctrl-A at the end of one chunk
 * pairs with the first byte of the next.
 *
 * @example
 * ```ts
 * import { EscapeFilter } from "./_terminal.ts";
 * const seen: string[] = [];
 * const filter = new EscapeFilter({ quit: () => seen.push("quit"), status: () => {}, help: () => {} });
 * filter.filter(new Uint8Array([0x61, 0x01, 0x01, 0x62])); // [0x61, 0x01, 0x62]
 * filter.filter(new Uint8Array([0x01]));
 * filter.filter(new TextEncoder().encode("x")); // [] and seen = ["quit"]
 * ```
 */
export class EscapeFilter {
  #pendingEscape = false;
  constructor(readonly actions: EscapeActions) {}

  /** The bytes for the guest; runs the commands found on the way. */
  filter(bytes: Uint8Array): Uint8Array {
    const out: number[] = [];
    for (const byte of bytes) {
      if (!this.#pendingEscape) {
        if (byte === CTRL_A) this.#pendingEscape = true;
        else out.push(byte);
        continue;
      }
      this.#pendingEscape = false;
      const key = String.fromCharCode(byte).toLowerCase();
      if (byte === CTRL_A) out.push(CTRL_A);
      else if (key === "x") this.actions.quit();
      else if (key === "c") this.actions.status();
      else if (key === "h" || key === "?") this.actions.help();
      // Any other key after Ctrl-A is dropped, as QEMU does.
    }
    return Uint8Array.from(out);
  }
}

/** A terminal set up for `hvsh boot`; `filter` goes between stdin and the guest. */
export interface BootTerminal {
  /** Bytes read from the terminal -> bytes for the guest. */
  filter(bytes: Uint8Array): Uint8Array;
  /** Puts the terminal back as it was (idempotent). */
  restore(): void;
}

function write(text: string): void {
  const bytes = new TextEncoder().encode(text);
  let done = 0;
  while (done < bytes.length) done += Deno.stderr.writeSync(bytes.subarray(done));
}

/** The Ctrl-A C text: mode, rip and its symbol, the general registers (lines end in CR LF: the terminal is raw). */
export function statusText(vm: Vm): string {
  const cpu = vm.cpu(0);
  const regs = cpu.regs;
  const symbol = vm.debug.symbolize(regs.rip);
  const lines = [
    `[hvsh: ${cpu.mode} mode, rip 0x${regs.rip.toString(16)}${symbol === undefined ? "" : ` <${symbol}>`}]`,
  ];
  const names = DISPLAY_REGISTER_ORDER.filter((name) => name !== "rip");
  for (let i = 0; i < names.length; i += 4) {
    lines.push(
      names.slice(i, i + 4).map((n) => `${n.padStart(3)} ${regs[n].toString(16).padStart(16, "0")}`).join("  "),
    );
  }
  return `\r\n${lines.join("\r\n")}\r\n`;
}

/**
 * Puts a terminal stdin in raw mode with the escape keys of the module
 * comment; returns undefined (and changes nothing) when stdin is not a
 * terminal.
 */
export function openBootTerminal(vm: Vm): BootTerminal | undefined {
  if (!Deno.stdin.isTerminal()) return undefined;
  let raw = false;
  const restore = () => {
    if (!raw) return;
    raw = false;
    try {
      Deno.stdin.setRaw(false);
    } catch {
      // stdin already closed: nothing to restore
    }
    globalThis.removeEventListener("unload", restore);
  };
  Deno.stdin.setRaw(true);
  raw = true;
  globalThis.addEventListener("unload", restore);
  const filter = new EscapeFilter({
    quit: () => {
      restore();
      write("\r\nhvsh: quit (Ctrl-A X)\n");
      Deno.exit(0);
    },
    status: () => {
      try {
        write(statusText(vm));
      } catch (error) {
        write(`\r\n[hvsh: cannot read the registers: ${(error as Error).message}]\r\n`);
      }
    },
    help: () => write(`\r\n${ESCAPE_HELP}\r\n`),
  });
  return { filter: (bytes) => filter.filter(bytes), restore };
}
