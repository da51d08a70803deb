/*
 * mb_hello.c - Multiboot 1 ELF32 guest (mb_hello.elf), entry in
 * mb_hello_entry.S.
 *
 * If EAX != 0x2BADB002: prints "bad magic\n" and exits with V=1 (status 3).
 * Otherwise prints, then exits with V=0 (status 1):
 *   "multiboot ok\n"
 *   "cmdline=<mbi->cmdline>\n"     (empty after '=' if flags bit 2 is clear)
 *   "mem_upper=<decimal KiB>\n"    ("none" if flags bit 0 is clear)
 *   "mods=<decimal mods_count>\n"  (0 if flags bit 3 is clear)
 *   "mod0=<bytes>\n"               only if mods >= 1: the first bytes of
 *                                  module 0, stopping before the first '\n',
 *                                  at 16 bytes, or at mod_end
 * Example (cmdline "console=ttyS0", 64 MiB RAM, one module "hello world\n"):
 *   multiboot ok\ncmdline=console=ttyS0\nmem_upper=64512\nmods=1\nmod0=hello world\n
 */
#include "serial.h"

#define MULTIBOOT_BOOTLOADER_MAGIC 0x2BADB002u

#define MBI_FLAG_MEM (1u << 0)
#define MBI_FLAG_CMDLINE (1u << 2)
#define MBI_FLAG_MODS (1u << 3)

/* Multiboot 1 information structure (only the fields we read). */
struct multiboot_info {
  unsigned int flags;       /* offset 0 */
  unsigned int mem_lower;   /* 4: KiB below 1 MiB (flags bit 0) */
  unsigned int mem_upper;   /* 8: KiB above 1 MiB (flags bit 0) */
  unsigned int boot_device; /* 12 */
  unsigned int cmdline;     /* 16: physical address of C string (bit 2) */
  unsigned int mods_count;  /* 20 (bit 3) */
  unsigned int mods_addr;   /* 24: physical address of module array (bit 3) */
};

/* One entry of the module array. */
struct multiboot_module {
  unsigned int mod_start; /* physical address of the first byte */
  unsigned int mod_end;   /* physical address one past the last byte */
  unsigned int string;    /* physical address of the module's C string */
  unsigned int reserved;
};

void mb_main(unsigned int magic, const struct multiboot_info *mbi);

__attribute__((noreturn)) void mb_main(unsigned int magic,
                                       const struct multiboot_info *mbi) {
  if (magic != MULTIBOOT_BOOTLOADER_MAGIC) {
    puts("bad magic\n");
    guest_exit(1);
  }
  puts("multiboot ok\n");

  puts("cmdline=");
  if ((mbi->flags & MBI_FLAG_CMDLINE) && mbi->cmdline != 0) {
    puts((const char *)mbi->cmdline);
  }
  putc('\n');

  puts("mem_upper=");
  if (mbi->flags & MBI_FLAG_MEM) {
    put_dec(mbi->mem_upper);
  } else {
    puts("none");
  }
  putc('\n');

  unsigned int mods = (mbi->flags & MBI_FLAG_MODS) ? mbi->mods_count : 0;
  puts("mods=");
  put_dec(mods);
  putc('\n');

  if (mods >= 1) {
    const struct multiboot_module *mod =
        (const struct multiboot_module *)mbi->mods_addr;
    const char *p = (const char *)mod->mod_start;
    const char *end = (const char *)mod->mod_end;
    puts("mod0=");
    for (int i = 0; i < 16 && p < end && *p != '\n'; i++, p++) putc(*p);
    putc('\n');
  }

  guest_exit(0);
}
