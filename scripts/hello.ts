// A provisioning example: ./hvsh run scripts/hello.ts
import { Vm } from "../mod.ts";
import { buildGuests } from "./build_guests.ts";

const guests = await buildGuests();
await using vm = await Vm.create({ memory: "64M" });
await vm.load(guests.get("hello64.elf")!); // format detected
const stop = await vm.run({ timeout: 10_000 });
console.log(JSON.stringify(vm.serial.output), stop.reason, stop.reason === "exit" ? stop.code : "");
