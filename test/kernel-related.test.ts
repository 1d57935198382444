// ICMP errors that conntrack relates to an allowed flow (port unreachable here) follow the flow:
// they come back for bidirectional policies, never for unidirectional ones, also when the
// policy does not list icmp. Real packets through a Connector namespace, IPv4 and IPv6.
import t from 'tap';
import { acl, kernelSite, kernelSkipReason, rootState } from './support/kernel.js';

const COUNT_ERRORS = `table inet errs {
	chain input {
		type filter hook input priority filter; policy accept;
		icmp type destination-unreachable counter
		icmpv6 type destination-unreachable counter
	}
}
`;

/** Sends one UDP datagram to a port nobody listens on; the kernel there answers port unreachable. */
const sendUdp = (dst: string, port: number, family: 4 | 6) =>
  `const s=require('dgram').createSocket('udp${family}');` +
  `s.send(Buffer.from('x'),${port},'${dst}',()=>setTimeout(()=>{s.close()},300));`;

const skip = await kernelSkipReason();
if (skip) {
  t.plan(0, skip);
} else {
  const rootBefore = await rootState();
  const k = await kernelSite(t, {
    lans: [
      { interface: 'lan1', hosts: [{ name: 'c1' }] },
      { interface: 'lan2', hosts: [{ name: 'srv', v4: '198.18.2.10' }] },
    ],
  });
  const { site } = k;
  const [lan1, lan2] = site.lans;
  const c1 = site.host('c1');
  const srv = site.host('srv');

  const errorsAtC1 = async (): Promise<[number, number]> => {
    const out = await site.nft(c1.ns, ['list', 'chain', 'inet', 'errs', 'input']);
    const n = [...out.matchAll(/counter packets (\d+)/g)].map((m) => Number(m[1]));
    return [n[0] ?? 0, n[1] ?? 0];
  };

  await site.nft(c1.ns, ['-f', '-'], COUNT_ERRORS);
  await k.applyOk(t, [
    acl('bidir', lan1, lan2, { protocols: ['udp'], to: { ports: [7] } }),
    acl('oneway', lan1, lan2, { protocols: ['udp'], unidirectional: true, to: { ports: [9] } }),
  ]);

  for (const family of [4, 6] as const) {
    t.test(`IPv${family}: port unreachable comes back for a bidirectional UDP policy only`, async (t) => {
      const dst = srv.address(family);
      const before = await errorsAtC1();
      const index = family === 4 ? 0 : 1;
      await site.exec(c1.ns, ['node', '-e', sendUdp(dst, 7, family)]);
      await new Promise((r) => setTimeout(r, 300));
      const afterBidir = await errorsAtC1();
      t.equal(afterBidir[index] - before[index], 1, 'the ICMP error of the allowed bidirectional flow arrives');
      await site.exec(c1.ns, ['node', '-e', sendUdp(dst, 9, family)]);
      await new Promise((r) => setTimeout(r, 300));
      const afterOneWay = await errorsAtC1();
      t.equal(afterOneWay[index] - afterBidir[index], 0, 'nothing comes back for the unidirectional policy');
    });
  }

  t.test('the host namespace is untouched', async (t) => t.equal(await rootState(), rootBefore));
}
