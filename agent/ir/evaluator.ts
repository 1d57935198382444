// The reference evaluator: what the policies say about one packet, read straight from the
// validated model. It is deliberately independent of the compiler (no lowering, no cells, no
// IR): tests use it as the oracle for the compiled ruleset, and `connector-acl explain` uses
// its reasons. Pure: no I/O.
//
// Flow convention
// ---------------
// A flow is described the way conntrack stores its "original" tuple: `src`, `dst`, `srcPort`
// and `dstPort` are ALWAYS the initiator's view (the host that sent the first packet is `src`).
// `direction` says which packet of that flow is being judged:
//   - 'initiate': a packet from the initiator to the responder. It enters on `ingressLan` (the
//     initiator's LAN) and leaves on `egressLan`; on the wire it carries src → dst as given.
//   - 'reply': a packet from the responder back to the initiator. It enters on `ingressLan` (the
//     RESPONDER's LAN) and leaves on `egressLan` (the initiator's LAN); on the wire its source
//     is `dst` and its destination `src`, ports swapped likewise, but the flow is still given in
//     the initiator's view.
// So `ingressLan`/`egressLan` are where this packet really enters and leaves the Connector, and
// the initiator's LAN is `ingressLan` for 'initiate' and `egressLan` for 'reply'.
import { bigintToAddress, parseSubnet, type AddressRange, type Family } from '../policy/address.js';
import type { Endpoint, Lan, Policy, PortRange, Site } from '../policy/model.js';

export type Direction = 'initiate' | 'reply';
export type Verdict = 'drop' | 'local' | 'cloudflare';

export interface Flow {
  /** LAN id where this packet enters the Connector. */
  ingressLan: string;
  /** LAN id where this packet leaves the Connector. */
  egressLan: string;
  family: Family;
  /** Initiator's address (the flow's original source), also for 'reply'. */
  src: string;
  /** Responder's address (the flow's original destination), also for 'reply'. */
  dst: string;
  /** IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, …). */
  protocol: number;
  /** Initiator's port; required for TCP and UDP, ignored otherwise. */
  srcPort?: number;
  /** Responder's port; required for TCP and UDP, ignored otherwise. */
  dstPort?: number;
  direction: Direction;
}

export interface PolicyMatch {
  id: string;
  name: string;
  path: 'local' | 'cloudflare';
}

export interface PolicyMiss {
  id: string;
  name: string;
  /** Why this policy does not allow the packet, e.g. `destination port 80 is not in lan_2 ports (443)`. */
  why: string;
}

export interface Evaluation {
  verdict: Verdict;
  /** Ids of every policy that allows this packet (on either path), sorted. */
  policies: string[];
  /** The same policies with their traffic path. */
  matches: PolicyMatch[];
  /** Policies between the same two LANs in the initiator's direction that do not allow it. */
  misses: PolicyMiss[];
  /** One human sentence. */
  reason: string;
}

export class FlowError extends Error {}

export const IP_PROTOCOL_NAMES: Readonly<Record<number, string>> = {
  1: 'ICMP', 2: 'IGMP', 4: 'IPIP', 6: 'TCP', 17: 'UDP', 41: 'IPv6-in-IP', 47: 'GRE', 50: 'ESP', 51: 'AH',
  58: 'ICMPv6', 89: 'OSPF', 103: 'PIM', 112: 'VRRP', 132: 'SCTP', 136: 'UDP-Lite',
};

/** `TCP`, `UDP`, `ICMP`, `ICMPv6`; any other protocol by number, e.g. `protocol 47 (GRE)`. */
export function protocolName(n: number): string {
  if (n === 1 || n === 6 || n === 17 || n === 58) return IP_PROTOCOL_NAMES[n];
  const name = IP_PROTOCOL_NAMES[n];
  return name ? `protocol ${n} (${name})` : `protocol ${n}`;
}

const hasPorts = (protocol: number): boolean => protocol === 6 || protocol === 17;

interface Packet {
  family: Family;
  src: bigint;
  dst: bigint;
  protocol: number;
  srcPort?: number;
  dstPort?: number;
}

export function evaluate(site: Site, policies: readonly Policy[], flow: Flow): Evaluation {
  const ingress = findLan(site, flow.ingressLan, 'ingressLan');
  const egress = findLan(site, flow.egressLan, 'egressLan');
  const packet = checkFlow(flow);

  if (ingress.id === egress.id) {
    return {
      verdict: 'local', policies: [], matches: [], misses: [],
      reason: `enters and leaves on ${ingress.name}: not LAN-to-LAN traffic, the engine does not filter it`,
    };
  }

  const initiating = flow.direction === 'initiate';
  const initiator = initiating ? ingress : egress;
  const responder = initiating ? egress : ingress;
  const candidates = sortById(policies.filter((p) => p.origin.lanId === initiator.id && p.destination.lanId === responder.id));

  const matching: Policy[] = [];
  const misses: PolicyMiss[] = [];
  for (const p of candidates) {
    const why = mismatch(p, packet);
    if (why === undefined) matching.push(p);
    else misses.push({ id: p.id, name: p.name, why });
  }
  const allowing = initiating ? matching : matching.filter((p) => !p.unidirectional);
  const matches: PolicyMatch[] = allowing.map((p) => ({ id: p.id, name: p.name, path: p.forwardLocally ? 'local' : 'cloudflare' }));
  const viaCf = allowing.filter((p) => !p.forwardLocally);
  const local = allowing.filter((p) => p.forwardLocally);
  const verdict: Verdict = viaCf.length > 0 ? 'cloudflare' : local.length > 0 ? 'local' : 'drop';
  const result = (reason: string): Evaluation => ({ verdict, policies: allowing.map((p) => p.id), matches, misses, reason });
  const lets = `lets ${initiator.name} initiate to ${responder.name}`;

  if (verdict !== 'drop') {
    const winners = verdict === 'cloudflare' ? viaCf : local;
    const how = verdict === 'cloudflare' ? 'via Cloudflare' : 'locally';
    const others = winners.length > 1 ? ` (also ${list(winners.slice(1))})` : '';
    const shadowed = verdict === 'cloudflare' && local.length > 0
      ? `; ${list(local)} would allow it locally, but via Cloudflare takes precedence`
      : '';
    if (initiating) return result(`allowed ${how}: ${ref(winners[0])} ${lets}${others}${shadowed}`);
    return result(`reply allowed ${how}: the flow matches bidirectional ${ref(winners[0])}, which ${lets}${others}${shadowed}`);
  }

  if (candidates.length === 0) {
    if (!initiating) return result(`no policy ${lets}, so ${responder.name} has no flow to reply to`);
    const reverse = sortById(policies.filter((p) => p.origin.lanId === responder.id && p.destination.lanId === initiator.id));
    const hint = reverse.length > 0
      ? ` (${ref(reverse[0])} lets ${responder.name} initiate to ${initiator.name}; ${initiator.name} may only reply to those flows)`
      : '';
    return result(`no policy ${lets}${hint}`);
  }
  if (!initiating && matching.length > 0) {
    return result(`the flow matches only unidirectional ${list(matching)}: nothing comes back from ${responder.name} to ${initiator.name}`);
  }
  const shown = misses.slice(0, 3).map((m) => `${ref(m)}: ${m.why}`).join('; ');
  const more = misses.length > 3 ? `; and ${misses.length - 3} more` : '';
  const what = initiating
    ? `no policy ${lets} with this flow`
    : `no policy ${lets} with the original flow, so its reply is dropped`;
  return result(`${what}: ${shown}${more}`);
}

/** One line for people and test output: `TCP 198.18.1.5:1234 -> 198.18.2.10:443 (LAN 1 -> LAN 2, initiate)`. */
export function describeFlow(site: Site, flow: Flow): string {
  const name = (id: string) => site.lans.find((l) => l.id === id)?.name ?? id;
  const at = (addr: string, port?: number) => {
    if (!hasPorts(flow.protocol) || port === undefined) return addr;
    return flow.family === 6 ? `[${addr}]:${port}` : `${addr}:${port}`;
  };
  const tuple = `${at(flow.src, flow.srcPort)} -> ${at(flow.dst, flow.dstPort)}`;
  const [initiator, responder] = flow.direction === 'initiate' ? [flow.ingressLan, flow.egressLan] : [flow.egressLan, flow.ingressLan];
  const what = flow.direction === 'initiate' ? 'initiate' : `reply from ${name(responder)} to ${name(initiator)}`;
  return `${protocolName(flow.protocol)} ${tuple} (flow ${name(initiator)} -> ${name(responder)}, ${what})`;
}

function findLan(site: Site, id: string, field: string): Lan {
  const lan = site.lans.find((l) => l.id === id) ?? site.lans.find((l) => l.name === id);
  if (!lan) {
    const known = site.lans.map((l) => `${l.id} (${l.name})`).join(', ') || 'none';
    throw new FlowError(`${field}: "${id}" is not a LAN of this site (known: ${known})`);
  }
  return lan;
}

function checkFlow(flow: Flow): Packet {
  const addr = (text: string, field: string): bigint => {
    const parsed = parseSubnet(text);
    if (!parsed.ok || text.includes('/')) throw new FlowError(`${field}: "${text}" is not an IPv4 or IPv6 address`);
    if (parsed.range.family !== flow.family) throw new FlowError(`${field}: ${text} is not an IPv${flow.family} address`);
    return parsed.range.first;
  };
  const src = addr(flow.src, 'src');
  const dst = addr(flow.dst, 'dst');
  if (!Number.isInteger(flow.protocol) || flow.protocol < 0 || flow.protocol > 255) {
    throw new FlowError(`protocol: ${flow.protocol} is not an IP protocol number (0–255)`);
  }
  if (!hasPorts(flow.protocol)) return { family: flow.family, src, dst, protocol: flow.protocol };
  for (const [field, port] of [['srcPort', flow.srcPort], ['dstPort', flow.dstPort]] as const) {
    if (port === undefined || !Number.isInteger(port) || port < 0 || port > 65535) {
      throw new FlowError(`${field}: ${protocolName(flow.protocol)} needs a port number 0–65535, got ${port}`);
    }
  }
  return { family: flow.family, src, dst, protocol: flow.protocol, srcPort: flow.srcPort, dstPort: flow.dstPort };
}

/** Why `p` does not cover the packet (in the initiator's view), or undefined when it does. */
function mismatch(p: Policy, pkt: Packet): string | undefined {
  if (!protocolAllowed(p, pkt)) {
    const chosen = p.protocols.join(', ');
    const icmpNote = p.protocols.includes('icmp') && (pkt.protocol === 1 || pkt.protocol === 58)
      ? `: for IPv${pkt.family}, icmp means ${pkt.family === 4 ? 'ICMP' : 'ICMPv6'}`
      : '';
    return `${protocolName(pkt.protocol)} is not among its protocols (${chosen})${icmpNote}`;
  }
  const src = addressMismatch(p.origin, pkt.family, pkt.src, 'source', 'lan_1');
  if (src) return src;
  const dst = addressMismatch(p.destination, pkt.family, pkt.dst, 'destination', 'lan_2');
  if (dst) return dst;
  if (hasPorts(pkt.protocol)) {
    if (!portAllowed(p.origin.ports, pkt.srcPort!)) return `source port ${pkt.srcPort} is not in lan_1 ports (${ports(p.origin.ports)})`;
    if (!portAllowed(p.destination.ports, pkt.dstPort!)) return `destination port ${pkt.dstPort} is not in lan_2 ports (${ports(p.destination.ports)})`;
  }
  return undefined;
}

function protocolAllowed(p: Policy, pkt: Packet): boolean {
  if (p.protocols.length === 0) return true; // "Any": every IP protocol
  return p.protocols.some((name) =>
    (name === 'tcp' && pkt.protocol === 6)
    || (name === 'udp' && pkt.protocol === 17)
    || (name === 'icmp' && pkt.protocol === (pkt.family === 4 ? 1 : 58)));
}

function addressMismatch(ep: Endpoint, family: Family, value: bigint, role: string, side: string): string | undefined {
  if (ep.subnets.length === 0) return undefined; // any address
  if (ep.subnets.some((s: AddressRange) => s.family === family && s.first <= value && value <= s.last)) return undefined;
  const shown = ep.subnets.map((s) => s.text).join(', ');
  const text = bigintToAddress(value, family);
  if (!ep.subnets.some((s) => s.family === family)) return `${side} subnets have no IPv${family} entry (${shown}), so ${role} ${text} cannot match`;
  return `${role} ${text} is not in ${side} subnets (${shown})`;
}


const portAllowed = (ranges: readonly PortRange[], port: number): boolean =>
  ranges.length === 0 || ranges.some((r) => r.from <= port && port <= r.to);

const ports = (ranges: readonly PortRange[]): string =>
  ranges.map((r) => (r.from === r.to ? `${r.from}` : `${r.from}-${r.to}`)).join(', ');

const ref = (p: { name: string; id: string }): string => `policy "${p.name}" (${p.id})`;

function list(ps: readonly { name: string; id: string }[]): string {
  if (ps.length === 1) return ref(ps[0]);
  return `policies ${ps.map((p) => `"${p.name}" (${p.id})`).join(', ')}`;
}

const sortById = (ps: Policy[]): Policy[] => ps.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
