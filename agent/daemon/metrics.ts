// Prometheus metrics (prom-client) and the small HTTP listener that serves them with /healthz and
// /status. Per-policy packets/bytes come from the nft counters, read lazily on scrape and cached
// for about a second so a burst of scrapes costs one `nft list counters`.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { LiveCounter } from '../nft/live.js';
import { SOURCE_STATES, type AgentStatus, type SourceState } from './status.js';

export type PolicyCounterReader = () => Promise<Map<string, LiveCounter> | undefined>;

export class AgentMetrics {
  readonly registry = new Registry();
  readonly policiesEnforced: Gauge;
  readonly sourceState: Gauge<'state'>;
  readonly sourceUp: Gauge;
  readonly enforcingLkg: Gauge;
  readonly lastApplySuccess: Gauge;
  readonly applyDuration: Histogram;
  readonly applies: Counter<'result'>;
  readonly applyFailures: Counter<'reason'>;
  readonly rejectedSets: Counter<'origin'>;
  readonly controlPlaneErrors: Counter<'kind'>;
  readonly driftRepairs: Counter<'what'>;
  readonly driftChecks: Counter<'depth'>;
  readonly driftCheckDuration: Histogram<'depth'>;
  readonly configReloads: Counter<'result'>;
  readonly rulesetInfo: Gauge<'hash'>;
  private counterCache: { at: number; value: Promise<Map<string, LiveCounter> | undefined> } | undefined;

  constructor(private readonly readCounters?: PolicyCounterReader, cacheMs = 1000) {
    const registers = [this.registry];
    const p = 'connector_acl_';
    collectDefaultMetrics({ register: this.registry, prefix: p });
    this.policiesEnforced = new Gauge({ name: `${p}policies_enforced`, help: 'Policies in the ruleset the kernel enforces', registers });
    this.sourceState = new Gauge({ name: `${p}source_state`, help: 'Policy source state (1 for the current state)', labelNames: ['state'], registers });
    this.sourceUp = new Gauge({ name: `${p}source_up`, help: '1 when the policy source answered at the last attempt', registers });
    this.enforcingLkg = new Gauge({ name: `${p}enforcing_last_known_good`, help: '1 while the last-known-good set is enforced because the source has not delivered a good set', registers });
    this.lastApplySuccess = new Gauge({ name: `${p}last_apply_success_timestamp_seconds`, help: 'Unix time of the last successful apply', registers });
    this.applyDuration = new Histogram({
      name: `${p}apply_duration_seconds`, help: 'Duration of applies (validate, compile, load, read back, verify)',
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers,
    });
    this.applies = new Counter({ name: `${p}applies_total`, help: 'Applies by result', labelNames: ['result'], registers });
    this.applyFailures = new Counter({
      name: `${p}apply_failures_total`, help: 'Policy sets not enforced, by reason (invalid, apply-failed, environment)', labelNames: ['reason'], registers,
    });
    this.rejectedSets = new Counter({ name: `${p}rejected_sets_total`, help: 'Policy sets rejected as a whole by validation, by origin', labelNames: ['origin'], registers });
    this.controlPlaneErrors = new Counter({ name: `${p}control_plane_errors_total`, help: 'Errors talking to the policy source, by kind', labelNames: ['kind'], registers });
    this.driftRepairs = new Counter({ name: `${p}drift_repairs_total`, help: 'Repairs of the kernel state after drift, by what was wrong (table, routing)', labelNames: ['what'], registers });
    this.driftChecks = new Counter({ name: `${p}drift_checks_total`, help: 'Drift checks run, by depth (quick, full)', labelNames: ['depth'], registers });
    this.driftCheckDuration = new Histogram({
      name: `${p}drift_check_duration_seconds`, help: 'Duration of drift checks, by depth (quick, full)', labelNames: ['depth'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5], registers,
    });
    this.configReloads = new Counter({ name: `${p}config_reloads_total`, help: 'SIGHUP config reloads by result', labelNames: ['result'], registers });
    this.rulesetInfo = new Gauge({ name: `${p}ruleset_info`, help: 'Hash of the enforced ruleset (value 1)', labelNames: ['hash'], registers });
    for (const s of SOURCE_STATES) this.sourceState.set({ state: s }, 0);
    for (const r of ['invalid', 'apply-failed', 'environment']) this.applyFailures.inc({ reason: r }, 0);
    for (const w of ['table', 'routing']) this.driftRepairs.inc({ what: w }, 0);

    const cached = (): Promise<Map<string, LiveCounter> | undefined> => {
      if (!this.readCounters) return Promise.resolve(undefined);
      const now = Date.now();
      if (!this.counterCache || now - this.counterCache.at > cacheMs) {
        this.counterCache = { at: now, value: this.readCounters().catch(() => undefined) };
      }
      return this.counterCache.value;
    };
    const perPolicy = (name: string, help: string, pick: (c: LiveCounter) => number) => new Counter({
      name, help, labelNames: ['policy_id', 'policy_name'], registers,
      async collect() {
        this.reset();
        for (const c of (await cached())?.values() ?? []) {
          this.inc({ policy_id: c.name.replace(/^pol_/, ''), policy_name: c.comment.replace(/^\S+ /, '') }, pick(c));
        }
      },
    });
    perPolicy(`${p}policy_packets_total`, 'Packets a policy allowed (nft counter; restarts at 0 when the policy changes)', (c) => c.packets);
    perPolicy(`${p}policy_bytes_total`, 'Bytes a policy allowed (nft counter; restarts at 0 when the policy changes)', (c) => c.bytes);
  }

  setSourceState(state: SourceState): void {
    for (const s of SOURCE_STATES) this.sourceState.set({ state: s }, s === state ? 1 : 0);
    this.sourceUp.set(state === 'synced' || state === 'rejected' ? 1 : 0);
  }

  setRuleset(hash: string, policies: number): void {
    this.rulesetInfo.reset();
    this.rulesetInfo.set({ hash }, 1);
    this.policiesEnforced.set(policies);
  }
}

export interface Health {
  ok: boolean;
  reasons: string[];
}

export interface MetricsServerOptions {
  host: string;
  port: number;
  metrics: AgentMetrics;
  status: () => AgentStatus;
  health: () => Health;
}

/** Serves GET /metrics, /healthz (200 or 503) and /status (JSON). Resolves once listening. */
export async function startMetricsServer(options: MetricsServerOptions): Promise<{ server: http.Server; port: number; close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    const url = (req.url ?? '/').split('?')[0];
    const send = (code: number, type: string, body: string) => {
      res.writeHead(code, { 'content-type': type, 'cache-control': 'no-store' });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, 'text/plain', 'method not allowed\n');
    if (url === '/metrics') {
      options.metrics.registry.metrics().then(
        (text) => send(200, options.metrics.registry.contentType, text),
        (e) => send(500, 'text/plain', `${(e as Error).message}\n`),
      );
      return;
    }
    if (url === '/healthz') {
      const h = options.health();
      return send(h.ok ? 200 : 503, 'application/json', `${JSON.stringify({ ok: h.ok, reasons: h.reasons })}\n`);
    }
    if (url === '/status') return send(200, 'application/json', `${JSON.stringify(options.status(), null, 2)}\n`);
    send(404, 'text/plain', 'not found: try /metrics, /healthz or /status\n');
  });
  server.keepAliveTimeout = 5_000;
  server.requestTimeout = 10_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return {
    server,
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}
