/*
 * reset.c - ELF32 guest that resets the machine through the i8042 keyboard
 * controller (reset.elf), entry `_start` in lib/start32.S.
 *
 * Prints "resetting\n", waits (bounded) for the controller's input buffer to
 * be empty (status port 0x64 bit 1 clear), writes command 0xfe (pulse the
 * CPU reset line) to port 0x64, then halts for good with interrupts off
 * (`cli; hlt` loop). It never writes the debug-exit port.
 *
 * Host test expects: "resetting\n", then hvsh reports the reset (configured
 * as reset -> stop). If the write is ignored, the vCPU just stays halted
 * (hvsh boot: status 0 "halted", or --timeout).
 */
#include "pc.h"

#define I8042_STATUS 0x64
#define I8042_COMMAND 0x64
#define I8042_STATUS_INPUT_FULL 0x02
#define I8042_CMD_RESET 0xfe

int main(void);

int main(void) {
  puts("resetting\n");
  for (int i = 0; i < 1000 && (inb(I8042_STATUS) & I8042_STATUS_INPUT_FULL); i++) cpu_pause();
  outb(I8042_COMMAND, I8042_CMD_RESET);
  for (;;) __asm__ volatile("cli; hlt");
}
