/**
 * Ctrl-R in the REPL: bash's reverse incremental history search, which
 * node:readline lacks. It wraps the interface's key handler: while a search
 * is on, keys edit the query; Ctrl-R again finds an older match; Enter runs
 * the match; another editing key (arrows, Ctrl-A, Ctrl-E, Tab...) keeps it
 * on the line to edit; Ctrl-G or Ctrl-C gives the line back as it was.
 *
 * @module
 */

import type * as readline from "node:readline";

interface Key {
  name?: string;
  ctrl?: boolean;
  meta?: boolean;
  sequence?: string;
}

/** The parts of node:readline's Interface the search drives (`_ttyWrite` and `_refreshLine` are Node's own). */
interface EditableInterface {
  line: string;
  cursor: number;
  history: string[];
  _ttyWrite(text: string | undefined, key: Key): void;
  _refreshLine(): void;
}

/** Installs Ctrl-R on a terminal readline interface; `output` is where the search line is drawn. */
export function installReverseSearch(rl: readline.Interface, output: { write(text: string): unknown }): void {
  const editable = rl as unknown as EditableInterface;
  const original = editable._ttyWrite.bind(editable);
  let searching = false;
  let query = "";
  let index = -1;
  let saved = { line: "", cursor: 0 };

  const find = (from: number): number => {
    const history = editable.history;
    for (let i = Math.max(from, 0); i < history.length; i++) if (history[i]!.includes(query)) return i;
    return -1;
  };
  const match = () => (index >= 0 ? editable.history[index]! : "");
  const draw = (failed: boolean) => {
    output.write(`\r\x1b[K(${failed ? "failed " : ""}reverse-i-search)'${query}': ${match()}`);
  };
  const finish = (line: string) => {
    searching = false;
    editable.line = line;
    editable.cursor = line.length;
    output.write("\r\x1b[K");
    editable._refreshLine();
  };

  editable._ttyWrite = (text: string | undefined, key: Key = {}) => {
    if (!searching) {
      if (key.ctrl && key.name === "r") {
        searching = true;
        query = "";
        index = -1;
        saved = { line: editable.line, cursor: editable.cursor };
        draw(false);
        return;
      }
      original(text, key);
      return;
    }
    if (key.ctrl && key.name === "r") {
      const older = find(index + 1);
      if (older >= 0) index = older;
      draw(older < 0);
      return;
    }
    if ((key.ctrl && (key.name === "g" || key.name === "c")) || key.name === "escape") {
      finish(saved.line);
      editable.cursor = saved.cursor;
      return;
    }
    if (key.name === "backspace") {
      query = query.slice(0, -1);
      index = query === "" ? -1 : find(0);
      draw(query !== "" && index < 0);
      return;
    }
    if (key.name === "return" || key.name === "enter") {
      finish(match() === "" ? saved.line : match());
      original(text, key);
      return;
    }
    const printable = text !== undefined && text.length === 1 && !key.ctrl && !key.meta && text >= " ";
    if (printable) {
      query += text;
      const found = find(Math.max(index, 0));
      if (found >= 0) index = found;
      draw(found < 0);
      return;
    }
    // Any other key ends the search with the match on the line, then does what it does there.
    finish(match() === "" ? saved.line : match());
    original(text, key);
  };
}
