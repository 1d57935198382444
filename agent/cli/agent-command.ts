// `connector-acl agent` (the daemon) and `connector-acl boot` (the fail-closed boot step):
// registered by main.ts. The work happens in agent/daemon/.
import type { Command } from 'commander';
import { EnvironmentError } from '../apply/errors.js';
import { parseDuration } from '../control/config.js';
import { runAgent } from '../daemon/agent.js';
import { bootLoad } from '../daemon/boot.js';
import { systemRunner } from '../nft/exec.js';

interface GlobalOptions {
  config: string;
  policies?: string;
}

export function register(program: Command): void {
  program.command('agent')
    .description('run the daemon: enforce the last-known-good set, then keep the kernel in step with the policy source (agent.source), heal drift, serve metrics')
    .option('--drift-interval <duration>', 'quick drift check period', '2s')
    .option('--log-level <level>', 'pino log level (JSON lines on stdout)', 'info')
    .action(async (cmd: { driftInterval: string; logLevel: string }) => {
      const opts = program.opts<GlobalOptions>();
      const driftIntervalMs = parseDuration(cmd.driftInterval);
      if (driftIntervalMs === undefined || driftIntervalMs < 100) throw new EnvironmentError(`--drift-interval "${cmd.driftInterval}" is not a duration of at least 100ms`);
      const { pino } = await import('pino');
      const logger = pino({ level: cmd.logLevel, base: { service: 'connector-acl' }, timestamp: pino.stdTimeFunctions.isoTime });
      await runAgent({ configFile: opts.config, policiesOverride: opts.policies, logger, driftIntervalMs });
      logger.flush();
    });

  program.command('boot')
    .description('load a fail-closed ruleset before the network is up: last-known-good, else the default drop between the configured LANs, else rules/default-drop.nft')
    .option('--state-dir <dir>', 'override agent.state_dir')
    .option('--default-drop <file>', 'the static fallback ruleset')
    .action(async (cmd: { stateDir?: string; defaultDrop?: string }) => {
      const opts = program.opts<GlobalOptions>();
      const r = await bootLoad({ configFile: opts.config, runner: systemRunner, stateDir: cmd.stateDir, defaultDrop: cmd.defaultDrop });
      for (const m of r.messages) process.stdout.write(`${m}\n`);
      if (r.loaded === 'none') {
        process.stderr.write('error: no ruleset could be loaded\n');
        process.exitCode = 3;
      }
    });
}
