// `connector-acl explain`: what the policies say about one flow, and why, from the reference
// evaluator (independent of the compiler, so it also cross-checks what `compile` produced).
import { Command, InvalidArgumentError } from 'commander';
import { InputError } from '../apply/errors.js';
import { describeFlow, evaluate, FlowError, type Flow } from '../ir/evaluator.js';
import { loadInputs } from '../io/inputs.js';
import { parseSubnet } from '../policy/address.js';
import type { Site } from '../policy/model.js';
import { formatProblem } from '../policy/problems.js';

const PROTOCOLS: Record<string, number> = { tcp: 6, udp: 17, icmp: 1, icmpv6: 58, gre: 47, esp: 50, sctp: 132 };

const port = (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError('a port is 0–65535');
  return n;
};

/** The LAN whose declared subnets hold the address (most specific first). */
function lanOf(site: Site, address: string): string | undefined {
  const parsed = parseSubnet(address);
  if (!parsed.ok) return undefined;
  const a = parsed.range;
  let best: { id: string; size: bigint } | undefined;
  for (const lan of site.lans) {
    for (const s of lan.subnets) {
      if (s.family === a.family && s.first <= a.first && a.first <= s.last && (!best || s.last - s.first < best.size)) {
        best = { id: lan.id, size: s.last - s.first };
      }
    }
  }
  return best?.id;
}

export function register(program: Command): void {
  program.command('explain')
    .description('say whether a flow between two LANs is allowed, on which path, and which policies decide it')
    .requiredOption('--src <address>', 'initiator address (the flow\'s original source)')
    .requiredOption('--dst <address>', 'responder address')
    .option('--proto <name|number>', 'tcp, udp, icmp or an IP protocol number', 'tcp')
    .option('--sport <port>', 'initiator port (TCP/UDP)', port, 40000)
    .option('--dport <port>', 'responder port (TCP/UDP)', port)
    .option('--from <lan>', 'initiator LAN id or name (default: from --src and the LAN subnets)')
    .option('--to <lan>', 'responder LAN id or name (default: from --dst and the LAN subnets)')
    .option('--reply', 'judge the reply packet of this flow instead of the initiating one')
    .action(async (cmd: { src: string; dst: string; proto: string; sport: number; dport?: number; from?: string; to?: string; reply?: boolean }) => {
      const opts = program.opts<{ config: string; policies?: string }>();
      const inputs = await loadInputs(opts.config, opts.policies);
      for (const p of inputs.problems.filter((x) => x.severity === 'error')) process.stderr.write(`error: ${formatProblem(p)}\n`);
      if (!inputs.ok || !inputs.site || !inputs.policies) throw new InputError('the config or policies do not load');
      const site = inputs.site;
      const protocol = PROTOCOLS[cmd.proto.toLowerCase()] ?? Number(cmd.proto);
      const parsed = parseSubnet(cmd.src);
      const family = parsed.ok ? parsed.range.family : 4;
      const from = cmd.from ?? lanOf(site, cmd.src);
      const to = cmd.to ?? lanOf(site, cmd.dst);
      if (!from || !to) throw new InputError(`cannot tell the ${!from ? 'initiator' : 'responder'}'s LAN from its address: give --${!from ? 'from' : 'to'}`);
      if ((protocol === 6 || protocol === 17) && cmd.dport === undefined) throw new InputError('--dport is required for TCP and UDP');
      const icmp = protocol === 1 && family === 6 ? 58 : protocol;
      const flow: Flow = {
        ingressLan: cmd.reply ? to : from, egressLan: cmd.reply ? from : to, family, src: cmd.src, dst: cmd.dst,
        protocol: icmp, srcPort: cmd.sport, dstPort: cmd.dport, direction: cmd.reply ? 'reply' : 'initiate',
      };
      try {
        const e = evaluate(site, inputs.policies, flow);
        process.stdout.write(`${describeFlow(site, flow)}\n`);
        process.stdout.write(`verdict: ${e.verdict === 'drop' ? 'DROP' : e.verdict === 'local' ? 'ALLOW (forwarded locally)' : 'ALLOW (via Cloudflare)'}\n`);
        process.stdout.write(`because: ${e.reason}\n`);
        if (e.verdict === 'drop') process.exitCode = 4;
      } catch (err) {
        if (err instanceof FlowError) throw new InputError(err.message);
        throw err;
      }
    })
    .addHelpText('after', '\nExit code 4 when the flow is dropped (0 when allowed), so scripts can assert policy.');
}
