/*
 * madt.c - ELF32 guest that walks the firmware's CPU tables (madt.elf),
 * entry `_start` in lib/start32.S (paging off: tables anywhere below 4 GiB
 * are readable).
 *
 * ACPI: finds the RSDP ("RSD PTR " on a 16-byte boundary with a valid
 * checksum over its first 20 bytes) in the first KiB of the EBDA (segment at
 * 0x40e, if non-zero) or in 0xe0000-0xfffff; follows the XSDT (revision >= 2,
 * address non-zero and below 4 GiB, extended checksum valid) or else the
 * RSDT to the "APIC" table (MADT), checking each table's checksum. Counts the
 * MADT's type-0 entries (processor local APIC) whose flags have bit 0
 * (enabled) set and its type-1 entries (I/O APIC); the local APIC address is
 * the MADT's field, replaced by a type-5 override if one is present.
 *
 * MP spec: finds the floating pointer "_MP_" (16-byte aligned, valid checksum
 * over length * 16 bytes) in 0x9fc00-0xa0000 or 0xf0000-0xfffff and counts
 * the enabled processor entries (type 0, flags bit 0) of its "PCMP"
 * configuration table.
 *
 * Host test expects, e.g. with `--cpus 2`:
 *   "madt cpus=2 ioapic=1 lapic=fee00000\nmp cpus=2\n", exit V=0 (status 1)
 * (lapic in 8 lowercase hex digits). Other MP lines: "mp none\n" (no
 * floating pointer; still V=0), "mp default\n" (a default configuration,
 * no table), "mp bad table\n" (V=1).
 * ACPI failures, each followed by the MP line and exit V=1 (status 3):
 *   "no rsdp\n", "bad rsdt\n" (root table signature or checksum),
 *   "no madt\n", "bad madt\n" (MADT checksum).
 */
#include "pc.h"

#define ACPI_HEADER_SIZE 36
#define MADT_ENTRIES 44 /* header + local APIC address + flags */
#define MADT_LOCAL_APIC 0
#define MADT_IO_APIC 1
#define MADT_LAPIC_OVERRIDE 5
#define MP_CONFIG_ENTRIES 44
#define MP_PROCESSOR 0
#define MP_PROCESSOR_SIZE 20
#define MP_OTHER_SIZE 8
#define TABLE_MAX 0x10000 /* sanity cap on table lengths */

int main(void);

static unsigned int rd8(unsigned long addr) { return *(const unsigned char *)addr; }
static unsigned int rd16(unsigned long addr) { return rd8(addr) | rd8(addr + 1) << 8; }
static unsigned int rd32(unsigned long addr) { return rd16(addr) | rd16(addr + 2) << 16; }

/* True when the `len` bytes at `addr` sum to 0 (mod 256). */
static int checksum_ok(unsigned long addr, unsigned int len) {
  unsigned char sum = 0;
  for (unsigned int i = 0; i < len; i++) sum = (unsigned char)(sum + rd8(addr + i));
  return sum == 0;
}

/* True when the bytes at `addr` start with the string `sig`. */
static int sig_is(unsigned long addr, const char *sig) {
  for (int i = 0; sig[i]; i++) {
    if (rd8(addr + i) != (unsigned char)sig[i]) return 0;
  }
  return 1;
}

/* Finds a 16-byte aligned `sig` in [start, end) for which `valid` holds. */
static unsigned long scan(unsigned long start, unsigned long end, const char *sig, int (*valid)(unsigned long)) {
  for (unsigned long a = start; a + 16 <= end; a += 16) {
    if (sig_is(a, sig) && valid(a)) return a;
  }
  return 0;
}

static int rsdp_valid(unsigned long a) { return checksum_ok(a, 20); }

static int mp_valid(unsigned long a) {
  unsigned int len = rd8(a + 8) * 16;
  return len >= 16 && checksum_ok(a, len);
}

/* A system description table is usable when its checksum holds. */
static int table_ok(unsigned long addr) {
  unsigned int len = rd32(addr + 4);
  return len >= ACPI_HEADER_SIZE && len <= TABLE_MAX && checksum_ok(addr, len);
}

/* Returns the "APIC" table listed in the RSDT/XSDT at `root`, or 0. */
static unsigned long find_madt(unsigned long root, unsigned int entry_size) {
  unsigned int len = rd32(root + 4);
  for (unsigned int off = ACPI_HEADER_SIZE; off + entry_size <= len; off += entry_size) {
    if (entry_size == 8 && rd32(root + off + 4) != 0) continue; /* above 4 GiB */
    unsigned long table = rd32(root + off);
    if (table != 0 && sig_is(table, "APIC")) return table;
  }
  return 0;
}

/* Prints the MADT line; returns 0, or 1 after printing an error line. */
static int report_acpi(void) {
  unsigned long rsdp = 0;
  unsigned long ebda = (unsigned long)rd16(0x40e) << 4;
  if (ebda != 0) rsdp = scan(ebda, ebda + 1024, "RSD PTR ", rsdp_valid);
  if (rsdp == 0) rsdp = scan(0xe0000, 0x100000, "RSD PTR ", rsdp_valid);
  if (rsdp == 0) {
    puts("no rsdp\n");
    return 1;
  }

  unsigned long root = 0;
  unsigned int entry_size = 4;
  unsigned int xsdt_low = rd32(rsdp + 24);
  unsigned int xsdt_high = rd32(rsdp + 28);
  if (rd8(rsdp + 15) >= 2 && xsdt_low != 0 && xsdt_high == 0 && checksum_ok(rsdp, 36)) {
    root = xsdt_low;
    entry_size = 8;
    if (!sig_is(root, "XSDT") || !table_ok(root)) root = 0;
  }
  if (root == 0) {
    root = rd32(rsdp + 16);
    entry_size = 4;
    if (root == 0 || !sig_is(root, "RSDT") || !table_ok(root)) {
      puts("bad rsdt\n");
      return 1;
    }
  }

  unsigned long madt = find_madt(root, entry_size);
  if (madt == 0) {
    puts("no madt\n");
    return 1;
  }
  if (!table_ok(madt)) {
    puts("bad madt\n");
    return 1;
  }

  unsigned int len = rd32(madt + 4);
  unsigned int lapic = rd32(madt + ACPI_HEADER_SIZE);
  unsigned int cpus = 0, ioapics = 0;
  for (unsigned int off = MADT_ENTRIES; off + 2 <= len;) {
    unsigned int type = rd8(madt + off);
    unsigned int entry_len = rd8(madt + off + 1);
    if (entry_len < 2) break; /* malformed: stop rather than loop */
    if (type == MADT_LOCAL_APIC && entry_len >= 8 && (rd32(madt + off + 4) & 1)) cpus++;
    if (type == MADT_IO_APIC) ioapics++;
    if (type == MADT_LAPIC_OVERRIDE && entry_len >= 12) lapic = rd32(madt + off + 4);
    off += entry_len;
  }
  puts("madt cpus=");
  put_dec(cpus);
  puts(" ioapic=");
  put_dec(ioapics);
  puts(" lapic=");
  put_hex(lapic, 8);
  putc('\n');
  return 0;
}

/* Prints the MP line; returns 0, or 1 for a broken table. */
static int report_mp(void) {
  unsigned long fp = scan(0x9fc00, 0xa0000, "_MP_", mp_valid);
  if (fp == 0) fp = scan(0xf0000, 0x100000, "_MP_", mp_valid);
  if (fp == 0) {
    puts("mp none\n");
    return 0;
  }
  unsigned long table = rd32(fp + 4);
  if (table == 0 || rd8(fp + 11) != 0) {
    puts("mp default\n");
    return 0;
  }
  unsigned int len = rd16(table + 4);
  if (!sig_is(table, "PCMP") || len < MP_CONFIG_ENTRIES || !checksum_ok(table, len)) {
    puts("mp bad table\n");
    return 1;
  }
  unsigned int count = rd16(table + 34);
  unsigned int cpus = 0;
  unsigned long entry = table + MP_CONFIG_ENTRIES;
  for (unsigned int i = 0; i < count && entry < table + len; i++) {
    if (rd8(entry) == MP_PROCESSOR) {
      if (rd8(entry + 3) & 1) cpus++;
      entry += MP_PROCESSOR_SIZE;
    } else {
      entry += MP_OTHER_SIZE;
    }
  }
  puts("mp cpus=");
  put_dec(cpus);
  putc('\n');
  return 0;
}

int main(void) {
  int failed = report_acpi();
  failed |= report_mp();
  guest_exit(failed ? 1 : 0);
}
