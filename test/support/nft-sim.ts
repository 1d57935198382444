// Test-only simulator of the rendered nft script: parses the maps and chains agent/nft/render.ts
// writes and walks one packet through them the way the kernel would (prerouting, then the
// policy routing decision on the tunnel mark, then forward). It understands exactly the rule
// forms the renderer emits and throws on anything else, so a new rule form fails loudly here
// instead of being ignored.
//
// This checks the text, not the IR: swapped keys in reply lookups, a jump to the wrong chain, a
// pair missing from a vmap all show up as a disagreement with the reference evaluator.
import { parseSubnet, type Family } from '../../agent/policy/address.js';
import type { Flow, Verdict } from '../../agent/ir/evaluator.js';
import type { Site } from '../../agent/policy/model.js';

type Part = { lo: bigint; hi: bigint } | { name: string };
interface Element { key: Part[]; verdict: string }
interface NftMap { name: string; types: string[]; elements: Element[] }
interface Ruleset { maps: Map<string, NftMap>; chains: Map<string, string[]>; hooks: Map<string, string> }

export function parseRuleset(text: string): Ruleset {
  const maps = new Map<string, NftMap>();
  const chains = new Map<string, string[]>();
  const hooks = new Map<string, string>();
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    let m: RegExpExecArray | null;
    if ((m = /^map (\S+) \{$/.exec(line))) {
      const map: NftMap = { name: m[1], types: [], elements: [] };
      for (i++; lines[i].trim() !== '}'; i++) {
        const l = lines[i].trim();
        let t: RegExpExecArray | null;
        if ((t = /^type (.+) : verdict$/.exec(l))) map.types = t[1].split(' . ');
        else if (l === 'typeof fib daddr oifname : verdict') map.types = ['ifname'];
        else if (l === 'elements = {') {
          for (i++; lines[i].trim() !== '}'; i++) map.elements.push(parseElement(lines[i].trim().replace(/,$/, ''), map.types));
        } else if (!/^(flags interval|comment ".*")$/.test(l)) throw new Error(`map ${map.name}: unknown line "${l}"`);
      }
      maps.set(map.name, map);
    } else if ((m = /^chain (\S+) \{$/.exec(line))) {
      const name = m[1];
      const rules: string[] = [];
      for (i++; lines[i].trim() !== '}'; i++) {
        const l = lines[i].trim().replace(/ comment ".*"$/, '');
        const hook = /^type filter hook (\w+) priority [\w-]+; policy accept;$/.exec(l);
        if (hook) hooks.set(hook[1], name);
        else rules.push(l);
      }
      chains.set(name, rules);
    } else if ((m = /^set (l4_ports|l4_icmp) \{$/.exec(line))) {
      // The constant protocol sets; the rules that use them are read as fixed forms below.
      while (lines[i].trim() !== '}' || !/^\t}$/.test(lines[i])) i++;
    } else if ((m = /^counter (\S+) \{$/.exec(line))) {
      while (lines[i].trim() !== '}') i++;
    }
  }
  return { maps, chains, hooks };
}

function parseElement(line: string, types: string[]): Element {
  const m = /^(.*) : (goto \S+|jump \S+|accept|drop)$/.exec(line);
  if (!m) throw new Error(`element "${line}"`);
  const parts = m[1].split(' . ');
  if (parts.length !== types.length) throw new Error(`element "${line}" has ${parts.length} parts for ${types.length} types`);
  return { key: parts.map((p, d) => parsePart(p, types[d])), verdict: m[2] };
}

function parsePart(text: string, type: string): Part {
  if (type === 'ifname') return { name: JSON.parse(text) as string };
  if (type === 'ipv4_addr' || type === 'ipv6_addr') {
    const dash = text.indexOf('-');
    const range = (s: string) => {
      const p = parseSubnet(s);
      if (!p.ok || p.hostBitsSet) throw new Error(`address "${s}"`);
      return p.range;
    };
    if (dash > 0) return { lo: range(text.slice(0, dash)).first, hi: range(text.slice(dash + 1)).first };
    const r = range(text);
    return { lo: r.first, hi: r.last };
  }
  if (type === 'inet_proto' || type === 'inet_service') {
    const [a, b] = text.split('-').map((s) => BigInt(s));
    return { lo: a, hi: b ?? a };
  }
  throw new Error(`type ${type}`);
}

interface Packet {
  iif: string;
  oif: string;
  family: Family;
  saddr: bigint;
  daddr: bigint;
  proto: number;
  sport?: number;
  dport?: number;
  ct: 'original' | 'reply';
  mark: number;
}

type Outcome = 'accept' | 'drop';

/** What the rendered ruleset does with this packet: dropped, forwarded locally, or marked into the tunnel. */
export function simulate(rs: Ruleset, site: Site, flow: Flow): Verdict {
  const lan = (id: string) => site.lans.find((l) => l.id === id)!;
  const addr = (s: string) => {
    const p = parseSubnet(s);
    if (!p.ok) throw new Error(s);
    return p.range.first;
  };
  const reply = flow.direction === 'reply';
  const pkt: Packet = {
    iif: lan(flow.ingressLan).interface,
    oif: lan(flow.egressLan).interface,
    family: flow.family,
    // on the wire a reply travels from the responder back to the initiator
    saddr: addr(reply ? flow.dst : flow.src),
    daddr: addr(reply ? flow.src : flow.dst),
    proto: flow.protocol,
    sport: reply ? flow.dstPort : flow.srcPort,
    dport: reply ? flow.srcPort : flow.dstPort,
    ct: reply ? 'reply' : 'original',
    mark: 0,
  };
  const pre = rs.hooks.get('prerouting');
  if (pre && run(rs, pre, pkt) === 'drop') return 'drop';
  // ip rule fwmark → the tunnel's route table: the packet leaves through the tunnel, and
  // forward sees LAN → tunnel, which is no LAN pair.
  if (site.tunnel && (pkt.mark & site.tunnel.mark) === site.tunnel.mark) return 'cloudflare';
  const fwd = rs.hooks.get('forward');
  if (!fwd) throw new Error('no forward hook');
  return run(rs, fwd, pkt) === 'accept' ? 'local' : 'drop';
}

/** Runs a base chain to its verdict (policy accept). */
function run(rs: Ruleset, base: string, pkt: Packet): Outcome {
  const stack: { chain: string; pc: number }[] = [{ chain: base, pc: 0 }];
  for (let steps = 0; steps < 10_000; steps++) {
    const frame = stack[stack.length - 1];
    const rules = rs.chains.get(frame.chain);
    if (!rules) throw new Error(`no chain ${frame.chain}`);
    if (frame.pc >= rules.length) {
      stack.pop();
      if (stack.length === 0) return 'accept'; // base chain policy
      continue;
    }
    const verdict = evalRule(rs, rules[frame.pc++], pkt);
    if (verdict === undefined) continue;
    if (verdict === 'accept' || verdict === 'drop') return verdict;
    if (verdict === 'return') {
      stack.pop();
      if (stack.length === 0) return 'accept';
      continue;
    }
    const [kind, target] = verdict.split(' ');
    if (kind === 'jump') stack.push({ chain: target, pc: 0 });
    else if (kind === 'goto') stack[stack.length - 1] = { chain: target, pc: 0 };
    else throw new Error(`verdict ${verdict}`);
  }
  throw new Error('rule loop');
}

const hasPorts = (p: number) => p === 6 || p === 17;

/** The verdict of one rule (undefined: no match, go on). */
function evalRule(rs: Ruleset, rule: string, pkt: Packet): string | undefined {
  let m: RegExpExecArray | null;
  if ((m = /^iifname \. oifname vmap @(\S+)$/.exec(rule))) return lookup(rs, m[1], [pkt.iif, pkt.oif]);
  if ((m = /^iifname vmap @(\S+)$/.exec(rule))) return lookup(rs, m[1], [pkt.iif]);
  if ((m = /^fib daddr oifname vmap @(\S+)$/.exec(rule))) return lookup(rs, m[1], [pkt.oif]);
  if (rule === 'ct state invalid counter drop') return undefined; // the simulated flows are valid
  if ((m = /^meta mark & (0x[0-9a-f]+) == (0x[0-9a-f]+) counter drop$/.exec(rule))) {
    return (pkt.mark & Number(m[1])) === Number(m[2]) ? 'drop' : undefined;
  }
  if ((m = /^ct direction (original|reply) (jump|goto) (\S+)$/.exec(rule))) return pkt.ct === m[1] ? `${m[2]} ${m[3]}` : undefined;
  if (rule === 'ct direction reply return') return pkt.ct === 'reply' ? 'return' : undefined;
  if (rule === 'counter drop') return 'drop';
  if ((m = /^meta mark set meta mark \| (0x[0-9a-f]+) counter name \S+ accept$/.exec(rule))) {
    pkt.mark |= Number(m[1]);
    return 'accept';
  }
  if (/^counter name \S+ accept$/.test(rule)) return 'accept';
  // The simulated flows carry no ICMP errors: conntrack would not call them related.
  if (/^ct state related meta l4proto @l4_icmp .+ vmap @\S+$/.test(rule)) return undefined;
  // The conntrack mark only matters for related ICMP errors, which are not simulated.
  if (/^ct mark set ct mark [|&] 0x[0-9a-f]+$/.test(rule)) return undefined;
  if ((m = /^meta l4proto (!= )?@l4_ports (.+) vmap @(\S+)$/.exec(rule))) {
    const [, negate, keyText, map] = m;
    if (hasPorts(pkt.proto) === Boolean(negate)) return undefined;
    const key: bigint[] = [];
    for (const part of keyText.split(' . ')) {
      let f: RegExpExecArray | null;
      if ((f = /^(ip6?) (saddr|daddr)$/.exec(part))) {
        // An address expression in an inet table only matches packets of its family.
        if ((f[1] === 'ip' ? 4 : 6) !== pkt.family) return undefined;
        key.push(f[2] === 'saddr' ? pkt.saddr : pkt.daddr);
      } else if (part === 'meta l4proto') key.push(BigInt(pkt.proto));
      else if ((f = /^th (sport|dport)$/.exec(part))) {
        if (negate) throw new Error(`rule "${rule}": ports in a map for protocols without ports`);
        key.push(BigInt((f[1] === 'sport' ? pkt.sport : pkt.dport)!));
      } else throw new Error(`rule "${rule}": unknown key part "${part}"`);
    }
    return lookup(rs, map, key);
  }
  throw new Error(`unsupported rule "${rule}"`);
}

function lookup(rs: Ruleset, name: string, key: (bigint | string)[]): string | undefined {
  const map = rs.maps.get(name);
  if (!map) throw new Error(`no map ${name}`);
  if (key.length !== map.types.length) throw new Error(`map ${name}: key of ${key.length} parts for type ${map.types.join(' . ')}`);
  const hits = map.elements.filter((e) => e.key.every((p, d) =>
    'name' in p ? p.name === key[d] : typeof key[d] === 'bigint' && p.lo <= (key[d] as bigint) && (key[d] as bigint) <= p.hi));
  if (hits.length > 1) throw new Error(`map ${name}: ${hits.length} elements match ${key.join(' . ')}`);
  return hits[0]?.verdict;
}
