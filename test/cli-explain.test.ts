// `connector-acl explain` end to end through the built CLI (no kernel): verdicts, reasons, exit codes.
import { spawnSync } from 'node:child_process';
import t from 'tap';

const cli = (...args: string[]) =>
  spawnSync(process.execPath, ['dist/agent/cli/main.js', '-c', 'rules/site.yaml', 'explain', ...args], { encoding: 'utf8' });

t.test('an allowed local flow names the policy and exits 0', async (t) => {
  const r = cli('--src', '198.18.3.5', '--dst', '198.18.4.20', '--dport', '9000');
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, /^TCP 198\.18\.3\.5:40000 -> 198\.18\.4\.20:9000 \(flow LAN 3 \(stores, PIN pads\) -> LAN 4 \(cash registers\), initiate\)$/m);
  t.match(r.stdout, /^verdict: ALLOW \(forwarded locally\)$/m);
  t.match(r.stdout, /policy "PIN Pad - Cash Register" \(a0000000000000000000000000000002\)/);
});

t.test('one port past the range is dropped with the reason, exit 4', async (t) => {
  const r = cli('--src', '198.18.3.5', '--dst', '198.18.4.20', '--dport', '9001');
  t.equal(r.status, 4);
  t.match(r.stdout, /^verdict: DROP$/m);
  t.match(r.stdout, /destination port 9001 is not in lan_2 ports \(8080-9000\)/);
});

t.test('the reply of a unidirectional flow is dropped; via Cloudflare is reported as such', async (t) => {
  const reply = cli('--src', '198.18.3.5', '--dst', '198.18.4.50', '--proto', 'udp', '--dport', '514', '--reply');
  t.equal(reply.status, 4);
  t.match(reply.stdout, /matches only unidirectional policy "Syslog LAN 3 to LAN 4 \(one way\)"/);
  const cf = cli('--src', '2001:db8:1::5', '--dst', '2001:db8:2::10', '--proto', 'icmp');
  t.equal(cf.status, 0, cf.stderr);
  t.match(cf.stdout, /^ICMPv6 .*\nverdict: ALLOW \(via Cloudflare\)$/m);
});

t.test('an address outside every LAN needs --from/--to', async (t) => {
  const r = cli('--src', '198.19.9.9', '--dst', '198.18.4.20', '--dport', '80');
  t.equal(r.status, 1);
  t.match(r.stderr, /cannot tell the initiator's LAN from its address: give --from/);
});
