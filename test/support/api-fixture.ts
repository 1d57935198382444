// A site, credentials and the seed's curl bodies for control-plane tests, and a way to run the
// local API on 127.0.0.1 (port 0) with a real SQLite store in a temp dir.
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pino, type Logger } from 'pino';
import { Writable } from 'node:stream';
import { lansOf, startApiServer, type ApiServer } from '../../agent/control/api.js';
import type { Enforcer } from '../../agent/control/contracts.js';
import { AclStore } from '../../agent/control/store.js';
import { validatingEnforcer } from '../../agent/cli/api-command.js';
import { parseSite } from '../../agent/policy/site.js';

export const ACCOUNT_ID = '023e105f4ecef8ad9ca31a8372d0c353';
export const SITE_ID = '9d6e1c2a7b3f4e5d8c9b0a1f2e3d4c5b';
export const TOKEN = 'tok-3f2a9c81e0b64d7e';
export const EMAIL = 'ops@example.com';
export const KEY = 'key-7c1d0e5b9a2f4e68';

export const LAN1 = '6b1e2f0a9c8d4e11a2b3c4d5e6f70001';
export const LAN2 = '6b1e2f0a9c8d4e11a2b3c4d5e6f70002';

/** Two LANs holding the seed's 192.0.2.1 on both sides would be odd; each LAN gets its own half. */
export const SITE_DOC = {
  table: 'connector_acl',
  lans: [
    { id: LAN1, name: 'LAN 1', interface: 'lan1', subnets: ['192.0.2.0/25'] },
    { id: LAN2, name: 'LAN 2', interface: 'lan2', subnets: ['192.0.2.128/25'] },
  ],
};

/** The seed's create body (`--json '{…}'`), with real LAN ids and subnets of this site. */
export const seedCreateBody = () => ({
  description: 'Allows local traffic between PIN pads and cash register.',
  forward_locally: true,
  lan_1: { lan_id: LAN1, lan_name: 'LAN 1', ports: [1], subnets: ['192.0.2.1'] },
  lan_2: { lan_id: LAN2, lan_name: 'LAN 2', ports: [1], subnets: ['192.0.2.129'] },
  name: 'PIN Pad - Cash Register',
  protocols: ['tcp'],
});

/** The seed's edit (PUT) body: the same shape, changed ports and name. */
export const seedEditBody = () => ({
  description: 'Cash register reaches the PIN pads on 8080.',
  forward_locally: true,
  lan_1: { lan_id: LAN1, lan_name: 'LAN 1', ports: [8080], subnets: ['192.0.2.1'] },
  lan_2: { lan_id: LAN2, lan_name: 'LAN 2', ports: [8080], subnets: ['192.0.2.129'] },
  name: 'PIN Pad - Cash Register (8080)',
  protocols: ['tcp'],
});

export const bearer = { Authorization: `Bearer ${TOKEN}` };
export const emailKey = { 'X-Auth-Email': EMAIL, 'X-Auth-Key': KEY };

export async function tempDir(t: { teardown(fn: () => unknown): void }, prefix = 'cacl-control-'): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), prefix));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** A logger whose JSON lines are kept in `lines` (and not printed). */
export function memoryLogger(): { logger: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l.trim()) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return { logger: pino({ level: 'debug' }, sink), lines };
}

export interface RunningApi {
  api: ApiServer;
  store: AclStore;
  stateDir: string;
  url: string;
  logLines: Record<string, unknown>[];
  stop(): Promise<void>;
}

/** The local API over a store in `stateDir`, validating against SITE_DOC unless another enforcer is given. */
export async function runApi(
  t: { teardown(fn: () => unknown): void },
  opts: { stateDir?: string; enforce?: Enforcer; maxBodyBytes?: number } = {},
): Promise<RunningApi> {
  const stateDir = opts.stateDir ?? await tempDir(t);
  const store = AclStore.open(stateDir);
  const { logger, lines } = memoryLogger();
  const api = await startApiServer({
    listen: { host: '127.0.0.1', port: 0 },
    accountId: ACCOUNT_ID,
    siteId: SITE_ID,
    store,
    enforce: opts.enforce ?? validatingEnforcer(() => ({ doc: SITE_DOC, file: 'site.yaml' })),
    lans: () => lansOf(parseSite(SITE_DOC, 'site.yaml').site!),
    credentials: { token: TOKEN, email: EMAIL, key: KEY },
    logger,
    maxBodyBytes: opts.maxBodyBytes,
  });
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await api.close();
    await store.close();
  };
  t.teardown(stop);
  return { api, store, stateDir, url: api.aclsUrl, logLines: lines, stop };
}

export interface Answer {
  status: number;
  headers: Headers;
  body: any; // eslint-disable-line @typescript-eslint/no-explicit-any
  text: string;
}

/** One HTTP request like curl's: `json` is sent as `--json` does (Content-Type application/json). */
export async function call(
  url: string, init: { method?: string; headers?: Record<string, string>; json?: unknown; body?: string } = {},
): Promise<Answer> {
  const headers: Record<string, string> = { ...init.headers };
  let body: string | undefined = init.body;
  if (init.json !== undefined) {
    headers['Content-Type'] = 'application/json';
    headers.Accept = 'application/json';
    body = JSON.stringify(init.json);
  }
  const res = await fetch(url, { method: init.method ?? 'GET', headers, body });
  const text = await res.text();
  let parsed: unknown;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    parsed = undefined;
  }
  return { status: res.status, headers: res.headers, body: parsed, text };
}

/** Writes a secret file with `mode` (default 0600). */
export async function secretFile(dir: string, name: string, content: string, mode = 0o600): Promise<string> {
  const file = path.join(dir, name);
  await writeFile(file, `${content}\n`, { mode });
  await chmod(file, mode); // the umask may have removed bits
  return file;
}
