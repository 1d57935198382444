// Site config: the LANs of this Connector, the tunnel toward Cloudflare, the table we own.
import { parseSubnet, type AddressRange } from './address.js';
import { isObject, join, readInteger, readList, readString, readSubnets, typeName, warnUnknownKeys, type Doc } from './fields.js';
import {
  DEFAULT_CONNTRACK_MARK, DEFAULT_ROUTE_TABLE, DEFAULT_RULE_PRIORITY, DEFAULT_TABLE, DEFAULT_TUNNEL_MARK,
  type Lan, type Site, type Tunnel,
} from './model.js';
import { ProblemSink, hasErrors, type Problem } from './problems.js';

const SITE_KEYS = ['table', 'lans', 'tunnel', 'policies', 'conntrack_mark', 'agent'] as const;
const LAN_KEYS = ['id', 'name', 'interface', 'subnets'] as const;
const TUNNEL_KEYS = ['interface', 'gateway', 'gateway6', 'mark', 'route_table', 'rule_priority'] as const;

// Linux IFNAMSIZ is 16 bytes including the NUL; the kernel refuses '/', ':' and whitespace, and
// nft strings cannot carry '"' or '\\'.
const INTERFACE_CHARS = /^[^\s/:"\\]+$/;
export const isInterfaceName = (name: string): boolean =>
  INTERFACE_CHARS.test(name) && new TextEncoder().encode(name).length <= 15;
const INTERFACE_RULE = '1–15 bytes, no whitespace, /, :, " or \\';
const TABLE_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;
/** Words nft's parser reads as keywords: a table cannot be named after one (quoting does not help). */
const NFT_KEYWORDS = new Set(`table tables chain chains set sets map maps counter counters quota quotas limit limits meta ct
ip ip6 inet arp bridge netdev filter nat route type hook priority policy accept drop reject return jump goto continue queue
log comment flags elements element define include add delete flush list insert replace create rule rules ruleset describe
monitor export import reset rename tcp udp udplite icmp icmpv6 igmp sctp dccp th ah esp comp ether vlan fib rt socket osf
tproxy synproxy secmark mark snat dnat masquerade redirect notrack flow flowtable flowtables offload dup fwd numgen hash jhash
symhash interval timeout size handle index position family update dynamic constant persistent level saddr daddr sport dport
protocol length version state direction status expiration helper label zone original reply packets bytes over until
iif oif iifname oifname iiftype oiftype skuid skgid nftrace rtclassid ibriport obriport pkttype cpu iifgroup oifgroup cgroup
random time day hour to at by from with in is not and or xor objref devices device gc-interval auto-merge
vmap typeof define redefine undefine ingress egress prerouting postrouting input output forward`.split(/\s+/));
export const LAN_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

export interface SiteResult {
  site?: Site;
  problems: Problem[];
}

export function parseSite(doc: unknown, file: string): SiteResult {
  const sink = new ProblemSink({ file });
  if (!isObject(doc)) {
    sink.error(undefined, `the site config must be a mapping, not ${typeName(doc)}`);
    return { problems: sink.problems };
  }
  warnUnknownKeys(doc, SITE_KEYS, '', sink);

  const table = readString(doc, 'table', '', sink) ?? DEFAULT_TABLE;
  if (!TABLE_NAME.test(table)) sink.error('table', `"${table}" is not a valid nft table name (letters, digits, _)`);
  else if (NFT_KEYWORDS.has(table.toLowerCase())) sink.error('table', `"${table}" is an nft keyword and cannot name a table; use e.g. connector_acl`);

  // Parsed LANs with their index in the document, so messages point at the right entry.
  const parsed: { lan: Lan; index: number }[] = [];
  const rawLans = readList(doc, 'lans', '', sink);
  if (doc.lans === undefined || doc.lans === null) sink.error('lans', 'is required: list the LANs of this site');
  rawLans?.forEach((raw, i) => {
    const lan = parseLan(raw, join('lans', i), sink);
    if (lan) parsed.push({ lan, index: i });
  });
  checkUnique(parsed, (l) => l.id, 'id', 'LAN id', sink);
  checkUnique(parsed, (l) => l.interface, 'interface', 'interface', sink);
  const lans = parsed.map((p) => p.lan);

  let tunnel: Tunnel | undefined;
  if (doc.tunnel !== undefined && doc.tunnel !== null) tunnel = parseTunnel(doc.tunnel, lans, sink);

  const policies = readString(doc, 'policies', '', sink);
  if (doc.agent !== undefined && !isObject(doc.agent)) sink.error('agent', `must be a mapping, not ${typeName(doc.agent)}`);

  const conntrackMark = readInteger(doc, 'conntrack_mark', '', sink, 1, 0xffffffff) ?? DEFAULT_CONNTRACK_MARK;
  if (tunnel && (tunnel.mark & conntrackMark) !== 0) {
    // Tools that restore the conntrack mark into the packet mark would steer flows into the tunnel.
    sink.error('conntrack_mark', `0x${conntrackMark.toString(16)} shares bits with tunnel.mark 0x${tunnel.mark.toString(16)}; pick bits the tunnel mark does not use`);
  }

  if (hasErrors(sink.problems)) return { problems: sink.problems };
  return { site: { table, lans, tunnel, policies, conntrackMark }, problems: sink.problems };
}

function parseLan(raw: unknown, path: string, sink: ProblemSink): Lan | undefined {
  if (!isObject(raw)) {
    sink.error(path, `must be a mapping with id, name and interface, not ${typeName(raw)}`);
    return undefined;
  }
  warnUnknownKeys(raw, LAN_KEYS, path, sink);
  const id = readString(raw, 'id', path, sink, true);
  const name = readString(raw, 'name', path, sink) ?? id;
  const iface = readString(raw, 'interface', path, sink, true);
  if (id !== undefined && !LAN_ID.test(id)) sink.error(join(path, 'id'), `"${id}" is not a valid LAN id (letters, digits, _ and -, up to 64)`);
  if (iface !== undefined && !isInterfaceName(iface)) {
    sink.error(join(path, 'interface'), `"${iface}" is not a valid interface name (${INTERFACE_RULE})`);
  }
  const subnets: AddressRange[] = readSubnets(raw, path, sink).map((s) => s.range);
  if (id === undefined || iface === undefined || !LAN_ID.test(id) || !isInterfaceName(iface)) return undefined;
  return { id, name: name ?? id, interface: iface, subnets };
}

function parseTunnel(raw: unknown, lans: Lan[], sink: ProblemSink): Tunnel | undefined {
  if (!isObject(raw)) {
    sink.error('tunnel', `must be a mapping, not ${typeName(raw)}`);
    return undefined;
  }
  warnUnknownKeys(raw, TUNNEL_KEYS, 'tunnel', sink);
  const iface = readString(raw, 'interface', 'tunnel', sink, true);
  if (iface !== undefined && !isInterfaceName(iface)) sink.error('tunnel.interface', `"${iface}" is not a valid interface name (${INTERFACE_RULE})`);
  if (iface !== undefined && lans.some((l) => l.interface === iface)) {
    sink.error('tunnel.interface', `"${iface}" is also a LAN interface; the tunnel needs its own`);
  }
  const gateway = readGateway(raw, 'gateway', 4, sink);
  const gateway6 = readGateway(raw, 'gateway6', 6, sink);
  const mark = readInteger(raw, 'mark', 'tunnel', sink, 1, 0xffffffff) ?? DEFAULT_TUNNEL_MARK;
  const routeTable = readInteger(raw, 'route_table', 'tunnel', sink, 1, 0xfffffffe) ?? DEFAULT_ROUTE_TABLE;
  if ([253, 254, 255].includes(routeTable)) sink.error('tunnel.route_table', `${routeTable} is a reserved table (default/main/local)`);
  const rulePriority = readInteger(raw, 'rule_priority', 'tunnel', sink, 1, 32765) ?? DEFAULT_RULE_PRIORITY;
  if (iface === undefined) return undefined;
  return { interface: iface, gateway, gateway6, mark, routeTable, rulePriority };
}

function readGateway(raw: Doc, key: string, family: 4 | 6, sink: ProblemSink): string | undefined {
  const v = readString(raw, key, 'tunnel', sink);
  if (v === undefined) return undefined;
  const parsed = parseSubnet(v);
  if (!parsed.ok || v.includes('/') || parsed.range.family !== family) {
    sink.error(join('tunnel', key), `"${v}" is not an IPv${family} address`);
    return undefined;
  }
  return parsed.range.text;
}

function checkUnique(
  items: { lan: Lan; index: number }[], key: (l: Lan) => string, field: string, what: string, sink: ProblemSink,
): void {
  const seen = new Map<string, number>();
  for (const { lan, index } of items) {
    const k = key(lan);
    const first = seen.get(k);
    if (first !== undefined) sink.error(join(join('lans', index), field), `duplicate ${what} "${k}" (also lans[${first}])`);
    else seen.set(k, index);
  }
}
