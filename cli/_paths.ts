/** Path helpers without @std/path (JSR is unreachable here). */

import { pathToFileURL } from "node:url";
import { resolve } from "node:path";

/** A file URL for a path relative to the current directory. */
export function toFileUrl(path: string): URL {
  return pathToFileURL(resolve(path));
}
