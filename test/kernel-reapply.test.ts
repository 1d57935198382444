// Re-applying: revocation cuts established flows, kept policies keep theirs, a rejected apply
// changes nothing, other tables in the namespace are never touched.
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import YAML from 'yaml';
import { listConnectorRuleset, runCli, tcpProbe, tcpSession, udpProbe, type TcpSession } from '../agent/harness/index.js';
import { acl, expectFlow, kernelSite, kernelSkipReason, rootState } from './support/kernel.js';

const skip = await kernelSkipReason();
if (skip) {
  t.plan(0, skip);
} else {
  const rootBefore = await rootState();
  const k = await kernelSite(t, {
    lans: [
      { interface: 'lan1', hosts: [{ name: 'c1' }] },
      { interface: 'lan2', hosts: [{ name: 'srv' }] },
      { interface: 'lan3', hosts: [{ name: 'db' }] },
    ],
  });
  const { site } = k;
  const [lan1, lan2, lan3] = site.lans;
  const c1 = site.host('c1');
  const srv = site.host('srv');
  const db = site.host('db');

  const keep = acl('keepdb', lan1, lan3, { protocols: ['tcp'], to: { ports: [5432] } });
  const revoke = acl('revokeapp', lan1, lan2, { protocols: ['tcp'], to: { ports: [7000] } });
  const revokeCf = acl('revokecf', lan1, lan2, { protocols: ['tcp'], forward_locally: false, to: { ports: [443] } });
  const v1 = [keep, revoke, revokeCf];

  // A table somebody else owns in the same namespace, with a base chain and state of its own.
  const FOREIGN = [
    'table inet other_fw {',
    '\tcounter seen { }',
    '\tset trusted { type ipv4_addr; elements = { 198.18.9.9 } }',
    '\tchain input {',
    '\t\ttype filter hook input priority filter + 10; policy accept;',
    '\t\tip saddr @trusted counter name seen accept',
    '\t}',
    '}',
    'table ip other_nat {',
    '\tchain post {',
    '\t\ttype nat hook postrouting priority srcnat; policy accept;',
    '\t\toifname "wan0" ip saddr 198.18.250.0/24 masquerade',
    '\t}',
    '}',
    '',
  ].join('\n');
  await site.nft(site.connector, ['-f', '-'], FOREIGN);
  const foreignTables = async (): Promise<string> => {
    const [a, b] = await Promise.all([
      site.nft(site.connector, ['-s', 'list', 'table', 'inet', 'other_fw']),
      site.nft(site.connector, ['-s', 'list', 'table', 'ip', 'other_nat']),
    ]);
    return a + b;
  };
  const foreignBefore = await foreignTables();

  await k.applyOk(t, v1);

  t.test('another table in the namespace survives an apply and a re-apply', async (t) => {
    t.equal(await foreignTables(), foreignBefore, 'other tables unchanged after the apply');
    await k.applyOk(t, [keep]);
    await k.applyOk(t, v1);
    t.equal(await foreignTables(), foreignBefore, 'other tables unchanged after two more applies');
  });

  t.test('a re-apply that removes a policy cuts its established flows; a kept policy\'s flow survives', async (t) => {
    const sessions: TcpSession[] = await Promise.all([
      tcpSession(c1, db, 5432),
      tcpSession(c1, db, 5432, { family: 6 }),
      tcpSession(c1, srv, 7000),
      tcpSession(c1, srv, 7000, { family: 6 }),
      tcpSession(c1, srv, 443),
    ]);
    t.teardown(() => Promise.all(sessions.map((s) => s.close())));
    const [kept, kept6, cut, cut6, cutCf] = sessions;
    for (const s of sessions) expectFlow(t, s.opened, 'passed');
    t.ok((cutCf.opened.tunnel?.forward ?? 0) > 0, 'the via-Cloudflare session crossed the tunnel');
    const warm = await Promise.all(sessions.map((s) => s.send()));
    warm.forEach((r, i) => t.ok(r.roundTrip, `session ${i + 1} works before the re-apply`));

    await k.applyOk(t, [keep]);

    const [k4, k6, c4, c6, cf] = await Promise.all([kept.send(), kept6.send(), cut.send(), cut6.send(), cutCf.send()]);
    t.ok(k4.roundTrip && k4.delivered, 'kept policy: established IPv4 flow still works');
    t.ok(k6.roundTrip && k6.delivered, 'kept policy: established IPv6 flow still works');
    t.ok(!c4.delivered && !c4.roundTrip, 'removed policy: the next send on the open IPv4 connection does not arrive');
    t.ok(!c6.delivered && !c6.roundTrip, 'removed policy: the next send on the open IPv6 connection does not arrive');
    t.ok(!cf.delivered && !cf.roundTrip, 'removed via-Cloudflare policy: the next send does not arrive');
    t.equal(cf.tunnel?.forward ?? 0, 0, 'and it no longer enters the tunnel');

    const [newKept, newCut] = await Promise.all([tcpProbe(c1, db, 5432), tcpProbe(c1, srv, 7000)]);
    expectFlow(t, newKept, 'passed');
    expectFlow(t, newCut, 'dropped');

    await k.applyOk(t, v1);
    expectFlow(t, await tcpProbe(c1, srv, 7000), 'passed', 'none');
    expectFlow(t, await tcpProbe(c1, srv, 443), 'passed', 'both');
  });

  t.test('narrowing a policy cuts the flows it no longer allows, keeps the others', async (t) => {
    const wide = acl('narrowme', lan2, lan3, { protocols: ['tcp', 'udp'], to: { port_ranges: ['6000-6001'] } });
    const narrow = acl('narrowme', lan2, lan3, { protocols: ['tcp', 'udp'], to: { ports: [6001] } });
    await k.applyOk(t, [...v1, wide]);
    const [s0, s1] = await Promise.all([tcpSession(srv, db, 6000), tcpSession(srv, db, 6001)]);
    t.teardown(() => Promise.all([s0.close(), s1.close()]));
    expectFlow(t, s0.opened, 'passed');
    expectFlow(t, s1.opened, 'passed');
    await k.applyOk(t, [...v1, narrow]);
    const [r0, r1] = await Promise.all([s0.send(), s1.send()]);
    t.ok(!r0.delivered && !r0.roundTrip, 'port 6000 (no longer allowed): the open connection is cut');
    t.ok(r1.delivered && r1.roundTrip, 'port 6001 (still allowed): the open connection keeps working');
    await k.applyOk(t, v1);
  });

  t.test('a rejected apply (invalid policies) leaves the ruleset unchanged', async (t) => {
    const before = await listConnectorRuleset(site);
    t.ok(before.includes('table inet connector_acl'), 'the engine table is there before');

    const badLan = await k.apply([keep, acl('broken', lan1, lan2, { to: { ports: [0] } })]);
    t.equal(badLan.code, 1, 'a policy with port 0 is invalid input: exit 1', { stderr: badLan.stderr });
    t.match(badLan.stderr, /broken|port/i, 'and the error names the policy or the field');
    t.equal(await listConnectorRuleset(site), before, 'ruleset unchanged');

    const syntaxFile = path.join(k.dir, 'syntax-error.yaml');
    await writeFile(syntaxFile, '- id: x\n  lan_1: { lan_id: [unclosed\n');
    const syntax = await runCli(site, ['apply', '-c', k.siteFile, '-p', syntaxFile]);
    t.equal(syntax.code, 1, 'a YAML syntax error: exit 1', { stderr: syntax.stderr });
    t.equal(await listConnectorRuleset(site), before, 'ruleset unchanged');

    const [still, stillDropped] = await Promise.all([tcpProbe(c1, srv, 7000), udpProbe(c1, srv, 7000)]);
    expectFlow(t, still, 'passed');
    expectFlow(t, stillDropped, 'dropped');
  });

  t.test('an apply nft refuses leaves the ruleset unchanged', async (t) => {
    const before = await listConnectorRuleset(site);
    const cfg = site.siteConfig() as { lans: { interface: string }[] };

    // An interface name of 11 characters but 19 bytes: nft refuses strings over 16 bytes.
    const longName = structuredClone(cfg);
    longName.lans[2].interface = 'lanéééééééé';
    const longFile = path.join(k.dir, 'site-long-ifname.yaml');
    await writeFile(longFile, YAML.stringify(longName));
    const r2 = await k.apply(v1, { siteFile: longFile });
    t.not(r2.code, 0, 'an interface name nft refuses is not applied', { stdout: r2.stdout, stderr: r2.stderr });
    t.ok(r2.code === 1 || r2.code === 2, `exit 1 (rejected by validation) or 2 (refused by nft); got ${r2.code}`);
    t.equal(await listConnectorRuleset(site), before, 'ruleset unchanged');

    // A table name that is an nft keyword: a valid identifier to the validator, a syntax error to nft.
    const keywordFile = path.join(k.dir, 'site-keyword-table.yaml');
    await writeFile(keywordFile, YAML.stringify({ ...cfg, table: 'counter' }));
    const r3 = await k.apply(v1, { siteFile: keywordFile });
    t.ok(r3.code === 1 || r3.code === 2, `table "counter": exit 1 (rejected by validation) or 2 (refused by nft); got ${r3.code}`, { stdout: r3.stdout, stderr: r3.stderr });
    t.equal(await listConnectorRuleset(site), before, 'ruleset unchanged');

    expectFlow(t, await tcpProbe(c1, srv, 7000), 'passed');
  });

  t.test('flush removes only the engine\'s table and routing; LAN traffic is then unfiltered', async (t) => {
    const r = await runCli(site, ['flush', '--yes', '-c', k.siteFile]);
    t.equal(r.code, 0, 'flush exits 0', { stdout: r.stdout, stderr: r.stderr });
    const ruleset = await listConnectorRuleset(site);
    t.notMatch(ruleset, /connector_acl/, 'engine table gone');
    t.equal(await foreignTables(), foreignBefore, 'other tables unchanged');
    const rules = await site.exec(site.connector, ['ip', 'rule']);
    t.notMatch(rules.stdout, /lookup 207/, 'tunnel ip rule gone');
    expectFlow(t, await udpProbe(srv, c1, 9), 'passed', 'none');
  });

  t.test('the root namespace is untouched', async (t) => {
    t.equal(await rootState(), rootBefore);
  });
}
