// The apply path's error handling, against a scripted nft/ip: what the operator is told and
// that a failure never leaves a half-applied table. Kernel behaviour is in test/kernel-*.
import t from 'tap';
import { applyPolicies, type Engine } from '../agent/apply/engine.js';
import { ApplyError, EnvironmentError } from '../agent/apply/errors.js';
import { NftClient } from '../agent/nft/client.js';
import { SpawnError, type CommandRunner } from '../agent/nft/exec.js';
import { PolicyRouting } from '../agent/netlink/routing.js';
import { validate } from '../agent/policy/load.js';
import { ScriptedRunner, type Expectation } from './support/scripted-runner.js';

const site = {
  table: 'connector_acl',
  lans: [
    { id: 'L1', name: 'LAN 1', interface: 'lan1', subnets: ['198.18.1.0/24'] },
    { id: 'L2', name: 'LAN 2', interface: 'lan2', subnets: ['198.18.2.0/24'] },
  ],
};
const acls = [
  { id: 'p1', name: 'web', forward_locally: true, lan_1: { lan_id: 'L1' }, lan_2: { lan_id: 'L2', ports: [443] }, protocols: ['tcp'] },
];
const { site: model, policies } = validate(site, 'site.yaml', [{ file: 'acls.json', content: acls }]);

const engineWith = (runner: CommandRunner): Engine => ({
  nft: new NftClient(runner),
  routing: new PolicyRouting(runner),
  now: () => new Date('2026-12-03T12:00:00Z'),
});

const noTable: Expectation = {
  argv: ['nft', 'list', 'table', 'inet', 'connector_acl'],
  result: { code: 1, stderr: 'Error: No such file or directory\nlist table inet connector_acl\n' },
};
const links: Expectation = {
  argv: ['ip', '-j', 'link', 'show'],
  result: { stdout: JSON.stringify([{ ifname: 'lo' }, { ifname: 'lan1' }, { ifname: 'lan2' }]) },
};

t.test('nft refusing the script is an ApplyError naming the policy of the offending line', async (t) => {
  let script = '';
  const runner = new ScriptedRunner([
    noTable,
    links,
    { argv: ['nft', '-f', '-'], stdin: (s) => ((script = s), true), result: { code: 1, stderr: '' } },
  ]);
  // The failing line is an element of policy p1: find its number in the script we render.
  (runner as unknown as { script: Expectation[] }).script[2].result = undefined;
  const realRun = runner.run.bind(runner);
  runner.run = async (argv, options) => {
    const r = await realRun(argv, options);
    if (argv.includes('-f')) {
      const line = script.split('\n').findIndex((l) => l.includes('goto pol_p1,') || l.includes('goto pol_p1')) + 1;
      return { ...r, code: 1, stderr: `/dev/stdin:${line}:4-20: Error: Could not process rule: File exists\n` };
    }
    return r;
  };
  const err = await applyPolicies(model!, policies!, engineWith(runner)).catch((e) => e);
  t.type(err, ApplyError);
  t.equal(err.exitCode, 2);
  t.match(err.message, /previous ruleset is still in force/);
  t.match(err.details[0], /^policy "web" \(p1\) from acls\.json: Could not process rule: File exists$/);
  t.equal(runner.remaining, 0);
});

t.test('a missing nft binary is an EnvironmentError (exit 3)', async (t) => {
  const runner: CommandRunner = { run: async (argv) => { throw new SpawnError(argv[0], 'ENOENT', `${argv[0]} is not installed (or not on PATH)`); } };
  const err = await applyPolicies(model!, policies!, engineWith(runner)).catch((e) => e);
  t.type(err, EnvironmentError);
  t.equal(err.exitCode, 3);
  t.match(err.message, /nft is not installed.*apt-get install -y nftables/);
});

t.test('no permission is an EnvironmentError that says what is needed', async (t) => {
  const runner = new ScriptedRunner([{
    argv: ['nft', 'list', 'table', 'inet', 'connector_acl'],
    result: { code: 1, stderr: 'Error: Could not process rule: Operation not permitted\n' },
  }]);
  const err = await applyPolicies(model!, policies!, engineWith(runner)).catch((e) => e);
  t.type(err, EnvironmentError);
  t.match(err.message, /root or with CAP_NET_ADMIN/);
});

t.test('a read-back that does not match restores the previous table', async (t) => {
  const previous = 'table inet connector_acl {\n\tchain forward {\n\t}\n}\n';
  const liveJson = JSON.stringify({ nftables: [{ table: { family: 'inet', name: 'connector_acl' } }, { chain: { name: 'forward' } }] });
  const runner = new ScriptedRunner([
    { argv: ['nft', 'list', 'table', 'inet', 'connector_acl'], result: { stdout: previous } }, // kept for restore
    { argv: ['nft', '-j', 'list', 'counters', 'table', 'inet', 'connector_acl'], result: { stdout: '{"nftables": []}' } },
    links,
    { argv: ['nft', '-f', '-'], stdin: (s) => s.includes('chain pol_p1 {') },
    // The kernel "lost" everything but the forward chain.
    { argv: ['nft', '-j', 'list', 'table', 'inet', 'connector_acl'], result: { stdout: liveJson } },
    { argv: ['nft', '-f', '-'], stdin: (s) => s === `table inet connector_acl {}\ndelete table inet connector_acl\n${previous}` },
  ]);
  const err = await applyPolicies(model!, policies!, engineWith(runner)).catch((e) => e);
  t.type(err, ApplyError);
  t.match(err.message, /previous ruleset was restored/);
  t.ok(err.details.some((d: string) => /chain pol_p1 is missing/.test(d)), err.details.join('\n'));
  t.equal(runner.remaining, 0);
});

t.test('a LAN interface that does not exist yet is a warning, not an error', async (t) => {
  let loaded = '';
  const runner = new ScriptedRunner([
    noTable,
    { argv: ['ip', '-j', 'link', 'show'], result: { stdout: JSON.stringify([{ ifname: 'lan1' }]) } },
    { argv: ['nft', '-f', '-'], stdin: (s) => ((loaded = s), true) },
    { argv: ['nft', '-j', 'list', 'table', 'inet', 'connector_acl'], result: { stdout: 'PLACEHOLDER' } },
  ]);
  // Serve the read-back from what was "loaded": parse its manifest by rendering the same thing.
  const realRun = runner.run.bind(runner);
  runner.run = async (argv, options) => {
    const r = await realRun(argv, options);
    if (r.stdout !== 'PLACEHOLDER') return r;
    return { ...r, stdout: jsonFromScript(loaded) };
  };
  const out = await applyPolicies(model!, policies!, engineWith(runner));
  t.same(out.warnings, ['LAN "LAN 2": interface lan2 does not exist yet; its rules match by name and take effect when it appears']);
  t.equal(out.policies, 1);
  t.equal(runner.remaining, 0);
});

/** Minimal `nft -j` rendering of a script: chains with rule counts, maps with element counts, counters. */
function jsonFromScript(script: string): string {
  const items: object[] = [{ table: { family: 'inet', name: 'connector_acl' } }];
  let chain: string | undefined;
  let map: { name: string; elem: unknown[] } | undefined;
  let inElements = false;
  for (const line of script.split('\n')) {
    let m: RegExpExecArray | null;
    if ((m = /^\tchain (\S+) \{$/.exec(line))) { chain = m[1]; items.push({ chain: { name: chain } }); }
    else if ((m = /^\t(map|set) (\S+) \{$/.exec(line))) { map = { name: m[2], elem: [] }; items.push({ [m[1]]: map }); }
    else if ((m = /^\tcounter (\S+) \{$/.exec(line))) items.push({ counter: { name: m[1], comment: '', packets: 0, bytes: 0 } });
    else if (line === '\t}') { chain = undefined; map = undefined; inElements = false; }
    else if (chain && line.startsWith('\t\t') && !line.startsWith('\t\ttype ')) items.push({ rule: { chain, expr: [] } });
    else if (map && line === '\t\telements = {') inElements = true;
    else if (map && inElements && line.startsWith('\t\t\t')) map.elem.push(line);
  }
  return JSON.stringify({ nftables: items });
}
