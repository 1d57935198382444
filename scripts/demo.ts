// `npm run demo`: the seed document's picture, built in network namespaces and probed with real
// packets. A Connector with LAN 1–4 and a tunnel (cf0) to a stand-in for Cloudflare that sends
// everything straight back; the example site and policies (rules/) applied with the CLI inside the
// Connector namespace; then one probe per row, and a table of what was expected and what was seen.
// Exit 0 only when every row matches. Everything created is removed again, also on Ctrl-C.
import path from 'node:path';
import {
  buildSite, cliAvailable, cliPath, icmpProbe, repoRoot, runCli, seenOf, tcpProbe, udpProbe,
  type Host, type ProbeResult, type Site,
} from '../agent/harness/index.js';

type Expect = 'via tunnel' | 'passed' | 'dropped' | 'one-way' | 'untouched';

interface Row {
  flow: string;
  why: string;
  expect: Expect;
  probe: (site: Site) => Promise<ProbeResult>;
}

const H = (site: Site, name: string): Host => site.host(name);

const ROWS: Row[] = [
  {
    flow: 'LAN1 office → LAN2 server  tcp/443',
    why: 'policy 1, via Cloudflare',
    expect: 'via tunnel',
    probe: (s) => tcpProbe(H(s, 'office'), H(s, 'server'), 443),
  },
  {
    flow: 'LAN1 office → LAN2 server  tcp/8443 (IPv6)',
    why: 'policy 1, via Cloudflare',
    expect: 'via tunnel',
    probe: (s) => tcpProbe(H(s, 'office'), H(s, 'server'), 8443, { family: 6 }),
  },
  {
    flow: 'LAN1 office → LAN2 server  ping',
    why: 'policy 1 allows icmp',
    expect: 'via tunnel',
    probe: (s) => icmpProbe(H(s, 'office'), H(s, 'server')),
  },
  {
    flow: 'LAN1 office → LAN2 server  tcp/22',
    why: 'port not in policy 1',
    expect: 'dropped',
    probe: (s) => tcpProbe(H(s, 'office'), H(s, 'server'), 22),
  },
  {
    flow: 'LAN1 office → LAN2 other   tcp/443',
    why: 'policy 1 names 198.18.2.10 only',
    expect: 'dropped',
    probe: (s) => tcpProbe(H(s, 'office'), H(s, 'server2'), 443),
  },
  {
    flow: 'LAN2 server → LAN1 office  tcp/443',
    why: 'only the origin (LAN 1) initiates',
    expect: 'dropped',
    probe: (s) => tcpProbe(H(s, 'server'), H(s, 'office'), 443),
  },
  {
    flow: 'LAN3 PIN pad → LAN4 register  tcp/8080',
    why: 'policy 2, first port of 8080-9000',
    expect: 'passed',
    probe: (s) => tcpProbe(H(s, 'pinpad'), H(s, 'register'), 8080),
  },
  {
    flow: 'LAN3 PIN pad → LAN4 register  tcp/9000',
    why: 'policy 2, last port of 8080-9000',
    expect: 'passed',
    probe: (s) => tcpProbe(H(s, 'pinpad'), H(s, 'register'), 9000),
  },
  {
    flow: 'LAN3 PIN pad → LAN4 register  tcp/9001',
    why: 'one above the range',
    expect: 'dropped',
    probe: (s) => tcpProbe(H(s, 'pinpad'), H(s, 'register'), 9001),
  },
  {
    flow: 'LAN3 PIN pad → LAN4 register  tcp/8079',
    why: 'one below the range',
    expect: 'dropped',
    probe: (s) => tcpProbe(H(s, 'pinpad'), H(s, 'register'), 8079),
  },
  {
    flow: 'LAN3 kiosk (.200) → LAN4 register  tcp/8080',
    why: 'kiosk is outside 198.18.3.0/25',
    expect: 'dropped',
    probe: (s) => tcpProbe(H(s, 'kiosk'), H(s, 'register'), 8080),
  },
  {
    flow: 'LAN3 PIN pad → LAN4 register  tcp/8080 (IPv6)',
    why: 'policy 2 names IPv4 subnets only',
    expect: 'dropped',
    probe: (s) => tcpProbe(H(s, 'pinpad'), H(s, 'register'), 8080, { family: 6 }),
  },
  {
    flow: 'LAN4 register → LAN3 PIN pad  tcp/8080',
    why: 'policy 2 is initiated by LAN 3 only',
    expect: 'dropped',
    probe: (s) => tcpProbe(H(s, 'register'), H(s, 'pinpad'), 8080),
  },
  {
    flow: 'LAN4 register → LAN3 PIN pad  udp/161',
    why: 'policy 3, bidirectional: reply returns',
    expect: 'passed',
    probe: (s) => udpProbe(H(s, 'register'), H(s, 'pinpad'), 161),
  },
  {
    flow: 'LAN4 register → LAN3 PIN pad  udp/161 (IPv6)',
    why: 'policy 3 has no subnets: any address',
    expect: 'passed',
    probe: (s) => udpProbe(H(s, 'register'), H(s, 'pinpad'), 161, { family: 6 }),
  },
  {
    flow: 'LAN4 register → LAN3 PIN pad  ping',
    why: 'policy 3 allows icmp',
    expect: 'passed',
    probe: (s) => icmpProbe(H(s, 'register'), H(s, 'pinpad')),
  },
  {
    flow: 'LAN3 PIN pad → LAN4 register  udp/161',
    why: 'policy 3 is initiated by LAN 4 only',
    expect: 'dropped',
    probe: (s) => udpProbe(H(s, 'pinpad'), H(s, 'register'), 161),
  },
  {
    flow: 'LAN3 PIN pad → LAN4 syslog  udp/514',
    why: 'policy 4, unidirectional: reply dropped',
    expect: 'one-way',
    probe: (s) => udpProbe(H(s, 'pinpad'), H(s, 'syslog'), 514),
  },
  {
    flow: 'LAN3 PIN pad → LAN4 register  udp/514',
    why: 'policy 4 names 198.18.4.50 only',
    expect: 'dropped',
    probe: (s) => udpProbe(H(s, 'pinpad'), H(s, 'register'), 514),
  },
  {
    flow: 'LAN1 office → LAN3 PIN pad  tcp/443',
    why: 'no policy: default drop',
    expect: 'dropped',
    probe: (s) => tcpProbe(H(s, 'office'), H(s, 'pinpad'), 443),
  },
  {
    flow: 'LAN1 office → LAN3 PIN pad  ping (IPv6)',
    why: 'no policy: default drop',
    expect: 'dropped',
    probe: (s) => icmpProbe(H(s, 'office'), H(s, 'pinpad'), { family: 6 }),
  },
  {
    flow: 'LAN1 office → Internet  tcp/443',
    why: 'not LAN-to-LAN: untouched',
    expect: 'untouched',
    probe: (s) => tcpProbe(H(s, 'office'), s.wanHost!, 443),
  },
  {
    flow: 'LAN3 PIN pad → Internet  udp/53 (IPv6)',
    why: 'not LAN-to-LAN: untouched',
    expect: 'untouched',
    probe: (s) => udpProbe(H(s, 'pinpad'), s.wanHost!, 53, { family: 6 }),
  },
];

/** What the probe showed, in the words of the Expect column. */
function seenWords(r: ProbeResult): { word: string; asExpected: (e: Expect) => boolean } {
  const s = seenOf(r);
  const fwd = r.tunnel?.forward ?? 0;
  const rev = r.tunnel?.reverse ?? 0;
  if (s === 'passed' && fwd > 0 && rev > 0) return { word: `passed, via tunnel (${fwd}→ ${rev}←)`, asExpected: (e) => e === 'via tunnel' };
  if (s === 'passed' && fwd + rev > 0) return { word: `passed, tunnel one way only (${fwd}→ ${rev}←)`, asExpected: () => false };
  if (s === 'passed') return { word: 'passed, locally', asExpected: (e) => e === 'passed' || e === 'untouched' };
  if (s === 'one-way') return { word: `delivered, reply dropped${fwd + rev > 0 ? ' (via tunnel)' : ''}`, asExpected: (e) => e === 'one-way' && fwd + rev === 0 };
  if (s === 'dropped') return { word: `dropped${fwd + rev > 0 ? ` (after the tunnel ${fwd}→ ${rev}←)` : ''}`, asExpected: (e) => e === 'dropped' };
  return { word: s, asExpected: () => false };
}

const EXPECT_WORDS: Record<Expect, string> = {
  'via tunnel': 'passes via Cloudflare',
  passed: 'passes locally',
  dropped: 'dropped',
  'one-way': 'delivered, reply dropped',
  untouched: 'passes (not filtered)',
};

async function main(): Promise<number> {
  if (process.getuid?.() !== 0) {
    process.stderr.write('demo: needs root (it creates network namespaces)\n');
    return 3;
  }
  if (!cliAvailable()) {
    process.stderr.write(`demo: ${cliPath()} is missing; run npm run build\n`);
    return 3;
  }
  const root = repoRoot();
  const siteFile = path.join(root, 'rules', 'site.yaml');
  const policiesFile = path.join(root, 'rules', 'policies.yaml');

  process.stdout.write('Building the site: Connector with LAN 1–4, Cloudflare over cf0, WAN over wan0 …\n');
  const site = await buildSite({
    lans: [
      { interface: 'lan1', name: 'LAN 1', hosts: [{ name: 'office', v4: '198.18.1.10' }] },
      { interface: 'lan2', name: 'LAN 2', hosts: [{ name: 'server', v4: '198.18.2.10' }, { name: 'server2', v4: '198.18.2.20' }] },
      { interface: 'lan3', name: 'LAN 3', hosts: [{ name: 'pinpad', v4: '198.18.3.5' }, { name: 'kiosk', v4: '198.18.3.200' }] },
      { interface: 'lan4', name: 'LAN 4', hosts: [{ name: 'register', v4: '198.18.4.20' }, { name: 'syslog', v4: '198.18.4.50' }] },
    ],
  });
  try {
    for (const lan of site.lans) {
      const hosts = lan.hosts.map((h) => `${h.name} ${h.v4} ${h.v6}`).join(', ');
      process.stdout.write(`  ${lan.interface}  ${lan.subnets.join(' ')}  hosts: ${hosts}\n`);
    }
    process.stdout.write(`  cf0   198.18.100.1/30 → Cloudflare 198.18.100.2 (returns everything)   wan0  198.18.200.1/24 → Internet 198.18.200.2\n\n`);

    const rel = (f: string): string => path.relative(process.cwd(), f) || f;
    process.stdout.write(`$ ip netns exec ${site.connector} connector-acl apply -c ${rel(siteFile)} -p ${rel(policiesFile)}\n`);
    const applied = await runCli(site, ['apply', '-c', siteFile, '-p', policiesFile]);
    process.stdout.write(applied.stdout.replace(/^/gm, '  '));
    if (applied.stderr.trim()) process.stdout.write(applied.stderr.replace(/^/gm, '  '));
    if (applied.code !== 0) {
      process.stderr.write(`demo: apply failed with exit ${applied.code}\n`);
      return 1;
    }
    process.stdout.write('\n');

    // Every probe at once: the expected drops each wait ~1 s, in parallel.
    const results = await Promise.all(ROWS.map((row) => row.probe(site).then(
      (r) => ({ r, error: undefined as string | undefined }),
      (e: Error) => ({ r: undefined, error: e.message }),
    )));

    const table = ROWS.map((row, i) => {
      const { r, error } = results[i];
      const seen = r ? seenWords(r) : { word: `probe failed: ${error}`, asExpected: () => false };
      return { row, seen: seen.word, ok: seen.asExpected(row.expect) };
    });
    const w1 = Math.max(4, ...table.map((t) => t.row.flow.length));
    const w2 = Math.max(8, ...table.map((t) => EXPECT_WORDS[t.row.expect].length));
    const w3 = Math.max(4, ...table.map((t) => t.seen.length));
    const line = (a: string, b: string, c: string, d: string, e: string): string => `${a.padEnd(w1)}  ${b.padEnd(w2)}  ${c.padEnd(w3)}  ${d.padEnd(4)}  ${e}\n`;
    process.stdout.write(line('FLOW', 'EXPECTED', 'SEEN', '', 'WHY'));
    for (const t of table) process.stdout.write(line(t.row.flow, EXPECT_WORDS[t.row.expect], t.seen, t.ok ? 'ok' : 'FAIL', t.row.why));

    const status = await runCli(site, ['status', '-c', siteFile, '-p', policiesFile]);
    process.stdout.write(`\n$ connector-acl status\n${status.stdout.replace(/^/gm, '  ')}`);

    const good = table.filter((t) => t.ok).length;
    process.stdout.write(`\n${good}/${table.length} flows as expected${good === table.length ? '' : ` — ${table.length - good} MISMATCHED`}\n`);
    return good === table.length ? 0 : 1;
  } finally {
    await site.destroy();
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e: Error) => {
    process.stderr.write(`demo: ${e.stack ?? e.message}\n`);
    process.exitCode = 1;
  },
);
