// The remote control-plane client against a fault-injecting server and against the real local API:
// one SourceResult per outcome (acls, unchanged, and each error kind), credentials and ETags sent
// as they should be, pagination, size cap; secret files; the Backoff schedule.
import t from 'tap';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Backoff, readRemoteCredentials, readSecretFile, RemoteClient, SecretFileError, type RemoteClientOptions } from '../agent/control/remote.js';
import { ACCOUNT_ID, LAN1, LAN2, SITE_ID, TOKEN, EMAIL, KEY, bearer, call, runApi, secretFile, seedCreateBody, tempDir } from './support/api-fixture.js';
import { cfEnvelope, FaultServer, type Fault } from './support/fault-server.js';

const ACL = { id: 'a1', name: 'one', lan_1: { lan_id: LAN1 }, lan_2: { lan_id: LAN2 }, protocols: ['udp'] };
const LANS = [{ id: LAN1, name: 'LAN 1', physport: 2 }, { id: LAN2, name: 'LAN 2', interface: 'lan2' }];
const ACLS_PATH = `/client/v4/accounts/${ACCOUNT_ID}/magic/sites/${SITE_ID}/acls`;

/** A fault server answering `acls` for the ACL list and the LANs for `…/lans`. */
async function serve(t: { teardown(fn: () => unknown): void }, acls: (path: string, i: number, headers: http.IncomingHttpHeaders) => Fault): Promise<FaultServer> {
  const server = await FaultServer.start((req, i) =>
    req.url.split('?')[0]!.endsWith('/lans') ? { kind: 'json', body: cfEnvelope(LANS) } : acls(req.url, i, req.headers));
  t.teardown(() => server.close());
  return server;
}

const client = (server: FaultServer, over: Partial<RemoteClientOptions> = {}) => new RemoteClient({
  baseUrl: server.baseUrl, accountId: ACCOUNT_ID, siteId: SITE_ID, credentials: { token: TOKEN }, timeoutMs: 300, ...over,
});

t.test('a good answer: the ACLs and LANs, sent with the Bearer token', async (t) => {
  const server = await serve(t, () => ({ kind: 'json', body: cfEnvelope([ACL]) }));
  const result = await client(server).poll();
  t.same(result, {
    kind: 'acls', acls: [ACL],
    lans: [{ id: LAN1, name: 'LAN 1', interface: 'port 2' }, { id: LAN2, name: 'LAN 2', interface: 'lan2' }],
    revision: undefined,
  });
  t.equal(server.requests[0]!.url, ACLS_PATH);
  t.equal(server.requests[0]!.headers.authorization, `Bearer ${TOKEN}`);
  t.equal(server.requests[0]!.headers['if-none-match'], undefined);
  t.equal(server.requests[1]!.url, ACLS_PATH.replace(/acls$/, 'lans'));
});

t.test('e-mail + key credentials are sent as X-Auth-Email / X-Auth-Key', async (t) => {
  const server = await serve(t, () => ({ kind: 'json', body: cfEnvelope([]) }));
  const result = await client(server, { credentials: { email: EMAIL, key: KEY }, fetchLans: false }).poll();
  t.same(result, { kind: 'acls', acls: [], revision: undefined });
  t.equal(server.requests[0]!.headers['x-auth-email'], EMAIL);
  t.equal(server.requests[0]!.headers['x-auth-key'], KEY);
  t.equal(server.requests[0]!.headers.authorization, undefined);
  t.equal(server.requests.length, 1, 'no …/lans when fetchLans is false');
});

t.test('ETag: If-None-Match on the next poll, 304 is unchanged, a new ETag is a new set', async (t) => {
  let version = 1;
  const server = await serve(t, (_p, _i, headers) => {
    const etag = `"v${version}"`;
    if (headers['if-none-match'] === etag) return { kind: 'raw', status: 304, body: '', headers: { ETag: etag } };
    return { kind: 'json', body: cfEnvelope(version === 1 ? [ACL] : []), headers: { ETag: etag } };
  });
  const c = client(server, { fetchLans: false });
  t.match(await c.poll(), { kind: 'acls', acls: [ACL], revision: '"v1"' });
  t.same(await c.poll(), { kind: 'unchanged', revision: '"v1"' });
  t.equal(server.requests[1]!.headers['if-none-match'], '"v1"');
  version = 2;
  t.same(await c.poll(), { kind: 'acls', acls: [], revision: '"v2"' });
  c.resetCache();
  t.match(await c.poll(), { kind: 'acls' });
  t.equal(server.requests.at(-1)!.headers['if-none-match'], undefined, 'resetCache forgets the ETag');
});

t.test('faults: each is an error result of the right kind, with a message that says what happened', async (t) => {
  const cases: { what: string; fault: Fault; kind: string; message: RegExp }[] = [
    { what: '500 with an envelope', fault: { kind: 'json', status: 500, body: { success: false, errors: [{ code: 1002, message: 'internal' }], messages: [], result: null } }, kind: 'http', message: /HTTP 500: 1002 internal/ },
    { what: '502 with HTML', fault: { kind: 'raw', status: 502, body: '<html>Bad Gateway</html>' }, kind: 'http', message: /HTTP 502: "<html>Bad Gateway<\/html>"/ },
    { what: '401', fault: { kind: 'json', status: 401, body: { success: false, errors: [{ code: 10000, message: 'Authentication error' }] } }, kind: 'auth', message: /HTTP 401: 10000 Authentication error: check the API token/ },
    { what: '403', fault: { kind: 'raw', status: 403, body: '' }, kind: 'auth', message: /HTTP 403/ },
    { what: 'garbage JSON', fault: { kind: 'raw', body: '{"result": [ {"id": "a1",' }, kind: 'malformed', message: /not JSON/ },
    { what: 'JSON but no envelope', fault: { kind: 'json', body: [ACL] }, kind: 'malformed', message: /not a Cloudflare envelope/ },
    { what: 'result not a list', fault: { kind: 'json', body: cfEnvelope({ id: 'a1' }) }, kind: 'malformed', message: /"result" is not a list/ },
    { what: 'an ACL without id', fault: { kind: 'json', body: cfEnvelope([{ name: 'x' }]) }, kind: 'malformed', message: /result\[0\] is not an ACL object with an id/ },
    { what: 'success missing', fault: { kind: 'json', body: { result: [] } }, kind: 'malformed', message: /no "success": true/ },
    { what: 'success: false with 200', fault: { kind: 'json', body: { success: false, errors: [{ code: 7003, message: 'Could not route' }], messages: [], result: null } }, kind: 'api-error', message: /"success": false: 7003 Could not route/ },
    { what: 'hang', fault: { kind: 'hang' }, kind: 'timeout', message: /no complete answer within 300 ms/ },
    { what: 'slow headers', fault: { kind: 'delay', ms: 1000, then: { kind: 'json', body: cfEnvelope([]) } }, kind: 'timeout', message: /within 300 ms/ },
    { what: 'slow drip of the body', fault: { kind: 'drip', body: JSON.stringify(cfEnvelope([ACL, ACL, ACL])), chunkBytes: 8, intervalMs: 40 }, kind: 'timeout', message: /within 300 ms/ },
    { what: 'connection dropped', fault: { kind: 'reset' }, kind: 'unreachable', message: /acls: / },
    { what: 'a redirect', fault: { kind: 'raw', status: 302, body: '', headers: { Location: 'http://example.invalid/' } }, kind: 'http', message: /HTTP 302 redirect to http:\/\/example.invalid\/; set base_url/ },
  ];
  for (const c of cases) {
    const server = await serve(t, () => c.fault);
    const started = Date.now();
    const result = await client(server).poll();
    t.match(result, { kind: 'error', errorKind: c.kind, message: c.message }, c.what);
    t.ok(Date.now() - started < 1500, `${c.what}: answered in bounded time`);
    await server.close();
  }
});

t.test('unreachable: nothing listens on the port', async (t) => {
  const probe = http.createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  const { port } = probe.address() as AddressInfo;
  await new Promise<void>((r) => probe.close(() => r()));
  const c = new RemoteClient({ baseUrl: `http://127.0.0.1:${port}/client/v4/`, accountId: ACCOUNT_ID, siteId: SITE_ID, credentials: { token: TOKEN } });
  t.match(await c.poll(), { kind: 'error', errorKind: 'unreachable', message: /ECONNREFUSED/ });
});

t.test('a response above the size cap is refused, declared or streamed', async (t) => {
  const big = JSON.stringify(cfEnvelope([{ ...ACL, description: 'x'.repeat(4000) }]));
  const declared = await serve(t, () => ({ kind: 'raw', body: big }));
  t.match(await client(declared, { maxResponseBytes: 1024 }).poll(), { kind: 'error', errorKind: 'malformed', message: /larger than 1024 bytes/ });
  const streamed = await serve(t, () => ({ kind: 'drip', body: big, chunkBytes: 512, intervalMs: 1 }));
  t.match(await client(streamed, { maxResponseBytes: 1024, timeoutMs: 2000 }).poll(), { kind: 'error', errorKind: 'malformed', message: /larger than 1024 bytes/ });
});

t.test('pagination: all pages are fetched, no ETag is trusted, the page count is bounded', async (t) => {
  const pages = [[{ ...ACL, id: 'p1' }], [{ ...ACL, id: 'p2' }], [{ ...ACL, id: 'p3' }]];
  const server = await serve(t, (path) => {
    const page = Number(new URL(path, 'http://x').searchParams.get('page') ?? '1');
    return { kind: 'json', body: cfEnvelope(pages[page - 1], { result_info: { page, per_page: 1, count: 1, total_count: 3, total_pages: 3 } }), headers: { ETag: `"page${page}"` } };
  });
  const c = client(server, { fetchLans: false });
  const result = await c.poll();
  t.same(result, { kind: 'acls', acls: pages.flat(), revision: undefined });
  t.same(server.requests.map((r) => r.url), [ACLS_PATH, `${ACLS_PATH}?page=2`, `${ACLS_PATH}?page=3`]);
  await c.poll();
  t.equal(server.requests[3]!.headers['if-none-match'], undefined, 'no If-None-Match after a paginated list');

  t.match(await client(server, { maxPages: 2 }).poll(), { kind: 'error', errorKind: 'malformed', message: /3 pages of ACLs, more than the 2/ });

  const failing = await serve(t, (path) => path.includes('page=2')
    ? { kind: 'json', status: 500, body: { success: false, errors: [], result: null } }
    : { kind: 'json', body: cfEnvelope([ACL], { result_info: { total_pages: 2 } }) });
  t.match(await client(failing).poll(), { kind: 'error', errorKind: 'http', message: /^page 2: .*HTTP 500/ });
});

t.test('a failing …/lans does not fail the poll', async (t) => {
  const server = await FaultServer.start((req) => req.url.endsWith('/lans') ? { kind: 'json', status: 404, body: {} } : { kind: 'json', body: cfEnvelope([ACL]) });
  t.teardown(() => server.close());
  t.same(await client(server).poll(), { kind: 'acls', acls: [ACL], revision: undefined });
});

t.test('against the local API (connector-acl api): ACLs, LANs, ETag/304, refused credentials', async (t) => {
  const r = await runApi(t);
  const id = (await call(r.url, { method: 'POST', headers: bearer, json: seedCreateBody() })).body.result.id as string;
  const c = new RemoteClient({ baseUrl: r.api.baseUrl, accountId: ACCOUNT_ID, siteId: SITE_ID, credentials: { email: EMAIL, key: KEY } });
  const first = await c.poll();
  t.match(first, { kind: 'acls', acls: [{ id, ...seedCreateBody() }], lans: [{ id: LAN1, name: 'LAN 1', interface: 'lan1' }, { id: LAN2 }] });
  t.match(first.kind === 'acls' && first.revision, /^"[0-9a-f]{12}-1"$/);
  t.match(await c.poll(), { kind: 'unchanged' });
  await call(`${r.url}/${id}`, { method: 'DELETE', headers: bearer });
  t.match(await c.poll(), { kind: 'acls', acls: [] });
  const wrong = new RemoteClient({ baseUrl: r.api.baseUrl, accountId: ACCOUNT_ID, siteId: SITE_ID, credentials: { token: 'nope' } });
  t.match(await wrong.poll(), { kind: 'error', errorKind: 'auth', message: /HTTP 403: 10000 Authentication error: invalid API token/ });
  const otherSite = new RemoteClient({ baseUrl: r.api.baseUrl, accountId: ACCOUNT_ID, siteId: 'other', credentials: { token: TOKEN } });
  t.match(await otherSite.poll(), { kind: 'error', errorKind: 'http', message: /HTTP 404: 7003/ });
});

t.test('readSecretFile: owner-only files are read and trimmed, anything else is refused clearly', async (t) => {
  const dir = await tempDir(t);
  t.equal(await readSecretFile(await secretFile(dir, 'ok', `  ${TOKEN}  `)), TOKEN);
  t.equal(await readSecretFile(await secretFile(dir, 'ro', TOKEN, 0o400)), TOKEN);
  for (const mode of [0o644, 0o640, 0o604, 0o660]) {
    const file = await secretFile(dir, `m${mode.toString(8)}`, TOKEN, mode);
    await t.rejects(readSecretFile(file), {
      name: 'SecretFileError',
      message: new RegExp(`is accessible by group or others \\(mode 0${mode.toString(8)}\\).*chmod 600 ${file}`),
    }, `mode ${mode.toString(8)} refused`);
  }
  await t.rejects(readSecretFile(`${dir}/missing`), { message: /missing: no such file/ });
  await t.rejects(readSecretFile(await secretFile(dir, 'empty', '')), { message: /is empty/ });
  await t.rejects(readSecretFile(await secretFile(dir, 'two', 'a\nb')), { message: /more than one line/ });
  t.ok(new SecretFileError('f', 'x') instanceof Error);

  t.same(await readRemoteCredentials({ apiTokenFile: `${dir}/ok` }), { token: TOKEN });
  t.same(await readRemoteCredentials({ email: EMAIL, authKeyFile: `${dir}/ok` }), { email: EMAIL, key: TOKEN });
  await t.rejects(readRemoteCredentials({ apiTokenFile: `${dir}/m644` }), SecretFileError);
});

t.test('Backoff: full jitter between min and an exponential ceiling, capped, reset on success', async (t) => {
  const draws = [0, 0.999999, 0.5];
  let i = 0;
  const b = new Backoff({ minMs: 100, maxMs: 1000, random: () => draws[i++ % draws.length]!, now: () => 5_000 });
  t.equal(b.ceiling(), 100);
  t.equal(b.next(), 100, 'attempt 0: [100, 100]');
  t.equal(b.ceiling(), 200);
  t.equal(b.next(), 200, 'attempt 1: random ~1 gives the ceiling');
  t.equal(b.next(), 250, 'attempt 2: 100 + 0.5 * (400 - 100)');
  t.equal(b.attempts, 3);
  t.same([b.ceiling(), (b.next(), b.ceiling()), (b.next(), b.ceiling())], [800, 1000, 1000], 'capped at maxMs');
  b.reset();
  t.equal(b.attempts, 0);
  t.equal(b.ceiling(), 100);
  i = 2;
  t.equal(b.nextAt(), 5_100, 'nextAt = clock + delay');

  const rand = new Backoff({ minMs: 50, maxMs: 30_000, factor: 3 });
  for (let n = 0; n < 200; n++) {
    const ceiling = rand.ceiling();
    const d = rand.next();
    t.ok(d >= 50 && d <= ceiling && d <= 30_000, `delay ${d} in [50, ${ceiling}]`);
  }
  t.equal(rand.ceiling(), 30_000, 'no overflow after many failures');
  const wild = new Backoff({ minMs: 10, maxMs: 20, random: () => 7 });
  t.equal(wild.next(), 10);
  t.equal(wild.next(), 20, 'an out-of-range random is clamped');
  t.throws(() => new Backoff({ minMs: 10, maxMs: 5 }), RangeError);
  t.throws(() => new Backoff({ minMs: 10, maxMs: 50, factor: 0.5 }), RangeError);
});
