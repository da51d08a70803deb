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

/** One option of {@link parseOptions}: the subset of node's `parseArgs` option config that hvsh uses. */
export interface OptionSpec {
  type: "string" | "boolean";
  /** A one-letter alias (`-k`). */
  short?: string;
  default?: string | boolean | string[];
  /** Repeatable: the values are collected in an array. */
  multiple?: boolean;
}

type OptionValue<O extends OptionSpec> = O extends { type: "string" }
  ? (O extends { multiple: true } ? string[] : string)
  : (O extends { multiple: true } ? boolean[] : boolean);

/** What {@link parseOptions} returns for an option table `T`: options with a default are always set. */
export type ParsedValues<T extends Record<string, OptionSpec>> =
  & { [K in keyof T as T[K] extends { default: unknown } ? K : never]: OptionValue<T[K]> }
  & { [K in keyof T as T[K] extends { default: unknown } ? never : K]?: OptionValue<T[K]> };

/**
 * node's `util.parseArgs` with `strict: true, allowPositionals: true`, for
 * the option tables the CLI uses (string and boolean options, short
 * aliases, defaults, `multiple`): the same results and the same error
 * messages. `hvsh boot` parses with this rather than `node:util`: the first
 * `node:` module a process imports loads Deno's Node compatibility layer,
 * ~8 ms and 6 MiB of every cold start.
 *
 * @param args The arguments (after {@link attachOptionValues}).
 * @param options The option table, long names as keys.
 * @throws {TypeError} An unknown option, a string option without a value
 *   (or with one that looks like an option), a boolean option given a value.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseOptions } from "./_args.ts";
 * const { values, positionals } = parseOptions(["-m", "32M", "--wait", "disk.img"], {
 *   mem: { type: "string", short: "m", default: "64M" },
 *   wait: { type: "boolean", default: false },
 * });
 * assert.equal(values.mem, "32M");
 * assert.equal(values.wait, true);
 * assert.deepEqual(positionals, ["disk.img"]);
 * ```
 */
export function parseOptions<T extends Record<string, OptionSpec>>(
  args: readonly string[],
  options: T,
): { values: ParsedValues<T>; positionals: string[] } {
  const specs = options as Record<string, OptionSpec>;
  const has = (name: string) => Object.hasOwn(specs, name);
  const longOf = (short: string) => Object.keys(specs).find((name) => specs[name]!.short === short) ?? short;
  const isString = (name: string) => has(name) && specs[name]!.type === "string";
  const values: Record<string, unknown> = Object.create(null);
  const positionals: string[] = [];
  const store = (name: string, rawName: string, value: string | undefined, inline: boolean) => {
    if (!has(name)) {
      throw new TypeError(
        `Unknown option '${rawName}'. To specify a positional argument starting with a '-', place it at the end ` +
          `of the command after '--', as in '-- ${JSON.stringify(rawName)}`,
      );
    }
    const spec = specs[name]!;
    const shortAndLong = `${spec.short === undefined ? "" : `-${spec.short}, `}--${name}`;
    if (spec.type === "string" && value === undefined) {
      throw new TypeError(`Option '${shortAndLong} <value>' argument missing`);
    }
    if (spec.type === "boolean" && value !== undefined) {
      throw new TypeError(`Option '${shortAndLong}' does not take an argument`);
    }
    if (!inline && value !== undefined && value.length > 1 && value[0] === "-") {
      const example = rawName.startsWith("--") ? `'${rawName}=-XYZ'` : `'--${name}=-XYZ' or '${rawName}-XYZ'`;
      throw new TypeError(
        `Option '${rawName}' argument is ambiguous.\nDid you forget to specify the option argument for ` +
          `'${rawName}'?\nTo specify an option argument starting with a dash use ${example}.`,
      );
    }
    const stored = value ?? true;
    if (spec.multiple) {
      const list = (values[name] ??= []) as unknown[];
      list.push(stored);
    } else {
      values[name] = stored;
    }
  };
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === "--") {
      positionals.push(...args.slice(i + 1));
      break;
    }
    if (arg.length < 2 || arg[0] !== "-") {
      positionals.push(arg);
    } else if (arg[1] !== "-") {
      // -k VALUE, -kVALUE, or a group of booleans -ab (a string option in a group takes the rest as its value).
      for (let at = 1; at < arg.length; at++) {
        const short = arg[at]!;
        const name = longOf(short);
        if (isString(name)) {
          if (at + 1 < arg.length) {
            store(name, `-${short}`, arg.slice(at + 1), true);
          } else {
            const next = args[i + 1];
            if (next !== undefined) i++;
            store(name, `-${short}`, next, false);
          }
          break;
        }
        store(name, `-${short}`, undefined, false);
      }
    } else {
      const equals = arg.indexOf("=");
      if (equals > 2 || (equals === -1 && arg.length > 2)) {
        const name = equals === -1 ? arg.slice(2) : arg.slice(2, equals);
        if (equals !== -1) {
          store(name, `--${name}`, arg.slice(equals + 1), true);
        } else if (isString(name)) {
          const next = args[i + 1];
          if (next !== undefined) i++;
          store(name, arg, next, false);
        } else {
          store(name, arg, undefined, false);
        }
      } else {
        store(arg.slice(2), arg, undefined, false);
      }
    }
  }
  for (const [name, spec] of Object.entries(specs)) {
    if (spec.default !== undefined && values[name] === undefined) values[name] = spec.default;
  }
  return { values: values as ParsedValues<T>, positionals };
}
