// The live table as read back from `nft -j list table`, reduced to what we compare and report.
import type { CounterValue, Manifest } from './render.js';

export interface LiveCounter extends CounterValue {
  name: string;
  comment: string;
}

export interface LiveTable {
  /** Apply metadata: the comment of the `acl_ruleset` counter. */
  comment?: string;
  counters: Map<string, LiveCounter>;
  manifest: Manifest;
  /** Packets dropped per rule comment (default drop per LAN pair, invalid, tunnel route missing). */
  drops: { chain: string; comment: string; packets: number; bytes: number }[];
}

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

export function parseLiveTable(jsonText: string, table: string): LiveTable | undefined {
  const doc = JSON.parse(jsonText) as { nftables?: Json[] };
  const items = doc.nftables ?? [];
  const tableItem = items.find((i) => i.table && i.table.name === table && i.table.family === 'inet');
  if (!tableItem) return undefined;
  const live: LiveTable = { counters: new Map(), manifest: { chains: {}, maps: {}, counters: [] }, drops: [] };
  for (const item of items) {
    if (item.counter) {
      const c = item.counter;
      live.counters.set(c.name, { name: c.name, comment: c.comment ?? '', packets: c.packets ?? 0, bytes: c.bytes ?? 0 });
      live.manifest.counters.push(c.name);
      if (c.name === 'acl_ruleset') live.comment = c.comment;
    } else if (item.chain) {
      live.manifest.chains[item.chain.name] ??= 0;
    } else if (item.map || item.set) {
      const m = item.map ?? item.set;
      live.manifest.maps[m.name] = Array.isArray(m.elem) ? m.elem.length : 0;
    } else if (item.rule) {
      const r = item.rule;
      live.manifest.chains[r.chain] = (live.manifest.chains[r.chain] ?? 0) + 1;
      const exprs: Json[] = r.expr ?? [];
      const counter = exprs.find((e) => e.counter && typeof e.counter === 'object' && 'packets' in e.counter)?.counter;
      if (counter && exprs.some((e) => 'drop' in e) && r.comment) {
        live.drops.push({ chain: r.chain, comment: r.comment, packets: counter.packets, bytes: counter.bytes });
      }
    }
  }
  return live;
}

export function parseCounters(jsonText: string, table: string): Map<string, LiveCounter> {
  const doc = JSON.parse(jsonText) as { nftables?: Json[] };
  const out = new Map<string, LiveCounter>();
  for (const item of doc.nftables ?? []) {
    const c = item.counter;
    if (c && c.table === table && c.family === 'inet') {
      out.set(c.name, { name: c.name, comment: c.comment ?? '', packets: c.packets ?? 0, bytes: c.bytes ?? 0 });
    }
  }
  return out;
}

/** The apply metadata (comment of the `acl_ruleset` counter) from `nft list table` text. */
export function rulesetComment(text: string | undefined): string | undefined {
  return text ? /^\tcounter acl_ruleset \{\n\t\tcomment "([^"]*)"/m.exec(text)?.[1] : undefined;
}

/** Differences between what was compiled and what the kernel holds; empty means verified. */
export function compareManifests(expected: Manifest, live: Manifest): string[] {
  const out: string[] = [];
  const diff = (what: string, a: Record<string, number>, b: Record<string, number>, unit: string) => {
    for (const [name, n] of Object.entries(a)) {
      if (!(name in b)) out.push(`${what} ${name} is missing`);
      else if (b[name] !== n) out.push(`${what} ${name} has ${b[name]} ${unit}, expected ${n}`);
    }
    for (const name of Object.keys(b)) if (!(name in a)) out.push(`unexpected ${what} ${name}`);
  };
  diff('chain', expected.chains, live.chains, 'rules');
  // Policy maps carry a generation suffix (`_g7`) that changes with every update; compare the
  // maps by their base name, and flag a map present in two generations at once.
  const byBase = (maps: Record<string, number>): Record<string, number> => {
    const bases: Record<string, number> = {};
    for (const [name, n] of Object.entries(maps)) {
      const base = name.replace(/_g\d+$/, '');
      if (base in bases) out.push(`map ${base} exists in two generations`);
      bases[base] = n;
    }
    return bases;
  };
  diff('map', byBase(expected.maps), byBase(live.maps), 'elements');
  // The metadata counter is not part of the rules (compile output has none).
  const policyCounters = (cs: string[]) => cs.filter((c) => c !== 'acl_ruleset');
  const liveCounters = new Set(policyCounters(live.counters));
  const expectedCounters = policyCounters(expected.counters);
  for (const c of expectedCounters) if (!liveCounters.has(c)) out.push(`counter ${c} is missing`);
  for (const c of liveCounters) if (!expectedCounters.includes(c)) out.push(`unexpected counter ${c}`);
  return out;
}
