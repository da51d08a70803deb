/*
 * fwcfg.c - ELF32 guest reading QEMU's fw_cfg over the legacy I/O interface
 * (fwcfg.elf), entry `_start` in lib/start32.S.
 *
 * Each item is read by a 16-bit `out` of its key to port 0x510, then byte
 * `in`s from port 0x511 (docs/specs/fw_cfg.rst in QEMU): signature 0x00
 * ("QEMU"), RAM size 0x03 (u64 LE), CPU count 0x05 (u16 LE), command-line
 * size 0x14 (u32 LE, counting the NUL) and data 0x15 (the bytes; printing
 * stops at the first NUL or after the size, at most 4096 bytes).
 *
 * Host test expects, e.g. for `--mem 64M --cpus 2 --append "console=ttyS0"`:
 *   "sig=QEMU ram=64 cpus=2 cmdline=console=ttyS0\n", exit V=0 (status 1)
 * (ram in MiB, decimal; an empty command line prints nothing after '=').
 * Signature not "QEMU": "no fw_cfg\n", exit V=1 (status 3).
 */
#include "pc.h"

#define CMDLINE_MAX 4096

int main(void);

int main(void) {
  if (!fw_cfg_present()) {
    puts("no fw_cfg\n");
    guest_exit(1);
  }
  unsigned long long ram = fw_cfg_read_le(FW_CFG_RAM_SIZE, 8);
  unsigned int cpus = (unsigned int)fw_cfg_read_le(FW_CFG_NB_CPUS, 2);
  unsigned int cmdline_size = (unsigned int)fw_cfg_read_le(FW_CFG_CMDLINE_SIZE, 4);

  puts("sig=QEMU ram=");
  put_dec((unsigned long)(ram >> 20));
  puts(" cpus=");
  put_dec(cpus);
  puts(" cmdline=");
  fw_cfg_select(FW_CFG_CMDLINE_DATA);
  for (unsigned int i = 0; i < cmdline_size && i < CMDLINE_MAX; i++) {
    unsigned char c = fw_cfg_read8();
    if (c == 0) break;
    putc((char)c);
  }
  putc('\n');
  guest_exit(0);
}
