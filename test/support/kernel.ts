// Shared set-up for the kernel tests (test/kernel-*.test.ts): a namespace site torn down in
// t.teardown, a temp dir for the site config and policy files, the CLI run inside the Connector,
// and assertions that print the probe's facts when they fail.
import { mkdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Test } from 'tap';
import {
  buildSite, cliAvailable, cliPath, describeProbe, listEngineTable, probeCounts, repoRoot, run, runCli, writePolicies,
  type ProbeResult, type RunResult, type Site, type SiteDesc, type SiteLan, type TcpSendResult,
} from '../../agent/harness/index.js';

/** Why the kernel tests cannot run here, or undefined when they can. */
export async function kernelSkipReason(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return 'kernel tests need root (network namespaces)';
  const ip = await run(['ip', 'netns', 'list'], { timeoutMs: 5_000 });
  if (ip.code !== 0) return `ip netns is not usable: ${ip.stderr.trim()}`;
  if (!cliAvailable()) return `the CLI is not built (${cliPath()}): run npm run build`;
  return undefined;
}

export interface KernelSite {
  site: Site;
  dir: string;
  siteFile: string;
  /** Writes the policies to a new file and applies them with the CLI in the Connector namespace. */
  apply(policies: unknown[], options?: { siteFile?: string; name?: string }): Promise<RunResult>;
  /** Applies and fails the test (with the CLI's output) unless it exits 0. */
  applyOk(t: Test, policies: unknown[]): Promise<void>;
  table(): Promise<string | undefined>;
}

let fileCounter = 0;

/**
 * Where the kernel test files of one tap run leave their probe counts: one directory per tap
 * runner process (the parent of every test process and of the `after` program,
 * test/support/kernel-summary.ts, which prints the total).
 */
export const probeStatsDir = (runnerPid: number): string => path.join(repoRoot(), '.tap', 'kernel-probes', String(runnerPid));

let statsHooked = false;
const startedAt = Date.now();

/** At exit, writes this process's probe counts for the run's summary line (only under tap). */
export function recordProbeStats(): void {
  if (statsHooked || process.env.TAP !== '1') return;
  statsHooked = true;
  process.on('exit', () => {
    try {
      const dir = probeStatsDir(process.ppid);
      mkdirSync(dir, { recursive: true });
      const file = path.basename(process.argv[1] ?? 'test');
      writeFileSync(path.join(dir, `${file}-${process.pid}.json`), JSON.stringify({ file, counts: probeCounts(), ms: Date.now() - startedAt }));
    } catch {
      // the summary is a convenience; never fail a test over it
    }
  });
}

export async function kernelSite(t: Test, desc: SiteDesc): Promise<KernelSite> {
  recordProbeStats();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'cacl-kernel-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const site = await buildSite(desc);
  t.teardown(() => site.destroy());
  const siteFile = await site.writeSiteConfig(dir);
  const apply = async (policies: unknown[], options: { siteFile?: string; name?: string } = {}): Promise<RunResult> => {
    const file = await writePolicies(dir, policies, options.name ?? `policies-${++fileCounter}.yaml`);
    return runCli(site, ['apply', '-c', options.siteFile ?? siteFile, '-p', file]);
  };
  return {
    site,
    dir,
    siteFile,
    apply,
    async applyOk(tt: Test, policies: unknown[]): Promise<void> {
      const r = await apply(policies);
      tt.equal(r.code, 0, 'apply exits 0', { stdout: r.stdout, stderr: r.stderr });
      if (r.code !== 0) throw new Error(`apply failed (exit ${r.code}): ${r.stderr}`);
    },
    table: () => listEngineTable(site),
  };
}

/** An ACL object in the Cloudflare API's shape. */
export function acl(
  id: string,
  from: SiteLan,
  to: SiteLan,
  fields: {
    name?: string;
    from?: { ports?: unknown; port_ranges?: unknown; subnets?: unknown };
    to?: { ports?: unknown; port_ranges?: unknown; subnets?: unknown };
    protocols?: string[];
    unidirectional?: boolean;
    forward_locally?: boolean;
  } = {},
): Record<string, unknown> {
  const out: Record<string, unknown> = {
    id,
    name: fields.name ?? `policy ${id}`,
    lan_1: { lan_id: from.id, lan_name: from.name, ...(fields.from ?? {}) },
    lan_2: { lan_id: to.id, lan_name: to.name, ...(fields.to ?? {}) },
    forward_locally: fields.forward_locally ?? true,
  };
  if (fields.protocols) out.protocols = fields.protocols;
  if (fields.unidirectional !== undefined) out.unidirectional = fields.unidirectional;
  return out;
}

export type Expected = 'passed' | 'dropped' | 'one-way';
export type TunnelExpect = 'both' | 'none' | 'forward only';

/**
 * Asserts what a probe showed. `passed`: answered (TCP data echoed, UDP/ICMP reply received);
 * `dropped`: nothing reached the destination; `one-way`: delivered, the reply did not come back.
 */
export function expectFlow(t: Test, r: ProbeResult, expected: Expected, tunnel?: TunnelExpect): void {
  const what = describeProbe(r);
  let ok: boolean;
  if (expected === 'passed') ok = r.proto === 'tcp' ? r.connected && r.roundTrip && r.delivered : r.delivered && r.replied;
  else if (expected === 'dropped') ok = !r.delivered && (r.proto === 'tcp' ? !r.connected : !r.replied);
  else ok = r.proto !== 'tcp' && r.delivered && !r.replied;
  t.ok(ok, `${expected}: ${what}`);
  if (tunnel) expectTunnel(t, r, tunnel, what);
}

export function expectTunnel(t: Test, r: ProbeResult | TcpSendResult, tunnel: TunnelExpect, what = ''): void {
  const fwd = r.tunnel?.forward ?? 0;
  const rev = r.tunnel?.reverse ?? 0;
  const ok = tunnel === 'both' ? fwd > 0 && rev > 0 : tunnel === 'none' ? fwd === 0 && rev === 0 : fwd > 0 && rev === 0;
  t.ok(ok, `tunnel ${tunnel} (${fwd} forward, ${rev} back) ${what}`);
}

/** The root namespace's ruleset, policy rules and routes: the tests must leave them as they were. */
export async function rootState(): Promise<string> {
  const parts = await Promise.all([
    run(['nft', '-s', 'list', 'ruleset']),
    run(['ip', '-4', 'rule']),
    run(['ip', '-6', 'rule']),
    run(['ip', '-4', 'route', 'show', 'table', 'all']),
    run(['ip', '-6', 'route', 'show', 'table', 'all']),
  ]);
  return parts.map((p) => p.stdout.replace(/ expires \d+sec/g, '')).join('\n----\n');
}
