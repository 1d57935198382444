// tap's `after` program (package.json "tap.after"): runs once when every test file of a tap run
// has finished and prints one line with how many kernel probes ran, from the counts each kernel
// test process wrote at exit (test/support/kernel.ts, recordProbeStats). Prints nothing when no
// kernel test ran; never fails the run.
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { probeStatsDir } from './kernel.js';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

try {
  const dir = probeStatsDir(process.ppid);
  const files = (() => {
    try {
      return readdirSync(dir).filter((f) => f.endsWith('.json'));
    } catch {
      return [];
    }
  })();
  if (files.length > 0) {
    const total = new Map<string, number>();
    let slowest = { file: '', ms: 0 };
    for (const f of files) {
      const doc = JSON.parse(readFileSync(path.join(dir, f), 'utf8')) as { file: string; counts: Record<string, number>; ms: number };
      for (const [k, v] of Object.entries(doc.counts)) total.set(k, (total.get(k) ?? 0) + v);
      if (doc.ms > slowest.ms) slowest = { file: doc.file, ms: doc.ms };
    }
    const sum = [...total.values()].reduce((a, b) => a + b, 0);
    const parts = [...total].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join(', ');
    console.log(`# kernel probes: ${sum} in ${files.length} kernel test files (${parts}); longest file ${slowest.file} ${(slowest.ms / 1000).toFixed(1)} s`);
  }
  rmSync(dir, { recursive: true, force: true });
  // Directories of tap runs that were killed before their summary.
  const parent = path.dirname(dir);
  for (const d of readdirSync(parent)) {
    if (/^\d+$/.test(d) && !alive(Number(d))) rmSync(path.join(parent, d), { recursive: true, force: true });
  }
} catch {
  // a summary line is not worth a failed run
}
