// nft operations as argument arrays and stdin text, over an injected runner.
import { nftErrorFrom } from './errors.js';
import { runChecked, type CommandRunner } from './exec.js';
import { parseLiveTable, type LiveTable } from './live.js';

export class NftClient {
  constructor(private readonly runner: CommandRunner, private readonly binary = 'nft') {}

  /** Loads a script in one transaction (`nft -f -`): all of it or, on any error, none of it. */
  async load(script: string, lineOwners?: ReadonlyMap<number, string>): Promise<void> {
    const r = await this.runner.run([this.binary, '-f', '-'], { input: script });
    if (r.code !== 0) throw nftErrorFrom(r.stderr, lineOwners);
  }

  /** Checks a script without touching the ruleset (`nft -c -f -`). */
  async check(script: string, lineOwners?: ReadonlyMap<number, string>): Promise<void> {
    const r = await this.runner.run([this.binary, '-c', '-f', '-'], { input: script });
    if (r.code !== 0) throw nftErrorFrom(r.stderr, lineOwners);
  }

  /** The table as nft text, or undefined when it does not exist. */
  async tableText(table: string): Promise<string | undefined> {
    const r = await this.runner.run([this.binary, 'list', 'table', 'inet', table]);
    if (r.code === 0) return r.stdout;
    const err = nftErrorFrom(r.stderr);
    if (err.kind === 'not-found') return undefined;
    throw err;
  }

  async readTable(table: string): Promise<LiveTable | undefined> {
    const r = await this.runner.run([this.binary, '-j', 'list', 'table', 'inet', table]);
    if (r.code !== 0) {
      const err = nftErrorFrom(r.stderr);
      if (err.kind === 'not-found') return undefined;
      throw err;
    }
    const live = parseLiveTable(r.stdout, table);
    if (live && live.comment === undefined) {
      // nft 1.0.x leaves the table comment out of its JSON; the text form has it on line 2.
      const text = await this.tableText(table);
      const m = text ? /^table inet \S+ \{\n\tcomment "([^"]*)"/.exec(text) : null;
      if (m) live.comment = m[1];
    }
    return live;
  }

  async deleteTable(table: string): Promise<boolean> {
    const r = await this.runner.run([this.binary, 'delete', 'table', 'inet', table]);
    if (r.code === 0) return true;
    const err = nftErrorFrom(r.stderr);
    if (err.kind === 'not-found') return false;
    throw err;
  }

  async version(): Promise<string> {
    return (await runChecked(this.runner, [this.binary, '--version'])).stdout.trim();
  }
}
