/**
 * CPUID feature names hvsh can hide from a guest, and the per-vCPU fix-ups
 * (APIC id) applied to KVM_GET_SUPPORTED_CPUID.
 *
 * @module
 */

import type { CpuidEntry } from "./kvm/structs.ts";

type CpuidRegister = "eax" | "ebx" | "ecx" | "edx";

/** Where a feature flag lives: leaf, sub-leaf, register, bit. */
export interface FeatureBit {
  leaf: number;
  subleaf: number;
  register: CpuidRegister;
  bit: number;
}

/** Feature names as Linux's /proc/cpuinfo spells them. */
export const CPUID_FEATURES: Record<string, FeatureBit> = {
  sse3: { leaf: 1, subleaf: 0, register: "ecx", bit: 0 },
  pclmulqdq: { leaf: 1, subleaf: 0, register: "ecx", bit: 1 },
  monitor: { leaf: 1, subleaf: 0, register: "ecx", bit: 3 },
  vmx: { leaf: 1, subleaf: 0, register: "ecx", bit: 5 },
  ssse3: { leaf: 1, subleaf: 0, register: "ecx", bit: 9 },
  fma: { leaf: 1, subleaf: 0, register: "ecx", bit: 12 },
  cx16: { leaf: 1, subleaf: 0, register: "ecx", bit: 13 },
  pcid: { leaf: 1, subleaf: 0, register: "ecx", bit: 17 },
  sse4_1: { leaf: 1, subleaf: 0, register: "ecx", bit: 19 },
  sse4_2: { leaf: 1, subleaf: 0, register: "ecx", bit: 20 },
  x2apic: { leaf: 1, subleaf: 0, register: "ecx", bit: 21 },
  movbe: { leaf: 1, subleaf: 0, register: "ecx", bit: 22 },
  popcnt: { leaf: 1, subleaf: 0, register: "ecx", bit: 23 },
  tsc_deadline_timer: { leaf: 1, subleaf: 0, register: "ecx", bit: 24 },
  aes: { leaf: 1, subleaf: 0, register: "ecx", bit: 25 },
  xsave: { leaf: 1, subleaf: 0, register: "ecx", bit: 26 },
  avx: { leaf: 1, subleaf: 0, register: "ecx", bit: 28 },
  f16c: { leaf: 1, subleaf: 0, register: "ecx", bit: 29 },
  rdrand: { leaf: 1, subleaf: 0, register: "ecx", bit: 30 },
  hypervisor: { leaf: 1, subleaf: 0, register: "ecx", bit: 31 },
  fpu: { leaf: 1, subleaf: 0, register: "edx", bit: 0 },
  pse: { leaf: 1, subleaf: 0, register: "edx", bit: 3 },
  tsc: { leaf: 1, subleaf: 0, register: "edx", bit: 4 },
  msr: { leaf: 1, subleaf: 0, register: "edx", bit: 5 },
  pae: { leaf: 1, subleaf: 0, register: "edx", bit: 6 },
  apic: { leaf: 1, subleaf: 0, register: "edx", bit: 9 },
  pge: { leaf: 1, subleaf: 0, register: "edx", bit: 13 },
  pat: { leaf: 1, subleaf: 0, register: "edx", bit: 16 },
  pse36: { leaf: 1, subleaf: 0, register: "edx", bit: 17 },
  sse: { leaf: 1, subleaf: 0, register: "edx", bit: 25 },
  sse2: { leaf: 1, subleaf: 0, register: "edx", bit: 26 },
  fsgsbase: { leaf: 7, subleaf: 0, register: "ebx", bit: 0 },
  bmi1: { leaf: 7, subleaf: 0, register: "ebx", bit: 3 },
  avx2: { leaf: 7, subleaf: 0, register: "ebx", bit: 5 },
  smep: { leaf: 7, subleaf: 0, register: "ebx", bit: 7 },
  bmi2: { leaf: 7, subleaf: 0, register: "ebx", bit: 8 },
  erms: { leaf: 7, subleaf: 0, register: "ebx", bit: 9 },
  invpcid: { leaf: 7, subleaf: 0, register: "ebx", bit: 10 },
  avx512f: { leaf: 7, subleaf: 0, register: "ebx", bit: 16 },
  smap: { leaf: 7, subleaf: 0, register: "ebx", bit: 20 },
  la57: { leaf: 7, subleaf: 0, register: "ecx", bit: 16 },
  umip: { leaf: 7, subleaf: 0, register: "ecx", bit: 2 },
  pku: { leaf: 7, subleaf: 0, register: "ecx", bit: 3 },
  rdpid: { leaf: 7, subleaf: 0, register: "ecx", bit: 22 },
  syscall: { leaf: 0x8000_0001, subleaf: 0, register: "edx", bit: 11 },
  nx: { leaf: 0x8000_0001, subleaf: 0, register: "edx", bit: 20 },
  pdpe1gb: { leaf: 0x8000_0001, subleaf: 0, register: "edx", bit: 26 },
  rdtscp: { leaf: 0x8000_0001, subleaf: 0, register: "edx", bit: 27 },
  lm: { leaf: 0x8000_0001, subleaf: 0, register: "edx", bit: 29 },
};

/** What to change in the CPUID a vCPU sees. */
export interface CpuidOptions {
  /** Feature names to hide, e.g. `["cx16", "avx512f"]`. */
  hide?: readonly string[];
  /** 12-character vendor string for leaf 0, e.g. `"GenuineIntel"`. */
  vendor?: string;
  /** The APIC id the vCPU reports (leaf 1 EBX[31:24], leaf 0xb EDX); default its index. */
  apicId?: number;
}

/**
 * Builds the CPUID table for one vCPU from KVM's supported table: APIC id in
 * leaf 1 EBX[31:24] and leaf 0xb EDX, hidden features cleared, vendor replaced.
 * Throws a RangeError naming an unknown feature.
 */
export function cpuidForVcpu(
  supported: readonly CpuidEntry[],
  apicId: number,
  cpuCount: number,
  options: CpuidOptions = {},
): CpuidEntry[] {
  const entries = supported.map((e) => ({ ...e }));
  if (options.apicId !== undefined) {
    if (!Number.isInteger(options.apicId) || options.apicId < 0 || options.apicId > 255) {
      throw new RangeError(`Invalid APIC id ${options.apicId}: expected 0-255`);
    }
    apicId = options.apicId;
  }
  for (const name of options.hide ?? []) {
    const feature = CPUID_FEATURES[name.toLowerCase()];
    if (feature === undefined) {
      throw new RangeError(
        `Cannot hide CPUID feature ${JSON.stringify(name)}: unknown (known: ${Object.keys(CPUID_FEATURES).join(", ")})`,
      );
    }
    for (const entry of entries) {
      if (entry.function === feature.leaf && entry.index === feature.subleaf) {
        entry[feature.register] = (entry[feature.register] & ~(1 << feature.bit)) >>> 0;
      }
    }
  }
  if (options.vendor !== undefined) {
    const bytes = new TextEncoder().encode(options.vendor);
    if (bytes.length !== 12) {
      throw new RangeError(`CPUID vendor must be 12 characters, got ${JSON.stringify(options.vendor)}`);
    }
    const word = (i: number) => new DataView(bytes.buffer).getUint32(i, true);
    const leaf0 = entries.find((e) => e.function === 0);
    if (leaf0 !== undefined) {
      leaf0.ebx = word(0);
      leaf0.edx = word(4);
      leaf0.ecx = word(8);
    }
  }
  for (const entry of entries) {
    if (entry.function === 1) {
      // EBX: APIC id [31:24], logical processor count [23:16]; HTT (EDX bit 28) when several.
      entry.ebx = ((entry.ebx & 0x0000ffff) | ((cpuCount & 0xff) << 16) | ((apicId & 0xff) << 24)) >>> 0;
      entry.edx = cpuCount > 1 ? (entry.edx | (1 << 28)) >>> 0 : (entry.edx & ~(1 << 28)) >>> 0;
    }
    if (entry.function === 0xb || entry.function === 0x1f) entry.edx = apicId >>> 0;
  }
  return entries;
}
