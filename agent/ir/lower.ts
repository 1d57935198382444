// Lowering: validated policies → disjoint lookup cells per LAN pair, path, direction and family.
import { anyAddress, familyMax, type AddressRange, type Family } from '../policy/address.js';
import type { Endpoint, Policy, Site } from '../policy/model.js';
import { decompose, type Box, type Cell } from './decompose.js';
import {
  IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, SHAPE_DIMS,
  type Dim, type Ir, type IrMap, type IrPairPath, type IrPolicy, type KeyShape, type TrafficPath,
} from './ir.js';

const ANY_PORT: [bigint, bigint] = [0n, 65535n];
const FAMILIES: readonly Family[] = [4, 6];
const SHAPES: readonly KeyShape[] = ['ports', 'proto', 'related'];

export function lower(site: Site, policies: readonly Policy[]): Ir {
  // Sorted by id: the output does not depend on file order, and counters go to a stable owner.
  const sorted = [...policies].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const irPolicies: IrPolicy[] = sorted.map((p) => ({
    id: p.id,
    name: p.name,
    path: p.forwardLocally ? 'local' : 'cloudflare',
    unidirectional: p.unidirectional,
    contentHash: p.contentHash,
    chain: `pol_${p.id}`,
    counter: `pol_${p.id}`,
  }));

  const lanIndex = new Map(site.lans.map((l, i) => [l.id, i + 1]));
  const groups = new Map<string, { origin: number; destination: number; path: TrafficPath; members: number[] }>();
  sorted.forEach((p, i) => {
    const path: TrafficPath = p.forwardLocally ? 'local' : 'cloudflare';
    const o = lanIndex.get(p.origin.lanId)!;
    const d = lanIndex.get(p.destination.lanId)!;
    const k = `${path}:${o}_${d}`;
    const g = groups.get(k) ?? { origin: o, destination: d, path, members: [] };
    g.members.push(i);
    groups.set(k, g);
  });

  const pairs: IrPairPath[] = [...groups.values()]
    .sort((a, b) => a.origin - b.origin || a.destination - b.destination || (a.path < b.path ? -1 : 1))
    .map((g) => {
      const key = `${g.origin}_${g.destination}`;
      const prefix = g.path === 'local' ? 'l' : 'c';
      // One set of maps serves both directions. Where policies overlap, a cell belongs to a
      // bidirectional policy if any covers it, so a reply that lands on a unidirectional
      // policy's cell is one no bidirectional policy allows (its chain lets replies fall through).
      const rank = (i: number) => (sorted[i].unidirectional ? sorted.length + i : i);
      const maps: IrMap[] = [];
      for (const family of FAMILIES) {
        for (const shape of SHAPES) {
          const boxes = g.members.flatMap((i) => policyBoxes(sorted[i], i, family, shape));
          const cells = decompose(boxes, rank);
          if (cells.length > 0) {
            maps.push({ name: `${prefix}_${key}_${family}${SHAPE_SUFFIX[shape]}`, family, shape, ...dropWholeDims(cells, family, shape) });
          }
        }
      }
      const initiate = maps;
      const reply = g.members.some((i) => !sorted[i].unidirectional) ? maps : [];
      return {
        origin: site.lans[g.origin - 1],
        destination: site.lans[g.destination - 1],
        path: g.path,
        key,
        initiate,
        reply,
      };
    });

  return { table: site.table, conntrackMark: site.conntrackMark, lans: site.lans, tunnel: site.tunnel, policies: irPolicies, pairs };
}

const SHAPE_SUFFIX: Record<KeyShape, string> = { ports: 'p', proto: 'n', related: 'r' };

/**
 * The domain of each dimension as the map sees it. Only TCP and UDP reach a `ports` map, so
 * 6–17 covers both protocols there; only other protocols reach a `proto` map, so 0–255 covers them all.
 */
function domain(dim: Dim, family: Family, shape: KeyShape): [bigint, bigint] {
  if (dim === 'saddr' || dim === 'daddr') return [0n, familyMax(family)];
  if (dim === 'l4proto') return shape === 'ports' ? [IPPROTO_TCP, IPPROTO_UDP] : [0n, 255n];
  return ANY_PORT;
}

function dropWholeDims(cells: Cell[], family: Family, shape: KeyShape): { dims: Dim[]; cells: Cell[] } {
  const all = SHAPE_DIMS[shape];
  const keep = all.map((dim, d) => {
    if (dim === 'daddr') return true;
    const [lo, hi] = domain(dim, family, shape);
    return cells.some((c) => c.lo[d] > lo || c.hi[d] < hi);
  });
  const pick = (xs: bigint[]) => xs.filter((_, d) => keep[d]);
  return {
    dims: all.filter((_, d) => keep[d]),
    cells: cells.map((c) => ({ lo: pick(c.lo), hi: pick(c.hi), label: c.label })),
  };
}

function addresses(ep: Endpoint, family: Family): AddressRange[] {
  if (ep.subnets.length === 0) return [anyAddress(family)];
  return ep.subnets.filter((s) => s.family === family);
}

const portRanges = (ep: Endpoint): [bigint, bigint][] =>
  ep.ports.length === 0 ? [ANY_PORT] : ep.ports.map((p) => [BigInt(p.from), BigInt(p.to)]);

/** IP protocol numbers a policy covers in one key shape, as inclusive ranges. */
export function protocolRanges(p: Policy, family: Family, shape: KeyShape): [bigint, bigint][] {
  // Ranges in each map's own domain (see `domain`): 6–17 is "TCP and UDP" in a ports map,
  // 0–255 is "every protocol but TCP and UDP" in a proto map.
  const icmp = family === 4 ? IPPROTO_ICMP : IPPROTO_ICMPV6;
  const all = p.protocols.length === 0;
  if (shape === 'related') return [[0n, 255n]]; // every policy's flows can have ICMP errors
  if (shape === 'proto') return all ? [[0n, 255n]] : p.protocols.includes('icmp') ? [[icmp, icmp]] : [];
  const tcp = all || p.protocols.includes('tcp');
  const udp = all || p.protocols.includes('udp');
  if (tcp && udp) return [[IPPROTO_TCP, IPPROTO_UDP]];
  return tcp ? [[IPPROTO_TCP, IPPROTO_TCP]] : udp ? [[IPPROTO_UDP, IPPROTO_UDP]] : [];
}

function policyBoxes(p: Policy, label: number, family: Family, shape: KeyShape): Box[] {
  const srcs = addresses(p.origin, family);
  const dsts = addresses(p.destination, family);
  const protos = protocolRanges(p, family, shape);
  const boxes: Box[] = [];
  for (const s of srcs) {
    for (const d of dsts) {
      for (const pr of protos) {
        if (shape === 'proto') {
          boxes.push({ lo: [s.first, d.first, pr[0]], hi: [s.last, d.last, pr[1]], label });
          continue;
        }
        if (shape === 'related') {
          boxes.push({ lo: [s.first, d.first], hi: [s.last, d.last], label });
          continue;
        }
        for (const sp of portRanges(p.origin)) {
          for (const dp of portRanges(p.destination)) {
            boxes.push({ lo: [s.first, d.first, pr[0], sp[0], dp[0]], hi: [s.last, d.last, pr[1], sp[1], dp[1]], label });
          }
        }
      }
    }
  }
  return boxes;
}
