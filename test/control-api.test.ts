// The local ACL API over real HTTP (127.0.0.1, port 0) and a real SQLite store: the seed's curl
// requests, Cloudflare's envelope and status codes, refusals that change nothing, credentials,
// enforcement failures rolled back, warnings, ETags, serialized writes, persistence.
import t from 'tap';
import type { AclObject, Enforcer, EnforceOutcome } from '../agent/control/contracts.js';
import { API_CODES } from '../agent/control/api.js';
import {
  ACCOUNT_ID, EMAIL, KEY, LAN1, LAN2, SITE_ID, TOKEN, bearer, call, emailKey, runApi, seedCreateBody, seedEditBody,
  type RunningApi,
} from './support/api-fixture.js';

const ENVELOPE_KEYS = ['errors', 'messages', 'result', 'success'];

/** The list and revision, to show a refused request changed nothing. */
const snapshot = async (r: RunningApi) => ({ list: (await call(r.url, { headers: bearer })).body, revision: r.store.revision() });

t.test('the seed: create (X-Auth-Email/Key), edit (PUT, Bearer), delete; each answers 200 in the envelope', async (t) => {
  const r = await runApi(t);

  const created = await call(r.url, { method: 'POST', headers: emailKey, json: seedCreateBody() });
  t.equal(created.status, 200, 'create answers 200 as Cloudflare does');
  t.same(Object.keys(created.body).sort(), ENVELOPE_KEYS);
  t.equal(created.body.success, true);
  t.same(created.body.errors, []);
  t.same(created.body.messages, []);
  const id = created.body.result.id as string;
  t.match(id, /^[0-9a-f]{32}$/);
  t.same(created.body.result, { id, ...seedCreateBody() });
  t.match(created.headers.get('content-type'), /^application\/json/);

  const listed = await call(r.url, { headers: bearer });
  t.equal(listed.status, 200);
  t.same(listed.body, { errors: [], messages: [], result: [{ id, ...seedCreateBody() }], success: true });
  const one = await call(`${r.url}/${id}`, { headers: emailKey });
  t.same(one.body.result, { id, ...seedCreateBody() });

  const edited = await call(`${r.url}/${id}`, { method: 'PUT', headers: bearer, json: seedEditBody() });
  t.equal(edited.status, 200);
  t.same(edited.body.result, { id, ...seedEditBody() }, 'PUT replaces the whole object, id from the URL');
  t.same((await call(`${r.url}/${id}`, { headers: bearer })).body.result.lan_2.ports, [8080]);
  const entry = r.store.entry(id)!;
  t.ok(entry.modified >= entry.created);

  const deleted = await call(`${r.url}/${id}`, { method: 'DELETE', headers: emailKey });
  t.equal(deleted.status, 200);
  t.same(deleted.body, { errors: [], messages: [], result: { id }, success: true }, 'DELETE answers with the deleted id');
  const gone = await call(`${r.url}/${id}`, { headers: bearer });
  t.equal(gone.status, 404);
  t.same(gone.body.errors, [{ code: API_CODES.aclNotFound, message: `ACL ${id} not found` }]);
  t.equal(gone.body.success, false);
  t.same((await call(r.url, { headers: bearer })).body.result, []);
});

t.test('the seed body exactly as written (placeholder LAN names) is accepted with warnings naming the field', async (t) => {
  const r = await runApi(t);
  const body = seedCreateBody();
  body.lan_1.lan_name = '<LAN_NAME>';
  body.lan_2.lan_name = '<LAN_NAME';
  const res = await call(r.url, { method: 'POST', headers: emailKey, json: body });
  t.equal(res.status, 200);
  t.equal(res.body.messages.length, 2);
  t.match(res.body.messages[0], { code: API_CODES.warning, message: /lan_1\.lan_name: "<LAN_NAME>" differs from the site config's name "LAN 1"/ });
  t.match(res.body.messages[1].message, /lan_2\.lan_name/);
});

t.test('PATCH merges: top-level fields replaced, lan_1/lan_2 merged field-wise, null removes', async (t) => {
  const r = await runApi(t);
  const id = (await call(r.url, { method: 'POST', headers: bearer, json: seedCreateBody() })).body.result.id as string;
  const res = await call(`${r.url}/${id}`, { method: 'PATCH', headers: bearer, json: { lan_2: { ports: [443] }, protocols: ['tcp', 'udp'], description: null } });
  t.equal(res.status, 200);
  const { description: _d, ...rest } = seedCreateBody();
  t.same(res.body.result, { id, ...rest, lan_2: { ...rest.lan_2, ports: [443] }, protocols: ['tcp', 'udp'] });
  t.same(r.store.get(id), res.body.result);
  const invalid = await call(`${r.url}/${id}`, { method: 'PATCH', headers: bearer, json: { lan_2: { ports: [70000] } } });
  t.equal(invalid.status, 400);
  t.match(invalid.body.errors[0].message, /lan_2\.ports\[0\]: 70000 is out of range/);
  t.same(r.store.get(id), res.body.result, 'a refused patch changes nothing');
});

t.test('invalid policies are 400 with one error per problem naming the field, and change nothing', async (t) => {
  const r = await runApi(t);
  await call(r.url, { method: 'POST', headers: bearer, json: seedCreateBody() });
  const before = await snapshot(r);
  const cases: { what: string; body: Record<string, unknown>; message: RegExp }[] = [
    { what: 'port 0', body: { ...seedCreateBody(), lan_1: { lan_id: LAN1, ports: [0] } }, message: /lan_1\.ports\[0\]: 0 is not a valid port/ },
    { what: 'TCP unidirectional', body: { ...seedCreateBody(), unidirectional: true }, message: /unidirectional: TCP can only be bidirectional/ },
    { what: 'unknown LAN', body: { ...seedCreateBody(), lan_2: { lan_id: 'nope' } }, message: /lan_2\.lan_id: "nope" is not a LAN of this site/ },
    { what: 'lan_1 == lan_2', body: { ...seedCreateBody(), lan_2: { lan_id: LAN1 } }, message: /lan_2\.lan_id: origin and destination are the same LAN/ },
    { what: 'missing lan_2', body: { name: 'x', lan_1: { lan_id: LAN1 } }, message: /lan_2: is required/ },
    { what: 'bad protocol', body: { ...seedCreateBody(), protocols: ['sctp'] }, message: /protocols\[0\]: the string "sctp" is not a protocol/ },
  ];
  for (const c of cases) {
    const res = await call(r.url, { method: 'POST', headers: bearer, json: c.body });
    t.equal(res.status, 400, c.what);
    t.equal(res.body.success, false, c.what);
    t.equal(res.body.result, null, c.what);
    t.ok(res.body.errors.length >= 1, c.what);
    t.ok(res.body.errors.every((e: { code: number }) => e.code === API_CODES.invalid), c.what);
    t.match(res.body.errors.map((e: { message: string }) => e.message).join('\n'), c.message, c.what);
    t.match(res.body.errors[0].message, /^policy "/, `${c.what}: the message names the policy`);
  }
  const several = await call(r.url, { method: 'POST', headers: bearer, json: { name: 'bad', lan_1: { lan_id: LAN1, ports: [0] }, lan_2: { lan_id: 'nope' }, protocols: ['tcp'], unidirectional: true, forward_locally: true } });
  t.equal(several.body.errors.length, 3, 'every problem is reported, not just the first');
  // The same checks on PUT.
  const id = before.list.result[0].id as string;
  const put = await call(`${r.url}/${id}`, { method: 'PUT', headers: bearer, json: { ...seedCreateBody(), unidirectional: true } });
  t.equal(put.status, 400);
  t.same(await snapshot(r), before, 'nothing changed');
});

t.test('malformed requests: JSON, content type, body shape, id mismatch, size, method, route, unknown ids', async (t) => {
  const r = await runApi(t, { maxBodyBytes: 64 * 1024 });
  const id = (await call(r.url, { method: 'POST', headers: bearer, json: seedCreateBody() })).body.result.id as string;
  const before = await snapshot(r);
  const json = { ...bearer, 'Content-Type': 'application/json' };

  const malformed = await call(r.url, { method: 'POST', headers: json, body: '{"name": "x",' });
  t.equal(malformed.status, 400);
  t.equal(malformed.body.errors[0].code, API_CODES.malformedJson);
  t.match(malformed.body.errors[0].message, /malformed JSON/);

  const form = await call(r.url, { method: 'POST', headers: { ...bearer, 'Content-Type': 'application/x-www-form-urlencoded' }, body: '{}' });
  t.equal(form.status, 400);
  t.equal(form.body.errors[0].code, API_CODES.contentType);
  t.match(form.body.errors[0].message, /Content-Type must be application\/json.*--json/);

  const list = await call(r.url, { method: 'POST', headers: json, body: '[]' });
  t.equal(list.status, 400);
  t.match(list.body.errors[0], { code: API_CODES.badRequest, message: /must be a JSON object \(one ACL\), not a list/ });
  const empty = await call(r.url, { method: 'POST', headers: json, body: '' });
  t.equal(empty.status, 400);
  t.match(empty.body.errors[0].message, /empty/);

  const mismatch = await call(`${r.url}/${id}`, { method: 'PUT', headers: bearer, json: { ...seedEditBody(), id: 'other' } });
  t.equal(mismatch.status, 400);
  t.match(mismatch.body.errors[0].message, /id: "other" in the body differs from the URL's/);

  const big = { ...seedCreateBody(), description: 'x'.repeat(100 * 1024) };
  const tooBig = await call(r.url, { method: 'POST', headers: bearer, json: big });
  t.equal(tooBig.status, 413);
  t.match(tooBig.body.errors[0], { code: API_CODES.tooLarge, message: /larger than 65536 bytes/ });
  // Chunked, no Content-Length: the reader stops at the cap.
  const stream = new ReadableStream({
    start(controller) {
      for (let i = 0; i < 40; i++) controller.enqueue(new TextEncoder().encode(' '.repeat(4096)));
      controller.close();
    },
  });
  const chunked = await fetch(r.url, { method: 'POST', headers: json, body: stream, duplex: 'half' } as RequestInit);
  t.equal(chunked.status, 413);
  await chunked.text();

  const put = await call(r.url, { method: 'PUT', headers: bearer, json: seedCreateBody() });
  t.equal(put.status, 405);
  t.equal(put.headers.get('allow'), 'GET, HEAD, POST');
  t.equal(put.body.errors[0].code, API_CODES.methodNotAllowed);
  const postOne = await call(`${r.url}/${id}`, { method: 'POST', headers: bearer, json: seedCreateBody() });
  t.equal(postOne.status, 405);
  t.equal(postOne.headers.get('allow'), 'GET, HEAD, PUT, PATCH, DELETE');
  const lansDelete = await call(r.url.replace(/acls$/, 'lans'), { method: 'DELETE', headers: bearer });
  t.equal(lansDelete.status, 405);

  for (const method of ['GET', 'PUT', 'PATCH', 'DELETE']) {
    const res = await call(`${r.url}/0000000000000000000000000000dead`, { method, headers: bearer, json: method === 'GET' || method === 'DELETE' ? undefined : seedEditBody() });
    t.equal(res.status, 404, `${method} of an unknown id`);
    t.same(res.body.errors, [{ code: API_CODES.aclNotFound, message: 'ACL 0000000000000000000000000000dead not found' }]);
  }
  const otherAccount = await call(r.url.replace(ACCOUNT_ID, 'ffffffffffffffffffffffffffffffff'), { headers: bearer });
  t.equal(otherAccount.status, 404);
  t.match(otherAccount.body.errors[0], { code: API_CODES.unknownObject, message: /unknown account or site/ });
  const otherSite = await call(r.url.replace(SITE_ID, 'ffffffffffffffffffffffffffffffff'), { method: 'POST', headers: bearer, json: seedCreateBody() });
  t.equal(otherSite.status, 404);
  const noRoute = await call(r.url.replace('/acls', '/routes'), { headers: bearer });
  t.equal(noRoute.status, 404);
  t.equal(noRoute.body.errors[0].code, API_CODES.noRoute);

  t.same(await snapshot(r), before, 'nothing changed');
  t.ok((await call(r.url, { headers: bearer })).status === 200, 'the server still answers');
});

t.test('credentials: 401 when missing, 403 when wrong, nothing changed; either method works', async (t) => {
  const r = await runApi(t);
  const before = await snapshot(r);
  const tries: { what: string; headers: Record<string, string>; status: number; message: RegExp }[] = [
    { what: 'none', headers: {}, status: 401, message: /missing credentials/ },
    { what: 'wrong token', headers: { Authorization: `Bearer ${TOKEN}x` }, status: 403, message: /invalid API token/ },
    { what: 'token as the key', headers: { 'X-Auth-Email': EMAIL, 'X-Auth-Key': TOKEN }, status: 403, message: /invalid credentials/ },
    { what: 'wrong e-mail', headers: { 'X-Auth-Email': 'x@example.com', 'X-Auth-Key': KEY }, status: 403, message: /invalid credentials/ },
    { what: 'key without e-mail', headers: { 'X-Auth-Key': KEY }, status: 401, message: /must be sent together/ },
    { what: 'Basic scheme', headers: { Authorization: `Basic ${Buffer.from(`a:${TOKEN}`).toString('base64')}` }, status: 401, message: /Bearer <token>/ },
  ];
  for (const c of tries) {
    for (const method of ['GET', 'POST']) {
      const res = await call(r.url, { method, headers: c.headers, json: method === 'POST' ? seedCreateBody() : undefined });
      t.equal(res.status, c.status, `${c.what}, ${method}`);
      t.match(res.body, { success: false, result: null, errors: [{ code: API_CODES.auth, message: c.message }] }, `${c.what}, ${method}`);
    }
  }
  const missing = await call(r.url, {});
  t.equal(missing.headers.get('www-authenticate'), 'Bearer realm="connector-acl"');
  t.same(await snapshot(r), before, 'nothing changed');
  t.equal((await call(r.url, { headers: { 'X-Auth-Email': EMAIL.toUpperCase(), 'X-Auth-Key': KEY } })).status, 200, 'e-mail compared case-insensitively');
  t.equal((await call(r.url, { headers: { Authorization: `bearer ${TOKEN}` } })).status, 200, 'the scheme is case-insensitive');
  const logged = r.logLines.filter((l) => l.msg === 'request');
  t.notMatch(JSON.stringify(r.logLines), new RegExp(`${TOKEN}|${KEY}`), 'secrets are never logged');
  t.ok(logged.some((l) => l.status === 403 && l.auth === 'bearer'));
});

t.test('a failing Enforcer rolls the write back: apply-failed is 500, a throw is 500, invalid is 400', async (t) => {
  let mode: 'ok' | 'apply-failed' | 'throw' | 'invalid' = 'ok';
  const seen: AclObject[][] = [];
  const enforce: Enforcer = async (acls) => {
    seen.push([...acls]);
    if (mode === 'apply-failed') return { ok: false, reason: 'apply-failed', problems: [{ severity: 'error', message: 'nft: Could not process rule: No buffer space available' }] };
    if (mode === 'throw') throw new Error('netlink socket closed');
    if (mode === 'invalid') return { ok: false, reason: 'invalid', problems: [{ severity: 'error', file: 'site.yaml', path: 'tunnel', message: 'is required' }] };
    return { ok: true, warnings: [] };
  };
  const r = await runApi(t, { enforce });
  const id = (await call(r.url, { method: 'POST', headers: bearer, json: seedCreateBody() })).body.result.id as string;
  t.same(seen.at(-1)!.map((a) => a.id), [id], 'the enforcer is given the full candidate set');
  const before = await snapshot(r);

  mode = 'apply-failed';
  const failed = await call(r.url, { method: 'POST', headers: bearer, json: seedEditBody() });
  t.equal(failed.status, 500);
  t.equal(failed.body.success, false);
  t.match(failed.body.errors[0], { code: API_CODES.applyFailed, message: /not saved; the previous policies stay enforced/ });
  t.match(failed.body.errors[1].message, /No buffer space available/);
  t.equal(seen.at(-1)!.length, 2, 'the candidate held the new ACL');
  t.same(await snapshot(r), before, 'rolled back');

  const del = await call(`${r.url}/${id}`, { method: 'DELETE', headers: bearer });
  t.equal(del.status, 500);
  t.same(seen.at(-1), [], 'the candidate of a delete lacks the ACL');
  t.same(await snapshot(r), before, 'the delete was rolled back');

  mode = 'throw';
  const thrown = await call(`${r.url}/${id}`, { method: 'PUT', headers: bearer, json: seedEditBody() });
  t.equal(thrown.status, 500);
  t.match(thrown.body.errors[1].message, /netlink socket closed/);
  t.same(await snapshot(r), before);

  mode = 'invalid';
  const invalid = await call(`${r.url}/${id}`, { method: 'PATCH', headers: bearer, json: { name: 'x' } });
  t.equal(invalid.status, 400);
  t.same(invalid.body.errors, [{ code: API_CODES.invalid, message: 'site.yaml: tunnel: is required' }], 'a problem outside a policy keeps its file');
  t.same(await snapshot(r), before);

  mode = 'ok';
  t.equal((await call(`${r.url}/${id}`, { method: 'DELETE', headers: bearer })).status, 200, 'it recovers');
});

t.test('writes are serialized and reads during an enforcement see the set in force', async (t) => {
  let running = 0;
  let maxRunning = 0;
  let release!: () => void;
  let gate = new Promise<void>((res) => (release = res));
  const sizes: number[] = [];
  const enforce: Enforcer = async (acls): Promise<EnforceOutcome> => {
    running++;
    maxRunning = Math.max(maxRunning, running);
    sizes.push(acls.length);
    await gate;
    running--;
    return { ok: true, warnings: [] };
  };
  const r = await runApi(t, { enforce });
  const writes = [1, 2, 3].map((i) => call(r.url, { method: 'POST', headers: bearer, json: { ...seedCreateBody(), name: `p${i}` } }));
  await new Promise((res) => setTimeout(res, 50));
  const during = await call(r.url, { headers: bearer });
  t.same(during.body.result, [], 'a GET while the first write is enforced sees the committed (empty) set');
  release();
  gate = Promise.resolve();
  const answers = await Promise.all(writes);
  t.same(answers.map((a) => a.status), [200, 200, 200]);
  t.equal(maxRunning, 1, 'one enforcement at a time');
  t.same(sizes, [1, 2, 3], 'each candidate builds on the previous write');
  t.same((await call(r.url, { headers: bearer })).body.result.map((a: AclObject) => a.name).sort(), ['p1', 'p2', 'p3']);
});

t.test('"Any" + unidirectional is stored with a warning in messages', async (t) => {
  const r = await runApi(t);
  const body = { ...seedCreateBody(), protocols: [], unidirectional: true };
  const res = await call(r.url, { method: 'POST', headers: bearer, json: body });
  t.equal(res.status, 200);
  t.equal(res.body.success, true);
  t.same(res.body.errors, []);
  t.equal(res.body.messages.length, 1);
  t.match(res.body.messages[0], { code: API_CODES.warning, message: /unidirectional: unidirectional with all protocols \("Any"\) will break TCP traffic/ });
  const id = res.body.result.id as string;
  t.same(r.store.get(id), { id, ...body });
  // Another ACL's write does not repeat this one's warning.
  const other = await call(r.url, { method: 'POST', headers: bearer, json: { ...seedEditBody(), name: 'other' } });
  t.same(other.body.messages, []);
  // An id in a create body is ignored, with a message.
  const withId = await call(r.url, { method: 'POST', headers: bearer, json: { ...seedEditBody(), id: 'mine' } });
  t.equal(withId.status, 200);
  t.not(withId.body.result.id, 'mine');
  t.match(withId.body.messages[0].message, /id: ignored in a create/);
});

t.test('GET …/lans lists the site config\'s LANs; the list has an ETag and answers 304 until a write', async (t) => {
  const r = await runApi(t);
  const lansUrl = r.url.replace(/acls$/, 'lans');
  const lans = await call(lansUrl, { headers: bearer });
  t.equal(lans.status, 200);
  t.same(lans.body.result, [{ id: LAN1, name: 'LAN 1', interface: 'lan1' }, { id: LAN2, name: 'LAN 2', interface: 'lan2' }]);
  t.same((await call(`${lansUrl}/${LAN2}`, { headers: bearer })).body.result, { id: LAN2, name: 'LAN 2', interface: 'lan2' });
  t.equal((await call(`${lansUrl}/nope`, { headers: bearer })).status, 404);

  const first = await call(r.url, { headers: bearer });
  const etag = first.headers.get('etag')!;
  t.match(etag, /^"[0-9a-f]{12}-0"$/);
  const again = await call(r.url, { headers: { ...bearer, 'If-None-Match': etag } });
  t.equal(again.status, 304);
  t.equal(again.text, '');
  await call(r.url, { method: 'POST', headers: bearer, json: seedCreateBody() });
  const changed = await call(r.url, { headers: { ...bearer, 'If-None-Match': etag } });
  t.equal(changed.status, 200);
  t.not(changed.headers.get('etag'), etag);
  const head = await fetch(r.url, { method: 'HEAD', headers: bearer });
  t.equal(head.status, 200);
  t.equal(await head.text(), '');
});

t.test('policies survive a restart on the same state dir', async (t) => {
  const first = await runApi(t);
  const a = (await call(first.url, { method: 'POST', headers: bearer, json: seedCreateBody() })).body.result;
  const b = (await call(first.url, { method: 'POST', headers: emailKey, json: { ...seedEditBody(), protocols: ['udp'], unidirectional: true } })).body.result;
  await call(`${first.url}/${a.id}`, { method: 'PATCH', headers: bearer, json: { name: 'renamed' } });
  const listBefore = (await call(first.url, { headers: bearer })).body.result;
  await first.stop();
  const second = await runApi(t, { stateDir: first.stateDir });
  const listAfter = (await call(second.url, { headers: bearer })).body.result;
  t.same(listAfter, listBefore);
  t.same(listAfter.map((x: AclObject) => x.id), [a.id, b.id], 'creation order kept');
  t.equal(listAfter[0].name, 'renamed');
  t.equal(second.store.revision(), 3);
});

t.test('each request is logged as one JSON line', async (t) => {
  const r = await runApi(t);
  await call(r.url, { method: 'POST', headers: bearer, json: seedCreateBody() });
  await call(r.url, { method: 'POST', headers: bearer, json: { ...seedCreateBody(), lan_2: { lan_id: 'nope' } } });
  const lines = r.logLines.filter((l) => l.msg === 'request');
  t.equal(lines.length, 2);
  t.match(lines[0], { method: 'POST', status: 200, auth: 'bearer', write: 'create', id: /^[0-9a-f]{32}$/, ms: Number });
  t.match(lines[1], { method: 'POST', status: 400, refused: 400 });
});
