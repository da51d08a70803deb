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

type Esbuild = typeof import("esbuild");
let esbuild: Esbuild | undefined;

function transpile(source: string): string {
  esbuild ??= createRequire(import.meta.url)("esbuild") as Esbuild;
  try {
    return esbuild.transformSync(source, { loader: "ts", format: "esm", target: "esnext" }).code;
  } catch (error) {
    const first = (error as { errors?: { text: string; location?: { column: number } }[] }).errors?.[0];
    if (first !== undefined) {
      const where = first.location === undefined ? "" : ` (column ${first.location.column + 1})`;
      throw new SyntaxError(`${first.text}${where}`);
    }
    throw error;
  }
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

/** A top-level statement of transpiled code, with its source text. */
interface Statement {
  text: string;
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
      if (text !== "") statements.push({ text });
      start = i + 1;
    }
    i++;
  }
  const rest = code.slice(start).trim();
  if (rest !== "") statements.push({ text: rest });
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
export function rewriteForRepl(code: string): { body: string; globals: string[] } {
  // Code pasted from a module: `export` means nothing at a prompt, the declarations still count
  // (esbuild turns `export function f` into `function f` and an `export { f };` list at the end).
  const statements = splitStatements(code.replace(/^export\s*\{[^}]*\};?[ \t]*$/gm, ""));
  const globals: string[] = [];
  const out: string[] = [];
  statements.forEach((statement, index) => {
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
      out.push(last ? `${text}; return undefined;` : text);
      return;
    }
    if (fn !== null) {
      globals.push(fn[2]!);
      out.push(`${fn[2]} = ${text};${last ? " return undefined;" : ""}`);
      return;
    }
    if (cls !== null) {
      globals.push(cls[1]!);
      out.push(`${cls[1]} = ${text};${last ? " return undefined;" : ""}`);
      return;
    }
    if (last && !STATEMENT_KEYWORDS.test(text)) {
      out.push(`return (${text});`);
      return;
    }
    out.push(text + ";");
  });
  return { body: out.join("\n"), globals };
}

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
export async function evaluate(source: string): Promise<unknown> {
  const js = transpile(source);
  const { body, globals } = rewriteForRepl(js);
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
  const run = new AsyncFunction(body);
  return await run();
}
