// Test-only interpreter of the IR: what the compiled maps would do with one packet, following
// the kernel's order. prerouting sees the packet first and marks it when a via-Cloudflare map
// holds its tuple (the mark then routes it into the tunnel); only unmarked packets reach the
// forward chain, where the local maps decide. Replies are looked up in the reply maps of the
// pair whose origin is the flow's initiator, with the tuple in the initiator's view (the
// rendered rules swap saddr/daddr and sport/dport back to that view). A reply that lands on a
// unidirectional policy's cell is not allowed on that path: that policy's chain returns for
// replies, so the packet goes on to the forward chain (from prerouting) or to the drop.
//
// Flows use the evaluator's convention (agent/ir/evaluator.ts): src/dst/ports are always the
// initiator's view; ingressLan/egressLan are where this packet enters and leaves.
import { parseSubnet } from '../../agent/policy/address.js';
import type { Flow, Verdict } from '../../agent/ir/evaluator.js';
import type { Cell } from '../../agent/ir/decompose.js';
import { SHAPE_DIMS, type Ir, type IrMap, type IrPairPath, type KeyShape, type TrafficPath } from '../../agent/ir/ir.js';

export interface IrLookup {
  verdict: Verdict;
  /** Id of the policy whose chain the matching element jumps to (its counter counts the packet). */
  policy?: string;
  /** Name of the map that matched. */
  map?: string;
}

export function lookupIr(ir: Ir, flow: Flow): IrLookup {
  const no = (id: string): number => {
    const i = ir.lans.findIndex((l) => l.id === id);
    if (i < 0) throw new Error(`unknown LAN ${id}`);
    return i + 1;
  };
  const ingress = no(flow.ingressLan);
  const egress = no(flow.egressLan);
  // Not a pair of two different LAN interfaces: the lan_pairs vmap has no element, accept.
  if (ingress === egress) return { verdict: 'local' };

  const reply = flow.direction === 'reply';
  const key = `${reply ? egress : ingress}_${reply ? ingress : egress}`;
  const shape: KeyShape = flow.protocol === 6 || flow.protocol === 17 ? 'ports' : 'proto';
  const point = tuple(flow, shape);

  const paths: TrafficPath[] = ir.tunnel ? ['cloudflare', 'local'] : ['local'];
  for (const path of paths) {
    const pair = ir.pairs.find((p) => p.path === path && p.key === key);
    if (!pair) continue;
    const hit = lookupPair(pair, reply, flow.family, shape, point);
    if (!hit) continue;
    const policy = ir.policies[hit.cell.label];
    // A unidirectional policy's chain lets replies fall through (`ct direction reply return`):
    // on to the forward chain from prerouting, to the pair's default drop from forward.
    if (reply && policy.unidirectional) continue;
    return { verdict: path, policy: policy.id, map: hit.map.name };
  }
  return { verdict: 'drop' };
}

function lookupPair(pair: IrPairPath, reply: boolean, family: 4 | 6, shape: KeyShape, point: bigint[]):
  { map: IrMap; cell: Cell } | undefined {
  const maps = reply ? pair.reply : pair.initiate;
  for (const map of maps) {
    if (map.family !== family || map.shape !== shape) continue;
    // The map keeps only some dimensions of the full key (see IrMap.dims).
    const projected = map.dims.map((d) => point[SHAPE_DIMS[shape].indexOf(d)]);
    const hits = map.cells.filter((c) => contains(c, projected));
    if (hits.length > 1) throw new Error(`map ${map.name}: ${hits.length} cells contain ${projected.join(' . ')}: cells overlap`);
    if (hits.length === 1) return { map, cell: hits[0] };
  }
  return undefined;
}

export const contains = (cell: { lo: bigint[]; hi: bigint[] }, point: readonly bigint[]): boolean =>
  point.length === cell.lo.length && point.every((v, d) => cell.lo[d] <= v && v <= cell.hi[d]);

function tuple(flow: Flow, shape: KeyShape): bigint[] {
  const addr = (text: string): bigint => {
    const parsed = parseSubnet(text);
    if (!parsed.ok || parsed.range.family !== flow.family) throw new Error(`bad address ${text}`);
    return parsed.range.first;
  };
  const base = [addr(flow.src), addr(flow.dst), BigInt(flow.protocol)];
  return shape === 'ports' ? [...base, BigInt(flow.srcPort ?? -1), BigInt(flow.dstPort ?? -1)] : base;
}
