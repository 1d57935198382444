// `connector-acl api -c CONFIG`: the standalone control plane from a real config file — in process
// (config, secrets, validation against the site's LANs, SIGHUP-style reload) and as the built CLI
// (prints its URL, serves the seed's requests, stops on SIGTERM, keeps its policies).
import t from 'tap';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';
import { EnvironmentError, InputError } from '../agent/apply/errors.js';
import { startStandaloneApi } from '../agent/cli/api-command.js';
import { ACCOUNT_ID, EMAIL, KEY, LAN1, LAN2, SITE_DOC, SITE_ID, TOKEN, bearer, call, emailKey, memoryLogger, secretFile, seedCreateBody, tempDir } from './support/api-fixture.js';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const cli = path.join(repo, 'dist', 'agent', 'cli', 'main.js');

/** A config dir with the site, the agent section and 0600 secrets; returns the config path. */
async function writeConfig(dir: string, over: { agent?: Record<string, unknown>; lans?: unknown[]; tokenMode?: number } = {}): Promise<string> {
  await secretFile(dir, 'api-token', TOKEN, over.tokenMode ?? 0o600);
  await secretFile(dir, 'auth-key', KEY);
  const config = {
    ...SITE_DOC,
    ...(over.lans ? { lans: over.lans } : {}),
    agent: {
      state_dir: 'state',
      local_api: {
        listen: '127.0.0.1:0',
        account_id: ACCOUNT_ID,
        site_id: SITE_ID,
        auth: { api_token_file: 'api-token', email: EMAIL, auth_key_file: 'auth-key' },
      },
      ...over.agent,
    },
  };
  const file = path.join(dir, 'config.yaml');
  await writeFile(file, YAML.stringify(config));
  return file;
}

t.test('in process: serves the config\'s account/site, validates against its LANs, reloads the site config', async (t) => {
  const dir = await tempDir(t);
  const configFile = await writeConfig(dir);
  const { logger, lines } = memoryLogger();
  const running = await startStandaloneApi({ configFile, logger });
  t.teardown(() => running.close());
  t.equal(running.config.stateDir, path.join(dir, 'state'));
  t.match(running.api.aclsUrl, new RegExp(`^http://127\\.0\\.0\\.1:\\d+/client/v4/accounts/${ACCOUNT_ID}/magic/sites/${SITE_ID}/acls$`));
  t.ok(existsSync(path.join(dir, 'state', 'acls.sqlite')));
  t.ok(lines.some((l) => l.msg === 'api listening'));

  const url = running.api.aclsUrl;
  t.equal((await call(url, { method: 'POST', headers: emailKey, json: seedCreateBody() })).status, 200);
  const lan3 = { id: 'lan3', name: 'LAN 3', interface: 'lan3' };
  const toLan3 = { ...seedCreateBody(), lan_2: { lan_id: 'lan3' } };
  t.equal((await call(url, { method: 'POST', headers: bearer, json: toLan3 })).status, 400, 'lan3 is not in the config yet');

  await writeConfig(dir, { lans: [...SITE_DOC.lans, lan3] });
  t.same(await running.reload().then((r) => r.ok), true);
  t.equal((await call(url, { method: 'POST', headers: bearer, json: toLan3 })).status, 200, 'after the reload it is');
  t.same((await call(url.replace(/acls$/, 'lans'), { headers: bearer })).body.result.map((l: { id: string }) => l.id), [LAN1, LAN2, 'lan3']);

  await writeFile(configFile, 'lans: [{ id: x }]\n');
  const refused = await running.reload();
  t.equal(refused.ok, false);
  t.match(refused.problems.map((p) => p.path).join(','), /lans\[0\]\.interface/);
  t.equal((await call(url.replace(/acls$/, 'lans'), { headers: bearer })).body.result.length, 3, 'the running config is kept');
});

t.test('refuses to start, clearly: readable secrets, no local_api, bad site config, busy port', async (t) => {
  const { logger } = memoryLogger();
  const quiet = { logger, report: () => undefined };

  const open = await tempDir(t);
  await t.rejects(startStandaloneApi({ configFile: await writeConfig(open, { tokenMode: 0o644 }), ...quiet }),
    new InputError(`agent.local_api.auth: ${path.join(open, 'api-token')}: is accessible by group or others (mode 0644); credentials must be readable by their owner only: chmod 600 ${path.join(open, 'api-token')}`));
  t.notOk(existsSync(path.join(open, 'state')), 'nothing was created');

  const remoteOnly = await tempDir(t);
  const file = await writeConfig(remoteOnly, { agent: { local_api: undefined, source: 'file' } });
  await t.rejects(startStandaloneApi({ configFile: file, ...quiet }), { name: 'InputError', message: /agent\.local_api is required for connector-acl api/ });

  const badSite = await tempDir(t);
  await t.rejects(startStandaloneApi({ configFile: await writeConfig(badSite, { lans: [{ id: 'x' }] }), ...quiet }), { name: 'InputError', message: /site config has errors/ });
  const badAgent = await tempDir(t);
  await t.rejects(startStandaloneApi({ configFile: await writeConfig(badAgent, { agent: { source: 'nowhere' } }), ...quiet }), { name: 'InputError', message: /agent section has errors/ });

  const first = await tempDir(t);
  const running = await startStandaloneApi({ configFile: await writeConfig(first), ...quiet });
  t.teardown(() => running.close());
  const second = await tempDir(t);
  await t.rejects(startStandaloneApi({ configFile: await writeConfig(second), listen: `127.0.0.1:${running.api.port}`, ...quiet }),
    new EnvironmentError(`cannot listen on 127.0.0.1:${running.api.port}: the address is in use`));
  await t.rejects(startStandaloneApi({ configFile: await writeConfig(second), listen: 'nowhere', ...quiet }), { message: /--listen "nowhere" is not host:port/ });
});

/** Starts `connector-acl -c FILE api`, resolves with the printed URL. */
function startCli(configFile: string): Promise<{ url: string; stop(): Promise<number | null>; stderr: () => string }> {
  const child = spawn(process.execPath, [cli, '-c', configFile, 'api', '--listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`no URL within 10 s; stderr: ${err}`));
    }, 10_000);
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /^listening on (\S+)$/m.exec(out);
      if (!m) return;
      clearTimeout(timer);
      resolve({
        url: m[1]!,
        stderr: () => err,
        stop: () => {
          child.kill('SIGTERM');
          return exited;
        },
      });
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`exited with ${code} before listening; stderr: ${err}`));
    });
  });
}

t.test('the built CLI: prints its URL, serves the seed, stops on SIGTERM, keeps the policies', { skip: existsSync(cli) ? false : 'dist not built (npm run build)' }, async (t) => {
  const dir = await tempDir(t);
  const configFile = await writeConfig(dir);
  const first = await startCli(configFile);
  const created = await call(first.url, { method: 'POST', headers: emailKey, json: seedCreateBody() });
  t.equal(created.status, 200);
  t.equal(await first.stop(), 0, 'SIGTERM: clean exit');
  const logs = first.stderr().trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  t.ok(logs.some((l) => l.msg === 'request' && l.status === 200 && l.method === 'POST'), 'JSON request logs on stderr');
  t.ok(logs.some((l) => l.msg === 'shutting down' && l.signal === 'SIGTERM'));

  const second = await startCli(configFile);
  t.teardown(() => second.stop());
  t.same((await call(second.url, { headers: bearer })).body.result, [created.body.result], 'the policy survived the restart');
});
