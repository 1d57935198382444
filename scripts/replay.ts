// `npm run test:replay -- [--seed N] [--run K] [--runs R] [--flows F] [--keep]`
// Runs the kernel differential test (test/kernel-differential.test.ts) with a fixed seed, e.g. the
// one a failing run printed, optionally only scenario K of it; or a longer soak with more
// scenarios (--runs) and flows per scenario (--flows). --keep leaves the namespaces behind for
// inspection (CACL_KEEP_NETNS=1). No time limit: tap's per-file timeout is turned off.
import { spawn } from 'node:child_process';
import path from 'node:path';
import { repoRoot } from '../agent/harness/cli.js';

const USAGE = 'usage: npm run test:replay -- [--seed N] [--run K] [--runs R] [--flows F] [--keep]';
const env: NodeJS.ProcessEnv = { ...process.env };
const args = process.argv.slice(2);
const number = (flag: string, value: string | undefined): string => {
  if (value === undefined || !/^\d+$/.test(value)) {
    console.error(`${flag} needs a non-negative integer\n${USAGE}`);
    process.exit(2);
  }
  return value;
};
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  const [flag, inline] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
  const value = () => inline ?? args[++i];
  switch (flag) {
    case '--seed': env.CACL_DIFF_SEED = number(flag, value()); break;
    case '--run': env.CACL_DIFF_RUN = number(flag, value()); break;
    case '--runs': env.CACL_DIFF_RUNS = number(flag, value()); break;
    case '--flows': env.CACL_DIFF_FLOWS = number(flag, value()); break;
    case '--keep': env.CACL_KEEP_NETNS = '1'; break;
    case '-h': case '--help': console.log(USAGE); process.exit(0); break;
    default:
      console.error(`unknown argument ${a}\n${USAGE}`);
      process.exit(2);
  }
}
if (env.CACL_DIFF_RUN !== undefined && env.CACL_DIFF_SEED === undefined) {
  console.error(`--run needs the --seed it belongs to\n${USAGE}`);
  process.exit(2);
}

const root = repoRoot();
const tap = path.join(root, 'node_modules', '.bin', 'tap');
const child = spawn(tap, ['-t0', '-R', 'tap', 'test/kernel-differential.test.ts'], { cwd: root, env, stdio: 'inherit' });
child.on('exit', (code, signal) => {
  if (signal) process.kill(process.pid, signal);
  process.exit(code ?? 1);
});
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => child.kill(sig));
