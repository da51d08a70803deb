/**
 * Command-line helpers shared by `hvsh boot` and the REPL's `--kernel`.
 *
 * @module
 */

/**
 * Glues each value-taking option to its value (`--append -vmx_test` ->
 * `--append=-vmx_test`), so a value may start with `-` as QEMU allows:
 * kvm-unit-tests passes arguments such as `-vmx_test` this way. node's
 * parseArgs otherwise refuses such a value as ambiguous.
 *
 * @param args The arguments as given.
 * @param valueOptions Long names (without `--`) and one-letter short names of the options that take a value.
 *
 * @example
 * ```ts
 * import { attachOptionValues } from "./_args.ts";
 * attachOptionValues(["--append", "-vmx_test", "-m", "64M"], ["append", "m"]);
 * // ["--append=-vmx_test", "-m", "64M"]
 * ```
 */
export function attachOptionValues(args: readonly string[], valueOptions: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === "--") {
      out.push(...args.slice(i));
      break;
    }
    const long = /^--([^=]+)$/.exec(arg);
    const short = /^-([A-Za-z])$/.exec(arg);
    const name = long?.[1] ?? short?.[1];
    const next = args[i + 1];
    if (name !== undefined && valueOptions.includes(name) && next !== undefined && next.startsWith("-")) {
      out.push(long !== null ? `--${name}=${next}` : `-${name}${next}`);
      i++;
      continue;
    }
    out.push(arg);
  }
  return out;
}
