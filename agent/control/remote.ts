// Pulling policies from a control plane (Cloudflare's API, or `connector-acl api` on another box):
// `GET …/acls` and `GET …/lans` with a Bearer token or e-mail + key, a timeout per request that
// covers the body too, `If-None-Match` when the server gave an ETag, a cap on response size,
// bounded pagination. Every outcome is a SourceResult; nothing here throws on a network fault.
// `Backoff` is the pure retry schedule the daemon's poll loop uses.
import type { AclObject, LanInfo, SourceErrorKind, SourceResult } from './contracts.js';
import type { RemoteConfig } from './config.js';
import type { RemoteCredentials } from './secrets.js';

export { readRemoteCredentials, readSecretFile, SecretFileError, type RemoteCredentials } from './secrets.js';

export interface RemoteClientOptions {
  /** e.g. `https://api.cloudflare.com/client/v4` (a trailing slash is fine). */
  baseUrl: string;
  accountId: string;
  siteId: string;
  credentials: RemoteCredentials;
  /** Per request, headers and body (default 10 s). */
  timeoutMs?: number;
  /** Per response body (default 8 MiB). */
  maxResponseBytes?: number;
  /** Pages fetched at most when `result_info.total_pages` > 1 (default 50). */
  maxPages?: number;
  /** Also fetch `…/lans` when the ACLs changed (default true). A failure there is not an error. */
  fetchLans?: boolean;
  /** Injectable for tests; default the global fetch. */
  fetch?: typeof fetch;
  userAgent?: string;
}

export const DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024;

/** Options for a client from the parsed `agent.remote` section (credentials read separately). */
export const remoteClientOptions = (remote: RemoteConfig, credentials: RemoteCredentials): RemoteClientOptions => ({
  baseUrl: remote.baseUrl, accountId: remote.accountId, siteId: remote.siteId, credentials, timeoutMs: remote.timeoutMs,
});

type Fetched =
  | { kind: 'ok'; status: number; body: unknown; etag?: string }
  | { kind: 'not-modified'; etag?: string }
  | { kind: 'error'; errorKind: SourceErrorKind; message: string };

export class RemoteClient {
  private readonly base: string;
  private readonly timeoutMs: number;
  private readonly maxBytes: number;
  private readonly maxPages: number;
  private readonly fetchLans: boolean;
  private readonly doFetch: typeof fetch;
  private readonly headers: Record<string, string>;
  /** ETag of the last complete single-page ACL list (none after a paginated one). */
  private etag: string | undefined;

  constructor(options: RemoteClientOptions) {
    this.base = `${options.baseUrl.replace(/\/+$/, '')}/accounts/${encodeURIComponent(options.accountId)}/magic/sites/${encodeURIComponent(options.siteId)}`;
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.maxBytes = options.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
    this.maxPages = options.maxPages ?? 50;
    this.fetchLans = options.fetchLans ?? true;
    this.doFetch = options.fetch ?? fetch;
    const c = options.credentials;
    this.headers = {
      Accept: 'application/json',
      'User-Agent': options.userAgent ?? 'connector-acl',
      ...('token' in c ? { Authorization: `Bearer ${c.token}` } : { 'X-Auth-Email': c.email, 'X-Auth-Key': c.key }),
    };
  }

  /** `…/magic/sites/{site_id}/acls`, for messages. */
  get aclsUrl(): string {
    return `${this.base}/acls`;
  }

  /** Forget the ETag: the next poll fetches the full list. */
  resetCache(): void {
    this.etag = undefined;
  }

  /**
   * The site's ACLs (all pages) and, when they changed, its LANs. `unchanged` when the server
   * answered 304 to our If-None-Match. `revision` is the server's ETag when it sent one.
   */
  async poll(): Promise<SourceResult> {
    const first = await this.get(`${this.base}/acls`, this.etag);
    if (first.kind === 'error') return first;
    if (first.kind === 'not-modified') return { kind: 'unchanged', revision: this.etag };
    const page = parseListEnvelope(first.body, 'acls');
    if (page.kind === 'error') return page;
    const acls = [...page.items];
    const pages = page.totalPages;
    if (pages > this.maxPages) {
      return err('malformed', `${this.aclsUrl}: ${pages} pages of ACLs, more than the ${this.maxPages} this client fetches`);
    }
    for (let n = 2; n <= pages; n++) {
      const next = await this.get(`${this.base}/acls?page=${n}`);
      if (next.kind === 'error') return { ...next, message: `page ${n}: ${next.message}` };
      if (next.kind === 'not-modified') return err('http', `${this.aclsUrl}?page=${n}: unexpected 304`);
      const p = parseListEnvelope(next.body, 'acls');
      if (p.kind === 'error') return { ...p, message: `page ${n}: ${p.message}` };
      if (p.items.length === 0) break;
      acls.push(...p.items);
    }
    const checked = checkAcls(acls);
    if (checked.kind === 'error') return checked;
    // With pages, an ETag for page 1 says nothing about page 2: always fetch all of them.
    this.etag = pages > 1 ? undefined : first.etag;
    const lans = this.fetchLans ? await this.lans() : undefined;
    return { kind: 'acls', acls: checked.acls, ...(lans && lans.kind === 'lans' ? { lans: lans.lans } : {}), revision: this.etag };
  }

  /** The site's LANs (`GET …/lans`). */
  async lans(): Promise<{ kind: 'lans'; lans: LanInfo[] } | Extract<SourceResult, { kind: 'error' }>> {
    const r = await this.get(`${this.base}/lans`);
    if (r.kind === 'error') return r;
    if (r.kind === 'not-modified') return err('http', `${this.base}/lans: unexpected 304`);
    const page = parseListEnvelope(r.body, 'lans');
    if (page.kind === 'error') return page;
    const lans: LanInfo[] = [];
    for (const [i, l] of page.items.entries()) {
      if (!isRecord(l) || typeof l.id !== 'string') return err('malformed', `lans: result[${i}] is not a LAN with an id`);
      const iface = typeof l.interface === 'string' ? l.interface : typeof l.physport === 'number' ? `port ${l.physport}` : undefined;
      lans.push({ id: l.id, name: typeof l.name === 'string' ? l.name : l.id, ...(iface ? { interface: iface } : {}) });
    }
    return { kind: 'lans', lans };
  }

  private async get(url: string, ifNoneMatch?: string): Promise<Fetched> {
    const signal = AbortSignal.timeout(this.timeoutMs);
    const headers = ifNoneMatch ? { ...this.headers, 'If-None-Match': ifNoneMatch } : this.headers;
    let res: Response;
    try {
      res = await this.doFetch(url, { headers, signal, redirect: 'manual' });
    } catch (e) {
      return networkError(url, e, this.timeoutMs);
    }
    if (res.status === 304) {
      await res.body?.cancel().catch(() => undefined);
      return ifNoneMatch ? { kind: 'not-modified', etag: ifNoneMatch } : err('http', `${url}: 304 without If-None-Match`);
    }
    if (res.status >= 300 && res.status < 400) {
      // Credentials are not forwarded to wherever a redirect points: base_url must be the final URL.
      await res.body?.cancel().catch(() => undefined);
      return err('http', `${url}: HTTP ${res.status} redirect to ${res.headers.get('location') ?? '(no Location)'}; set base_url to the final URL`);
    }
    const text = await readCapped(res, this.maxBytes).catch((e: unknown) => e as Error);
    if (text instanceof Error) {
      if (text instanceof TooLarge) return err('malformed', `${url}: response larger than ${this.maxBytes} bytes`);
      return networkError(url, text, this.timeoutMs);
    }
    let body: unknown;
    let parsed = true;
    try {
      body = JSON.parse(text);
    } catch {
      parsed = false;
    }
    if (res.status === 401 || res.status === 403) {
      return err('auth', `${url}: HTTP ${res.status}${describeErrors(body) ?? ''}: check the API token or e-mail + key`);
    }
    if (res.status < 200 || res.status > 299) {
      return err('http', `${url}: HTTP ${res.status}${(parsed && describeErrors(body)) || (text ? `: ${snippet(text)}` : '')}`);
    }
    if (!parsed) return err('malformed', `${url}: the response is not JSON: ${snippet(text)}`);
    if (isRecord(body) && body.success === false) {
      return err('api-error', `${url}: the API said "success": false${describeErrors(body) ?? ''}`);
    }
    return { kind: 'ok', status: res.status, body, etag: res.headers.get('etag') ?? undefined };
  }
}

const err = (errorKind: SourceErrorKind, message: string): Extract<SourceResult, { kind: 'error' }> => ({ kind: 'error', errorKind, message });

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function parseListEnvelope(body: unknown, what: string):
  | { kind: 'page'; items: unknown[]; totalPages: number }
  | Extract<SourceResult, { kind: 'error' }> {
  if (!isRecord(body) || !('result' in body)) return err('malformed', `${what}: the response is not a Cloudflare envelope (no "result")`);
  if (body.success !== true) return err('malformed', `${what}: the envelope has no "success": true`);
  if (!Array.isArray(body.result)) return err('malformed', `${what}: "result" is not a list`);
  const info = body.result_info;
  let totalPages = 1;
  if (isRecord(info) && info.total_pages !== undefined) {
    if (typeof info.total_pages !== 'number' || !Number.isInteger(info.total_pages) || info.total_pages < 0) {
      return err('malformed', `${what}: result_info.total_pages is not a whole number`);
    }
    totalPages = Math.max(1, info.total_pages);
  }
  return { kind: 'page', items: body.result, totalPages };
}

function checkAcls(items: unknown[]): { kind: 'ok'; acls: AclObject[] } | Extract<SourceResult, { kind: 'error' }> {
  for (const [i, a] of items.entries()) {
    if (!isRecord(a) || typeof a.id !== 'string') return err('malformed', `acls: result[${i}] is not an ACL object with an id`);
  }
  return { kind: 'ok', acls: items as AclObject[] };
}

function describeErrors(body: unknown): string | undefined {
  if (!isRecord(body) || !Array.isArray(body.errors) || body.errors.length === 0) return undefined;
  const parts = body.errors.map((e) => (isRecord(e) ? `${e.code !== undefined ? `${String(e.code)} ` : ''}${String(e.message ?? '')}`.trim() : String(e)));
  return `: ${parts.join('; ')}`;
}

const snippet = (text: string): string => {
  const flat = text.replace(/\s+/g, ' ').trim();
  return JSON.stringify(flat.length > 120 ? `${flat.slice(0, 120)}…` : flat);
};

function networkError(url: string, e: unknown, timeoutMs: number): Extract<SourceResult, { kind: 'error' }> {
  const error = e as Error & { cause?: { code?: string; message?: string } };
  if (error.name === 'TimeoutError' || error.name === 'AbortError') return err('timeout', `${url}: no complete answer within ${timeoutMs} ms`);
  const cause = error.cause;
  const detail = cause?.code ?? cause?.message ?? error.message;
  return err('unreachable', `${url}: ${detail}`);
}

class TooLarge extends Error {}

/** The body as text, refusing (and cancelling) it as soon as it passes `max` bytes. */
async function readCapped(res: Response, max: number): Promise<string> {
  const declared = Number(res.headers.get('content-length'));
  if (Number.isFinite(declared) && declared > max) {
    await res.body?.cancel().catch(() => undefined);
    throw new TooLarge();
  }
  if (!res.body) return '';
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > max) {
      await reader.cancel().catch(() => undefined);
      throw new TooLarge();
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString('utf8');
}

export interface BackoffOptions {
  /** First delay, and the floor of every delay (ms). */
  minMs: number;
  /** Ceiling of every delay (ms). */
  maxMs: number;
  /** Growth of the ceiling per failure (default 2). */
  factor?: number;
  /** [0, 1) source; default Math.random. */
  random?: () => number;
  /** ms clock for nextAt; default Date.now. */
  now?: () => number;
}

/**
 * Exponential backoff with full jitter: after the n-th consecutive failure (n from 0) the delay is
 * uniform in [minMs, min(maxMs, minMs·factor^n)]. `reset()` after a success starts over. Pure: the
 * caller sleeps.
 */
export class Backoff {
  private failures = 0;
  private readonly factor: number;
  private readonly random: () => number;
  private readonly now: () => number;

  constructor(private readonly options: BackoffOptions) {
    if (!(options.minMs >= 0) || !(options.maxMs >= options.minMs)) throw new RangeError('Backoff needs 0 <= minMs <= maxMs');
    this.factor = options.factor ?? 2;
    if (!(this.factor >= 1)) throw new RangeError('Backoff factor must be >= 1');
    this.random = options.random ?? Math.random;
    this.now = options.now ?? Date.now;
  }

  /** Consecutive failures so far. */
  get attempts(): number {
    return this.failures;
  }

  /** The upper bound of the next delay. */
  ceiling(): number {
    const { minMs, maxMs } = this.options;
    // Exponent capped so the power cannot overflow to Infinity after many failures.
    return Math.min(maxMs, minMs * this.factor ** Math.min(this.failures, 64));
  }

  /** The delay before the next attempt (counts a failure). */
  next(): number {
    const ceiling = this.ceiling();
    const r = Math.min(Math.max(this.random(), 0), 1);
    this.failures++;
    return Math.round(this.options.minMs + r * (ceiling - this.options.minMs));
  }

  /** The clock time of the next attempt (counts a failure). */
  nextAt(): number {
    return this.now() + this.next();
  }

  reset(): void {
    this.failures = 0;
  }
}
