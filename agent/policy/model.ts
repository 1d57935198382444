// The validated model: what the compiler and the reference evaluator consume.
// Everything here is plain data; field names follow the network engineer's words
// (origin/destination), the API's words (lan_1/lan_2) live only in the parsers.
import type { AddressRange } from './address.js';

export type Protocol = 'tcp' | 'udp' | 'icmp';
export const PROTOCOLS: readonly Protocol[] = ['tcp', 'udp', 'icmp'];

export interface Lan {
  id: string;
  name: string;
  /** Interface name as the kernel sees it (`eth1`, `eth1.10`); rules match by name. */
  interface: string;
  subnets: AddressRange[];
}

export interface Tunnel {
  interface: string;
  gateway?: string;
  gateway6?: string;
  /** fwmark bit(s) that steer a packet into `routeTable`. */
  mark: number;
  routeTable: number;
  /** Preference of the `ip rule` (lower is consulted first; main is 32766). */
  rulePriority: number;
}

export interface Site {
  /** nft table name (family inet) this engine owns. */
  table: string;
  lans: Lan[];
  tunnel?: Tunnel;
  /** Default policy source (file or directory), relative paths resolved by the loader. */
  policies?: string;
  /**
   * Conntrack mark bit(s) meaning "this flow's replies are allowed": kept up to date by every
   * allowed packet, read for ICMP errors related to the flow (whose ports nft cannot key on).
   */
  conntrackMark: number;
}

export const DEFAULT_TABLE = 'connector_acl';
export const DEFAULT_TUNNEL_MARK = 0x0cf00000;
export const DEFAULT_ROUTE_TABLE = 207;
export const DEFAULT_RULE_PRIORITY = 1207;
export const DEFAULT_CONNTRACK_MARK = 0x20000000;

export interface PortRange {
  from: number;
  to: number;
}

export interface Endpoint {
  lanId: string;
  /** Empty = any address. */
  subnets: AddressRange[];
  /** Empty = any port. Constrains TCP and UDP only. */
  ports: PortRange[];
}

export interface Policy {
  id: string;
  name: string;
  description: string;
  /** lan_1: the only side that may initiate. */
  origin: Endpoint;
  /** lan_2. */
  destination: Endpoint;
  /** Empty = all IP protocols. */
  protocols: Protocol[];
  unidirectional: boolean;
  forwardLocally: boolean;
  /** Where it came from, for messages that point back to the input. */
  source: { file: string; index: number };
  /** Hash of the enforcement-relevant content: unchanged hash = unchanged rules (counters kept). */
  contentHash: string;
}

export const viaCloudflare = (p: Policy): boolean => !p.forwardLocally;
