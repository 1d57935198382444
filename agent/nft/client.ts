// nft operations as argument arrays and stdin text, over an injected runner.
import { nftErrorFrom } from './errors.js';
import { runChecked, type CommandRunner } from './exec.js';
import { parseCounters, parseLiveTable, type LiveCounter, type LiveTable } from './live.js';

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

  /** The table's named counters (`nft -j list counters`), or undefined when the table does not exist. */
  async readCounters(table: string): Promise<Map<string, LiveCounter> | undefined> {
    const r = await this.runner.run([this.binary, '-j', 'list', 'counters', 'table', 'inet', table]);
    if (r.code !== 0) {
      const err = nftErrorFrom(r.stderr);
      if (err.kind === 'not-found') return undefined;
      throw err;
    }
    return parseCounters(r.stdout, table);
  }

  /** Parsed `nft -j list table`. */
  async readTable(table: string): Promise<LiveTable | undefined> {
    const r = await this.runner.run([this.binary, '-j', 'list', 'table', 'inet', table]);
    if (r.code !== 0) {
      const err = nftErrorFrom(r.stderr);
      if (err.kind === 'not-found') return undefined;
      throw err;
    }
    return parseLiveTable(r.stdout, table);
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
