// Drift healing: the kernel must keep holding what the last apply put there, whatever an operator
// or another tool does. Two depths of check, both compared with the reconciler's record of the last
// successful apply:
//   quick (every interval, ~10 ms at any size): the dispatch map `lan_pairs` exists with the right
//     number of elements (catches `nft flush ruleset`, `delete table`, a flushed map), our ip rules
//     (both families) and, when the tunnel interface is up, the default route in the tunnel table.
//   full (cost-bounded): the whole table read back — manifest (chains and rule counts, maps and
//     element counts, counters) and the ruleset hash in the table comment. Two listings cost
//     4–5 s at 10k policies, so it runs at most every max(interval, 40 × its last duration):
//     every 2 s for small rulesets, every few minutes at 10k (capped at 5 min).
// Link events (`ip -o monitor link`) for LAN and tunnel interfaces trigger a quick check at once.
import type { Logger } from 'pino';
import { parseTableComment, type Engine } from '../apply/engine.js';
import { spawnLines, type CommandRunner, type LineProcess, type LineSpawner } from '../nft/exec.js';
import { compareManifests } from '../nft/live.js';
import { LAN_PAIRS_MAP } from '../nft/render.js';
import { ROUTING_PROTOCOL } from '../netlink/routing.js';
import type { Site, Tunnel } from '../policy/model.js';
import type { AgentMetrics } from './metrics.js';
import type { Enforced, Reconciler } from './reconciler.js';
import type { AgentStatus } from './status.js';

export interface DriftFinding {
  what: 'table' | 'routing';
  detail: string;
}

export interface DriftDeps {
  reconciler: Reconciler;
  engine: Engine;
  runner: CommandRunner;
  metrics: AgentMetrics;
  log: Logger;
  status: AgentStatus;
  onStatus: () => void;
  intervalMs?: number;
  /** Full checks never run less often than this (default 5 min), whatever they cost. */
  maxFullIntervalMs?: number;
  spawner?: LineSpawner;
  now?: () => number;
}

export interface CheckReport {
  depth: 'quick' | 'full';
  findings: DriftFinding[];
  repaired: DriftFinding[];
  durationMs: number;
  /** The check straddled one of our own applies; its findings were discarded. */
  discarded?: boolean;
}

const RETRY_EVERY_MS = 10_000;

export class DriftMonitor {
  private timer: NodeJS.Timeout | undefined;
  private linkWatch: LineProcess | undefined;
  private running: Promise<CheckReport | undefined> | undefined;
  private again = false;
  private stopped = true;
  private nextFullAt = 0;
  private lastRetryAt = 0;
  private debounce: NodeJS.Timeout | undefined;
  private lastFailure = { message: '', at: 0 };
  /** When the last check finished (ms), and whether it could read the kernel at all. */
  lastCheckAt = 0;
  lastCheckOk = true;
  readonly intervalMs: number;

  constructor(private readonly deps: DriftDeps) {
    this.intervalMs = deps.intervalMs ?? 2_000;
  }

  private now(): number {
    return this.deps.now?.() ?? Date.now();
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    const tick = () => {
      if (this.stopped) return;
      void this.check('timer').finally(() => {
        if (!this.stopped) this.timer = setTimeout(tick, this.intervalMs);
      });
    };
    this.timer = setTimeout(tick, this.intervalMs);
    this.watchLinks();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.debounce) clearTimeout(this.debounce);
    this.linkWatch?.stop();
    this.linkWatch = undefined;
  }

  /** Interfaces whose events matter: the LANs and the tunnel of the current site. */
  private interesting(): Set<string> {
    const site = this.deps.reconciler.currentSite;
    return new Set([...site.lans.map((l) => l.interface), ...(site.tunnel ? [site.tunnel.interface] : [])]);
  }

  private watchLinks(): void {
    if (this.stopped) return;
    const spawner = this.deps.spawner ?? spawnLines;
    const proc = spawner(['ip', '-o', 'monitor', 'link'], (line) => {
      const name = linkEventName(line);
      if (name && this.interesting().has(name)) {
        this.deps.log.debug({ event: 'link', line }, `link event for ${name}`);
        if (this.debounce) clearTimeout(this.debounce);
        this.debounce = setTimeout(() => void this.check(`link ${name}`), 100);
      }
    });
    this.linkWatch = proc;
    void proc.exited.then((r) => {
      if (this.stopped || this.linkWatch !== proc) return;
      this.deps.log.warn({ event: 'link-monitor-exited', ...r }, 'ip monitor link exited; restarting it in 5 s (periodic checks go on)');
      setTimeout(() => this.watchLinks(), 5_000).unref();
    });
  }

  /** Runs a check now (coalescing concurrent requests into one more run). */
  check(reason: string): Promise<CheckReport | undefined> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = this.checkOnce(reason).catch((e: unknown) => {
      // Never let a failed repair take the agent down: log it (the same failure once a minute),
      // the next check tries again.
      const message = (e as Error).message;
      const now = this.now();
      if (message !== this.lastFailure.message || now - this.lastFailure.at > 60_000) {
        this.lastFailure = { message, at: now };
        this.deps.log.error({ event: 'drift-repair-failed', reason, error: message }, `drift repair failed: ${message}; retrying at every check`);
      }
      return undefined;
    }).finally(() => {
      this.running = undefined;
      if (this.again && !this.stopped) {
        this.again = false;
        void this.check('coalesced');
      }
    });
    return this.running;
  }

  private async checkOnce(reason: string): Promise<CheckReport | undefined> {
    const { reconciler, metrics, log } = this.deps;
    const now = this.now();
    if (now - this.lastRetryAt >= RETRY_EVERY_MS) {
      this.lastRetryAt = now;
      await reconciler.retryPending();
    }
    const enforced = reconciler.enforced;
    if (!enforced) return undefined;
    const gen = reconciler.generation;
    const full = now >= this.nextFullAt;
    const started = this.now();
    let findings: DriftFinding[];
    try {
      findings = await this.inspect(enforced, reconciler.currentSite, full);
      this.lastCheckOk = true;
    } catch (e) {
      this.lastCheckOk = false;
      this.lastCheckAt = this.now();
      log.error({ event: 'drift-check-failed', error: (e as Error).message }, `drift check failed: ${(e as Error).message}`);
      return undefined;
    }
    const durationMs = this.now() - started;
    if (full) this.nextFullAt = this.now() + Math.min(this.deps.maxFullIntervalMs ?? 300_000, Math.max(this.intervalMs, 40 * durationMs));
    metrics.driftChecks.inc({ depth: full ? 'full' : 'quick' });
    metrics.driftCheckDuration.observe({ depth: full ? 'full' : 'quick' }, durationMs / 1000);
    log.debug({ event: 'drift-check', depth: full ? 'full' : 'quick', durationMs, reason }, 'drift check');
    this.lastCheckAt = this.now();
    this.deps.status.lastDriftCheck = new Date(this.lastCheckAt).toISOString();
    const report: CheckReport = { depth: full ? 'full' : 'quick', findings, repaired: [], durationMs };
    if (findings.length === 0) return report;
    if (reconciler.generation !== gen || reconciler.busy) {
      // One of our own applies ran meanwhile: what we saw may be its work. Look again soon.
      this.again = true;
      return { ...report, discarded: true };
    }
    log.warn({ event: 'drift', reason, findings }, `drift found: ${findings.map((f) => f.detail).join('; ')}`);
    const tableFindings = findings.filter((f) => f.what === 'table');
    if (tableFindings.length > 0) {
      // A full re-apply also re-ensures the routing.
      const r = await reconciler.repair(tableFindings.map((f) => f.detail).join('; '));
      if (r?.ok) report.repaired.push(...findings);
    } else {
      const tunnel = reconciler.currentSite.tunnel;
      if (tunnel) {
        const still = await reconciler.exclusive(async () => {
          const changes = await this.deps.engine.routing.ensure(tunnel);
          const after = await this.inspectRouting(tunnel);
          log.warn({ event: 'drift-repair', what: 'routing', changes: changes.changes, warnings: changes.warnings, unresolved: after.map((f) => f.detail) },
            after.length === 0 ? 'policy routing restored' : `policy routing could not be fully restored: ${after.map((f) => f.detail).join('; ')}`);
          return new Set(after.map((f) => f.detail));
        });
        report.repaired.push(...findings.filter((f) => !still.has(f.detail)));
      }
    }
    for (const what of new Set(report.repaired.map((f) => f.what))) {
      metrics.driftRepairs.inc({ what });
      this.deps.status.driftRepairs++;
    }
    if (report.repaired.length > 0) {
      // Look again at once: a repaired table deserves a full comparison.
      this.nextFullAt = 0;
      this.deps.onStatus();
    }
    return report;
  }

  /** What differs between the kernel and the last apply. Throws when the kernel cannot be read. */
  async inspect(enforced: Enforced, site: Site, full: boolean): Promise<DriftFinding[]> {
    const findings: DriftFinding[] = [];
    const table = enforced.site.table;
    const r = await this.deps.runner.run(['nft', '-j', 'list', 'map', 'inet', table, LAN_PAIRS_MAP], { timeoutMs: 10_000 });
    if (r.code !== 0) {
      if (/No such file or directory|does not exist/i.test(r.stderr)) {
        findings.push({ what: 'table', detail: `table inet ${table} or its map ${LAN_PAIRS_MAP} is missing` });
      } else {
        throw new Error(`nft list map: ${r.stderr.trim() || `exit ${r.code}`}`);
      }
    } else {
      const want = enforced.manifest.maps[LAN_PAIRS_MAP] ?? 0;
      const have = lanPairsElements(r.stdout);
      if (have !== want) findings.push({ what: 'table', detail: `map ${LAN_PAIRS_MAP} has ${have} elements, expected ${want}` });
    }
    if (findings.length === 0 && full) {
      const live = await this.deps.engine.nft.readTable(table);
      if (!live) findings.push({ what: 'table', detail: `table inet ${table} is missing` });
      else {
        const diffs = compareManifests(enforced.manifest, live.manifest);
        if (diffs.length > 0) findings.push({ what: 'table', detail: `table differs from the last apply: ${diffs.slice(0, 5).join(', ')}${diffs.length > 5 ? `, … ${diffs.length - 5} more` : ''}` });
        const hash = parseTableComment(live.comment).hash;
        if (diffs.length === 0 && hash !== enforced.rulesetHash) findings.push({ what: 'table', detail: `table holds ruleset ${hash ?? 'without a hash'}, expected ${enforced.rulesetHash}` });
      }
    }
    if (site.tunnel) findings.push(...(await this.inspectRouting(site.tunnel)));
    return findings;
  }

  private async inspectRouting(tunnel: Tunnel): Promise<DriftFinding[]> {
    const findings: DriftFinding[] = [];
    const { runner } = this.deps;
    const link = await runner.run(['ip', '-j', 'link', 'show', 'dev', tunnel.interface]);
    const up = link.code === 0 && /"operstate":"(UP|UNKNOWN)"/.test(link.stdout) && /"flags":\[[^\]]*"UP"/.test(link.stdout);
    for (const family of ['-4', '-6'] as const) {
      const rules = await this.deps.engine.routing.readRules(family);
      const ours = rules.some((x) => x.priority === tunnel.rulePriority && parseInt(x.fwmark ?? '', 16) === tunnel.mark &&
        String(x.table) === String(tunnel.routeTable) && String(x.protocol) === String(ROUTING_PROTOCOL));
      if (!ours) findings.push({ what: 'routing', detail: `ip ${family} rule pref ${tunnel.rulePriority} fwmark → table ${tunnel.routeTable} is missing` });
      if (!up) continue;
      const routes = await runner.run(['ip', '-j', family, 'route', 'show', 'table', String(tunnel.routeTable)]);
      const hasDefault = routes.code === 0 && /"dst":"default"/.test(routes.stdout);
      if (!hasDefault) findings.push({ what: 'routing', detail: `ip ${family} default route in table ${tunnel.routeTable} via ${tunnel.interface} is missing` });
    }
    return findings;
  }
}

/** `3: lan1: <…>` / `Deleted 3: lan1@if2: <…>` → `lan1`. */
export function linkEventName(line: string): string | undefined {
  return /^(?:Deleted\s+)?\d+:\s+([^:@\s]+)[@:]/.exec(line.trim())?.[1];
}

function lanPairsElements(jsonText: string): number {
  const doc = JSON.parse(jsonText) as { nftables?: { map?: { elem?: unknown[] } }[] };
  const map = doc.nftables?.find((i) => i.map)?.map;
  return Array.isArray(map?.elem) ? map.elem.length : 0;
}
