// The reconcile core: one desired policy set at a time, validated as a whole, applied through the
// engine (check → load → read back → verify), then written as last-known-good. Every kernel change
// of the agent — source updates, API writes, drift repairs, config reloads — runs through one
// queue, so applies never overlap and a drift check never races an apply.
import type { Logger } from 'pino';
import { applyPolicies, parseTableComment, rulesetHash, type Engine } from '../apply/engine.js';
import { rulesetComment } from '../nft/live.js';
import { ApplyError, EnvironmentError } from '../apply/errors.js';
import type { AclObject, EnforceOutcome, Enforcer } from '../control/contracts.js';
import { lower } from '../ir/lower.js';
import { render, type Manifest } from '../nft/render.js';
import { parsePolicies, type PolicyDocument } from '../policy/acl.js';
import { canonicalJson, sha256Hex } from '../policy/hash.js';
import type { Policy, Site } from '../policy/model.js';
import { formatProblem, hasErrors, type Problem } from '../policy/problems.js';
import type { LastKnownGood } from './lkg.js';
import type { AgentMetrics } from './metrics.js';
import type { AgentStatus } from './status.js';

export type Origin = 'local' | 'remote' | 'file' | 'last-known-good' | 'drift-repair' | 'config-reload' | 'startup';

/** What the kernel holds after our last successful apply: what drift checks compare against. */
export interface Enforced {
  documents: PolicyDocument[];
  origin: Origin;
  /** sha256 of the site and the documents: equal key, nothing to do. */
  key: string;
  rulesetHash: string;
  manifest: Manifest;
  policies: number;
  site: Site;
  appliedAt: string;
}

export type EnforceResult =
  | { ok: true; applied: boolean; hash: string; policies: number; warnings: Problem[] }
  | { ok: false; reason: 'invalid' | 'apply-failed' | 'environment'; problems: Problem[] };

export interface ReconcilerDeps {
  engine: Engine;
  lkg: LastKnownGood;
  metrics: AgentMetrics;
  log: Logger;
  status: AgentStatus;
  onStatus: () => void;
}

/** A serial queue: each task starts after the previous one settled. */
export class SerialQueue {
  private tail: Promise<unknown> = Promise.resolve();
  private depth = 0;

  run<T>(task: () => Promise<T>): Promise<T> {
    this.depth++;
    const next = this.tail.then(task, task);
    this.tail = next.then(
      () => this.depth--,
      () => this.depth--,
    );
    return next;
  }

  get busy(): boolean {
    return this.depth > 0;
  }
}

const errorProblem = (message: string): Problem => ({ severity: 'error', message });

export class Reconciler {
  private readonly queue = new SerialQueue();
  private enforcedState: Enforced | undefined;
  /** Increments on every kernel change we make; a check that straddles one is discarded. */
  generation = 0;
  /** A set from a source that failed to apply (not invalid): retried by the drift tick. */
  private retry: { documents: PolicyDocument[]; origin: Origin } | undefined;
  private lastRejected: string | undefined;

  constructor(private site: Site, private readonly deps: ReconcilerDeps) {}

  get currentSite(): Site {
    return this.site;
  }

  get enforced(): Enforced | undefined {
    return this.enforcedState;
  }

  get busy(): boolean {
    return this.queue.busy;
  }

  /** Runs fn alone: no apply starts until it settles. */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    return this.queue.run(fn);
  }

  /** Validate the set as a whole and enforce it, or change nothing. */
  enforce(documents: PolicyDocument[], origin: Origin, options: { force?: boolean } = {}): Promise<EnforceResult> {
    return this.queue.run(() => this.enforceNow(documents, origin, this.site, options.force ?? false));
  }

  /** The Enforcer the local API calls on every write: the response waits for the kernel. */
  readonly enforcer: Enforcer = async (acls: readonly AclObject[]): Promise<EnforceOutcome> => {
    const r = await this.enforce([{ file: 'local API', content: [...acls] }], 'local');
    return r.ok ? { ok: true, warnings: r.warnings } : { ok: false, problems: r.problems, reason: r.reason === 'invalid' ? 'invalid' : 'apply-failed' };
  };

  /** Same rules, the current set: after drift or when the table was lost. */
  repair(why: string): Promise<EnforceResult | undefined> {
    return this.queue.run(async () => {
      const e = this.enforcedState;
      if (!e) return undefined;
      this.deps.log.warn({ event: 'drift-repair', why }, `drift: ${why}; re-applying ruleset ${e.rulesetHash}`);
      return this.enforceNow(e.documents, 'drift-repair', this.site, true);
    });
  }

  /** Retries a set that failed to apply (kernel refused, nft missing); called from the drift tick. */
  retryPending(): Promise<EnforceResult | undefined> {
    const r = this.retry;
    if (!r) return Promise.resolve(undefined);
    return this.enforce(r.documents, r.origin);
  }

  /**
   * A new site config (SIGHUP): the current set must validate and apply against it, or the new
   * config is refused and the running one kept.
   */
  replaceSite(next: Site): Promise<EnforceResult> {
    return this.queue.run(async () => {
      const previous = this.site;
      const docs = this.enforcedState?.documents ?? [];
      const r = await this.enforceNow(docs, 'config-reload', next, true);
      if (!r.ok) return r;
      this.site = next;
      if (previous.table !== next.table) {
        await this.deps.engine.nft.deleteTable(previous.table).catch(() => false);
        this.deps.log.info({ event: 'table-renamed', from: previous.table, to: next.table }, `removed the old table inet ${previous.table}`);
      }
      if (previous.tunnel && !next.tunnel) {
        const changes = await this.deps.engine.routing.remove().catch(() => []);
        this.deps.log.info({ event: 'routing-removed', changes }, 'tunnel removed from the config: our ip rules and routes removed');
      }
      return r;
    });
  }

  /**
   * Startup after a restart: when the kernel already holds exactly this set's ruleset (the hash in
   * the table comment), take it over without reloading it; policy routing is still ensured. The
   * first drift check is a full one and re-applies if the table was edited meanwhile.
   */
  adopt(documents: PolicyDocument[], origin: Origin): Promise<EnforceResult | undefined> {
    return this.queue.run(async () => {
      const { engine, log, metrics, status } = this.deps;
      const site = this.site;
      const parsed = parsePolicies(documents, site);
      if (hasErrors(parsed.problems)) return undefined;
      const ir = lower(site, parsed.policies);
      const hash = rulesetHash(ir);
      const text = await engine.nft.tableText(site.table).catch(() => undefined);
      const meta = parseTableComment(rulesetComment(text));
      if (meta.hash !== hash) return undefined;
      if (site.tunnel) await engine.routing.ensure(site.tunnel);
      const key = sha256Hex(`${siteKey(site)}\n${canonicalJson(documents.map((d) => d.content))}`);
      this.generation++;
      this.enforcedState = {
        documents, origin, key, rulesetHash: hash, manifest: render(ir).manifest, policies: ir.policies.length, site,
        appliedAt: meta.appliedAt ?? new Date().toISOString(),
      };
      metrics.setRuleset(hash, ir.policies.length);
      metrics.lastApplySuccess.set(Date.parse(meta.appliedAt ?? '') / 1000 || Date.now() / 1000);
      status.policies = ir.policies.length;
      status.lastApply = { hash, at: meta.appliedAt ?? new Date().toISOString(), durationMs: 0, policies: ir.policies.length, origin };
      if (origin === 'last-known-good') status.enforcing = 'last-known-good';
      metrics.enforcingLkg.set(status.enforcing === 'last-known-good' ? 1 : 0);
      log.info({ event: 'adopted', origin, rulesetHash: hash, policies: ir.policies.length }, `the kernel already holds ruleset ${hash} (${ir.policies.length} policies): kept without reloading`);
      this.deps.onStatus();
      return { ok: true, applied: false, hash, policies: ir.policies.length, warnings: parsed.problems.filter((p) => p.severity === 'warning') };
    });
  }

  /** A set that could not even be read (parse errors, bad envelope): rejected like an invalid one. */
  reject(origin: Origin, problems: Problem[]): EnforceResult {
    const { log, metrics, status } = this.deps;
    const reasons = problems.filter((p) => p.severity === 'error').map(formatProblem);
    // The same bad set again (a poll, a re-read): already logged and counted once.
    const key = `${origin}\n${reasons.join('\n')}`;
    if (key === this.lastRejected) return { ok: false, reason: 'invalid', problems };
    this.lastRejected = key;
    metrics.applyFailures.inc({ reason: 'invalid' });
    metrics.rejectedSets.inc({ origin });
    metrics.applies.inc({ result: 'rejected' });
    status.lastRejection = { at: new Date().toISOString(), origin, reasons };
    log.warn({ event: 'rejected', origin, reasons }, `policy set from ${origin} rejected as a whole (${reasons.length} error${reasons.length === 1 ? '' : 's'}); the last good set stays enforced`);
    this.deps.onStatus();
    return { ok: false, reason: 'invalid', problems };
  }

  private async enforceNow(documents: PolicyDocument[], origin: Origin, site: Site, force: boolean): Promise<EnforceResult> {
    const { metrics, status } = this.deps;
    const parsed = parsePolicies(documents, site);
    const warnings = parsed.problems.filter((p) => p.severity === 'warning');
    if (hasErrors(parsed.problems)) {
      if (origin !== 'local') this.retry = undefined;
      return this.reject(origin, parsed.problems);
    }
    const key = sha256Hex(`${siteKey(site)}\n${canonicalJson(documents.map((d) => d.content))}`);
    const current = this.enforcedState;
    if (!force && current && current.key === key) {
      if (origin !== 'local') this.retry = undefined;
      if (origin === 'local' || origin === 'remote' || origin === 'file') {
        status.enforcing = 'source';
        metrics.enforcingLkg.set(0);
        this.deps.onStatus();
      }
      return { ok: true, applied: false, hash: current.rulesetHash, policies: current.policies, warnings };
    }
    return this.applyNow(documents, parsed.policies, origin, site, key, warnings);
  }

  private async applyNow(
    documents: PolicyDocument[], policies: Policy[], origin: Origin, site: Site, key: string, warnings: Problem[],
  ): Promise<EnforceResult> {
    const { log, metrics, status, engine, lkg } = this.deps;
    this.generation++;
    const started = process.hrtime.bigint();
    let outcome;
    try {
      outcome = await applyPolicies(site, policies, engine);
    } catch (err) {
      const reason = err instanceof EnvironmentError ? 'environment' : 'apply-failed';
      const details = err instanceof ApplyError ? err.details : [];
      const message = (err as Error).message;
      metrics.applyFailures.inc({ reason });
      metrics.applies.inc({ result: 'failed' });
      status.lastError = { at: new Date().toISOString(), kind: reason, message: [message, ...details].join('; ') };
      if (origin === 'remote' || origin === 'file' || origin === 'last-known-good') this.retry = { documents, origin };
      log.error({ event: 'apply-failed', origin, reason, error: message, details }, `apply failed (${reason}): ${message}; the previous ruleset is still in force`);
      this.deps.onStatus();
      return { ok: false, reason, problems: [errorProblem(message), ...details.map(errorProblem)] };
    }
    if (origin !== 'local') this.retry = undefined;
    this.lastRejected = undefined;
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const appliedAt = new Date();
    // The ruleset for boot and for drift comparison: the very script that was loaded.
    const rendered = { text: outcome.script, manifest: outcome.manifest };
    this.enforcedState = {
      documents, origin: origin === 'drift-repair' || origin === 'config-reload' ? this.enforcedState?.origin ?? origin : origin,
      key, rulesetHash: outcome.rulesetHash, manifest: rendered.manifest, policies: outcome.policies, site, appliedAt: appliedAt.toISOString(),
    };
    this.generation++;
    try {
      await lkg.save({ rulesetHash: outcome.rulesetHash, table: site.table, policyCount: outcome.policies, source: this.enforcedState.origin, documents }, rendered.text, appliedAt);
    } catch (e) {
      status.lastError = { at: appliedAt.toISOString(), kind: 'state-dir', message: `last-known-good not written: ${(e as Error).message}` };
      log.error({ event: 'lkg-write-failed', error: (e as Error).message }, 'could not write the last-known-good state');
    }
    metrics.applyDuration.observe(seconds);
    metrics.applies.inc({ result: 'applied' });
    metrics.lastApplySuccess.set(appliedAt.getTime() / 1000);
    metrics.setRuleset(outcome.rulesetHash, outcome.policies);
    status.lastApply = { hash: outcome.rulesetHash, at: appliedAt.toISOString(), durationMs: seconds * 1000, policies: outcome.policies, origin };
    status.policies = outcome.policies;
    if (origin === 'last-known-good') status.enforcing = 'last-known-good';
    else if (origin !== 'drift-repair' && origin !== 'config-reload') status.enforcing = 'source';
    metrics.enforcingLkg.set(status.enforcing === 'last-known-good' ? 1 : 0);
    log.info({
      event: 'apply', origin, policies: outcome.policies, elements: outcome.elements, durationMs: Math.round(seconds * 1000),
      rulesetHash: outcome.rulesetHash, unchanged: outcome.unchanged, countersKept: outcome.countersKept,
      routing: outcome.routing.changes, warnings: [...outcome.warnings, ...warnings.map(formatProblem)],
    }, `applied ${outcome.policies} policies from ${origin} in ${Math.round(seconds * 1000)} ms; ruleset ${outcome.rulesetHash}`);
    this.deps.onStatus();
    return { ok: true, applied: true, hash: outcome.rulesetHash, policies: outcome.policies, warnings };
  }
}

/** The ruleset hash a set would compile to against a site, or the problems that stop it. */
export function compileHash(site: Site, documents: PolicyDocument[]): { hash?: string; problems: Problem[] } {
  const parsed = parsePolicies(documents, site);
  if (hasErrors(parsed.problems)) return { problems: parsed.problems };
  return { hash: rulesetHash(lower(site, parsed.policies)), problems: parsed.problems };
}

/** The site as text for change detection (address ranges hold bigints). */
export const siteKey = (site: Site): string => JSON.stringify(site, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
