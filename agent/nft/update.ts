// Changing a live table without a gap. Replacing the whole table is atomic for rules, but the
// kernel fills a new concatenated interval map (pipapo) only when the transaction commits, after
// the new rules are live: for that instant every lookup misses and allowed packets are dropped.
// So an update is two transactions:
//   prepare: the next generation's policy maps (new names, `_g<N>`) and any chain they jump to
//            are added beside the live ones; nothing references them yet, so packets see no change.
//   commit:  every chain is flushed and refilled, its lookups now naming the prepared maps; the
//            dispatch maps are refilled; the previous generation's maps, chains and counters of
//            removed or changed policies are deleted. Counters of unchanged policies stay as they are.
// Pure: text in, text out.
import { META_COUNTER, type Block, type Rendered } from './render.js';

/** What the live table holds, by name (from `nft list table` text). */
export interface LiveObjects {
  chains: Set<string>;
  maps: Set<string>;
  /** Counter name → comment. */
  counters: Map<string, string>;
}

export interface UpdateScripts {
  prepare: Script;
  commit: Script;
  /** Maps the prepare step adds: deleted again if the commit fails. */
  preparedMaps: string[];
}

export interface Script {
  text: string;
  lineOwners: Map<number, string>;
}

/** Reads object names from `nft list table inet T` text (nft's own, regular format). */
export function liveObjectsFromText(text: string): LiveObjects {
  const live: LiveObjects = { chains: new Set(), maps: new Set(), counters: new Map() };
  const lines = text.split('\n');
  lines.forEach((line, i) => {
    const m = /^\t(chain|map|set|counter) (\S+) \{$/.exec(line);
    if (!m) return;
    if (m[1] === 'chain') live.chains.add(m[2]);
    else if (m[1] === 'map' || m[1] === 'set') live.maps.add(m[2]);
    else live.counters.set(m[2], /^\t\tcomment "([^"]*)"$/.exec(lines[i + 1] ?? '')?.[1] ?? '');
  });
  return live;
}

/** The generation after the highest one among the live maps (1 when there is none). */
export function nextGeneration(live: LiveObjects): number {
  let max = 0;
  for (const name of live.maps) {
    const m = /_g(\d+)$/.exec(name);
    if (m) max = Math.max(max, Number(m[1]));
  }
  return max + 1;
}

/** True when the live table was written by this engine's update-capable format. */
export const canUpdate = (live: LiveObjects): boolean => live.counters.has(META_COUNTER);

class Builder {
  readonly lines: string[] = [];
  readonly owners = new Map<number, string>();
  add(text: string, owner?: string): void {
    this.lines.push(text);
    if (owner !== undefined) this.owners.set(this.lines.length, owner);
  }
  block(b: Block): void {
    for (const l of b.lines) this.add(l.text, l.owner);
  }
  done(): Script {
    return { text: `${this.lines.join('\n')}\n`, lineOwners: this.owners };
  }
}

const isGenerationMap = (b: Block): boolean => b.kind === 'map' && /_g\d+$/.test(b.name);
const isBaseChain = (b: Block): boolean => b.kind === 'chain' && b.lines.some((l) => /^\t\ttype filter hook /.test(l.text));
const counterComment = (b: Block): string => /^\t\tcomment "([^"]*)"$/.exec(b.lines[1]?.text ?? '')?.[1] ?? '';

export interface UpdateOptions {
  /**
   * Leave alone the chain of a policy whose counter is kept (same content hash and name). Only
   * true when the marks policy chains write are unchanged too; at 10k policies this spares
   * rewriting 10k chains.
   */
  keepUnchangedPolicyChains?: boolean;
}

/** `rendered` must come from `render(ir, { generation: nextGeneration(live), meta })`. */
export function updateScripts(table: string, rendered: Rendered, live: LiveObjects, options: UpdateOptions = {}): UpdateScripts {
  const blocks = rendered.blocks;
  const newNames = new Set(blocks.map((b) => `${b.kind}:${b.name}`));
  const has = (kind: Block['kind'], name: string) => newNames.has(`${kind}:${name}`);
  const wantedCounters = new Map(blocks.filter((b) => b.kind === 'counter').map((b) => [b.name, counterComment(b)]));
  const keptCounters = new Set<string>();
  for (const [name, comment] of live.counters) {
    if (name !== META_COUNTER && wantedCounters.get(name) === comment) keptCounters.add(name);
  }
  // A policy chain and its counter share the name `pol_<id>`.
  const untouched = (name: string) =>
    Boolean(options.keepUnchangedPolicyChains) && name.startsWith('pol_') && keptCounters.has(name) && live.chains.has(name);

  const prepare = new Builder();
  const prepared = blocks.filter(isGenerationMap);
  prepare.add(`# connector-acl update, step 1 of 2: the next generation's maps, not yet referenced.`);
  prepare.add(`table inet ${table} {`);
  // Chains the new maps jump to must exist; declaring an existing chain changes nothing.
  for (const b of blocks) if (b.kind === 'chain' && !isBaseChain(b) && !live.chains.has(b.name)) prepare.add(`\tchain ${b.name} {\n\t}`);
  for (const b of prepared) prepare.block(b);
  prepare.add('}');

  const commit = new Builder();
  commit.add(`# connector-acl update, step 2 of 2: switch every rule to the new maps, drop what is gone.`);
  for (const name of [...live.chains].sort()) if (!untouched(name)) commit.add(`flush chain inet ${table} ${name}`);
  // Dispatch maps keep their names: refilled in place. Their old elements stay visible until the
  // new rules are, so no packet falls between them. Constant sets are never touched.
  const refilled = blocks.filter((b) => b.kind === 'map' && !isGenerationMap(b) && live.maps.has(b.name));
  for (const b of refilled) commit.add(`flush map inet ${table} ${b.name}`);
  for (const name of [...live.maps].sort()) if (!has('map', name) && !has('set', name)) commit.add(`delete map inet ${table} ${name}`);
  for (const name of [...live.chains].sort()) if (!has('chain', name)) commit.add(`delete chain inet ${table} ${name}`);
  for (const name of [...live.counters.keys()].sort()) if (!keptCounters.has(name)) commit.add(`delete counter inet ${table} ${name}`);
  commit.add(`table inet ${table} {`);
  for (const b of blocks) {
    if (b.kind === 'counter' && !keptCounters.has(b.name)) commit.block(b);
    else if (b.kind === 'set' && !live.maps.has(b.name)) commit.block(b);
    else if (b.kind === 'map' && !isGenerationMap(b)) commit.block(b);
    else if (b.kind === 'chain' && !untouched(b.name)) commit.block(b);
  }
  commit.add('}');
  return { prepare: prepare.done(), commit: commit.done(), preparedMaps: prepared.map((b) => b.name) };
}
