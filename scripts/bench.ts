// npm run bench: how compile and load scale with the number of policies.
// Compile figures are pure; load figures use a throwaway network namespace (never the host's).
import { execFileSync } from 'node:child_process';
import { lower } from '../agent/ir/lower.js';
import { NftClient } from '../agent/nft/client.js';
import { netnsRunner } from '../agent/nft/exec.js';
import { render } from '../agent/nft/render.js';
import { liveObjectsFromText, nextGeneration, updateScripts } from '../agent/nft/update.js';
import { validate } from '../agent/policy/load.js';

const SIZES = (process.env.BENCH_SIZES ?? '100,1000,10000').split(',').map(Number);
const LANS = 8;

/** Deterministic pseudo-random numbers, so every run measures the same policy set. */
function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s ^ (s >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0) / 2 ** 32);
}

export function syntheticSite(lans = LANS) {
  return {
    table: 'connector_acl',
    lans: Array.from({ length: lans }, (_, i) => ({
      id: `lan${i + 1}`, name: `LAN ${i + 1}`, interface: `lan${i + 1}`, subnets: [`198.18.${i + 1}.0/24`, `2001:db8:${i + 1}::/64`],
    })),
    tunnel: { interface: 'cf0', gateway: '198.18.100.2' },
  };
}

/** Policies as a large site would write them: host or small-subnet pairs, a port or a range, mixed protocols. */
export function syntheticPolicies(n: number, seed = 1, lans = LANS) {
  const rnd = prng(seed);
  const pick = <T>(xs: T[]) => xs[Math.floor(rnd() * xs.length)];
  return Array.from({ length: n }, (_, i) => {
    const a = 1 + Math.floor(rnd() * lans);
    let b = 1 + Math.floor(rnd() * (lans - 1));
    if (b >= a) b++;
    const host = (lan: number) => `198.18.${lan}.${1 + Math.floor(rnd() * 254)}`;
    const proto = pick([['tcp'], ['udp'], ['tcp', 'udp'], ['icmp'], []]);
    const port = 1 + Math.floor(rnd() * 60000);
    return {
      id: `p${String(i).padStart(6, '0')}`,
      name: `synthetic ${i}`,
      lan_1: { lan_id: `lan${a}`, subnets: [rnd() < 0.7 ? host(a) : `198.18.${a}.${Math.floor(rnd() * 8) * 32}/27`] },
      lan_2: {
        lan_id: `lan${b}`,
        subnets: [host(b)],
        ...(proto.includes('icmp') ? {} : rnd() < 0.8 ? { ports: [port] } : { port_ranges: [`${port}-${port + 100}`] }),
      },
      protocols: proto,
      unidirectional: !proto.includes('tcp') && proto.length > 0 && rnd() < 0.2,
      forward_locally: rnd() < 0.5,
    };
  });
}

function ms(since: bigint): number {
  return Number(process.hrtime.bigint() - since) / 1e6;
}

async function main(): Promise<void> {
  const ns = `cacl-bench-${process.pid}`;
  execFileSync('ip', ['netns', 'add', ns]);
  const cleanup = () => { try { execFileSync('ip', ['netns', 'del', ns]); } catch { /* already gone */ } };
  process.on('exit', cleanup);
  process.on('SIGINT', () => process.exit(130));
  const nft = new NftClient(netnsRunner(ns));
  console.log(`connector-acl bench: ${LANS} LANs, node ${process.version}, ${await nft.version()}`);
  console.log('policies  validate_ms  compile_ms  render_ms  elements  script_kB  heap_MB  load_ms  update_ms  readback_ms');
  for (const n of SIZES) {
    const acls = syntheticPolicies(n);
    global.gc?.();
    const heapBefore = process.memoryUsage().heapUsed;
    let t0 = process.hrtime.bigint();
    const v = validate(syntheticSite(), 'bench-site', [{ file: 'bench.json', content: acls }]);
    const validateMs = ms(t0);
    if (!v.ok) throw new Error(`synthetic policies do not validate: ${v.problems.find((p) => p.severity === 'error')?.message}`);
    t0 = process.hrtime.bigint();
    const ir = lower(v.site!, v.policies!);
    const compileMs = ms(t0);
    t0 = process.hrtime.bigint();
    const rendered = render(ir, { meta: 'bench', generation: 1 });
    const renderMs = ms(t0);
    const heapMb = (process.memoryUsage().heapUsed - heapBefore) / 1e6;
    t0 = process.hrtime.bigint();
    await nft.load(rendered.text);
    const loadMs = ms(t0);
    // A re-apply as apply does it on a live table: listing, then prepare + commit (update.ts).
    t0 = process.hrtime.bigint();
    const live = liveObjectsFromText((await nft.tableText('connector_acl'))!);
    const next = updateScripts('connector_acl', render(ir, { meta: 'bench 2', generation: nextGeneration(live) }), live, { keepUnchangedPolicyChains: true });
    await nft.load(next.prepare.text);
    await nft.load(next.commit.text);
    const reloadMs = ms(t0);
    t0 = process.hrtime.bigint();
    await nft.readTable('connector_acl');
    const readMs = ms(t0);
    await nft.deleteTable('connector_acl');
    console.log([
      String(n).padStart(8), validateMs.toFixed(0).padStart(11), compileMs.toFixed(0).padStart(10), renderMs.toFixed(0).padStart(9),
      String(rendered.elementCount).padStart(9), (rendered.text.length / 1024).toFixed(0).padStart(9), heapMb.toFixed(0).padStart(8),
      loadMs.toFixed(0).padStart(8), reloadMs.toFixed(0).padStart(10), readMs.toFixed(0).padStart(12),
    ].join(' '));
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((e) => {
    console.error(e);
    process.exitCode = 1;
  });
}
