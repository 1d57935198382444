// The one place that starts processes (nft, ip). Everything else builds argument arrays
// and input text as values; tests substitute a scripted runner.
import { spawn } from 'node:child_process';

export interface ProcessResult {
  argv: readonly string[];
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** A failed process is an Error that still carries everything it printed. */
export class ProcessError extends Error implements ProcessResult {
  readonly argv: readonly string[];
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  constructor(result: ProcessResult) {
    const how = result.signal ? `killed by ${result.signal}` : `exit code ${result.code}`;
    super(`${result.argv.join(' ')}: ${how}${result.stderr ? `: ${result.stderr.trim().split('\n')[0]}` : ''}`);
    this.name = 'ProcessError';
    ({ argv: this.argv, code: this.code, signal: this.signal, stdout: this.stdout, stderr: this.stderr } = result);
  }
}

/** The program itself could not be started (not installed, not executable). */
export class SpawnError extends Error {
  constructor(readonly program: string, readonly code: string | undefined, message: string) {
    super(message);
    this.name = 'SpawnError';
  }
}

export interface RunOptions {
  input?: string;
  timeoutMs?: number;
}

export interface CommandRunner {
  /** Runs argv (no shell). Resolves with the result whatever the exit code; rejects only with SpawnError. */
  run(argv: readonly string[], options?: RunOptions): Promise<ProcessResult>;
}

export const DEFAULT_TIMEOUT_MS = 60_000;

export const systemRunner: CommandRunner = {
  run(argv, options = {}) {
    return new Promise((resolve, reject) => {
      const [program, ...args] = argv;
      const child = spawn(program, args, { stdio: ['pipe', 'pipe', 'pipe'], timeout: options.timeoutMs ?? DEFAULT_TIMEOUT_MS });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      child.stdout.on('data', (b: Buffer) => out.push(b));
      child.stderr.on('data', (b: Buffer) => err.push(b));
      child.on('error', (e: NodeJS.ErrnoException) => {
        const why = e.code === 'ENOENT' ? `${program} is not installed (or not on PATH)` : `cannot run ${program}: ${e.message}`;
        reject(new SpawnError(program, e.code, why));
      });
      child.on('close', (code, signal) => {
        resolve({ argv, code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') });
      });
      // A process that exits before reading stdin gives EPIPE; its exit status tells the story.
      child.stdin.on('error', () => {});
      child.stdin.end(options.input ?? '');
    });
  },
};

/** Runs every command inside a network namespace (`ip netns exec NS …`): used by tests and tools. */
export function netnsRunner(namespace: string, inner: CommandRunner = systemRunner): CommandRunner {
  return { run: (argv, options) => inner.run(['ip', 'netns', 'exec', namespace, ...argv], options) };
}

export async function runChecked(runner: CommandRunner, argv: readonly string[], options?: RunOptions): Promise<ProcessResult> {
  const result = await runner.run(argv, options);
  if (result.code !== 0) throw new ProcessError(result);
  return result;
}

/** A long-running process whose stdout is read line by line (e.g. `ip -o monitor link`). */
export interface LineProcess {
  /** Resolves when the process has exited, for whatever reason (never rejects). */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; error?: string }>;
  /** Ends the process (SIGTERM); safe to call more than once. */
  stop(): void;
}

export type LineSpawner = (argv: readonly string[], onLine: (line: string) => void) => LineProcess;

/** Starts argv (no shell) and calls onLine for each line it prints on stdout. */
export const spawnLines: LineSpawner = (argv, onLine) => {
  const [program, ...args] = argv;
  const child = spawn(program, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let buffered = '';
  let stderr = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk: string) => {
    buffered += chunk;
    let nl: number;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      if (line.trim()) onLine(line);
    }
  });
  child.stderr.on('data', (b: Buffer) => {
    stderr = (stderr + b.toString('utf8')).slice(-2000);
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; error?: string }>((resolve) => {
    child.on('error', (e) => resolve({ code: null, signal: null, error: e.message }));
    child.on('close', (code, signal) => resolve({ code, signal, error: stderr.trim() || undefined }));
  });
  return {
    exited,
    stop: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    },
  };
};
