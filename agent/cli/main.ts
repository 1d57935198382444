#!/usr/bin/env node
// connector-acl: the operator's command line. Wiring only; the work happens in the modules it calls.
import { Command, Option } from 'commander';
import { applyPolicies, parseTableComment, planChanges, readLive, rulesetHash, type Engine } from '../apply/engine.js';
import { ApplyError, EnvironmentError, EXIT, InputError } from '../apply/errors.js';
import { DEFAULT_CONFIG, loadInputs, type Inputs } from '../io/inputs.js';
import { lower } from '../ir/lower.js';
import { NftClient } from '../nft/client.js';
import { NftError } from '../nft/errors.js';
import { systemRunner } from '../nft/exec.js';
import { render } from '../nft/render.js';
import { PolicyRouting } from '../netlink/routing.js';
import { formatProblem, type Problem } from '../policy/problems.js';
import { registerExtraCommands } from './commands.js';
import { agentStatusLines, readAgentStatusForConfig } from '../daemon/status.js';

interface GlobalOptions {
  config: string;
  policies?: string;
}

// `connector-acl compile | head` closes the pipe early; that is not an error.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(0);
  throw e;
});

const out = (line = '') => process.stdout.write(`${line}\n`);
const err = (line: string) => process.stderr.write(`${line}\n`);

function makeEngine(): Engine {
  return { nft: new NftClient(systemRunner), routing: new PolicyRouting(systemRunner), now: () => new Date() };
}

function reportProblems(problems: Problem[]): void {
  for (const p of problems) err(`${p.severity}: ${formatProblem(p)}`);
}

async function validInputs(opts: GlobalOptions): Promise<Required<Pick<Inputs, 'site' | 'policies'>> & Inputs> {
  const inputs = await loadInputs(opts.config, opts.policies);
  reportProblems(inputs.problems);
  if (!inputs.ok || !inputs.site || !inputs.policies) {
    const n = inputs.problems.filter((p) => p.severity === 'error').length;
    throw new InputError(`${n} error${n === 1 ? '' : 's'}: nothing was applied`);
  }
  return inputs as Required<Pick<Inputs, 'site' | 'policies'>> & Inputs;
}

const program = new Command()
  .name('connector-acl')
  .description('LAN-to-LAN segmentation for the Connector: ACL policies compiled into one atomic nftables table')
  .addOption(new Option('-c, --config <file>', 'site config (YAML)').default(DEFAULT_CONFIG))
  .option('-p, --policies <path>', 'policies file or directory (overrides the config\'s "policies")')
  .showHelpAfterError()
  .addHelpText('after', `
Exit codes: 0 ok, 1 invalid input (nothing applied), 2 apply failed (previous ruleset kept),
3 environment (nft or ip missing, not root / no CAP_NET_ADMIN).`);

program.command('validate')
  .description('check the site config and policies; print every problem with file, policy and field')
  .action(async () => {
    const inputs = await validInputs(program.opts<GlobalOptions>());
    const warnings = inputs.problems.filter((p) => p.severity === 'warning').length;
    out(`ok: ${inputs.policies.length} policies for ${inputs.site.lans.length} LANs${warnings ? `, ${warnings} warning${warnings === 1 ? '' : 's'}` : ''}`);
  });

program.command('compile')
  .description('print the nft script that apply would load (no side effects)')
  .action(async () => {
    const inputs = await validInputs(program.opts<GlobalOptions>());
    process.stdout.write(render(lower(inputs.site, inputs.policies)).text);
  });

program.command('apply')
  .description('replace the engine\'s table atomically with the compiled policies and set up tunnel routing')
  .option('--dry-run', 'show what would change against the live table; change nothing')
  .action(async (cmd: { dryRun?: boolean }) => {
    const inputs = await validInputs(program.opts<GlobalOptions>());
    const engine = makeEngine();
    if (cmd.dryRun) {
      const plan = await planChanges(inputs.site, inputs.policies, engine);
      if (plan.liveHash === plan.rulesetHash) out(`no change: table inet ${inputs.site.table} already holds ruleset ${plan.rulesetHash}`);
      else {
        out(`would replace table inet ${inputs.site.table}${plan.liveHash ? ` (ruleset ${plan.liveHash})` : ' (not present)'} with ruleset ${plan.rulesetHash}:`);
        for (const a of plan.added) out(`  + ${a}`);
        for (const c of plan.changed) out(`  ~ ${c}`);
        for (const r of plan.removed) out(`  - ${r}`);
        out(`  = ${plan.unchanged} unchanged polic${plan.unchanged === 1 ? 'y' : 'ies'}`);
      }
      return;
    }
    const result = await applyPolicies(inputs.site, inputs.policies, engine);
    for (const w of result.warnings) err(`warning: ${w}`);
    for (const c of result.routing.changes) out(`routing: ${c}`);
    out(`applied ${result.policies} polic${result.policies === 1 ? 'y' : 'ies'} (${result.elements} map elements) to table inet ${result.table} ` +
      `in ${result.durationMs.toFixed(0)} ms; ruleset ${result.rulesetHash}${result.unchanged ? ' (unchanged)' : ''}; ` +
      `${result.countersKept} counter${result.countersKept === 1 ? '' : 's'} kept`);
  });

program.command('status')
  .description('show the live table: policies and their counters, when it was applied, whether it matches the config')
  .option('--json', 'machine-readable output')
  .action(async (cmd: { json?: boolean }) => {
    const opts = program.opts<GlobalOptions>();
    const inputs = await loadInputs(opts.config, opts.policies);
    const table = inputs.site?.table ?? 'connector_acl';
    const live = await readLive(makeEngine(), table);
    const meta = parseTableComment(live?.comment);
    const expected = inputs.ok && inputs.site && inputs.policies ? rulesetHash(lower(inputs.site, inputs.policies)) : undefined;
    const matches = expected === undefined ? undefined : expected === meta.hash;
    const policies = [...(live?.counters.values() ?? [])].filter((c) => c.name.startsWith('pol_')).map((c) => ({
      id: c.name.replace(/^pol_/, ''), name: c.comment.replace(/^\S+ /, ''), packets: c.packets, bytes: c.bytes,
    }));
    const agent = await readAgentStatusForConfig(opts.config);
    if (cmd.json) {
      out(JSON.stringify({ table, present: !!live, ruleset: meta.hash, applied_at: meta.appliedAt, matches_config: matches, policies, drops: live?.drops ?? [], agent: { ...agent.status, running: agent.running } }, null, 2));
      return;
    }
    for (const line of agentStatusLines(agent)) out(line);
    if (!live) {
      out(`table inet ${table}: not present (LAN-to-LAN traffic is not filtered by connector-acl)`);
      process.exitCode = EXIT.applyFailed;
      return;
    }
    out(`table inet ${table}: ruleset ${meta.hash ?? 'unknown'}, applied ${meta.appliedAt ?? 'at an unknown time'}, ${policies.length} policies`);
    if (matches === true) out(`matches the config (${inputs.configFile})`);
    else if (matches === false) out(`DIFFERS from the config (${inputs.configFile}): compiled ruleset is ${expected}; run connector-acl apply`);
    else out(`cannot compare with the config: ${inputs.problems.filter((p) => p.severity === 'error').map(formatProblem)[0] ?? 'it does not load'}`);
    const w = Math.max(4, ...policies.map((p) => p.name.length));
    out('');
    out(`${'POLICY'.padEnd(w)}  ${'PACKETS'.padStart(10)}  ${'BYTES'.padStart(12)}  ID`);
    for (const p of policies) out(`${p.name.padEnd(w)}  ${String(p.packets).padStart(10)}  ${String(p.bytes).padStart(12)}  ${p.id}`);
    const dropped = live.drops.filter((d) => d.packets > 0);
    if (dropped.length > 0) {
      out('');
      out('DROPPED');
      for (const d of dropped) out(`  ${d.comment}: ${d.packets} packets, ${d.bytes} bytes`);
    }
  });

program.command('flush')
  .description('remove the engine\'s table, ip rules and tunnel routes (LAN-to-LAN traffic is then unfiltered)')
  .option('--yes', 'really do it')
  .action(async (cmd: { yes?: boolean }) => {
    if (!cmd.yes) throw new InputError('flush removes all LAN segmentation; repeat with --yes to confirm');
    const opts = program.opts<GlobalOptions>();
    const inputs = await loadInputs(opts.config, opts.policies);
    const table = inputs.site?.table ?? 'connector_acl';
    const engine = makeEngine();
    const removed = await engine.nft.deleteTable(table).catch((e) => { throw mapEnvironment(e); });
    out(removed ? `removed table inet ${table}` : `table inet ${table} was not present`);
    for (const c of await engine.routing.remove()) out(`routing: ${c}`);
  });

function mapEnvironment(e: unknown): unknown {
  const msg = (e as Error).message ?? '';
  if (/not installed/.test(msg) || /Operation not permitted/.test(msg)) return new EnvironmentError(msg);
  return e;
}

async function main(): Promise<void> {
  try {
    registerExtraCommands(program);
    await program.parseAsync(process.argv);
  } catch (e) {
    const error = mapEnvironment(e);
    if (error instanceof ApplyError) {
      err(`error: ${error.message}`);
      for (const d of error.details) err(`  ${d}`);
      process.exitCode = EXIT.applyFailed;
    } else if (error instanceof InputError) {
      err(`error: ${error.message}`);
      process.exitCode = EXIT.invalid;
    } else if (error instanceof NftError) {
      err(`error: nft: ${error.message}`);
      process.exitCode = EXIT.applyFailed;
    } else if (error instanceof EnvironmentError) {
      err(`error: ${error.message}`);
      process.exitCode = EXIT.environment;
    } else {
      err(`error: ${(error as Error).stack ?? String(error)}`);
      process.exitCode = EXIT.applyFailed;
    }
  }
}

await main();
