// npm run bench:pps — per-packet cost against the number of policies, measured with real packets.
// Three throwaway namespaces (sender → Connector → receiver); iperf3 sends 64-byte UDP frames
// through a LAN pair whose maps hold N policies. Median of interleaved runs, packets per second
// received. Never touches the host's own namespace.
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { lower } from '../agent/ir/lower.js';
import { NftClient } from '../agent/nft/client.js';
import { netnsRunner } from '../agent/nft/exec.js';
import { render } from '../agent/nft/render.js';
import { validate } from '../agent/policy/load.js';

const SIZES = (process.env.BENCH_PPS_SIZES ?? '1,1000,10000,100000').split(',').map(Number);
const RUNS = Number(process.env.BENCH_PPS_RUNS ?? 3);
const SECONDS = Number(process.env.BENCH_PPS_SECONDS ?? 3);
const tag = `cacl-pps-${randomBytes(3).toString('hex')}`;
const [SND, CON, RCV] = ['s', 'c', 'r'].map((x) => `${tag}-${x}`);

const ip = (...args: string[]) => execFileSync('ip', args, { stdio: ['ignore', 'pipe', 'pipe'] });
const inNs = (ns: string, ...argv: string[]) => execFileSync('ip', ['netns', 'exec', ns, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] }).toString();

function cleanup(): void {
  for (const ns of [SND, CON, RCV]) {
    try { ip('netns', 'del', ns); } catch { /* not there */ }
  }
}

function build(): void {
  for (const ns of [SND, CON, RCV]) ip('netns', 'add', ns);
  ip('-n', CON, 'link', 'add', 'lan1', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', SND);
  ip('-n', CON, 'link', 'add', 'lan2', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', RCV);
  ip('-n', CON, 'addr', 'add', '198.18.1.1/24', 'dev', 'lan1');
  ip('-n', CON, 'addr', 'add', '198.18.2.1/24', 'dev', 'lan2');
  ip('-n', SND, 'addr', 'add', '198.18.1.10/24', 'dev', 'eth0');
  ip('-n', RCV, 'addr', 'add', '198.18.2.10/24', 'dev', 'eth0');
  for (const [ns, dev] of [[CON, 'lan1'], [CON, 'lan2'], [SND, 'eth0'], [RCV, 'eth0'], [SND, 'lo'], [RCV, 'lo'], [CON, 'lo']]) {
    ip('-n', ns, 'link', 'set', dev, 'up');
  }
  ip('-n', SND, 'route', 'add', 'default', 'via', '198.18.1.1');
  ip('-n', RCV, 'route', 'add', 'default', 'via', '198.18.2.1');
  inNs(CON, 'sysctl', '-qw', 'net.ipv4.ip_forward=1');
}

const site = {
  lans: [
    { id: 'lan1', name: 'LAN 1', interface: 'lan1', subnets: ['198.18.1.0/24'] },
    { id: 'lan2', name: 'LAN 2', interface: 'lan2', subnets: ['198.18.2.0/24'] },
  ],
};

/** N policies on the one LAN pair the probe crosses; exactly one of them allows the probe. */
function policies(n: number) {
  let s = 7;
  const rnd = () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32);
  const probe = {
    id: 'probe', name: 'iperf3 probe', forward_locally: true, protocols: ['tcp', 'udp'],
    lan_1: { lan_id: 'lan1', subnets: ['198.18.1.10'] }, lan_2: { lan_id: 'lan2', subnets: ['198.18.2.10'], ports: [5201] },
  };
  const rest = Array.from({ length: n - 1 }, (_, i) => ({
    id: `p${i}`, name: `filler ${i}`, forward_locally: true, protocols: [rnd() < 0.5 ? 'tcp' : 'udp'],
    lan_1: { lan_id: 'lan1', subnets: [`198.18.1.${1 + Math.floor(rnd() * 254)}`] },
    lan_2: { lan_id: 'lan2', subnets: [`198.18.2.${1 + Math.floor(rnd() * 254)}`], ports: [5202 + Math.floor(rnd() * 60000)] },
  }));
  return [probe, ...rest];
}

async function measure(): Promise<number> {
  const server = spawn('ip', ['netns', 'exec', RCV, 'iperf3', '-s', '-1', '-p', '5201', '-J'], { stdio: ['ignore', 'pipe', 'ignore'] });
  let json = '';
  server.stdout.on('data', (b) => (json += b));
  await new Promise((r) => setTimeout(r, 300));
  try {
    inNs(SND, 'iperf3', '-c', '198.18.2.10', '-p', '5201', '-u', '-l', '18', '-b', '0', '-t', String(SECONDS));
  } catch { /* the server's report below says what arrived */ }
  await new Promise<void>((r) => server.on('close', () => r()));
  const report = JSON.parse(json);
  const sum = report.end?.sum ?? {};
  return ((sum.packets ?? 0) - (sum.lost_packets ?? 0)) / (sum.seconds ?? SECONDS);
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main(): Promise<void> {
  process.on('exit', cleanup);
  process.on('SIGINT', () => process.exit(130));
  try { execFileSync('iperf3', ['--version']); } catch {
    console.error('bench:pps needs iperf3: apt-get install -y iperf3');
    process.exit(3);
  }
  build();
  const nft = new NftClient(netnsRunner(CON));
  const scenarios: { label: string; script?: string; elements: number }[] = [
    { label: 'no table (ceiling)', elements: 0 },
    // Conntrack alone costs a share of the ceiling; every stateful firewall pays it.
    {
      label: 'conntrack only',
      elements: 0,
      script: 'table inet connector_acl {\n\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tct state established counter\n\t}\n}\n',
    },
  ];
  for (const n of SIZES) {
    const v = validate(site, 'bench', [{ file: 'bench', content: policies(n) }]);
    if (!v.ok) throw new Error('bench policies invalid');
    const r = render(lower(v.site!, v.policies!));
    scenarios.push({ label: `${n} policies`, script: r.text, elements: r.elementCount });
  }
  const results = new Map<string, number[]>(scenarios.map((s) => [s.label, []]));
  const loadMs = new Map<string, number>();
  // Interleaved: every scenario once per round, so drift in the machine's load hits all alike.
  for (let round = 0; round < RUNS; round++) {
    for (const s of scenarios) {
      await nft.deleteTable('connector_acl');
      if (s.script) {
        const t0 = Date.now();
        await nft.load(s.script);
        loadMs.set(s.label, Date.now() - t0);
      }
      results.get(s.label)!.push(await measure());
    }
  }
  console.log(`connector-acl bench:pps — 64-byte UDP through one LAN pair, median of ${RUNS} × ${SECONDS} s runs`);
  console.log('scenario                 elements   load_ms   rx_pps   vs_ceiling');
  const ceiling = median(results.get(scenarios[0].label)!);
  for (const s of scenarios) {
    const pps = median(results.get(s.label)!);
    console.log(`${s.label.padEnd(24)} ${String(s.elements).padStart(8)} ${String(loadMs.get(s.label) ?? '-').padStart(9)} ${pps.toFixed(0).padStart(8)} ${((pps / ceiling) * 100).toFixed(0).padStart(10)}%`);
  }
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
