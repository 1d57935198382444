// The behaviour matrix (docs/semantics.md), row by row with real packets: each section applies a
// policy set with the CLI in the Connector namespace, then every row sends one flow's first
// packets and the answer (agent/harness/exchange.ts) in IPv4 and IPv6 and states what must happen:
//
//   passed          request delivered, answer back, directly (TTL 63 both ways, tunnel untouched)
//   via cf          both directions crossed the tunnel exactly once per packet (TTL 61 both ways)
//   one-way         request delivered, every answer dropped (directly / via cf: forward crosses only)
//   dropped         nothing arrived, nothing entered the tunnel
//   untouched       not LAN-to-LAN: passes whatever the policies say
//
// Every row is also checked against the reference evaluator (agent/ir/evaluator.ts), so a row that
// disagrees with the oracle is a wrong row or a wrong oracle, and the exchange's counters must be
// consistent (nothing lost, nothing looped, TTL right for the path). What the other kernel tests
// already prove (range edges of lan_2 ports, origin-only TCP initiation, one-way UDP/ICMP locally,
// TCP revocation) is not repeated; this file adds the protocols nobody names (GRE, protocol 253),
// subnets of every shape, lan_1 port edges, overlaps, opposite directions, one pair both locally
// and via Cloudflare, an interface created after the apply, and revocation of UDP flows.
import t, { type Test } from 'tap';
import {
  countProbe, describeExchange, exchangeAnomalies, run, runExchanges, type ExchangeProto, type ExchangeResult,
  type ExchangeSpec, type Family, type Host,
} from '../agent/harness/index.js';
import { evaluate, type Flow, type Verdict } from '../agent/ir/evaluator.js';
import { validate } from '../agent/policy/load.js';
import { acl, kernelSite, kernelSkipReason, rootState, type KernelSite } from './support/kernel.js';

type Expect = 'passed' | 'via cf' | 'one-way' | 'one-way via cf' | 'dropped' | 'untouched';

interface Row {
  /** "a1 → b1" */
  path: string;
  /** "tcp/22", "udp/53 from 40000", "icmp", "gre", "ip/253" */
  what: string;
  expect: Expect;
  why: string;
  families?: Family[];
  /** Destination address per family when not the host's main one. */
  dst?: Partial<Record<Family, string>>;
  /** The answer does not come back through the Connector (same-LAN hairpin): skip the TTL/loss checks. */
  asymmetric?: boolean;
}

const row = (path: string, what: string, expect: Expect, why: string, extra: Partial<Row> = {}): Row => ({ path, what, expect, why, ...extra });

interface Parsed { proto: ExchangeProto; ipProto?: number; dstPort?: number; srcPort?: number }

function parseWhat(what: string): Parsed {
  const m = /^(tcp|udp|icmp|gre|ip)(?:\/(\d+))?(?: from (\d+))?$/.exec(what);
  if (!m) throw new Error(`row: cannot read "${what}"`);
  const [, p, port, from] = m;
  if (p === 'gre') return { proto: 'raw', ipProto: 47 };
  if (p === 'ip') return { proto: 'raw', ipProto: Number(port) };
  if (p === 'icmp') return { proto: 'icmp' };
  return { proto: p as 'tcp' | 'udp', dstPort: Number(port), ...(from ? { srcPort: Number(from) } : {}) };
}

/** What the packets showed, in the rows' words; undefined when it fits none of them. */
function seen(r: ExchangeResult): Expect | string {
  const fwd = r.tunnel?.forward ?? 0;
  const rev = r.tunnel?.reverse ?? 0;
  if (r.delivered === 0) return fwd === 0 && r.replied === 0 ? 'dropped' : 'dropped, but crossed the tunnel or answered';
  if (r.replied === 0) return fwd > 0 ? (rev === 0 ? 'one-way via cf' : 'one-way, answer in the tunnel') : 'one-way';
  if (fwd > 0 && rev > 0) return 'via cf';
  if (fwd === 0 && rev === 0) return 'passed';
  return `mixed path (tunnel ${fwd}/${rev})`;
}

/** The evaluator's word for a row: its verdict for the request and for the answer. */
function oracle(k: KernelSite, policies: unknown[], from: Host, to: Host, r: ExchangeResult): Expect | string {
  const v = validate(k.site.siteConfig(), 'site.yaml', [{ file: 'policies.yaml', content: policies }]);
  if (!v.site || !v.policies) throw new Error(`policies do not validate: ${JSON.stringify(v.problems)}`);
  const flow = (direction: 'initiate' | 'reply'): Flow => ({
    ingressLan: (direction === 'initiate' ? from : to).lan!.id,
    egressLan: (direction === 'initiate' ? to : from).lan!.id,
    family: r.family, src: r.src, dst: r.dst, protocol: r.ipProto, direction,
    ...(r.srcPort !== undefined ? { srcPort: r.srcPort, dstPort: r.dstPort } : {}),
  });
  const init: Verdict = evaluate(v.site, v.policies, flow('initiate')).verdict;
  if (init === 'drop') return 'dropped';
  const reply: Verdict = evaluate(v.site, v.policies, flow('reply')).verdict;
  if (reply === 'drop') return init === 'cloudflare' ? 'one-way via cf' : 'one-way';
  if (init === 'local' && reply === 'local') return 'passed';
  if (init === 'cloudflare' && reply === 'cloudflare') return 'via cf';
  return `${init} then ${reply}`;
}

let rowsRun = 0;
/** How long an application waits for its answer; every round with a drop costs this much. */
const TIMEOUT_MS = 600;

/** Applies the policies, runs every row in both families, asserts packets, counters and oracle. */
async function runSection(t: Test, k: KernelSite, policies: unknown[], rows: Row[], options: { apply?: boolean; flush?: boolean } = {}): Promise<void> {
  if (options.apply !== false) await k.applyOk(t, policies);
  const specs: ExchangeSpec[] = [];
  const meta: { row: Row; from: Host; to: Host; family: Family }[] = [];
  for (const r of rows) {
    const [fromName, toName] = r.path.split(' → ');
    const from = fromName === 'wan' ? k.site.wanHost! : k.site.host(fromName);
    const to = toName === 'wan' ? k.site.wanHost! : k.site.host(toName);
    const p = parseWhat(r.what);
    for (const family of r.families ?? [4, 6] as Family[]) {
      specs.push({ from, to, family, ...p, ...(r.dst?.[family] ? { dst: r.dst[family] } : {}), label: `${r.path} ${r.what}` });
      meta.push({ row: r, from, to, family });
    }
  }
  // With via-Cloudflare policies, TTLs must tell the paths apart: one exchange per address pair and
  // protocol per round. Otherwise every path is direct and shared TTL counts are all the same.
  const viaCf = policies.some((p) => (p as { forward_locally?: boolean }).forward_locally === false);
  const results = await runExchanges(k.site, specs, { flushConntrack: options.flush !== false, exactTtl: viaCf, timeoutMs: TIMEOUT_MS });
  results.forEach((res, i) => {
    const { row: r, from, to, family } = meta[i];
    rowsRun++;
    const got = seen(res);
    const want = r.expect === 'untouched' ? 'passed' : r.expect;
    t.equal(got, want, `${r.path} ${r.what} v${family}: ${r.expect} (${r.why})`, { seen: describeExchange(res) });
    if (!r.asymmetric) t.same(exchangeAnomalies(res), [], `  counters consistent: ${describeExchange(res)}`);
    if (r.expect !== 'untouched' && from.lan && to.lan) {
      t.equal(oracle(k, policies, from, to, res), want, `  the reference evaluator agrees: ${r.path} ${r.what} v${family}`);
    }
  });
}

const skip = await kernelSkipReason();
if (skip) {
  t.plan(0, skip);
} else {
  const rootBefore = await rootState();
  const started = Date.now();
  const k = await kernelSite(t, {
    lans: [
      { interface: 'lan1', hosts: [{ name: 'a1' }, { name: 'a2', v4: '198.18.1.20' }, { name: 'a3', v4: '198.18.1.130' }] },
      { interface: 'lan2', hosts: [{ name: 'b1' }, { name: 'b2', v4: '198.18.2.11' }, { name: 'b3', v4: '198.18.2.200' }] },
      { interface: 'lan3', hosts: [{ name: 'c1' }] },
      { interface: 'lan4', hosts: [{ name: 'd1' }] },
    ],
  });
  const { site } = k;
  const [lan1, lan2, lan3, lan4] = site.lans;
  const host = (n: string) => site.host(n);
  const both = (n: string) => [host(n).address(4), host(n).address(6)];
  const CF = { forward_locally: false };

  t.test('no policy: every pair of LANs drops every protocol; the box, the WAN and the tunnel are untouched', async (t) => {
    // A second subnet on LAN 1's interface: routing between two subnets of one interface is not LAN-to-LAN.
    await site.exec(site.connector, ['ip', 'address', 'add', '198.18.11.1/24', 'dev', 'lan1']);
    await site.exec(site.connector, ['ip', 'address', 'add', '2001:db8:11::1/64', 'dev', 'lan1', 'nodad']);
    await site.addAddresses(host('a3'), ['198.18.11.130', '2001:db8:11::130']);
    const hosts = ['a1', 'b1', 'c1', 'd1'];
    const rows: Row[] = [];
    for (const a of hosts) {
      for (const b of hosts) {
        if (a === b) continue;
        for (const what of ['tcp/80', 'udp/53', 'icmp', 'gre']) rows.push(row(`${a} → ${b}`, what, 'dropped', 'default drop'));
      }
    }
    rows.push(
      row('a1 → wan', 'tcp/443', 'untouched', 'to the WAN'),
      row('a1 → wan', 'gre', 'untouched', 'to the WAN, any protocol'),
      row('wan → b1', 'udp/53', 'untouched', 'from the Internet side: not LAN-to-LAN either'),
      row('a1 → a3', 'icmp', 'untouched', 'between two subnets of LAN 1\'s interface', { dst: { 4: '198.18.11.130', 6: '2001:db8:11::130' }, asymmetric: true }),
      row('a1 → a3', 'udp/53', 'untouched', 'between two subnets of LAN 1\'s interface', { dst: { 4: '198.18.11.130', 6: '2001:db8:11::130' }, asymmetric: true }),
    );
    await runSection(t, k, [], rows);

    // The box itself (input, not forward) and what arrives from the tunnel.
    const pings: [string, string[]][] = [
      ['a1 pings the Connector on its own LAN', ['ip', 'netns', 'exec', host('a1').ns, 'ping', '-n', '-q', '-c1', '-W1', '198.18.1.1']],
      ['a1 pings the Connector\'s address on LAN 2', ['ip', 'netns', 'exec', host('a1').ns, 'ping', '-n', '-q', '-c1', '-W1', '198.18.2.1']],
      ['a1 pings the Connector\'s address on LAN 2 (IPv6)', ['ip', 'netns', 'exec', host('a1').ns, 'ping', '-6', '-n', '-q', '-c1', '-W1', '2001:db8:2::1']],
      ['Cloudflare reaches a LAN host through the tunnel', ['ip', 'netns', 'exec', site.cloudflare!, 'ping', '-n', '-q', '-c1', '-W1', host('b1').address(4)]],
      ['Cloudflare reaches a LAN host through the tunnel (IPv6)', ['ip', 'netns', 'exec', site.cloudflare!, 'ping', '-6', '-n', '-q', '-c1', '-W1', host('b1').address(6)]],
    ];
    const done = await Promise.all(pings.map(([, argv]) => run(argv, { timeoutMs: 5_000 })));
    countProbe('icmp', done.length);
    done.forEach((r, i) => t.equal(r.code, 0, `untouched: ${pings[i][0]}`, { stdout: r.stdout, stderr: r.stderr }));
  });

  t.test('protocols: absent means every IP protocol; each alone; combinations', async (t) => {
    const policies = [
      acl('any12', lan1, lan2, {}),
      acl('tcp23', lan2, lan3, { protocols: ['tcp'] }),
      acl('udpicmp31', lan3, lan1, { protocols: ['udp', 'icmp'] }),
      acl('tcpudp13', lan1, lan3, { protocols: ['tcp', 'udp'] }),
      acl('icmp21', lan2, lan1, { protocols: ['icmp'] }),
      acl('udp32', lan3, lan2, { protocols: ['udp'] }),
    ];
    const all = ['tcp/80', 'udp/53', 'icmp', 'gre', 'ip/253'];
    const allowed: Record<string, string[]> = {
      'a1 → b1': all,
      'b1 → c1': ['tcp/80'],
      'c1 → a1': ['udp/53', 'icmp'],
      'a1 → c1': ['tcp/80', 'udp/53'],
      'b1 → a1': ['icmp'],
      'c1 → b1': ['udp/53'],
    };
    const rows = Object.entries(allowed).flatMap(([path, ok]) =>
      all.map((what) => row(path, what, ok.includes(what) ? 'passed' : 'dropped', ok.includes(what) ? 'the policy names it (or names none)' : 'not among the policy\'s protocols')));
    await runSection(t, k, policies, rows);
  });

  t.test('unidirectional: with every protocol (TCP gets its SYN through, nothing back) and with udp+icmp', async (t) => {
    const policies = [
      acl('uniany12', lan1, lan2, { unidirectional: true }),
      acl('uniui23', lan2, lan3, { protocols: ['udp', 'icmp'], unidirectional: true }),
    ];
    await runSection(t, k, policies, [
      row('a1 → b1', 'udp/53', 'one-way', 'unidirectional, all protocols'),
      row('a1 → b1', 'icmp', 'one-way', 'unidirectional, all protocols'),
      row('a1 → b1', 'gre', 'one-way', 'GRE answers are replies too'),
      row('a1 → b1', 'ip/253', 'one-way', 'any protocol\'s answer is a reply'),
      row('a1 → b1', 'tcp/80', 'one-way', 'the SYN passes, the SYN-ACK is a reply: dropped'),
      row('b1 → a1', 'udp/53', 'dropped', 'lan_2 never initiates'),
      row('b1 → a1', 'gre', 'dropped', 'lan_2 never initiates'),
      row('b1 → c1', 'udp/53', 'one-way', 'unidirectional udp'),
      row('b1 → c1', 'icmp', 'one-way', 'unidirectional icmp'),
      row('b1 → c1', 'gre', 'dropped', 'gre not among udp, icmp'),
      row('b1 → c1', 'tcp/80', 'dropped', 'tcp not among udp, icmp'),
    ]);
  });

  t.test('subnets: a single host, a CIDR, several, one family only', async (t) => {
    const policies = [
      acl('single', lan1, lan2, { protocols: ['tcp'], from: { subnets: both('a2') }, to: { ports: [22] } }),
      acl('cidr', lan1, lan2, { protocols: ['udp'], to: { ports: [53], subnets: ['198.18.2.0/28', '2001:db8:2::/123'] } }),
      acl('several', lan1, lan2, {
        protocols: ['icmp'],
        from: { subnets: ['198.18.1.128/25', '2001:db8:1::100/120'] },
        to: { subnets: ['198.18.2.10', '198.18.2.200', '2001:db8:2::10', '2001:db8:2::200'] },
      }),
      acl('v4only', lan3, lan2, { to: { subnets: ['198.18.2.200'] } }),
    ];
    await runSection(t, k, policies, [
      row('a2 → b1', 'tcp/22', 'passed', 'a2 is the single source host'),
      row('a1 → b1', 'tcp/22', 'dropped', 'a1 is not the source host'),
      row('a3 → b2', 'tcp/22', 'dropped', 'a3 is not the source host'),
      row('a1 → b1', 'udp/53', 'passed', '.10 / ::10 inside /28 and /123'),
      row('a1 → b2', 'udp/53', 'passed', '.11 / ::11 inside /28 and /123'),
      row('a1 → b3', 'udp/53', 'dropped', '.200 / ::200 outside'),
      row('a3 → b1', 'icmp', 'passed', 'source in 198.18.1.128/25 / ::100/120, destination listed'),
      row('a3 → b3', 'icmp', 'passed', 'second listed destination'),
      row('a3 → b2', 'icmp', 'dropped', 'destination not listed'),
      row('a1 → b1', 'icmp', 'dropped', 'source outside the /25 and /120'),
      row('c1 → b3', 'gre', 'passed', 'IPv4 destination listed', { families: [4] }),
      row('c1 → b3', 'tcp/80', 'passed', 'IPv4 destination listed', { families: [4] }),
      row('c1 → b3', 'gre', 'dropped', 'only an IPv4 subnet: IPv6 never matches', { families: [6] }),
      row('c1 → b3', 'tcp/80', 'dropped', 'only an IPv4 subnet: IPv6 never matches', { families: [6] }),
      row('c1 → b1', 'gre', 'dropped', 'not the listed host'),
    ]);
  });

  t.test('ports: lan_1 (source) port edges, the dashboard\'s "1000,2000-2001", 1 and 65535', async (t) => {
    const policies = [
      acl('srcrange', lan1, lan3, { protocols: ['udp'], from: { port_ranges: ['40000-40010'] }, to: { ports: [53] } }),
      acl('dash', lan1, lan3, { protocols: ['tcp'], to: { ports: '1000,2000-2001' } }),
      acl('extremes', lan3, lan1, { protocols: ['tcp'], to: { port_ranges: ['1-2', '65534-65535'] } }),
      acl('srcmax', lan3, lan1, { protocols: ['udp'], from: { ports: [65535] }, to: { ports: [1] } }),
      acl('srctcp', lan2, lan3, { protocols: ['tcp'], from: { ports: [1024] } }),
    ];
    await runSection(t, k, policies, [
      row('a1 → c1', 'udp/53 from 39999', 'dropped', 'one below the source range'),
      row('a1 → c1', 'udp/53 from 40000', 'passed', 'first source port'),
      row('a1 → c1', 'udp/53 from 40010', 'passed', 'last source port'),
      row('a1 → c1', 'udp/53 from 40011', 'dropped', 'one above the source range'),
      row('a1 → c1', 'tcp/999', 'dropped', 'below 1000'),
      row('a1 → c1', 'tcp/1000', 'passed', 'single port of the string form'),
      row('a1 → c1', 'tcp/1001', 'dropped', 'above 1000'),
      row('a1 → c1', 'tcp/1999', 'dropped', 'below the range 2000-2001'),
      row('a1 → c1', 'tcp/2000', 'passed', 'first of 2000-2001'),
      row('a1 → c1', 'tcp/2001', 'passed', 'last of 2000-2001'),
      row('a1 → c1', 'tcp/2002', 'dropped', 'above 2000-2001'),
      row('c1 → a1', 'tcp/1', 'passed', 'port 1'),
      row('c1 → a1', 'tcp/3', 'dropped', 'above 1-2'),
      row('c1 → a1', 'tcp/65533', 'dropped', 'below 65534-65535'),
      row('c1 → a1', 'tcp/65535', 'passed', 'port 65535'),
      row('c1 → a1', 'udp/1 from 65535', 'passed', 'source port 65535, destination 1'),
      row('c1 → a1', 'udp/1 from 65534', 'dropped', 'source port not 65535'),
      row('c1 → a1', 'udp/2 from 65535', 'dropped', 'destination port not 1'),
      row('b1 → c1', 'tcp/80 from 1024', 'passed', 'TCP source port 1024 (its replies go back to 1024)'),
      row('b1 → c1', 'tcp/80 from 1025', 'dropped', 'TCP source port not 1024'),
    ]);
  });

  t.test('overlapping policies: the union; a bidirectional policy owns what it shares with a unidirectional one', async (t) => {
    const policies = [
      acl('o1', lan2, lan3, { protocols: ['tcp'], to: { port_ranges: ['1000-1005'] } }),
      acl('o2', lan2, lan3, { protocols: ['tcp'], from: { subnets: both('b1') }, to: { port_ranges: ['1003-1010'] } }),
      acl('o3', lan2, lan3, { protocols: ['udp'], unidirectional: true, to: { port_ranges: ['7000-7010'] } }),
      acl('o4', lan2, lan3, { protocols: ['udp'], to: { ports: [7005] } }),
      acl('o5', lan2, lan3, { protocols: ['icmp'], unidirectional: true }),
      acl('o6', lan2, lan3, { from: { subnets: both('b3') } }),
    ];
    await runSection(t, k, policies, [
      row('b1 → c1', 'tcp/1000', 'passed', 'o1'),
      row('b1 → c1', 'tcp/1004', 'passed', 'o1 and o2'),
      row('b1 → c1', 'tcp/1009', 'passed', 'o2'),
      row('b1 → c1', 'tcp/1011', 'dropped', 'neither'),
      row('b2 → c1', 'tcp/1004', 'passed', 'o1 (any source)'),
      row('b2 → c1', 'tcp/1009', 'dropped', 'o2 is from b1 only'),
      row('b1 → c1', 'udp/7001', 'one-way', 'o3 unidirectional'),
      row('b1 → c1', 'udp/7005', 'passed', 'o4 bidirectional inside o3\'s range'),
      row('b1 → c1', 'udp/7011', 'dropped', 'outside o3'),
      row('b1 → c1', 'icmp', 'one-way', 'o5 unidirectional'),
      row('b3 → c1', 'icmp', 'passed', 'o6 (every protocol, bidirectional) beats o5'),
      row('b3 → c1', 'udp/7001', 'passed', 'o6 beats o3'),
      row('b3 → c1', 'gre', 'passed', 'o6'),
      row('b1 → c1', 'gre', 'dropped', 'o6 is from b3 only'),
      row('c1 → b1', 'tcp/1000', 'dropped', 'no policy lets LAN 3 initiate'),
    ]);
  });

  t.test('opposite-direction policies on one LAN pair stay two one-way grants', async (t) => {
    const policies = [
      acl('fwd13', lan1, lan3, { protocols: ['tcp'], to: { ports: [80] } }),
      acl('rev31', lan3, lan1, { protocols: ['tcp'], to: { ports: [8080] } }),
      acl('unif13', lan1, lan3, { protocols: ['udp'], unidirectional: true, to: { ports: [514] } }),
      acl('unir31', lan3, lan1, { protocols: ['udp'], unidirectional: true, to: { ports: [514] } }),
    ];
    await runSection(t, k, policies, [
      row('a1 → c1', 'tcp/80', 'passed', 'fwd13'),
      row('c1 → a1', 'tcp/80', 'dropped', 'fwd13 does not let LAN 3 initiate'),
      row('c1 → a1', 'tcp/8080', 'passed', 'rev31'),
      row('a1 → c1', 'tcp/8080', 'dropped', 'rev31 does not let LAN 1 initiate'),
      row('c1 → a1', 'tcp/40000 from 80', 'dropped', 'shaped like a reply of fwd13, but a new connection'),
      row('a1 → c1', 'tcp/40001 from 8080', 'dropped', 'shaped like a reply of rev31, but a new connection'),
      row('a1 → c1', 'udp/514 from 514', 'one-way', 'the answer is a reply of unif13, not a flow unir31 allows'),
      row('c1 → a1', 'udp/514 from 514', 'one-way', 'and the other way round'),
      row('a1 → c1', 'udp/514', 'one-way', 'unif13'),
    ]);
  });

  t.test('one LAN pair both locally and via Cloudflare: each flow takes its policy\'s path, exactly once through the tunnel', async (t) => {
    const policies = [
      acl('cf443', lan1, lan2, { ...CF, protocols: ['tcp', 'udp'], to: { ports: [443] } }),
      acl('loc8443', lan1, lan2, { protocols: ['tcp'], to: { ports: [8443] } }),
      acl('cfback', lan2, lan1, { ...CF, protocols: ['udp'], to: { ports: [5353] } }),
      acl('cfany', lan2, lan1, { ...CF, from: { subnets: both('b3') } }),
      acl('cfuni', lan1, lan2, { ...CF, protocols: ['udp'], unidirectional: true, to: { ports: [514] } }),
    ];
    await runSection(t, k, policies, [
      row('a1 → b1', 'tcp/443', 'via cf', 'cf443'),
      row('a1 → b1', 'udp/443', 'via cf', 'cf443'),
      row('a2 → b2', 'tcp/443', 'via cf', 'cf443, other hosts'),
      row('a1 → b1', 'tcp/8443', 'passed', 'loc8443: same pair, forwarded locally'),
      row('a1 → b1', 'icmp', 'dropped', 'no policy'),
      row('b1 → a1', 'udp/5353', 'via cf', 'cfback: the other direction via Cloudflare'),
      row('b1 → a1', 'tcp/443', 'dropped', 'cf443 does not let LAN 2 initiate'),
      row('b3 → a1', 'gre', 'via cf', 'cfany: any protocol via Cloudflare'),
      row('b3 → a1', 'icmp', 'via cf', 'cfany'),
      row('b3 → a1', 'tcp/22', 'via cf', 'cfany'),
      row('a1 → b3', 'gre', 'dropped', 'cfany lets only b3 initiate'),
      row('a1 → b1', 'udp/514', 'one-way via cf', 'cfuni: forward crosses the tunnel, the reply is dropped'),
    ]);
  });

  t.test('an interface that appears after the apply is covered by name at once', async (t) => {
    await site.unplugLan(lan4);
    const policies = [
      acl('late14', lan1, lan4, { protocols: ['tcp', 'udp', 'icmp'], to: { ports: [22, 53] } }),
      acl('latecf41', lan4, lan1, { ...CF, protocols: ['tcp'], to: { ports: [443] } }),
    ];
    const r = await k.apply(policies);
    t.equal(r.code, 0, 'the apply succeeds while lan4 does not exist', { stderr: r.stderr });
    t.match(r.stderr, /lan4/, 'and warns about the missing interface');
    const missing = await site.exec(site.connector, ['ip', 'link', 'show', 'lan4']);
    t.not(missing.code, 0, 'lan4 really is absent at apply time');
    await site.plugLan(lan4);
    await runSection(t, k, policies, [
      row('a1 → d1', 'tcp/22', 'passed', 'late14 on the new interface'),
      row('a1 → d1', 'udp/53', 'passed', 'late14'),
      row('a1 → d1', 'icmp', 'passed', 'late14'),
      row('a1 → d1', 'tcp/23', 'dropped', 'the default drop covers the new interface too'),
      row('d1 → a1', 'tcp/22', 'dropped', 'late14 lets only LAN 1 initiate'),
      row('d1 → a1', 'tcp/443', 'via cf', 'latecf41 marks packets arriving on the new interface'),
      row('d1 → b1', 'gre', 'dropped', 'no policy for LAN 4 → LAN 2'),
      row('b1 → d1', 'icmp', 'dropped', 'no policy for LAN 2 → LAN 4'),
    ], { apply: false });
  });

  t.test('revocation of established UDP flows: removed or narrowed policies cut them at the next packet, kept ones are untouched', async (t) => {
    const keep = acl('keepu', lan1, lan2, { protocols: ['udp'], to: { ports: [5000] } });
    const cut = acl('cutu', lan1, lan2, { protocols: ['udp'], to: { ports: [6000] } });
    const cutCf = acl('cutcf', lan1, lan3, { ...CF, protocols: ['udp'], to: { ports: [7000] } });
    const wide = acl('narrowu', lan3, lan2, { protocols: ['udp'], to: { port_ranges: ['8000-8001'] } });
    const narrow = acl('narrowu', lan3, lan2, { protocols: ['udp'], to: { ports: [8001] } });
    const bidi = acl('flipu', lan2, lan1, { protocols: ['udp'], to: { ports: [9000] } });
    const uni = acl('flipu', lan2, lan1, { protocols: ['udp'], unidirectional: true, to: { ports: [9000] } });
    const flows: [string, string, number, number][] = [
      ['a1', 'b1', 45001, 5000], ['a1', 'b1', 45002, 6000], ['a1', 'c1', 45003, 7000],
      ['c1', 'b1', 45004, 8000], ['c1', 'b1', 45005, 8001], ['b1', 'a1', 45006, 9000],
    ];
    const specs: ExchangeSpec[] = flows.flatMap(([f, to, sp, dp]) => ([4, 6] as Family[]).map((family) => ({
      from: host(f), to: host(to), family, proto: 'udp' as const, srcPort: sp, dstPort: dp,
    })));
    const conntrack = async () => (await site.exec(site.connector, ['conntrack', '-L', '-p', 'udp'])).stdout;

    await site.exec(site.connector, ['conntrack', '-F']);
    await k.applyOk(t, [keep, cut, cutCf, wide, bidi]);
    const before = await runExchanges(site, specs, { timeoutMs: TIMEOUT_MS });
    before.forEach((r, i) => {
      const want = flows[Math.floor(i / 2)][3] === 7000 ? 'via cf' : 'passed';
      t.equal(seen(r), want, `before: ${describeExchange(r)}`);
    });
    const table = await conntrack();
    for (const [, , sp, dp] of flows) t.equal(table.split('\n').filter((l) => l.includes(`sport=${sp} dport=${dp} `)).length, 2, `an established conntrack entry per family for :${sp} → :${dp}`);

    await k.applyOk(t, [keep, narrow, uni]);
    const still = await conntrack();
    for (const [, , sp, dp] of flows) t.ok(still.includes(`sport=${sp} dport=${dp} `), `the conntrack entry for :${sp} → :${dp} is still there after the re-apply`);

    const after = await runExchanges(site, specs, { timeoutMs: TIMEOUT_MS });
    const want: Record<number, Expect> = { 5000: 'passed', 6000: 'dropped', 7000: 'dropped', 8000: 'dropped', 8001: 'passed', 9000: 'one-way' };
    const why: Record<number, string> = {
      5000: 'kept policy: its flow is not disturbed', 6000: 'removed policy: its established flow is cut',
      7000: 'removed via-Cloudflare policy: cut, and nothing enters the tunnel', 8000: 'narrowed away: cut',
      8001: 'still inside the narrowed policy: untouched', 9000: 'now unidirectional: requests still pass, the replies of the established flow are cut',
    };
    after.forEach((r, i) => {
      const dp = flows[Math.floor(i / 2)][3];
      rowsRun++;
      t.equal(seen(r), want[dp], `after: udp :${dp} v${r.family}: ${want[dp]} (${why[dp]})`, { seen: describeExchange(r) });
      t.same(exchangeAnomalies(r), [], `  counters consistent: ${describeExchange(r)}`);
    });
  });

  t.test('the root namespace is untouched', async (t) => {
    t.equal(await rootState(), rootBefore);
    t.comment(`matrix: ${rowsRun} row probes (rows × families) in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  });
}
