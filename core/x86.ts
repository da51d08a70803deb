/**
 * Architectural bits of x86 control registers and EFER that the machine, the
 * page walker and the gdb target all read (Intel SDM vol. 3, 2.5 and 2.2.1).
 *
 * @module
 */

/** CR0 bits. */
export const CR0 = {
  /** Protection enable. */
  PE: 1n,
  /** Extension type (always 1 on modern CPUs). */
  ET: 1n << 4n,
  /** Numeric error: x87 errors as #MF. */
  NE: 1n << 5n,
  /** Write protect: supervisor writes honour read-only pages. */
  WP: 1n << 16n,
  /** Paging. */
  PG: 1n << 31n,
} as const;

/** CR4 bits. */
export const CR4 = {
  /** 4 MiB pages in 32-bit paging. */
  PSE: 1n << 4n,
  /** Physical address extension. */
  PAE: 1n << 5n,
  /** Five-level paging. */
  LA57: 1n << 12n,
} as const;

/** IA32_EFER bits. */
export const EFER = {
  /** Long mode enable. */
  LME: 1n << 8n,
  /** Long mode active. */
  LMA: 1n << 10n,
  /** No-execute enable. */
  NXE: 1n << 11n,
} as const;
