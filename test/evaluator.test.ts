// The reference evaluator on its own: verdicts, allowing policies and the reasons
// `connector-acl explain` will print, on the rules/ example and small hand-made sites.
import t, { type Test } from 'tap';
import { readFileSync } from 'node:fs';
import { parseDocumentText } from '../agent/io/files.js';
import { validate } from '../agent/policy/load.js';
import type { Policy, Site } from '../agent/policy/model.js';
import { describeFlow, evaluate, FlowError, type Direction, type Flow } from '../agent/ir/evaluator.js';

const read = (file: string) => parseDocumentText(readFileSync(new URL(`../${file}`, import.meta.url), 'utf8'), file).value;

function load(siteDoc: unknown, acls: unknown): { site: Site; policies: Policy[] } {
  const v = validate(siteDoc, 'site.yaml', [{ file: 'policies.yaml', content: acls }]);
  if (!v.site || !v.policies) throw new Error(JSON.stringify(v.problems));
  return { site: v.site, policies: v.policies };
}

const example = load(read('rules/site.yaml'), read('rules/policies.yaml'));
const LAN = (n: number) => `6b1e2f0a9c8d4e11a2b3c4d5e6f7000${n}`;
const P = (n: number) => `a000000000000000000000000000000${n}`;
const L3 = 'LAN 3 (stores, PIN pads)';
const L4 = 'LAN 4 (cash registers)';

/** A flow given by LAN numbers, in the initiator's view; for 'reply' the packet goes b → a. */
function flow(a: number, b: number, src: string, dst: string, protocol: number, ports: [number, number] | [] = [], direction: Direction = 'initiate'): Flow {
  const [ingress, egress] = direction === 'initiate' ? [a, b] : [b, a];
  return {
    ingressLan: LAN(ingress), egressLan: LAN(egress), family: src.includes(':') ? 6 : 4, src, dst, protocol,
    ...(ports.length ? { srcPort: ports[0], dstPort: ports[1] } : {}), direction,
  };
}

function expectVerdict(t: Test, f: Flow, verdict: string, policies: string[], reason: string, ctx = example): void {
  const e = evaluate(ctx.site, ctx.policies, f);
  t.same({ verdict: e.verdict, policies: e.policies, reason: e.reason }, { verdict, policies, reason }, describeFlow(ctx.site, f));
}

t.test('the PIN pad example: origin initiates, replies return, the destination cannot initiate', async (t) => {
  expectVerdict(t, flow(3, 4, '198.18.3.10', '198.18.4.20', 6, [40000, 8080]), 'local', [P(2)],
    `allowed locally: policy "PIN Pad - Cash Register" (${P(2)}) lets ${L3} initiate to ${L4}`);
  expectVerdict(t, flow(3, 4, '198.18.3.10', '198.18.4.20', 6, [40000, 8080], 'reply'), 'local', [P(2)],
    `reply allowed locally: the flow matches bidirectional policy "PIN Pad - Cash Register" (${P(2)}), which lets ${L3} initiate to ${L4}`);
  expectVerdict(t, flow(4, 3, '198.18.4.20', '198.18.3.10', 6, [40000, 8080]), 'drop', [],
    `no policy lets ${L4} initiate to ${L3} with this flow: policy "LAN 4 to LAN 3 monitoring" (${P(3)}): TCP is not among its protocols (udp, icmp)`);
});

t.test('port range and subnet edges', async (t) => {
  for (const [port, ok] of [[8079, false], [8080, true], [9000, true], [9001, false]] as const) {
    const e = evaluate(example.site, example.policies, flow(3, 4, '198.18.3.10', '198.18.4.20', 6, [40000, port]));
    t.equal(e.verdict, ok ? 'local' : 'drop', `port ${port}`);
    if (!ok) t.match(e.reason, `destination port ${port} is not in lan_2 ports (8080-9000)`);
  }
  for (const [src, ok] of [['198.18.3.0', true], ['198.18.3.127', true], ['198.18.3.128', false]] as const) {
    const e = evaluate(example.site, example.policies, flow(3, 4, src, '198.18.4.20', 6, [40000, 8080]));
    t.equal(e.verdict, ok ? 'local' : 'drop', `source ${src}`);
    if (!ok) t.match(e.reason, `source ${src} is not in lan_1 subnets (198.18.3.0/25)`);
  }
  expectVerdict(t, flow(3, 4, '198.18.3.10', '198.18.4.21', 6, [40000, 8080]), 'drop', [],
    `no policy lets ${L3} initiate to ${L4} with this flow: policy "PIN Pad - Cash Register" (${P(2)}): destination 198.18.4.21 is not in lan_2 subnets (198.18.4.20); policy "Syslog LAN 3 to LAN 4 (one way)" (${P(4)}): TCP is not among its protocols (udp)`);
});

t.test('no policy in either direction, or only the other way', async (t) => {
  expectVerdict(t, flow(1, 3, '198.18.1.5', '198.18.3.5', 17, [1, 2]), 'drop', [], `no policy lets LAN 1 initiate to ${L3}`);
  expectVerdict(t, flow(1, 3, '198.18.1.5', '198.18.3.5', 17, [1, 2], 'reply'), 'drop', [],
    `no policy lets LAN 1 initiate to ${L3}, so ${L3} has no flow to reply to`);
  expectVerdict(t, flow(2, 1, '198.18.2.10', '198.18.1.5', 6, [40000, 443]), 'drop', [],
    `no policy lets LAN 2 initiate to LAN 1 (policy "LAN 1 to LAN 2 via Cloudflare" (${P(1)}) lets LAN 1 initiate to LAN 2; LAN 2 may only reply to those flows)`);
});

t.test('via Cloudflare, both directions of the flow', async (t) => {
  expectVerdict(t, flow(1, 2, '198.18.1.5', '198.18.2.10', 6, [40000, 443]), 'cloudflare', [P(1)],
    `allowed via Cloudflare: policy "LAN 1 to LAN 2 via Cloudflare" (${P(1)}) lets LAN 1 initiate to LAN 2`);
  expectVerdict(t, flow(1, 2, '198.18.1.5', '198.18.2.10', 6, [40000, 443], 'reply'), 'cloudflare', [P(1)],
    `reply allowed via Cloudflare: the flow matches bidirectional policy "LAN 1 to LAN 2 via Cloudflare" (${P(1)}), which lets LAN 1 initiate to LAN 2`);
});

t.test('unidirectional: requests pass, nothing comes back', async (t) => {
  expectVerdict(t, flow(3, 4, '198.18.3.5', '198.18.4.50', 17, [5140, 514]), 'local', [P(4)],
    `allowed locally: policy "Syslog LAN 3 to LAN 4 (one way)" (${P(4)}) lets ${L3} initiate to ${L4}`);
  expectVerdict(t, flow(3, 4, '198.18.3.5', '198.18.4.50', 17, [5140, 514], 'reply'), 'drop', [],
    `the flow matches only unidirectional policy "Syslog LAN 3 to LAN 4 (one way)" (${P(4)}): nothing comes back from ${L4} to ${L3}`);
});

t.test('icmp means ICMPv6 for IPv6; protocols without ports ignore them', async (t) => {
  expectVerdict(t, flow(1, 2, '2001:db8:1::5', '2001:db8:2::10', 58), 'cloudflare', [P(1)],
    `allowed via Cloudflare: policy "LAN 1 to LAN 2 via Cloudflare" (${P(1)}) lets LAN 1 initiate to LAN 2`);
  expectVerdict(t, flow(1, 2, '2001:db8:1::5', '2001:db8:2::10', 1), 'drop', [],
    `no policy lets LAN 1 initiate to LAN 2 with this flow: policy "LAN 1 to LAN 2 via Cloudflare" (${P(1)}): ICMP is not among its protocols (tcp, icmp): for IPv6, icmp means ICMPv6`);
  expectVerdict(t, flow(1, 2, '198.18.1.5', '198.18.2.10', 1), 'cloudflare', [P(1)],
    `allowed via Cloudflare: policy "LAN 1 to LAN 2 via Cloudflare" (${P(1)}) lets LAN 1 initiate to LAN 2`, );
  // Policy 3 has ports 161,5000-5010 on lan_2 but also icmp: ICMP passes whatever the ports say.
  t.equal(evaluate(example.site, example.policies, flow(4, 3, '198.18.4.9', '198.18.3.9', 1)).verdict, 'local');
  t.equal(evaluate(example.site, example.policies, flow(4, 3, '2001:db8:4::1', '2001:db8:3::1', 17, [1000, 161])).verdict, 'local');
  expectVerdict(t, flow(3, 4, '2001:db8:3::1', '2001:db8:4::1', 17, [1000, 514]), 'drop', [],
    `no policy lets ${L3} initiate to ${L4} with this flow: policy "PIN Pad - Cash Register" (${P(2)}): UDP is not among its protocols (tcp); policy "Syslog LAN 3 to LAN 4 (one way)" (${P(4)}): lan_2 subnets have no IPv6 entry (198.18.4.50), so destination 2001:db8:4::1 cannot match`);
});

const SMALL_SITE = {
  lans: [
    { id: 'a', name: 'A', interface: 'eth1', subnets: ['198.18.1.0/24'] },
    { id: 'b', name: 'B', interface: 'eth2', subnets: ['198.18.2.0/24'] },
  ],
  tunnel: { interface: 'cf0' },
};
const small = (acls: unknown[]) => load(SMALL_SITE, acls);
const smallFlow = (src: string, dst: string, protocol: number, ports: [number, number] | [] = [], direction: Direction = 'initiate'): Flow => ({
  ingressLan: direction === 'initiate' ? 'a' : 'b', egressLan: direction === 'initiate' ? 'b' : 'a', family: 4, src, dst, protocol,
  ...(ports.length ? { srcPort: ports[0], dstPort: ports[1] } : {}), direction,
});

t.test('"Any" covers every IP protocol, ports only constrain TCP and UDP', async (t) => {
  const ctx = small([{ id: 'any', name: 'Any', lan_1: { lan_id: 'a' }, lan_2: { lan_id: 'b', ports: [443] }, forward_locally: true }]);
  expectVerdict(t, smallFlow('198.18.1.1', '198.18.2.1', 47), 'local', ['any'], 'allowed locally: policy "Any" (any) lets A initiate to B', ctx);
  expectVerdict(t, smallFlow('198.18.1.1', '198.18.2.1', 132), 'local', ['any'], 'allowed locally: policy "Any" (any) lets A initiate to B', ctx);
  expectVerdict(t, smallFlow('198.18.1.1', '198.18.2.1', 17, [5, 443]), 'local', ['any'], 'allowed locally: policy "Any" (any) lets A initiate to B', ctx);
  expectVerdict(t, smallFlow('198.18.1.1', '198.18.2.1', 6, [5, 80]), 'drop', [],
    'no policy lets A initiate to B with this flow: policy "Any" (any): destination port 80 is not in lan_2 ports (443)', ctx);
  expectVerdict(t, smallFlow('198.18.1.1', '198.18.2.1', 6, [5, 80], 'reply'), 'drop', [],
    'no policy lets A initiate to B with the original flow, so its reply is dropped: policy "Any" (any): destination port 80 is not in lan_2 ports (443)', ctx);
});

t.test('lan_1 ports constrain the origin host\'s (source) port', async (t) => {
  const ctx = small([{ id: 'sp', name: 'From 53', lan_1: { lan_id: 'a', ports: [53] }, lan_2: { lan_id: 'b' }, protocols: ['udp'], forward_locally: true }]);
  t.equal(evaluate(ctx.site, ctx.policies, smallFlow('198.18.1.1', '198.18.2.1', 17, [53, 9999])).verdict, 'local');
  t.equal(evaluate(ctx.site, ctx.policies, smallFlow('198.18.1.1', '198.18.2.1', 17, [53, 9999], 'reply')).verdict, 'local');
  expectVerdict(t, smallFlow('198.18.1.1', '198.18.2.1', 17, [54, 53]), 'drop', [],
    'no policy lets A initiate to B with this flow: policy "From 53" (sp): source port 54 is not in lan_1 ports (53)', ctx);
});

t.test('overlaps: a union; via Cloudflare wins over local; bidirectional ones answer replies', async (t) => {
  const ctx = small([
    { id: 'p1', name: 'Local web', lan_1: { lan_id: 'a' }, lan_2: { lan_id: 'b', ports: [80, 443] }, protocols: ['tcp'], forward_locally: true },
    { id: 'p2', name: 'Inspect 443', lan_1: { lan_id: 'a' }, lan_2: { lan_id: 'b', ports: [443] }, protocols: ['tcp'], forward_locally: false },
    { id: 'p3', name: 'Host 7 anything', lan_1: { lan_id: 'a', subnets: ['198.18.1.7'] }, lan_2: { lan_id: 'b' }, forward_locally: true },
    { id: 'p4', name: 'UDP one way', lan_1: { lan_id: 'a' }, lan_2: { lan_id: 'b' }, protocols: ['udp'], unidirectional: true, forward_locally: false },
  ]);
  expectVerdict(t, smallFlow('198.18.1.1', '198.18.2.1', 6, [5, 80]), 'local', ['p1'], 'allowed locally: policy "Local web" (p1) lets A initiate to B', ctx);
  expectVerdict(t, smallFlow('198.18.1.1', '198.18.2.1', 6, [5, 443]), 'cloudflare', ['p1', 'p2'],
    'allowed via Cloudflare: policy "Inspect 443" (p2) lets A initiate to B; policy "Local web" (p1) would allow it locally, but via Cloudflare takes precedence', ctx);
  expectVerdict(t, smallFlow('198.18.1.7', '198.18.2.1', 6, [5, 80]), 'local', ['p1', 'p3'],
    'allowed locally: policy "Local web" (p1) lets A initiate to B (also policy "Host 7 anything" (p3))', ctx);
  const e = evaluate(ctx.site, ctx.policies, smallFlow('198.18.1.7', '198.18.2.1', 6, [5, 443]));
  t.same(e.matches, [
    { id: 'p1', name: 'Local web', path: 'local' },
    { id: 'p2', name: 'Inspect 443', path: 'cloudflare' },
    { id: 'p3', name: 'Host 7 anything', path: 'local' },
  ]);
  // UDP from host 7: p4 (one way, via Cloudflare) and p3 (bidirectional, local) both allow it.
  expectVerdict(t, smallFlow('198.18.1.7', '198.18.2.1', 17, [5, 53]), 'cloudflare', ['p3', 'p4'],
    'allowed via Cloudflare: policy "UDP one way" (p4) lets A initiate to B; policy "Host 7 anything" (p3) would allow it locally, but via Cloudflare takes precedence', ctx);
  expectVerdict(t, smallFlow('198.18.1.7', '198.18.2.1', 17, [5, 53], 'reply'), 'local', ['p3'],
    'reply allowed locally: the flow matches bidirectional policy "Host 7 anything" (p3), which lets A initiate to B', ctx);
  expectVerdict(t, smallFlow('198.18.1.8', '198.18.2.1', 17, [5, 53], 'reply'), 'drop', [],
    'the flow matches only unidirectional policy "UDP one way" (p4): nothing comes back from B to A', ctx);
});

t.test('traffic that stays on one LAN is not filtered', async (t) => {
  const e = evaluate(example.site, example.policies, { ...flow(1, 2, '198.18.1.5', '198.18.1.6', 6, [1, 2]), egressLan: LAN(1) });
  t.same([e.verdict, e.reason], ['local', 'enters and leaves on LAN 1: not LAN-to-LAN traffic, the engine does not filter it']);
});

t.test('bad flows are refused with a clear error', async (t) => {
  const ok = flow(1, 2, '198.18.1.5', '198.18.2.10', 6, [1, 443]);
  const bad = (f: Partial<Flow>, message: string) =>
    t.throws(() => evaluate(example.site, example.policies, { ...ok, ...f }), new FlowError(message), message);
  bad({ ingressLan: 'nope' }, `ingressLan: "nope" is not a LAN of this site (known: ${[1, 2, 3, 4].map((n) => `${LAN(n)} (${example.site.lans[n - 1].name})`).join(', ')})`);
  bad({ src: '198.18.1' }, 'src: "198.18.1" is not an IPv4 or IPv6 address');
  bad({ dst: '198.18.2.0/24' }, 'dst: "198.18.2.0/24" is not an IPv4 or IPv6 address');
  bad({ dst: '2001:db8:2::10' }, 'dst: 2001:db8:2::10 is not an IPv4 address');
  bad({ dstPort: undefined }, 'dstPort: TCP needs a port number 0–65535, got undefined');
  bad({ srcPort: 70000 }, 'srcPort: TCP needs a port number 0–65535, got 70000');
  bad({ protocol: 256 }, 'protocol: 256 is not an IP protocol number (0–255)');
  t.equal(evaluate(example.site, example.policies, { ...ok, ingressLan: 'LAN 1' }).verdict, 'cloudflare', 'LANs may be named by name too');
});

t.test('describeFlow', async (t) => {
  t.equal(describeFlow(example.site, flow(1, 2, '2001:db8:1::5', '2001:db8:2::10', 17, [5353, 53], 'reply')),
    'UDP [2001:db8:1::5]:5353 -> [2001:db8:2::10]:53 (flow LAN 1 -> LAN 2, reply from LAN 2 to LAN 1)');
  t.equal(describeFlow(example.site, flow(1, 2, '198.18.1.5', '198.18.2.10', 47)), 'protocol 47 (GRE) 198.18.1.5 -> 198.18.2.10 (flow LAN 1 -> LAN 2, initiate)');
});

t.test('fast: thousands of evaluations per second', async (t) => {
  const flows = Array.from({ length: 20000 }, (_, i) => flow(1 + (i % 4), 1 + ((i + 1 + (i % 3)) % 4), `198.18.${1 + (i % 4)}.${i % 250}`, `198.18.${1 + ((i + 1) % 4)}.${i % 200}`, [6, 17, 1, 47][i % 4], [i % 65536, (i * 7) % 65536], i % 2 ? 'reply' : 'initiate'))
    .filter((f) => f.ingressLan !== f.egressLan);
  const start = process.hrtime.bigint();
  for (const f of flows) evaluate(example.site, example.policies, f);
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  t.ok(flows.length / (ms / 1000) > 5000, `${flows.length} flows in ${ms.toFixed(0)} ms (${Math.round(flows.length / (ms / 1000))}/s)`);
});

t.test('independent of the compiler: reads only the validated model', async (t) => {
  const source = readFileSync(new URL('../agent/ir/evaluator.ts', import.meta.url), 'utf8');
  const imports = [...source.matchAll(/^\s*import\s[^;]*?\bfrom\s+['"]([^'"]+)['"]/gms)].map((m) => m[1]).sort();
  t.same(imports, ['../policy/address.js', '../policy/model.js'], 'no lower, decompose, ir or render');
});
