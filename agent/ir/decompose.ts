// Disjoint decomposition of labelled boxes.
//
// nft interval sets with concatenated keys (the pipapo backend) refuse elements that partly
// overlap, but overlapping policies are normal ("any host to :443" and "host X to any port").
// So the union of the policies' boxes is cut into pairwise-disjoint cells, each labelled with
// one covering policy (the lowest label, i.e. the first policy by id) for counting.
// Adjacent cells with the same label are merged per dimension to keep the element count low.

export interface Box {
  lo: bigint[];
  hi: bigint[];
  label: number;
}

export type Cell = Box;

/**
 * Returns disjoint cells whose union equals the union of `boxes`. Every dimension is inclusive.
 * Where boxes overlap, the cell gets the covering label of lowest `rank` (default: the label itself).
 */
export function decompose(boxes: readonly Box[], rank: (label: number) => number = (l) => l): Cell[] {
  if (boxes.length === 0) return [];
  const dims = boxes[0].lo.length;
  const cells: Cell[] = [];
  // Only boxes that really overlap need cutting; the rest stay whole (fewer, readable elements).
  for (const group of overlapGroups(boxes, dims)) {
    if (group.length === 1) cells.push({ lo: [...group[0].lo], hi: [...group[0].hi], label: group[0].label });
    else for (const p of split(group, 0, dims, rank)) cells.push({ lo: p.lo, hi: p.hi, label: p.label });
  }
  return cells.sort(compareCells);
}

export const overlaps = (a: Box, b: Box): boolean =>
  a.lo.every((lo, d) => lo <= b.hi[d] && b.lo[d] <= a.hi[d]);

/**
 * Connected components of the overlap graph. The sweep runs along the dimension with the most
 * distinct starts, where boxes overlap least, so typical inputs stay near n log n.
 */
function overlapGroups(boxes: readonly Box[], dims: number): Box[][] {
  let sweep = 0;
  let best = -1;
  for (let d = 0; d < dims; d++) {
    const distinct = new Set(boxes.map((b) => b.lo[d])).size;
    if (distinct > best) [best, sweep] = [distinct, d];
  }
  const order = boxes.map((_, i) => i).sort((a, b) => cmp(boxes[a].lo[sweep], boxes[b].lo[sweep]));
  const parent = boxes.map((_, i) => i);
  const find = (i: number): number => {
    while (parent[i] !== i) i = parent[i] = parent[parent[i]];
    return i;
  };
  let active: number[] = [];
  for (const i of order) {
    const box = boxes[i];
    active = active.filter((j) => boxes[j].hi[sweep] >= box.lo[sweep]);
    for (const j of active) if (overlaps(box, boxes[j])) parent[find(i)] = find(j);
    active.push(i);
  }
  const groups = new Map<number, Box[]>();
  boxes.forEach((b, i) => {
    const root = find(i);
    const g = groups.get(root);
    if (g) g.push(b);
    else groups.set(root, [b]);
  });
  return [...groups.values()];
}

function compareCells(a: Cell, b: Cell): number {
  for (let d = 0; d < a.lo.length; d++) {
    const c = cmp(a.lo[d], b.lo[d]);
    if (c !== 0) return c;
  }
  return a.label - b.label;
}

interface Part {
  lo: bigint[];
  hi: bigint[];
  label: number;
}

function split(boxes: readonly Box[], d: number, dims: number, rank: (label: number) => number): Part[] {
  if (d === dims) {
    let label = boxes[0].label;
    for (const b of boxes) if (rank(b.label) < rank(label) || (rank(b.label) === rank(label) && b.label < label)) label = b.label;
    return [{ lo: [], hi: [], label }];
  }
  // Fast path: one box covers its own range in the remaining dimensions.
  if (boxes.length === 1) {
    const b = boxes[0];
    return [{ lo: b.lo.slice(d), hi: b.hi.slice(d), label: b.label }];
  }

  const points = uniqueSorted(boxes.flatMap((b) => [b.lo[d], b.hi[d] + 1n]));
  const byStart = [...boxes].sort((a, b) => cmp(a.lo[d], b.lo[d]));
  const out: Part[] = [];
  let active: Box[] = [];
  let next = 0;
  let run: { start: bigint; end: bigint; sub: Part[]; key: string } | undefined;

  const flush = () => {
    if (!run) return;
    for (const p of run.sub) out.push({ lo: [run.start, ...p.lo], hi: [run.end, ...p.hi], label: p.label });
    run = undefined;
  };

  for (let i = 0; i < points.length - 1; i++) {
    const start = points[i];
    const end = points[i + 1] - 1n;
    active = active.filter((b) => b.hi[d] >= start);
    while (next < byStart.length && byStart[next].lo[d] <= start) active.push(byStart[next++]);
    if (active.length === 0) {
      flush();
      continue;
    }
    const sub = split(active, d + 1, dims, rank);
    const key = partsKey(sub);
    if (run && run.end + 1n === start && run.key === key) run.end = end;
    else {
      flush();
      run = { start, end, sub, key };
    }
  }
  flush();
  return out;
}

const cmp = (a: bigint, b: bigint): number => (a < b ? -1 : a > b ? 1 : 0);

function uniqueSorted(values: bigint[]): bigint[] {
  const sorted = values.sort(cmp);
  return sorted.filter((v, i) => i === 0 || v !== sorted[i - 1]);
}

function partsKey(parts: Part[]): string {
  let s = '';
  for (const p of parts) s += `${p.lo.join(',')}|${p.hi.join(',')}|${p.label};`;
  return s;
}
