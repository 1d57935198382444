// `connector-acl api -c CONFIG`: the local ACL API and its SQLite store, without the kernel. Writes
// are validated against the site config (the same checks as `validate`) and stored; nothing is
// applied. A standalone control plane for labs, for tests, and for agents in `source: remote`.
import type { Command } from 'commander';
import { pino, type Logger } from 'pino';
import { EnvironmentError, InputError } from '../apply/errors.js';
import { lansOf, startApiServer, type ApiServer } from '../control/api.js';
import { parseAgentConfig, parseListen, type AgentConfig, type LocalApiConfig } from '../control/config.js';
import type { Enforcer } from '../control/contracts.js';
import { readLocalApiCredentials, SecretFileError, type ApiCredentials } from '../control/secrets.js';
import { AclStore } from '../control/store.js';
import { readDocument } from '../io/files.js';
import { validate } from '../policy/load.js';
import type { Site } from '../policy/model.js';
import { formatProblem, hasErrors, type Problem } from '../policy/problems.js';
import { parseSite } from '../policy/site.js';

/** Name under which policies from the API appear in problems (omitted from API messages). */
export const API_SOURCE = 'api';

export interface StandaloneApiOptions {
  configFile: string;
  /** Overrides agent.local_api.listen (e.g. `127.0.0.1:0`). */
  listen?: string;
  /** Overrides agent.state_dir. */
  stateDir?: string;
  logger: Logger;
  /** Problems found while loading (warnings included); default: logged. */
  report?: (problems: Problem[]) => void;
}

export interface StandaloneApi {
  api: ApiServer;
  store: AclStore;
  config: AgentConfig & { localApi: LocalApiConfig };
  /** Re-reads the site config (LANs, tunnel) used for validation; a bad config is refused and the old one kept. */
  reload(): Promise<{ ok: boolean; problems: Problem[] }>;
  close(): Promise<void>;
}

/** The Enforcer of `connector-acl api`: validates the full set against the site config, applies nothing. */
export function validatingEnforcer(site: () => { doc: unknown; file: string }): Enforcer {
  return async (acls) => {
    const { doc, file } = site();
    const result = validate(doc, file, [{ file: API_SOURCE, content: acls }]);
    if (!result.ok) return { ok: false, reason: 'invalid', problems: result.problems };
    return { ok: true, warnings: result.problems.filter((p) => p.severity === 'warning') };
  };
}

/** Loads the config, reads the credentials, opens the store and starts listening. Throws InputError/EnvironmentError. */
export async function startStandaloneApi(options: StandaloneApiOptions): Promise<StandaloneApi> {
  const { configFile, logger } = options;
  const report = options.report ?? ((ps) => ps.forEach((p) => logger[p.severity === 'error' ? 'error' : 'warn'](formatProblem(p))));

  const loaded = await loadSite(configFile);
  report(loaded.problems);
  if (!loaded.ok) throw new InputError(`${configFile}: the site config has errors; the API did not start`);
  let site = { doc: loaded.doc, file: configFile };
  let lans = lansOf(loaded.site!);

  const parsed = parseAgentConfig(site.doc, configFile);
  report(parsed.problems);
  if (!parsed.config) throw new InputError(`${configFile}: the agent section has errors; the API did not start`);
  const localApi = parsed.config.localApi;
  if (!localApi) throw new InputError(`${configFile}: agent.local_api is required for connector-acl api (listen, account_id, site_id, auth)`);
  let listen = localApi.listen;
  if (options.listen !== undefined) {
    const l = parseListen(options.listen);
    if (!l) throw new InputError(`--listen "${options.listen}" is not host:port`);
    listen = l;
  }
  const config = { ...parsed.config, stateDir: options.stateDir ?? parsed.config.stateDir, localApi: { ...localApi, listen } };
  const credentials = await readApiCredentials(localApi);

  let store: AclStore;
  try {
    store = AclStore.open(config.stateDir);
  } catch (e) {
    throw new EnvironmentError(`cannot open the store in ${config.stateDir}: ${(e as Error).message}`);
  }
  let api: ApiServer;
  try {
    api = await startApiServer({
      listen,
      accountId: localApi.accountId,
      siteId: localApi.siteId,
      store,
      enforce: validatingEnforcer(() => site),
      lans: () => lans,
      credentials,
      logger,
    });
  } catch (e) {
    await store.close();
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'EADDRINUSE' ? 'the address is in use' : code === 'EACCES' ? 'permission denied' : (e as Error).message;
    throw new EnvironmentError(`cannot listen on ${listen.text}: ${why}`);
  }
  logger.info({ url: api.aclsUrl, state_dir: config.stateDir, policies: store.list().length, revision: store.revision() }, 'api listening');

  let closing: Promise<void> | undefined;
  return {
    api,
    store,
    config,
    async reload() {
      const next = await loadSite(configFile);
      if (!next.ok) {
        logger.error({ problems: next.problems.map(formatProblem) }, 'site config reload refused; keeping the running one');
        return { ok: false, problems: next.problems };
      }
      site = { doc: next.doc, file: configFile };
      lans = lansOf(next.site!);
      logger.info({ lans: lans.length }, 'site config reloaded');
      return { ok: true, problems: next.problems };
    },
    close: () => (closing ??= (async () => {
      await api.close();
      await store.close();
    })()),
  };
}

async function loadSite(file: string): Promise<{ ok: boolean; doc?: unknown; site?: Site; problems: Problem[] }> {
  const read = await readDocument(file);
  if (read.problems.length > 0) return { ok: false, problems: read.problems };
  const { site, problems } = parseSite(read.value, file);
  return { ok: !!site && !hasErrors(problems), doc: read.value, site, problems };
}

async function readApiCredentials(local: LocalApiConfig): Promise<ApiCredentials> {
  try {
    return await readLocalApiCredentials(local);
  } catch (e) {
    if (e instanceof SecretFileError) throw new InputError(`agent.local_api.auth: ${e.message}`);
    throw e;
  }
}

export function register(program: Command): void {
  program.command('api')
    .description('serve the Cloudflare-compatible ACL API from a SQLite store, validating writes against the site config (no kernel changes)')
    .option('--listen <host:port>', 'override agent.local_api.listen')
    .option('--state-dir <dir>', 'override agent.state_dir')
    .option('--log-level <level>', 'pino log level (logs are JSON lines on stderr)', 'info')
    .action(async (cmd: { listen?: string; stateDir?: string; logLevel: string }) => {
      const { config: configFile } = program.opts<{ config: string }>();
      const logger = pino({ level: cmd.logLevel, base: { cmd: 'api' }, timestamp: pino.stdTimeFunctions.isoTime }, pino.destination(2));
      const running = await startStandaloneApi({ configFile, listen: cmd.listen, stateDir: cmd.stateDir, logger });
      process.stdout.write(`listening on ${running.api.aclsUrl}\n`);
      await new Promise<void>((resolve) => {
        const stop = (signal: string) => {
          logger.info({ signal }, 'shutting down');
          process.off('SIGHUP', hup);
          running.close().then(resolve, (e: unknown) => {
            logger.error({ err: e }, 'shutdown failed');
            resolve();
          });
        };
        const hup = () => void running.reload();
        process.once('SIGTERM', () => stop('SIGTERM'));
        process.once('SIGINT', () => stop('SIGINT'));
        process.on('SIGHUP', hup);
      });
      logger.flush();
    });
}
