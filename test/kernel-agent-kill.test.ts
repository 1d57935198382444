// kill -9 of the agent at random moments while it applies: the kernel always holds a whole
// ruleset (the table's manifest and hash are exactly those of set A or set B, never a mix or a
// missing table), last-known-good on disk is always whole, and the next start converges on the
// policies file. source: file, so every change is one atomic rename of the file.
import { readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import YAML from 'yaml';
import { rulesetHash } from '../agent/apply/engine.js';
import { lower } from '../agent/ir/lower.js';
import { compareManifests, parseLiveTable, rulesetComment } from '../agent/nft/live.js';
import { render, type Manifest } from '../agent/nft/render.js';
import { parsePolicies } from '../agent/policy/acl.js';
import { parseSite } from '../agent/policy/site.js';
import { AgentProcess } from './support/agent-proc.js';
import { kernelSite, kernelSkipReason, rootState } from './support/kernel.js';

const ROUNDS = Number(process.env.KILL_ROUNDS ?? 20);
const POLICIES = 300; // a ~120 KB script: nft reads its stdin in several chunks, so a kill can cut it short

const skip = await kernelSkipReason();
if (skip) {
  t.plan(0, skip);
} else {
  const rootBefore = await rootState();
  const k = await kernelSite(t, { lans: [{ interface: 'lan1' }, { interface: 'lan2' }, { interface: 'lan3' }], tunnel: false, wan: false });
  const { site, dir } = k;
  const stateDir = path.join(dir, 'state');
  const policiesFile = path.join(dir, 'policies.json');
  const siteDoc = { ...site.siteConfig({ policies: 'policies.json' }), agent: { source: 'file', state_dir: stateDir } };
  const configFile = path.join(dir, 'agent.yaml');
  await writeFile(configFile, YAML.stringify(siteDoc));
  const parsedSite = parseSite(siteDoc, configFile).site!;

  // Two large sets that differ everywhere: every apply rewrites every map.
  const makeSet = (variant: number) => Array.from({ length: POLICIES }, (_, i) => {
    const a = site.lans[i % 3];
    const b = site.lans[(i + 1 + variant) % 3]; // never a itself
    return {
      id: `k${variant}_${i}`, name: `set ${variant} #${i}`, forward_locally: true, protocols: ['tcp', 'udp'],
      lan_1: { lan_id: a.id, subnets: [`198.18.${a.n}.${1 + (i % 250)}`] },
      lan_2: { lan_id: b.id, subnets: [`198.18.${b.n}.${1 + ((i * 7) % 250)}`], ports: [1024 + ((i * 13 + variant * 101) % 60000)] },
    };
  });
  const sets = [makeSet(0), makeSet(1)].map((acls) => {
    const parsed = parsePolicies([{ file: 'x', content: acls }], parsedSite);
    if (parsed.problems.some((p) => p.severity === 'error')) throw new Error(JSON.stringify(parsed.problems.slice(0, 3)));
    const ir = lower(parsedSite, parsed.policies);
    return { acls, hash: rulesetHash(ir), manifest: render(ir).manifest };
  });
  t.not(sets[0].hash, sets[1].hash);

  const writeSet = async (n: number) => {
    const tmp = `${policiesFile}.tmp`;
    await writeFile(tmp, JSON.stringify(sets[n].acls));
    await rename(tmp, policiesFile);
  };
  const liveTable = async () => {
    const r = await site.exec(site.connector, ['nft', '-j', 'list', 'table', 'inet', 'connector_acl'], { timeoutMs: 20_000 });
    if (r.code !== 0) return { missing: true as const, error: r.stderr };
    const text = await site.exec(site.connector, ['nft', 'list', 'table', 'inet', 'connector_acl'], { timeoutMs: 20_000 });
    return { missing: false as const, live: parseLiveTable(r.stdout, 'connector_acl')!, comment: rulesetComment(text.stdout) };
  };
  /** Which set the kernel holds, or a description of what is wrong. */
  const wholeSet = async (): Promise<{ set?: number; why?: string }> => {
    const l = await liveTable();
    if (l.missing) return { why: `the table is missing: ${l.error}` };
    const hash = /hash=(\w+)/.exec(l.comment ?? '')?.[1];
    // An update is two transactions (agent/nft/update.ts): a kill between them leaves the old set
    // whole and in force beside the next generation's prepared maps and empty chains, which no
    // rule references; the next apply deletes them. Those leftovers are inert, so not partial.
    const inert = (d: string) =>
      /^unexpected map /.test(d) || /exists in two generations$/.test(d) ||
      (/^unexpected chain (\S+)$/.test(d) && l.live.manifest.chains[/^unexpected chain (\S+)$/.exec(d)![1]] === 0);
    for (const n of [0, 1]) {
      const diffs = compareManifests(sets[n].manifest as Manifest, l.live.manifest).filter((d) => !inert(d));
      if (diffs.length === 0 && hash === sets[n].hash) return { set: n };
    }
    return { why: `hash ${hash}; vs A: ${compareManifests(sets[0].manifest, l.live.manifest).slice(0, 3).join(', ')}; vs B: ${compareManifests(sets[1].manifest, l.live.manifest).slice(0, 3).join(', ')}` };
  };
  const lkgWhole = async (): Promise<string | undefined> => {
    const json = JSON.parse(await readFile(path.join(stateDir, 'lkg.json'), 'utf8')) as { rulesetHash: string; documents: { content: unknown[] }[] };
    if (![sets[0].hash, sets[1].hash].includes(json.rulesetHash)) return `lkg.json holds ruleset ${json.rulesetHash}`;
    const n = json.rulesetHash === sets[0].hash ? 0 : 1;
    if ((json.documents[0]?.content ?? []).length !== POLICIES) return `lkg.json holds ${json.documents[0]?.content.length} policies`;
    const script = await readFile(path.join(stateDir, 'lkg-ruleset.nft'), 'utf8');
    const h = /hash=(\w+)/.exec(script)?.[1];
    if (h !== sets[0].hash && h !== sets[1].hash) return `lkg-ruleset.nft holds ruleset ${h}`;
    if (!script.trimEnd().endsWith('}')) return 'lkg-ruleset.nft is cut short';
    return n === undefined ? 'impossible' : undefined;
  };

  /** Resolves when the agent has an `nft -f -` child (an apply's load), polling /proc every 2 ms. */
  const nftLoadStarted = async (pid: number, timeoutMs: number): Promise<boolean> => {
    const until = Date.now() + timeoutMs;
    while (Date.now() < until) {
      const children = (await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8').catch(() => '')).split(/\s+/).filter(Boolean);
      for (const c of children) {
        const cmd = await readFile(`/proc/${c}/cmdline`, 'utf8').catch(() => '');
        if (cmd === 'nft\0-f\0-\0') return true;
      }
      await new Promise((r) => setTimeout(r, 2));
    }
    return false;
  };

  const waitConverged = async (agent: AgentProcess, n: number, timeoutMs = 20_000): Promise<number> => {
    const started = Date.now();
    while (Date.now() - started < timeoutMs) {
      // Cheap poll on the hash in the table comment, then the full comparison once.
      const text = await site.exec(site.connector, ['nft', 'list', 'table', 'inet', 'connector_acl'], { timeoutMs: 20_000 });
      if (/hash=(\w+)/.exec(rulesetComment(text.stdout) ?? '')?.[1] === sets[n].hash && (await wholeSet()).set === n) return Date.now() - started;
      if (!agent.running) throw new Error(`the agent exited: ${agent.tail()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`did not converge on set ${n} within ${timeoutMs} ms: ${agent.tail()}`);
  };

  t.test(`kill -9 during applies, ${ROUNDS} times: always a whole ruleset, and the next start converges`, async (t) => {
    await writeSet(0);
    let current = 0;
    let agent = new AgentProcess(site, ['-c', configFile, 'agent', '--drift-interval', '10s']);
    t.teardown(() => agent.kill9());
    await waitConverged(agent, 0);
    const applyMs = Number((await agent.event('apply')).durationMs);
    t.comment(`one apply of ${POLICIES} policies takes ${applyMs} ms in the agent`);
    const outcomes = { old: 0, new: 0 };
    let inFlight = 0;
    const broken: string[] = [];
    for (let round = 1; round <= ROUNDS; round++) {
      const next = 1 - current;
      await writeSet(next);
      // Odd rounds: kill at a random moment between the file change, the debounce, the apply and
      // the LKG write. Even rounds: kill while the `nft -f -` transaction is being fed (its stdin
      // may be cut short) or right after.
      const changed = Date.now();
      let delay: number;
      if (round % 2 === 1) {
        delay = Math.floor(Math.random() * (300 + applyMs * 2 + 200));
        await new Promise((r) => setTimeout(r, delay));
      } else {
        await nftLoadStarted(agent.pid, 3000);
        await new Promise((r) => setTimeout(r, Math.floor(Math.random() * 15)));
        delay = Date.now() - changed;
      }
      await agent.kill9();
      // Was an nft transaction still in flight (orphaned by the kill)?
      const pids = (await site.exec(site.connector, ['ip', 'netns', 'pids', site.connector])).stdout.split(/\s+/).filter(Boolean);
      const comms = await Promise.all(pids.map((p) => readFile(`/proc/${p}/comm`, 'utf8').catch(() => '')));
      if (comms.some((c) => c.trim() === 'nft')) inFlight++;
      for (const after of [0, 250]) {
        await new Promise((r) => setTimeout(r, after));
        const w = await wholeSet();
        if (w.set === undefined) broken.push(`round ${round} (killed ${delay} ms after the change, checked +${after} ms): ${w.why}`);
        else if (after === 250) outcomes[w.set === next ? 'new' : 'old']++;
      }
      const lkg = await lkgWhole().catch((e: Error) => e.message);
      if (lkg) broken.push(`round ${round}: last-known-good: ${lkg}`);
      // The next start converges on the file, whatever the kill left.
      const t0 = Date.now();
      agent = new AgentProcess(site, ['-c', configFile, 'agent', '--drift-interval', '10s']);
      await agent.event('file-source');
      const t1 = Date.now();
      await waitConverged(agent, next);
      if (process.env.KILL_DEBUG) t.comment(`round ${round}: start ${t1 - t0} ms, converge ${Date.now() - t1} ms`);
      current = next;
    }
    t.same(broken, [], 'never a partial or missing ruleset, never a torn last-known-good');
    t.comment(`after the kills the kernel held the old set ${outcomes.old} times and the new set ${outcomes.new} times; ${inFlight} kills left an nft load in flight`);
    t.ok(outcomes.old > 0 && outcomes.new > 0, 'kills landed both before and after the new set went in');
    await agent.stop();
  });

  t.test('the root namespace is untouched', async (t) => {
    t.equal(await rootState(), rootBefore);
  });
}
