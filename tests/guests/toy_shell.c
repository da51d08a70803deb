/*
 * toy_shell.c - ELF32 guest (toy_shell.elf): a toy shell on COM1 for the
 * console-automation tests (vm.serial.exec), since user space on this host
 * cannot make system calls and so cannot run a real shell. Entry `_start` in
 * lib/start32.S.
 *
 * Prints "toy shell\n" and the prompt "toy$ ", then reads lines, echoing
 * each character as a terminal would (CR or LF ends the line; the echo is
 * "\r\n"). Commands:
 *   echo WORDS   prints WORDS
 *   add A B      prints the decimal sum of two decimal numbers
 *   lines N      prints "line 1" .. "line N"
 *   exit         prints "bye" and writes 0 to the debug-exit port
 *   anything else prints "toy: CMD: not found"
 * then the prompt again.
 * Host test expects: the exchange above; `exit` ends with status 1.
 */
#include "serial.h"

#define LINE_MAX 120

static int starts_with(const char *s, const char *prefix) {
  while (*prefix) if (*s++ != *prefix++) return 0;
  return 1;
}

static unsigned long parse_dec(const char **s) {
  unsigned long v = 0;
  while (**s == ' ') (*s)++;
  while (**s >= '0' && **s <= '9') v = v * 10 + (unsigned long)(*(*s)++ - '0');
  return v;
}

static void run(const char *line) {
  if (starts_with(line, "echo ")) {
    puts(line + 5);
    putc('\n');
  } else if (starts_with(line, "add ")) {
    const char *p = line + 4;
    unsigned long a = parse_dec(&p);
    unsigned long b = parse_dec(&p);
    put_dec(a + b);
    putc('\n');
  } else if (starts_with(line, "lines ")) {
    const char *p = line + 6;
    unsigned long n = parse_dec(&p);
    for (unsigned long i = 1; i <= n; i++) {
      puts("line ");
      put_dec(i);
      putc('\n');
    }
  } else if (line[0] == 'e' && line[1] == 'x' && line[2] == 'i' && line[3] == 't' && line[4] == 0) {
    puts("bye\n");
    guest_exit(0);
  } else if (line[0] != 0) {
    puts("toy: ");
    puts(line);
    puts(": not found\n");
  }
}

void main(void) {
  char line[LINE_MAX + 1];
  puts("toy shell\n");
  for (;;) {
    puts("toy$ ");
    int n = 0;
    for (;;) {
      char c = getc();
      if (c == '\r' || c == '\n') break;
      if (n < LINE_MAX) {
        line[n++] = c;
        putc(c);
      }
    }
    line[n] = 0;
    puts("\r\n");
    run(line);
  }
}
