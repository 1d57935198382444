// Real packets with policies forwarded via Cloudflare: marked in prerouting, policy-routed into the
// tunnel (cf0), sent straight back by the Cloudflare namespace and delivered by the Connector. The
// Cloudflare namespace counts every packet it forwards, so "crossed the tunnel" is measured.
import t from 'tap';
import { icmpProbe, run, runCli, tcpProbe, tcpSession, udpProbe } from '../agent/harness/index.js';
import { acl, expectFlow, expectTunnel, kernelSite, kernelSkipReason, rootState } from './support/kernel.js';

const skip = await kernelSkipReason();
if (skip) {
  t.plan(0, skip);
} else {
  const rootBefore = await rootState();
  const k = await kernelSite(t, {
    lans: [
      { interface: 'lan1', hosts: [{ name: 'c1' }] },
      { interface: 'lan2', hosts: [{ name: 'srv', v4: '198.18.2.10' }] },
      { interface: 'lan3', hosts: [{ name: 'db' }] },
    ],
  });
  const { site } = k;
  const [lan1, lan2, lan3] = site.lans;
  const c1 = site.host('c1');
  const srv = site.host('srv');
  const db = site.host('db');

  const policies = [
    acl('cfweb', lan1, lan2, { forward_locally: false, protocols: ['tcp', 'udp', 'icmp'], to: { ports: [443, 53] } }),
    acl('cflog', lan1, lan3, { forward_locally: false, protocols: ['udp'], unidirectional: true, to: { ports: [514] } }),
    acl('locdb', lan1, lan3, { protocols: ['tcp'], to: { ports: [5432] } }),
    acl('locssh', lan2, lan1, { protocols: ['tcp'], to: { ports: [22] } }),
  ];
  await k.applyOk(t, policies);

  t.test('the apply installed the tunnel routing in the Connector namespace', async (t) => {
    const ns = site.connector;
    const [r4, r6, t4, t6] = await Promise.all([
      site.exec(ns, ['ip', '-4', 'rule']),
      site.exec(ns, ['ip', '-6', 'rule']),
      site.exec(ns, ['ip', '-4', 'route', 'show', 'table', '207']),
      site.exec(ns, ['ip', '-6', 'route', 'show', 'table', '207']),
    ]);
    t.match(r4.stdout, /fwmark 0xcf00000\/0xcf00000 lookup 207/);
    t.match(r6.stdout, /fwmark 0xcf00000\/0xcf00000 lookup 207/);
    t.match(t4.stdout, /default via 198\.18\.100\.2 dev cf0/);
    t.match(t6.stdout, /default via 2001:db8:100::2 dev cf0/);
  });

  t.test('via Cloudflare: TCP crosses the tunnel both ways and works', async (t) => {
    const [a, b] = await Promise.all([tcpProbe(c1, srv, 443), tcpProbe(c1, srv, 443, { family: 6 })]);
    expectFlow(t, a, 'passed', 'both');
    expectFlow(t, b, 'passed', 'both');
  });

  t.test('via Cloudflare: UDP and ICMP cross the tunnel both ways', async (t) => {
    const rs = await Promise.all([
      udpProbe(c1, srv, 53),
      udpProbe(c1, srv, 53, { family: 6 }),
      icmpProbe(c1, srv),
      icmpProbe(c1, srv, { family: 6 }),
    ]);
    for (const r of rs) expectFlow(t, r, 'passed', 'both');
  });

  t.test('via Cloudflare: an established connection keeps working (both passes share one conntrack entry)', async (t) => {
    const s = await tcpSession(c1, srv, 443);
    t.teardown(() => s.close());
    expectFlow(t, s.opened, 'passed', 'both');
    for (let i = 0; i < 5; i++) {
      const r = await s.send();
      t.ok(r.roundTrip && r.delivered, `exchange ${i + 1} on the open connection`);
      expectTunnel(t, r, 'both', `exchange ${i + 1}`);
    }
  });

  t.test('via Cloudflare: what the policy does not allow is dropped and never reaches the tunnel', async (t) => {
    const [port, reverse, reverse6, icmpBack] = await Promise.all([
      tcpProbe(c1, srv, 80),
      tcpProbe(srv, c1, 443),
      tcpProbe(srv, c1, 443, { family: 6 }),
      icmpProbe(srv, c1),
    ]);
    expectFlow(t, port, 'dropped', 'none');
    expectFlow(t, reverse, 'dropped', 'none');
    expectFlow(t, reverse6, 'dropped', 'none');
    expectFlow(t, icmpBack, 'dropped', 'none');
  });

  t.test('via Cloudflare, unidirectional UDP: crosses the tunnel one way, the reply is dropped', async (t) => {
    const [a, b, back] = await Promise.all([
      udpProbe(c1, db, 514),
      udpProbe(c1, db, 514, { family: 6 }),
      udpProbe(db, c1, 514),
    ]);
    expectFlow(t, a, 'one-way', 'forward only');
    expectFlow(t, b, 'one-way', 'forward only');
    expectFlow(t, back, 'dropped', 'none');
  });

  t.test('local policies next to via-Cloudflare ones stay local', async (t) => {
    const [dbFlow, ssh, ssh6] = await Promise.all([
      tcpProbe(c1, db, 5432),
      tcpProbe(srv, c1, 22),
      tcpProbe(srv, c1, 22, { family: 6 }),
    ]);
    expectFlow(t, dbFlow, 'passed', 'none');
    expectFlow(t, ssh, 'passed', 'none');
    expectFlow(t, ssh6, 'passed', 'none');
  });

  t.test('WAN traffic does not go through the tunnel', async (t) => {
    const [a, b] = await Promise.all([tcpProbe(c1, site.wanHost!, 443), udpProbe(srv, site.wanHost!, 53, { family: 6 })]);
    expectFlow(t, a, 'passed', 'none');
    expectFlow(t, b, 'passed', 'none');
  });

  t.test('a flow allowed both locally and via Cloudflare goes via Cloudflare', async (t) => {
    await k.applyOk(t, [...policies, acl('locweb', lan1, lan2, { protocols: ['tcp'], to: { port_ranges: ['443-444'] } })]);
    const [both, localOnly] = await Promise.all([tcpProbe(c1, srv, 443), tcpProbe(c1, srv, 444)]);
    expectFlow(t, both, 'passed', 'both');
    expectFlow(t, localOnly, 'passed', 'none');
    await k.applyOk(t, policies);
  });

  t.test('without the tunnel route, via-Cloudflare traffic is dropped, never shortcut locally', async (t) => {
    for (const family of ['-4', '-6']) {
      const r = await site.exec(site.connector, ['ip', family, 'route', 'flush', 'table', '207']);
      t.equal(r.code, 0, `flushed table 207 (${family})`);
    }
    const [a, b, local] = await Promise.all([
      tcpProbe(c1, srv, 443),
      udpProbe(c1, srv, 53, { family: 6 }),
      tcpProbe(c1, db, 5432),
    ]);
    expectFlow(t, a, 'dropped', 'none');
    expectFlow(t, b, 'dropped', 'none');
    expectFlow(t, local, 'passed', 'none');
    const status = await runCli(site, ['status', '--json', '-c', k.siteFile]);
    const drops = (JSON.parse(status.stdout) as { drops: { comment: string; packets: number }[] }).drops;
    const steered = drops.filter((d) => /via Cloudflare but routed locally/.test(d.comment)).reduce((n, d) => n + d.packets, 0);
    t.ok(steered > 0, `the drops are counted as "via Cloudflare but routed locally" (${steered} packets)`, { drops });

    await k.applyOk(t, policies);
    expectFlow(t, await tcpProbe(c1, srv, 443), 'passed', 'both');
  });

  t.test('the root namespace is untouched', async (t) => {
    t.equal(await rootState(), rootBefore);
    const rules = await run(['ip', 'rule']);
    t.notMatch(rules.stdout, /lookup 207/, 'no tunnel ip rule in the root namespace');
  });
}
