// Differential test against the kernel: random sites (2–6 LANs) and random policy sets from the
// same generators as the pure differential test (test/support/random-site.ts), applied with the
// CLI in a namespace Connector; random edge-biased flows are sent as real packets and what the
// kernel did is compared with the reference evaluator (agent/ir/evaluator.ts).
//
// Every flow is one exchange from the initiator (request + answer), read as two verdicts:
//   request  delivered? through the tunnel?  → drop | local | cloudflare   vs evaluate(initiate)
//   answer   came back?  through the tunnel? → drop | local | cloudflare   vs evaluate(reply)
// (the answer is only judged when the request arrived: otherwise there is no flow to answer).
// Flows drawn as replies also get "an initiation from the other side": the responder opens the
// same 5-tuple reversed as a new flow, which must follow the policies for that direction.
//
// Replay:  npm run test:replay -- --seed <seed> [--run <n>]      (prints the same scenarios)
// Soak:    npm run test:replay -- --runs 50 --flows 100           (or CACL_DIFF_RUNS / CACL_DIFF_FLOWS)
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import fc from 'fast-check';
import t from 'tap';
import YAML from 'yaml';
import {
  describeExchange, exchangeAnomalies, forwardPath, replyPath, runCli, runExchanges,
  type ExchangeResult, type ExchangeSpec, type Host,
} from '../agent/harness/index.js';
import { describeFlow, evaluate, type Flow, type Verdict } from '../agent/ir/evaluator.js';
import { bigintToAddress, parseSubnet } from '../agent/policy/address.js';
import { kernelSite, kernelSkipReason, rootState } from './support/kernel.js';
import {
  edgesOf, flowPickArbitrary, formatScenario, resolveFlow, scenarioArbitrary, validateScenario, type Scenario,
} from './support/random-site.js';

const SEED = process.env.CACL_DIFF_SEED !== undefined ? Number(process.env.CACL_DIFF_SEED) : Math.floor(Math.random() * 2 ** 31);
const RUNS = Number(process.env.CACL_DIFF_RUNS ?? 6);
const FLOWS = Number(process.env.CACL_DIFF_FLOWS ?? 60);
/** Only this scenario (0-based) of the seed's sequence, for replays. */
const ONLY = process.env.CACL_DIFF_RUN !== undefined ? Number(process.env.CACL_DIFF_RUN) : undefined;
const TIMEOUT_MS = 600;

// ---------------------------------------------------------------------------------------------
// From evaluator flows to packets a namespace site can send

const lanIndex = (id: string): number => Number(id.replace(/^lan-/, ''));

/**
 * The flow's addresses moved into the prefixes the Connector routes to their LANs (LAN n is
 * 198.18.n.0/24 and 2001:db8:n::/64 in the harness), keeping the host part, so a policy edge
 * like .127/.128 stays an edge. Host parts no host can have there (network, router .1/::1,
 * broadcast) become the nearest usable one (.2, .254, ::2).
 */
function rebase(address: string, lan: number, family: 4 | 6): string | undefined {
  const parsed = parseSubnet(address);
  if (!parsed.ok) return undefined;
  const v = parsed.range.first;
  if (family === 4) {
    let host = Number(v & 0xffn);
    if (host <= 1) host = 2;
    if (host === 255) host = 254;
    return `198.18.${lan}.${host}`;
  }
  let low = v & ((1n << 64n) - 1n);
  if (low <= 1n) low = 2n;
  return bigintToAddress((0x20010db8n << 96n) | (BigInt(lan) << 80n) | low, 6);
}

/** What can be sent: ICMP of the flow's family, GRE, 253 for every other protocol, ports 1–65535. */
function realize(flow: Flow): Flow | undefined {
  const initiator = flow.direction === 'initiate' ? flow.ingressLan : flow.egressLan;
  const responder = flow.direction === 'initiate' ? flow.egressLan : flow.ingressLan;
  const src = rebase(flow.src, lanIndex(initiator), flow.family);
  const dst = rebase(flow.dst, lanIndex(responder), flow.family);
  if (!src || !dst) return undefined;
  let protocol = flow.protocol;
  if (protocol === 1 || protocol === 58) protocol = flow.family === 4 ? 1 : 58;
  else if (protocol !== 6 && protocol !== 17 && protocol !== 47) protocol = 253;
  const out: Flow = { ...flow, src, dst, protocol };
  if (protocol === 6 || protocol === 17) {
    out.srcPort = Math.max(1, flow.srcPort ?? 1);
    out.dstPort = Math.max(1, flow.dstPort ?? 1);
  } else {
    delete out.srcPort;
    delete out.dstPort;
  }
  return out;
}

const flowKey = (f: Flow): string => JSON.stringify([f.ingressLan, f.egressLan, f.src, f.dst, f.protocol, f.srcPort, f.dstPort, f.direction]);

/** The flow in the initiator's direction, and the reverse 5-tuple as a new flow from the responder. */
function asInitiate(f: Flow): Flow {
  if (f.direction === 'initiate') return f;
  return { ...f, ingressLan: f.egressLan, egressLan: f.ingressLan, direction: 'initiate' };
}
function otherSide(f: Flow): Flow {
  const i = asInitiate(f);
  return {
    ...i, ingressLan: i.egressLan, egressLan: i.ingressLan, src: i.dst, dst: i.src,
    ...(i.srcPort !== undefined ? { srcPort: i.dstPort, dstPort: i.srcPort } : {}),
  };
}
const asReply = (i: Flow): Flow => ({ ...i, ingressLan: i.egressLan, egressLan: i.ingressLan, direction: 'reply' });

function spec(hosts: Map<string, Host>, f: Flow): ExchangeSpec {
  const proto = f.protocol === 6 ? 'tcp' : f.protocol === 17 ? 'udp' : f.protocol === 1 || f.protocol === 58 ? 'icmp' : 'raw';
  return {
    from: hosts.get(f.ingressLan)!, to: hosts.get(f.egressLan)!, family: f.family, proto,
    ...(proto === 'raw' ? { ipProto: f.protocol } : {}),
    src: f.src, dst: f.dst,
    ...(f.srcPort !== undefined ? { srcPort: f.srcPort, dstPort: f.dstPort } : {}),
  };
}

// ---------------------------------------------------------------------------------------------

interface Check {
  what: string;
  flow: Flow;
  expected: Verdict;
  reason: string;
  seen: Verdict | 'no answer';
  exchange: ExchangeResult;
}

const skip = await kernelSkipReason();
if (skip) {
  t.plan(0, skip);
} else {
  const rootBefore = await rootState();
  const started = Date.now();
  const k = await kernelSite(t, {
    lans: Array.from({ length: 6 }, (_, i) => ({ interface: `lan${i + 1}`, id: `lan-${i + 1}`, name: `LAN ${i + 1}`, hosts: [{ name: `h${i + 1}` }] })),
    wan: false,
  });
  const { site } = k;
  const hosts = new Map(site.lans.map((l) => [l.id, l.hosts[0]]));
  const scenarios = fc.sample(scenarioArbitrary(), { seed: SEED, numRuns: RUNS });
  const replay = (run?: number) => `npm run test:replay -- --seed ${SEED}${run !== undefined ? ` --run ${run}` : ''}`;
  t.comment(`kernel differential: seed ${SEED}, ${RUNS} scenarios × ${FLOWS} flows (replay: ${replay()})`);

  let flowsProbed = 0;
  let exchanges = 0;
  const verdictsSeen: Record<string, number> = { drop: 0, local: 0, cloudflare: 0 };

  for (const [run, scenario] of scenarios.entries()) {
    if (ONLY !== undefined && run !== ONLY) continue;
    t.test(`scenario ${run}: ${(scenario.siteDoc.lans as unknown[]).length} LANs, ${scenario.acls.length} policies`, async (t) => {
      // The harness's tunnel has an IPv6 gateway too (a device route alone would need proxy ND).
      const siteDoc = { ...scenario.siteDoc, tunnel: { interface: 'cf0', gateway: '198.18.100.2', gateway6: '2001:db8:100::2' } };
      const used: Scenario = { siteDoc, acls: scenario.acls };
      const { site: model, policies } = validateScenario(used);
      const siteFile = path.join(k.dir, `diff-${run}-site.yaml`);
      const policyFile = path.join(k.dir, `diff-${run}-policies.yaml`);
      await writeFile(siteFile, YAML.stringify(siteDoc));
      await writeFile(policyFile, YAML.stringify(scenario.acls));
      const applied = await runCli(site, ['apply', '-c', siteFile, '-p', policyFile]);
      if (applied.code !== 0) {
        t.fail(`apply failed (exit ${applied.code}) — seed ${SEED} run ${run}\n${applied.stderr}\n${formatScenario(used)}`);
        return;
      }

      // Flows: edge-biased picks, made sendable, without duplicates.
      const edges = edgesOf(model, policies);
      const picks = fc.sample(fc.array(flowPickArbitrary, { minLength: FLOWS * 4, maxLength: FLOWS * 4 }), { seed: SEED + run + 1, numRuns: 1 })[0];
      const flows: Flow[] = [];
      const seenKeys = new Set<string>();
      for (const p of picks) {
        const f = realize(resolveFlow(edges, p));
        if (!f || seenKeys.has(flowKey(f))) continue;
        seenKeys.add(flowKey(f));
        flows.push(f);
        if (flows.length >= FLOWS) break;
      }

      // Every address a flow uses lives on its LAN's host.
      const need = new Map<string, Set<string>>();
      for (const f of flows) {
        const i = asInitiate(f);
        for (const [lan, addr] of [[i.ingressLan, i.src], [i.egressLan, i.dst]] as const) {
          if (!need.has(lan)) need.set(lan, new Set());
          need.get(lan)!.add(addr);
        }
      }
      await Promise.all([...need].map(([lan, addrs]) => site.addAddresses(hosts.get(lan)!, [...addrs])));

      // One exchange per flow from its initiator; replies also get the other side's initiation.
      const plan: { kind: 'flow' | 'other side'; flow: Flow }[] = [];
      for (const f of flows) {
        plan.push({ kind: 'flow', flow: asInitiate(f) });
        if (f.direction === 'reply') plan.push({ kind: 'other side', flow: otherSide(f) });
      }
      const results = await runExchanges(site, plan.map((p) => spec(hosts, p.flow)), { flushConntrack: true, timeoutMs: TIMEOUT_MS, maxPerRound: 64 });
      flowsProbed += flows.length;
      exchanges += results.length;

      const checks: Check[] = [];
      const anomalies: string[] = [];
      results.forEach((x, i) => {
        const { kind, flow } = plan[i];
        const init = evaluate(model, policies, flow);
        const fwd = forwardPath(x);
        verdictsSeen[fwd]++;
        checks.push({ what: `${kind}: request`, flow, expected: init.verdict, reason: init.reason, seen: fwd, exchange: x });
        if (fwd !== 'drop') {
          const back = replyPath(x);
          const reply = evaluate(model, policies, asReply(flow));
          checks.push({ what: `${kind}: answer`, flow: asReply(flow), expected: reply.verdict, reason: reply.reason, seen: back ?? 'no answer', exchange: x });
        }
        for (const a of exchangeAnomalies(x)) anomalies.push(`${a}: ${describeExchange(x)}`);
      });
      const mismatches = checks.filter((c) => c.seen !== c.expected);
      const report = (m: Check) => [
        `--- ${m.what}: kernel ${m.seen}, evaluator ${m.expected}`,
        `flow: ${describeFlow(model, m.flow)}`,
        `      ${JSON.stringify(m.flow)}`,
        `evaluator: ${m.reason}`,
        `packets: ${describeExchange(m.exchange)}`,
      ].join('\n');
      if (mismatches.length > 0 || anomalies.length > 0) {
        console.error([
          `KERNEL DIFFERENTIAL MISMATCH — seed ${SEED}, scenario ${run}; replay: ${replay(run)}`,
          formatScenario(used),
          ...mismatches.slice(0, 10).map(report),
          ...(mismatches.length > 10 ? [`… and ${mismatches.length - 10} more`] : []),
          ...anomalies.slice(0, 10).map((a) => `--- counters: ${a}`),
        ].join('\n'));
      }
      t.equal(mismatches.length, 0, `kernel and evaluator agree on ${checks.length} verdicts (${flows.length} flows, ${results.length} exchanges) — seed ${SEED}, scenario ${run}`,
        mismatches.length ? { first: report(mismatches[0]), replay: replay(run) } : {});
      t.same(anomalies, [], 'every exchange\'s counters are consistent (nothing lost, looped or on the wrong path)');
    });
  }

  t.test('enough flows, every verdict exercised; the root namespace untouched', async (t) => {
    if (ONLY === undefined) {
      t.ok(flowsProbed >= Math.min(200, RUNS * FLOWS * 0.9), `${flowsProbed} random flows probed with ${exchanges} exchanges`);
      for (const v of ['drop', 'local', 'cloudflare']) t.ok(verdictsSeen[v] > 0, `requests the kernel ${v === 'drop' ? 'dropped' : v === 'local' ? 'forwarded locally' : 'sent via Cloudflare'}: ${verdictsSeen[v]}`);
    }
    t.equal(await rootState(), rootBefore);
    t.comment(`kernel differential: seed ${SEED}, ${flowsProbed} flows, ${exchanges} exchanges, ${((Date.now() - started) / 1000).toFixed(1)} s`);
  });
}
