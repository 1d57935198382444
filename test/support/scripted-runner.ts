// A scripted process fake: each expected call (argv prefix, optional stdin check) returns a canned
// result. An unexpected call fails the test loudly instead of silently succeeding.
import type { CommandRunner, ProcessResult, RunOptions } from '../../agent/nft/exec.js';

export interface Expectation {
  argv: string[];
  stdin?: (input: string) => boolean;
  result?: Partial<ProcessResult>;
}

export class ScriptedRunner implements CommandRunner {
  readonly calls: { argv: readonly string[]; input?: string }[] = [];
  constructor(private readonly script: Expectation[]) {}

  async run(argv: readonly string[], options: RunOptions = {}): Promise<ProcessResult> {
    this.calls.push({ argv, input: options.input });
    const next = this.script.shift();
    if (!next) throw new Error(`unexpected call: ${argv.join(' ')}`);
    if (next.argv.join(' ') !== argv.join(' ')) throw new Error(`expected ${next.argv.join(' ')}, got ${argv.join(' ')}`);
    if (next.stdin && !next.stdin(options.input ?? '')) throw new Error(`stdin of ${argv.join(' ')} did not match`);
    return { argv, code: 0, signal: null, stdout: '', stderr: '', ...next.result };
  }

  get remaining(): number {
    return this.script.length;
  }
}
