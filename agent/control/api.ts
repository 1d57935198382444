// The local ACL API: Cloudflare's Magic WAN site ACL endpoints, envelope and status codes, served
// from the SQLite store. Every write is enforced (by the injected Enforcer) before it commits:
// an accepted policy is an enforced policy, a refused one changes nothing.
//
//   GET/HEAD  /client/v4/accounts/{account_id}/magic/sites/{site_id}/acls            list
//   POST      …/acls                                                               create
//   GET/HEAD/PUT/PATCH/DELETE …/acls/{acl_id}                                       one ACL
//   GET/HEAD  …/lans, …/lans/{lan_id}                                              the site's LANs
import { createHash, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { Site } from '../policy/model.js';
import { formatProblem, type Problem } from '../policy/problems.js';
import { urlHost } from './config.js';
import type { AclObject, ApiMessage, EnforceOutcome, Enforcer, LanInfo } from './contracts.js';
import type { ApiCredentials } from './secrets.js';
import { StoreCommitError, type AclFields, type AclStore, type StoreTx } from './store.js';

export type { ApiCredentials } from './secrets.js';

export const DEFAULT_MAX_BODY_BYTES = 1024 * 1024;

/** The `code` of every error and message this API returns (documented in docs/operations.md). */
export const API_CODES = {
  /** messages: a warning about the written ACL (e.g. "Any" + unidirectional breaks TCP). */
  warning: 1000,
  /** errors: the ACL (or the set it would make) fails validation; one error per problem. */
  invalid: 1001,
  /** errors: the body is JSON but not an ACL object, or its id contradicts the URL. */
  badRequest: 1002,
  malformedJson: 1003,
  contentType: 1004,
  tooLarge: 1005,
  aclNotFound: 1006,
  methodNotAllowed: 1007,
  /** errors: the validated set could not be applied; the previous policies stay enforced. */
  applyFailed: 1010,
  /** errors: the store could not save the change. */
  storeFailed: 1011,
  /** Cloudflare's "No route for that URI". */
  noRoute: 7000,
  /** Cloudflare's "Could not route to …, perhaps your object identifier is invalid?" (unknown account or site). */
  unknownObject: 7003,
  /** Cloudflare's "Authentication error" (401 missing, 403 wrong). */
  auth: 10000,
} as const;

export interface ApiHandlerOptions {
  accountId: string;
  siteId: string;
  store: AclStore;
  enforce: Enforcer;
  /** The site's LANs, asked at each request (so a config reload shows). */
  lans: () => readonly LanInfo[];
  credentials: ApiCredentials;
  logger: Logger;
  /** Request bodies above this are refused with 413 (default 1 MiB). */
  maxBodyBytes?: number;
}

export interface ApiServerOptions extends ApiHandlerOptions {
  listen: { host: string; port: number };
}

export interface ApiServer {
  server: http.Server;
  host: string;
  /** The bound port (the real one when listen.port was 0). */
  port: number;
  /** `http://host:port/client/v4` */
  baseUrl: string;
  /** `…/accounts/{account_id}/magic/sites/{site_id}/acls` */
  aclsUrl: string;
  /** Stops accepting, lets requests in flight (and their writes) finish, then closes. */
  close(): Promise<void>;
}

export interface Envelope<T = unknown> {
  errors: ApiMessage[];
  messages: ApiMessage[];
  result: T | null;
  success: boolean;
}

export const envelope = <T>(result: T | null, messages: ApiMessage[] = [], errors: ApiMessage[] = []): Envelope<T> =>
  ({ errors, messages, result, success: errors.length === 0 });

/** What `GET …/lans` lists for a site: id, name, interface. */
export const lansOf = (site: Pick<Site, 'lans'>): LanInfo[] => site.lans.map((l) => ({ id: l.id, name: l.name, interface: l.interface }));

/** A problem as one line naming the policy and field. Policy problems omit the (synthetic) file name. */
export const problemText = (p: Problem): string => formatProblem(p.policy ? { ...p, file: undefined } : p);

export async function startApiServer(options: ApiServerOptions): Promise<ApiServer> {
  const handler = createApiHandler(options);
  const server = http.createServer(handler);
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.listen.port, options.listen.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const host = options.listen.host;
  const baseUrl = `http://${urlHost(host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host, address.port)}/client/v4`;
  let closing: Promise<void> | undefined;
  return {
    server,
    host,
    port: address.port,
    baseUrl,
    aclsUrl: `${baseUrl}/accounts/${options.accountId}/magic/sites/${options.siteId}/acls`,
    close: () => (closing ??= closeServer(server)),
  };
}

async function closeServer(server: http.Server): Promise<void> {
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  server.closeIdleConnections();
  // Requests in flight finish (a write that is being enforced commits or rolls back); give up after 10 s.
  const timer = setTimeout(() => server.closeAllConnections(), 10_000);
  timer.unref();
  await closed;
  clearTimeout(timer);
}

const ROUTE = /^\/client\/v4\/accounts\/([^/]+)\/magic\/sites\/([^/]+)\/(acls|lans)(?:\/([^/]+))?\/?$/;

/** A finished response: status, body and extra headers. */
interface Reply {
  status: number;
  body?: Envelope;
  headers?: Record<string, string>;
  /** Close the connection after replying (the request body was not read). */
  close?: boolean;
}

class Refusal extends Error {
  constructor(readonly reply: Reply) {
    super(`refused with ${reply.status}`);
  }
}

const fail = (status: number, code: number, message: string, headers?: Record<string, string>): Reply =>
  ({ status, body: envelope(null, [], [{ code, message }]), headers });

/** The request handler alone, for a caller that runs its own server. */
export function createApiHandler(options: ApiHandlerOptions): http.RequestListener {
  const maxBody = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const verify = credentialChecker(options.credentials);
  const log = options.logger;

  return (req, res) => {
    const started = process.hrtime.bigint();
    const fields: Record<string, unknown> = {};
    const remote = req.socket.remoteAddress;
    res.on('finish', () => {
      log.info({
        method: req.method,
        path: (req.url ?? '').split('?')[0],
        status: res.statusCode,
        ms: Number((process.hrtime.bigint() - started) / 1000n) / 1000,
        remote,
        ...fields,
      }, 'request');
    });
    handle(req, fields).then(
      (reply) => send(res, reply),
      (e: unknown) => {
        if (e instanceof Refusal) return send(res, e.reply);
        log.error({ err: e, method: req.method, path: req.url }, 'request failed');
        send(res, fail(500, API_CODES.storeFailed, `internal error: ${(e as Error).message ?? String(e)}`));
      },
    );
  };

  async function handle(req: http.IncomingMessage, fields: Record<string, unknown>): Promise<Reply> {
    const auth = verify(req);
    fields.auth = auth.method;
    if (!auth.ok) return { ...auth.reply, close: req.method !== 'GET' && req.method !== 'HEAD' };

    const pathname = (req.url ?? '/').split('?')[0]!;
    const m = ROUTE.exec(pathname);
    if (!m) return fail(404, API_CODES.noRoute, `No route for that URI: ${pathname}`);
    let account: string, site: string, objectId: string | undefined;
    try {
      [account, site, objectId] = [decodeURIComponent(m[1]!), decodeURIComponent(m[2]!), m[4] === undefined ? undefined : decodeURIComponent(m[4])];
    } catch {
      return fail(404, API_CODES.noRoute, `No route for that URI: ${pathname}`);
    }
    const collection = m[3] as 'acls' | 'lans';
    if (account !== options.accountId || site !== options.siteId) {
      return fail(404, API_CODES.unknownObject,
        `Could not route to /accounts/${account}/magic/sites/${site}: unknown account or site, perhaps your object identifier is invalid?`);
    }
    if (objectId !== undefined) fields.id = objectId;
    const method = req.method ?? 'GET';
    const allowed = collection === 'lans' ? ['GET', 'HEAD'] : objectId === undefined ? ['GET', 'HEAD', 'POST'] : ['GET', 'HEAD', 'PUT', 'PATCH', 'DELETE'];
    if (!allowed.includes(method)) {
      return { ...fail(405, API_CODES.methodNotAllowed, `${method} is not allowed on ${pathname} (allowed: ${allowed.join(', ')})`, { Allow: allowed.join(', ') }), close: true };
    }

    if (collection === 'lans') return lans(objectId);
    if (method === 'GET' || method === 'HEAD') return objectId === undefined ? list(req) : getOne(objectId);

    if (method === 'DELETE') return write('delete', objectId!, {}, fields);
    const body = await readJsonObject(req, maxBody);
    if (method === 'POST') return write('create', undefined, body, fields);
    if ('id' in body && body.id !== objectId) {
      return fail(400, API_CODES.badRequest, `id: ${JSON.stringify(body.id)} in the body differs from the URL's ${objectId}; leave it out or make them equal`);
    }
    return write(method === 'PUT' ? 'replace' : 'patch', objectId!, body, fields);
  }

  function lans(id: string | undefined): Reply {
    const all = options.lans().map((l) => ({ id: l.id, name: l.name, ...(l.interface ? { interface: l.interface } : {}) }));
    if (id === undefined) return { status: 200, body: envelope(all) };
    const lan = all.find((l) => l.id === id);
    return lan ? { status: 200, body: envelope(lan) } : fail(404, API_CODES.unknownObject, `LAN ${id} is not a LAN of this site`);
  }

  function list(req: http.IncomingMessage): Reply {
    const { revision, entries } = options.store.snapshot();
    const etag = `"${options.store.instance}-${revision}"`;
    const headers = { ETag: etag };
    if (matchesEtag(req.headers['if-none-match'], etag)) return { status: 304, headers };
    return { status: 200, body: envelope(entries.map((e) => e.acl)), headers };
  }

  function getOne(id: string): Reply {
    const acl = options.store.get(id);
    return acl ? { status: 200, body: envelope(acl) } : notFound(id);
  }

  async function write(kind: 'create' | 'replace' | 'patch' | 'delete', id: string | undefined, body: AclFields, fields: Record<string, unknown>): Promise<Reply> {
    const notes: ApiMessage[] = [];
    if (kind === 'create' && 'id' in body) {
      notes.push({ code: API_CODES.warning, message: `id: ignored in a create; the server assigns the id` });
    }
    let committed: { acl: AclObject; warnings: Problem[] };
    try {
      committed = await options.store.transaction(async (tx) => {
        const acl = change(tx, kind, id, body);
        if (!acl) throw new Refusal(notFound(id!));
        const outcome = await enforceSafely(tx.list());
        if (!outcome.ok) throw new Refusal(refusedReply(outcome, acl.id));
        return { acl, warnings: outcome.warnings };
      });
    } catch (e) {
      if (e instanceof Refusal) {
        fields.refused = e.reply.status;
        return e.reply;
      }
      if (e instanceof StoreCommitError) return commitFailed(e);
      throw e;
    }
    fields.id = committed.acl.id;
    fields.write = kind;
    const messages = [...notes, ...committed.warnings.filter((w) => w.severity === 'warning' && w.policy?.id === committed.acl.id)
      .map((w) => ({ code: API_CODES.warning, message: problemText(w) }))];
    if (messages.length > 0) fields.warnings = messages.length;
    return { status: 200, body: envelope(kind === 'delete' ? { id: committed.acl.id } : committed.acl, messages) };
  }

  async function enforceSafely(acls: AclObject[]): Promise<EnforceOutcome> {
    try {
      return await options.enforce(acls);
    } catch (e) {
      log.error({ err: e }, 'enforcer failed');
      return { ok: false, reason: 'apply-failed', problems: [{ severity: 'error', message: (e as Error).message ?? String(e) }] };
    }
  }

  /** The kernel may hold the candidate set while the store kept the old one: enforce the store's again. */
  async function commitFailed(e: StoreCommitError): Promise<Reply> {
    log.error({ err: e.cause }, 'store commit failed; re-enforcing the stored policies');
    const again = await enforceSafely(options.store.list());
    const tail = again.ok ? 'the previous policies were enforced again' : 'enforcing the previous policies again failed too';
    return fail(500, API_CODES.storeFailed, `${e.message}: the change was not saved; ${tail}`);
  }

  function notFound(id: string): Reply {
    return fail(404, API_CODES.aclNotFound, `ACL ${id} not found`);
  }
}

function change(tx: StoreTx, kind: 'create' | 'replace' | 'patch' | 'delete', id: string | undefined, body: AclFields): AclObject | undefined {
  switch (kind) {
    case 'create': return tx.create(body);
    case 'replace': return tx.replace(id!, body);
    case 'patch': return tx.patch(id!, body);
    case 'delete': {
      const before = tx.get(id!);
      return before && tx.delete(id!) ? before : undefined;
    }
  }
}

function refusedReply(outcome: Extract<EnforceOutcome, { ok: false }>, id: string): Reply {
  const errors = outcome.problems.filter((p) => p.severity === 'error');
  const warnings = outcome.problems.filter((p) => p.severity === 'warning' && p.policy?.id === id)
    .map((w) => ({ code: API_CODES.warning, message: problemText(w) }));
  if (outcome.reason === 'invalid') {
    const list = errors.length > 0 ? errors : [{ severity: 'error' as const, message: 'the policies do not validate' }];
    return { status: 400, body: envelope(null, warnings, list.map((p) => ({ code: API_CODES.invalid, message: problemText(p) }))) };
  }
  const why = errors.map(problemText);
  return {
    status: 500,
    body: envelope(null, warnings, [
      { code: API_CODES.applyFailed, message: 'the change could not be applied and was not saved; the previous policies stay enforced' },
      ...why.map((message) => ({ code: API_CODES.applyFailed, message })),
    ]),
  };
}

/** Reads and parses a JSON object body; throws a Refusal (400/413) otherwise. */
async function readJsonObject(req: http.IncomingMessage, max: number): Promise<AclFields> {
  const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
  if (type !== 'application/json' && !/^application\/[a-z0-9.+-]+\+json$/.test(type)) {
    throw new Refusal({
      ...fail(400, API_CODES.contentType, `Content-Type must be application/json, not ${type ? `"${type}"` : 'missing'} (curl: --json '{…}')`),
      close: true,
    });
  }
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > max) throw new Refusal(tooLarge(max));
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > max) throw new Refusal(tooLarge(max)); // stop reading: the connection closes after the reply
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (text.trim() === '') throw new Refusal(fail(400, API_CODES.badRequest, 'the request body is empty: send the ACL as a JSON object'));
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new Refusal(fail(400, API_CODES.malformedJson, `malformed JSON in the request body: ${(e as Error).message}`));
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    const what = Array.isArray(value) ? 'a list' : value === null ? 'null' : typeof value;
    throw new Refusal(fail(400, API_CODES.badRequest, `the request body must be a JSON object (one ACL), not ${what}`));
  }
  return value as AclFields;
}

const tooLarge = (max: number): Reply =>
  ({ ...fail(413, API_CODES.tooLarge, `the request body is larger than ${max} bytes`), close: true });

function send(res: http.ServerResponse, reply: Reply): void {
  if (res.headersSent) return;
  const socket = res.socket;
  const headers: Record<string, string> = { 'Cache-Control': 'no-store', ...reply.headers };
  if (reply.close) headers.Connection = 'close';
  if (reply.body === undefined) {
    res.writeHead(reply.status, headers).end();
  } else {
    const text = `${JSON.stringify(reply.body)}\n`;
    res.writeHead(reply.status, { ...headers, 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': String(Buffer.byteLength(text)) });
    res.end(text);
  }
  // Unread request body (refused before or while reading it): do not drain it, close instead.
  if (reply.close && socket) res.once('finish', () => socket.destroySoon());
}

function matchesEtag(header: string | undefined, etag: string): boolean {
  if (!header) return false;
  return header.split(',').map((s) => s.trim().replace(/^W\//, '')).some((t) => t === etag || t === '*');
}

type AuthResult = { ok: true; method: string } | { ok: false; method: string; reply: Reply };

/** Bearer token and/or X-Auth-Email + X-Auth-Key, compared in constant time. */
function credentialChecker(creds: ApiCredentials): (req: http.IncomingMessage) => AuthResult {
  if (!creds.token && !(creds.email && creds.key)) throw new Error('the API needs credentials: a token, or an e-mail and a key');
  const digest = (s: string) => createHash('sha256').update(s).digest();
  const same = (a: Buffer, b: Buffer) => timingSafeEqual(a, b);
  const token = creds.token ? digest(creds.token) : undefined;
  const email = creds.email ? digest(creds.email.toLowerCase()) : undefined;
  const key = creds.key ? digest(creds.key) : undefined;
  const accepted = [token && 'Authorization: Bearer <token>', email && 'X-Auth-Email + X-Auth-Key'].filter(Boolean).join(' or ');
  const missing = (message: string): AuthResult => ({
    ok: false, method: 'none',
    reply: fail(401, API_CODES.auth, `Authentication error: ${message}`, { 'WWW-Authenticate': 'Bearer realm="connector-acl"' }),
  });
  const wrong = (method: string, message: string): AuthResult => ({ ok: false, method, reply: fail(403, API_CODES.auth, `Authentication error: ${message}`) });

  return (req) => {
    const authorization = header(req, 'authorization');
    const xEmail = header(req, 'x-auth-email');
    const xKey = header(req, 'x-auth-key');
    if (authorization === undefined && xEmail === undefined && xKey === undefined) return missing(`missing credentials: send ${accepted}`);
    let presented = '';
    if (authorization !== undefined) {
      const m = /^Bearer\s+(\S+)\s*$/i.exec(authorization);
      if (!m) return missing('the Authorization header must be "Bearer <token>"');
      // Always hash and compare, so timing does not say whether a token is configured.
      const ok = same(digest(m[1]!), token ?? digest('\0no token configured'));
      if (ok && token) return { ok: true, method: 'bearer' };
      presented = 'bearer';
    }
    if (xEmail !== undefined || xKey !== undefined) {
      if (xEmail === undefined || xKey === undefined) return missing('X-Auth-Email and X-Auth-Key must be sent together');
      const okEmail = same(digest(xEmail.trim().toLowerCase()), email ?? digest('\0'));
      const okKey = same(digest(xKey.trim()), key ?? digest('\0no key configured'));
      if (okEmail && okKey && email && key) return { ok: true, method: 'key' };
      presented = presented ? `${presented}+key` : 'key';
    }
    return wrong(presented, presented === 'bearer' ? 'invalid API token' : 'invalid credentials');
  };
}

function header(req: http.IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}
