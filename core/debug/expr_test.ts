import assert from "node:assert/strict";
import { evaluateExpression, type ExpressionContext } from "./expr.ts";
import { readRegister, writeRegister } from "./registers.ts";
import type { Registers } from "../kvm/structs.ts";

const memory = new Map<bigint, number>();
function store(address: bigint, value: bigint, size: number): void {
  for (let i = 0; i < size; i++) memory.set(address + BigInt(i), Number((value >> BigInt(8 * i)) & 0xffn));
}
store(0x7000n, 0x100010n, 8); // *$rsp: a return address
store(0x7008n, 0x1122334455667788n, 8);
store(0x2000n, 0x7008n, 8); // a pointer to a pointer's target
store(0x100000n, 0xabcn, 8); // the variable at tick

const context: ExpressionContext = {
  register: (name) => ({ rsp: 0x7000n, rip: 0x100004n, eax: 0xdeadn, cr3: 0x9000n } as Record<string, bigint>)[name],
  symbol: (name) => ({ tick: 0x100000n, ticks: 0x1001d8n, "a.b": 0x42n } as Record<string, bigint>)[name],
  read: (address, size) => {
    let value = 0n;
    for (let i = size - 1; i >= 0; i--) {
      const byte = memory.get(address + BigInt(i));
      if (byte === undefined) throw new RangeError(`Cannot read virtual 0x${(address + BigInt(i)).toString(16)}`);
      value = (value << 8n) | BigInt(byte);
    }
    return value;
  },
  pointerSize: 8,
  suggest: (name) => ["tick", "ticks"].filter((s) => s.startsWith(name.slice(0, 2))),
};
const evaluate = (text: string) => evaluateExpression(text, context);

Deno.test("evaluateExpression() reads numbers, symbols and registers", () => {
  assert.equal(evaluate("0x1000"), 0x1000n);
  assert.equal(evaluate("4096"), 4096n);
  assert.equal(evaluate("tick"), 0x100000n);
  assert.equal(evaluate("a.b"), 0x42n);
  assert.equal(evaluate("$rsp"), 0x7000n);
  assert.equal(evaluate("$RSP"), 0x7000n);
  assert.equal(evaluate("$sp"), 0x7000n);
  assert.equal(evaluate("$pc"), 0x100004n);
  assert.equal(evaluate("$cr3"), 0x9000n);
});

Deno.test("evaluateExpression() adds, subtracts and multiplies with precedence and parentheses", () => {
  assert.equal(evaluate("$rsp+8"), 0x7008n);
  assert.equal(evaluate("tick + 0x10 - 4"), 0x10000cn);
  assert.equal(evaluate("tick+2*8"), 0x100010n);
  assert.equal(evaluate("(tick+2)*2"), 0x200004n);
  assert.equal(evaluate("ticks - tick"), 0x1d8n);
  assert.equal(evaluate("0 - 1"), (1n << 64n) - 1n, "wraps to 64 bits");
});

Deno.test("evaluateExpression() dereferences with *, sized by a C cast", () => {
  assert.equal(evaluate("*$rsp"), 0x100010n);
  assert.equal(evaluate("*($rsp+8)"), 0x1122334455667788n);
  assert.equal(evaluate("*(int*)($rsp+8)"), 0x55667788n);
  assert.equal(evaluate("*(unsigned char*)($rsp+8)"), 0x88n);
  assert.equal(evaluate("*(uint16_t *)0x7008"), 0x7788n);
  assert.equal(evaluate("**0x2000"), 0x1122334455667788n);
  assert.equal(evaluate("*(long*)&tick"), 0xabcn, "gdb's *(long*)&counter");
  assert.equal(evaluate("*$rsp - tick"), 0x10n);
  assert.equal(evaluate("2 * *$rsp"), 0x200020n, "a * after an operand multiplies, before one dereferences");
});

Deno.test("evaluateExpression() names what is wrong", () => {
  assert.throws(() => evaluate("$zz"), { name: "RangeError", message: "Unknown register $zz" });
  assert.throws(() => evaluate("tik"), {
    name: "RangeError",
    message: 'Unknown symbol "tik" (did you mean tick, ticks?)',
  });
  assert.throws(() => evaluate(""), { name: "SyntaxError", message: 'Cannot parse expression "": it is empty' });
  assert.throws(() => evaluate("tick +"), { name: "SyntaxError", message: /ends too early/ });
  assert.throws(() => evaluate("(tick"), { name: "SyntaxError", message: /expected "\)"/ });
  assert.throws(() => evaluate("tick ? 1"), { name: "SyntaxError", message: /unexpected "\?" at column 6/ });
  assert.throws(() => evaluate("*0x10"), { name: "RangeError", message: /Cannot read virtual 0x1/ });
});

const regs = {
  rax: 0x1122334455667788n,
  r8: 0xffff_ffff_ffff_ffffn,
  rip: 0x100004n,
  rflags: 0x246n,
} as unknown as Registers;

Deno.test("readRegister() reads register parts as the CPU names them", () => {
  const sregs = { cr3: 0x9000n, cs: { selector: 0x10, base: 0n }, fs: { selector: 0, base: 0x5000n } } as never;
  assert.equal(readRegister("eax", regs, sregs), 0x55667788n);
  assert.equal(readRegister("ax", regs, sregs), 0x7788n);
  assert.equal(readRegister("al", regs, sregs), 0x88n);
  assert.equal(readRegister("ah", regs, sregs), 0x77n);
  assert.equal(readRegister("r8d", regs, sregs), 0xffffffffn);
  assert.equal(readRegister("r8b", regs, sregs), 0xffn);
  assert.equal(readRegister("eflags", regs, sregs), 0x246n);
  assert.equal(readRegister("cr3", regs, sregs), 0x9000n);
  assert.equal(readRegister("cs", regs, sregs), 0x10n);
  assert.equal(readRegister("fs_base", regs, sregs), 0x5000n);
  assert.equal(readRegister("xyz", regs, sregs), undefined);
});

Deno.test("writeRegister() merges a part into its register; a 32-bit write zero-extends", () => {
  assert.deepEqual(writeRegister("al", 0x1n, regs), { rax: 0x1122334455667701n });
  assert.deepEqual(writeRegister("ah", 0x1n, regs), { rax: 0x1122334455660188n });
  assert.deepEqual(writeRegister("eax", 0x1n, regs), { rax: 0x1n });
  assert.deepEqual(writeRegister("r8w", 0n, regs), { r8: 0xffff_ffff_ffff_0000n });
  assert.throws(() => writeRegister("cr3", 0n, regs), { name: "RangeError", message: /Cannot set register "cr3"/ });
});
