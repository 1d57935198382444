// The ACL store: Cloudflare ACL objects as JSON in SQLite under the state dir.
//
// Two connections to one WAL database: reads (`list`, `get`, `revision`) go through the reader and
// only ever see committed data; writes go through the writer inside `transaction`, which may await
// (the enforcer applies the candidate set to the kernel) before it commits or rolls back. So a GET
// that arrives while a write is being enforced sees the set that is in force, never the candidate.
import Database from 'better-sqlite3';
import { randomUUID } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import type { AclObject } from './contracts.js';

export const STORE_FILE = 'acls.sqlite';

/** An ACL with the store's bookkeeping (kept out of the object itself, so it stays Cloudflare-shaped). */
export interface StoredAcl {
  acl: AclObject;
  /** ISO 8601. */
  created: string;
  modified: string;
  /** The store revision of this ACL's last write. */
  revision: number;
}

/** A request body: the ACL's fields, without or with its `id`. */
export type AclFields = Record<string, unknown>;

export interface StoreOptions {
  /** Database file name inside the state dir (default `acls.sqlite`). */
  file?: string;
  now?: () => Date;
  /** Id generator for created ACLs (default: 32 hex characters from crypto.randomUUID). */
  newId?: () => string;
}

/** The write side of a transaction. Reads here see the transaction's own changes. */
export interface StoreTx {
  list(): AclObject[];
  get(id: string): AclObject | undefined;
  /** Creates with a new id (an `id` in `fields` is ignored). */
  create(fields: AclFields): AclObject;
  /** Replaces the whole object (PUT); undefined when `id` does not exist. */
  replace(id: string, fields: AclFields): AclObject | undefined;
  /** JSON Merge Patch (RFC 7396) of the object (PATCH); undefined when `id` does not exist. */
  patch(id: string, fields: AclFields): AclObject | undefined;
  /** false when `id` does not exist. */
  delete(id: string): boolean;
}

/** COMMIT failed (disk full, I/O error): the transaction was rolled back. */
export class StoreCommitError extends Error {
  constructor(override readonly cause: unknown) {
    super(`the store could not commit: ${(cause as Error).message ?? String(cause)}`);
    this.name = 'StoreCommitError';
  }
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS acls (
  id       TEXT PRIMARY KEY,
  body     TEXT NOT NULL,
  created  TEXT NOT NULL,
  modified TEXT NOT NULL,
  revision INTEGER NOT NULL,
  seq      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
`;

interface Row {
  id: string;
  body: string;
  created: string;
  modified: string;
  revision: number;
}

export const newAclId = (): string => randomUUID().replaceAll('-', '');

export class AclStore {
  readonly file: string;
  private readonly writer: Database.Database;
  private readonly reader: Database.Database;
  private readonly now: () => Date;
  private readonly newId: () => string;
  /** Tail of the write queue: transactions run one at a time, in arrival order. */
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;
  /** Random per database, so an ETag built from the revision never matches another database's. */
  readonly instance: string;

  private constructor(file: string, options: StoreOptions) {
    this.file = file;
    this.now = options.now ?? (() => new Date());
    this.newId = options.newId ?? newAclId;
    this.writer = new Database(file);
    try {
      this.writer.pragma('journal_mode = WAL');
      this.writer.pragma('synchronous = FULL');
      this.writer.pragma('busy_timeout = 5000');
      this.writer.exec(SCHEMA);
      this.writer.prepare("INSERT OR IGNORE INTO meta (key, value) VALUES ('revision', '0')").run();
      this.writer.prepare("INSERT OR IGNORE INTO meta (key, value) VALUES ('instance', ?)").run(newAclId().slice(0, 12));
      this.writer.pragma('user_version = 1');
      this.reader = new Database(file, { readonly: true });
      this.reader.pragma('busy_timeout = 5000');
    } catch (e) {
      this.writer.close();
      throw e;
    }
    this.instance = (this.reader.prepare("SELECT value FROM meta WHERE key = 'instance'").get() as { value: string }).value;
  }

  /** Opens (creating if needed) the store in `stateDir` (created with mode 0700 if missing). */
  static open(stateDir: string, options: StoreOptions = {}): AclStore {
    mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    return new AclStore(path.join(stateDir, options.file ?? STORE_FILE), options);
  }

  /** Committed ACLs, in creation order. */
  list(): AclObject[] {
    return this.entries().map((e) => e.acl);
  }

  /** Committed ACLs with created/modified/revision, in creation order. */
  entries(): StoredAcl[] {
    return (this.reader.prepare('SELECT id, body, created, modified, revision FROM acls ORDER BY seq').all() as Row[]).map(toStored);
  }

  /** The committed entries and the revision they are at, read in one snapshot. */
  snapshot(): { revision: number; entries: StoredAcl[] } {
    return this.reader.transaction(() => ({ revision: this.revision(), entries: this.entries() }))();
  }

  get(id: string): AclObject | undefined {
    return this.entry(id)?.acl;
  }

  entry(id: string): StoredAcl | undefined {
    const row = this.reader.prepare('SELECT id, body, created, modified, revision FROM acls WHERE id = ?').get(id) as Row | undefined;
    return row ? toStored(row) : undefined;
  }

  /** The committed revision: +1 for every committed write, never reused. 0 for a new store. */
  revision(): number {
    return Number((this.reader.prepare("SELECT value FROM meta WHERE key = 'revision'").get() as { value: string }).value);
  }

  /**
   * Runs `fn` in a write transaction, one transaction at a time (callers queue). `fn` may await
   * (e.g. enforce the candidate set); when it resolves the write is committed, when it throws it is
   * rolled back and the error rethrown. A failed COMMIT rolls back and throws StoreCommitError.
   */
  transaction<T>(fn: (tx: StoreTx) => Promise<T> | T): Promise<T> {
    const run = this.queue.then(() => this.runTransaction(fn));
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Convenience single writes (each its own transaction, no enforcement). */
  create(fields: AclFields): Promise<AclObject> {
    return this.transaction((tx) => tx.create(fields));
  }
  replace(id: string, fields: AclFields): Promise<AclObject | undefined> {
    return this.transaction((tx) => tx.replace(id, fields));
  }
  patch(id: string, fields: AclFields): Promise<AclObject | undefined> {
    return this.transaction((tx) => tx.patch(id, fields));
  }
  delete(id: string): Promise<boolean> {
    return this.transaction((tx) => tx.delete(id));
  }

  /** Waits for queued transactions, then closes both connections. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.queue;
    this.reader.close();
    this.writer.close();
  }

  private async runTransaction<T>(fn: (tx: StoreTx) => Promise<T> | T): Promise<T> {
    if (this.closed) throw new Error('the store is closed');
    const db = this.writer;
    db.exec('BEGIN IMMEDIATE');
    let result: T;
    try {
      result = await fn(this.txView());
    } catch (e) {
      if (db.inTransaction) db.exec('ROLLBACK');
      throw e;
    }
    try {
      db.exec('COMMIT');
    } catch (e) {
      if (db.inTransaction) db.exec('ROLLBACK');
      throw new StoreCommitError(e);
    }
    return result;
  }

  private txView(): StoreTx {
    const db = this.writer;
    const read = (id: string) => db.prepare('SELECT id, body, created, modified, revision FROM acls WHERE id = ?').get(id) as Row | undefined;
    const bump = (): number => {
      db.prepare("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'revision'").run();
      return Number((db.prepare("SELECT value FROM meta WHERE key = 'revision'").get() as { value: string }).value);
    };
    const update = (id: string, body: AclObject): AclObject => {
      const rev = bump();
      db.prepare('UPDATE acls SET body = ?, modified = ?, revision = ? WHERE id = ?').run(JSON.stringify(body), this.now().toISOString(), rev, id);
      return body;
    };
    return {
      list: () => (db.prepare('SELECT id, body, created, modified, revision FROM acls ORDER BY seq').all() as Row[]).map((r) => toStored(r).acl),
      get: (id) => {
        const row = read(id);
        return row ? toStored(row).acl : undefined;
      },
      create: (fields) => {
        let id = this.newId();
        while (read(id)) id = this.newId();
        const acl = withId(fields, id);
        const rev = bump();
        const at = this.now().toISOString();
        db.prepare('INSERT INTO acls (id, body, created, modified, revision, seq) VALUES (?, ?, ?, ?, ?, ?)')
          .run(id, JSON.stringify(acl), at, at, rev, rev);
        return acl;
      },
      replace: (id, fields) => (read(id) ? update(id, withId(fields, id)) : undefined),
      patch: (id, fields) => {
        const row = read(id);
        if (!row) return undefined;
        return update(id, withId(mergePatch(toStored(row).acl, fields) as AclFields, id));
      },
      delete: (id) => {
        if (!read(id)) return false;
        bump();
        db.prepare('DELETE FROM acls WHERE id = ?').run(id);
        return true;
      },
    };
  }
}

/** The object with `id` first and set to `id` (whatever the fields said). */
function withId(fields: AclFields, id: string): AclObject {
  const { id: _ignored, ...rest } = fields;
  return { id, ...rest };
}

function toStored(row: Row): StoredAcl {
  return { acl: JSON.parse(row.body) as AclObject, created: row.created, modified: row.modified, revision: row.revision };
}

const isPlainObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * JSON Merge Patch (RFC 7396): a field in the patch replaces the target's; `null` removes it;
 * objects (for ACLs: `lan_1`, `lan_2`) are merged field by field; lists are replaced whole.
 */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (!isPlainObject(patch)) return patch;
  const out: Record<string, unknown> = isPlainObject(target) ? { ...target } : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete out[key];
    // defineProperty: a "__proto__" key from JSON stays a plain field instead of a prototype.
    else Object.defineProperty(out, key, { value: mergePatch(Object.hasOwn(out, key) ? out[key] : undefined, value), enumerable: true, writable: true, configurable: true });
  }
  return out;
}
