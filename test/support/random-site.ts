// Random sites, policy sets and flows for property tests (fast-check arbitraries).
//
// Sites and policies are generated as raw documents (the site YAML's and the ACL API's shape)
// and go through the real validator, so the printed repro is exactly what a user would write.
// Flows are generated as small integer "picks" resolved against the policies' boundary values
// (first/last address of every subnet and the addresses just outside, both edges of every port
// range and the ports just outside), so most flows land on a policy edge, and shrinking a pick
// toward 0 keeps the flow meaningful.
import fc from 'fast-check';
import YAML from 'yaml';
import { bigintToAddress, familyMax, parseSubnet, type AddressRange, type Family } from '../../agent/policy/address.js';
import { validate } from '../../agent/policy/load.js';
import type { Policy, PortRange, Site } from '../../agent/policy/model.js';
import { formatProblem } from '../../agent/policy/problems.js';
import type { Flow } from '../../agent/ir/evaluator.js';

export interface Scenario {
  siteDoc: Record<string, unknown>;
  acls: Record<string, unknown>[];
}

export interface FlowPick {
  /** 0 = anywhere; otherwise aim at policy (target - 1) mod n: its LANs, subnet edges, protocols, port edges. */
  target: number;
  pair: number;
  family: Family;
  src: number;
  dst: number;
  protocol: number;
  srcPort: number;
  dstPort: number;
  reply: boolean;
}

/** Protocols a flow may carry: the three the policies name, their wrong-family twins, and others. */
export const FLOW_PROTOCOLS = [6, 17, 1, 58, 47, 132, 0, 255] as const;
const PORT_ANCHORS = [1, 22, 53, 80, 443, 1000, 1001, 1005, 8080, 65535];

const lanId = (i: number) => `lan-${i + 1}`;

const v4Subnet = (lan: number): fc.Arbitrary<string> =>
  fc.oneof(
    // aligned prefixes inside the LAN's /24 (they overlap each other often)
    fc.tuple(fc.constantFrom(24, 25, 26, 28, 30, 32), fc.constantFrom(0, 4, 8, 64, 128, 130, 200, 255))
      .map(([len, off]) => {
        const size = 2 ** (32 - len);
        const aligned = Math.floor(off / size) * size;
        return len === 32 ? `198.18.${lan + 1}.${aligned}` : `198.18.${lan + 1}.${aligned}/${len}`;
      }),
    // host bits set: validated with a warning, read as the prefix
    fc.constantFrom(5, 130).map((off) => `198.18.${lan + 1}.${off}/25`),
    // wider than any LAN, or another LAN's address (both only warn)
    fc.constantFrom('198.18.0.0/16', '0.0.0.0/0', '198.18.9.7'),
  );

const v6Subnet = (lan: number): fc.Arbitrary<string> =>
  fc.oneof(
    fc.tuple(fc.constantFrom(64, 112, 120, 124, 126, 128), fc.constantFrom(0, 4, 0x10, 0x80, 0xff, 0x10000))
      .map(([len, off]) => {
        const size = 2n ** BigInt(128 - len);
        const base = BigInt(`0x20010db8000${lan + 1}0000000000000000000000`.slice(0, 34));
        const first = base + (BigInt(off) / size) * size;
        const text = bigintToAddress(first, 6);
        return len === 128 ? text : `${text}/${len}`;
      }),
    fc.constantFrom('2001:db8::/32', '::/0', '2001:db8:9::7'),
  );

const port = fc.constantFrom(...PORT_ANCHORS);
const portRange = fc.tuple(port, port).map(([a, b]) => `${Math.min(a, b)}-${Math.max(a, b)}`);

function endpoint(lan: number, lanCount: number): fc.Arbitrary<Record<string, unknown>> {
  const subnetOf = fc.integer({ min: 0, max: lanCount - 1 }).chain((l) =>
    fc.oneof({ arbitrary: v4Subnet(l === 0 ? lan : l), weight: 2 }, { arbitrary: v6Subnet(l === 0 ? lan : l), weight: 2 },
      { arbitrary: v4Subnet(lan), weight: 3 }, { arbitrary: v6Subnet(lan), weight: 3 }));
  return fc.record({
    subnets: fc.oneof({ arbitrary: fc.constant([] as string[]), weight: 2 }, { arbitrary: fc.array(subnetOf, { minLength: 1, maxLength: 3 }), weight: 3 }),
    ports: fc.oneof({ arbitrary: fc.constant([] as number[]), weight: 3 }, { arbitrary: fc.array(port, { minLength: 1, maxLength: 3 }), weight: 2 }),
    port_ranges: fc.oneof({ arbitrary: fc.constant([] as string[]), weight: 3 }, { arbitrary: fc.array(portRange, { minLength: 1, maxLength: 2 }), weight: 1 }),
    dashboardForm: fc.boolean(),
  }).map(({ subnets, ports, port_ranges, dashboardForm }) => {
    const ep: Record<string, unknown> = { lan_id: lanId(lan) };
    if (subnets.length > 0) ep.subnets = subnets;
    if (dashboardForm && (ports.length > 0 || port_ranges.length > 0)) {
      ep.ports = [...ports.map(String), ...port_ranges].join(','); // the dashboard's "2,5,6,9-14"
    } else {
      if (ports.length > 0) ep.ports = ports;
      if (port_ranges.length > 0) ep.port_ranges = port_ranges;
    }
    return ep;
  });
}

function acl(index: number, lanCount: number): fc.Arbitrary<Record<string, unknown>> {
  return fc.record({
    origin: fc.nat({ max: lanCount - 1 }),
    offset: fc.integer({ min: 1, max: lanCount - 1 }),
    protocols: fc.subarray(['tcp', 'udp', 'icmp']),
    omitProtocols: fc.boolean(),
    unidirectional: fc.boolean(),
    forwardLocally: fc.boolean(),
    withId: fc.integer({ min: 0, max: 5 }),
    seed: fc.nat(),
  }).chain((r) => {
    const destination = (r.origin + r.offset) % lanCount;
    return fc.tuple(endpoint(r.origin, lanCount), endpoint(destination, lanCount)).map(([lan_1, lan_2]) => {
      const doc: Record<string, unknown> = {};
      if (r.withId > 0) doc.id = `p${String(index).padStart(2, '0')}`;
      doc.name = `P${index}`;
      doc.lan_1 = lan_1;
      doc.lan_2 = lan_2;
      if (!(r.omitProtocols && r.protocols.length === 0)) doc.protocols = r.protocols;
      // TCP can only be bidirectional; "Any" + unidirectional is accepted with a warning.
      if (r.unidirectional && !r.protocols.includes('tcp')) doc.unidirectional = true;
      doc.forward_locally = r.forwardLocally;
      return doc;
    });
  });
}

export function scenarioArbitrary(options: { maxPolicies?: number } = {}): fc.Arbitrary<Scenario> {
  const maxPolicies = options.maxPolicies ?? 8;
  return fc.integer({ min: 2, max: 6 }).chain((lanCount) =>
    fc.record({
      lanFamilies: fc.array(fc.constantFrom('both', 'both', 'both', 'v4', 'v6', 'none'), { minLength: lanCount, maxLength: lanCount }),
      policyCount: fc.integer({ min: 0, max: maxPolicies }),
    }).chain(({ lanFamilies, policyCount }) =>
      fc.tuple(...Array.from({ length: policyCount }, (_, i) => acl(i, lanCount))).map((acls) => {
        const lans = lanFamilies.map((fam, i) => {
          const subnets: string[] = [];
          if (fam === 'both' || fam === 'v4') subnets.push(`198.18.${i + 1}.0/24`);
          if (fam === 'both' || fam === 'v6') subnets.push(`2001:db8:${i + 1}::/64`);
          const lan: Record<string, unknown> = { id: lanId(i), name: `LAN ${i + 1}`, interface: `lan${i + 1}` };
          if (subnets.length > 0) lan.subnets = subnets;
          return lan;
        });
        const siteDoc = { table: 'connector_acl', lans, tunnel: { interface: 'cf0', gateway: '198.18.100.2' } };
        return { siteDoc, acls: acls as Record<string, unknown>[] };
      })));
}

export const flowPickArbitrary: fc.Arbitrary<FlowPick> = fc.record({
  target: fc.oneof({ arbitrary: fc.constant(0), weight: 1 }, { arbitrary: fc.integer({ min: 1, max: 1000 }), weight: 3 }),
  pair: fc.nat({ max: 1000 }),
  family: fc.constantFrom<Family>(4, 6),
  src: fc.nat({ max: 1000 }),
  dst: fc.nat({ max: 1000 }),
  protocol: fc.nat({ max: FLOW_PROTOCOLS.length - 1 }),
  srcPort: fc.nat({ max: 1000 }),
  dstPort: fc.nat({ max: 1000 }),
  reply: fc.boolean(),
});

export interface Compiled {
  site: Site;
  policies: Policy[];
  warnings: string[];
}

/** Runs the scenario through the real validator; generated input must always be valid. */
export function validateScenario(s: Scenario): Compiled {
  const v = validate(s.siteDoc, 'site.yaml', [{ file: 'policies.yaml', content: s.acls }]);
  if (!v.ok || !v.site || !v.policies) {
    throw new Error(`generated input did not validate:\n${v.problems.map(formatProblem).join('\n')}\n${formatScenario(s)}`);
  }
  return { site: v.site, policies: v.policies, warnings: v.problems.map(formatProblem) };
}

/** Edge values the flows are drawn from: policy and LAN subnet boundaries and the values next to them. */
export interface Edges {
  pairs: [string, string][];
  addresses: Record<Family, string[]>;
  ports: number[];
  /** The same per policy, for targeted flows. */
  perPolicy: {
    pair: [string, string];
    srcAddresses: Record<Family, string[]>;
    dstAddresses: Record<Family, string[]>;
    srcPorts: number[];
    dstPorts: number[];
    /** IP protocol numbers; -1 = ICMP of the flow's family. */
    protocols: number[];
    /** Families both sides can match (the flow's family is moved into this set). */
    families: Family[];
  }[];
}

const sortBig = (s: Set<bigint>) => [...s].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));

function addressEdges(ranges: readonly AddressRange[], into: Record<Family, Set<bigint>>): void {
  for (const r of ranges) {
    const max = familyMax(r.family);
    for (const v of [r.first - 1n, r.first, r.first + 1n, (r.first + r.last) / 2n, r.last, r.last + 1n]) {
      if (v >= 0n && v <= max) into[r.family].add(v);
    }
  }
}

function portEdges(ranges: readonly PortRange[]): number[] {
  if (ranges.length === 0) return [0, 1, 1234, 65535];
  const out = new Set<number>();
  for (const r of ranges) for (const v of [r.from - 1, r.from, r.to, r.to + 1]) if (v >= 0 && v <= 65535) out.add(v);
  return [...out].sort((a, b) => a - b);
}

const toText = (sets: Record<Family, Set<bigint>>): Record<Family, string[]> =>
  ({ 4: sortBig(sets[4]).map((v) => bigintToAddress(v, 4)), 6: sortBig(sets[6]).map((v) => bigintToAddress(v, 6)) });

export function edgesOf(site: Site, policies: readonly Policy[]): Edges {
  const pairs: [string, string][] = [];
  for (const p of policies) pairs.push([p.origin.lanId, p.destination.lanId], [p.destination.lanId, p.origin.lanId]);
  for (const a of site.lans) for (const b of site.lans) if (a !== b) pairs.push([a.id, b.id]);

  const addrs: Record<Family, Set<bigint>> = { 4: new Set(), 6: new Set() };
  addressEdges([...policies.flatMap((p) => [...p.origin.subnets, ...p.destination.subnets]), ...site.lans.flatMap((l) => l.subnets)], addrs);
  for (const fixed of ['198.18.1.1', '198.18.2.200', '10.0.0.1', '2001:db8:1::1', '2001:db8:2::abcd', 'fe80::1']) {
    const parsed = parseSubnet(fixed);
    if (parsed.ok) addrs[parsed.range.family].add(parsed.range.first);
  }
  const portSet = new Set<number>([0, 1, 443, 12345, 65535]);
  for (const p of policies) {
    for (const r of [...p.origin.ports, ...p.destination.ports]) {
      for (const v of [r.from - 1, r.from, r.to, r.to + 1]) if (v >= 0 && v <= 65535) portSet.add(v);
    }
  }
  const perPolicy = policies.map((p) => {
    const side = (ranges: readonly AddressRange[]) => {
      const own: Record<Family, Set<bigint>> = { 4: new Set(), 6: new Set() };
      addressEdges(ranges, own);
      for (const f of [4, 6] as const) if (own[f].size === 0) addrs[f].forEach((v) => own[f].add(v));
      return toText(own);
    };
    const protocols = p.protocols.length === 0
      ? [...FLOW_PROTOCOLS]
      : p.protocols.map((name) => (name === 'tcp' ? 6 : name === 'udp' ? 17 : -1));
    const can = (f: Family) => [p.origin, p.destination].every((ep) => ep.subnets.length === 0 || ep.subnets.some((s) => s.family === f));
    const families = ([4, 6] as const).filter(can);
    return {
      pair: [p.origin.lanId, p.destination.lanId] as [string, string],
      srcAddresses: side(p.origin.subnets),
      dstAddresses: side(p.destination.subnets),
      srcPorts: portEdges(p.origin.ports),
      dstPorts: portEdges(p.destination.ports),
      protocols,
      families,
    };
  });
  return { pairs, addresses: toText(addrs), ports: [...portSet].sort((a, b) => a - b), perPolicy };
}

export function resolveFlow(edges: Edges, pick: FlowPick): Flow {
  const aim = pick.target > 0 && edges.perPolicy.length > 0 ? edges.perPolicy[(pick.target - 1) % edges.perPolicy.length] : undefined;
  const [initiator, responder] = aim ? aim.pair : edges.pairs[pick.pair % edges.pairs.length];
  const family: Family = aim && aim.families.length > 0 && !aim.families.includes(pick.family) ? aim.families[0] : pick.family;
  const srcAddrs = (aim ? aim.srcAddresses : edges.addresses)[family];
  const dstAddrs = (aim ? aim.dstAddresses : edges.addresses)[family];
  let protocol: number = aim ? aim.protocols[pick.protocol % aim.protocols.length] : FLOW_PROTOCOLS[pick.protocol];
  if (protocol === -1) protocol = family === 4 ? 1 : 58;
  const flow: Flow = {
    ingressLan: pick.reply ? responder : initiator,
    egressLan: pick.reply ? initiator : responder,
    family,
    src: srcAddrs[pick.src % srcAddrs.length],
    dst: dstAddrs[pick.dst % dstAddrs.length],
    protocol,
    direction: pick.reply ? 'reply' : 'initiate',
  };
  if (protocol === 6 || protocol === 17) {
    const [srcPorts, dstPorts] = aim ? [aim.srcPorts, aim.dstPorts] : [edges.ports, edges.ports];
    flow.srcPort = srcPorts[pick.srcPort % srcPorts.length];
    flow.dstPort = dstPorts[pick.dstPort % dstPorts.length];
  }
  return flow;
}

/** The scenario as the two files a user would write (for repro output). */
export function formatScenario(s: Scenario): string {
  return `--- site.yaml\n${YAML.stringify(s.siteDoc)}--- policies.yaml\n${YAML.stringify(s.acls)}`;
}
