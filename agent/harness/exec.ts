// Process execution for the harness: argument arrays only (never a shell), bounded by a timeout.
import { spawn, spawnSync } from 'node:child_process';

export interface RunResult {
  argv: string[];
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

export interface RunOptions {
  /** Written to stdin, then stdin is closed. */
  input?: string;
  /** Killed with SIGKILL after this many ms (default 15 s). */
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

/** A failed command as an Error that still carries everything the caller may want to print. */
export class CommandError extends Error {
  constructor(readonly result: RunResult) {
    const why = result.timedOut ? 'timed out' : result.signal ? `killed by ${result.signal}` : `exit ${result.code}`;
    super(`${result.argv.join(' ')}: ${why}${result.stderr.trim() ? `: ${result.stderr.trim()}` : ''}`);
    this.name = 'CommandError';
  }
}

export function run(argv: string[], options: RunOptions = {}): Promise<RunResult> {
  const [cmd, ...args] = argv;
  const timeoutMs = options.timeoutMs ?? 15_000;
  return new Promise((resolve) => {
    const child = spawn(cmd, args, {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: options.env ?? process.env,
      cwd: options.cwd,
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    let settled = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    const finish = (code: number | null, signal: NodeJS.Signals | null, extra = ''): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve({
        argv,
        code,
        signal,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8') + extra,
        timedOut,
      });
    };
    child.on('error', (e) => finish(null, null, `${e.message}\n`));
    child.on('close', (code, signal) => finish(code, signal));
    child.stdin.on('error', () => undefined);
    child.stdin.end(options.input ?? '');
  });
}

/** Like `run`, but rejects with a CommandError unless the command exits 0. */
export async function check(argv: string[], options: RunOptions = {}): Promise<RunResult> {
  const result = await run(argv, options);
  if (result.code !== 0) throw new CommandError(result);
  return result;
}

/** Synchronous variant for exit handlers, where nothing asynchronous runs any more. */
export function runSync(argv: string[], timeoutMs = 5_000): { code: number | null; stderr: string } {
  const [cmd, ...args] = argv;
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], timeout: timeoutMs, killSignal: 'SIGKILL' });
  return { code: r.status, stderr: r.stderr?.toString('utf8') ?? '' };
}

/** `ip netns exec NS argv…` */
export const inNs = (ns: string, argv: string[]): string[] => ['ip', 'netns', 'exec', ns, ...argv];
