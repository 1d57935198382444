// The intermediate representation: everything the kernel must hold, as plain values with
// stable names, before any nft syntax. The renderer turns it into text; tests read it directly.
import type { Family } from '../policy/address.js';
import type { Lan, Tunnel } from '../policy/model.js';
import type { Cell } from './decompose.js';

export type TrafficPath = 'local' | 'cloudflare';

/**
 * `ports`: TCP and UDP, keyed on addresses, protocol and both ports. `proto`: every other protocol.
 * `related`: ICMP errors conntrack relates to a flow (port unreachable, packet too big, …), keyed on
 * the address pair only, because nft cannot key a map on the related flow's ports.
 */
export type KeyShape = 'ports' | 'proto' | 'related';

export interface IrPolicy {
  id: string;
  name: string;
  path: TrafficPath;
  unidirectional: boolean;
  contentHash: string;
  /** nft chain the lookups jump to, and the named counter it updates. */
  chain: string;
  counter: string;
}

/** A key dimension, in the initiator's view: source/destination address, IP protocol, ports. */
export type Dim = 'saddr' | 'daddr' | 'l4proto' | 'sport' | 'dport';

/**
 * One lookup table: disjoint cells, each pointing at the policy (by index into `Ir.policies`).
 * `dims` lists the key dimensions the map keeps, in key order, and each cell's lo/hi has one
 * entry per kept dimension. A dimension that every cell covers whole is left out of the key:
 * fewer fields make the kernel's lookup cheaper (`daddr` is always kept; it carries the family).
 */
export interface IrMap {
  name: string;
  family: Family;
  shape: KeyShape;
  dims: Dim[];
  cells: Cell[];
}

/**
 * One origin → destination LAN pair on one traffic path. `initiate`: maps looked up for packets
 * in the initiator's direction. `reply`: the same maps, looked up (with the key swapped back to
 * the initiator's view) for replies; empty when every policy of the pair is unidirectional.
 * A reply whose cell belongs to a unidirectional policy is not allowed: no bidirectional policy
 * covers that cell, because overlapping cells go to bidirectional policies first.
 */
export interface IrPairPath {
  origin: Lan;
  destination: Lan;
  path: TrafficPath;
  /** Stable suffix for chain and map names, e.g. `1_2` (LAN positions in the site config). */
  key: string;
  initiate: IrMap[];
  reply: IrMap[];
}

export interface Ir {
  table: string;
  conntrackMark: number;
  lans: Lan[];
  tunnel?: Tunnel;
  policies: IrPolicy[];
  pairs: IrPairPath[];
}

/** All dimensions of each key shape, in map key order, before unused ones are dropped. */
export const SHAPE_DIMS: Record<KeyShape, readonly Dim[]> = {
  ports: ['saddr', 'daddr', 'l4proto', 'sport', 'dport'],
  proto: ['saddr', 'daddr', 'l4proto'],
  related: ['saddr', 'daddr'],
};

export const IPPROTO_TCP = 6n;
export const IPPROTO_UDP = 17n;
export const IPPROTO_ICMP = 1n;
export const IPPROTO_ICMPV6 = 58n;
