// Real packets through a Connector namespace with policies forwarded locally: default drop,
// origin-only initiation, port range edges, subnets, source ports, unidirectional UDP and ICMP.
import t from 'tap';
import { icmpProbe, tcpProbe, udpProbe } from '../agent/harness/index.js';
import { acl, expectFlow, kernelSite, kernelSkipReason, rootState } from './support/kernel.js';

const skip = await kernelSkipReason();
if (skip) {
  t.plan(0, skip);
} else {
  const rootBefore = await rootState();
  const k = await kernelSite(t, {
    lans: [
      { interface: 'lan1', hosts: [{ name: 'c1' }] },
      { interface: 'lan2', hosts: [{ name: 'srv', v4: '198.18.2.10' }, { name: 'srv2', v4: '198.18.2.11' }] },
      { interface: 'lan3', hosts: [{ name: 'mon' }] },
    ],
  });
  const { site } = k;
  const [lan1, lan2, lan3] = site.lans;
  const c1 = site.host('c1');
  const srv = site.host('srv');
  const srv2 = site.host('srv2');
  const mon = site.host('mon');
  const wan = site.wanHost!;

  await k.applyOk(t, [
    acl('p1web', lan1, lan2, { protocols: ['tcp'], to: { port_ranges: ['8080-9000'], subnets: ['198.18.2.10', '2001:db8:2::10'] } }),
    acl('p2syslog', lan1, lan3, { protocols: ['udp'], unidirectional: true, to: { ports: [514] } }),
    acl('p3snmp', lan3, lan1, { protocols: ['udp'], to: { ports: [161] } }),
    acl('p4ping', lan2, lan3, { protocols: ['icmp'], unidirectional: true }),
    acl('p5mdns', lan2, lan3, { protocols: ['udp'], from: { ports: [5353] }, to: { ports: [5353] } }),
  ]);

  t.test('default drop: LAN-to-LAN traffic no policy allows', async (t) => {
    const [a, b, c, d, e, f, g] = await Promise.all([
      tcpProbe(mon, srv, 8080),
      tcpProbe(mon, srv, 8080, { family: 6 }),
      udpProbe(mon, srv, 161),
      icmpProbe(mon, srv),
      tcpProbe(srv, c1, 443),
      tcpProbe(c1, mon, 514), // p2 allows udp only
      icmpProbe(c1, mon, { family: 6 }),
    ]);
    for (const r of [a, b, c, d, e, f, g]) expectFlow(t, r, 'dropped', 'none');
  });

  t.test('an allowed TCP flow from the origin, with replies, forwarded locally', async (t) => {
    const [a, b] = await Promise.all([tcpProbe(c1, srv, 8443), tcpProbe(c1, srv, 8443, { family: 6 })]);
    expectFlow(t, a, 'passed', 'none');
    expectFlow(t, b, 'passed', 'none');
  });

  t.test('the same flow is refused when the destination initiates', async (t) => {
    const [a, b, c] = await Promise.all([
      tcpProbe(srv, c1, 8443),
      tcpProbe(srv, c1, 8443, { family: 6 }),
      // A new connection that looks like a reply of the allowed flow (source port in the range).
      tcpProbe(srv, c1, 40000, { srcPort: 8500 }),
    ]);
    for (const r of [a, b, c]) expectFlow(t, r, 'dropped', 'none');
  });

  t.test('port range edges: 8080-9000', async (t) => {
    const [below, first, last, above, first6, above6] = await Promise.all([
      tcpProbe(c1, srv, 8079),
      tcpProbe(c1, srv, 8080),
      tcpProbe(c1, srv, 9000),
      tcpProbe(c1, srv, 9001),
      tcpProbe(c1, srv, 8080, { family: 6 }),
      tcpProbe(c1, srv, 9001, { family: 6 }),
    ]);
    expectFlow(t, below, 'dropped');
    expectFlow(t, first, 'passed');
    expectFlow(t, last, 'passed');
    expectFlow(t, above, 'dropped');
    expectFlow(t, first6, 'passed');
    expectFlow(t, above6, 'dropped');
  });

  t.test('destination subnets: only the named server', async (t) => {
    const [a, b] = await Promise.all([tcpProbe(c1, srv2, 8080), tcpProbe(c1, srv2, 8080, { family: 6 })]);
    expectFlow(t, a, 'dropped');
    expectFlow(t, b, 'dropped');
  });

  t.test('unidirectional UDP: delivered, replies dropped', async (t) => {
    const [a, b, back] = await Promise.all([
      udpProbe(c1, mon, 514),
      udpProbe(c1, mon, 514, { family: 6 }),
      udpProbe(mon, c1, 514),
    ]);
    expectFlow(t, a, 'one-way', 'none');
    expectFlow(t, b, 'one-way', 'none');
    expectFlow(t, back, 'dropped');
  });

  t.test('bidirectional UDP: replies return, the other side cannot initiate', async (t) => {
    const [a, b, back] = await Promise.all([
      udpProbe(mon, c1, 161),
      udpProbe(mon, c1, 161, { family: 6 }),
      udpProbe(c1, mon, 161),
    ]);
    expectFlow(t, a, 'passed', 'none');
    expectFlow(t, b, 'passed', 'none');
    expectFlow(t, back, 'dropped');
  });

  t.test('unidirectional ICMP: echo request delivered, reply dropped', async (t) => {
    const [a, b, back] = await Promise.all([icmpProbe(srv, mon), icmpProbe(srv, mon, { family: 6 }), icmpProbe(mon, srv)]);
    expectFlow(t, a, 'one-way');
    expectFlow(t, b, 'one-way');
    expectFlow(t, back, 'dropped');
  });

  t.test('origin ports constrain the source port', async (t) => {
    const [good, bad, good6] = await Promise.all([
      udpProbe(srv, mon, 5353, { srcPort: 5353 }),
      udpProbe(srv2, mon, 5353, { srcPort: 5354 }),
      udpProbe(srv, mon, 5353, { srcPort: 5353, family: 6 }),
    ]);
    expectFlow(t, good, 'passed');
    expectFlow(t, bad, 'dropped');
    expectFlow(t, good6, 'passed');
  });

  t.test('WAN traffic is untouched', async (t) => {
    const rs = await Promise.all([
      tcpProbe(c1, wan, 443),
      tcpProbe(mon, wan, 443, { family: 6 }),
      udpProbe(srv, wan, 53),
      icmpProbe(srv2, wan),
      tcpProbe(wan, c1, 22), // and the Internet side may initiate: not LAN-to-LAN either
    ]);
    for (const r of rs) expectFlow(t, r, 'passed', 'none');
  });

  t.test('the root namespace is untouched', async (t) => {
    t.equal(await rootState(), rootBefore);
  });
}
