// Run by tests/linux_virtio_test.ts under `unshare -n`: in a network namespace
// of its own (only lo, down), it makes a persistent tap0 with 10.0.2.2/24, then
// runs `./hvsh boot … --net tap=tap0` (the arguments come as JSON in argv[0])
// and reads its output. Once the kernel prints `IP-Config: Complete`, it
// connects to 10.0.2.15:9 over TCP until the guest's stack answers: a refused
// connection is the guest's RST, after its ARP reply, both frames on tap0.
// When the output has matched every pattern in argv[1] (or the boot ends), it
// stops hvsh with SIGTERM and prints one JSON line: what it saw.

const [argsJson, patternsJson] = Deno.args;
const { hvsh, args } = JSON.parse(argsJson!) as { hvsh: string; args: string[] };
const patterns = (JSON.parse(patternsJson!) as string[]).map((p) => new RegExp(p));
const LIMIT_MS = 480_000;
const CONNECT_TRIES = 60;

function ip(...args: string[]): void {
  const out = new Deno.Command("ip", { args, stdout: "piped", stderr: "piped" }).outputSync();
  if (!out.success) throw new Error(`ip ${args.join(" ")}: ${new TextDecoder().decode(out.stderr).trim()}`);
}

/** tap0's counters (from `ip`: /sys shows the namespace the process started in). */
function counters(): { rxPackets: number; txPackets: number } {
  const out = new Deno.Command("ip", { args: ["-j", "-s", "link", "show", "tap0"], stdout: "piped" }).outputSync();
  const stats = JSON.parse(new TextDecoder().decode(out.stdout))[0].stats64;
  return { rxPackets: stats.rx.packets, txPackets: stats.tx.packets };
}

/** One TCP connect to the guest: "refused" is its RST; anything else (unreachable: no ARP reply) means retry. */
async function connectOnce(): Promise<string> {
  try {
    const conn = await Deno.connect({ hostname: "10.0.2.15", port: 9 });
    conn.close();
    return "connected";
  } catch (error) {
    return error instanceof Deno.errors.ConnectionRefused ? "refused" : (error as Error).message;
  }
}

ip("tuntap", "add", "dev", "tap0", "mode", "tap");
ip("addr", "add", "10.0.2.2/24", "dev", "tap0");
ip("link", "set", "tap0", "up");

const started = performance.now();
const child = new Deno.Command(hvsh, {
  args: [...args, "--net", "tap=tap0"],
  stdin: "null",
  stdout: "piped",
  stderr: "piped",
}).spawn();
const stderrText = new Response(child.stderr).text();
let stdout = "";
const seconds = () => Number(((performance.now() - started) / 1000).toFixed(1));
const times: Record<string, number> = {};
let connect: { result: string; tries: number; at?: number } | undefined;
let connecting: Promise<void> | undefined;
const killer = setTimeout(() => child.kill("SIGKILL"), LIMIT_MS);

let stopped = false;
/** Stops hvsh once every pattern matched and the connection attempts ended (its output is then read to the end). */
function stopWhenDone(): void {
  if (stopped || !patterns.every((p) => p.test(stdout)) || connect === undefined) return;
  stopped = true;
  try {
    child.kill("SIGTERM");
  } catch {
    // It ended by itself.
  }
}
let tapCounters = { rxPackets: 0, txPackets: 0 };
let neigh = "";
for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
  stdout += chunk;
  for (const p of patterns) if (times[p.source] === undefined && p.test(stdout)) times[p.source] = seconds();
  if (connecting === undefined && /IP-Config: Complete/.test(stdout)) {
    connecting = (async () => {
      let result = "";
      for (let tries = 1; tries <= CONNECT_TRIES; tries++) {
        result = await connectOnce();
        if (result === "refused" || result === "connected") {
          connect = { result, tries, at: seconds() };
          break;
        }
      }
      connect ??= { result, tries: CONNECT_TRIES };
      tapCounters = counters();
      const out = new Deno.Command("ip", { args: ["neigh", "show", "10.0.2.15", "dev", "tap0"], stdout: "piped" })
        .outputSync();
      neigh = new TextDecoder().decode(out.stdout).trim();
      stopWhenDone();
    })();
  }
  stopWhenDone();
}
await connecting;
const status = await child.status;
clearTimeout(killer);
console.log(JSON.stringify({
  code: status.code,
  stdout,
  stderr: await stderrText,
  times,
  connect,
  neigh,
  ...tapCounters,
}));
