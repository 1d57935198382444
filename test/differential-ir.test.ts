// Differential test: the compiled IR (interpreted as the kernel would walk it) and the rendered
// nft script (simulated rule by rule) against the independent reference evaluator, on random
// sites, policy sets and boundary-biased flows.
//
// Replay a failure:   FC_SEED=<seed> FC_PATH=<path> npx tap test/differential-ir.test.ts
// Longer soak:        FC_RUNS=2000 npx tap test/differential-ir.test.ts
import t from 'tap';
import fc from 'fast-check';
import { describeFlow, evaluate, type Flow } from '../agent/ir/evaluator.js';
import { lower } from '../agent/ir/lower.js';
import type { Policy, Site } from '../agent/policy/model.js';
import { render } from '../agent/nft/render.js';
import { lookupIr } from './support/ir-lookup.js';
import { parseRuleset, simulate } from './support/nft-sim.js';
import {
  edgesOf, flowPickArbitrary, formatScenario, resolveFlow, scenarioArbitrary, validateScenario,
} from './support/random-site.js';

const RUNS = Number(process.env.FC_RUNS ?? 100);
const FLOWS_PER_SITE = 60;
const seedParams = <T>(): fc.Parameters<T> => ({
  numRuns: RUNS,
  ...(process.env.FC_SEED ? { seed: Number(process.env.FC_SEED) } : {}),
  ...(process.env.FC_PATH ? { path: process.env.FC_PATH } : {}),
});

interface Mismatch {
  flow: Flow;
  expected: ReturnType<typeof evaluate>;
  got: ReturnType<typeof lookupIr> | { rendered: string };
  problem: string;
}

/** The first flow on which the IR and the evaluator disagree, or undefined. */
function firstMismatch(site: Site, policies: Policy[], flows: Flow[]): Mismatch | undefined {
  const compiled = lower(site, policies);
  const ruleset = parseRuleset(render(compiled).text);
  for (const flow of flows) {
    const expected = evaluate(site, policies, flow);
    // The rendered script, walked as the kernel would (checks the renderer's chains and keys).
    const rendered = simulate(ruleset, site, flow);
    if (rendered !== expected.verdict) {
      return { flow, expected, got: { rendered }, problem: `rendered ruleset says ${rendered}, evaluator says ${expected.verdict}` };
    }
    const got = lookupIr(compiled, flow);
    if (expected.verdict !== got.verdict) return { flow, expected, got, problem: `verdict ${got.verdict}, evaluator says ${expected.verdict}` };
    if (got.verdict === 'drop' || got.policy === undefined) continue;
    // The element jumps to one policy's chain (its counter counts the packet): it must be one
    // that allows this packet on the path taken.
    const owners = expected.matches.filter((m) => m.path === got.verdict).map((m) => m.id);
    if (!owners.includes(got.policy)) {
      return { flow, expected, got, problem: `counted on ${got.policy}, which is not among the allowing policies ${owners.join(', ')}` };
    }
  }
  return undefined;
}

t.test('compiled IR and rendered ruleset agree with the reference evaluator', async (t) => {
  let flowsChecked = 0;
  const verdicts = { drop: 0, local: 0, cloudflare: 0 };
  const arb = scenarioArbitrary().chain((scenario) => {
    const { site, policies } = validateScenario(scenario);
    const edges = edgesOf(site, policies);
    return fc.array(flowPickArbitrary, { minLength: FLOWS_PER_SITE, maxLength: FLOWS_PER_SITE })
      .map((picks) => ({ scenario, flows: picks.map((p) => resolveFlow(edges, p)) }));
  });
  const started = Date.now();
  const details = fc.check(fc.property(arb, ({ scenario, flows }) => {
    const { site, policies } = validateScenario(scenario);
    flowsChecked += flows.length;
    for (const f of flows) verdicts[evaluate(site, policies, f).verdict]++;
    return firstMismatch(site, policies, flows) === undefined;
  }), seedParams());

  if (details.failed && details.counterexample) {
    const [{ scenario, flows }] = details.counterexample;
    const { site, policies } = validateScenario(scenario);
    let m: Mismatch | undefined;
    try {
      m = firstMismatch(site, policies, flows);
    } catch {
      // the property threw: details.errorInstance below says where
    }
    const report = [
      `IR and evaluator disagree (seed ${details.seed}, path "${details.counterexamplePath}")`,
      `replay: FC_SEED=${details.seed} FC_PATH="${details.counterexamplePath}" npx tap test/differential-ir.test.ts`,
      formatScenario(scenario),
      m ? `--- flow\n${describeFlow(site, m.flow)}\n${JSON.stringify(m.flow)}` : '(no mismatch on replay)',
      m ? `--- ${m.problem}\nevaluator: ${m.expected.verdict}: ${m.expected.reason}\nIR: ${JSON.stringify(m.got)}` : '',
      !m && details.errorInstance ? `--- error\n${String((details.errorInstance as Error).stack ?? details.errorInstance)}` : '',
    ].join('\n');
    console.error(report);
    t.fail(`IR and evaluator disagree: seed ${details.seed}, repro on stderr`);
  } else {
    t.ok(!details.failed, `agree on ${flowsChecked} flows (${JSON.stringify(verdicts)}) in ${Date.now() - started} ms, seed ${details.seed}`);
  }
  t.ok(flowsChecked >= 2000 || RUNS * FLOWS_PER_SITE < 2000, `at least 2000 flows checked (${flowsChecked})`);
  for (const v of ['drop', 'local', 'cloudflare'] as const) t.ok(verdicts[v] > 100, `the flows exercise "${v}" (${verdicts[v]})`);
});

t.test('the rendered ruleset does not depend on the order of the policies', async (t) => {
  fc.assert(fc.property(scenarioArbitrary(), fc.nat(), (scenario, seed) => {
    const { site, policies } = validateScenario(scenario);
    const shuffled = policies.map((p, i) => [((i + 1) * 2654435761 + seed) % 4294967296, p] as const)
      .sort((a, b) => a[0] - b[0]).map(([, p]) => p);
    const [a, b] = [policies, shuffled].map((ps) => render(lower(site, ps)).text);
    if (a !== b) throw new Error(`order changed the output\n${formatScenario(scenario)}`);
  }), { numRuns: 100, ...(process.env.FC_SEED ? { seed: Number(process.env.FC_SEED) } : {}) });
  t.pass('100 random sites, policies shuffled');
});
