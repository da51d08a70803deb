/**
 * Run as a process by tests/_gdb_client.ts: `_reset_client.ts PORT COUNT DONE_FILE`
 * makes COUNT connections to 127.0.0.1:PORT and resets each (RST: SO_LINGER 0)
 * as soon as it is established, then creates DONE_FILE.
 *
 * @module
 */

import net from "node:net";

const [port, count, doneFile] = Deno.args;
for (let i = 0; i < Number(count); i++) {
  await new Promise<void>((resolve) => {
    const socket = net.connect({ port: Number(port), host: "127.0.0.1" }, () => {
      socket.resetAndDestroy();
      resolve();
    });
    socket.on("error", () => resolve());
  });
}
Deno.writeTextFileSync(doneFile!, "done");
