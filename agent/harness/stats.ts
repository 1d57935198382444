// How many kernel probes this process ran, by kind. Every probe function of the harness counts
// itself here; the kernel tests write the totals out at exit (test/support/kernel.ts) and tap's
// `after` program prints one summary line for the whole run.

const counts = new Map<string, number>();

export function countProbe(kind: string, n = 1): void {
  counts.set(kind, (counts.get(kind) ?? 0) + n);
}

/** Probes so far, by kind (e.g. `tcp`, `udp`, `icmp`, `raw`, `stream`, `train`, `knock`). */
export function probeCounts(): Record<string, number> {
  return Object.fromEntries([...counts].sort(([a], [b]) => a.localeCompare(b)));
}

export function probeTotal(): number {
  let n = 0;
  for (const v of counts.values()) n += v;
  return n;
}
