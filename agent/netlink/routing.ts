// Policy routing for "via Cloudflare": an ip rule per family sends the tunnel mark to our route
// table, whose default route leaves through the tunnel. Everything we add carries protocol
// ROUTING_PROTOCOL so we only ever change or remove our own rules and routes, never foreign ones.
import { runChecked, type CommandRunner } from '../nft/exec.js';
import type { Tunnel } from '../policy/model.js';
import { hex } from '../nft/render.js';

/** rtnetlink protocol number tagging our rules and routes (`ip rule show` prints `proto 207`). */
export const ROUTING_PROTOCOL = 207;

type Family = '-4' | '-6';

interface RuleJson {
  priority?: number;
  fwmark?: string;
  fwmask?: string;
  table?: string;
  protocol?: string | number;
}

interface RouteJson {
  dst: string;
  gateway?: string;
  dev?: string;
  table?: string;
}

export interface RoutingReport {
  /** What was changed, in words, e.g. `added ip -6 rule fwmark … lookup 207`. */
  changes: string[];
  /** Things that are not fatal but mean traffic via Cloudflare cannot flow yet. */
  warnings: string[];
}

export interface RoutingState {
  rules: { family: 4 | 6; priority: number; fwmark: number; fwmask: number; table: string }[];
  routes: { family: 4 | 6; dst: string; dev?: string; gateway?: string }[];
}

const isOurs = (r: { protocol?: string | number }) => String(r.protocol) === String(ROUTING_PROTOCOL);

export class PolicyRouting {
  constructor(private readonly runner: CommandRunner) {}

  private async ip(args: string[]): Promise<string> {
    return (await runChecked(this.runner, ['ip', ...args])).stdout;
  }

  /** Our routes (protocol ROUTING_PROTOCOL) in every table. */
  async readRoutes(family: Family): Promise<RouteJson[]> {
    const out = await this.ip(['-j', family, 'route', 'show', 'table', 'all', 'protocol', String(ROUTING_PROTOCOL)]);
    return out.trim() ? (JSON.parse(out) as RouteJson[]) : [];
  }

  async readRules(family: Family): Promise<RuleJson[]> {
    const out = await this.ip(['-j', family, 'rule', 'show']);
    return out.trim() ? (JSON.parse(out) as RuleJson[]) : [];
  }

  /** Idempotent: adds what is missing, removes only our own stale rules. */
  async ensure(tunnel: Tunnel): Promise<RoutingReport> {
    const report: RoutingReport = { changes: [], warnings: [] };
    const mark = hex(tunnel.mark);
    for (const family of ['-4', '-6'] as const) {
      const rules = (await this.readRules(family)).filter(isOurs);
      const wanted = (r: RuleJson) =>
        r.priority === tunnel.rulePriority && parseInt(r.fwmark ?? '', 16) === tunnel.mark &&
        parseInt(r.fwmask ?? '0xffffffff', 16) === tunnel.mark && String(r.table) === String(tunnel.routeTable);
      for (const stale of rules.filter((r) => !wanted(r))) {
        await this.ip([family, 'rule', 'del', 'pref', String(stale.priority), 'protocol', String(ROUTING_PROTOCOL)]);
        report.changes.push(`removed stale ip ${family} rule pref ${stale.priority}`);
      }
      if (!rules.some(wanted)) {
        await this.ip([family, 'rule', 'add', 'pref', String(tunnel.rulePriority), 'fwmark', `${mark}/${mark}`,
          'lookup', String(tunnel.routeTable), 'protocol', String(ROUTING_PROTOCOL)]);
        report.changes.push(`added ip ${family} rule pref ${tunnel.rulePriority} fwmark ${mark}/${mark} lookup ${tunnel.routeTable}`);
      }
      const gateway = family === '-4' ? tunnel.gateway : tunnel.gateway6;
      // Our routes anywhere else (another table, device or gateway from an earlier config) go:
      // a stale route would keep steering marked traffic somewhere the config no longer says.
      for (const stale of (await this.readRoutes(family)).filter((r) =>
        r.dst !== 'default' || String(r.table) !== String(tunnel.routeTable) || r.dev !== tunnel.interface || (r.gateway ?? undefined) !== gateway)) {
        await this.ip([family, 'route', 'del', stale.dst, ...(stale.gateway ? ['via', stale.gateway] : []),
          ...(stale.dev ? ['dev', stale.dev] : []), 'table', String(stale.table), 'protocol', String(ROUTING_PROTOCOL)]);
        report.changes.push(`removed stale ip ${family} route ${stale.dst}${stale.gateway ? ` via ${stale.gateway}` : ''} dev ${stale.dev} table ${stale.table}`);
      }
      const args = [family, 'route', 'replace', 'default', ...(gateway ? ['via', gateway] : []), 'dev', tunnel.interface,
        'table', String(tunnel.routeTable), 'protocol', String(ROUTING_PROTOCOL)];
      const r = await this.runner.run(['ip', ...args]);
      if (r.code === 0) continue;
      const why = r.stderr.trim();
      if (/Cannot find device|No such device|Nexthop has invalid gateway|Network is unreachable|No route to host/i.test(why)) {
        report.warnings.push(`IPv${family === '-4' ? 4 : 6} route into the tunnel not installed (${why}): ` +
          `traffic via Cloudflare is dropped until ${tunnel.interface} is up`);
      } else {
        throw new Error(`ip ${args.join(' ')}: ${why}`);
      }
    }
    return report;
  }

  /** Removes our rules (any priority) and our routes (any table): only what carries our protocol. */
  async remove(): Promise<string[]> {
    const changes: string[] = [];
    for (const family of ['-4', '-6'] as const) {
      for (const rule of (await this.readRules(family)).filter(isOurs)) {
        await this.ip([family, 'rule', 'del', 'pref', String(rule.priority), 'protocol', String(ROUTING_PROTOCOL)]);
        changes.push(`removed ip ${family} rule pref ${rule.priority}`);
      }
      for (const route of await this.readRoutes(family)) {
        await this.ip([family, 'route', 'del', route.dst, ...(route.gateway ? ['via', route.gateway] : []),
          ...(route.dev ? ['dev', route.dev] : []), 'table', String(route.table ?? 'main'), 'protocol', String(ROUTING_PROTOCOL)]);
        changes.push(`removed ip ${family} route ${route.dst} dev ${route.dev} table ${route.table ?? 'main'}`);
      }
    }
    return changes;
  }

  async linkNames(): Promise<Set<string>> {
    const out = await this.ip(['-j', 'link', 'show']);
    return new Set((JSON.parse(out || '[]') as { ifname: string }[]).map((l) => l.ifname));
  }
}
