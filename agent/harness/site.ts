// A Connector site built from network namespaces, for kernel tests and the demo.
//
//   host ns ──veth── lanN ┐                      ┌ cf0 ──veth── Cloudflare ns (forwards everything
//   host ns ──veth── (switch ns, bridge) ── lanM ┤ Connector ns         back to the Connector, counts it)
//                                               └ wan0 ──veth── WAN ns (an Internet host)
//
// Everything gets unique names (`cacl-<pid>-<random>-…`), only 198.18.0.0/15 and 2001:db8::/32
// addresses are used, and nothing in the root namespace is touched except creating and deleting
// the namespaces themselves. `destroy()` removes them; an exit/SIGINT/SIGTERM hook does it too.
// With CACL_KEEP_NETNS=1 in the environment, destroy() stops the processes but leaves the
// namespaces for inspection and prints their names (the next harness run sweeps them).
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import YAML from 'yaml';
import { HostAgent } from './agent.js';
import { check, inNs, run, runSync, type RunOptions, type RunResult } from './exec.js';

export interface HostDesc {
  /** Unique in the site; letters, digits and '-'. */
  name: string;
  /** IPv4 address in the LAN's subnet; default 198.18.N.10 for the first host, .11 … after. null = none. */
  v4?: string | null;
  /** IPv6 address; default the v4 host part written in the v6 prefix (198.18.2.10 → 2001:db8:2::10). null = none. */
  v6?: string | null;
}

export interface LanDesc {
  /** The Connector's interface name for this LAN (what the site config names), e.g. `lan1`. */
  interface: string;
  /** LAN number N for the default addresses 198.18.N.0/24 and 2001:db8:N::/64 (default: position + 1). */
  n?: number;
  /** LAN id for the site config (default a 32-hex id like the example site's). */
  id?: string;
  name?: string;
  /** Connector address with prefix length; defaults 198.18.N.1/24 and 2001:db8:N::1/64. null = no such family. */
  router4?: string | null;
  router6?: string | null;
  /**
   * Make `interface` a VLAN sub-interface (id) of a veth named `parent` on the Connector; the hosts
   * tag their traffic. Needs the kernel's 8021q support.
   */
  vlan?: { id: number; parent: string };
  /** Default: one host named `lanN-h` at .10 / ::10. More than one host puts a bridge (switch ns) in between. */
  hosts?: HostDesc[];
}

export interface SiteDesc {
  lans: LanDesc[];
  /** Build the Cloudflare namespace and the tunnel link cf0 (default true). */
  tunnel?: boolean;
  /** Build the WAN/Internet namespace on wan0 (default true). */
  wan?: boolean;
  /** Per-step timeout for the commands that build the site (default 15 s). */
  timeoutMs?: number;
}

export interface Host {
  readonly site: Site;
  readonly name: string;
  readonly ns: string;
  /** The LAN this host sits on (undefined for the WAN host). */
  readonly lan?: SiteLan;
  readonly v4?: string;
  readonly v6?: string;
  readonly agent: HostAgent;
  /** The host's address of that family; throws when it has none. */
  address(family: 4 | 6): string;
}

export interface SiteLan {
  readonly n: number;
  readonly id: string;
  readonly name: string;
  readonly interface: string;
  /** Subnets in CIDR form (network address), v4 first. */
  readonly subnets: string[];
  readonly router4?: string;
  readonly router6?: string;
  readonly hosts: Host[];
}

export const TUNNEL = {
  interface: 'cf0',
  local4: '198.18.100.1',
  remote4: '198.18.100.2',
  local6: '2001:db8:100::1',
  remote6: '2001:db8:100::2',
  mark: 0x0cf00000,
  routeTable: 207,
} as const;

export const WAN = {
  interface: 'wan0',
  local4: '198.18.200.1',
  remote4: '198.18.200.2',
  local6: '2001:db8:200::1',
  remote6: '2001:db8:200::2',
} as const;

/** The table the harness keeps in the Cloudflare namespace to count what crosses the tunnel. */
export const TUNNEL_COUNT_TABLE = 'cacl_tunnel';
/** The table in every host namespace that counts ICMP echo requests that arrived, by source. */
export const HOST_COUNT_TABLE = 'cacl_host';

const NAME_PREFIX = 'cacl-';

/** CACL_KEEP_NETNS=1 (or true/yes): leave the namespaces behind for inspection. Off by default. */
export const keepNamespaces = (): boolean => /^(1|true|yes)$/i.test(process.env.CACL_KEEP_NETNS ?? '');
const HOST_NAME = /^[a-z0-9][a-z0-9-]{0,30}$/i;

// ---------------------------------------------------------------------------------------------
// Cleanup of every site of this process on exit, SIGINT and SIGTERM.

const liveSites = new Set<Site>();
let hooksInstalled = false;

function installExitHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', () => {
    for (const s of [...liveSites]) s.destroySync();
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const handler = (): void => {
      for (const s of [...liveSites]) s.destroySync();
      process.removeListener(sig, handler);
      // Only re-raise when nobody else handles the signal (tap and the demo may).
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    };
    process.on(sig, handler);
  }
}

/** Lists namespace names (`ip netns list`), without the "(id: N)" suffix. */
export async function listNamespaces(): Promise<string[]> {
  const r = await run(['ip', 'netns', 'list'], { timeoutMs: 5_000 });
  return r.stdout.split('\n').map((l) => l.trim().split(/\s+/)[0]).filter((n) => n);
}

/** Deletes harness namespaces whose creating process is gone (e.g. a test run killed with SIGKILL). */
export async function sweepStaleNamespaces(): Promise<string[]> {
  const stale: string[] = [];
  for (const name of await listNamespaces()) {
    const m = /^cacl-(\d+)-[0-9a-f]{6}-/.exec(name);
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid === process.pid) continue;
    if (!processAlive(pid)) stale.push(name);
  }
  if (stale.length > 0) await run(['ip', '-force', '-batch', '-'], { input: stale.map((n) => `netns del ${n}\n`).join(''), timeoutMs: 10_000 });
  return stale;
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

// ---------------------------------------------------------------------------------------------
// Addresses

const v4Network = (cidr: string): string => {
  const [addr, len] = cidr.split('/');
  const n = addr.split('.').reduce((acc, o) => (acc << 8) | Number(o), 0) >>> 0;
  const bits = Number(len);
  const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
  const net = (n & mask) >>> 0;
  return `${[24, 16, 8, 0].map((s) => (net >>> s) & 255).join('.')}/${len}`;
};

/** Canonical (compressed, lower-case) IPv6 text, so addresses from nft and from us compare equal. */
export function canonicalAddress(addr: string): string {
  if (!addr.includes(':')) return addr;
  return new URL(`http://[${addr}]`).hostname.slice(1, -1);
}

/** IPv6 network of an address with prefix length, for /64 and shorter multiples of 16 (all we use). */
const v6Network = (cidr: string): string => {
  const [addr, len] = cidr.split('/');
  const bits = Number(len);
  const full = expand6(addr);
  const groups = full.map((g, i) => (i * 16 < bits ? g : 0));
  return `${canonicalAddress(groups.map((g) => g.toString(16)).join(':'))}/${len}`;
};

function expand6(addr: string): number[] {
  const [head, tail] = addr.split('::');
  const h = head ? head.split(':') : [];
  const t = tail !== undefined && tail !== '' ? tail.split(':') : [];
  const zeros = tail === undefined ? [] : new Array(8 - h.length - t.length).fill('0');
  return [...h, ...zeros, ...t].map((g) => parseInt(g, 16));
}

const defaultLanId = (n: number): string => `6b1e2f0a9c8d4e11a2b3c4d5e6f7${n.toString(16).padStart(4, '0')}`;

// ---------------------------------------------------------------------------------------------

class SiteHost implements Host {
  constructor(
    readonly site: Site,
    readonly name: string,
    readonly ns: string,
    readonly agent: HostAgent,
    readonly lan: SiteLan | undefined,
    readonly v4: string | undefined,
    readonly v6: string | undefined,
  ) {}

  address(family: 4 | 6): string {
    const a = family === 4 ? this.v4 : this.v6;
    if (!a) throw new Error(`host ${this.name} has no IPv${family} address`);
    return a;
  }
}

interface PlannedHost {
  desc: HostDesc;
  ns: string;
  v4?: string;
  v6?: string;
  prefix4?: number;
  prefix6?: number;
  /** Interface carrying the address inside the host (eth0, or eth0.<vlan>). */
  ifname: string;
}

interface PlannedLan {
  desc: LanDesc;
  n: number;
  id: string;
  name: string;
  router4?: string;
  router6?: string;
  subnets: string[];
  switchNs?: string;
  hosts: PlannedHost[];
}

export class Site {
  /** Short random id; also the middle of every namespace name. */
  readonly id: string;
  readonly prefix: string;
  readonly connector: string;
  readonly cloudflare?: string;
  readonly wanNs?: string;
  readonly lans: SiteLan[] = [];
  readonly hosts = new Map<string, Host>();
  wanHost?: Host;
  /** Every namespace this site created, in creation order. */
  readonly namespaces: string[] = [];
  private readonly agents: HostAgent[] = [];
  /** Other helper processes started in this site's namespaces (e.g. raw-IP agents), killed on destroy. */
  private readonly helpers: { killNow(): void }[] = [];
  private planned: PlannedLan[] = [];
  private readonly unplugged = new Set<number>();
  private destroyed = false;
  private portCounter: number;
  private tokenCounter = 0;
  private readonly locks = new Map<string, Promise<unknown>>();

  constructor(readonly desc: SiteDesc) {
    this.id = randomBytes(3).toString('hex');
    this.prefix = `${NAME_PREFIX}${process.pid}-${this.id}-`;
    this.connector = `${this.prefix}conn`;
    if (desc.tunnel !== false) this.cloudflare = `${this.prefix}cf`;
    if (desc.wan !== false) this.wanNs = `${this.prefix}wan`;
    this.portCounter = 20_000 + Math.floor(Math.random() * 20_000);
  }

  host(name: string): Host {
    const h = this.hosts.get(name);
    if (!h) throw new Error(`no host "${name}" in this site (have: ${[...this.hosts.keys()].join(', ')})`);
    return h;
  }

  lan(interfaceOrN: string | number): SiteLan {
    const l = this.lans.find((x) => x.interface === interfaceOrN || x.n === interfaceOrN);
    if (!l) throw new Error(`no LAN ${interfaceOrN} in this site`);
    return l;
  }

  /** A fresh client source port (20000–59999), so concurrent probes never share a 5-tuple. */
  nextPort(): number {
    this.portCounter = this.portCounter >= 59_999 ? 20_000 : this.portCounter + 1;
    return this.portCounter;
  }

  nextToken(): string {
    return `${this.id}-${++this.tokenCounter}`;
  }

  /** Runs `fn` with no other holder of `key` running (used to serialise ICMP probes per host pair). */
  async withLock<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const before = this.locks.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    const chained = before.then(() => mine);
    this.locks.set(key, chained);
    await before.catch(() => undefined);
    try {
      return await fn();
    } finally {
      release();
      if (this.locks.get(key) === chained) this.locks.delete(key);
    }
  }

  /** Registers a helper process of this site so destroy() (and the exit hooks) kill it. */
  adopt(helper: { killNow(): void }): void {
    if (this.destroyed) {
      helper.killNow();
      return;
    }
    this.helpers.push(helper);
  }

  /**
   * Adds addresses to a LAN host's interface (with the LAN's prefix length, so the host reaches
   * its router from each of them). Addresses it already has are skipped.
   */
  async addAddresses(host: Host, addresses: string[]): Promise<void> {
    const planned = this.planned.flatMap((l) => l.hosts).find((h) => h.ns === host.ns);
    if (!planned || !host.lan) throw new Error(`host ${host.name} is not a LAN host of this site`);
    const have = this.extraAddresses.get(host.ns) ?? new Set<string>([host.v4, host.v6].filter((a): a is string => !!a));
    this.extraAddresses.set(host.ns, have);
    const cmds: string[] = [];
    for (const raw of addresses) {
      const a = canonicalAddress(raw);
      if (have.has(a)) continue;
      const v6 = a.includes(':');
      const len = v6 ? planned.prefix6 : planned.prefix4;
      if (len === undefined) throw new Error(`LAN ${host.lan.name} has no IPv${v6 ? 6 : 4} subnet for ${a}`);
      cmds.push(`address add ${a}/${len} dev ${planned.ifname}${v6 ? ' nodad' : ''}`);
      have.add(a);
    }
    if (cmds.length > 0) await this.batch(host.ns, cmds, 15_000);
  }

  private readonly extraAddresses = new Map<string, Set<string>>();

  /**
   * Pulls a LAN's cable: deletes the Connector's interface for it (and with it the veth's other
   * end). Only for LANs with a single host and no VLAN. `plugLan` puts it back as it was built.
   */
  async unplugLan(lan: SiteLan): Promise<void> {
    const p = this.plannedLan(lan);
    await this.batch(this.connector, [`link del ${p.desc.interface}`], 10_000);
    this.unplugged.add(p.n);
  }

  /** Re-creates an unplugged LAN's link, addresses and routes: the interface appears again by name. */
  async plugLan(lan: SiteLan): Promise<void> {
    const p = this.plannedLan(lan);
    const h = p.hosts[0];
    const conn = [`link add ${p.desc.interface} type veth peer name eth0 netns ${h.ns}`, `link set ${p.desc.interface} up`];
    if (p.router4) conn.push(`address add ${p.router4} dev ${p.desc.interface}`);
    if (p.router6) conn.push(`address add ${p.router6} dev ${p.desc.interface} nodad`);
    await this.batch(this.connector, conn, 10_000);
    const cmds = ['link set eth0 up'];
    if (h.v4) cmds.push(`address add ${h.v4}/${h.prefix4} dev eth0`, `route add default via ${p.router4!.split('/')[0]} dev eth0`);
    if (h.v6) cmds.push(`address add ${h.v6}/${h.prefix6} dev eth0 nodad`, `route add ::/0 via ${p.router6!.split('/')[0]} dev eth0`);
    await this.batch(h.ns, cmds, 10_000);
    this.extraAddresses.delete(h.ns);
    this.unplugged.delete(p.n);
  }

  private plannedLan(lan: SiteLan): PlannedLan {
    const p = this.planned.find((l) => l.n === lan.n);
    if (!p) throw new Error(`no LAN ${lan.name} in this site`);
    if (p.desc.vlan || p.switchNs || p.hosts.length !== 1) throw new Error(`LAN ${lan.name}: only a single-host LAN without VLAN can be unplugged`);
    return p;
  }

  /** Runs argv inside a namespace of this site. */
  exec(ns: string, argv: string[], options?: RunOptions): Promise<RunResult> {
    return run(inNs(ns, argv), options);
  }

  /** `nft args…` inside a namespace; rejects unless it exits 0. */
  async nft(ns: string, args: string[], input?: string): Promise<string> {
    const r = await check(inNs(ns, ['nft', ...args]), { input, timeoutMs: 10_000 });
    return r.stdout;
  }

  /** The site config (site.yaml shape) describing this site's LANs and tunnel. */
  siteConfig(extra: { table?: string; policies?: string } = {}): Record<string, unknown> {
    const cfg: Record<string, unknown> = {
      table: extra.table ?? 'connector_acl',
      lans: this.lans.map((l) => ({ id: l.id, name: l.name, interface: l.interface, subnets: l.subnets })),
    };
    if (this.cloudflare) {
      cfg.tunnel = {
        interface: TUNNEL.interface,
        gateway: TUNNEL.remote4,
        gateway6: TUNNEL.remote6,
        mark: TUNNEL.mark,
        route_table: TUNNEL.routeTable,
      };
    }
    if (extra.policies) cfg.policies = extra.policies;
    return cfg;
  }

  /** Writes `site.yaml` for this site into dir; returns its path. */
  async writeSiteConfig(dir: string, extra: { table?: string; policies?: string } = {}): Promise<string> {
    await mkdir(dir, { recursive: true });
    const file = path.join(dir, 'site.yaml');
    await writeFile(file, YAML.stringify(this.siteConfig(extra)));
    return file;
  }

  // -------------------------------------------------------------------------------------------
  // Building

  async build(): Promise<this> {
    installExitHooks();
    liveSites.add(this);
    const timeoutMs = this.desc.timeoutMs ?? 15_000;
    try {
      await this.buildSteps(timeoutMs);
    } catch (e) {
      await this.destroy();
      throw e;
    }
    return this;
  }

  private plan(): PlannedLan[] {
    const seenNames = new Set<string>();
    return this.desc.lans.map((d, i) => {
      const n = d.n ?? i + 1;
      const router4 = d.router4 === null ? undefined : d.router4 ?? `198.18.${n}.1/24`;
      const router6 = d.router6 === null ? undefined : d.router6 ?? `2001:db8:${n.toString(16)}::1/64`;
      const subnets = [...(router4 ? [v4Network(router4)] : []), ...(router6 ? [v6Network(router6)] : [])];
      const hostDescs = d.hosts ?? [{ name: `lan${n}-h` }];
      const switchNs = hostDescs.length > 1 ? `${this.prefix}sw${n}` : undefined;
      const hosts = hostDescs.map((h, j): PlannedHost => {
        if (!HOST_NAME.test(h.name)) throw new Error(`host name "${h.name}": use letters, digits and '-' (max 31)`);
        if (seenNames.has(h.name)) throw new Error(`duplicate host name "${h.name}"`);
        seenNames.add(h.name);
        const v4 = h.v4 === null || !router4 ? undefined : h.v4 ?? `${router4.split('.').slice(0, 3).join('.')}.${10 + j}`;
        const hostPart = v4 ? v4.split('.')[3] : String(10 + j);
        const v6 = h.v6 === null || !router6 ? undefined : h.v6 ?? `${router6.split('::')[0]}::${hostPart}`;
        return {
          desc: h,
          ns: `${this.prefix}h-${h.name}`,
          v4,
          v6: v6 ? canonicalAddress(v6) : undefined,
          prefix4: router4 ? Number(router4.split('/')[1]) : undefined,
          prefix6: router6 ? Number(router6.split('/')[1]) : undefined,
          ifname: d.vlan ? `eth0.${d.vlan.id}` : 'eth0',
        };
      });
      return { desc: d, n, id: d.id ?? defaultLanId(n), name: d.name ?? `LAN ${n}`, router4, router6, subnets, switchNs, hosts };
    });
  }

  private async buildSteps(timeoutMs: number): Promise<void> {
    await sweepStaleNamespaces().catch(() => undefined);
    const lans = this.plan();
    this.planned = lans;

    // 1. Namespaces, in one `ip -batch`.
    const all = [
      this.connector,
      ...(this.cloudflare ? [this.cloudflare] : []),
      ...(this.wanNs ? [this.wanNs] : []),
      ...lans.flatMap((l) => [...(l.switchNs ? [l.switchNs] : []), ...l.hosts.map((h) => h.ns)]),
    ];
    this.namespaces.push(...all);
    await check(['ip', '-batch', '-'], { input: all.map((n) => `netns add ${n}\n`).join(''), timeoutMs });

    // 2. Sysctls that must hold before interfaces exist (interfaces copy `default`).
    const base = [
      'net.ipv6.conf.all.accept_dad=0', 'net.ipv6.conf.default.accept_dad=0',
      'net.ipv6.conf.all.accept_ra=0', 'net.ipv6.conf.default.accept_ra=0',
      'net.ipv6.conf.all.disable_ipv6=0', 'net.ipv6.conf.default.disable_ipv6=0',
    ];
    const router = [
      'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1', 'net.ipv6.conf.default.forwarding=1',
      'net.ipv4.conf.all.rp_filter=0', 'net.ipv4.conf.default.rp_filter=0',
    ];
    const sysctl = (ns: string, settings: string[]): Promise<RunResult> => check(inNs(ns, ['sysctl', '-q', '-w', ...settings]), { timeoutMs });
    await Promise.all([
      sysctl(this.connector, [...base, ...router]),
      ...(this.cloudflare ? [sysctl(this.cloudflare, [...base, ...router, 'net.ipv4.conf.all.send_redirects=0', 'net.ipv4.conf.default.send_redirects=0'])] : []),
      ...(this.wanNs ? [sysctl(this.wanNs, base)] : []),
      ...lans.flatMap((l) => [
        ...(l.switchNs ? [sysctl(l.switchNs, ['net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1'])] : []),
        ...l.hosts.map((h) => sysctl(h.ns, base)),
      ]),
    ]);

    // 3. Links, created from the Connector (and the switches) straight into their namespaces.
    const conn: string[] = ['link set lo up'];
    const switches = new Map<string, string[]>();
    for (const l of lans) {
      const cside = l.desc.vlan ? l.desc.vlan.parent : l.desc.interface;
      const peerNs = l.switchNs ?? l.hosts[0].ns;
      const peerName = l.switchNs ? 'up0' : 'eth0';
      conn.push(`link add ${cside} type veth peer name ${peerName} netns ${peerNs}`);
      conn.push(`link set ${cside} up`);
      if (l.desc.vlan) {
        conn.push(`link add link ${cside} name ${l.desc.interface} type vlan id ${l.desc.vlan.id}`);
        conn.push(`link set ${l.desc.interface} up`);
      }
      if (l.router4) conn.push(`address add ${l.router4} dev ${l.desc.interface}`);
      if (l.router6) conn.push(`address add ${l.router6} dev ${l.desc.interface} nodad`);
      if (l.switchNs) {
        const sw = ['link set lo up', 'link add br0 type bridge mcast_snooping 0 forward_delay 0 stp_state 0', 'link set up0 master br0', 'link set up0 up'];
        l.hosts.forEach((h, j) => {
          sw.push(`link add p${j} type veth peer name eth0 netns ${h.ns}`, `link set p${j} master br0`, `link set p${j} up`);
        });
        sw.push('link set br0 up');
        switches.set(l.switchNs, sw);
      }
    }
    if (this.cloudflare) {
      conn.push(
        `link add ${TUNNEL.interface} type veth peer name tun0 netns ${this.cloudflare}`,
        `link set ${TUNNEL.interface} up`,
        `address add ${TUNNEL.local4}/30 dev ${TUNNEL.interface}`,
        `address add ${TUNNEL.local6}/64 dev ${TUNNEL.interface} nodad`,
      );
    }
    if (this.wanNs) {
      conn.push(
        `link add ${WAN.interface} type veth peer name eth0 netns ${this.wanNs}`,
        `link set ${WAN.interface} up`,
        `address add ${WAN.local4}/24 dev ${WAN.interface}`,
        `address add ${WAN.local6}/64 dev ${WAN.interface} nodad`,
        // The Connector's Internet route (its main table; table 207 is the engine's business).
        `route add default via ${WAN.remote4} dev ${WAN.interface}`,
        `route add ::/0 via ${WAN.remote6} dev ${WAN.interface}`,
      );
    }
    await this.batch(this.connector, conn, timeoutMs);
    await Promise.all([...switches].map(([ns, cmds]) => this.batch(ns, cmds, timeoutMs)));
    // The interface may only now exist; the all/default sysctls above already cover new ones.
    await sysctl(this.connector, this.cloudflare ? [`net.ipv4.conf.${TUNNEL.interface}.rp_filter=0`] : ['net.ipv4.conf.lo.rp_filter=0']);

    // 4. Inside the other namespaces: addresses and routes.
    const jobs: Promise<unknown>[] = [];
    if (this.cloudflare) {
      jobs.push(this.batch(this.cloudflare, [
        'link set lo up',
        'link set tun0 up',
        `address add ${TUNNEL.remote4}/30 dev tun0`,
        `address add ${TUNNEL.remote6}/64 dev tun0 nodad`,
        // Everything the Connector sends into the tunnel goes straight back to it.
        `route add 198.18.0.0/16 via ${TUNNEL.local4} dev tun0`,
        `route add 2001:db8::/32 via ${TUNNEL.local6} dev tun0`,
      ], timeoutMs));
      jobs.push(this.nft(this.cloudflare, ['-f', '-'], tunnelCountRuleset()));
    }
    if (this.wanNs) {
      jobs.push(this.batch(this.wanNs, [
        'link set lo up',
        'link set eth0 up',
        `address add ${WAN.remote4}/24 dev eth0`,
        `address add ${WAN.remote6}/64 dev eth0 nodad`,
        `route add 198.18.0.0/16 via ${WAN.local4} dev eth0`,
        `route add 2001:db8::/32 via ${WAN.local6} dev eth0`,
      ], timeoutMs));
      jobs.push(this.nft(this.wanNs, ['-f', '-'], hostCountRuleset()));
    }
    for (const l of lans) {
      for (const h of l.hosts) {
        const cmds = ['link set lo up', 'link set eth0 up'];
        if (l.desc.vlan) cmds.push(`link add link eth0 name ${h.ifname} type vlan id ${l.desc.vlan.id}`, `link set ${h.ifname} up`);
        if (h.v4) cmds.push(`address add ${h.v4}/${h.prefix4} dev ${h.ifname}`, `route add default via ${l.router4!.split('/')[0]} dev ${h.ifname}`);
        if (h.v6) cmds.push(`address add ${h.v6}/${h.prefix6} dev ${h.ifname} nodad`, `route add ::/0 via ${l.router6!.split('/')[0]} dev ${h.ifname}`);
        jobs.push(this.batch(h.ns, cmds, timeoutMs));
        jobs.push(this.nft(h.ns, ['-f', '-'], hostCountRuleset()));
      }
    }
    await Promise.all(jobs);

    // 5. Host agents and the public model.
    for (const l of lans) {
      const hosts: Host[] = [];
      const lan: SiteLan = {
        n: l.n, id: l.id, name: l.name, interface: l.desc.interface, subnets: l.subnets,
        router4: l.router4?.split('/')[0], router6: l.router6?.split('/')[0], hosts,
      };
      for (const h of l.hosts) {
        const agent = new HostAgent(h.ns);
        this.agents.push(agent);
        const host = new SiteHost(this, h.desc.name, h.ns, agent, lan, h.v4, h.v6);
        hosts.push(host);
        this.hosts.set(host.name, host);
      }
      this.lans.push(lan);
    }
    if (this.wanNs) {
      const agent = new HostAgent(this.wanNs);
      this.agents.push(agent);
      this.wanHost = new SiteHost(this, 'wan', this.wanNs, agent, undefined, WAN.remote4, WAN.remote6);
    }
    await Promise.all(this.agents.map((a) => a.ready));
  }

  /** `ip -n NS -batch -`: many changes for the price of one process. */
  private async batch(ns: string, cmds: string[], timeoutMs: number): Promise<void> {
    const r = await run(['ip', '-n', ns, '-batch', '-'], { input: cmds.map((c) => `${c}\n`).join(''), timeoutMs });
    if (r.code !== 0) throw new Error(`building ${ns} failed: ${r.stderr.trim()}\n  commands:\n    ${cmds.join('\n    ')}`);
  }

  // -------------------------------------------------------------------------------------------
  // Teardown

  /** Stops the host agents and deletes every namespace this site created. Idempotent. */
  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    liveSites.delete(this);
    for (const a of this.agents) a.killNow();
    for (const h of this.helpers) h.killNow();
    if (keepNamespaces()) {
      this.reportKept();
      return;
    }
    const existing = new Set(await listNamespaces());
    const mine = this.namespaces.filter((n) => existing.has(n));
    if (mine.length > 0) {
      const r = await run(['ip', '-force', '-batch', '-'], { input: mine.map((n) => `netns del ${n}\n`).join(''), timeoutMs: 15_000 });
      if (r.code !== 0) {
        // One by one, so one stuck namespace does not keep the others.
        for (const n of mine) await run(['ip', 'netns', 'del', n], { timeoutMs: 5_000 });
      }
    }
  }

  /** Synchronous teardown for exit and signal handlers. */
  destroySync(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    liveSites.delete(this);
    for (const a of this.agents) a.killNow();
    for (const h of this.helpers) h.killNow();
    if (keepNamespaces()) {
      this.reportKept();
      return;
    }
    for (const n of this.namespaces) runSync(['ip', 'netns', 'del', n]);
  }

  private reportKept(): void {
    process.stderr.write(`CACL_KEEP_NETNS: keeping the namespaces of site ${this.id} for inspection: ${this.namespaces.join(' ')}\n`
      + `  remove them with: for n in ${this.namespaces.join(' ')}; do ip netns del $n; done\n`);
  }
}

/** Builds a site (see SiteDesc); on failure everything already created is removed again. */
export async function buildSite(desc: SiteDesc): Promise<Site> {
  return new Site(desc).build();
}

function tunnelCountRuleset(): string {
  const set = (name: string, type: string): string =>
    `\tset ${name} { type ${type}; flags dynamic; size 65535; counter; }`;
  return [
    `table inet ${TUNNEL_COUNT_TABLE} {`,
    set('flows4', 'ipv4_addr . ipv4_addr . inet_proto . inet_service . inet_service'),
    set('flows6', 'ipv6_addr . ipv6_addr . inet_proto . inet_service . inet_service'),
    set('addrs4', 'ipv4_addr . ipv4_addr . inet_proto'),
    set('addrs6', 'ipv6_addr . ipv6_addr . inet_proto'),
    '\tcounter crossed { }',
    '\tchain count {',
    '\t\ttype filter hook forward priority filter; policy accept;',
    '\t\tcounter name crossed',
    '\t\tmeta nfproto ipv4 meta l4proto { tcp, udp } update @flows4 { ip saddr . ip daddr . meta l4proto . th sport . th dport }',
    '\t\tmeta nfproto ipv4 meta l4proto != { tcp, udp } update @addrs4 { ip saddr . ip daddr . meta l4proto }',
    '\t\tmeta nfproto ipv6 meta l4proto { tcp, udp } update @flows6 { ip6 saddr . ip6 daddr . meta l4proto . th sport . th dport }',
    '\t\tmeta nfproto ipv6 meta l4proto != { tcp, udp } update @addrs6 { ip6 saddr . ip6 daddr . meta l4proto }',
    '\t}',
    '}',
    '',
  ].join('\n');
}

/**
 * The host namespaces' counting table. `echo4`/`echo6`: echo requests that arrived, by source
 * (icmpProbe). For exchanges (exchange.ts), per flow: `in*`/`out*` count packets that arrived at /
 * left this host (`p`: TCP and UDP by 5-tuple; `n`: ICMP echo request/reply and every protocol
 * other than TCP, UDP and ICMP, by address pair and protocol), `ttl4`/`ttl6` the TTL / hop limit
 * they arrived with (by address pair and protocol). ICMP errors are not counted as packets of a flow.
 */
function hostCountRuleset(): string {
  const set = (name: string, spec: string): string => `\tset ${name} { ${spec}; flags dynamic; size 65535; counter; }`;
  const p4 = 'ip saddr . ip daddr . meta l4proto . th sport . th dport';
  const p6 = 'ip6 saddr . ip6 daddr . meta l4proto . th sport . th dport';
  const n4 = 'ip saddr . ip daddr . meta l4proto';
  const n6 = 'ip6 saddr . ip6 daddr . meta l4proto';
  const ttl4 = (on: boolean) => (on ? ` update @ttl4 { ${n4} . ip ttl }` : '');
  const ttl6 = (on: boolean) => (on ? ` update @ttl6 { ${n6} . ip6 hoplimit }` : '');
  const counting = (dir: 'in' | 'out', ttl: boolean): string[] => [
    `\t\tmeta nfproto ipv4 meta l4proto { tcp, udp } update @${dir}4p { ${p4} }${ttl4(ttl)}`,
    `\t\tmeta nfproto ipv6 meta l4proto { tcp, udp } update @${dir}6p { ${p6} }${ttl6(ttl)}`,
    `\t\tmeta nfproto ipv4 meta l4proto != { tcp, udp, icmp } update @${dir}4n { ${n4} }${ttl4(ttl)}`,
    `\t\ticmp type { echo-request, echo-reply } update @${dir}4n { ${n4} }${ttl4(ttl)}`,
    `\t\tmeta nfproto ipv6 meta l4proto != { tcp, udp, ipv6-icmp } update @${dir}6n { ${n6} }${ttl6(ttl)}`,
    `\t\ticmpv6 type { echo-request, echo-reply } update @${dir}6n { ${n6} }${ttl6(ttl)}`,
  ];
  return [
    `table inet ${HOST_COUNT_TABLE} {`,
    '\tset echo4 { type ipv4_addr; flags dynamic; size 65535; counter; }',
    '\tset echo6 { type ipv6_addr; flags dynamic; size 65535; counter; }',
    ...['in', 'out'].flatMap((d) => [
      set(`${d}4p`, 'type ipv4_addr . ipv4_addr . inet_proto . inet_service . inet_service'),
      set(`${d}6p`, 'type ipv6_addr . ipv6_addr . inet_proto . inet_service . inet_service'),
      set(`${d}4n`, 'type ipv4_addr . ipv4_addr . inet_proto'),
      set(`${d}6n`, 'type ipv6_addr . ipv6_addr . inet_proto'),
    ]),
    // TTLs by address pair and protocol only: nft 1.0.6 mis-lists a TTL after ports in a key.
    set('ttl4', `typeof ${n4} . ip ttl`),
    set('ttl6', `typeof ${n6} . ip6 hoplimit`),
    '\tchain input {',
    '\t\ttype filter hook input priority filter; policy accept;',
    '\t\ticmp type echo-request update @echo4 { ip saddr }',
    '\t\ticmpv6 type echo-request update @echo6 { ip6 saddr }',
    ...counting('in', true),
    '\t}',
    '\tchain output {',
    '\t\ttype filter hook output priority filter; policy accept;',
    ...counting('out', false),
    '\t}',
    '}',
    '',
  ].join('\n');
}
