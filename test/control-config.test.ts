// The `agent:` section of the site config: every key, defaults, and problems that name the field.
import t from 'tap';
import path from 'node:path';
import { parseAgentConfig, parseDuration, parseListen } from '../agent/control/config.js';
import { validate } from '../agent/policy/load.js';
import { formatProblem } from '../agent/policy/problems.js';
import { SITE_DOC } from './support/api-fixture.js';

const FILE = '/etc/connector-acl/config.yaml';
const parse = (agent: unknown) => parseAgentConfig({ ...SITE_DOC, agent }, FILE);
const messages = (agent: unknown) => parse(agent).problems.map(formatProblem);

const ISSUE_EXAMPLE = {
  source: 'local',
  state_dir: '/var/lib/connector-acl',
  local_api: {
    listen: '127.0.0.1:8787',
    account_id: '023e105f4ecef8ad9ca31a8372d0c353',
    site_id: '9d6e1c2a7b3f4e5d8c9b0a1f2e3d4c5b',
    auth: { api_token_file: '/etc/connector-acl/api-token', email: 'ops@example.com', auth_key_file: '/etc/connector-acl/auth-key' },
  },
  remote: {
    base_url: 'https://api.cloudflare.com/client/v4/',
    account_id: '023e105f4ecef8ad9ca31a8372d0c353',
    site_id: '9d6e1c2a7b3f4e5d8c9b0a1f2e3d4c5b',
    api_token_file: 'remote-token',
    poll_interval: '30s',
  },
  metrics_listen: '127.0.0.1:9464',
};

t.test('the example of issue 4 parses into typed config', async (t) => {
  const { config, problems } = parse(ISSUE_EXAMPLE);
  t.same(problems, []);
  t.same(config, {
    source: 'local',
    stateDir: '/var/lib/connector-acl',
    localApi: {
      listen: { host: '127.0.0.1', port: 8787, text: '127.0.0.1:8787' },
      accountId: '023e105f4ecef8ad9ca31a8372d0c353',
      siteId: '9d6e1c2a7b3f4e5d8c9b0a1f2e3d4c5b',
      auth: { apiTokenFile: '/etc/connector-acl/api-token', email: 'ops@example.com', authKeyFile: '/etc/connector-acl/auth-key' },
    },
    remote: {
      baseUrl: 'https://api.cloudflare.com/client/v4',
      accountId: '023e105f4ecef8ad9ca31a8372d0c353',
      siteId: '9d6e1c2a7b3f4e5d8c9b0a1f2e3d4c5b',
      apiTokenFile: '/etc/connector-acl/remote-token',
      email: undefined,
      authKeyFile: undefined,
      pollIntervalMs: 30_000,
      timeoutMs: 10_000,
    },
    metricsListen: { host: '127.0.0.1', port: 9464, text: '127.0.0.1:9464' },
  }, 'relative paths are relative to the config file');
  t.ok(validate({ ...SITE_DOC, agent: ISSUE_EXAMPLE }, FILE, []).ok, 'the site parser accepts the agent section');
});

t.test('defaults: source local, state dir, poll interval and timeout', async (t) => {
  const remoteOnly = parse({ source: 'remote', remote: { base_url: 'http://127.0.0.1:8787/client/v4', account_id: 'a', site_id: 's', email: 'x@y.z', auth_key_file: './k', timeout: '2s' } });
  t.same(remoteOnly.problems, []);
  t.match(remoteOnly.config, { source: 'remote', stateDir: '/var/lib/connector-acl', localApi: undefined, metricsListen: undefined });
  t.match(remoteOnly.config!.remote, { email: 'x@y.z', authKeyFile: '/etc/connector-acl/k', apiTokenFile: undefined, pollIntervalMs: 30_000, timeoutMs: 2_000 });
  const file = parse({ source: 'file', state_dir: 'state' });
  t.same(file.problems, []);
  t.match(file.config, { source: 'file', stateDir: '/etc/connector-acl/state' });
  t.same(messages(undefined), ['/etc/connector-acl/config.yaml: agent.local_api: is required with source: local (listen, account_id, site_id, auth)'],
    'no agent section means source local, which needs local_api');
  t.equal(parseAgentConfig({ lans: [] }, path.join('rel', 'c.yaml')).problems.length, 1);
});

t.test('problems name the field', async (t) => {
  const local = ISSUE_EXAMPLE.local_api;
  const cases: [unknown, RegExp][] = [
    ['remote', /agent: must be a mapping, not the string "remote"/],
    [{ source: 'cloud', local_api: local }, /agent\.source: "cloud" is not a source: use local, remote or file/],
    [{ source: 'remote' }, /agent\.remote: is required with source: remote/],
    [{ local_api: { ...local, listen: 'localhost' } }, /agent\.local_api\.listen: "localhost" is not host:port/],
    [{ local_api: { ...local, listen: '127.0.0.1:70000' } }, /agent\.local_api\.listen: "127.0.0.1:70000" is not host:port/],
    [{ local_api: { ...local, account_id: 'a/b' } }, /agent\.local_api\.account_id: "a\/b" is not a valid id/],
    [{ local_api: { ...local, site_id: undefined } }, /agent\.local_api\.site_id: is required/],
    [{ local_api: { ...local, auth: undefined } }, /agent\.local_api\.auth: is required: api_token_file, or email with auth_key_file/],
    [{ local_api: { ...local, auth: {} } }, /agent\.local_api\.auth: needs credentials/],
    [{ local_api: { ...local, auth: { email: 'ops@example.com' } } }, /agent\.local_api\.auth\.auth_key_file: is required with email/],
    [{ local_api: { ...local, auth: { auth_key_file: 'k' } } }, /agent\.local_api\.auth\.email: is required with auth_key_file/],
    [{ local_api: { ...local, auth: { email: 'nobody', auth_key_file: 'k' } } }, /agent\.local_api\.auth\.email: "nobody" is not an e-mail address/],
    [{ ...ISSUE_EXAMPLE, remote: { ...ISSUE_EXAMPLE.remote, base_url: 'ftp://x' } }, /agent\.remote\.base_url: "ftp:\/\/x": only http and https/],
    [{ ...ISSUE_EXAMPLE, remote: { ...ISSUE_EXAMPLE.remote, base_url: 'not a url' } }, /agent\.remote\.base_url: "not a url" is not a URL/],
    [{ ...ISSUE_EXAMPLE, remote: { ...ISSUE_EXAMPLE.remote, poll_interval: 'soon' } }, /agent\.remote\.poll_interval: the string "soon" is not a duration/],
    [{ ...ISSUE_EXAMPLE, remote: { ...ISSUE_EXAMPLE.remote, poll_interval: '100ms' } }, /agent\.remote\.poll_interval: "100ms" is out of range \(1s–24h\)/],
    [{ ...ISSUE_EXAMPLE, remote: { ...ISSUE_EXAMPLE.remote, api_token_file: undefined } }, /agent\.remote: needs credentials/],
    [{ ...ISSUE_EXAMPLE, metrics_listen: 9464 }, /agent\.metrics_listen: must be a string/],
    [{ ...ISSUE_EXAMPLE, state_dir: '' }, /agent\.state_dir: must not be empty/],
  ];
  for (const [agent, re] of cases) {
    const { config, problems } = parse(agent);
    t.equal(config, undefined, `refused: ${re}`);
    t.match(problems.filter((p) => p.severity === 'error').map(formatProblem).join('\n'), re);
    t.ok(problems.every((p) => p.file === FILE));
  }
});

t.test('warnings: unknown keys, listening beyond loopback, plain http with credentials', async (t) => {
  const { config, problems } = parse({
    ...ISSUE_EXAMPLE,
    colour: 'blue',
    local_api: { ...ISSUE_EXAMPLE.local_api, listen: '0.0.0.0:8787', auth: { ...ISSUE_EXAMPLE.local_api.auth, token: 'x' } },
    remote: { ...ISSUE_EXAMPLE.remote, base_url: 'http://10.0.0.1:8787/client/v4' },
  });
  t.ok(config);
  t.same(problems.map((p) => [p.severity, p.path]), [
    ['warning', 'agent.colour'],
    ['warning', 'agent.local_api.listen'],
    ['warning', 'agent.local_api.auth.token'],
    ['warning', 'agent.remote.base_url'],
  ]);
  t.match(problems[3]!.message, /credentials travel in clear text/);
});

t.test('parseDuration and parseListen', async (t) => {
  t.equal(parseDuration('30s'), 30_000);
  t.equal(parseDuration('2m'), 120_000);
  t.equal(parseDuration('1h30m'), 5_400_000);
  t.equal(parseDuration('500ms'), 500);
  t.equal(parseDuration('1.5s'), 1_500);
  t.equal(parseDuration('45'), 45_000, 'a bare number is seconds');
  for (const bad of ['', 's', '30 s', '30x', '-1s', '1m30', 'm5']) t.equal(parseDuration(bad), undefined, JSON.stringify(bad));
  t.same(parseAgentConfig({ agent: { source: 'file', remote: { ...ISSUE_EXAMPLE.remote, poll_interval: 90 } } }, FILE).config?.remote?.pollIntervalMs, 90_000);

  t.same(parseListen('127.0.0.1:8787'), { host: '127.0.0.1', port: 8787, text: '127.0.0.1:8787' });
  t.same(parseListen('[::1]:0'), { host: '::1', port: 0, text: '[::1]:0' });
  t.same(parseListen('localhost:8787'), { host: 'localhost', port: 8787, text: 'localhost:8787' });
  t.same(parseListen(':8787'), { host: '0.0.0.0', port: 8787, text: ':8787' });
  for (const bad of ['8787', '::1:8787', '127.0.0.1:', '127.0.0.1:65536', 'a b:1']) t.equal(parseListen(bad), undefined, bad);
});
