// check → apply → read back → verify, with the previous table restored if verification fails.
import { lower } from '../ir/lower.js';
import type { Ir } from '../ir/ir.js';
import { NftError, isPermissionError } from '../nft/errors.js';
import type { NftClient } from '../nft/client.js';
import { SpawnError } from '../nft/exec.js';
import { compareManifests, rulesetComment, type LiveTable } from '../nft/live.js';
import { canUpdate, liveObjectsFromText, nextGeneration, updateScripts } from '../nft/update.js';
import { META_COUNTER, render, type CounterValue, type Manifest } from '../nft/render.js';
import type { PolicyRouting, RoutingReport } from '../netlink/routing.js';
import { sha256Hex } from '../policy/hash.js';
import type { Policy, Site } from '../policy/model.js';
import { ApplyError, EnvironmentError } from './errors.js';

export interface Engine {
  nft: NftClient;
  routing: PolicyRouting;
  now: () => Date;
}

export interface ApplyOutcome {
  table: string;
  policies: number;
  elements: number;
  rulesetHash: string;
  durationMs: number;
  countersKept: number;
  routing: RoutingReport;
  warnings: string[];
  unchanged: boolean;
  /** The script that was loaded (for last-known-good: no need to compile and render again). */
  script: string;
  /** What the kernel holds now (verified). */
  manifest: Manifest;
}

export interface TableMeta {
  hash?: string;
  appliedAt?: string;
  policies?: number;
  /** Tunnel and conntrack marks the policy chains write (see marksOf). */
  marks?: string;
}

/** Hash of the ruleset as compiled (no apply metadata, no counter values): equal hash, equal rules. */
export function rulesetHash(ir: Ir): string {
  return sha256Hex(render(ir).text).slice(0, 16);
}

export const formatTableComment = (meta: Required<TableMeta>): string =>
  `connector-acl hash=${meta.hash} applied=${meta.appliedAt} policies=${meta.policies}${meta.marks ? ` marks=${meta.marks}` : ''}`;

/** The marks a policy chain writes: when they change, every policy chain must be rewritten. */
export const marksOf = (site: Site): string => `${(site.tunnel?.mark ?? 0).toString(16)}/${site.conntrackMark.toString(16)}`;

export function parseTableComment(comment: string | undefined): TableMeta {
  const get = (k: string) => (comment ? new RegExp(`${k}=(\\S+)`).exec(comment)?.[1] : undefined);
  const n = get('policies');
  return { hash: get('hash'), appliedAt: get('applied'), policies: n === undefined ? undefined : Number(n), marks: get('marks') ?? '' };
}

/** Counters of policies whose content is unchanged carry over; changed or new policies start at zero. */
export function keptCounters(ir: Ir, live: LiveTable['counters'] | undefined): Map<string, CounterValue> {
  const kept = new Map<string, CounterValue>();
  if (!live) return kept;
  for (const p of ir.policies) {
    const c = live.get(p.counter);
    if (c && c.comment.startsWith(`${p.contentHash} `)) kept.set(p.counter, { packets: c.packets, bytes: c.bytes });
  }
  return kept;
}

export async function readLive(engine: Engine, table: string): Promise<LiveTable | undefined> {
  try {
    return await engine.nft.readTable(table);
  } catch (err) {
    throw environmentOr(err);
  }
}

function environmentOr(err: unknown): unknown {
  if (err instanceof SpawnError) return new EnvironmentError(`${err.message}: install nftables (apt-get install -y nftables)`);
  if (isPermissionError(err)) return new EnvironmentError('nft: operation not permitted: run as root or with CAP_NET_ADMIN');
  return err;
}

export async function applyPolicies(site: Site, policies: readonly Policy[], engine: Engine): Promise<ApplyOutcome> {
  const started = process.hrtime.bigint();
  const ir = lower(site, policies);
  const hash = rulesetHash(ir);
  const warnings: string[] = [];
  // Before: the table as text (kept to restore it) and its counters. At 10k policies each
  // listing costs about a second, so read no more than these two.
  let previousText: string | undefined;
  let liveCounters: LiveTable['counters'] | undefined;
  try {
    previousText = await engine.nft.tableText(site.table);
    liveCounters = previousText === undefined ? undefined : await engine.nft.readCounters(site.table);
  } catch (err) {
    throw environmentOr(err);
  }
  const counters = keptCounters(ir, liveCounters);

  let links: Set<string> | undefined;
  try {
    links = await engine.routing.linkNames();
  } catch (err) {
    throw err instanceof SpawnError ? new EnvironmentError(`${err.message}: install iproute2 (apt-get install -y iproute2)`) : err;
  }
  for (const lan of site.lans) {
    if (!links.has(lan.interface)) {
      warnings.push(`LAN "${lan.name}": interface ${lan.interface} does not exist yet; its rules match by name and take effect when it appears`);
    }
  }

  // Routing first: it is additive and nothing is marked until the new table is in.
  let routing: RoutingReport = { changes: [], warnings: [] };
  if (site.tunnel) {
    try {
      routing = await engine.routing.ensure(site.tunnel);
    } catch (err) {
      throw new ApplyError(`policy routing for the tunnel could not be set up: ${(err as Error).message}; the previous ruleset is unchanged`);
    }
  }

  // A table this engine wrote is updated in two steps so no allowed packet is dropped
  // (agent/nft/update.ts); anything else (none yet, the boot default-drop) is replaced whole.
  const liveObjects = previousText === undefined ? undefined : liveObjectsFromText(previousText);
  const incremental = liveObjects !== undefined && canUpdate(liveObjects);
  const rendered = render(ir, {
    meta: formatTableComment({ hash, appliedAt: engine.now().toISOString(), policies: ir.policies.length, marks: marksOf(site) }),
    counters,
    generation: incremental ? nextGeneration(liveObjects) : 1,
  });
  const refused = (err: unknown, what: string): unknown => {
    const env = environmentOr(err);
    if (env !== err) return env;
    if (!(err instanceof NftError)) return err;
    const details = err.diagnostics.map((d) => {
      const p = d.policyId ? policies.find((x) => x.id === d.policyId) : undefined;
      const where = p ? `policy "${p.name}" (${p.id}) from ${p.source.file}` : d.line ? `generated line ${d.line} of ${what}` : 'nft';
      return `${where}: ${d.message}`;
    });
    return new ApplyError('nft refused the new ruleset; the previous ruleset is still in force', details.length ? details : [err.stderr.trim()]);
  };
  if (incremental) {
    // Policy chains of unchanged policies stay as they are when the marks they write are the same.
    const sameMarks = parseTableComment(liveObjects.counters.get(META_COUNTER)).marks === marksOf(site);
    const update = updateScripts(site.table, rendered, liveObjects, { keepUnchangedPolicyChains: sameMarks });
    try {
      await engine.nft.load(update.prepare.text, update.prepare.lineOwners);
    } catch (err) {
      throw refused(err, 'the prepare step');
    }
    try {
      await engine.nft.load(update.commit.text, update.commit.lineOwners);
    } catch (err) {
      // The live rules never saw the prepared maps: remove them and the old state is exact.
      await engine.nft.load(update.preparedMaps.map((m) => `delete map inet ${site.table} ${m}`).join('\n') + '\n').catch(() => undefined);
      throw refused(err, 'the commit step');
    }
  } else {
    try {
      await engine.nft.load(rendered.text, rendered.lineOwners);
    } catch (err) {
      throw refused(err, 'the ruleset');
    }
  }

  const after = await engine.nft.readTable(site.table);
  const problems = after ? compareManifests(rendered.manifest, after.manifest) : ['the table is missing after the apply'];
  if (problems.length > 0) {
    await restore(engine, site.table, previousText);
    throw new ApplyError('the ruleset read back from the kernel differs from what was compiled; the previous ruleset was restored', problems);
  }

  return {
    table: site.table,
    policies: ir.policies.length,
    elements: rendered.elementCount,
    rulesetHash: hash,
    durationMs: Number(process.hrtime.bigint() - started) / 1e6,
    countersKept: counters.size,
    routing,
    warnings: [...warnings, ...routing.warnings],
    unchanged: parseTableComment(rulesetComment(previousText)).hash === hash,
    script: rendered.text,
    manifest: rendered.manifest,
  };
}

async function restore(engine: Engine, table: string, previousText: string | undefined): Promise<void> {
  if (previousText === undefined) {
    await engine.nft.deleteTable(table);
    return;
  }
  await engine.nft.load(`table inet ${table} {}\ndelete table inet ${table}\n${previousText}`);
}

export interface PlannedChange {
  added: string[];
  removed: string[];
  changed: string[];
  unchanged: number;
  rulesetHash: string;
  liveHash?: string;
}

/** What an apply would change against the live table, by policy. */
export async function planChanges(site: Site, policies: readonly Policy[], engine: Engine): Promise<PlannedChange> {
  const ir = lower(site, policies);
  const live = await readLive(engine, site.table);
  const plan: PlannedChange = { added: [], removed: [], changed: [], unchanged: 0, rulesetHash: rulesetHash(ir), liveHash: parseTableComment(live?.comment).hash };
  const wanted = new Set<string>();
  for (const p of ir.policies) {
    wanted.add(p.counter);
    const c = live?.counters.get(p.counter);
    const label = `${p.name} (${p.id})`;
    if (!c) plan.added.push(label);
    else if (!c.comment.startsWith(`${p.contentHash} `)) plan.changed.push(label);
    else plan.unchanged++;
  }
  for (const c of live?.counters.values() ?? []) {
    if (c.name.startsWith('pol_') && !wanted.has(c.name)) plan.removed.push(`${c.comment.replace(/^\S+ /, '')} (${c.name.replace(/^pol_/, '')})`);
  }
  return plan;
}
