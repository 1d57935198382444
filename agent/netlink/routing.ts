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
      const args = [family, 'route', 'replace', 'default', ...(gateway ? ['via', gateway] : []), 'dev', tunnel.interface,
        'table', String(tunnel.routeTable), 'protocol', String(ROUTING_PROTOCOL)];
      const r = await this.runner.run(['ip', ...args]);
      if (r.code === 0) continue;
      const why = r.stderr.trim();
      if (/Cannot find device|No such device|Nexthop has invalid gateway|Network is unreachable/i.test(why)) {
        report.warnings.push(`IPv${family === '-4' ? 4 : 6} route into the tunnel not installed (${why}): ` +
          `traffic via Cloudflare is dropped until ${tunnel.interface} is up`);
      } else {
        throw new Error(`ip ${args.join(' ')}: ${why}`);
      }
    }
    return report;
  }

  /** Removes our rules (any priority) and our routes in the tunnel's table. */
  async remove(tunnel: Tunnel | undefined): Promise<string[]> {
    const changes: string[] = [];
    for (const family of ['-4', '-6'] as const) {
      for (const rule of (await this.readRules(family)).filter(isOurs)) {
        await this.ip([family, 'rule', 'del', 'pref', String(rule.priority), 'protocol', String(ROUTING_PROTOCOL)]);
        changes.push(`removed ip ${family} rule pref ${rule.priority}`);
      }
      if (tunnel) {
        const r = await this.runner.run(['ip', family, 'route', 'flush', 'table', String(tunnel.routeTable), 'protocol', String(ROUTING_PROTOCOL)]);
        if (r.code === 0) changes.push(`flushed our ip ${family} routes in table ${tunnel.routeTable}`);
      }
    }
    return changes;
  }

  async linkNames(): Promise<Set<string>> {
    const out = await this.ip(['-j', 'link', 'show']);
    return new Set((JSON.parse(out || '[]') as { ifname: string }[]).map((l) => l.ifname));
  }
}
