// The SQLite ACL store: ids, timestamps, revisions, merge-patch, transactions that await and roll
// back, readers that only see committed data, persistence.
import t from 'tap';
import Database from 'better-sqlite3';
import path from 'node:path';
import { AclStore, mergePatch, StoreCommitError } from '../agent/control/store.js';
import { tempDir } from './support/api-fixture.js';

const acl = (name: string) => ({ name, lan_1: { lan_id: 'a', ports: [1] }, lan_2: { lan_id: 'b', subnets: ['192.0.2.1'] }, protocols: ['udp'] });

t.test('create assigns 32-hex ids, keeps the body, and lists in creation order', async (t) => {
  const store = AclStore.open(await tempDir(t));
  t.teardown(() => store.close());
  const a = await store.create({ ...acl('a'), id: 'client-chosen' });
  const b = await store.create(acl('b'));
  t.match(a.id, /^[0-9a-f]{32}$/);
  t.not(a.id, 'client-chosen', 'an id in the fields is ignored on create');
  t.not(a.id, b.id);
  t.same(a, { id: a.id, ...acl('a') });
  t.same(store.list().map((x) => x.name), ['a', 'b']);
  t.same(store.get(b.id), b);
  t.equal(store.get('nope'), undefined);
  t.equal(store.revision(), 2);
});

t.test('replace, patch and delete; revision only grows; created kept, modified moves', async (t) => {
  let clock = Date.parse('2026-01-01T00:00:00Z');
  const store = AclStore.open(await tempDir(t), { now: () => new Date(clock) });
  t.teardown(() => store.close());
  const a = await store.create(acl('a'));
  clock += 60_000;
  const replaced = await store.replace(a.id, { id: a.id, name: 'a2', lan_1: { lan_id: 'a' }, lan_2: { lan_id: 'b' } });
  t.same(replaced, { id: a.id, name: 'a2', lan_1: { lan_id: 'a' }, lan_2: { lan_id: 'b' } }, 'PUT replaces the whole object');
  const e = store.entry(a.id)!;
  t.equal(e.created, '2026-01-01T00:00:00.000Z');
  t.equal(e.modified, '2026-01-01T00:01:00.000Z');
  t.equal(e.revision, 2);

  const patched = await store.patch(a.id, { lan_2: { ports: [53], lan_name: 'B' }, protocols: ['udp'], name: null });
  t.same(patched, { id: a.id, lan_1: { lan_id: 'a' }, lan_2: { lan_id: 'b', ports: [53], lan_name: 'B' }, protocols: ['udp'] },
    'PATCH merges lan_2 field-wise, replaces the rest, null removes');
  t.equal(await store.replace('missing', acl('x')), undefined);
  t.equal(await store.patch('missing', {}), undefined);
  t.equal(await store.delete('missing'), false);
  t.equal(store.revision(), 3, 'writes to missing ids do not count');
  t.equal(await store.delete(a.id), true);
  t.equal(store.revision(), 4);
  t.same(store.list(), []);
  const b = await store.create(acl('b'));
  t.equal(store.entry(b.id)!.revision, 5);
});

t.test('mergePatch is RFC 7396 and keeps "__proto__" a plain field', async (t) => {
  t.same(mergePatch({ a: 1, b: { c: 2, d: 3 }, e: [1] }, { b: { c: null, x: 1 }, e: [2], f: 'y' }), { a: 1, b: { d: 3, x: 1 }, e: [2], f: 'y' });
  t.same(mergePatch({ a: 1 }, [1]), [1]);
  const evil = mergePatch({}, JSON.parse('{"__proto__": {"polluted": true}}')) as Record<string, unknown>;
  t.equal(({} as Record<string, unknown>).polluted, undefined);
  t.equal(Object.getPrototypeOf(evil), Object.prototype);
  t.same(Object.keys(evil), ['__proto__']);
});

t.test('a transaction that throws rolls back; readers see only committed data while one awaits', async (t) => {
  const store = AclStore.open(await tempDir(t));
  t.teardown(() => store.close());
  const kept = await store.create(acl('kept'));
  const rev = store.revision();

  await t.rejects(store.transaction(async (tx) => {
    tx.create(acl('new'));
    tx.delete(kept.id);
    t.same(tx.list().map((a) => a.name), ['new'], 'the transaction sees its own changes');
    await new Promise((r) => setTimeout(r, 10));
    t.same(store.list().map((a) => a.name), ['kept'], 'a reader meanwhile sees the committed set');
    throw new Error('enforcement failed');
  }), { message: 'enforcement failed' });
  t.same(store.list(), [kept]);
  t.equal(store.revision(), rev, 'a rolled back write does not move the revision');

  const created = await store.transaction(async (tx) => {
    const c = tx.create(acl('committed'));
    await new Promise((r) => setTimeout(r, 5));
    return c;
  });
  t.same(store.list().map((a) => a.id), [kept.id, created.id]);
});

t.test('transactions run one at a time, in order', async (t) => {
  const store = AclStore.open(await tempDir(t));
  t.teardown(() => store.close());
  let running = 0;
  let maxRunning = 0;
  const order: number[] = [];
  await Promise.all([0, 1, 2, 3, 4].map((i) => store.transaction(async (tx) => {
    running++;
    maxRunning = Math.max(maxRunning, running);
    tx.create(acl(`n${i}`));
    await new Promise((r) => setTimeout(r, 5 - i));
    order.push(i);
    running--;
  }).catch(() => undefined)));
  t.equal(maxRunning, 1);
  t.same(order, [0, 1, 2, 3, 4]);
  t.same(store.list().map((a) => a.name), ['n0', 'n1', 'n2', 'n3', 'n4']);
  // A failing transaction does not stop the queue.
  await t.rejects(store.transaction(() => {
    throw new Error('x');
  }));
  await store.create(acl('after'));
  t.equal(store.list().length, 6);
});

t.test('persists across reopen; WAL with synchronous=FULL; the database has its own instance id', async (t) => {
  const dir = await tempDir(t);
  const first = AclStore.open(path.join(dir, 'state'));
  const a = await first.create(acl('a'));
  const instance = first.instance;
  await first.close();
  const again = AclStore.open(path.join(dir, 'state'));
  t.teardown(() => again.close());
  t.same(again.list(), [a]);
  t.equal(again.revision(), 1);
  t.equal(again.instance, instance);
  t.match(instance, /^[0-9a-f]{12}$/);
  const raw = new Database(again.file, { readonly: true });
  t.teardown(() => raw.close());
  t.equal(raw.pragma('journal_mode', { simple: true }), 'wal');
  // synchronous is per connection; check the store's own setting through a write path.
  t.equal((again as unknown as { writer: Database.Database }).writer.pragma('synchronous', { simple: true }), 2, 'FULL');
});

t.test('a failed COMMIT rolls back and says so', async (t) => {
  const store = AclStore.open(await tempDir(t));
  t.teardown(() => store.close());
  const writer = (store as unknown as { writer: Database.Database }).writer;
  // A deferred foreign-key-like failure at commit: a deferred constraint violation.
  writer.exec('CREATE TABLE guard (x INTEGER REFERENCES missing_parent(id) DEFERRABLE INITIALLY DEFERRED)');
  writer.pragma('foreign_keys = ON');
  writer.exec('CREATE TABLE missing_parent (id INTEGER PRIMARY KEY)');
  await t.rejects(store.transaction((tx) => {
    tx.create(acl('doomed'));
    writer.prepare('INSERT INTO guard (x) VALUES (42)').run();
  }), StoreCommitError);
  t.same(store.list(), []);
  t.equal(store.revision(), 0);
  t.equal(writer.inTransaction, false);
});
