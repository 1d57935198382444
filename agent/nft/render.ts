// Renders the IR as one nft script that replaces the engine's table in a single transaction.
// Pure: the same IR and options always give byte-identical text.
import { rangeToNft, type Family } from '../policy/address.js';
import type { Lan } from '../policy/model.js';
import type { Cell } from '../ir/decompose.js';
import type { Dim, Ir, IrMap, IrPairPath, IrPolicy, TrafficPath } from '../ir/ir.js';

export interface CounterValue {
  packets: number;
  bytes: number;
}

export interface RenderOptions {
  /**
   * Apply metadata (ruleset hash, time), kept as the comment of the `acl_ruleset` counter: a
   * table comment cannot be changed without replacing the table. Omitted by `compile`.
   */
  meta?: string;
  /** Starting values for named counters (kept across a re-apply of an unchanged policy). */
  counters?: ReadonlyMap<string, CounterValue>;
  /**
   * Suffix `_g<N>` for the policy maps. An update loads the next generation's maps beside the
   * live ones first and switches the rules over in a second transaction (see update.ts).
   */
  generation?: number;
}

/** One top-level object of the table as rendered: its lines and which policy each line serves. */
export interface Block {
  kind: 'counter' | 'set' | 'map' | 'chain';
  name: string;
  lines: { text: string; owner?: string }[];
}

export interface Rendered {
  text: string;
  /** 1-based script line → id of the policy that line belongs to; maps nft errors back to input. */
  lineOwners: Map<number, string>;
  elementCount: number;
  /** What the kernel must hold afterwards; the read-back is compared with it. */
  manifest: Manifest;
  /** The table's objects, for update scripts. */
  blocks: Block[];
}

export interface Manifest {
  chains: Record<string, number>;
  maps: Record<string, number>;
  counters: string[];
}

export const FORWARD_CHAIN = 'forward';
export const PREROUTING_CHAIN = 'prerouting';
export const LAN_PAIRS_MAP = 'lan_pairs';
export const CLOUDFLARE_INGRESS_MAP = 'cf_ingress';
/** Constant sets the lookup rules test; named so that updates never recreate them. */
export const PORT_PROTOCOLS_SET = 'l4_ports';
export const ICMP_SET = 'l4_icmp';

/** Named counter whose comment holds the apply metadata (`hash=… applied=… policies=…`). */
export const META_COUNTER = 'acl_ruleset';

class Script {
  readonly lines: string[] = [];
  readonly owners = new Map<number, string>();
  add(line: string, owner?: string): void {
    this.lines.push(line);
    if (owner !== undefined) this.owners.set(this.lines.length, owner);
  }
}

export function render(ir: Ir, options: RenderOptions = {}): Rendered {
  const s = new Script();
  const g = options.generation;
  const named = (map: IrMap): IrMap => (g === undefined ? map : { ...map, name: `${map.name}_g${g}` });
  const t = ir.table;
  const lanNo = new Map(ir.lans.map((l, i) => [l.id, i + 1]));
  const local = ir.pairs.filter((p) => p.path === 'local');
  const viaCf = ir.pairs.filter((p) => p.path === 'cloudflare');
  let elementCount = 0;

  s.add(`# connector-acl: ${ir.policies.length} policies, ${ir.lans.length} LANs. Generated; do not edit.`);
  s.add('# Replaces only this table, atomically: the empty declaration makes the delete safe on a first apply.');
  s.add(`table inet ${t} {}`);
  s.add(`delete table inet ${t}`);
  s.add(`table inet ${t} {`);
  if (options.meta) {
    s.add(`\tcounter ${META_COUNTER} {`);
    s.add(`\t\tcomment ${quote(options.meta)}`);
    s.add('\t}');
  }

  // Named counters, one per policy: `nft list counters` maps them back to policy ids.
  for (const p of ir.policies) {
    const seed = options.counters?.get(p.counter);
    s.add(`\tcounter ${p.counter} {`, p.id);
    s.add(`\t\tcomment ${quote(`${p.contentHash} ${p.name}`)}`, p.id);
    if (seed) s.add(`\t\tpackets ${seed.packets} bytes ${seed.bytes}`, p.id);
    s.add('\t}', p.id);
  }

  s.add('');
  s.add(`\tset ${PORT_PROTOCOLS_SET} {`);
  s.add('\t\ttype inet_proto');
  s.add('\t\telements = {');
  s.add('\t\t\t6,');
  s.add('\t\t\t17');
  s.add('\t\t}');
  s.add('\t}');
  s.add('');
  s.add(`\tset ${ICMP_SET} {`);
  s.add('\t\ttype inet_proto');
  s.add('\t\telements = {');
  s.add('\t\t\t1,');
  s.add('\t\t\t58');
  s.add('\t\t}');
  s.add('\t}');

  // Dispatch on the interface pair: per-packet cost does not depend on the number of LANs.
  const ordered = orderedPairs(ir.lans);
  s.add('');
  s.add(`\tmap ${LAN_PAIRS_MAP} {`);
  s.add('\t\ttype ifname . ifname : verdict');
  if (ordered.length > 0) {
    s.add('\t\telements = {');
    ordered.forEach(([a, b], i) => {
      s.add(`\t\t\t${quote(a.interface)} . ${quote(b.interface)} : goto fwd_${lanNo.get(a.id)}_${lanNo.get(b.id)}${i < ordered.length - 1 ? ',' : ''}`);
    });
    s.add('\t\t}');
  }
  s.add('\t}');

  const rendered = new Set<string>();
  for (const pair of ir.pairs) {
    for (const map of [...pair.initiate, ...pair.reply]) {
      if (rendered.has(map.name)) continue; // reply maps may share the initiate map
      rendered.add(map.name);
      elementCount += renderMap(s, named(map), pair, ir.policies);
    }
  }

  // forward: every packet from one LAN interface to another. Anything else is not ours.
  s.add('');
  s.add(`\tchain ${FORWARD_CHAIN} {`);
  s.add('\t\ttype filter hook forward priority filter; policy accept;');
  s.add(`\t\tiifname . oifname vmap @${LAN_PAIRS_MAP}`);
  s.add('\t}');

  for (const [a, b] of ordered) {
    const x = lanNo.get(a.id)!;
    const y = lanNo.get(b.id)!;
    const initiated = local.find((p) => p.key === `${x}_${y}` && p.initiate.length > 0);
    const replied = local.find((p) => p.key === `${y}_${x}` && p.reply.length > 0);
    s.add('');
    s.add(`\tchain fwd_${x}_${y} {`);
    s.add(`\t\tct state invalid counter drop comment ${quote(`conntrack-invalid: ${a.name} -> ${b.name}`)}`);
    if (ir.tunnel) {
      const m = hex(ir.tunnel.mark);
      s.add(`\t\tmeta mark & ${m} == ${m} counter drop comment ${quote('via Cloudflare but routed locally: is the tunnel route missing?')}`);
    }
    if (initiated) s.add(`\t\tct direction original jump li_${x}_${y}`);
    if (replied) s.add(`\t\tct direction reply jump lr_${y}_${x}`);
    s.add(`\t\tcounter drop comment ${quote(`default drop: ${a.name} -> ${b.name}`)}`);
    s.add('\t}');
  }
  for (const pair of local) renderLookupChains(s, pair, 'l', ir.conntrackMark, named);

  if (viaCf.length > 0 && ir.tunnel) renderCloudflareSteering(s, ir, viaCf, named);

  for (const p of ir.policies) renderPolicyChain(s, p, ir);
  s.add('}');
  return { text: `${s.lines.join('\n')}\n`, lineOwners: s.owners, elementCount, manifest: manifestOf(s.lines), blocks: blocksOf(s) };
}

/**
 * prerouting: packets arriving on a LAN whose destination (by the main routing table) is
 * another LAN are marked when a via-Cloudflare policy allows them; the mark's ip rule sends
 * them into the tunnel. Unmarked packets go on to `forward`, where only local policies apply.
 * Packets returning from the tunnel arrive on the tunnel interface and are never marked again.
 */
function renderCloudflareSteering(s: Script, ir: Ir, viaCf: IrPairPath[], named: (m: IrMap) => IrMap): void {
  const lanByNo = (n: number): Lan => ir.lans[n - 1];
  // Ingress LAN → egress LANs for which some via-Cloudflare chain exists, in either direction.
  const edges = new Map<number, Set<number>>();
  for (const p of viaCf) {
    const [o, d] = p.key.split('_').map(Number);
    if (p.initiate.length > 0) (edges.get(o) ?? edges.set(o, new Set()).get(o)!).add(d);
    if (p.reply.length > 0) (edges.get(d) ?? edges.set(d, new Set()).get(d)!).add(o);
  }
  const ingress = [...edges.keys()].sort((a, b) => a - b);
  s.add('');
  s.add(`\tmap ${CLOUDFLARE_INGRESS_MAP} {`);
  s.add('\t\ttype ifname : verdict');
  s.add('\t\telements = {');
  ingress.forEach((x, i) => s.add(`\t\t\t${quote(lanByNo(x).interface)} : goto pre_${x}${i < ingress.length - 1 ? ',' : ''}`));
  s.add('\t\t}');
  s.add('\t}');
  // Named, not anonymous: a rule rewritten by an update must not depend on set elements created in
  // the same transaction (they only become visible after the new rules do).
  for (const x of ingress) {
    const egress = [...edges.get(x)!].sort((a, b) => a - b);
    s.add('');
    s.add(`\tmap pre_${x}_egress {`);
    s.add('\t\ttypeof fib daddr oifname : verdict');
    s.add('\t\telements = {');
    egress.forEach((y, i) => s.add(`\t\t\t${quote(lanByNo(y).interface)} : goto pre_${x}_${y}${i < egress.length - 1 ? ',' : ''}`));
    s.add('\t\t}');
    s.add('\t}');
  }
  s.add('');
  s.add(`\tchain ${PREROUTING_CHAIN} {`);
  s.add('\t\ttype filter hook prerouting priority mangle; policy accept;');
  s.add(`\t\tiifname vmap @${CLOUDFLARE_INGRESS_MAP}`);
  s.add('\t}');
  for (const x of ingress) {
    const egress = [...edges.get(x)!].sort((a, b) => a - b);
    s.add('');
    s.add(`\tchain pre_${x} {`);
    s.add(`\t\tfib daddr oifname vmap @pre_${x}_egress`);
    s.add('\t}');
    for (const y of egress) {
      const initiated = viaCf.find((p) => p.key === `${x}_${y}` && p.initiate.length > 0);
      const replied = viaCf.find((p) => p.key === `${y}_${x}` && p.reply.length > 0);
      s.add('');
      s.add(`\tchain pre_${x}_${y} {`);
      if (initiated) s.add(`\t\tct direction original jump ci_${x}_${y}`);
      if (replied) s.add(`\t\tct direction reply jump cr_${y}_${x}`);
      s.add('\t}');
    }
  }
  for (const pair of viaCf) renderLookupChains(s, pair, 'c', ir.conntrackMark, named);
}

/** `li_/lr_` (local) and `ci_/cr_` (via Cloudflare) chains: one map lookup per family and key shape. */
function renderLookupChains(s: Script, pair: IrPairPath, prefix: 'l' | 'c', conntrackMark: number, named: (m: IrMap) => IrMap): void {
  for (const [direction, maps] of [['i', pair.initiate], ['r', pair.reply]] as const) {
    if (maps.length === 0) continue;
    s.add('');
    s.add(`\tchain ${prefix}${direction}_${pair.key} {`);
    for (const map of maps) s.add(`\t\t${lookupRule(named(map), direction === 'r', conntrackMark)}`);
    s.add('\t}');
  }
}

/** Replies are looked up with the key swapped back to the initiator's view. */
const REPLY_DIM: Record<Dim, Dim> = { saddr: 'daddr', daddr: 'saddr', l4proto: 'l4proto', sport: 'dport', dport: 'sport' };

function dimExpression(dim: Dim, family: Family): string {
  if (dim === 'saddr' || dim === 'daddr') return `${family === 4 ? 'ip' : 'ip6'} ${dim}`;
  return dim === 'l4proto' ? 'meta l4proto' : `th ${dim}`;
}

function dimType(dim: Dim, family: Family): string {
  if (dim === 'saddr' || dim === 'daddr') return family === 4 ? 'ipv4_addr' : 'ipv6_addr';
  return dim === 'l4proto' ? 'inet_proto' : 'inet_service';
}

function lookupRule(map: IrMap, reply: boolean, conntrackMark: number): string {
  const key = map.dims.map((d) => dimExpression(reply ? REPLY_DIM[d] : d, map.family)).join(' . ');
  const m = hex(conntrackMark);
  const guard = map.shape === 'ports' ? `meta l4proto @${PORT_PROTOCOLS_SET}`
    : map.shape === 'proto' ? `meta l4proto != @${PORT_PROTOCOLS_SET}`
    // ICMP/ICMPv6 errors of a tracked flow. Back toward the initiator only if the flow's own
    // packets last went through a bidirectional policy (the conntrack mark bit says so).
    : reply ? `ct state related meta l4proto @${ICMP_SET} ct mark & ${m} == ${m}` : `ct state related meta l4proto @${ICMP_SET}`;
  return `${guard} ${key} vmap @${map.name}`;
}

function renderMap(s: Script, map: IrMap, pair: IrPairPath, policies: IrPolicy[]): number {
  s.add('');
  s.add(`\tmap ${map.name} {`);
  s.add(`\t\ttype ${map.dims.map((d) => dimType(d, map.family)).join(' . ')} : verdict`);
  s.add('\t\tflags interval');
  s.add(`\t\tcomment ${quote(`${pair.origin.name} -> ${pair.destination.name}, ${pathWords(pair.path)}`)}`);
  s.add('\t\telements = {');
  map.cells.forEach((cell, i) => {
    const policy = policies[cell.label];
    s.add(`\t\t\t${cellKey(cell, map)} : goto ${policy.chain}${i < map.cells.length - 1 ? ',' : ''}`, policy.id);
  });
  s.add('\t\t}');
  s.add('\t}');
  return map.cells.length;
}

function cellKey(cell: Cell, map: IrMap): string {
  return map.dims.map((dim, d) => (dim === 'saddr' || dim === 'daddr'
    ? rangeToNft(cell.lo[d], cell.hi[d], map.family)
    : intRange(cell.lo[d], cell.hi[d]))).join(' . ');
}

const intRange = (lo: bigint, hi: bigint): string => (lo === hi ? `${lo}` : `${lo}-${hi}`);

function renderPolicyChain(s: Script, p: IrPolicy, ir: Ir): void {
  s.add('');
  s.add(`\tchain ${p.chain} {`, p.id);
  // Unidirectional: the shared maps also answer reply lookups; a reply falls through to the drop.
  if (p.unidirectional) s.add('\t\tct direction reply return', p.id);
  // Every allowed packet records on its flow whether replies (and so ICMP errors) may come back.
  const ct = hex(ir.conntrackMark);
  const notCt = hex(~ir.conntrackMark >>> 0);
  s.add(p.unidirectional ? `\t\tct mark set ct mark & ${notCt}` : `\t\tct mark set ct mark | ${ct}`, p.id);
  const comment = quote(`${p.name}`);
  if (p.path === 'cloudflare' && ir.tunnel) {
    const m = hex(ir.tunnel.mark);
    s.add(`\t\tmeta mark set meta mark | ${m} counter name ${p.counter} accept comment ${comment}`, p.id);
  } else {
    s.add(`\t\tcounter name ${p.counter} accept comment ${comment}`, p.id);
  }
  s.add('\t}', p.id);
}

/** The top-level objects of the script just written (one tab deep, closed by a lone tab + brace). */
function blocksOf(s: Script): Block[] {
  const blocks: Block[] = [];
  let current: Block | undefined;
  s.lines.forEach((text, i) => {
    const m = /^\t(counter|set|map|chain) (\S+) \{$/.exec(text);
    if (m) current = { kind: m[1] as Block['kind'], name: m[2], lines: [] };
    if (current) current.lines.push({ text, owner: s.owners.get(i + 1) });
    if (current && text === '\t}') {
      blocks.push(current);
      current = undefined;
    }
  });
  return blocks;
}

/** Rules per chain, elements per map, named counters, read off the script just written. */
function manifestOf(lines: string[]): Manifest {
  const manifest: Manifest = { chains: {}, maps: {}, counters: [] };
  let chain: string | undefined;
  let map: string | undefined;
  let inElements = false;
  for (const line of lines) {
    let m: RegExpExecArray | null;
    if ((m = /^\tchain (\S+) \{$/.exec(line))) [chain, manifest.chains[m[1]]] = [m[1], 0];
    else if ((m = /^\t(?:map|set) (\S+) \{$/.exec(line))) [map, manifest.maps[m[1]]] = [m[1], 0];
    else if ((m = /^\tcounter (\S+) \{$/.exec(line))) manifest.counters.push(m[1]);
    else if (line === '\t}') [chain, map, inElements] = [undefined, undefined, false];
    else if (chain && line.startsWith('\t\t') && !line.startsWith('\t\ttype ')) manifest.chains[chain]++;
    else if (map && line === '\t\telements = {') inElements = true;
    else if (map && inElements && line.startsWith('\t\t\t')) manifest.maps[map]++;
  }
  return manifest;
}

function orderedPairs(lans: Lan[]): [Lan, Lan][] {
  const out: [Lan, Lan][] = [];
  for (const a of lans) for (const b of lans) if (a !== b) out.push([a, b]);
  return out;
}

const pathWords = (path: TrafficPath): string => (path === 'local' ? 'forwarded locally' : 'via Cloudflare');

export const hex = (n: number): string => `0x${n.toString(16).padStart(8, '0')}`;

/** nft strings cannot hold `"` and comments are limited to 128 bytes. */
export function quote(text: string): string {
  let clean = text.replace(/["\\]/g, "'").replace(/[\x00-\x1f\x7f]/g, ' ');
  while (new TextEncoder().encode(clean).length > 127) clean = clean.slice(0, -1);
  return `"${clean}"`;
}
