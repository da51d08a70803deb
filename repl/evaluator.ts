/**
 * Evaluates TypeScript lines as the REPL and `hvsh run` do: types stripped
 * by esbuild, top-level await allowed, and top-level declarations kept
 * between lines (they become globals, like Deno's and Node's REPLs).
 *
 * esbuild (npm) transpiles: Deno exposes no transpiler API to programs, and
 * esbuild's transform of one line takes ~5 ms after a one-time ~150 ms start.
 *
 * @module
 */

import { createRequire } from "node:module";

type Esbuild = typeof import("npm:esbuild@0.28.2");
let esbuild: Esbuild | undefined;

function transpile(source: string, file?: string): { code: string; map: string } {
  esbuild ??= createRequire(import.meta.url)("esbuild") as Esbuild;
  try {
    const options = { loader: "ts", format: "esm", target: "esnext" } as const;
    if (file === undefined) return { code: esbuild.transformSync(source, options).code, map: "" };
    return esbuild.transformSync(source, { ...options, sourcemap: "external", sourcefile: file });
  } catch (error) {
    const first = (error as { errors?: { text: string; location?: { line: number; column: number } }[] }).errors?.[0];
    if (first !== undefined) {
      const at = first.location;
      if (file !== undefined && at !== undefined) {
        throw new ScriptError(`${file}:${at.line}:${at.column + 1}: SyntaxError: ${first.text}`, file, at.line);
      }
      const where = at === undefined ? "" : ` (column ${at.column + 1})`;
      throw new SyntaxError(`${first.text}${where}`);
    }
    throw error;
  }
}

/**
 * An error in a script file evaluated with {@link evaluate}'s `file`: the
 * message starts with `FILE:LINE:` (the line of the top-level statement that
 * failed, or of a syntax error); the error thrown is its `cause`.
 */
export class ScriptError extends Error {
  /** The script's path as given. */
  readonly file: string;
  /** 1-based line in the script. */
  readonly line: number;

  constructor(message: string, file: string, line: number, options?: ErrorOptions) {
    super(message, options);
    this.name = "ScriptError";
    this.file = file;
    this.line = line;
  }
}

const BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/**
 * For each line of generated code, the 0-based source line its first mapping
 * points at (source map v3 "mappings": VLQ fields generated column, source,
 * source line, source column; the last three are deltas across the whole map).
 */
export function firstSourceLines(mappings: string): (number | undefined)[] {
  const lines: (number | undefined)[] = [];
  let sourceLine = 0;
  for (const line of mappings.split(";")) {
    let first: number | undefined;
    for (const segment of line.split(",")) {
      if (segment === "") continue;
      const fields: number[] = [];
      let value = 0;
      let shift = 0;
      for (const char of segment) {
        const digit = BASE64.indexOf(char);
        value += (digit & 31) << shift;
        if (digit & 32) {
          shift += 5;
          continue;
        }
        fields.push(value & 1 ? -(value >>> 1) : value >>> 1);
        value = 0;
        shift = 0;
      }
      if (fields.length >= 4) {
        sourceLine += fields[2]!;
        first ??= sourceLine;
      }
    }
    lines.push(first);
  }
  return lines;
}

/**
 * Whether `source` stops in the middle of something (an open brace, bracket
 * or parenthesis, a template literal, a comment), so the REPL should read
 * another line before evaluating, as Node's and Deno's REPLs do.
 *
 * @example
 * ```ts
 * import { needsMoreInput } from "./evaluator.ts";
 * needsMoreInput("function f(a) {"); // true
 * needsMoreInput("function f(a) { return a }"); // false
 * needsMoreInput("1 + )"); // false: an error more input cannot fix
 * ```
 */
export function needsMoreInput(source: string): boolean {
  try {
    transpile(source);
    return false;
  } catch (error) {
    if (!(error instanceof SyntaxError)) return false;
    if (/end of file|Unterminated (template|comment)/i.test(error.message)) return true;
    // esbuild calls an open template literal an unterminated string: an odd count of backticks tells them apart.
    return /Unterminated string/.test(error.message) && (source.replace(/\\`/g, "").match(/`/g)?.length ?? 0) % 2 === 1;
  }
}

/** A top-level statement of transpiled code, with its source text and where it starts in the code. */
interface Statement {
  text: string;
  start: number;
}

const OPEN = new Set(["(", "[", "{"]);
const CLOSE = new Set([")", "]", "}"]);

/** Splits JavaScript into top-level statements at `;` outside brackets, strings, templates and comments. */
export function splitStatements(code: string): Statement[] {
  const statements: Statement[] = [];
  let depth = 0;
  let start = 0;
  let i = 0;
  const templateDepths: number[] = [];
  while (i < code.length) {
    const c = code[i]!;
    const next = code[i + 1];
    if (c === "/" && next === "/") {
      const end = code.indexOf("\n", i);
      i = end < 0 ? code.length : end;
      continue;
    }
    if (c === "/" && next === "*") {
      const end = code.indexOf("*/", i + 2);
      i = end < 0 ? code.length : end + 2;
      continue;
    }
    if (c === '"' || c === "'") {
      i++;
      while (i < code.length && code[i] !== c) i += code[i] === "\\" ? 2 : 1;
      i++;
      continue;
    }
    if (c === "`" || (c === "}" && templateDepths.at(-1) === depth)) {
      if (c === "}") templateDepths.pop();
      i++;
      while (i < code.length && code[i] !== "`") {
        if (code[i] === "\\") {
          i += 2;
          continue;
        }
        if (code[i] === "$" && code[i + 1] === "{") {
          templateDepths.push(depth);
          i += 2;
          break;
        }
        i++;
      }
      if (code[i] === "`") i++;
      continue;
    }
    if (OPEN.has(c)) depth++;
    else if (CLOSE.has(c)) depth--;
    else if (c === ";" && depth === 0) {
      const text = code.slice(start, i).trim();
      if (text !== "") statements.push({ text, start: start + code.slice(start).search(/\S/) });
      start = i + 1;
    }
    i++;
  }
  const rest = code.slice(start).trim();
  if (rest !== "") statements.push({ text: rest, start: start + code.slice(start).search(/\S/) });
  return statements;
}

const STATEMENT_KEYWORDS =
  /^(var|let|const|if|for|while|do|switch|try|throw|return|function|async\s+function|class|import|export|break|continue|debugger|label:|\{)\b/;

/** Names declared by a top-level `var|let|const` statement (simple and destructured identifiers). */
function declaredNames(text: string): string[] {
  const body = text.replace(/^(var|let|const)\s+/, "");
  const names: string[] = [];
  let depth = 0;
  let current = "";
  const parts: string[] = [];
  for (const c of body) {
    if (OPEN.has(c)) depth++;
    if (CLOSE.has(c)) depth--;
    if (c === "," && depth === 0) {
      parts.push(current);
      current = "";
    } else {
      current += c;
    }
  }
  parts.push(current);
  for (const part of parts) {
    const target = part.split(/=(?!=|>)/)[0]!.trim();
    if (/^[A-Za-z_$][\w$]*$/.test(target)) names.push(target);
    else {
      for (const match of target.matchAll(/(?:^|[{,[:]\s*)([A-Za-z_$][\w$]*)\s*(?=[,}\]=]|$)/g)) names.push(match[1]!);
    }
  }
  return [...new Set(names)];
}

/**
 * Rewrites transpiled code so that it can run inside an async function while
 * its top-level declarations land on the global object, and so that the
 * value of a final expression statement is returned.
 */
export function rewriteForRepl(
  code: string,
  lineOf?: (offset: number) => number | undefined,
): { body: string; globals: string[] } {
  // Code pasted from a module: `export` means nothing at a prompt, the declarations still count
  // (esbuild turns `export function f` into `function f` and an `export { f };` list at the end, after every
  // statement, so removing it moves no statement's offset).
  const statements = splitStatements(code.replace(/^export\s*\{[^}]*\};?[ \t]*$/gm, ""));
  const globals: string[] = [];
  const lines: string[] = [];
  statements.forEach((statement, index) => {
    const line = lineOf?.(statement.start);
    // A marker before each statement: `hvsh run` names the line of the one that failed.
    if (line !== undefined) lines.push(`${LINE_MARKER}(${line});`);
    let text = statement.text;
    const last = index === statements.length - 1;
    const declaration = /^(var|let|const)\s/.exec(text);
    const fn = /^(async\s+)?function\s*\*?\s*([A-Za-z_$][\w$]*)/.exec(text);
    const cls = /^class\s+([A-Za-z_$][\w$]*)/.exec(text);
    if (declaration !== null) {
      const names = declaredNames(text);
      globals.push(...names);
      // `const {a, b} = x` -> `({a, b} = x)`; `let a = 1, b` -> `a = 1, b = undefined`
      const rest = text.slice(declaration[0].length);
      const assignments = splitTopLevel(rest).map((part) => (part.includes("=") ? part : `${part} = undefined`));
      text = `(${assignments.join(", ")})`;
      if (!last) text += ";";
      lines.push(last ? `${text}; return undefined;` : text);
      return;
    }
    if (fn !== null) {
      globals.push(fn[2]!);
      lines.push(`${fn[2]} = ${text};${last ? " return undefined;" : ""}`);
      return;
    }
    if (cls !== null) {
      globals.push(cls[1]!);
      lines.push(`${cls[1]} = ${text};${last ? " return undefined;" : ""}`);
      return;
    }
    if (last && !STATEMENT_KEYWORDS.test(text)) {
      lines.push(`return (${text});`);
      return;
    }
    lines.push(text + ";");
  });
  return { body: lines.join("\n"), globals };
}

/** The parameter through which a rewritten script reports the line it is at. */
const LINE_MARKER = "__hvshAtLine";

function splitTopLevel(text: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let current = "";
  let quote = "";
  for (const c of text) {
    if (quote !== "") {
      current += c;
      if (c === quote) quote = "";
      continue;
    }
    if (c === '"' || c === "'" || c === "`") quote = c;
    if (OPEN.has(c)) depth++;
    if (CLOSE.has(c)) depth--;
    if (c === "," && depth === 0) {
      parts.push(current.trim());
      current = "";
    } else {
      current += c;
    }
  }
  if (current.trim() !== "") parts.push(current.trim());
  return parts;
}

const AsyncFunction = Object.getPrototypeOf(async function () {}).constructor as new (
  ...args: string[]
) => () => Promise<unknown>;

/**
 * Evaluates one input (one line or a whole script) of TypeScript. Returns
 * the value of its last expression. Declarations persist as globals.
 *
 * @example
 * ```ts ignore
 * await evaluate("const answer: number = 40 + 2");
 * await evaluate("answer"); // 42
 * ```
 */
export async function evaluate(source: string, options: { file?: string } = {}): Promise<unknown> {
  const file = options.file;
  const { code: js, map } = transpile(source, file);
  let lineOf: ((offset: number) => number | undefined) | undefined;
  if (file !== undefined) {
    const sourceLines = firstSourceLines((JSON.parse(map) as { mappings: string }).mappings);
    lineOf = (offset) => {
      const generatedLine = js.slice(0, offset).split("\n").length - 1;
      const line = sourceLines[generatedLine];
      return line === undefined ? undefined : line + 1;
    };
  }
  const { body, globals } = rewriteForRepl(js, lineOf);
  for (const name of globals) {
    if (!(name in globalThis)) {
      Object.defineProperty(globalThis, name, {
        value: undefined,
        writable: true,
        configurable: true,
        enumerable: false,
      });
    }
  }
  if (file === undefined) return await new AsyncFunction(body)();
  let line = 1;
  const run = new AsyncFunction(LINE_MARKER, body) as unknown as (at: (n: number) => void) => Promise<unknown>;
  try {
    return await run((n) => line = n);
  } catch (error) {
    const what = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
    throw new ScriptError(`${file}:${line}: ${what}`, file, line, { cause: error });
  }
}
