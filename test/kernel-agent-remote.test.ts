// The agent with source: remote, in a Connector namespace, pulling from `connector-acl api` (a real
// process with its own SQLite store) and from a fault-injecting control plane: 500s, a hung server
// (timeouts), garbage JSON, 401, a slow drip, "success": false, an invalid set. Throughout, the
// last good set stays enforced (checked with packets and the table's hash); the agent says so in
// status.json, its logs and metrics; and it converges when the control plane comes back. A restart
// during the outage enforces last-known-good.
import { spawn } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import t from 'tap';
import YAML from 'yaml';
import { cliPath, listEngineTable, repoRoot, tcpProbe } from '../agent/harness/index.js';
import { AgentProcess, httpOverUnix, Relay, UnixToTcp } from './support/agent-proc.js';
import { cfEnvelope, FaultServer, type Fault } from './support/fault-server.js';
import { expectFlow, kernelSite, kernelSkipReason, rootState } from './support/kernel.js';

const ACCOUNT = '023e105f4ecef8ad9ca31a8372d0c353';
const SITE = '9d6e1c2a7b3f4e5d8c9b0a1f2e3d4c5b';
const TOKEN = 'tok-5e4d3c2b1a09f8e7';
const ACLS = `/client/v4/accounts/${ACCOUNT}/magic/sites/${SITE}/acls`;

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
  const tokenFile = path.join(dir, 'token');
  await writeFile(tokenFile, `${TOKEN}\n`, { mode: 0o600 });

  // The control plane: `connector-acl api` in the root namespace on loopback (it never touches a kernel).
  const apiConfig = path.join(dir, 'api.yaml');
  await writeFile(apiConfig, YAML.stringify({
    ...site.siteConfig(),
    agent: { state_dir: path.join(dir, 'api-state'), local_api: { listen: '127.0.0.1:0', account_id: ACCOUNT, site_id: SITE, auth: { api_token_file: tokenFile } } },
  }));
  const apiProc = spawn(process.execPath, [cliPath(), '-c', apiConfig, 'api'], { cwd: repoRoot(), stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => {
    apiProc.kill('SIGTERM');
  });
  const apiUrl = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('connector-acl api did not start')), 15_000);
    createInterface({ input: apiProc.stdout }).on('line', (l) => {
      const m = /listening on (http\S+)/.exec(l);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
  });
  const apiPort = Number(new URL(apiUrl).port);
  const cp = async (method: string, p: string, json?: unknown) => {
    const res = await fetch(`${apiUrl}${p}`, { method, headers: { Authorization: `Bearer ${TOKEN}`, ...(json ? { 'Content-Type': 'application/json' } : {}) }, body: json ? JSON.stringify(json) : undefined });
    return { status: res.status, body: await res.json() as any }; // eslint-disable-line @typescript-eslint/no-explicit-any
  };

  // What the agent reaches at 127.0.0.1:8443 inside the namespace: the api, or the fault server.
  const faults = await FaultServer.start();
  t.teardown(() => faults.close());
  const cpSock = path.join(dir, 'cp.sock');
  const hop = await UnixToTcp.start(cpSock, { host: '127.0.0.1', port: apiPort });
  t.teardown(() => hop.close());
  const relay = await Relay.start(site.connector, 'tcp2unix', '127.0.0.1:8443', cpSock);
  const metricsSock = path.join(dir, 'metrics.sock');
  const metricsRelay = await Relay.start(site.connector, 'unix2tcp', metricsSock, '127.0.0.1:9464');
  t.teardown(() => {
    relay.stop();
    metricsRelay.stop();
  });
  const useApi = () => hop.switchTo({ host: '127.0.0.1', port: apiPort });
  const useFaults = () => hop.switchTo({ host: '127.0.0.1', port: Number(new URL(faults.url).port) });
  const useNothing = () => hop.switchTo({ host: '127.0.0.1', port: 1 });

  const stateDir = path.join(dir, 'state');
  const configFile = path.join(dir, 'agent.yaml');
  await writeFile(configFile, YAML.stringify({
    ...site.siteConfig(),
    agent: {
      source: 'remote', state_dir: stateDir, metrics_listen: '127.0.0.1:9464',
      remote: { base_url: 'http://127.0.0.1:8443/client/v4', account_id: ACCOUNT, site_id: SITE, api_token_file: tokenFile, poll_interval: '1s', timeout: '1s' },
    },
  }));
  let agent: AgentProcess | undefined;
  t.teardown(async () => {
    await agent?.stop();
  });
  const tableHash = async (): Promise<string | undefined> => /hash=(\w+)/.exec((await listEngineTable(site)) ?? '')?.[1];
  const status = async () => JSON.parse(await readFile(path.join(stateDir, 'status.json'), 'utf8'));
  const waitFor = async (what: string, test: () => Promise<boolean>, timeoutMs = 15_000): Promise<number> => {
    const started = Date.now();
    while (Date.now() - started < timeoutMs) {
      if (await test()) return Date.now() - started;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`${what}: not within ${timeoutMs} ms; agent log:\n${agent?.tail()}`);
  };
  const policy = (port: number, name: string) => ({
    name, forward_locally: true, protocols: ['tcp'],
    lan_1: { lan_id: lan1.id, lan_name: lan1.name }, lan_2: { lan_id: lan2.id, lan_name: lan2.name, ports: [port], subnets: [srv.v4] },
  });
  let id = '';
  let hashB = '';

  t.test('pulls from connector-acl api and follows its changes', async (t) => {
    const created = await cp('POST', '', policy(8080, 'web'));
    t.equal(created.status, 200);
    id = created.body.result.id;
    agent = new AgentProcess(site, ['-c', configFile, 'agent']);
    await agent.waitFor((l) => l.event === 'apply' && l.origin === 'remote', 15_000, 'first remote apply');
    expectFlow(t, await tcpProbe(c1, srv, 8080), 'passed');

    const edited = await cp('PUT', `/${id}`, policy(9090, 'web 9090'));
    t.equal(edited.status, 200);
    const ms = await waitFor('the edit enforced', async () => agent!.lines.filter((l) => l.event === 'apply' && l.origin === 'remote').length >= 2);
    t.comment(`control-plane edit → enforced on the box: ${ms} ms (poll interval 1 s)`);
    expectFlow(t, await tcpProbe(c1, srv, 9090), 'passed');
    expectFlow(t, await tcpProbe(c1, srv, 8080), 'dropped');
    hashB = (await tableHash())!;
    t.equal((await status()).source.state, 'synced');
  });

  t.test('control plane unreachable, agent restarted: last-known-good is enforced and reported', async (t) => {
    useNothing();
    await agent!.stop();
    await site.nft(site.connector, ['flush', 'ruleset']);
    agent = new AgentProcess(site, ['-c', configFile, 'agent']);
    await agent.event('lkg-enforced');
    await agent.event('control-plane-error');
    t.equal(await tableHash(), hashB, 'the last-known-good ruleset is in the kernel');
    expectFlow(t, await tcpProbe(c1, srv, 9090), 'passed');
    await waitFor('status says unreachable', async () => (await status()).source.state === 'unreachable');
    const s = await status();
    t.equal(s.enforcing, 'last-known-good');
    t.match(s.lastError.kind, /control-plane (unreachable|timeout)/);
    const m = await httpOverUnix(metricsSock, '/metrics');
    t.match(m.text, /^connector_acl_enforcing_last_known_good 1$/m);
    t.match(m.text, /^connector_acl_source_up 0$/m);
    t.match(m.text, /^connector_acl_control_plane_errors_total\{kind="(unreachable|timeout)"\} [1-9]/m);
  });

  t.test('a faulty control plane: the last good set stays enforced through every fault', async (t) => {
    // Meanwhile the real control plane gets a new policy: recovery must bring it in.
    t.equal((await cp('POST', '', policy(7070, 'new while down'))).status, 200);
    const lans = cfEnvelope([{ id: lan1.id, name: lan1.name }, { id: lan2.id, name: lan2.name }]);
    const invalid = cfEnvelope([{ id: 'bad1', ...policy(0, 'port zero') }]);
    const goodish = JSON.stringify(cfEnvelope([{ id: 'x1', ...policy(6060, 'dripped') }]));
    const phases: { name: string; fault: Fault; state: RegExp; log: (l: Record<string, unknown>) => boolean }[] = [
      { name: 'HTTP 500', fault: { kind: 'json', status: 500, body: { success: false, errors: [{ code: 10001, message: 'internal' }], messages: [], result: null } }, state: /error/, log: (l) => l.event === 'control-plane-error' && l.kind === 'http' },
      { name: 'hung server (timeout)', fault: { kind: 'hang' }, state: /unreachable/, log: (l) => l.event === 'control-plane-error' && l.kind === 'timeout' },
      { name: 'garbage JSON', fault: { kind: 'raw', body: '{"result": [ {"id": ' }, state: /error/, log: (l) => l.event === 'control-plane-error' && l.kind === 'malformed' },
      { name: '401', fault: { kind: 'json', status: 401, body: { success: false, errors: [{ code: 10000, message: 'Authentication error' }], messages: [], result: null } }, state: /auth-failed/, log: (l) => l.event === 'control-plane-error' && l.kind === 'auth' },
      { name: 'slow drip', fault: { kind: 'drip', body: goodish, chunkBytes: 4, intervalMs: 200 }, state: /unreachable/, log: (l) => l.event === 'control-plane-error' && l.kind === 'timeout' },
      { name: '"success": false', fault: { kind: 'json', body: { success: false, errors: [{ code: 7003, message: 'nope' }], messages: [], result: [] } }, state: /error/, log: (l) => l.event === 'control-plane-error' },
      { name: 'an invalid set (port 0)', fault: { kind: 'json', body: invalid }, state: /rejected/, log: (l) => l.event === 'rejected' && l.origin === 'remote' },
    ];
    let phase = phases[0];
    faults.handler = (req) => (req.url.endsWith('/lans') ? { kind: 'json', body: lans } : phase.fault);
    useFaults();
    for (phase of phases) {
      const from = agent!.lines.length;
      await agent!.waitFor((l) => agent!.lines.indexOf(l as never) >= from && phase.log(l), 20_000, phase.name);
      await waitFor(`${phase.name}: status`, async () => phase.state.test((await status()).source.state), 5_000);
      t.equal(await tableHash(), hashB, `${phase.name}: the last good ruleset is still enforced (source state ${(await status()).source.state})`);
    }
    expectFlow(t, await tcpProbe(c1, srv, 9090), 'passed');
    expectFlow(t, await tcpProbe(c1, srv, 6060), 'dropped');
    const rejected = agent!.lines.find((l) => l.event === 'rejected');
    t.match(JSON.stringify(rejected?.reasons), /port zero.*ports\[0\]/, 'the rejection names the policy and field');
    const m = await httpOverUnix(metricsSock, '/metrics');
    for (const kind of ['http', 'timeout', 'malformed', 'auth']) {
      t.match(m.text, new RegExp(`^connector_acl_control_plane_errors_total\\{kind="${kind}"\\} [1-9]`, 'm'), `control-plane errors of kind ${kind} counted`);
    }
    t.match(m.text, /^connector_acl_rejected_sets_total\{origin="remote"\} [1-9]/m);
  });

  t.test('the control plane recovers: the agent converges on its set', async (t) => {
    useApi();
    const ms = await waitFor('recovered', async () => (await status()).source.state === 'synced' && (await status()).policies === 2, 30_000);
    t.comment(`converged ${ms} ms after the control plane came back`);
    const [a, b] = await Promise.all([tcpProbe(c1, srv, 9090), tcpProbe(c1, srv, 7070)]);
    expectFlow(t, a, 'passed');
    expectFlow(t, b, 'passed');
    t.equal((await status()).enforcing, 'source');
    t.ok(agent!.lines.some((l) => l.event === 'control-plane-recovered'), 'the recovery is logged');
    await agent!.stop();
  });

  t.test('the root namespace is untouched', async (t) => {
    t.equal(await rootState(), rootBefore);
  });
}
