// The agent with source: local, inside a Connector namespace: the seed's create / edit / delete
// requests (curl-shaped, X-Auth-Email + X-Auth-Key) against its API, each checked with real
// packets; invalid requests change nothing; drift (`nft flush ruleset`, a deleted ip rule) is
// repaired within 5 s; SIGHUP with a bad config is refused; the policies survive a restart and are
// enforced from last-known-good (by `connector-acl boot` with no agent, and by the agent before
// its API is up); stopping the agent leaves the ruleset in place.
import { copyFile, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import YAML from 'yaml';
import { listEngineTable, runCli, tcpProbe } from '../agent/harness/index.js';
import { AgentProcess, httpOverUnix, Relay } from './support/agent-proc.js';
import { expectFlow, kernelSite, kernelSkipReason, rootState } from './support/kernel.js';

const ACCOUNT = '023e105f4ecef8ad9ca31a8372d0c353';
const SITE = '9d6e1c2a7b3f4e5d8c9b0a1f2e3d4c5b';
const EMAIL = 'ops@example.com';
const KEY = 'key-0d9e8f7a6b5c4d3e';
const ACLS = `/client/v4/accounts/${ACCOUNT}/magic/sites/${SITE}/acls`;
const auth = { 'X-Auth-Email': EMAIL, 'X-Auth-Key': KEY };

const skip = await kernelSkipReason();
if (skip) {
  t.plan(0, skip);
} else {
  const rootBefore = await rootState();
  const k = await kernelSite(t, { lans: [{ interface: 'lan1', hosts: [{ name: 'c1' }] }, { interface: 'lan2', hosts: [{ name: 'srv' }] }] });
  const { site, dir } = k;
  const [lan1, lan2] = site.lans;
  const c1 = site.host('c1');
  const srv = site.host('srv');
  const stateDir = path.join(dir, 'state');
  const keyFile = path.join(dir, 'auth-key');
  await writeFile(keyFile, `${KEY}\n`, { mode: 0o600 });
  const config = {
    ...site.siteConfig(),
    agent: {
      source: 'local', state_dir: stateDir, metrics_listen: '127.0.0.1:9464',
      local_api: { listen: '127.0.0.1:8787', account_id: ACCOUNT, site_id: SITE, auth: { email: EMAIL, auth_key_file: keyFile } },
    },
  };
  const configFile = path.join(dir, 'agent.yaml');
  await writeFile(configFile, YAML.stringify(config));

  const apiSock = path.join(dir, 'api.sock');
  const metricsSock = path.join(dir, 'metrics.sock');
  const apiRelay = await Relay.start(site.connector, 'unix2tcp', apiSock, '127.0.0.1:8787');
  const metricsRelay = await Relay.start(site.connector, 'unix2tcp', metricsSock, '127.0.0.1:9464');
  t.teardown(() => {
    apiRelay.stop();
    metricsRelay.stop();
  });
  const api = (method: string, p: string, init: { json?: unknown; body?: string; headers?: Record<string, string> } = {}) =>
    httpOverUnix(apiSock, `${ACLS}${p}`, { method, headers: { ...auth, ...init.headers }, json: init.json, body: init.body });
  const tableHash = async (): Promise<string | undefined> => /hash=(\w+)/.exec((await listEngineTable(site)) ?? '')?.[1];

  let agent: AgentProcess | undefined;
  const startAgent = async (): Promise<AgentProcess> => {
    agent = new AgentProcess(site, ['-c', configFile, 'agent']);
    await agent.event('api-listening');
    return agent;
  };
  t.teardown(async () => {
    await agent?.stop();
  });

  // The seed's bodies, with this site's LANs: LAN 1's client reaches LAN 2's server on a port.
  const seedBody = (port: number, name: string) => ({
    description: 'Allows local traffic between PIN pads and cash register.',
    forward_locally: true,
    lan_1: { lan_id: lan1.id, lan_name: lan1.name, subnets: [c1.v4] },
    lan_2: { lan_id: lan2.id, lan_name: lan2.name, ports: [port], subnets: [srv.v4] },
    name,
    protocols: ['tcp'],
  });
  let aclId = '';

  t.test('the agent starts with an empty store: LAN-to-LAN traffic is dropped', async (t) => {
    await startAgent();
    t.ok(agent!.lines.some((l) => l.event === 'lkg-none'), 'no last-known-good on a first start');
    expectFlow(t, await tcpProbe(c1, srv, 8080), 'dropped');
    t.equal((await api('GET', '')).body.result.length, 0, 'GET …/acls lists nothing');
  });

  t.test('create (POST, the seed example): the flow passes as soon as the API answers', async (t) => {
    const started = Date.now();
    const r = await api('POST', '', { json: seedBody(8080, 'PIN Pad - Cash Register') });
    const answered = Date.now() - started;
    t.equal(r.status, 200, 'HTTP 200', { body: r.text });
    t.equal(r.body.success, true);
    aclId = r.body.result.id;
    t.match(aclId, /^[0-9a-f]{32}$/, 'the server assigns an id');
    const probe = await tcpProbe(c1, srv, 8080);
    const enforced = Date.now() - started;
    expectFlow(t, probe, 'passed');
    t.ok(enforced < 2000, `enforced within 2 s (API answered in ${answered} ms, the probe passed ${enforced} ms after the request)`);
    t.comment(`API write → response: ${answered} ms; → verified by a packet: ${enforced} ms`);
    expectFlow(t, await tcpProbe(srv, c1, 8080), 'dropped');
  });

  t.test('edit (PUT): the old port is cut, the new one passes', async (t) => {
    const started = Date.now();
    const r = await api('PUT', `/${aclId}`, { json: seedBody(9090, 'PIN Pad - Cash Register (9090)') });
    t.equal(r.status, 200, 'HTTP 200', { body: r.text });
    const [oldPort, newPort] = await Promise.all([tcpProbe(c1, srv, 8080), tcpProbe(c1, srv, 9090)]);
    expectFlow(t, oldPort, 'dropped');
    expectFlow(t, newPort, 'passed');
    t.ok(Date.now() - started < 2000, `enforced within 2 s (${Date.now() - started} ms)`);
  });

  t.test('invalid requests and bad credentials change nothing', async (t) => {
    const hash = await tableHash();
    const lkgBefore = await readFile(path.join(stateDir, 'lkg.json'), 'utf8');
    const bad = seedBody(9090, 'bad');
    const cases: [string, Promise<Awaited<ReturnType<typeof api>>>, number, RegExp][] = [
      ['port 0', api('POST', '', { json: { ...bad, lan_2: { ...bad.lan_2, ports: [0] } } }), 400, /ports/],
      ['TCP unidirectional', api('POST', '', { json: { ...bad, unidirectional: true } }), 400, /unidirectional/],
      ['unknown LAN', api('POST', '', { json: { ...bad, lan_2: { ...bad.lan_2, lan_id: 'ffffffffffffffffffffffffffffffff' } } }), 400, /lan_2\.lan_id/],
      ['malformed JSON', api('POST', '', { body: '{"name": "x", ', headers: { 'Content-Type': 'application/json' } }), 400, /JSON/i],
      ['oversized body', api('POST', '', { body: JSON.stringify({ ...bad, description: 'x'.repeat(2 * 1024 * 1024) }), headers: { 'Content-Type': 'application/json' } }).catch(() => ({ status: 413, body: { errors: [{ message: 'closed' }] } }) as never), 413, /./],
      ['wrong key', httpOverUnix(apiSock, ACLS, { method: 'POST', headers: { 'X-Auth-Email': EMAIL, 'X-Auth-Key': 'wrong' }, json: seedBody(7070, 'x') }), 403, /./],
      ['no credentials', httpOverUnix(apiSock, ACLS, { method: 'POST', json: seedBody(7070, 'x') }), 401, /./],
    ];
    for (const [what, pending, status, message] of cases) {
      const r = await pending;
      t.equal(r.status, status, `${what}: HTTP ${status}`, { body: r.body });
      t.match(JSON.stringify(r.body?.errors ?? []), message, `${what}: the error says why`);
    }
    t.equal(await tableHash(), hash, 'the ruleset in the kernel did not change');
    t.equal(await readFile(path.join(stateDir, 'lkg.json'), 'utf8'), lkgBefore, 'last-known-good did not change');
    t.equal((await api('GET', '')).body.result.length, 1, 'still one policy');
    expectFlow(t, await tcpProbe(c1, srv, 9090), 'passed');
  });

  t.test('metrics, health and status from the running agent', async (t) => {
    const m = await httpOverUnix(metricsSock, '/metrics');
    t.equal(m.status, 200);
    t.match(m.text, /^connector_acl_policies_enforced 1$/m);
    t.match(m.text, /^connector_acl_source_state\{state="synced"\} 1$/m);
    t.match(m.text, /^connector_acl_apply_duration_seconds_count [1-9]/m);
    t.match(m.text, /^connector_acl_apply_failures_total\{reason="invalid"\} [1-9]/m, 'refused writes are counted');
    const packets = new RegExp(`^connector_acl_policy_packets_total\\{policy_id="${aclId}",policy_name="PIN Pad - Cash Register \\(9090\\)"\\} (\\d+)$`, 'm').exec(m.text);
    t.ok(packets && Number(packets[1]) > 0, `per-policy packets from the nft counter (${packets?.[1]})`);
    const h = await httpOverUnix(metricsSock, '/healthz');
    t.equal(h.status, 200, 'healthy', { body: h.text });
    const s = await runCli(site, ['-c', configFile, 'status']);
    t.match(s.stdout, /agent: running \(pid \d+\)/);
    t.match(s.stdout, /source: local, synced; enforcing source/);
    t.match(s.stdout, /last apply: ruleset \w{16}, 1 policies/);
  });

  t.test('drift: nft flush ruleset and deleted ip rules are repaired within 5 s', async (t) => {
    const hash = await tableHash();
    await site.nft(site.connector, ['flush', 'ruleset']);
    const flushed = Date.now();
    let restoredAfter = -1;
    while (Date.now() - flushed < 8000) {
      if ((await tableHash()) === hash) {
        restoredAfter = Date.now() - flushed;
        break;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    t.ok(restoredAfter >= 0 && restoredAfter <= 5000, `table restored ${restoredAfter} ms after nft flush ruleset`);
    t.comment(`drift repair latency (nft flush ruleset): ${restoredAfter} ms`);
    expectFlow(t, await tcpProbe(c1, srv, 9090), 'passed');

    await site.exec(site.connector, ['ip', '-4', 'rule', 'del', 'pref', '1207']);
    await site.exec(site.connector, ['ip', '-6', 'rule', 'del', 'pref', '1207']);
    const deleted = Date.now();
    let ruleBack = -1;
    while (Date.now() - deleted < 8000) {
      const r = await site.exec(site.connector, ['ip', '-4', 'rule', 'show', 'pref', '1207']);
      const r6 = await site.exec(site.connector, ['ip', '-6', 'rule', 'show', 'pref', '1207']);
      if (/lookup 207/.test(r.stdout) && /lookup 207/.test(r6.stdout)) {
        ruleBack = Date.now() - deleted;
        break;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    t.ok(ruleBack >= 0 && ruleBack <= 5000, `ip rules restored ${ruleBack} ms after deletion`);
    t.comment(`drift repair latency (ip rule del): ${ruleBack} ms`);
    await agent!.waitFor((l) => l.event === 'drift-repair' && l.what === 'routing', 5000, 'routing repair');
    // status.json is rewritten at most every 250 ms.
    let repairs = 0;
    for (let i = 0; i < 40 && repairs < 2; i++) {
      repairs = JSON.parse(await readFile(path.join(stateDir, 'status.json'), 'utf8')).driftRepairs;
      if (repairs < 2) await new Promise((r) => setTimeout(r, 100));
    }
    t.ok(repairs >= 2, `status counts ${repairs} repairs`);
    // The tunnel link goes down and up: the kernel drops its routes; the link event brings them back.
    await site.exec(site.connector, ['ip', 'link', 'set', 'cf0', 'down']);
    await site.exec(site.connector, ['ip', 'link', 'set', 'cf0', 'up']);
    const up = Date.now();
    // Link down flushed cf0's IPv6 address (keep_addr_on_down=0); the network config would add it back.
    await site.exec(site.connector, ['ip', '-6', 'addr', 'replace', '2001:db8:100::1/64', 'dev', 'cf0', 'nodad']);
    let routeBack = -1;
    while (Date.now() - up < 8000) {
      const r = await site.exec(site.connector, ['ip', '-4', 'route', 'show', 'table', '207']);
      const r6 = await site.exec(site.connector, ['ip', '-6', 'route', 'show', 'table', '207']);
      if (/default/.test(r.stdout) && /default/.test(r6.stdout)) {
        routeBack = Date.now() - up;
        break;
      }
      await new Promise((r) => setTimeout(r, 25));
    }
    t.ok(routeBack >= 0 && routeBack <= 5000, `tunnel route restored ${routeBack} ms after the link came back`);
    t.comment(`drift repair latency (tunnel link down/up, link event): ${routeBack} ms`);
    const m = await httpOverUnix(metricsSock, '/metrics');
    t.match(m.text, /^connector_acl_drift_repairs_total\{what="table"\} [1-9]/m);
    t.match(m.text, /^connector_acl_drift_repairs_total\{what="routing"\} [1-9]/m);
  });

  t.test('SIGHUP: a bad config is refused and the running one kept; a good one is applied', async (t) => {
    const hash = await tableHash();
    const good = `${configFile}.good`;
    await copyFile(configFile, good);
    await writeFile(configFile, YAML.stringify({ ...config, lans: [{ ...config.lans[0], interface: 'not a name!' }] }));
    agent!.signal('SIGHUP');
    const refused = await agent!.nextEvent('config-reload-refused');
    t.match(JSON.stringify(refused.reasons), /interface/, 'the reason names the field');
    t.equal(await tableHash(), hash, 'the ruleset is unchanged');
    t.ok(agent!.running, 'the agent keeps running');

    // A config that removes LAN 2 would orphan the enforced policy: refused too.
    await writeFile(configFile, YAML.stringify({ ...config, lans: [config.lans[0]] }));
    agent!.signal('SIGHUP');
    await agent!.nextEvent('config-reload-refused');
    t.equal(await tableHash(), hash, 'still unchanged');

    // A good change: LAN 2 renamed. The rules (and the hash) follow.
    await writeFile(configFile, YAML.stringify({ ...config, lans: [config.lans[0], { ...config.lans[1], name: 'LAN 2 (registers)' }] }));
    agent!.signal('SIGHUP');
    await agent!.nextEvent('config-reloaded');
    t.match((await listEngineTable(site)) ?? '', /default drop: LAN 1 -> LAN 2 \(registers\)/, 'the new config is in force');
    await copyFile(good, configFile);
    agent!.signal('SIGHUP');
    await agent!.nextEvent('config-reloaded');
    t.equal(await tableHash(), hash, 'back to the original ruleset');
    expectFlow(t, await tcpProbe(c1, srv, 9090), 'passed');
  });

  t.test('stop leaves the ruleset; boot and restart enforce last-known-good before the API is up', async (t) => {
    const hash = await tableHash();
    const r = await agent!.stop();
    t.equal(r.code, 0, 'SIGTERM: clean exit');
    t.equal(await tableHash(), hash, 'the ruleset stays after the agent stopped');
    expectFlow(t, await tcpProbe(c1, srv, 9090), 'passed', undefined);
    expectFlow(t, await tcpProbe(c1, srv, 8080), 'dropped');

    // A reboot: the kernel forgets everything. The boot step loads last-known-good, no agent running.
    await site.nft(site.connector, ['flush', 'ruleset']);
    const boot = await runCli(site, ['-c', configFile, 'boot']);
    t.equal(boot.code, 0, 'connector-acl boot', { stdout: boot.stdout, stderr: boot.stderr });
    t.match(boot.stdout, /loaded the last-known-good ruleset/);
    t.equal(await tableHash(), hash, 'boot put the last-known-good ruleset in place');
    expectFlow(t, await tcpProbe(c1, srv, 9090), 'passed');
    expectFlow(t, await tcpProbe(c1, srv, 8080), 'dropped');

    // And the agent, started on an empty kernel, enforces last-known-good before it serves the API.
    await site.nft(site.connector, ['flush', 'ruleset']);
    await startAgent();
    const order = agent!.lines.map((l) => l.event).filter((e) => e === 'lkg-enforced' || e === 'api-listening');
    t.same(order, ['lkg-enforced', 'api-listening'], 'last-known-good first, then the API');
    t.equal(await tableHash(), hash);
    const list = await api('GET', '');
    t.same(list.body.result.map((a: { id: string }) => a.id), [aclId], 'the store kept the policy');
    expectFlow(t, await tcpProbe(c1, srv, 9090), 'passed');
  });

  t.test('delete (DELETE, the seed example): the flow is cut', async (t) => {
    const started = Date.now();
    const r = await api('DELETE', `/${aclId}`);
    t.equal(r.status, 200, 'HTTP 200', { body: r.text });
    t.same(r.body.result, { id: aclId });
    expectFlow(t, await tcpProbe(c1, srv, 9090), 'dropped');
    t.ok(Date.now() - started < 2000, `cut within 2 s (${Date.now() - started} ms)`);
    t.equal((await api('GET', '')).body.result.length, 0);
    await agent!.stop();
    t.match((await listEngineTable(site)) ?? '', /policies=0/, 'the empty set (default drop) stays in force after stop');
  });

  t.test('the root namespace is untouched', async (t) => {
    t.equal(await rootState(), rootBefore);
  });
}
