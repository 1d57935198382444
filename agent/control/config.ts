// The `agent:` section of the site config: where policies come from, where state lives, the local
// API, the remote control plane and the metrics listener. Parsed like the rest of the site config:
// every problem is collected with its field path, nothing stops at the first one.
import path from 'node:path';
import { isObject, join, readString, typeName, warnUnknownKeys, type Doc } from '../policy/fields.js';
import { ProblemSink, hasErrors, type Problem } from '../policy/problems.js';

export type SourceKind = 'local' | 'remote' | 'file';
export const SOURCE_KINDS: readonly SourceKind[] = ['local', 'remote', 'file'];

export const DEFAULT_STATE_DIR = '/var/lib/connector-acl';
export const DEFAULT_POLL_INTERVAL_MS = 30_000;
export const DEFAULT_REMOTE_TIMEOUT_MS = 10_000;

/** A `host:port` to listen on. `host` is without brackets (`::1`), `text` as written. */
export interface ListenAddress {
  host: string;
  port: number;
  text: string;
}

/** Credential files and the e-mail the local API accepts. At least one method is configured. */
export interface LocalApiAuth {
  /** Accepts `Authorization: Bearer <token>`. */
  apiTokenFile?: string;
  /** With `authKeyFile`: accepts `X-Auth-Email` + `X-Auth-Key`. */
  email?: string;
  authKeyFile?: string;
}

export interface LocalApiConfig {
  listen: ListenAddress;
  accountId: string;
  siteId: string;
  auth: LocalApiAuth;
}

export interface RemoteConfig {
  /** Without a trailing slash, e.g. `https://api.cloudflare.com/client/v4`. */
  baseUrl: string;
  accountId: string;
  siteId: string;
  apiTokenFile?: string;
  email?: string;
  authKeyFile?: string;
  pollIntervalMs: number;
  /** Per-request timeout (headers and body). */
  timeoutMs: number;
}

export interface AgentConfig {
  source: SourceKind;
  /** Absolute (relative paths are resolved against the config file's directory). */
  stateDir: string;
  localApi?: LocalApiConfig;
  remote?: RemoteConfig;
  metricsListen?: ListenAddress;
}

export interface AgentConfigResult {
  config?: AgentConfig;
  problems: Problem[];
}

const AGENT_KEYS = ['source', 'state_dir', 'local_api', 'remote', 'metrics_listen'] as const;
const LOCAL_API_KEYS = ['listen', 'account_id', 'site_id', 'auth'] as const;
const AUTH_KEYS = ['api_token_file', 'email', 'auth_key_file'] as const;
const REMOTE_KEYS = ['base_url', 'account_id', 'site_id', 'api_token_file', 'email', 'auth_key_file', 'poll_interval', 'timeout'] as const;
/** Account and site ids become URL path segments. */
const PATH_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

/**
 * Parses `doc.agent` (doc is the whole site config document). The section the chosen `source`
 * needs is required (`local_api` for local, `remote` for remote); the others are checked when
 * present. Relative paths are relative to `file`'s directory, as for `policies`.
 */
export function parseAgentConfig(doc: unknown, file: string): AgentConfigResult {
  const sink = new ProblemSink({ file });
  const base = path.dirname(path.resolve(file));
  const raw = isObject(doc) ? doc.agent : undefined;
  if (raw !== undefined && raw !== null && !isObject(raw)) {
    sink.error('agent', `must be a mapping, not ${typeName(raw)}`);
    return { problems: sink.problems };
  }
  const agent: Doc = isObject(raw) ? raw : {};
  warnUnknownKeys(agent, AGENT_KEYS, 'agent', sink);

  const sourceText = readString(agent, 'source', 'agent', sink) ?? 'local';
  const source = SOURCE_KINDS.find((k) => k === sourceText);
  if (!source) sink.error('agent.source', `"${sourceText}" is not a source: use local, remote or file`);

  const stateDirText = readString(agent, 'state_dir', 'agent', sink) ?? DEFAULT_STATE_DIR;
  if (stateDirText.trim() === '') sink.error('agent.state_dir', 'must not be empty');
  const stateDir = path.resolve(base, stateDirText);

  let localApi: LocalApiConfig | undefined;
  if (agent.local_api !== undefined && agent.local_api !== null) localApi = parseLocalApi(agent.local_api, base, sink);
  else if (source === 'local') sink.error('agent.local_api', 'is required with source: local (listen, account_id, site_id, auth)');

  let remote: RemoteConfig | undefined;
  if (agent.remote !== undefined && agent.remote !== null) remote = parseRemote(agent.remote, base, sink);
  else if (source === 'remote') sink.error('agent.remote', 'is required with source: remote (base_url, account_id, site_id, credentials)');

  let metricsListen: ListenAddress | undefined;
  const metricsText = readString(agent, 'metrics_listen', 'agent', sink);
  if (metricsText !== undefined) metricsListen = readListen(metricsText, 'agent.metrics_listen', sink);

  if (hasErrors(sink.problems) || !source) return { problems: sink.problems };
  return { config: { source, stateDir, localApi, remote, metricsListen }, problems: sink.problems };
}

function parseLocalApi(raw: unknown, base: string, sink: ProblemSink): LocalApiConfig | undefined {
  const at = 'agent.local_api';
  if (!isObject(raw)) {
    sink.error(at, `must be a mapping with listen, account_id, site_id and auth, not ${typeName(raw)}`);
    return undefined;
  }
  warnUnknownKeys(raw, LOCAL_API_KEYS, at, sink);
  const listenText = readString(raw, 'listen', at, sink, true);
  const listen = listenText === undefined ? undefined : readListen(listenText, join(at, 'listen'), sink);
  const accountId = readPathId(raw, 'account_id', at, sink);
  const siteId = readPathId(raw, 'site_id', at, sink);

  let auth: LocalApiAuth | undefined;
  const authAt = join(at, 'auth');
  if (raw.auth === undefined || raw.auth === null) {
    sink.error(authAt, 'is required: api_token_file, or email with auth_key_file (the API never runs without credentials)');
  } else if (!isObject(raw.auth)) {
    sink.error(authAt, `must be a mapping, not ${typeName(raw.auth)}`);
  } else {
    warnUnknownKeys(raw.auth, AUTH_KEYS, authAt, sink);
    auth = readCredentials(raw.auth, authAt, base, sink);
  }
  if (!listen || !accountId || !siteId || !auth) return undefined;
  return { listen, accountId, siteId, auth };
}

function parseRemote(raw: unknown, base: string, sink: ProblemSink): RemoteConfig | undefined {
  const at = 'agent.remote';
  if (!isObject(raw)) {
    sink.error(at, `must be a mapping with base_url, account_id, site_id and credentials, not ${typeName(raw)}`);
    return undefined;
  }
  warnUnknownKeys(raw, REMOTE_KEYS, at, sink);
  let baseUrl: string | undefined;
  const urlText = readString(raw, 'base_url', at, sink, true);
  if (urlText !== undefined) {
    let url: URL | undefined;
    try {
      url = new URL(urlText);
    } catch {
      sink.error(join(at, 'base_url'), `"${urlText}" is not a URL (e.g. https://api.cloudflare.com/client/v4)`);
    }
    if (url && url.protocol !== 'https:' && url.protocol !== 'http:') {
      sink.error(join(at, 'base_url'), `"${urlText}": only http and https are supported`);
    } else if (url && (url.search || url.hash)) {
      sink.error(join(at, 'base_url'), `"${urlText}" must not have a query or fragment`);
    } else if (url) {
      if (url.protocol === 'http:' && !isLoopback(url.hostname)) {
        sink.warn(join(at, 'base_url'), `"${urlText}" is plain http to a non-loopback host: credentials travel in clear text`);
      }
      baseUrl = urlText.replace(/\/+$/, '');
    }
  }
  const accountId = readPathId(raw, 'account_id', at, sink);
  const siteId = readPathId(raw, 'site_id', at, sink);
  const creds = readCredentials(raw, at, base, sink);
  const pollIntervalMs = readDuration(raw, 'poll_interval', at, sink, 1_000, 24 * 3_600_000) ?? DEFAULT_POLL_INTERVAL_MS;
  const timeoutMs = readDuration(raw, 'timeout', at, sink, 100, 600_000) ?? DEFAULT_REMOTE_TIMEOUT_MS;
  if (!baseUrl || !accountId || !siteId || !creds) return undefined;
  return { baseUrl, accountId, siteId, ...creds, pollIntervalMs, timeoutMs };
}

/** `api_token_file`, or `email` + `auth_key_file` (both may be given). */
function readCredentials(raw: Doc, at: string, base: string, sink: ProblemSink): LocalApiAuth | undefined {
  const before = sink.problems.length;
  const tokenFile = readPath(raw, 'api_token_file', at, base, sink);
  const email = readString(raw, 'email', at, sink);
  const keyFile = readPath(raw, 'auth_key_file', at, base, sink);
  if (email !== undefined && !/^[^\s@]+@[^\s@]+$/.test(email)) sink.error(join(at, 'email'), `"${email}" is not an e-mail address`);
  if (email !== undefined && keyFile === undefined) sink.error(join(at, 'auth_key_file'), 'is required with email (X-Auth-Email goes with X-Auth-Key)');
  if (keyFile !== undefined && email === undefined) sink.error(join(at, 'email'), 'is required with auth_key_file (X-Auth-Key goes with X-Auth-Email)');
  if (tokenFile === undefined && email === undefined && keyFile === undefined) {
    sink.error(at, 'needs credentials: api_token_file, or email with auth_key_file');
  }
  if (hasErrors(sink.problems.slice(before))) return undefined;
  return { apiTokenFile: tokenFile, email, authKeyFile: keyFile };
}

function readPath(raw: Doc, key: string, at: string, base: string, sink: ProblemSink): string | undefined {
  const v = readString(raw, key, at, sink);
  if (v === undefined) return undefined;
  if (v.trim() === '') {
    sink.error(join(at, key), 'must not be empty');
    return undefined;
  }
  return path.resolve(base, v);
}

function readPathId(raw: Doc, key: string, at: string, sink: ProblemSink): string | undefined {
  const v = readString(raw, key, at, sink, true);
  if (v === undefined) return undefined;
  if (!PATH_ID.test(v)) {
    sink.error(join(at, key), `"${v}" is not a valid id (letters, digits, _ and -, up to 64 characters)`);
    return undefined;
  }
  return v;
}

function readDuration(raw: Doc, key: string, at: string, sink: ProblemSink, minMs: number, maxMs: number): number | undefined {
  const v = raw[key];
  if (v === undefined || v === null) return undefined;
  const ms = typeof v === 'number' ? (Number.isFinite(v) ? v * 1000 : undefined) : typeof v === 'string' ? parseDuration(v) : undefined;
  if (ms === undefined) {
    sink.error(join(at, key), `${typeName(v)} is not a duration: write e.g. "30s", "2m", "1h30m" or "500ms" (a bare number is seconds)`);
    return undefined;
  }
  if (ms < minMs || ms > maxMs) {
    sink.error(join(at, key), `${JSON.stringify(v)} is out of range (${formatDuration(minMs)}–${formatDuration(maxMs)})`);
    return undefined;
  }
  return ms;
}

const UNIT_MS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 };

/** `"30s"`, `"2m"`, `"1h30m"`, `"500ms"`, `"1.5s"`, `"45"` (seconds) → milliseconds; undefined if not a duration. */
export function parseDuration(text: string): number | undefined {
  const s = text.trim();
  if (/^\d+(\.\d+)?$/.test(s)) return Math.round(Number(s) * 1000);
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/gy;
  let total = 0;
  let matched = 0;
  for (let m = re.exec(s); m; m = re.exec(s)) {
    total += Number(m[1]) * UNIT_MS[m[2]!]!;
    matched = re.lastIndex;
  }
  if (matched === 0 || matched !== s.length) return undefined;
  return Math.round(total);
}

export function formatDuration(ms: number): string {
  if (ms % 3_600_000 === 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0) return `${ms / 60_000}m`;
  if (ms % 1_000 === 0) return `${ms / 1_000}s`;
  return `${ms}ms`;
}

/** `127.0.0.1:8787`, `[::1]:8787`, `localhost:8787`, `:8787` (all addresses). Port 0 picks a free port. */
export function parseListen(text: string): ListenAddress | undefined {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]*)):(\d{1,5})$/.exec(text.trim());
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port > 65535) return undefined;
  const host = m[1] ?? (m[2] || '0.0.0.0');
  return { host, port, text: text.trim() };
}

function readListen(text: string, at: string, sink: ProblemSink): ListenAddress | undefined {
  const listen = parseListen(text);
  if (!listen) sink.error(at, `"${text}" is not host:port (e.g. 127.0.0.1:8787 or [::1]:8787)`);
  else if (!isLoopback(listen.host)) sink.warn(at, `"${text}" is reachable from the network; prefer a loopback address`);
  return listen;
}

export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '');
  return h === 'localhost' || h === '::1' || /^127\./.test(h);
}

/** `http://host:port` for a listening address (IPv6 in brackets). */
export function urlHost(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
