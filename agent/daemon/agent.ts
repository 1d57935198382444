// `connector-acl agent`: keeps the kernel in step with the desired policies.
//
//   start ─► config ─► metrics listener ─► last-known-good enforced ─► source (local API + store |
//   remote poll | file watch) ─► drift monitor + link events ─► READY=1, WATCHDOG=1 while healthy
//
// Every kernel change goes through the Reconciler's queue. Stopping the agent leaves the ruleset in
// place: the box stays segmented; only `connector-acl flush --yes` removes it.
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { pino, type Logger } from 'pino';
import type { Engine } from '../apply/engine.js';
import { EnvironmentError, InputError } from '../apply/errors.js';
import { startApiServer, type ApiServer } from '../control/api.js';
import type { LanInfo } from '../control/contracts.js';
import { Backoff, readRemoteCredentials, readSecretFile, RemoteClient, remoteClientOptions, SecretFileError } from '../control/remote.js';
import { AclStore } from '../control/store.js';
import { NftClient } from '../nft/client.js';
import { systemRunner, type CommandRunner, type LineSpawner } from '../nft/exec.js';
import { PolicyRouting } from '../netlink/routing.js';
import { formatProblem, type Problem } from '../policy/problems.js';
import { BOOT_TABLE_MARK, loadAgentConfig, type LoadedConfig } from './config-load.js';
import { DriftMonitor } from './drift.js';
import { FileSource } from './file-source.js';
import { claimStateDir, LastKnownGood } from './lkg.js';
import { AgentMetrics, startMetricsServer, type Health } from './metrics.js';
import { SystemdNotifier } from './notify.js';
import { Reconciler, type EnforceResult } from './reconciler.js';
import { newStatus, STATUS_FILE, StatusWriter, type AgentStatus, type SourceState } from './status.js';

export interface AgentOptions {
  configFile: string;
  /** `-p`: the policies file or directory for `source: file` (default: the config's `policies`). */
  policiesOverride?: string;
  logger?: Logger;
  runner?: CommandRunner;
  spawner?: LineSpawner;
  /** Quick drift check period (default 2 s). */
  driftIntervalMs?: number;
  env?: NodeJS.ProcessEnv;
}

const sleep = (ms: number, signal: AbortSignal): Promise<void> => new Promise((resolve) => {
  if (signal.aborted) return resolve();
  const onAbort = () => {
    clearTimeout(t);
    resolve();
  };
  const t = setTimeout(() => {
    signal.removeEventListener('abort', onAbort);
    resolve();
  }, ms);
  signal.addEventListener('abort', onAbort, { once: true });
});

export class Agent {
  readonly log: Logger;
  readonly runner: CommandRunner;
  readonly engine: Engine;
  readonly metrics: AgentMetrics;
  readonly status: AgentStatus;
  readonly notifier: SystemdNotifier;
  private config!: LoadedConfig;
  private lkg!: LastKnownGood;
  private statusWriter!: StatusWriter;
  reconciler!: Reconciler;
  drift!: DriftMonitor;
  private metricsServer: { close(): Promise<void>; port: number } | undefined;
  api: ApiServer | undefined;
  private store: AclStore | undefined;
  private fileSource: FileSource | undefined;
  private readonly abort = new AbortController();
  private remoteLoop: Promise<void> | undefined;
  private remoteClient: RemoteClient | undefined;
  private stateLock: { release(): Promise<void> } | undefined;
  private readySent = false;
  private stopping: Promise<void> | undefined;
  private readonly startedAt = Date.now();

  constructor(private readonly options: AgentOptions) {
    this.log = options.logger ?? pino({ base: { service: 'connector-acl' }, timestamp: pino.stdTimeFunctions.isoTime });
    this.runner = options.runner ?? systemRunner;
    this.engine = { nft: new NftClient(this.runner), routing: new PolicyRouting(this.runner), now: () => new Date() };
    this.metrics = new AgentMetrics(() => this.engine.nft.readCounters(this.reconciler?.currentSite.table ?? 'connector_acl'));
    this.status = newStatus('unknown', options.configFile);
    this.notifier = new SystemdNotifier(this.runner, options.env ?? process.env, (e) => this.log.warn({ event: 'sd-notify-failed', error: e }, e));
  }

  get metricsPort(): number | undefined {
    return this.metricsServer?.port;
  }

  private touch = (): void => {
    this.statusWriter?.touch();
  };

  private setSource(state: SourceState, detail?: string): void {
    const changed = this.status.source.state !== state || this.status.source.detail !== detail;
    this.status.source = { ...this.status.source, state, detail };
    this.metrics.setSourceState(state);
    if (changed) this.touch();
  }

  async start(): Promise<void> {
    const { configFile } = this.options;
    const loaded = await loadAgentConfig(configFile);
    for (const p of loaded.problems) this.log[p.severity === 'error' ? 'error' : 'warn']({ event: 'config-problem' }, formatProblem(p));
    if (!loaded.config) throw new InputError(`${configFile}: the config has errors; the agent did not start (the kernel keeps its ruleset)`);
    this.config = loaded.config;
    const { agent, site } = this.config;
    this.status.source.kind = agent.source;

    try {
      await mkdir(agent.stateDir, { recursive: true, mode: 0o750 });
    } catch (e) {
      throw new EnvironmentError(`cannot create state_dir ${agent.stateDir}: ${(e as Error).message}`);
    }
    try {
      this.stateLock = await claimStateDir(agent.stateDir);
    } catch (e) {
      throw new EnvironmentError((e as Error).message);
    }
    this.lkg = new LastKnownGood(agent.stateDir);
    await this.lkg.sweep();
    this.statusWriter = new StatusWriter(path.join(agent.stateDir, STATUS_FILE), () => this.status);
    this.reconciler = new Reconciler(site, { engine: this.engine, lkg: this.lkg, metrics: this.metrics, log: this.log, status: this.status, onStatus: this.onApplied });
    this.metrics.setSourceState('starting');

    if (agent.metricsListen) {
      try {
        this.metricsServer = await startMetricsServer({
          host: agent.metricsListen.host, port: agent.metricsListen.port, metrics: this.metrics, status: () => this.status, health: () => this.health(),
        });
      } catch (e) {
        throw new EnvironmentError(`cannot listen on ${agent.metricsListen.text} for metrics: ${(e as Error).message}`);
      }
      this.log.info({ event: 'metrics-listening', port: this.metricsServer.port }, `metrics on http://${agent.metricsListen.host}:${this.metricsServer.port}/metrics`);
    }

    // Secrets first: a source that cannot authenticate must refuse to start, clearly.
    const remoteCredentials = agent.source === 'remote' ? await this.readCredentials(() => readRemoteCredentials(agent.remote!)) : undefined;
    const apiCredentials = agent.source === 'local' ? await this.readCredentials(async () => ({
      token: agent.localApi!.auth.apiTokenFile ? await readSecretFile(agent.localApi!.auth.apiTokenFile) : undefined,
      email: agent.localApi!.auth.email,
      key: agent.localApi!.auth.authKeyFile ? await readSecretFile(agent.localApi!.auth.authKeyFile) : undefined,
    })) : undefined;

    await this.enforceLastKnownGood();

    this.drift = new DriftMonitor({
      reconciler: this.reconciler, engine: this.engine, runner: this.runner, metrics: this.metrics, log: this.log,
      status: this.status, onStatus: this.touch, intervalMs: this.options.driftIntervalMs, spawner: this.options.spawner,
    });

    if (agent.source === 'local') await this.startLocal(apiCredentials!);
    else if (agent.source === 'remote') this.startRemote(remoteCredentials!);
    else await this.startFile();

    await this.ensureFailClosed();
    this.drift.start();
    this.notifier.startWatchdog(() => this.health().ok, () => this.statusLine());
    this.touch();
  }

  private async readCredentials<T>(read: () => Promise<T>): Promise<T> {
    try {
      return await read();
    } catch (e) {
      if (e instanceof SecretFileError) throw new InputError(`credentials: ${e.message}`);
      throw new InputError(`credentials: ${(e as Error).message}`);
    }
  }

  /** After each successful apply: status file, READY=1 the first time. */
  private onApplied = (): void => {
    this.touch();
    if (!this.readySent && this.reconciler?.enforced) {
      this.readySent = true;
      void this.notifier.notifyReady(this.statusLine());
    }
  };

  statusLine(): string {
    const s = this.status;
    return `${s.policies} policies, ruleset ${s.lastApply?.hash ?? 'none'}, source ${s.source.kind} ${s.source.state}, enforcing ${s.enforcing}`;
  }

  health(): Health {
    const reasons: string[] = [];
    if (!this.reconciler?.enforced) reasons.push('no ruleset applied yet');
    const d = this.drift;
    if (d && !d.lastCheckOk) reasons.push('the last drift check could not read the kernel');
    if (d && d.lastCheckAt > 0 && Date.now() - d.lastCheckAt > 3 * d.intervalMs + 60_000) reasons.push('drift checks have stalled');
    if (d && d.lastCheckAt === 0 && Date.now() - this.startedAt > 3 * d.intervalMs + 60_000) reasons.push('no drift check has completed');
    return { ok: reasons.length === 0, reasons };
  }

  /** Before the source answers: the last good set, validated against the current site config. */
  private async enforceLastKnownGood(): Promise<void> {
    let entry;
    try {
      entry = await this.lkg.load();
    } catch (e) {
      this.log.error({ event: 'lkg-unreadable', error: (e as Error).message }, `last-known-good unreadable: ${(e as Error).message}`);
      this.status.lastError = { at: new Date().toISOString(), kind: 'state-dir', message: (e as Error).message };
      return;
    }
    if (!entry) {
      this.log.info({ event: 'lkg-none' }, 'no last-known-good state yet');
      return;
    }
    const r = (await this.reconciler.adopt(entry.documents, 'last-known-good')) ?? await this.reconciler.enforce(entry.documents, 'last-known-good');
    if (r.ok) {
      this.log.info({ event: 'lkg-enforced', rulesetHash: r.hash, policies: r.policies, savedAt: entry.savedAt, reloaded: r.applied }, `enforcing last-known-good (${r.policies} policies, saved ${entry.savedAt}) until the source answers`);
      return;
    }
    // The set no longer fits the config (a LAN removed?) or the kernel refused it: keep what the
    // kernel has (the boot unit loaded the saved ruleset), or load the saved ruleset as it is.
    if (!(await this.tableIsOurs())) {
      const script = await this.lkg.loadRuleset().catch(() => undefined);
      if (script) {
        await this.engine.nft.load(script).then(
          () => this.log.warn({ event: 'lkg-ruleset-loaded' }, 'loaded the saved last-known-good ruleset as it was (its policies do not validate against the current config)'),
          (e: Error) => this.log.error({ event: 'lkg-ruleset-failed', error: e.message }, `the saved ruleset did not load: ${e.message}`),
        );
      }
    }
  }

  /** Whether the table holds a ruleset of ours (not absent, not the static boot default-drop). */
  private async tableIsOurs(): Promise<boolean> {
    const text = await this.engine.nft.tableText(this.reconciler.currentSite.table).catch(() => undefined);
    return text !== undefined && !text.includes(BOOT_TABLE_MARK);
  }

  /**
   * Nothing enforced after LKG and the source's first answer (no LKG, source unreachable or its set
   * rejected): if the kernel has no table of ours, apply the empty set — the default drop between
   * every pair of LANs — rather than leave LAN-to-LAN traffic unfiltered.
   */
  private async ensureFailClosed(): Promise<void> {
    if (this.reconciler.enforced) return;
    if (await this.tableIsOurs()) {
      this.log.warn({ event: 'keeping-table' }, 'no policy set enforced yet; keeping the ruleset the kernel holds');
      return;
    }
    this.log.warn({ event: 'fail-closed' }, 'no good policy set yet: applying the default drop between all LANs');
    await this.reconciler.enforce([], 'startup');
    await this.removeBootTable();
  }

  /** The static boot table (rules/default-drop.nft) has the default name; remove it once ours is in. */
  private async removeBootTable(): Promise<void> {
    const table = this.reconciler.currentSite.table;
    if (table === 'connector_acl') return; // replaced by our own apply already
    const text = await this.engine.nft.tableText('connector_acl').catch(() => undefined);
    if (text?.includes(BOOT_TABLE_MARK)) {
      await this.engine.nft.deleteTable('connector_acl').catch(() => false);
      this.log.info({ event: 'boot-table-removed' }, 'removed the static boot default-drop table');
    }
  }

  private sourceResult(r: EnforceResult): void {
    if (r.ok) {
      this.status.lastSync = new Date().toISOString();
      this.setSource('synced');
      void this.removeBootTable();
    } else if (r.reason === 'invalid') {
      this.status.lastSync = new Date().toISOString();
      this.setSource('rejected', `${r.problems.filter((p) => p.severity === 'error').length} errors; the last good set stays enforced`);
    } else {
      this.setSource('error', `apply failed: ${r.problems[0]?.message ?? r.reason}`);
    }
  }

  private lans(): LanInfo[] {
    return this.reconciler.currentSite.lans.map((l) => ({ id: l.id, name: l.name, interface: l.interface }));
  }

  private async startLocal(credentials: { token?: string; email?: string; key?: string }): Promise<void> {
    const local = this.config.agent.localApi!;
    try {
      this.store = AclStore.open(this.config.agent.stateDir);
    } catch (e) {
      throw new EnvironmentError(`cannot open the ACL store in ${this.config.agent.stateDir}: ${(e as Error).message}`);
    }
    const r = await this.reconciler.enforce([{ file: 'local API', content: this.store.list() }], 'local');
    this.sourceResult(r);
    try {
      this.api = await startApiServer({
        listen: local.listen, accountId: local.accountId, siteId: local.siteId, store: this.store,
        enforce: async (acls) => {
          const outcome = await this.reconciler.enforcer(acls);
          if (outcome.ok) this.sourceResult({ ok: true, applied: true, hash: '', policies: acls.length, warnings: [] });
          return outcome;
        },
        lans: () => this.lans(), credentials, logger: this.log.child({ component: 'api' }),
      });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new EnvironmentError(`cannot listen on ${local.listen.text} for the ACL API: ${code === 'EADDRINUSE' ? 'the address is in use' : (e as Error).message}`);
    }
    this.log.info({ event: 'api-listening', url: this.api.aclsUrl }, `ACL API on ${this.api.aclsUrl}`);
  }

  private startRemote(credentials: Awaited<ReturnType<typeof readRemoteCredentials>>): void {
    const remote = this.config.agent.remote!;
    const client = new RemoteClient(remoteClientOptions(remote, credentials));
    this.remoteClient = client;
    // Retries start at 1 s and back off to at most 4 poll intervals (5 s … 5 min), with full jitter.
    const backoff = new Backoff({ minMs: 1_000, maxMs: Math.min(300_000, Math.max(5_000, remote.pollIntervalMs * 4)) });
    const signal = this.abort.signal;
    let lastErrorLogged = '';
    let knownLans = '';
    this.log.info({ event: 'remote-source', url: client.aclsUrl, pollIntervalMs: remote.pollIntervalMs }, `polling ${client.aclsUrl}`);
    this.remoteLoop = (async () => {
      while (!signal.aborted) {
        const r = await client.poll();
        if (signal.aborted) break;
        let wait = remote.pollIntervalMs;
        if (r.kind === 'error') {
          this.metrics.controlPlaneErrors.inc({ kind: r.errorKind });
          this.status.lastError = { at: new Date().toISOString(), kind: `control-plane ${r.errorKind}`, message: r.message };
          this.setSource(r.errorKind === 'auth' ? 'auth-failed' : r.errorKind === 'unreachable' || r.errorKind === 'timeout' ? 'unreachable' : 'error', r.message);
          this.status.enforcing = this.reconciler.enforced ? this.status.enforcing : 'none';
          wait = backoff.next();
          const line = `${r.errorKind}: ${r.message}`;
          if (line !== lastErrorLogged || backoff.attempts % 10 === 1) {
            this.log.warn({ event: 'control-plane-error', kind: r.errorKind, error: r.message, retryInMs: wait, enforcing: this.status.enforcing, rulesetHash: this.reconciler.enforced?.rulesetHash },
              `control plane ${r.errorKind}: ${r.message}; keeping ${this.status.enforcing === 'none' ? 'the kernel\'s ruleset' : `the ${this.status.enforcing === 'last-known-good' ? 'last-known-good' : 'last good'} set`} (${this.reconciler.enforced?.policies ?? 0} policies); retry in ${wait} ms`);
            lastErrorLogged = line;
          }
        } else {
          backoff.reset();
          if (lastErrorLogged) this.log.info({ event: 'control-plane-recovered' }, 'control plane reachable again');
          lastErrorLogged = '';
          if (r.kind === 'unchanged') {
            this.status.lastSync = new Date().toISOString();
            if (this.status.source.state !== 'rejected') this.setSource('synced');
            this.touch();
          } else {
            if (r.lans) knownLans = this.checkLans(r.lans, knownLans);
            const res = await this.reconciler.enforce([{ file: client.aclsUrl, content: r.acls }], 'remote');
            this.sourceResult(res);
            if (!res.ok && res.reason !== 'invalid') client.resetCache(); // fetch again in full next time
          }
        }
        if (!this.reconciler.enforced && !signal.aborted) await this.ensureFailClosed();
        await sleep(wait, signal);
      }
    })();
  }

  /** Warns (once per change) about LANs the control plane knows and the site config lacks. */
  private checkLans(lans: LanInfo[], known: string): string {
    const key = JSON.stringify(lans.map((l) => l.id).sort());
    if (key === known) return known;
    const ours = new Set(this.reconciler.currentSite.lans.map((l) => l.id));
    const missing = lans.filter((l) => !ours.has(l.id));
    if (missing.length > 0) {
      this.log.warn({ event: 'unknown-lans', lans: missing }, `the control plane lists LANs the site config lacks: ${missing.map((l) => `${l.name} (${l.id})`).join(', ')}; policies naming them are rejected`);
    }
    return key;
  }

  private policiesPath(): string {
    const p = this.options.policiesOverride ?? this.config.site.policies;
    if (!p) throw new InputError('source: file needs "policies:" in the site config (or -p FILE|DIR)');
    return this.options.policiesOverride ? path.resolve(p) : path.resolve(path.dirname(this.options.configFile), p);
  }

  private async startFile(): Promise<void> {
    const source = this.policiesPath();
    this.fileSource = new FileSource(source, async ({ documents, problems }) => {
      const r = documents ? await this.reconciler.enforce(documents, 'file') : this.reconciler.reject('file', problems);
      this.sourceResult(r);
    });
    this.log.info({ event: 'file-source', path: source }, `watching ${source}`);
    await this.fileSource.start();
  }

  /** SIGHUP: re-read the config; a bad one (or one the current set does not fit) is refused. */
  async reload(): Promise<boolean> {
    const { configFile } = this.options;
    if (!this.reconciler || this.stopping) return false;
    const loaded = await loadAgentConfig(configFile);
    const refuse = (why: string, problems: Problem[]) => {
      const reasons = problems.filter((p) => p.severity === 'error').map(formatProblem);
      this.metrics.configReloads.inc({ result: 'refused' });
      this.status.lastError = { at: new Date().toISOString(), kind: 'config-reload', message: `${why}: ${reasons.join('; ')}` };
      this.log.error({ event: 'config-reload-refused', reasons }, `config reload refused (${why}); the running config is kept`);
      this.touch();
      return false;
    };
    if (!loaded.config) return refuse('the config has errors', loaded.problems);
    const next = loaded.config;
    const r = await this.reconciler.replaceSite(next.site);
    if (!r.ok) return refuse('the enforced policies do not apply to the new config', r.problems);
    const before = JSON.stringify(this.config.agent);
    const policiesBefore = this.config.site.policies;
    this.config = { ...next, agent: this.config.agent };
    if (JSON.stringify(next.agent) !== before) {
      this.log.warn({ event: 'config-reload-partial' }, 'changes to the agent: section (source, listeners, state_dir, remote) take effect on restart');
    }
    if (this.fileSource && !this.options.policiesOverride && next.site.policies !== policiesBefore) {
      this.fileSource.stop();
      await this.startFile();
    }
    // A set the old config rejected may fit the new one: ask the source again.
    if (this.store) this.sourceResult(await this.reconciler.enforce([{ file: 'local API', content: this.store.list() }], 'local'));
    this.remoteClient?.resetCache();
    if (this.fileSource && this.status.source.state === 'rejected') void this.fileSource.refresh();
    this.metrics.configReloads.inc({ result: 'applied' });
    this.status.config = { file: configFile, loadedAt: new Date().toISOString() };
    this.log.info({ event: 'config-reloaded', lans: next.site.lans.length, rulesetHash: r.ok ? r.hash : undefined }, 'config reloaded');
    this.touch();
    return true;
  }

  /** Stops serving and watching. The ruleset stays in the kernel. */
  stop(): Promise<void> {
    return (this.stopping ??= (async () => {
      this.abort.abort();
      this.drift?.stop();
      this.notifier.stop();
      await this.notifier.stopping();
      this.fileSource?.stop();
      await this.api?.close().catch(() => undefined);
      await this.remoteLoop?.catch(() => undefined);
      // Let an apply in progress finish: the kernel and last-known-good stay consistent.
      await this.reconciler?.exclusive(async () => undefined);
      await this.store?.close();
      await this.metricsServer?.close();
      this.statusWriter?.stop();
      await this.statusWriter?.flush();
      await this.stateLock?.release();
      this.log.info({ event: 'stopped', rulesetHash: this.reconciler?.enforced?.rulesetHash }, 'agent stopped; the ruleset stays in the kernel');
    })());
  }
}

/** Runs the agent until SIGTERM/SIGINT; SIGHUP reloads the config. */
export async function runAgent(options: AgentOptions): Promise<void> {
  const agent = new Agent(options);
  const onHup = () => void agent.reload().catch((e: Error) => agent.log.error({ event: 'config-reload-failed', error: e.message }, `config reload failed: ${e.message}`));
  // A bug in a background task must not stop enforcement: log it loudly and carry on (the kernel
  // keeps its ruleset either way; the watchdog catches a wedged agent).
  const onRejection = (e: unknown) => agent.log.error({ event: 'unhandled-rejection', error: (e as Error)?.stack ?? String(e) }, `unhandled rejection: ${(e as Error)?.message ?? String(e)}`);
  process.on('unhandledRejection', onRejection);
  process.on('SIGHUP', onHup);
  try {
    await agent.start();
  } catch (e) {
    process.off('SIGHUP', onHup);
    process.off('unhandledRejection', onRejection);
    await agent.stop().catch(() => undefined);
    throw e;
  }
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      agent.log.info({ event: 'signal', signal }, `${signal}: stopping`);
      agent.stop().then(resolve, resolve);
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  process.off('SIGHUP', onHup);
  process.off('unhandledRejection', onRejection);
}
